//! The `env-server` binary: parse the command line, set up logging, bind, serve until
//! SIGINT/SIGTERM, then close every session.

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand, parser::ValueSource};
use env_server::config::{LogFormat, SandboxKind, ServeConfig};
use env_server::server::{AppState, run};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

/// OpenEnv-compatible environment server for agentic reinforcement learning.
#[derive(Debug, Parser)]
#[command(name = "env-server", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve one environment over the OpenEnv protocol (WebSocket /ws, HTTP, MCP).
    Serve(ServeConfig),
}

/// Peer variable names read as aliases when neither the flag nor our own variable is set
/// (`DESIGN.md`); an empty value counts as unset.
const ALIASES: &[(&str, &str)] = &[
    ("max_sessions", "MAX_CONCURRENT_ENVS"),
    ("sandbox", SandboxKind::TERMINUS_VAR),
];

fn parse() -> anyhow::Result<Cli> {
    let matches = Cli::command().get_matches();
    let mut cli = Cli::from_arg_matches(&matches)?;
    let Command::Serve(config) = &mut cli.command;
    if let Some(("serve", sub)) = matches.subcommand() {
        for (field, var) in ALIASES {
            let Some(value) = std::env::var(var).ok().filter(|v| !v.is_empty()) else {
                continue;
            };
            if sub.value_source(field) != Some(ValueSource::DefaultValue) {
                continue;
            }
            match *field {
                "max_sessions" => {
                    config.limits.max_sessions = value
                        .trim()
                        .parse()
                        .ok()
                        .filter(|n| *n > 0)
                        .with_context(|| format!("{var}={value:?} is not a positive integer"))?;
                }
                "sandbox" => {
                    config.sandbox = SandboxKind::from_terminus_name(&value)
                        .map_err(|e| anyhow::anyhow!("{var}={value:?}: {e}"))?;
                }
                _ => {}
            }
        }
    }
    Ok(cli)
}

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Raises the soft open-file limit to the hard limit: every session is a socket.
fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
        && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok()
    {
        tracing::debug!(from = soft, to = hard, "raised the open-file limit");
    }
}

async fn shutdown_signal(token: CancellationToken) {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
        () = term => tracing::info!("SIGTERM: shutting down"),
    }
    token.cancel();
}

/// Runs the server; a start-up failure is one line on stderr (the error and its causes, no
/// backtrace even under `RUST_BACKTRACE=1`) and exit status 1.
#[tokio::main]
async fn main() -> ExitCode {
    // A panic (caught per session or request) logs one bounded line, never its message.
    env_server::panics::install_hook();
    match serve().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("env-server: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve() -> anyhow::Result<()> {
    let cli = parse()?;
    let Command::Serve(config) = cli.command;
    init_logging(config.log_format);
    raise_fd_limit();
    let factory = env_server::envs::build(&config).await?;
    let listener = tokio::net::TcpListener::bind((config.host, config.port))
        .await
        .with_context(|| format!("cannot bind {}:{}", config.host, config.port))?;
    let addr = listener.local_addr()?;
    let shutdown = CancellationToken::new();
    let state = Arc::new(AppState::new(
        factory,
        config.limits.clone(),
        shutdown.clone(),
    ));
    tracing::info!(%addr, env = %config.env, max_sessions = config.limits.max_sessions, "env-server listening");
    {
        let mut out = std::io::stdout().lock();
        #[allow(clippy::print_stdout)]
        {
            writeln!(out, "env-server listening on {addr}")?;
        }
        out.flush()?;
    }
    tokio::spawn(shutdown_signal(shutdown));
    run(listener, state).await?;
    Ok(())
}
