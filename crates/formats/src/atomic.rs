//! Every file plumb writes goes through [`write_atomic`]: the bytes go to a
//! temporary name in the target's folder, are synced, and the temporary file
//! is renamed over the target, so no reader ever sees half a file. Temporary
//! files in flight are registered so that a signal handler can remove them
//! ([`abandon_writes`]) before the process exits: an interrupted run leaves
//! neither a partial target nor a stray temporary file.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Temporary files being written, and whether the process is exiting.
static IN_FLIGHT: Mutex<(Vec<PathBuf>, bool)> = Mutex::new((Vec::new(), false));

fn in_flight() -> std::sync::MutexGuard<'static, (Vec<PathBuf>, bool)> {
    IN_FLIGHT.lock().unwrap_or_else(|e| e.into_inner())
}

/// Writes `bytes` to `path` through a temporary file in the same folder.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    write_atomic_with(path, |tmp| std::fs::File::create(tmp)?.write_all(bytes))
}

/// As [`write_atomic`], for a writer that makes the file itself: `write`
/// creates and fills the temporary path it is given (in pieces, so a large
/// file never needs to be whole in memory).
pub fn write_atomic_with(path: &Path, write: impl FnOnce(&Path) -> std::io::Result<()>) -> std::io::Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    {
        let mut g = in_flight();
        if g.1 {
            return Err(std::io::Error::new(std::io::ErrorKind::Interrupted, "interrupted"));
        }
        g.0.push(tmp.clone());
    }
    let result = (|| {
        write(&tmp)?;
        std::fs::OpenOptions::new().write(true).open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    in_flight().0.retain(|p| p != &tmp);
    result
}

/// Removes every temporary file still being written and refuses new writes:
/// for a SIGINT/SIGTERM handler, just before it exits the process.
pub fn abandon_writes() {
    let mut g = in_flight();
    g.1 = true;
    for p in g.0.drain(..) {
        let _ = std::fs::remove_file(p);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_whole_files_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("out.bin");
        write_atomic(&p, b"first").unwrap();
        write_atomic(&p, b"second").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"second");
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("out.bin")]);
    }
}
