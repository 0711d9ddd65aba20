//! Every file operation of the log goes through [`Io`], so tests can make any one of
//! them fail (ENOSPC, EIO, a short write, a failed fsync) or cut the process's state off
//! at any step (a crash: every later operation fails, and the test reopens the folder).
//! In the module, `Io` holds no plan and each operation is the plain system call.
//!
//! Tests may also give the plan a disk of limited room (`fill_disk`): writes that grow a
//! file take room, removing or shrinking one gives it back. Segment files the log keeps
//! open are [`Handle`]s, counted while they live (`kept_files`), so that tests can bound
//! the descriptors the log holds; the count is shared by every clone of one `Io`.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::ops::Deref;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// The file operations the log performs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Open,
    Create,
    Read,
    Write,
    SetLen,
    Sync,
    SyncDir,
    Rename,
    Remove,
    /// `fallocate`: reserving a file's blocks.
    Allocate,
    /// A hard link.
    Link,
}

/// What an injected fault does to the operation it hits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The call fails with this errno (ENOSPC, EIO, EMFILE...).
    Errno(i32),
    /// A write puts only this many bytes down, then fails with ENOSPC.
    Short(usize),
    /// The process dies here: this and every later operation fail, nothing more
    /// reaches the files.
    Crash,
}

/// A plan of faults: the `n`th operation (counted from 0, optionally only of one kind)
/// gets `fault`.
#[derive(Debug, Default)]
pub struct FaultPlan {
    counted: u64,
    crashed: bool,
    faults: Vec<(u64, Option<Op>, Fault)>,
    /// Bytes the disk has left, once `fill_disk` was called; unbounded before.
    room: Option<u64>,
}

impl FaultPlan {
    pub fn at(mut self, n: u64, only: Option<Op>, fault: Fault) -> Self {
        self.faults.push((n, only, fault));
        self
    }
}

#[derive(Clone, Default)]
pub struct Io {
    plan: Option<Arc<Mutex<FaultPlan>>>,
    kept: Arc<AtomicUsize>,
}

/// A file the log keeps open (a segment), counted while it lives.
#[derive(Debug)]
pub struct Handle {
    file: File,
    kept: Arc<AtomicUsize>,
}

impl Deref for Handle {
    type Target = File;

    fn deref(&self) -> &File {
        &self.file
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.kept.fetch_sub(1, Ordering::Relaxed);
    }
}

fn crashed() -> io::Error {
    io::Error::other("crashed (injected)")
}

fn no_room() -> io::Error {
    io::Error::from_raw_os_error(libc::ENOSPC)
}

impl Io {
    /// Plain system calls.
    pub fn real() -> Self {
        Self::default()
    }

    /// System calls with faults injected as `plan` says.
    pub fn with_faults(plan: FaultPlan) -> Self {
        Self {
            plan: Some(Arc::new(Mutex::new(plan))),
            kept: Arc::default(),
        }
    }

    /// Operations counted so far (to place a fault at every step in turn).
    pub fn operations(&self) -> u64 {
        self.plan
            .as_ref()
            .map_or(0, |plan| plan.lock().map_or(0, |p| p.counted))
    }

    /// Plans a crash `more` operations from now (the model test's crash at any point).
    pub fn crash_after(&self, more: u64) {
        if let Some(plan) = &self.plan {
            let mut plan = plan.lock().unwrap_or_else(|p| p.into_inner());
            let at = plan.counted + more;
            plan.faults.push((at, None, Fault::Crash));
        }
    }

    /// From now on the disk has `bytes` left: a write that grows a file past them fails
    /// with ENOSPC; removing or shrinking a file gives its bytes back (tests only).
    pub fn set_room(&self, bytes: u64) {
        if let Some(plan) = &self.plan {
            self.lock_plan(plan).room = Some(bytes);
        }
    }

    /// From now on the disk is full (`set_room(0)`).
    pub fn fill_disk(&self) {
        self.set_room(0);
    }

    /// Bytes the disk has left, if it is bounded (`set_room`).
    pub fn room(&self) -> Option<u64> {
        self.plan
            .as_ref()
            .and_then(|plan| self.lock_plan(plan).room)
    }

    /// Segment files kept open now (by the log and its readers).
    pub fn kept_files(&self) -> usize {
        self.kept.load(Ordering::Relaxed)
    }

    /// Keeps `file` open as a counted [`Handle`].
    pub fn keep(&self, file: File) -> Handle {
        self.kept.fetch_add(1, Ordering::Relaxed);
        Handle {
            file,
            kept: Arc::clone(&self.kept),
        }
    }

    fn lock_plan<'a>(&self, plan: &'a Mutex<FaultPlan>) -> MutexGuard<'a, FaultPlan> {
        plan.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes the room a file growing from `size` to `end` needs, on a bounded disk.
    fn take_room(&self, size: impl FnOnce() -> io::Result<u64>, end: u64) -> io::Result<()> {
        let Some(plan) = &self.plan else {
            return Ok(());
        };
        let mut plan = self.lock_plan(plan);
        if let Some(room) = plan.room {
            let grows = end.saturating_sub(size()?);
            if grows > room {
                return Err(no_room());
            }
            plan.room = Some(room - grows);
        }
        Ok(())
    }

    /// Gives back the bytes of the file at `path`, about to be unlinked, on a bounded disk.
    fn give_room(&self, path: &Path) {
        let Some(plan) = &self.plan else { return };
        let mut plan = self.lock_plan(plan);
        if let (Some(room), Ok(meta)) = (plan.room, fs::symlink_metadata(path)) {
            // Another name keeps the blocks.
            if meta.nlink() == 1 {
                plan.room = Some(room + meta.len());
            }
        }
    }

    pub fn has_crashed(&self) -> bool {
        self.plan
            .as_ref()
            .is_some_and(|plan| plan.lock().is_ok_and(|p| p.crashed))
    }

    fn check(&self, op: Op) -> io::Result<Option<usize>> {
        let Some(plan) = &self.plan else {
            return Ok(None);
        };
        let mut plan = plan.lock().unwrap_or_else(|p| p.into_inner());
        if plan.crashed {
            return Err(crashed());
        }
        let n = plan.counted;
        plan.counted += 1;
        let hit = plan
            .faults
            .iter()
            .find(|(at, only, _)| *at == n && only.is_none_or(|o| o == op))
            .map(|&(_, _, fault)| fault);
        match hit {
            None => Ok(None),
            Some(Fault::Errno(errno)) => Err(io::Error::from_raw_os_error(errno)),
            Some(Fault::Short(n)) if op == Op::Write => Ok(Some(n)),
            Some(Fault::Short(_)) => Err(io::Error::from_raw_os_error(libc::ENOSPC)),
            Some(Fault::Crash) => {
                plan.crashed = true;
                Err(crashed())
            }
        }
    }

    fn open_with(&self, op: Op, path: &Path, options: &mut OpenOptions) -> io::Result<File> {
        self.check(op)?;
        options
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)
    }

    /// A new private file; fails if it exists.
    pub fn create_new(&self, path: &Path) -> io::Result<File> {
        self.open_with(
            Op::Create,
            path,
            OpenOptions::new().read(true).write(true).create_new(true),
        )
    }

    /// A private file, created when missing, for appending.
    pub fn open_append(&self, path: &Path) -> io::Result<File> {
        self.open_with(
            Op::Create,
            path,
            OpenOptions::new().create(true).append(true),
        )
    }

    pub fn open_read(&self, path: &Path) -> io::Result<File> {
        self.open_with(Op::Open, path, OpenOptions::new().read(true))
    }

    pub fn open_write(&self, path: &Path) -> io::Result<File> {
        self.open_with(Op::Open, path, OpenOptions::new().read(true).write(true))
    }

    /// Writes all of `bytes` at `offset`.
    pub fn write_at(&self, file: &File, bytes: &[u8], offset: u64) -> io::Result<()> {
        let fault = self.check(Op::Write)?;
        self.take_room(|| Ok(file.metadata()?.len()), offset + bytes.len() as u64)?;
        match fault {
            None => file.write_all_at(bytes, offset),
            Some(short) => {
                file.write_all_at(&bytes[..short.min(bytes.len())], offset)?;
                Err(io::Error::from_raw_os_error(libc::ENOSPC))
            }
        }
    }

    /// Writes `len` zeros at `offset` (a write per 64 KiB).
    pub fn write_zeros(&self, file: &File, offset: u64, len: u64) -> io::Result<()> {
        static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];
        let end = offset + len;
        let mut at = offset;
        while at < end {
            let n = (end - at).min(ZEROS.len() as u64) as usize;
            self.write_at(file, &ZEROS[..n], at)?;
            at += n as u64;
        }
        Ok(())
    }

    /// Appends all of `bytes` to a file opened for appending.
    pub fn append(&self, mut file: &File, bytes: &[u8]) -> io::Result<()> {
        use std::io::Write;
        let fault = self.check(Op::Write)?;
        self.take_room(|| Ok(0), bytes.len() as u64)?;
        match fault {
            None => file.write_all(bytes),
            Some(short) => {
                file.write_all(&bytes[..short.min(bytes.len())])?;
                Err(io::Error::from_raw_os_error(libc::ENOSPC))
            }
        }
    }

    pub fn set_len(&self, file: &File, len: u64) -> io::Result<()> {
        self.check(Op::SetLen)?;
        let size = file.metadata()?.len();
        self.take_room(|| Ok(size), len)?;
        if let (Some(plan), true) = (&self.plan, len < size) {
            let mut plan = self.lock_plan(plan);
            plan.room = plan.room.map(|room| room + (size - len));
        }
        file.set_len(len)
    }

    /// Reserves the blocks of a file's first `len` bytes (it grows to `len` if shorter,
    /// with zeros): writes within them never need room the disk may no longer have.
    pub fn allocate(&self, file: &File, len: u64) -> io::Result<()> {
        self.check(Op::Allocate)?;
        self.take_room(|| Ok(file.metadata()?.len()), len)?;
        let length =
            libc::off_t::try_from(len).map_err(|_| io::Error::from_raw_os_error(libc::EFBIG))?;
        // SAFETY: fallocate on a descriptor this `File` owns; no memory is shared.
        if unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, length) } == 0 {
            return Ok(());
        }
        let error = io::Error::last_os_error();
        if error.raw_os_error() != Some(libc::EOPNOTSUPP) {
            return Err(error);
        }
        // A filesystem without fallocate: zeros written over what is missing take the room.
        let size = file.metadata()?.len();
        let zeros = vec![0u8; 64 * 1024];
        let mut at = size;
        while at < len {
            let n = (len - at).min(zeros.len() as u64) as usize;
            file.write_all_at(&zeros[..n], at)?;
            at += n as u64;
        }
        Ok(())
    }

    /// A second name for a file (its blocks stay while either name does).
    pub fn hard_link(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.check(Op::Link)?;
        fs::hard_link(from, to)
    }

    pub fn sync(&self, file: &File) -> io::Result<()> {
        self.check(Op::Sync)?;
        file.sync_data()
    }

    /// Makes the folder's entries (files created, renamed, removed) durable.
    pub fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.check(Op::SyncDir)?;
        File::open(dir)?.sync_all()
    }

    pub fn read_at(&self, file: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.check(Op::Read)?;
        file.read_exact_at(buf, offset)
    }

    pub fn read_all(&self, path: &Path) -> io::Result<Vec<u8>> {
        use std::io::Read;
        let mut file = self.open_read(path)?;
        self.check(Op::Read)?;
        let mut data = Vec::new();
        file.read_to_end(&mut data)?;
        Ok(data)
    }

    pub fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.check(Op::Rename)?;
        let same = fs::symlink_metadata(from)
            .and_then(|a| {
                fs::symlink_metadata(to).map(|b| (a.dev(), a.ino()) == (b.dev(), b.ino()))
            })
            .unwrap_or(false);
        if !same {
            self.give_room(to);
        }
        fs::rename(from, to)
    }

    pub fn remove(&self, path: &Path) -> io::Result<()> {
        self.check(Op::Remove)?;
        self.give_room(path);
        match fs::remove_file(path) {
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }
}
