//! The dependency rules of `lib.rs`, checked on the source: a module's code (its tests
//! excepted) names none of the crates or modules it must not use.

use std::path::Path;

/// Every code line (comments dropped) of the non-test `.rs` files under `src/<module>`.
fn code_lines(module: &str) -> Vec<(String, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("src")
        .join(module);
    let mut lines = Vec::new();
    for entry in walkdir::WalkDir::new(&root) {
        let entry = entry.expect("walk src");
        let path = entry.path();
        let name = path.to_string_lossy().into_owned();
        let file = entry.file_name().to_string_lossy();
        // `tests.rs`, `*_tests.rs`, `tests_*.rs`, `tests/` folders, the fixtures' `testing.rs`.
        let is_test = file.contains("tests")
            || file == "testing.rs"
            || path.components().any(|part| part.as_os_str() == "tests");
        if path.extension().is_none_or(|ext| ext != "rs") || is_test {
            continue;
        }
        let text = std::fs::read_to_string(path).expect("read source");
        for line in text.lines() {
            let code = line.split("//").next().unwrap_or_default();
            if !code.trim().is_empty() {
                lines.push((name.clone(), code.to_string()));
            }
        }
    }
    assert!(!lines.is_empty(), "no source under {}", root.display());
    lines
}

/// The lines of `module` that name any of `forbidden`.
fn violations(module: &str, forbidden: &[&str]) -> Vec<String> {
    code_lines(module)
        .into_iter()
        .filter(|(_, code)| forbidden.iter().any(|name| code.contains(name)))
        .map(|(file, code)| format!("{file}: {}", code.trim()))
        .collect()
}

#[test]
fn modules_keep_their_dependency_rules() {
    let async_stack = ["tokio::", "sqlx::", "axum::"];
    // The CLI is a client: it reaches the server over HTTP only, reading replies into
    // `api::objects`.
    let server_side = [
        "candle",
        "sqlx::",
        "axum::",
        "crate::app",
        "crate::store",
        "crate::jobs",
        "crate::blobs",
        "crate::train",
        "crate::tasks",
        "crate::zoo",
        "crate::infer",
        "crate::artifacts",
    ];
    let rules: [(&str, &[&str]); 7] = [
        ("train", &async_stack),
        ("tasks", &async_stack),
        ("zoo", &async_stack),
        ("infer", &["crate::train"]),
        (
            "api",
            &["candle", "crate::train", "crate::tasks", "crate::zoo"],
        ),
        (
            "artifacts",
            &[
                "crate::train",
                "crate::tasks",
                "crate::infer",
                "crate::jobs",
                "tokio::",
            ],
        ),
        ("cli", &server_side),
    ];
    for (module, forbidden) in rules {
        let found = violations(module, forbidden);
        assert!(
            found.is_empty(),
            "`{module}` uses what it must not:\n{}",
            found.join("\n")
        );
    }
}

#[test]
fn the_cli_reads_only_the_wire_objects_of_api() {
    let beyond: Vec<String> = code_lines("cli")
        .into_iter()
        .filter(|(_, code)| code.contains("crate::api") && !code.contains("crate::api::objects"))
        .map(|(file, code)| format!("{file}: {}", code.trim()))
        .collect();
    assert!(
        beyond.is_empty(),
        "`cli` reaches into `api`:\n{}",
        beyond.join("\n")
    );
}

#[test]
fn the_rule_check_sees_a_use_line() {
    // The checker itself: a module that does use the async stack is reported.
    assert!(!violations("jobs", &["tokio::"]).is_empty());
}
