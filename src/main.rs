use std::process::ExitCode;
use std::sync::Arc;

use clap::{CommandFactory, Parser, Subcommand};

use artifact_mirror::admin::{self, CacheCommand, ServerFile};
use artifact_mirror::app::App;
use artifact_mirror::config::{ConfigArgs, Settings};
use artifact_mirror::server::Server;

/// mimalloc instead of glibc's malloc: a fresh JSON hit allocates a few
/// dozen small blocks (header maps, the request's parts, the log line),
/// some freed on another thread. Measured with benches/nginx.sh: 8–16 %
/// less CPU per request. Built with `no_thp`: with transparent huge pages
/// its arenas kept ~40 MB more resident at idle (README, Performance).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `--version`: the crate version and the git commit it was built from
/// (build.rs), so a report names the exact code.
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("ARTIFACT_MIRROR_COMMIT"),
    ")"
);

/// Caching reverse proxy for the GitHub Enterprise Server Actions artifacts API.
#[derive(Parser)]
#[command(name = "artifact-mirror", version = VERSION)]
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
    /// Inspect and maintain the cache of a stopped server: stats, purge,
    /// verify, gc (exit status 2 for bad input, 1 when it cannot finish).
    Cache {
        #[command(subcommand)]
        command: CacheCommand,
    },
    /// Print a shell completion script to stdout, e.g.
    /// `artifact-mirror completions bash > /etc/bash_completion.d/artifact-mirror`.
    Completions { shell: clap_complete::Shell },
    /// Print the manual page (roff) to stdout, e.g.
    /// `artifact-mirror manpage > /usr/local/share/man/man1/artifact-mirror.1`.
    Manpage,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // Help and version go to stdout with status 0; bad arguments to
            // stderr with status 2. clap knows which is which.
            let _ = e.print();
            if let Some(var) = env_source(&e) {
                eprintln!("note: the value came from the environment variable {var}");
            }
            return ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(2));
        }
    };
    match cli.command {
        Command::Completions { shell } => write_stdout(&artifact_mirror::cli_docs::completions(
            shell,
            Cli::command(),
        )),
        Command::Manpage => match artifact_mirror::cli_docs::manpage(Cli::command()) {
            Ok(out) => write_stdout(&out),
            Err(e) => {
                eprintln!("artifact-mirror: cannot render the manual page: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Cache { command } => {
            init_admin_log();
            admin::run(command)
        }
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
            // Dropped last, after the runtime: writes the lines still queued.
            let _log = artifact_mirror::access_log::init_subscriber(&settings);
            let runtime = match tokio::runtime::Runtime::new() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("artifact-mirror: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let (status, app) = runtime.block_on(serve(settings));
            // Every task is dropped and every blocking call has returned:
            // nothing can change the store any more, so it may vouch for
            // itself to the next start.
            drop(runtime);
            if let Some(app) = app {
                match app.seal() {
                    Ok(true) => tracing::info!("store sealed: the next start trusts its index"),
                    Ok(false) => {
                        tracing::info!("a fill was cut: the next start reconciles the store")
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "store not sealed: the next start reconciles it")
                    }
                }
                tracing::info!("stopped");
            }
            status
        }
    }
}

/// Serves until a signal; returns the handler once stopped, so that the
/// store can be sealed after the runtime is gone.
async fn serve(settings: Settings) -> (ExitCode, Option<Arc<App>>) {
    let server = match Server::bind(&settings).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("cannot start: {e}");
            eprintln!("artifact-mirror: {e}");
            return (ExitCode::FAILURE, None);
        }
    };
    let app = server.app();
    let bound = server.local_addr().unwrap_or(settings.listen);
    let addr = bound.to_string();
    // Names this process to admin commands stopped by the index lock.
    if let Err(e) = ServerFile::new(bound, settings.tls_cert.is_some()).write(&settings.data_dir) {
        tracing::warn!(error = %e, "server.json not written");
    }
    tracing::info!(
        listen = %addr,
        upstream = %settings.upstream,
        data_dir = %settings.data_dir.display(),
        "artifact-mirror serving http://{addr}{}",
        settings.api_base_path()
    );
    server
        .run(async {
            shutdown_signal().await;
            // A second signal ends the process at once. Nothing is left
            // corrupt by that: the index recovers from an unflushed log, a blob
            // is recorded only after its file is whole and in place, and
            // partial files in tmp/ are cleared at the next start.
            tokio::spawn(async {
                let status = shutdown_signal().await;
                tracing::warn!("second signal: exiting now");
                std::process::exit(status);
            });
        })
        .await;
    if let Err(e) = ServerFile::remove_if_ours(&settings.data_dir) {
        tracing::warn!(error = %e, "server.json not removed");
    }
    (ExitCode::SUCCESS, Some(app))
}

/// Writes generated text to stdout; a closed pipe is an error, not a panic.
fn write_stdout(bytes: &[u8]) -> ExitCode {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("artifact-mirror: cannot write to stdout: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Warnings of the store (a file that could not be removed…) reach the
/// operator on stderr; the command's own report goes to stdout.
fn init_admin_log() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// clap names the flag of a bad value even when the value came from the
/// environment; find the variable so the operator knows where to look.
fn env_source(error: &clap::Error) -> Option<String> {
    let arg = match error.get(clap::error::ContextKind::InvalidArg)? {
        clap::error::ContextValue::String(arg) => arg.clone(),
        _ => return None,
    };
    let flag = arg.strip_prefix("--")?.split([' ', '=']).next()?;
    let given_as_flag =
        std::env::args().any(|a| a == format!("--{flag}") || a.starts_with(&format!("--{flag}=")));
    let var = format!("ARTIFACT_MIRROR_{}", flag.to_uppercase().replace('-', "_"));
    (!given_as_flag && std::env::var_os(&var).is_some()).then_some(var)
}

/// SIGINT or SIGTERM.
async fn shutdown_signal() -> i32 {
    // The shell's convention for a process ended by a signal: 128 + its number.
    const SIGINT: i32 = 128 + 2;
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        const SIGTERM: i32 = 128 + 15;
        match signal(SignalKind::terminate()) {
            Ok(mut term) => tokio::select! {
                _ = tokio::signal::ctrl_c() => SIGINT,
                _ = term.recv() => SIGTERM,
            },
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                SIGINT
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        SIGINT
    }
}
