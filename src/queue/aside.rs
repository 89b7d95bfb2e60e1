//! Setting a damaged queue aside: its sled files are moved, not deleted, into `data_dir/damaged/<time>/`
//! for inspection, so that a fresh queue can be opened in their place and rebuilt from the delivery
//! checkpoint.
//!
//! Invariants:
//! - Only sled's own files are moved (`db`, `conf`, `blobs/`, `snap.*`); the checkpoint file and earlier
//!   damaged copies stay where they are.
//! - Moving is a rename within `data_dir`'s filesystem: it needs no free space, so it works on a full disk.
//! - Damaged copies never crowd out the queue: at most [`KEEP_COPIES`] are kept, and while the free space
//!   is under the disk reserve the oldest copy goes first, each removal with a log line.

use std::path::{Path, PathBuf};

/// The folder of `data_dir` that holds damaged copies.
pub const DAMAGED_DIR: &str = "damaged";
/// At most this many damaged copies are kept.
pub const KEEP_COPIES: usize = 3;

/// Whether `name`, a file of `data_dir`, belongs to sled.
fn is_sled_file(name: &str) -> bool {
    matches!(name, "db" | "conf" | "blobs") || name.starts_with("snap.")
}

/// Whether `dir` holds a sled database (its `db` file).
pub fn has_database(dir: &Path) -> bool {
    dir.join("db").exists()
}

/// Moves sled's files out of `dir` into a new `dir/damaged/<time>/`, and returns that folder (`None` when
/// there was nothing to move).
pub fn move_aside(dir: &Path) -> std::io::Result<Option<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_name().to_str().is_some_and(is_sled_file) {
            files.push(entry.file_name());
        }
    }
    if files.is_empty() {
        return Ok(None);
    }
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%S%.3fZ").to_string();
    let target = dir.join(DAMAGED_DIR).join(stamp);
    std::fs::create_dir_all(&target)?;
    for name in files {
        std::fs::rename(dir.join(&name), target.join(&name))?;
    }
    // The renames are durable once both folders are.
    std::fs::File::open(&target)?.sync_all()?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(Some(target))
}

/// The damaged copies in `dir`, oldest first (their names are UTC times, which sort as text).
pub fn copies(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir.join(DAMAGED_DIR)) else {
        return Vec::new();
    };
    let mut copies: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
        .collect();
    copies.sort();
    copies
}

/// Removes damaged copies beyond [`KEEP_COPIES`], and then, oldest first, while `free()` is under
/// `reserve` bytes. Returns the copies removed.
pub fn prune_copies(dir: &Path, reserve: u64, free: impl Fn() -> Option<u64>) -> Vec<PathBuf> {
    let mut removed = Vec::new();
    let mut copies = copies(dir);
    while let Some(oldest) = copies.first().cloned() {
        let too_many = copies.len() > KEEP_COPIES;
        let short = reserve > 0 && free().is_some_and(|free| free < reserve);
        if !too_many && !short {
            break;
        }
        let why = if too_many {
            format!("more than {KEEP_COPIES} damaged copies are kept")
        } else {
            "the disk is under its reserve (queue.min_free_disk)".to_string()
        };
        match std::fs::remove_dir_all(&oldest) {
            Ok(()) => {
                tracing::warn!(copy = %oldest.display(), "removed the oldest damaged copy of the queue: {why}");
                removed.push(oldest);
            }
            Err(err) => {
                tracing::warn!(copy = %oldest.display(), "cannot remove a damaged copy of the queue ({why}): {err}");
                break;
            }
        }
        copies.remove(0);
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_queue(dir: &Path) {
        std::fs::write(dir.join("db"), b"data").expect("db");
        std::fs::write(dir.join("conf"), b"conf").expect("conf");
        std::fs::write(dir.join("snap.0000000000001234"), b"s").expect("snap");
        std::fs::create_dir(dir.join("blobs")).expect("blobs");
        std::fs::write(dir.join("checkpoint.json"), b"{}").expect("checkpoint");
    }

    #[test]
    fn only_sled_files_move_and_nothing_is_deleted() {
        let dir = tempfile::tempdir().expect("tempdir");
        fake_queue(dir.path());
        assert!(has_database(dir.path()));
        let moved = move_aside(dir.path()).expect("move").expect("moved");
        assert!(moved.starts_with(dir.path().join(DAMAGED_DIR)));
        for name in ["db", "conf", "snap.0000000000001234", "blobs"] {
            assert!(moved.join(name).exists(), "{name} kept in the copy");
            assert!(!dir.path().join(name).exists(), "{name} moved");
        }
        assert!(dir.path().join("checkpoint.json").exists());
        assert!(!has_database(dir.path()));
        assert_eq!(move_aside(dir.path()).expect("move"), None, "nothing left");
    }

    #[test]
    fn copies_are_bounded_and_give_way_to_the_reserve_oldest_first() {
        let dir = tempfile::tempdir().expect("tempdir");
        for name in [
            "20260101T000000.000Z",
            "20260102T000000.000Z",
            "20260103T000000.000Z",
            "20260104T000000.000Z",
        ] {
            std::fs::create_dir_all(dir.path().join(DAMAGED_DIR).join(name)).expect("copy");
        }
        let removed = prune_copies(dir.path(), 100, || Some(1_000));
        assert_eq!(removed.len(), 1);
        assert!(removed[0].ends_with("20260101T000000.000Z"));
        assert_eq!(copies(dir.path()).len(), KEEP_COPIES);
        // Short of space: the oldest go until none is left, if need be.
        let removed = prune_copies(dir.path(), 100, || Some(10));
        assert_eq!(removed.len(), KEEP_COPIES);
        assert!(copies(dir.path()).is_empty());
    }
}
