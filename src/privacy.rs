//! The queue is private by default: it holds user names, e-mail and IP addresses, so `data_dir` is created
//! 0700 and every file the agent (or sled, on its behalf) creates in it is 0600, whatever the umask of the
//! shell that started it.
//!
//! Invariants:
//! - [`restrict_umask`] only ever tightens the process umask (group and others lose every bit); it never
//!   loosens a stricter one. The command line calls it first thing for each command that writes the queue
//!   or its exports, so sled's own files (which it creates itself) come out 0600.
//! - [`create_data_dir`] creates missing folders 0700; it never changes the mode of a folder that exists
//!   (the packaged unit's `StateDirectoryMode=0750` is the administrator's choice).
//! - [`exposure`] only reads: `validate` (and `run`) turn its answer into a warning.

use std::path::Path;

/// Bits of the umask that make new files and folders private to their owner.
const PRIVATE_UMASK: u32 = 0o077;

/// Adds group and others to the process umask (`umask | 077`), so that every file and folder created from
/// here on is private to the agent's user. Returns the previous umask.
#[cfg(unix)]
pub fn restrict_umask() -> u32 {
    use rustix::fs::Mode;
    use rustix::process::umask;
    // umask(2) cannot be read without being set: set the private mask, then add back what was stricter.
    let previous = umask(Mode::from_raw_mode(PRIVATE_UMASK));
    umask(Mode::from_raw_mode(previous.as_raw_mode() | PRIVATE_UMASK));
    previous.as_raw_mode()
}

#[cfg(not(unix))]
pub fn restrict_umask() -> u32 {
    0
}

/// Creates `dir` and any missing parent, each 0700 (before the umask, which can only remove more). An
/// existing folder is left as it is.
pub fn create_data_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir)
}

/// When an existing `dir` lets other users list it or reach the files in it, what to tell the
/// administrator; `None` when it does not exist or is private enough.
#[cfg(unix)]
pub fn exposure(dir: &Path) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir).ok()?.permissions().mode() & 0o7777;
    // Read lists the files; execute (search) opens any file whose name is known, and sled's are.
    (mode & 0o005 != 0).then(|| {
        format!(
            "data_dir = {:?} is open to other users (mode {:o}): the queue holds user names, e-mail and IP \
             addresses. Run `chmod o-rwx {}` (the agent creates a new data_dir 0700 and its files 0600)",
            dir.display().to_string(),
            mode,
            dir.display()
        )
    })
}

#[cfg(not(unix))]
pub fn exposure(_dir: &Path) -> Option<String> {
    None
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path)
            .expect("exists")
            .permissions()
            .mode()
            & 0o777
    }

    #[test]
    fn new_folders_are_private_and_existing_ones_kept() {
        let root = tempfile::tempdir().expect("temp dir");
        let dir = root.path().join("a").join("queue");
        create_data_dir(&dir).expect("created");
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&root.path().join("a")), 0o700);
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o750)).expect("chmod");
        create_data_dir(&dir).expect("exists already");
        assert_eq!(
            mode(&dir),
            0o750,
            "an existing folder's mode is the administrator's"
        );
    }

    #[test]
    fn exposure_names_folders_others_can_read_or_enter() {
        let root = tempfile::tempdir().expect("temp dir");
        let dir = root.path().join("queue");
        assert_eq!(exposure(&dir), None, "a missing folder is not exposed");
        std::fs::create_dir(&dir).expect("created");
        for (bits, exposed) in [
            (0o755, true),
            (0o701, true),
            (0o704, true),
            (0o750, false),
            (0o700, false),
        ] {
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(bits)).expect("chmod");
            let warning = exposure(&dir);
            assert_eq!(warning.is_some(), exposed, "mode {bits:o}: {warning:?}");
            if let Some(warning) = warning {
                assert!(warning.contains(&format!("mode {bits:o}")), "{warning}");
                assert!(warning.contains("chmod o-rwx"), "{warning}");
            }
        }
    }
}
