//! Boot benchmark: `images/minimal.yml` (plus the reporting service of `tests/cases/bench.yml`)
//! against a bare-kernel floor (`tests/cases/floor.yml`), under QEMU TCG, median of several boots
//! per architecture. Prints a Markdown table for `docs/benchmarks.md`.
//!
//!   cargo run -p keel-vmtests --example bootbench --release -- [--runs N] [--arch x86_64|aarch64]
//!     [--with tests/cases/virt-kernel.yml]   (another kernel: a YAML merged last into both)
//!     [--initrd-compression auto|gzip|zstd]   (the minimal system's initrd; default auto)

use keel_vmtests::vm::{Boot, Vm};
use keel_vmtests::{Arch, Checks, InitrdCompression, build, build_with, case, chain, workspace};
use std::path::Path;
use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(300);

/// The kernel's printk timestamp (seconds) of the first console line containing `needle`.
fn kernel_time(console: &str, needle: &str) -> Option<f64> {
    let line = console.lines().find(|l| l.contains(needle))?;
    let inside = line.trim_start().strip_prefix('[')?.split(']').next()?;
    inside.trim().parse().ok()
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// `rss/pss` in kB → (rss, pss) in MB.
fn mem(v: &str) -> Option<(f64, f64)> {
    let (r, p) = v.split_once('/')?;
    Some((
        r.parse::<f64>().ok()? / 1024.0,
        p.parse::<f64>().ok()? / 1024.0,
    ))
}

#[derive(Default)]
struct Samples {
    floor_init: Vec<f64>,
    floor_uptime: Vec<f64>,
    run_init: Vec<f64>,
    unpack: Vec<f64>,
    pid1: Vec<f64>,
    onboot_done: Vec<f64>,
    services: Vec<f64>,
    pid1_rss: Vec<f64>,
    pid1_pss: Vec<f64>,
    shim_rss: Vec<f64>,
    shim_pss: Vec<f64>,
}

fn step_ms(timeline: &serde_json::Value, step: &str) -> Option<f64> {
    let s = timeline.as_array()?.iter().find(|s| s["step"] == step)?;
    Some(s["boottime_ms"].as_f64()? / 1000.0)
}

/// Options of one benchmark run.
struct Options {
    runs: usize,
    /// A YAML merged last into both systems (another kernel).
    with: Option<std::path::PathBuf>,
    initrd: InitrdCompression,
}

fn bench(arch: Arch, opts: &Options) -> Result<(), String> {
    let (runs, with) = (opts.runs, opts.with.as_deref());
    let fail = |what: &str, console: &str| format!("{arch}: {what}\n--- console ---\n{console}");
    let floor_yml = case("floor.yml");
    let minimal = workspace().join("images/minimal.yml");
    let bench_yml = case("bench.yml");
    let mut floor_files = vec![floor_yml.as_path()];
    let mut keel_files = vec![bench_yml.as_path(), minimal.as_path()];
    // Another kernel (e.g. tests/cases/virt-kernel.yml), for both systems.
    if let Some(with) = with {
        floor_files.push(with);
        keel_files.push(with);
    }
    let floor = build(&floor_files, arch).map_err(|e| chain(&e))?;
    let keel = build_with(
        &keel_files,
        arch,
        &[keel::build::Format::KernelInitrd],
        opts.initrd,
    )
    .map_err(|e| chain(&e))?;
    let mut s = Samples::default();
    for run in 0..runs {
        let mut vm = Vm::boot(
            &format!("floor {arch} #{run}"),
            &floor.prefix,
            &Boot::new(arch),
        );
        let console = vm.wait_exit(DEADLINE);
        s.floor_init.push(
            kernel_time(&console, "Run /init").ok_or_else(|| fail("no Run /init", &console))?,
        );
        let up = console
            .lines()
            .find_map(|l| {
                // A kernel message may follow on the same line: take the number only.
                l.split_once("FLOOR uptime=").map(|(_, v)| {
                    let end = v
                        .find(|c: char| !c.is_ascii_digit() && c != '.')
                        .unwrap_or(v.len());
                    v[..end].parse::<f64>()
                })
            })
            .and_then(Result::ok)
            .ok_or_else(|| fail("no FLOOR uptime", &console))?;
        s.floor_uptime.push(up);

        let mut vm = Vm::boot(
            &format!("minimal {arch} #{run}"),
            &keel.prefix,
            &Boot::new(arch),
        );
        let console = vm.wait_exit(DEADLINE);
        let checks = Checks::parse(&console);
        s.run_init.push(
            kernel_time(&console, "Run /init").ok_or_else(|| fail("no Run /init", &console))?,
        );
        // The kernel unpacks the initramfs between these two lines (6.1 says "Trying to
        // unpack rootfs image as initramfs", 6.12 "Unpacking initramfs").
        let unpack = kernel_time(&console, "Trying to unpack rootfs image")
            .or_else(|| kernel_time(&console, "Unpacking initramfs"))
            .zip(kernel_time(&console, "Freeing initrd memory"))
            .map(|(start, end)| end - start)
            .ok_or_else(|| fail("no initramfs unpack lines", &console))?;
        s.unpack.push(unpack);
        let timeline: serde_json::Value = checks
            .get("bench", "timeline")
            .and_then(|t| serde_json::from_str(t).ok())
            .ok_or_else(|| fail("no timeline", &console))?;
        for (step, into) in [
            ("init started", &mut s.pid1),
            ("onboot done", &mut s.onboot_done),
            ("services started", &mut s.services),
        ] {
            into.push(step_ms(&timeline, step).ok_or_else(|| fail(step, &console))?);
        }
        let (r, p) = checks
            .get("bench", "pid1")
            .and_then(mem)
            .ok_or_else(|| fail("no PID 1 memory", &console))?;
        s.pid1_rss.push(r);
        s.pid1_pss.push(p);
        let mut shims = 0;
        for (key, value) in checks.entries("bench") {
            if key.starts_with("shim")
                && let Some((r, p)) = mem(value)
            {
                s.shim_rss.push(r);
                s.shim_pss.push(p);
                shims += 1;
            }
        }
        if shims == 0 {
            return Err(fail("no keel-shim memory", &console));
        }
    }
    let size = |p: &Path| {
        std::fs::metadata(p)
            .map(|m| m.len() as f64 / 1e6)
            .unwrap_or(f64::NAN)
    };
    let prefix = keel.prefix.display().to_string();
    let kernel = size(Path::new(&format!("{prefix}-kernel")));
    let initrd = size(Path::new(&format!("{prefix}-initrd.img")));
    let floor_initrd = size(Path::new(&format!("{}-initrd.img", floor.prefix.display())));

    println!(
        "\n### {arch} (median of {runs} boots, {:?} initrd)\n",
        opts.initrd
    );
    println!("| measure | value |\n|---|---|");
    println!(
        "| floor: kernel start → `Run /init` (bare kernel, busybox /init) | {:.2} s |",
        median(s.floor_init)
    );
    println!(
        "| floor: uptime read by that /init | {:.2} s |",
        median(s.floor_uptime)
    );
    println!(
        "| keel: kernel start → `Run /init` | {:.2} s |",
        median(s.run_init)
    );
    println!(
        "| keel: the kernel unpacking the initramfs | {:.2} s |",
        median(s.unpack)
    );
    println!(
        "| keel: kernel start → PID 1 `init started` | {:.2} s |",
        median(s.pid1)
    );
    println!(
        "| keel: kernel start → `onboot done` | {:.2} s |",
        median(s.onboot_done)
    );
    println!(
        "| keel: kernel start → `services started` | {:.2} s |",
        median(s.services)
    );
    println!(
        "| PID 1 RSS / PSS (2 services running) | {:.2} / {:.2} MB |",
        median(s.pid1_rss),
        median(s.pid1_pss)
    );
    println!(
        "| keel-shim RSS / PSS, per shim | {:.2} / {:.2} MB |",
        median(s.shim_rss),
        median(s.shim_pss)
    );
    println!(
        "| kernel / initrd (minimal) / initrd (floor) | {kernel:.2} / {initrd:.2} / {floor_initrd:.2} MB |"
    );
    Ok(())
}

fn main() {
    let mut opts = Options {
        runs: 5,
        with: None,
        initrd: InitrdCompression::Auto,
    };
    let mut arches = vec![Arch::X86_64, Arch::Aarch64];
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match (a.as_str(), args.next()) {
            ("--runs", Some(n)) => opts.runs = n.parse().unwrap_or(opts.runs),
            ("--with", Some(file)) => opts.with = Some(file.into()),
            ("--initrd-compression", Some(c)) => match c.parse() {
                Ok(c) => opts.initrd = c,
                Err(e) => {
                    eprintln!("bootbench: --initrd-compression: {e}");
                    std::process::exit(2);
                }
            },
            ("--arch", Some(a)) => match a.parse() {
                Ok(arch) => arches = vec![arch],
                Err(e) => {
                    eprintln!("bootbench: {e}");
                    std::process::exit(2);
                }
            },
            _ => {
                eprintln!(
                    "usage: bootbench [--runs N] [--arch x86_64|aarch64] [--with YAML merged last, e.g. tests/cases/virt-kernel.yml] [--initrd-compression auto|gzip|zstd]"
                );
                std::process::exit(2);
            }
        }
    }
    for arch in arches {
        if let Err(e) = bench(arch, &opts) {
            eprintln!("bootbench: {e}");
            std::process::exit(1);
        }
    }
}
