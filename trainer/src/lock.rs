//! The advisory lock on a run's output folder, the free-space check before a checkpoint is
//! written, and the clean-up of temporary files that failed or killed writers left behind.
//!
//! `slb train` holds [`OutLock`] on `OUT/.slb.lock` from before it reads data until it exits, so
//! a second run on the same `--out` refuses at once instead of interleaving metrics and
//! replacing the first run's checkpoint. The lock is the operating system's advisory file lock
//! (`flock` on Linux, through `std::fs::File::try_lock`): it belongs to the open file, so it
//! dies with its process, `kill -9` included, and a stale lock file never blocks a new run.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The lock file's name inside the output folder.
pub const LOCK_FILE: &str = ".slb.lock";

/// A held lock on an output folder; released when dropped (or when the process ends).
#[derive(Debug)]
pub struct OutLock {
    _file: File,
    path: PathBuf,
}

impl OutLock {
    /// Creates `out` if needed and takes its lock without waiting: [`Error::OutputBusy`] when
    /// another process holds it.
    pub fn acquire(out: &Path) -> Result<OutLock> {
        std::fs::create_dir_all(out).map_err(|e| Error::io("create", out, e))?;
        let path = out.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| Error::io("open", &path, e))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                return Err(Error::OutputBusy {
                    path: out.to_path_buf(),
                    pid: text.trim().parse().ok(),
                });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(Error::io("lock", &path, e)),
        }
        // Who holds it, for the other run's message (advisory: the lock is what counts).
        let _ = file.set_len(0);
        let _ = file.rewind();
        let _ = write!(file, "{}", std::process::id());
        let _ = file.flush();
        Ok(OutLock { _file: file, path })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Removes the temporary files `.{name}.tmp<pid>` that [`crate::train::write_atomic`] left in
/// `dir` when its process died (the pid is not running). Returns how many it removed. Only on
/// systems with `/proc` (elsewhere nothing is removed: a live writer's file must never go).
pub fn remove_stale_temps(dir: &Path, name: &str) -> usize {
    if !Path::new("/proc/self").exists() {
        return 0;
    }
    let prefix = format!(".{name}.tmp");
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut removed = 0;
    for e in entries.flatten() {
        let file_name = e.file_name();
        let Some(pid) = file_name
            .to_str()
            .and_then(|n| n.strip_prefix(&prefix))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        let alive = pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists();
        if !alive && std::fs::remove_file(e.path()).is_ok() {
            removed += 1;
        }
    }
    removed
}

/// Bytes an unprivileged writer can still put on the file system holding `dir`, where the
/// system says (`statvfs`); `None` where it cannot be known.
pub fn available_space(dir: &Path) -> Option<u64> {
    #[cfg(unix)]
    {
        let s = rustix::fs::statvfs(dir).ok()?;
        Some(s.f_bavail.saturating_mul(s.f_frsize))
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        None
    }
}

/// [`Error::DiskFull`] when the file system holding `dir` has less than `needed` bytes free:
/// checked before libtorch writes a checkpoint, whose zip writer fails on a full disk with no
/// word of the disk (or aborts the process).
pub fn check_free_space(dir: &Path, needed: u64) -> Result<()> {
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    match available_space(dir) {
        Some(available) if available < needed => Err(Error::DiskFull {
            path: dir.to_path_buf(),
            needed,
            available,
        }),
        _ => Ok(()),
    }
}
