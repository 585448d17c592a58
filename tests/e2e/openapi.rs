//! `openapi.yaml` against the server: the same routes both ways, the responses every route
//! can give (401 on `/v1`, 400 on lists, 413 on JSON bodies, 429 with `Retry-After`), every
//! limit the spec states equal to the constant the server enforces, and the document served
//! at `/openapi.yaml`. The spec is read with a small line parser: it keeps one shape
//! (two-space paths, four-space methods, flow mappings for parameters).

use std::collections::BTreeSet;

use serde_json::{json, Map, Value};
use temper::api::limits;

use crate::common::TestServer;

const SPEC: &str = include_str!("../../openapi.yaml");

/// `{file_id}`, `{*id}` → `{}` so spec and router paths compare by shape.
fn normalize(path: &str) -> String {
    let mut out = String::new();
    let mut in_param = false;
    for c in path.chars() {
        match c {
            '{' => {
                in_param = true;
                out.push_str("{}");
            }
            '}' => in_param = false,
            _ if !in_param => out.push(c),
            _ => {}
        }
    }
    out
}

/// One operation of the `paths:` section: its method, path and the lines of its block.
struct Operation<'a> {
    method: String,
    path: String,
    lines: Vec<&'a str>,
}

impl Operation<'_> {
    fn id(&self) -> String {
        format!("{} {}", self.method, self.path)
    }

    fn responses(&self) -> BTreeSet<u16> {
        self.lines
            .iter()
            .filter_map(|l| l.strip_prefix("        \""))
            .filter_map(|l| l.get(..3)?.parse().ok())
            .collect()
    }

    /// The line of query parameter `name`.
    fn parameter(&self, name: &str) -> Option<&str> {
        let needle = format!("name: {name},");
        self.lines.iter().copied().find(|l| l.contains(&needle))
    }
}

fn operations(yaml: &str) -> Vec<Operation<'_>> {
    let mut operations: Vec<Operation> = Vec::new();
    let mut in_paths = false;
    let mut path: Option<String> = None;
    // Inside a method's block (not a path-level `parameters:` block).
    let mut in_method = false;
    for line in yaml.lines() {
        if !line.starts_with(' ') && !line.is_empty() {
            in_paths = line == "paths:";
            continue;
        }
        if !in_paths {
            continue;
        }
        if let Some(rest) = line.strip_prefix("  /") {
            path = Some(format!("/{}", rest.trim_end_matches(':')));
            in_method = false;
        } else if let Some(key) = line.strip_prefix("    ").filter(|k| !k.starts_with(' ')) {
            let method = key.trim_end_matches(':');
            in_method = ["get", "post", "put", "patch", "delete"].contains(&method);
            if let (true, Some(path)) = (in_method, &path) {
                operations.push(Operation {
                    method: method.to_uppercase(),
                    path: path.clone(),
                    lines: Vec::new(),
                });
            }
        } else if let (true, Some(operation)) = (in_method, operations.last_mut()) {
            operation.lines.push(line);
        }
    }
    operations
}

/// The lines of `components.schemas.<name>`.
fn schema<'a>(yaml: &'a str, name: &str) -> Vec<&'a str> {
    let header = format!("    {name}:");
    yaml.lines()
        .skip_while(|l| *l != header)
        .skip(1)
        .take_while(|l| l.starts_with("      "))
        .collect()
}

/// The number after `key: ` in a flow mapping line, e.g. `maximum` in
/// `{ type: integer, minimum: 1, maximum: 100 }`.
fn number(line: &str, key: &str) -> i64 {
    let needle = format!(" {key}: ");
    let start = line
        .find(&needle)
        .unwrap_or_else(|| panic!("no `{key}` in {line}"))
        + needle.len();
    line[start..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .unwrap_or_else(|_| panic!("`{key}` is not a number in {line}"))
}

/// The line of property `name` (any depth) in `lines`.
fn property<'a>(lines: &[&'a str], name: &str) -> &'a str {
    let needle = format!("{name}:");
    lines
        .iter()
        .copied()
        .find(|l| l.trim_start().starts_with(&needle))
        .unwrap_or_else(|| panic!("no property `{name}`"))
}

#[test]
fn every_route_is_in_the_spec_and_the_reverse() {
    assert!(SPEC.starts_with("openapi: 3.1"));
    let spec: BTreeSet<(String, String)> = operations(SPEC)
        .iter()
        .map(|op| (op.method.clone(), normalize(&op.path)))
        .collect();
    let served: BTreeSet<(String, String)> = temper::api::routes()
        .into_iter()
        .map(|(method, path)| (method.to_string(), normalize(path)))
        .collect();
    let missing_from_spec: Vec<_> = served.difference(&spec).collect();
    let not_served: Vec<_> = spec.difference(&served).collect();
    assert!(
        missing_from_spec.is_empty(),
        "routes missing from openapi.yaml: {missing_from_spec:?}"
    );
    assert!(
        not_served.is_empty(),
        "spec routes the router does not serve: {not_served:?}"
    );
    assert_eq!(served.len(), 35);
}

#[test]
fn every_route_documents_the_errors_it_can_give() {
    let operations = operations(SPEC);
    assert_eq!(operations.len(), 35);
    for op in &operations {
        let responses = op.responses();
        let v1 = op.path.starts_with("/v1/");
        assert_eq!(responses.contains(&401), v1, "401 of {}", op.id());
        if op.parameter("limit").is_some() {
            assert!(responses.contains(&400), "400 of the list {}", op.id());
        }
        let request_body: Vec<&&str> = op
            .lines
            .iter()
            .skip_while(|l| l.trim() != "requestBody:")
            .take_while(|l| l.trim() != "responses:")
            .collect();
        if request_body.iter().any(|l| l.trim() == "application/json:") {
            assert!(responses.contains(&413), "413 of {}", op.id());
        }
        if responses.contains(&429) {
            let line = op
                .lines
                .iter()
                .find(|l| l.contains("\"429\""))
                .expect("429");
            assert!(line.contains("responses/Overloaded"), "{}: {line}", op.id());
        }
    }
    let overloaded = SPEC
        .split("    Overloaded:")
        .nth(1)
        .expect("an Overloaded response");
    assert!(overloaded.contains("Retry-After:"));
}

#[test]
fn the_spec_states_the_limits_the_server_enforces() {
    let operations = operations(SPEC);
    let op = |method: &str, path: &str| {
        operations
            .iter()
            .find(|o| o.method == method && o.path == path)
            .unwrap_or_else(|| panic!("{method} {path}"))
    };
    let pages = [
        ("/v1/files", limits::FILES_PAGE),
        ("/v1/fine_tuning/jobs", limits::JOBS_PAGE),
        (
            "/v1/fine_tuning/jobs/{fine_tuning_job_id}/events",
            limits::EVENTS_PAGE,
        ),
        (
            "/v1/fine_tuning/jobs/{fine_tuning_job_id}/checkpoints",
            limits::CHECKPOINTS_PAGE,
        ),
    ];
    for (path, page) in pages {
        let line = op("GET", path).parameter("limit").expect("limit");
        assert_eq!(number(line, "minimum"), 1, "{path}");
        assert_eq!(number(line, "maximum"), page.max, "{path}");
        assert_eq!(number(line, "default"), page.default, "{path}");
    }
    let classify = &op("POST", "/v1/classifications").lines;
    let inputs = classify
        .iter()
        .find(|l| l.contains("type: array"))
        .expect("input list");
    assert_eq!(
        number(inputs, "maxItems") as usize,
        limits::CLASSIFY_MAX_INPUTS
    );
    let images = classify
        .iter()
        .find(|l| l.contains("type: array") && l.contains("ImageUrlPart"))
        .expect("image list");
    assert_eq!(
        number(images, "maxItems") as usize,
        limits::CLASSIFY_MAX_IMAGE_INPUTS
    );
    let tag = &op("POST", "/v1/token_classifications").lines;
    let texts = tag
        .iter()
        .find(|l| l.contains("type: array"))
        .expect("input list");
    assert_eq!(
        number(texts, "maxItems") as usize,
        limits::TOKEN_CLASSIFY_MAX_INPUTS
    );

    let job = schema(SPEC, "CreateFineTuningJobRequest");
    assert_eq!(
        number(property(&job, "suffix"), "maxLength") as usize,
        limits::MAX_SUFFIX_LEN
    );
    assert_eq!(number(property(&job, "seed"), "maximum"), limits::MAX_SEED);
    assert_eq!(
        number(property(&job, "maxProperties"), "maxProperties") as usize,
        limits::MAX_METADATA_PAIRS
    );
    assert_eq!(
        number(property(&job, "propertyNames"), "maxLength") as usize,
        limits::MAX_METADATA_KEY_CHARS
    );
    assert_eq!(
        number(property(&job, "additionalProperties"), "maxLength") as usize,
        limits::MAX_METADATA_VALUE_CHARS
    );

    let chat = schema(SPEC, "CreateChatCompletionRequest");
    assert_eq!(number(property(&chat, "n"), "maximum"), limits::MAX_N);
    assert_eq!(
        number(property(&chat, "top_logprobs"), "maximum"),
        limits::CHAT_MAX_TOP_LOGPROBS
    );
    let completion = schema(SPEC, "CreateCompletionRequest");
    assert_eq!(number(property(&completion, "n"), "maximum"), limits::MAX_N);
    assert_eq!(
        number(property(&completion, "logprobs"), "maximum"),
        limits::COMPLETION_MAX_LOGPROBS
    );
    let stop = schema(SPEC, "Stop");
    let list = stop
        .iter()
        .find(|l| l.contains("type: array"))
        .expect("stop list");
    assert_eq!(number(list, "maxItems") as usize, limits::MAX_STOP);
}

/// The hyperparameter ranges live in the domain's parser: the spec's bounds must be
/// accepted and one past them refused.
#[test]
fn the_spec_states_the_hyperparameter_ranges_the_server_enforces() {
    let hyper = schema(SPEC, "Hyperparameters");
    for name in [
        "n_epochs",
        "batch_size",
        "doc_stride",
        "max_answer_length",
        "max_prompt_length",
    ] {
        let line = property(&hyper, name);
        let (min, max) = (number(line, "minimum"), number(line, "maximum"));
        let parse = |value: i64| {
            let object: Map<String, Value> =
                [(name.to_string(), json!(value))].into_iter().collect();
            temper::domain::hyperparams::HyperparamRequest::parse(&object)
        };
        assert!(
            parse(min).is_ok() && parse(max).is_ok(),
            "{name} {min}..={max}"
        );
        assert!(
            parse(min - 1).is_err() && parse(max + 1).is_err(),
            "{name} {min}..={max}"
        );
    }
}

#[tokio::test]
async fn the_service_serves_the_committed_document() {
    let server = TestServer::spawn().await;
    let reply = server
        .client
        .get(server.url("/openapi.yaml"))
        .send()
        .await
        .expect("request");
    assert_eq!(reply.status(), 200);
    assert_eq!(
        reply.headers().get("content-type").map(|v| v.as_bytes()),
        Some(&b"application/yaml"[..])
    );
    assert_eq!(reply.text().await.expect("body"), SPEC);
}
