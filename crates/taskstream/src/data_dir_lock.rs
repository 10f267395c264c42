//! One owner per data directory. `taskstream up` keeps the SQLite database,
//! the registry's database and `endpoints.json` in its data directory; a
//! second `up` on the same directory would publish the same outbox twice and
//! overwrite the first one's endpoints, so it is refused.
//!
//! The lock is an advisory lock on a file in the directory (`flock`), which
//! the kernel releases when the holder exits, however it exits: a lock file
//! left behind by a killed process blocks nobody. The file holds the holder's
//! pid and command, for the error message only.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

/// The lock `taskstream up` holds on its data directory.
pub const INSTANCE_LOCK_FILE: &str = "taskstream.lock";

/// The lock whoever serves the directory's `registry.db` holds (`up` with
/// its embedded registry, or `taskstream registry`).
pub const REGISTRY_LOCK_FILE: &str = "registry.lock";

/// A held lock; dropping it releases the lock.
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
    path: PathBuf,
}

impl DataDirLock {
    /// Takes `dir/name` for `command` (how the error names the holder, e.g.
    /// `up`), creating the directory if needed. Fails at once, with one line
    /// naming the process that holds it, if another process does.
    pub fn acquire(dir: &Path, name: &str, command: &str) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create the data directory {}", dir.display()))?;
        let path = dir.join(name);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = describe_holder(&holder);
                bail!(
                    "the data directory {} is in use by {holder} (lock {}); stop it or pass another --data-dir",
                    dir.display(),
                    path.display()
                );
            }
            Err(TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("cannot lock {}", path.display()))
            }
        }
        file.set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| writeln!(file, "{}\ntaskstream {command}", std::process::id()))
            .and_then(|()| file.flush())
            .with_context(|| format!("cannot write {}", path.display()))?;
        Ok(Self { _file: file, path })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// "`taskstream up` (pid 1234)" from the lock file's text, or as much of it
/// as the file tells (it may be empty if its holder has only just locked it).
fn describe_holder(text: &str) -> String {
    let mut lines = text.lines();
    let pid = lines.next().and_then(|pid| pid.trim().parse::<u32>().ok());
    let command = lines.next().map(str::trim).filter(|c| !c.is_empty());
    match (command, pid) {
        (Some(command), Some(pid)) => format!("`{command}` (pid {pid})"),
        (None, Some(pid)) => format!("another taskstream process (pid {pid})"),
        _ => "another taskstream process".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_a_directory_is_refused_until_the_first_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let first = DataDirLock::acquire(dir.path(), INSTANCE_LOCK_FILE, "up").unwrap();
        let err = DataDirLock::acquire(dir.path(), INSTANCE_LOCK_FILE, "up")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&format!("`taskstream up` (pid {})", std::process::id())),
            "{err}"
        );
        assert_eq!(err.lines().count(), 1, "{err}");
        // Another lock in the same directory is independent.
        let registry = DataDirLock::acquire(dir.path(), REGISTRY_LOCK_FILE, "registry").unwrap();
        drop(first);
        DataDirLock::acquire(dir.path(), INSTANCE_LOCK_FILE, "up").unwrap();
        drop(registry);
    }

    #[test]
    fn the_holder_is_described_from_whatever_the_file_holds() {
        assert_eq!(
            describe_holder("42\ntaskstream up\n"),
            "`taskstream up` (pid 42)"
        );
        assert_eq!(
            describe_holder("42\n"),
            "another taskstream process (pid 42)"
        );
        assert_eq!(describe_holder(""), "another taskstream process");
    }
}
