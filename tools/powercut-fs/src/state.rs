//! The passthrough itself: FUSE inodes and file handles over the backing directory, and each
//! filesystem operation carried out on it, with [`Volatile`] told before anything changes.
//!
//! Invariants: every inode the kernel holds a lookup on is an `O_PATH` descriptor here, under an
//! inode number never handed out twice (so a reused backing inode number cannot alias a stale
//! one); one backing inode has one FUSE inode; once the phase is [`Phase::Cut`] every operation
//! fails with `EIO` and nothing in the backing directory is touched again.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::{self, File, FileTimes, OpenOptions, Permissions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, DirEntryExt, FileExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{Errno, FileAttr, FileType, FopenFlags, INodeNo, OpenAccMode, TimeOrNow};

use crate::volatile::{key_of, Key, Trash, Volatile};
use crate::{fdpath, CutReport, MetadataDurability, Tear, TRASH_NAME};

type Result<T> = std::result::Result<T, Errno>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Serving, tracking what is volatile.
    Running,
    /// Cleanly unmounted but still serving files left open (lazy unmount): plain passthrough.
    Settled,
    /// The power is cut: everything fails.
    Cut,
}

struct Node {
    /// `O_PATH`, shared with journal entries that name this directory.
    fd: Arc<File>,
    key: Key,
    /// Lookups the kernel holds; the node goes at zero (never the root).
    lookups: u64,
}

enum Handle {
    File { file: File, key: Key },
    Dir(Vec<DirEnt>),
}

/// One entry of a directory listing, taken whole at opendir so offsets stay stable.
pub(crate) struct DirEnt {
    pub(crate) ino: u64,
    pub(crate) kind: FileType,
    pub(crate) name: OsString,
}

pub(crate) struct State {
    phase: Phase,
    nodes: HashMap<u64, Node>,
    by_key: HashMap<Key, u64>,
    next_ino: u64,
    handles: HashMap<u64, Handle>,
    next_fh: u64,
    volatile: Volatile,
    backing: std::path::PathBuf,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("phase", &self.phase)
            .field("backing", &self.backing)
            .finish_non_exhaustive()
    }
}

impl State {
    pub(crate) fn new(backing: &Path, model: MetadataDurability) -> io::Result<State> {
        let trash = Trash::prepare(&backing.join(TRASH_NAME))?;
        let root = fdpath::hold(backing)?;
        let key = key_of(&root.metadata()?);
        let root_ino = INodeNo::ROOT.0;
        Ok(State {
            phase: Phase::Running,
            nodes: HashMap::from([(
                root_ino,
                Node {
                    fd: Arc::new(root),
                    key,
                    lookups: 1,
                },
            )]),
            by_key: HashMap::from([(key, root_ino)]),
            next_ino: root_ino + 1,
            handles: HashMap::new(),
            next_fh: 1,
            volatile: Volatile::new(model, trash),
            backing: backing.to_owned(),
        })
    }

    pub(crate) fn cut(&mut self, tear: Tear) -> io::Result<CutReport> {
        if self.phase != Phase::Running {
            return Err(io::Error::other(
                "the power is already cut, or the filesystem unmounted",
            ));
        }
        self.phase = Phase::Cut;
        self.volatile.cut(tear)
    }

    pub(crate) fn settle(&mut self) -> io::Result<()> {
        if self.phase != Phase::Running {
            return Ok(());
        }
        self.phase = Phase::Settled;
        self.volatile.settle()
    }

    /// Fails every operation once the power is cut.
    pub(crate) fn alive(&self) -> Result<()> {
        match self.phase {
            Phase::Cut => Err(Errno::EIO),
            Phase::Running | Phase::Settled => Ok(()),
        }
    }

    fn node(&self, ino: INodeNo) -> Result<&Node> {
        self.nodes.get(&ino.0).ok_or(Errno::ENOENT)
    }

    fn dir_fd(&self, ino: INodeNo) -> Result<Arc<File>> {
        Ok(self.node(ino)?.fd.clone())
    }

    /// The trash is invisible: as if it did not exist, and no name may become it.
    fn hidden(parent: INodeNo, name: &OsStr) -> bool {
        parent == INodeNo::ROOT && name == TRASH_NAME
    }

    /// Takes one lookup on what `path` names (taken `O_PATH`), giving it an inode if new.
    fn intern(&mut self, path: &Path) -> Result<FileAttr> {
        let fd = fdpath::hold(path)?;
        let metadata = fd.metadata()?;
        let key = key_of(&metadata);
        let ino = match self.by_key.get(&key) {
            Some(&ino) => ino,
            None => {
                let ino = self.next_ino;
                self.next_ino += 1;
                self.by_key.insert(key, ino);
                self.nodes.insert(
                    ino,
                    Node {
                        fd: Arc::new(fd),
                        key,
                        lookups: 0,
                    },
                );
                ino
            }
        };
        if let Some(node) = self.nodes.get_mut(&ino) {
            node.lookups += 1;
        }
        Ok(attr(ino, &metadata))
    }

    fn new_handle(&mut self, handle: Handle) -> u64 {
        let fh = self.next_fh;
        self.next_fh += 1;
        self.handles.insert(fh, handle);
        fh
    }

    pub(crate) fn lookup(&mut self, parent: INodeNo, name: &OsStr) -> Result<FileAttr> {
        self.alive()?;
        if Self::hidden(parent, name) {
            return Err(Errno::ENOENT);
        }
        let path = fdpath::child(&self.node(parent)?.fd, name);
        self.intern(&path)
    }

    pub(crate) fn forget(&mut self, ino: INodeNo, count: u64) {
        if ino == INodeNo::ROOT {
            return;
        }
        let Some(node) = self.nodes.get_mut(&ino.0) else {
            return;
        };
        node.lookups = node.lookups.saturating_sub(count);
        if node.lookups == 0 {
            let key = node.key;
            self.nodes.remove(&ino.0);
            self.by_key.remove(&key);
        }
    }

    pub(crate) fn getattr(&self, ino: INodeNo) -> Result<FileAttr> {
        self.alive()?;
        Ok(attr(ino.0, &self.node(ino)?.fd.metadata()?))
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn setattr(
        &mut self,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
    ) -> Result<FileAttr> {
        self.alive()?;
        let node = self.node(ino)?;
        let (fd, key) = (node.fd.clone(), node.key);
        let path = fdpath::of(&fd);
        if let Some(len) = size {
            let file = fdpath::reopen_rw(&fd)?;
            self.volatile
                .before_set_len(key, || file.try_clone(), len)?;
            file.set_len(len)?;
        }
        if let Some(mode) = mode {
            fs::set_permissions(&path, Permissions::from_mode(mode & 0o7777))?;
        }
        if uid.is_some() || gid.is_some() {
            std::os::unix::fs::chown(&path, uid, gid)?;
        }
        if atime.is_some() || mtime.is_some() {
            let mut times = FileTimes::new();
            if let Some(atime) = atime {
                times = times.set_accessed(instant(atime));
            }
            if let Some(mtime) = mtime {
                times = times.set_modified(instant(mtime));
            }
            File::open(&path)?.set_times(times)?;
        }
        Ok(attr(ino.0, &fd.metadata()?))
    }

    pub(crate) fn open(&mut self, ino: INodeNo, flags: i32, acc: OpenAccMode) -> Result<u64> {
        self.alive()?;
        let node = self.node(ino)?;
        let (fd, key) = (node.fd.clone(), node.key);
        // The kernel gives every write its offset (also for O_APPEND), and truncates through
        // setattr: open plainly, never with O_APPEND (pwrite would ignore the offset).
        let file = OpenOptions::new()
            .read(acc != OpenAccMode::O_WRONLY)
            .write(acc != OpenAccMode::O_RDONLY)
            .open(fdpath::of(&fd))?;
        if flags & libc_o_trunc() != 0 && acc != OpenAccMode::O_RDONLY {
            self.volatile.before_set_len(key, || file.try_clone(), 0)?;
            file.set_len(0)?;
        }
        Ok(self.new_handle(Handle::File { file, key }))
    }

    pub(crate) fn create(
        &mut self,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        flags: i32,
    ) -> Result<(FileAttr, u64)> {
        self.alive()?;
        if Self::hidden(parent, name) {
            return Err(Errno::EACCES);
        }
        let dir = self.dir_fd(parent)?;
        let path = fdpath::child(&dir, name);
        // Read-write whatever was asked: std cannot create without write access, and the kernel
        // enforces the caller's own access mode on its descriptor anyway.
        let file = match OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(file) => {
                // The kernel already applied the caller's umask; ours must not apply again.
                file.set_permissions(Permissions::from_mode(mode & 0o7777))?;
                self.volatile.created(&dir, name);
                file
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && flags & libc_o_excl() == 0 => {
                let file = OpenOptions::new().read(true).write(true).open(&path)?;
                if flags & libc_o_trunc() != 0 {
                    let key = key_of(&file.metadata()?);
                    self.volatile.before_set_len(key, || file.try_clone(), 0)?;
                    file.set_len(0)?;
                }
                file
            }
            Err(e) => return Err(e.into()),
        };
        let attr = self.intern(&path)?;
        let key = key_of(&file.metadata()?);
        Ok((attr, self.new_handle(Handle::File { file, key })))
    }

    pub(crate) fn mknod(&mut self, parent: INodeNo, name: &OsStr, mode: u32) -> Result<FileAttr> {
        self.alive()?;
        if mode & SFMT != SFREG {
            // Only regular files: the programs under test need nothing else.
            return Err(Errno::EPERM);
        }
        let (attr, fh) = self.create(parent, name, mode, libc_o_excl())?;
        self.handles.remove(&fh);
        Ok(attr)
    }

    pub(crate) fn mkdir(&mut self, parent: INodeNo, name: &OsStr, mode: u32) -> Result<FileAttr> {
        self.alive()?;
        if Self::hidden(parent, name) {
            return Err(Errno::EACCES);
        }
        let dir = self.dir_fd(parent)?;
        let path = fdpath::child(&dir, name);
        fs::DirBuilder::new().mode(mode & 0o7777).create(&path)?;
        fs::set_permissions(&path, Permissions::from_mode(mode & 0o7777))?;
        self.volatile.created(&dir, name);
        self.intern(&path)
    }

    pub(crate) fn remove(&mut self, parent: INodeNo, name: &OsStr, dir: bool) -> Result<()> {
        self.alive()?;
        if Self::hidden(parent, name) {
            return Err(Errno::ENOENT);
        }
        let parent = self.dir_fd(parent)?;
        Ok(self.volatile.remove(&parent, name, dir)?)
    }

    pub(crate) fn rename(
        &mut self,
        parent: INodeNo,
        name: &OsStr,
        new_parent: INodeNo,
        new_name: &OsStr,
    ) -> Result<()> {
        self.alive()?;
        if Self::hidden(parent, name) {
            return Err(Errno::ENOENT);
        }
        if Self::hidden(new_parent, new_name) {
            return Err(Errno::EACCES);
        }
        let from = self.dir_fd(parent)?;
        let to = self.dir_fd(new_parent)?;
        Ok(self.volatile.rename(&from, name, &to, new_name)?)
    }

    pub(crate) fn read(&self, fh: u64, offset: u64, size: usize) -> Result<Vec<u8>> {
        self.alive()?;
        let (file, _) = file_of(&self.handles, fh)?;
        let mut data = vec![0; size];
        let mut done = 0;
        while done < size {
            match file.read_at(&mut data[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        data.truncate(done);
        Ok(data)
    }

    /// Writes `data` at `offset`; `flags` are the file's open flags as the kernel passes them
    /// with each write (with `O_DSYNC` also for `pwritev2(RWF_DSYNC)`).
    pub(crate) fn write(&mut self, fh: u64, offset: u64, data: &[u8], flags: i32) -> Result<u32> {
        self.alive()?;
        let written = u32::try_from(data.len()).map_err(|_| Errno::EINVAL)?;
        let (file, key) = file_of(&self.handles, fh)?;
        self.volatile
            .before_write(key, || fdpath::reopen_rw(file), offset, data.len() as u64)?;
        file.write_all_at(data, offset)?;
        self.volatile.wrote(key, offset, data);
        if flags & nix::fcntl::OFlag::O_DSYNC.bits() != 0 {
            // O_SYNC and O_DSYNC (O_SYNC includes it): durable when write(2) returns.
            self.volatile.file_synced(key);
        }
        Ok(written)
    }

    pub(crate) fn fallocate(&mut self, fh: u64, offset: u64, length: u64, mode: i32) -> Result<()> {
        self.alive()?;
        if mode != 0 {
            return Err(Errno::from_i32(nix::errno::Errno::EOPNOTSUPP as i32));
        }
        let (file, key) = file_of(&self.handles, fh)?;
        let end = offset.checked_add(length).ok_or(Errno::EFBIG)?;
        if end > file.metadata()?.len() {
            self.volatile
                .before_set_len(key, || fdpath::reopen_rw(file), end)?;
            file.set_len(end)?;
        }
        Ok(())
    }

    pub(crate) fn release(&mut self, fh: u64) {
        self.handles.remove(&fh);
    }

    pub(crate) fn fsync(&mut self, ino: INodeNo) -> Result<()> {
        self.alive()?;
        let key = self.node(ino)?.key;
        self.volatile.file_synced(key);
        Ok(())
    }

    pub(crate) fn fsyncdir(&mut self) -> Result<()> {
        self.alive()?;
        Ok(self.volatile.dirs_synced()?)
    }

    pub(crate) fn opendir(&mut self, ino: INodeNo) -> Result<u64> {
        self.alive()?;
        let fd = self.dir_fd(ino)?;
        let mut entries = vec![
            DirEnt {
                ino: ino.0,
                kind: FileType::Directory,
                name: ".".into(),
            },
            DirEnt {
                ino: ino.0,
                kind: FileType::Directory,
                name: "..".into(),
            },
        ];
        for entry in fs::read_dir(fdpath::of(&fd))? {
            let entry = entry?;
            if Self::hidden(ino, &entry.file_name()) {
                continue;
            }
            let kind = entry.file_type().ok().and_then(FileType::from_std);
            entries.push(DirEnt {
                ino: entry.ino(),
                kind: kind.unwrap_or(FileType::RegularFile),
                name: entry.file_name(),
            });
        }
        Ok(self.new_handle(Handle::Dir(entries)))
    }

    pub(crate) fn dir_entries(&self, fh: u64) -> Result<&[DirEnt]> {
        self.alive()?;
        match self.handles.get(&fh) {
            Some(Handle::Dir(entries)) => Ok(entries),
            _ => Err(Errno::EBADF),
        }
    }

    pub(crate) fn statfs(&self) -> Result<nix::sys::statvfs::Statvfs> {
        self.alive()?;
        nix::sys::statvfs::statvfs(&self.backing).map_err(|e| Errno::from_i32(e as i32))
    }

    /// How every open file is opened: no page cache, so reads reach the filesystem too.
    pub(crate) fn fopen_flags() -> FopenFlags {
        FopenFlags::FOPEN_DIRECT_IO
    }
}

fn file_of(handles: &HashMap<u64, Handle>, fh: u64) -> Result<(&File, Key)> {
    match handles.get(&fh) {
        Some(Handle::File { file, key }) => Ok((file, *key)),
        _ => Err(Errno::EBADF),
    }
}

const SFMT: u32 = 0o170000;
const SFREG: u32 = 0o100000;

fn libc_o_trunc() -> i32 {
    nix::fcntl::OFlag::O_TRUNC.bits()
}

fn libc_o_excl() -> i32 {
    nix::fcntl::OFlag::O_EXCL.bits()
}

fn instant(time: TimeOrNow) -> SystemTime {
    match time {
        TimeOrNow::SpecificTime(time) => time,
        TimeOrNow::Now => SystemTime::now(),
    }
}

fn timestamp(secs: i64, nanos: i64) -> SystemTime {
    let nanos = Duration::from_nanos(u64::try_from(nanos).unwrap_or(0));
    let time = if secs >= 0 {
        UNIX_EPOCH.checked_add(Duration::from_secs(secs.unsigned_abs()))
    } else {
        UNIX_EPOCH.checked_sub(Duration::from_secs(secs.unsigned_abs()))
    };
    time.and_then(|t| t.checked_add(nanos))
        .unwrap_or(UNIX_EPOCH)
}

fn attr(ino: u64, metadata: &fs::Metadata) -> FileAttr {
    FileAttr {
        ino: INodeNo(ino),
        size: metadata.len(),
        blocks: metadata.blocks(),
        atime: timestamp(metadata.atime(), metadata.atime_nsec()),
        mtime: timestamp(metadata.mtime(), metadata.mtime_nsec()),
        ctime: timestamp(metadata.ctime(), metadata.ctime_nsec()),
        crtime: UNIX_EPOCH,
        kind: FileType::from_std(metadata.file_type()).unwrap_or(FileType::RegularFile),
        perm: (metadata.mode() & 0o7777) as u16,
        nlink: u32::try_from(metadata.nlink()).unwrap_or(u32::MAX),
        uid: metadata.uid(),
        gid: metadata.gid(),
        rdev: metadata.rdev() as u32,
        blksize: u32::try_from(metadata.blksize()).unwrap_or(4096),
        flags: 0,
    }
}
