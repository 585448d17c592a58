//! Image classification by transfer learning as a [`TrainTask`]: a pretrained backbone,
//! a new head, and the backbone's last units unfrozen at the epochs the schedule names.
//!
//! Every tensor that ever trains is in the optimizer from the start; a unit still frozen
//! runs detached, so it gets no gradient and AdamW leaves it (and its zero moments, and its
//! own step count) alone until it unfreezes. Which units train is a function of the epoch,
//! so resuming inside any epoch, across an unfreeze boundary too, is exact.

use std::cell::Cell;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor, D};

use super::data::{batch_tensor, decode_samples, Sample};
use super::report::build_summary;
use crate::artifacts::checkpoint::CheckpointTask;
use crate::domain::dataset::images::LabeledImage;
use crate::domain::hyperparams::{ImageOptions, TrainingConfig};
use crate::tasks::sequence_classification::evaluate::Evaluation;
use crate::tasks::sequence_classification::metrics::Confusion;
use crate::train::checkpoint::TrainState;
use crate::train::data::sequential_batches;
use crate::train::evaluate::scalar;
use crate::train::memory::{check_image_job, image_job_estimate, ImageRun};
use crate::train::named_metrics::{Metrics, MetricsRow};
use crate::train::plan::TrainingPlan;
use crate::train::runner::{EvalPoint, MicroBatch, TrainTask};
use crate::train::setup::{check_loop_settings, run_task, RunSetup};
use crate::train::{EventLevel, TrainError, TrainObserver, TrainOutcome};
use crate::zoo::cpu::dropout::mix;
use crate::zoo::vision::{ImageClassifier, ImageClassifierSpec, ImagePrep, VisionConfig};

pub use crate::tasks::sequence_classification::CLASSIFICATION_METRICS as IMAGE_METRICS;

pub struct ImageClassificationJob {
    pub base_model_dir: PathBuf,
    /// How checkpoints name that base (`meta.json`).
    pub base_model: crate::artifacts::BaseLocation,
    pub train: Vec<LabeledImage>,
    pub valid: Option<Vec<LabeledImage>>,
    /// Class id = index (alphabetical, as ImageFolder orders them).
    pub labels: Vec<String>,
    pub config: TrainingConfig,
    pub work_dir: PathBuf,
    pub device: Device,
}

/// The head made from scratch: timm's classifier names.
const NEW_HEAD: [&str; 2] = ["fc.", "classifier."];

pub fn run_image_classification(
    job: &ImageClassificationJob,
    observer: &mut dyn TrainObserver,
) -> Result<TrainOutcome, TrainError> {
    check_job(job)?;
    let task = ImageTask::prepare(job)?;
    let step_shape = (
        job.config.batch_size,
        task.spec.trainable_units,
        task.prep.size,
    );
    check_image_job(&task.model, step_shape, &job.device, observer)?;
    let setup = RunSetup {
        config: &job.config,
        work_dir: &job.work_dir,
        device: &job.device,
        names: &IMAGE_METRICS,
        checkpoint: CheckpointTask::ImageClassification {
            labels: job.labels.clone(),
            spec: task.spec.clone(),
            prep: task.prep.clone(),
        },
        base_model: job.base_model.clone(),
        max_seq_len: job.config.max_seq_len,
        new_head: &NEW_HEAD,
        vars: task.model.trainable_vars(),
        has_valid: task.valid.is_some(),
        buffers: task.model.buffers(),
        pretrained_lr_scale: task.options.backbone_lr_multiplier.unwrap_or(1.0),
    };
    run_task(setup, &task, observer, |trainer, observer| {
        build_summary(trainer, &task, observer)
    })
}

/// The model, its decoded images and the recipe.
pub(crate) struct ImageTask<'a> {
    pub(crate) job: &'a ImageClassificationJob,
    pub(crate) model: ImageClassifier,
    spec: ImageClassifierSpec,
    pub(crate) prep: ImagePrep,
    options: ImageOptions,
    pub(crate) train: Vec<Sample>,
    pub(crate) valid: Option<Vec<Sample>>,
    /// The epoch being trained (0-based), set by the loop before its batches.
    epoch: Cell<usize>,
}

fn check_job(job: &ImageClassificationJob) -> Result<(), TrainError> {
    if job.labels.len() < 2 || job.train.is_empty() {
        return Err(TrainError::InvalidData(
            "image classification needs images of at least 2 classes".into(),
        ));
    }
    check_loop_settings(&job.config)
}

/// The classifier the job builds, the images' preparation and the job's image options.
fn image_spec(
    job: &ImageClassificationJob,
) -> Result<(ImageClassifierSpec, ImagePrep, ImageOptions), TrainError> {
    let cfg = &job.config;
    let options = cfg.task_options.image.clone();
    let (vision, _) = VisionConfig::read(&job.base_model_dir)?;
    let prep = ImagePrep::new(&vision.pretrained_cfg, options.image_size);
    let all_units = ImageClassifier::count_units(&job.base_model_dir)?;
    let spec = ImageClassifierSpec {
        num_classes: job.labels.len(),
        head_hidden: options.head_hidden.unwrap_or(0),
        head_dropout: options.head_dropout.unwrap_or(0.0),
        trainable_units: options.max_trainable_units(cfg.n_epochs, all_units),
    };
    Ok((spec, prep, options))
}

/// The job's plan (`train::plan`): its images counted (not decoded), its memory from the
/// model it builds. Images have no tokens and no FLOPs model here (a CNN's cost is its
/// convolutions', not a multiple of its weights); their duration comes from history.
pub fn plan_image_classification(job: &ImageClassificationJob) -> Result<TrainingPlan, TrainError> {
    check_job(job)?;
    let cfg = &job.config;
    let (spec, prep, _) = image_spec(job)?;
    let model =
        ImageClassifier::from_pretrained(&job.base_model_dir, &spec, &job.device, cfg.seed)?;
    let name = crate::train::memory::device_name(&job.device);
    let shape = (cfg.batch_size, spec.trainable_units, prep.size);
    let mut memory = image_job_estimate(&model, shape, ImageRun::on(&job.device, &name))?;
    // The loaded model: its f32 weights file, as read.
    memory.weights = std::fs::metadata(job.base_model_dir.join("model.safetensors"))
        .map_or(0, |meta| meta.len());
    let examples = (job.train.len(), job.valid.as_ref().map_or(0, Vec::len));
    Ok(TrainingPlan::new(cfg, examples, 0, memory, None))
}

impl<'a> ImageTask<'a> {
    fn prepare(job: &'a ImageClassificationJob) -> Result<Self, TrainError> {
        let cfg = &job.config;
        let (spec, prep, options) = image_spec(job)?;
        let model =
            ImageClassifier::from_pretrained(&job.base_model_dir, &spec, &job.device, cfg.seed)?;
        let train = decode_samples(&job.train, &job.labels, &prep)?;
        let valid = match job.valid.as_deref() {
            Some(valid) if !valid.is_empty() => Some(decode_samples(valid, &job.labels, &prep)?),
            _ => None,
        };
        Ok(Self {
            job,
            model,
            spec,
            prep,
            options,
            train,
            valid,
            epoch: Cell::new(0),
        })
    }

    fn units_now(&self) -> usize {
        self.options
            .trainable_units(self.epoch.get(), self.model.n_units())
    }

    /// Cross-entropy and arg-max predictions of one batch.
    fn forward(
        &self,
        images: &Tensor,
        labels: &[usize],
        train: bool,
        seed: u64,
    ) -> Result<(Tensor, Vec<usize>), TrainError> {
        let logits = self
            .model
            .forward(images, self.units_now(), train, seed)?
            .to_dtype(DType::F32)?;
        let targets: Vec<u32> = labels.iter().map(|&l| l as u32).collect();
        let targets = Tensor::from_vec(targets, labels.len(), images.device())?;
        let loss = candle_nn::loss::cross_entropy(&logits, &targets)?;
        let predictions = logits
            .detach()
            .argmax(D::Minus1)?
            .to_vec1::<u32>()?
            .into_iter()
            .map(|p| p as usize)
            .collect();
        Ok((loss, predictions))
    }

    pub(crate) fn evaluate_set(&self, samples: &[Sample]) -> Result<Evaluation, TrainError> {
        let (mut loss_sum, mut truth, mut predicted) = (0f64, Vec::new(), Vec::new());
        for indices in sequential_batches(samples.len(), self.job.config.batch_size) {
            let images = batch_tensor(samples, &indices, &self.prep, None, &self.job.device)?;
            let labels: Vec<usize> = indices.iter().map(|&i| samples[i].label).collect();
            let (loss, predictions) = self.forward(&images, &labels, false, 0)?;
            loss_sum += scalar(&loss)? * labels.len() as f64;
            truth.extend(labels);
            predicted.extend(predictions);
        }
        let confusion = Confusion::new(self.job.labels.len(), &truth, &predicted);
        Ok(Evaluation {
            loss: loss_sum / truth.len().max(1) as f64,
            accuracy: confusion.accuracy(),
            macro_f1: confusion.macro_f1(),
            confusion,
        })
    }
}

impl TrainTask for ImageTask<'_> {
    fn n_train(&self) -> usize {
        self.train.len()
    }

    fn units(&self, indices: &[usize]) -> Result<usize, TrainError> {
        Ok(indices.len())
    }

    fn begin_epoch(&self, epoch: usize) {
        self.epoch.set(epoch);
    }

    fn forward_train(&self, indices: &[usize]) -> Result<MicroBatch, TrainError> {
        let seed = self.job.config.seed;
        let epoch = self.epoch.get();
        let augment = self
            .options
            .augment
            .unwrap_or(true)
            .then_some((seed, epoch));
        let images = batch_tensor(&self.train, indices, &self.prep, augment, &self.job.device)?;
        let labels: Vec<usize> = indices.iter().map(|&i| self.train[i].label).collect();
        // The head's dropout mask: a function of the run's seed, the epoch and the batch.
        let first = indices.first().copied().unwrap_or(0) as u64;
        let dropout_seed = mix(seed ^ mix(((epoch as u64) << 40) ^ first));
        let (loss, predictions) = self.forward(&images, &labels, true, dropout_seed)?;
        let correct = predictions
            .iter()
            .zip(&labels)
            .filter(|(p, t)| p == t)
            .count();
        Ok(MicroBatch {
            loss,
            units: labels.len(),
            correct,
            tokens: 0,
            extra: Metrics::default(),
        })
    }

    fn evaluate(&self, at: &EvalPoint, row: &mut MetricsRow) -> Result<(), TrainError> {
        let Some(valid) = self.valid.as_deref() else {
            return Ok(());
        };
        if at.epoch_end || at.eval_due || at.regular_save {
            self.evaluate_set(valid)?.record_valid(row);
        }
        Ok(())
    }

    fn before_first_step(
        &self,
        _state: &mut TrainState,
        observer: &mut dyn TrainObserver,
    ) -> Result<(), TrainError> {
        let all = self.model.n_units();
        let schedule: Vec<String> = self
            .options
            .unfreeze_schedule
            .iter()
            .flatten()
            .map(|step| {
                format!(
                    "epoch {}: last {} of {all}",
                    step.epoch,
                    step.blocks.min(all)
                )
            })
            .collect();
        let plan = if !self.options.freeze_backbone.unwrap_or(true) {
            format!("the whole backbone ({all} units) and the new head train")
        } else if schedule.is_empty() {
            format!("the backbone ({all} units) stays frozen; only the new head trains")
        } else {
            format!(
                "the backbone ({all} units) starts frozen; unfrozen units ({}) learn at {}× the head's rate",
                schedule.join(", "),
                self.options.backbone_lr_multiplier.unwrap_or(1.0)
            )
        };
        observer.on_event(
            EventLevel::Info,
            format!(
                "Image classification on `{}` at {}×{}: {plan}",
                self.model.config.architecture, self.prep.size, self.prep.size
            ),
        );
        Ok(())
    }
}
