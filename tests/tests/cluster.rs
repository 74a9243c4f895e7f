//! `keel run qemu --nodes N` (issue 17), through the `keel` binary as a user runs it: three
//! nodes of one build (tests/cases/lan.yml) on the private network, each with its address from
//! the network's DHCP server and its metadata (node 1 its own, `--node-data`), reaching the
//! other two (as each says in its log, read through its
//! own control channel with `keel ctl STATE/nodeI`); `keel run ls` lists them, `keel run stop`
//! powers them all off and the switch ends with them. What cannot work
//! with several nodes is refused before anything starts.

use keel_vmtests::{Arch, build, case, chain, keel_bin};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const BOOT: Duration = Duration::from_secs(600);

fn keel(runs: &Path, args: &[&str]) -> Output {
    Command::new(keel_bin())
        .args(args)
        .env("KEEL_RUN_DIR", runs)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", keel_bin().display()))
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn alive(pid: u32) -> bool {
    // A zombie is not running; these are not our children, so none stays one for long.
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        !stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z')
    })
}

/// The pids in a cluster's record (nodes, then the switch).
fn pids(state: &Path) -> Vec<u32> {
    let record = keel::cluster::read_record(state).unwrap_or_else(|e| panic!("{}", chain(&e)));
    let mut pids: Vec<u32> = record.nodes.iter().map(|n| n.pid).collect();
    pids.push(record.lan_pid);
    pids
}

/// Ends whatever the cluster still runs when the test ends, passed or not.
struct Cleanup(PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        if self.0.join(keel::cluster::RECORD).is_file() {
            for pid in pids(&self.0) {
                let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
            }
        }
    }
}

#[test]
fn three_nodes_reach_each_other_and_stop_together() {
    let built = build(&[&case("lan.yml")], Arch::X86_64)
        .unwrap_or_else(|e| panic!("lan.yml: build failed: {}", chain(&e)));
    let prefix = built.prefix.to_str().unwrap().to_owned();
    let work = tempfile::tempdir().unwrap();
    let runs = work.path().join("runs");
    let state = work.path().join("cluster");
    let state_arg = state.to_str().unwrap();
    let data = work.path().join("node3.json");
    std::fs::write(&data, "{}").unwrap();

    // Refused before anything starts, each with what to do.
    for (args, expected) in [
        (vec!["--nodes", "0"], "--nodes 0: expected 1 to 200"),
        (
            vec!["--nodes", "2", "--disk", "file=shared.qcow2,size=1G"],
            "give size= only",
        ),
        (
            vec![
                "--nodes",
                "2",
                "--node-data",
                &format!("3={}", data.display()),
            ],
            "there is no node 3 (--nodes 2)",
        ),
        (
            vec!["--nodes", "2", "--console-file", "c.log"],
            "each node's console goes to STATE/nodeN/console.log",
        ),
    ] {
        let mut all = vec!["run", "qemu", "-d", "--accel", "tcg", "--state", state_arg];
        all.extend(args.iter().copied());
        all.push(&prefix);
        let out = keel(&runs, &all);
        assert!(!out.status.success(), "{all:?} was accepted");
        assert!(text(&out).contains(expected), "{all:?}: {}", text(&out));
        assert!(!state.exists(), "{all:?} left {}", state.display());
    }

    // Node 1 gets its own metadata, the others the shared one.
    let manager = work.path().join("manager.json");
    std::fs::write(&manager, r#"{"role": {"content": "manager"}}"#).unwrap();
    let node1_data = format!("1={}", manager.display());
    let _cleanup = Cleanup(state.clone());
    let out = keel(
        &runs,
        &[
            "run",
            "qemu",
            "--nodes",
            "3",
            "-d",
            "--accel",
            "tcg",
            "--mem",
            "256",
            "--state",
            state_arg,
            "--data",
            r#"{"role": {"content": "worker"}}"#,
            "--node-data",
            &node1_data,
            &prefix,
        ],
    );
    assert!(out.status.success(), "keel run --nodes 3: {}", text(&out));
    let consoles: Vec<PathBuf> = (1..=3)
        .map(|n| state.join(format!("node{n}/console.log")))
        .collect();

    // Every node reports on every peer, in its service's log (read through its own control
    // channel, as a user would).
    let start = Instant::now();
    let logs: Vec<String> = loop {
        let logs: Vec<String> = (1..=3)
            .map(|n| {
                let node = state.join(format!("node{n}"));
                text(&keel(
                    &runs,
                    &["ctl", node.to_str().unwrap(), "logs", "peers"],
                ))
            })
            .collect();
        if logs.iter().all(|l| l.contains("CHECK done=1")) {
            break logs;
        }
        assert!(
            start.elapsed() < BOOT,
            "not every node reported within {}s; their logs:\n{}\nconsoles:\n{}\nswitch: {}",
            BOOT.as_secs(),
            logs.join("\n-----\n"),
            consoles
                .iter()
                .map(|c| std::fs::read_to_string(c).unwrap_or_default())
                .collect::<Vec<_>>()
                .join("\n-----\n"),
            std::fs::read_to_string(state.join("lan.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_secs(2));
    };
    for (i, log) in logs.iter().enumerate() {
        let n = i + 1;
        let check = |key: &str| {
            log.lines().find_map(|l| {
                l.split_once(&format!("CHECK {key}="))
                    .map(|(_, v)| v.trim())
            })
        };
        assert_eq!(
            check("addr"),
            Some(format!("192.168.76.{}/24", 10 + n).as_str()),
            "node{n}: the address keel assigned it\n{log}"
        );
        assert_eq!(
            check("role"),
            Some(if n == 1 { "manager" } else { "worker" }),
            "node{n}: the role its metadata gives it\n{log}"
        );
        for host in 11..=13 {
            assert_eq!(
                check(&format!("ping.{host}")),
                Some("ok"),
                "node{n} did not reach 192.168.76.{host}\n{log}"
            );
        }
    }

    // Listed, with every node's address.
    let out = keel(&runs, &["run", "ls", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let listed: Vec<keel::cluster::Listed> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].running, 3);
    assert_eq!(
        listed[0].addrs,
        [11, 12, 13].map(|h| std::net::Ipv4Addr::new(192, 168, 76, h))
    );

    // Stopped together: the guests power off, the switch follows.
    let running = pids(&state);
    assert!(running.iter().all(|&p| alive(p)), "{running:?}");
    let out = keel(&runs, &["run", "stop", "--timeout", "120", state_arg]);
    assert!(out.status.success(), "keel run stop: {}", text(&out));
    assert!(text(&out).contains("stopped 3 VM(s)"), "{}", text(&out));
    let deadline = Instant::now() + Duration::from_secs(30);
    while running.iter().any(|&p| alive(p)) {
        assert!(
            Instant::now() < deadline,
            "still running after keel run stop: {:?}",
            running.iter().filter(|&&p| alive(p)).collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    for console in &consoles {
        let text = std::fs::read_to_string(console).unwrap();
        assert!(
            text.contains("reboot: Power down"),
            "{} did not power off:\n{text}",
            console.display()
        );
    }
    let out = keel(&runs, &["run", "ls", "--json"]);
    assert!(out.stdout.is_empty(), "still listed: {}", text(&out));
    let out = keel(&runs, &["run", "stop", state_arg]);
    assert!(
        !out.status.success() && text(&out).contains("nothing keel started runs in"),
        "{}",
        text(&out)
    );
}
