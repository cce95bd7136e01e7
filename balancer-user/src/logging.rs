//! Logs through `tracing`: human-readable by default, one JSON object per line with
//! `--log-format json`. Records of the `log` crate, which is what the program's aya-log records
//! arrive as, are bridged into the same stream with their level. `RUST_LOG` filters as usual
//! (default `info`).

use tracing_subscriber::EnvFilter;

pub fn init(format: &str) {
    let _ = tracing_log::LogTracer::init();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only for a terminal, not for a file or a log shipper.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false);
    let _ = if format == "json" {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
}
