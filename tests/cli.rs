//! The command line: settings precedence (file < env < flag), check-config's
//! answers and exit codes, and `serve` starting, answering and stopping on
//! SIGTERM.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn run(cmd: &mut Command) -> (i32, String, String) {
    let Output {
        status,
        stdout,
        stderr,
    } = cmd.output().expect("binary runs");
    (
        status.code().unwrap_or(-1),
        String::from_utf8_lossy(&stdout).into_owned(),
        String::from_utf8_lossy(&stderr).into_owned(),
    )
}

fn write_config(dir: &Path, text: &str) -> std::path::PathBuf {
    let path = dir.join("mirror.toml");
    std::fs::File::create(&path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .expect("config written");
    path
}

fn effective(stdout: &str) -> toml::Table {
    toml::from_str(stdout).unwrap_or_else(|e| panic!("check-config output is TOML: {e}\n{stdout}"))
}

#[test]
fn file_then_env_then_flag() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        "upstream = \"https://ghes.example.com/api/v3\"\nlisten = \"127.0.0.1:1111\"\ndata_dir = \"/from/file\"\nconnect_timeout = \"7s\"\n",
    );
    let listen = |cmd: &mut Command| {
        let (code, out, err) = run(cmd);
        assert_eq!(code, 0, "{err}");
        let t = effective(&out);
        (
            t["listen"].as_str().unwrap().to_owned(),
            t["data_dir"].as_str().unwrap().to_owned(),
            t["connect_timeout"].as_str().unwrap().to_owned(),
        )
    };
    let file_only = listen(
        common::mirror_command()
            .args(["check-config", "--config"])
            .arg(&config),
    );
    assert_eq!(
        file_only,
        ("127.0.0.1:1111".into(), "/from/file".into(), "7s".into())
    );

    let env = listen(
        common::mirror_command()
            .args(["check-config", "--config"])
            .arg(&config)
            .env("ARTIFACT_MIRROR_LISTEN", "127.0.0.1:2222"),
    );
    assert_eq!(
        env,
        ("127.0.0.1:2222".into(), "/from/file".into(), "7s".into())
    );

    let flag = listen(
        common::mirror_command()
            .args(["check-config", "--listen", "127.0.0.1:3333", "--config"])
            .arg(&config)
            .env("ARTIFACT_MIRROR_LISTEN", "127.0.0.1:2222")
            .env("ARTIFACT_MIRROR_CONNECT_TIMEOUT", "250ms"),
    );
    assert_eq!(
        flag,
        ("127.0.0.1:3333".into(), "/from/file".into(), "250ms".into())
    );

    // The file itself can come from the environment.
    let via_env = listen(
        common::mirror_command()
            .arg("check-config")
            .env("ARTIFACT_MIRROR_CONFIG", &config),
    );
    assert_eq!(via_env.0, "127.0.0.1:1111");
}

/// The subcommands a `--help` page lists under `Commands:` (clap's own
/// `help` left out), so the walk below follows clap rather than a list
/// that could go stale.
fn subcommands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| l.trim() != "Commands:")
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(str::to_owned)
        .collect()
}

#[test]
fn help_and_version_exit_0_on_stdout() {
    for args in [&["--help"][..], &["-h"], &["--version"], &["-V"], &["help"]] {
        let (code, out, err) = run(common::mirror_command().args(args));
        assert_eq!(code, 0, "{args:?}: exit {code}\n{err}");
        assert!(!out.is_empty(), "{args:?}: nothing on stdout");
        assert!(err.is_empty(), "{args:?}: stderr: {err}");
    }
    // Every subcommand's --help, found by walking the help pages.
    let mut pending: Vec<Vec<String>> = vec![vec![]];
    let mut seen = 0;
    while let Some(path) = pending.pop() {
        assert!(seen < 100, "the help tree does not end");
        seen += 1;
        let (code, out, err) = run(common::mirror_command().args(&path).arg("--help"));
        assert_eq!(code, 0, "{path:?} --help: exit {code}\n{err}");
        assert!(out.contains("Usage:"), "{path:?} --help: {out}");
        for sub in subcommands(&out) {
            pending.push(path.iter().cloned().chain([sub]).collect());
        }
    }
    // The top page, serve, check-config, cache and its four commands.
    assert!(seen >= 8, "only {seen} help pages found");

    for args in [
        &["--no-such-flag"][..],
        &["no-such-command"],
        &[],
        &["cache"],
    ] {
        let (code, out, err) = run(common::mirror_command().args(args));
        assert_eq!(code, 2, "{args:?}: exit {code}\n{out}{err}");
        assert!(out.is_empty(), "{args:?}: stdout: {out}");
        assert!(!err.is_empty(), "{args:?}: nothing on stderr");
    }
}

#[test]
fn upstream_alone_gives_the_defaults() {
    let (code, out, err) = run(common::mirror_command().args([
        "check-config",
        "--upstream",
        "https://ghes.example.com/api/v3/",
    ]));
    assert_eq!(code, 0, "{err}");
    let t = effective(&out);
    assert_eq!(
        t["upstream"].as_str(),
        Some("https://ghes.example.com/api/v3")
    );
    assert_eq!(t["listen"].as_str(), Some("127.0.0.1:8080"));
    assert_eq!(t["data_dir"].as_str(), Some("./data"));
    assert_eq!(t["log_format"].as_str(), Some("human"));
}

#[test]
fn shipped_config_file_checks() {
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/artifact-mirror.toml");
    let (code, _, err) = run(common::mirror_command()
        .args([
            "check-config",
            "--upstream",
            "http://127.0.0.1:9/api/v3",
            "--config",
        ])
        .arg(&shipped));
    assert_eq!(code, 0, "{err}");
}

#[test]
fn check_config_names_the_bad_setting_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    /// (config file text, environment, what the error must name)
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);
    let cases: &[Case] = &[
        (
            "upstream = \"https://g/api/v3\"\nlisten = \"nowhere\"\n",
            &[],
            "listen",
        ),
        (
            "upstream = \"https://g/api/v3\"\nlisten_addr = \"127.0.0.1:1\"\n",
            &[],
            "listen_addr",
        ),
        (
            "upstream = \"https://g/api/v3\"\nconnect_timeout = \"soon\"\n",
            &[],
            "connect_timeout",
        ),
        (
            "upstream = \"https://g/api/v3\"\nconnect_timeout = \"0s\"\n",
            &[],
            "connect_timeout",
        ),
        ("upstream = \"ftp://g/api/v3\"\n", &[], "upstream"),
        (
            "upstream = \"https://me:pw@g/api/v3\"\n",
            &[],
            "credentials",
        ),
        ("listen = \"127.0.0.1:1\"\n", &[], "upstream"),
        (
            "upstream = \"https://g/api/v3\"\nmax_header_bytes = 10\n",
            &[],
            "max_header_bytes",
        ),
        (
            "upstream = \"https://g/api/v3\"\nca_file = \"/nonexistent/ca.pem\"\n",
            &[],
            "ca_file",
        ),
        (
            "upstream = \"https://g/api/v3\"\nlog_format = \"xml\"\n",
            &[],
            "log_format",
        ),
        ("upstream = [1, 2]\n", &[], "upstream"),
        ("this is not toml", &[], "mirror.toml"),
        (
            "upstream = \"https://g/api/v3\"\n",
            &[("ARTIFACT_MIRROR_LISTEN", "nope")],
            "ARTIFACT_MIRROR_LISTEN",
        ),
        (
            "upstream = \"https://g/api/v3\"\n",
            &[("ARTIFACT_MIRROR_TRUST_FORWARDED_HEADERS", "maybe")],
            "trust-forwarded-headers",
        ),
    ];
    for (text, env, needle) in cases {
        let config = write_config(dir.path(), text);
        let mut cmd = common::mirror_command();
        cmd.args(["check-config", "--config"]).arg(&config);
        for (k, v) in *env {
            cmd.env(k, v);
        }
        let (code, out, err) = run(&mut cmd);
        assert_eq!(code, 2, "{text:?}: expected exit 2, got {code}\n{out}{err}");
        assert!(
            err.contains(needle),
            "{text:?}: {needle:?} not named in: {err}"
        );
        assert!(
            out.is_empty(),
            "{text:?}: printed settings despite the error"
        );
    }
    let (code, _, err) =
        run(common::mirror_command().args(["check-config", "--config", "/nonexistent.toml"]));
    assert_eq!(code, 2);
    assert!(err.contains("cannot read config file"), "{err}");
}

#[test]
fn serve_answers_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    // A free port: bind, read, release (the mirror binds it right after).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let mut child = common::serve_command(&format!("127.0.0.1:{port}"), dir.path())
        .env("ARTIFACT_MIRROR_LOG_FORMAT", "json")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("serve starts");
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut healthy = false;
    while Instant::now() < deadline {
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            use std::io::Read;
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let _ = s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            let mut answer = String::new();
            let _ = s.read_to_string(&mut answer);
            if answer.starts_with("HTTP/1.1 200") {
                healthy = true;
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let pid = child.id().to_string();
    let killed = Command::new("kill").args(["-TERM", &pid]).status();
    let status = common::wait_bounded(&mut child, Duration::from_secs(20));
    let mut log = String::new();
    if let Some(mut err) = child.stderr.take() {
        use std::io::Read;
        let _ = err.read_to_string(&mut log);
    }
    assert!(healthy, "never answered /healthz: {log}");
    assert!(killed.map(|s| s.success()).unwrap_or(false));
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{log}");
    // The access log line is JSON and names the route.
    let line = log
        .lines()
        .find(|l| l.contains("\"route\":\"healthz\""))
        .unwrap_or_else(|| panic!("no access line for /healthz in: {log}"));
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    assert_eq!(v["status"], 200);
    assert_eq!(v["method"], "GET");
    assert!(v["duration_ms"].is_number());
    assert!(dir.path().join("index").is_dir());
}

#[test]
fn serve_refuses_a_data_dir_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let _held = artifact_mirror::index::Index::open(&dir.path().join("index"), 1 << 20).unwrap();
    let (code, _, err) = run(&mut common::serve_command("127.0.0.1:0", dir.path()));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("another artifact-mirror"), "{err}");
}

/// The README's quick start: the demo example runs the mirror in front of
/// the simulator and the curl lines it prints answer through the mirror.
#[test]
fn quick_start_demo_serves_through_the_mirror() {
    // `cargo test` builds the examples next to the test binaries.
    let exe = std::env::current_exe().unwrap();
    let demo = exe
        .parent()
        .and_then(Path::parent)
        .map(|debug| debug.join("examples").join("demo"))
        .unwrap();
    assert!(demo.exists(), "{} not built", demo.display());
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let mut child = Command::new(&demo)
        .args(["--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("demo starts");
    let path = "/api/v3/repos/octo-org/public-repo/actions/artifacts?per_page=2";
    let mut answers = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while answers.len() < 2 && Instant::now() < deadline {
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            use std::io::Read;
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let request = format!(
                "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
            );
            let _ = s.write_all(request.as_bytes());
            let mut answer = String::new();
            let _ = s.read_to_string(&mut answer);
            if answer.starts_with("HTTP/1.1 200") {
                answers.push(answer);
                continue;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(answers.len(), 2, "the demo never answered");
    assert!(answers[0].contains("x-cache: MISS"), "{}", answers[0]);
    assert!(
        answers[1].contains("x-cache: REVALIDATED"),
        "{}",
        answers[1]
    );
    let own = format!("<http://127.0.0.1:{port}/api/v3/repositories/1001/");
    assert!(
        answers[0].contains(&own),
        "Link not rewritten: {}",
        answers[0]
    );
}

/// The commit `git` names for this checkout, as build.rs sees it.
fn checkout_commit() -> String {
    Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .filter(|c| !c.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

#[test]
fn version_names_the_git_commit() {
    let (_, out, err) = run(common::mirror_command().arg("--version"));
    assert_eq!(
        out.trim(),
        format!(
            "artifact-mirror {} (commit {})",
            env!("CARGO_PKG_VERSION"),
            checkout_commit()
        ),
        "{err}"
    );
}

#[test]
fn completions_for_bash_zsh_and_fish() {
    let script = |shell: &str| {
        let (code, out, err) = run(common::mirror_command().args(["completions", shell]));
        assert_eq!(code, 0, "completions {shell}: {err}");
        for word in ["check-config", "cache", "purge", "blob-quota-bytes"] {
            assert!(out.contains(word), "completions {shell} lack {word}");
        }
        out
    };
    // bash loads it and completes a subcommand and its options: what
    // `artifact-mirror cache g<TAB>` and `… cache gc --blob-q<TAB>` offer.
    let dir = tempfile::tempdir().unwrap();
    let bash = dir.path().join("artifact-mirror.bash");
    std::fs::write(&bash, script("bash")).unwrap();
    // $1: the script; the rest: the words typed, the last one unfinished.
    const COMPLETE: &str = r#"source "$1" || exit 9
        shift
        COMP_WORDS=("$@"); COMP_CWORD=$(( $# - 1 ))
        f=$(complete -p artifact-mirror | awk '{for (i = 1; i < NF; i++) if ($i == "-F") print $(i + 1)}')
        "$f" artifact-mirror "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD-1]}"
        echo "${COMPREPLY[*]}""#;
    let complete = |words: &[&str]| {
        let (code, out, err) = run(Command::new("bash")
            .args(["-c", COMPLETE, "complete"])
            .arg(&bash)
            .args(words));
        assert_eq!(code, 0, "{err}");
        out.trim().to_owned()
    };
    assert_eq!(complete(&["artifact-mirror", "check-c"]), "check-config");
    assert_eq!(complete(&["artifact-mirror", "cache", "g"]), "gc");
    assert_eq!(
        complete(&["artifact-mirror", "cache", "gc", "--blob-q"]),
        "--blob-quota-bytes"
    );
    assert!(script("zsh").starts_with("#compdef artifact-mirror"));
    assert!(script("fish").contains("complete -c artifact-mirror"));
    let (code, _, err) = run(common::mirror_command().args(["completions", "tcsh"]));
    assert_eq!(code, 2, "an unknown shell is bad input: {err}");
}

#[test]
fn manpage_is_one_roff_page_with_every_subcommand() {
    let (code, out, err) = run(common::mirror_command().arg("manpage"));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(".TH artifact-mirror 1 "), "{out}");
    for sub in [
        "serve",
        "check-config",
        "cache",
        "cache stats",
        "cache purge",
        "cache verify",
        "cache gc",
        "completions",
        "manpage",
    ] {
        assert!(
            out.contains(&format!(".SS \"artifact-mirror {sub}\"\n")),
            "no section for {sub}"
        );
    }
    // Options of subcommands are in it, roff-escaped.
    assert!(out.contains(r"\-\-blob\-quota\-bytes"));
}
