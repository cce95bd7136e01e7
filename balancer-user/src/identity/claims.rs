//! The host's register of dynamic worker ids: which numbers of [`FIRST`]..=[`LAST`] each
//! running balancer holds, so that two services never share one.
//!
//! Every supervisor that hands out dynamic ids keeps one record file in the register's
//! directory (`<runtime dir>/ids/<pid>`), one `number key` line per id, and holds an exclusive
//! `flock` on it for as long as it lives. A record whose lock can be taken belongs to a
//! supervisor that is gone (the kernel drops a dead process's locks), and its numbers are free
//! again. Claims are made under a second lock, on `ids/.lock`, so that two supervisors starting
//! together never pick the same free number; one supervisor claims all its numbers at once.
//!
//! A key is hashed (FNV-1a, stable across builds) to its first candidate, and the first free
//! number from there on is taken: a service restarted under the same name gets the same ids
//! unless another took them meanwhile. Free means: in no live record, no account or group of
//! that number (`getpwuid`, `getgrgid`, so NSS sources such as systemd's own dynamic users
//! count), and no lock file of systemd's `DynamicUser=` (`/run/systemd/dynamic-uid/<n>`).

use std::{
    collections::BTreeSet,
    fs::{File, OpenOptions},
    io::{Read as _, Write as _},
    os::unix::fs::{DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
};

use nix::fcntl::{Flock, FlockArg};

use super::{Error, Result};

/// The range systemd leaves to dynamic users (`DynamicUser=`): no distribution gives accounts
/// there.
pub const FIRST: u32 = 61184;
pub const LAST: u32 = 65519;

/// Where systemd keeps a lock file per dynamic id it hands out.
const SYSTEMD_IDS: &str = "/run/systemd/dynamic-uid";

/// This supervisor's record in the register, locked for its lifetime.
pub struct Register {
    dir: PathBuf,
    record: Flock<File>,
    /// What the record holds: (number, key).
    held: Vec<(u32, String)>,
}

impl Register {
    /// Creates the register's directory (0700) if it is missing and this supervisor's record.
    pub fn open(dir: &Path) -> Result<Register> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| Error::CreateRegister {
                dir: dir.to_owned(),
                source,
            })?;
        let meta = std::fs::metadata(dir)?;
        if meta.mode() & 0o022 != 0 || meta.uid() != nix::unistd::geteuid().as_raw() {
            return Err(Error::SharedRegister {
                dir: dir.to_owned(),
            });
        }
        let _guard = lock_register(dir)?;
        let file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(dir.join(std::process::id().to_string()))
            .map_err(|source| Error::WriteRegister {
                dir: dir.to_owned(),
                source,
            })?;
        let record = Flock::lock(file, FlockArg::LockExclusiveNonblock)
            .map_err(|(_, e)| Error::LockRecord(e))?;
        Ok(Register {
            dir: dir.to_owned(),
            record,
            held: Vec::new(),
        })
    }

    /// The number held for each of `keys`: the one already held, or the first free one from
    /// the key's hash on, claimed now.
    pub fn claim(&mut self, keys: &[String]) -> Result<Vec<u32>> {
        if keys.iter().all(|k| self.held_for(k).is_some()) {
            return Ok(keys.iter().filter_map(|k| self.held_for(k)).collect());
        }
        let _guard = lock_register(&self.dir)?;
        let mut taken = self.others()?;
        taken.extend(self.held.iter().map(|(n, _)| *n));
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            if let Some(n) = self.held_for(key) {
                out.push(n);
                continue;
            }
            let Some(n) = first_free(key, &taken) else {
                return Err(Error::NoFreeId);
            };
            taken.insert(n);
            writeln!(self.record, "{n} {key}").map_err(Error::WriteRecord)?;
            self.held.push((n, key.clone()));
            out.push(n);
        }
        Ok(out)
    }

    fn held_for(&self, key: &str) -> Option<u32> {
        self.held.iter().find(|(_, k)| k == key).map(|(n, _)| *n)
    }

    /// The numbers held by the other live supervisors; the records of dead ones are removed.
    fn others(&self) -> Result<BTreeSet<u32>> {
        let mine = std::process::id().to_string();
        let mut taken = BTreeSet::new();
        for entry in std::fs::read_dir(&self.dir)?.flatten() {
            let name = entry.file_name();
            if name == *mine || name.to_string_lossy().starts_with('.') {
                continue;
            }
            let Ok(file) = File::open(entry.path()) else {
                continue;
            };
            match Flock::lock(file, FlockArg::LockSharedNonblock) {
                // Nobody holds it: its supervisor is gone.
                Ok(_) => {
                    let _ = std::fs::remove_file(entry.path());
                }
                Err((mut file, _)) => {
                    let mut text = String::new();
                    let _ = file.read_to_string(&mut text);
                    taken.extend(
                        text.lines()
                            .filter_map(|l| l.split_whitespace().next()?.parse::<u32>().ok()),
                    );
                }
            }
        }
        Ok(taken)
    }
}

impl Drop for Register {
    /// The record goes with its supervisor (a record left by one that died is removed by the
    /// next claim).
    fn drop(&mut self) {
        let _ = std::fs::remove_file(self.dir.join(std::process::id().to_string()));
    }
}

/// Holds the register's claim lock until dropped.
fn lock_register(dir: &Path) -> Result<Flock<File>> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(dir.join(".lock"))
        .map_err(|source| Error::OpenLock {
            dir: dir.to_owned(),
            source,
        })?;
    Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, e)| Error::LockRegister(e))
}

/// The first number from `key`'s hash on that is neither in `taken` nor used on this host.
fn first_free(key: &str, taken: &BTreeSet<u32>) -> Option<u32> {
    let size = LAST - FIRST + 1;
    let start = (fnv1a(key.as_bytes()) % u64::from(size)) as u32;
    (0..size)
        .map(|i| FIRST + (start + i) % size)
        .find(|n| !taken.contains(n) && unused_on_host(*n))
}

/// No account, group or systemd dynamic user has this number.
fn unused_on_host(n: u32) -> bool {
    use nix::unistd::{Gid, Group, Uid, User};
    free(User::from_uid(Uid::from_raw(n))) == Some(true)
        && free(Group::from_gid(Gid::from_raw(n))) == Some(true)
        && !Path::new(SYSTEMD_IDS).join(n.to_string()).exists()
}

/// Whether an account lookup found nothing: no entry, or one of the errors getpwuid_r(3)
/// lists for "not found" (a host without /etc/passwd, such as a minimal VM or image, answers
/// ENOENT with glibc and musl alike). None for a real failure: then the number counts as
/// taken.
fn free<T>(found: nix::Result<Option<T>>) -> Option<bool> {
    use nix::errno::Errno;
    match found {
        Ok(entry) => Some(entry.is_none()),
        Err(Errno::ENOENT | Errno::ESRCH | Errno::EBADF | Errno::EPERM) => Some(true),
        Err(_) => None,
    }
}

/// 64-bit FNV-1a: a hash whose value never changes with the compiler or the platform.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lookup_that_finds_no_account_frees_the_number() {
        use nix::errno::Errno;
        assert_eq!(free::<()>(Ok(None)), Some(true));
        assert_eq!(free(Ok(Some(()))), Some(false));
        assert_eq!(free::<()>(Err(Errno::ENOENT)), Some(true));
        assert_eq!(free::<()>(Err(Errno::EIO)), None);
    }

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("balancer-ids-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn the_hash_is_stable() {
        // The published FNV-1a test vectors: ids must not move when the compiler changes.
        assert_eq!(fnv1a(b""), 0xcbf29ce484222325);
        assert_eq!(fnv1a(b"a"), 0xaf63dc4c8601ec8c);
        assert_eq!(fnv1a(b"foobar"), 0x85944171f73967e8);
    }

    #[test]
    fn claims_are_stable_distinct_and_freed_with_their_holder() {
        let dir = scratch("claims");
        let keys: Vec<String> = (0..8).map(|s| format!("uid:api/{s}")).collect();
        let mut a = Register::open(&dir).unwrap();
        let first = a.claim(&keys).unwrap();
        assert!(first.iter().all(|n| (FIRST..=LAST).contains(n)));
        assert_eq!(first.iter().collect::<BTreeSet<_>>().len(), 8, "{first:?}");
        assert_eq!(
            a.claim(&keys[..2]).unwrap(),
            first[..2],
            "held ids come back"
        );
        // Another live holder (a record locked by another open file) never gets them.
        let other = dir.join("1");
        let mut f = File::create(&other).unwrap();
        let taken: Vec<String> = first.iter().map(|n| format!("{n} uid:web/0")).collect();
        writeln!(f, "{}", taken.join("\n")).unwrap();
        let held = Flock::lock(f, FlockArg::LockExclusive).unwrap();
        drop(a);
        let mut b = Register::open(&dir).unwrap();
        let second = b.claim(&keys).unwrap();
        assert!(second.iter().all(|n| !first.contains(n)), "{second:?}");
        // Once that holder is gone, the same keys get the same ids as the first time.
        drop(held);
        drop(b);
        let mut c = Register::open(&dir).unwrap();
        assert_eq!(c.claim(&keys).unwrap(), first);
        assert!(!other.exists(), "the dead holder's record is removed");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
