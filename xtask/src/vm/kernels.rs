//! The kernels the balancer is tested on, and fetching each from Debian's archive.
//!
//! Each kernel is a stock Debian cloud kernel (`linux-image-*-cloud-amd64-unsigned`): built
//! with BTF like every major distribution's, small, and booting in seconds with no modules
//! since everything a VM needs is built in. The package is downloaded with `apt-get download`
//! against a private apt state under target/vm/apt (its own sources list, its own package
//! lists), so the host's apt configuration and /boot are never touched, and unpacked with
//! `dpkg-deb -x`; only its `vmlinuz` is kept, under target/vm/kernels/SERIES/. A kernel
//! fetched once is reused: the archive is asked again only when that directory is removed.
//!
//! Debian's security archive keeps the newest builds of a series, and a mirror may not have
//! every file its lists name yet, so the candidates are tried newest first.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};

/// What a kernel is expected to do with the balancer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// Every feature present: `balancer check` passes and the core checks pass.
    Runs,
    /// Below the minimum: `balancer check` and `balancer run` refuse, naming this feature.
    Refuses {
        feature: &'static str,
        since: &'static str,
    },
}

pub struct Kernel {
    /// The kernel series, as `--kernel` names it.
    pub series: &'static str,
    /// The Debian package names of the series, as an apt-cache regular expression.
    pub package: &'static str,
    /// Who ships this series to users (why it is in the matrix).
    pub shipped_by: &'static str,
    pub expect: Expect,
}

pub const KERNELS: &[Kernel] = &[
    Kernel {
        series: "6.1",
        package: r"^linux-image-6\.1\.0-[0-9]+-cloud-amd64-unsigned$",
        shipped_by: "Debian 12, Amazon Linux 2023, EKS AMIs for Kubernetes 1.31-1.32",
        expect: Expect::Runs,
    },
    Kernel {
        series: "6.12",
        package: r"^linux-image-6\.12\.[0-9]+\+deb12-cloud-amd64-unsigned$",
        shipped_by: "Debian 13, EKS AMIs for Kubernetes 1.33-1.35",
        expect: Expect::Runs,
    },
    Kernel {
        series: "5.10",
        package: r"^linux-image-5\.10\.0-[0-9]+-cloud-amd64-unsigned$",
        shipped_by: "Debian 11, Amazon Linux 2 (below the minimum)",
        expect: Expect::Refuses {
            feature: "bpf_loop helper",
            since: "5.17",
        },
    },
];

pub fn by_series(series: &str) -> Result<&'static Kernel> {
    KERNELS
        .iter()
        .find(|k| k.series == series)
        .with_context(|| {
            let known: Vec<_> = KERNELS.iter().map(|k| k.series).collect();
            format!(
                "no kernel {series} in the matrix: give one of {}",
                known.join(", ")
            )
        })
}

/// The modules the balancer needs that Debian's cloud kernels build as modules, in load order:
/// sock_diag for TCP and UDP sockets, with which the supervisor reads what each worker holds.
/// On a Debian host the kernel loads them on the first request; the guest has no module tree
/// for that, so /init loads them.
const MODULES: &[&str] = &["inet_diag", "tcp_diag", "udp_diag"];

/// A kernel ready to boot.
pub struct Fetched {
    pub vmlinuz: PathBuf,
    /// Its [`MODULES`] (those it does not build in), uncompressed, named N-NAME.ko.
    pub modules: Vec<PathBuf>,
    /// The Debian package it came from, e.g. linux-image-6.1.0-43-cloud-amd64-unsigned 6.1.162-1.
    pub package: String,
}

/// The kernel of `k`, from target/vm/kernels/ or else from Debian's archive.
pub fn fetch(k: &Kernel, vm_dir: &Path) -> Result<Fetched> {
    let dir = vm_dir.join("kernels").join(k.series);
    let vmlinuz = dir.join("vmlinuz");
    let package_file = dir.join("package");
    let modules_dir = dir.join("modules");
    if vmlinuz.exists() && package_file.exists() && modules_dir.exists() {
        return Ok(Fetched {
            vmlinuz,
            modules: listed(&modules_dir)?,
            package: fs::read_to_string(&package_file)?.trim().to_string(),
        });
    }
    let apt = Apt::new(&vm_dir.join("apt"))?;
    let candidates = apt.newest_first(k.package)?;
    let unpack = vm_dir.join("unpack");
    for name in &candidates {
        let _ = fs::remove_dir_all(&unpack);
        fs::create_dir_all(&unpack)?;
        match apt.download(name, &unpack) {
            Ok(deb) => {
                let version = deb_field(&deb, "Version")?;
                extract(&deb, &unpack, &vmlinuz, &modules_dir)?;
                let package = format!("{name} {version}");
                fs::write(&package_file, format!("{package}\n"))?;
                let _ = fs::remove_dir_all(&unpack);
                return Ok(Fetched {
                    vmlinuz,
                    modules: listed(&modules_dir)?,
                    package,
                });
            }
            Err(e) => eprintln!("xtask: {name}: {e:#}; trying an older build"),
        }
    }
    bail!(
        "no package matching {} could be downloaded from Debian's archive",
        k.package
    )
}

fn deb_field(deb: &Path, field: &str) -> Result<String> {
    let out = Command::new("dpkg-deb")
        .args(["-f"])
        .arg(deb)
        .arg(field)
        .output()?;
    if !out.status.success() {
        bail!("dpkg-deb -f {} failed", deb.display());
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn listed(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .collect();
    files.sort();
    Ok(files)
}

/// Copies the package's vmlinuz to `to` and its [`MODULES`] to `modules`, decompressed (the
/// guest's busybox `insmod` takes plain ELF).
fn extract(deb: &Path, unpack: &Path, to: &Path, modules: &Path) -> Result<()> {
    let tree = unpack.join("tree");
    let status = Command::new("dpkg-deb")
        .arg("-x")
        .arg(deb)
        .arg(&tree)
        .status()?;
    if !status.success() {
        bail!("dpkg-deb -x {} failed", deb.display());
    }
    let boot = fs::read_dir(tree.join("boot"))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        })
        .context("the package holds no boot/vmlinuz-*")?;
    fs::create_dir_all(to.parent().unwrap())?;
    let _ = fs::remove_dir_all(modules);
    fs::create_dir_all(modules)?;
    let release = boot.file_name().unwrap().to_string_lossy()["vmlinuz-".len()..].to_string();
    let ipv4 = tree.join(format!("lib/modules/{release}/kernel/net/ipv4"));
    for (i, name) in MODULES.iter().enumerate() {
        let out = modules.join(format!("{i}-{name}.ko"));
        let plain = ipv4.join(format!("{name}.ko"));
        let (tool, packed) = [("xz", "xz"), ("zstd", "zst")]
            .iter()
            .map(|(tool, ext)| (*tool, ipv4.join(format!("{name}.ko.{ext}"))))
            .find(|(_, p)| p.exists())
            .unwrap_or(("", PathBuf::new()));
        if plain.exists() {
            fs::copy(&plain, &out)?;
        } else if !tool.is_empty() {
            let data = Command::new(tool).arg("-dc").arg(&packed).output()?;
            if !data.status.success() {
                bail!("{tool} -dc {} failed", packed.display());
            }
            fs::write(&out, data.stdout)?;
        }
        // Absent: built into this kernel.
    }
    fs::copy(&boot, to)?;
    Ok(())
}

/// apt-get and apt-cache over a private state directory and sources list.
struct Apt {
    options: Vec<String>,
}

/// Debian 12 and 11 with their security updates: where the kernels of the matrix live.
const SOURCES: &str = "\
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian-security bookworm-security main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bullseye main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian-security bullseye-security main
";

impl Apt {
    fn new(dir: &Path) -> Result<Apt> {
        for sub in ["state/lists/partial", "cache/archives/partial"] {
            fs::create_dir_all(dir.join(sub))?;
        }
        let sources = dir.join("sources.list");
        fs::write(&sources, SOURCES)?;
        let d = dir.display();
        let options = [
            format!("Dir::Etc::SourceList={}", sources.display()),
            "Dir::Etc::SourceParts=/nonexistent".into(),
            format!("Dir::State={d}/state"),
            format!("Dir::Cache={d}/cache"),
            "Dir::State::status=/dev/null".into(),
            // Its own state: no lock on the host's, which other apt runs may hold.
            "Debug::NoLocking=1".into(),
            "APT::Sandbox::User=root".into(),
        ]
        .into_iter()
        .flat_map(|o| ["-o".to_string(), o])
        .collect();
        let apt = Apt { options };
        let status = apt.command("apt-get").args(["-q", "update"]).status()?;
        if !status.success() {
            bail!("apt-get update (private lists under {d}) failed: is deb.debian.org reachable?");
        }
        Ok(apt)
    }

    fn command(&self, tool: &str) -> Command {
        let mut c = Command::new(tool);
        c.args(&self.options);
        c
    }

    fn newest_first(&self, pattern: &str) -> Result<Vec<String>> {
        let out = self
            .command("apt-cache")
            .args(["search", "--names-only", pattern])
            .output()?;
        let mut names: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_whitespace().next().map(String::from))
            .collect();
        names.sort_by_key(|n| std::cmp::Reverse(numbers(n)));
        if names.is_empty() {
            bail!("apt-cache finds no package matching {pattern}");
        }
        Ok(names)
    }

    fn download(&self, name: &str, into: &Path) -> Result<PathBuf> {
        let status = self
            .command("apt-get")
            .args(["-q", "download", name])
            .current_dir(into)
            .status()?;
        let deb = fs::read_dir(into)?
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|e| e == "deb"));
        match deb {
            Some(deb) if status.success() => Ok(deb),
            _ => bail!("apt-get download {name} failed"),
        }
    }
}

/// The numbers in a package name, in order: "6.1.0-43" sorts after "6.1.0-9".
fn numbers(name: &str) -> Vec<u64> {
    name.split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .filter_map(|s| s.parse().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_sort_by_their_numbers() {
        let mut names = [
            "linux-image-6.1.0-9-cloud-amd64-unsigned",
            "linux-image-6.1.0-43-cloud-amd64-unsigned",
        ];
        names.sort_by_key(|n| std::cmp::Reverse(numbers(n)));
        assert_eq!(names[0], "linux-image-6.1.0-43-cloud-amd64-unsigned");
    }
}
