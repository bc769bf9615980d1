//! Configuration of the local bubblewrap backend.

use clap::Args;

/// Settings of the local bubblewrap backend (`--local-*` flags).
#[derive(Debug, Clone, Args)]
pub struct LocalConfig {
    /// Where per-episode sandbox directories are created (default: the system temp dir).
    #[arg(long = "sandbox-root", env = "ENV_SERVER_SANDBOX_ROOT")]
    pub sandbox_root: Option<std::path::PathBuf>,
}
