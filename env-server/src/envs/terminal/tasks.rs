//! terminal-bench task folders (`TERMINAL_ENV.md` §10): loading a build-free task from
//! `--tasks-dir`, collecting its `run-tests.sh` + `tests/` for staging at verification, and
//! reading the test summary (pytest `-rA` short summary, or unittest's `Ran N tests`).
//!
//! Errors are client-safe: they name the task by its relative id, never a host path. Folders
//! with a `Dockerfile` need the docker backend and are refused here.
//!
//! Project extensions of `task.yaml` for build-free tasks: `setup` (a string or a list of
//! commands, run as reset setup) and `files` (`{path: text}`, written before setup).

use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// The in-sandbox folder `run-tests.sh` and `tests/` are staged into at verification
/// (`TEST_DIR`). Recreated verifier-owned after every agent process is killed.
pub(crate) const TB_TEST_DIR: &str = "/tmp/.openenv-tests";

/// Largest `task.yaml` read.
const MAX_TASK_YAML_BYTES: u64 = 1024 * 1024;
/// Most files staged from `tests/`.
const MAX_TEST_FILES: usize = 10_000;

/// A loaded build-free task.
#[derive(Debug, Clone)]
pub(crate) struct TbTask {
    /// The relative id the client named.
    pub id: String,
    /// The task folder on the host (never shown to clients).
    pub dir: PathBuf,
    /// `instruction`.
    pub instruction: String,
    /// `max_agent_timeout_sec`.
    pub max_agent_timeout: Option<Duration>,
    /// `max_test_timeout_sec` (default 60 s).
    pub max_test_timeout: Duration,
    /// Extension: setup commands.
    pub setup: Vec<String>,
    /// Extension: files written before setup.
    pub files: Vec<(String, String)>,
}

#[derive(Debug, Deserialize)]
struct TaskYaml {
    instruction: Option<String>,
    max_agent_timeout_sec: Option<f64>,
    max_test_timeout_sec: Option<f64>,
    #[serde(default)]
    setup: Option<serde_norway::Value>,
    #[serde(default)]
    files: Option<std::collections::BTreeMap<String, String>>,
}

/// Checks a client-given task id: relative, no `..`, no empty or odd components.
pub(crate) fn check_task_id(id: &str) -> Result<String, String> {
    if id.is_empty() || id.contains('\0') || id.contains('\\') {
        return Err(format!("invalid task id: {id:?}"));
    }
    let path = Path::new(id);
    let mut parts = Vec::new();
    for c in path.components() {
        match c {
            Component::Normal(p) => parts.push(p.to_string_lossy().into_owned()),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => {
                return Err(format!(
                    "task id must be a relative path without '..': {id:?}"
                ));
            }
        }
    }
    if parts.is_empty() {
        return Err(format!("invalid task id: {id:?}"));
    }
    Ok(parts.join("/"))
}

/// A positive, finite number of seconds; values that round to no time (`5e-324`) count as
/// unset, so a task never gets a zero timeout.
fn secs(v: Option<f64>) -> Option<Duration> {
    v.filter(|s| s.is_finite() && *s > 0.0)
        .and_then(|s| Duration::try_from_secs_f64(s).ok())
        .filter(|d| *d >= Duration::from_millis(1))
}

/// Loads task `id` (already checked) from `root`.
pub(crate) async fn load_task(root: PathBuf, id: String) -> Result<TbTask, String> {
    tokio::task::spawn_blocking(move || load_task_blocking(&root, id))
        .await
        .map_err(|_| "loading the task failed".to_owned())?
}

fn load_task_blocking(root: &Path, id: String) -> Result<TbTask, String> {
    let not_found = || format!("task not found: {id}");
    let root = root
        .canonicalize()
        .map_err(|_| "the tasks folder is unavailable".to_owned())?;
    let dir = root.join(&id).canonicalize().map_err(|_| not_found())?;
    if !dir.starts_with(&root) || !dir.is_dir() {
        return Err(not_found());
    }
    if dir.join("Dockerfile").exists() {
        return Err(format!(
            "task {id} needs the docker backend (its folder has a Dockerfile); \
             the local backend runs only build-free tasks"
        ));
    }
    let yaml_path = dir.join("task.yaml");
    let meta = std::fs::metadata(&yaml_path).map_err(|_| format!("task {id} has no task.yaml"))?;
    if meta.len() > MAX_TASK_YAML_BYTES {
        return Err(format!("task.yaml of task {id} is too large"));
    }
    let text = std::fs::read_to_string(&yaml_path)
        .map_err(|_| format!("cannot read task.yaml of task {id}"))?;
    let yaml: TaskYaml = serde_norway::from_str(&text)
        .map_err(|e| format!("invalid task.yaml of task {id}: {e}"))?;
    let instruction = yaml
        .instruction
        .filter(|s| !s.trim().is_empty())
        .ok_or_else(|| format!("task.yaml of task {id} has no instruction"))?;
    if !dir.join("run-tests.sh").is_file() {
        return Err(format!("task {id} has no run-tests.sh"));
    }
    let setup = match yaml.setup {
        None | Some(serde_norway::Value::Null) => Vec::new(),
        Some(serde_norway::Value::String(s)) => {
            if s.trim().is_empty() {
                Vec::new()
            } else {
                vec![s]
            }
        }
        Some(serde_norway::Value::Sequence(items)) => items
            .into_iter()
            .map(|v| match v {
                serde_norway::Value::String(s) => Ok(s),
                _ => Err(format!(
                    "setup of task {id} must be a string or a list of strings"
                )),
            })
            .filter(|s| s.as_ref().map_or(true, |s| !s.trim().is_empty()))
            .collect::<Result<_, _>>()?,
        Some(_) => {
            return Err(format!(
                "setup of task {id} must be a string or a list of strings"
            ));
        }
    };
    Ok(TbTask {
        id,
        dir,
        instruction,
        max_agent_timeout: secs(yaml.max_agent_timeout_sec),
        max_test_timeout: secs(yaml.max_test_timeout_sec).unwrap_or(Duration::from_secs(60)),
        setup,
        files: yaml.files.unwrap_or_default().into_iter().collect(),
    })
}

/// One file to stage: path relative to [`TB_TEST_DIR`], bytes, mode.
pub(crate) type StagedFile = (String, Vec<u8>, u32);

/// Reads `run-tests.sh` and everything under `tests/` (flattened into the test dir, as
/// terminal-bench copies them to `/tests`). Symlinks and special files are skipped.
pub(crate) async fn collect_test_files(
    dir: PathBuf,
    max_bytes: u64,
) -> Result<Vec<StagedFile>, String> {
    tokio::task::spawn_blocking(move || collect_blocking(&dir, max_bytes))
        .await
        .map_err(|_| "reading the task's tests failed".to_owned())?
}

fn collect_blocking(dir: &Path, max_bytes: u64) -> Result<Vec<StagedFile>, String> {
    let mut files = Vec::new();
    let mut budget = max_bytes;
    let mut take = |rel: String, path: &Path, mode: u32, files: &mut Vec<StagedFile>| {
        let meta = std::fs::symlink_metadata(path).map_err(|_| format!("cannot read {rel}"))?;
        if !meta.is_file() {
            return Ok(());
        }
        if meta.len() > budget || files.len() >= MAX_TEST_FILES {
            return Err("the task's tests exceed the staging limit".to_owned());
        }
        let bytes = std::fs::read(path).map_err(|_| format!("cannot read {rel}"))?;
        budget = budget.saturating_sub(bytes.len() as u64);
        files.push((rel, bytes, mode));
        Ok::<(), String>(())
    };
    take(
        "run-tests.sh".to_owned(),
        &dir.join("run-tests.sh"),
        0o755,
        &mut files,
    )?;
    let tests = dir.join("tests");
    let mut stack = vec![(tests.clone(), String::new())];
    while let Some((path, rel)) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&path) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let child_rel = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() {
                stack.push((entry.path(), child_rel));
            } else if kind.is_file() {
                let mode = exec_mode(&entry.path());
                take(child_rel, &entry.path(), mode, &mut files)?;
            }
        }
    }
    Ok(files)
}

fn exec_mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::metadata(path) {
        Ok(m) if m.permissions().mode() & 0o111 != 0 => 0o755,
        _ => 0o644,
    }
}

/// Test counts read from a test run's output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TestCounts {
    pub passed: u64,
    pub total: u64,
}

/// Reads pytest's short test summary (`PASSED`/`XFAIL`/`SKIPPED` pass; `FAILED`/`XPASS`/
/// `ERROR` fail) after the last summary header, else unittest's `Ran N tests` verdict.
pub(crate) fn parse_test_summary(output: &str) -> Option<TestCounts> {
    parse_pytest(output).or_else(|| parse_unittest(output))
}

/// How many test summaries (pytest's `short test summary info` header, unittest's
/// `Ran N tests` line) `output` holds. A genuine run prints exactly one; more means something
/// besides the test runner wrote one (`docs/verification.md`).
pub(crate) fn count_test_summaries(output: &str) -> usize {
    output
        .lines()
        .map(str::trim)
        .filter(|t| is_pytest_header(t) || is_unittest_ran(t))
        .count()
}

fn is_pytest_header(t: &str) -> bool {
    t.starts_with('=')
        && t.ends_with('=')
        && t.trim_matches('=').trim() == "short test summary info"
}

fn is_unittest_ran(t: &str) -> bool {
    t.strip_prefix("Ran ").is_some_and(|rest| {
        let mut words = rest.split_whitespace();
        words.next().is_some_and(|n| n.parse::<u64>().is_ok())
            && words.next().is_some_and(|w| w == "test" || w == "tests")
    })
}

fn parse_pytest(output: &str) -> Option<TestCounts> {
    let lines: Vec<&str> = output.lines().collect();
    let start = lines.iter().rposition(|l| is_pytest_header(l.trim()))?;
    let mut counts = TestCounts {
        passed: 0,
        total: 0,
    };
    for line in &lines[start + 1..] {
        let word = line.split_whitespace().next().unwrap_or("");
        match word {
            "PASSED" | "XFAIL" | "SKIPPED" => {
                counts.passed += 1;
                counts.total += 1;
            }
            "FAILED" | "XPASS" | "ERROR" => counts.total += 1,
            _ => {}
        }
    }
    Some(counts)
}

fn parse_unittest(output: &str) -> Option<TestCounts> {
    let lines: Vec<&str> = output.lines().map(str::trim).collect();
    let at = lines.iter().rposition(|l| is_unittest_ran(l))?;
    let total: u64 = lines[at].split_whitespace().nth(1)?.parse().ok()?;
    let verdict = lines[at + 1..].iter().find(|l| !l.is_empty())?;
    let count = |key: &str| -> u64 {
        verdict
            .split(['(', ')', ','])
            .filter_map(|p| {
                p.trim()
                    .strip_prefix(key)?
                    .strip_prefix('=')?
                    .parse::<u64>()
                    .ok()
            })
            .sum()
    };
    let failed = if verdict.starts_with("OK") {
        0
    } else if verdict.starts_with("FAILED") {
        count("failures") + count("errors") + count("unexpected successes")
    } else {
        return None;
    };
    Some(TestCounts {
        passed: total.saturating_sub(failed),
        total,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_ids() {
        assert_eq!(check_task_id("hello-world").unwrap(), "hello-world");
        assert_eq!(check_task_id("./a/b/").unwrap(), "a/b");
        for bad in ["", "/etc", "../x", "a/../b", ".", "a\\b"] {
            assert!(check_task_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn pytest_summary() {
        let out = "collected 3\n==== short test summary info ====\nPASSED t.py::a\nFAILED t.py::b - x\nSKIPPED [1] t.py:3: why\n==== 1 failed, 1 passed in 0.1s ====\n";
        assert_eq!(
            parse_test_summary(out),
            Some(TestCounts {
                passed: 2,
                total: 3
            })
        );
        let empty = "=== short test summary info ===\n=== no tests ran ===";
        assert_eq!(
            parse_test_summary(empty),
            Some(TestCounts {
                passed: 0,
                total: 0
            })
        );
        assert_eq!(parse_test_summary("nothing here"), None);
    }

    #[test]
    fn unittest_summary() {
        let ok = "..\n----------------------------------------------------------------------\nRan 2 tests in 0.001s\n\nOK\n";
        assert_eq!(
            parse_test_summary(ok),
            Some(TestCounts {
                passed: 2,
                total: 2
            })
        );
        let bad = "Ran 4 tests in 0.01s\n\nFAILED (failures=1, errors=1, skipped=1)\n";
        assert_eq!(
            parse_test_summary(bad),
            Some(TestCounts {
                passed: 2,
                total: 4
            })
        );
        assert_eq!(
            parse_test_summary("Ran 1 test in 0.0s\n\nOK (skipped=1)"),
            Some(TestCounts {
                passed: 1,
                total: 1
            })
        );
    }

    #[test]
    fn summaries_are_counted_so_a_second_one_is_seen() {
        let real = "test_a ... FAIL\n----\nRan 3 tests in 0.01s\n\nFAILED (failures=3)\n";
        assert_eq!(count_test_summaries(real), 1);
        let forged = format!("Ran 3 tests in 0.001s\n\nOK\n{real}");
        assert_eq!(count_test_summaries(&forged), 2);
        let pytest = "== short test summary info ==\nPASSED t::a\n== 1 passed ==\n";
        assert_eq!(count_test_summaries(pytest), 1);
        assert_eq!(count_test_summaries(&format!("{pytest}{pytest}")), 2);
        // Prose that merely starts with "Ran" is no summary.
        assert_eq!(count_test_summaries("Ran out of ideas\nRan tests\n"), 0);
        assert_eq!(count_test_summaries("nothing"), 0);
    }

    #[tokio::test]
    async fn loads_build_free_tasks_and_refuses_dockerfiles() {
        let root = std::env::temp_dir().join(format!("oe-tasks-{}", uuid::Uuid::new_v4()));
        let t = root.join("t1");
        std::fs::create_dir_all(t.join("tests/sub")).unwrap();
        std::fs::write(t.join("task.yaml"), "instruction: |\n  Do it.\nmax_test_timeout_sec: 30\nsetup: echo a\nfiles:\n  a.txt: hi\n").unwrap();
        std::fs::write(t.join("run-tests.sh"), "true\n").unwrap();
        std::fs::write(t.join("tests/test_x.py"), "x").unwrap();
        std::fs::write(t.join("tests/sub/data"), "y").unwrap();
        let task = load_task(root.clone(), "t1".to_owned()).await.unwrap();
        assert_eq!(task.instruction, "Do it.\n");
        assert_eq!(task.max_test_timeout, Duration::from_secs(30));
        assert_eq!(task.setup, vec!["echo a".to_owned()]);
        assert_eq!(task.files, vec![("a.txt".to_owned(), "hi".to_owned())]);
        let mut files = collect_test_files(task.dir.clone(), 1000).await.unwrap();
        files.sort();
        let names: Vec<&str> = files.iter().map(|f| f.0.as_str()).collect();
        assert_eq!(names, ["run-tests.sh", "sub/data", "test_x.py"]);
        assert!(collect_test_files(task.dir, 3).await.is_err());
        std::fs::write(t.join("Dockerfile"), "FROM x").unwrap();
        let err = load_task(root.clone(), "t1".to_owned()).await.unwrap_err();
        assert!(err.contains("needs the docker backend"), "{err}");
        assert!(!err.contains(&root.to_string_lossy().into_owned()));
        assert!(
            load_task(root.clone(), "nope".to_owned())
                .await
                .unwrap_err()
                .contains("task not found")
        );
        std::fs::remove_dir_all(&root).unwrap();
    }
}
