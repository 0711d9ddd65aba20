//! A record's fields by name, read back from the contract JSON the log stores: what
//! templates and filters look at. Parsed on a feeder thread, never on Asterisk's.

use std::borrow::Cow;

use serde_json::{Map, Value};

/// How a template or a filter names a value of a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FieldName {
    /// A field of the record (`accountcode`, `disposition`, `eventname`, ...).
    Field(String),
    /// A CDR variable, written `CDR(name)` as in the dialplan.
    Variable(String),
}

impl FieldName {
    /// Reads `accountcode` or `CDR(name)`; `known` says which bare names are fields.
    pub fn parse(text: &str, known: &dyn Fn(&str) -> bool) -> Result<Self, String> {
        let text = text.trim();
        if let Some(inner) = text
            .strip_prefix("CDR(")
            .or_else(|| text.strip_prefix("cdr("))
            .and_then(|rest| rest.strip_suffix(')'))
        {
            let inner = inner.trim();
            if inner.is_empty() {
                return Err("CDR() names no variable".into());
            }
            if known(inner) {
                return Err(format!(
                    "'{inner}' is a field of the record: write it without CDR()"
                ));
            }
            return Ok(Self::Variable(inner.to_string()));
        }
        if text.is_empty() {
            return Err("names no field".into());
        }
        if known(text) {
            Ok(Self::Field(text.to_string()))
        } else {
            Err(format!(
                "'{text}' is not a field of the records this destination takes (a CDR variable is written CDR({text}))"
            ))
        }
    }

    pub fn key(&self) -> &str {
        match self {
            Self::Field(name) | Self::Variable(name) => name,
        }
    }
}

/// The top-level values of one record.
#[derive(Debug, Default)]
pub struct Fields {
    values: Map<String, Value>,
}

impl Fields {
    /// `None` when the payload is not a JSON object (it always is for records this
    /// module wrote).
    pub fn parse(payload: &[u8]) -> Option<Self> {
        match serde_json::from_slice::<Value>(payload) {
            Ok(Value::Object(values)) => Some(Self { values }),
            _ => None,
        }
    }

    /// The value as text: strings as they are, numbers in digits, `None` for null,
    /// absent or a nested value.
    pub fn text(&self, name: &FieldName) -> Option<Cow<'_, str>> {
        match self.values.get(name.key())? {
            Value::String(text) => Some(Cow::Borrowed(text)),
            Value::Number(number) => Some(Cow::Owned(number.to_string())),
            Value::Bool(flag) => Some(Cow::Borrowed(if *flag { "true" } else { "false" })),
            _ => None,
        }
    }

    /// A CDR that was never answered: `answer` is null.
    pub fn is_missed_call(&self) -> bool {
        matches!(self.values.get("answer"), Some(Value::Null))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn known(name: &str) -> bool {
        matches!(name, "accountcode" | "billsec" | "answer")
    }

    #[test]
    fn bare_names_must_be_fields_and_variables_are_written_cdr() {
        assert_eq!(
            FieldName::parse("accountcode", &known),
            Ok(FieldName::Field("accountcode".into()))
        );
        assert_eq!(
            FieldName::parse("CDR(direction)", &known),
            Ok(FieldName::Variable("direction".into()))
        );
        assert!(FieldName::parse("acountcode", &known)
            .unwrap_err()
            .contains("not a field"));
        assert!(FieldName::parse("CDR(billsec)", &known)
            .unwrap_err()
            .contains("without CDR()"));
        assert!(FieldName::parse("CDR()", &known).is_err());
    }

    #[test]
    fn values_read_as_text_and_null_answer_is_a_missed_call() {
        let fields =
            Fields::parse(br#"{"accountcode":"acme","billsec":12,"answer":null,"direction":"in"}"#)
                .expect("object");
        assert_eq!(
            fields.text(&FieldName::Field("billsec".into())).as_deref(),
            Some("12")
        );
        assert_eq!(
            fields
                .text(&FieldName::Variable("direction".into()))
                .as_deref(),
            Some("in")
        );
        assert_eq!(fields.text(&FieldName::Field("answer".into())), None);
        assert!(fields.is_missed_call());
        let answered = Fields::parse(br#"{"answer":"2026-01-15T10:30:05.000-0300"}"#).unwrap();
        assert!(!answered.is_missed_call());
        assert!(Fields::parse(b"[1]").is_none());
    }
}
