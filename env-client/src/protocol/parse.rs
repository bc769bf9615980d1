//! The staged parse of an inbound `/ws` client frame (`PROTOCOL.md` §3.4).
//!
//! One serde tagged-enum decode cannot tell OpenEnv's error cases apart, so the frame is read
//! in stages, each with its own outcome: JSON (`INVALID_JSON`, connection open) → object
//! (`SESSION_ERROR`, fatal) → `type` (`UNKNOWN_TYPE`) → envelope (`VALIDATION_ERROR`). Action
//! validation belongs to the environment.

use std::borrow::Cow;

use serde::{Deserialize, Deserializer};
use serde_json::Value;

use super::JsonMap;
use super::frames::{ClientFrame, ErrorCode, ErrorData};
use super::validation::{FieldKind, Loc, ValidationErrorItem};

/// Why an inbound frame could not become a [`ClientFrame`].
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FrameError {
    /// Not JSON. The message mirrors Python's `json` error text.
    #[error("Invalid JSON: {detail}")]
    InvalidJson {
        /// Python-style detail, e.g. `Expecting value: line 1 column 1 (char 0)`.
        detail: String,
    },
    /// JSON, but not an object: fatal (`SESSION_ERROR`, then close 1000).
    #[error("'{python_type}' object has no attribute 'get'")]
    NotObject {
        /// The Python type name of the value (`list`, `str`, `int`, …).
        python_type: &'static str,
    },
    /// Unknown or missing `type`.
    #[error("Unknown message type: {type_text}")]
    UnknownType {
        /// The `type` value as Python's `str()` shows it (empty when missing).
        type_text: String,
    },
    /// The envelope failed validation.
    #[error("Invalid message")]
    Invalid {
        /// pydantic-shaped error items.
        errors: Vec<ValidationErrorItem>,
    },
}

impl FrameError {
    /// Whether OpenEnv ends the session after this error (`SESSION_ERROR` + close 1000).
    pub fn is_fatal(&self) -> bool {
        matches!(self, Self::NotObject { .. })
    }

    /// The `error` frame payload for this failure.
    pub fn to_error_data(&self) -> ErrorData {
        match self {
            Self::InvalidJson { .. } => ErrorData::new(ErrorCode::InvalidJson, self.to_string()),
            Self::NotObject { .. } => ErrorData::new(ErrorCode::SessionError, self.to_string()),
            Self::UnknownType { .. } => ErrorData::new(ErrorCode::UnknownType, self.to_string()),
            Self::Invalid { errors } => ErrorData::validation(errors),
        }
    }
}

/// Parses one inbound text frame.
pub fn parse_client_frame(text: &str) -> Result<ClientFrame, FrameError> {
    if let Some(frame) = parse_well_formed(text) {
        return Ok(frame);
    }
    parse_staged(text)
}

/// The staged parse: every frame, with OpenEnv's outcome for each way it can be wrong.
fn parse_staged(text: &str) -> Result<ClientFrame, FrameError> {
    let value = parse_json_lenient(text).map_err(|detail| FrameError::InvalidJson { detail })?;
    let Value::Object(mut object) = value else {
        return Err(FrameError::NotObject {
            python_type: python_type_name(&value),
        });
    };
    let kind = match object.get("type") {
        None => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => python_str(other),
    };
    // Which `data` each frame type takes: (allowed, required).
    let (data_allowed, data_required) = match kind.as_str() {
        "reset" | "verify" => (true, false),
        "step" | "mcp" => (true, true),
        "state" | "close" => (false, false),
        _ => return Err(FrameError::UnknownType { type_text: kind }),
    };
    let mut errors = Vec::new();
    match object.get("data") {
        None if data_required => {
            errors.push(ValidationErrorItem::missing(
                vec![Loc::from("data")],
                Value::Object(object.clone()),
            ));
        }
        Some(data) if !data_allowed => {
            errors.push(ValidationErrorItem::extra_forbidden(
                vec![Loc::from("data")],
                data.clone(),
            ));
        }
        Some(data) if !data.is_object() => {
            errors.push(ValidationErrorItem::wrong_type(
                FieldKind::Object,
                vec![Loc::from("data")],
                data.clone(),
            ));
        }
        Some(Value::Object(data)) if kind == "verify" => {
            // E1: the client supplies no scoring input at all.
            for (key, value) in data {
                errors.push(ValidationErrorItem::extra_forbidden(
                    vec![Loc::from("data"), Loc::Field(key.clone())],
                    value.clone(),
                ));
            }
        }
        _ => {}
    }
    for (key, value) in &object {
        if key != "type" && key != "data" {
            errors.push(ValidationErrorItem::extra_forbidden(
                vec![Loc::Field(key.clone())],
                value.clone(),
            ));
        }
    }
    if !errors.is_empty() {
        return Err(FrameError::Invalid { errors });
    }
    let data = object.remove("data");
    let map = |data: Option<Value>| match data {
        Some(Value::Object(m)) => m,
        _ => JsonMap::new(),
    };
    Ok(match kind.as_str() {
        "reset" => ClientFrame::Reset { data: map(data) },
        "step" => ClientFrame::Step { data: map(data) },
        "mcp" => ClientFrame::Mcp {
            data: data.unwrap_or(Value::Null),
        },
        "verify" => ClientFrame::Verify { data: map(data) },
        "state" => ClientFrame::State,
        _ => ClientFrame::Close,
    })
}

/// The fast path for the frames well-behaved clients send: strict JSON, an object with a string
/// `type` naming a frame, `data` an object where that frame takes one, no other key, no key
/// twice. It decodes straight into the frame (no intermediate map for the envelope) and
/// returns `None` for anything else, which the staged parse then reads and reports exactly.
fn parse_well_formed(text: &str) -> Option<ClientFrame> {
    /// `data` present as an object; absent is `Data(None)`; anything else fails the decode.
    #[derive(Default)]
    struct Data(Option<JsonMap>);
    impl<'de> Deserialize<'de> for Data {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            JsonMap::deserialize(deserializer).map(|map| Self(Some(map)))
        }
    }
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Envelope<'a> {
        #[serde(rename = "type", borrow)]
        kind: Cow<'a, str>,
        #[serde(default)]
        data: Data,
    }
    let Envelope { kind, data } = serde_json::from_str::<Envelope<'_>>(text).ok()?;
    match (kind.as_ref(), data.0) {
        ("step", Some(data)) => Some(ClientFrame::Step { data }),
        ("reset", data) => Some(ClientFrame::Reset {
            data: data.unwrap_or_default(),
        }),
        ("mcp", Some(data)) => Some(ClientFrame::Mcp {
            data: Value::Object(data),
        }),
        ("state", None) => Some(ClientFrame::State),
        ("close", None) => Some(ClientFrame::Close),
        ("verify", data) if data.as_ref().is_none_or(JsonMap::is_empty) => {
            Some(ClientFrame::Verify {
                data: data.unwrap_or_default(),
            })
        }
        _ => None,
    }
}

/// Python's type name for a JSON value (`json.loads` result types).
pub fn python_type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "NoneType",
        Value::Bool(_) => "bool",
        Value::Number(n) if n.is_f64() => "float",
        Value::Number(_) => "int",
        Value::String(_) => "str",
        Value::Array(_) => "list",
        Value::Object(_) => "dict",
    }
}

/// Python's `str()` of a JSON value, close enough for error messages.
fn python_str(value: &Value) -> String {
    match value {
        Value::Null => "None".to_owned(),
        Value::Bool(true) => "True".to_owned(),
        Value::Bool(false) => "False".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Parses JSON as Python's `json.loads` does, as far as it matters on the wire: the bare
/// tokens `NaN`, `Infinity` and `-Infinity` (which `json.dumps` writes for non-finite floats)
/// are accepted and read as `null`. On failure, returns Python's error text, e.g.
/// `Expecting value: line 1 column 1 (char 0)`.
pub fn parse_json_lenient(text: &str) -> Result<Value, String> {
    match serde_json::from_str::<Value>(text) {
        Ok(value) => Ok(value),
        Err(err) => {
            // Python refuses a leading BOM before parsing anything (`json.loads`).
            if text.starts_with('\u{feff}') {
                return Err(
                    "Unexpected UTF-8 BOM (decode using utf-8-sig): line 1 column 1 (char 0)"
                        .to_owned(),
                );
            }
            if let Some(rewritten) = replace_non_finite(text)
                && let Ok(value) = serde_json::from_str::<Value>(&rewritten)
            {
                return Ok(value);
            }
            Err(python_json_error(text, &err))
        }
    }
}

/// Rewrites the non-finite float tokens outside strings to `null`; `None` when there are none.
fn replace_non_finite(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let (mut i, mut in_string, mut changed, mut last) = (0, false, false, 0);
    while i < bytes.len() {
        let b = bytes[i];
        if in_string {
            match b {
                b'\\' => i += 1,
                b'"' => in_string = false,
                _ => {}
            }
            i += 1;
            continue;
        }
        if b == b'"' {
            in_string = true;
            i += 1;
            continue;
        }
        // Compared as bytes: `i` may sit inside a multi-byte character here (a stray `é`
        // or BOM outside any string), where slicing the `str` would panic.
        let token = ["-Infinity", "Infinity", "NaN"]
            .into_iter()
            .find(|t| bytes[i..].starts_with(t.as_bytes()));
        if let Some(token) = token {
            out.push_str(&text[last..i]);
            out.push_str("null");
            i += token.len();
            last = i;
            changed = true;
        } else {
            i += 1;
        }
    }
    if !changed {
        return None;
    }
    out.push_str(&text[last..]);
    Some(out)
}

/// Python `json`'s wording for a serde_json syntax error, with its `line L column C (char N)`.
fn python_json_error(text: &str, err: &serde_json::Error) -> String {
    let full = err.to_string();
    let what = full.split(" at line ").next().unwrap_or(&full);
    // serde_json's byte position of the error: line/column are 1-based, column may be 0.
    let line_start: usize = text
        .split_inclusive('\n')
        .take(err.line().saturating_sub(1))
        .map(str::len)
        .sum();
    let mut pos = (line_start + err.column().saturating_sub(1)).min(text.len());
    while pos > 0 && !text.is_char_boundary(pos) {
        pos -= 1;
    }
    // The last byte serde_json read: column counts the bytes read on the line, so column 0
    // means the newline that ended the previous one.
    let last_read = (line_start + err.column())
        .saturating_sub(1)
        .min(text.len().saturating_sub(1));
    if what.starts_with("EOF while parsing") {
        // Python reports the end of the text.
        pos = text.len();
    }
    let ends_in_token = text.ends_with(|c: char| c.is_alphanumeric() || c == '-' || c == '.');
    let python = match what {
        "EOF while parsing an object" | "EOF while parsing a list" => eof_message(text).to_owned(),
        "EOF while parsing a value" if !ends_in_token => eof_message(text).to_owned(),
        "expected value" | "expected ident" | "EOF while parsing a value" | "invalid number" => {
            // Python reports the start of the bad token.
            while pos > 0
                && text[..pos].ends_with(|c: char| c.is_alphanumeric() || c == '-' || c == '.')
            {
                pos -= text[..pos].chars().next_back().map_or(1, char::len_utf8);
            }
            "Expecting value".to_owned()
        }
        "trailing characters" => "Extra data".to_owned(),
        "key must be a string" => "Expecting property name enclosed in double quotes".to_owned(),
        "expected `,` or `}`" | "expected `,` or `]`" => "Expecting ',' delimiter".to_owned(),
        "expected `:`" => "Expecting ':' delimiter".to_owned(),
        "EOF while parsing a string" => match scan(text).open_string {
            // A `\uXXXX` escape cut short by the end: Python points at its `u`.
            Some((_, Some(u))) => {
                pos = u;
                "Invalid \\uXXXX escape".to_owned()
            }
            // Else at the string's opening quote.
            Some((start, None)) => {
                pos = start;
                "Unterminated string starting at".to_owned()
            }
            None => "Unterminated string starting at".to_owned(),
        },
        "control character (\\u0000-\\u001F) found while parsing a string"
            if text.is_char_boundary(last_read) =>
        {
            // Python points at the character itself, a newline too.
            pos = last_read;
            "Invalid control character at".to_owned()
        }
        "invalid escape" => {
            // serde_json stops at or after the escape's bad character; Python points at the
            // backslash, or at the `u` of a `\uXXXX` escape.
            let mut end = last_read;
            while end > 0 && !text.is_char_boundary(end) {
                end -= 1;
            }
            match text[..end].rfind('\\') {
                Some(backslash) if text[backslash + 1..].starts_with('u') => {
                    pos = backslash + 1;
                    "Invalid \\uXXXX escape".to_owned()
                }
                Some(backslash) => {
                    pos = backslash;
                    "Invalid \\escape".to_owned()
                }
                None => "Invalid \\escape".to_owned(),
            }
        }
        "trailing comma" if text[pos..].starts_with('}') => {
            "Expecting property name enclosed in double quotes".to_owned()
        }
        "trailing comma" => "Expecting value".to_owned(),
        other => {
            let mut chars = other.chars();
            chars
                .next()
                .map_or_else(String::new, |c| c.to_uppercase().chain(chars).collect())
        }
    };
    let line = text[..pos].matches('\n').count() + 1;
    let line_begin = text[..pos].rfind('\n').map_or(0, |i| i + 1);
    let column = text[line_begin..pos].chars().count() + 1;
    let char_index = text[..pos].chars().count();
    format!("{python}: line {line} column {column} (char {char_index})")
}

/// What is still open at the end of a text: the innermost container (`{` or `[`), and a string
/// (its opening quote, and the `u` of a `\uXXXX` escape that the end cuts short).
struct OpenAtEnd {
    container: Option<u8>,
    open_string: Option<(usize, Option<usize>)>,
}

/// Scans `text` for what is open at its end (brackets inside strings do not count).
fn scan(text: &str) -> OpenAtEnd {
    let bytes = text.as_bytes();
    let (mut i, mut stack, mut string) = (0, Vec::new(), None);
    let mut short_escape = None;
    while i < bytes.len() {
        match (string, bytes[i]) {
            (None, b'"') => string = Some(i),
            (None, open @ (b'{' | b'[')) => stack.push(open),
            (None, b'}' | b']') => {
                stack.pop();
            }
            (Some(_), b'\\') => {
                if bytes.get(i + 1) == Some(&b'u') && i + 6 > bytes.len() {
                    short_escape = Some(i + 1);
                }
                i += 1;
            }
            (Some(_), b'"') => string = None,
            _ => {}
        }
        i += 1;
    }
    OpenAtEnd {
        container: stack.last().copied(),
        open_string: string.map(|start| (start, short_escape.filter(|u| *u > start))),
    }
}

/// Python's message for a text that ends where more was due, from the innermost open
/// container and the last token: in an object a key after `{` or `,`, its `:` after a key, a
/// value after `:`; in a list a value after `[` or `,`; else a `,`.
fn eof_message(text: &str) -> &'static str {
    const KEY: &str = "Expecting property name enclosed in double quotes";
    let trimmed = text.trim_end_matches([' ', '\t', '\n', '\r']);
    let last = trimmed.as_bytes().last().copied();
    match (scan(trimmed).container, last) {
        (Some(b'{'), Some(b'{' | b',')) => KEY,
        (Some(b'{'), Some(b'"')) => {
            // A key if the token before its opening quote opens a member.
            let before = trimmed[..trimmed.len() - 1]
                .rfind('"')
                .map(|quote| trimmed[..quote].trim_end_matches([' ', '\t', '\n', '\r']));
            match before.and_then(|t| t.as_bytes().last().copied()) {
                Some(b'{' | b',') => "Expecting ':' delimiter",
                _ => "Expecting ',' delimiter",
            }
        }
        (Some(_), Some(b':' | b'[' | b',')) | (_, None) | (None, _) => "Expecting value",
        _ => "Expecting ',' delimiter",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    /// Golden frames with a piece of text (any characters: non-ASCII, BOM, controls, JSON
    /// syntax) spliced in at a character boundary, and truncated at another.
    fn mutated_frame() -> impl Strategy<Value = String> {
        let golden = prop::sample::select(vec![
            r#"{"type": "reset", "data": {"seed": 42, "episode_id": "ep-1"}}"#,
            r#"{"type":"step","data":{"message":"hi","x":[1,2.5e3,null,NaN]}}"#,
            r#"{"type": "state"}"#,
            r#"{"type": "verify", "data": {}}"#,
            r#"{"type": "mcp", "data": {"jsonrpc": "2.0", "method": "tools/list", "id": 1}}"#,
        ]);
        let piece = prop::string::string_regex(
            r#"(\PC|[\x00-\x1f\u{feff}\u{2028}{}\[\]":,\\]|NaN|-Infinity|1e400){0,4}"#,
        )
        .expect("a valid regex");
        (
            golden,
            piece,
            any::<prop::sample::Index>(),
            any::<prop::sample::Index>(),
        )
            .prop_map(|(golden, piece, at, cut)| {
                let bounds: Vec<usize> = golden
                    .char_indices()
                    .map(|(i, _)| i)
                    .chain([golden.len()])
                    .collect();
                let at = bounds[at.index(bounds.len())];
                let mut text = format!("{}{piece}{}", &golden[..at], &golden[at..]);
                let bounds: Vec<usize> = text
                    .char_indices()
                    .map(|(i, _)| i)
                    .chain([text.len()])
                    .collect();
                if cut.index(4) == 0 {
                    text.truncate(bounds[cut.index(bounds.len())]);
                }
                text
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

        /// Nothing panics, and the fast path decodes only what the staged parse accepts, to
        /// the same frame.
        #[test]
        fn any_text_gets_a_typed_outcome_and_both_paths_agree(text in prop_oneof![
            any::<String>(),
            mutated_frame(),
        ]) {
            let staged = parse_staged(&text);
            if let Some(fast) = parse_well_formed(&text) {
                prop_assert_eq!(Ok(fast), staged.clone());
            }
            prop_assert_eq!(parse_client_frame(&text), staged);
            if let Err(detail) = parse_json_lenient(&text) {
                prop_assert!(detail.contains(": line ") && detail.ends_with(')'), "{}", detail);
            }
        }
    }

    #[test]
    fn the_fast_path_agrees_with_the_staged_parse() {
        let texts = [
            r#"{"type":"step","data":{"message":"hi"}}"#,
            r#"{"data":{"message":"hi"},"type":"step"}"#,
            r#"{"type":"step","data":{"message":"hi","message":"bye","a":[1,2.5e3,null]}}"#,
            r#"{"type":"st\u0065p","data":{"message":"hi"}}"#,
            r#" { "type" : "reset" } "#,
            r#"{"type":"reset","data":{"seed":42,"episode_id":"e"}}"#,
            r#"{"type":"state"}"#,
            r#"{"type":"close"}"#,
            r#"{"type":"verify"}"#,
            r#"{"type":"verify","data":{}}"#,
            r#"{"type":"mcp","data":{"jsonrpc":"2.0","id":1,"method":"tools/list"}}"#,
            // Each of these must leave the fast path and get the staged outcome.
            r#"{"type":"step","data":null}"#,
            r#"{"type":"step"}"#,
            r#"{"type":"step","data":[1]}"#,
            r#"{"type":"step","type":"reset","data":{}}"#,
            r#"{"type":"step","data":{},"extra":1}"#,
            r#"{"type":"verify","data":{"reward":1}}"#,
            r#"{"type":"state","data":{}}"#,
            r#"{"type":"close","data":{}}"#,
            r#"{"type":"reset","data":{"x":NaN}}"#,
            r#"{"type":"mcp","data":"x"}"#,
            r#"{"type":7}"#,
            r#"{"type":"nope"}"#,
            r#"{}"#,
            r#"[1]"#,
            r#"{"type":"step","data":{}} x"#,
        ];
        for text in texts {
            let staged = parse_staged(text);
            if let Some(fast) = parse_well_formed(text) {
                assert_eq!(Ok(fast), staged, "{text}");
            }
        }
        assert!(parse_well_formed(texts[0]).is_some());
        assert!(parse_well_formed(r#"{"type":"step","data":null}"#).is_none());
        assert!(parse_well_formed(r#"{"type":"step","type":"reset","data":{}}"#).is_none());
    }

    #[test]
    fn python_wording_for_common_errors() {
        assert_eq!(
            parse_json_lenient("not json").unwrap_err(),
            "Expecting value: line 1 column 1 (char 0)"
        );
        assert_eq!(
            parse_json_lenient("").unwrap_err(),
            "Expecting value: line 1 column 1 (char 0)"
        );
        assert_eq!(
            parse_json_lenient("garbage").unwrap_err(),
            "Expecting value: line 1 column 1 (char 0)"
        );
        assert_eq!(
            parse_json_lenient("{} x").unwrap_err(),
            "Extra data: line 1 column 4 (char 3)"
        );
        assert_eq!(
            parse_json_lenient("{oops").unwrap_err(),
            "Expecting property name enclosed in double quotes: line 1 column 2 (char 1)"
        );
    }

    #[test]
    fn python_wording_for_strings_ends_and_non_ascii() {
        // Each pair checked against CPython 3's `json.loads`.
        let cases = [
            (
                "\u{feff}{}",
                "Unexpected UTF-8 BOM (decode using utf-8-sig): line 1 column 1 (char 0)",
            ),
            ("é", "Expecting value: line 1 column 1 (char 0)"),
            ("{\"a\": é}", "Expecting value: line 1 column 7 (char 6)"),
            (
                "{\"é\": 1 x}",
                "Expecting ',' delimiter: line 1 column 9 (char 8)",
            ),
            (
                "{\"type\":\"state\"}é",
                "Extra data: line 1 column 17 (char 16)",
            ),
            (
                "\"a\nb\"",
                "Invalid control character at: line 1 column 3 (char 2)",
            ),
            (
                "{\"a\":\"\u{1}\"}",
                "Invalid control character at: line 1 column 7 (char 6)",
            ),
            (
                r#"{"a":"\q"}"#,
                r"Invalid \escape: line 1 column 7 (char 6)",
            ),
            (r#"["é\x"]"#, r"Invalid \escape: line 1 column 4 (char 3)"),
            (
                "{\"a\": \"é\\n\\u",
                r"Invalid \uXXXX escape: line 1 column 12 (char 11)",
            ),
            (
                "[1, 2, {\"a",
                "Unterminated string starting at: line 1 column 9 (char 8)",
            ),
            (
                "{",
                "Expecting property name enclosed in double quotes: line 1 column 2 (char 1)",
            ),
            (
                "{\"a\":1,",
                "Expecting property name enclosed in double quotes: line 1 column 8 (char 7)",
            ),
            (
                "{\"a\": 1,}",
                "Expecting property name enclosed in double quotes: line 1 column 9 (char 8)",
            ),
            (
                "[1, 2, {\"a\"",
                "Expecting ':' delimiter: line 1 column 12 (char 11)",
            ),
            ("[1", "Expecting ',' delimiter: line 1 column 3 (char 2)"),
            ("[1,", "Expecting value: line 1 column 4 (char 3)"),
            ("[1,]", "Expecting value: line 1 column 4 (char 3)"),
        ];
        for (text, python) in cases {
            assert_eq!(parse_json_lenient(text).unwrap_err(), python, "{text:?}");
        }
    }

    #[test]
    fn non_finite_tokens_read_as_null_outside_strings() {
        let v = parse_json_lenient(r#"{"a": NaN, "b": -Infinity, "c": "NaN Infinity"}"#).unwrap();
        assert_eq!(v, json!({"a": null, "b": null, "c": "NaN Infinity"}));
    }

    #[test]
    fn staged_errors() {
        assert!(matches!(
            parse_client_frame("[1, 2]"),
            Err(FrameError::NotObject {
                python_type: "list"
            })
        ));
        assert_eq!(
            parse_client_frame(r#"{"data": {}}"#)
                .unwrap_err()
                .to_string(),
            "Unknown message type: "
        );
        assert_eq!(
            parse_client_frame(r#"{"type": 5}"#)
                .unwrap_err()
                .to_string(),
            "Unknown message type: 5"
        );
        let err = parse_client_frame(r#"{"type": "state", "data": {}}"#).unwrap_err();
        assert_eq!(
            serde_json::to_string(&err.to_error_data()).unwrap(),
            r#"{"message":"Invalid message","code":"VALIDATION_ERROR","errors":[{"type":"extra_forbidden","loc":["data"],"msg":"Extra inputs are not permitted","input":{},"url":"https://errors.pydantic.dev/2.14/v/extra_forbidden"}]}"#
        );
        let err = parse_client_frame(r#"{"type": "verify", "data": {"reward": 1}}"#).unwrap_err();
        assert!(matches!(err, FrameError::Invalid { .. }));
        assert_eq!(
            parse_client_frame(r#"{"type":"reset"}"#).unwrap(),
            ClientFrame::Reset {
                data: JsonMap::new()
            }
        );
    }
}
