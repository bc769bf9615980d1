//! The local backend: one bubblewrap sandbox per episode (`SANDBOXES.md` §2.2).
//!
//! (Being implemented: see the issue.)

mod config;

pub use config::LocalConfig;
