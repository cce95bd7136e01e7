//! What an unprivileged worker can reach.
//!
//! A root `balancer` runs its workers as a uid of their own, which can read and execute only
//! what any user can. A checkout may live where no other user may enter (a 0700 /root), and
//! root's PATH may start with such directories (a pyenv shim under /root), so the kit hands
//! workers only paths any user reaches: [`reachable`] copies a file of the checkout to a
//! world-readable scratch directory when its own place is not, and [`worker_path`] is PATH
//! without the directories others cannot enter. The product's default is tested as it ships;
//! the kit adapts the test's files to it.

use std::{
    ffi::OsString,
    os::unix::fs::{MetadataExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    sync::Mutex,
};

/// Any user may enter `dir` and every directory above it.
fn enterable(dir: &Path) -> bool {
    dir.ancestors().all(|d| {
        d.as_os_str().is_empty()
            || std::fs::metadata(d).is_ok_and(|m| m.is_dir() && m.mode() & 0o001 != 0)
    })
}

/// `path` itself if any user can read it (and enter every directory above it), otherwise a
/// copy, with its permission bits, in a scratch directory any user can enter.
pub fn reachable(path: &Path) -> PathBuf {
    let path = std::path::absolute(path).unwrap();
    let readable = std::fs::metadata(&path).is_ok_and(|m| m.mode() & 0o004 != 0);
    if readable && path.parent().is_some_and(enterable) {
        return path;
    }
    static COPIES: Mutex<Vec<(PathBuf, PathBuf)>> = Mutex::new(Vec::new());
    let mut copies = COPIES.lock().unwrap();
    if let Some((_, copy)) = copies.iter().find(|(p, _)| *p == path) {
        return copy.clone();
    }
    let dir = std::env::temp_dir().join(format!(
        "balancer-reach-{}-{}",
        std::process::id(),
        copies.len()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let copy = dir.join(path.file_name().unwrap());
    std::fs::copy(&path, &copy).unwrap_or_else(|e| panic!("copy {}: {e}", path.display()));
    let mode = std::fs::metadata(&path).unwrap().mode() | 0o444;
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(mode & 0o7777)).unwrap();
    copies.push((path, copy.clone()));
    copy
}

/// A shipped example (`node/server.js`), at a path any worker can read.
pub fn example(path: &str) -> String {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let file = reachable(&repo.join("examples").join(path));
    file.to_string_lossy().into_owned()
}

/// The `balancer` binary under test, at a path any worker can execute.
pub fn worker_bin() -> PathBuf {
    reachable(&super::bin())
}

/// This process's PATH without the directories other users cannot enter: what a worker
/// command is looked up in, so that `python3` is one any user can run.
pub fn worker_path() -> OsString {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into());
    std::env::join_paths(std::env::split_paths(&path).filter(|d| enterable(d))).unwrap()
}

/// Lets workers of any uid create files in `dir` (a report, a marker), as in /tmp: sticky, and
/// searchable but not listable by others (mode 1733).
pub fn writable_by_workers(dir: &Path) {
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o1733)).unwrap();
}
