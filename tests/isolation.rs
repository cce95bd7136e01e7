//! What a worker can do to the host, the supervisor and the other workers: a worker taken over
//! tries it all, and reports what each attempt returned.
//!
//! The probe is a Python worker: it reads its own identity from /proc/self/status, tries to
//! append to a root-owned 0644 file, to create a file in a root-owned 0755 directory, to ask
//! the control socket for the status (found through /proc/net/unix, as an intruder would), to
//! signal the supervisor and another slot's worker, to read their environment and memory, to
//! trace the other worker, and leaves behind a grandchild (a double fork, `setsid`) that tries
//! the control socket once orphaned. It prints what each returned as JSON on its stderr, which
//! the supervisor's log carries, then becomes the built-in worker and serves.

use std::{
    io::{Read as _, Write as _},
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use balancer_tests::*;
use serde_json::Value;

const PROBE: &str = r#"
import ctypes, errno, json, os, socket, sys, time
host_file, host_dir, bin_, sig = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
libc = ctypes.CDLL(None, use_errno=True)
slot = os.environ["BALANCER_SLOT"]
sup = os.getppid()

def attempt(fn):
    try:
        return fn() or 0
    except OSError as e:
        return errno.errorcode.get(e.errno, e.errno)

def control_socket():
    for line in open("/proc/net/unix").read().splitlines()[1:]:
        if line.split()[-1].endswith("control.sock"):
            return line.split()[-1]

def ask_control():
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(5)
    s.connect(control_socket())
    s.sendall(b"status\n")
    return "answer: " + s.recv(300).decode(errors="replace")[:80]

def other_worker():
    for _ in range(500):
        for p in filter(str.isdigit, os.listdir("/proc")):
            try:
                ppid = int(open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            if ppid == sup and int(p) != os.getpid():
                return int(p)
        time.sleep(0.01)

def trace(pid):
    if libc.ptrace(16, pid, None, None) != 0:  # PTRACE_ATTACH
        raise OSError(ctypes.get_errno(), "ptrace")
    libc.ptrace(17, pid, None, None)  # PTRACE_DETACH

r = {"slot": slot}
status = open("/proc/self/status").read().splitlines()
for key in ("Uid", "Gid", "Groups", "CapEff", "CapBnd", "NoNewPrivs"):
    r[key] = next((l.split(":", 1)[1].split() for l in status if l.startswith(key + ":")), [])
r["write_root_file"] = attempt(lambda: open(host_file, "a").write(f"slot {slot}\n") and None)
r["create_in_root_dir"] = attempt(lambda: open(os.path.join(host_dir, "w" + slot), "x").close())
r["control"] = attempt(ask_control)
r["signal_supervisor"] = attempt(lambda: os.kill(sup, sig))
other = other_worker()
r["signal_other_worker"] = attempt(lambda: os.kill(other, sig))
r["environ_other_worker"] = attempt(lambda: open(f"/proc/{other}/environ", "rb").read() and None)
r["environ_supervisor"] = attempt(lambda: open(f"/proc/{sup}/environ", "rb").read() and None)
r["memory_other_worker"] = attempt(lambda: open(f"/proc/{other}/mem", "rb").close())
if sig:
    r["trace_other_worker"] = attempt(lambda: trace(other))
print("probe " + json.dumps(r), file=sys.stderr, flush=True)

child = os.fork()
if child == 0:
    os.setsid()
    if os.fork():
        os._exit(0)
    middle = os.getppid()
    for _ in range(500):
        if os.getppid() != middle:
            break
        time.sleep(0.01)
    d = {"slot": slot, "adopted_by_supervisor": os.getppid() == sup, "control": attempt(ask_control)}
    print("descendant " + json.dumps(d), file=sys.stderr, flush=True)
    os._exit(0)
os.waitpid(child, 0)
os.execv(bin_, [bin_, "worker"])
"#;

/// A root-owned 0644 file and 0755 directory, as the host's own.
struct HostFiles {
    dir: PathBuf,
    file: PathBuf,
    subdir: PathBuf,
}

impl HostFiles {
    fn new(tag: &str) -> HostFiles {
        let dir = std::env::temp_dir().join(format!("balancer-host-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let subdir = dir.join("etc");
        std::fs::create_dir_all(&subdir).unwrap();
        let file = dir.join("passwd");
        std::fs::write(&file, "root:x:0:0\n").unwrap();
        for (p, mode) in [(&dir, 0o755), (&subdir, 0o755), (&file, 0o644)] {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
        }
        HostFiles { dir, file, subdir }
    }
}

impl Drop for HostFiles {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Starts 2 probe workers with `extra` flags; returns the balancer, what each slot's probe
/// reported and what each one's orphaned grandchild reported.
fn probe(files: &HostFiles, signal: i32, extra: &[&str]) -> (Balancer, Vec<Value>, Vec<Value>) {
    let bin = worker_bin();
    let sig = signal.to_string();
    let mut args = extra.to_vec();
    args.extend_from_slice(&["--", "python3", "-c", PROBE]);
    args.extend_from_slice(&[
        files.file.to_str().unwrap(),
        files.subdir.to_str().unwrap(),
        bin.to_str().unwrap(),
        &sig,
    ]);
    let b = Balancer::start(8080, 2, &args);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let log = b.log_text();
        let reports = |tag: &str| -> Vec<Value> {
            let mut v: Vec<Value> = log
                .lines()
                .filter_map(|l| l.split_once(&format!("| {tag} ")))
                .map(|(_, json)| serde_json::from_str(json).unwrap())
                .collect();
            v.sort_by_key(|r| r["slot"].as_str().unwrap().to_owned());
            v
        };
        let (probes, descendants) = (reports("probe"), reports("descendant"));
        if probes.len() >= 2 && descendants.len() >= 2 {
            return (b, probes, descendants);
        }
        assert!(
            Instant::now() < deadline,
            "no reports from the probes:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn ids(report: &Value, key: &str) -> Vec<u32> {
    report[key]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().parse().unwrap())
        .collect()
}

/// `balancer_control_refused_total`, from the metrics endpoint.
fn refused_total() -> u64 {
    let mut s = std::net::TcpStream::connect("127.0.0.1:9464").unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("balancer_control_refused_total "))
        .expect("the metric is exposed")
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn a_default_worker_cannot_touch_the_host_the_supervisor_or_another_worker() {
    netns();
    let files = HostFiles::new("default");
    let (b, probes, descendants) = probe(&files, 9, &[]);
    for r in &probes {
        eprintln!("isolation: default worker: {r}");
        let uid = ids(r, "Uid");
        assert!(uid.iter().all(|&u| (61184..=65519).contains(&u)), "{r}");
        assert!(
            uid.iter().all(|&u| u == uid[0]),
            "real, effective, saved, fs: {r}"
        );
        let gid = ids(r, "Gid");
        assert!((61184..=65519).contains(&gid[0]), "{r}");
        assert_eq!(r["Groups"], serde_json::json!([]), "no supplementary group");
        assert_eq!(r["CapEff"], serde_json::json!(["0000000000000000"]));
        assert_eq!(r["CapBnd"], serde_json::json!(["0000000000000000"]));
        assert_eq!(r["NoNewPrivs"], serde_json::json!(["1"]));
        for (attempt, errno) in [
            ("write_root_file", "EACCES"),
            ("create_in_root_dir", "EACCES"),
            ("control", "EACCES"),
            ("signal_supervisor", "EPERM"),
            ("signal_other_worker", "EPERM"),
            ("environ_other_worker", "EACCES"),
            ("environ_supervisor", "EACCES"),
            ("memory_other_worker", "EACCES"),
            ("trace_other_worker", "EPERM"),
        ] {
            assert_eq!(r[attempt], errno, "{attempt}: {r}");
        }
    }
    assert_ne!(probes[0]["Uid"], probes[1]["Uid"], "a uid per slot");
    assert_eq!(probes[0]["Gid"], probes[1]["Gid"], "one gid per service");
    for d in &descendants {
        eprintln!("isolation: default worker's orphaned grandchild: {d}");
        assert_eq!(d["adopted_by_supervisor"], true, "{d}");
        assert_eq!(d["control"], "EACCES", "{d}");
    }
    assert_eq!(
        std::fs::read_to_string(&files.file).unwrap(),
        "root:x:0:0\n"
    );
    assert_eq!(std::fs::read_dir(&files.subdir).unwrap().count(), 0);
    // Both workers still there, serving; the operator's commands answer.
    let s = b.status().unwrap();
    assert!(all_up(&s), "{s}");
    let slots: std::collections::BTreeSet<u32> =
        (0..20).map(|_| get(b.addr, "/").unwrap().slot).collect();
    assert_eq!(slots.len(), 2, "both slots serve");
    assert!(ctl(&b, &["reload"]).contains("reloaded"));
    assert_eq!(get(b.addr, "/").unwrap().status, 200);
}

#[test]
fn with_user_root_workers_own_the_host_and_the_control_socket_refuses_them() {
    netns();
    let files = HostFiles::new("root");
    // Signal 0: the permission check of a real signal, without killing anything.
    let (b, probes, descendants) = probe(&files, 0, &["--user", "root"]);
    let log = b.log_text();
    assert_eq!(
        log.lines()
            .filter(|l| l.contains("workers run as root (--user root)"))
            .count(),
        1,
        "one warning line:\n{log}"
    );
    for r in &probes {
        eprintln!("isolation: --user root worker: {r}");
        assert_eq!(ids(r, "Uid"), [0, 0, 0, 0], "{r}");
        assert_eq!(r["CapBnd"], serde_json::json!(["0000000000000000"]));
        // The opt-out is real: root's files are the worker's.
        assert_eq!(r["write_root_file"], 0, "{r}");
        assert_eq!(r["create_in_root_dir"], 0, "{r}");
        assert_eq!(r["signal_supervisor"], 0, "{r}");
        // The socket lets uid 0 connect; the supervisor refuses it for its ancestry.
        let answer = r["control"].as_str().unwrap();
        assert!(answer.starts_with("answer: error: refused"), "{r}");
    }
    for d in &descendants {
        eprintln!("isolation: --user root worker's orphaned grandchild: {d}");
        assert_eq!(d["adopted_by_supervisor"], true, "{d}");
        let answer = d["control"].as_str().unwrap();
        assert!(answer.starts_with("answer: error: refused"), "{d}");
    }
    assert!(
        log.contains("control socket: refused pid"),
        "the refusal is logged:\n{log}"
    );
    assert_eq!(refused_total(), 4, "2 workers and 2 grandchildren");
    // The operator, in the same uid, is answered.
    assert!(ctl(&b, &["status", "--json"]).contains("\"slots\""));
    assert_eq!(refused_total(), 4);
}

#[test]
fn with_user_an_account_workers_share_it() {
    netns();
    let files = HostFiles::new("nobody");
    let (_b, probes, _) = probe(&files, 0, &["--user", "nobody"]);
    for r in &probes {
        eprintln!("isolation: --user nobody worker: {r}");
        assert_eq!(ids(r, "Uid"), [65534, 65534, 65534, 65534], "{r}");
        assert_eq!(r["write_root_file"], "EACCES", "{r}");
        assert_eq!(r["control"], "EACCES", "{r}");
        assert_eq!(r["signal_supervisor"], "EPERM", "{r}");
        // One account for all: the workers may signal each other.
        assert_eq!(r["signal_other_worker"], 0, "{r}");
    }
}

#[test]
fn a_script_only_root_can_read_fails_at_start_with_one_line() {
    netns();
    let files = HostFiles::new("script");
    let script = files.dir.join("app.py");
    std::fs::write(&script, "print('never')\n").unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o600)).unwrap();
    let control = files.dir.join("control.sock");
    let started = Instant::now();
    let mut child = Command::new(bin())
        .args(["run", "--listen", "127.0.0.1:8080", "--workers", "2"])
        .args(["--ready-timeout", "5", "--control"])
        .arg(&control)
        .args(["--", "python3"])
        .arg(&script)
        .env("PATH", worker_path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > Duration::from_secs(5) {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "still running after the ready timeout:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    let path = script.display().to_string();
    fails_with(&out, &format!("cannot read {path} (Permission denied"));
    let line = String::from_utf8_lossy(&out.stderr);
    assert!(line.contains("which the workers run as"), "{line}");
    assert!(line.contains("--user"), "{line}");
    let uid: u32 = line
        .split("uid ")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!((61184..=65519).contains(&uid), "{line}");
    assert!(!Path::new(&control).exists(), "nothing left behind");
    eprintln!("isolation: {}", line.trim());
}
