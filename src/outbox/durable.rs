//! Files that survive a crash or a power cut whole or not at all: written under a temporary name, synced,
//! renamed, and the folder synced, so that the name appears only once the content is on disk and the
//! rename itself is on disk before anyone is told.
//!
//! Invariant: a temporary name starts with `.` and ends with [`TMP_SUFFIX`]: nothing that lists finished
//! files (`ship`, a transfer tool told to skip dot-files) ever takes one, and a crash leaves nothing else.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

pub const TMP_SUFFIX: &str = ".tmp";

/// The temporary name `name` is written under in its folder.
pub fn tmp_name(name: &str) -> String {
    format!(".{name}{TMP_SUFFIX}")
}

/// Whether `name` is a temporary name of [`write_atomic`].
pub fn is_tmp_name(name: &str) -> bool {
    name.starts_with('.') && name.ends_with(TMP_SUFFIX)
}

/// Writes `bytes` as `dir/name`, replacing any file of that name, durably (see the module's comment).
pub fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<PathBuf> {
    let tmp = dir.join(tmp_name(name));
    let target = dir.join(name);
    let result = (|| {
        let mut file = File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        drop(file);
        fs::rename(&tmp, &target)?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map(|()| target)
}

/// Makes the entries of `dir` (names created, renamed or removed) durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Moves `file` into `to_dir` under `name`, durably (both folders synced). Both must be on one filesystem.
pub fn move_into(file: &Path, to_dir: &Path, name: &str) -> io::Result<PathBuf> {
    let target = to_dir.join(name);
    fs::rename(file, &target)?;
    sync_dir(to_dir)?;
    if let Some(from) = file.parent() {
        sync_dir(from)?;
    }
    Ok(target)
}

/// Removes `file` durably.
pub fn remove(file: &Path) -> io::Result<()> {
    fs::remove_file(file)?;
    match file.parent() {
        Some(dir) => sync_dir(dir),
        None => Ok(()),
    }
}

/// A name in `dir` not taken yet: `name`, else `name.1`, `name.2`...
pub fn free_name(dir: &Path, name: &str) -> String {
    let mut candidate = name.to_string();
    let mut n = 0;
    while dir.join(&candidate).exists() {
        n += 1;
        candidate = format!("{name}.{n}");
    }
    candidate
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_is_replaced_whole_and_no_temporary_is_left() {
        let dir = tempfile::tempdir().expect("dir");
        write_atomic(dir.path(), "a", b"one").expect("written");
        write_atomic(dir.path(), "a", b"two").expect("written");
        assert_eq!(fs::read(dir.path().join("a")).expect("read"), b"two");
        let names: Vec<String> = fs::read_dir(dir.path())
            .expect("list")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec!["a"]);
        assert!(is_tmp_name(&tmp_name("a")) && !is_tmp_name("a"));
        let sub = dir.path().join("sub");
        fs::create_dir(&sub).expect("sub");
        assert_eq!(free_name(&sub, "a"), "a");
        move_into(&dir.path().join("a"), &sub, "a").expect("moved");
        assert_eq!(free_name(&sub, "a"), "a.1");
        remove(&sub.join("a")).expect("removed");
        assert!(!sub.join("a").exists());
    }
}
