//! `keel-shim run <bundle-dir> <id>`: runs one OCI bundle through libcontainer and exits with
//! the container's status (128+signal when killed), or 127 when it could not be started.
//! `keel-shim exec <id> -- CMD...` runs a command in a running container (`keelctl exec`).
//!
//! PID 1 starts one shim per container so that everything risky (namespaces, mounts,
//! capabilities, cgroups, seccomp) happens outside PID 1. The contract with PID 1 is
//! `keel_bundle::ShimEvent` lines on the fd named by `KEEL_SHIM_STATUS_FD`; the container
//! writes straight into the shim's stdout/stderr. `KEEL_SHIM_LOG` (error, warn, info,
//! debug, trace; default info) sets how much the shim and libcontainer report.

mod devbind;
mod devices;
mod elevate;
mod events;
mod exec;
mod executor;
mod netlink;
mod prepare;
mod run;
mod seccomp;
mod sys;

use keel_guest::chain;
use std::path::PathBuf;
use std::process::ExitCode;

/// Exit status when the container could not be started.
const FAILED: u8 = 127;

const USAGE: &str =
    "usage: keel-shim run <bundle-dir> <id>\n       keel-shim exec <id> -- <command> [args...]";

/// Parsed command line.
#[derive(Debug, PartialEq, Eq)]
enum Command {
    Run { bundle: PathBuf, id: String },
    Exec { id: String, args: Vec<String> },
    Help,
    Version,
}

fn parse_args(args: &[String]) -> Result<Command, String> {
    match args {
        [cmd, bundle, id] if cmd == "run" => Ok(Command::Run {
            bundle: PathBuf::from(bundle),
            id: id.clone(),
        }),
        [cmd, id, sep, args @ ..] if cmd == "exec" && sep == "--" && !args.is_empty() => {
            Ok(Command::Exec {
                id: id.clone(),
                args: args.to_vec(),
            })
        }
        [flag] if flag == "-h" || flag == "--help" || flag == "help" => Ok(Command::Help),
        [flag] if flag == "-V" || flag == "--version" => Ok(Command::Version),
        _ => Err(USAGE.to_owned()),
    }
}

fn log_level() -> log::LevelFilter {
    std::env::var("KEEL_SHIM_LOG")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(log::LevelFilter::Info)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let command = match parse_args(&args) {
        Ok(c) => c,
        Err(usage) => {
            eprintln!("{usage}");
            return ExitCode::from(2);
        }
    };
    let (bundle, id) = match command {
        Command::Help => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Command::Version => {
            println!("keel-shim {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Command::Run { bundle, id } => (bundle, id),
        Command::Exec { id, args } => {
            // No status fd here: diagnostics go to stderr, for the person at keelctl.
            events::init(
                events::Sink::Stderr,
                log_level().min(log::LevelFilter::Warn),
            );
            return match exec::exec(&id, args) {
                Ok(status) => ExitCode::from(u8::try_from(status & 0xff).unwrap_or(FAILED)),
                Err(err) => {
                    log::error!("{}", chain(&err));
                    ExitCode::from(FAILED)
                }
            };
        }
    };
    events::init(events::sink_from_env(), log_level());
    match run::run(&bundle, &id) {
        Ok(status) => ExitCode::from(u8::try_from(status & 0xff).unwrap_or(FAILED)),
        Err(err) => {
            log::error!("{}", chain(&err));
            ExitCode::from(FAILED)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn run_takes_a_bundle_and_an_id() {
        assert_eq!(
            parse_args(&args(&["run", "/containers/services/x", "x"])),
            Ok(Command::Run {
                bundle: PathBuf::from("/containers/services/x"),
                id: "x".into()
            })
        );
        assert_eq!(parse_args(&args(&["--help"])), Ok(Command::Help));
        assert!(parse_args(&args(&["run", "/b"])).is_err());
        assert!(parse_args(&args(&["start", "/b", "x"])).is_err());
        assert!(parse_args(&[]).is_err());
        assert_eq!(
            parse_args(&args(&["exec", "web", "--", "ls", "-l"])),
            Ok(Command::Exec {
                id: "web".into(),
                args: vec!["ls".into(), "-l".into()]
            })
        );
        assert!(parse_args(&args(&["exec", "web", "--"])).is_err());
        assert!(parse_args(&args(&["exec", "web", "ls"])).is_err());
    }

    #[test]
    fn error_chains_read_as_one_line() {
        let inner = std::io::Error::other("disk on fire");
        let err = run::RunError::Stdio(inner);
        assert_eq!(chain(&err), "cannot duplicate stdio: disk on fire");
    }
}
