//! Text rules of the terminal env: command output as the agent sees it (`TERMINAL_ENV.md`
//! §5.1–5.3), Python `repr(float)` (§2.4), and the reward-file grammar (§4.3).

use crate::sandbox::CapturedOutput;

/// Python's `str.isspace` for one character (Rust's `is_whitespace` plus `\x1c`–`\x1f`).
pub(crate) fn py_is_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Python's `str.strip()`.
pub(crate) fn py_strip(s: &str) -> &str {
    s.trim_matches(py_is_space)
}

/// Python `repr(float)`: shortest round-trip digits, `.0` on integral values, scientific
/// notation (signed, two-digit exponent) below 1e-4 and from 1e16.
pub fn py_float_repr(v: f64) -> String {
    if v.is_nan() {
        return "nan".to_owned();
    }
    if v.is_infinite() {
        return if v > 0.0 { "inf" } else { "-inf" }.to_owned();
    }
    if v == 0.0 {
        return if v.is_sign_negative() { "-0.0" } else { "0.0" }.to_owned();
    }
    let sci = format!("{v:e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((sci.as_str(), "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    if (-4..16).contains(&exp) {
        let mut s = format!("{v}");
        if !s.contains('.') {
            s.push_str(".0");
        }
        s
    } else {
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{mantissa}e{sign}{:02}", exp.unsigned_abs())
    }
}

/// A number of seconds as the spec's messages show it: integral values without a fraction
/// (`120`), others as Python would (`0.5`).
pub(crate) fn secs_text(secs: f64) -> String {
    if secs.fract() == 0.0 && secs.abs() < 1e15 {
        format!("{secs:.0}")
    } else {
        py_float_repr(secs)
    }
}

/// Consumes `digit (_? digit)*` at the start of `s`; returns the bytes consumed (0 if none).
fn digit_part(s: &[u8]) -> usize {
    let mut i = 0;
    while i < s.len() {
        let digit = s[i].is_ascii_digit();
        let joiner = s[i] == b'_' && i > 0 && s.get(i + 1).is_some_and(u8::is_ascii_digit);
        if !(digit || joiner) {
            break;
        }
        i += 1;
    }
    i
}

/// Python `float(text.strip())` restricted to finite results (ASCII digits): sign, `.5`, `5.`,
/// exponents, `_` between digits. `nan`, `inf`, overflow and anything else give `None`.
pub fn parse_reward(text: &str) -> Option<f64> {
    let s = py_strip(text).as_bytes();
    let mut i = usize::from(matches!(s.first(), Some(b'+' | b'-')));
    let int_len = digit_part(&s[i..]);
    i += int_len;
    let mut frac_len = 0;
    if s.get(i) == Some(&b'.') {
        i += 1;
        frac_len = digit_part(&s[i..]);
        i += frac_len;
    }
    if int_len == 0 && frac_len == 0 {
        return None;
    }
    if matches!(s.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(s.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        let exp_len = digit_part(&s[i..]);
        if exp_len == 0 {
            return None;
        }
        i += exp_len;
    }
    if i != s.len() {
        return None;
    }
    let cleaned: String = s
        .iter()
        .filter(|b| **b != b'_')
        .map(|b| char::from(*b))
        .collect();
    cleaned.parse::<f64>().ok().filter(|v| v.is_finite())
}

/// Removes ANSI escape sequences (CSI, OSC, and two-byte escapes).
pub(crate) fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\u{1b}' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('[') => {
                for c in chars.by_ref() {
                    if ('\u{40}'..='\u{7e}').contains(&c) {
                        break;
                    }
                }
            }
            Some(']') => {
                while let Some(c) = chars.next() {
                    if c == '\u{7}' {
                        break;
                    }
                    if c == '\u{1b}' && chars.peek() == Some(&'\\') {
                        chars.next();
                        break;
                    }
                }
            }
            _ => {}
        }
    }
    out
}

/// How a stream's bytes become text.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TextRules {
    /// Remove ANSI escapes.
    pub strip_ansi: bool,
}

/// Decoded text of a captured stream: lossy UTF-8, the truncation marker where bytes were
/// dropped (cuts moved to character boundaries), `\r\n` → `\n`, optional ANSI stripping.
pub(crate) fn stream_text(out: &CapturedOutput, rules: TextRules) -> String {
    let text = if out.truncated() {
        let head_end = utf8_prefix_len(&out.head);
        let tail_start = utf8_suffix_start(&out.tail);
        let kept = (head_end + out.tail.len() - tail_start) as u64;
        let omitted = out.total.saturating_sub(kept);
        format!(
            "{}\n[... output truncated: {omitted} of {} bytes omitted ...]\n{}",
            String::from_utf8_lossy(&out.head[..head_end]),
            out.total,
            String::from_utf8_lossy(&out.tail[tail_start..])
        )
    } else {
        let mut all = out.head.clone();
        all.extend_from_slice(&out.tail);
        String::from_utf8_lossy(&all).into_owned()
    };
    let text = text.replace("\r\n", "\n");
    if rules.strip_ansi {
        strip_ansi(&text)
    } else {
        text
    }
}

/// Length of `head` without an incomplete UTF-8 sequence at its end.
fn utf8_prefix_len(head: &[u8]) -> usize {
    let n = head.len();
    for back in 1..=n.min(3) {
        let b = head[n - back];
        if b & 0xC0 == 0x80 {
            continue; // continuation byte: look further back for the lead
        }
        let need = if b >= 0xF0 {
            4
        } else if b >= 0xE0 {
            3
        } else if b >= 0xC0 {
            2
        } else {
            1
        };
        return if need > back { n - back } else { n };
    }
    n
}

/// Start of `tail` after continuation bytes cut from their lead (at most 3).
fn utf8_suffix_start(tail: &[u8]) -> usize {
    tail.iter()
        .take(3)
        .take_while(|b| **b & 0xC0 == 0x80)
        .count()
}

/// The agent-visible text of a command (§5.1): stripped stdout, stripped stderr, then
/// `ERROR:\n{error}`, each only when non-empty, joined by `\n`; `(no output)` when nothing.
pub(crate) fn format_output(stdout: &str, stderr: &str, error: Option<&str>) -> String {
    let mut parts: Vec<String> = Vec::with_capacity(3);
    for part in [py_strip(stdout), py_strip(stderr)] {
        if !part.is_empty() {
            parts.push(part.to_owned());
        }
    }
    if let Some(err) = error {
        parts.push(format!("ERROR:\n{err}"));
    }
    if parts.is_empty() {
        "(no output)".to_owned()
    } else {
        parts.join("\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn float_repr_table() {
        for (v, want) in [
            (0.5, "0.5"),
            (1.0, "1.0"),
            (-0.0, "-0.0"),
            (0.0, "0.0"),
            (2.0 / 3.0, "0.6666666666666666"),
            (1e-05, "1e-05"),
            (1e16, "1e+16"),
            (123_456_789_012_345.0, "123456789012345.0"),
            (0.0001, "0.0001"),
            (1.5e-7, "1.5e-07"),
            (1e15, "1000000000000000.0"),
            (1.25e100, "1.25e+100"),
            (-2.5, "-2.5"),
            (0.1 + 0.2, "0.30000000000000004"),
            (5e-324, "5e-324"),
        ] {
            assert_eq!(py_float_repr(v), want, "{v:?}");
        }
    }

    #[test]
    fn reward_grammar() {
        for (s, want) in [
            ("0.75", Some(0.75)),
            ("  1\n", Some(1.0)),
            (".5", Some(0.5)),
            ("5.", Some(5.0)),
            ("+1e-3", Some(0.001)),
            ("-2E2", Some(-200.0)),
            ("1_0", Some(10.0)),
            ("1_0.2_5", Some(10.25)),
            ("0", Some(0.0)),
            ("\u{a0}0.5\u{1f}", Some(0.5)),
        ] {
            assert_eq!(parse_reward(s), want, "{s:?}");
        }
        for s in [
            "",
            "  ",
            "nan",
            "NaN",
            "inf",
            "-Infinity",
            "1e400",
            "_1",
            "1_",
            "1__0",
            "1._5",
            ".",
            "e5",
            "1e",
            "1e+",
            "0x10",
            "1.0 2",
            "one",
            "1,5",
            "--1",
            "1e5_",
            ". 5",
        ] {
            assert_eq!(parse_reward(s), None, "{s:?}");
        }
    }

    fn captured(head: &[u8], tail: &[u8], total: u64) -> CapturedOutput {
        CapturedOutput {
            head: head.to_vec(),
            tail: tail.to_vec(),
            total,
        }
    }

    #[test]
    fn formatting_examples() {
        assert_eq!(
            format_output("", "err\n", Some("exit code 3")),
            "err\nERROR:\nexit code 3"
        );
        assert_eq!(format_output("", "", None), "(no output)");
        assert_eq!(format_output("\n", "", None), "(no output)");
        assert_eq!(format_output("out\n", "err\n", None), "out\nerr");
    }

    #[test]
    fn truncation_marker_on_char_boundaries() {
        let rules = TextRules { strip_ansi: false };
        // "é" is 0xC3 0xA9: the head ends inside it, the tail starts inside another.
        let out = captured(b"ab\xC3", b"\xA9cd", 100);
        assert_eq!(
            stream_text(&out, rules),
            "ab\n[... output truncated: 96 of 100 bytes omitted ...]\ncd"
        );
        let whole = captured(b"a\r\nb\rc\xFF", b"", 7);
        assert_eq!(stream_text(&whole, rules), "a\nb\rc\u{fffd}");
    }

    #[test]
    fn ansi_stripping() {
        assert_eq!(
            strip_ansi("\u{1b}[31mred\u{1b}[0m \u{1b}]0;title\u{7}x"),
            "red x"
        );
        let rules = TextRules { strip_ansi: true };
        assert_eq!(
            stream_text(&captured(b"\x1b[1mB\x1b[0m", b"", 9), rules),
            "B"
        );
    }

    #[test]
    fn seconds_text() {
        assert_eq!(secs_text(120.0), "120");
        assert_eq!(secs_text(0.5), "0.5");
    }
}
