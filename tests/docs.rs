//! The README's reference tables agree with what they describe: the
//! settings table with `config/artifact-mirror.toml`, the metrics table with
//! what a running mirror exports.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use common::{get, get_with, Harness};

fn read(path: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path))
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The rows of the markdown table whose header starts with `| {first} |`:
/// each row's first cell split into its backticked names, and its second
/// cell.
fn table(readme: &str, first: &str) -> Vec<(Vec<String>, String)> {
    let header = format!("| {first} |");
    let start = readme
        .lines()
        .position(|l| l.starts_with(&header))
        .unwrap_or_else(|| panic!("no table starting with {header}"));
    readme
        .lines()
        .skip(start + 2)
        .take_while(|l| l.starts_with('|'))
        .map(|row| {
            let cells: Vec<&str> = row.split('|').map(str::trim).collect();
            let names = cells[1]
                .split('`')
                .enumerate()
                .filter(|(i, _)| i % 2 == 1)
                .map(|(_, n)| n.to_owned())
                .collect();
            (names, cells[2].to_owned())
        })
        .collect()
}

#[test]
fn settings_table_matches_the_shipped_config_file() {
    let readme = read("README.md");
    let rows = table(&readme, "setting");
    let documented: BTreeMap<String, String> = rows
        .iter()
        .flat_map(|(names, default)| names.iter().map(move |n| (n.clone(), default.clone())))
        .collect();

    // Every `key = value` line of the file, commented out or not.
    let file = read("config/artifact-mirror.toml");
    let mut in_file = BTreeSet::new();
    for line in file.lines() {
        let active = !line.starts_with('#');
        let line = line.trim_start_matches(['#', ' ']);
        let Some((key, value)) = line.split_once(" = ") else {
            continue;
        };
        if !key.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
            continue;
        }
        in_file.insert(key.to_owned());
        let default = documented
            .get(key)
            .unwrap_or_else(|| panic!("setting `{key}` is in the config file but not the README"));
        if active {
            // The README shows the value as written in the file.
            let value = value.trim().trim_matches('"');
            let shown = default.split('`').nth(1).unwrap_or_default();
            assert_eq!(shown, value, "default of `{key}`: README vs config file");
        }
    }
    let only_readme: Vec<_> = documented
        .keys()
        .filter(|k| !in_file.contains(*k))
        .collect();
    assert!(
        only_readme.is_empty(),
        "in the README's settings table but not the config file: {only_readme:?}"
    );
}

#[tokio::test]
async fn metrics_table_lists_exactly_what_the_mirror_exports() {
    let h = Harness::start().await;
    // One request of each kind that creates labelled series.
    let _ = get(
        &h.url("/repos/octo-org/public-repo/actions/artifacts"),
        None,
    )
    .await;
    // OpenMetrics names each family's type (`info` too, which Prometheus
    // text calls a gauge).
    let text = get_with(
        &format!("http://{}/metrics", h.mirror),
        None,
        &[("accept", "application/openmetrics-text")],
    )
    .await;
    let text = String::from_utf8(text.body.to_vec()).expect("UTF-8");
    // Families as exported: `# TYPE name type`; counters are sampled with
    // `_total` and infos with `_info`, which is how the README names them.
    let exported: BTreeMap<String, String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .map(|(name, kind)| {
            let name = match kind {
                "counter" => format!("{name}_total"),
                "info" => format!("{name}_info"),
                _ => name.to_owned(),
            };
            (name, kind.to_owned())
        })
        .collect();
    let readme = read("README.md");
    let documented: BTreeMap<String, String> = table(&readme, "metric")
        .into_iter()
        .map(|(names, kind)| (names[0].clone(), kind))
        .collect();
    assert_eq!(
        documented, exported,
        "README metrics table (left) vs /metrics (right)"
    );
}
