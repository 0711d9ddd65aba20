//! The log's folder: private to the module (0700), never a folder someone else owns
//! or shares, and held by one module instance at a time (flock on `lock`).

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use super::LogError;

/// The subfolder used inside a `spool_dir` that is shared or not the module's own.
pub const OWN_SUBFOLDER: &str = "cdr_kafka";

fn io_error(what: String) -> impl FnOnce(std::io::Error) -> LogError {
    move |error| LogError::Io { what, error }
}

/// A folder is the module's own when this user owns it and nobody else may write or
/// read in it.
fn is_own(meta: &fs::Metadata) -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    meta.uid() == euid && meta.mode() & 0o077 == 0
}

fn create_private(dir: &Path) -> Result<(), LogError> {
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io_error(format!("creating spool folder {}", dir.display())))
}

/// The folder the log lives in for `spool_dir = dir`: `dir` itself when it is missing
/// (created 0700) or already the module's own; its subfolder `cdr_kafka` when `dir` is
/// shared or someone else's (e.g. /tmp or /var/spool). Nothing is ever chmod'ed.
pub fn prepare(dir: &Path) -> Result<PathBuf, LogError> {
    match fs::symlink_metadata(dir) {
        Ok(meta) if meta.file_type().is_symlink() || !meta.is_dir() => {
            Err(LogError::NotAFolder { dir: dir.into() })
        }
        Ok(meta) if is_own(&meta) => Ok(dir.to_path_buf()),
        Ok(_) => {
            let own = dir.join(OWN_SUBFOLDER);
            match fs::symlink_metadata(&own) {
                Ok(meta) if meta.file_type().is_symlink() || !meta.is_dir() => {
                    Err(LogError::NotAFolder { dir: own })
                }
                Ok(meta) if is_own(&meta) => Ok(own),
                Ok(_) => Err(LogError::NotPrivate { dir: own }),
                Err(_) => {
                    create_private(&own)?;
                    Ok(own)
                }
            }
        }
        Err(_) => {
            create_private(dir)?;
            Ok(dir.to_path_buf())
        }
    }
}

/// Takes the folder's lock, or says which process holds it.
pub fn take_lock(dir: &Path) -> Result<File, LogError> {
    let path = dir.join("lock");
    let mut file = OpenOptions::new()
        .create(true)
        .read(true)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&path)
        .map_err(io_error(format!("opening {}", path.display())))?;
    // SAFETY: flock on a descriptor we own; no memory is shared with the kernel call.
    let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0;
    if !locked {
        let mut holder = String::new();
        let _ = file.read_to_string(&mut holder);
        return Err(LogError::Locked {
            dir: dir.into(),
            holder: format!("pid {}", holder.trim()),
        });
    }
    let _ = file.set_len(0);
    let _ = file.write_all(std::process::id().to_string().as_bytes());
    Ok(file)
}
