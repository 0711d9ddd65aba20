//! Topic templates: `cdr.missed.${accountcode}` rendered per record. A name the record
//! leaves empty sends the record to the fallback topic; characters a Kafka topic
//! cannot hold become `_`.

use super::fields::{FieldName, Fields};

/// Longest Kafka topic name.
const MAX_TOPIC_LEN: usize = 249;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Value(FieldName),
}

/// A parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

impl Template {
    /// Parses `text`; `known` says which bare names are record fields.
    pub fn parse(text: &str, known: &dyn Fn(&str) -> bool) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut rest = text.trim();
        while let Some(start) = rest.find("${") {
            if start > 0 {
                parts.push(Part::Text(rest[..start].to_string()));
            }
            let after = &rest[start + 2..];
            let end = closing_brace(after).ok_or_else(|| {
                format!("'${{' at '{}' is never closed with '}}'", &rest[start..])
            })?;
            parts.push(Part::Value(FieldName::parse(&after[..end], known)?));
            rest = &after[end + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_string()));
        }
        for part in &parts {
            if let Part::Text(text) = part {
                if let Some(bad) = text.chars().find(|c| !is_topic_char(*c)) {
                    return Err(format!(
                        "not a Kafka topic name: '{bad}' cannot be in one (a-z A-Z 0-9 . _ - and ${{field}})"
                    ));
                }
            }
        }
        if parts.is_empty() {
            return Err("empty".into());
        }
        Ok(Self { parts })
    }

    /// Whether the template names any field (else it renders to itself).
    pub fn is_fixed(&self) -> bool {
        self.parts.iter().all(|part| matches!(part, Part::Text(_)))
    }

    /// The topic for `fields`, or `None` when a named value is empty or absent.
    pub fn render(&self, fields: Option<&Fields>, out: &mut String) -> bool {
        out.clear();
        for part in &self.parts {
            match part {
                Part::Text(text) => out.push_str(text),
                Part::Value(name) => {
                    let Some(value) = fields.and_then(|fields| fields.text(name)) else {
                        return false;
                    };
                    if value.is_empty() {
                        return false;
                    }
                    out.extend(
                        value
                            .chars()
                            .map(|c| if is_topic_char(c) { c } else { '_' }),
                    );
                }
            }
        }
        if out.len() > MAX_TOPIC_LEN {
            out.truncate(MAX_TOPIC_LEN);
        }
        // "." and ".." are not topics either.
        if out.chars().all(|c| c == '.') {
            out.clear();
            out.push('_');
        }
        true
    }
}

fn closing_brace(text: &str) -> Option<usize> {
    text.find('}')
}

fn is_topic_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn known(name: &str) -> bool {
        matches!(name, "accountcode" | "disposition")
    }

    fn render(template: &str, record: &[u8]) -> Option<String> {
        let template = Template::parse(template, &known).expect("valid template");
        let fields = Fields::parse(record);
        let mut out = String::new();
        template.render(fields.as_ref(), &mut out).then_some(out)
    }

    #[test]
    fn account_code_picks_the_topic() {
        assert_eq!(
            render("cdr.${accountcode}", br#"{"accountcode":"acme"}"#).as_deref(),
            Some("cdr.acme")
        );
        assert_eq!(
            render("cdr.${CDR(tenant)}.calls", br#"{"tenant":"t1"}"#).as_deref(),
            Some("cdr.t1.calls")
        );
    }

    #[test]
    fn characters_a_topic_cannot_hold_become_underscores() {
        assert_eq!(
            render("cdr.${disposition}", br#"{"disposition":"NO ANSWER"}"#).as_deref(),
            Some("cdr.NO_ANSWER")
        );
        assert_eq!(
            render(
                "cdr.${accountcode}",
                "{\"accountcode\":\"caf\u{e9}/x\"}".as_bytes()
            )
            .as_deref(),
            Some("cdr.caf__x")
        );
        let long = format!("{{\"accountcode\":\"{}\"}}", "a".repeat(400));
        assert_eq!(
            render("${accountcode}", long.as_bytes()).map(|t| t.len()),
            Some(249)
        );
    }

    #[test]
    fn empty_or_absent_value_means_the_fallback() {
        assert_eq!(render("cdr.${accountcode}", br#"{"accountcode":""}"#), None);
        assert_eq!(
            render("cdr.${CDR(tenant)}", br#"{"accountcode":"a"}"#),
            None
        );
        assert_eq!(render("plain", br#"{}"#).as_deref(), Some("plain"));
    }

    #[test]
    fn bad_templates_are_refused_with_the_reason() {
        assert!(Template::parse("cdr.${acount}", &known)
            .unwrap_err()
            .contains("'acount' is not a field"));
        assert!(Template::parse("cdr.${accountcode", &known)
            .unwrap_err()
            .contains("never closed"));
        assert!(Template::parse("cdr/${accountcode}", &known)
            .unwrap_err()
            .contains("'/' cannot be in one"));
        assert!(Template::parse("cdr.${accountcode}", &known).is_ok_and(|t| !t.is_fixed()));
    }
}
