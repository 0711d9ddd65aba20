//! The bytes of the durable log (docs/spool-format.md says the same in prose): a
//! segment header, then entries, each framed so that a scan can check it alone and,
//! after damage, find the next good one.
//!
//! Segment header (32 bytes): `"CDRKLOG"` | version u8 | first_seq u64 | created_ms u64 |
//! reserved u32 | crc32 u32 of the 28 bytes before it.
//! Entry: magic u32 | body_len u32 | seq u64 | captured_ms u64 | crc32 u32 of
//! (body_len, seq, captured_ms, body) | body. All integers little-endian.
//! Body: kind u8 | record_id | topic | key flag u8 [key] | header count u32
//! (name, value)* | payload, each variable field as length u32 + bytes.

pub const SEGMENT_MAGIC: &[u8; 7] = b"CDRKLOG";
pub const VERSION: u8 = 2;
pub const SEGMENT_HEADER_LEN: usize = 32;
pub const ENTRY_MAGIC: u32 = 0xCD4B_4C45;
pub const ENTRY_HEADER_LEN: usize = 28;
/// Larger than any record Asterisk produces; a longer entry is damage.
pub const MAX_BODY: u32 = 16 * 1024 * 1024;

pub use crate::spooled::{NewRecord, RecordKind, StoredRecord};

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

pub fn encode_segment_header(first_seq: u64, created_ms: u64) -> [u8; SEGMENT_HEADER_LEN] {
    let mut header = [0u8; SEGMENT_HEADER_LEN];
    header[..7].copy_from_slice(SEGMENT_MAGIC);
    header[7] = VERSION;
    header[8..16].copy_from_slice(&first_seq.to_le_bytes());
    header[16..24].copy_from_slice(&created_ms.to_le_bytes());
    let crc = crc32fast::hash(&header[..28]);
    header[28..].copy_from_slice(&crc.to_le_bytes());
    header
}

/// Why a segment header is not usable.
#[derive(Debug, PartialEq, Eq)]
pub enum HeaderProblem {
    /// Shorter than a header: a crash while the segment was created.
    Short,
    /// Not a cdr_kafka log segment, or damaged.
    NotASegment,
    /// Written by another version of the format.
    Version(u8),
}

/// The first sequence number a segment header names.
pub fn decode_segment_header(bytes: &[u8]) -> Result<u64, HeaderProblem> {
    if bytes.len() < SEGMENT_HEADER_LEN {
        return Err(HeaderProblem::Short);
    }
    if &bytes[..7] != SEGMENT_MAGIC || crc32fast::hash(&bytes[..28]) != u32_at(bytes, 28) {
        return Err(HeaderProblem::NotASegment);
    }
    if bytes[7] != VERSION {
        return Err(HeaderProblem::Version(bytes[7]));
    }
    Ok(u64_at(bytes, 8))
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

/// Appends one framed entry to `out`.
pub fn encode_entry(record: &NewRecord<'_>, seq: u64, captured_ms: u64, out: &mut Vec<u8>) {
    encode_entry_with(record, seq, captured_ms, out, |out| {
        out.extend_from_slice(record.payload)
    });
}

/// Appends one framed entry to `out` whose payload `write_payload` appends in place
/// (`record.payload` is not used): the record is encoded straight into the log's buffer.
pub fn encode_entry_with<R>(
    record: &NewRecord<'_>,
    seq: u64,
    captured_ms: u64,
    out: &mut Vec<u8>,
    write_payload: impl FnOnce(&mut Vec<u8>) -> R,
) -> R {
    let start = out.len();
    out.extend_from_slice(&[0; ENTRY_HEADER_LEN]);
    out.push(record.kind.code());
    put_bytes(out, record.record_id.as_bytes());
    put_bytes(out, record.topic.as_bytes());
    match record.key {
        Some(key) => {
            out.push(1);
            put_bytes(out, key);
        }
        None => out.push(0),
    }
    out.extend_from_slice(&(record.headers.len() as u32).to_le_bytes());
    for (name, value) in record.headers {
        put_bytes(out, name.as_bytes());
        put_bytes(out, value);
    }
    let payload_at = out.len();
    out.extend_from_slice(&[0; 4]);
    let written = write_payload(out);
    let payload_len = (out.len() - payload_at - 4) as u32;
    out[payload_at..payload_at + 4].copy_from_slice(&payload_len.to_le_bytes());
    let body_len = (out.len() - start - ENTRY_HEADER_LEN) as u32;
    let header = &mut out[start..start + ENTRY_HEADER_LEN];
    header[..4].copy_from_slice(&ENTRY_MAGIC.to_le_bytes());
    header[4..8].copy_from_slice(&body_len.to_le_bytes());
    header[8..16].copy_from_slice(&seq.to_le_bytes());
    header[16..24].copy_from_slice(&captured_ms.to_le_bytes());
    let crc = entry_crc(&out[start..]);
    out[start + 24..start + 28].copy_from_slice(&crc.to_le_bytes());
    written
}

/// The checksum of an entry: everything but the magic and the checksum itself.
fn entry_crc(entry: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&entry[4..24]);
    hasher.update(&entry[ENTRY_HEADER_LEN..]);
    hasher.finalize()
}

/// The entry at the start of `bytes`, if it is whole and its checksum holds:
/// (its length on disk, the record).
pub fn decode_entry(bytes: &[u8]) -> Option<(usize, StoredRecord<'_>)> {
    if bytes.len() < ENTRY_HEADER_LEN || u32_at(bytes, 0) != ENTRY_MAGIC {
        return None;
    }
    let body_len = u32_at(bytes, 4);
    if body_len > MAX_BODY {
        return None;
    }
    let end = ENTRY_HEADER_LEN + body_len as usize;
    if bytes.len() < end || entry_crc(&bytes[..end]) != u32_at(bytes, 24) {
        return None;
    }
    let record = decode_body(
        u64_at(bytes, 8),
        u64_at(bytes, 16),
        &bytes[ENTRY_HEADER_LEN..end],
    )?;
    Some((end, record))
}

/// Reads the length-prefixed fields of a body (also the previous format's, in `legacy`).
pub(super) struct BodyReader<'a>(pub(super) &'a [u8]);

impl<'a> BodyReader<'a> {
    pub(super) fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    pub(super) fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
    }

    pub(super) fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }

    pub(super) fn text(&mut self) -> Option<&'a str> {
        std::str::from_utf8(self.bytes()?).ok()
    }
}

fn decode_body(seq: u64, captured_ms: u64, body: &[u8]) -> Option<StoredRecord<'_>> {
    let mut reader = BodyReader(body);
    let kind = RecordKind::from_code(reader.take(1)?[0])?;
    let record_id = reader.text()?;
    let topic = reader.text()?;
    let key = match reader.take(1)?[0] {
        0 => None,
        1 => Some(reader.bytes()?),
        _ => return None,
    };
    let header_count = reader.u32()? as usize;
    // Each header takes at least 8 bytes: a damaged count cannot make us allocate much.
    let mut headers = Vec::with_capacity(header_count.min(reader.0.len() / 8));
    for _ in 0..header_count {
        headers.push((reader.text()?, reader.bytes()?));
    }
    let payload = reader.bytes()?;
    if !reader.0.is_empty() {
        return None;
    }
    Some(StoredRecord {
        seq,
        captured_ms,
        kind,
        record_id,
        topic,
        key,
        headers,
        payload,
    })
}

/// Where a valid entry sits in a segment's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Located {
    pub seq: u64,
    pub captured_ms: u64,
    pub offset: usize,
    pub len: usize,
}

/// What a scan of a segment's entries (the bytes after its header) found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Scan {
    pub entries: Vec<Located>,
    /// End of the last valid entry: where appends may go on.
    pub valid_end: usize,
    /// Runs of bytes that hold no valid entry, followed by a valid one.
    pub damaged_runs: u64,
    /// Bytes after the last valid entry that hold none (a torn write, or damage at the end).
    pub tail_bytes: usize,
    /// Zeros after the last valid entry: room written ahead of the records.
    pub room_bytes: usize,
}

/// Reads every valid entry of `data`. Damage costs only the entries it touches: after
/// bytes that do not frame a valid entry, the scan goes on at the next offset where one
/// does. Sequence numbers must rise; an entry that does not is damage too.
pub fn scan_entries(data: &[u8]) -> Scan {
    let mut scan = Scan::default();
    let mut offset = 0;
    let mut in_damage = false;
    let magic = ENTRY_MAGIC.to_le_bytes();
    while offset < data.len() {
        let rest = &data[offset..];
        let found = decode_entry(rest).filter(|(_, record)| {
            scan.entries
                .last()
                .is_none_or(|last: &Located| record.seq > last.seq)
        });
        match found {
            Some((len, record)) => {
                if in_damage {
                    scan.damaged_runs += 1;
                    in_damage = false;
                }
                scan.entries.push(Located {
                    seq: record.seq,
                    captured_ms: record.captured_ms,
                    offset,
                    len,
                });
                offset += len;
                scan.valid_end = offset;
            }
            None => {
                in_damage = true;
                // Only an offset holding the magic can start an entry.
                offset += 1 + rest[1..]
                    .windows(4)
                    .position(|w| w == magic)
                    .unwrap_or(rest.len() - 1);
            }
        }
    }
    // Zeros after the last record are room the writer made ahead, not a torn write.
    if data[scan.valid_end..].iter().all(|&byte| byte == 0) {
        scan.room_bytes = data.len() - scan.valid_end;
    }
    scan.tail_bytes = data.len() - scan.valid_end - scan.room_bytes;
    scan
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(payload: &[u8]) -> NewRecord<'_> {
        NewRecord {
            kind: RecordKind::Cdr,
            record_id: "id-1",
            topic: "asterisk_cdr",
            key: Some(b"linked"),
            headers: &[("entity_id", b"00:11:22:33:44:55")],
            payload,
        }
    }

    fn entries(n: u64) -> Vec<u8> {
        let mut out = Vec::new();
        for seq in 0..n {
            encode_entry(
                &record(format!("{{\"n\":{seq}}}").as_bytes()),
                seq,
                7,
                &mut out,
            );
        }
        out
    }

    #[test]
    fn entry_round_trips() {
        let mut out = Vec::new();
        encode_entry(&record(b"{}"), 42, 1234, &mut out);
        let (len, back) = decode_entry(&out).unwrap();
        assert_eq!(len, out.len());
        assert_eq!(back.seq, 42);
        assert_eq!(back.captured_ms, 1234);
        assert_eq!(back.key, Some(&b"linked"[..]));
        assert_eq!(back.headers, vec![("entity_id", &b"00:11:22:33:44:55"[..])]);
        assert_eq!(back.payload, b"{}");
    }

    #[test]
    fn flipped_length_bit_costs_one_entry_not_the_rest() {
        let mut data = entries(50);
        let second = scan_entries(&data).entries[1].offset;
        data[second + 6] ^= 0x40;
        let scan = scan_entries(&data);
        assert_eq!(scan.entries.len(), 49);
        assert_eq!(scan.damaged_runs, 1);
        assert_eq!(scan.tail_bytes, 0);
    }

    #[test]
    fn torn_last_entry_is_a_tail_not_damage() {
        let data = entries(5);
        let scan = scan_entries(&data[..data.len() - 3]);
        assert_eq!(scan.entries.len(), 4);
        assert_eq!(scan.damaged_runs, 0);
        assert!(scan.tail_bytes > 0);
    }

    #[test]
    fn segment_header_names_version_and_first_seq() {
        let header = encode_segment_header(77, 1);
        assert_eq!(decode_segment_header(&header), Ok(77));
        let mut other = header;
        other[7] = 1;
        assert_eq!(
            decode_segment_header(&other),
            Err(HeaderProblem::NotASegment)
        );
        assert_eq!(
            decode_segment_header(&header[..10]),
            Err(HeaderProblem::Short)
        );
    }

    #[test]
    fn zeros_after_the_last_entry_are_room_and_a_partial_entry_before_them_is_torn() {
        let mut data = entries(3);
        let end = data.len();
        data.resize(end + 4096, 0);
        let scan = scan_entries(&data);
        assert_eq!((scan.entries.len(), scan.valid_end), (3, end));
        assert_eq!((scan.tail_bytes, scan.room_bytes), (0, 4096));
        let copy = data[..end / 3].to_vec();
        data[end..end + 20].copy_from_slice(&copy[..20]);
        let scan = scan_entries(&data);
        assert_eq!(scan.entries.len(), 3);
        assert_eq!((scan.tail_bytes, scan.room_bytes), (4096, 0));
    }
}
