//! Configuration of the terminal environment.

use clap::Args;

/// Settings of the terminal environment.
#[derive(Debug, Clone, Args)]
pub struct TerminalConfig {
    /// Wall-clock limit of one agent command; its whole process tree is killed on expiry.
    #[arg(long, env = "ENV_SERVER_COMMAND_TIMEOUT_S", default_value_t = 120)]
    pub command_timeout_s: u64,
}
