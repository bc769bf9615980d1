//! `terminal`: Terminus-compatible terminal tasks in a sandbox (`TERMINAL_ENV.md`).
//!
//! (Being implemented: see the issue.)

mod config;

pub use config::TerminalConfig;
