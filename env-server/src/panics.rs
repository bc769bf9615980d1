//! The process panic hook: every panic is logged as one bounded line naming where it happened,
//! never what it said (`docs/fuzzing.md`).
//!
//! Rust's default hook prints the panic message on stderr, and a message built with `format!`
//! may quote the input that caused it (a slicing panic quotes the whole string, i.e. a
//! client's frame), over several lines, with a backtrace under `RUST_BACKTRACE`. A panic is
//! still caught where it happens (a session's task, an environment call, a route handler) and
//! fails only that session or request; the hook only decides what the log says.

use std::any::Any;
use std::backtrace::{Backtrace, BacktraceStatus};

/// The longest static panic message kept in the line, in characters.
const MAX_MESSAGE_CHARS: usize = 200;

/// Replaces the default panic hook with [`panic_line`] through `tracing` (so the line follows
/// `--log-format`), plus a backtrace only when `RUST_BACKTRACE` (or `RUST_LIB_BACKTRACE`) asks
/// for one. Before a `tracing` subscriber is set, the line goes to stderr.
pub fn install_hook() {
    std::panic::set_hook(Box::new(|info| {
        let thread = std::thread::current();
        let line = panic_line(
            thread.name(),
            info.location().map(|l| (l.file(), l.line(), l.column())),
            info.payload(),
        );
        let backtrace = Backtrace::capture();
        let captured = backtrace.status() == BacktraceStatus::Captured;
        if tracing::dispatcher::has_been_set() {
            if captured {
                tracing::error!(%backtrace, "{line}");
            } else {
                tracing::error!("{line}");
            }
        } else if captured {
            eprintln!("{line}\n{backtrace}");
        } else {
            eprintln!("{line}");
        }
    }));
}

/// The one line logged for a panic: `panicked at <file>:<line>:<col> (thread <name>): <what>`.
///
/// `<what>` is the message only when it is a string literal of the source (a `&'static str`
/// payload), escaped onto one line and cut at [`MAX_MESSAGE_CHARS`]; a formatted message
/// (`String`), which may hold client input, is withheld.
pub fn panic_line(
    thread: Option<&str>,
    location: Option<(&str, u32, u32)>,
    payload: &(dyn Any + Send),
) -> String {
    let at = location.map_or_else(
        || "an unknown location".to_owned(),
        |(file, line, col)| format!("{file}:{line}:{col}"),
    );
    let what = match payload.downcast_ref::<&'static str>() {
        Some(text) => {
            let mut kept: String = text
                .chars()
                .take(MAX_MESSAGE_CHARS)
                .flat_map(char::escape_debug)
                .collect();
            if text.chars().count() > MAX_MESSAGE_CHARS {
                kept.push('…');
            }
            kept
        }
        None => "message withheld (it may quote client input)".to_owned(),
    };
    format!(
        "panicked at {at} (thread {}): {what}",
        thread.unwrap_or("unnamed")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_formatted_message_is_withheld() {
        let payload: Box<dyn Any + Send> = Box::new(format!(
            "byte index 1 is not a char boundary; it is inside 'é' of `{}`",
            "é\nattacker text"
        ));
        let line = panic_line(
            Some("tokio-runtime-worker"),
            Some(("env-client/src/protocol/parse.rs", 259, 40)),
            payload.as_ref(),
        );
        assert_eq!(
            line,
            "panicked at env-client/src/protocol/parse.rs:259:40 (thread tokio-runtime-worker): \
             message withheld (it may quote client input)"
        );
    }

    #[test]
    fn a_literal_message_is_kept_on_one_bounded_line() {
        let payload: Box<dyn Any + Send> = Box::new("called `Option::unwrap()` on a `None` value");
        assert_eq!(
            panic_line(None, Some(("src/x.rs", 3, 9)), payload.as_ref()),
            "panicked at src/x.rs:3:9 (thread unnamed): called `Option::unwrap()` on a `None` value"
        );
        let long: &'static str = Box::leak("line one\nline two ".repeat(100).into_boxed_str());
        let payload: Box<dyn Any + Send> = Box::new(long);
        let line = panic_line(Some("t"), None, payload.as_ref());
        assert!(!line.contains('\n'), "{line}");
        assert!(
            line.starts_with("panicked at an unknown location (thread t): line one\\nline two")
        );
        assert!(line.ends_with('…'));
        assert!(line.chars().count() < 2 * MAX_MESSAGE_CHARS, "{line}");
    }

    #[test]
    fn any_other_payload_is_withheld() {
        let payload: Box<dyn Any + Send> = Box::new(42_u32);
        assert!(
            panic_line(Some("t"), Some(("a.rs", 1, 1)), payload.as_ref())
                .ends_with("message withheld (it may quote client input)")
        );
    }
}
