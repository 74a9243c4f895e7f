//! Conformance with LinuxKit's YAML schema (`src/cmd/linuxkit/moby/schema.go`) and its spec
//! generation (`config.go`): every form the schema allows loads; forms it rejects (unknown keys,
//! wrong types) are errors naming FILE:LINE:COLUMN; relative mount destinations and `env`
//! behave as LinuxKit's; the 2017 `outputs:` and `trust:` sections load with one warning each.

use keel_config::{Config, ImageConfig, Section, Source, SpecContext, generate, load, parse_label};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

fn no_pkg(_: &Path) -> Result<String, String> {
    Err("no packages here".into())
}

fn src(name: &str, text: &str) -> Source {
    Source {
        name: name.into(),
        text: text.into(),
        dir: Some(PathBuf::from("/cfg")),
    }
}

fn load_one(text: &str) -> Result<Config, String> {
    load(&[src("t.yml", text)], &no_pkg).map_err(|e| e.to_string())
}

/// The generated `config.json` of the first container of `section`, as JSON.
fn spec_of(c: &Config, section: Section, image: Option<&str>) -> Value {
    let ids = c.ids();
    let list = match section {
        Section::Onboot => &c.onboot,
        Section::Onshutdown => &c.onshutdown,
        Section::Services => &c.services,
    };
    let image: Option<ImageConfig> = image.map(|i| serde_json::from_str(i).unwrap());
    let label = image
        .as_ref()
        .and_then(|i| keel_config::image_label(i, "img:1").unwrap());
    let bundle = generate(
        &list[0],
        image.as_ref(),
        label.as_ref(),
        &SpecContext::new(c, &ids, section, 0, "x86_64"),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    serde_json::from_str(&bundle.config_json().unwrap()).unwrap()
}

fn mounts(spec: &Value) -> Vec<(String, String, String)> {
    spec["mounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["destination"].as_str().unwrap().to_string(),
                m["type"].as_str().unwrap_or_default().to_string(),
                m["source"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

fn env(spec: &Value) -> Vec<String> {
    spec["process"]["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap().to_string())
        .collect()
}

const SVC: &str = "services:\n  - name: s\n    image: x\n    command: [/s]\n";

/// Every key of LinuxKit's `image` definition, in the schema's order, each with a valid value.
const EVERY_IMAGE_KEY: &str = r#"services:
  - name: every
    image: example.org/every:1
    capabilities: [CAP_NET_ADMIN]
    capabilities.add: [CAP_SYS_TIME]
    ambient: [CAP_NET_ADMIN]
    mounts:
      - {destination: /a, type: tmpfs, source: tmpfs, options: [size=1m]}
    binds: ["/etc:/host-etc"]
    binds.add: ["/srv:/srv"]
    devices:
      - {path: /dev/null, type: c, major: 1, minor: 3, mode: "0666"}
      - {path: all, type: b}
    tmpfs: [/tmp]
    command: [/bin/every]
    env: [A=1]
    cwd: /
    net: new
    pid: host
    ipc: new
    uts: new
    userns: new
    readonly: true
    maskedPaths: [/proc/kcore]
    readonlyPaths: [/proc/sys]
    uid: 1000
    gid: every
    additionalGids: [1, every, root]
    noNewPrivileges: true
    hostname: every
    oomScoreAdj: -100
    rootfsPropagation: rslave
    cgroupsPath: /every
    resources:
      devices: [{allow: true, type: c, major: 1, minor: 3, access: rwm}]
      memory: {limit: 1, reservation: 1, swap: 1, kernel: 1, kernelTCP: 1, swappiness: 1, disableOOMKiller: true}
      cpu: {shares: 1, quota: 1, period: 1, realtimeRuntime: 1, realtimePeriod: 1, cpus: "0", mems: "0"}
      pids: {limit: 10}
      blockio:
        weight: 10
        leafWeight: 10
        weightDevice: [{major: 8, minor: 0, weight: 10, leafWeight: 10}]
        throttleReadBpsDevice: [{major: 8, minor: 0, rate: 1}]
        throttleWriteBpsDevice: [{major: 8, minor: 0, rate: 1}]
        throttleReadIOPSDevice: [{major: 8, minor: 0, rate: 1}]
        throttleWriteIOPSDevice: [{major: 8, minor: 0, rate: 1}]
      hugepageLimits: [{pageSize: 2MB, limit: 0}]
      network: {classID: 1, priorities: [{name: eth0, priority: 1}]}
    sysctl: {net.ipv4.ip_forward: "1"}
    rlimits: ["nofile,1,2"]
    uidMappings: [{hostID: 100000, containerID: 0, size: 1000}]
    gidMappings: [{hostID: 100000, containerID: 0, size: 1000}]
    annotations: {org.example: "yes"}
    runtime:
      cgroups: [/every]
      mounts: [{destination: /run/x, type: tmpfs, source: tmpfs, options: [size=1m]}]
      mkdir: [/var/every]
      interfaces: [{name: eth1, add: veth, peer: veth-every, createInRoot: true}]
      bindNS: {cgroup: /c, ipc: /i, mnt: /m, net: /n, pid: /p, user: /u, uts: /t}
      namespace: every
"#;

#[test]
fn every_form_the_schema_allows_loads() {
    let top = r#"kernel:
  image: linuxkit/kernel:6.6
  cmdline: console=ttyS0
  binary: bzImage
  tar: none
  ucode: ucode.cpio
init: [linuxkit/init:v1]
onboot:
  - {name: o, image: x, command: [/o]}
onshutdown:
  - {name: d, image: x, command: [/d]}
files:
  - {path: etc/a, directory: true, mode: "0755", uid: 0, gid: root}
  - {path: etc/b, symlink: /etc/a}
  - {path: etc/c, contents: hi, uid: o, gid: 5}
  - {path: etc/d, source: /nonexistent, optional: true}
  - {path: etc/e, metadata: yaml}
volumes:
  - {name: v1}
  - {name: v2, image: alpine, readonly: true, format: oci, platforms: [linux/amd64]}
trust:
  image: [linuxkit/kernel]
  org: [linuxkit]
"#;
    let c = load_one(&format!("{top}{EVERY_IMAGE_KEY}")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.services.len(), 1);
    assert_eq!(c.files.len(), 5);
    // The whole image generates a spec (the .add forms lose to the plain ones, as in LinuxKit).
    let spec = spec_of(&c, Section::Services, None);
    assert_eq!(
        spec["process"]["capabilities"]["effective"],
        serde_json::json!(["CAP_NET_ADMIN"])
    );
    assert!(
        !mounts(&spec).iter().any(|m| m.0 == "/srv"),
        "binds.add is ignored beside binds"
    );

    // Each `runtime:` form on its own.
    for runtime in [
        "cgroups: [/a, /b]",
        "mounts: [{destination: /x, type: bind, source: /y, options: [rbind]}]",
        "mounts: [{destination: relative, type: tmpfs, source: tmpfs}]",
        "mkdir: [/var/a, relative]",
        "interfaces: [{name: eth0}]",
        "interfaces: [{name: wg0, add: wireguard}, {name: eth1, add: veth, peer: p, createInRoot: false}]",
        "bindNS: {net: /run/netns/s}",
        "bindNS: {cgroup: /a, ipc: /b, mnt: /c, net: /d, pid: /e, user: /f, uts: /g}",
        "namespace: services.linuxkit",
        "{}",
    ] {
        let text = format!("{SVC}    runtime:\n      {runtime}\n");
        load_one(&text).unwrap_or_else(|e| panic!("runtime: {runtime}: {e}"));
    }

    // `.add` lists: the schema has capabilities.add and binds.add; they append to a label's.
    let label = r#"{"capabilities": ["CAP_NET_RAW"], "binds": ["/a:/a"]}"#;
    let image = format!(
        r#"{{"Entrypoint": ["/s"], "Labels": {{"org.mobyproject.config": {}}}}}"#,
        serde_json::to_string(label).unwrap()
    );
    let c = load_one(&format!(
        "{SVC}    capabilities.add: [CAP_NET_ADMIN]\n    binds.add: [\"/b:b\"]\n"
    ))
    .unwrap();
    let spec = spec_of(&c, Section::Services, Some(&image));
    assert_eq!(
        spec["process"]["capabilities"]["effective"],
        serde_json::json!(["CAP_NET_ADMIN", "CAP_NET_RAW"])
    );
    let m = mounts(&spec);
    assert!(
        m.iter().any(|m| m.0 == "/a") && m.iter().any(|m| m.0 == "b"),
        "{m:?}"
    );

    // Empty sections, as LinuxKit's own examples write them.
    load_one("onboot:\nonshutdown:\nservices:\nfiles:\nvolumes:\ninit:\nkernel:\n").unwrap();
}

#[test]
fn labels_take_every_image_key_but_name_and_image() {
    // The label is validated as a service with a dummy name and image: every other key.
    let body = EVERY_IMAGE_KEY
        .split_once("    command: [/bin/every]\n")
        .map(|(a, b)| format!("{a}{b}"))
        .unwrap();
    let fields: String = body
        .lines()
        .skip(3)
        .map(|l| format!("{}\n", l.strip_prefix("    ").unwrap_or(l)))
        .collect();
    let f = parse_label(&fields, "img:1").unwrap_or_else(|e| panic!("{e}\n{fields}"));
    assert!(f.runtime.is_some() && f.resources.is_some() && f.binds_add.is_some());
    let e = parse_label("image: x\n", "img:1").unwrap_err().to_string();
    assert_eq!(
        e,
        "img:1 label:1:1: image cannot be set in the org.mobyproject.config label"
    );
    let e = parse_label("{\"runtime\": {\"mkdirs\": []}}", "img:1")
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("img:1 label:1:14: unknown key \"mkdirs\" in runtime"),
        "{e}"
    );
}

#[test]
fn files_merge_in_order() {
    let a = src(
        "a.yml",
        "kernel:\n  image: k1\n  cmdline: one\ninit: [i1]\nonboot:\n  - {name: a, image: x}\nservices:\n  - {name: s1, image: x}\nfiles:\n  - {path: a, contents: a}\nvolumes:\n  - {name: va}\noutputs:\n  - format: kernel+initrd\n",
    );
    let b = src(
        "b.yml",
        "kernel:\n  image: k2\n  ucode: u\ninit: [i2]\nonboot:\n  - {name: b, image: x}\nonshutdown:\n  - {name: d, image: x}\nservices:\n  - {name: s2, image: x}\nfiles:\n  - {path: b, contents: b}\nvolumes:\n  - {name: vb}\ntrust:\n  org: [linuxkit]\noutputs:\n  - format: tar\n  - format: kernel+initrd\n",
    );
    let c = load(&[a, b], &no_pkg).unwrap_or_else(|e| panic!("{e}"));
    let k = c.kernel.as_ref().unwrap();
    assert_eq!(k.image.as_ref().unwrap().as_str(), "k2");
    assert_eq!(k.cmdline(), "one");
    assert_eq!(k.ucode.as_ref().unwrap().as_str(), "u");
    assert_eq!(c.init.len(), 2);
    let names = |l: &[keel_config::ImageSpec]| -> Vec<String> {
        l.iter().map(|s| s.name.value.clone()).collect()
    };
    assert_eq!(names(&c.onboot), ["a", "b"]);
    assert_eq!(names(&c.onshutdown), ["d"]);
    assert_eq!(names(&c.services), ["s1", "s2"]);
    assert_eq!(c.files.len(), 2);
    assert_eq!(c.volumes.len(), 2);
    let outputs: Vec<String> = c
        .outputs
        .iter()
        .map(|o| format!("{} {}", o.value, o.loc))
        .collect();
    assert_eq!(outputs, ["kernel+initrd a.yml:14:13", "tar b.yml:18:13"]);
}

#[test]
fn forms_the_schema_rejects_are_errors_with_a_position() {
    let cases: &[(&str, &str, &str)] = &[
        // Unknown keys, at every level.
        (
            "kernal: {}\n",
            "1:1",
            "unknown key \"kernal\" in the top level",
        ),
        (
            "kernel:\n  cmdlines: x\n",
            "2:3",
            "unknown key \"cmdlines\" in kernel",
        ),
        (
            "files:\n  - {path: a, contents: b, owner: 0}\n",
            "2:28",
            "unknown key \"owner\" in file",
        ),
        (
            "volumes:\n  - {name: v, size: 1}\n",
            "2:15",
            "unknown key \"size\" in volume",
        ),
        (
            "trust:\n  orgs: []\n",
            "2:3",
            "unknown key \"orgs\" in trust",
        ),
        (
            "outputs:\n  - {format: tar, bucket: b, region: x}\n",
            "2:30",
            "unknown key \"region\" in output",
        ),
        (
            &format!("{SVC}    capabilities.remove: []\n"),
            "5:5",
            "unknown key \"capabilities.remove\" in service",
        ),
        (
            &format!("{SVC}    devices.add: []\n"),
            "5:5",
            "unknown key \"devices.add\" in service",
        ),
        (
            &format!("{SVC}    mounts: [{{destination: /a, type: tmpfs, flags: x}}]\n"),
            "5:45",
            "unknown key \"flags\" in mount",
        ),
        (
            &format!("{SVC}    devices: [{{path: /dev/a, type: c, mode: \"0600\", uid: 0}}]\n"),
            "5:53",
            "unknown key \"uid\" in device",
        ),
        (
            &format!(
                "{SVC}    userns: new\n    uidMappings: [{{hostID: 1, containerID: 0, size: 1, extra: 1}}]\n"
            ),
            "6:56",
            "unknown key \"extra\" in id mapping",
        ),
        (
            &format!("{SVC}    resources: {{pids: {{max: 1}}}}\n"),
            "5:24",
            "unknown key \"max\" in pids",
        ),
        (
            &format!("{SVC}    runtime: {{mkdirs: []}}\n"),
            "5:15",
            "unknown key \"mkdirs\" in runtime",
        ),
        (
            &format!("{SVC}    runtime: {{interfaces: [{{name: a, mtu: 1}}]}}\n"),
            "5:38",
            "unknown key \"mtu\" in interface",
        ),
        (
            &format!("{SVC}    runtime: {{bindNS: {{time: /t}}}}\n"),
            "5:24",
            "unknown key \"time\" in bindNS",
        ),
        (
            &format!("{SVC}    runtime: {{mounts: [{{destination: /a, propagation: x}}]}}\n"),
            "5:42",
            "unknown key \"propagation\" in runtime mount",
        ),
        // Wrong types.
        ("init: linuxkit/init\n", "1:7", "expected a list for init"),
        ("onboot: {}\n", "1:9", "expected a list for onboot"),
        ("kernel: [a]\n", "1:9", "expected a mapping for kernel"),
        ("files: x\n", "1:8", "expected a list for files"),
        (
            "trust:\n  org: linuxkit\n",
            "2:8",
            "expected a list for trust",
        ),
        (
            "outputs:\n  format: tar\n",
            "2:3",
            "expected a list for outputs",
        ),
        (
            "outputs:\n  - {format: tar, public: maybe}\n",
            "2:27",
            "expected true or false",
        ),
        (
            "outputs:\n  - {project: p}\n",
            "2:5",
            "output is missing \"format\"",
        ),
        (
            "volumes:\n  - {name: v, readonly: \"true\"}\n",
            "2:25",
            "expected true or false",
        ),
        (
            &format!("{SVC}    cwd: [/a]\n"),
            "5:10",
            "expected a string",
        ),
        (
            &format!("{SVC}    binds: {{/a: /b}}\n"),
            "5:12",
            "expected a list for binds",
        ),
        (
            &format!("{SVC}    env: A=1\n"),
            "5:10",
            "expected a list for env",
        ),
        (
            &format!("{SVC}    readonly: \"true\"\n"),
            "5:15",
            "expected true or false",
        ),
        (
            &format!("{SVC}    oomScoreAdj: 1.5\n"),
            "5:18",
            "expected an integer",
        ),
        (
            &format!("{SVC}    uid: [1]\n"),
            "5:10",
            "expected a number or a container name",
        ),
        (
            &format!("{SVC}    sysctl: [a]\n"),
            "5:13",
            "expected a mapping for sysctl",
        ),
        (
            &format!("{SVC}    annotations: x\n"),
            "5:18",
            "expected a mapping for annotations",
        ),
        (
            &format!(
                "{SVC}    devices: [{{path: /dev/a, type: c, major: \"1\", mode: \"0600\"}}]\n"
            ),
            "5:46",
            "expected an integer",
        ),
        (
            &format!(
                "{SVC}    userns: new\n    uidMappings: [{{hostID: x, containerID: 0, size: 1}}]\n"
            ),
            "6:28",
            "expected an integer",
        ),
        (
            &format!("{SVC}    resources: {{pids: {{limit: x}}}}\n"),
            "5:31",
            "expected an integer",
        ),
        (
            &format!("{SVC}    runtime: []\n"),
            "5:14",
            "expected a mapping for runtime",
        ),
        (
            &format!("{SVC}    runtime: {{mkdir: /x}}\n"),
            "5:22",
            "expected a list for mkdir",
        ),
        (
            &format!("{SVC}    runtime: {{interfaces: {{name: x}}}}\n"),
            "5:27",
            "expected a list for interfaces",
        ),
        (
            &format!("{SVC}    runtime: {{interfaces: [{{name: x, createInRoot: yes}}]}}\n"),
            "5:52",
            "expected true or false",
        ),
        (
            &format!("{SVC}    runtime: {{bindNS: [x]}}\n"),
            "5:23",
            "expected a mapping for bindNS",
        ),
        (
            &format!("{SVC}    runtime: {{namespace: [x]}}\n"),
            "5:26",
            "expected a string",
        ),
        // Required keys.
        (
            "services:\n  - {image: x}\n",
            "2:5",
            "service is missing \"name\"",
        ),
        (
            "onboot:\n  - {name: a}\n",
            "2:5",
            "onboot entry \"a\" is missing \"image\"",
        ),
    ];
    let mut failures = Vec::new();
    for (text, at, what) in cases {
        match load_one(text) {
            Ok(_) => failures.push(format!("accepted:\n{text}")),
            Err(e) => {
                let prefix = format!("t.yml:{at}: ");
                if !e.starts_with(&prefix) || !e.contains(what) {
                    failures.push(format!("{e}\n  expected {prefix}...{what}...\n{text}"));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn relative_destinations_are_written_as_given() {
    // LinuxKit's own test case (test/cases/000_build/001_tarheaders) and binds such as
    // "/etc:etc": config.json carries the destination as written; the runtime resolves it
    // against the container's root.
    let text = format!(
        "{SVC}    mounts:\n      - {{type: overlay, source: overlay, destination: writeable-host-etc, options: [rw, lowerdir=/etc]}}\n    binds: [\"/etc:etc\", \"/var:./var/host:ro\"]\n    tmpfs: [\"scratch:size=1m\"]\n    runtime:\n      mounts: [{{destination: rt, type: tmpfs, source: tmpfs}}]\n"
    );
    let c = load_one(&text).unwrap_or_else(|e| panic!("{e}"));
    let spec = spec_of(&c, Section::Services, None);
    let m = mounts(&spec);
    for want in [
        ("writeable-host-etc", "overlay", "overlay"),
        ("etc", "bind", "/etc"),
        ("./var/host", "bind", "/var"),
        ("scratch", "tmpfs", "tmpfs"),
    ] {
        assert!(
            m.iter()
                .any(|(d, t, s)| (d.as_str(), t.as_str(), s.as_str()) == want),
            "{want:?} not in {m:?}"
        );
    }
    // Sorted by destination as LinuxKit sorts them: the absolute defaults first.
    let dests: Vec<&str> = m.iter().map(|x| x.0.as_str()).collect();
    let mut sorted = dests.clone();
    sorted.sort_unstable();
    assert_eq!(dests, sorted);
    // binds.add, alone and from a label.
    let c = load_one(&format!("{SVC}    binds.add: [\"/srv:srv\"]\n")).unwrap();
    let image =
        r#"{"Labels": {"org.mobyproject.config": "{\"binds\": [\"/lib/modules:lib/modules\"]}"}}"#;
    let m = mounts(&spec_of(&c, Section::Services, Some(image)));
    assert!(
        m.iter().any(|x| x.0 == "srv") && m.iter().any(|x| x.0 == "lib/modules"),
        "{m:?}"
    );

    // What cannot work is refused, with its position.
    for (text, at, what) in [
        (
            format!("{SVC}    binds: [\"/a:\"]\n"),
            "5:13",
            "invalid bind \"/a:\": empty destination",
        ),
        (
            format!("{SVC}    binds.add: [\"/a:../a\"]\n"),
            "5:17",
            "invalid bind \"/a:../a\": the destination must not contain a \"..\" component",
        ),
        (
            format!("{SVC}    tmpfs: [\"/run/../..\"]\n"),
            "5:13",
            "invalid tmpfs \"/run/../..\": the destination must not contain",
        ),
        (
            format!("{SVC}    mounts: [{{type: tmpfs, destination: a/../../b}}]\n"),
            "5:14",
            "invalid mount destination \"a/../../b\": the destination must not contain",
        ),
        (
            format!(
                "{SVC}    mounts: [{{type: bind, source: /a, destination: /b, uidmappings: []}}]\n"
            ),
            "5:56",
            "uidmappings: idmapped mounts are not supported by keel's runtime",
        ),
        (
            format!("{SVC}    runtime: {{mounts: [{{destination: /b, gidmappings: []}}]}}\n"),
            "5:42",
            "gidmappings: idmapped mounts are not supported",
        ),
    ] {
        let e = load_one(&text).unwrap_err();
        assert!(e.starts_with(&format!("t.yml:{at}: {what}")), "{e}");
    }
}

#[test]
fn env_replaces_the_image_environment() {
    let image = r#"{"Entrypoint": ["/s"], "Env": ["PATH=/opt/bin:/bin", "FROM_IMAGE=1"]}"#;
    let run = |yaml: &str, image: &str| {
        let c = load_one(yaml).unwrap_or_else(|e| panic!("{e}"));
        env(&spec_of(&c, Section::Services, Some(image)))
    };
    // No env in the YAML: the image's, unchanged.
    assert_eq!(run(SVC, image), ["PATH=/opt/bin:/bin", "FROM_IMAGE=1"]);
    // A YAML env replaces it: FROM_IMAGE and the image's PATH are gone, as in LinuxKit; keel
    // adds its default PATH because libcontainer starts no process without one.
    assert_eq!(
        run(&format!("{SVC}    env: [A=1]\n"), image),
        ["A=1", keel_config::spec::DEFAULT_PATH]
    );
    assert_eq!(
        run(&format!("{SVC}    env: []\n"), image),
        [keel_config::spec::DEFAULT_PATH]
    );
    // A PATH in the YAML is kept as the only one.
    assert_eq!(
        run(&format!("{SVC}    env: [PATH=/usr/bin, A=1]\n"), image),
        ["PATH=/usr/bin", "A=1"]
    );
    // A label's env replaces the image's too, and the YAML's replaces the label's.
    let labelled = r#"{"Entrypoint": ["/s"], "Env": ["PATH=/bin", "FROM_IMAGE=1"], "Labels": {"org.mobyproject.config": "{\"env\": [\"FROM_LABEL=1\"]}"}}"#;
    assert_eq!(
        run(SVC, labelled),
        ["FROM_LABEL=1", keel_config::spec::DEFAULT_PATH]
    );
    assert_eq!(
        run(&format!("{SVC}    env: [B=2]\n"), labelled),
        ["B=2", keel_config::spec::DEFAULT_PATH]
    );
}

// --- warnings -------------------------------------------------------------------------------

/// Collects log records (the process-wide logger of this test binary).
struct Capture(Mutex<Vec<String>>);

impl log::Log for Capture {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        m.level() <= log::Level::Warn
    }
    fn log(&self, r: &log::Record<'_>) {
        if self.enabled(r.metadata())
            && let Ok(mut v) = self.0.lock()
        {
            v.push(r.args().to_string());
        }
    }
    fn flush(&self) {}
}

fn captured(file: &str) -> Vec<String> {
    static CAPTURE: OnceLock<&'static Capture> = OnceLock::new();
    let c = CAPTURE.get_or_init(|| {
        let c: &'static Capture = Box::leak(Box::new(Capture(Mutex::new(Vec::new()))));
        log::set_logger(c).unwrap();
        log::set_max_level(log::LevelFilter::Warn);
        c
    });
    let prefix = format!("{file}:");
    c.0.lock()
        .unwrap()
        .iter()
        .filter(|m| m.starts_with(&prefix))
        .cloned()
        .collect()
}

#[test]
fn the_2017_sections_load_with_one_warning_each() {
    captured("");
    // LinuxKit's first release's YAML (moby, April 2017).
    let text = "kernel:\n  image: linuxkit/kernel:4.9.x\n  cmdline: console=ttyS0\ninit:\n  - linuxkit/init:v1\nonboot:\n  - name: sysctl\n    image: linuxkit/sysctl:v1\ntrust:\n  image:\n    - linuxkit/kernel\n  org:\n    - linuxkit\noutputs:\n  - format: kernel+initrd\n  - format: gcp-img\n    project: p\n    bucket: b\n    public: true\n  - format: iso-bios\n";
    let c = load(&[src("moby2017.yml", text)], &no_pkg).unwrap_or_else(|e| panic!("{e}"));
    let formats: Vec<&str> = c.outputs.iter().map(|o| o.as_str()).collect();
    assert_eq!(formats, ["kernel+initrd", "gcp-img", "iso-bios"]);
    assert_eq!(c.outputs[1].loc.to_string(), "moby2017.yml:16:13");
    let warnings = captured("moby2017.yml");
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    assert_eq!(
        warnings[0],
        "moby2017.yml:9:1: \"trust\" is ignored: keel pins every image by digest in the lock file and checks every download against its digest"
    );
    assert_eq!(
        warnings[1],
        "moby2017.yml:14:1: \"outputs\" (from LinuxKit's first releases): kernel+initrd, gcp-img, iso-bios become keel build's default formats when no -f is given; project, bucket, public ignored"
    );
    // The merged YAML keeps LinuxKit's shape, and reads back the same.
    let y = c.to_yaml().unwrap();
    assert!(
        y.contains("outputs:\n  - format: kernel+initrd\n  - format: gcp-img\n"),
        "{y}"
    );
    let again = load(&[src("again.yml", &y)], &no_pkg).unwrap();
    assert_eq!(again, c);
    // No outputs: nothing kept, nothing said.
    let c = load(&[src("plain.yml", "init: [i]\n")], &no_pkg).unwrap();
    assert!(c.outputs.is_empty());
    assert!(captured("plain.yml").is_empty());
}
