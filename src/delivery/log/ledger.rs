//! One destination's acknowledgements: which sequence numbers of the log it has
//! confirmed. Owned by that destination's feeder thread; the log sees only the
//! watermark it publishes (every record below it is confirmed and written down).
//!
//! File `NAME.ledger`: frames `magic u32 | kind u8 | count u32 | crc32 u32 | body`, the
//! checksum over kind, count and body. Kind 1, a snapshot: watermark u64, then `count`
//! ranges (start u64, length u32) confirmed above it. Kind 2: `count` newly confirmed
//! ranges. Kind 3: `count` ranges this destination failed (with coupled destinations the
//! verdict needs every failure, also across a stop: a failure is not decided anew by the
//! next run); a snapshot is followed by one when any are kept. A damaged frame is skipped (its acknowledgements are lost, so those records
//! are delivered again, never dropped). Past `COMPACT_BYTES`, or when a frame cannot be
//! appended (a full disk), the file is rewritten as one snapshot through its spare
//! (`compaction`), which needs no room on the disk.

use std::collections::BTreeSet;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::compaction::Spare;
use super::io::Io;
use super::ranges::SeqRanges;

const MAGIC: u32 = 0xCD4B_4C47;
const FRAME_HEADER_LEN: usize = 13;
const SNAPSHOT: u8 = 1;
const ACKS: u8 = 2;
const FAILED: u8 = 3;
const RANGE_LEN: usize = 12;
const COMPACT_BYTES: u64 = 256 * 1024;

/// The acknowledgement state a ledger file holds.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct AckState {
    /// Every sequence number below is confirmed.
    pub watermark: u64,
    /// Confirmed above the watermark (records confirmed out of order).
    pub above: BTreeSet<u64>,
    /// Failed here (confirmed or still waiting for the verdict), while the log keeps them.
    pub failed: SeqRanges,
}

impl AckState {
    pub fn is_acked(&self, seq: u64) -> bool {
        seq < self.watermark || self.above.contains(&seq)
    }

    /// Records `seq` as confirmed; false when it already was.
    pub fn ack(&mut self, seq: u64) -> bool {
        if self.is_acked(seq) {
            return false;
        }
        if seq == self.watermark {
            self.watermark += 1;
            while self.above.remove(&self.watermark) {
                self.watermark += 1;
            }
        } else {
            self.above.insert(seq);
        }
        true
    }

    /// Nothing below `seq` exists any more (deleted, or never in the log).
    pub fn raise_to(&mut self, seq: u64) {
        if seq > self.watermark {
            self.watermark = seq;
            self.above = self.above.split_off(&seq);
            self.failed.remove_below(seq);
            while self.above.remove(&self.watermark) {
                self.watermark += 1;
            }
        }
    }
}

/// Ranges (start, length) of consecutive numbers, in order.
fn ranges(seqs: impl IntoIterator<Item = u64>) -> Vec<(u64, u32)> {
    let mut out: Vec<(u64, u32)> = Vec::new();
    for seq in seqs {
        match out.last_mut() {
            Some((start, len)) if *start + u64::from(*len) == seq && *len < u32::MAX => *len += 1,
            _ => out.push((seq, 1)),
        }
    }
    out
}

fn frame(kind: u8, count: usize, body: &[u8], out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&MAGIC.to_le_bytes());
    out.push(kind);
    out.extend_from_slice(&(count as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(body);
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&out[start + 4..start + 9]);
    hasher.update(body);
    let crc = hasher.finalize();
    out[start + 9..start + 13].copy_from_slice(&crc.to_le_bytes());
}

fn put_ranges(ranges: &[(u64, u32)], body: &mut Vec<u8>) {
    for (start, len) in ranges {
        body.extend_from_slice(&start.to_le_bytes());
        body.extend_from_slice(&len.to_le_bytes());
    }
}

fn encode_snapshot(state: &AckState) -> Vec<u8> {
    let above = ranges(state.above.iter().copied());
    let mut body = state.watermark.to_le_bytes().to_vec();
    put_ranges(&above, &mut body);
    let mut out = Vec::new();
    frame(SNAPSHOT, above.len(), &body, &mut out);
    if !state.failed.is_empty() {
        out.extend(encode_ranges(FAILED, state.failed.iter()));
    }
    out
}

fn encode_ranges(kind: u8, seqs: impl IntoIterator<Item = u64>) -> Vec<u8> {
    let ranges = ranges(seqs);
    let mut body = Vec::with_capacity(ranges.len() * RANGE_LEN);
    put_ranges(&ranges, &mut body);
    let mut out = Vec::new();
    frame(kind, ranges.len(), &body, &mut out);
    out
}

fn encode_acks(seqs: &[u64]) -> Vec<u8> {
    let mut sorted = seqs.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let acked = ranges(sorted);
    let mut body = Vec::with_capacity(acked.len() * RANGE_LEN);
    put_ranges(&acked, &mut body);
    let mut out = Vec::new();
    frame(ACKS, acked.len(), &body, &mut out);
    out
}

/// What reading a ledger file found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct LedgerScan {
    pub state: AckState,
    /// Damaged frames skipped.
    pub damaged: u64,
}

/// Replays a ledger file's frames; a damaged one is skipped up to the next good frame.
pub fn scan(data: &[u8]) -> LedgerScan {
    let mut out = LedgerScan::default();
    let mut offset = 0;
    let mut in_damage = false;
    while offset < data.len() {
        match read_frame(&data[offset..]) {
            Some((len, kind, body)) => {
                if in_damage {
                    out.damaged += 1;
                    in_damage = false;
                }
                apply(&mut out.state, kind, body);
                offset += len;
            }
            None => {
                in_damage = true;
                offset += 1;
            }
        }
    }
    if in_damage {
        out.damaged += 1;
    }
    out
}

fn read_frame(bytes: &[u8]) -> Option<(usize, u8, &[u8])> {
    if bytes.len() < FRAME_HEADER_LEN || u32::from_le_bytes(bytes[..4].try_into().ok()?) != MAGIC {
        return None;
    }
    let kind = bytes[4];
    let count = u32::from_le_bytes(bytes[5..9].try_into().ok()?) as usize;
    let body_len = match kind {
        SNAPSHOT => 8usize.checked_add(count.checked_mul(RANGE_LEN)?)?,
        ACKS | FAILED => count.checked_mul(RANGE_LEN)?,
        _ => return None,
    };
    let end = FRAME_HEADER_LEN.checked_add(body_len)?;
    if bytes.len() < end {
        return None;
    }
    let body = &bytes[FRAME_HEADER_LEN..end];
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&bytes[4..9]);
    hasher.update(body);
    if hasher.finalize() != u32::from_le_bytes(bytes[9..13].try_into().ok()?) {
        return None;
    }
    Some((end, kind, body))
}

fn apply(state: &mut AckState, kind: u8, body: &[u8]) {
    let mut rest = body;
    if kind == SNAPSHOT {
        let watermark = u64::from_le_bytes(body[..8].try_into().expect("8 bytes"));
        *state = AckState::default();
        state.raise_to(watermark);
        rest = &body[8..];
    }
    for range in rest.chunks_exact(RANGE_LEN) {
        let start = u64::from_le_bytes(range[..8].try_into().expect("8 bytes"));
        let len = u32::from_le_bytes(range[8..].try_into().expect("4 bytes"));
        // A range only names records that existed: bounded by what was appended.
        for seq in start..start.saturating_add(u64::from(len)) {
            if kind == FAILED {
                state.failed.insert(seq);
            } else {
                state.ack(seq);
            }
        }
    }
}

/// The confirmed positions one destination published for the log.
#[derive(Debug, Default)]
pub struct Watermarks {
    /// Below it, every record is confirmed (in memory: what the status and
    /// `spool_max_bytes` count as delivered).
    pub confirmed: AtomicU64,
    /// Below it, every record is confirmed and the confirmation is written down (and
    /// synced as `spool_sync` says): the log may delete those records.
    pub durable: AtomicU64,
}

/// One destination's ledger.
pub struct Ledger {
    name: String,
    dir: PathBuf,
    path: PathBuf,
    io: Io,
    sync_each_write: bool,
    file: Option<File>,
    file_bytes: u64,
    state: AckState,
    unwritten: Vec<u64>,
    unwritten_failed: Vec<u64>,
    /// The last write has not been synced yet (interval policy).
    unsynced: bool,
    /// The state changed in a way only a snapshot records (raised watermark).
    needs_snapshot: bool,
    published: Arc<Watermarks>,
    spare: Spare,
}

pub fn ledger_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.ledger"))
}

impl Ledger {
    /// Opens the ledger of `name`: its saved state, or a new one whose first record is
    /// `start`.
    pub fn open(
        io: Io,
        dir: &Path,
        name: &str,
        start: u64,
        sync_each_write: bool,
    ) -> io::Result<(Self, u64)> {
        let path = ledger_path(dir, name);
        let (state, damaged, file_bytes) = match io.read_all(&path) {
            Ok(data) => {
                let scanned = scan(&data);
                (scanned.state, scanned.damaged, data.len() as u64)
            }
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                let mut state = AckState::default();
                state.raise_to(start);
                (state, 0, 0)
            }
            Err(error) => return Err(error),
        };
        let spare = Spare::prepare(&io, &path);
        let published = Arc::new(Watermarks::default());
        published.durable.store(state.watermark, Ordering::Release);
        published
            .confirmed
            .store(state.watermark, Ordering::Release);
        let mut ledger = Self {
            name: name.to_string(),
            dir: dir.to_path_buf(),
            path,
            io,
            sync_each_write,
            file: None,
            file_bytes,
            state,
            unwritten: Vec::new(),
            unwritten_failed: Vec::new(),
            unsynced: false,
            needs_snapshot: false,
            published,
            spare,
        };
        if file_bytes == 0 || damaged > 0 {
            // Start clean with one snapshot of what was read, now or (disk full) at the
            // first write: until then nothing is lost, records are only offered again.
            ledger.needs_snapshot = true;
            let _ = ledger.write();
        }
        Ok((ledger, damaged))
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn watermarks(&self) -> Arc<Watermarks> {
        Arc::clone(&self.published)
    }

    pub fn state(&self) -> &AckState {
        &self.state
    }

    pub fn is_acked(&self, seq: u64) -> bool {
        self.state.is_acked(seq)
    }

    /// Records a confirmation in memory; `write` puts it on disk.
    pub fn ack(&mut self, seq: u64) -> bool {
        let fresh = self.state.ack(seq);
        if fresh {
            self.unwritten.push(seq);
            self.published
                .confirmed
                .store(self.state.watermark, Ordering::Release);
        }
        fresh
    }

    /// Records that this destination failed `seq` (the verdict may still be pending);
    /// `write` puts it on disk.
    pub fn mark_failed(&mut self, seq: u64) {
        if self.state.failed.insert(seq) {
            self.unwritten_failed.push(seq);
        }
    }

    pub fn is_failed(&self, seq: u64) -> bool {
        self.state.failed.contains(seq)
    }

    /// Forgets the failures below `seq`: the log no longer keeps those records.
    pub fn forget_failed_below(&mut self, seq: u64) {
        self.state.failed.remove_below(seq);
    }

    /// Nothing below `seq` exists any more in the log.
    pub fn raise_to(&mut self, seq: u64) {
        if seq > self.state.watermark {
            self.state.raise_to(seq);
            self.needs_snapshot = true;
            self.published
                .confirmed
                .store(self.state.watermark, Ordering::Release);
        }
    }

    /// Confirmations not yet written.
    pub fn has_unwritten(&self) -> bool {
        !self.unwritten.is_empty() || !self.unwritten_failed.is_empty() || self.needs_snapshot
    }

    /// Writes the confirmations gathered since the last call as one frame (synced with
    /// `spool_sync = always`), and publishes the new watermark once it is safe to delete
    /// what lies below it. On error nothing is lost: the same confirmations are written
    /// next time.
    pub fn write(&mut self) -> io::Result<()> {
        if !self.has_unwritten() {
            return Ok(());
        }
        if self.needs_snapshot || self.file_bytes >= COMPACT_BYTES {
            self.compact()?;
        } else {
            let mut frame = Vec::new();
            if !self.unwritten_failed.is_empty() {
                let mut failed = self.unwritten_failed.clone();
                failed.sort_unstable();
                frame.extend(encode_ranges(FAILED, failed));
            }
            if !self.unwritten.is_empty() {
                frame.extend(encode_acks(&self.unwritten));
            }
            if let Err(error) = self.append(&frame) {
                // No room for the frame (a full disk): the snapshot needs none.
                self.compact().map_err(|_| error)?;
            }
        }
        self.unwritten.clear();
        self.unwritten_failed.clear();
        if !self.unsynced {
            self.publish();
        }
        Ok(())
    }

    fn append(&mut self, frame: &[u8]) -> io::Result<()> {
        if self.file.is_none() {
            let file = self.io.open_append(&self.path)?;
            // After a rewrite that failed half-way, the name may hold either file.
            self.file_bytes = file.metadata()?.len();
            self.file = Some(file);
        }
        let file = self.file.as_ref().expect("opened above");
        if let Err(error) = self.io.append(file, frame) {
            // Cut off a partial frame so the next one starts clean; if even that fails,
            // recovery skips it (its checksum fails).
            let _ = self.io.set_len(file, self.file_bytes);
            self.file = None;
            return Err(error);
        }
        self.file_bytes += frame.len() as u64;
        if self.sync_each_write {
            self.io.sync(file)?;
        } else {
            self.unsynced = true;
        }
        Ok(())
    }

    /// Forces written confirmations to disk (interval policy), then publishes them.
    pub fn sync(&mut self) -> io::Result<()> {
        if self.unsynced {
            if let Some(file) = &self.file {
                self.io.sync(file)?;
            }
            self.unsynced = false;
        }
        self.publish();
        Ok(())
    }

    /// Publishes the watermark without syncing (`spool_sync = never`).
    pub fn publish_unsynced(&mut self) {
        self.unsynced = false;
        self.publish();
    }

    fn publish(&self) {
        if self.unwritten.is_empty() {
            self.published
                .durable
                .store(self.state.watermark, Ordering::Release);
        }
    }

    /// Rewrites the file as one snapshot, atomically.
    fn compact(&mut self) -> io::Result<()> {
        let snapshot = encode_snapshot(&self.state);
        // The next frame goes to whichever file the name holds then.
        self.file = None;
        self.spare.rewrite(&self.io, &self.dir, &snapshot)?;
        self.file_bytes = snapshot.len() as u64;
        self.unwritten.clear();
        self.unwritten_failed.clear();
        self.needs_snapshot = false;
        self.unsynced = false;
        self.publish();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_order_acks_advance_the_watermark_once_the_gap_closes() {
        let mut state = AckState::default();
        assert!(state.ack(1));
        assert!(state.ack(2));
        assert_eq!(state.watermark, 0);
        assert!(state.ack(0));
        assert_eq!(state.watermark, 3);
        assert!(state.above.is_empty());
        assert!(!state.ack(1));
    }

    #[test]
    fn frames_replay_and_a_damaged_one_costs_only_its_acks() {
        let mut data = encode_snapshot(&AckState {
            watermark: 10,
            above: [12].into(),
            failed: SeqRanges::default(),
        });
        data.extend(encode_acks(&[10, 11]));
        let second = data.len();
        data.extend(encode_acks(&[20]));
        data.extend(encode_acks(&[13]));
        let clean = scan(&data);
        assert_eq!(clean.state.watermark, 14);
        assert!(clean.state.is_acked(20));
        data[second + FRAME_HEADER_LEN + 2] ^= 1;
        let damaged = scan(&data);
        assert_eq!(damaged.damaged, 1);
        assert_eq!(damaged.state.watermark, 14);
        assert!(!damaged.state.is_acked(20));
    }

    #[test]
    fn failures_survive_a_reopen_and_a_compaction_until_the_log_drops_them() {
        let dir =
            std::env::temp_dir().join(format!("cdr_kafka-ledger-failed-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let io = Io::default();
        let (mut ledger, _) = Ledger::open(io.clone(), &dir, "d", 0, false).unwrap();
        for seq in 0..3 {
            ledger.ack(seq);
        }
        ledger.mark_failed(3);
        ledger.mark_failed(4);
        ledger.ack(4);
        ledger.write().unwrap();
        drop(ledger);
        let (mut ledger, _) = Ledger::open(io.clone(), &dir, "d", 0, false).unwrap();
        assert!(ledger.is_failed(3) && !ledger.is_acked(3));
        assert!(ledger.is_failed(4) && ledger.is_acked(4));
        assert!(!ledger.is_failed(2));
        // A snapshot keeps them.
        ledger.raise_to(1);
        ledger.write().unwrap();
        drop(ledger);
        let (mut ledger, _) = Ledger::open(io.clone(), &dir, "d", 0, false).unwrap();
        assert_eq!(ledger.state().failed.iter().collect::<Vec<_>>(), [3, 4]);
        // The log deleted record 3: its failure goes with it.
        ledger.raise_to(4);
        assert_eq!(ledger.state().failed.iter().collect::<Vec<_>>(), [4]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
