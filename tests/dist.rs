//! The release artefacts of `cargo xtask dist` (target/dist/), installed the way users install
//! them, with no Rust toolchain in reach: the .deb into a clean Debian root file system
//! (debootstrap's minbase, kept under target/ so that reruns skip the download) and run there
//! by chroot; the npm tarball into an empty npm prefix; the wheel into a fresh venv; the image
//! loaded by podman. Each installed `balancer` must name its commit, serve, and steer.
//!
//! `cargo xtask test` builds the artefacts before the tests; run alone, build them first with
//! `cargo xtask dist`.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Command, Output},
    time::Instant,
};

use balancer_tests::*;

const VERSION: &str = env!("CARGO_PKG_VERSION");
const WHEEL_TAGS: &str = "py3-none-manylinux_2_17_x86_64.manylinux2014_x86_64.musllinux_1_1_x86_64";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// One artefact of target/dist/, which must exist.
fn artefact(name: &str) -> PathBuf {
    let path = root().join("target/dist").join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo xtask dist` first (`cargo xtask test` does)",
        path.display()
    );
    path
}

fn static_binary() -> PathBuf {
    artefact(&format!("balancer-{VERSION}-x86_64-linux-musl"))
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Runs `cmd` bounded in time; panics with its output unless it succeeds.
fn ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?} failed: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn timeout(secs: u32, program: &str) -> Command {
    let mut cmd = Command::new("timeout");
    cmd.args(["--kill-after=10", &secs.to_string(), program]);
    cmd
}

/// The commit the artefacts must name: HEAD of this tree (dirty or not).
fn head() -> String {
    ok(Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(root()))
    .trim()
    .to_string()
}

/// `balancer --version` of an installed copy says the release, the commit and the kernel.
fn assert_version(program: &mut Command) {
    let v = ok(program.arg("--version"));
    assert!(
        v.starts_with(&format!("balancer {VERSION} (commit {}", head())),
        "not built from HEAD ({}): run `cargo xtask dist` again. It says: {v}",
        head()
    );
    assert!(v.contains("Linux 5.17+") && v.contains("CAP_BPF"), "{v}");
}

/// An installed `balancer` run through the end-to-end kit: `sh -c 'exec PATH "$@"'` in front,
/// so that the kit's own arguments follow the installed binary instead of the one cargo built.
fn start_installed(binary: &Path, port: u16, workers: u32, extra: &[&str]) -> Balancer {
    let script = format!("exec '{}' \"$@\"", binary.display());
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    Balancer::launch_under(
        &["sh", "-c", &script],
        &addr.to_string(),
        addr,
        workers,
        extra,
        true,
    )
}

/// Serves and steers: replies from every slot, and a worker held busy gets (almost) none of
/// the connections opened meanwhile, which only the program's least-loaded choice gives.
fn assert_serves_and_steers(b: &Balancer, workers: usize) {
    let replies: Vec<Reply> = (0..40).map(|_| get(b.addr, "/").unwrap()).collect();
    assert!(replies.iter().all(|r| r.status == 200));
    assert_eq!(
        histogram(&replies, workers)
            .iter()
            .filter(|&&n| n > 0)
            .count(),
        workers
    );
    let (share, n) = share_while_blocked(b.addr, workers, "/work?ms=");
    assert!(
        share < 0.05,
        "the held worker took {share:.3} of {n} new connections"
    );
    let s = b.status().unwrap();
    assert!(s["program"]["selected"].as_u64() >= Some(n as u64), "{s}");
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("balancer-dist-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn the_static_binary_needs_no_loader_and_matches_its_checksums() {
    netns();
    let bin = static_binary();
    // glibc's ldd says so of a binary with no PT_INTERP: nothing to resolve at start.
    let ldd = Command::new("ldd").arg(&bin).output().unwrap();
    assert!(text(&ldd).contains("statically linked"), "{}", text(&ldd));
    assert_version(&mut Command::new(&bin));
    let sums = ok(Command::new("sha256sum")
        .args(["--check", "--strict", "SHA256SUMS"])
        .current_dir(root().join("target/dist")));
    // Five packaged artefacts, and the aarch64 binary after `cargo xtask dist --aarch64`.
    assert!(sums.matches(": OK").count() >= 5, "{sums}");
    let b = start_installed(&bin, 8080, 2, &[]);
    assert_serves_and_steers(&b, 2);
}

#[test]
fn the_npm_package_installs_balancer_on_path() {
    netns();
    let prefix = scratch("npm");
    let tgz = artefact(&format!("balancer-{VERSION}.tgz"));
    ok(timeout(120, "npm")
        .args([
            "install",
            "--global",
            "--offline",
            "--no-audit",
            "--no-fund",
        ])
        .arg("--prefix")
        .arg(&prefix)
        .arg(&tgz)
        .env("npm_config_cache", prefix.join("cache")));
    let installed = prefix.join("bin/balancer");
    // The native binary itself, linked: no Node.js between the user and the balancer.
    assert_eq!(
        std::fs::read(&installed).unwrap(),
        std::fs::read(static_binary()).unwrap()
    );
    let path = format!("{}:/usr/bin:/bin", prefix.join("bin").display());
    assert_version(Command::new("balancer").env("PATH", &path));
    let b = start_installed(&installed, 8080, 2, &[]);
    assert_serves_and_steers(&b, 2);
    drop(b);
    let _ = std::fs::remove_dir_all(prefix);
}

#[test]
fn the_wheel_installs_balancer_into_a_venv() {
    netns();
    let dir = scratch("venv");
    let venv = dir.join("venv");
    ok(timeout(120, "python3").args(["-m", "venv"]).arg(&venv));
    let wheel = artefact(&format!("balancer-{VERSION}-{WHEEL_TAGS}.whl"));
    // pip refuses a wheel whose tags this platform does not take, so a wrong tag fails here.
    ok(timeout(120, venv.join("bin/pip").to_str().unwrap())
        .args([
            "install",
            "--no-index",
            "--no-deps",
            "--disable-pip-version-check",
        ])
        .arg(&wheel));
    let installed = venv.join("bin/balancer");
    assert_eq!(
        std::fs::read(&installed).unwrap(),
        std::fs::read(static_binary()).unwrap()
    );
    assert_version(&mut Command::new(&installed));
    let b = start_installed(&installed, 8080, 2, &[]);
    assert_serves_and_steers(&b, 2);
    drop(b);
    let out = ok(Command::new(venv.join("bin/pip")).args(["uninstall", "-y", "balancer"]));
    assert!(!installed.exists(), "{out}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn the_image_holds_the_static_binary_alone() {
    netns();
    let archive = artefact(&format!("balancer-{VERSION}-image.tar"));
    let podman = || {
        let mut c = timeout(120, "podman");
        c.env("CONTAINERS_CONF", root().join("deploy/containers.conf"));
        c
    };
    let loaded = ok(podman().arg("load").arg("-qi").arg(&archive));
    let image = loaded.trim().rsplit(' ').next().unwrap().to_string();
    let name = format!("bal-dist-{}", std::process::id());
    ok(podman().args(["create", "--name", &name, &image]));
    let files = ok(Command::new("sh").arg("-c").arg(format!(
        "CONTAINERS_CONF={} podman export {name} | tar -t",
        root().join("deploy/containers.conf").display()
    )));
    let _ = podman().args(["rm", "-f", &name]).output();
    let mut files: Vec<&str> = files.lines().filter(|f| !f.ends_with('/')).collect();
    files.sort();
    assert_eq!(
        files,
        ["etc/group", "etc/passwd", "usr/local/bin/balancer"],
        "the image holds the binary and the account names, no library"
    );
    let v = ok(podman()
        .args(["run", "--rm", "--runtime", "runc", "--entrypoint"])
        .args(["/usr/local/bin/balancer", &image, "--version"]));
    assert!(v.contains(&head()), "{v}");
}

/// Where the clean root is kept: outside the checkout, so that a fresh clone on the same machine
/// does not download and unpack it again (`BALANCER_TEST_CACHE` moves it).
fn cache_dir() -> PathBuf {
    std::env::var_os("BALANCER_TEST_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/balancer-tests"))
}

/// A clean Debian 12 root file system (debootstrap's minbase: no compiler, no Rust), made once
/// per machine (see [`cache_dir`]); each test gets a writable overlay of it, thrown away
/// afterwards, so the cached root is only ever read.
fn debian_root() -> PathBuf {
    let cached = cache_dir().join("debian-rootfs/bookworm-minbase");
    if cached.join("usr/bin/dpkg").exists() {
        return cached;
    }
    let partial = cached.with_extension("partial");
    let _ = std::fs::remove_dir_all(&partial);
    std::fs::create_dir_all(&partial).unwrap();
    let t = Instant::now();
    ok(timeout(900, "debootstrap")
        .args(["--variant=minbase", "bookworm"])
        .arg(&partial)
        .arg("http://deb.debian.org/debian"));
    eprintln!(
        "debootstrap --variant=minbase bookworm: {:.0} s",
        t.elapsed().as_secs_f64()
    );
    std::fs::rename(&partial, &cached).unwrap();
    cached
}

/// The mounts a chroot needs, in a mount namespace of its own (`unshare --mount`), so that they
/// vanish with its last process: the overlay, /proc, /sys (the kernel's BTF is there), /dev
/// and a fresh /run. `$R` is the root, and the script's arguments follow.
const MOUNTS: &str = r#"set -e
mount -t overlay overlay -o "lowerdir=$LOWER,upperdir=$UPPER,workdir=$WORK" "$R"
mount -t proc proc "$R/proc"
mount --rbind /sys "$R/sys"
mount --rbind /dev "$R/dev"
mount -t tmpfs -o mode=0755 tmpfs "$R/run"
"#;

/// A writable copy of the clean root: an overlay whose upper layer lives in a scratch dir.
struct Chroot {
    dir: PathBuf,
    lower: PathBuf,
}

impl Chroot {
    fn new(lower: PathBuf) -> Chroot {
        let dir = scratch("chroot");
        for d in ["upper", "work", "root"] {
            std::fs::create_dir(dir.join(d)).unwrap();
        }
        Chroot { dir, lower }
    }

    /// `env … unshare --mount sh -c "MOUNTS; then" sh ARGS`: the mounts made, `then` runs.
    fn argv(&self, then: &str, args: &[&str]) -> Vec<String> {
        let var = |k: &str, v: &Path| format!("{k}={}", v.display());
        let mut argv = vec![
            "env".to_string(),
            "PATH=/usr/sbin:/usr/bin:/sbin:/bin".to_string(),
            var("LOWER", &self.lower),
            var("UPPER", &self.dir.join("upper")),
            var("WORK", &self.dir.join("work")),
            var("R", &self.dir.join("root")),
        ];
        argv.extend(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c"].map(String::from),
        );
        argv.push(format!("{MOUNTS}{then}"));
        argv.push("sh".into());
        argv.extend(args.iter().map(|a| a.to_string()));
        argv
    }

    /// Runs `then` after the mounts, bounded in time, and returns its output.
    fn run(&self, then: &str, args: &[&str]) -> Output {
        timeout(300, "env")
            .args(&self.argv(then, args)[1..])
            .output()
            .unwrap()
    }

    /// Runs `script` inside the root (its shell, its tools).
    fn sh(&self, script: &str) -> Output {
        self.run("exec chroot \"$R\" sh -c \"$1\"", &[script])
    }
}

impl Drop for Chroot {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn the_deb_installs_into_a_clean_debian_and_its_unit_command_serves() {
    // Debian's mirror first: the test's own network namespace has loopback only.
    let clean = debian_root();
    netns();
    let deb = artefact(&format!("balancer_{VERSION}-1_amd64.deb"));
    let chroot = Chroot::new(clean);
    let t = Instant::now();
    let toolchain = chroot.sh("command -v cargo rustc cc gcc ld clang");
    assert!(!toolchain.status.success(), "{}", text(&toolchain));
    let out = chroot.run(
        "cp \"$1\" \"$R/tmp/balancer.deb\"; exec chroot \"$R\" dpkg -i /tmp/balancer.deb",
        &[deb.to_str().unwrap()],
    );
    assert!(out.status.success(), "dpkg -i: {}", text(&out));
    let files = text(&chroot.sh("dpkg -L balancer | sort"));
    for f in [
        "/usr/bin/balancer",
        "/lib/systemd/system/balancer.service",
        "/etc/balancer/balancer.toml",
        "/usr/share/doc/balancer/README.md",
    ] {
        assert!(
            files.lines().any(|l| l == f),
            "{f} not in the package: {files}"
        );
    }
    // The unit's own command line, with the kit's control socket instead of /run/balancer's.
    let unit = text(&chroot.sh("cat /lib/systemd/system/balancer.service"));
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .unwrap();
    let args: Vec<&str> = exec.split_whitespace().collect();
    assert_eq!(&args[..2], ["/usr/bin/balancer", "run"], "{exec}");
    let at = args.iter().position(|a| *a == "--control").unwrap();
    let extra: Vec<&str> = [&args[2..at], &args[at + 2..]].concat();
    assert!(extra.contains(&"/etc/balancer/balancer.toml"), "{exec}");
    // The kit names a control socket in a host directory: bound at the same path inside.
    let serve = "for a; do [ \"$prev\" = --control ] && ctl=$(dirname \"$a\"); prev=$a; done
mkdir -p \"$R$ctl\" && mount --bind \"$ctl\" \"$R$ctl\"
shift; exec chroot \"$R\" /usr/bin/balancer \"$@\"";
    let argv = chroot.argv(serve, &[]);
    let prefix: Vec<&str> = argv.iter().map(String::as_str).collect();
    let addr: SocketAddr = "127.0.0.1:8080".parse().unwrap();
    let b = Balancer::launch_under(&prefix, "127.0.0.1:8080", addr, 2, &extra, true);
    eprintln!(
        "clean root to serving (dpkg -i, start, every slot up): {:.1} s",
        t.elapsed().as_secs_f64()
    );
    assert_serves_and_steers(&b, 2);
}
