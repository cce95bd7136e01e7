//! The Deployment and its ConfigMap from deploy/kubernetes, played by `podman kube play` as a
//! user would try them on one machine.

use std::{
    path::{Path, PathBuf},
    process::Output,
    time::{Duration, Instant},
};

use balancer_tests::{
    deployment::{assert_podman, deploy, http, podman, request_on, text, Image},
    *,
};

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

    let manifest = manifest_for(&image.tag);
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

    wait_ready(container);

    every_worker_answers_a_burst();

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

/// deployment.yaml as this test plays it: the image under test, one replica, and the seccomp
/// profile where podman 4.3 reads it.
fn manifest_for(tag: &str) -> String {
    let mut manifest = std::fs::read_to_string(deploy("kubernetes/deployment.yaml")).unwrap();
    // The test's own image under its own tag: nothing is pulled, and a `balancer:latest` the
    // machine already has (`cargo xtask image`) is neither replaced nor removed.
    manifest = rewrite(
        &manifest,
        "image: balancer:latest",
        &format!("image: {tag}"),
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
    manifest
}

/// Waits for what the readiness probe asks (podman runs no readiness probe): every slot of the
/// ConfigMap's `workers = 4` up, on the published metrics port.
fn wait_ready(container: &str) {
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
}

/// A burst of connections held open: least-loaded spreads them over the four workers.
fn every_worker_answers_a_burst() {
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
}
