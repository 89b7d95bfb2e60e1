//! What is not durable yet, and how to take it back when the power is cut.
//!
//! The backing directory always holds the *latest* state (what the page cache would show); this
//! module records just enough to roll it back to the *durable* state:
//!
//! - per file, keyed by the backing inode (so renames do not matter) and holding its own
//!   read-write descriptor: the length it had when last made durable, and the durable bytes of
//!   every range overwritten or truncated away since, saved once before the first change
//!   (copy-on-write of the old content; appends cost nothing);
//! - the last write, so that a cut can keep a prefix of it (a torn write);
//! - with [`MetadataDurability::OnDirSync`], the namespace operations since the last directory
//!   fsync, in order, with what undoes each: removed and replaced entries are parked in the
//!   hidden trash directory instead of being deleted, and deleted for real at the commit.
//!
//! Invariants: every change to a tracked file's content or length goes through
//! [`Volatile::before_write`] or [`Volatile::before_set_len`] first, so a file without a record is
//! durable as it stands; saved ranges never overlap and lie within the durable length; the journal
//! is exactly the suffix of namespace operations after the last commit, so undoing it in reverse
//! order always finds each name where its operation left it.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::{fdpath, CutReport, MetadataDurability, Tear, TornWrite};

/// A backing inode: (device, inode number).
pub(crate) type Key = (u64, u64);

pub(crate) fn key_of(metadata: &fs::Metadata) -> Key {
    (metadata.dev(), metadata.ino())
}

pub(crate) struct Volatile {
    model: MetadataDurability,
    /// False after a clean shutdown: everything then passes straight through.
    tracking: bool,
    files: HashMap<Key, DirtyFile>,
    last_write: Option<LastWrite>,
    journal: Vec<NsOp>,
    trash: Trash,
}

/// A file changed since it was last made durable.
struct DirtyFile {
    /// Read-write, on the inode itself: still valid after renames and unlinks.
    file: File,
    durable_len: u64,
    /// Durable content of changed ranges, by offset; non-overlapping, within `durable_len`.
    saved: BTreeMap<u64, Vec<u8>>,
}

struct LastWrite {
    key: Key,
    offset: u64,
    data: Vec<u8>,
}

/// A namespace operation not yet durable, with what undoes it. Directories are held open
/// (`O_PATH`) so that later renames of them do not matter.
enum NsOp {
    Created {
        parent: Arc<File>,
        name: OsString,
    },
    Removed {
        parent: Arc<File>,
        name: OsString,
        parked: OsString,
    },
    Renamed {
        from_parent: Arc<File>,
        from_name: OsString,
        to_parent: Arc<File>,
        to_name: OsString,
        /// What the rename replaced, parked in the trash.
        parked: Option<OsString>,
    },
}

/// The hidden directory where removed entries wait until their removal is durable.
pub(crate) struct Trash {
    /// The real path, for removing the directory itself (a `/proc/self/fd` path would name
    /// the magic link instead).
    path: PathBuf,
    dir: File,
    next: u64,
}

impl Trash {
    /// Empties (from an earlier, aborted run) or creates the trash at `path`.
    pub(crate) fn prepare(path: &Path) -> io::Result<Trash> {
        match fs::remove_dir_all(path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        fs::create_dir(path)?;
        Ok(Trash {
            path: path.to_owned(),
            dir: fdpath::hold(path)?,
            next: 0,
        })
    }

    fn path(&self, parked: &OsStr) -> PathBuf {
        fdpath::child(&self.dir, parked)
    }

    /// Moves the entry at `path` into the trash; returns its name there.
    fn park(&mut self, path: &Path) -> io::Result<OsString> {
        let parked = OsString::from(self.next.to_string());
        self.next += 1;
        fs::rename(path, self.path(&parked))?;
        Ok(parked)
    }

    /// Deletes a parked entry for good; returns its key.
    fn purge(&self, parked: &OsStr) -> io::Result<Key> {
        remove_any(&self.path(parked))
    }

    /// Removes the trash directory itself (empty after a commit or a cut).
    fn remove(&self) -> io::Result<()> {
        fs::remove_dir_all(&self.path)
    }
}

impl DirtyFile {
    fn open(file: File) -> io::Result<DirtyFile> {
        let durable_len = file.metadata()?.len();
        Ok(DirtyFile {
            file,
            durable_len,
            saved: BTreeMap::new(),
        })
    }

    /// Saves the durable bytes of `start..end` that are not saved yet.
    fn save(&mut self, start: u64, end: u64) -> io::Result<()> {
        let end = end.min(self.durable_len);
        let mut at = start;
        if let Some((&from, old)) = self.saved.range(..=at).next_back() {
            at = at.max(from + old.len() as u64);
        }
        if at >= end {
            return Ok(());
        }
        let mut gaps = Vec::new();
        for (&from, old) in self.saved.range(at..end) {
            if from > at {
                gaps.push((at, from));
            }
            at = at.max(from + old.len() as u64);
        }
        if at < end {
            gaps.push((at, end));
        }
        for (from, to) in gaps {
            let len = usize::try_from(to - from).map_err(io::Error::other)?;
            let mut old = vec![0; len];
            self.file.read_exact_at(&mut old, from)?;
            self.saved.insert(from, old);
        }
        Ok(())
    }

    /// Puts the durable content and length back; returns the bytes written back.
    fn restore(&self) -> io::Result<u64> {
        let mut restored = 0;
        for (&at, old) in &self.saved {
            self.file.write_all_at(old, at)?;
            restored += old.len() as u64;
        }
        self.file.set_len(self.durable_len)?;
        Ok(restored)
    }
}

impl Volatile {
    pub(crate) fn new(model: MetadataDurability, trash: Trash) -> Volatile {
        Volatile {
            model,
            tracking: true,
            files: HashMap::new(),
            last_write: None,
            journal: Vec::new(),
            trash,
        }
    }

    fn journaling(&self) -> bool {
        self.tracking && self.model == MetadataDurability::OnDirSync
    }

    fn dirty(
        &mut self,
        key: Key,
        reopen: impl FnOnce() -> io::Result<File>,
    ) -> io::Result<&mut DirtyFile> {
        Ok(match self.files.entry(key) {
            Entry::Occupied(entry) => entry.into_mut(),
            Entry::Vacant(entry) => entry.insert(DirtyFile::open(reopen()?)?),
        })
    }

    /// To call before writing `len` bytes at `offset` into the file `key`; `reopen` gives a
    /// read-write descriptor on it the first time it changes.
    pub(crate) fn before_write(
        &mut self,
        key: Key,
        reopen: impl FnOnce() -> io::Result<File>,
        offset: u64,
        len: u64,
    ) -> io::Result<()> {
        if !self.tracking {
            return Ok(());
        }
        self.dirty(key, reopen)?
            .save(offset, offset.saturating_add(len))
    }

    /// To call once `data` is written at `offset`: it is now the last write.
    pub(crate) fn wrote(&mut self, key: Key, offset: u64, data: &[u8]) {
        if !self.tracking {
            return;
        }
        // One buffer, reused: copying each write is cheap, allocating for each is not.
        let mut copy = self.last_write.take().map(|w| w.data).unwrap_or_default();
        copy.clear();
        copy.extend_from_slice(data);
        self.last_write = Some(LastWrite {
            key,
            offset,
            data: copy,
        });
    }

    /// To call before setting the length of the file `key` to `len`.
    pub(crate) fn before_set_len(
        &mut self,
        key: Key,
        reopen: impl FnOnce() -> io::Result<File>,
        len: u64,
    ) -> io::Result<()> {
        if !self.tracking {
            return Ok(());
        }
        let dirty = self.dirty(key, reopen)?;
        let current = dirty.file.metadata()?.len();
        dirty.save(len, current)?;
        // The last write may be cut short now: there is no longer a write to tear.
        if self.last_write.as_ref().is_some_and(|w| w.key == key) {
            self.last_write = None;
        }
        Ok(())
    }

    /// The file `key` was fsynced: its content and length are durable.
    pub(crate) fn file_synced(&mut self, key: Key) {
        self.files.remove(&key);
        if self.last_write.as_ref().is_some_and(|w| w.key == key) {
            self.last_write = None;
        }
    }

    /// A directory was fsynced: every namespace operation so far is durable.
    pub(crate) fn dirs_synced(&mut self) -> io::Result<()> {
        let mut result = Ok(());
        for op in std::mem::take(&mut self.journal) {
            let parked = match op {
                NsOp::Removed { parked, .. } => parked,
                NsOp::Renamed {
                    parked: Some(parked),
                    ..
                } => parked,
                NsOp::Created { .. } | NsOp::Renamed { parked: None, .. } => continue,
            };
            match self.trash.purge(&parked) {
                Ok(key) => self.forget_if_orphan(key),
                Err(e) => result = result.and(Err(e)),
            }
        }
        result
    }

    /// `name` was just created (file or directory) in `parent`.
    pub(crate) fn created(&mut self, parent: &Arc<File>, name: &OsStr) {
        if self.journaling() {
            self.journal.push(NsOp::Created {
                parent: parent.clone(),
                name: name.to_owned(),
            });
        }
    }

    /// Unlinks (`dir` false) or removes the empty directory (`dir` true) `name` in `parent`.
    pub(crate) fn remove(&mut self, parent: &Arc<File>, name: &OsStr, dir: bool) -> io::Result<()> {
        let path = fdpath::child(parent, name);
        let metadata = fs::symlink_metadata(&path)?;
        match (dir, metadata.is_dir()) {
            (true, false) => return Err(errno(nix::errno::Errno::ENOTDIR)),
            (false, true) => return Err(errno(nix::errno::Errno::EISDIR)),
            _ => {}
        }
        if !self.journaling() {
            if dir {
                fs::remove_dir(&path)?;
            } else {
                fs::remove_file(&path)?;
            }
            self.forget_if_orphan(key_of(&metadata));
            return Ok(());
        }
        if dir && fs::read_dir(&path)?.next().is_some() {
            return Err(errno(nix::errno::Errno::ENOTEMPTY));
        }
        let parked = self.trash.park(&path)?;
        self.journal.push(NsOp::Removed {
            parent: parent.clone(),
            name: name.to_owned(),
            parked,
        });
        Ok(())
    }

    /// Renames `from_name` in `from_parent` to `to_name` in `to_parent`, replacing what was there.
    pub(crate) fn rename(
        &mut self,
        from_parent: &Arc<File>,
        from_name: &OsStr,
        to_parent: &Arc<File>,
        to_name: &OsStr,
    ) -> io::Result<()> {
        let from = fdpath::child(from_parent, from_name);
        let to = fdpath::child(to_parent, to_name);
        let source = fs::symlink_metadata(&from)?;
        let target = match fs::symlink_metadata(&to) {
            Ok(metadata) => Some(metadata),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        if target.as_ref().map(key_of) == Some(key_of(&source)) {
            // Two names of one file: rename(2) does nothing.
            return Ok(());
        }
        if !self.journaling() {
            fs::rename(&from, &to)?;
            if let Some(target) = target {
                self.forget_if_orphan(key_of(&target));
            }
            return Ok(());
        }
        let parked = match &target {
            None => None,
            Some(target) => {
                match (source.is_dir(), target.is_dir()) {
                    (true, false) => return Err(errno(nix::errno::Errno::ENOTDIR)),
                    (false, true) => return Err(errno(nix::errno::Errno::EISDIR)),
                    _ => {}
                }
                if target.is_dir() && fs::read_dir(&to)?.next().is_some() {
                    return Err(errno(nix::errno::Errno::ENOTEMPTY));
                }
                Some(self.trash.park(&to)?)
            }
        };
        if let Err(e) = fs::rename(&from, &to) {
            if let Some(parked) = &parked {
                // Put the target back; if even that fails, the error below is what matters.
                let _ = fs::rename(self.trash.path(parked), &to);
            }
            return Err(e);
        }
        self.journal.push(NsOp::Renamed {
            from_parent: from_parent.clone(),
            from_name: from_name.to_owned(),
            to_parent: to_parent.clone(),
            to_name: to_name.to_owned(),
            parked,
        });
        Ok(())
    }

    /// The power cut: rolls the backing directory back to its durable state, keeping of the last
    /// write what `tear` says. Goes on after an error, and returns the first one.
    pub(crate) fn cut(&mut self, tear: Tear) -> io::Result<CutReport> {
        let mut report = CutReport::default();
        let mut result = Ok(());
        let torn = match tear {
            Tear::None => None,
            Tear::RandomPrefix | Tear::Prefix(_) => self.last_write.take(),
        };
        // The torn write's file, still open once its record is gone.
        let torn_file = torn
            .as_ref()
            .and_then(|w| self.files.get(&w.key))
            .map(|dirty| dirty.file.try_clone());
        for dirty in std::mem::take(&mut self.files).into_values() {
            match dirty.restore() {
                Ok(bytes) => {
                    report.files_rolled_back += 1;
                    report.bytes_restored += bytes;
                }
                Err(e) => result = result.and(Err(e)),
            }
        }
        if let (Some(write), Some(file)) = (torn, torn_file) {
            let kept = match tear {
                Tear::Prefix(n) => n.min(write.data.len()),
                _ if write.data.is_empty() => 0,
                _ => fastrand::usize(..write.data.len()),
            };
            match file.and_then(|f| f.write_all_at(&write.data[..kept], write.offset)) {
                Ok(()) => {
                    report.torn = Some(TornWrite {
                        offset: write.offset,
                        len: write.data.len(),
                        kept,
                    })
                }
                Err(e) => result = result.and(Err(e)),
            }
        }
        for op in std::mem::take(&mut self.journal).into_iter().rev() {
            match self.undo(op) {
                Ok(()) => report.namespace_ops_undone += 1,
                Err(e) => result = result.and(Err(e)),
            }
        }
        self.last_write = None;
        self.tracking = false;
        result = result.and(self.trash.remove());
        result.map(|()| report)
    }

    fn undo(&self, op: NsOp) -> io::Result<()> {
        match op {
            NsOp::Created { parent, name } => remove_any(&fdpath::child(&parent, &name)).map(drop),
            NsOp::Removed {
                parent,
                name,
                parked,
            } => fs::rename(self.trash.path(&parked), fdpath::child(&parent, &name)),
            NsOp::Renamed {
                from_parent,
                from_name,
                to_parent,
                to_name,
                parked,
            } => {
                let to = fdpath::child(&to_parent, &to_name);
                fs::rename(&to, fdpath::child(&from_parent, &from_name))?;
                match parked {
                    Some(parked) => fs::rename(self.trash.path(&parked), &to),
                    None => Ok(()),
                }
            }
        }
    }

    /// An orderly shutdown: everything is durable, and nothing is tracked from now on.
    pub(crate) fn settle(&mut self) -> io::Result<()> {
        if !self.tracking {
            return Ok(());
        }
        self.files.clear();
        self.last_write = None;
        let committed = self.dirs_synced();
        self.tracking = false;
        committed.and(self.trash.remove())
    }

    /// Stops tracking a file no name leads to any more: no cut can make it visible again.
    fn forget_if_orphan(&mut self, key: Key) {
        let orphan = self
            .files
            .get(&key)
            .is_some_and(|dirty| dirty.file.metadata().is_ok_and(|m| m.nlink() == 0));
        if orphan {
            self.file_synced(key);
        }
    }
}

/// Removes a file, or a directory with all it holds; returns its key.
fn remove_any(path: &Path) -> io::Result<Key> {
    let metadata = fs::symlink_metadata(path)?;
    if metadata.is_dir() {
        fs::remove_dir_all(path)?;
    } else {
        fs::remove_file(path)?;
    }
    Ok(key_of(&metadata))
}

fn errno(errno: nix::errno::Errno) -> io::Error {
    io::Error::from_raw_os_error(errno as i32)
}

#[cfg(test)]
mod tests {
    //! The rollback on a plain directory, driven the way the filesystem drives it (tell first,
    //! then change): runs without root or FUSE.

    use super::*;

    struct Dir {
        tmp: tempfile::TempDir,
        root: Arc<File>,
        volatile: Volatile,
    }

    impl Dir {
        fn new(model: MetadataDurability) -> Dir {
            let tmp = tempfile::tempdir().unwrap();
            let trash = Trash::prepare(&tmp.path().join(crate::TRASH_NAME)).unwrap();
            let root = Arc::new(fdpath::hold(tmp.path()).unwrap());
            Dir {
                tmp,
                root,
                volatile: Volatile::new(model, trash),
            }
        }

        fn path(&self, name: &str) -> PathBuf {
            self.tmp.path().join(name)
        }

        fn write(&mut self, name: &str, offset: u64, data: &[u8]) {
            let file = fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .open(self.path(name))
                .unwrap();
            let key = key_of(&file.metadata().unwrap());
            let reopen = || fdpath::reopen_rw(&file);
            self.volatile
                .before_write(key, reopen, offset, data.len() as u64)
                .unwrap();
            file.write_all_at(data, offset).unwrap();
            self.volatile.wrote(key, offset, data);
        }

        fn set_len(&mut self, name: &str, len: u64) {
            let file = fs::OpenOptions::new()
                .write(true)
                .open(self.path(name))
                .unwrap();
            let key = key_of(&file.metadata().unwrap());
            self.volatile
                .before_set_len(key, || fdpath::reopen_rw(&file), len)
                .unwrap();
            file.set_len(len).unwrap();
        }

        fn sync(&mut self, name: &str) {
            let key = key_of(&fs::metadata(self.path(name)).unwrap());
            self.volatile.file_synced(key);
        }

        fn names(&self) -> Vec<OsString> {
            let mut names: Vec<_> = fs::read_dir(self.tmp.path())
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            names.sort();
            names
        }
    }

    #[test]
    fn overlapping_overwrites_truncates_and_growth_roll_back_to_the_durable_bytes() {
        let mut dir = Dir::new(MetadataDurability::Immediate);
        let durable: Vec<u8> = (0..100).collect();
        fs::write(dir.path("f"), &durable).unwrap();
        dir.write("f", 10, &[0xAA; 20]);
        dir.write("f", 5, &[0xBB; 10]);
        dir.write("f", 25, &[0xCC; 10]);
        dir.set_len("f", 50);
        dir.write("f", 60, &[0xDD; 30]);
        dir.set_len("f", 300);
        dir.write("f", 95, &[0xEE; 100]);
        let report = dir.volatile.cut(Tear::None).unwrap();
        assert_eq!(fs::read(dir.path("f")).unwrap(), durable);
        assert_eq!(report.files_rolled_back, 1);
        // 5..35 saved before the first overwrites, 50..100 before the shrink: each byte once.
        assert_eq!(report.bytes_restored, 30 + 50);
    }

    #[test]
    fn a_synced_file_keeps_its_content_and_later_writes_roll_back_to_it() {
        let mut dir = Dir::new(MetadataDurability::Immediate);
        fs::write(dir.path("f"), b"one").unwrap();
        dir.write("f", 0, b"two, longer");
        dir.sync("f");
        dir.write("f", 0, b"THREE");
        dir.write("f", 11, b" and more");
        dir.volatile.cut(Tear::None).unwrap();
        assert_eq!(fs::read(dir.path("f")).unwrap(), b"two, longer");
    }

    #[test]
    fn a_tear_keeps_the_chosen_prefix_of_the_last_write_only() {
        let mut dir = Dir::new(MetadataDurability::Immediate);
        fs::write(dir.path("f"), b"0123456789").unwrap();
        dir.write("f", 2, b"ab");
        dir.write("f", 8, b"WXYZ");
        let report = dir.volatile.cut(Tear::Prefix(3)).unwrap();
        assert_eq!(
            report.torn,
            Some(TornWrite {
                offset: 8,
                len: 4,
                kept: 3
            })
        );
        assert_eq!(fs::read(dir.path("f")).unwrap(), b"01234567WXY");
    }

    #[test]
    fn namespace_operations_roll_back_in_reverse_until_a_directory_sync() {
        let mut dir = Dir::new(MetadataDurability::OnDirSync);
        let root = dir.root.clone();
        fs::write(dir.path("a"), b"a").unwrap();
        fs::write(dir.path("b"), b"b").unwrap();
        // Committed: c created, a removed.
        fs::write(dir.path("c"), b"c").unwrap();
        dir.volatile.created(&root, OsStr::new("c"));
        dir.volatile.remove(&root, OsStr::new("a"), false).unwrap();
        dir.volatile.dirs_synced().unwrap();
        // Not committed: d created, renamed over b; c removed; a directory made.
        fs::write(dir.path("d"), b"d").unwrap();
        dir.volatile.created(&root, OsStr::new("d"));
        dir.volatile
            .rename(&root, OsStr::new("d"), &root, OsStr::new("b"))
            .unwrap();
        dir.volatile.remove(&root, OsStr::new("c"), false).unwrap();
        fs::create_dir(dir.path("e")).unwrap();
        dir.volatile.created(&root, OsStr::new("e"));
        assert_eq!(fs::read(dir.path("b")).unwrap(), b"d");
        let report = dir.volatile.cut(Tear::None).unwrap();
        assert_eq!(report.namespace_ops_undone, 4);
        assert_eq!(dir.names(), ["b", "c"]);
        assert_eq!(fs::read(dir.path("b")).unwrap(), b"b");
        assert_eq!(fs::read(dir.path("c")).unwrap(), b"c");
    }

    #[test]
    fn removing_checks_types_and_emptiness_before_parking_anything() {
        let mut dir = Dir::new(MetadataDurability::OnDirSync);
        let root = dir.root.clone();
        fs::create_dir(dir.path("full")).unwrap();
        fs::write(dir.path("full/x"), b"").unwrap();
        fs::write(dir.path("file"), b"").unwrap();
        let code = |e: io::Error| e.raw_os_error().unwrap();
        let remove = |v: &mut Volatile, name: &str, is_dir: bool| {
            v.remove(&root, OsStr::new(name), is_dir).map_err(code)
        };
        assert_eq!(
            remove(&mut dir.volatile, "full", true),
            Err(libc_errno::ENOTEMPTY)
        );
        assert_eq!(
            remove(&mut dir.volatile, "full", false),
            Err(libc_errno::EISDIR)
        );
        assert_eq!(
            remove(&mut dir.volatile, "file", true),
            Err(libc_errno::ENOTDIR)
        );
        let over_dir = dir
            .volatile
            .rename(&root, OsStr::new("file"), &root, OsStr::new("full"))
            .map_err(code);
        assert_eq!(over_dir, Err(libc_errno::EISDIR));
        dir.volatile.settle().unwrap();
        assert_eq!(dir.names(), ["file", "full"], "nothing moved, trash gone");
    }

    /// errno values, as the kernel returns them.
    mod libc_errno {
        use nix::errno::Errno;
        pub const ENOTEMPTY: i32 = Errno::ENOTEMPTY as i32;
        pub const EISDIR: i32 = Errno::EISDIR as i32;
        pub const ENOTDIR: i32 = Errno::ENOTDIR as i32;
    }
}
