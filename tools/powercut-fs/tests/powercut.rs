//! The filesystem seen from a program using it: what survives a power cut and what does not,
//! under both durability models, and how open files behave after the cut.
//!
//! Every test mounts a real FUSE filesystem, so needs root and /dev/fuse (CI runs ignored tests
//! as root): `cargo test -p powercut-fs -- --include-ignored`.
#![cfg(target_os = "linux")]

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use powercut_fs::{MetadataDurability, Mounted, Options, PowerCutFs, Tear};
use tempfile::TempDir;

struct Rig {
    backing: TempDir,
    mountpoint: TempDir,
    model: MetadataDurability,
}

impl Rig {
    fn new(model: MetadataDurability) -> Rig {
        Rig {
            backing: tempfile::tempdir().expect("backing dir"),
            mountpoint: tempfile::tempdir().expect("mountpoint"),
            model,
        }
    }

    fn mount(&self) -> Mounted {
        let options = Options {
            metadata: self.model,
            ..Options::default()
        };
        PowerCutFs::mount(self.backing.path(), self.mountpoint.path(), options)
            .expect("mount powercut-fs (needs root and /dev/fuse)")
    }

    /// A path in the mounted filesystem.
    fn m(&self, name: &str) -> PathBuf {
        self.mountpoint.path().join(name)
    }

    /// A path in the backing directory (the durable state, between mounts).
    fn b(&self, name: &str) -> PathBuf {
        self.backing.path().join(name)
    }
}

fn fsync_dir(path: &Path) {
    File::open(path)
        .and_then(|d| d.sync_all())
        .expect("fsync directory");
}

/// Whether `result` is the error of a dead filesystem: `EIO` while it still answers,
/// `ENOTCONN` once its connection is aborted.
fn is_dead<T: std::fmt::Debug>(result: io::Result<T>) -> bool {
    const EIO: i32 = 5;
    const ENOTCONN: i32 = 107;
    match result {
        Err(e) => matches!(e.raw_os_error(), Some(EIO | ENOTCONN)),
        Ok(value) => panic!("expected EIO or ENOTCONN, got Ok({value:?})"),
    }
}

#[test]
#[ignore = "needs root and /dev/fuse"]
fn a_write_without_fsync_is_lost() {
    let rig = Rig::new(MetadataDurability::OnDirSync);
    fs::write(rig.b("data"), b"durable content").unwrap();
    let mounted = rig.mount();
    let file = OpenOptions::new().write(true).open(rig.m("data")).unwrap();
    file.write_all_at(b"VOLATILE", 0).unwrap();
    file.write_all_at(b" and more past the end", 15).unwrap();
    drop(file);
    assert_eq!(
        fs::read(rig.m("data")).unwrap(),
        b"VOLATILEcontent and more past the end".to_vec(),
        "reads see the latest writes"
    );
    let report = mounted.cut_power(false).unwrap();
    assert_eq!(report.files_rolled_back, 1);
    assert_eq!(report.torn, None);
    assert_eq!(fs::read(rig.b("data")).unwrap(), b"durable content");
}

#[test]
#[ignore = "needs root and /dev/fuse"]
fn a_write_followed_by_fsync_survives() {
    let rig = Rig::new(MetadataDurability::OnDirSync);
    fs::write(rig.b("data"), b"old").unwrap();
    let mounted = rig.mount();
    let mut file = OpenOptions::new().write(true).open(rig.m("data")).unwrap();
    file.write_all(b"new content").unwrap();
    file.sync_data().unwrap();
    // Written after the fsync: lost.
    file.write_all(b", unsynced tail").unwrap();
    mounted.cut_power(false).unwrap();
    assert_eq!(fs::read(rig.b("data")).unwrap(), b"new content");
}

#[test]
#[ignore = "needs root and /dev/fuse"]
fn a_write_through_an_o_dsync_descriptor_is_durable_when_it_returns() {
    use std::os::unix::fs::OpenOptionsExt;
    const O_DSYNC: i32 = 0o10000;
    let rig = Rig::new(MetadataDurability::OnDirSync);
    fs::write(rig.b("wal"), b"").unwrap();
    let mounted = rig.mount();
    let mut wal = OpenOptions::new()
        .append(true)
        .custom_flags(O_DSYNC)
        .open(rig.m("wal"))
        .unwrap();
    wal.write_all(b"record 1;").unwrap();
    wal.write_all(b"record 2;").unwrap();
    let plain = OpenOptions::new().write(true).open(rig.m("wal")).unwrap();
    plain.write_all_at(b"lost", 18).unwrap();
    mounted.cut_power(false).unwrap();
    assert_eq!(fs::read(rig.b("wal")).unwrap(), b"record 1;record 2;");
}

#[test]
#[ignore = "needs root and /dev/fuse"]
fn length_changes_without_fsync_are_lost() {
    let rig = Rig::new(MetadataDurability::OnDirSync);
    fs::write(rig.b("grown"), b"0123456789").unwrap();
    fs::write(rig.b("set_len"), b"0123456789").unwrap();
    fs::write(rig.b("shrunk"), b"0123456789").unwrap();
    let mounted = rig.mount();
    let mut grown = OpenOptions::new()
        .append(true)
        .open(rig.m("grown"))
        .unwrap();
    grown.write_all(&[7; 100_000]).unwrap();
    OpenOptions::new()
        .write(true)
        .open(rig.m("set_len"))
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    let shrunk = OpenOptions::new()
        .write(true)
        .open(rig.m("shrunk"))
        .unwrap();
    shrunk.set_len(3).unwrap();
    shrunk.write_all_at(b"xyz", 20).unwrap();
    assert_eq!(fs::metadata(rig.m("grown")).unwrap().len(), 100_010);
    assert_eq!(fs::metadata(rig.m("shrunk")).unwrap().len(), 23);
    mounted.cut_power(false).unwrap();
    for name in ["grown", "set_len", "shrunk"] {
        assert_eq!(fs::read(rig.b(name)).unwrap(), b"0123456789", "{name}");
    }
}

#[test]
#[ignore = "needs root and /dev/fuse"]
fn temp_fsync_rename_dir_fsync_survives_and_without_the_dir_fsync_does_not() {
    let rig = Rig::new(MetadataDurability::OnDirSync);
    fs::create_dir(rig.b("state")).unwrap();
    fs::write(rig.b("state/checkpoint"), b"checkpoint 1").unwrap();
    let mounted = rig.mount();
    let replace = |content: &[u8], sync_dir: bool| {
        let mut tmp = File::create(rig.m("state/checkpoint.tmp")).unwrap();
        tmp.write_all(content).unwrap();
        tmp.sync_all().unwrap();
        fs::rename(rig.m("state/checkpoint.tmp"), rig.m("state/checkpoint")).unwrap();
        if sync_dir {
            fsync_dir(&rig.m("state"));
        }
    };
    replace(b"checkpoint 2", true);
    replace(b"checkpoint 3", false);
    assert_eq!(
        fs::read(rig.m("state/checkpoint")).unwrap(),
        b"checkpoint 3"
    );
    let report = mounted.cut_power(false).unwrap();
    // The create of the temp file and the rename.
    assert_eq!(report.namespace_ops_undone, 2);
    assert_eq!(
        fs::read(rig.b("state/checkpoint")).unwrap(),
        b"checkpoint 2"
    );
    let names: Vec<_> = fs::read_dir(rig.b("state"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["checkpoint"]);
}

#[test]
#[ignore = "needs root and /dev/fuse"]
fn unsynced_creates_unlinks_mkdirs_and_rmdirs_are_undone_in_order() {
    let rig = Rig::new(MetadataDurability::OnDirSync);
    fs::write(rig.b("kept"), b"still here").unwrap();
    fs::create_dir(rig.b("empty")).unwrap();
    let mounted = rig.mount();
    fs::remove_file(rig.m("kept")).unwrap();
    fs::remove_dir(rig.m("empty")).unwrap();
    fs::create_dir(rig.m("new_dir")).unwrap();
    let mut file = File::create(rig.m("new_dir/new_file")).unwrap();
    file.write_all(b"data").unwrap();
    file.sync_all().unwrap();
    // A new file by the old name, then moved into the new directory.
    fs::write(rig.m("kept"), b"impostor").unwrap();
    fs::rename(rig.m("kept"), rig.m("new_dir/moved")).unwrap();
    assert!(!rig.m("empty").exists());
    mounted.cut_power(false).unwrap();
    assert_eq!(fs::read(rig.b("kept")).unwrap(), b"still here");
    assert!(rig.b("empty").is_dir());
    assert!(!rig.b("new_dir").exists());
    let mut names: Vec<_> = fs::read_dir(rig.backing.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    assert_eq!(names, ["empty", "kept"], "and no trash left behind");
}

#[test]
#[ignore = "needs root and /dev/fuse"]
fn a_directory_fsync_commits_every_earlier_namespace_operation() {
    let rig = Rig::new(MetadataDurability::OnDirSync);
    fs::create_dir(rig.b("a")).unwrap();
    fs::write(rig.b("old"), b"old").unwrap();
    let mounted = rig.mount();
    fs::write(rig.m("a/new"), b"").unwrap();
    fs::remove_file(rig.m("old")).unwrap();
    // Syncing another directory commits them too, as a journal commit does.
    fsync_dir(&rig.m("a"));
    let report = mounted.cut_power(false).unwrap();
    assert_eq!(report.namespace_ops_undone, 0);
    assert!(rig.b("a/new").exists());
    assert!(!rig.b("old").exists());
}

#[test]
#[ignore = "needs root and /dev/fuse"]
fn with_immediate_metadata_only_data_is_volatile() {
    let rig = Rig::new(MetadataDurability::Immediate);
    fs::write(rig.b("checkpoint"), b"checkpoint 1").unwrap();
    fs::write(rig.b("gone"), b"x").unwrap();
    let mounted = rig.mount();
    let mut tmp = File::create(rig.m("checkpoint.tmp")).unwrap();
    tmp.write_all(b"checkpoint 2").unwrap();
    tmp.sync_all().unwrap();
    fs::rename(rig.m("checkpoint.tmp"), rig.m("checkpoint")).unwrap();
    fs::write(rig.m("never_synced"), b"some data").unwrap();
    fs::remove_file(rig.m("gone")).unwrap();
    let report = mounted.cut_power(false).unwrap();
    assert_eq!(report.namespace_ops_undone, 0);
    assert_eq!(fs::read(rig.b("checkpoint")).unwrap(), b"checkpoint 2");
    assert_eq!(
        fs::read(rig.b("never_synced")).unwrap(),
        b"",
        "ext4's empty file"
    );
    assert!(!rig.b("gone").exists());
}

#[test]
#[ignore = "needs root and /dev/fuse"]
fn a_torn_last_write_leaves_a_prefix_of_it() {
    let rig = Rig::new(MetadataDurability::OnDirSync);
    fs::write(rig.b("log"), vec![b'.'; 8192]).unwrap();
    let mounted = rig.mount();
    let file = OpenOptions::new().write(true).open(rig.m("log")).unwrap();
    file.write_all_at(&[b'a'; 4096], 0).unwrap();
    file.write_all_at(&[b'b'; 4096], 100).unwrap();
    let report = mounted.cut_power_with(Tear::Prefix(1000)).unwrap();
    let torn = report.torn.expect("the last write was torn");
    assert_eq!((torn.offset, torn.len, torn.kept), (100, 4096, 1000));
    let mut expected = vec![b'.'; 8192];
    expected[100..1100].fill(b'b');
    assert_eq!(fs::read(rig.b("log")).unwrap(), expected);
}

#[test]
#[ignore = "needs root and /dev/fuse"]
fn a_random_tear_keeps_a_strict_prefix_past_the_durable_end() {
    let rig = Rig::new(MetadataDurability::OnDirSync);
    fs::write(rig.b("log"), b"head").unwrap();
    let mounted = rig.mount();
    let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
    let mut file = OpenOptions::new().append(true).open(rig.m("log")).unwrap();
    file.write_all(&data).unwrap();
    let report = mounted.cut_power(true).unwrap();
    let torn = report.torn.expect("the last write was torn");
    assert_eq!((torn.offset, torn.len), (4, 10_000));
    assert!(torn.kept < torn.len);
    let after = fs::read(rig.b("log")).unwrap();
    let mut expected = b"head".to_vec();
    expected.extend_from_slice(&data[..torn.kept]);
    assert_eq!(after, expected);
}

#[test]
#[ignore = "needs root and /dev/fuse"]
fn an_fsynced_file_is_not_torn() {
    let rig = Rig::new(MetadataDurability::Immediate);
    let mounted = rig.mount();
    let mut file = File::create(rig.m("synced")).unwrap();
    file.write_all(b"all of it").unwrap();
    file.sync_all().unwrap();
    let report = mounted.cut_power_with(Tear::Prefix(0)).unwrap();
    assert_eq!(report.torn, None);
    assert_eq!(fs::read(rig.b("synced")).unwrap(), b"all of it");
}

#[test]
#[ignore = "needs root and /dev/fuse"]
fn after_a_remount_the_durable_files_are_readable_and_writable() {
    let rig = Rig::new(MetadataDurability::OnDirSync);
    let mounted = rig.mount();
    fs::create_dir(rig.m("db")).unwrap();
    let mut file = File::create(rig.m("db/log")).unwrap();
    file.write_all(b"first").unwrap();
    file.sync_all().unwrap();
    fsync_dir(&rig.m("db"));
    fsync_dir(rig.mountpoint.path());
    file.write_all(b" lost").unwrap();
    mounted.cut_power(true).unwrap();
    drop(mounted);

    let mounted = rig.mount();
    let mut content = String::new();
    File::open(rig.m("db/log"))
        .unwrap()
        .read_to_string(&mut content)
        .unwrap();
    assert!(
        content.starts_with("first") && " lost".starts_with(&content[5..]),
        "{content:?}"
    );
    let mut file = OpenOptions::new()
        .append(true)
        .open(rig.m("db/log"))
        .unwrap();
    file.write_all(b", second").unwrap();
    file.sync_all().unwrap();
    mounted.cut_power(false).unwrap();
    assert_eq!(
        fs::read(rig.b("db/log")).unwrap(),
        format!("{content}, second").into_bytes()
    );
}

#[test]
#[ignore = "needs root and /dev/fuse"]
fn open_files_fail_after_the_cut() {
    let rig = Rig::new(MetadataDurability::OnDirSync);
    fs::write(rig.b("data"), b"content").unwrap();
    let mounted = rig.mount();
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(rig.m("data"))
        .unwrap();
    file.write_all_at(b"C", 0).unwrap();
    mounted.cut_power(false).unwrap();
    assert!(is_dead(file.write_all_at(b"x", 0)));
    assert!(is_dead(file.read(&mut [0; 4])));
    assert!(is_dead(file.sync_all()));
    assert!(is_dead(file.metadata()));
    drop(file);
    // The mount is gone: the mountpoint is an empty directory again.
    assert_eq!(fs::read_dir(rig.mountpoint.path()).unwrap().count(), 0);
    assert_eq!(fs::read(rig.b("data")).unwrap(), b"content");
}

#[test]
#[ignore = "needs root and /dev/fuse"]
fn a_process_writing_when_the_power_goes_gets_errors_and_does_not_hang() {
    let rig = Rig::new(MetadataDurability::OnDirSync);
    let mounted = rig.mount();
    let out = rig.m("out");
    let mut writer = Command::new("sh")
        .arg("-c")
        .arg("while :; do echo line || exit 3; done > \"$1\"")
        .arg("sh")
        .arg(&out)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn sh");
    // Not timing assertions: guards so that a hang fails instead of blocking the suite.
    let deadline = Instant::now() + Duration::from_secs(60);
    while fs::metadata(&out).map(|m| m.len()).unwrap_or(0) < 1000 {
        assert!(Instant::now() < deadline, "the writer never wrote");
        std::thread::sleep(Duration::from_millis(5));
    }
    mounted.cut_power(true).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = writer.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = writer.kill();
            panic!("the writer still runs a minute after the cut");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(status.code(), Some(3), "the write after the cut failed");
    drop(mounted);
    // Never synced, not even its name.
    assert!(!rig.b("out").exists());
}

#[test]
#[ignore = "needs root and /dev/fuse"]
fn every_acknowledged_fsync_survives_a_cut_at_a_random_moment() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let record = |n: usize| format!("record {n:06}\n").into_bytes();
    for round in 0..5 {
        let rig = Rig::new(MetadataDurability::OnDirSync);
        fs::write(rig.b("log"), b"").unwrap();
        let mounted = rig.mount();
        let acked = Arc::new(AtomicUsize::new(0));
        let mut log = OpenOptions::new().append(true).open(rig.m("log")).unwrap();
        let writer = std::thread::spawn({
            let acked = acked.clone();
            move || {
                for n in 0.. {
                    let written = log.write_all(&record(n)).and_then(|()| {
                        // Every third record is left unsynced until the next one.
                        if n % 3 == 2 {
                            Ok(())
                        } else {
                            log.sync_data()
                        }
                    });
                    match written {
                        Ok(()) if n % 3 != 2 => acked.store(n + 1, Ordering::SeqCst),
                        Ok(()) => {}
                        Err(_) => return,
                    }
                }
            }
        });
        let cut_after = 20 + round * 37;
        while acked.load(Ordering::SeqCst) < cut_after {
            std::thread::sleep(Duration::from_millis(1));
        }
        let report = mounted.cut_power(true).unwrap();
        writer.join().unwrap();
        let acked = acked.load(Ordering::SeqCst);
        let content = fs::read(rig.b("log")).unwrap();
        let whole = content
            .chunks(record(0).len())
            .enumerate()
            .take_while(|(n, chunk)| *chunk == record(*n))
            .count();
        assert!(
            whole >= acked,
            "round {round}: {whole} records survived, {acked} acknowledged"
        );
        // After them: only a torn prefix of a later record, after a hole (zeros) if records
        // between were lost.
        let rest = &content[whole * record(0).len()..];
        let hole = rest.iter().take_while(|b| **b == 0).count();
        let lost = hole / record(0).len();
        assert_eq!(hole % record(0).len(), 0, "round {round}: {report:?}");
        assert!(
            rest[hole..].len() < record(0).len() && record(whole + lost).starts_with(&rest[hole..]),
            "round {round}: {report:?}, tail {:?}",
            String::from_utf8_lossy(rest)
        );
        if hole > 0 {
            assert!(
                report.torn.is_some_and(|t| t.kept > 0),
                "a hole only under a torn write"
            );
        }
    }
}

#[test]
#[ignore = "needs root and /dev/fuse"]
fn tens_of_megabytes_of_appends_and_overwrites_roll_back_exactly() {
    let rig = Rig::new(MetadataDurability::OnDirSync);
    let chunk: Vec<u8> = (0..65_536u32).map(|i| (i % 253) as u8).collect();
    let mounted = rig.mount();
    let file = File::create(rig.m("segments")).unwrap();
    for i in 0..256u64 {
        file.write_all_at(&chunk, i * 65_536).unwrap();
    }
    file.sync_all().unwrap();
    fsync_dir(rig.mountpoint.path());
    let durable = fs::read(rig.m("segments")).unwrap();
    assert_eq!(durable.len(), 16 << 20);
    // Overwrite across the whole file, twice in places, and append 8 MiB more.
    for i in 0..200u64 {
        file.write_all_at(&[0xEE; 50_000], i * 80_000 + 17).unwrap();
    }
    for i in 0..128u64 {
        file.write_all_at(&chunk, (16 << 20) + i * 65_536).unwrap();
    }
    file.write_all_at(&[0xDD; 1 << 20], 3_000_000).unwrap();
    mounted.cut_power(false).unwrap();
    assert!(fs::read(rig.b("segments")).unwrap() == durable);
}

#[test]
#[ignore = "needs root and /dev/fuse"]
fn a_clean_unmount_keeps_everything_and_hides_nothing() {
    let rig = Rig::new(MetadataDurability::OnDirSync);
    fs::write(rig.b("old"), b"old").unwrap();
    let mounted = rig.mount();
    let listed: Vec<_> = fs::read_dir(rig.mountpoint.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(listed, ["old"], "the trash directory is invisible");
    fs::write(rig.m("new"), b"never synced").unwrap();
    fs::remove_file(rig.m("old")).unwrap();
    mounted.unmount().unwrap();
    let mut names: Vec<_> = fs::read_dir(rig.backing.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    assert_eq!(names, ["new"]);
    assert_eq!(fs::read(rig.b("new")).unwrap(), b"never synced");
}

#[test]
#[ignore = "needs root and /dev/fuse"]
fn a_second_cut_is_an_error() {
    let rig = Rig::new(MetadataDurability::OnDirSync);
    let mounted = rig.mount();
    mounted.cut_power(false).unwrap();
    assert!(mounted.cut_power(false).is_err());
}

#[test]
fn a_mount_can_be_cut_from_another_thread() {
    fn shareable<T: Send + Sync>() {}
    shareable::<Mounted>();
}

#[test]
fn mounting_inside_the_backing_directory_is_refused() {
    let backing = tempfile::tempdir().unwrap();
    fs::create_dir(backing.path().join("mnt")).unwrap();
    let result = PowerCutFs::mount(
        backing.path(),
        &backing.path().join("mnt"),
        Options::default(),
    );
    let error = result.expect_err("mountpoint inside the backing dir");
    // Either refused for that, or FUSE is not there at all: both said clearly.
    let message = error.to_string();
    assert!(
        message.contains("inside the backing directory") || message.contains("FUSE"),
        "{message}"
    );
}
