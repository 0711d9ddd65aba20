//! `filter = dcontext != internal`: conditions a record must meet for a destination to
//! take it. Operators `=`, `!=`, `~` (regular expression), `!~` and `in` (comma list);
//! a value absent from the record compares as empty text.

use regex::Regex;

use super::fields::{FieldName, Fields};

#[derive(Debug, Clone)]
enum Test {
    Equals(String),
    Differs(String),
    Matches(Regex),
    DoesNotMatch(Regex),
    In(Vec<String>),
}

/// One condition.
#[derive(Debug, Clone)]
pub struct Filter {
    name: FieldName,
    test: Test,
}

impl Filter {
    /// Parses `NAME OP VALUE`; `known` says which bare names are record fields.
    pub fn parse(text: &str, known: &dyn Fn(&str) -> bool) -> Result<Self, String> {
        let text = text.trim();
        let (name, op, value) = split(text)
            .ok_or_else(|| format!("'{text}' is not NAME OP VALUE with OP one of = != ~ !~ in"))?;
        let name = FieldName::parse(name, known)?;
        let value = value.trim();
        let regex = || {
            Regex::new(value).map_err(|error| format!("bad regular expression '{value}': {error}"))
        };
        let test = match op {
            "=" => Test::Equals(value.to_string()),
            "!=" => Test::Differs(value.to_string()),
            "~" => Test::Matches(regex()?),
            "!~" => Test::DoesNotMatch(regex()?),
            _ => Test::In(
                value
                    .split(',')
                    .map(|item| item.trim().to_string())
                    .collect(),
            ),
        };
        Ok(Self { name, test })
    }

    pub fn holds(&self, fields: &Fields) -> bool {
        let value = fields.text(&self.name).unwrap_or_default();
        let value = value.as_ref();
        match &self.test {
            Test::Equals(expected) => value == expected,
            Test::Differs(expected) => value != expected,
            Test::Matches(regex) => regex.is_match(value),
            Test::DoesNotMatch(regex) => !regex.is_match(value),
            Test::In(items) => items.iter().any(|item| item == value),
        }
    }
}

/// Splits at the first operator; `in` must stand between spaces.
fn split(text: &str) -> Option<(&str, &'static str, &str)> {
    let symbol = text.find(['=', '!', '~']);
    let word = text.find(" in ");
    match (symbol, word) {
        (Some(at), word) if word.is_none_or(|w| at < w) => {
            let rest = &text[at..];
            let op = ["!=", "!~", "=", "~"]
                .into_iter()
                .find(|op| rest.starts_with(op))?;
            Some((&text[..at], op, &rest[op.len()..]))
        }
        (_, Some(at)) => Some((&text[..at], "in", &text[at + 4..])),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn known(name: &str) -> bool {
        matches!(name, "dcontext" | "accountcode" | "dst" | "billsec")
    }

    fn holds(filter: &str, record: &[u8]) -> bool {
        let filter = Filter::parse(filter, &known).expect("valid filter");
        filter.holds(&Fields::parse(record).expect("object"))
    }

    #[test]
    fn each_operator_decides_as_documented() {
        let record = br#"{"dcontext":"from-trunk","accountcode":"acme","dst":"0800123","billsec":0,"direction":"in"}"#;
        assert!(holds("dcontext != internal", record));
        assert!(!holds("dcontext = internal", record));
        assert!(holds("dcontext=from-trunk", record));
        assert!(holds("dst ~ ^0800", record));
        assert!(!holds("dst !~ ^0800", record));
        assert!(holds("accountcode in acme, globex", record));
        assert!(!holds("accountcode in globex,initech", record));
        assert!(holds("billsec = 0", record));
        assert!(holds("CDR(direction) = in", record));
        assert!(holds("CDR(tenant) = ", record), "absent is empty text");
    }

    #[test]
    fn bad_filters_name_what_is_wrong() {
        assert!(Filter::parse("dst ~ ([", &known)
            .unwrap_err()
            .contains("bad regular expression"));
        assert!(Filter::parse("dcontext internal", &known)
            .unwrap_err()
            .contains("NAME OP VALUE"));
        assert!(Filter::parse("context = x", &known)
            .unwrap_err()
            .contains("not a field"));
    }
}
