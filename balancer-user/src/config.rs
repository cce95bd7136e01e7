//! `balancer run --config FILE`: options from a TOML file, under flags and environment.
//!
//! Precedence, highest first: command-line flags, `BALANCER_*` environment variables, the
//! config file, built-in defaults. The file uses the long flag names (`kill-timeout` or
//! `kill_timeout`), plus `command = ["node", "server.js"]` for the worker command:
//!
//! ```toml
//! listen = "0.0.0.0:8080"
//! workers = 4
//! policy = "least-loaded"
//! metrics = "127.0.0.1:9464"
//! kill-timeout = 10
//! command = ["node", "/srv/app/server.js"]
//! ```
//!
//! The file's options are turned into flags and placed before the user's own, for every option
//! that clap reports as not given on the command line or in the environment; clap then parses
//! everything once more, so the file gets exactly the validation flags get.

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
};

use clap::{parser::ValueSource, CommandFactory as _};

use crate::cli::Cli;

/// What is wrong with a config file, each worded as the user reads it: the file, then the
/// problem.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read config file {}", .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Not TOML: the parser's message, without the excerpt of the file it adds.
    #[error("config file {}: {message}", .path.display())]
    Parse { path: PathBuf, message: String },
    #[error(
        "config file {}: unknown option `{key}`: use one of {known}, command",
        .path.display()
    )]
    UnknownOption {
        path: PathBuf,
        key: String,
        /// The options a file may give, comma-separated.
        known: String,
    },
    #[error("config file {}: `{key}` must be a string or a number", .path.display())]
    NotScalar { path: PathBuf, key: String },
    #[error("config file {}: `{key}` must be a list", .path.display())]
    NotList { path: PathBuf, key: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Returns `argv` with the options of the config file named by `run --config` (or
/// `BALANCER_CONFIG`) inserted; `argv` unchanged if there is none.
pub fn apply(argv: Vec<OsString>) -> Result<Vec<OsString>> {
    let Ok(matches) = Cli::command().try_get_matches_from(&argv) else {
        return Ok(argv); // clap reports the error itself on the real parse
    };
    let Some(("run", run)) = matches.subcommand() else {
        return Ok(argv);
    };
    let Some(path) = run.get_one::<std::path::PathBuf>("config") else {
        return Ok(argv);
    };
    let table = read(path)?;
    let explicit = |id: &str| {
        matches!(
            run.value_source(id),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        )
    };
    let (injected, worker_command) = flags(path, &table, explicit)?;
    let has_command = run
        .get_many::<OsString>("command")
        .is_some_and(|mut c| c.next().is_some());
    Ok(splice(
        argv,
        injected,
        worker_command.filter(|_| !has_command),
    ))
}

/// The config file as a TOML table.
fn read(path: &Path) -> Result<toml::Table> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
        path: path.to_path_buf(),
        source,
    })?;
    text.parse().map_err(|e: toml::de::Error| Error::Parse {
        path: path.to_path_buf(),
        message: e.message().to_owned(),
    })
}

/// The file's options as `run` flags, leaving out those the command line or the environment
/// already set (`explicit`), and its worker `command`, if any.
fn flags(
    path: &Path,
    table: &toml::Table,
    explicit: impl Fn(&str) -> bool,
) -> Result<(Vec<OsString>, Option<Vec<OsString>>)> {
    let cmd = Cli::command();
    let run_cmd = cmd.find_subcommand("run").expect("run subcommand");
    let mut injected: Vec<OsString> = Vec::new();
    let mut worker_command: Option<Vec<OsString>> = None;
    for (key, value) in table {
        let long = key.replace('_', "-");
        if long == "command" {
            let words = strings(path, key, value)?;
            worker_command = Some(words.into_iter().map(OsString::from).collect());
            continue;
        }
        let Some(arg) = run_cmd
            .get_arguments()
            .find(|a| a.get_long() == Some(long.as_str()))
        else {
            let known: Vec<_> = run_cmd
                .get_arguments()
                .filter_map(|a| a.get_long())
                .filter(|l| *l != "config")
                .collect();
            return Err(Error::UnknownOption {
                path: path.to_path_buf(),
                key: key.clone(),
                known: known.join(", "),
            });
        };
        if long == "config" || explicit(arg.get_id().as_str()) {
            continue;
        }
        match value {
            toml::Value::Boolean(true) => injected.push(format!("--{long}").into()),
            toml::Value::Boolean(false) => {}
            toml::Value::Array(_) => {
                injected.push(format!("--{long}").into());
                injected.push(strings(path, key, value)?.join(",").into());
            }
            other => {
                injected.push(format!("--{long}").into());
                injected.push(scalar(path, key, other)?.into());
            }
        }
    }
    Ok((injected, worker_command))
}

/// `argv` with `injected` right after `run`, and the file's worker `command` at the end, after
/// `--`.
fn splice(
    argv: Vec<OsString>,
    injected: Vec<OsString>,
    command: Option<Vec<OsString>>,
) -> Vec<OsString> {
    let run_at = argv
        .iter()
        .position(|a| a == "run")
        .expect("run was parsed");
    let mut out: Vec<OsString> = argv[..=run_at].to_vec();
    out.extend(injected);
    out.extend(argv[run_at + 1..].iter().cloned());
    if let Some(command) = command {
        if !out.iter().any(|a| a == "--") {
            out.push("--".into());
        }
        out.extend(command);
    }
    out
}

fn scalar(path: &Path, key: &str, v: &toml::Value) -> Result<String> {
    Ok(match v {
        toml::Value::String(s) => s.clone(),
        toml::Value::Integer(i) => i.to_string(),
        toml::Value::Float(f) => f.to_string(),
        _ => {
            return Err(Error::NotScalar {
                path: path.to_owned(),
                key: key.to_owned(),
            })
        }
    })
}

fn strings(path: &Path, key: &str, v: &toml::Value) -> Result<Vec<String>> {
    match v {
        toml::Value::Array(items) => items.iter().map(|i| scalar(path, key, i)).collect(),
        _ => Err(Error::NotList {
            path: path.to_owned(),
            key: key.to_owned(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    fn args(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    fn with_file(text: &str, f: impl FnOnce(&str)) {
        let path = std::env::temp_dir().join(format!(
            "balancer-config-{}-{}.toml",
            std::process::id(),
            text.len()
        ));
        std::fs::write(&path, text).unwrap();
        f(path.to_str().unwrap());
        let _ = std::fs::remove_file(path);
    }

    fn run_args(argv: Vec<OsString>) -> crate::cli::RunArgs {
        match Cli::try_parse_from(apply(argv).unwrap()).unwrap().command {
            crate::cli::Command::Run(r) => *r,
            _ => unreachable!(),
        }
    }

    #[test]
    fn the_file_fills_in_what_flags_do_not_say() {
        with_file(
            "workers = 3\npolicy = \"p2c\"\nweights = [2, 1, 1]\nkill_timeout = 4.5\nudp = true\ncommand = [\"node\", \"s.js\"]\n",
            |f| {
                let r = run_args(args(&["balancer", "run", "--config", f, "--workers", "2"]));
                assert_eq!(r.workers, Some(2), "the flag wins");
                assert_eq!(r.policy, balancer_common::Policy::P2c);
                assert_eq!(r.weights, [2, 1, 1]);
                assert_eq!(r.kill_timeout, 4.5);
                assert!(r.udp);
                assert_eq!(r.command, ["node", "s.js"]);
                let r = run_args(args(&["balancer", "run", "--config", f, "--", "python3", "x.py"]));
                assert_eq!(r.command, ["python3", "x.py"], "a command on the line wins");
            },
        );
    }

    #[test]
    fn unknown_keys_and_bad_values_are_errors() {
        with_file("wrokers = 3\n", |f| {
            let e = apply(args(&["balancer", "run", "--config", f]))
                .unwrap_err()
                .to_string();
            assert!(e.contains("unknown option `wrokers`"), "{e}");
        });
        with_file("workers = \"many\"\n", |f| {
            let argv = apply(args(&["balancer", "run", "--config", f])).unwrap();
            assert!(
                Cli::try_parse_from(argv).is_err(),
                "clap validates file values like flags"
            );
        });
        with_file("workers = [\n", |f| {
            let e = apply(args(&["balancer", "run", "--config", f]))
                .unwrap_err()
                .to_string();
            assert!(e.starts_with("config file"), "{e}");
        });
    }
}
