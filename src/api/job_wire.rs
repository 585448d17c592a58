//! Wire shapes of `fine_tuning.job`, `fine_tuning.job.event` and
//! `fine_tuning.job.checkpoint`, exactly as OpenAI returns them.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::wire::HasId;
use crate::domain::job::JobStatus;
use crate::store::{CheckpointRow, EventRow, JobRow};

/// temper has one organisation.
pub const ORGANIZATION_ID: &str = "org-temper";

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
            // OpenAI's spec types it as an object; DPO jobs store none.
            hyperparameters: match row.hyperparameters {
                Value::Null => json!({}),
                other => other,
            },
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
            method: row.method,
            metadata: row.metadata,
            user_provided_suffix: row.suffix,
            id: row.id,
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
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
        assert_eq!(text["hyperparameters"], json!({}));
    }
}
