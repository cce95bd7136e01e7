//! The npm package: `npm install -g ./balancer-VERSION.tgz` puts `balancer` on PATH.
//!
//! esbuild and biome ship a native binary through npm as a package per platform, picked by a
//! small JavaScript shim from `optionalDependencies`. One platform needs no shim: the package's
//! `bin` entry is the native binary itself, which npm links into the prefix's bin directory and
//! marks executable, so `balancer` starts without Node.js in between. `os` and `cpu` make npm
//! refuse the package on any other platform with a clear message instead of a binary that
//! cannot run.

use std::process::Command;

use anyhow::Result;
use serde_json::json;

use super::{checked, Release, VERSION};

const README: &str = "\
# balancer

Runs N copies of a server on one port; an SK_REUSEPORT eBPF program in the kernel sends each
new connection to the least-loaded copy. This package holds the static x86_64 Linux binary.

```sh
npm install -g ./balancer-VERSION.tgz
sudo balancer run --listen :8080 -- node server.js   # the server accepts on fd 3
```

Needs Linux 5.17+ and CAP_BPF (root); `balancer --version` says what it needs.
";

/// Builds `balancer-VERSION.tgz` into the release's output with `npm pack`.
pub fn build(release: &Release) -> Result<()> {
    let stage = release.stage("npm")?;
    std::fs::create_dir_all(stage.join("bin"))?;
    std::fs::copy(&release.binary, stage.join("bin/balancer"))?;
    let manifest = json!({
        "name": "balancer",
        "version": VERSION,
        "description": "Runs N copies of a server on one port; the kernel sends each new connection to the least-loaded copy (SK_REUSEPORT eBPF).",
        "license": "MIT OR Apache-2.0",
        "bin": { "balancer": "bin/balancer" },
        "files": ["bin/balancer"],
        "os": ["linux"],
        "cpu": ["x64"],
        "preferUnplugged": true,
    });
    std::fs::write(
        stage.join("package.json"),
        serde_json::to_string_pretty(&manifest)? + "\n",
    )?;
    std::fs::write(stage.join("README.md"), README.replace("VERSION", VERSION))?;
    checked(
        Command::new("npm")
            .args(["pack", "--silent", "--pack-destination"])
            .arg(&release.out)
            .current_dir(&stage),
        "npm pack (Node.js's npm; apt-get install npm)",
    )
}
