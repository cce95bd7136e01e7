//! The image, built from deploy/Containerfile and run with podman: privileged, with the
//! minimal capabilities docs/deploy.md lists, and with none.

use std::time::{Duration, Instant};

use balancer_tests::{
    deployment::{assert_podman, http, podman, text, Image},
    *,
};

/// The capabilities the image needs (docs/deploy.md): load the program (BPF, PERFMON), start
/// workers under uids of their own (SETUID, SETGID), stop them (KILL), read their descriptor
/// tables (SYS_PTRACE, DAC_READ_SEARCH), and empty their bounding set (SETPCAP).
const MIN_CAPS: &str =
    "--cap-add=BPF,PERFMON,SETPCAP,SETUID,SETGID,KILL,SYS_PTRACE,DAC_READ_SEARCH";

/// Runs the image with `caps` (podman flags) in this test's network namespace, checks that it
/// serves and exposes metrics, and stops it.
fn serves_with(image: &str, name: &str, caps: &[&str]) {
    let mut args = vec![
        "run",
        "-d",
        "--rm",
        "--name",
        name,
        "--runtime",
        "runc",
        "--network",
        "host",
    ];
    args.extend_from_slice(caps);
    args.extend_from_slice(&[
        image,
        "--listen",
        "127.0.0.1:8080",
        "--workers",
        "2",
        "--metrics",
        "127.0.0.1:9464",
    ]);
    let out = podman(&args);
    assert!(out.status.success(), "podman run {caps:?}: {}", text(&out));
    let deadline = Instant::now() + Duration::from_secs(20);
    let reply = loop {
        if let Some(r) = http("127.0.0.1:8080", "/") {
            break r;
        }
        assert!(
            Instant::now() < deadline,
            "the container did not serve: {}",
            text(&podman(&["logs", name]))
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        reply.starts_with("HTTP/1.1 200") && reply.contains("slot="),
        "{reply}"
    );
    let metrics = http("127.0.0.1:9464", "/metrics").unwrap();
    assert!(metrics.contains("balancer_slots{} 2"), "{metrics}");
    let out = podman(&["stop", "-t", "15", name]);
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn the_container_image_serves_privileged_and_with_minimal_capabilities() {
    assert_podman();
    netns();
    let built = Image::build(&format!("localhost/balancer-test:{}", std::process::id()));
    let image = built.tag.as_str();

    serves_with(
        image,
        &format!("bal-priv-{}", std::process::id()),
        &["--privileged"],
    );
    serves_with(
        image,
        &format!("bal-min-{}", std::process::id()),
        &[
            "--cap-drop=all",
            MIN_CAPS,
            "--security-opt",
            "seccomp=unconfined",
        ],
    );

    // Without the capabilities: one line naming the missing one, and a failed exit at once.
    let out = podman(&[
        "run",
        "--rm",
        "--runtime",
        "runc",
        "--network",
        "host",
        "--cap-drop=all",
        image,
        "--listen",
        "127.0.0.1:8081",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.lines()
            .any(|l| l.starts_with("balancer: error: missing capability CAP_BPF")),
        "{err}"
    );
    let out = podman(&[
        "run",
        "--rm",
        "--runtime",
        "runc",
        "--network",
        "host",
        "--cap-drop=all",
        MIN_CAPS,
        image,
        "--listen",
        "127.0.0.1:8081",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("seccomp"),
        "the default seccomp profile's refusal is named: {err}"
    );
}
