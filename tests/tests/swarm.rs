//! A Docker swarm of keel nodes (issue 17): one build of `images/docker.yml` +
//! `images/swarm.yml` booted as four nodes by `keel run qemu --nodes 4`, each told its role,
//! the first manager's address and the cluster secret by its own metadata (`--node-data`) and
//! nothing else. Node 1 initialises the swarm, nodes 2 and 3 join it as workers with no human
//! step; node 4 has a wrong secret: it says so in its log and on its console, retries with
//! backoff and boots the rest of its system regardless. A service of three replicas publishing
//! port 8080, its image pulled by every node from a registry on the host's loopback, spreads
//! over the three nodes and answers on every node's port through the routing mesh. A worker
//! powered off has its task rescheduled while the service keeps answering; started again
//! (`keel run start`), it rejoins. And three managers: raft elects a new leader when the first
//! is powered off.
//!
//! Driven from the host with Debian's `docker` client over TLS (node 1's API, published), and
//! with `keel` as a user runs it.

use keel_vmtests::docker::{
    Docker, busybox_tag, debian_docker_client, free_port, make_certificates, ok, run, text,
    tls_metadata,
};
use keel_vmtests::{Arch, build, chain, keel_bin, lock_store, workspace};
use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const MANAGER: &str = "192.168.76.11";
const DEADLINE: Duration = Duration::from_secs(600);

fn keel(args: &[&str], runs: &Path) -> String {
    let out = run(Command::new(keel_bin())
        .args(args)
        .env("KEEL_RUN_DIR", runs));
    assert!(out.status.success(), "keel {args:?}: {}", text(&out));
    text(&out)
}

/// Polls `probe` every 3 s until it returns `Some`, or panics after `deadline` with `what` and
/// the last thing `probe` saw.
fn wait_until<T>(
    what: &str,
    deadline: Duration,
    mut probe: impl FnMut() -> Result<T, String>,
) -> T {
    let start = Instant::now();
    loop {
        match probe() {
            Ok(found) => {
                eprintln!("swarm: {what} after {:.0}s", start.elapsed().as_secs_f64());
                return found;
            }
            Err(last) => assert!(
                start.elapsed() < deadline,
                "{what}: not within {}s; last seen:\n{last}",
                deadline.as_secs()
            ),
        }
        std::thread::sleep(Duration::from_secs(3));
    }
}

fn random_hex() -> String {
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .unwrap();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `docker node ls` as `hostname → status`.
fn node_status(docker: &Docker) -> Result<Vec<(String, String)>, String> {
    let out = run(docker
        .cmd()
        .args(["node", "ls", "--format", "{{.Hostname}} {{.Status}}"]));
    if !out.status.success() {
        return Err(text(&out));
    }
    let mut nodes: Vec<(String, String)> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(h, s)| (h.to_owned(), s.to_owned()))
        .collect();
    nodes.sort();
    Ok(nodes)
}

fn statuses(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(h, s)| (h.to_string(), s.to_string()))
        .collect()
}

/// The nodes the service's running tasks are on, once there are `replicas` of them.
fn running_tasks(docker: &Docker, replicas: usize) -> Result<Vec<String>, String> {
    let out = run(docker.cmd().args([
        "service",
        "ps",
        "web",
        "--filter",
        "desired-state=running",
        "--format",
        "{{.Node}} {{.CurrentState}}",
    ]));
    let listing = text(&out);
    let mut nodes: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(" Running "))
        .filter_map(|l| l.split(' ').next().map(str::to_owned))
        .collect();
    nodes.sort();
    if out.status.success() && nodes.len() == replicas {
        Ok(nodes)
    } else {
        Err(listing)
    }
}

/// From node 1's host network, `count` requests to `addr:8080`: the hostnames that answered.
fn mesh_answers(docker: &Docker, image: &str, addr: &str, count: u32) -> Vec<String> {
    // busybox's nc: its static wget crashes in glibc's resolver, even for an address.
    let script = format!(
        "for i in $(seq {count}); do printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 10 {addr} 8080 | tail -n 1 || echo failed; done"
    );
    let out = ok(docker
        .cmd()
        .args(["run", "--rm", "--network", "host", image, "-c", &script]));
    out.lines().map(str::to_owned).collect()
}

/// An HTTP GET of `/` on a loopback port: the body.
fn http_get(port: u16) -> Result<String, String> {
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    conn.set_read_timeout(Some(Duration::from_secs(20)))
        .map_err(|e| e.to_string())?;
    conn.write_all(b"GET / HTTP/1.0\r\nHost: keel\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut answer = String::new();
    conn.read_to_string(&mut answer)
        .map_err(|e| e.to_string())?;
    answer
        .split_once("\r\n\r\n")
        .filter(|(head, _)| head.starts_with("HTTP/1.") && head.contains(" 200 "))
        .map(|(_, body)| body.trim().to_owned())
        .ok_or(answer)
}

fn qemu_alive(state: &Path, node: u32) -> bool {
    let record = keel::cluster::read_record(state).unwrap_or_else(|e| panic!("{}", chain(&e)));
    let pid = record.nodes[usize::try_from(node - 1).unwrap()].pid;
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z')
}

/// Kills whatever the cluster still runs when the test ends, passed or not.
struct Cleanup(PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Ok(record) = keel::cluster::read_record(&self.0) {
            for pid in record.nodes.iter().map(|n| n.pid).chain([record.lan_pid]) {
                let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
            }
        }
    }
}

/// How one node of a cluster under test is told to be.
#[derive(Clone, Copy)]
struct NodeSpec {
    role: &'static str,
    /// The cluster's secret, or one of its own.
    right_secret: bool,
    /// The first manager's address it is given.
    manager: &'static str,
}

/// A cluster of `images/docker.yml` + `images/swarm.yml` nodes started by `keel run qemu
/// --nodes`, node 1's API published to the host over TLS; ended when dropped.
struct Swarm {
    /// First: the VMs end before their directories go.
    _cleanup: Cleanup,
    runs: PathBuf,
    state: PathBuf,
    docker: Docker,
    started: Instant,
    _work: tempfile::TempDir,
    /// The build the nodes boot: QEMU reads its kernel and initrd after `start` returns.
    _built: keel_vmtests::Built,
}

/// One cluster at a time: each node is a TCG guest, and the machine has two cores.
static CLUSTER: Mutex<()> = Mutex::new(());

impl Swarm {
    /// Starts one node per `nodes` entry; `daemon_json` goes to every engine, `publish` (more
    /// `HOST:GUEST` forwards) to node 1.
    fn start(nodes: &[NodeSpec], daemon_json: &str, publish: &[String]) -> Swarm {
        let built = build(
            &[
                &workspace().join("images/docker.yml"),
                &workspace().join("images/swarm.yml"),
            ],
            Arch::X86_64,
        )
        .unwrap_or_else(|e| panic!("docker.yml + swarm.yml: build failed: {}", chain(&e)));
        let work = tempfile::tempdir().unwrap();
        let runs = work.path().join("runs");
        let state = work.path().join("swarm");
        let certs = work.path().join("certs");
        std::fs::create_dir(&certs).unwrap();
        make_certificates(&certs);
        let docker = Docker {
            bin: debian_docker_client(work.path()),
            certs: certs.clone(),
            port: free_port(),
        };
        // Each node's metadata: its name, its role, the first manager, the secret; node 1
        // also serves its API over TLS, published to the host.
        let secret = random_hex();
        let node_data: Vec<String> = nodes
            .iter()
            .zip(1..)
            .map(|(spec, n)| {
                let mut data = serde_json::json!({
                    "hostname": {"content": format!("node{n}")},
                    "swarm": {
                        "role": {"content": spec.role},
                        "manager": {"content": spec.manager},
                        "secret": {"perm": "0600", "content": if spec.right_secret { secret.clone() } else { random_hex() }},
                    },
                    "docker": {"daemon.json": {"content": daemon_json}},
                });
                if n == 1 {
                    data["docker"] = tls_metadata(&certs, Some(daemon_json));
                }
                let path = work.path().join(format!("node{n}.json"));
                std::fs::write(&path, data.to_string()).unwrap();
                format!("{n}={}", path.display())
            })
            .collect();
        let cleanup = Cleanup(state.clone());
        let started = Instant::now();
        let count = nodes.len().to_string();
        let publish_api = format!("{}:2376", docker.port);
        let mut args = vec![
            "run",
            "qemu",
            "--nodes",
            &count,
            "-d",
            "--accel",
            "tcg",
            "--mem",
            "1536",
            "--disk",
            "size=2G",
            "--publish",
            &publish_api,
        ];
        for p in publish {
            args.extend(["--publish", p]);
        }
        args.extend(["--state", state.to_str().unwrap()]);
        for data in &node_data {
            args.extend(["--node-data", data]);
        }
        args.push(built.prefix.to_str().unwrap());
        keel(&args, &runs);
        Swarm {
            _cleanup: cleanup,
            runs,
            state,
            docker,
            started,
            _work: work,
            _built: built,
        }
    }

    fn node(&self, n: u32) -> PathBuf {
        self.state.join(format!("node{n}"))
    }

    fn console(&self, n: u32) -> String {
        std::fs::read_to_string(self.node(n).join("console.log")).unwrap_or_default()
    }

    fn logs(&self, n: u32, service: &str) -> String {
        text(&run(Command::new(keel_bin())
            .arg("ctl")
            .arg(self.node(n))
            .args(["logs", service])))
    }

    /// Waits until `docker node ls` (through node 1) shows exactly `want`.
    fn wait_for_nodes(&self, what: &str, want: &[(&str, &str)]) {
        wait_until(what, DEADLINE, || {
            let nodes = node_status(&self.docker)?;
            if nodes == statuses(want) {
                Ok(())
            } else {
                Err(format!(
                    "{nodes:?}\nnode1's swarm log:\n{}",
                    self.logs(1, "swarm")
                ))
            }
        });
    }
}

#[test]
fn four_nodes_form_a_swarm_from_metadata_and_keep_a_service_up() {
    let _one = CLUSTER.lock().unwrap_or_else(|p| p.into_inner());
    // The service's image, in a registry on the host's loopback, which the guests reach as
    // 10.0.2.2 (QEMU's user network) and trust without TLS (`insecure-registries`).
    let registry = keel_testutil::Registry::start();
    {
        let (_lock, store) = lock_store().unwrap_or_else(|e| panic!("{}", chain(&e)));
        let tag = busybox_tag(&store);
        keel_testutil::skopeo_push(
            store.path(),
            &tag,
            &format!("{}/keel-test/busybox:1", registry.host()),
        );
    }
    let guest_registry = format!("10.0.2.2:{}", registry.port());
    let image = format!("{guest_registry}/keel-test/busybox:1");
    let daemon_json = format!(r#"{{"insecure-registries": ["{guest_registry}"]}}"#);
    let web_port = free_port();
    let (manager, worker) = (
        NodeSpec {
            role: "manager",
            right_secret: true,
            manager: MANAGER,
        },
        NodeSpec {
            role: "worker",
            right_secret: true,
            manager: MANAGER,
        },
    );
    let stranger = NodeSpec {
        role: "worker",
        right_secret: false,
        manager: MANAGER,
    };
    let cluster = Swarm::start(
        &[manager, worker, worker, stranger],
        &daemon_json,
        &[format!("{web_port}:8080")],
    );
    let (docker, state, started) = (&cluster.docker, &cluster.state, cluster.started);
    let node = |n: u32| cluster.node(n);
    let console = |n: u32| cluster.console(n);
    let logs = |n: u32, service: &str| cluster.logs(n, service);
    let runs = &cluster.runs;

    // The swarm forms from metadata alone.
    docker.wait_ready(&node(1).join("console.log"), DEADLINE);
    cluster.wait_for_nodes(
        "three nodes Ready",
        &[("node1", "Ready"), ("node2", "Ready"), ("node3", "Ready")],
    );
    eprintln!(
        "swarm: boot to three nodes Ready: {:.0}s",
        started.elapsed().as_secs_f64()
    );
    for n in 1..=4 {
        let record = keel::cluster::read_record(state).unwrap();
        let pid = record.nodes[n - 1].pid;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let rss = status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .unwrap_or("VmRSS: ?");
        eprintln!("swarm: node{n} qemu {rss}");
    }

    // Node 4's secret is wrong: refused, said on its console and in its log, retried with
    // backoff, and the rest of its system is up regardless.
    wait_until("node 4 refused twice", DEADLINE, || {
        let log = logs(4, "swarm");
        let refusals = log.matches("refused the join secret").count();
        if refusals >= 2 && log.contains("again in 2s") {
            Ok(())
        } else {
            Err(log)
        }
    });
    // What the consoles and logs say arrives a little after it happens (the guests are
    // emulated): waited for, not sampled.
    wait_until("node 4's console says why", DEADLINE, || {
        let console = console(4);
        if console.contains("refused the join secret") {
            Ok(())
        } else {
            Err(console)
        }
    });
    assert!(
        console(4).contains("timeline: services started"),
        "{}",
        console(4)
    );
    wait_until("the manager logs the refusal", DEADLINE, || {
        let log = logs(1, "swarm");
        if log.contains("refused 192.168.76.14:") {
            Ok(())
        } else {
            Err(log)
        }
    });
    keel(&["ctl", node(4).to_str().unwrap(), "poweroff"], runs);

    // Three replicas, one per node, answering on every node's port through the mesh.
    ok(docker.cmd().args([
        "service",
        "create",
        "--detach",
        "--name",
        "web",
        "--replicas",
        "3",
        "--publish",
        "8080:80",
        "--hostname",
        "{{.Node.Hostname}}",
        &image,
        "-c",
        "mkdir -p /www && hostname > /www/index.html && exec busybox httpd -f -p 80 -h /www",
    ]));
    let spread = wait_until("three replicas running", DEADLINE, || {
        running_tasks(docker, 3)
    });
    assert_eq!(
        spread,
        ["node1", "node2", "node3"],
        "not spread over the nodes"
    );
    let everyone: BTreeSet<String> = ["node1", "node2", "node3"].map(String::from).into();
    for host in ["192.168.76.11", "192.168.76.12", "192.168.76.13"] {
        let answers: BTreeSet<String> = mesh_answers(docker, &image, host, 6).into_iter().collect();
        assert_eq!(answers, everyone, "{host}:8080 through the routing mesh");
    }
    let body = wait_until("the published port answers on the host", DEADLINE, || {
        http_get(web_port)
    });
    assert!(everyone.contains(&body), "{body}");

    // A worker powered off: its task moves to the others; the service keeps answering.
    keel(&["ctl", node(3).to_str().unwrap(), "poweroff"], runs);
    wait_until("node 3's QEMU ended", Duration::from_secs(120), || {
        if qemu_alive(state, 3) {
            Err("running".into())
        } else {
            Ok(())
        }
    });
    wait_until("node 3 Down", DEADLINE, || {
        let nodes = node_status(docker)?;
        let want = statuses(&[("node1", "Ready"), ("node2", "Ready"), ("node3", "Down")]);
        if nodes == want {
            Ok(())
        } else {
            Err(format!("{nodes:?}"))
        }
    });
    let moved = wait_until("three replicas on nodes 1 and 2", DEADLINE, || {
        let nodes = running_tasks(docker, 3)?;
        if nodes.iter().all(|n| n != "node3") {
            Ok(nodes)
        } else {
            Err(format!("{nodes:?}"))
        }
    });
    eprintln!("swarm: replicas after node 3 went down: {moved:?}");
    let survivors: BTreeSet<String> = ["node1", "node2"].map(String::from).into();
    for host in ["192.168.76.11", "192.168.76.12"] {
        let answers: BTreeSet<String> = mesh_answers(docker, &image, host, 6).into_iter().collect();
        assert_eq!(answers, survivors, "{host}:8080 with node 3 down");
    }

    // Started again, it rejoins on its own (its swarm state is on its disk).
    keel(
        &["run", "start", state.to_str().unwrap(), "--node", "3"],
        runs,
    );
    wait_until("node 3 Ready again", DEADLINE, || {
        let nodes = node_status(docker)?;
        let want = statuses(&[("node1", "Ready"), ("node2", "Ready"), ("node3", "Ready")]);
        if nodes == want {
            Ok(())
        } else {
            Err(format!("{nodes:?}"))
        }
    });
    wait_until("node 3's agent sees it in the swarm", DEADLINE, || {
        let log = logs(3, "swarm");
        if log.contains("already in a swarm") {
            Ok(())
        } else {
            Err(log)
        }
    });
    keel(
        &["run", "stop", "--timeout", "120", state.to_str().unwrap()],
        runs,
    );
}

/// Three managers, the same image and metadata but the role: node 1 initialises the swarm,
/// nodes 2 and 3 join with the manager token; raft has a leader and two reachable managers.
/// With node 1 (the leader) powered off, the other two elect a new leader and keep the swarm.
#[test]
fn three_managers_form_a_swarm_and_survive_the_leaders_loss() {
    let _one = CLUSTER.lock().unwrap_or_else(|p| p.into_inner());
    let manager = NodeSpec {
        role: "manager",
        right_secret: true,
        manager: MANAGER,
    };
    let cluster = Swarm::start(&[manager, manager, manager], "{}", &[]);
    cluster
        .docker
        .wait_ready(&cluster.node(1).join("console.log"), DEADLINE);
    cluster.wait_for_nodes(
        "three managers Ready",
        &[("node1", "Ready"), ("node2", "Ready"), ("node3", "Ready")],
    );
    eprintln!(
        "swarm: boot to three managers Ready: {:.0}s",
        cluster.started.elapsed().as_secs_f64()
    );
    let managers = |docker: &Docker| -> Result<Vec<String>, String> {
        let out =
            run(docker
                .cmd()
                .args(["node", "ls", "--format", "{{.Hostname}} {{.ManagerStatus}}"]));
        if !out.status.success() {
            return Err(text(&out));
        }
        let mut lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect();
        lines.sort();
        Ok(lines)
    };
    let status = wait_until("raft settled on node 1", DEADLINE, || {
        let lines = managers(&cluster.docker)?;
        if lines
            == [
                "node1 Leader".to_owned(),
                "node2 Reachable".to_owned(),
                "node3 Reachable".to_owned(),
            ]
        {
            Ok(lines)
        } else {
            Err(format!("{lines:?}"))
        }
    });
    eprintln!("swarm: managers {status:?}");
    for n in 2..=3 {
        let log = cluster.logs(n, "swarm");
        assert!(
            log.contains("joined the swarm of 192.168.76.11 as a manager"),
            "node{n}:\n{log}"
        );
    }

    // The leader goes: the two others elect one of them (a raft majority of three) and the
    // swarm keeps its state. Asked through node 2's engine, from node 2 itself.
    keel(
        &["ctl", cluster.node(1).to_str().unwrap(), "poweroff"],
        &cluster.runs,
    );
    let leader = wait_until("a new leader", DEADLINE, || {
        let out = run(Command::new(keel_bin())
            .arg("ctl")
            .arg(cluster.node(2))
            .args([
                "exec",
                "docker",
                "docker",
                "node",
                "ls",
                "--format",
                "{{.Hostname}} {{.Status}} {{.ManagerStatus}}",
            ]));
        let listing = text(&out);
        let mut lines: Vec<&str> = listing.lines().collect();
        lines.sort_unstable();
        let new_leader = lines
            .iter()
            .any(|l| *l == "node2 Ready Leader" || *l == "node3 Ready Leader");
        if out.status.success() && new_leader && lines.iter().any(|l| l.starts_with("node1 Down")) {
            Ok(listing)
        } else {
            Err(listing)
        }
    });
    eprintln!("swarm: after the leader's loss:\n{leader}");
    keel(
        &[
            "run",
            "stop",
            "--timeout",
            "120",
            cluster.state.to_str().unwrap(),
        ],
        &cluster.runs,
    );
}
