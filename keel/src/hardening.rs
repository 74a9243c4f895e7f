//! `keel kernel check` and `keel kernel diff`: what a kernel (and a system around it) sets,
//! compared with the Kernel Self Protection Project's recommendations ([`keel_kernel::kspp`])
//! or with another kernel.
//!
//! A target is a system YAML (its kernel's configuration, its command line and the sysctl
//! files of its root and containers are all checked), a kernel recipe directory, a kernel
//! image reference, or a `.config` file (plain or gzip, as `/proc/config.gz`).

use crate::build::{self, Packages, Resolve};
use keel_image::{Arch, PullOptions, Reference, Store};
use keel_kernel::kconfig::KernelConfig;
use keel_kernel::kspp::{self, Cmdline, Finding, System};
use keel_rootfs::NodeKind;
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Build(#[from] build::Error),
    #[error(transparent)]
    Assemble(#[from] crate::assemble::Error),
    #[error(transparent)]
    Pkg(#[from] crate::pkg::Error),
    #[error(transparent)]
    Table(#[from] kspp::TableError),
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}: not a system YAML, kernel recipe, kernel image or kernel configuration")]
    Target(String),
    #[error("cannot use image {reference}")]
    Image {
        reference: String,
        #[source]
        source: Box<keel_image::Error>,
    },
    #[error("{0} has no kernel section with an image")]
    NoKernel(String),
    #[error(
        "kernel image {0} holds no configuration (a `config` file, or boot/config-* in kernel.tar)"
    )]
    NoConfig(String),
}

type Result<T> = std::result::Result<T, Error>;

/// What was checked and what it holds.
#[derive(Debug)]
pub struct Checked {
    /// Where the kernel configuration came from (an image reference or a file).
    pub kernel: String,
    pub config: KernelConfig,
    /// The system's command line and sysctls, for a system YAML.
    pub cmdline: Option<Cmdline>,
    pub sysctls: Option<BTreeMap<String, String>>,
    /// The sysctl files read, in the order applied.
    pub sysctl_files: Vec<String>,
}

/// Reads what `target` sets (see the module documentation) for `arch`.
pub fn inspect(store: &Store, target: &str, arch: Arch, registry: &PullOptions) -> Result<Checked> {
    let path = Path::new(target);
    let is_yaml = matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yml" | "yaml")
    ) || target.starts_with("http://")
        || target.starts_with("https://");
    if is_yaml {
        return system(store, target, arch, registry);
    }
    if crate::kernel::is_recipe(path) {
        let reference = crate::pkg::ensure(store, path, false)?;
        return image(store, &reference, arch, registry);
    }
    if path.is_file() {
        let data = std::fs::read(path).map_err(|source| Error::Read {
            path: path.into(),
            source,
        })?;
        return Ok(Checked {
            kernel: target.to_owned(),
            config: KernelConfig::parse(&config_text(&data, path)?),
            cmdline: None,
            sysctls: None,
            sysctl_files: Vec::new(),
        });
    }
    match target.parse::<Reference>() {
        Ok(reference) => image(store, &reference, arch, registry),
        Err(_) => Err(Error::Target(target.to_owned())),
    }
}

/// `.config` text, gunzipped when it is `/proc/config.gz`.
fn config_text(data: &[u8], path: &Path) -> Result<String> {
    if data.starts_with(&[0x1f, 0x8b]) {
        let mut text = String::new();
        flate2::read::GzDecoder::new(data)
            .read_to_string(&mut text)
            .map_err(|source| Error::Read {
                path: path.into(),
                source,
            })?;
        return Ok(text);
    }
    Ok(String::from_utf8_lossy(data).into_owned())
}

/// The configuration of a kernel image in the store (pulled when missing).
fn image(
    store: &Store,
    reference: &Reference,
    arch: Arch,
    registry: &PullOptions,
) -> Result<Checked> {
    let name = reference.to_string();
    let image_err = |source| Error::Image {
        reference: name.clone(),
        source: Box::new(source),
    };
    let present = store.resolve(reference).map_err(image_err)?.is_some();
    if !present {
        store.pull(reference, arch, registry).map_err(image_err)?;
    }
    let image = store.image(reference, arch).map_err(image_err)?;
    let tree = crate::assemble::image_tree(store, &image, &name, build::DEFAULT_MAX_IMAGE_SIZE)?;
    Ok(Checked {
        kernel: name.clone(),
        config: KernelConfig::parse(
            &crate::assemble::kernel_image_config(&tree).ok_or(Error::NoConfig(name))?,
        ),
        cmdline: None,
        sysctls: None,
        sysctl_files: Vec::new(),
    })
}

/// A system: its kernel's configuration, its command line, and the sysctl files of its root
/// filesystem and its containers, applied in file-name order as `sysctl --system` does.
fn system(store: &Store, file: &str, arch: Arch, registry: &PullOptions) -> Result<Checked> {
    let files = vec![file.to_owned()];
    let config = build::load(
        &files,
        Packages::Build {
            store,
            locked: false,
        },
    )?;
    let lock = build::lock_for(&files)?;
    let resolved = build::resolve(
        store,
        &config,
        &lock,
        Resolve {
            arch,
            pull: false,
            registry: registry.clone(),
        },
    )?;
    let kernel_ref = config
        .kernel
        .as_ref()
        .and_then(|k| k.image.as_ref())
        .map(|i| i.value.clone())
        .ok_or_else(|| Error::NoKernel(file.to_owned()))?;
    let assembled = crate::assemble::assemble(
        store,
        &config,
        &resolved.images,
        crate::assemble::AssembleOptions {
            arch,
            max_image_size: build::DEFAULT_MAX_IMAGE_SIZE,
        },
    )?;
    let kernel_image = &resolved.images[&kernel_ref];
    let kernel_tree = crate::assemble::image_tree(
        store,
        kernel_image,
        &kernel_ref,
        build::DEFAULT_MAX_IMAGE_SIZE,
    )?;
    let name = kernel_image.reference.clone();
    let kernel_config =
        crate::assemble::kernel_image_config(&kernel_tree).ok_or(Error::NoConfig(name.clone()))?;
    let mut sysctl_files: Vec<(String, String, String)> = assembled
        .tree
        .iter()
        .filter_map(|(path, node)| {
            let text = path.to_string_lossy();
            let is_sysctl = text == "etc/sysctl.conf"
                || (text.ends_with(".conf")
                    && (text.starts_with("etc/sysctl.d/")
                        || (text.starts_with("containers/")
                            && text.contains("/rootfs/etc/sysctl.d/"))));
            match (&node.kind, is_sysctl) {
                (NodeKind::File(data), true) => Some((
                    path.file_name()?.to_string_lossy().into_owned(),
                    text.into_owned(),
                    String::from_utf8_lossy(data).into_owned(),
                )),
                _ => None,
            }
        })
        .collect();
    sysctl_files.sort();
    let sysctls = kspp::sysctls(sysctl_files.iter().map(|(_, _, t)| t.as_str()));
    Ok(Checked {
        kernel: name,
        config: KernelConfig::parse(&kernel_config),
        cmdline: assembled
            .kernel
            .as_ref()
            .map(|k| Cmdline::parse(&k.cmdline)),
        sysctls: Some(sysctls),
        sysctl_files: sysctl_files.into_iter().map(|(_, p, _)| p).collect(),
    })
}

/// Checks what `checked` holds against the shipped KSPP table.
pub fn check(checked: &Checked, arch: Arch) -> Result<Vec<Finding>> {
    let table = kspp::parse_table(kspp::TABLE)?;
    Ok(kspp::check(
        &table,
        &System {
            arch: arch.uname(),
            config: Some(&checked.config),
            cmdline: checked.cmdline.as_ref(),
            sysctls: checked.sysctls.as_ref(),
        },
    ))
}

/// The report `keel kernel check` prints: what was read, one line per row (`ok`, `FAIL`,
/// `n/a`), the reason of each failure, then the counts per group.
pub fn render(checked: &Checked, findings: &[Finding]) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let version = checked
        .config
        .version()
        .map(|(a, b)| format!(" (Linux {a}.{b})"))
        .unwrap_or_default();
    let _ = writeln!(out, "kernel: {}{version}", checked.kernel);
    if checked.cmdline.is_some() {
        let _ = writeln!(
            out,
            "sysctl files: {}",
            if checked.sysctl_files.is_empty() {
                "none".to_owned()
            } else {
                checked.sysctl_files.join(", ")
            }
        );
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:<6} {:<8} {:<40} {:<12} HAVE",
        "STATUS", "KIND", "SETTING", "WANT"
    );
    for f in findings {
        let (status, have) = match &f.verdict {
            kspp::Verdict::Ok => (
                "ok",
                match &f.via {
                    Some(via) => format!("via {via}"),
                    None => f.have.clone().unwrap_or_else(|| "absent".into()),
                },
            ),
            kspp::Verdict::Fail => ("FAIL", f.have.clone().unwrap_or_default()),
            kspp::Verdict::NotApplicable(why) => ("n/a", format!("({why})")),
        };
        let _ = writeln!(
            out,
            "{status:<6} {:<8} {:<40} {:<12} {have}",
            f.row.kind.name(),
            f.row.name,
            f.row.want
        );
    }
    let failed: Vec<&Finding> = findings
        .iter()
        .filter(|f| f.verdict == kspp::Verdict::Fail)
        .collect();
    if !failed.is_empty() {
        let _ = writeln!(out, "\nwhy each failed setting matters:");
        for f in failed {
            let _ = writeln!(out, "  {}: {}", f.row.name, f.row.reason);
        }
    }
    let _ = writeln!(
        out,
        "\n{:<22} {:>4} {:>5} {:>4}",
        "group", "ok", "fail", "n/a"
    );
    for (group, [ok, fail, na]) in kspp::counts(findings) {
        let _ = writeln!(out, "{group:<22} {ok:>4} {fail:>5} {na:>4}");
    }
    out
}

/// `keel kernel check --json`: what was read, every finding and the counts.
pub fn render_json(checked: &Checked, findings: &[Finding]) -> String {
    #[derive(serde::Serialize)]
    struct Count {
        group: String,
        ok: usize,
        fail: usize,
        not_applicable: usize,
    }
    #[derive(serde::Serialize)]
    struct Report<'a> {
        kernel: &'a str,
        version: Option<String>,
        sysctl_files: &'a [String],
        findings: &'a [Finding],
        counts: Vec<Count>,
    }
    let report = Report {
        kernel: &checked.kernel,
        version: checked.config.version().map(|(a, b)| format!("{a}.{b}")),
        sysctl_files: &checked.sysctl_files,
        findings,
        counts: kspp::counts(findings)
            .into_iter()
            .map(|(group, [ok, fail, not_applicable])| Count {
                group,
                ok,
                fail,
                not_applicable,
            })
            .collect(),
    };
    serde_json::to_string_pretty(&report).unwrap_or_default() + "\n"
}
