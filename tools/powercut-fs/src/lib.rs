//! powercut-fs: a test filesystem that forgets, when the power is cut, every write not yet made
//! durable with `fsync`.
//!
//! It is a FUSE passthrough over a *backing* directory, mounted on a *mountpoint* by the test
//! process ([`PowerCutFs::mount`]). The program under test works in the mountpoint as on any disk.
//! At any moment the test calls [`Mounted::cut_power`]: from then on every call on the mount fails
//! with `EIO`, the backing directory is rolled back to its durable state, and the mount goes away.
//! Mounting the same backing directory again shows what a machine would find after a reboot.
//! This is how etcd (LazyFS), RocksDB (`FaultInjectionTestFS`) and bbolt (dm-flakey) test
//! themselves.
//!
//! # The durability model
//!
//! - **Reads see the latest writes** (the page-cache view), whether synced or not.
//! - **File data** (content *and* length: writes, truncates, `fallocate`) is volatile until an
//!   `fsync` or `fdatasync` of that file, through any descriptor of it. Both make the whole file
//!   durable (content and length); `fdatasync` is not weaker here. A write through an `O_SYNC` or
//!   `O_DSYNC` descriptor (or with `RWF_DSYNC`) makes the file durable when it returns.
//! - **Namespace operations** (create, mkdir, unlink, rmdir, rename) follow
//!   [`MetadataDurability`]:
//!   - [`MetadataDurability::OnDirSync`] (the default, conservative, LazyFS-like): they are lost
//!     at a cut unless a directory was fsynced after them. An fsync of *any* directory commits
//!     every namespace operation made before it, in order, as a journaling filesystem commits its
//!     metadata journal as a whole (ext4, XFS). An fsync of a *file* does not make its name
//!     durable (POSIX asks for the directory's fsync; LazyFS agrees). This catches a missing
//!     directory fsync after "write temp, fsync, rename".
//!   - [`MetadataDurability::Immediate`]: they are durable at once, only file data is volatile.
//!     This is roughly ext4 in `data=ordered` mode, whose journal commits renames and creates
//!     within seconds whatever the program does; choose it to test only data durability. A file
//!     created and written but never fsynced then survives a cut, empty (ext4's zero-length file).
//! - **A torn write** ([`Tear`]): the cut may keep a prefix of the last write that was not made
//!   durable, in place on top of the durable content, as a disk that lost power mid-write would.
//!   If earlier unsynced writes lay between the durable end of the file and that write, they are
//!   lost and read as zeros: a hole, as XFS or ext4 with `data=writeback` can show after a crash
//!   (the size reached the disk, some data did not).
//! - Not modelled (durable at once): permissions, owners and timestamps.
//! - Not seen at all, because FUSE does not pass them on: `sync_file_range`, `sync` and `syncfs`.
//!   Writes "synced" only that way stay volatile. sled 0.34 flushes its log with
//!   `sync_file_range` and only sometimes calls `fsync`: exactly the class of bug this surfaces.
//!
//! A "write" is one FUSE write request: the kernel splits a large `write(2)` into requests of at
//! most 1 MiB (256 pages, `/proc/sys/fs/fuse/max_pages_limit`), so a torn write tears the last
//! of those.
//!
//! # How
//!
//! The backing directory always holds the latest state; the filesystem records just enough to
//! roll it back (see `volatile.rs`): the durable bytes of ranges overwritten since the last
//! fsync (saved once, before the first overwrite), each file's durable length, and a journal of
//! namespace operations whose removed or replaced entries wait in a hidden trash directory,
//! `.powercut-fs-trash` at the root of the backing directory (invisible through the mount). Nothing
//! is copied for appends, so the cost is the size of what is overwritten between two fsyncs.
//! Files are opened with `FOPEN_DIRECT_IO` and attributes are never cached, so every read, write
//! and stat reaches the filesystem (and fails with `EIO` after a cut) instead of the page cache.
//! Unlinked files that are still open keep working. Symlinks, hard links and special files cannot
//! be created through the mount, `RENAME_EXCHANGE`/`RENAME_NOREPLACE` are refused (`EINVAL`), and
//! shared writable `mmap` is not available (direct I/O). Locks (`flock`, `fcntl`) are handled by
//! the kernel, per mount.
//!
//! # Requirements
//!
//! Linux with `/dev/fuse`. As root the mount is a plain `mount(2)` and nothing else is needed
//! (to abort connections, fusectl is mounted on `/sys/fs/fuse/connections` if it is not yet, as
//! systemd does at boot); another user needs `fusermount3` (Debian package `fuse3`, see
//! `install-deps.sh`) and a `/dev/fuse` open to all (mode 0666). No libfuse headers are needed.
//! Tests that mount are `#[ignore = "needs root and /dev/fuse"]`.

#![cfg(target_os = "linux")]

mod fdpath;
mod fs;
mod state;
mod volatile;

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use fuser::{Config, MountOption, Session, SessionACL, SessionUnmounter};
use nix::mount::{umount2, MntFlags};

use crate::state::State;

/// The hidden directory, at the root of the backing directory, where removed and replaced
/// entries wait until the removal is durable.
const TRASH_NAME: &str = ".powercut-fs-trash";

/// When create, mkdir, unlink, rmdir and rename become durable. See the crate documentation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MetadataDurability {
    /// Lost at a power cut unless a directory fsync came after them (conservative).
    #[default]
    OnDirSync,
    /// Durable at once; only file data is volatile.
    Immediate,
}

/// How a mount behaves.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// When namespace operations become durable.
    pub metadata: MetadataDurability,
    /// Let users other than the one who mounted use the mount (`allow_other`; as another user
    /// than root this needs `user_allow_other` in `/etc/fuse.conf`).
    pub allow_other: bool,
}

/// What a power cut does to the last write that was not made durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tear {
    /// Lost whole, like every other volatile write.
    None,
    /// A random prefix of it (possibly empty, never all of it) reaches the disk.
    RandomPrefix,
    /// Its first `n` bytes (at most all of them) reach the disk.
    Prefix(usize),
}

/// What a power cut threw away.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CutReport {
    /// Files whose content or length was rolled back to their last fsync.
    pub files_rolled_back: usize,
    /// Bytes of durable content written back over volatile writes.
    pub bytes_restored: u64,
    /// Namespace operations undone (only with [`MetadataDurability::OnDirSync`]).
    pub namespace_ops_undone: usize,
    /// The write that was torn, if one was.
    pub torn: Option<TornWrite>,
}

/// The write a power cut tore.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TornWrite {
    /// Where in its file the write started.
    pub offset: u64,
    /// How many bytes it wrote.
    pub len: usize,
    /// How many of them (from the start) survived the cut.
    pub kept: usize,
}

/// Mounts the filesystem.
#[derive(Debug)]
pub struct PowerCutFs;

impl PowerCutFs {
    /// Mounts `backing` on `mountpoint` and serves it from a background thread of this process.
    ///
    /// Everything in `backing` is durable at this point. Fails with a clear error when FUSE is
    /// not available (no `/dev/fuse`, or not root and no `fusermount3`), when either path is not
    /// a directory, or when the mountpoint lies inside the backing directory.
    pub fn mount(backing: &Path, mountpoint: &Path, options: Options) -> io::Result<Mounted> {
        check_fuse_available()?;
        let backing = canonical_dir(backing, "backing directory")?;
        let mountpoint = canonical_dir(mountpoint, "mountpoint")?;
        if mountpoint.starts_with(&backing) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "mountpoint {} lies inside the backing directory {}",
                    mountpoint.display(),
                    backing.display()
                ),
            ));
        }
        let state = State::new(&backing, options.metadata).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("preparing backing directory {}: {e}", backing.display()),
            )
        })?;
        let state = Arc::new(Mutex::new(state));
        let mut config = Config::default();
        config.mount_options = vec![
            MountOption::FSName("powercut-fs".to_owned()),
            MountOption::Subtype("powercut".to_owned()),
        ];
        if options.allow_other {
            config.acl = SessionACL::All;
            config.mount_options.push(MountOption::DefaultPermissions);
        }
        config.n_threads = Some(1);
        let mut session = Session::new(fs::Front::new(state.clone()), &mountpoint, &config)
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("mounting powercut-fs on {}: {e}", mountpoint.display()),
                )
            })?;
        let unmounter = session.unmount_callable();
        let serving = std::thread::Builder::new()
            .name("powercut-fs".to_owned())
            .spawn(move || session.run())?;
        let mut mounted = Mounted {
            state,
            backing,
            mountpoint,
            device: 0,
            unmounter: Mutex::new(unmounter),
            serving: Mutex::new(Some(serving)),
        };
        // Served by the thread just started; on failure, dropping `mounted` unmounts.
        mounted.device = std::fs::metadata(&mounted.mountpoint)?.dev();
        Ok(mounted)
    }
}

/// A mounted powercut-fs. Dropping it unmounts cleanly (everything written becomes durable, as
/// at an orderly shutdown); [`Mounted::cut_power`] unmounts the other way.
#[derive(Debug)]
pub struct Mounted {
    state: Arc<Mutex<State>>,
    backing: PathBuf,
    mountpoint: PathBuf,
    /// The device number of the mount, which names its FUSE connection.
    device: u64,
    /// The only way the mount is ever unmounted by path (see `take_down`).
    unmounter: Mutex<SessionUnmounter>,
    /// The thread serving the mount; `None` once unmounted.
    serving: Mutex<Option<JoinHandle<io::Result<()>>>>,
}

impl Mounted {
    /// Where the filesystem is mounted (canonical).
    pub fn path(&self) -> &Path {
        &self.mountpoint
    }

    /// The backing directory (canonical). Between mounts it holds exactly the durable state.
    pub fn backing(&self) -> &Path {
        &self.backing
    }

    /// Cuts the power: [`Mounted::cut_power_with`] with [`Tear::RandomPrefix`] when
    /// `tear_last_write`, else [`Tear::None`].
    pub fn cut_power(&self, tear_last_write: bool) -> io::Result<CutReport> {
        let tear = if tear_last_write {
            Tear::RandomPrefix
        } else {
            Tear::None
        };
        self.cut_power_with(tear)
    }

    /// Cuts the power. At once (under the lock every filesystem call takes), every later call on
    /// the mount fails with `EIO`, from any process, including on files already open; the
    /// backing directory is rolled back to its durable state, keeping the part of the last write
    /// that `tear` says; then the mount is taken down. If files are still open there, the FUSE
    /// connection is aborted (calls on them then fail with `ENOTCONN`, and none can hang) and
    /// the mount detached; where the connection cannot be aborted (no fusectl), they go on
    /// failing with `EIO` until closed. A second cut is an error.
    pub fn cut_power_with(&self, tear: Tear) -> io::Result<CutReport> {
        let report = lock(&self.state).cut(tear);
        // Down even if the rollback failed: the power is off either way.
        let down = self.take_down();
        let report = report?;
        down.map(|()| report)
    }

    /// Unmounts cleanly and says whether that went well (dropping does the same, silently).
    pub fn unmount(self) -> io::Result<()> {
        self.shut_down()
    }

    fn shut_down(&self) -> io::Result<()> {
        let settled = lock(&self.state).settle();
        let down = self.take_down();
        settled.and(down)
    }

    /// Unmounts, if still mounted: a plain unmount when nothing is open on the mount. When
    /// something is, the FUSE connection is aborted (through fusectl), so that every call on
    /// those files fails at once and none can wait on the serving thread, and the mount is
    /// detached. Without fusectl the thread goes on serving those files until they are closed,
    /// and is left to end by itself.
    fn take_down(&self) -> io::Result<()> {
        let Some(serving) = lock(&self.serving).take() else {
            return Ok(());
        };
        // This takes the mount out of fuser's hands whatever the outcome, so that fuser never
        // unmounts by path later (when the thread ends), which could hit a newer mount there.
        let ended = match lock(&self.unmounter).unmount() {
            // Root: unmounted, the thread ends. Not root: fusermount unmounted lazily.
            Ok(()) if nix::unistd::geteuid().is_root() => true,
            Ok(()) => abort_connection(self.device).is_ok(),
            Err(e) if e.raw_os_error() == Some(nix::errno::Errno::EBUSY as i32) => {
                let aborted = abort_connection(self.device).is_ok();
                umount2(&self.mountpoint, MntFlags::MNT_DETACH)
                    .map_err(|e| unmount_error(&self.mountpoint, e))?;
                aborted
            }
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("unmounting {}: {e}", self.mountpoint.display()),
                ))
            }
        };
        if !ended {
            return Ok(());
        }
        match serving.join() {
            Ok(result) => result,
            Err(_) => Err(io::Error::other("the powercut-fs thread panicked")),
        }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        // An error here (already unmounted by hand, say) leaves nothing to clean up.
        let _ = self.shut_down();
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic in a filesystem call leaves the state as consistent as an error would.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn check_fuse_available() -> io::Result<()> {
    if !Path::new("/dev/fuse").exists() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            "FUSE is not available: /dev/fuse does not exist (modprobe fuse; \
             in a container, pass the device in)",
        ));
    }
    if !nix::unistd::geteuid().is_root() && fusermount().is_none() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            "FUSE is not available: not root, and neither fusermount3 nor fusermount \
             is installed (apt-get install fuse3)",
        ));
    }
    Ok(())
}

fn fusermount() -> Option<&'static str> {
    ["fusermount3", "fusermount"]
        .into_iter()
        .find(|name| Command::new(name).arg("-V").output().is_ok())
}

fn canonical_dir(path: &Path, what: &str) -> io::Result<PathBuf> {
    let canonical = path
        .canonicalize()
        .map_err(|e| io::Error::new(e.kind(), format!("{what} {}: {e}", path.display())))?;
    if !canonical.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{what} {} is not a directory", path.display()),
        ));
    }
    Ok(canonical)
}

/// Where fusectl, the FUSE control filesystem, is normally mounted.
const FUSECTL: &str = "/sys/fs/fuse/connections";

/// Aborts the FUSE connection of the filesystem on `device`: every request pending or to come
/// fails with `ENOTCONN`, and the serving thread's read ends. Mounts fusectl if it is not.
fn abort_connection(device: u64) -> io::Result<()> {
    use nix::sys::stat::{major, minor};
    // fusectl names a connection by the kernel's dev_t: major << 20 | minor.
    let abort = Path::new(FUSECTL)
        .join(((major(device) << 20) | minor(device)).to_string())
        .join("abort");
    if !abort.exists() {
        let mounted = nix::mount::mount(
            Some("fusectl"),
            FUSECTL,
            Some("fusectl"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        );
        match mounted {
            // EBUSY: mounted already; then the write below says what is wrong.
            Ok(()) | Err(nix::errno::Errno::EBUSY) => {}
            Err(e) => {
                return Err(io::Error::new(
                    io::Error::from(e).kind(),
                    format!("mounting fusectl on {FUSECTL}: {e}"),
                ))
            }
        }
    }
    std::fs::write(&abort, b"1")
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", abort.display())))
}

fn unmount_error(mountpoint: &Path, e: nix::errno::Errno) -> io::Error {
    io::Error::new(
        io::Error::from(e).kind(),
        format!("unmounting {}: {e}", mountpoint.display()),
    )
}
