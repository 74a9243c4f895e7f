//! Several machines of one build: `keel run qemu --nodes N` and the `keel run ls` / `keel run
//! stop` that list and end what `keel run` left running in the background.
//!
//! A cluster's state directory (`PREFIX-state`, or `--state`) holds
//! - `lan.sock`, `lan.log`: the private network's switch ([`crate::lan`], run as the hidden
//!   `keel run lan`), to which every node's second NIC is connected;
//! - `nodeI/`: node I's own state directory (its control socket for `keel ctl STATE/nodeI`,
//!   `console.log`, `qemu.pid`, disks, metadata volume), I counting from 1;
//! - `cluster.json`: what runs ([`Record`]).
//!
//! Node I has the MAC [`node_mac`]`(I)` on the private network, and the network's DHCP server
//! gives it [`node_addr`]`(I)`: `192.168.76.(10+I)/24`. Only node 1 gets `--publish`'s port
//! forwards (one host port cannot go to two guests).
//!
//! Every background run (`keel run qemu -d`, with or without `--nodes`) is also noted in the
//! run directory ([`run_dir`]) so that `keel run ls` finds it; a note whose VMs have all ended
//! is removed when listed.

use crate::lan::dhcp::{Mac, Server};
use crate::run;
use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The most nodes one cluster may have (the addresses of one /24).
pub const MAX_NODES: u32 = 200;

/// The private network's first three octets, its prefix length and the switch's own address.
const SUBNET: [u8; 3] = [192, 168, 76];
const PREFIX_LEN: u8 = 24;
const SERVER_HOST: u8 = 1;

/// The name of a cluster's record in its state directory.
pub const RECORD: &str = "cluster.json";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("--nodes {0}: expected 1 to {MAX_NODES}")]
    Nodes(u32),
    #[error(
        "--nodes: --disk {} names one file, which every node would write; give size= only, and each node gets its own disk in its state directory",
        .0.display()
    )]
    SharedDisk(PathBuf),
    #[error(
        "--nodes: --console-file is one file; each node's console goes to STATE/nodeN/console.log"
    )]
    ConsoleFile,
    #[error(
        "--nodes: {} is a disk image, which every node would write; boot a kernel+initrd prefix or an ISO",
        .0.display()
    )]
    DiskTarget(PathBuf),
    #[error("--node-data {node}: there is no node {node} (--nodes {nodes})")]
    NodeData { node: u32, nodes: u32 },
    #[error("a cluster is already running in {}: stop it with keel run stop {}", .0.display(), .0.display())]
    Running(PathBuf),
    #[error("cannot make the cluster network's socket {}", path.display())]
    Bind {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot start the cluster network ({} run lan)", keel.display())]
    SpawnLan {
        keel: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot start node {node}")]
    Node {
        node: u32,
        #[source]
        source: Box<run::Error>,
    },
    #[error("cannot write {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} is not a cluster record keel can read", path.display())]
    RecordFormat {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("nothing keel started runs in {}", .0.display())]
    NotRunning(PathBuf),
    #[error("{} has no node {node}", state.display())]
    NoSuchNode { state: PathBuf, node: u32 },
    #[error("node {node} is running: stop it first with keel ctl {} poweroff", state.display())]
    NodeRunning { node: u32, state: PathBuf },
    #[error(
        "the network of {} has ended with its last node: start the cluster again with keel run qemu --nodes",
        .0.display()
    )]
    NetworkGone(PathBuf),
    #[error(
        "{} was started by a keel that did not record its command: start the cluster again with keel run qemu --nodes",
        .0.display()
    )]
    NoInvocation(PathBuf),
    #[error(transparent)]
    Run(#[from] run::Error),
    #[error(transparent)]
    Ctl(#[from] crate::ctl::Error),
    #[error("cannot catch ctrl-c")]
    Signal(#[source] io::Error),
}

/// The address node `node` (1-based) gets on the private network.
pub fn node_addr(node: u32) -> Ipv4Addr {
    let host = u8::try_from(10 + node.min(MAX_NODES)).unwrap_or(u8::MAX);
    Ipv4Addr::new(SUBNET[0], SUBNET[1], SUBNET[2], host)
}

/// The MAC of node `node`'s NIC on the private network (locally administered).
pub fn node_mac(node: u32) -> Mac {
    Mac([
        0x02,
        0x6b,
        0x65,
        0x4c,
        0,
        u8::try_from(node.min(MAX_NODES)).unwrap_or(u8::MAX),
    ])
}

/// The private network's DHCP server for `nodes` nodes.
pub fn network(nodes: u32) -> Server {
    Server {
        mac: node_mac(0),
        addr: Ipv4Addr::new(SUBNET[0], SUBNET[1], SUBNET[2], SERVER_HOST),
        prefix_len: PREFIX_LEN,
        leases: (1..=nodes.min(MAX_NODES))
            .map(|n| (node_mac(n), node_addr(n)))
            .collect(),
    }
}

/// What `keel run qemu --nodes N` takes.
#[derive(Debug, Clone)]
pub struct Options {
    /// What every node runs with: its `state` is the cluster's; its `publish` goes to node 1.
    pub run: run::Options,
    pub nodes: u32,
    /// The metadata every node gets (`--data`), unless `node_data` has its own.
    pub data: Option<Vec<u8>>,
    /// `--node-data I=FILE`: node I's own metadata.
    pub node_data: BTreeMap<u32, Vec<u8>>,
    /// The `keel` binary that runs the switch (`keel run lan`): the running one.
    pub keel: PathBuf,
    /// The command that made these options, recorded for [`restart`].
    pub invocation: Option<Invocation>,
}

/// A `keel run qemu --nodes` command as it was given: its arguments (after `keel`) and the
/// directory it ran in, which its relative paths are relative to. `keel run start` parses it
/// again to start a stopped node exactly as the cluster started it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invocation {
    pub args: Vec<String>,
    pub cwd: PathBuf,
}

/// What runs in a cluster's state directory (`cluster.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub target: PathBuf,
    pub state: PathBuf,
    /// The switch's process.
    pub lan_pid: u32,
    pub nodes: Vec<NodeRecord>,
    /// How the cluster was started (absent in records of older keels).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invocation: Option<Invocation>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// `node1`, `node2`, …: also the node's state directory under the cluster's.
    pub name: String,
    pub pid: u32,
    pub state: PathBuf,
    pub console: PathBuf,
    pub addr: Ipv4Addr,
    pub mac: String,
}

/// Checks what cannot work with several nodes before anything starts.
fn check(opts: &Options) -> Result<(), Error> {
    if opts.nodes == 0 || opts.nodes > MAX_NODES {
        return Err(Error::Nodes(opts.nodes));
    }
    if opts.run.console_file.is_some() {
        return Err(Error::ConsoleFile);
    }
    if let Some(path) = opts.run.disks.iter().find_map(|d| d.path.clone()) {
        return Err(Error::SharedDisk(path));
    }
    if let Some(&node) = opts.node_data.keys().find(|&&n| n == 0 || n > opts.nodes) {
        return Err(Error::NodeData {
            node,
            nodes: opts.nodes,
        });
    }
    if let run::Boot::Disk(disk) =
        run::Boot::detect(&opts.run.target, opts.run.media, opts.run.uefi)?
    {
        return Err(Error::DiskTarget(disk));
    }
    Ok(())
}

/// Starts the network and the nodes in the background and records them; on a failure, stops
/// what it started. Returns the record.
pub fn start(opts: &Options) -> Result<Record, Error> {
    use std::os::unix::process::CommandExt;
    check(opts)?;
    let state = run::state_dir(&opts.run);
    if let Ok(record) = read_record(&state)
        && record.nodes.iter().any(node_alive)
    {
        return Err(Error::Running(state));
    }
    run::create_state(&state)?;
    // Absolute: the record and the nodes' QEMU command lines name it, read from anywhere.
    let state = fs::canonicalize(&state).map_err(|source| Error::Read {
        path: state.clone(),
        source,
    })?;

    let socket = state.join("lan.sock");
    match fs::remove_file(&socket) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            return Err(Error::Bind {
                path: socket,
                source: e,
            });
        }
        _ => {}
    }
    let listener =
        std::os::unix::net::UnixListener::bind(&socket).map_err(|source| Error::Bind {
            path: socket.clone(),
            source,
        })?;
    let (log, log_err) = run::log_outputs(&state.join("lan.log"))?;
    let mut lan = Command::new(&opts.keel);
    lan.args(["run", "lan"]);
    for (mac, addr) in &network(opts.nodes).leases {
        lan.arg("--lease").arg(format!("{mac}={addr}"));
    }
    // The switch takes the bound socket as its standard input: it exists and accepts before
    // any QEMU connects, and a failure to bind is reported here.
    let lan = lan
        .stdin(Stdio::from(std::os::fd::OwnedFd::from(listener)))
        .stdout(log)
        .stderr(log_err)
        .process_group(0)
        .spawn()
        .map_err(|source| Error::SpawnLan {
            keel: opts.keel.clone(),
            source,
        })?;
    let mut record = Record {
        target: opts.run.target.clone(),
        state: state.clone(),
        lan_pid: lan.id(),
        nodes: Vec::new(),
        invocation: opts.invocation.clone(),
    };

    for node in 1..=opts.nodes {
        match start_node(opts, &state, node) {
            Ok(started) => record.nodes.push(started),
            Err(e) => {
                for n in &record.nodes {
                    crate::sys::signal_pid(n.pid, Signal::SIGKILL);
                }
                crate::sys::signal_pid(record.lan_pid, Signal::SIGKILL);
                return Err(e);
            }
        }
    }
    write_record(&state, &record)?;
    note_run(&state);
    Ok(record)
}

/// Starts node `node` of the cluster in `state` (canonical), on its network's socket.
fn start_node(opts: &Options, state: &Path, node: u32) -> Result<NodeRecord, Error> {
    let name = format!("node{node}");
    let node_state = state.join(&name);
    let console = node_state.join("console.log");
    let mut node_opts = run::Options {
        state: Some(node_state.clone()),
        console_file: Some(console.clone()),
        lan: Some(run::LanNic {
            socket: state.join("lan.sock"),
            mac: node_mac(node),
        }),
        ..opts.run.clone()
    };
    if node != 1 {
        node_opts.publish.clear();
    }
    let started = opts
        .node_data
        .get(&node)
        .or(opts.data.as_ref())
        .map(|data| run::data_volume(&node_state, data))
        .transpose()
        .and_then(|drive| {
            if let Some(drive) = drive {
                node_opts.extra.splice(0..0, drive);
            }
            run::run_detached(&node_opts)
        })
        .map_err(|source| Error::Node {
            node,
            source: Box::new(source),
        })?;
    Ok(NodeRecord {
        name,
        pid: started.pid,
        state: node_state,
        console,
        addr: node_addr(node),
        mac: node_mac(node).to_string(),
    })
}

/// `keel run start`: starts the given nodes of the cluster in `state` again (every stopped one
/// when `nodes` is empty), with `opts` parsed from the cluster's [`Invocation`], on the network
/// that still runs: each gets its address back from the network's DHCP server by its MAC, and
/// its disks and state as it left them. Returns the nodes started.
pub fn restart(opts: &Options, state: &Path, nodes: &[u32]) -> Result<Vec<u32>, Error> {
    let mut record = read_record(state)?;
    if !lan_alive(record.lan_pid) {
        return Err(Error::NetworkGone(state.to_owned()));
    }
    let wanted: Vec<u32> = if nodes.is_empty() {
        (1..=opts.nodes)
            .filter(|&n| {
                record
                    .nodes
                    .get(usize::try_from(n - 1).unwrap_or(usize::MAX))
                    .is_some_and(|r| !node_alive(r))
            })
            .collect()
    } else {
        nodes.to_vec()
    };
    for &node in &wanted {
        let index = usize::try_from(node.wrapping_sub(1)).unwrap_or(usize::MAX);
        let Some(current) = record.nodes.get(index) else {
            return Err(Error::NoSuchNode {
                state: state.to_owned(),
                node,
            });
        };
        if node_alive(current) {
            return Err(Error::NodeRunning {
                node,
                state: current.state.clone(),
            });
        }
    }
    for &node in &wanted {
        let started = start_node(opts, &record.state, node)?;
        let index = usize::try_from(node - 1).unwrap_or(usize::MAX);
        record.nodes[index] = started;
        write_record(&record.state, &record)?;
    }
    Ok(wanted)
}

fn write_record(state: &Path, record: &Record) -> Result<(), Error> {
    let path = state.join(RECORD);
    let tmp = state.join(format!(".{RECORD}.tmp"));
    let failed = |source| Error::Write {
        path: path.clone(),
        source,
    };
    let text = serde_json::to_vec_pretty(record).map_err(|e| failed(io::Error::other(e)))?;
    fs::write(&tmp, text).map_err(failed)?;
    fs::rename(&tmp, &path).map_err(failed)
}

/// Reads the record of the cluster in `state`.
pub fn read_record(state: &Path) -> Result<Record, Error> {
    let path = state.join(RECORD);
    let text = fs::read(&path).map_err(|source| Error::Read {
        path: path.clone(),
        source,
    })?;
    serde_json::from_slice(&text).map_err(|source| Error::RecordFormat { path, source })
}

/// True while `pid` is a running process whose command line names `needle` (a QEMU names its
/// state directory; a pid reused by another program does not).
fn alive(pid: u32, needle: &[u8]) -> bool {
    let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    !needle.is_empty() && cmdline.windows(needle.len()).any(|w| w == needle)
}

fn vm_alive(pid: u32, state: &Path) -> bool {
    alive(pid, state.as_os_str().as_encoded_bytes())
}

fn node_alive(node: &NodeRecord) -> bool {
    vm_alive(node.pid, &node.state)
}

/// The switch's command line names the first node's MAC (its `--lease`).
fn lan_alive(pid: u32) -> bool {
    alive(pid, node_mac(1).to_string().as_bytes())
}

/// One background run as `keel run ls` shows it (`--json`: one per line).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Listed {
    pub state: PathBuf,
    pub target: PathBuf,
    /// Running nodes (1 for a single VM) and how many were started.
    pub running: usize,
    pub nodes: usize,
    /// The running nodes' addresses on the private network (none for a single VM).
    pub addrs: Vec<Ipv4Addr>,
}

/// The directory of notes on background runs: `$KEEL_RUN_DIR`, else
/// `$XDG_RUNTIME_DIR/keel/runs`, else `$TMPDIR/keel-UID/runs`.
pub fn run_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("KEEL_RUN_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        return Path::new(&dir).join("keel/runs");
    }
    std::env::temp_dir()
        .join(format!("keel-{}", nix::unistd::getuid()))
        .join("runs")
}

/// Notes a background run in [`run_dir`]: a file named after its state directory holding that
/// directory's path. Best effort: a run that cannot be noted still runs, it only goes unlisted.
pub fn note_run(state: &Path) {
    use sha2::Digest as _;
    let state = fs::canonicalize(state).unwrap_or_else(|_| state.to_owned());
    let dir = run_dir();
    let name = hex::encode(&sha2::Sha256::digest(state.as_os_str().as_encoded_bytes())[..8]);
    let noted = fs::create_dir_all(&dir)
        .and_then(|()| fs::write(dir.join(name), state.as_os_str().as_encoded_bytes()));
    if let Err(e) = noted {
        log::warn!("cannot note the run in {}: {e}", dir.display());
    }
}

/// What runs in `state`: a cluster (its record) or a single VM (`qemu.pid`).
fn listed(state: &Path) -> Option<Listed> {
    if let Ok(record) = read_record(state) {
        let running: Vec<&NodeRecord> = record.nodes.iter().filter(|n| node_alive(n)).collect();
        return Some(Listed {
            state: state.to_owned(),
            target: record.target.clone(),
            running: running.len(),
            nodes: record.nodes.len(),
            addrs: running.iter().map(|n| n.addr).collect(),
        });
    }
    let pid: u32 = fs::read_to_string(state.join("qemu.pid"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Listed {
        state: state.to_owned(),
        target: PathBuf::new(),
        running: usize::from(vm_alive(pid, state)),
        nodes: 1,
        addrs: Vec::new(),
    })
}

/// The background runs still running, from [`run_dir`]; notes of ended runs are removed.
pub fn list() -> Vec<Listed> {
    let dir = run_dir();
    let Ok(entries) = fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut runs = Vec::new();
    for entry in entries.flatten() {
        let Ok(bytes) = fs::read(entry.path()) else {
            continue;
        };
        let state = PathBuf::from(std::ffi::OsString::from(
            String::from_utf8_lossy(&bytes).into_owned(),
        ));
        match listed(&state) {
            Some(run) if run.running > 0 => runs.push(run),
            _ => {
                let _ = fs::remove_file(entry.path());
            }
        }
    }
    runs.sort_by(|a, b| a.state.cmp(&b.state));
    runs
}

/// The state directory of what `keel run` started from `target`: `target` itself when it holds
/// a cluster's record or a VM's `qemu.pid`, else the build prefix's `PREFIX-state`.
pub fn state_of(target: &Path) -> PathBuf {
    if target.join(RECORD).is_file() || target.join("qemu.pid").is_file() {
        target.to_owned()
    } else {
        run::default_state_dir(target)
    }
}

/// `keel run stop`: asks every VM in `state` (a cluster's nodes, or the single VM) to power
/// off through its control channel, waits up to `grace` for them to end, then ends what is
/// left with SIGTERM, and the cluster's switch with them. Returns how many VMs were running.
pub fn stop(state: &Path, grace: Duration) -> Result<usize, Error> {
    let (vms, lan): (Vec<(u32, PathBuf)>, Option<u32>) = match read_record(state) {
        Ok(record) => (
            record
                .nodes
                .iter()
                .map(|n| (n.pid, n.state.clone()))
                .collect(),
            Some(record.lan_pid),
        ),
        Err(Error::Read { .. }) => {
            let pid = fs::read_to_string(state.join("qemu.pid"))
                .ok()
                .and_then(|p| p.trim().parse().ok())
                .ok_or_else(|| Error::NotRunning(state.to_owned()))?;
            (vec![(pid, state.to_owned())], None)
        }
        Err(e) => return Err(e),
    };
    let running: Vec<(u32, PathBuf)> = vms
        .into_iter()
        .filter(|(pid, dir)| vm_alive(*pid, dir))
        .collect();
    if running.is_empty() && !lan.is_some_and(lan_alive) {
        return Err(Error::NotRunning(state.to_owned()));
    }
    let poweroff = crate::ctl::Options::parse(&["poweroff".to_owned()], false, grace)?;
    for (_, dir) in &running {
        // A guest that cannot be asked (no channel, PID 1 busy) is ended below.
        if let Err(e) = crate::ctl::run(dir, &poweroff, &mut io::sink()) {
            log::info!("{}: {e}; ending it", dir.display());
        }
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline && running.iter().any(|(pid, dir)| vm_alive(*pid, dir)) {
        std::thread::sleep(Duration::from_millis(100));
    }
    for (pid, dir) in &running {
        if vm_alive(*pid, dir) {
            crate::sys::signal_pid(*pid, Signal::SIGTERM);
        }
    }
    if let Some(lan) = lan {
        // It ends by itself once the last QEMU has gone; this is for one that never got a node.
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline && lan_alive(lan) {
            std::thread::sleep(Duration::from_millis(100));
        }
        if lan_alive(lan) {
            crate::sys::signal_pid(lan, Signal::SIGTERM);
        }
    }
    Ok(running.len())
}

static INTERRUPTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn interrupted(_: nix::libc::c_int) {
    INTERRUPTED.store(true, std::sync::atomic::Ordering::SeqCst);
}

/// `keel run qemu --nodes N` in the foreground: waits until every node has ended; ctrl-c
/// stops them all ([`stop`], each guest given `grace` to power off).
pub fn wait(record: &Record, grace: Duration) -> Result<(), Error> {
    crate::sys::catch_sigint(interrupted).map_err(|e| Error::Signal(io::Error::from(e)))?;
    loop {
        if INTERRUPTED.load(std::sync::atomic::Ordering::SeqCst) {
            stop(&record.state, grace)?;
            return Ok(());
        }
        if !record.nodes.iter().any(node_alive) {
            // Nothing left for the switch: it ends by itself; this is for one that did not.
            if lan_alive(record.lan_pid) {
                crate::sys::signal_pid(record.lan_pid, Signal::SIGTERM);
            }
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_and_macs_follow_the_node_number() {
        assert_eq!(node_addr(1), Ipv4Addr::new(192, 168, 76, 11));
        assert_eq!(node_addr(MAX_NODES), Ipv4Addr::new(192, 168, 76, 210));
        assert_eq!(node_mac(3).to_string(), "02:6b:65:4c:00:03");
        let net = network(3);
        assert_eq!(net.leases.len(), 3);
        assert!(
            !net.leases.contains_key(&net.mac),
            "the server has no lease"
        );
        assert_eq!(net.leases[&node_mac(2)], node_addr(2));
    }
}
