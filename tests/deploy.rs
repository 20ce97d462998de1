//! The operator's files and interfaces checked by the tools that consume
//! them: `promtool` on the `/metrics` exposition and the alert rules.
//!
//! Tests that need a tool outside the Rust toolchain are `#[ignore]`d so a
//! bare `cargo test` passes on a fresh machine; `.ci/run` installs the tools
//! and runs this file with `--include-ignored`, where a missing tool fails
//! the test loudly.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::{get, Harness, TIMEOUT};

/// Runs `program` with `args` and `stdin`, bounded by the test timeout;
/// answers (success, stdout + stderr). A missing program panics: these
/// tests run only where `.ci/run` installed it.
fn run_tool(program: &str, args: &[&str], stdin: &[u8]) -> (bool, String) {
    let out = tempfile::tempdir().expect("temp dir");
    let file = |name: &str| std::fs::File::create(out.path().join(name)).expect("output file");
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(file("out"))
        .stderr(file("err"))
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run {program} ({e}): install it (.ci/run does: apt-get install prometheus chromium systemd)")
        });
    // Small inputs: the pipe takes them whole before the tool reads.
    let mut pipe = child.stdin.take().expect("stdin");
    pipe.write_all(stdin).expect("stdin written");
    drop(pipe);
    let status = common::wait_bounded(&mut child, TIMEOUT)
        .unwrap_or_else(|| panic!("{program} did not finish within {TIMEOUT:?}"));
    let read = |name: &str| std::fs::read_to_string(out.path().join(name)).unwrap_or_default();
    (status.success(), read("out") + &read("err"))
}

#[tokio::test]
#[ignore = "needs promtool (Debian package prometheus): see .ci/run"]
async fn promtool_accepts_the_metrics_exposition() {
    let h = Harness::start().await;
    // Labelled series and a histogram with samples, not just empty families.
    let r = get(
        &h.url("/repos/octo-org/public-repo/actions/artifacts"),
        None,
    )
    .await;
    assert_eq!(r.status, http::StatusCode::OK);
    let text = get(&format!("http://{}/metrics", h.mirror), None).await;
    assert!(text
        .body
        .windows(b"artifact_mirror_request_duration_seconds_bucket{".len())
        .any(|w| w == b"artifact_mirror_request_duration_seconds_bucket{"));
    let (ok, report) = tokio::task::spawn_blocking(move || {
        run_tool("promtool", &["check", "metrics"], &text.body)
    })
    .await
    .expect("promtool ran");
    // promtool exits non-zero on a parse error and on lint problems alike.
    assert!(ok, "promtool check metrics:\n{report}");
}

fn repo_file(path: &str) -> String {
    let full = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
#[ignore = "needs promtool (Debian package prometheus): see .ci/run"]
fn promtool_accepts_the_alert_rules_and_their_unit_tests() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/prometheus");
    let (rules, tests) = (
        format!("{dir}/alerts.yml"),
        format!("{dir}/alerts.test.yml"),
    );
    // Syntax and lint, then each alert fires on the series meant to raise
    // it, and only there.
    for args in [["check", "rules", &rules], ["test", "rules", &tests]] {
        let (ok, report) = run_tool("promtool", &args, b"");
        assert!(ok, "promtool {args:?}:\n{report}");
    }
}

/// Every series name a mirror exports after some traffic: sample names,
/// and for histograms the `_bucket`/`_sum`/`_count` of each `# TYPE`.
async fn exported_names() -> std::collections::BTreeSet<String> {
    let h = Harness::start().await;
    // Traffic that creates labelled series, upstream timings and the
    // lowest rate-limit remaining.
    let r = get(
        &h.url("/repos/octo-org/public-repo/actions/artifacts"),
        None,
    )
    .await;
    assert_eq!(r.status, http::StatusCode::OK);
    let r = get(&format!("http://{}/metrics", h.mirror), None).await;
    let text = String::from_utf8(r.body.to_vec()).expect("UTF-8");
    let mut names = std::collections::BTreeSet::new();
    for line in text.lines() {
        if let Some(typed) = line.strip_prefix("# TYPE ") {
            let (name, kind) = typed.split_once(' ').expect("# TYPE name kind");
            names.insert(name.to_owned());
            if kind == "histogram" {
                for suffix in ["_bucket", "_sum", "_count"] {
                    names.insert(format!("{name}{suffix}"));
                }
            }
        } else if !line.starts_with('#') && !line.is_empty() {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            names.insert(line[..end].to_owned());
        }
    }
    names
}

/// The `artifact_mirror_…` names in a PromQL expression.
fn names_in(expr: &str) -> Vec<String> {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|w| w.starts_with("artifact_mirror_"))
        .map(str::to_owned)
        .collect()
}

/// Every string under a key in `keys`, anywhere in the document.
fn strings_under(value: &serde_json::Value, keys: &[&str], out: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                match v {
                    serde_json::Value::String(s) if keys.contains(&k.as_str()) => {
                        out.push(s.clone())
                    }
                    _ => strings_under(v, keys, out),
                }
            }
        }
        serde_json::Value::Array(items) => {
            for v in items {
                strings_under(v, keys, out);
            }
        }
        _ => {}
    }
}

#[tokio::test]
async fn dashboard_and_alerts_use_only_exported_series() {
    let exported = exported_names().await;

    let dashboard: serde_json::Value =
        serde_json::from_str(&repo_file("deploy/grafana/artifact-mirror.json"))
            .expect("the dashboard is JSON");
    let mut queries = Vec::new();
    strings_under(&dashboard, &["expr", "query", "definition"], &mut queries);

    let rules: serde_json::Value =
        serde_norway::from_str(&repo_file("deploy/prometheus/alerts.yml"))
            .expect("the alert rules are YAML");
    let mut alert_exprs = Vec::new();
    strings_under(&rules, &["expr"], &mut alert_exprs);
    assert_eq!(alert_exprs.len(), 4, "one expr per alert: {alert_exprs:?}");

    for (file, exprs) in [("dashboard", &queries), ("alerts", &alert_exprs)] {
        let used: std::collections::BTreeSet<String> =
            exprs.iter().flat_map(|e| names_in(e)).collect();
        assert!(used.len() >= 4, "{file} uses too few series: {used:?}");
        let unknown: Vec<_> = used.difference(&exported).collect();
        assert!(
            unknown.is_empty(),
            "{file} uses series the mirror does not export: {unknown:?}\nexported: {exported:?}"
        );
    }
}
