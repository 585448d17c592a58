//! Wire shapes of `fine_tuning.job`, `fine_tuning.job.event` and
//! `fine_tuning.job.checkpoint`, exactly as OpenAI returns them.

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use super::wire::HasId;
use crate::domain::job::JobStatus;
use crate::domain::job_spec::{JobSpec, Method, ResolvedHyperparameters};
use crate::store::{CheckpointRow, EventRow, JobRow};

/// temper has one organisation.
pub const ORGANIZATION_ID: &str = "org-temper";

/// OpenAI's `FineTuneMethod` echo, `{"type", "<type>": {"hyperparameters": {…}}}`: the
/// user's knobs (temper's extra keys included), OpenAI's three as `"auto"` until the job
/// resolves them and as the numbers it trains with after, and DPO's `beta` likewise. Once
/// resolved, the options of the job's task (`max_answer_length`, `label_all_tokens`…) show
/// what it runs with; other tasks' options never appear.
pub(super) fn method_echo(spec: &JobSpec, resolved: Option<&ResolvedHyperparameters>) -> Value {
    let mut hyperparameters = requested_knobs(spec);
    hyperparameters.extend(openai_knobs(spec, resolved));
    if let Some(resolved) = resolved {
        hyperparameters.extend(object_of(&resolved.config.task_options));
    }
    if let Method::Dpo { beta, .. } = &spec.method {
        let beta = resolved.and_then(|r| r.beta).or(*beta);
        hyperparameters.insert(
            "beta".into(),
            beta.map_or_else(|| json!("auto"), |b| json!(b)),
        );
    }
    let mut method = Map::new();
    method.insert("type".into(), json!(spec.method.name()));
    method.insert(
        spec.method.name().into(),
        json!({ "hyperparameters": hyperparameters }),
    );
    Value::Object(method)
}

/// The deprecated top-level `hyperparameters`: OpenAI's three knobs for supervised jobs.
/// OpenAI returns `null` for DPO jobs, but its spec types the field as an object, so
/// typed clients get `{}`.
fn legacy_hyperparameters(spec: &JobSpec, resolved: Option<&ResolvedHyperparameters>) -> Value {
    match spec.method {
        Method::Supervised { .. } => Value::Object(openai_knobs(spec, resolved)),
        Method::Dpo { .. } => json!({}),
    }
}

/// Every knob the user set, under its request key.
fn requested_knobs(spec: &JobSpec) -> Map<String, Value> {
    object_of(spec.method.hyperparameters())
}

/// A struct's fields that are set, by name.
fn object_of(knobs: &impl Serialize) -> Map<String, Value> {
    match serde_json::to_value(knobs) {
        Ok(Value::Object(mut knobs)) => {
            knobs.retain(|_, value| !value.is_null());
            knobs
        }
        // A struct of plain fields always serializes to an object.
        _ => Map::new(),
    }
}

/// `batch_size`, `learning_rate_multiplier`, `n_epochs`: resolved, requested or `"auto"`.
fn openai_knobs(spec: &JobSpec, resolved: Option<&ResolvedHyperparameters>) -> Map<String, Value> {
    let requested = spec.method.hyperparameters();
    let resolved = resolved.map(|r| &r.config);
    let knob = |resolved: Option<Value>, requested: Option<Value>| {
        resolved.or(requested).unwrap_or_else(|| json!("auto"))
    };
    let mut knobs = Map::new();
    knobs.insert(
        "batch_size".into(),
        knob(
            resolved.map(|c| json!(c.batch_size)),
            requested.batch_size.map(|b| json!(b)),
        ),
    );
    knobs.insert(
        "learning_rate_multiplier".into(),
        knob(
            resolved.map(|c| json!(c.learning_rate_multiplier)),
            requested.learning_rate_multiplier.map(|m| json!(m)),
        ),
    );
    knobs.insert(
        "n_epochs".into(),
        knob(
            resolved.map(|c| json!(c.n_epochs)),
            requested.n_epochs.map(|n| json!(n)),
        ),
    );
    knobs
}

#[derive(Debug, Serialize, Deserialize)]
pub struct JobObject {
    pub id: String,
    pub object: String,
    pub created_at: i64,
    /// `{code, message, param}` when failed, else `null` (never `{}`: typed clients break).
    pub error: Option<Value>,
    pub fine_tuned_model: Option<String>,
    pub finished_at: Option<i64>,
    pub hyperparameters: Value,
    pub model: String,
    pub organization_id: String,
    pub result_files: Vec<String>,
    pub status: String,
    pub trained_tokens: Option<i64>,
    pub training_file: String,
    pub validation_file: Option<String>,
    pub integrations: Option<Value>,
    pub seed: i64,
    /// Only while running.
    pub estimated_finish: Option<i64>,
    pub method: Value,
    pub metadata: Option<Value>,
    pub user_provided_suffix: Option<String>,
}

impl HasId for JobObject {
    fn id(&self) -> &str {
        &self.id
    }
}

/// OpenAI's error object: all three keys present, `param` may be null.
fn error_object(error: Option<Value>) -> Value {
    let error = error.unwrap_or(Value::Null);
    let field = |key: &str| error.get(key).cloned().unwrap_or(Value::Null);
    json!({
        "code": field("code"),
        "message": field("message"),
        "param": field("param"),
    })
}

impl From<JobRow> for JobObject {
    fn from(row: JobRow) -> Self {
        let failed = row.status == JobStatus::Failed;
        let running = row.status == JobStatus::Running;
        JobObject {
            object: "fine_tuning.job".to_string(),
            created_at: row.created_at,
            error: failed.then(|| error_object(row.error)),
            fine_tuned_model: row.fine_tuned_model,
            finished_at: row.finished_at,
            hyperparameters: legacy_hyperparameters(&row.spec, row.resolved.as_ref()),
            model: row.model,
            organization_id: ORGANIZATION_ID.to_string(),
            result_files: row.result_files,
            status: row.status.as_str().to_string(),
            trained_tokens: row.trained_tokens,
            training_file: row.training_file,
            validation_file: row.validation_file,
            integrations: None,
            seed: row.seed,
            estimated_finish: if running { row.estimated_finish } else { None },
            method: method_echo(&row.spec, row.resolved.as_ref()),
            metadata: row.metadata,
            user_provided_suffix: row.suffix,
            id: row.id,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EventObject {
    pub id: String,
    pub object: String,
    pub created_at: i64,
    pub level: String,
    pub message: String,
    #[serde(rename = "type")]
    pub kind: String,
    /// Always an object (OpenAI's spec types it so): `{}` for message events.
    pub data: Value,
}

impl HasId for EventObject {
    fn id(&self) -> &str {
        &self.id
    }
}

impl From<EventRow> for EventObject {
    fn from(row: EventRow) -> Self {
        EventObject {
            id: row.id,
            object: "fine_tuning.job.event".to_string(),
            created_at: row.created_at,
            level: row.level,
            message: row.message,
            kind: row.kind,
            data: row.data.unwrap_or_else(|| json!({})),
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub struct CheckpointObject {
    pub id: String,
    pub object: String,
    pub created_at: i64,
    pub fine_tuned_model_checkpoint: String,
    pub fine_tuning_job_id: String,
    pub metrics: Value,
    pub step_number: i64,
}

impl HasId for CheckpointObject {
    fn id(&self) -> &str {
        &self.id
    }
}

impl From<CheckpointRow> for CheckpointObject {
    fn from(row: CheckpointRow) -> Self {
        CheckpointObject {
            id: row.id,
            object: "fine_tuning.job.checkpoint".to_string(),
            created_at: row.created_at,
            fine_tuned_model_checkpoint: row.fine_tuned_model_checkpoint,
            fine_tuning_job_id: row.job_id,
            metrics: row.metrics,
            step_number: row.step_number,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::hyperparams::HyperparamRequest;
    use crate::domain::task::Task;

    fn job(status: JobStatus) -> JobRow {
        let mut row = JobRow::new("ftjob-1".into(), "org/m".into(), "file-1".into(), 7, 100);
        row.status = status;
        row.estimated_finish = Some(200);
        row.error = Some(json!({"code": "invalid_n_examples", "message": "too few"}));
        row
    }

    #[test]
    fn message_events_carry_an_empty_data_object() {
        let event = EventObject::from(EventRow::info("ftjob-1", "Created", 100));
        let wire = serde_json::to_value(&event).expect("json");
        assert_eq!(wire["data"], json!({}));
        assert_eq!(wire["type"], "message");
        let metrics = EventRow::metrics("ftjob-1", "Step 1", json!({"step": 1}), 100);
        let wire = serde_json::to_value(EventObject::from(metrics)).expect("json");
        assert_eq!(wire["data"], json!({"step": 1}));
    }

    #[test]
    fn error_is_null_unless_failed_and_complete_when_failed() {
        let ok = JobObject::from(job(JobStatus::Running));
        assert_eq!(ok.error, None);
        assert_eq!(ok.estimated_finish, Some(200));
        let failed = JobObject::from(job(JobStatus::Failed));
        assert_eq!(
            failed.error,
            Some(json!({"code": "invalid_n_examples", "message": "too few", "param": null}))
        );
        assert_eq!(failed.estimated_finish, None);
        let text = serde_json::to_value(&failed).expect("json");
        assert_eq!(text["object"], "fine_tuning.job");
        assert_eq!(text["integrations"], Value::Null);
        assert_eq!(text["seed"], 7);
        assert_eq!(text["organization_id"], ORGANIZATION_ID);
        assert_eq!(
            text["hyperparameters"],
            json!({"batch_size": "auto", "learning_rate_multiplier": "auto", "n_epochs": "auto"})
        );
    }

    fn spec(method: Value) -> JobSpec {
        JobSpec::parse(Some(&method), None).expect("valid method")
    }

    /// What the worker records: 8 × 3 epochs at multiplier 1.8, and DPO's beta.
    fn resolved(beta: Option<f64>) -> ResolvedHyperparameters {
        let mut config = HyperparamRequest::default().resolve(Task::SequenceClassification, 20, 1);
        config.batch_size = 8;
        config.n_epochs = 3;
        config.learning_rate_multiplier = 1.8;
        ResolvedHyperparameters { config, beta }
    }

    fn wire(spec: JobSpec, resolved: Option<ResolvedHyperparameters>) -> Value {
        let mut row = job(JobStatus::Queued);
        row.spec = spec;
        row.resolved = resolved;
        serde_json::to_value(JobObject::from(row)).expect("json")
    }

    #[test]
    fn supervised_echo_shows_auto_then_the_resolved_numbers_and_keeps_extras() {
        let supervised = spec(
            json!({"type": "supervised", "supervised": {"hyperparameters":
            {"n_epochs": 3, "lora_rank": 8, "lr_scheduler": "cosine"}}}),
        );
        let before = wire(supervised.clone(), None);
        assert_eq!(
            before["method"],
            json!({"type": "supervised", "supervised": {"hyperparameters": {
                "batch_size": "auto", "learning_rate_multiplier": "auto", "n_epochs": 3,
                "lora_rank": 8, "lr_scheduler": "cosine"}}})
        );
        assert_eq!(
            before["hyperparameters"],
            json!({"batch_size": "auto", "learning_rate_multiplier": "auto", "n_epochs": 3})
        );
        let after = wire(supervised, Some(resolved(None)));
        assert_eq!(
            after["method"],
            json!({"type": "supervised", "supervised": {"hyperparameters": {
                "batch_size": 8, "learning_rate_multiplier": 1.8, "n_epochs": 3,
                "lora_rank": 8, "lr_scheduler": "cosine"}}})
        );
        assert_eq!(
            after["hyperparameters"],
            json!({"batch_size": 8, "learning_rate_multiplier": 1.8, "n_epochs": 3})
        );
        let minimal = wire(JobSpec::default(), None);
        assert_eq!(
            minimal["method"],
            json!({"type": "supervised", "supervised": {"hyperparameters": {
                "batch_size": "auto", "learning_rate_multiplier": "auto", "n_epochs": "auto"}}})
        );
    }

    #[test]
    fn dpo_echo_has_beta_under_dpo_and_an_empty_legacy_object() {
        let auto_beta = spec(json!({"type": "dpo", "dpo": {"hyperparameters": {"lora_rank": 4}}}));
        let before = wire(auto_beta.clone(), None);
        assert_eq!(
            before["method"],
            json!({"type": "dpo", "dpo": {"hyperparameters": {"beta": "auto",
                "batch_size": "auto", "learning_rate_multiplier": "auto", "n_epochs": "auto",
                "lora_rank": 4}}})
        );
        assert_eq!(before["hyperparameters"], json!({}));
        let after = wire(auto_beta, Some(resolved(Some(0.1))));
        assert_eq!(
            after["method"],
            json!({"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.1,
                "batch_size": 8, "learning_rate_multiplier": 1.8, "n_epochs": 3,
                "lora_rank": 4}}})
        );
        assert_eq!(after["hyperparameters"], json!({}));
        let given = spec(json!({"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.5}}}));
        assert_eq!(
            wire(given, None)["method"]["dpo"]["hyperparameters"]["beta"],
            json!(0.5)
        );
    }

    #[test]
    fn a_resolved_job_echoes_the_options_of_its_own_task_only() {
        let qa = spec(
            json!({"type": "supervised", "supervised": {"hyperparameters":
            {"doc_stride": 64}}}),
        );
        let config = qa
            .method
            .hyperparameters()
            .resolve(Task::QuestionAnswering, 20, 1);
        let before = wire(qa.clone(), None);
        assert_eq!(
            before["method"]["supervised"]["hyperparameters"]["doc_stride"],
            64
        );
        assert!(before["method"]["supervised"]["hyperparameters"]
            .get("max_answer_length")
            .is_none());
        let after = wire(qa, Some(ResolvedHyperparameters { config, beta: None }));
        let echoed = &after["method"]["supervised"]["hyperparameters"];
        assert_eq!(
            (&echoed["doc_stride"], &echoed["max_answer_length"]),
            (&json!(64), &json!(30))
        );
        assert!(echoed.get("label_all_tokens").is_none(), "{echoed}");
        // OpenAI's legacy object keeps its three knobs.
        let legacy: Vec<&String> = after["hyperparameters"]
            .as_object()
            .map(|o| o.keys().collect())
            .unwrap_or_default();
        assert_eq!(
            legacy,
            ["batch_size", "learning_rate_multiplier", "n_epochs"]
        );

        let ner = JobSpec::default();
        let config = HyperparamRequest::default().resolve(Task::TokenClassification, 20, 1);
        let echoed = wire(ner, Some(ResolvedHyperparameters { config, beta: None }));
        assert_eq!(
            echoed["method"]["supervised"]["hyperparameters"]["label_all_tokens"],
            false
        );

        let classification = wire(JobSpec::default(), Some(resolved(None)));
        let echoed = &classification["method"]["supervised"]["hyperparameters"];
        for key in [
            "doc_stride",
            "max_answer_length",
            "label_all_tokens",
            "max_prompt_length",
        ] {
            assert!(echoed.get(key).is_none(), "{key}: {echoed}");
        }

        // A job resolved before the options existed still reads and echoes.
        let mut stored = serde_json::to_value(resolved(None)).expect("json");
        stored["config"]
            .as_object_mut()
            .expect("config")
            .remove("task_options");
        let old: ResolvedHyperparameters = serde_json::from_value(stored).expect("reads");
        let echoed = wire(JobSpec::default(), Some(old));
        assert_eq!(
            echoed["method"]["supervised"]["hyperparameters"]["n_epochs"],
            3
        );
    }
}
