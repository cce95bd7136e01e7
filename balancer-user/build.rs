//! Compiles the eBPF program (`balancer-ebpf`, for the BPF target, with the nightly toolchain
//! and bpf-linker) into OUT_DIR, where `src/program.rs` embeds it. `cargo xtask setup` installs
//! what this needs; `BALANCER_EBPF_TOOLCHAIN` names a toolchain other than `nightly`.
fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=BALANCER_EBPF_TOOLCHAIN");
    let toolchain = std::env::var("BALANCER_EBPF_TOOLCHAIN").ok();
    let toolchain = match toolchain.as_deref() {
        Some(t) if !t.is_empty() => aya_build::Toolchain::Custom(t),
        _ => aya_build::Toolchain::Nightly,
    };
    let package = aya_build::Package {
        name: "balancer-ebpf",
        root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../balancer-ebpf"),
        ..Default::default()
    };
    aya_build::build_ebpf([package], toolchain)
}
