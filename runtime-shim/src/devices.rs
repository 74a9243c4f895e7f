//! The cgroup v2 device controller: `linux.resources.devices` as an eBPF
//! `BPF_PROG_TYPE_CGROUP_DEVICE` program attached to the container's cgroup between create
//! and start. libcgroups 0.7 does this only with its libbpf feature (C, not in a static musl
//! build), and otherwise ignores the rules silently.
//!
//! Semantics follow libcgroups/runc: the spec's rules, then the defaults every container gets
//! (`/dev/null`, `zero`, `full`, `tty`, `random`, `urandom`, console, pts, ptmx, tun, mknod of
//! any node) and the spec's `linux.devices` nodes; the last matching rule decides, and no match
//! denies. The program tests the rules from the last to the first.

use std::fs;
use std::io;
use std::os::fd::AsFd;
use std::path::PathBuf;

use libcontainer::oci_spec::runtime::{LinuxDevice, LinuxDeviceCgroup, LinuxDeviceType};

use crate::sys::{self, BpfInsn};

/// Errors building or attaching the device program.
#[derive(Debug, thiserror::Error)]
pub enum DevicesError {
    #[error("device rule access {0:?} is not a combination of r, w, m")]
    Access(String),
    #[error("device rule number {0} is out of range")]
    Number(i64),
    #[error("device program is too long")]
    TooLong,
    #[error("cannot find the cgroup of pid {0}")]
    Cgroup(i32, #[source] io::Error),
    #[error("cannot open cgroup {0}")]
    Open(PathBuf, #[source] io::Error),
    #[error("the kernel refused the device program: {log}")]
    Load {
        log: String,
        #[source]
        err: io::Error,
    },
    #[error("cannot attach the device program to {0}")]
    Attach(PathBuf, #[source] io::Error),
}

// Access bits and device types as the kernel passes them (`bpf_cgroup_dev_ctx.access_type`:
// access << 16 | type).
const ACC_MKNOD: i32 = 1;
const ACC_READ: i32 = 2;
const ACC_WRITE: i32 = 4;
const DEV_BLOCK: i32 = 1;
const DEV_CHAR: i32 = 2;

/// One rule in the form the program tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Rule {
    allow: bool,
    /// `None`: any type.
    kind: Option<i32>,
    access: i32,
    major: Option<i32>,
    minor: Option<i32>,
}

fn number(n: Option<i64>) -> Result<Option<i32>, DevicesError> {
    match n {
        None | Some(-1) => Ok(None),
        Some(v) => i32::try_from(v)
            .map(Some)
            .map_err(|_| DevicesError::Number(v)),
    }
}

fn access(s: Option<&str>) -> Result<i32, DevicesError> {
    let s = s.unwrap_or("rwm");
    let mut bits = 0;
    for c in s.chars() {
        bits |= match c {
            'r' => ACC_READ,
            'w' => ACC_WRITE,
            'm' => ACC_MKNOD,
            _ => return Err(DevicesError::Access(s.to_owned())),
        };
    }
    Ok(bits)
}

fn kind(t: Option<LinuxDeviceType>) -> Option<i32> {
    match t.unwrap_or(LinuxDeviceType::A) {
        LinuxDeviceType::A => None,
        LinuxDeviceType::B => Some(DEV_BLOCK),
        // u (unbuffered char) and p (fifo) are character devices for the cgroup.
        LinuxDeviceType::C | LinuxDeviceType::U | LinuxDeviceType::P => Some(DEV_CHAR),
    }
}

fn rule(r: &LinuxDeviceCgroup) -> Result<Rule, DevicesError> {
    Ok(Rule {
        allow: r.allow(),
        kind: kind(r.typ()),
        access: access(r.access().as_deref())?,
        major: number(r.major())?,
        minor: number(r.minor())?,
    })
}

fn allow_char(major: i32, minor: Option<i32>, access: i32) -> Rule {
    Rule {
        allow: true,
        kind: Some(DEV_CHAR),
        access,
        major: Some(major),
        minor,
    }
}

/// The rules every container gets after its own (libcgroups' defaults).
fn defaults() -> Vec<Rule> {
    let rwm = ACC_READ | ACC_WRITE | ACC_MKNOD;
    let mknod_any = |kind| Rule {
        allow: true,
        kind: Some(kind),
        access: ACC_MKNOD,
        major: None,
        minor: None,
    };
    vec![
        allow_char(1, Some(3), rwm), // null
        allow_char(1, Some(5), rwm), // zero
        allow_char(1, Some(7), rwm), // full
        allow_char(5, Some(0), rwm), // tty
        allow_char(1, Some(9), rwm), // urandom
        allow_char(1, Some(8), rwm), // random
        mknod_any(DEV_CHAR),
        mknod_any(DEV_BLOCK),
        allow_char(5, Some(1), rwm),    // console
        allow_char(136, None, rwm),     // pts
        allow_char(5, Some(2), rwm),    // ptmx
        allow_char(10, Some(200), rwm), // tun
    ]
}

fn node_rule(d: &LinuxDevice) -> Result<Rule, DevicesError> {
    Ok(Rule {
        allow: true,
        kind: kind(Some(d.typ())),
        access: ACC_READ | ACC_WRITE | ACC_MKNOD,
        major: number(Some(d.major()))?,
        minor: number(Some(d.minor()))?,
    })
}

// eBPF encoding (include/uapi/linux/bpf.h).
const LDX_W: u8 = 0x61; // BPF_LDX | BPF_MEM | BPF_W
const AND32_K: u8 = 0x54; // BPF_ALU | BPF_AND | BPF_K
const RSH32_K: u8 = 0x74; // BPF_ALU | BPF_RSH | BPF_K
const MOV32_X: u8 = 0xbc; // BPF_ALU | BPF_MOV | BPF_X
const MOV64_K: u8 = 0xb7; // BPF_ALU64 | BPF_MOV | BPF_K
const JNE_K: u8 = 0x55; // BPF_JMP | BPF_JNE | BPF_K
const EXIT: u8 = 0x95; // BPF_JMP | BPF_EXIT

fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> BpfInsn {
    BpfInsn {
        code,
        regs: (src << 4) | (dst & 0x0f),
        off,
        imm,
    }
}

/// The program for `rules` (in spec order; the last match wins, no match denies).
fn program(rules: &[Rule]) -> Result<Vec<BpfInsn>, DevicesError> {
    // r2 = type, r3 = access, r4 = major, r5 = minor.
    let mut p = vec![
        insn(LDX_W, 2, 1, 0, 0),
        insn(AND32_K, 2, 0, 0, 0xffff),
        insn(LDX_W, 3, 1, 0, 0),
        insn(RSH32_K, 3, 0, 0, 16),
        insn(LDX_W, 4, 1, 4, 0),
        insn(LDX_W, 5, 1, 8, 0),
    ];
    for r in rules.iter().rev() {
        // Each test jumps past the rest of this rule's block when it does not match.
        let mut tests: Vec<Vec<BpfInsn>> = Vec::new();
        if let Some(k) = r.kind {
            tests.push(vec![insn(JNE_K, 2, 0, 0, k)]);
        }
        let all = ACC_READ | ACC_WRITE | ACC_MKNOD;
        if r.access & all != all {
            // Requested access must be within the rule's: (r3 & !rule) == 0.
            tests.push(vec![
                insn(MOV32_X, 1, 3, 0, 0),
                insn(AND32_K, 1, 0, 0, !r.access & all),
                insn(JNE_K, 1, 0, 0, 0),
            ]);
        }
        if let Some(m) = r.major {
            tests.push(vec![insn(JNE_K, 4, 0, 0, m)]);
        }
        if let Some(m) = r.minor {
            tests.push(vec![insn(JNE_K, 5, 0, 0, m)]);
        }
        let verdict = [
            insn(MOV64_K, 0, 0, 0, i32::from(r.allow)),
            insn(EXIT, 0, 0, 0, 0),
        ];
        let unconditional = tests.is_empty();
        let total: usize = tests.iter().map(Vec::len).sum::<usize>() + verdict.len();
        let mut emitted = 0;
        for mut t in tests {
            emitted += t.len();
            let skip = i16::try_from(total - emitted).map_err(|_| DevicesError::TooLong)?;
            if let Some(last) = t.last_mut() {
                last.off = skip;
            }
            p.extend(t);
        }
        p.extend(verdict);
        // Nothing after a rule matching everything is reachable (the verifier refuses
        // unreachable code).
        if unconditional {
            return Ok(p);
        }
    }
    p.push(insn(MOV64_K, 0, 0, 0, 0));
    p.push(insn(EXIT, 0, 0, 0, 0));
    Ok(p)
}

/// The full rule list for a spec: its rules, the defaults, its device nodes. `None` when
/// the spec has no device rules (then nothing is restricted, as before).
pub fn rules_for(
    spec_rules: Option<&[LinuxDeviceCgroup]>,
    nodes: Option<&[LinuxDevice]>,
) -> Result<Option<DeviceRules>, DevicesError> {
    let Some(spec_rules) = spec_rules.filter(|r| !r.is_empty()) else {
        return Ok(None);
    };
    let mut rules = spec_rules.iter().map(rule).collect::<Result<Vec<_>, _>>()?;
    rules.extend(defaults());
    for d in nodes.unwrap_or_default() {
        rules.push(node_rule(d)?);
    }
    Ok(Some(DeviceRules(rules)))
}

/// Rules ready to compile, in spec order (opaque outside this module).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRules(Vec<Rule>);

/// The cgroup v2 directory of `pid`.
fn cgroup_dir(pid: i32) -> Result<PathBuf, DevicesError> {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .map_err(|e| DevicesError::Cgroup(pid, e))?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(crate::prepare::cgroup_dir)
        .ok_or_else(|| DevicesError::Cgroup(pid, io::Error::from(io::ErrorKind::NotFound)))
}

/// Compiles `rules` and attaches the program to the cgroup of `pid`.
pub fn apply(pid: i32, rules: &DeviceRules) -> Result<(), DevicesError> {
    let prog = program(&rules.0)?;
    let fd = sys::bpf_prog_load_cgroup_device(&prog)
        .map_err(|(err, log)| DevicesError::Load { log, err })?;
    let dir = cgroup_dir(pid)?;
    let cg = fs::File::open(&dir).map_err(|e| DevicesError::Open(dir.clone(), e))?;
    sys::bpf_prog_attach_cgroup_device(cg.as_fd(), fd.as_fd())
        .map_err(|e| DevicesError::Attach(dir, e))?;
    log::debug!("device rules attached ({} instructions)", prog.len());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the program the way the kernel would, for one request.
    fn eval(p: &[BpfInsn], ty: i32, acc: i32, major: i32, minor: i32) -> u64 {
        let ctx = [((acc << 16) | ty) as u32, major as u32, minor as u32];
        let mut r = [0u64; 11];
        let mut pc = 0usize;
        loop {
            let i = p[pc];
            let (dst, src) = ((i.regs & 0x0f) as usize, (i.regs >> 4) as usize);
            pc += 1;
            match i.code {
                LDX_W => r[dst] = u64::from(ctx[(i.off / 4) as usize]),
                AND32_K => r[dst] = u64::from(r[dst] as u32 & i.imm as u32),
                RSH32_K => r[dst] = u64::from((r[dst] as u32) >> i.imm),
                MOV32_X => r[dst] = u64::from(r[src] as u32),
                MOV64_K => r[dst] = i.imm as u64,
                JNE_K => {
                    if r[dst] != i.imm as u64 {
                        pc = (pc as i64 + i64::from(i.off)) as usize;
                    }
                }
                EXIT => return r[0],
                other => panic!("unknown opcode {other:#x}"),
            }
        }
    }

    fn rules(json: &str) -> Vec<Rule> {
        let spec: Vec<LinuxDeviceCgroup> = serde_json::from_str(json).unwrap();
        rules_for(Some(&spec), None).unwrap().unwrap().0
    }

    #[test]
    fn deny_all_keeps_the_defaults() {
        let p = program(&rules(r#"[{"allow":false,"access":"rwm"}]"#)).unwrap();
        assert_eq!(eval(&p, DEV_CHAR, ACC_READ | ACC_WRITE, 1, 3), 1, "null");
        assert_eq!(eval(&p, DEV_CHAR, ACC_READ, 136, 4), 1, "pts");
        assert_eq!(eval(&p, DEV_BLOCK, ACC_READ, 8, 0), 0, "sda");
        assert_eq!(eval(&p, DEV_BLOCK, ACC_MKNOD, 8, 0), 1, "mknod any");
        assert_eq!(eval(&p, DEV_CHAR, ACC_READ, 1, 1), 0, "mem");
    }

    #[test]
    fn later_rules_win_and_access_is_a_subset() {
        let p = program(&rules(
            r#"[{"allow":false,"access":"rwm"},
                {"allow":true,"type":"b","major":8,"minor":0,"access":"r"},
                {"allow":true,"type":"c","major":10,"access":"rw"},
                {"allow":false,"type":"c","major":10,"minor":229,"access":"rwm"}]"#,
        ))
        .unwrap();
        assert_eq!(eval(&p, DEV_BLOCK, ACC_READ, 8, 0), 1);
        assert_eq!(eval(&p, DEV_BLOCK, ACC_READ | ACC_WRITE, 8, 0), 0);
        assert_eq!(eval(&p, DEV_BLOCK, ACC_READ, 8, 1), 0);
        assert_eq!(eval(&p, DEV_CHAR, ACC_WRITE, 10, 57), 1);
        assert_eq!(eval(&p, DEV_CHAR, ACC_WRITE, 10, 229), 0, "later deny wins");
        assert_eq!(
            eval(&p, DEV_CHAR, ACC_WRITE, 10, 200),
            1,
            "tun default after it"
        );
    }

    #[test]
    fn rules_shadowed_by_a_catch_all_are_not_emitted() {
        let p = program(&rules(
            r#"[{"allow":true,"type":"c","major":1,"access":"rwm"}]"#,
        ))
        .unwrap();
        let only_catch_all = program(&[Rule {
            allow: false,
            kind: None,
            access: ACC_READ | ACC_WRITE | ACC_MKNOD,
            major: None,
            minor: None,
        }])
        .unwrap();
        // Prologue, then the catch-all verdict and nothing else.
        assert_eq!(only_catch_all.len(), 6 + 2);
        assert_eq!(eval(&p, DEV_CHAR, ACC_READ, 1, 1), 1);
        assert_eq!(eval(&p, DEV_CHAR, ACC_READ, 2, 1), 0);
    }

    #[test]
    fn allow_all_then_deny_one() {
        let p = program(&rules(
            r#"[{"allow":true,"access":"rwm"},
                {"allow":false,"type":"c","major":1,"minor":1,"access":"rw"}]"#,
        ))
        .unwrap();
        assert_eq!(eval(&p, DEV_BLOCK, ACC_READ, 8, 0), 1);
        assert_eq!(eval(&p, DEV_CHAR, ACC_READ, 1, 1), 0);
        assert_eq!(eval(&p, DEV_CHAR, ACC_MKNOD, 1, 1), 1, "m not denied");
    }

    #[test]
    fn no_rules_means_no_program_and_bad_access_is_refused() {
        assert!(rules_for(None, None).unwrap().is_none());
        assert!(rules_for(Some(&[]), None).unwrap().is_none());
        let bad: Vec<LinuxDeviceCgroup> =
            serde_json::from_str(r#"[{"allow":true,"access":"rx"}]"#).unwrap();
        assert!(matches!(
            rules_for(Some(&bad), None),
            Err(DevicesError::Access(_))
        ));
    }

    #[test]
    fn device_nodes_are_allowed() {
        let spec: Vec<LinuxDeviceCgroup> =
            serde_json::from_str(r#"[{"allow":false,"access":"rwm"}]"#).unwrap();
        let nodes: Vec<LinuxDevice> =
            serde_json::from_str(r#"[{"path":"/dev/fuse","type":"c","major":10,"minor":229}]"#)
                .unwrap();
        let r = rules_for(Some(&spec), Some(&nodes)).unwrap().unwrap();
        let p = program(&r.0).unwrap();
        assert_eq!(eval(&p, DEV_CHAR, ACC_READ, 10, 229), 1);
    }

    /// The kernel verifier accepts the program (needs root; skipped otherwise).
    #[test]
    fn kernel_accepts_the_program() {
        let p = program(&rules(
            r#"[{"allow":false,"access":"rwm"},{"allow":true,"type":"b","major":8,"access":"r"}]"#,
        ))
        .unwrap();
        match sys::bpf_prog_load_cgroup_device(&p) {
            Ok(_) => {}
            Err((e, _)) if e.raw_os_error() == Some(libc::EPERM) => {
                eprintln!("not root: verifier check skipped");
            }
            Err((e, log)) => panic!("program refused: {e}: {log}"),
        }
    }
}
