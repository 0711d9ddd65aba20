//! Output formats: what a destination writes for one record of the log. The log stores
//! the contract's JSON object (a CDR, a CEL event or a control record); a [`Shape`] turns
//! it into the bytes one destination wants: the object itself, an envelope with
//! metadata around it, or a `key=value;…` line, with keys picked, renamed or put in
//! snake_case, compact or pretty.
//!
//! Pure functions of their input, no state: a feeder thread calls [`Shape::apply`] with
//! its own output buffer. Values are never touched: the record is walked as a list of
//! (key, raw JSON value) pairs, so key order, numbers and strings (U+FFFD included) keep
//! their bytes. serde_json's `preserve_order` feature is not needed and not enabled.

mod kv;
mod snake;
#[cfg(test)]
mod tests;

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, Visitor};
use serde::ser::{Error as _, Serialize, SerializeMap, SerializeSeq, Serializer};
use serde_json::value::RawValue;

use crate::record::CONTRACT_FIELDS;

pub use snake::snake_case;

/// How a record is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// The contract's JSON object (docs/schema/cdr.json, cel.json, control.json).
    Contract,
    /// `{"type":…,"version":1,…,"record":{…}}` (docs/schema/envelope.json).
    Envelope,
    /// One `key=value;key=value` line (grammar in src/shape/kv.rs).
    Kv,
}

impl Format {
    /// Every accepted name, as written in a configuration.
    pub const NAMES: [&'static str; 3] = ["contract", "envelope", "kv"];

    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "contract" => Self::Contract,
            "envelope" => Self::Envelope,
            "kv" => Self::Kv,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        Self::NAMES[self as usize]
    }
}

/// What happens to the record's key names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Normalize {
    /// Kept as the contract writes them (`EntityID`, `SystemName`).
    None,
    /// Put in snake_case by [`snake_case`] (`entity_id`, `system_name`).
    SnakeCase,
}

impl Normalize {
    /// Every accepted name, as written in a configuration.
    pub const NAMES: [&'static str; 2] = ["none", "snake_case"];

    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "none" => Self::None,
            "snake_case" => Self::SnakeCase,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        Self::NAMES[self as usize]
    }
}

/// One item of a field list: the record's key `from`, written as `to`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldPick {
    pub from: String,
    pub to: String,
}

/// The output format of one destination.
///
/// Order of work: keys are normalized first; then `fields` picks, orders and renames.
/// A pick's `from` matches a key by its name in the record or, with `SnakeCase`, by its
/// snake_case name; its `to` is written as given, in snake_case with `SnakeCase`. A
/// picked key the record does not have is left out. Whenever two keys would get the same
/// output name, the first is kept, except that a contract field
/// ([`CONTRACT_FIELDS`]) is kept over a CDR variable — the contract's own rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shape {
    pub format: Format,
    pub fields: Option<Vec<FieldPick>>,
    pub normalize: Normalize,
    /// Indent JSON by 2 spaces (serde_json's pretty printer); JSON formats only.
    pub pretty: bool,
}

impl Default for Shape {
    /// The contract's bytes, unchanged.
    fn default() -> Self {
        Self {
            format: Format::Contract,
            fields: None,
            normalize: Normalize::None,
            pretty: false,
        }
    }
}

/// What a record's envelope says about it besides the record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta<'a> {
    /// `cdr`, `cel`, `module_start` or `module_stop`.
    pub kind: &'a str,
    pub record_id: &'a str,
    /// `EntityID` of the record.
    pub entity_id: &'a str,
    /// `SystemName` of the record; empty when unset (then absent, as in the contract).
    pub system_name: &'a str,
    /// When the destination wrote it, in the contract's time format.
    pub emitted_at: &'a str,
}

/// Why a record could not be shaped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShapeError {
    /// The record is not valid JSON (the parser's message, with line and column).
    NotJson(String),
    /// The record is valid JSON but not an object (what it is instead).
    NotAnObject(&'static str),
}

impl fmt::Display for ShapeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotJson(error) => write!(f, "record is not valid JSON ({error})"),
            Self::NotAnObject(what) => {
                write!(
                    f,
                    "record is a JSON {what}, not the JSON object of a CDR or CEL event"
                )
            }
        }
    }
}

impl std::error::Error for ShapeError {}

impl Shape {
    /// Parses a field list: `start,src,dst,billsec:duration` (spaces around items and
    /// names are ignored). An empty name, an item with two `:`, or two items with one
    /// output name are errors naming the item.
    pub fn parse_fields(spec: &str) -> Result<Vec<FieldPick>, String> {
        let mut picks: Vec<FieldPick> = Vec::new();
        for item in spec.split(',') {
            let item = item.trim();
            let mut parts = item.split(':');
            let from = parts.next().unwrap_or_default().trim();
            let to = parts.next().map_or(from, str::trim);
            if parts.next().is_some() {
                return Err(format!(
                    "'{item}': more than one ':' (use name or name:new_name)"
                ));
            }
            if from.is_empty() || to.is_empty() {
                return Err(format!("'{item}': empty field name"));
            }
            if picks.iter().any(|pick| pick.to == to) {
                return Err(format!(
                    "'{item}': a second field named '{to}' in the output"
                ));
            }
            picks.push(FieldPick {
                from: from.to_string(),
                to: to.to_string(),
            });
        }
        Ok(picks)
    }

    /// Checks what `parse_fields` cannot see alone: output names that only collide after
    /// snake_case, and `pretty` with `kv`.
    pub fn validate(&self) -> Result<(), String> {
        if self.pretty && self.format == Format::Kv {
            return Err("pretty applies to JSON formats only, not kv".to_string());
        }
        if let (Some(picks), Normalize::SnakeCase) = (&self.fields, self.normalize) {
            for (index, pick) in picks.iter().enumerate() {
                let name = snake_case(&pick.to);
                if let Some(earlier) = picks[..index].iter().find(|p| snake_case(&p.to) == name) {
                    return Err(format!(
                        "'{}' and '{}' are both '{name}' in snake_case",
                        earlier.to, pick.to
                    ));
                }
            }
        }
        Ok(())
    }

    /// The contract's bytes unchanged: `apply` copies the record without reading it.
    pub fn is_identity(&self) -> bool {
        self.format == Format::Contract
            && self.fields.is_none()
            && self.normalize == Normalize::None
            && !self.pretty
    }

    /// Appends what a destination writes for `record` to `out`. No line terminator is
    /// added: framing is the destination's. On error `out` may hold part of a record.
    pub fn apply(
        &self,
        record: &[u8],
        meta: &Meta<'_>,
        out: &mut Vec<u8>,
    ) -> Result<(), ShapeError> {
        if self.is_identity() {
            out.extend_from_slice(record);
            return Ok(());
        }
        let entries = self.entries(parse_object(record)?);
        match self.format {
            Format::Contract => self.write_json(&Fields(&entries, self.pretty), out),
            Format::Envelope => {
                let envelope = Envelope {
                    meta,
                    record: Fields(&entries, self.pretty),
                };
                self.write_json(&envelope, out)
            }
            Format::Kv => kv::write(&entries, out),
        }
    }

    /// The record's pairs as they are written: normalized, then picked.
    fn entries<'r>(&'r self, parsed: Vec<(Cow<'r, str>, &'r RawValue)>) -> Vec<Entry<'r>> {
        let mut entries: Vec<Entry<'r>> = parsed
            .into_iter()
            .map(|(key, value)| Entry {
                name: key.clone(),
                key,
                value,
            })
            .collect();
        if self.normalize == Normalize::SnakeCase {
            normalize(&mut entries);
        }
        match &self.fields {
            None => entries,
            Some(picks) => self.pick(&entries, picks),
        }
    }

    fn pick<'r>(&self, entries: &[Entry<'r>], picks: &'r [FieldPick]) -> Vec<Entry<'r>> {
        let mut picked: Vec<Entry<'r>> = Vec::with_capacity(picks.len());
        for pick in picks {
            let Some(entry) = entries
                .iter()
                .find(|entry| entry.key == pick.from || entry.name == pick.from)
            else {
                continue;
            };
            let name = match self.normalize {
                Normalize::None => Cow::Borrowed(pick.to.as_str()),
                Normalize::SnakeCase => snake_case(&pick.to),
            };
            if picked.iter().any(|earlier| earlier.name == name) {
                continue;
            }
            picked.push(Entry {
                key: entry.key.clone(),
                name,
                value: entry.value,
            });
        }
        picked
    }

    fn write_json<T: Serialize>(&self, value: &T, out: &mut Vec<u8>) -> Result<(), ShapeError> {
        let result = if self.pretty {
            value.serialize(&mut serde_json::Serializer::pretty(&mut *out))
        } else {
            value.serialize(&mut serde_json::Serializer::new(&mut *out))
        };
        // Values were parsed once already; a failure here means a nested value was not JSON.
        result.map_err(|error| ShapeError::NotJson(error.to_string()))
    }
}

/// One key of the record on its way out.
struct Entry<'r> {
    /// The key as the record has it.
    key: Cow<'r, str>,
    /// The key as it is written.
    name: Cow<'r, str>,
    value: &'r RawValue,
}

/// Renames every entry to snake_case; of two that collide, the contract field stays, else
/// the first.
fn normalize(entries: &mut Vec<Entry<'_>>) {
    let mut changed = false;
    for entry in entries.iter_mut() {
        if let Cow::Owned(name) = snake_case(&entry.name) {
            entry.name = Cow::Owned(name);
            changed = true;
        }
    }
    if !changed {
        // No name changed, so none can newly collide (the contract has no duplicate keys).
        return;
    }
    let mut index = 0;
    while index < entries.len() {
        // Two unchanged names cannot newly collide: only a renamed entry is checked.
        if entries[index].name == entries[index].key {
            index += 1;
            continue;
        }
        let clash = (0..entries.len())
            .find(|&other| other != index && entries[other].name == entries[index].name);
        let drop = match clash {
            None => None,
            Some(other) => {
                let is_field = |entry: &Entry<'_>| CONTRACT_FIELDS.contains(&entry.key.as_ref());
                let keep_this = match (is_field(&entries[index]), is_field(&entries[other])) {
                    (true, false) => true,
                    (false, true) => false,
                    _ => index < other,
                };
                Some(if keep_this { other } else { index })
            }
        };
        match drop {
            Some(victim) => {
                entries.remove(victim);
                if victim < index {
                    index -= 1;
                }
            }
            None => index += 1,
        }
    }
}

/// Parses a JSON object into its (key, raw value) pairs, in order.
pub(crate) fn parse_object(record: &[u8]) -> Result<Vec<(Cow<'_, str>, &RawValue)>, ShapeError> {
    let first = record.iter().find(|byte| !byte.is_ascii_whitespace());
    match first {
        Some(b'{') => {}
        Some(b'[') => return Err(ShapeError::NotAnObject("array")),
        Some(b'"') => return Err(ShapeError::NotAnObject("string")),
        Some(b'-' | b'0'..=b'9') => return Err(ShapeError::NotAnObject("number")),
        Some(b't' | b'f') => return Err(ShapeError::NotAnObject("boolean")),
        Some(b'n') => return Err(ShapeError::NotAnObject("null")),
        Some(_) => {
            return Err(ShapeError::NotJson(
                "it does not start with '{'".to_string(),
            ))
        }
        None => return Err(ShapeError::NotJson("the record is empty".to_string())),
    }
    let mut deserializer = serde_json::Deserializer::from_slice(record);
    let object = Pairs::deserialize(&mut deserializer)
        .and_then(|pairs| deserializer.end().map(|()| pairs))
        .map_err(|error| ShapeError::NotJson(error.to_string()))?;
    Ok(object.0)
}

/// A JSON string, borrowed from the input when it holds no escape.
struct Key<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, text: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(text)))
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(text.to_string())))
            }
            fn visit_string<E: de::Error>(self, text: String) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(text)))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

/// A JSON object as its (key, raw value) pairs in order.
struct Pairs<'de>(Vec<(Cow<'de, str>, &'de RawValue)>);

impl<'de> Deserialize<'de> for Pairs<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct PairsVisitor;
        impl<'de> Visitor<'de> for PairsVisitor {
            type Value = Pairs<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Pairs<'de>, A::Error> {
                // A CDR has ~25 keys plus its variables.
                let mut pairs = Vec::with_capacity(map.size_hint().unwrap_or(32));
                while let Some(key) = map.next_key::<Key<'de>>()? {
                    let value: &'de RawValue = map.next_value()?;
                    pairs.push((key.0, value));
                }
                Ok(Pairs(pairs))
            }
        }
        deserializer.deserialize_map(PairsVisitor)
    }
}

/// The picked pairs as a JSON object; `pretty` also lays out nested objects and arrays.
struct Fields<'e, 'r>(&'e [Entry<'r>], bool);

impl Serialize for Fields<'_, '_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for entry in self.0 {
            map.serialize_entry(entry.name.as_ref(), &Nested(entry.value, self.1))?;
        }
        map.end()
    }
}

/// A raw value, written verbatim; with `pretty` (the bool) an object or array is walked
/// so the pretty printer indents it, its scalars still verbatim.
struct Nested<'r>(&'r RawValue, bool);

impl Serialize for Nested<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let raw = self.0.get();
        match raw.as_bytes().first() {
            Some(b'{') if self.1 => {
                let pairs: Pairs<'_> = serde_json::from_str(raw).map_err(S::Error::custom)?;
                let mut map = serializer.serialize_map(Some(pairs.0.len()))?;
                for (key, value) in &pairs.0 {
                    map.serialize_entry(key.as_ref(), &Nested(value, true))?;
                }
                map.end()
            }
            Some(b'[') if self.1 => {
                let items: Vec<&RawValue> = serde_json::from_str(raw).map_err(S::Error::custom)?;
                let mut seq = serializer.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(&Nested(item, true))?;
                }
                seq.end()
            }
            _ => self.0.serialize(serializer),
        }
    }
}

/// `{"type":…,"version":1,"entity_id":…,"system_name":…,"record_id":…,"emitted_at":…,
/// "record":{…}}`, `system_name` absent when empty.
struct Envelope<'m, 'e, 'r> {
    meta: &'m Meta<'m>,
    record: Fields<'e, 'r>,
}

/// Bumped when the envelope's own keys change meaning.
const ENVELOPE_VERSION: u32 = 1;

impl Serialize for Envelope<'_, '_, '_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let meta = self.meta;
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("type", meta.kind)?;
        map.serialize_entry("version", &ENVELOPE_VERSION)?;
        map.serialize_entry("entity_id", meta.entity_id)?;
        if !meta.system_name.is_empty() {
            map.serialize_entry("system_name", meta.system_name)?;
        }
        map.serialize_entry("record_id", meta.record_id)?;
        map.serialize_entry("emitted_at", meta.emitted_at)?;
        map.serialize_entry("record", &self.record)?;
        map.end()
    }
}
