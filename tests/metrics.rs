//! The metrics endpoint, read by a real Prometheus and by a strict OpenMetrics parser, and the
//! Grafana dashboard checked against the series the endpoint really exposes.

use std::{
    collections::BTreeSet,
    io::{Read as _, Write as _},
    net::TcpStream,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use balancer_tests::*;
use serde_json::Value;

const METRICS: &str = "127.0.0.1:9464";
const PROMETHEUS: &str = "127.0.0.1:9091";

fn http_get(addr: &str, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let status = raw.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = raw
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

fn scrape() -> String {
    let (status, body) = http_get(METRICS, "/metrics");
    assert_eq!(status, 200);
    body
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The result vector of an instant query.
fn query(q: &str) -> Vec<Value> {
    let (status, body) = http_get(PROMETHEUS, &format!("/api/v1/query?query={}", urlencode(q)));
    assert_eq!(status, 200, "{q}: {body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    v["data"]["result"].as_array().cloned().unwrap_or_default()
}

fn scalar(q: &str) -> Option<f64> {
    query(q)
        .first()
        .and_then(|r| r["value"][1].as_str()?.parse().ok())
}

fn wait_for(within: Duration, what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(200));
    }
}

struct Prometheus(std::process::Child);

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn prometheus_scrapes_what_the_program_counted() {
    netns();
    let b = Balancer::start(8080, 4, &["--metrics", METRICS]);
    let dir = std::env::temp_dir().join(format!("balancer-prom-{}", std::process::id()));
    let _prometheus = start_prometheus(&dir);
    wait_for(Duration::from_secs(30), "a first successful scrape", || {
        // Prometheus answers 503 to queries until it is ready, which a loaded machine shows.
        TcpStream::connect(PROMETHEUS).is_ok()
            && http_get(PROMETHEUS, "/-/ready").0 == 200
            && scalar("up{job=\"balancer\"}") == Some(1.0)
    });
    // Every labelled series exists from the start, at 0.
    assert_eq!(
        scalar("count(balancer_slot_connections_assigned_total)"),
        Some(4.0)
    );
    assert_eq!(
        scalar("sum(balancer_slot_connections_assigned_total)"),
        Some(0.0)
    );
    assert_eq!(scalar("count(balancer_program_fallbacks_total)"), Some(4.0));
    assert_eq!(
        scalar("count(balancer_slot_state)"),
        Some(24.0),
        "6 states x 4 slots"
    );

    thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                for _ in 0..100 {
                    get(b.addr, "/").unwrap();
                }
            });
        }
    });
    wait_for(
        Duration::from_secs(20),
        "Prometheus to see all 400 connections",
        || scalar("sum(balancer_slot_connections_assigned_total)") == Some(400.0),
    );
    let rate = scalar("sum(rate(balancer_slot_connections_assigned_total[10s]))").unwrap();
    assert!(rate > 0.0, "rate of assignments over the last 10 s: {rate}");
    let per_slot = query("balancer_slot_connections_assigned_total");
    assert_eq!(per_slot.len(), 4);
    for r in &per_slot {
        let v: f64 = r["value"][1].as_str().unwrap().parse().unwrap();
        assert!(v > 50.0, "each of 4 slots got a fair share of 400: {r}");
    }
    assert_eq!(
        scalar("sum(balancer_program_selections_total)"),
        Some(400.0)
    );
    assert_eq!(scalar("sum(balancer_program_fallbacks_total)"), Some(0.0));
    assert_eq!(scalar("sum(balancer_slot_state{state=\"up\"})"), Some(4.0));

    wait_for(
        Duration::from_secs(10),
        "loads back to 0 in Prometheus",
        || scalar("sum(balancer_slot_load)") == Some(0.0),
    );
    // The built-in worker gets the overflow queue: whatever waited there has been served.
    assert_eq!(scalar("balancer_overflow_queued"), Some(0.0));
    assert_eq!(scalar("balancer_overflow_load"), Some(0.0));
    assert!(scalar("balancer_program_overflowed_total").is_some());
    assert_eq!(scalar("count(balancer_slot_worker_info)"), Some(4.0));
    assert_eq!(
        scalar("count(balancer_policy_info{policy=\"least-loaded\"})"),
        Some(1.0)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_exposition_is_valid_openmetrics_and_probes_answer() {
    netns();
    let _b = Balancer::start(8080, 2, &["--metrics", METRICS]);
    let text = scrape();
    assert!(text.ends_with("# EOF\n"), "OpenMetrics ends with # EOF");
    // A strict OpenMetrics parser (the Python client's) must accept every line.
    let mut py = Command::new("python3")
        .args([
            "-c",
            "import sys\nfrom prometheus_client.openmetrics.parser import text_string_to_metric_families as p\n\
             print(len(list(p(sys.stdin.read()))))",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    py.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = py.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "OpenMetrics parser rejected the exposition: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let families: usize = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    assert!(families >= 15, "{families} metric families");
    // The endpoint is on loopback only and answers the probes.
    assert_eq!(http_get(METRICS, "/healthz").0, 200);
    let (status, body) = http_get(METRICS, "/readyz");
    assert_eq!((status, body.trim()), (200, "ok: 2 of 2 slots up"));
    assert_eq!(http_get(METRICS, "/nope").0, 404);
}

/// Metric names in a PromQL expression (our series and process_ ones).
fn names_in(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if expr[i..].starts_with("balancer_") || expr[i..].starts_with("process_") {
            let end = expr[i..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .map_or(expr.len(), |e| i + e);
            out.push(expr[i..end].to_string());
            i = end;
        } else {
            i += 1;
        }
    }
    out
}

#[test]
fn the_grafana_dashboard_queries_only_series_that_exist() {
    netns();
    let _b = Balancer::start(8080, 2, &["--metrics", METRICS]);
    let exposed: BTreeSet<String> = scrape()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next().map(str::to_string))
        .collect();
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/grafana/balancer.json");
    let dash: Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).expect("dashboard is JSON");
    assert!(dash["title"].is_string() && dash["uid"].is_string());
    assert_eq!(
        dash["__inputs"][0]["pluginId"], "prometheus",
        "importable with a datasource prompt"
    );
    let panels = dash["panels"].as_array().expect("panels");
    assert!(panels.len() >= 5);
    let mut ids = BTreeSet::new();
    for p in panels {
        assert!(
            ids.insert(p["id"].as_u64().unwrap()),
            "panel ids are unique"
        );
        for k in ["x", "y", "w", "h"] {
            assert!(
                p["gridPos"][k].is_u64(),
                "panel {} has gridPos.{k}",
                p["title"]
            );
        }
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty());
        for t in targets {
            let expr = t["expr"].as_str().unwrap();
            let names = names_in(expr);
            assert!(!names.is_empty(), "{expr}");
            for n in names {
                assert!(
                    exposed.contains(&n),
                    "panel {} queries {n}, which /metrics does not expose",
                    p["title"]
                );
            }
        }
    }
}

/// Prometheus scraping the balancer's endpoint once a second, its data in `dir`.
fn start_prometheus(dir: &std::path::Path) -> Prometheus {
    std::fs::create_dir_all(dir).unwrap();
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: balancer\n    static_configs:\n      - targets: ['{METRICS}']\n"
        ),
    )
    .unwrap();
    Prometheus(
        Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={PROMETHEUS}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus not installed: `cargo xtask setup` installs Debian's package"),
    )
}
