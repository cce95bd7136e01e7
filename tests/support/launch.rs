//! A running `balancer`: the binary under test, started as a child process with a control
//! socket and a log of its own, and stopped when dropped.

use std::{
    io::{BufRead as _, Write as _},
    net::SocketAddr,
    os::unix::net::UnixStream,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use anyhow::Result;
use serde_json::Value;

use crate::{poll, worker_bin, worker_path};

/// The `balancer` binary under test: `BALANCER_BIN` if set (a release build, an installed
/// copy), else the one cargo built for this test run, never whatever a past build left in
/// target/.
///
/// The end-to-end tests are integration tests of the `balancer` package (listed under
/// `[[test]]` in balancer-user/Cargo.toml): `cargo test` builds the binary before them and
/// names it in `CARGO_BIN_EXE_balancer` when it runs them.
pub fn bin() -> PathBuf {
    if let Some(p) = std::env::var_os("BALANCER_BIN") {
        return p.into();
    }
    std::env::var_os("CARGO_BIN_EXE_balancer")
        .map(PathBuf::from)
        .expect(
            "CARGO_BIN_EXE_balancer is not set: run the end-to-end tests through cargo \
             (`cargo test -p balancer --test NAME`), list a new test file under [[test]] in \
             balancer-user/Cargo.toml, or name a binary in BALANCER_BIN",
        )
}

/// 127.0.0.1:`port`, where a test's balancer listens.
fn on_port(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn scratch_dir() -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "balancer-test-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A `balancer run` child process, stopped (SIGTERM, then SIGKILL) when dropped.
pub struct Balancer {
    pub child: Child,
    pub addr: SocketAddr,
    pub control: PathBuf,
    pub log: PathBuf,
}

impl Balancer {
    /// Starts `balancer run --listen 127.0.0.1:<port> --workers <workers> <extra>` and waits
    /// until every slot is up.
    pub fn start(port: u16, workers: u32, extra: &[&str]) -> Balancer {
        let addr = on_port(port);
        Balancer::start_on(&addr.to_string(), addr, workers, extra)
    }

    /// Starts `balancer run --listen <listen>`; clients will connect to `addr`.
    pub fn start_on(listen: &str, addr: SocketAddr, workers: u32, extra: &[&str]) -> Balancer {
        Balancer::launch(listen, addr, workers, extra, true)
    }

    /// Starts it and returns once the control socket answers (and, if `all_up`, every slot is
    /// up).
    pub fn launch(
        listen: &str,
        addr: SocketAddr,
        workers: u32,
        extra: &[&str],
        all_up: bool,
    ) -> Balancer {
        Balancer::launch_under(&[], listen, addr, workers, extra, all_up)
    }

    /// Like [`Balancer::start`], with the supervisor's stdout a pipe that nobody reads (a
    /// stalled log shipper): the pipe stays open, full, for as long as the balancer lives.
    pub fn start_with_unread_stdout(port: u16, workers: u32, extra: &[&str]) -> Balancer {
        let addr = on_port(port);
        let listen = addr.to_string();
        Balancer::spawn(&[], &listen, addr, workers, extra, true, Stdio::piped())
    }

    /// Like [`Balancer::launch`], with `balancer` started through `prefix` (e.g.
    /// `ip netns exec NAME`).
    pub fn launch_under(
        prefix: &[&str],
        listen: &str,
        addr: SocketAddr,
        workers: u32,
        extra: &[&str],
        all_up: bool,
    ) -> Balancer {
        Balancer::spawn(prefix, listen, addr, workers, extra, all_up, Stdio::null())
    }

    fn spawn(
        prefix: &[&str],
        listen: &str,
        addr: SocketAddr,
        workers: u32,
        extra: &[&str],
        all_up: bool,
        stdout: Stdio,
    ) -> Balancer {
        let dir = scratch_dir();
        let control = dir.join("control.sock");
        let log = dir.join("balancer.log");
        let mut command = match prefix.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(bin());
                c
            }
            None => Command::new(bin()),
        };
        let child = command
            .args(["run", "--listen", listen, "--workers", &workers.to_string()])
            .arg("--control")
            .arg(&control)
            .args(extra)
            .env("PATH", worker_path())
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("cannot start balancer");
        let mut b = Balancer {
            child,
            addr,
            control,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = b.child.try_wait() {
                panic!("balancer exited at start ({status}):\n{}", b.log_text());
            }
            if let Ok(s) = b.status() {
                let slots = s["slots"].as_array().unwrap();
                if slots.len() == workers as usize && (!all_up || self::all_up(&s)) {
                    return b;
                }
            }
            assert!(
                Instant::now() < deadline,
                "balancer did not come up:\n{}",
                b.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The supervisor's `status` answer.
    pub fn status(&self) -> Result<Value> {
        let mut s = UnixStream::connect(&self.control)?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(b"status\n")?;
        let mut line = String::new();
        std::io::BufReader::new(s).read_line(&mut line)?;
        Ok(serde_json::from_str(&line)?)
    }

    /// The value of `field` for each slot, in slot order.
    pub fn per_slot(&self, field: &str) -> Vec<u64> {
        let s = self.status().unwrap();
        s["slots"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s[field].as_u64().unwrap_or(0))
            .collect()
    }

    pub fn pid_of(&self, slot: usize) -> i32 {
        self.status().unwrap()["slots"][slot]["pid"]
            .as_i64()
            .expect("slot has a worker") as i32
    }

    /// Polls until `cond` holds on the status, or panics after `within`.
    pub fn wait_for(&self, within: Duration, what: &str, cond: impl Fn(&Value) -> bool) -> Value {
        let every = Duration::from_millis(20);
        poll(within, every, || self.status().unwrap(), cond)
            .unwrap_or_else(|s| panic!("timed out waiting for {what}; last status: {s}"))
    }

    /// Sends `sig` and waits (bounded) for the exit status.
    pub fn stop(&mut self, sig: nix::sys::signal::Signal) -> std::process::ExitStatus {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, sig);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("balancer did not stop within 20 s:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.stop(nix::sys::signal::Signal::SIGTERM);
        }
    }
}

/// Whether every slot of a `status` answer has load 0: all connections closed and counted.
pub fn all_idle(status: &Value) -> bool {
    status["slots"]
        .as_array()
        .is_some_and(|slots| slots.iter().all(|x| x["load"] == 0))
}

pub fn all_up(status: &Value) -> bool {
    status["slots"]
        .as_array()
        .is_some_and(|slots| slots.iter().all(|x| x["state"] == "up"))
}

/// Starts `workers` slots whose slot 0 exits with `code` at once, every time, while the other
/// slots run the built-in worker; returns as soon as the control socket answers.
pub fn crash_looping_slot_0(workers: u32, code: i32, extra: &[&str]) -> Balancer {
    let script = format!(
        "if [ \"$BALANCER_SLOT\" = 0 ]; then echo boom >&2; exit {code}; fi; exec {} worker",
        worker_bin().display()
    );
    let mut args = vec!["--restart-delay", "0.05"];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--", "sh", "-c", &script]);
    let addr: SocketAddr = "127.0.0.1:8080".parse().unwrap();
    Balancer::launch("127.0.0.1:8080", addr, workers, &args, false)
}
