//! Validation error items in pydantic's shape (`PROTOCOL.md` §3.4), and a small field checker
//! that produces them in pydantic's order: declared fields first, then unknown keys.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::JsonMap;

/// One element of an error location: a field name or a list index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Loc {
    /// A field name.
    Field(String),
    /// A list index.
    Index(usize),
}

impl From<&str> for Loc {
    fn from(value: &str) -> Self {
        Self::Field(value.to_owned())
    }
}

/// One validation error: `{"type","loc","msg","input"[,"ctx"],"url"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ValidationErrorItem {
    /// pydantic's error type name (`missing`, `extra_forbidden`, `string_type`, …).
    #[serde(rename = "type")]
    pub kind: String,
    /// Where: relative to the action (`["message"]`) or the envelope (`["data"]`).
    pub loc: Vec<Loc>,
    /// pydantic's message.
    pub msg: String,
    /// The offending input.
    pub input: Value,
    /// Context (e.g. `{"ge":0}`), when the check has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ctx: Option<Value>,
    /// pydantic's documentation link for the error type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

const PYDANTIC_DOCS: &str = "https://errors.pydantic.dev/2.14/v/";

impl ValidationErrorItem {
    /// An error of pydantic type `kind` with its documentation link.
    pub fn new(kind: &str, loc: Vec<Loc>, msg: &str, input: Value) -> Self {
        Self {
            kind: kind.to_owned(),
            loc,
            msg: msg.to_owned(),
            input,
            ctx: None,
            url: Some(format!("{PYDANTIC_DOCS}{kind}")),
        }
    }

    /// `missing`: a required field is absent; `input` is the enclosing object.
    pub fn missing(loc: Vec<Loc>, input: Value) -> Self {
        Self::new("missing", loc, "Field required", input)
    }

    /// `extra_forbidden`: an unknown key; `input` is its value.
    pub fn extra_forbidden(loc: Vec<Loc>, input: Value) -> Self {
        Self::new(
            "extra_forbidden",
            loc,
            "Extra inputs are not permitted",
            input,
        )
    }

    /// The type error for a field expecting `kind`.
    pub fn wrong_type(kind: FieldKind, loc: Vec<Loc>, input: Value) -> Self {
        let (name, msg) = kind.error();
        Self::new(name, loc, msg, input)
    }

    /// Drops the `url`, as FastAPI's HTTP 422 bodies do for envelope errors.
    pub fn without_url(mut self) -> Self {
        self.url = None;
        self
    }
}

/// The JSON type a field accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldKind {
    /// A string.
    Str,
    /// An integer (an integral float is accepted, as pydantic's lax mode does).
    Int,
    /// Any number.
    Float,
    /// A boolean.
    Bool,
    /// An object (`dict`).
    Object,
    /// A list.
    List,
    /// Anything.
    Any,
}

impl FieldKind {
    fn error(self) -> (&'static str, &'static str) {
        match self {
            Self::Str => ("string_type", "Input should be a valid string"),
            Self::Int => ("int_type", "Input should be a valid integer"),
            Self::Float => ("float_type", "Input should be a valid number"),
            Self::Bool => ("bool_type", "Input should be a valid boolean"),
            Self::Object => ("dict_type", "Input should be a valid dictionary"),
            Self::List => ("list_type", "Input should be a valid list"),
            Self::Any => ("any_type", "Input should be valid"),
        }
    }

    /// Whether `value` is acceptable for this kind.
    pub fn accepts(self, value: &Value) -> bool {
        match self {
            Self::Str => value.is_string(),
            Self::Int => {
                value.is_i64() || value.is_u64() || value.as_f64().is_some_and(|f| f.fract() == 0.0)
            }
            Self::Float => value.is_number(),
            Self::Bool => value.is_boolean(),
            Self::Object => value.is_object(),
            Self::List => value.is_array(),
            Self::Any => true,
        }
    }
}

/// A declared field of an object model.
#[derive(Debug, Clone, Copy)]
pub struct Field {
    /// Key.
    pub name: &'static str,
    /// Accepted type.
    pub kind: FieldKind,
    /// Whether the key must be present.
    pub required: bool,
    /// Whether `null` is accepted (an `Optional[...]` field).
    pub nullable: bool,
}

impl Field {
    /// A required field.
    pub const fn required(name: &'static str, kind: FieldKind) -> Self {
        Self {
            name,
            kind,
            required: true,
            nullable: false,
        }
    }

    /// An optional field (absent is fine, `null` is not).
    pub const fn optional(name: &'static str, kind: FieldKind) -> Self {
        Self {
            name,
            kind,
            required: false,
            nullable: false,
        }
    }

    /// An optional field that also accepts `null`.
    pub const fn nullable(name: &'static str, kind: FieldKind) -> Self {
        Self {
            name,
            kind,
            required: false,
            nullable: true,
        }
    }
}

/// Checks `object` against `fields` (`extra="forbid"`), with `prefix` prepended to every
/// location. Errors come in pydantic's order: declared fields, then unknown keys.
pub fn check_object(
    object: &JsonMap,
    fields: &[Field],
    prefix: &[Loc],
) -> Vec<ValidationErrorItem> {
    let at = |name: &str| {
        let mut loc = prefix.to_vec();
        loc.push(Loc::Field(name.to_owned()));
        loc
    };
    let mut errors = Vec::new();
    for field in fields {
        match object.get(field.name) {
            None if field.required => {
                errors.push(ValidationErrorItem::missing(
                    at(field.name),
                    Value::Object(object.clone()),
                ));
            }
            None => {}
            Some(Value::Null) if field.nullable => {}
            Some(value) if !field.kind.accepts(value) => {
                errors.push(ValidationErrorItem::wrong_type(
                    field.kind,
                    at(field.name),
                    value.clone(),
                ));
            }
            Some(_) => {}
        }
    }
    for (key, value) in object {
        if !fields.iter().any(|f| f.name == key) {
            errors.push(ValidationErrorItem::extra_forbidden(at(key), value.clone()));
        }
    }
    errors
}
