//! The container files checked against each other, against `config/` and
//! against the settings the binary really resolves: docker-compose.yml is
//! parsed as YAML, the Dockerfile line by line, and `check-config` runs with
//! the compose service's environment. No Docker engine needed (CI has none).
//!
//! Every assertion compares values taken from two different files (or from a
//! file and the binary), so a change to one side alone fails here.

use serde_norway::Value;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const BIN: &str = env!("CARGO_BIN_EXE_artifact-mirror");
const MIRROR: &str = "artifact-mirror";
const SIM: &str = "ghes-sim";

// ---------------------------------------------------------------------------
// docker-compose.yml

fn read(rel: &str) -> String {
    std::fs::read_to_string(Path::new(ROOT).join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn compose() -> Value {
    serde_norway::from_str(&read("docker-compose.yml"))
        .unwrap_or_else(|e| panic!("docker-compose.yml is YAML: {e}"))
}

fn service<'a>(compose: &'a Value, name: &str) -> &'a Value {
    compose
        .get("services")
        .and_then(|s| s.get(name))
        .unwrap_or_else(|| panic!("docker-compose.yml has no service {name:?}"))
}

fn service_names(compose: &Value) -> Vec<String> {
    compose
        .get("services")
        .and_then(Value::as_mapping)
        .expect("docker-compose.yml has services")
        .keys()
        .map(|k| k.as_str().expect("service names are strings").to_owned())
        .collect()
}

fn str_of<'a>(v: &'a Value, what: &str) -> &'a str {
    v.as_str()
        .unwrap_or_else(|| panic!("{what} is a string, not {v:?}"))
}

/// A service's `environment`, in either the mapping or the `K=V` list form.
fn environment(service: &Value) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    match service.get("environment") {
        None => {}
        Some(Value::Mapping(m)) => {
            for (k, v) in m {
                let value = match v {
                    Value::String(s) => s.clone(),
                    Value::Number(n) => n.to_string(),
                    Value::Bool(b) => b.to_string(),
                    other => panic!("environment value {other:?}"),
                };
                out.insert(str_of(k, "environment key").to_owned(), value);
            }
        }
        Some(Value::Sequence(items)) => {
            for item in items {
                let item = str_of(item, "environment entry");
                let (k, v) = item.split_once('=').unwrap_or((item, ""));
                out.insert(k.to_owned(), v.to_owned());
            }
        }
        Some(other) => panic!("environment is {other:?}"),
    }
    out
}

fn env_var<'a>(env: &'a BTreeMap<String, String>, key: &str) -> &'a str {
    env.get(key)
        .unwrap_or_else(|| panic!("the {MIRROR} service sets no {key}"))
}

/// Compose's `${VAR}`, `${VAR:?msg}`, `${VAR?msg}`, `${VAR:-default}` and
/// `${VAR-default}`; `Err` names a required variable that is unset.
fn interpolate(s: &str, vars: &BTreeMap<&str, &str>) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find('}').ok_or(format!("unclosed ${{ in {s:?}"))?;
        let expr = &after[..end];
        let name_len = expr
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(expr.len());
        let (name, op) = expr.split_at(name_len);
        let value = vars.get(name).copied();
        // With a colon, empty counts as unset.
        let (colon, op) = match op.strip_prefix(':') {
            Some(op) => (true, op),
            None => (false, op),
        };
        let usable = value.filter(|v| !(colon && v.is_empty()));
        match (usable, op.chars().next()) {
            (Some(v), _) => out.push_str(v),
            (None, None) => out.push_str(value.unwrap_or("")),
            (None, Some('?')) => return Err(format!("{name} is required")),
            (None, Some('-')) => out.push_str(&op[1..]),
            (None, Some(_)) => return Err(format!("unknown interpolation {expr:?}")),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Container-side ports of `ports`, short (`[IP:]HOST:CONTAINER[/tcp]`) or
/// long (`target:`) syntax.
fn container_ports(service: &Value) -> Vec<u16> {
    let Some(ports) = service.get("ports").and_then(Value::as_sequence) else {
        return Vec::new();
    };
    ports
        .iter()
        .map(|p| {
            let target = match p {
                Value::String(s) => s
                    .rsplit(':')
                    .next()
                    .unwrap_or(s)
                    .trim_end_matches("/tcp")
                    .to_owned(),
                Value::Number(n) => n.to_string(),
                Value::Mapping(_) => match p.get("target") {
                    Some(Value::Number(n)) => n.to_string(),
                    Some(Value::String(s)) => s.clone(),
                    other => panic!("port target {other:?}"),
                },
                other => panic!("port entry {other:?}"),
            };
            target
                .parse()
                .unwrap_or_else(|_| panic!("container port {target:?} of {p:?}"))
        })
        .collect()
}

#[derive(Debug)]
struct Mount {
    source: String,
    target: String,
    read_only: bool,
}

/// `volumes`, short (`SRC:TARGET[:ro]`) or long syntax.
fn mounts(service: &Value) -> Vec<Mount> {
    let Some(vols) = service.get("volumes").and_then(Value::as_sequence) else {
        return Vec::new();
    };
    vols.iter()
        .map(|v| match v {
            Value::String(s) => {
                let parts: Vec<&str> = s.split(':').collect();
                match parts.as_slice() {
                    [source, target] => Mount {
                        source: (*source).into(),
                        target: (*target).into(),
                        read_only: false,
                    },
                    [source, target, mode] => Mount {
                        source: (*source).into(),
                        target: (*target).into(),
                        read_only: mode.split(',').any(|m| m == "ro"),
                    },
                    _ => panic!("volume {s:?}"),
                }
            }
            Value::Mapping(_) => Mount {
                source: str_of(v.get("source").expect("volume source"), "source").into(),
                target: str_of(v.get("target").expect("volume target"), "target").into(),
                read_only: v.get("read_only").and_then(Value::as_bool).unwrap_or(false),
            },
            other => panic!("volume entry {other:?}"),
        })
        .collect()
}

fn mount_at<'a>(mounts: &'a [Mount], target: &str) -> &'a Mount {
    mounts
        .iter()
        .find(|m| Path::new(&m.target) == Path::new(target))
        .unwrap_or_else(|| panic!("no volume of {MIRROR} is mounted at {target}: {mounts:?}"))
}

fn strings(v: &Value, what: &str) -> Vec<String> {
    v.as_sequence()
        .unwrap_or_else(|| panic!("{what} is a list"))
        .iter()
        .map(|s| str_of(s, what).to_owned())
        .collect()
}

/// The value after `flag` in an argument list.
fn arg_after<'a>(args: &'a [String], flag: &str) -> &'a str {
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1))
        .unwrap_or_else(|| panic!("no {flag} VALUE in {args:?}"))
}

fn compose_duration(v: Option<&Value>, what: &str) -> Duration {
    let text = str_of(v.unwrap_or_else(|| panic!("{what} is set")), what);
    humantime::parse_duration(text).unwrap_or_else(|e| panic!("{what} {text:?}: {e}"))
}

// ---------------------------------------------------------------------------
// Dockerfile

#[derive(Debug)]
struct Stage {
    name: Option<String>,
    /// (instruction upper-cased, arguments) with continuations joined.
    lines: Vec<(String, String)>,
}

impl Stage {
    fn all(&self, instruction: &str) -> impl Iterator<Item = &str> {
        let instruction = instruction.to_owned();
        self.lines
            .iter()
            .filter(move |(i, _)| *i == instruction)
            .map(|(_, args)| args.as_str())
    }

    /// The last one counts (Docker's rule for USER, EXPOSE is cumulative but
    /// one line is expected).
    fn last(&self, instruction: &str) -> &str {
        self.all(instruction)
            .last()
            .unwrap_or_else(|| panic!("stage {:?} has no {instruction}", self.name))
    }

    fn env(&self) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        for args in self.all("ENV") {
            if !args.split_whitespace().next().unwrap_or("").contains('=') {
                // Legacy `ENV KEY value`.
                let (k, v) = args.split_once(char::is_whitespace).unwrap_or((args, ""));
                out.insert(k.to_owned(), v.trim().to_owned());
                continue;
            }
            for pair in args.split_whitespace() {
                let (k, v) = pair
                    .split_once('=')
                    .unwrap_or_else(|| panic!("ENV pair {pair:?}"));
                out.insert(k.to_owned(), v.trim_matches('"').to_owned());
            }
        }
        out
    }

    fn runs(&self) -> String {
        self.all("RUN").collect::<Vec<_>>().join("\n")
    }

    /// The shell commands of its RUN lines, split at `&&`, `;` and lines.
    fn commands(&self) -> Vec<Vec<String>> {
        self.runs()
            .split(['\n', ';'])
            .flat_map(|run| run.split("&&"))
            .map(|c| c.split_whitespace().map(str::to_owned).collect())
            .collect()
    }

    /// Whether a `useradd` in its RUN lines creates user id `uid`.
    fn creates_user(&self, uid: &str) -> bool {
        self.commands().iter().any(|c| {
            c.first().is_some_and(|p| p == "useradd")
                && c.windows(2).any(|w| w[0] == "--uid" && w[1] == uid)
        })
    }
}

fn dockerfile() -> Vec<Stage> {
    let text = read("Dockerfile");
    let mut logical = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(head) => {
                current.push_str(head.trim());
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                logical.push(std::mem::take(&mut current));
            }
        }
    }
    assert!(current.is_empty(), "Dockerfile ends in a continuation");

    let mut stages: Vec<Stage> = Vec::new();
    for line in logical {
        let (instruction, args) = line.split_once(char::is_whitespace).unwrap_or((&line, ""));
        let instruction = instruction.to_ascii_uppercase();
        let args = args.trim().to_owned();
        if instruction == "FROM" {
            let words: Vec<&str> = args.split_whitespace().collect();
            let name = match words.as_slice() {
                [_, as_, name] if as_.eq_ignore_ascii_case("as") => Some((*name).to_owned()),
                _ => None,
            };
            stages.push(Stage {
                name,
                lines: Vec::new(),
            });
        } else if let Some(stage) = stages.last_mut() {
            stage.lines.push((instruction, args));
        }
        // ARGs before the first FROM are global: nothing to check there.
    }
    assert!(!stages.is_empty(), "Dockerfile has no FROM");
    stages
}

fn stage<'a>(stages: &'a [Stage], name: &str) -> &'a Stage {
    stages
        .iter()
        .find(|s| s.name.as_deref() == Some(name))
        .unwrap_or_else(|| panic!("Dockerfile has no stage {name:?}"))
}

/// The stage a `COPY --from=STAGE` of the given file comes from.
fn copied_from<'a>(stages: &'a [Stage], runtime: &Stage, binary: &str) -> &'a Stage {
    let copy = runtime
        .all("COPY")
        .find(|args| args.starts_with("--from=") && args.contains(binary))
        .unwrap_or_else(|| panic!("stage {:?} copies no {binary}", runtime.name));
    let from = copy
        .strip_prefix("--from=")
        .and_then(|r| r.split_whitespace().next())
        .expect("COPY --from=STAGE");
    stage(stages, from)
}

fn build_target(service: &Value) -> &str {
    let name = service
        .get("build")
        .and_then(|b| b.get("target"))
        .expect("service builds with an explicit target");
    str_of(name, "build.target")
}

/// An instruction's JSON-array or shell form, as words.
fn words(args: &str) -> Vec<String> {
    match serde_json::from_str::<Vec<String>>(args) {
        Ok(v) => v,
        Err(_) => args.split_whitespace().map(str::to_owned).collect(),
    }
}

// ---------------------------------------------------------------------------

fn mirror_env() -> BTreeMap<String, String> {
    environment(service(&compose(), MIRROR))
}

fn listen() -> SocketAddr {
    let env = mirror_env();
    let listen = env_var(&env, "ARTIFACT_MIRROR_LISTEN");
    listen
        .parse()
        .unwrap_or_else(|_| panic!("ARTIFACT_MIRROR_LISTEN {listen:?} is IP:PORT"))
}

#[test]
fn the_mirror_is_the_default_build_and_the_simulator_a_named_one() {
    let compose = compose();
    let stages = dockerfile();
    let last = stages.last().expect("a stage");

    let mirror_target = build_target(service(&compose, MIRROR));
    assert_eq!(
        last.name.as_deref(),
        Some(mirror_target),
        "`docker build .` (the last stage) must build what compose runs as {MIRROR}"
    );
    assert_eq!(words(last.last("ENTRYPOINT")), ["artifact-mirror"]);
    assert_eq!(words(last.last("CMD")), ["serve"]);
    let build = copied_from(&stages, last, "/artifact-mirror");
    assert!(
        build
            .runs()
            .contains("cargo build --release --locked --bin artifact-mirror"),
        "stage {:?} builds the mirror binary",
        build.name
    );

    let sim = stage(&stages, build_target(service(&compose, SIM)));
    assert_ne!(sim.name, last.name);
    let sim_build = copied_from(&stages, sim, "/ghes-sim");
    assert!(
        sim_build
            .runs()
            .contains("cargo build --release --locked --example ghes-sim"),
        "stage {:?} builds the simulator example",
        sim_build.name
    );
    assert!(Path::new(ROOT).join("examples/ghes-sim.rs").is_file());
    assert_eq!(words(sim.last("ENTRYPOINT")), ["ghes-sim"]);
}

#[test]
fn the_listen_port_is_published_exposed_and_health_checked() {
    let compose = compose();
    let mirror = service(&compose, MIRROR);
    let env = environment(mirror);
    let listen = listen();
    assert!(
        listen.ip().is_unspecified(),
        "{listen}: inside a container the mirror must listen on all interfaces"
    );
    let port = listen.port();

    assert!(
        container_ports(mirror).contains(&port),
        "compose publishes {:?}, the mirror listens on {port}",
        container_ports(mirror)
    );

    let stages = dockerfile();
    let image = stages.last().expect("a stage");
    let exposed: Vec<u16> = image
        .last("EXPOSE")
        .split_whitespace()
        .map(|p| {
            p.trim_end_matches("/tcp")
                .parse()
                .unwrap_or_else(|_| panic!("EXPOSE {p}"))
        })
        .collect();
    assert_eq!(
        exposed,
        [port],
        "Dockerfile EXPOSE against compose's listen"
    );
    assert_eq!(
        image
            .env()
            .get("ARTIFACT_MIRROR_LISTEN")
            .map(String::as_str),
        Some(env_var(&env, "ARTIFACT_MIRROR_LISTEN")),
        "the image alone listens where compose says"
    );

    let test = strings(
        mirror
            .get("healthcheck")
            .and_then(|h| h.get("test"))
            .expect("the mirror has a healthcheck test"),
        "healthcheck.test",
    );
    assert_eq!(test.first().map(String::as_str), Some("CMD"), "{test:?}");
    let url = test
        .iter()
        .find(|a| a.starts_with("http://"))
        .unwrap_or_else(|| panic!("no URL in the healthcheck {test:?}"));
    let url = url::Url::parse(url).expect("healthcheck URL");
    assert_eq!(url.path(), "/readyz");
    assert_eq!(url.port(), Some(port), "healthcheck port against listen");
    assert!(
        matches!(url.host_str(), Some("127.0.0.1" | "localhost")),
        "{url}"
    );
    // The health-check program has to be in the image.
    let program = test.get(1).expect("healthcheck program");
    let installs = image.runs();
    let installed = installs
        .lines()
        .filter_map(|run| run.split("apt-get install").nth(1))
        .any(|rest| rest.split_whitespace().any(|w| w == program));
    assert!(installed, "the runtime stage apt-get installs {program}");

    let image_check = image.last("HEALTHCHECK");
    assert!(
        image_check.contains("/readyz") && image_check.contains(program),
        "the image's own HEALTHCHECK: {image_check}"
    );
}

#[test]
fn the_data_volume_is_mounted_at_the_data_dir() {
    let compose = compose();
    let mirror = service(&compose, MIRROR);
    let env = environment(mirror);
    let data_dir = env_var(&env, "ARTIFACT_MIRROR_DATA_DIR");
    let mounts = mounts(mirror);
    let data = mount_at(&mounts, data_dir);
    assert!(!data.read_only, "{data:?}");
    let declared = compose
        .get("volumes")
        .and_then(Value::as_mapping)
        .expect("top-level volumes");
    assert!(
        declared.contains_key(data.source.as_str()),
        "the data dir is a named volume declared at the top level, not {:?}",
        data.source
    );

    let stages = dockerfile();
    let image = stages.last().expect("a stage");
    assert_eq!(
        image
            .env()
            .get("ARTIFACT_MIRROR_DATA_DIR")
            .map(String::as_str),
        Some(data_dir)
    );
    assert!(
        words(image.last("VOLUME")).iter().any(|v| v == data_dir),
        "Dockerfile VOLUME {:?} against compose's data dir {data_dir}",
        image.last("VOLUME")
    );
    // A new named volume starts as a copy of the image's directory: it has
    // to belong to the user the mirror runs as.
    let uid = image
        .last("USER")
        .split(':')
        .next()
        .unwrap_or("")
        .to_owned();
    let owned = image.commands().iter().any(|c| {
        let has = |w: &str| c.iter().any(|x| x == w);
        has(data_dir)
            && match c.first().map(String::as_str) {
                Some("install") => c.windows(2).any(|w| w[0] == "-o" && w[1] == uid),
                Some("chown") => c.get(1).is_some_and(|o| o.split(':').next() == Some(&uid)),
                _ => false,
            }
    });
    assert!(owned, "the runtime stage gives {data_dir} to USER {uid}");
}

#[test]
fn the_config_mount_holds_the_file_the_mirror_reads() {
    let compose = compose();
    let mirror = service(&compose, MIRROR);
    let env = environment(mirror);
    let config = Path::new(env_var(&env, "ARTIFACT_MIRROR_CONFIG"));
    let dir = config
        .parent()
        .expect("ARTIFACT_MIRROR_CONFIG has a directory");
    let file = config
        .file_name()
        .expect("ARTIFACT_MIRROR_CONFIG names a file");

    let mounts = mounts(mirror);
    let mount = mount_at(&mounts, &dir.to_string_lossy());
    assert_eq!(
        Path::new(&mount.source).components().collect::<Vec<_>>(),
        Path::new("./config").components().collect::<Vec<_>>(),
        "{mount:?}"
    );
    assert!(mount.read_only, "the settings are mounted read-only");
    let host = Path::new(ROOT).join(&mount.source).join(file);
    assert!(host.is_file(), "{} is in the repository", host.display());

    let stages = dockerfile();
    let image = stages.last().expect("a stage");
    assert_eq!(
        image
            .env()
            .get("ARTIFACT_MIRROR_CONFIG")
            .map(String::as_str),
        Some(config.to_str().expect("UTF-8"))
    );
    let copy = image
        .all("COPY")
        .find(|c| !c.starts_with("--from="))
        .map(words)
        .expect("the runtime stage copies the settings file");
    assert_eq!(
        copy,
        [
            format!("config/{}", file.to_string_lossy()),
            config.to_string_lossy().into_owned()
        ],
        "the image alone carries the same file where ARTIFACT_MIRROR_CONFIG points"
    );
}

/// What `check-config` resolves inside the container: compose's environment,
/// the config path mapped through the mount to the repository.
#[test]
fn the_container_environment_resolves_to_the_intended_settings() {
    let compose = compose();
    let mirror = service(&compose, MIRROR);
    let env = environment(mirror);
    let mounts = mounts(mirror);

    let upstream = env_var(&env, "ARTIFACT_MIRROR_UPSTREAM");
    assert!(
        interpolate(upstream, &BTreeMap::new()).is_err(),
        "{upstream}: the upstream must be required, not defaulted"
    );
    let ghes = "https://ghes.example.com/api/v3";
    let vars = BTreeMap::from([("GHES_API_URL", ghes)]);

    let mut cmd = Command::new(BIN);
    for (key, _) in std::env::vars() {
        if key.starts_with("ARTIFACT_MIRROR_") || key == "RUST_LOG" {
            cmd.env_remove(key);
        }
    }
    for (key, value) in &env {
        let mut value = interpolate(value, &vars).expect("interpolation");
        if key == "ARTIFACT_MIRROR_CONFIG" {
            let in_container = PathBuf::from(&value);
            let mount = mounts
                .iter()
                .find(|m| in_container.starts_with(&m.target))
                .expect("the config file is on a mount");
            let rel = in_container
                .strip_prefix(&mount.target)
                .expect("under the mount");
            value = Path::new(ROOT)
                .join(&mount.source)
                .join(rel)
                .to_string_lossy()
                .into_owned();
        }
        cmd.env(key, value);
    }
    let out = cmd.arg("check-config").output().expect("binary runs");
    assert!(
        out.status.success(),
        "check-config with compose's environment: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let settings: toml::Table =
        toml::from_str(&String::from_utf8_lossy(&out.stdout)).expect("check-config prints TOML");
    let get = |k: &str| {
        settings
            .get(k)
            .and_then(toml::Value::as_str)
            .unwrap_or_else(|| panic!("check-config prints {k}"))
            .to_owned()
    };
    assert_eq!(get("upstream"), ghes);
    assert_eq!(get("listen"), listen().to_string());
    assert_eq!(get("data_dir"), env_var(&env, "ARTIFACT_MIRROR_DATA_DIR"));

    // `docker compose stop` waits stop_grace_period before SIGKILL; the
    // mirror's own drain (shutdown_grace) must fit in it.
    let grace = humantime::parse_duration(&get("shutdown_grace")).expect("shutdown_grace");
    let stop = compose_duration(mirror.get("stop_grace_period"), "stop_grace_period");
    assert!(
        stop > grace,
        "stop_grace_period {stop:?} must exceed shutdown_grace {grace:?}"
    );
}

#[test]
fn the_image_runs_as_a_non_root_user() {
    let stages = dockerfile();
    let compose = compose();
    for (service_name, stage) in [
        (MIRROR, stages.last().expect("a stage")),
        (SIM, stage(&stages, build_target(service(&compose, SIM)))),
    ] {
        let user = stage.last("USER");
        let (uid, gid) = user.split_once(':').unwrap_or((user, ""));
        for id in [uid, gid] {
            assert!(
                !matches!(id, "0" | "root"),
                "stage {:?} runs as USER {user}",
                stage.name
            );
        }
        assert!(
            uid.parse::<u32>().is_ok(),
            "USER {user}: numeric, so runtimes can tell it is not root"
        );
        assert!(
            stage.creates_user(uid),
            "stage {:?} creates the user {uid} it runs as",
            stage.name
        );
        if let Some(over) = service(&compose, service_name).get("user") {
            let over = str_of(over, "user");
            assert!(
                !matches!(over.split(':').next(), Some("0" | "root")),
                "compose runs {service_name} as {over}"
            );
        }
    }
}

#[test]
fn the_mirror_restarts_by_itself() {
    let compose = compose();
    let mirror = service(&compose, MIRROR);
    let restart = mirror
        .get("restart")
        .or_else(|| {
            mirror
                .get("deploy")
                .and_then(|d| d.get("restart_policy"))
                .and_then(|p| p.get("condition"))
        })
        .map(|r| str_of(r, "restart"))
        .expect("a restart policy");
    assert!(
        ["always", "unless-stopped", "on-failure", "any"]
            .iter()
            .any(|p| restart == *p || restart.starts_with("on-failure:")),
        "restart: {restart}"
    );
}

#[test]
fn the_simulator_runs_only_in_the_demo_profile() {
    let compose = compose();
    let sim = service(&compose, SIM);
    assert_eq!(
        strings(sim.get("profiles").expect("profiles"), "profiles"),
        ["demo"]
    );
    let mirror = service(&compose, MIRROR);
    assert!(
        mirror.get("profiles").is_none(),
        "{MIRROR} starts without a profile"
    );
    for name in service_names(&compose) {
        if name != MIRROR {
            assert!(
                service(&compose, &name).get("profiles").is_some(),
                "{name} would start with a plain `docker compose up`"
            );
        }
    }
    let depends = mirror.get("depends_on");
    assert!(
        depends.is_none_or(|d| !format!("{d:?}").contains(SIM)),
        "{MIRROR} must not need {SIM}: without the profile it is not there"
    );

    // The demo command documented in the README and in docker-compose.yml
    // points at the simulator as compose runs it.
    let args = strings(
        sim.get("command").expect("the simulator's command"),
        "command",
    );
    assert_eq!(
        arg_after(&args, "--advertise-host"),
        SIM,
        "the URLs it hands out must name the service the mirror resolves"
    );
    let api: SocketAddr = arg_after(&args, "--api").parse().expect("--api IP:PORT");
    let blob: SocketAddr = arg_after(&args, "--blob").parse().expect("--blob IP:PORT");
    assert!(api.ip().is_unspecified() && blob.ip().is_unspecified());
    let expected = format!("http://{SIM}:{}/api/v3", api.port());
    for file in ["README.md", "docker-compose.yml"] {
        let text = read(file);
        let documented: Vec<&str> = text
            .lines()
            .filter(|line| line.contains("--profile demo"))
            .filter_map(|line| line.split("GHES_API_URL=").nth(1))
            .map(|rest| rest.split_whitespace().next().unwrap_or(""))
            .collect();
        assert!(!documented.is_empty(), "{file} shows the demo command");
        for url in documented {
            assert_eq!(url, expected, "the demo's GHES_API_URL in {file}");
        }
    }
}

#[test]
fn interpolation_reads_like_compose() {
    let vars = BTreeMap::from([("A", "x"), ("E", "")]);
    assert_eq!(interpolate("${A}/y", &vars).as_deref(), Ok("x/y"));
    assert_eq!(interpolate("${B:-d}", &vars).as_deref(), Ok("d"));
    assert_eq!(interpolate("${E:-d}", &vars).as_deref(), Ok("d"));
    assert!(interpolate("${B:?set B}", &vars).is_err());
    assert!(interpolate("${E:?set E}", &vars).is_err());
    assert_eq!(interpolate("${E-d}", &vars).as_deref(), Ok(""));
    assert_eq!(interpolate("${A:?set A}", &vars).as_deref(), Ok("x"));
}

// ---------------------------------------------------------------------------
// The `scale` profile: replicas, HAProxy, MinIO

const SCALE_REPLICAS: [&str; 3] = ["mirror-1", "mirror-2", "mirror-3"];

/// The image of a service named by tag: neither missing nor `latest`.
fn pinned_image(service: &Value, name: &str) -> String {
    let image = str_of(service.get("image").expect("an image"), "image").to_owned();
    let tag = image.rsplit_once(':').map(|(_, t)| t).unwrap_or("");
    assert!(
        !tag.is_empty() && tag != "latest" && !tag.contains('/'),
        "{name} uses {image}: name the tag"
    );
    image
}

/// The replicas, the load balancer and the store agree: HAProxy runs the
/// shipped config and names every replica at the port it listens on, the
/// replicas share one key file on one volume and keep their own data, and
/// the bucket they use is the one the `bucket` service creates, on the
/// MinIO they reach, with its credentials. `check-config` accepts each
/// replica's environment.
#[test]
fn the_scale_profile_wires_replicas_to_one_store_one_key_and_the_shipped_lb() {
    let compose = compose();
    for name in SCALE_REPLICAS.iter().chain(&["lb", "minio", "bucket"]) {
        let svc = service(&compose, name);
        assert_eq!(
            strings(svc.get("profiles").expect("profiles"), "profiles"),
            ["scale"],
            "{name}"
        );
    }

    // HAProxy: the shipped file, at the path the official image reads.
    let lb = service(&compose, "lb");
    assert!(pinned_image(lb, "lb").starts_with("haproxy:"));
    let lb_mounts = mounts(lb);
    let cfg = mount_at(&lb_mounts, "/usr/local/etc/haproxy/haproxy.cfg");
    assert_eq!(cfg.source, "./deploy/haproxy/haproxy.cfg");
    assert!(cfg.read_only);
    let shipped = read("deploy/haproxy/haproxy.cfg");
    let lb_env = environment(lb);
    let directives: String = shipped
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect();
    let wanted: Vec<&str> = directives
        .split("\"${")
        .skip(1)
        .filter_map(|rest| rest.split_once("}\"").map(|(v, _)| v))
        .collect();
    assert_eq!(wanted.len(), 1 + 2 * SCALE_REPLICAS.len(), "{wanted:?}");
    for var in wanted {
        assert!(lb_env.contains_key(var), "lb sets no {var} for haproxy.cfg");
    }
    let lb_listen: SocketAddr = lb_env["MIRROR_LISTEN"].parse().expect("IP:PORT");
    assert_eq!(
        container_ports(lb),
        [lb_listen.port()],
        "lb publishes its bind"
    );

    let mut secret_volumes = Vec::new();
    let mut data_volumes = Vec::new();
    for (i, name) in SCALE_REPLICAS.iter().enumerate() {
        let replica = service(&compose, name);
        let env = environment(replica);
        let listen: SocketAddr = env_var(&env, "ARTIFACT_MIRROR_LISTEN").parse().unwrap();
        assert_eq!(
            lb_env[&format!("REPLICA_{}", i + 1)],
            format!("{name}:{}", listen.port()),
            "haproxy's REPLICA_{} is {name}",
            i + 1
        );
        let replica_mounts = mounts(replica);
        let secret = Path::new(env_var(&env, "ARTIFACT_MIRROR_SECRET_FILE"));
        let on = replica_mounts
            .iter()
            .find(|m| secret.starts_with(&m.target))
            .unwrap_or_else(|| panic!("{name}'s secret_file is on no volume"));
        assert!(!on.read_only, "the first replica creates the key");
        secret_volumes.push((on.source.clone(), secret.to_owned()));
        data_volumes.push(
            mount_at(&replica_mounts, env_var(&env, "ARTIFACT_MIRROR_DATA_DIR"))
                .source
                .clone(),
        );
        if i > 0 {
            let after = replica.get("depends_on").and_then(|d| d.get("mirror-1"));
            let condition = after
                .and_then(|a| a.get("condition"))
                .map(|c| str_of(c, "condition"));
            assert_eq!(
                condition,
                Some("service_healthy"),
                "{name} starts after mirror-1 made the key"
            );
        }

        // The settings the replica really resolves.
        let vars = BTreeMap::from([
            ("GHES_API_URL", "https://ghes.example.com/api/v3"),
            ("MINIO_ROOT_PASSWORD", "pw"),
        ]);
        let mut cmd = Command::new(BIN);
        for (key, _) in std::env::vars() {
            if key.starts_with("ARTIFACT_MIRROR_") || key.starts_with("AWS_") {
                cmd.env_remove(key);
            }
        }
        for (key, value) in &env {
            if key != "ARTIFACT_MIRROR_CONFIG" {
                cmd.env(key, interpolate(value, &vars).expect("interpolation"));
            }
        }
        let out = cmd.arg("check-config").output().expect("binary runs");
        assert!(
            out.status.success(),
            "check-config with {name}'s environment: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let shown = String::from_utf8_lossy(&out.stdout);
        assert!(
            shown.contains(&format!(
                "shared_store = \"{}\"",
                env["ARTIFACT_MIRROR_SHARED_STORE"]
            )),
            "{shown}"
        );
    }
    assert!(
        secret_volumes.windows(2).all(|w| w[0] == w[1]),
        "one key file on one volume: {secret_volumes:?}"
    );
    let mut distinct = data_volumes.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(
        distinct.len(),
        data_volumes.len(),
        "own data: {data_volumes:?}"
    );

    // The key's directory exists in the image, owned by the mirror's user,
    // so a new named volume mounted there is writable by the first replica.
    let stages = dockerfile();
    let runtime = stages.last().expect("a stage");
    let uid = runtime
        .last("USER")
        .split(':')
        .next()
        .unwrap_or("")
        .to_owned();
    let key_dir = secret_volumes[0]
        .1
        .parent()
        .expect("a directory")
        .to_string_lossy()
        .into_owned();
    assert!(
        runtime
            .runs()
            .contains(&format!("install -d -o {uid} -g {uid} -m 0700 {key_dir}")),
        "the image makes {key_dir} for user {uid}"
    );

    // The bucket: created by `bucket` on the MinIO the replicas reach.
    let env = environment(service(&compose, SCALE_REPLICAS[0]));
    let store = env_var(&env, "ARTIFACT_MIRROR_SHARED_STORE");
    let bucket_name = store
        .strip_prefix("s3://")
        .and_then(|b| b.split('/').next())
        .expect("s3://BUCKET");
    let bucket = service(&compose, "bucket");
    let script = strings(bucket.get("command").expect("command"), "command").join(" ");
    assert!(
        script.contains(&format!("mc mb --ignore-existing store/{bucket_name}")),
        "{script}"
    );
    let minio = service(&compose, "minio");
    pinned_image(minio, "minio");
    let endpoint = env_var(&env, "AWS_ENDPOINT_URL");
    let minio_args = strings(minio.get("command").expect("command"), "command");
    let port = arg_after(&minio_args, "--address").trim_start_matches(':');
    assert_eq!(endpoint, format!("http://minio:{port}"));
    assert!(script.contains(&format!("http://minio:{port}")), "{script}");
    assert_eq!(env_var(&env, "AWS_ALLOW_HTTP"), "true");
    let minio_env = environment(minio);
    assert_eq!(env["AWS_ACCESS_KEY_ID"], minio_env["MINIO_ROOT_USER"]);
    assert_eq!(
        env["AWS_SECRET_ACCESS_KEY"],
        minio_env["MINIO_ROOT_PASSWORD"]
    );
    assert_eq!(
        environment(bucket),
        minio_env,
        "bucket logs in as MinIO's root"
    );
}
