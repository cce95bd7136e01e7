//! Several balancers on one host: each keeps its control socket, `<name>.sock`, in one private
//! runtime directory, where `balancer ls` and every client command find them.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{call, Error, Request, Result, State, Status};

/// The directory every balancer of this user puts its control socket in, one socket per
/// service (`<name>.sock`), which is how `balancer ls` finds them: `$BALANCER_RUNTIME_DIR` if
/// set; for root `/run/balancer`; otherwise `$XDG_RUNTIME_DIR/balancer`, or `~/.balancer`. Never
/// a shared directory such as /tmp, where another user could take a name first.
pub fn runtime_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("BALANCER_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        PathBuf::from(dir)
    } else if nix::unistd::geteuid().is_root() {
        PathBuf::from("/run/balancer")
    } else if let Some(dir) = std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        Path::new(&dir).join("balancer")
    } else {
        let home = std::env::var_os("HOME").unwrap_or_else(|| ".".into());
        Path::new(&home).join(".balancer")
    }
}

/// The control socket of the service `name`.
pub fn path_for(name: &str) -> PathBuf {
    runtime_dir().join(format!("{name}.sock"))
}

/// Checks a service name: it becomes a file name and a metrics label.
pub fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !ok {
        return Err(Error::BadName(name.to_owned()));
    }
    Ok(())
}

/// A running balancer, as `balancer ls` shows it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Service {
    pub name: String,
    pub control: PathBuf,
    pub pid: u32,
    pub listen: String,
    pub up: usize,
    pub workers: usize,
    pub policy: String,
    pub metrics: Option<String>,
}

/// Every balancer whose control socket is in [`runtime_dir`] and answers, by name.
pub fn running() -> Vec<Service> {
    let Ok(entries) = std::fs::read_dir(runtime_dir()) else {
        return Vec::new();
    };
    let mut found: Vec<Service> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "sock"))
        .filter_map(|control| {
            let answer = call(&control, &Request::Status).ok()?;
            let s: Status = serde_json::from_str(&answer).ok()?;
            Some(Service {
                name: s.name.clone(),
                pid: s.pid,
                listen: s.listen.clone(),
                up: s.slots.iter().filter(|x| x.state == State::Up).count(),
                workers: s.slots.len(),
                policy: s.policy.clone(),
                metrics: s.metrics.clone(),
                control,
            })
        })
        .collect();
    found.sort_by(|a, b| a.name.cmp(&b.name));
    found
}

/// The control socket a client command talks to: `--control` if given; else the service
/// `--name` names (by name, or by its listen port); else the only balancer running.
pub fn find(control: Option<PathBuf>, name: Option<&str>) -> Result<PathBuf> {
    if let Some(path) = control {
        return Ok(path);
    }
    let dir = runtime_dir();
    if let Some(name) = name {
        let path = path_for(name);
        if path.exists() {
            return Ok(path);
        }
        let services = running();
        if let Some(s) = services
            .iter()
            .find(|s| s.listen.rsplit(':').next() == Some(name))
        {
            return Ok(s.control.clone());
        }
        let names: Vec<&str> = services.iter().map(|s| s.name.as_str()).collect();
        return Err(Error::NoSuchName {
            name: name.to_owned(),
            running: if names.is_empty() {
                "none".into()
            } else {
                names.join(", ")
            },
        });
    }
    let services = running();
    match services.as_slice() {
        [one] => Ok(one.control.clone()),
        [] => Err(Error::NoneRunning { dir }),
        many => {
            let names: Vec<&str> = many.iter().map(|s| s.name.as_str()).collect();
            Err(Error::Several(names.join(", ")))
        }
    }
}

/// `balancer ls`: one line per running balancer.
pub fn render_services(services: &[Service]) -> String {
    let mut out = String::from(
        "NAME              LISTEN                  PID      WORKERS  POLICY        METRICS\n",
    );
    for s in services {
        out.push_str(&format!(
            "{:<17} {:<23} {:<8} {:<8} {:<13} {}\n",
            s.name,
            s.listen,
            s.pid,
            format!("{}/{}", s.up, s.workers),
            s.policy,
            s.metrics.as_deref().unwrap_or("off"),
        ));
    }
    out
}
