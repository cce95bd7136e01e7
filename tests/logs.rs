//! The workers' output as a user reads it: prefixed in the supervisor's output, through
//! `balancer logs` (tail and follow), in rotated files, quoted by `status` after a failure, and
//! never able to block a worker.

use std::{
    io::{BufRead as _, BufReader},
    os::unix::fs::PermissionsExt as _,
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use balancer_tests::*;
use serde_json::Value;

/// A fresh directory under the system's temporary one.
fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("balancer-logs-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// `balancer logs ARGS --json` for `b`: one parsed object per line.
fn logs_json(b: &Balancer, args: &[&str]) -> Vec<Value> {
    let mut all = vec!["logs", "--json"];
    all.extend_from_slice(args);
    ctl(b, &all)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn every_line_names_its_slot_pid_and_stream() {
    netns();
    let script = r#"echo "out $BALANCER_SLOT"; echo "err $BALANCER_SLOT" >&2; exec sleep 60"#;
    let b = Balancer::start(
        8080,
        2,
        &["--ready-timeout", "0.1", "--", "sh", "-c", script],
    );
    b.wait_for(Duration::from_secs(5), "both lines of both workers", |s| {
        s["slots"]
            .as_array()
            .unwrap()
            .iter()
            .all(|x| x["log_lines"] == 2)
    });
    for slot in 0..2 {
        let pid = b.pid_of(slot);
        // The supervisor's own stderr: the stderr lines, prefixed.
        let log = b.log_text();
        assert!(
            log.contains(&format!("slot {slot} pid {pid} | err {slot}\n")),
            "slot {slot}'s stderr line, prefixed, in:\n{log}"
        );
        // `balancer logs`: both streams, each line with its own worker.
        let lines = logs_json(&b, &["--slot", &slot.to_string()]);
        let got: Vec<(u64, u64, &str, &str)> = lines
            .iter()
            .map(|l| {
                (
                    l["slot"].as_u64().unwrap(),
                    l["pid"].as_u64().unwrap(),
                    l["stream"].as_str().unwrap(),
                    l["line"].as_str().unwrap(),
                )
            })
            .collect();
        let (s, p) = (slot as u64, pid as u64);
        let out = format!("out {slot}");
        let err = format!("err {slot}");
        let mut want = vec![
            (s, p, "stdout", out.as_str()),
            (s, p, "stderr", err.as_str()),
        ];
        let mut sorted = got.clone();
        sorted.sort();
        want.sort();
        assert_eq!(sorted, want);
    }
    // The human form of `balancer logs`.
    let text = ctl(&b, &["logs", "--slot", "1", "-n", "1"]);
    assert!(text.starts_with("slot 1 pid "), "{text}");
}

#[test]
fn logs_follow_streams_new_lines_of_one_slot_once_each() {
    netns();
    let script = r#"i=0; while [ $i -lt 400 ]; do echo "tick $BALANCER_SLOT $i"; i=$((i+1)); sleep 0.02; done; exec sleep 60"#;
    let b = Balancer::start(
        8080,
        2,
        &["--ready-timeout", "0.1", "--", "sh", "-c", script],
    );
    // The tail first: exactly the last 3 of slot 0.
    let tail = logs_json(&b, &["--slot", "0", "-n", "3"]);
    assert_eq!(tail.len(), 3);
    assert!(tail.iter().all(|l| l["slot"] == 0));
    let mut follower = Command::new(bin())
        .args(["logs", "--json", "--follow", "--slot", "1", "-n", "0"])
        .arg("--control")
        .arg(&b.control)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = follower.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut seen = Vec::new();
        for line in BufReader::new(stdout).lines().take(40) {
            seen.push(serde_json::from_str::<Value>(&line.unwrap()).unwrap());
        }
        seen
    });
    // 40 lines come in about 0.8 s; the bound is generous for a loaded machine.
    let deadline = Instant::now() + Duration::from_secs(15);
    while !reader.is_finished() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = follower.kill();
    let _ = follower.wait();
    let seen = reader.join().unwrap();
    assert_eq!(seen.len(), 40, "lines followed within 15 s");
    let ticks: Vec<u64> = seen
        .iter()
        .map(|l| {
            assert_eq!(l["slot"], 1);
            let text = l["line"].as_str().unwrap();
            text.rsplit(' ').next().unwrap().parse().unwrap()
        })
        .collect();
    // In order, none twice, none skipped.
    assert!(
        ticks.windows(2).all(|w| w[1] == w[0] + 1),
        "followed ticks: {ticks:?}"
    );
}

#[test]
fn log_files_rotate_by_size_and_are_private() {
    netns();
    let dir = temp_dir("rotate");
    let script = r#"i=0; while [ $i -lt 3000 ]; do echo "line $i of slot $BALANCER_SLOT, padded to be long enough" >&2; i=$((i+1)); done; echo last >&2; exec sleep 60"#;
    let b = Balancer::start(
        8080,
        1,
        &[
            "--log-dir",
            dir.to_str().unwrap(),
            "--log-max-size",
            "16K",
            "--log-keep",
            "2",
            "--ready-timeout",
            "0.1",
            "--",
            "sh",
            "-c",
            script,
        ],
    );
    b.wait_for(Duration::from_secs(10), "every line captured", |s| {
        s["slots"][0]["log_lines"] == 3001
    });
    // The log thread writes the files: wait for the last line to land.
    let live = dir.join("slot-0.log");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !std::fs::read_to_string(&live)
        .unwrap_or_default()
        .ends_with(" stderr last\n")
    {
        assert!(Instant::now() < deadline, "the last line reached the file");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["slot-0.log", "slot-0.log.1", "slot-0.log.2"]);
    for n in &names {
        let meta = std::fs::metadata(dir.join(n)).unwrap();
        assert!(meta.len() <= 16 * 1024, "{n}: {} bytes", meta.len());
        assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{n}");
    }
    let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700);
    // Lines are whole: each starts with a timestamp and the worker's pid.
    let pid = b.pid_of(0).to_string();
    for line in std::fs::read_to_string(dir.join("slot-0.log.1"))
        .unwrap()
        .lines()
    {
        let mut words = line.split(' ');
        assert!(words.next().unwrap().starts_with("20"), "{line}");
        assert_eq!(words.next(), Some(pid.as_str()), "{line}");
    }
    drop(b);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn status_quotes_the_last_stderr_of_a_worker_that_failed() {
    netns();
    let script = r#"if [ "$BALANCER_SLOT" = 1 ]; then echo "connecting to db" >&2; echo "fatal: db pool: connection refused" >&2; exit 3; fi; echo "all fine" >&2; exec sleep 60"#;
    let b = Balancer::launch(
        "127.0.0.1:8080",
        "127.0.0.1:8080".parse().unwrap(),
        2,
        &[
            "--ready-timeout",
            "0.1",
            "--restart-delay",
            "5",
            "--",
            "sh",
            "-c",
            script,
        ],
        false,
    );
    let s = b.wait_for(Duration::from_secs(10), "slot 1 exited", |s| {
        s["slots"][1]["last_exit_code"] == 3 && s["slots"][1]["last_stderr"].is_array()
    });
    assert_eq!(
        s["slots"][1]["last_stderr"],
        serde_json::json!(["connecting to db", "fatal: db pool: connection refused"])
    );
    assert!(
        s["slots"][0].get("last_stderr").is_none(),
        "a healthy worker's stderr is not quoted: {}",
        s["slots"][0]
    );
    let table = ctl(&b, &["status"]);
    assert!(
        table.contains("  | fatal: db pool: connection refused"),
        "{table}"
    );
}

/// The supervisor's stdout is a pipe nobody reads: once it is full, lines are dropped from that
/// output and counted, while the worker writes on at full speed and every line is still
/// captured for `balancer logs`.
#[test]
fn a_reader_that_never_reads_neither_blocks_the_worker_nor_loses_the_tail() {
    netns();
    let dir = temp_dir("flood");
    std::fs::create_dir_all(&dir).unwrap();
    // The worker, under a uid of its own, leaves its marker there.
    writable_by_workers(&dir);
    let done = dir.join("done");
    let script = format!(
        r#"seq 1 200000 | sed 's/^/flood line /'; touch {}; exec sleep 60"#,
        done.display()
    );
    let started = Instant::now();
    let mut b = Balancer::start_with_unread_stdout(
        8080,
        1,
        &["--ready-timeout", "0.1", "--", "sh", "-c", &script],
    );
    while !done.exists() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the worker was still writing after 30 s: blocked by the unread output"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let wrote_in = started.elapsed();
    let s = b.wait_for(Duration::from_secs(10), "every line captured", |s| {
        s["slots"][0]["log_lines"] == 200_000
    });
    let slot = &s["slots"][0];
    eprintln!(
        "flood: 200,000 lines written in {wrote_in:?}, {} dropped from the unread output",
        slot["log_dropped"]
    );
    let dropped = slot["log_dropped"].as_u64().unwrap();
    // A 64 KiB pipe and the log thread's queue hold far less than 200,000 lines.
    assert!(dropped > 100_000, "dropped {dropped}");
    let last = ctl(&b, &["logs", "-n", "1"]);
    assert!(last.ends_with("| flood line 200000"), "{last:?}");
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(b.child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    while b.child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = b.child.kill();
            panic!("the supervisor did not stop with its output unread");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_log_options_are_refused_before_anything_starts() {
    netns();
    let dir = temp_dir("bad");
    std::fs::create_dir_all(&dir).unwrap();
    let control = dir.join("control.sock");
    for (args, says) in [
        (
            vec!["--log-max-size", "10Q"],
            "bad size \"10Q\": a number of bytes, or with K, M or G",
        ),
        (
            vec!["--log-dir", "/proc/balancer-logs"],
            "cannot create the log directory /proc/balancer-logs",
        ),
        (
            vec!["--log-dir", dir.to_str().unwrap(), "--log-max-size", "100"],
            "--log-max-size 100: give at least 4096 bytes",
        ),
    ] {
        let out = Command::new(bin())
            .args(["run", "--listen", "127.0.0.1:8080", "--workers", "1"])
            .arg("--control")
            .arg(&control)
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        fails_with(&out, says);
        assert!(!control.exists(), "{args:?} left a control socket");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
