//! Several services on one host, as a PM2 user runs them: started with no extra flag, listed
//! by `balancer ls`, each picked by name or port, each with its own /metrics.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use balancer_tests::*;
use serde_json::Value;

/// A `balancer run` started the way a user does, without --control or --metrics, its control
/// socket in `runtime` (what root's /run/balancer is outside the tests).
struct Service(Child);

impl Service {
    fn start(runtime: &Path, args: &[&str]) -> Service {
        let child = Command::new(bin())
            .arg("run")
            .args(args)
            .env("BALANCER_RUNTIME_DIR", runtime)
            .env_remove("BALANCER_CONTROL")
            .env_remove("BALANCER_NAME")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Service(child)
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.0.try_wait().unwrap().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// `balancer ARGS` as a client, with the test's runtime directory.
fn client(runtime: &Path, args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .env("BALANCER_RUNTIME_DIR", runtime)
        .env_remove("BALANCER_CONTROL")
        .env_remove("BALANCER_NAME")
        .output()
        .unwrap()
}

fn ls(runtime: &Path) -> Vec<Value> {
    let out = client(runtime, &["ls", "--json"]);
    assert!(out.status.success());
    serde_json::from_slice::<Value>(&out.stdout)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

/// Waits up to 20 s for `balancer ls` to list `n` balancers.
fn wait_listed(runtime: &Path, n: usize, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while ls(runtime).len() != n {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn runtime_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("balancer-rt-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn metrics_of(addr: &str) -> String {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    use std::io::{Read as _, Write as _};
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: m\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    text
}

#[test]
fn two_services_run_side_by_side_and_each_is_picked_by_name_or_port() {
    netns();
    let rt = runtime_dir("two");
    let _web = Service::start(&rt, &["--listen", "127.0.0.1:8080", "--workers", "2"]);
    // The first to start takes the default metrics port: let it be `web`.
    wait_listed(&rt, 1, "web listed");
    let _api = Service::start(
        &rt,
        &[
            "--listen",
            "127.0.0.1:8081",
            "--workers",
            "1",
            "--name",
            "api",
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let listed = loop {
        let l = ls(&rt);
        if l.len() == 2 && l.iter().all(|s| s["up"] == s["workers"]) {
            break l;
        }
        assert!(Instant::now() < deadline, "both listed and up: {l:?}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let (web, api) = (&listed[0], &listed[1]);
    assert_eq!(
        (
            api["name"].as_str(),
            api["listen"].as_str(),
            api["workers"].as_u64()
        ),
        (Some("api"), Some("127.0.0.1:8081"), Some(1))
    );
    assert_eq!(
        (
            web["name"].as_str(),
            web["listen"].as_str(),
            web["workers"].as_u64()
        ),
        (Some("8080"), Some("127.0.0.1:8080"), Some(2))
    );
    // The first took the default metrics port, the second a port of its own: both scrape.
    assert_eq!(web["metrics"], "127.0.0.1:9464");
    let api_metrics = api["metrics"].as_str().unwrap();
    assert_ne!(api_metrics, "127.0.0.1:9464");
    assert!(metrics_of(api_metrics).contains("balancer_slot_load{slot=\"0\"}"));
    assert!(metrics_of("127.0.0.1:9464").contains("balancer_slot_load{slot=\"1\"}"));
    // Both serve.
    assert_eq!(
        get("127.0.0.1:8080".parse().unwrap(), "/").unwrap().status,
        200
    );
    assert_eq!(
        get("127.0.0.1:8081".parse().unwrap(), "/").unwrap().status,
        200
    );
    each_is_picked_by_name_or_port(&rt);
    // Once one is gone, the bare command finds the other.
    assert!(client(&rt, &["stop", "--name", "api"]).status.success());
    wait_listed(&rt, 1, "api still listed");
    assert_eq!(status_of(&rt, &["status", "--json"])["name"], "8080");
    // The runtime directory is private.
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(&rt).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700);
}

#[test]
fn a_second_service_of_the_same_name_is_refused_and_a_bad_name_too() {
    netns();
    let rt = runtime_dir("same");
    let _first = Service::start(&rt, &["--listen", "127.0.0.1:8080", "--name", "web"]);
    wait_listed(&rt, 1, "first service listed");
    let out = client(
        &rt,
        &[
            "run",
            "--listen",
            "127.0.0.1:8081",
            "--name",
            "web",
            "--workers",
            "1",
        ],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("is in use by another running balancer"),
        "{err}"
    );
    // Nothing of it was left: port 8081 is free and only `web` is listed, still serving.
    std::net::TcpListener::bind("127.0.0.1:8081").expect("8081 left free");
    assert_eq!(ls(&rt).len(), 1);
    assert_eq!(
        get("127.0.0.1:8080".parse().unwrap(), "/").unwrap().status,
        200
    );
    let out = client(
        &rt,
        &["run", "--listen", "127.0.0.1:8082", "--name", "../x"],
    );
    fails_with(&out, "bad --name \"../x\"");
}

/// `status --json` as `args` ask it, through the client.
fn status_of(rt: &Path, args: &[&str]) -> Value {
    let out = client(rt, args);
    assert!(out.status.success(), "{args:?}: {out:?}");
    serde_json::from_slice(&out.stdout).unwrap()
}

/// With `web` (8080) and `api` running: each is picked by name or by port, a bare command asks
/// which, and a control request reaches only the service it names.
fn each_is_picked_by_name_or_port(rt: &Path) {
    // Picked by name, by port; with two running, a bare command asks which.
    let status = |args: &[&str]| status_of(rt, args);
    assert_eq!(
        status(&["status", "--json", "--name", "api"])["listen"],
        "127.0.0.1:8081"
    );
    assert_eq!(
        status(&["status", "--json", "--name", "8080"])["name"],
        "8080"
    );
    let out = client(rt, &["status"]);
    assert!(!out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        "balancer: error: several balancers run here (8080, api): pick one with --name"
    );
    let out = client(rt, &["policy", "p2c", "--name", "nope"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no balancer named \"nope\""));
    // A control request reaches only the service it names.
    assert!(client(rt, &["policy", "p2c", "--name", "api"])
        .status
        .success());
    assert_eq!(
        status(&["status", "--json", "--name", "api"])["policy"],
        "p2c"
    );
    assert_eq!(
        status(&["status", "--json", "--name", "8080"])["policy"],
        "least-loaded"
    );
}
