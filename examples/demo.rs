//! The quick start: the GHES simulator and artifact-mirror in front of it,
//! on loopback, with curl lines to paste.
//!
//!     cargo run --example demo [-- --listen 127.0.0.1:8080] [--data-dir ./data/demo]

use std::net::SocketAddr;

use artifact_mirror::config::{Layer, Settings};
use artifact_mirror::server::Server;
use ghes_sim::fixtures::{ADMIN_TOKEN, PRIVATE_REPO, PUBLIC_REPO, READER_TOKEN};
use ghes_sim::{Sim, SimConfig};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let flag = |name: &str| std::env::args().skip_while(|a| a != name).nth(1);
    let listen: SocketAddr = flag("--listen")
        .unwrap_or_else(|| "127.0.0.1:8080".into())
        .parse()?;
    let data_dir = flag("--data-dir").unwrap_or_else(|| "./data/demo".into());
    let sim = Sim::start(SimConfig::default()).await?;
    let settings = Settings::resolve(Layer {
        listen: Some(listen),
        upstream: Some(sim.api_base().parse()?),
        data_dir: Some(data_dir.into()),
        ..Layer::default()
    })?;
    let _log = artifact_mirror::access_log::init_subscriber(&settings);
    let server = Server::bind(&settings).await?;
    let base = format!("http://{}/api/v3", server.local_addr()?);
    let artifact = sim
        .artifacts(PRIVATE_REPO)
        .into_iter()
        .find(|a| !a.expired)
        .map_or(0, |a| a.id);

    println!(
        "
GHES simulator:  {sim_base}   (blob store on {blob})
artifact-mirror: {base}

Try (tokens are the simulator's fixtures):
  curl -i {base}/repos/{PUBLIC_REPO}/actions/artifacts?per_page=2
  curl -i -H 'Authorization: token {READER_TOKEN}' {base}/repos/{PRIVATE_REPO}/actions/artifacts
  curl -i -H 'Authorization: token {READER_TOKEN}' {base}/repos/{PRIVATE_REPO}/actions/artifacts/{artifact}
  curl -i -H 'Authorization: token {ADMIN_TOKEN}' {base}/repos/{PRIVATE_REPO}/actions/artifacts/{artifact}/zip
  curl -i {base}/repos/{PRIVATE_REPO}/actions/artifacts            # 404: no access without a token
  curl -i {base}/repos/{PUBLIC_REPO}/actions/artifacts/abc         # 400 from the mirror itself
  curl -i http://{addr}/readyz

Ctrl-C stops both.
",
        sim_base = sim.api_base(),
        blob = sim.blob_addr(),
        addr = server.local_addr()?,
    );
    server
        .run(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await;
    sim.shutdown().await;
    Ok(())
}
