//! `temper jobs create|list|get|events|cancel|pause|resume` (`watch` is in `watch.rs`,
//! `estimate` in `estimate.rs`).

use serde_json::{json, Map, Value};

use super::client::{parse, segment, ApiClient, Page};
use super::error::CliError;
use super::output::{self, print};
use super::watch;
use crate::api::objects::{EventObject, JobObject};
use crate::config::client::{CreateJobArgs, JobsCommand, Output};

pub async fn run(client: &ApiClient, command: JobsCommand) -> Result<(), CliError> {
    match command {
        JobsCommand::Create(args) => {
            let job = client
                .post("/fine_tuning/jobs", &create_body(&args)?)
                .await?;
            show_job(job, args.output)
        }
        JobsCommand::Estimate(args) => super::estimate::run(client, &args).await,
        JobsCommand::List { limit, output } => {
            let page: Value = client
                .get(&format!("/fine_tuning/jobs{}", limit_query(limit)))
                .await?;
            if output.json {
                return print(&output::json(&page));
            }
            let page: Page<JobObject> = parse(page)?;
            print(&jobs_table(&page.data))
        }
        JobsCommand::Get { id, output } => {
            let job = client.get(&job_path(&id, "")).await?;
            show_job(job, output)
        }
        JobsCommand::Events { id, limit, output } => {
            let page: Value = client
                .get(&job_path(&id, &format!("/events{}", limit_query(limit))))
                .await?;
            if output.json {
                return print(&output::json(&page));
            }
            let page: Page<EventObject> = parse(page)?;
            print(&events_table(&page.data))
        }
        JobsCommand::Watch { id } => watch::run(client, &id).await,
        JobsCommand::Cancel { id, output } => control(client, &id, "cancel", output).await,
        JobsCommand::Pause { id, output } => control(client, &id, "pause", output).await,
        JobsCommand::Resume { id, output } => control(client, &id, "resume", output).await,
    }
}

/// `/fine_tuning/jobs/<id><rest>`.
pub fn job_path(id: &str, rest: &str) -> String {
    format!("/fine_tuning/jobs/{}{rest}", segment(id))
}

fn limit_query(limit: Option<u32>) -> String {
    limit.map_or_else(String::new, |limit| format!("?limit={limit}"))
}

async fn control(
    client: &ApiClient,
    id: &str,
    action: &str,
    output: Output,
) -> Result<(), CliError> {
    let job = client
        .post(&job_path(id, &format!("/{action}")), &json!({}))
        .await?;
    show_job(job, output)
}

fn show_job(job: Value, output: Output) -> Result<(), CliError> {
    if output.json {
        return print(&output::json(&job));
    }
    print(&job_details(&parse(job)?))
}

/// The request body: `method.<type>.hyperparameters` holds `--epochs` as `n_epochs` and
/// every `--hyperparameter`; a key given twice is refused rather than one silently winning.
pub fn create_body(args: &CreateJobArgs) -> Result<Value, CliError> {
    let mut hyperparameters = Map::new();
    let epochs = args.epochs.map(|n| ("n_epochs".to_string(), json!(n)));
    for (key, value) in args.hyperparameters.iter().cloned().chain(epochs) {
        if hyperparameters.contains_key(&key) {
            return Err(CliError::Usage(format!(
                "the hyperparameter `{key}` is given twice (`--epochs` sets `n_epochs`)"
            )));
        }
        hyperparameters.insert(key, value);
    }
    let method = args.method.wire_name();
    let mut body = json!({
        "model": args.model,
        "training_file": args.training_file,
        "method": {"type": method, method: {"hyperparameters": hyperparameters}},
    });
    for (key, value) in [
        ("validation_file", &args.validation_file),
        ("suffix", &args.suffix),
    ] {
        if let Some(value) = value {
            body[key] = json!(value);
        }
    }
    Ok(body)
}

pub fn jobs_table(jobs: &[JobObject]) -> String {
    let rows = jobs
        .iter()
        .map(|job| {
            vec![
                job.id.clone(),
                job.model.clone(),
                job.status.clone(),
                output::optional(job.fine_tuned_model.as_deref()),
                output::time(job.created_at),
            ]
        })
        .collect();
    output::table(
        &["ID", "MODEL", "STATUS", "FINE-TUNED MODEL", "CREATED"],
        rows,
    )
}

/// The job's fields that say what it is and where it stands.
pub fn job_details(job: &JobObject) -> String {
    let method = job.method["type"].as_str().unwrap_or("supervised");
    let hyperparameters = &job.method[method]["hyperparameters"];
    let mut rows = vec![
        ("id", job.id.clone()),
        ("status", job.status.clone()),
        ("model", job.model.clone()),
        (
            "fine_tuned_model",
            output::optional(job.fine_tuned_model.as_deref()),
        ),
        ("training_file", job.training_file.clone()),
        (
            "validation_file",
            output::optional(job.validation_file.as_deref()),
        ),
        ("method", method.to_string()),
        ("hyperparameters", hyperparameters.to_string()),
        ("trained_tokens", output::optional(job.trained_tokens)),
        ("created_at", output::time(job.created_at)),
        (
            "finished_at",
            output::optional(job.finished_at.map(output::time)),
        ),
    ];
    if let Some(finish) = job.estimated_finish {
        rows.push(("estimated_finish", output::time(finish)));
    }
    if !job.result_files.is_empty() {
        rows.push(("result_files", job.result_files.join(", ")));
    }
    if let Some(error) = &job.error {
        let message = error["message"].as_str().unwrap_or_default();
        let code = error["code"].as_str().unwrap_or_default();
        rows.push(("error", format!("{message} ({code})")));
    }
    output::key_values(&rows)
}

/// The events oldest first (the server lists the newest first), so the table reads as a log.
pub fn events_table(events: &[EventObject]) -> String {
    let rows = events
        .iter()
        .rev()
        .map(|event| {
            vec![
                output::time(event.created_at),
                event.level.clone(),
                event.message.clone(),
            ]
        })
        .collect();
    output::table(&["CREATED", "LEVEL", "MESSAGE"], rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::client::TuningMethod;

    fn args() -> CreateJobArgs {
        CreateJobArgs {
            model: "org/m".into(),
            training_file: "file-t".into(),
            validation_file: None,
            suffix: None,
            epochs: None,
            hyperparameters: Vec::new(),
            method: TuningMethod::Supervised,
            output: Output::default(),
        }
    }

    #[test]
    fn the_create_body_nests_every_knob_under_the_method() {
        let minimal = create_body(&args()).expect("valid");
        assert_eq!(
            minimal,
            json!({"model": "org/m", "training_file": "file-t",
                   "method": {"type": "supervised", "supervised": {"hyperparameters": {}}}})
        );
        let full = create_body(&CreateJobArgs {
            validation_file: Some("file-v".into()),
            suffix: Some("cli".into()),
            epochs: Some(3),
            hyperparameters: vec![("beta".into(), json!(0.2)), ("lora_rank".into(), json!(4))],
            method: TuningMethod::Dpo,
            ..args()
        })
        .expect("valid");
        assert_eq!(
            full,
            json!({"model": "org/m", "training_file": "file-t", "validation_file": "file-v",
                   "suffix": "cli",
                   "method": {"type": "dpo", "dpo": {"hyperparameters":
                       {"beta": 0.2, "lora_rank": 4, "n_epochs": 3}}}})
        );
    }

    #[test]
    fn a_knob_given_twice_is_refused() {
        let twice = CreateJobArgs {
            epochs: Some(2),
            hyperparameters: vec![("n_epochs".into(), json!(3))],
            ..args()
        };
        let error = create_body(&twice).expect_err("n_epochs twice");
        assert!(
            error.to_string().contains("`n_epochs` is given twice"),
            "{error}"
        );
        let repeated = CreateJobArgs {
            hyperparameters: vec![
                ("lora_rank".into(), json!(4)),
                ("lora_rank".into(), json!(8)),
            ],
            ..args()
        };
        assert!(create_body(&repeated).is_err());
    }

    fn job(status: &str) -> JobObject {
        parse(json!({
            "id": "ftjob-1", "object": "fine_tuning.job", "created_at": 0,
            "error": null, "fine_tuned_model": null, "finished_at": null,
            "hyperparameters": {}, "model": "org/m", "organization_id": "org-temper",
            "result_files": [], "status": status, "trained_tokens": null,
            "training_file": "file-t", "validation_file": null, "integrations": null,
            "seed": 1, "estimated_finish": null,
            "method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2}}},
            "metadata": null, "user_provided_suffix": null,
        }))
        .expect("a job object")
    }

    #[test]
    fn job_details_show_the_method_knobs_and_the_error() {
        let mut failed = job("failed");
        failed.error =
            Some(json!({"message": "too few", "code": "invalid_n_examples", "param": null}));
        let text = job_details(&failed);
        let line = |key: &str| {
            text.lines()
                .find(|l| l.split_whitespace().next() == Some(key))
                .map(|l| l[key.len()..].trim().to_string())
        };
        assert_eq!(line("status").as_deref(), Some("failed"));
        assert_eq!(line("method").as_deref(), Some("supervised"));
        assert_eq!(
            line("hyperparameters").as_deref(),
            Some(r#"{"n_epochs":2}"#)
        );
        assert_eq!(line("fine_tuned_model").as_deref(), Some("-"));
        assert_eq!(
            line("error").as_deref(),
            Some("too few (invalid_n_examples)")
        );
        assert_eq!(line("estimated_finish"), None);
    }

    #[test]
    fn events_read_oldest_first() {
        let page: Page<EventObject> = parse(json!({"object": "list", "has_more": false, "data": [
            {"id": "e2", "object": "fine_tuning.job.event", "created_at": 60, "level": "info",
             "message": "Step 1/2: training loss=0.5", "type": "metrics", "data": {"step": 1}},
            {"id": "e1", "object": "fine_tuning.job.event", "created_at": 0, "level": "info",
             "message": "Created fine-tuning job: ftjob-1", "type": "message", "data": {}},
        ]}))
        .expect("an event page");
        let text = events_table(&page.data);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[1],
            "1970-01-01T00:00:00Z  info   Created fine-tuning job: ftjob-1"
        );
        assert_eq!(
            lines[2],
            "1970-01-01T00:01:00Z  info   Step 1/2: training loss=0.5"
        );
    }
}
