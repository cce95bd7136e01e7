//! What the deployment tests share: the files under deploy/, the tools that check them, and
//! podman with this repository's settings, building the image of the binary under test.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::Duration,
};

use crate::bin;

pub fn deploy(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(path)
}

pub fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Runs podman with this repository's settings (cgroupfs, no ulimits), bounded in time: a
/// podman stuck on a lock or a dead runtime fails the test instead of hanging it.
pub fn podman(args: &[&str]) -> Output {
    Command::new("timeout")
        .args(["--kill-after=10", "120", "podman"])
        .env("CONTAINERS_CONF", deploy("containers.conf"))
        .args(args)
        .output()
        .unwrap()
}

pub fn assert_podman() {
    assert!(
        have("podman"),
        "podman is missing: `cargo xtask setup` installs it (apt-get install podman runc)"
    );
}

/// Sends one request on an open connection and reads the reply to its end.
pub fn request_on(s: &mut std::net::TcpStream, path: &str) -> Option<String> {
    use std::io::{Read as _, Write as _};
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

pub fn http(addr: &str, path: &str) -> Option<String> {
    let mut s =
        std::net::TcpStream::connect_timeout(&addr.parse().ok()?, Duration::from_secs(5)).ok()?;
    request_on(&mut s, path)
}

/// The image of the binary under test, built from deploy/Containerfile with
/// deploy/build-context.sh; removed, with its build context, when dropped.
pub struct Image {
    pub tag: String,
    context: PathBuf,
}

impl Image {
    pub fn build(tag: &str) -> Image {
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
