//! Rewriting a ledger as one snapshot, also on a full disk. Each ledger `NAME.ledger`
//! has a spare beside it, `NAME.ledger.new`, whose blocks are reserved (`fallocate`,
//! `SPARE_BYTES`) while there is room. A rewrite puts the snapshot into the spare's own
//! blocks, cuts it to length, syncs it and renames it over the ledger; the old ledger,
//! linked as `NAME.ledger.prev` just before, keeps its blocks and becomes the next spare.
//! So a rewrite never needs a block the disk may no longer have: confirmations become
//! durable, delivered segments are deleted, and the disk is given back.
//!
//! A crash between the link and the last rename leaves `NAME.ledger.prev`: it is the
//! spare the next `prepare` takes. Runs on the ledger's owner's thread (its feeder).

use std::io;
use std::path::{Path, PathBuf};

use super::io::Io;

/// Room reserved for a snapshot: a watermark and about 5,000 ranges confirmed out of
/// order above it.
pub const SPARE_BYTES: u64 = 64 * 1024;

/// The spare of one ledger.
pub(super) struct Spare {
    ledger: PathBuf,
    path: PathBuf,
    previous: PathBuf,
    /// The spare file exists (its blocks, reserved or an old ledger's, hold a snapshot).
    ready: bool,
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

impl Spare {
    /// The spare of the ledger at `ledger`, made ready (or tried: a full disk leaves it
    /// for the next rewrite, which then needs room).
    pub(super) fn prepare(io: &Io, ledger: &Path) -> Self {
        let mut spare = Self {
            ledger: ledger.to_path_buf(),
            path: with_suffix(ledger, ".new"),
            previous: with_suffix(ledger, ".prev"),
            ready: false,
        };
        // An interrupted rewrite's old ledger: a spare with its blocks.
        if io.rename(&spare.previous, &spare.path).is_ok() {
            spare.ready = true;
        }
        spare.reserve(io);
        spare
    }

    /// Reserves the spare's blocks; what is already there stays usable when the disk
    /// has no room for more.
    fn reserve(&mut self, io: &Io) {
        let file = match io.open_write(&self.path) {
            Ok(file) => file,
            Err(_) => match io.create_new(&self.path) {
                Ok(file) => file,
                Err(_) => return,
            },
        };
        self.ready = true;
        let _ = io.allocate(&file, SPARE_BYTES);
    }

    /// Replaces the ledger's content by `snapshot`, synced, folder synced. On error the
    /// ledger holds its old content or the snapshot (both right: confirmations only grow).
    pub(super) fn rewrite(&mut self, io: &Io, dir: &Path, snapshot: &[u8]) -> io::Result<()> {
        if !self.ready {
            // No spare (the disk was full since it was used): this needs room.
            self.reserve(io);
        }
        let file = io
            .open_write(&self.path)
            .inspect_err(|_| self.ready = false)?;
        io.write_at(&file, snapshot, 0)?;
        io.set_len(&file, snapshot.len() as u64)?;
        io.sync(&file)?;
        drop(file);
        io.remove(&self.previous)?;
        let kept = io.hard_link(&self.ledger, &self.previous).is_ok();
        if let Err(error) = io.rename(&self.path, &self.ledger) {
            if kept {
                let _ = io.remove(&self.previous);
            }
            return Err(error);
        }
        self.ready = kept && io.rename(&self.previous, &self.path).is_ok();
        io.sync_dir(dir)?;
        // Back to the full reservation if there is room (an old ledger may be smaller).
        self.reserve(io);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::log::io::FaultPlan;
    use crate::delivery::log::tests::TempDir;
    use std::fs;

    #[test]
    fn rewrite_on_a_full_disk_uses_the_spare_and_the_old_ledger_becomes_the_next_one() {
        let dir = TempDir::new("spare");
        fs::create_dir_all(&dir.0).unwrap();
        let ledger = dir.0.join("global.ledger");
        fs::write(&ledger, vec![7u8; 300]).unwrap();
        let io = Io::with_faults(FaultPlan::default());
        let mut spare = Spare::prepare(&io, &ledger);
        io.fill_disk();
        for round in 1..=3u8 {
            let snapshot = vec![round; 100];
            spare.rewrite(&io, &dir.0, &snapshot).unwrap();
            assert_eq!(fs::read(&ledger).unwrap(), snapshot);
            assert!(spare.path.exists(), "round {round}: a spare is left");
        }
        assert!(!spare.previous.exists());
    }
}
