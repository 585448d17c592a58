//! `openapi.yaml` lists exactly the routes the router serves.

use std::collections::BTreeSet;

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

/// `(METHOD, path)` pairs from the spec's `paths:` section (two-space path keys,
/// four-space method keys).
fn spec_routes(yaml: &str) -> BTreeSet<(String, String)> {
    let mut routes = BTreeSet::new();
    let mut in_paths = false;
    let mut current: Option<String> = None;
    for line in yaml.lines() {
        if !line.starts_with(' ') && !line.is_empty() {
            in_paths = line == "paths:";
            continue;
        }
        if !in_paths {
            continue;
        }
        if let Some(path) = line.strip_prefix("  /") {
            current = Some(format!("/{}", path.trim_end_matches(':')));
        } else if let (Some(path), Some(key)) = (&current, line.strip_prefix("    ")) {
            let method = key.trim_end_matches(':');
            if ["get", "post", "put", "patch", "delete"].contains(&method) {
                routes.insert((method.to_uppercase(), normalize(path)));
            }
        }
    }
    routes
}

#[test]
fn every_route_is_in_the_spec_and_the_reverse() {
    let yaml = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.yaml"))
        .expect("openapi.yaml");
    assert!(yaml.starts_with("openapi: 3.1"));
    let spec = spec_routes(&yaml);
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
    assert_eq!(served.len(), 21);
}
