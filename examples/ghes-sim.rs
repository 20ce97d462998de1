//! Runs the GHES simulator on its own, for trying the mirror by hand.
//!
//! ```text
//! cargo run --example ghes-sim -- [--api 127.0.0.1:9090] [--blob 127.0.0.1:9091]
//!                                 [--link-ttl SECS] [--rate-limit N] [--no-seed]
//! ```
//! Prints the base URL, the fixture tokens and a few curl lines, then serves
//! until Ctrl-C.

use ghes_sim::fixtures::{
    ADMIN_TOKEN, BAD_TOKEN, OTHER_PRIVATE_REPO, OUTSIDER_TOKEN, PRIVATE_REPO, PUBLIC_REPO,
    READER_TOKEN,
};
use ghes_sim::{Sim, SimConfig};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

const USAGE: &str =
    "usage: ghes-sim [--api ADDR] [--blob ADDR] [--link-ttl SECS] [--rate-limit N] [--no-seed]";

fn parse_args() -> Result<SimConfig, String> {
    let mut cfg = SimConfig::default();
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
            "-h" | "--help" => return Err(USAGE.to_string()),
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    Ok(cfg)
}

/// Loopback only: the simulator is a test double, not a server to expose.
fn addr(s: &str) -> Result<SocketAddr, String> {
    let a: SocketAddr = s
        .parse()
        .map_err(|_| format!("bad address {s:?} (want IP:PORT)"))?;
    if !a.ip().is_loopback() {
        return Err(format!("{a} is not a loopback address"));
    }
    Ok(a)
}

#[tokio::main]
async fn main() -> ExitCode {
    let cfg = match parse_args() {
        Ok(cfg) => cfg,
        Err(msg) => {
            eprintln!("{msg}");
            return ExitCode::from(2);
        }
    };
    let sim = match Sim::start(cfg).await {
        Ok(sim) => sim,
        Err(e) => {
            eprintln!("ghes-sim: cannot listen: {e}");
            return ExitCode::FAILURE;
        }
    };
    let base = sim.api_base();
    println!("GHES simulator (3.19) at {base}");
    println!("blob storage host at http://{}", sim.blob_addr());
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

    let _ = tokio::signal::ctrl_c().await;
    let c = sim.counters();
    println!(
        "\nserved {} API requests ({} not modified), {} blob GETs, {} blob bytes",
        c.api_requests, c.not_modified, c.blob_gets, c.blob_bytes
    );
    sim.shutdown().await;
    ExitCode::SUCCESS
}
