//! The terminal env's inbound parsers as [`crate::fuzz`] drives them (`docs/fuzzing.md`):
//! reset keyword arguments, task ids and `task.yaml`. Each returns `Err` with what broke an
//! invariant; a panic is caught by the caller.

use std::path::Path;

use env_client::protocol::JsonMap;

use super::config::TerminalConfig;
use super::reset::{parse_args, resolve_backend, resolve_file_path};
use super::tasks::{check_task_id, load_task};

/// Reset kwargs through backend resolution and argument parsing (as `local` and as `hf`, the
/// backend with its own shell-mode rules), and every `files` path through path resolution.
pub(crate) fn reset_args(kwargs: &JsonMap) -> Result<(), String> {
    let config = TerminalConfig::default();
    let (label, backend) = resolve_backend(kwargs, "local");
    if label.is_empty() {
        return Err("empty backend label".to_owned());
    }
    for backend in [backend.ok(), Some("hf")].into_iter().flatten() {
        if let Ok(args) = parse_args(kwargs, &config, backend) {
            if args.command_timeout > config.max_command_timeout()
                || args.command_timeout < std::time::Duration::from_millis(1)
            {
                return Err(format!("command timeout {:?}", args.command_timeout));
            }
            for (path, _) in &args.files {
                check_resolved(path, &config.work_dir)?;
            }
        }
    }
    if let Some(serde_json::Value::Object(files)) = kwargs.get("files") {
        for path in files.keys() {
            if let Ok(resolved) = resolve_file_path(path, &config.work_dir) {
                check_resolved(&resolved, &config.work_dir)?;
            }
        }
    }
    Ok(())
}

/// A resolved `files` path lies strictly under the work dir or `/tmp`, with no `..`.
fn check_resolved(path: &str, work_dir: &str) -> Result<(), String> {
    let under = |root: &str| {
        path.strip_prefix(root)
            .is_some_and(|r| r.len() > 1 && r.starts_with('/'))
    };
    if path.split('/').any(|c| c == ".." || c == ".") || !(under(work_dir) || under("/tmp")) {
        return Err(format!("files path resolved outside its roots: {path:?}"));
    }
    Ok(())
}

/// A client-given task id: accepted only as a relative path without `..`.
pub(crate) fn task_id(id: &str) -> Result<(), String> {
    if let Ok(clean) = check_task_id(id)
        && (clean.is_empty()
            || clean.starts_with('/')
            || clean
                .split('/')
                .any(|c| c.is_empty() || c == ".." || c == "."))
    {
        return Err(format!("task id {id:?} accepted as {clean:?}"));
    }
    Ok(())
}

/// `task.yaml` through the real loader: `text` is written as task `t` under `root` (which has
/// `t/run-tests.sh`). A loaded task has an instruction; no error names the host path.
pub(crate) async fn task_yaml(root: &Path, text: &[u8]) -> Result<(), String> {
    let dir = root.join("t");
    std::fs::create_dir_all(&dir).map_err(|e| format!("fuzz setup: {e}"))?;
    std::fs::write(dir.join("run-tests.sh"), "true\n").map_err(|e| format!("fuzz setup: {e}"))?;
    std::fs::write(dir.join("task.yaml"), text).map_err(|e| format!("fuzz setup: {e}"))?;
    match load_task(root.to_path_buf(), "t".to_owned()).await {
        Ok(task) if task.instruction.trim().is_empty() => {
            Err("task loaded without an instruction".to_owned())
        }
        Ok(_) => Ok(()),
        Err(message) if message.contains(&*root.to_string_lossy()) => {
            Err(format!("error names the host path: {message}"))
        }
        Err(_) => Ok(()),
    }
}
