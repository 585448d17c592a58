//! Examples → labelled windows, and evaluation of a model on a set of questions: the
//! windows' loss, one answer per question ([`best_answer`]) and SQuAD's scores.

use candle_core::Device;

use super::head::{collate_windows, QuestionAnsweringModel};
use super::metrics::{squad_scores, ScoredQuestion, SquadScores, SquadVersion};
use super::postprocess::{best_answer, AnswerSettings, QaPrediction, WindowLogits};
use super::windows::{span_label, QaTokenizer, QaWindow, SpanLabel};
use crate::domain::dataset::QaExample;
use crate::zoo::ZooError;

/// Every window of every example, with its training label and its example's index.
#[derive(Debug, Clone, Default)]
pub struct LabelledWindows {
    pub windows: Vec<QaWindow>,
    pub labels: Vec<SpanLabel>,
    /// `example_of[i]`: the example window `i` comes from.
    pub example_of: Vec<usize>,
}

impl LabelledWindows {
    pub fn len(&self) -> usize {
        self.windows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.windows.is_empty()
    }
}

/// Cuts every example into windows labelled with its first answer (as run_qa trains);
/// an error names the example.
pub fn labelled_windows(
    tokenizer: &QaTokenizer,
    examples: &[QaExample],
) -> Result<LabelledWindows, ZooError> {
    let mut out = LabelledWindows::default();
    for (index, example) in examples.iter().enumerate() {
        let windows = tokenizer
            .windows(&example.question, &example.context)
            .map_err(|e| {
                let id = example.id.as_deref().map(|id| format!(" (id '{id}')"));
                let id = id.unwrap_or_default();
                ZooError::Unsupported(format!("example {}{id}: {e}", index + 1))
            })?;
        for window in windows {
            out.labels
                .push(span_label(&window, example.answers.first()));
            out.windows.push(window);
            out.example_of.push(index);
        }
    }
    Ok(out)
}

/// The scoring rules a set of questions calls for: v2 when any is unanswerable.
pub fn squad_version(examples: &[QaExample]) -> SquadVersion {
    if examples.iter().all(QaExample::is_answerable) {
        SquadVersion::V1
    } else {
        SquadVersion::V2
    }
}

/// One window's start and end logits, trimmed to its length.
pub type WindowScores = (Vec<f32>, Vec<f32>);

/// A model's results on a set of questions.
#[derive(Debug, Clone)]
pub struct QaEvaluation {
    /// Mean loss over the windows (labels as in training).
    pub loss: f64,
    pub scores: SquadScores,
    /// One per example, in order.
    pub predictions: Vec<QaPrediction>,
}

/// Start and end logits of every window, `batch_size` windows per forward pass (eval mode),
/// each trimmed to its window's length; also the windows' mean loss.
pub fn window_logits(
    model: &QuestionAnsweringModel,
    windows: &[QaWindow],
    labels: Option<&[SpanLabel]>,
    batch_size: usize,
    pad_id: u32,
    device: &Device,
) -> Result<(Vec<WindowScores>, f64), ZooError> {
    let mut logits = Vec::with_capacity(windows.len());
    let mut loss_sum = 0.0;
    let indices: Vec<usize> = (0..windows.len()).collect();
    for chunk in indices.chunks(batch_size.max(1)) {
        let refs: Vec<&QaWindow> = chunk.iter().map(|&i| &windows[i]).collect();
        let batch = collate_windows(&refs, pad_id, device)?;
        let out = model.forward(&batch, false)?;
        if let Some(labels) = labels {
            let chunk_labels: Vec<SpanLabel> = chunk.iter().map(|&i| labels[i]).collect();
            let loss = QuestionAnsweringModel::loss(&out, &batch, &chunk_labels)?;
            loss_sum += f64::from(loss.to_scalar::<f32>()?) * chunk.len() as f64;
        }
        let starts: Vec<Vec<f32>> = out.start.to_vec2()?;
        let ends: Vec<Vec<f32>> = out.end.to_vec2()?;
        for ((window, mut start), mut end) in refs.iter().zip(starts).zip(ends) {
            start.truncate(window.len());
            end.truncate(window.len());
            logits.push((start, end));
        }
    }
    let mean_loss = loss_sum / windows.len().max(1) as f64;
    Ok((logits, mean_loss))
}

/// Groups window logits by question and picks each question's answer in its context.
pub fn answers(
    contexts: &[&str],
    windows: &[QaWindow],
    example_of: &[usize],
    logits: &[WindowScores],
    settings: &AnswerSettings,
) -> Vec<QaPrediction> {
    let mut per_example: Vec<Vec<WindowLogits>> = vec![Vec::new(); contexts.len()];
    for ((window, (start, end)), &example) in windows.iter().zip(logits).zip(example_of) {
        per_example[example].push(WindowLogits { window, start, end });
    }
    contexts
        .iter()
        .zip(&per_example)
        .map(|(context, windows)| best_answer(context, windows, settings))
        .collect()
}

/// Evaluates `model` on `examples` (already cut into `windows`).
pub fn evaluate(
    model: &QuestionAnsweringModel,
    examples: &[QaExample],
    windows: &LabelledWindows,
    settings: &AnswerSettings,
    batch_size: usize,
    pad_id: u32,
    device: &Device,
) -> Result<QaEvaluation, ZooError> {
    let (logits, loss) = window_logits(
        model,
        &windows.windows,
        Some(&windows.labels),
        batch_size,
        pad_id,
        device,
    )?;
    let contexts: Vec<&str> = examples.iter().map(|e| e.context.as_str()).collect();
    let predictions = answers(
        &contexts,
        &windows.windows,
        &windows.example_of,
        &logits,
        settings,
    );
    let questions: Vec<ScoredQuestion> = examples
        .iter()
        .zip(&predictions)
        .map(|(example, prediction)| ScoredQuestion {
            gold: example.answers.iter().map(|a| a.text.as_str()).collect(),
            prediction: &prediction.text,
        })
        .collect();
    let scores = squad_scores(&questions, squad_version(examples))
        .ok_or_else(|| ZooError::Unsupported("no questions to evaluate".into()))?;
    Ok(QaEvaluation {
        loss,
        scores,
        predictions,
    })
}

#[cfg(test)]
#[path = "evaluate_tests.rs"]
mod tests;
