//! A Docker swarm of keel nodes (issue 17): one build of `images/docker.yml` +
//! `images/swarm.yml` booted as four nodes by `keel run qemu --nodes 4`, each told its role,
//! the first manager's address and the cluster secret by its own metadata (`--node-data`) and
//! nothing else. Node 1 initialises the swarm, nodes 2 and 3 join it as workers with no human
//! step; node 4 has a wrong secret: it says so in its log and on its console, retries with
//! backoff and boots the rest of its system regardless. A service of three replicas publishing
//! port 8080, its image pulled by every node from a registry on the host's loopback, spreads
//! over the three nodes and answers on every node's port through the routing mesh. A worker
//! powered off has its task rescheduled while the service keeps answering; started again
//! (`keel run start`), it rejoins.
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

#[test]
fn four_nodes_form_a_swarm_from_metadata_and_keep_a_service_up() {
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
    let web_port = free_port();

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

    // Each node's metadata: its name, its role, the first manager, the secret (node 4's is
    // wrong); node 1 also serves its API over TLS, published to the host.
    let secret = random_hex();
    let node_data: Vec<String> = (1..=4)
        .map(|n| {
            let mut data = serde_json::json!({
                "hostname": {"content": format!("node{n}")},
                "swarm": {
                    "role": {"content": if n == 1 { "manager" } else { "worker" }},
                    "manager": {"content": MANAGER},
                    "secret": {"perm": "0600", "content": if n == 4 { random_hex() } else { secret.clone() }},
                },
                "docker": {"daemon.json": {"content": daemon_json}},
            });
            if n == 1 {
                data["docker"] = tls_metadata(&certs, Some(&daemon_json));
            }
            let path = work.path().join(format!("node{n}.json"));
            std::fs::write(&path, data.to_string()).unwrap();
            format!("{n}={}", path.display())
        })
        .collect();

    let _cleanup = Cleanup(state.clone());
    let started = Instant::now();
    let publish_api = format!("{}:2376", docker.port);
    let publish_web = format!("{web_port}:8080");
    let mut args = vec![
        "run",
        "qemu",
        "--nodes",
        "4",
        "-d",
        "--accel",
        "tcg",
        "--mem",
        "1536",
        "--disk",
        "size=2G",
        "--publish",
        &publish_api,
        "--publish",
        &publish_web,
        "--state",
        state.to_str().unwrap(),
    ];
    for data in &node_data {
        args.extend(["--node-data", data]);
    }
    let prefix = built.prefix.to_str().unwrap();
    args.push(prefix);
    keel(&args, &runs);
    let node = |n: u32| state.join(format!("node{n}"));
    let console = |n: u32| std::fs::read_to_string(node(n).join("console.log")).unwrap_or_default();
    let logs = |n: u32, service: &str| {
        text(&run(Command::new(keel_bin())
            .arg("ctl")
            .arg(node(n))
            .args(["logs", service])))
    };

    // The swarm forms from metadata alone.
    docker.wait_ready(&node(1).join("console.log"), DEADLINE);
    wait_until("three nodes Ready", DEADLINE, || {
        let nodes = node_status(&docker)?;
        let want = statuses(&[("node1", "Ready"), ("node2", "Ready"), ("node3", "Ready")]);
        if nodes == want {
            Ok(())
        } else {
            Err(format!(
                "{nodes:?}\nnode1's swarm log:\n{}",
                logs(1, "swarm")
            ))
        }
    });
    eprintln!(
        "swarm: boot to three nodes Ready: {:.0}s",
        started.elapsed().as_secs_f64()
    );
    for n in 1..=4 {
        let record = keel::cluster::read_record(&state).unwrap();
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
    keel(&["ctl", node(4).to_str().unwrap(), "poweroff"], &runs);

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
        running_tasks(&docker, 3)
    });
    assert_eq!(
        spread,
        ["node1", "node2", "node3"],
        "not spread over the nodes"
    );
    let everyone: BTreeSet<String> = ["node1", "node2", "node3"].map(String::from).into();
    for host in ["192.168.76.11", "192.168.76.12", "192.168.76.13"] {
        let answers: BTreeSet<String> =
            mesh_answers(&docker, &image, host, 6).into_iter().collect();
        assert_eq!(answers, everyone, "{host}:8080 through the routing mesh");
    }
    let body = wait_until("the published port answers on the host", DEADLINE, || {
        http_get(web_port)
    });
    assert!(everyone.contains(&body), "{body}");

    // A worker powered off: its task moves to the others; the service keeps answering.
    keel(&["ctl", node(3).to_str().unwrap(), "poweroff"], &runs);
    wait_until("node 3's QEMU ended", Duration::from_secs(120), || {
        if qemu_alive(&state, 3) {
            Err("running".into())
        } else {
            Ok(())
        }
    });
    wait_until("node 3 Down", DEADLINE, || {
        let nodes = node_status(&docker)?;
        let want = statuses(&[("node1", "Ready"), ("node2", "Ready"), ("node3", "Down")]);
        if nodes == want {
            Ok(())
        } else {
            Err(format!("{nodes:?}"))
        }
    });
    let moved = wait_until("three replicas on nodes 1 and 2", DEADLINE, || {
        let nodes = running_tasks(&docker, 3)?;
        if nodes.iter().all(|n| n != "node3") {
            Ok(nodes)
        } else {
            Err(format!("{nodes:?}"))
        }
    });
    eprintln!("swarm: replicas after node 3 went down: {moved:?}");
    let survivors: BTreeSet<String> = ["node1", "node2"].map(String::from).into();
    for host in ["192.168.76.11", "192.168.76.12"] {
        let answers: BTreeSet<String> =
            mesh_answers(&docker, &image, host, 6).into_iter().collect();
        assert_eq!(answers, survivors, "{host}:8080 with node 3 down");
    }

    // Started again, it rejoins on its own (its swarm state is on its disk).
    keel(
        &["run", "start", state.to_str().unwrap(), "--node", "3"],
        &runs,
    );
    wait_until("node 3 Ready again", DEADLINE, || {
        let nodes = node_status(&docker)?;
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
        &runs,
    );
}
