//! Configuration: every limit is a typed field with its default beside it, a `--flag` and an
//! `ENV_SERVER_*` variable (`DESIGN.md` invariant 7). `env-server serve --help` is the
//! reference; a snapshot test keeps it from drifting. Library code never reads the process
//! environment: the binary parses, the library receives a [`ServeConfig`].

use std::net::IpAddr;
use std::time::Duration;

use clap::{Args, ValueEnum};

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Sandbox backends (`--sandbox`). The Docker and Hugging Face backends come with their own
/// issues.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SandboxKind {
    /// One bubblewrap sandbox per episode on this machine: no daemon, no account, no network.
    Local,
}

impl SandboxKind {
    /// The variable Terminus reads its backend from, read here as an alias of `--sandbox`.
    pub const TERMINUS_VAR: &'static str = "TERMINUS_SANDBOX_BACKEND";

    /// The backend a `TERMINUS_SANDBOX_BACKEND` value names, with Terminus's aliases
    /// (case-insensitive): `local`, `bwrap` and `process` are the local backend; Terminus's
    /// `hf` names (and `docker`) are backends this build does not have.
    pub fn from_terminus_name(value: &str) -> Result<Self, String> {
        match value.to_lowercase().as_str() {
            "local" | "bwrap" | "process" => Ok(Self::Local),
            b @ ("hf" | "hf-sandbox" | "huggingface" | "docker") => Err(format!(
                "sandbox backend {b} is not available in this build (available: local)"
            )),
            b => Err(format!("unknown sandbox backend: {b}")),
        }
    }
}

/// Everything `env-server serve` takes.
#[derive(Debug, Clone, Args)]
pub struct ServeConfig {
    /// Address to bind.
    #[arg(long, env = "ENV_SERVER_HOST", default_value = "127.0.0.1")]
    pub host: IpAddr,

    /// Port to bind (0 picks a free one; the chosen address is printed on stdout).
    #[arg(long, env = "ENV_SERVER_PORT", default_value_t = 8000)]
    pub port: u16,

    /// The one environment this process serves; every session gets a fresh instance.
    #[arg(long = "env", env = "ENV_SERVER_ENV", default_value = "terminal", value_parser = clap::builder::PossibleValuesParser::new(crate::envs::ENV_NAMES))]
    pub env: String,

    /// The sandbox backend of the environments that use one. Also read from
    /// TERMINUS_SANDBOX_BACKEND (Terminus's variable: local, bwrap or process).
    #[arg(long, env = "ENV_SERVER_SANDBOX", value_enum, default_value_t = SandboxKind::Local)]
    pub sandbox: SandboxKind,

    /// Limits of sessions and frames.
    #[command(flatten)]
    pub limits: Limits,

    /// The local bubblewrap backend.
    #[command(flatten, next_help_heading = "Local sandbox (bubblewrap)")]
    pub local: crate::sandbox::local::LocalConfig,

    /// The terminal environment.
    #[command(flatten, next_help_heading = "Terminal environment")]
    pub terminal: crate::envs::terminal::TerminalConfig,

    /// Log format (`RUST_LOG` sets the filter; default `info`).
    #[arg(long, env = "ENV_SERVER_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, help_heading = "Logging")]
    pub log_format: LogFormat,
}

/// Server-wide limits.
#[derive(Debug, Clone, Args)]
pub struct Limits {
    /// Concurrent sessions (`/ws`, `/mcp` WebSocket and HTTP-MCP); the next one gets
    /// CAPACITY_REACHED. Also read from MAX_CONCURRENT_ENVS.
    #[arg(long, env = "ENV_SERVER_MAX_SESSIONS", default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_sessions: u32,

    /// Largest inbound WebSocket message; a larger one closes the connection with 1009.
    #[arg(long, env = "ENV_SERVER_MAX_FRAME_BYTES", default_value_t = 16 * 1024 * 1024)]
    pub max_frame_bytes: usize,

    /// Largest HTTP request body (`POST /reset`, `/step`, `/mcp`); a larger one is answered
    /// 413.
    #[arg(long, env = "ENV_SERVER_MAX_BODY_BYTES", default_value_t = 2 * 1024 * 1024)]
    pub max_body_bytes: usize,

    /// A session with no request for this long is closed and destroyed (0 = never).
    #[arg(long, env = "ENV_SERVER_IDLE_TIMEOUT_S", default_value_t = 900)]
    pub idle_timeout_s: u64,

    /// Interval between keepalive pings on an open WebSocket (0 = no pings).
    #[arg(long, env = "ENV_SERVER_KEEPALIVE_INTERVAL_S", default_value_t = 20)]
    pub keepalive_interval_s: u64,

    /// A peer that has not answered a ping after this long is half-open: close 1011.
    #[arg(long, env = "ENV_SERVER_KEEPALIVE_TIMEOUT_S", default_value_t = 20)]
    pub keepalive_timeout_s: u64,

    /// A reply the peer does not take within this long ends the session (peer not reading).
    #[arg(long, env = "ENV_SERVER_SEND_TIMEOUT_S", default_value_t = 60)]
    pub send_timeout_s: u64,

    /// Frames a client may send ahead of the replies; past this the server stops reading
    /// from that socket until it catches up (TCP backpressure).
    #[arg(long, env = "ENV_SERVER_MAX_PENDING_FRAMES", default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_pending_frames: u32,

    /// Per-connection WebSocket read buffer; small keeps idle sessions cheap.
    #[arg(long, env = "ENV_SERVER_WS_READ_BUFFER_BYTES", default_value_t = 4096)]
    pub ws_read_buffer_bytes: usize,

    /// On SIGINT/SIGTERM, how long live sessions get to close before the server exits.
    #[arg(long, env = "ENV_SERVER_SHUTDOWN_GRACE_S", default_value_t = 10)]
    pub shutdown_grace_s: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_sessions: 64,
            max_frame_bytes: 16 * 1024 * 1024,
            max_body_bytes: 2 * 1024 * 1024,
            idle_timeout_s: 900,
            keepalive_interval_s: 20,
            keepalive_timeout_s: 20,
            send_timeout_s: 60,
            max_pending_frames: 64,
            ws_read_buffer_bytes: 4096,
            shutdown_grace_s: 10,
        }
    }
}

fn secs(s: u64) -> Option<Duration> {
    (s > 0).then(|| Duration::from_secs(s))
}

impl Limits {
    /// The idle timeout, `None` when disabled.
    pub fn idle_timeout(&self) -> Option<Duration> {
        secs(self.idle_timeout_s)
    }

    /// The keepalive ping interval, `None` when disabled.
    pub fn keepalive_interval(&self) -> Option<Duration> {
        secs(self.keepalive_interval_s)
    }

    /// How long a ping may go unanswered.
    pub fn keepalive_timeout(&self) -> Duration {
        Duration::from_secs(self.keepalive_timeout_s.max(1))
    }

    /// How long one outbound frame may take to be accepted by the peer.
    pub fn send_timeout(&self) -> Duration {
        Duration::from_secs(self.send_timeout_s.max(1))
    }

    /// The shutdown grace period.
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminus_backend_names() {
        for name in ["local", "bwrap", "process", "BWRAP", "Local"] {
            assert_eq!(
                SandboxKind::from_terminus_name(name),
                Ok(SandboxKind::Local)
            );
        }
        assert_eq!(
            SandboxKind::from_terminus_name("HF"),
            Err("sandbox backend hf is not available in this build (available: local)".to_owned())
        );
        assert_eq!(
            SandboxKind::from_terminus_name(" local"),
            Err("unknown sandbox backend:  local".to_owned()),
            "no strip, as Terminus"
        );
    }
}
