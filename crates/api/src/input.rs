//! Reading JSON request bodies field by field, so every bad value is reported with its own
//! JSON pointer, and unknown fields are refused rather than silently dropped.

use crm_domain::values::Patch;
use crm_domain::{FieldError, InvalidValue};
use serde_json::{Map, Value};

use crate::problem::ApiError;

pub struct Input<'a> {
    obj: &'a Map<String, Value>,
    base: String,
    errors: Vec<FieldError>,
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The JSON value as an integer; `63.0` counts (JSON Schema's integer is any number with a
/// zero fractional part).
fn as_integer(v: &Value) -> Option<i64> {
    v.as_i64().or_else(|| {
        v.as_f64()
            .filter(|f| f.fract() == 0.0 && f.abs() < 9.0e15)
            .map(|f| f as i64)
    })
}

impl<'a> Input<'a> {
    /// Reads the top-level object of a body; `allowed` names every field the operation knows.
    pub fn body(value: &'a Value, allowed: &[&str]) -> Result<Input<'a>, ApiError> {
        let mut errors = Vec::new();
        let input = Input::nested(value, "", allowed, &mut errors);
        match input {
            Some(i) => Ok(i.with_errors(errors)),
            None => Err(ApiError::invalid(errors)),
        }
    }

    fn with_errors(mut self, errors: Vec<FieldError>) -> Self {
        self.errors.extend(errors);
        self
    }

    /// Reads a nested object at `base`; records errors into `errors` when it is not one.
    pub fn nested(
        value: &'a Value,
        base: &str,
        allowed: &[&str],
        errors: &mut Vec<FieldError>,
    ) -> Option<Input<'a>> {
        let Value::Object(obj) = value else {
            errors.push(FieldError::at(
                base,
                "invalid_type",
                format!("must be an object, not {}", type_name(value)),
            ));
            return None;
        };
        let mut input = Input {
            obj,
            base: base.to_owned(),
            errors: Vec::new(),
        };
        for key in obj.keys() {
            if !allowed.contains(&key.as_str()) {
                let p = input.pointer(key);
                input.errors.push(FieldError::at(
                    p,
                    "unknown_field",
                    "is not a field of this operation",
                ));
            }
        }
        Some(input)
    }

    pub fn pointer(&self, field: &str) -> String {
        let escaped = field.replace('~', "~0").replace('/', "~1");
        format!("{}/{}", self.base, escaped)
    }

    pub fn error(&mut self, field: &str, code: &str, detail: impl Into<String>) {
        let p = self.pointer(field);
        self.errors.push(FieldError::at(p, code, detail));
    }

    fn invalid(&mut self, field: &str, e: InvalidValue) {
        self.error(field, e.code, e.detail);
    }

    fn wrong_type(&mut self, field: &str, expected: &str, got: &Value) {
        self.error(
            field,
            "invalid_type",
            format!("must be {expected}, not {}", type_name(got)),
        );
    }

    pub fn has(&self, field: &str) -> bool {
        self.obj.contains_key(field)
    }

    /// A string field parsed by `parse`; absent or null is `None`, and a missing required
    /// field is an error.
    pub fn string<T>(
        &mut self,
        field: &str,
        required: bool,
        parse: impl FnOnce(&str) -> Result<T, InvalidValue>,
    ) -> Option<T> {
        match self.obj.get(field) {
            None | Some(Value::Null) => {
                if required {
                    self.error(field, "required", "is required");
                }
                None
            }
            Some(Value::String(s)) => match parse(s) {
                Ok(v) => Some(v),
                Err(e) => {
                    self.invalid(field, e);
                    None
                }
            },
            Some(other) => {
                self.wrong_type(field, "a string", other);
                None
            }
        }
    }

    /// A merge-patch string field: absent leaves it, `null` clears it (when `nullable`).
    pub fn patch_string<T>(
        &mut self,
        field: &str,
        nullable: bool,
        parse: impl FnOnce(&str) -> Result<T, InvalidValue>,
    ) -> Patch<T> {
        match self.obj.get(field) {
            None => Patch::Absent,
            Some(Value::Null) if nullable => Patch::Null,
            Some(Value::Null) => {
                self.error(field, "not_nullable", "cannot be null");
                Patch::Absent
            }
            Some(_) => self
                .string(field, true, parse)
                .map_or(Patch::Absent, Patch::Value),
        }
    }

    pub fn boolean(&mut self, field: &str, required: bool) -> Option<bool> {
        match self.obj.get(field) {
            None | Some(Value::Null) => {
                if required {
                    self.error(field, "required", "is required");
                }
                None
            }
            Some(Value::Bool(b)) => Some(*b),
            Some(other) => {
                self.wrong_type(field, "a boolean", other);
                None
            }
        }
    }

    pub fn integer(&mut self, field: &str, required: bool, min: i64, max: i64) -> Option<i64> {
        match self.obj.get(field) {
            None | Some(Value::Null) => {
                if required {
                    self.error(field, "required", "is required");
                }
                None
            }
            Some(v @ Value::Number(_)) => match as_integer(v) {
                Some(n) if (min..=max).contains(&n) => Some(n),
                Some(_) => {
                    self.error(
                        field,
                        "out_of_range",
                        format!("must be from {min} to {max}"),
                    );
                    None
                }
                None => {
                    self.wrong_type(field, "an integer", v);
                    None
                }
            },
            Some(other) => {
                self.wrong_type(field, "an integer", other);
                None
            }
        }
    }

    /// An array field with `min..=max` items.
    pub fn array(
        &mut self,
        field: &str,
        required: bool,
        min: usize,
        max: usize,
    ) -> Option<&'a Vec<Value>> {
        match self.obj.get(field) {
            None | Some(Value::Null) => {
                if required {
                    self.error(field, "required", "is required");
                }
                None
            }
            Some(Value::Array(items)) if items.len() < min => {
                self.error(
                    field,
                    "too_few_items",
                    format!("must have at least {min} items"),
                );
                None
            }
            Some(Value::Array(items)) if items.len() > max => {
                self.error(
                    field,
                    "too_many_items",
                    format!("must have at most {max} items"),
                );
                None
            }
            Some(Value::Array(items)) => Some(items),
            Some(other) => {
                self.wrong_type(field, "an array", other);
                None
            }
        }
    }

    pub fn push_errors(&mut self, errors: Vec<FieldError>) {
        self.errors.extend(errors);
    }

    pub fn take_errors(&mut self) -> Vec<FieldError> {
        std::mem::take(&mut self.errors)
    }

    /// Ends reading: any error recorded makes the whole request a 422.
    pub fn finish(self) -> Result<(), ApiError> {
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(ApiError::invalid(self.errors))
        }
    }
}

/// Parses a UUID-typed reference field.
pub fn uuid(raw: &str) -> Result<uuid::Uuid, InvalidValue> {
    uuid::Uuid::parse_str(raw).map_err(|_| InvalidValue::new("invalid_id", "must be a UUID"))
}

/// Parses an RFC 3339 timestamp.
pub fn timestamp(raw: &str) -> Result<chrono::DateTime<chrono::Utc>, InvalidValue> {
    chrono::DateTime::parse_from_rfc3339(raw)
        .map(|t| t.with_timezone(&chrono::Utc))
        .map_err(|_| {
            InvalidValue::new(
                "invalid_timestamp",
                "must be an RFC 3339 timestamp, e.g. 2026-01-31T09:00:00Z",
            )
        })
}

/// Free text of `min..=max` characters.
pub fn text(min: usize, max: usize) -> impl Fn(&str) -> Result<String, InvalidValue> {
    move |raw| crm_domain::values::text(raw, min, max)
}

/// A boolean query value: `true`/`1` or `false`/`0`.
pub fn boolean(raw: &str) -> Result<bool, InvalidValue> {
    match raw {
        "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        _ => Err(InvalidValue::new("invalid_type", "must be true or false")),
    }
}
