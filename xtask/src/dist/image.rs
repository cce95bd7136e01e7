//! The container image from the static binary alone: deploy/build-context.sh (the same context
//! `cargo xtask image` builds from a glibc binary, which then carries its shared libraries)
//! and deploy/Containerfile, built by podman and saved as an OCI archive that
//! `podman load -i` or `docker load -i` reads, and a registry push sends on.

use std::process::Command;

use anyhow::{Context as _, Result};

use super::{checked, Release, VERSION};

/// The tag the image is built and saved under.
pub fn tag() -> String {
    format!("localhost/balancer:{VERSION}")
}

/// Builds the image and saves it as `balancer-VERSION-image.tar` in the release's output.
pub fn build(release: &Release) -> Result<()> {
    let context = release.stage("image")?;
    checked(
        Command::new(release.root.join("deploy/build-context.sh"))
            .arg(&release.binary)
            .arg(&context),
        "deploy/build-context.sh",
    )?;
    let podman = || {
        let mut cmd = Command::new("podman");
        cmd.env(
            "CONTAINERS_CONF",
            release.root.join("deploy/containers.conf"),
        );
        cmd
    };
    podman()
        .arg("--version")
        .output()
        .context("podman not found: apt-get install podman runc (or run `cargo xtask setup`)")?;
    checked(
        podman()
            .args(["build", "-q", "-t", &tag(), "-f"])
            .arg(context.join("Containerfile"))
            .arg(&context),
        "podman build",
    )?;
    let archive = release.out.join(format!("balancer-{VERSION}-image.tar"));
    checked(
        podman()
            .args(["save", "-q", "--format", "oci-archive", "-o"])
            .arg(&archive)
            .arg(tag()),
        "podman save",
    )
}
