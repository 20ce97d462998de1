//! Runs the GHES simulator on its own, for trying the mirror by hand.
//!
//! ```text
//! cargo run --example ghes-sim -- [--api 127.0.0.1:9090] [--blob 127.0.0.1:9091]
//!                                 [--link-ttl SECS] [--rate-limit N] [--no-seed]
//!                                 [--advertise-host HOST] [--artifacts N]
//! ```
//! Prints the base URL, the fixture tokens and a few curl lines, then serves
//! until Ctrl-C (or SIGTERM).
//!
//! The listeners are loopback-only unless `--advertise-host` names the host
//! other machines reach the simulator by (in docker-compose.yml: `--api
//! 0.0.0.0:9090 --blob 0.0.0.0:9091 --advertise-host ghes-sim`); the API base,
//! `Link`s, artifact URLs and blob redirects then carry that name, so they
//! work from another container. `--artifacts N` adds N artifacts to the public
//! repo, so a `per_page=100` list is a large answer (benches/nginx.sh).

use ghes_sim::fixtures::{
    ADMIN_TOKEN, BAD_TOKEN, OTHER_PRIVATE_REPO, OUTSIDER_TOKEN, PRIVATE_REPO, PUBLIC_REPO,
    READER_TOKEN,
};
use ghes_sim::{NewArtifact, Sim, SimConfig};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

const USAGE: &str = "usage: ghes-sim [--api ADDR] [--blob ADDR] [--link-ttl SECS] \
                     [--rate-limit N] [--no-seed] [--advertise-host HOST] [--artifacts N]";

/// The simulator's settings and the artifacts to add to the public repo.
fn parse_args() -> Result<(SimConfig, u64), String> {
    let mut cfg = SimConfig::default();
    let mut extra = 0;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--api" => cfg.api_addr = addr(&value("--api")?)?,
            "--blob" => cfg.blob_addr = addr(&value("--blob")?)?,
            "--link-ttl" => {
                let secs = value("--link-ttl")?;
                let secs: u64 = secs
                    .parse()
                    .map_err(|_| format!("bad --link-ttl {secs:?}"))?;
                cfg.link_ttl = Duration::from_secs(secs);
            }
            "--rate-limit" => {
                let n = value("--rate-limit")?;
                cfg.rate_limit = n.parse().map_err(|_| format!("bad --rate-limit {n:?}"))?;
            }
            "--no-seed" => cfg.seed_artifacts = false,
            "--artifacts" => {
                let n = value("--artifacts")?;
                extra = n.parse().map_err(|_| format!("bad --artifacts {n:?}"))?;
            }
            "--advertise-host" => {
                cfg.advertise_host = Some(host_name(&value("--advertise-host")?)?);
            }
            "-h" | "--help" => return Err(USAGE.to_string()),
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    // Loopback only unless asked: the simulator is a test double, not a
    // server to expose, and a wildcard address in the URLs it hands out
    // would send clients nowhere.
    if cfg.advertise_host.is_none() {
        for a in [cfg.api_addr, cfg.blob_addr] {
            if !a.ip().is_loopback() {
                return Err(format!(
                    "{a} is not a loopback address (add --advertise-host HOST \
                     to listen there and hand out URLs naming HOST)"
                ));
            }
        }
    }
    Ok((cfg, extra))
}

fn addr(s: &str) -> Result<SocketAddr, String> {
    s.parse()
        .map_err(|_| format!("bad address {s:?} (want IP:PORT)"))
}

/// A DNS name or IPv4 address: it goes into URLs as is.
fn host_name(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && !s.starts_with(['-', '.'])
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
    if ok {
        Ok(s.to_string())
    } else {
        Err(format!("bad --advertise-host {s:?} (want a host name)"))
    }
}

/// Ctrl-C, or SIGTERM (`docker stop`: as PID 1 in a container the default
/// action of SIGTERM does not apply, so it has to be handled).
async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

#[tokio::main]
async fn main() -> ExitCode {
    let (cfg, extra) = match parse_args() {
        Ok(parsed) => parsed,
        Err(msg) => {
            eprintln!("{msg}");
            return ExitCode::from(2);
        }
    };
    let advertise_host = cfg.advertise_host.clone();
    let sim = match Sim::start(cfg).await {
        Ok(sim) => sim,
        Err(e) => {
            eprintln!("ghes-sim: cannot listen: {e}");
            return ExitCode::FAILURE;
        }
    };
    for i in 0..extra {
        sim.add_artifact(NewArtifact {
            repo: PUBLIC_REPO.into(),
            run_id: 5000 + i,
            name: format!("bench-{i}"),
            payload_bytes: 100,
            with_digest: false,
            expired: false,
        });
    }
    let base = sim.api_base();
    println!("GHES simulator (3.19) at {base}");
    let blob = sim.blob_addr();
    match advertise_host {
        Some(host) => println!(
            "blob storage host at http://{host}:{} (listening on {blob})",
            blob.port()
        ),
        None => println!("blob storage host at http://{blob}"),
    }
    println!();
    println!("tokens:");
    println!("  admin    {ADMIN_TOKEN}   (read + write everywhere)");
    println!("  reader   {READER_TOKEN}   (read everywhere)");
    println!("  outsider {OUTSIDER_TOKEN}   (public repos only)");
    println!("  bad      {BAD_TOKEN}   (401)");
    println!(
        "repos: {PUBLIC_REPO} (1001, public), {PRIVATE_REPO} (1002), {OTHER_PRIVATE_REPO} (1003)"
    );
    for a in sim
        .artifacts(PUBLIC_REPO)
        .iter()
        .chain(&sim.artifacts(PRIVATE_REPO))
    {
        println!(
            "  artifact {} {:<16} run {} {} bytes{}",
            a.id,
            a.name,
            a.run_id,
            a.size_in_bytes,
            if a.expired { " (expired)" } else { "" }
        );
    }
    let first = sim
        .artifacts(PUBLIC_REPO)
        .last()
        .map(|a| a.id)
        .unwrap_or(1_000_001);
    println!();
    println!("try:");
    println!("  curl -i '{base}/repos/{PUBLIC_REPO}/actions/artifacts?per_page=2'");
    println!("  curl -i -H 'Authorization: token {ADMIN_TOKEN}' {base}/repos/{PRIVATE_REPO}/actions/artifacts");
    println!("  curl -i -H 'Authorization: token {ADMIN_TOKEN}' -H 'If-None-Match: <etag from above>' {base}/repos/{PRIVATE_REPO}/actions/artifacts");
    println!("  curl -L -o a.zip -H 'Authorization: token {READER_TOKEN}' {base}/repos/{PUBLIC_REPO}/actions/artifacts/{first}/zip");
    println!("  curl -i -X DELETE -H 'Authorization: token {ADMIN_TOKEN}' {base}/repos/{PUBLIC_REPO}/actions/artifacts/{first}");
    println!();
    println!("Ctrl-C to stop.");

    stop_signal().await;
    let c = sim.counters();
    println!(
        "\nserved {} API requests ({} not modified), {} blob GETs, {} blob bytes",
        c.api_requests, c.not_modified, c.blob_gets, c.blob_bytes
    );
    sim.shutdown().await;
    ExitCode::SUCCESS
}
