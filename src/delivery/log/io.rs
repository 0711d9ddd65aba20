//! Every file operation of the log goes through [`Io`], so tests can make any one of
//! them fail (ENOSPC, EIO, a short write, a failed fsync) or cut the process's state off
//! at any step (a crash: every later operation fails, and the test reopens the folder).
//! In the module, `Io` holds no plan and each operation is the plain system call.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::{Arc, Mutex};

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
}

fn crashed() -> io::Error {
    io::Error::other("crashed (injected)")
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
        match self.check(Op::Write)? {
            None => file.write_all_at(bytes, offset),
            Some(short) => {
                file.write_all_at(&bytes[..short.min(bytes.len())], offset)?;
                Err(io::Error::from_raw_os_error(libc::ENOSPC))
            }
        }
    }

    /// Appends all of `bytes` to a file opened for appending.
    pub fn append(&self, mut file: &File, bytes: &[u8]) -> io::Result<()> {
        use std::io::Write;
        match self.check(Op::Write)? {
            None => file.write_all(bytes),
            Some(short) => {
                file.write_all(&bytes[..short.min(bytes.len())])?;
                Err(io::Error::from_raw_os_error(libc::ENOSPC))
            }
        }
    }

    pub fn set_len(&self, file: &File, len: u64) -> io::Result<()> {
        self.check(Op::SetLen)?;
        file.set_len(len)
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
        fs::rename(from, to)
    }

    pub fn remove(&self, path: &Path) -> io::Result<()> {
        self.check(Op::Remove)?;
        match fs::remove_file(path) {
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }
}
