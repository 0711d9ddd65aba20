//! A record as the module spools it and reads it back: what routing, the formats and
//! the destinations see. The log's format module says how these are laid out in bytes.

/// What kind of record an entry holds: destinations take the kinds they name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordKind {
    Cdr,
    Cel,
    /// The module's own `module_start` / `module_stop` records.
    Control,
}

impl RecordKind {
    pub(crate) fn code(self) -> u8 {
        match self {
            Self::Cdr => 1,
            Self::Cel => 2,
            Self::Control => 3,
        }
    }

    pub(crate) fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(Self::Cdr),
            2 => Some(Self::Cel),
            3 => Some(Self::Control),
            _ => None,
        }
    }
}

/// A record to append, borrowed from the callback that captured it.
#[derive(Debug, Clone, Copy)]
pub struct NewRecord<'a> {
    pub kind: RecordKind,
    pub record_id: &'a str,
    pub topic: &'a str,
    pub key: Option<&'a [u8]>,
    pub headers: &'a [(&'a str, &'a [u8])],
    pub payload: &'a [u8],
}

/// A record read back from the log, borrowed from the reader's buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRecord<'a> {
    pub seq: u64,
    pub captured_ms: u64,
    pub kind: RecordKind,
    pub record_id: &'a str,
    pub topic: &'a str,
    pub key: Option<&'a [u8]>,
    pub headers: Vec<(&'a str, &'a [u8])>,
    pub payload: &'a [u8],
}

#[cfg(test)]
impl<'a> StoredRecord<'a> {
    /// A CDR as the tests' destinations are handed it: id `id`, topic `asterisk_cdr`,
    /// no key or headers.
    pub fn test_cdr(seq: u64, payload: &'a [u8]) -> Self {
        Self {
            seq,
            captured_ms: 0,
            kind: RecordKind::Cdr,
            record_id: "id",
            topic: "asterisk_cdr",
            key: None,
            headers: Vec::new(),
            payload,
        }
    }
}
