//! Setup shared by the integration tests that drive the real local bubblewrap sandbox
//! (included with `mod support;`).

use std::path::PathBuf;
use std::sync::Arc;

use env_server::sandbox::local::{LocalBackend, LocalConfig};

/// A local backend with the test build's `env-sbx`, its sandboxes under
/// `$TMPDIR/<dir_name>` (created if missing).
pub(crate) fn local_backend(dir_name: &str) -> Arc<LocalBackend> {
    let root = std::env::temp_dir().join(dir_name);
    std::fs::create_dir_all(&root).unwrap();
    let config = LocalConfig {
        sandbox_root: Some(root),
        sbx_path: Some(PathBuf::from(env!("CARGO_BIN_EXE_env-sbx"))),
        ..LocalConfig::default()
    };
    Arc::new(LocalBackend::new(&config).expect("local backend"))
}
