//! Reset (`TERMINAL_ENV.md` §3): keyword arguments, their aliases and coercion, validated
//! before anything is created, and the reset algorithm of §3.2.

use std::time::Duration;

use env_client::protocol::JsonMap;
use serde_json::{Value, json};

use super::config::{ShellMode, TerminalConfig};
use super::format::py_strip;

/// A reset failure as the spec spells it: `{Kind}: {message}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ResetError {
    /// `ValueError`, `PermissionError`, `RuntimeError`.
    pub kind: &'static str,
    /// Client-safe message.
    pub message: String,
}

impl ResetError {
    pub(crate) fn value(message: impl Into<String>) -> Self {
        Self {
            kind: "ValueError",
            message: message.into(),
        }
    }

    pub(crate) fn permission(message: impl Into<String>) -> Self {
        Self {
            kind: "PermissionError",
            message: message.into(),
        }
    }

    pub(crate) fn runtime(message: impl Into<String>) -> Self {
        Self {
            kind: "RuntimeError",
            message: message.into(),
        }
    }
}

impl std::fmt::Display for ResetError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.kind, self.message)
    }
}

/// Validated reset arguments.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ResetArgs {
    pub setup: Vec<String>,
    pub verify: Vec<String>,
    pub task_id: Option<String>,
    pub instruction: Option<String>,
    pub shell_mode: ShellMode,
    pub command_timeout: Duration,
    /// Absolute in-sandbox path and text.
    pub files: Vec<(String, String)>,
    /// Whether the reward file may set the reward of inline verification (`reward_file`;
    /// default `--reward-override`). See `docs/verification.md`.
    pub reward_file: bool,
    pub ignored: Vec<String>,
}

/// The shortest `command_timeout_s` accepted (one millisecond).
const MIN_TIMEOUT_S: f64 = 0.001;

const KNOWN: &[&str] = &[
    "seed",
    "episode_id",
    "sandbox_backend",
    "sandbox_root",
    "sandbox_image",
    "hf_sandbox_image",
    "sandbox_flavor",
    "hf_sandbox_flavor",
    "sandbox_timeout",
    "hf_sandbox_timeout",
    "forward_hf_token",
    "setup",
    "setup_scripts",
    "verify",
    "verify_scripts",
    "task_path",
    "task_id",
    "instruction",
    "shell_mode",
    "command_timeout_s",
    "files",
    "reward_file",
];

/// Python truthiness of a JSON value.
pub(crate) fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

/// A JSON value as Python's `str()` would show a plain value.
pub(crate) fn py_str(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Bool(true) => "True".to_owned(),
        Value::Bool(false) => "False".to_owned(),
        Value::Null => "None".to_owned(),
        other => other.to_string(),
    }
}

/// The first truthy value among `keys`.
fn first_truthy<'a>(kwargs: &'a JsonMap, keys: &[&str]) -> Option<&'a Value> {
    keys.iter()
        .filter_map(|k| kwargs.get(*k))
        .find(|v| truthy(v))
}

/// The first non-null value among `keys`.
fn first_non_null<'a>(kwargs: &'a JsonMap, keys: &[&str]) -> Option<&'a Value> {
    keys.iter()
        .filter_map(|k| kwargs.get(*k))
        .find(|v| !v.is_null())
}

/// Resolves `sandbox_backend` (§3.1): the canonical backend name, and the label of error texts.
/// `default` is the server's backend.
pub(crate) fn resolve_backend(
    kwargs: &JsonMap,
    default: &str,
) -> (String, Result<&'static str, ResetError>) {
    let raw = match kwargs.get("sandbox_backend") {
        Some(v) if truthy(v) => py_str(v),
        _ => default.to_owned(),
    }
    .to_lowercase();
    let canonical = match raw.as_str() {
        "local" | "bwrap" | "process" => "local",
        "hf" | "hf-sandbox" | "huggingface" => "hf",
        "docker" => "docker",
        _ => {
            let err = ResetError::value(format!("unknown sandbox backend: {raw}"));
            return (format!("{raw} sandbox"), Err(err));
        }
    };
    let label = if canonical == "hf" {
        "HF sandbox".to_owned()
    } else {
        format!("{canonical} sandbox")
    };
    if canonical != default {
        let err = ResetError::permission(format!("sandbox backend not allowed: {raw}"));
        return (label, Err(err));
    }
    (label, Ok(canonical))
}

/// `setup`/`verify` coercion (§3.1, project rule): a string or a list of strings only.
fn coerce_commands(v: Option<&Value>, name: &str) -> Result<Vec<String>, ResetError> {
    let bad = || ResetError::value(format!("{name} must be a string or a list of strings"));
    match v {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(if py_strip(s).is_empty() {
            Vec::new()
        } else {
            vec![s.clone()]
        }),
        Some(Value::Array(items)) => items
            .iter()
            .filter(|v| !matches!(v, Value::String(s) if py_strip(s).is_empty()))
            .map(|v| v.as_str().map(str::to_owned).ok_or_else(bad))
            .collect(),
        Some(_) => Err(bad()),
    }
}

fn check_forward_token(v: Option<&Value>) -> Result<(), ResetError> {
    let refused = || {
        ResetError::value(
            "forward_hf_token is not supported: server credentials never enter the sandbox",
        )
    };
    match v {
        None | Some(Value::Null) | Some(Value::Bool(false)) => Ok(()),
        Some(Value::Number(n)) if n.as_f64() == Some(0.0) => Ok(()),
        Some(Value::String(s))
            if matches!(
                s.trim().to_lowercase().as_str(),
                "false" | "0" | "no" | "off" | ""
            ) =>
        {
            Ok(())
        }
        Some(_) => Err(refused()),
    }
}

/// Resolves a `files` path against the work dir; absolute paths must lie under it or `/tmp`.
pub(crate) fn resolve_file_path(path: &str, work_dir: &str) -> Result<String, ResetError> {
    let bad = |why: &str| ResetError::value(format!("files: invalid path {path:?}: {why}"));
    if path.is_empty() || path.contains('\0') {
        return Err(bad("empty or contains NUL"));
    }
    if path.ends_with('/') {
        return Err(bad("names a directory"));
    }
    let joined = if path.starts_with('/') {
        path.to_owned()
    } else {
        format!("{}/{path}", work_dir.trim_end_matches('/'))
    };
    let mut parts = Vec::new();
    for part in joined.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err(bad("'..' is not allowed")),
            p => parts.push(p),
        }
    }
    let normal = format!("/{}", parts.join("/"));
    let under = |root: &str| {
        let root = root.trim_end_matches('/');
        normal.len() > root.len() + 1
            && normal.starts_with(root)
            && normal.as_bytes()[root.len()] == b'/'
    };
    if under(work_dir) || under("/tmp") {
        Ok(normal)
    } else {
        Err(bad("must lie under the work dir or /tmp"))
    }
}

fn parse_files(
    v: Option<&Value>,
    config: &TerminalConfig,
) -> Result<Vec<(String, String)>, ResetError> {
    let map = match v {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Object(m)) => m,
        Some(_) => return Err(ResetError::value("files must be an object of path to text")),
    };
    if map.len() > config.max_reset_files {
        return Err(ResetError::value(format!(
            "files: at most {} files are allowed",
            config.max_reset_files
        )));
    }
    let mut total = 0usize;
    let mut out = Vec::with_capacity(map.len());
    for (path, text) in map {
        let Value::String(text) = text else {
            return Err(ResetError::value(format!(
                "files: content of {path:?} must be a string"
            )));
        };
        total += text.len();
        if total > config.max_reset_files_bytes {
            return Err(ResetError::value(format!(
                "files: at most {} bytes are allowed",
                config.max_reset_files_bytes
            )));
        }
        out.push((resolve_file_path(path, &config.work_dir)?, text.clone()));
    }
    Ok(out)
}

/// Parses and validates every argument of a reset after the backend (already resolved).
pub(crate) fn parse_args(
    kwargs: &JsonMap,
    config: &TerminalConfig,
    backend: &str,
) -> Result<ResetArgs, ResetError> {
    if kwargs.get("sandbox_root").is_some_and(|v| !v.is_null()) {
        return Err(ResetError::permission(
            "sandbox_root is server configuration and cannot be set by reset",
        ));
    }
    if let Some(image) = first_truthy(kwargs, &["sandbox_image", "hf_sandbox_image"]) {
        return Err(ResetError::permission(format!(
            "sandbox image not allowed: {}",
            py_str(image)
        )));
    }
    if let Some(flavor) = first_truthy(kwargs, &["sandbox_flavor", "hf_sandbox_flavor"])
        && py_str(flavor) != "cpu-basic"
    {
        return Err(ResetError::permission(format!(
            "sandbox flavor not allowed: {}",
            py_str(flavor)
        )));
    }
    check_forward_token(kwargs.get("forward_hf_token"))?;
    let setup = coerce_commands(first_non_null(kwargs, &["setup", "setup_scripts"]), "setup")?;
    let verify = coerce_commands(
        first_non_null(kwargs, &["verify", "verify_scripts"]),
        "verify",
    )?;
    let task_id = match first_non_null(kwargs, &["task_path", "task_id"]) {
        None => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(ResetError::value("task_path must be a string")),
    };
    let instruction = match kwargs.get("instruction") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(ResetError::value("instruction must be a string")),
    };
    let shell_mode = match kwargs.get("shell_mode") {
        None | Some(Value::Null) if backend == "hf" => ShellMode::PerCommand,
        None | Some(Value::Null) => config.shell_mode,
        Some(Value::String(s)) if s == "per_command" => ShellMode::PerCommand,
        Some(Value::String(s)) if s == "persistent" => ShellMode::Persistent,
        Some(_) => {
            return Err(ResetError::value(
                "shell_mode must be 'per_command' or 'persistent'",
            ));
        }
    };
    if shell_mode == ShellMode::Persistent && backend == "hf" {
        return Err(ResetError::value(
            "shell_mode=persistent is not supported by the hf backend",
        ));
    }
    let max = config.max_command_timeout();
    let command_timeout = match kwargs.get("command_timeout_s") {
        None | Some(Value::Null) => config.command_timeout().min(max),
        Some(v) => match v.as_f64() {
            // A positive value that rounds to no time at all (`5e-324`) is no timeout either.
            Some(s) if s.is_finite() && s >= MIN_TIMEOUT_S && !v.is_boolean() => {
                Duration::try_from_secs_f64(s).unwrap_or(max).min(max)
            }
            _ => {
                return Err(ResetError::value(format!(
                    "command_timeout_s must be a number of at least {MIN_TIMEOUT_S}"
                )));
            }
        },
    };
    let files = parse_files(kwargs.get("files"), config)?;
    let reward_file = match kwargs.get("reward_file") {
        None | Some(Value::Null) => config.reward_override,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(ResetError::value("reward_file must be true or false")),
    };
    let ignored = kwargs
        .keys()
        .filter(|k| !KNOWN.contains(&k.as_str()))
        .cloned()
        .collect();
    Ok(ResetArgs {
        setup,
        verify,
        task_id,
        instruction,
        shell_mode,
        command_timeout,
        files,
        reward_file,
        ignored,
    })
}

/// The metadata of a reset that failed before or while creating the sandbox.
pub(crate) fn create_error_metadata(label: &str, err: &ResetError) -> JsonMap {
    let mut m = JsonMap::new();
    m.insert("status".to_owned(), json!("error"));
    m.insert(
        "error".to_owned(),
        json!(format!("failed to create {label}: {err}")),
    );
    m
}

/// The ready message of §3.2 step 11.
pub(crate) fn ready_message(setup: usize, verify: usize) -> String {
    let mut m = "Terminus environment ready. Use terminal(command=...) to work.".to_owned();
    if setup > 0 {
        m.push_str(&format!(" Setup commands run: {setup}."));
    }
    if verify > 0 {
        m.push_str(&format!(" Verify commands registered: {verify}."));
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[allow(clippy::needless_pass_by_value)]
    fn map(v: Value) -> JsonMap {
        v.as_object().cloned().unwrap()
    }

    fn parse(v: Value) -> Result<ResetArgs, ResetError> {
        parse_args(&map(v), &TerminalConfig::default(), "local")
    }

    #[test]
    fn backend_aliases_and_labels() {
        let (label, r) = resolve_backend(&map(json!({"sandbox_backend": "nope"})), "local");
        assert_eq!(
            format!("failed to create {label}: {}", r.unwrap_err()),
            "failed to create nope sandbox: ValueError: unknown sandbox backend: nope"
        );
        let (label, r) = resolve_backend(&map(json!({"sandbox_backend": "BWRAP"})), "local");
        assert_eq!((label.as_str(), r), ("local sandbox", Ok("local")));
        let (label, r) = resolve_backend(&map(json!({"sandbox_backend": "huggingface"})), "local");
        assert_eq!(label, "HF sandbox");
        assert_eq!(
            r.unwrap_err().to_string(),
            "PermissionError: sandbox backend not allowed: huggingface"
        );
        let (_, r) = resolve_backend(&map(json!({"sandbox_backend": ""})), "local");
        assert_eq!(r, Ok("local"));
    }

    #[test]
    fn command_coercion() {
        let a =
            parse(json!({"setup": null, "setup_scripts": "echo a", "verify": ["x", "  ", "y"]}))
                .unwrap();
        assert_eq!(a.setup, vec!["echo a"]);
        assert_eq!(a.verify, vec!["x", "y"]);
        assert_eq!(
            parse(json!({"setup": "   "})).unwrap().setup,
            Vec::<String>::new()
        );
        assert_eq!(
            parse(json!({"setup": [], "setup_scripts": ["z"]}))
                .unwrap()
                .setup,
            Vec::<String>::new()
        );
        for bad in [
            json!({"setup": 3}),
            json!({"setup": ["a", 1]}),
            json!({"verify": {"a": 1}}),
        ] {
            let err = parse(bad).unwrap_err();
            assert_eq!(err.kind, "ValueError");
            assert!(
                err.message
                    .ends_with("must be a string or a list of strings")
            );
        }
    }

    #[test]
    fn forward_token_and_allowlists() {
        for ok in [
            json!(false),
            json!("false"),
            json!(0),
            json!(null),
            json!("0"),
            json!("no"),
            json!("OFF"),
        ] {
            assert!(parse(json!({"forward_hf_token": ok})).is_ok());
        }
        let err = parse(json!({"forward_hf_token": "true"})).unwrap_err();
        assert_eq!(
            err.to_string(),
            "ValueError: forward_hf_token is not supported: server credentials never enter the sandbox"
        );
        assert_eq!(
            parse(json!({"sandbox_image": "python:3.12"}))
                .unwrap_err()
                .kind,
            "PermissionError"
        );
        assert!(parse(json!({"sandbox_flavor": "cpu-basic"})).is_ok());
        assert!(parse(json!({"hf_sandbox_flavor": "a100"})).is_err());
        assert!(parse(json!({"sandbox_root": "/"})).is_err());
    }

    #[test]
    fn timeouts_modes_and_ignored() {
        let a = parse(json!({"command_timeout_s": 5000, "shell_mode": "per_command", "task": "x", "prompt": 1})).unwrap();
        assert_eq!(a.command_timeout, Duration::from_secs(600));
        assert_eq!(a.shell_mode, ShellMode::PerCommand);
        assert_eq!(a.ignored, vec!["task", "prompt"]);
        assert_eq!(
            parse(json!({"command_timeout_s": 0.5}))
                .unwrap()
                .command_timeout,
            Duration::from_millis(500)
        );
        assert!(parse(json!({"command_timeout_s": 0})).is_err());
        assert!(
            parse(json!({"command_timeout_s": 5e-324})).is_err(),
            "rounds to no time"
        );
        assert!(parse(json!({"command_timeout_s": 0.001})).is_ok());
        assert!(parse(json!({"command_timeout_s": true})).is_err());
        assert!(parse(json!({"shell_mode": "tmux"})).is_err());
        let hf = parse_args(&JsonMap::new(), &TerminalConfig::default(), "hf").unwrap();
        assert_eq!(hf.shell_mode, ShellMode::PerCommand);
        let err = parse_args(
            &map(json!({"shell_mode": "persistent"})),
            &TerminalConfig::default(),
            "hf",
        )
        .unwrap_err();
        assert_eq!(
            err.message,
            "shell_mode=persistent is not supported by the hf backend"
        );
    }

    #[test]
    fn file_paths_and_caps() {
        let ok = |p: &str| resolve_file_path(p, "/home/user").unwrap();
        assert_eq!(ok("a/b.txt"), "/home/user/a/b.txt");
        assert_eq!(ok("./x"), "/home/user/x");
        assert_eq!(ok("/tmp/x"), "/tmp/x");
        assert_eq!(ok("/home/user//y"), "/home/user/y");
        for bad in [
            "",
            "../x",
            "/etc/passwd",
            "/home/username/x",
            "/tmp",
            "/home/user",
            "a/",
            "/tmp/../etc/x",
        ] {
            assert!(resolve_file_path(bad, "/home/user").is_err(), "{bad}");
        }
        let a = parse(json!({"files": {"a.txt": "hi"}})).unwrap();
        assert_eq!(
            a.files,
            vec![("/home/user/a.txt".to_owned(), "hi".to_owned())]
        );
        assert!(parse(json!({"files": {"a.txt": 1}})).is_err());
        assert!(parse(json!({"files": ["a"]})).is_err());
        let mut config = TerminalConfig {
            max_reset_files_bytes: 3,
            ..TerminalConfig::default()
        };
        assert!(parse_args(&map(json!({"files": {"a": "abcd"}})), &config, "local").is_err());
        config.max_reset_files = 0;
        assert!(parse_args(&map(json!({"files": {"a": ""}})), &config, "local").is_err());
    }

    #[test]
    fn ready_message_text() {
        assert_eq!(
            ready_message(0, 0),
            "Terminus environment ready. Use terminal(command=...) to work."
        );
        assert_eq!(
            ready_message(1, 2),
            "Terminus environment ready. Use terminal(command=...) to work. Setup commands run: 1. Verify commands registered: 2."
        );
    }
}
