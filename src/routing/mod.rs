//! Which records a destination takes and under which topic: its record kinds, the
//! missed-call rule, its filters, `CDR(kafka_to)`, and its topic template. Pure rules,
//! applied on the destination's feeder thread to records read back from the log.

pub mod control;
pub mod fields;
pub mod filter;
pub mod template;

use crate::spooled::{RecordKind, StoredRecord};
use fields::{FieldName, Fields};
use filter::Filter;
use template::Template;

/// The log header that carries `CDR(kafka_to)`: the destinations a CDR is for.
pub const KAFKA_TO_HEADER: &str = "kafka_to";

/// `records = cdr, cel, control`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordKinds {
    pub cdr: bool,
    pub cel: bool,
    pub control: bool,
}

impl RecordKinds {
    pub const CDR: Self = Self {
        cdr: true,
        cel: false,
        control: false,
    };

    pub fn parse(text: &str) -> Result<Self, String> {
        let mut kinds = Self {
            cdr: false,
            cel: false,
            control: false,
        };
        for word in text.split(',').map(str::trim).filter(|w| !w.is_empty()) {
            match word.to_ascii_lowercase().as_str() {
                "cdr" => kinds.cdr = true,
                "cel" => kinds.cel = true,
                "control" => kinds.control = true,
                _ => return Err(format!("'{word}' is not cdr, cel or control")),
            }
        }
        if kinds
            == (Self {
                cdr: false,
                cel: false,
                control: false,
            })
        {
            return Err("names no record kind (cdr, cel, control)".into());
        }
        Ok(kinds)
    }

    pub fn takes(self, kind: RecordKind) -> bool {
        match kind {
            RecordKind::Cdr => self.cdr,
            RecordKind::Cel => self.cel,
            RecordKind::Control => self.control,
        }
    }

    pub fn names(self) -> String {
        [
            (self.cdr, "cdr"),
            (self.cel, "cel"),
            (self.control, "control"),
        ]
        .iter()
        .filter(|(on, _)| *on)
        .map(|(_, name)| *name)
        .collect::<Vec<_>>()
        .join(",")
    }
}

/// `missed = include | only | exclude`: a missed call is a CDR never answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Missed {
    #[default]
    Include,
    Only,
    Exclude,
}

impl Missed {
    pub fn parse(text: &str) -> Option<Self> {
        match text.trim().to_ascii_lowercase().as_str() {
            "include" => Some(Self::Include),
            "only" => Some(Self::Only),
            "exclude" => Some(Self::Exclude),
            _ => None,
        }
    }
}

/// Why a destination leaves a record out, or that it takes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Take,
    /// Another kind of record than `records` names.
    OtherKind,
    /// The missed-call rule or a filter leaves it out.
    Filtered,
    /// `CDR(kafka_to)` names other destinations.
    NotNamed,
}

/// One destination's rules.
#[derive(Debug, Clone)]
pub struct Route {
    pub name: String,
    pub kinds: RecordKinds,
    pub missed: Missed,
    pub filters: Vec<Filter>,
    /// `None`: the topic the record was logged with.
    pub topic: Option<Template>,
    pub topic_fallback: Option<String>,
    /// `Some`: this destination's own message key (`Some(None)`: no key); `None`: the
    /// key the record was logged with.
    pub key: Option<Option<FieldName>>,
}

impl Route {
    /// A route that takes every record of `kinds` as it is.
    pub fn plain(name: &str, kinds: RecordKinds) -> Self {
        Self {
            name: name.to_string(),
            kinds,
            missed: Missed::Include,
            filters: Vec::new(),
            topic: None,
            topic_fallback: None,
            key: None,
        }
    }

    /// Whether `decide` or `topic` look inside the record.
    pub fn needs_fields(&self) -> bool {
        self.missed != Missed::Include
            || !self.filters.is_empty()
            || self.topic.as_ref().is_some_and(|t| !t.is_fixed())
            || matches!(self.key, Some(Some(_)))
    }

    pub fn decide(&self, record: &StoredRecord<'_>, fields: Option<&Fields>) -> Decision {
        if !self.kinds.takes(record.kind) {
            return Decision::OtherKind;
        }
        if let Some((_, names)) = record.headers.iter().find(|(n, _)| *n == KAFKA_TO_HEADER) {
            let named = String::from_utf8_lossy(names)
                .split(',')
                .any(|name| name.trim() == self.name);
            if !named {
                return Decision::NotNamed;
            }
        }
        if self.missed == Missed::Include && self.filters.is_empty() {
            return Decision::Take;
        }
        let Some(fields) = fields else {
            // Not an object: no rule can hold, so none lets it through.
            return Decision::Filtered;
        };
        if record.kind == RecordKind::Cdr {
            let missed = fields.is_missed_call();
            let left_out = match self.missed {
                Missed::Include => false,
                Missed::Only => !missed,
                Missed::Exclude => missed,
            };
            if left_out {
                return Decision::Filtered;
            }
        }
        if self.filters.iter().all(|filter| filter.holds(fields)) {
            Decision::Take
        } else {
            Decision::Filtered
        }
    }

    /// The message key this destination sends `record` with: `None` for the logged
    /// key, `Some(None)` for none, `Some(Some(bytes))` written into `buffer`.
    pub fn key<'b>(
        &self,
        fields: Option<&Fields>,
        buffer: &'b mut Vec<u8>,
    ) -> Option<Option<&'b [u8]>> {
        let name = match &self.key {
            None => return None,
            Some(None) => return Some(None),
            Some(Some(name)) => name,
        };
        buffer.clear();
        match fields.and_then(|fields| fields.text(name)) {
            Some(value) => {
                buffer.extend_from_slice(value.as_bytes());
                Some(Some(buffer))
            }
            None => Some(None),
        }
    }

    /// The topic this destination sends `record` to (rendered into `buffer`).
    pub fn topic<'b>(
        &self,
        record: &StoredRecord<'b>,
        fields: Option<&Fields>,
        buffer: &'b mut String,
    ) -> &'b str {
        let Some(template) = &self.topic else {
            return record.topic;
        };
        if !template.render(fields, buffer) {
            buffer.clear();
            buffer.push_str(self.topic_fallback.as_deref().unwrap_or(record.topic));
        }
        buffer
    }
}

#[cfg(test)]
mod tests;
