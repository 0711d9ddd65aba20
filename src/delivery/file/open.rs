//! Opening the file destination's file: missing folders are created 0750 and owned like
//! their parent, a new file is created 0640 and given its folder's owner and group (as
//! root this lets an `asterisk` user read what root wrote), and an existing file is
//! measured once (lines and bytes) so count rotation survives a restart. Runs on
//! whichever thread builds or rebuilds the destination.

use std::fs::{self, DirBuilder, File, Metadata, OpenOptions, Permissions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::FileError;

/// Mode of a file the destination creates: the group (Asterisk's) may read it.
pub const FILE_MODE: u32 = 0o640;
/// Mode of a folder the destination creates.
pub const FOLDER_MODE: u32 = 0o750;

/// The file, open for appending, and what it already holds.
pub struct Opened {
    pub file: File,
    /// Which file it is (to notice it was moved or deleted behind our back).
    pub id: (u64, u64),
    pub lines: u64,
    pub bytes: u64,
    /// When it was last written, if it held anything.
    pub modified: Option<SystemTime>,
    /// Made now (its folder entry is not yet on disk).
    pub created: bool,
}

/// Gives `path` the owner and group of `like`; a process that may not give files away
/// (not root) keeps its own.
fn own_like(path: &Path, file: Option<&File>, like: &Metadata) -> io::Result<()> {
    let result = match file {
        Some(file) => std::os::unix::fs::fchown(file, Some(like.uid()), Some(like.gid())),
        None => std::os::unix::fs::chown(path, Some(like.uid()), Some(like.gid())),
    };
    match result {
        Err(error) if error.raw_os_error() == Some(libc::EPERM) => Ok(()),
        other => other,
    }
}

/// Makes sure `dir` exists, creating the missing folders down from the nearest one
/// that exists.
pub fn ensure_folder(dir: &Path) -> Result<Metadata, FileError> {
    let folder_error = |path: &Path, error| FileError::Folder {
        path: path.to_path_buf(),
        error,
    };
    let mut missing: Vec<PathBuf> = Vec::new();
    let mut existing = dir;
    let mut parent_meta = loop {
        match fs::metadata(existing) {
            Ok(meta) if meta.is_dir() => break meta,
            Ok(_) => {
                return Err(folder_error(
                    existing,
                    io::Error::from_raw_os_error(libc::ENOTDIR),
                ))
            }
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                missing.push(existing.to_path_buf());
                existing = existing
                    .parent()
                    .ok_or_else(|| folder_error(existing, error))?;
            }
            Err(error) => return Err(folder_error(existing, error)),
        }
    };
    for folder in missing.iter().rev() {
        match DirBuilder::new().mode(FOLDER_MODE).create(folder) {
            Err(error) if error.kind() != io::ErrorKind::AlreadyExists => {
                return Err(folder_error(folder, error))
            }
            _ => {}
        }
        // Exactly 0750 whatever the umask, owned like the parent.
        fs::set_permissions(folder, Permissions::from_mode(FOLDER_MODE))
            .and_then(|()| own_like(folder, None, &parent_meta))
            .map_err(|error| folder_error(folder, error))?;
        parent_meta = fs::metadata(folder).map_err(|error| folder_error(folder, error))?;
    }
    Ok(parent_meta)
}

fn options() -> OpenOptions {
    let mut options = OpenOptions::new();
    // Not following a symlink: as root, in a folder another user owns. Not waiting on
    // a FIFO: it is refused below.
    options
        .append(true)
        .mode(FILE_MODE)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK);
    options
}

/// What is known of a file opened before: (device, inode), bytes and lines then.
pub type Known = ((u64, u64), u64, u64);

/// Opens `path` for appending, creating it (0640, the folder's owner and group) when
/// missing. A last line left without its newline (a crash while it was written) is
/// ended, so the next record starts a line of its own. Lines are counted from where
/// `known` left off when it is the same file, grown (a rebuild rereads no gigabytes).
pub fn open_append(
    path: &Path,
    folder: &Metadata,
    known: Option<Known>,
) -> Result<Opened, FileError> {
    let open_error = |error| FileError::Open {
        path: path.to_path_buf(),
        error,
    };
    let (file, created) = match options().create_new(true).open(path) {
        Ok(file) => (file, true),
        Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {
            (options().open(path).map_err(open_error)?, false)
        }
        Err(error) => return Err(open_error(error)),
    };
    if created {
        file.set_permissions(Permissions::from_mode(FILE_MODE))
            .and_then(|()| own_like(path, Some(&file), folder))
            .map_err(open_error)?;
    }
    let meta = file.metadata().map_err(open_error)?;
    if !meta.is_file() {
        return Err(open_error(io::Error::other("not a regular file")));
    }
    let mut opened = Opened {
        id: (meta.dev(), meta.ino()),
        lines: 0,
        bytes: meta.len(),
        modified: None,
        created,
        file,
    };
    if opened.bytes > 0 {
        opened.modified = meta.modified().ok();
        let read_error = |error| FileError::Read {
            path: path.to_path_buf(),
            error,
        };
        let (from, lines_before) = match known {
            Some((id, bytes, lines)) if id == opened.id && bytes <= opened.bytes => (bytes, lines),
            _ => (0, 0),
        };
        let (lines, ends_line) = count_lines(path, from, opened.bytes).map_err(read_error)?;
        opened.lines = lines_before + lines;
        if !ends_line {
            opened.file.write_all(b"\n").map_err(read_error)?;
            opened.lines += 1;
            opened.bytes += 1;
        }
    }
    Ok(opened)
}

/// Newlines in bytes `from..to` of the file, and whether the last byte ends a line.
fn count_lines(path: &Path, from: u64, to: u64) -> io::Result<(u64, bool)> {
    let mut file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)?;
    // From the byte before `from`: it says whether the text there ends a line.
    let start = from.saturating_sub(1);
    file.seek(SeekFrom::Start(start))?;
    let mut reader = file.take(to - start);
    let mut buffer = vec![0u8; 64 * 1024];
    let (mut lines, mut last) = (0u64, b'\n');
    let mut counted_from_before = start < from;
    loop {
        let n = match reader.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => n,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(error),
        };
        lines += buffer[..n].iter().filter(|&&b| b == b'\n').count() as u64;
        if counted_from_before {
            // The byte before `from` was counted already.
            lines -= u64::from(buffer[0] == b'\n');
            counted_from_before = false;
        }
        last = buffer[n - 1];
    }
    Ok((lines, last == b'\n'))
}
