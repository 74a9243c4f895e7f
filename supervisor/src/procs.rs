//! `keelctl ps` and `top`: the processes of a container, found through the cgroup (v2) of its main
//! process, with their command lines from `/proc`.

use crate::protocol::ProcessInfo;
use std::io::Read;
use std::path::{Path, PathBuf};

/// Nested cgroups below the container's cgroup that are searched.
const MAX_DEPTH: usize = 8;
/// Bytes of a command line read: a process may have megabytes of arguments, and every one of a
/// `ps` answer's processes is held in PID 1's memory until the client has read it.
const MAX_COMMAND: u64 = 4096;

/// Why a container's processes could not be listed.
#[derive(Debug, thiserror::Error)]
pub enum PsError {
    #[error("cannot read the cgroup of process {pid}")]
    ProcCgroup {
        pid: i32,
        #[source]
        source: std::io::Error,
    },
    #[error("process {0} is in no cgroup v2 hierarchy")]
    NoCgroup(i32),
    #[error("cannot read {path}")]
    Procs {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Bytes read of a small kernel file (`memory.current`, `cpu.stat`, `smaps_rollup`).
const MAX_SMALL_FILE: u64 = 16 * 1024;

/// A small kernel file as text, at most [`MAX_SMALL_FILE`] bytes of it.
pub fn read_small(path: &Path) -> std::io::Result<String> {
    let mut bytes = Vec::new();
    std::fs::File::open(path)?
        .take(MAX_SMALL_FILE)
        .read_to_end(&mut bytes)?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// The processes in the cgroup of `pid` (and its child cgroups), read from `proc_root`
/// (`/proc`) and `cgroup_root` (`/sys/fs/cgroup`), sorted by pid.
pub fn processes(
    pid: i32,
    proc_root: &Path,
    cgroup_root: &Path,
) -> Result<Vec<ProcessInfo>, PsError> {
    let text = std::fs::read_to_string(proc_root.join(pid.to_string()).join("cgroup"))
        .map_err(|source| PsError::ProcCgroup { pid, source })?;
    let rel = text
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .ok_or(PsError::NoCgroup(pid))?;
    let dir = cgroup_root.join(rel.trim().trim_start_matches('/'));
    let mut pids = Vec::new();
    collect(&dir, 0, &mut pids)?;
    pids.sort_unstable();
    pids.dedup();
    Ok(pids
        .into_iter()
        .map(|pid| ProcessInfo {
            pid,
            command: command_line(proc_root, pid),
        })
        .collect())
}

fn collect(dir: &Path, depth: usize, pids: &mut Vec<i32>) -> Result<(), PsError> {
    let path = dir.join("cgroup.procs");
    let text = std::fs::read_to_string(&path).map_err(|source| PsError::Procs { path, source })?;
    pids.extend(text.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
    if depth >= MAX_DEPTH {
        return Ok(());
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    for e in entries.flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            // A child cgroup that vanished meanwhile is no error.
            let _ = collect(&e.path(), depth + 1, pids);
        }
    }
    Ok(())
}

/// `/proc/PID/cmdline` with spaces between arguments; `[comm]` for processes without one
/// (kernel threads, zombies); `?` when the process is gone.
fn command_line(proc_root: &Path, pid: i32) -> String {
    let dir = proc_root.join(pid.to_string());
    let mut bytes = Vec::new();
    let read = std::fs::File::open(dir.join("cmdline"))
        .and_then(|f| f.take(MAX_COMMAND).read_to_end(&mut bytes))
        .map(|_| bytes);
    match read {
        Ok(bytes) if !bytes.is_empty() => {
            let args: Vec<_> = bytes
                .split(|&b| b == 0)
                .filter(|a| !a.is_empty())
                .map(String::from_utf8_lossy)
                .collect();
            args.join(" ")
        }
        _ => match std::fs::read_to_string(dir.join("comm")) {
            Ok(comm) => format!("[{}]", comm.trim_end()),
            Err(_) => "?".into(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn lists_the_cgroup_and_its_children() {
        let root = tempfile::tempdir().unwrap();
        let proc_root = root.path().join("proc");
        let cg = root.path().join("cgroup");
        let svc = cg.join("keel/services/web");
        fs::create_dir_all(svc.join("worker")).unwrap();
        fs::write(svc.join("cgroup.procs"), "42\n7\n").unwrap();
        fs::write(svc.join("worker/cgroup.procs"), "50\n").unwrap();
        for (pid, cmdline, comm) in [
            (42, &b"nginx\0-g\0daemon off;\0"[..], "nginx"),
            (7, b"", "zombie"),
            (50, b"worker\0", "worker"),
        ] {
            let d = proc_root.join(pid.to_string());
            fs::create_dir_all(&d).unwrap();
            fs::write(d.join("cmdline"), cmdline).unwrap();
            fs::write(d.join("comm"), format!("{comm}\n")).unwrap();
        }
        fs::write(proc_root.join("42/cgroup"), "0::/keel/services/web\n").unwrap();
        let ps = processes(42, &proc_root, &cg).unwrap();
        let got: Vec<_> = ps.iter().map(|p| (p.pid, p.command.as_str())).collect();
        assert_eq!(
            got,
            [
                (7, "[zombie]"),
                (42, "nginx -g daemon off;"),
                (50, "worker")
            ]
        );
        assert!(matches!(
            processes(99, &proc_root, &cg),
            Err(PsError::ProcCgroup { pid: 99, .. })
        ));
        fs::write(proc_root.join("50/cgroup"), "1:cpu:/x\n").unwrap();
        assert!(matches!(
            processes(50, &proc_root, &cg),
            Err(PsError::NoCgroup(50))
        ));
    }

    #[test]
    fn long_command_lines_are_cut() {
        let root = tempfile::tempdir().unwrap();
        let d = root.path().join("60");
        fs::create_dir_all(&d).unwrap();
        fs::write(d.join("cmdline"), vec![b'a'; 1 << 20]).unwrap();
        assert_eq!(command_line(root.path(), 60).len(), 4096);
    }
}
