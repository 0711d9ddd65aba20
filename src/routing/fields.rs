//! A record's fields by name, read back from the contract JSON the log stores: what
//! templates and filters look at. Parsed on a feeder thread, never on Asterisk's.

use std::borrow::Cow;

use serde_json::value::RawValue;
use serde_json::Number;

use crate::shape::parse_object;

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

/// The top-level values of one record, borrowed from it: each value stays raw JSON
/// until a filter or template asks for it (a CDR has ~40 of them, a route reads one or
/// two).
#[derive(Debug, Default)]
pub struct Fields<'r> {
    values: Vec<(Cow<'r, str>, &'r RawValue)>,
}

impl<'r> Fields<'r> {
    /// `None` when the payload is not a JSON object (it always is for records this
    /// module wrote).
    pub fn parse(payload: &'r [u8]) -> Option<Self> {
        parse_object(payload).ok().map(|values| Self { values })
    }

    /// A value's raw JSON; the last one when a name came twice, as a JSON map keeps.
    fn raw(&self, name: &str) -> Option<&'r str> {
        self.values
            .iter()
            .rev()
            .find(|(key, _)| key.as_ref() == name)
            .map(|(_, value)| value.get())
    }

    /// The value as text: strings as they are, numbers in digits, `None` for null,
    /// absent or a nested value.
    pub fn text(&self, name: &FieldName) -> Option<Cow<'r, str>> {
        let raw = self.raw(name.key())?;
        match raw.as_bytes().first()? {
            b'"' => match serde_json::from_str::<&str>(raw) {
                Ok(text) => Some(Cow::Borrowed(text)),
                // Escapes: unescaped into a string of its own.
                Err(_) => serde_json::from_str::<String>(raw).ok().map(Cow::Owned),
            },
            b't' => Some(Cow::Borrowed("true")),
            b'f' => Some(Cow::Borrowed("false")),
            b'-' | b'0'..=b'9' => serde_json::from_str::<Number>(raw)
                .ok()
                .map(|number| Cow::Owned(number.to_string())),
            _ => None,
        }
    }

    /// A CDR that was never answered: `answer` is null.
    pub fn is_missed_call(&self) -> bool {
        self.raw("answer") == Some("null")
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
        let escaped =
            Fields::parse(br#"{"src":"a\"b\u00e9","nested":{"x":1},"n":-1.5e3,"f":false}"#)
                .unwrap();
        let text = |name: &str| escaped.text(&FieldName::Field(name.into()));
        assert_eq!(text("src").as_deref(), Some("a\"b\u{e9}"));
        assert_eq!(text("nested"), None);
        assert_eq!(text("n").as_deref(), Some("-1500.0"));
        assert_eq!(text("f").as_deref(), Some("false"));
        assert_eq!(text("absent"), None);
    }
}
