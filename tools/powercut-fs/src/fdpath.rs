//! Paths through `/proc/self/fd`: how the filesystem names backing files by open descriptor
//! rather than by path, so that renames (of the file or of any directory above it) never leave
//! it holding a stale name.
//!
//! Every inode the kernel knows is held as an `O_PATH` descriptor; `/proc/self/fd/N` reopens it
//! and `/proc/self/fd/N/name` reaches an entry of the directory it is.

use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::fcntl::OFlag;

/// The path of what `file` is open on, whatever it is called now.
pub(crate) fn of(file: &File) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()))
}

/// The path of the entry `name` in the directory `dir` is open on.
pub(crate) fn child(dir: &File, name: &OsStr) -> PathBuf {
    let mut path = of(dir);
    path.push(name);
    path
}

/// An `O_PATH` descriptor on `path` itself (not following a final symlink): names the inode
/// without opening it for I/O.
pub(crate) fn hold(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags((OFlag::O_PATH | OFlag::O_NOFOLLOW).bits())
        .open(path)
}

/// A new read-write descriptor on the file `file` is open on (any mode, even `O_PATH`).
pub(crate) fn reopen_rw(file: &File) -> io::Result<File> {
    OpenOptions::new().read(true).write(true).open(of(file))
}
