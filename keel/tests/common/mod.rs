//! Shared fixtures for the end-to-end tests of the `keel` binary: a temp workspace with an image
//! store holding small fake images (a kernel, an init, an app, hostile layers), a way to run the
//! real binary against it, and readers for what it writes (newc cpio, tar).
//!
//! Every fixture reference lives on `127.0.0.1:9`, where nothing listens: a build that tries to
//! reach a registry it should not fails at once instead of waiting on the network.

// Each test binary uses a different part of this module.
#![allow(dead_code)]

use keel_image::oci::{ConfigBuilder, ImageConfiguration, ImageConfigurationBuilder};
use keel_image::{Arch, Digest, Reference, Store};
use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// A registry address that refuses connections.
pub const DEAD_REGISTRY: &str = "127.0.0.1:9";
pub const KERNEL: &str = "127.0.0.1:9/keel-test/kernel:1";
pub const INIT: &str = "127.0.0.1:9/keel-test/init:1";
pub const APP: &str = "127.0.0.1:9/keel-test/app:1";
pub const EVIL_DOTDOT: &str = "127.0.0.1:9/keel-test/evil-dotdot:1";
pub const EVIL_SYMLINK: &str = "127.0.0.1:9/keel-test/evil-symlink:1";
pub const CMDLINE: &str = "console=ttyS0 quiet keel.test=1";
/// The `org.mobyproject.config` label of the app image.
pub const APP_LABEL: &str = r#"{"capabilities":["CAP_NET_ADMIN"],"readonly":true}"#;
/// The `/etc/hosts` an image brings, which a build must replace.
pub const IMAGE_HOSTS: &[u8] = b"6.6.6.6 evil.example\n";

/// The fake kernel of an architecture.
pub fn kernel_bytes(arch: Arch) -> Vec<u8> {
    format!("fake {} kernel image\n", arch.uname())
        .repeat(64)
        .into_bytes()
}

/// A system using the kernel, init and app fixtures: one onboot and one service container.
pub fn system_yaml(app: &str) -> String {
    format!(
        "kernel:\n  image: {KERNEL}\n  cmdline: \"{CMDLINE}\"\ninit:\n  - {INIT}\n\
         onboot:\n  - name: setup\n    image: {app}\n    command: [/bin/app, setup]\n\
         services:\n  - name: web\n    image: {app}\n    readonly: false\n    capabilities: [CAP_CHOWN]\n"
    )
}

// ---------------------------------------------------------------------------------------------
// Tar construction.

/// One entry of a fixture layer.
pub enum Entry<'a> {
    File(&'a str, &'a [u8]),
    Dir(&'a str),
    Symlink(&'a str, &'a str),
}

/// A plain tar of `entries` (mode 0644/0755, uid 0, mtime 0).
pub fn tar_of(entries: &[Entry<'_>]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        h.set_mtime(0);
        h.set_uid(0);
        h.set_gid(0);
        match e {
            Entry::File(path, data) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(0o644);
                h.set_size(data.len() as u64);
                b.append_data(&mut h, path, *data).unwrap();
            }
            Entry::Dir(path) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                h.set_size(0);
                b.append_data(&mut h, path, std::io::empty()).unwrap();
            }
            Entry::Symlink(path, target) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_mode(0o777);
                h.set_size(0);
                b.append_link(&mut h, path, target).unwrap();
            }
        }
    }
    b.into_inner().unwrap()
}

/// One raw tar entry: path, type, link target, data.
pub type RawEntry<'a> = (&'a [u8], tar::EntryType, &'a [u8], &'a [u8]);

/// A tar written header by header, so that paths the `tar` crate refuses (`..`) can be made.
pub fn raw_tar(entries: &[RawEntry<'_>]) -> Vec<u8> {
    let mut out = Vec::new();
    for (path, kind, link, data) in entries {
        let mut h = tar::Header::new_gnu();
        {
            let old = h.as_old_mut();
            assert!(path.len() < old.name.len() && link.len() < old.linkname.len());
            old.name[..path.len()].copy_from_slice(path);
            old.linkname[..link.len()].copy_from_slice(link);
        }
        h.set_entry_type(*kind);
        h.set_mode(if *kind == tar::EntryType::Directory {
            0o755
        } else {
            0o644
        });
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_size(data.len() as u64);
        h.set_cksum();
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.resize(out.len() + 1024, 0);
    out
}

// ---------------------------------------------------------------------------------------------
// Images.

/// An image config with a command, an environment and labels.
pub fn image_config(cmd: &[&str], labels: &[(&str, &str)]) -> ImageConfiguration {
    let labels: HashMap<String, String> = labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    ImageConfigurationBuilder::default()
        .config(
            ConfigBuilder::default()
                .cmd(cmd.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>())
                .env(vec![
                    "PATH=/usr/bin:/bin".to_owned(),
                    "APP_MODE=fixture".to_owned(),
                ])
                .labels(labels)
                .build()
                .unwrap(),
        )
        .build()
        .unwrap()
}

/// Stores a two-platform image (an index over one manifest per architecture) and tags it.
/// Returns the index digest.
pub fn put_image(
    store: &Store,
    reference: &str,
    config: &ImageConfiguration,
    layers: impl Fn(Arch) -> Vec<Vec<u8>>,
) -> Digest {
    let mut manifests = Vec::new();
    for arch in Arch::ALL {
        let desc = store
            .write_image(arch, config.clone(), &layers(arch))
            .unwrap();
        manifests.push((arch, desc));
    }
    let index = store.write_index(&manifests).unwrap();
    let digest: Digest = index.digest().as_ref().parse().unwrap();
    let r: Reference = reference.parse().unwrap();
    store.tag(&r, index).unwrap();
    digest
}

/// The fake kernel image: `kernel` and `kernel.tar` (with `lib/modules/<release>/…`), and no
/// configuration.
pub fn put_kernel(store: &Store, reference: &str) -> Digest {
    put_kernel_with_config(store, reference, None)
}

/// The fake kernel image, with `config` (keel's kernel image layout) when given.
pub fn put_kernel_with_config(store: &Store, reference: &str, config: Option<&str>) -> Digest {
    put_image(store, reference, &image_config(&[], &[]), |arch| {
        let modules = tar_of(&[
            Entry::Dir("lib"),
            Entry::Dir("lib/modules"),
            Entry::Dir("lib/modules/x"),
            Entry::File("lib/modules/x/modules.dep", b"kernel/fake.ko:\n"),
            Entry::File("lib/modules/x/kernel/fake.ko", arch.uname().as_bytes()),
        ]);
        let kernel = kernel_bytes(arch);
        let mut files = vec![
            Entry::File("kernel", &kernel),
            Entry::File("kernel.tar", &modules),
        ];
        if let Some(text) = config {
            files.push(Entry::File("config", text.as_bytes()));
        }
        vec![tar_of(&files)]
    })
}

/// The fake init image: `/init`, a `boot/` directory (which an initrd must not carry) and an
/// `/etc/hosts` to be replaced.
pub fn put_init(store: &Store, reference: &str) -> Digest {
    put_image(store, reference, &image_config(&[], &[]), |arch| {
        vec![tar_of(&[
            Entry::File("init", b"#!/bin/sh\nexec /sbin/init\n"),
            Entry::Dir("boot"),
            Entry::File("boot/grub.cfg", b"menuentry fake {}\n"),
            Entry::Dir("etc"),
            Entry::File("etc/hosts", IMAGE_HOSTS),
            Entry::File("etc/init-arch", arch.uname().as_bytes()),
        ])]
    })
}

/// The content of the app image's `/bin/app` for a marker and architecture.
pub fn app_binary(marker: &str, arch: Arch) -> Vec<u8> {
    format!("#!/bin/sh\necho app {marker} {}\n", arch.uname()).into_bytes()
}

/// The app image, in two layers, labelled with [`APP_LABEL`]; `marker` makes versions differ.
pub fn put_app(store: &Store, reference: &str, marker: &str) -> Digest {
    let config = image_config(
        &["/bin/app", "serve"],
        &[("org.mobyproject.config", APP_LABEL)],
    );
    put_image(store, reference, &config, |arch| {
        let bin = app_binary(marker, arch);
        vec![
            tar_of(&[
                Entry::Dir("bin"),
                Entry::File("bin/app", &bin),
                Entry::Symlink("bin/sh", "app"),
                Entry::Dir("etc"),
                Entry::File("etc/hosts", IMAGE_HOSTS),
                Entry::File("etc/hostname", b"image-hostname\n"),
            ]),
            tar_of(&[
                Entry::Dir("etc"),
                Entry::File("etc/app.conf", marker.as_bytes()),
                Entry::Dir("var"),
                Entry::Dir("var/lib"),
                Entry::Dir("var/lib/app"),
            ]),
        ]
    })
}

/// An image whose layer has an entry `../escaped`.
pub fn put_evil_dotdot(store: &Store, reference: &str) -> Digest {
    put_image(store, reference, &image_config(&["/ok"], &[]), |_| {
        vec![raw_tar(&[
            (b"ok", tar::EntryType::Regular, b"", b"fine"),
            (b"../escaped", tar::EntryType::Regular, b"", b"pwned"),
        ])]
    })
}

/// An image whose layer writes through a symlinked parent that points out of the tree.
pub fn put_evil_symlink(store: &Store, reference: &str) -> Digest {
    put_image(store, reference, &image_config(&["/ok"], &[]), |_| {
        vec![raw_tar(&[
            (b"link", tar::EntryType::Symlink, b"/etc", b""),
            (
                b"link/passwd",
                tar::EntryType::Regular,
                b"",
                b"root::0:0::/:/bin/sh\n",
            ),
        ])]
    })
}

// ---------------------------------------------------------------------------------------------
// The workspace and the binary.

/// The digests of the standard fixture images.
#[derive(Debug, Clone)]
pub struct Digests {
    pub kernel: Digest,
    pub init: Digest,
    pub app: Digest,
}

/// A temp directory with a store (`store/`) and room for YAML files and outputs.
pub struct Work {
    pub tmp: tempfile::TempDir,
}

impl Work {
    /// An empty workspace (the store directory is not created).
    pub fn empty() -> Work {
        Work {
            tmp: tempfile::tempdir().unwrap(),
        }
    }

    /// A workspace whose store holds the kernel, init and app fixtures (app marker "v1").
    pub fn with_fixtures() -> (Work, Digests) {
        let w = Work::empty();
        let store = w.store();
        let digests = Digests {
            kernel: put_kernel(&store, KERNEL),
            init: put_init(&store, INIT),
            app: put_app(&store, APP, "v1"),
        };
        (w, digests)
    }

    pub fn root(&self) -> &Path {
        self.tmp.path()
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.tmp.path().join(rel)
    }

    pub fn store_dir(&self) -> PathBuf {
        self.path("store")
    }

    pub fn store(&self) -> Store {
        Store::open(self.store_dir()).unwrap()
    }

    /// Writes a file under the workspace (creating parents) and returns its path.
    pub fn write(&self, rel: &str, text: &str) -> PathBuf {
        let p = self.path(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, text).unwrap();
        p
    }

    /// `keel ARGS` with the workspace as working directory, store and run directory, and a clean
    /// environment for the settings that change output (`SOURCE_DATE_EPOCH`) or logging.
    pub fn keel<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut c = Command::new(env!("CARGO_BIN_EXE_keel"));
        c.args(args);
        self.setup(&mut c);
        c
    }

    /// `keel ARGS` run through `sh -c "umask UMASK; exec keel ARGS"`, otherwise like [`Work::keel`].
    pub fn keel_with_umask<I, S>(&self, umask: &str, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut c = Command::new("sh");
        c.arg("-c")
            .arg(format!("umask {umask}; exec \"$0\" \"$@\""))
            .arg(env!("CARGO_BIN_EXE_keel"))
            .args(args);
        self.setup(&mut c);
        c
    }

    /// `keel ARGS` with a terminal for its standard streams (util-linux `script`, as a user's
    /// shell gives one); the run's stdout is what that terminal showed.
    pub fn keel_on_terminal(&self, args: &[&str]) -> Command {
        let line = std::iter::once(env!("CARGO_BIN_EXE_keel"))
            .chain(args.iter().copied())
            .map(|a| format!("'{}'", a.replace('\'', r"'\''")))
            .collect::<Vec<_>>()
            .join(" ");
        let mut c = Command::new("script");
        c.args(["-qec", &line, "/dev/null"]);
        self.setup(&mut c);
        c
    }

    fn setup(&self, c: &mut Command) {
        c.current_dir(self.root())
            .env("KEEL_CACHE", self.store_dir())
            .env_remove("SOURCE_DATE_EPOCH")
            .env_remove("KEEL_LOG")
            .env_remove("KEEL_KERNEL_SIGNING_KEY")
            .env_remove("XDG_CACHE_HOME")
            .env("DOCKER_CONFIG", self.path("no-docker-config"))
            // `keel run -d` notes its runs here, not in the user's run directory.
            .env("KEEL_RUN_DIR", self.path("runs"))
            .stdin(Stdio::null());
    }
}

/// What a run of the binary did.
#[derive(Debug)]
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    fn from(out: Output) -> Run {
        Run {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Panics with the output unless the run succeeded.
    pub fn ok(self) -> Run {
        assert_eq!(
            self.code,
            Some(0),
            "keel failed\n--- stdout\n{}\n--- stderr\n{}",
            self.stdout,
            self.stderr
        );
        self
    }

    /// Panics unless the run failed with status 1 and an error message; returns the message.
    pub fn failed(self) -> String {
        assert_eq!(
            self.code,
            Some(1),
            "expected keel to fail\n--- stdout\n{}\n--- stderr\n{}",
            self.stdout,
            self.stderr
        );
        assert!(
            self.stderr.contains("keel: error: "),
            "no error message: {}",
            self.stderr
        );
        self.stderr
    }
}

/// Runs a command to completion.
pub fn run(cmd: &mut Command) -> Run {
    Run::from(cmd.output().unwrap())
}

/// Runs a command with `input` on its stdin.
pub fn run_with_stdin(cmd: &mut Command, input: &str) -> Run {
    use std::io::Write;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    Run::from(child.wait_with_output().unwrap())
}

/// The names in a directory, sorted (empty if it does not exist).
pub fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    };
    names.sort();
    names
}

// ---------------------------------------------------------------------------------------------
// Reading outputs.

/// One archive member: its mode (with the file type bits) and content (a symlink's target).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub mode: u32,
    pub mtime: u64,
    pub data: Vec<u8>,
}

pub const S_IFMT: u32 = 0o170000;
pub const S_IFDIR: u32 = 0o040000;
pub const S_IFREG: u32 = 0o100000;
pub const S_IFLNK: u32 = 0o120000;

impl Member {
    pub fn is_dir(&self) -> bool {
        self.mode & S_IFMT == S_IFDIR
    }
    pub fn is_file(&self) -> bool {
        self.mode & S_IFMT == S_IFREG
    }
    pub fn is_symlink(&self) -> bool {
        self.mode & S_IFMT == S_IFLNK
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.data).into_owned()
    }
}

/// Decompresses a gzip stream.
pub fn gunzip(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(data)
        .read_to_end(&mut out)
        .unwrap();
    out
}

/// Parses a newc ("070701") cpio archive, up to its trailer: path → member, in archive order
/// checked by the caller via the returned order list.
pub fn parse_newc(data: &[u8]) -> (Vec<String>, BTreeMap<String, Member>) {
    let field = |at: usize, i: usize| -> usize {
        let s = std::str::from_utf8(&data[at + 6 + i * 8..at + 14 + i * 8]).unwrap();
        usize::from_str_radix(s, 16).unwrap()
    };
    let pad4 = |n: usize| n.div_ceil(4) * 4;
    let mut order = Vec::new();
    let mut members = BTreeMap::new();
    let mut at = 0;
    loop {
        assert_eq!(&data[at..at + 6], b"070701", "bad cpio magic at {at}");
        let mode = field(at, 1) as u32;
        let mtime = field(at, 5) as u64;
        let size = field(at, 6);
        let namesize = field(at, 11);
        let name_start = at + 110;
        let name = std::str::from_utf8(&data[name_start..name_start + namesize - 1])
            .unwrap()
            .to_owned();
        let data_start = pad4(name_start + namesize);
        let content = data[data_start..data_start + size].to_vec();
        at = pad4(data_start + size);
        if name == "TRAILER!!!" {
            break;
        }
        order.push(name.clone());
        members.insert(
            name,
            Member {
                mode,
                mtime,
                data: content,
            },
        );
    }
    (order, members)
}

/// Reads a gzip'd newc initrd.
pub fn read_initrd(path: &Path) -> BTreeMap<String, Member> {
    parse_newc(&gunzip(&std::fs::read(path).unwrap())).1
}

/// Reads a tar: path (without a trailing `/`) → member.
pub fn read_tar(data: &[u8]) -> BTreeMap<String, Member> {
    let mut out = BTreeMap::new();
    let mut ar = tar::Archive::new(data);
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let path = e
            .path()
            .unwrap()
            .to_string_lossy()
            .trim_end_matches('/')
            .to_owned();
        let kind = e.header().entry_type();
        let perm = e.header().mode().unwrap() & 0o7777;
        let mtime = e.header().mtime().unwrap();
        let (mode, data) = match kind {
            tar::EntryType::Directory => (S_IFDIR | perm, Vec::new()),
            tar::EntryType::Symlink => (
                S_IFLNK | perm,
                e.link_name_bytes().unwrap().into_owned().to_vec(),
            ),
            _ => {
                let mut d = Vec::new();
                e.read_to_end(&mut d).unwrap();
                (S_IFREG | perm, d)
            }
        };
        out.insert(path, Member { mode, mtime, data });
    }
    out
}

/// The lock file's pins.
pub fn read_lock(path: &Path) -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read lock file {}: {e}", path.display()));
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["version"], 1, "{text}");
    v["images"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
        .collect()
}

/// The path of a blob in a store.
pub fn blob_path(store_dir: &Path, digest: &Digest) -> PathBuf {
    store_dir.join("blobs/sha256").join(digest.hex())
}

/// The layer digests of an image for an architecture.
pub fn layer_digests(store: &Store, reference: &str, arch: Arch) -> Vec<Digest> {
    let r: Reference = reference.parse().unwrap();
    store
        .image(&r, arch)
        .unwrap()
        .layers()
        .iter()
        .map(|l| l.digest().as_ref().parse().unwrap())
        .collect()
}
