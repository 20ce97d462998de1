use std::process::ExitCode;

use clap::{Parser, Subcommand};

use artifact_mirror::config::{ConfigArgs, LogFormat, Settings};
use artifact_mirror::server::Server;

/// Caching reverse proxy for the GitHub Enterprise Server Actions artifacts API.
#[derive(Parser)]
#[command(name = "artifact-mirror", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the mirror.
    Serve(ConfigArgs),
    /// Print the effective settings, or say which one is wrong (exit status 2).
    CheckConfig(ConfigArgs),
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::CheckConfig(args) => match args.load() {
            Ok(settings) => {
                print!("{}", settings.to_toml());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("artifact-mirror: {e}");
                ExitCode::from(2)
            }
        },
        Command::Serve(args) => {
            let settings = match args.load() {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("artifact-mirror: {e}");
                    return ExitCode::from(2);
                }
            };
            init_logging(&settings);
            let runtime = match tokio::runtime::Runtime::new() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("artifact-mirror: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            runtime.block_on(serve(settings))
        }
    }
}

async fn serve(settings: Settings) -> ExitCode {
    let server = match Server::bind(&settings).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("cannot start: {e}");
            eprintln!("artifact-mirror: {e}");
            return ExitCode::FAILURE;
        }
    };
    let addr = server
        .local_addr()
        .map_or_else(|_| settings.listen.to_string(), |a| a.to_string());
    tracing::info!(
        listen = %addr,
        upstream = %settings.upstream,
        data_dir = %settings.data_dir.display(),
        "artifact-mirror serving http://{addr}{}",
        settings.api_base_path()
    );
    server.run(shutdown_signal()).await;
    ExitCode::SUCCESS
}

/// SIGINT or SIGTERM.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn init_logging(settings: &Settings) {
    // `check` already proved the filter parses; RUST_LOG, when set, wins.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&settings.log_level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match settings.log_format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Human => builder.init(),
    }
}
