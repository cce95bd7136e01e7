//! The Debian package, built by hand with `dpkg-deb` (no packaging tool to install): the
//! static binary at /usr/bin/balancer, deploy/systemd/balancer.service as a system unit, and
//! deploy/balancer.toml as /etc/balancer/balancer.toml, a conffile that upgrades keep.
//!
//! The unit in deploy/ is written for a binary copied by hand to /usr/local/bin, which a
//! package must not touch: the packaged copy points at /usr/bin instead. No account is
//! created: workers run under uids of their own that the supervisor picks (docs/deploy.md,
//! "What a worker can and cannot do"). The service is not started on install, since the
//! example config runs the built-in demo worker until a command is set.

use std::{os::unix::fs::PermissionsExt as _, path::Path, process::Command};

use anyhow::{bail, Result};

use super::{checked, Release, VERSION};

/// The Debian revision of this packaging.
const REVISION: &str = "1";
const POSTINST: &str = r#"#!/bin/sh
set -e
if [ "$1" = configure ] && [ -d /run/systemd/system ]; then
    systemctl daemon-reload || true
fi
"#;

const POSTRM: &str = r#"#!/bin/sh
set -e
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload || true
fi
"#;

/// Builds `balancer_VERSION-1_amd64.deb` into the release's output.
pub fn build(release: &Release) -> Result<()> {
    let root = release.stage("deb")?;
    let file = |path: &str, data: &[u8], mode: u32| -> Result<()> {
        let dest = root.join(path);
        std::fs::create_dir_all(dest.parent().unwrap())?;
        std::fs::write(&dest, data)?;
        std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(mode))?;
        Ok(())
    };
    file("usr/bin/balancer", &std::fs::read(&release.binary)?, 0o755)?;
    let unit = std::fs::read_to_string(release.root.join("deploy/systemd/balancer.service"))?;
    file(
        "lib/systemd/system/balancer.service",
        packaged_unit(&unit)?.as_bytes(),
        0o644,
    )?;
    let config = std::fs::read(release.root.join("deploy/balancer.toml"))?;
    file("etc/balancer/balancer.toml", &config, 0o644)?;
    let readme = std::fs::read(release.root.join("README.md"))?;
    file("usr/share/doc/balancer/README.md", &readme, 0o644)?;
    file(
        "usr/share/doc/balancer/copyright",
        COPYRIGHT.as_bytes(),
        0o644,
    )?;
    file("DEBIAN/control", control(&root)?.as_bytes(), 0o644)?;
    file("DEBIAN/conffiles", b"/etc/balancer/balancer.toml\n", 0o644)?;
    file("DEBIAN/postinst", POSTINST.as_bytes(), 0o755)?;
    file("DEBIAN/postrm", POSTRM.as_bytes(), 0o755)?;
    let deb = release
        .out
        .join(format!("balancer_{VERSION}-{REVISION}_amd64.deb"));
    checked(
        Command::new("dpkg-deb")
            .args(["--root-owner-group", "-Zxz", "--build"])
            .arg(&root)
            .arg(&deb),
        "dpkg-deb --build",
    )
}

const COPYRIGHT: &str = "\
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: balancer

Files: *
License: MIT or Apache-2.0
";

/// The package's control file; Installed-Size in KiB, as dpkg counts it.
fn control(root: &Path) -> Result<String> {
    let kib = du(root)?.div_ceil(1024);
    Ok(format!(
        "Package: balancer\n\
         Version: {VERSION}-{REVISION}\n\
         Architecture: amd64\n\
         Maintainer: balancer maintainers <maintainers@balancer.invalid>\n\
         Installed-Size: {kib}\n\
         Section: net\n\
         Priority: optional\n\
         Description: runs N copies of a server on one port, steered by the kernel\n \
         A supervisor starts the workers, gives each its own SO_REUSEPORT listener and\n \
         attaches an SK_REUSEPORT eBPF program that sends each new connection to the\n \
         least-loaded worker. One static binary, the program embedded; needs Linux 5.17+.\n"
    ))
}

fn du(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        total += if meta.is_dir() {
            du(&entry.path())?
        } else {
            meta.len()
        };
    }
    Ok(total)
}

/// The unit with the package's paths: the binary in /usr/bin, the docs in /usr/share/doc, and
/// the install-by-hand instructions of its header replaced by the package's own.
fn packaged_unit(unit: &str) -> Result<String> {
    let body: String = unit
        .lines()
        .skip_while(|l| l.starts_with('#'))
        .map(|l| format!("{l}\n"))
        .collect::<String>()
        .replace("/usr/local/bin/balancer", "/usr/bin/balancer")
        .replace("/usr/local/share/doc/", "/usr/share/doc/");
    if !body.contains("ExecStart=/usr/bin/balancer ") {
        bail!("deploy/systemd/balancer.service: no ExecStart of /usr/local/bin/balancer");
    }
    Ok(format!(
        "# Installed by the balancer package. Options: /etc/balancer/balancer.toml; then\n\
         #   systemctl enable --now balancer\n\
         #   systemctl reload balancer        # zero-downtime worker replacement (SIGHUP)\n{body}"
    ))
}
