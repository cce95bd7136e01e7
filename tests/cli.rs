//! The mistakes a user makes get one line that names the problem and the fix, a non-zero exit,
//! and leave nothing running.

use std::{
    net::TcpListener,
    os::unix::process::CommandExt as _,
    process::{Command, Output},
};

use balancer_tests::*;

fn run(args: &[&str]) -> Output {
    Command::new(bin()).arg("run").args(args).output().unwrap()
}

#[test]
fn bad_flags() {
    netns();
    fails_with(&run(&["--workers", "0"]), "at least one worker");
    fails_with(&run(&["--workers", "5000"]), "maximum of 1024");
    fails_with(&run(&["--listen", "localhost"]), "bad listen address");
    fails_with(&run(&["--listen", "127.0.0.1:99999"]), "bad listen address");
    fails_with(
        &run(&["--policy", "fastest"]),
        "unknown policy \"fastest\": choose one of least-loaded, hash",
    );
    fails_with(&run(&["--frobnicate"]), "--frobnicate");
}

#[test]
fn port_in_use() {
    netns();
    let other = TcpListener::bind("127.0.0.1:8080").unwrap();
    let out = run(&["--listen", "127.0.0.1:8080", "--workers", "2"]);
    fails_with(&out, "port 8080 is in use");
    drop(other);
}

#[test]
fn worker_command_not_found_leaves_nothing_behind() {
    netns();
    let out = run(&[
        "--listen",
        "127.0.0.1:8080",
        "--",
        "no-such-server-xyz",
        "--port",
        "3",
    ]);
    fails_with(&out, "worker command not found: no-such-server-xyz");
    TcpListener::bind("127.0.0.1:8080").expect("nothing may hold the port after a failed start");
}

#[test]
fn a_worker_script_whose_interpreter_is_missing_is_named() {
    netns();
    let dir = std::env::temp_dir().join(format!("balancer-interp-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let script = dir.join("server.sh");
    std::fs::write(&script, "#!/nonexistent/bin/node --flag\nexit 0\n").unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let out = run(&["--listen", "127.0.0.1:8080", "--", script.to_str().unwrap()]);
    fails_with(
        &out,
        "its interpreter `/nonexistent/bin/node` (its #! line) does not exist",
    );
    TcpListener::bind("127.0.0.1:8080").expect("nothing may hold the port after a failed start");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn missing_cap_bpf_is_named_with_the_fix() {
    netns();
    // As an unprivileged user: no capabilities at all.
    let out = Command::new(bin())
        .args([
            "run",
            "--listen",
            "127.0.0.1:8080",
            "--control",
            "/tmp/balancer-test-nobody.sock",
        ])
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    fails_with(&out, "missing capability CAP_BPF");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("setcap cap_bpf,cap_perfmon+ep") && err.contains("--cap-add=BPF"),
        "{err}"
    );
    TcpListener::bind("127.0.0.1:8080").expect("nothing may hold the port after a failed start");
}

#[test]
fn a_control_socket_where_others_can_write_is_refused() {
    netns();
    // /tmp is writable by everyone: another user could take the socket's name first.
    fails_with(
        &run(&[
            "--listen",
            "127.0.0.1:8080",
            "--control",
            "/tmp/balancer-shared.sock",
        ]),
        "can be written by other users: pass --control",
    );
    assert!(!std::path::Path::new("/tmp/balancer-shared.sock").exists());
    TcpListener::bind("127.0.0.1:8080").expect("nothing may hold the port after a failed start");
}

#[test]
fn unknown_worker_user() {
    netns();
    fails_with(
        &run(&["--listen", "127.0.0.1:8080", "--user", "no-such-user-xyz"]),
        "no such user: no-such-user-xyz",
    );
}

#[test]
fn config_file_under_environment_under_flags() {
    netns();
    let dir = std::env::temp_dir().join(format!("balancer-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("balancer.toml");
    std::fs::write(
        &config,
        "listen = \"127.0.0.1:8080\"\nworkers = 3\npolicy = \"p2c\"\nmetrics = \"off\"\nkill-timeout = 2\n",
    )
    .unwrap();
    let control = dir.join("control.sock");
    let mut child = Command::new(bin())
        .args(["run", "--config"])
        .arg(&config)
        .args(["--workers", "2", "--control"])
        .arg(&control)
        .env("BALANCER_POLICY", "round-robin")
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let status = loop {
        if let Ok(out) = Command::new(bin())
            .args(["status", "--json", "--control"])
            .arg(&control)
            .output()
        {
            if out.status.success() {
                break serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap();
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "balancer did not start from its config file"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = child.wait();
    assert_eq!(status["listen"], "127.0.0.1:8080", "from the file");
    assert_eq!(
        status["slots"].as_array().unwrap().len(),
        2,
        "the flag beats the file's 3"
    );
    assert_eq!(
        status["policy"], "round-robin",
        "the environment beats the file's p2c"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_config_file() {
    netns();
    let path = std::env::temp_dir().join(format!("balancer-badcfg-{}.toml", std::process::id()));
    std::fs::write(&path, "wrokers = 4\n").unwrap();
    fails_with(
        &run(&["--config", path.to_str().unwrap()]),
        "unknown option `wrokers`",
    );
    fails_with(
        &run(&["--config", "/nonexistent/balancer.toml"]),
        "cannot read config file /nonexistent/balancer.toml",
    );
    let _ = std::fs::remove_file(&path);
}

#[test]
fn the_control_socket_survives_bad_clients() {
    use std::io::{Read as _, Write as _};
    use std::os::unix::fs::PermissionsExt as _;
    netns();
    let b = Balancer::start(8080, 1, &[]);
    let mode = std::fs::metadata(&b.control).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "control socket is private to its owner");
    // A client that connects and says nothing does not block the others.
    let _silent = std::os::unix::net::UnixStream::connect(&b.control).unwrap();
    let begin = std::time::Instant::now();
    assert!(b.status().is_ok());
    assert!(begin.elapsed() < std::time::Duration::from_secs(1));
    // Oversized, binary and unknown requests get an error line, never a crash.
    for request in [
        vec![b'x'; 100_000],
        vec![0xff, 0xfe, b'\n'],
        b"reboot now\n".to_vec(),
        b"scale -3\n".to_vec(),
    ] {
        let mut s = std::os::unix::net::UnixStream::connect(&b.control).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let _ = s.write_all(&request);
        let mut answer = String::new();
        let _ = s.read_to_string(&mut answer);
        assert!(answer.starts_with("error: "), "{answer:?}");
    }
    assert_eq!(
        b.status().unwrap()["slots"][0]["state"],
        "up",
        "still serving"
    );
    assert_eq!(get(b.addr, "/").unwrap().status, 200);
}
