//! The operator's files under `deploy/` and the `/metrics` exposition,
//! checked by the tools that consume them (`promtool`, `systemd-analyze`)
//! and against what the mirror really exports and resolves.
//!
//! Tests that need a tool outside the Rust toolchain are `#[ignore]`d so a
//! bare `cargo test` passes on a fresh machine; `.ci/run` installs the tools
//! and runs this file with `--include-ignored`, where a missing tool fails
//! the test loudly.

mod common;

use common::{get, Harness, TIMEOUT};

/// (success, stdout + stderr) of a tool given `stdin`.
fn run_tool(program: &str, args: &[&str], stdin: &[u8]) -> (bool, String) {
    let (ok, out, err) = common::run_tool(program, args, stdin, TIMEOUT);
    (ok, out + &err)
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

/// A YAML file of the repository as JSON values, for `pointer` lookups.
fn yaml(path: &str) -> serde_json::Value {
    serde_norway::from_str(&repo_file(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn at<'a>(v: &'a serde_json::Value, pointer: &str) -> &'a serde_json::Value {
    v.pointer(pointer)
        .unwrap_or_else(|| panic!("no {pointer} in {v:#}"))
}

/// `check-config` run with `env` only: the settings the mirror would use.
fn resolved_settings(env: &[(String, String)]) -> toml::Table {
    let mut cmd = common::mirror_command();
    cmd.envs(env.iter().map(|(k, v)| (k, v)));
    let out = cmd.arg("check-config").output().expect("binary runs");
    assert!(
        out.status.success(),
        "check-config: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    toml::from_str(&String::from_utf8_lossy(&out.stdout)).expect("check-config prints TOML")
}

fn setting(settings: &toml::Table, key: &str) -> String {
    settings
        .get(key)
        .and_then(toml::Value::as_str)
        .unwrap_or_else(|| panic!("check-config prints {key}"))
        .to_owned()
}

#[test]
fn kubernetes_manifests_hang_together() {
    let kustomization = yaml("deploy/kubernetes/kustomization.yaml");
    let docs: Vec<serde_json::Value> = at(&kustomization, "/resources")
        .as_array()
        .expect("resources list")
        .iter()
        .map(|r| {
            yaml(&format!(
                "deploy/kubernetes/{}",
                r.as_str().expect("a path")
            ))
        })
        .collect();
    let of_kind = |kind: &str| {
        docs.iter()
            .find(|d| d["kind"] == kind)
            .unwrap_or_else(|| panic!("no {kind} in the kustomization"))
    };
    let workload = of_kind("Deployment");
    let pod = at(workload, "/spec/template/spec");
    let labels = at(workload, "/spec/template/metadata/labels");
    assert_eq!(at(workload, "/spec/selector/matchLabels"), labels);
    let containers = at(pod, "/containers").as_array().expect("containers");
    assert_eq!(containers.len(), 1);
    let c = &containers[0];

    // Non-root, read-only root, no privilege escalation, the image's user.
    assert_eq!(at(pod, "/securityContext/runAsNonRoot"), true);
    let image_user = repo_file("Dockerfile")
        .lines()
        .rfind(|l| l.starts_with("USER "))
        .and_then(|l| l["USER ".len()..].split(':').next().map(str::to_owned))
        .expect("the Dockerfile's USER");
    assert_eq!(
        at(pod, "/securityContext/runAsUser").to_string(),
        image_user
    );
    assert_eq!(at(c, "/securityContext/readOnlyRootFilesystem"), true);
    assert_eq!(at(c, "/securityContext/allowPrivilegeEscalation"), false);
    assert_eq!(
        at(c, "/securityContext/capabilities/drop"),
        &serde_json::json!(["ALL"])
    );
    for resource in [
        "/resources/requests/cpu",
        "/resources/requests/memory",
        "/resources/limits/memory",
    ] {
        assert!(at(c, resource).is_string(), "{resource}");
    }

    // The settings the container resolves, from its environment.
    let env: Vec<(String, String)> = at(c, "/env")
        .as_array()
        .expect("env list")
        .iter()
        .map(|e| {
            let s = |k: &str| at(e, k).as_str().expect("a string").to_owned();
            (s("/name"), s("/value"))
        })
        .collect();
    let settings = resolved_settings(&env);
    let port: u16 = setting(&settings, "listen")
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .expect("listen has a port");
    let data_dir = setting(&settings, "data_dir");

    // The data dir is a mount of the persistent volume claim.
    let mount = at(c, "/volumeMounts")
        .as_array()
        .expect("volumeMounts")
        .iter()
        .find(|m| m["mountPath"] == data_dir.as_str())
        .unwrap_or_else(|| panic!("nothing mounted at the data dir {data_dir}"));
    let volume = at(pod, "/volumes")
        .as_array()
        .expect("volumes")
        .iter()
        .find(|v| v["name"] == mount["name"])
        .expect("the mount's volume");
    let claim = at(volume, "/persistentVolumeClaim/claimName");
    assert_eq!(
        at(of_kind("PersistentVolumeClaim"), "/metadata/name"),
        claim
    );

    // The probes and the Service reach the port the mirror listens on.
    let port_named = |name: &serde_json::Value| {
        at(c, "/ports")
            .as_array()
            .expect("ports")
            .iter()
            .find(|p| &p["name"] == name || &p["containerPort"] == name)
            .map(|p| at(p, "/containerPort").as_u64())
            .unwrap_or_else(|| panic!("no container port {name}"))
    };
    for (probe, path) in [
        ("livenessProbe", "/healthz"),
        ("readinessProbe", "/readyz"),
        ("startupProbe", "/healthz"),
    ] {
        let get = at(c, &format!("/{probe}/httpGet"));
        assert_eq!(at(get, "/path"), path, "{probe}");
        assert_eq!(
            port_named(at(get, "/port")),
            Some(u64::from(port)),
            "{probe}"
        );
    }
    let service = of_kind("Service");
    let selector = at(service, "/spec/selector").as_object().expect("selector");
    for (k, v) in selector {
        assert_eq!(&labels[k], v, "the Service selects the pods by {k}");
    }
    let target = at(service, "/spec/ports/0/targetPort");
    assert_eq!(port_named(target), Some(u64::from(port)));

    // The kubelet's SIGKILL comes after the mirror's own drain.
    let grace = humantime::parse_duration(&setting(&settings, "shutdown_grace")).expect("grace");
    let kill = at(pod, "/terminationGracePeriodSeconds")
        .as_u64()
        .expect("seconds");
    assert!(
        kill > grace.as_secs(),
        "terminationGracePeriodSeconds {kill} vs shutdown_grace {grace:?}"
    );
}

#[test]
#[ignore = "needs systemd-analyze (Debian package systemd): see .ci/run"]
fn systemd_unit_verifies_and_is_hardened() {
    let unit = repo_file("deploy/systemd/artifact-mirror.service");
    for key in [
        "DynamicUser=yes",
        "StateDirectory=artifact-mirror",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "LimitNOFILE=",
    ] {
        assert!(unit.lines().any(|l| l.starts_with(key)), "{key} missing");
    }
    // verify wants ExecStart's binary to exist: the unit names its
    // installed path, so a copy points at the binary under test. The user
    // is created by systemd (DynamicUser), so no account is needed here.
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("artifact-mirror.service");
    let bin = env!("CARGO_BIN_EXE_artifact-mirror");
    std::fs::write(&path, unit.replace("/usr/local/bin/artifact-mirror", bin))
        .expect("unit written");
    let path = path.to_str().expect("UTF-8 path");
    // verify exits 0 on an unknown key or a bad value (it only warns), so
    // any output at all is a failure.
    let (ok, report) = run_tool("systemd-analyze", &["verify", "--man=no", path], b"");
    assert!(
        ok && report.trim().is_empty(),
        "systemd-analyze verify:\n{report}"
    );
    // The sandbox settings add up to systemd's "OK" exposure (under 4.0 of
    // 10; the threshold is in tenths).
    let (ok, report) = run_tool(
        "systemd-analyze",
        &["security", "--offline=yes", "--threshold=40", path],
        b"",
    );
    assert!(ok, "systemd-analyze security:\n{report}");
}
