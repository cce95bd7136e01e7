//! Who the workers run as.
//!
//! A worker is the code most exposed to the network, and holds no capability at all (see
//! [`crate::worker::spawn`]). Without capabilities uid 0 still owns the host's files and the
//! supervisor's control socket, so a root supervisor does not run its workers as root unless
//! told to:
//!
//! - **Dynamic** (root, no `--user`): each slot's worker runs as a uid of its own, and every
//!   worker of the service shares one gid, all drawn from 61184-65519 where no account lives
//!   ([`claims`]), as systemd's `DynamicUser=` does. A uid of its own per slot, rather than one
//!   per service, is what keeps workers apart: the kernel lets a process signal, trace or read
//!   the `/proc/PID/environ` and memory of processes of its own uid only, so one worker taken
//!   over cannot kill, trace or read the others (nor the supervisor, which is root). The ids are
//!   stable: slot 2 of the service `api` gets the same uid after a restart, and a replacement
//!   of that slot's worker (a restart, a reload) keeps it.
//! - **Account** (`--user NAME`): every worker runs as that account, for files and directories
//!   it must own. Workers of one account may signal each other.
//! - **Own** (the supervisor is not root): workers keep the supervisor's uid, minus every
//!   capability; the control socket then tells them apart by ancestry
//!   ([`crate::control::peer`]). `--user root` (an Account of uid 0) gives the same from
//!   root, and says so in one warning line.
//!
//! [`access`] checks at start that the account can execute and read the worker command.

pub mod access;
pub mod claims;
mod error;

use std::path::Path;

pub use error::{Error, Result};

use crate::{
    capabilities,
    worker::spawn::{Credentials, WorkerCommand},
};

/// Who the workers of a service run as.
pub enum Identity {
    /// The supervisor's own account.
    Own,
    /// One account for every worker (`--user`).
    Account(Credentials),
    /// A uid per slot and a gid per service, drawn from the dynamic range.
    Dynamic(Dynamic),
}

pub struct Dynamic {
    service: String,
    /// None until [`Identity::prepare`] opens it.
    register: Option<claims::Register>,
    gid: u32,
    /// The uids of the slots claimed at start, for [`Identity::announce`].
    uids: Vec<u32>,
}

impl Identity {
    /// What `--user` and `--group` ask for, for the service `name`: nothing is claimed yet.
    pub fn resolve(user: Option<&str>, group: Option<&str>, name: &str) -> Result<Identity> {
        let root = nix::unistd::geteuid().is_root();
        Ok(match user {
            Some(user) => {
                let c = Credentials::resolve(user, group).map_err(Error::Account)?;
                if c.uid == 0 {
                    log::warn!(
                        "workers run as root (--user root): one taken over can write the host's \
                         root-owned files; without --user each slot's worker gets an \
                         unprivileged uid of its own"
                    );
                }
                Identity::Account(c)
            }
            None if root => Identity::Dynamic(Dynamic {
                service: name.to_owned(),
                register: None,
                gid: 0,
                uids: Vec::new(),
            }),
            None => Identity::Own,
        })
    }

    /// Start-up checks, before anything is created but the register's record: the
    /// capabilities switching and signalling the workers needs, the ids of the first `workers`
    /// slots, and that those ids can run `command`.
    pub fn prepare(
        &mut self,
        runtime_dir: &Path,
        workers: u32,
        command: &WorkerCommand,
    ) -> Result<()> {
        let as_root = match self {
            Identity::Own => nix::unistd::geteuid().is_root(),
            Identity::Account(c) => c.uid == 0,
            Identity::Dynamic(_) => false,
        };
        capabilities::require_worker_isolation(as_root)?;
        if let Identity::Dynamic(d) = self {
            let mut register = claims::Register::open(&runtime_dir.join("ids"))?;
            d.gid = register.claim(&[format!("gid:{}", d.service)])?[0];
            d.register = Some(register);
            let keys: Vec<String> = (0..workers).map(|s| d.key(s)).collect();
            d.uids = d.register.as_mut().expect("opened above").claim(&keys)?;
            require_mapped(claims::FIRST, claims::LAST)?;
        }
        if let Some(who) = self.other_account(0)? {
            require_switching()?;
            if !command.is_builtin() {
                access::check(command, who)?;
            }
        }
        Ok(())
    }

    /// The uid and gid slot `slot`'s worker runs as; None: the supervisor's own.
    pub fn for_slot(&mut self, slot: u32) -> Result<Option<Credentials>> {
        Ok(match self {
            Identity::Own => None,
            Identity::Account(c) => Some(*c),
            Identity::Dynamic(d) => {
                let key = d.key(slot);
                let Some(register) = d.register.as_mut() else {
                    return Err(Error::Unclaimed);
                };
                let uid = register.claim(&[key])?[0];
                Some(Credentials { uid, gid: d.gid })
            }
        })
    }

    /// Says, once the workers run, who they run as.
    pub fn announce(&self) {
        match self {
            Identity::Own => {}
            Identity::Account(c) => log::info!("workers run as uid {} gid {}", c.uid, c.gid),
            Identity::Dynamic(d) => {
                let each: Vec<String> = d
                    .uids
                    .iter()
                    .enumerate()
                    .map(|(slot, uid)| format!("{slot}:{uid}"))
                    .collect();
                log::info!(
                    "workers run as uids of their own (slot:uid {}) and gid {}",
                    each.join(" "),
                    d.gid
                );
            }
        }
    }

    /// [`access::check`] for a command of a reload.
    pub fn check_access(&mut self, command: &WorkerCommand) -> Result<()> {
        match self.other_account(0)? {
            Some(who) if !command.is_builtin() => access::check(command, who),
            _ => Ok(()),
        }
    }

    /// The credentials of `slot` when they differ from the supervisor's own uid.
    fn other_account(&mut self, slot: u32) -> Result<Option<Credentials>> {
        let me = nix::unistd::geteuid().as_raw();
        Ok(self.for_slot(slot)?.filter(|c| c.uid != me))
    }
}

impl Dynamic {
    fn key(&self, slot: u32) -> String {
        format!("uid:{}/{slot}", self.service)
    }
}

/// Starting workers as another account needs CAP_SETUID and CAP_SETGID; stopping them,
/// CAP_KILL. Refused up front rather than at the first worker.
fn require_switching() -> Result<()> {
    let caps = capabilities::effective()?;
    let missing: Vec<&str> = [(6, "SETGID"), (7, "SETUID"), (5, "KILL")]
        .into_iter()
        .filter(|(cap, _)| !capabilities::has(caps, *cap))
        .map(|(_, name)| name)
        .collect();
    if !missing.is_empty() {
        return Err(Error::Switching { missing });
    }
    Ok(())
}

/// In a user namespace (a rootless container) only the ids its maps list exist: refuse a range
/// it does not map, with the fix, rather than fail at the first worker's setuid.
fn require_mapped(first: u32, last: u32) -> Result<()> {
    for (file, what) in [("/proc/self/uid_map", "uid"), ("/proc/self/gid_map", "gid")] {
        let Ok(map) = std::fs::read_to_string(file) else {
            continue;
        };
        let covered = map.lines().any(|line| {
            let v: Vec<u64> = line
                .split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect();
            v.len() == 3 && v[0] <= u64::from(first) && u64::from(last) < v[0] + v[2]
        });
        if !covered {
            return Err(Error::Unmapped {
                what,
                first,
                last,
                file,
            });
        }
    }
    Ok(())
}
