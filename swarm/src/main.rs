//! `keel-swarm` (the `swarm` package's `/usr/bin/keel-swarm`): makes this node part of a Docker
//! swarm from its metadata alone ([`config`]), as a service beside the engine (`pkg/docker`).
//!
//! - The first manager (role `manager`, its own address the `manager` setting) initialises the
//!   swarm unless its engine is in one already (its state is on the node's disk), then hands
//!   join tokens to nodes that prove the cluster secret ([`join`]) for as long as it runs.
//! - Every other node asks it for a token of its role and joins, retrying with backoff while the
//!   manager is unreachable, refuses the secret or the engine fails; each failure is said once
//!   per attempt on the console and in `keelctl logs`. A node already in a swarm does nothing.
//!
//! Usage: `keel-swarm [--config DIR] [--socket PATH]` (defaults `/run/config/swarm`,
//! `/run/docker/docker.sock`). This module owns the command line and the node's course.

mod config;
mod engine;
mod join;
mod sys;

use config::{NodeConfig, Role};
use keel_guest::chain;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

const CONFIG_DIR: &str = "/run/config/swarm";
const ENGINE_SOCKET: &str = "/run/docker/docker.sock";

/// Retry delays: doubling from 1 s to at most a minute.
#[derive(Debug)]
struct Backoff(Duration);

impl Backoff {
    const FIRST: Duration = Duration::from_secs(1);
    const MAX: Duration = Duration::from_secs(60);

    fn new() -> Backoff {
        Backoff(Self::FIRST)
    }

    /// The delay to wait now; the next one is twice as long, up to [`Backoff::MAX`].
    fn next_delay(&mut self) -> Duration {
        let now = self.0;
        self.0 = (self.0 * 2).min(Self::MAX);
        now
    }
}

fn main() -> ExitCode {
    keel_guest::init_logger("swarm", log::LevelFilter::Info, keel_guest::Console::Kmsg);
    let mut config_dir = PathBuf::from(CONFIG_DIR);
    let mut socket = PathBuf::from(ENGINE_SOCKET);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value = args.next();
        match (arg.as_str(), value) {
            ("--config", Some(v)) => config_dir = v.into(),
            ("--socket", Some(v)) => socket = v.into(),
            _ => {
                log::error!("usage: keel-swarm [--config DIR] [--socket PATH]");
                return ExitCode::from(2);
            }
        }
    }
    let config = match NodeConfig::load(&config_dir) {
        Ok(config) => config,
        Err(e) => {
            // Nothing to retry: the metadata is fixed for this boot. Exiting non-zero lets the
            // supervisor's restart policy and `keelctl list` show it.
            log::error!("{}; this node stays out of the swarm", chain(&e));
            return ExitCode::FAILURE;
        }
    };
    let engine = engine::Engine::new(&socket);
    let addr = wait_for_address(&config.interface);
    log::info!(
        "{} {addr} on {}, first manager {}",
        config.role,
        config.interface,
        config.manager
    );
    let swarm = wait_for_engine(&engine);
    let inactive = swarm.local_node_state == "inactive";
    if !inactive {
        log::info!(
            "the engine is already in a swarm (node {}, {}{}): not joining again",
            swarm.node_id,
            swarm.local_node_state,
            if swarm.error.is_empty() {
                String::new()
            } else {
                format!(": {}", swarm.error)
            }
        );
    }
    if config.role == Role::Manager && addr == config.manager {
        if inactive {
            init(&engine, addr);
        }
        serve_tokens(&engine, &config, addr)
    } else {
        if inactive {
            join(&engine, &config, addr);
        }
        // Done: a service that ends would be restarted; this one has nothing more to do.
        loop {
            std::thread::park();
        }
    }
}

/// The node's IPv4 address on the cluster network, once DHCP has given it one.
fn wait_for_address(interface: &str) -> Ipv4Addr {
    let mut said = false;
    loop {
        match sys::ipv4_of(interface) {
            Ok(Some(addr)) => return addr,
            Ok(None) if !said => log::info!("waiting for an IPv4 address on {interface}"),
            Err(e) if !said => log::warn!("cannot read {interface}'s addresses: {e}"),
            _ => {}
        }
        said = true;
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// The engine's swarm state, once the engine answers.
fn wait_for_engine(engine: &engine::Engine) -> engine::SwarmInfo {
    let mut backoff = Backoff::new();
    loop {
        match engine.info() {
            Ok(info) => return info.swarm,
            Err(e) => {
                let delay = backoff.next_delay();
                log::info!("waiting for the engine: {}; again in {delay:?}", chain(&e));
                std::thread::sleep(delay);
            }
        }
    }
}

fn init(engine: &engine::Engine, addr: Ipv4Addr) {
    let mut backoff = Backoff::new();
    loop {
        match engine.init(addr) {
            Ok(()) => {
                log::info!("initialised the swarm on {addr}:{}", engine::SWARM_PORT);
                return;
            }
            Err(e) => {
                let delay = backoff.next_delay();
                log::error!(
                    "cannot initialise the swarm: {}; again in {delay:?}",
                    chain(&e)
                );
                std::thread::sleep(delay);
            }
        }
    }
}

fn join(engine: &engine::Engine, config: &NodeConfig, addr: Ipv4Addr) {
    let manager = SocketAddr::from((config.manager, join::PORT));
    let mut backoff = Backoff::new();
    loop {
        let attempt = sys::nonce()
            .map_err(|e| format!("cannot read random bytes: {e}"))
            .and_then(|nonce| {
                join::request(manager, &config.secret, config.role, &nonce)
                    .map_err(|e| format!("cannot get a join token from {manager}: {}", chain(&e)))
            })
            .and_then(|token| {
                engine
                    .join(addr, config.manager, &token)
                    .map_err(|e| format!("cannot join the swarm: {}", chain(&e)))
            });
        match attempt {
            Ok(()) => {
                log::info!(
                    "joined the swarm of {} as a {}",
                    config.manager,
                    config.role
                );
                return;
            }
            Err(problem) => {
                let delay = backoff.next_delay();
                log::error!("{problem}; again in {delay:?}");
                std::thread::sleep(delay);
            }
        }
    }
}

/// Tokens read from the engine for each request, so a rotated token is the one handed out.
struct EngineTokens<'a>(&'a engine::Engine);

impl join::Tokens for EngineTokens<'_> {
    fn token(&mut self, role: Role) -> Result<String, String> {
        let tokens = self.0.join_tokens().map_err(|e| chain(&e))?;
        Ok(match role {
            Role::Manager => tokens.manager,
            Role::Worker => tokens.worker,
        })
    }
}

/// Answers nodes on the cluster network, one at a time (each exchange is a few hundred bytes,
/// bounded by [`join::IO_TIMEOUT`]), for ever.
fn serve_tokens(engine: &engine::Engine, config: &NodeConfig, addr: Ipv4Addr) -> ExitCode {
    let listen = SocketAddr::from((addr, join::PORT));
    let mut backoff = Backoff::new();
    let listener = loop {
        match TcpListener::bind(listen) {
            Ok(listener) => break listener,
            Err(e) => {
                let delay = backoff.next_delay();
                log::error!("cannot listen on {listen}: {e}; again in {delay:?}");
                std::thread::sleep(delay);
            }
        }
    };
    log::info!("handing join tokens to nodes with the secret on {listen}");
    let mut tokens = EngineTokens(engine);
    for conn in listener.incoming() {
        let conn = match conn {
            Ok(conn) => conn,
            Err(e) => {
                log::warn!("accept: {e}");
                continue;
            }
        };
        let peer = conn
            .peer_addr()
            .map_or_else(|_| "?".into(), |p| p.to_string());
        let served = conn
            .set_read_timeout(Some(join::IO_TIMEOUT))
            .and_then(|()| conn.set_write_timeout(Some(join::IO_TIMEOUT)))
            .map_err(join::Error::Io)
            .and_then(|()| sys::nonce().map_err(join::Error::Io))
            .and_then(|nonce| join::serve(&conn, &config.secret, &nonce, &mut tokens));
        match served {
            Ok(join::Served::Token(role)) => log::info!("gave {peer} a {role} token"),
            Ok(join::Served::WrongSecret) => {
                log::warn!("refused {peer}: it does not know the join secret");
            }
            Ok(join::Served::NoToken(problem)) => {
                log::error!("cannot give {peer} a token: {problem}");
            }
            Err(e) => log::warn!("{peer}: {}", chain(&e)),
        }
    }
    ExitCode::FAILURE
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_a_minute() {
        let mut b = Backoff::new();
        let delays: Vec<u64> = (0..9).map(|_| b.next_delay().as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
    }
}
