//! Kernels built from source: a recipe pins Debian's kernel source package (`linux-source-X`)
//! and lists the configuration (a `make` base such as `tinyconfig`, then fragments per
//! architecture) and patches; [`build`] compiles it for x86_64 or aarch64 (cross-compiled with
//! Debian's `gcc-aarch64-linux-gnu`), without a VM or root.
//!
//! ```yaml
//! name: virt
//! version: 6.12.118                  # informative
//! source: { name: linux-source-6.12, version: "6.12.118-1~deb12u1", sha256: "<64 hex>" }
//! base: tinyconfig                   # the make target the configuration starts from
//! config:                            # fragments merged on top, in order, per architecture
//!   x86_64: [common.config, x86_64.config]
//!   aarch64: [common.config, aarch64.config]
//! patches: []                        # applied with `patch -p1`, in order
//! ```
//!
//! Every option a fragment sets must hold in the final configuration (an option whose
//! dependencies are missing is dropped by Kconfig without a word; here it is an error naming
//! it). The build is reproducible: `KBUILD_BUILD_TIMESTAMP` is `SOURCE_DATE_EPOCH` (else
//! [`crate::DEFAULT_MTIME`]), user and host are `keel`, the build number 1, and the source and
//! build directories do not leak into the image. The build tree is kept in the cache (one per
//! recipe and architecture), so a changed option or patch rebuilds only what it touches.

use crate::KernelError;
use keel_debian::PinnedPackage;
use serde::Deserialize;
use sha2::{Digest as _, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Why a source recipe could not be used or built.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("{path}: invalid source recipe")]
    Parse {
        path: PathBuf,
        #[source]
        source: Box<serde_saphyr::Error>,
    },
    #[error("{path}: {problem}")]
    Invalid { path: PathBuf, problem: String },
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot lock {}", path.display())]
    Lock {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot run {program} (install it: scripts/setup.sh lists the kernel build tools)")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` failed ({status}){output}")]
    Failed {
        command: String,
        status: String,
        output: String,
    },
    #[error(
        "the {arch} configuration does not hold what the fragments ask (Kconfig dropped them: a dependency is missing):\n  {}",
        options.join("\n  ")
    )]
    Dropped { arch: String, options: Vec<String> },
    #[error("the source package holds no usr/src/linux-source-*.tar.xz")]
    NoTarball,
    #[error(transparent)]
    Kernel(#[from] Box<KernelError>),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Pin {
    name: String,
    version: String,
    sha256: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Fragments {
    #[serde(default)]
    x86_64: Vec<String>,
    #[serde(default)]
    aarch64: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct SourceFile {
    name: String,
    #[serde(default)]
    version: Option<String>,
    source: Pin,
    base: String,
    config: Fragments,
    #[serde(default)]
    patches: Vec<String>,
}

/// A loaded source recipe.
#[derive(Debug, Clone)]
pub struct SourceRecipe {
    /// The recipe directory.
    pub dir: PathBuf,
    pub name: String,
    pub version: Option<String>,
    /// The pinned `linux-source-X` package.
    pub source: PinnedPackage,
    /// The make target the configuration starts from (`tinyconfig`, `defconfig`, ...).
    pub base: String,
    x86_64: Vec<PathBuf>,
    aarch64: Vec<PathBuf>,
    /// Patches, in order.
    pub patches: Vec<PathBuf>,
    /// Whether a fragment sets `CONFIG_MODULE_SIG=y` (read once, at parse).
    signs_modules: bool,
}

/// Whether a recipe names `path` as its own file (`FILE`, `DIR/FILE`) or a sibling recipe's
/// (`../NAME/FILE`, so `metal` builds on `virt`'s fragments): nothing absolute, nothing above
/// the recipes' directory.
fn is_recipe_relative(path: &str) -> bool {
    use std::path::Component;
    let parts: Vec<Component> = Path::new(path).components().collect();
    let rest = match parts.as_slice() {
        [Component::ParentDir, rest @ ..] => rest,
        all => all,
    };
    !rest.is_empty() && rest.iter().all(|c| matches!(c, Component::Normal(_)))
}

/// The make bases a recipe may start from.
const BASES: &[&str] = &["tinyconfig", "allnoconfig", "defconfig"];

/// Whether `recipe.yml` text is a source recipe (it has a `source:` key).
pub fn is_source_recipe(text: &str) -> bool {
    text.lines().any(|l| l.starts_with("source:"))
}

impl SourceRecipe {
    /// Parses `dir/recipe.yml` text.
    pub fn parse(text: &str, dir: &Path) -> Result<SourceRecipe, SourceError> {
        let path = dir.join(crate::recipe::RECIPE_FILE);
        let file: SourceFile =
            serde_saphyr::from_str(text).map_err(|source| SourceError::Parse {
                path: path.clone(),
                source: Box::new(source),
            })?;
        let invalid = |problem: String| SourceError::Invalid {
            path: path.clone(),
            problem,
        };
        if !BASES.contains(&file.base.as_str()) {
            return Err(invalid(format!(
                "base {:?} is not one of {}",
                file.base,
                BASES.join(", ")
            )));
        }
        if file.source.sha256.len() != 64
            || !file.source.sha256.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return Err(invalid("source.sha256 is not 64 hex digits".into()));
        }
        if !file.source.name.starts_with("linux-source-") {
            return Err(invalid(format!(
                "source {:?} is not a linux-source-X package",
                file.source.name
            )));
        }
        let local = |names: &[String], what: &str| -> Result<Vec<PathBuf>, SourceError> {
            names
                .iter()
                .map(|n| {
                    if !is_recipe_relative(n) {
                        return Err(invalid(format!(
                            "{what} {n:?} must be a file of the recipe directory or of a sibling recipe (../NAME/FILE)"
                        )));
                    }
                    // Absolute: make and merge_config.sh run in the source tree.
                    let p = std::path::absolute(dir.join(n)).unwrap_or_else(|_| dir.join(n));
                    if p.is_file() {
                        Ok(p)
                    } else {
                        Err(invalid(format!("{what} {n} does not exist")))
                    }
                })
                .collect()
        };
        if file.config.x86_64.is_empty() && file.config.aarch64.is_empty() {
            return Err(invalid(
                "config lists no fragments for any architecture".into(),
            ));
        }
        let x86_64 = local(&file.config.x86_64, "config fragment")?;
        let aarch64 = local(&file.config.aarch64, "config fragment")?;
        let signs_modules = x86_64.iter().chain(&aarch64).any(|f| {
            std::fs::read_to_string(f).is_ok_and(|text| {
                crate::kconfig::KernelConfig::parse(&text).value("MODULE_SIG") == "y"
            })
        });
        Ok(SourceRecipe {
            dir: dir.to_owned(),
            x86_64,
            aarch64,
            signs_modules,
            patches: local(&file.patches, "patch")?,
            name: file.name,
            version: file.version,
            source: PinnedPackage {
                name: file.source.name,
                version: file.source.version,
                // An `all` package, listed in every architecture's index: fetched through
                // the host's.
                arch: keel_debian::debian_arch(std::env::consts::ARCH)
                    .unwrap_or("amd64")
                    .to_owned(),
                sha256: file.source.sha256.to_ascii_lowercase(),
            },
            base: file.base,
        })
    }

    /// The fragments of `arch` (`x86_64` or `aarch64`).
    pub fn fragments(&self, arch: &str) -> &[PathBuf] {
        if arch == "aarch64" {
            &self.aarch64
        } else {
            &self.x86_64
        }
    }

    /// Whether the recipe signs its modules (a fragment sets `CONFIG_MODULE_SIG=y`): its build
    /// needs [`BuildOptions::signing_key`].
    pub fn signs_modules(&self) -> bool {
        self.signs_modules
    }

    /// Hashes every input of the build: the recipe, its fragments and patches (of both
    /// architectures) and `extra` files, and the compilers' versions.
    pub fn input_hash(&self, extra: &[PathBuf]) -> Result<String, SourceError> {
        let mut h = Sha256::new();
        // How keel drives make (bumped when that changes what the build makes: 2, the debug
        // prefix map), so a kernel built the old way is not taken for a new one.
        h.update(b"keel-kernel-build/2");
        let mut add = |path: &Path| -> Result<(), SourceError> {
            let data = std::fs::read(path).map_err(|source| SourceError::Read {
                path: path.to_owned(),
                source,
            })?;
            h.update(
                path.file_name()
                    .map(|n| n.as_encoded_bytes())
                    .unwrap_or_default(),
            );
            h.update(u64::try_from(data.len()).unwrap_or(u64::MAX).to_le_bytes());
            h.update(&data);
            Ok(())
        };
        add(&self.dir.join(crate::recipe::RECIPE_FILE))?;
        for p in self
            .x86_64
            .iter()
            .chain(&self.aarch64)
            .chain(&self.patches)
            .chain(extra)
        {
            add(p)?;
        }
        for compiler in ["gcc", "aarch64-linux-gnu-gcc"] {
            let version = Command::new(compiler)
                .arg("--version")
                .output()
                .map(|o| {
                    String::from_utf8_lossy(&o.stdout)
                        .lines()
                        .next()
                        .unwrap_or_default()
                        .to_owned()
                })
                .unwrap_or_default();
            h.update(compiler.as_bytes());
            h.update(version.as_bytes());
        }
        Ok(format!("{:x}", h.finalize()))
    }
}

/// What a build for one architecture gives, beside [`crate::KernelArtifacts`].
#[derive(Debug)]
pub struct Built {
    pub artifacts: crate::KernelArtifacts,
    /// `System.map`.
    pub system_map: Vec<u8>,
    /// A deterministic tar of what out-of-tree modules and eBPF programs build against:
    /// `.config`, `System.map`, `Module.symvers` (when modules are built) and the UAPI headers
    /// (`usr/include`).
    pub dev_tar: Vec<u8>,
}

/// Options of one build.
#[derive(Debug, Clone, Default)]
pub struct BuildOptions {
    /// One-off fragments merged after the recipe's (`keel kernel build --config-fragment`).
    pub fragments: Vec<PathBuf>,
    /// One-off patches applied after the recipe's (`--patch`).
    pub patches: Vec<PathBuf>,
    /// Parallel jobs (`make -j`); 0: the number of CPUs.
    pub jobs: usize,
    /// The module signing key (a PEM file holding the private key and its X.509 certificate),
    /// for a recipe that signs its modules ([`SourceRecipe::signs_modules`]); see
    /// [`ensure_signing_key`].
    pub signing_key: Option<PathBuf>,
}

/// Builds `recipe` for `arch` (`x86_64` or `aarch64`): the source package is fetched into
/// `deb_cache`, unpacked and patched under `work/src-<hash>`, and built in
/// `work/build-<name>-<arch>` (kept, so the next build is incremental).
pub fn build(
    recipe: &SourceRecipe,
    arch: &str,
    deb_cache: &Path,
    work: &Path,
    opts: &BuildOptions,
) -> Result<Built, SourceError> {
    let kernel_arch = match arch {
        "x86_64" => "x86_64",
        "aarch64" => "arm64",
        other => {
            return Err(SourceError::Invalid {
                path: recipe.dir.clone(),
                problem: format!("unknown architecture {other}"),
            });
        }
    };
    let patches: Vec<PathBuf> = recipe
        .patches
        .iter()
        .chain(&opts.patches)
        .cloned()
        .collect();
    let src = source_tree(recipe, deb_cache, work, &patches)?;
    let out = work.join(format!("build-{}-{arch}", recipe.name));
    // Held to the end: the build tree and the staging directory are this build's alone.
    let _tree = lock_tree(&work.join(format!("build-{}-{arch}.lock", recipe.name)))?;
    std::fs::create_dir_all(&out).map_err(|source| SourceError::Read {
        path: out.clone(),
        source,
    })?;
    let mtime = crate::source_date_epoch().map_err(|e| SourceError::Kernel(Box::new(e)))?;
    // Debug information (which BTF needs) names the source and build directories, and the
    // build IDs of vmlinux and the vDSO hash it: without these maps, two stores give kernels
    // that differ in those bytes. The paths are the physical ones, which is what the kernel's
    // Makefile (`realpath`) and the compiler (`getcwd`) see when a directory is a symlink.
    let physical = |dir: &Path| {
        std::fs::canonicalize(dir).map_err(|source| SourceError::Read {
            path: dir.to_owned(),
            source,
        })
    };
    let prefix_map = format!(
        "-fdebug-prefix-map={}=/keel/source -fdebug-prefix-map={}=/keel/build",
        physical(&src)?.display(),
        physical(&out)?.display()
    );
    let make = |args: &[&str]| -> Result<Vec<u8>, SourceError> {
        let mut cmd = Command::new("make");
        cmd.current_dir(&src)
            .arg(format!("O={}", out.display()))
            .arg(format!("ARCH={kernel_arch}"))
            .env("KBUILD_BUILD_TIMESTAMP", format!("@{mtime}"))
            .env("KBUILD_BUILD_USER", "keel")
            .env("KBUILD_BUILD_HOST", "keel")
            .env("KBUILD_BUILD_VERSION", "1")
            .env("LC_ALL", "C")
            .env("TZ", "UTC")
            .env_remove("KCFLAGS")
            .env_remove("KAFLAGS")
            .arg(format!("KCFLAGS={prefix_map}"))
            .arg(format!("KAFLAGS={prefix_map}"))
            .env_remove("ARCH")
            .env_remove("CROSS_COMPILE")
            .args(args);
        let prefix = cross_prefix(arch);
        if !prefix.is_empty() {
            cmd.arg(format!("CROSS_COMPILE={prefix}"));
        }
        run(&mut cmd)
    };
    // The configuration: rebuilt only when its inputs changed, so the tree stays incremental.
    let mut fragments: Vec<PathBuf> = recipe
        .fragments(arch)
        .iter()
        .chain(&opts.fragments)
        .cloned()
        .collect();
    if recipe.signs_modules() {
        let key = opts
            .signing_key
            .as_deref()
            .ok_or_else(|| SourceError::Invalid {
                path: recipe.dir.join(crate::recipe::RECIPE_FILE),
                problem: "the recipe signs its modules (CONFIG_MODULE_SIG=y) but no signing key was given".into(),
            })?;
        let key = std::path::absolute(key).unwrap_or_else(|_| key.to_owned());
        // The key's path is the one option the recipe cannot know: a fragment of the build tree.
        let fragment = out.join(".keel-signing-key.config");
        write(
            &fragment,
            format!("CONFIG_MODULE_SIG_KEY=\"{}\"\n", key.display()).as_bytes(),
        )?;
        fragments.push(fragment);
    }
    let mut stamp = Sha256::new();
    stamp.update(recipe.base.as_bytes());
    stamp.update(src.as_os_str().as_encoded_bytes());
    for f in &fragments {
        stamp.update(read(f)?);
    }
    let stamp = format!("{:x}", stamp.finalize());
    let stamp_file = out.join(".keel-config-inputs");
    if std::fs::read_to_string(&stamp_file).ok().as_deref() != Some(stamp.as_str())
        || !out.join(".config").is_file()
    {
        make(&[recipe.base.as_str()])?;
        let mut merge = Command::new(src.join("scripts/kconfig/merge_config.sh"));
        merge
            .current_dir(&src)
            .env("ARCH", kernel_arch)
            .args(["-m", "-O"])
            .arg(&out)
            .arg(out.join(".config"))
            .args(&fragments);
        run(&mut merge)?;
        make(&["olddefconfig"])?;
        check_fragments(&out.join(".config"), &fragments, arch)?;
        std::fs::write(&stamp_file, &stamp).map_err(|source| SourceError::Read {
            path: stamp_file.clone(),
            source,
        })?;
    }
    let jobs = match opts.jobs {
        0 => std::thread::available_parallelism().map_or(1, usize::from),
        n => n,
    };
    let config_text = String::from_utf8_lossy(&read(&out.join(".config"))?).into_owned();
    let enabled = |option: &str| {
        config_text
            .lines()
            .any(|l| l == format!("CONFIG_{option}=y"))
    };
    let modules = enabled("MODULES");
    // The file that boots: x86's bzImage; on arm64 the EFI zboot image when the configuration
    // builds one, else the bare Image.
    let target = match kernel_arch {
        "x86_64" => "bzImage",
        _ if enabled("EFI_ZBOOT") => "vmlinuz.efi",
        _ => "Image",
    };
    let j = format!("-j{jobs}");
    let mut targets = vec![j.as_str(), target];
    if modules {
        targets.push("modules");
    }
    make(&targets)?;
    let release = String::from_utf8_lossy(&make(&["-s", "kernelrelease"])?)
        .trim()
        .to_owned();
    // The kernel's SRCARCH: its arch/ directory.
    let srcarch = if kernel_arch == "x86_64" {
        "x86"
    } else {
        "arm64"
    };
    let image_path = out.join(format!("arch/{srcarch}/boot/{target}"));
    let staging = work.join(format!("staging-{}-{arch}", recipe.name));
    let _ = std::fs::remove_dir_all(&staging);
    let mut module_files = Vec::new();
    if modules {
        make(&[
            "modules_install",
            &format!("INSTALL_MOD_PATH={}", staging.join("modules").display()),
            "INSTALL_MOD_STRIP=1",
        ])?;
        module_files = list_files(&staging.join("modules"))?;
    }
    make(&[
        "headers_install",
        &format!("INSTALL_HDR_PATH={}", staging.join("dev/usr").display()),
    ])?;
    if modules {
        // What `make M=DIR` needs to build an out-of-tree module against this kernel (as
        // /lib/modules/R/build holds it, or Debian's linux-headers), by the kernel's own
        // script. Its host programs stay the build machine's: modules are built where keel
        // builds (cross-compiled for aarch64, as the kernel was), not inside the system.
        let mut install = Command::new(src.join("scripts/package/install-extmod-build"));
        install
            .current_dir(&out)
            .arg(staging.join("dev/build"))
            .env("srctree", &src)
            .env("SRCARCH", srcarch)
            .env("CC", "gcc")
            .env("HOSTCC", "gcc")
            .env("LC_ALL", "C");
        run(&mut install)?;
        // The assembler listing modpost's offsets header is generated from: an intermediate
        // file, with the build tree's paths in it.
        let _ = std::fs::remove_file(staging.join("dev/build/scripts/mod/devicetable-offsets.s"));
        // objtool and resolve_btfids are built for the build machine with debug information
        // naming the build tree: without it (and the build ID computed over it) they are the
        // same bytes from any tree.
        for tool in [
            "tools/objtool/objtool",
            "tools/bpf/resolve_btfids/resolve_btfids",
        ] {
            let path = staging.join("dev/build").join(tool);
            if path.is_file() {
                run(Command::new("objcopy")
                    .args(["--strip-debug", "--remove-section=.note.gnu.build-id"])
                    .arg(&path))?;
            }
        }
    }
    let system_map = read(&out.join("System.map"))?;
    let mut dev = BTreeMap::new();
    dev.insert(".config".to_owned(), config_text.clone().into_bytes());
    dev.insert("System.map".to_owned(), system_map.clone());
    if modules {
        dev.insert(
            "Module.symvers".to_owned(),
            read(&out.join("Module.symvers"))?,
        );
    }
    if enabled("DEBUG_INFO_BTF") {
        // The types /sys/kernel/btf/vmlinux serves, for `bpftool btf dump file` on the build
        // machine (CO-RE programs' vmlinux.h).
        // Only the section's bytes are written (`-O binary`), not a copy of vmlinux.
        let btf = staging.join("vmlinux.btf");
        run(Command::new(format!("{}objcopy", cross_prefix(arch)))
            .args(["-O", "binary", "--only-section=.BTF"])
            .arg(out.join("vmlinux"))
            .arg(&btf))?;
        dev.insert("btf/vmlinux".to_owned(), read(&btf)?);
    }
    let headers = staging.join("dev");
    let mut executable = std::collections::BTreeSet::new();
    for (rel, exec) in walk_files(&headers, true)? {
        let data = read(&headers.join(&rel))?;
        if exec {
            executable.insert(rel.clone());
        }
        dev.insert(rel, data);
    }
    let mut module_tree = BTreeMap::new();
    for rel in &module_files {
        module_tree.insert(rel.clone(), read(&staging.join("modules").join(rel))?);
    }
    let tar_err = |source| SourceError::Read {
        path: staging.clone(),
        source,
    };
    let modules_tar = crate::deterministic_tar(&module_tree, mtime).map_err(tar_err)?;
    let dev_tar = crate::deterministic_tar_with(&dev, &executable, mtime).map_err(tar_err)?;
    let control = keel_debian::Control::parse(&format!(
        "Package: {}\nVersion: {}\nArchitecture: all\n",
        recipe.source.name, recipe.source.version
    ))
    .unwrap_or_default();
    Ok(Built {
        artifacts: crate::KernelArtifacts {
            release,
            kernel: read(&image_path)?,
            modules_tar,
            config: config_text.into_bytes(),
            modules: module_files,
            control,
            copyright: None,
        },
        system_map,
        dev_tar,
    })
}

/// The toolchain prefix that builds for `arch` on this machine (empty: the native one).
fn cross_prefix(arch: &str) -> &'static str {
    match (arch, std::env::consts::ARCH) {
        ("aarch64", "aarch64") | ("x86_64", "x86_64") => "",
        ("aarch64", _) => "aarch64-linux-gnu-",
        _ => "x86_64-linux-gnu-",
    }
}

/// The regular files under `dir`, relative and sorted (`lib/modules/R/build` and `source`
/// links are skipped).
fn list_files(dir: &Path) -> Result<Vec<String>, SourceError> {
    Ok(walk_files(dir, false)?
        .into_iter()
        .map(|(rel, _)| rel)
        .collect())
}

/// The files under `dir`, relative and sorted, each with whether it is executable;
/// `follow_links`: a symbolic link to a file counts as that file (a build tree's header links).
fn walk_files(dir: &Path, follow_links: bool) -> Result<Vec<(String, bool)>, SourceError> {
    fn walk(
        root: &Path,
        dir: &Path,
        follow_links: bool,
        out: &mut Vec<(String, bool)>,
    ) -> std::io::Result<()> {
        use std::os::unix::fs::PermissionsExt as _;
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let kind = entry.file_type()?;
            let meta = if kind.is_symlink() && follow_links {
                match std::fs::metadata(entry.path()) {
                    Ok(meta) if meta.is_file() => meta,
                    _ => continue,
                }
            } else if kind.is_dir() {
                walk(root, &entry.path(), follow_links, out)?;
                continue;
            } else if kind.is_file() {
                entry.metadata()?
            } else {
                continue;
            };
            if let Ok(rel) = entry.path().strip_prefix(root) {
                let executable = meta.permissions().mode() & 0o111 != 0;
                out.push((rel.to_string_lossy().into_owned(), executable));
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    if dir.is_dir() {
        walk(dir, dir, follow_links, &mut out).map_err(|source| SourceError::Read {
            path: dir.to_owned(),
            source,
        })?;
    }
    out.sort();
    Ok(out)
}

fn write(path: &Path, data: &[u8]) -> Result<(), SourceError> {
    std::fs::write(path, data).map_err(|source| SourceError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Makes `path` a module signing key when it is not one yet: a 4096-bit RSA key and a
/// self-signed certificate for it, in one PEM file (what `CONFIG_MODULE_SIG_KEY` reads), written
/// mode 0600 with `openssl`, as the kernel's own `certs/Makefile` makes one. The kernel embeds
/// the certificate and `modules_install` signs with the key; RSA PKCS#1 v1.5 signatures are
/// deterministic, so one key gives the same bytes on every build. `subject` is its CN.
pub fn ensure_signing_key(path: &Path, subject: &str) -> Result<(), SourceError> {
    if path.is_file() {
        return Ok(());
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|source| SourceError::Read {
        path: dir.to_owned(),
        source,
    })?;
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name().unwrap_or_default().to_string_lossy()
    ));
    let genkey = dir.join(".x509.genkey");
    write(
        &genkey,
        format!(
            "[ req ]\ndefault_bits = 4096\ndistinguished_name = dn\nprompt = no\nstring_mask = utf8only\nx509_extensions = ext\n\
             [ dn ]\nCN = {subject}\n\
             [ ext ]\nbasicConstraints = critical,CA:FALSE\nkeyUsage = digitalSignature\nsubjectKeyIdentifier = hash\nauthorityKeyIdentifier = keyid\n"
        )
        .as_bytes(),
    )?;
    let mut cmd = Command::new("openssl");
    cmd.args([
        "req", "-new", "-nodes", "-utf8", "-sha512", "-days", "36500", "-batch", "-x509",
    ])
    .arg("-config")
    .arg(&genkey)
    .args(["-outform", "PEM", "-out"])
    .arg(&tmp)
    .arg("-keyout")
    .arg(&tmp);
    let result = run(&mut cmd);
    let _ = std::fs::remove_file(&genkey);
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|source| SourceError::Read {
            path: path.to_owned(),
            source,
        })
}

fn read(path: &Path) -> Result<Vec<u8>, SourceError> {
    std::fs::read(path).map_err(|source| SourceError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Runs a command, keeping its output for the error when it fails; returns its stdout.
fn run(cmd: &mut Command) -> Result<Vec<u8>, SourceError> {
    let line = format!("{cmd:?}").replace('"', "");
    log::debug!("{line}");
    let out = cmd.output().map_err(|source| SourceError::Spawn {
        program: cmd.get_program().to_string_lossy().into_owned(),
        source,
    })?;
    if !out.status.success() {
        let text = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = text.lines().collect();
        let tail: String = lines[lines.len().saturating_sub(30)..]
            .iter()
            .map(|l| format!("\n  {l}"))
            .collect();
        return Err(SourceError::Failed {
            command: line,
            status: out.status.to_string(),
            output: tail,
        });
    }
    Ok(out.stdout)
}

/// Every `CONFIG_X=v` and `# CONFIG_X is not set` of the fragments (a later fragment's value
/// winning, as `merge_config.sh` merges them) must hold in `.config`; an option asked "not set"
/// may also be absent (it does not exist on this architecture).
fn check_fragments(config: &Path, fragments: &[PathBuf], arch: &str) -> Result<(), SourceError> {
    let have = crate::kconfig::KernelConfig::parse(&String::from_utf8_lossy(&read(config)?));
    // Option → (value, the fragment that set it last).
    let mut wanted: BTreeMap<String, (String, String)> = BTreeMap::new();
    for f in fragments {
        let text = String::from_utf8_lossy(&read(f)?).into_owned();
        let name = f
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        for (option, value) in crate::kconfig::KernelConfig::parse(&text).entries() {
            wanted.insert(option.to_owned(), (value.to_owned(), name.clone()));
        }
    }
    let dropped: Vec<String> = wanted
        .iter()
        .filter(|(option, (value, _))| have.value(option) != value)
        .map(|(option, (value, from))| {
            let got = have.get(option).unwrap_or("(absent)");
            format!("CONFIG_{option}={value} (from {from}) is {got}")
        })
        .collect();
    if dropped.is_empty() {
        Ok(())
    } else {
        Err(SourceError::Dropped {
            arch: arch.to_owned(),
            options: dropped,
        })
    }
}

/// Holds the lock file `path` until the returned file is dropped, so that two builds sharing a
/// work directory (two `keel kernel build`s into one store) take turns on a tree rather than
/// write into it at once. The kernel drops the lock when the process dies; a wait is logged.
fn lock_tree(path: &Path) -> Result<std::fs::File, SourceError> {
    let lock_error = |source| SourceError::Lock {
        path: path.to_owned(),
        source,
    };
    // A fresh store has no work directory yet: the first lock makes it.
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(lock_error)?;
    }
    let file = std::fs::File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(lock_error)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            log::info!("waiting for another build that holds {}", path.display());
            file.lock().map_err(lock_error)?;
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(lock_error(e)),
    }
    Ok(file)
}

/// The source tree: the package's tarball unpacked under `work/src-<hash>` (the hash covers the
/// package and the patches), patched, once.
fn source_tree(
    recipe: &SourceRecipe,
    deb_cache: &Path,
    work: &Path,
    patches: &[PathBuf],
) -> Result<PathBuf, SourceError> {
    let mut h = Sha256::new();
    h.update(recipe.source.sha256.as_bytes());
    for p in patches {
        h.update(read(p)?);
    }
    let hash = format!("{:x}", h.finalize());
    let dir = work.join(format!("src-{}", &hash[..16]));
    // Builds for the other architecture or another recipe of the same source share the tree:
    // one unpacks, the others wait and find it done.
    let _tree = lock_tree(&work.join(format!("src-{}.lock", &hash[..16])))?;
    let done = dir.join(".keel-unpacked");
    if done.is_file() {
        return Ok(dir.join("linux"));
    }
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|source| SourceError::Read {
        path: dir.clone(),
        source,
    })?;
    let deb_path = keel_debian::download(&recipe.source, deb_cache)
        .map_err(|e| SourceError::Kernel(Box::new(e.into())))?;
    let deb =
        keel_debian::unpack(&deb_path).map_err(|e| SourceError::Kernel(Box::new(e.into())))?;
    let entries = deb
        .entries()
        .map_err(|e| SourceError::Kernel(Box::new(e.into())))?;
    let tarball = entries
        .iter()
        .find(|e| e.path.starts_with("usr/src/linux-source-") && e.path.ends_with(".tar.xz"))
        .ok_or(SourceError::NoTarball)?;
    log::info!(
        "unpacking {} ({} MiB)",
        tarball.path,
        tarball.data.len() >> 20
    );
    let xz = liblzma::read::XzDecoder::new(&tarball.data[..]);
    let mut archive = tar::Archive::new(xz);
    archive.set_preserve_permissions(true);
    archive.unpack(&dir).map_err(|source| SourceError::Read {
        path: dir.clone(),
        source,
    })?;
    // The tarball holds one directory, linux-source-X.Y.
    let top = std::fs::read_dir(&dir)
        .map_err(|source| SourceError::Read {
            path: dir.clone(),
            source,
        })?
        .filter_map(Result::ok)
        .find(|e| e.file_name().to_string_lossy().starts_with("linux-source-"))
        .map(|e| e.path())
        .ok_or(SourceError::NoTarball)?;
    std::fs::rename(&top, dir.join("linux")).map_err(|source| SourceError::Read {
        path: top.clone(),
        source,
    })?;
    for p in patches {
        let file = std::fs::File::open(p).map_err(|source| SourceError::Read {
            path: p.clone(),
            source,
        })?;
        let mut cmd = Command::new("patch");
        cmd.current_dir(dir.join("linux"))
            .args(["-p1", "--forward", "--batch"])
            .stdin(file);
        run(&mut cmd)?;
    }
    std::fs::write(&done, b"").map_err(|source| SourceError::Read {
        path: done.clone(),
        source,
    })?;
    Ok(dir.join("linux"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tree_lock_makes_the_second_build_wait() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("build-tiny-x86_64.lock");
        let first = lock_tree(&path).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let second = {
            let path = path.clone();
            std::thread::spawn(move || {
                let held = lock_tree(&path).unwrap();
                tx.send(()).unwrap();
                held
            })
        };
        // The second waits while the first holds the tree...
        assert!(
            rx.recv_timeout(std::time::Duration::from_millis(300))
                .is_err()
        );
        // ...and gets it once the first is done.
        drop(first);
        rx.recv_timeout(std::time::Duration::from_secs(10)).unwrap();
        drop(second.join().unwrap());
        // A fresh store's work directory is made by its first lock...
        let fresh = dir.path().join("store/kernel-work/src-0.lock");
        drop(lock_tree(&fresh).unwrap());
        assert!(fresh.is_file());
        // ...and a place that cannot hold one is an error naming it.
        std::fs::write(dir.path().join("file"), "").unwrap();
        let blocked = dir.path().join("file/kernel-work/x.lock");
        let err = lock_tree(&blocked).unwrap_err();
        assert!(err.to_string().contains("file/kernel-work/x.lock"), "{err}");
    }

    #[test]
    fn recipe_files_stay_among_the_recipes() {
        for ok in ["common.config", "sub/x.config", "../virt/common.config"] {
            assert!(is_recipe_relative(ok), "{ok}");
        }
        for bad in ["/etc/passwd", "../../x", "a/../../x", "..", "", "./"] {
            assert!(!is_recipe_relative(bad), "{bad}");
        }
    }

    #[test]
    fn a_signing_key_is_made_once_and_private() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("keys/signing.pem");
        ensure_signing_key(&key, "test").unwrap();
        let text = std::fs::read_to_string(&key).unwrap();
        assert!(text.contains("PRIVATE KEY-----") && text.contains("BEGIN CERTIFICATE-----"));
        let mode = std::fs::metadata(&key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // An existing key is kept: the builds it signed stay reproducible.
        ensure_signing_key(&key, "test").unwrap();
        assert_eq!(std::fs::read_to_string(&key).unwrap(), text);
        // Nothing half-written beside it.
        let names: Vec<_> = std::fs::read_dir(key.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("signing.pem")]);
    }
}
