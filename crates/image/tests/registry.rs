//! Pulls from a real registry server (`docker-registry`, Debian's packaging of
//! distribution/distribution) on loopback, with images pushed into it by `skopeo`.

use base64::Engine as _;
use keel_image::oci::{ConfigBuilder, ImageConfigurationBuilder};
use keel_image::{Arch, CorruptBlob, Digest, Error, PullOptions, Reference, Store};
use std::collections::HashMap;
use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};

use keel_testutil::{Registry, skopeo_push};

use keel_testutil::tar_with;

/// A source store with a two-platform image tagged `docker.io/test/src:1`.
fn source(dir: &Path) -> (Store, Reference, Digest) {
    let store = Store::open(dir.join("src")).unwrap();
    let mut manifests = Vec::new();
    for arch in Arch::ALL {
        let config = ImageConfigurationBuilder::default()
            .config(
                ConfigBuilder::default()
                    .labels(HashMap::from([(
                        "arch".to_owned(),
                        arch.uname().to_owned(),
                    )]))
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap();
        let layers = [
            tar_with("etc/arch", arch.uname().as_bytes()),
            tar_with("big", &vec![arch as u8; 3 << 20]),
        ];
        manifests.push((arch, store.write_image(arch, config, &layers).unwrap()));
    }
    let index = store.write_index(&manifests).unwrap();
    let r: Reference = "test/src:1".parse().unwrap();
    store.tag(&r, index.clone()).unwrap();
    (store, r, index.digest().as_ref().parse().unwrap())
}

/// A registry holding [`source`]'s image as `team/app:v1`; the directory the source store is in,
/// and the image's index digest.
fn published_app() -> (Registry, tempfile::TempDir, Digest) {
    let registry = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    let (src, src_ref, index_digest) = source(dir.path());
    skopeo_push(
        src.path(),
        &src_ref.to_string(),
        &format!("{}/team/app:v1", registry.host()),
    );
    (registry, dir, index_digest)
}

fn layer_files(store: &Store, image: &keel_image::Image) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for layer in image.layers() {
        let mut r = store.open_layer(layer).unwrap();
        {
            let mut ar = tar::Archive::new(&mut r);
            for e in ar.entries().unwrap() {
                let mut e = e.unwrap();
                let mut data = Vec::new();
                e.read_to_end(&mut data).unwrap();
                out.push((e.path().unwrap().into_owned(), data));
            }
        }
        r.finish().unwrap();
    }
    out
}

#[test]
fn pull_by_tag_and_digest_from_a_real_registry() {
    let registry = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    let (src, src_ref, index_digest) = source(dir.path());
    let remote = format!("{}/team/app:v1", registry.host());
    skopeo_push(src.path(), &src_ref.to_string(), &remote);
    let options = PullOptions {
        quiet: true,
        ..PullOptions::default()
    };

    // By tag: the index digest comes back and is what the reference now resolves to.
    let store = Store::open(dir.path().join("pulled")).unwrap();
    let by_tag: Reference = remote.parse().unwrap();
    let desc = store.pull(&by_tag, Arch::Aarch64, &options).unwrap();
    assert_eq!(
        desc.digest().as_ref(),
        index_digest.as_str(),
        "skopeo kept the index as is"
    );
    assert_eq!(
        store.resolve(&by_tag).unwrap().unwrap().digest(),
        desc.digest()
    );
    let arm = store.image(&by_tag, Arch::Aarch64).unwrap();
    assert_eq!(arm.digest, index_digest);
    assert_eq!(arm.label("arch"), Some("aarch64"));
    let files = layer_files(&store, &arm);
    assert_eq!(files[0], (PathBuf::from("etc/arch"), b"aarch64".to_vec()));
    assert_eq!(files[1].1.len(), 3 << 20);
    // Only the requested platform was fetched.
    let err = store.image(&by_tag, Arch::X86_64).unwrap_err();
    assert!(err.is_not_found(), "{err}");
    // Pulling the other platform fills it in.
    store.pull(&by_tag, Arch::X86_64, &options).unwrap();
    let amd = store.image(&by_tag, Arch::X86_64).unwrap();
    assert_eq!(amd.label("arch"), Some("x86_64"));

    // By digest, into a fresh store: the same index, usable by digest.
    let other = Store::open(dir.path().join("by-digest")).unwrap();
    let by_digest: Reference = format!("{}/team/app@{index_digest}", registry.host())
        .parse()
        .unwrap();
    let desc2 = other.pull(&by_digest, Arch::X86_64, &options).unwrap();
    assert_eq!(desc2.digest(), desc.digest());
    let amd2 = other.image(&by_digest, Arch::X86_64).unwrap();
    assert_eq!(amd2.manifest_digest, amd.manifest_digest);
    assert_eq!(layer_files(&other, &amd2), layer_files(&store, &amd));

    // A tampered blob is detected on read, and a new pull repairs it.
    let layer = amd.layers()[1].clone();
    let layer_digest: Digest = layer.digest().as_ref().parse().unwrap();
    let path = store.path().join("blobs/sha256").join(layer_digest.hex());
    let mut data = fs::read(&path).unwrap();
    let mid = data.len() / 2;
    data[mid] ^= 0xff;
    fs::write(&path, &data).unwrap();
    let mut r = store.open_layer(&layer).unwrap();
    let err = std::io::copy(&mut r, &mut std::io::sink())
        .map_err(|e| e.to_string())
        .and_then(|_| r.finish().map_err(|e| e.to_string()));
    assert!(err.is_err(), "tampering went unnoticed");
    let mut r = store.open_blob(&layer_digest).unwrap();
    let io_err = r.read_to_end(&mut Vec::new()).unwrap_err();
    let corrupt = CorruptBlob::find(&io_err).expect("a CorruptBlob error");
    assert_eq!(corrupt.digest, layer_digest);
    assert_eq!(corrupt.actual, Digest::of(&data).to_string());
    store.pull(&by_tag, Arch::X86_64, &options).unwrap();
    assert_eq!(layer_files(&store, &amd).len(), 2);

    // A tag the registry does not have.
    let missing: Reference = format!("{}/team/app:nope", registry.host())
        .parse()
        .unwrap();
    let err = store.pull(&missing, Arch::X86_64, &options).unwrap_err();
    assert!(matches!(err, Error::Pull { .. }), "{err}");
    let chain = format!("{err}: {}", std::error::Error::source(&err).unwrap());
    assert!(
        chain.contains("404") && chain.contains("MANIFEST_UNKNOWN"),
        "{chain}"
    );
    assert!(store.resolve(&missing).unwrap().is_none());
}

#[test]
fn single_platform_manifest_pull() {
    let registry = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    let src = Store::open(dir.path().join("src")).unwrap();
    let config = ImageConfigurationBuilder::default().build().unwrap();
    let manifest = src
        .write_image(Arch::X86_64, config, &[tar_with("hello", b"world")])
        .unwrap();
    let name: Reference = "single:1".parse().unwrap();
    src.tag(&name, manifest.clone()).unwrap();
    let remote = format!("localhost:{}/single:1", registry.port());
    skopeo_push(src.path(), &name.to_string(), &remote);

    let store = Store::open(dir.path().join("pulled")).unwrap();
    let r: Reference = remote.parse().unwrap();
    let desc = store
        .pull(
            &r,
            Arch::X86_64,
            &PullOptions {
                quiet: true,
                ..PullOptions::default()
            },
        )
        .unwrap();
    assert_eq!(desc.digest(), manifest.digest());
    let image = store.image(&r, Arch::X86_64).unwrap();
    assert_eq!(image.digest, image.manifest_digest);
    assert_eq!(
        layer_files(&store, &image),
        vec![(PathBuf::from("hello"), b"world".to_vec())]
    );
    // The wrong architecture is refused rather than pulled.
    let err = store.image(&r, Arch::Aarch64).unwrap_err().to_string();
    assert!(err.contains("is for linux/amd64, not linux/arm64"), "{err}");
}

/// A front for a registry that demands a Bearer token, which its `/token` endpoint hands out
/// only for the Basic credentials `user:pass` — the flow Docker Hub and most registries use.
fn start_token_front(upstream: u16) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || front_handle(stream, port, upstream));
        }
    });
    port
}

fn front_handle(mut client: TcpStream, port: u16, upstream: u16) {
    let mut head = Vec::new();
    let mut chunk = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match client.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&chunk[..n]),
        }
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let mut lines = head.split("\r\n").filter(|l| !l.is_empty());
    let request_line = lines.next().unwrap_or_default().to_owned();
    let path = request_line
        .split(' ')
        .nth(1)
        .unwrap_or_default()
        .to_owned();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let auth = headers
        .iter()
        .find(|(k, _)| k == "authorization")
        .map(|(_, v)| v.as_str());
    let reply = |client: &mut TcpStream, status: &str, extra: &str, body: &str| {
        let _ = write!(
            client,
            "HTTP/1.1 {status}\r\n{extra}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
    };
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("user:pass")
    );
    if path.starts_with("/token") {
        let scoped =
            path.contains("scope=repository%3Ateam%2Fapp%3Apull") && path.contains("service=front");
        if auth == Some(basic.as_str()) && scoped {
            reply(&mut client, "200 OK", "", r#"{"token":"tok123"}"#);
        } else {
            reply(
                &mut client,
                "401 Unauthorized",
                "",
                r#"{"details":"bad credentials"}"#,
            );
        }
    } else if auth != Some("Bearer tok123") {
        let challenge = format!(
            "WWW-Authenticate: Bearer realm=\"http://127.0.0.1:{port}/token\",service=\"front\",scope=\"repository:team/app:pull\"\r\n"
        );
        reply(
            &mut client,
            "401 Unauthorized",
            &challenge,
            r#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#,
        );
    } else {
        let Ok(mut up) = TcpStream::connect(("127.0.0.1", upstream)) else {
            return;
        };
        let mut request = format!("{request_line}\r\n");
        for (k, v) in &headers {
            if k != "authorization" && k != "connection" {
                request.push_str(&format!("{k}: {v}\r\n"));
            }
        }
        request.push_str("Connection: close\r\n\r\n");
        if up.write_all(request.as_bytes()).is_ok() {
            let _ = std::io::copy(&mut up, &mut client);
        }
    }
}

#[test]
fn bearer_token_flow_with_docker_credentials() {
    let (registry, dir, index_digest) = published_app();
    let front = start_token_front(registry.port());
    let r: Reference = format!("127.0.0.1:{front}/team/app:v1").parse().unwrap();

    // Without credentials the token service refuses, and the error says how to log in.
    let no_creds = dir.path().join("no-creds");
    fs::create_dir(&no_creds).unwrap();
    let store = Store::open(dir.path().join("pulled")).unwrap();
    let options = |docker_config: PathBuf| PullOptions {
        quiet: true,
        docker_config: Some(docker_config),
        ..PullOptions::default()
    };
    let err = store
        .pull(&r, Arch::X86_64, &options(no_creds))
        .unwrap_err();
    let cause = std::error::Error::source(&err).unwrap().to_string();
    assert!(cause.contains("docker login"), "{cause}");

    // With them (Docker's config.json format), the pull goes through.
    let creds = dir.path().join("creds");
    fs::create_dir(&creds).unwrap();
    let auth = base64::engine::general_purpose::STANDARD.encode("user:pass");
    fs::write(
        creds.join("config.json"),
        format!(r#"{{"auths":{{"127.0.0.1:{front}":{{"auth":"{auth}"}}}}}}"#),
    )
    .unwrap();
    let desc = store.pull(&r, Arch::X86_64, &options(creds)).unwrap();
    assert_eq!(desc.digest().as_ref(), index_digest.as_str());
    let image = store.image(&r, Arch::X86_64).unwrap();
    assert_eq!(image.label("arch"), Some("x86_64"));
    assert_eq!(layer_files(&store, &image)[0].1, b"x86_64".to_vec());
}

#[test]
fn push_a_multi_platform_image_then_read_it_back() {
    let registry = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    let (src, src_ref, index_digest) = source(dir.path());
    let options = PullOptions {
        quiet: true,
        ..PullOptions::default()
    };
    let dest: Reference = format!("{}/team/pushed:v1", registry.host())
        .parse()
        .unwrap();
    let pushed = src.push(&src_ref, &dest, &options).unwrap();
    assert_eq!(pushed.digest().as_ref(), index_digest.as_str());

    // A third-party client sees the same index, byte for byte.
    let out = std::process::Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false"])
        .arg(format!("docker://{dest}"))
        .output()
        .expect("skopeo runs (scripts/setup.sh installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(Digest::of(&out.stdout), index_digest);

    // Both platforms pull back into a fresh store with their content.
    let back = Store::open(dir.path().join("back")).unwrap();
    for arch in Arch::ALL {
        back.pull(&dest, arch, &options).unwrap();
        let image = back.image(&dest, arch).unwrap();
        assert_eq!(image.label("arch"), Some(arch.uname()));
        assert!(!layer_files(&back, &image).is_empty());
    }

    // A second push sends no blob again and still succeeds; a push by a wrong digest fails.
    src.push(&src_ref, &dest, &options).unwrap();
    let wrong: Reference = format!("{}/team/pushed@{}", registry.host(), Digest::of(b"other"))
        .parse()
        .unwrap();
    let err = src.push(&src_ref, &wrong, &options).unwrap_err();
    assert!(err.to_string().starts_with("cannot push to"), "{err}");
    let cause = std::error::Error::source(&err)
        .map(ToString::to_string)
        .unwrap_or_default();
    assert!(
        cause.contains(&format!("expected {}", Digest::of(b"other"))),
        "{cause}"
    );
}

/// `--mirror`: a pull of `docker.io/…` (or any registry) goes to the mirror, the image keeps its
/// own name in the store, and a registry without a mirror is asked directly.
#[test]
fn pulls_go_through_a_mirror() {
    // The mirror holds Docker Hub's repository path, as a pull-through cache does.
    let (registry, dir, index_digest) = published_app();
    let store = Store::open(dir.path().join("pulled")).unwrap();
    let hub: Reference = "team/app:v1".parse().unwrap();
    let with = |mirrors: &[&str]| PullOptions {
        quiet: true,
        mirrors: keel_image::Mirrors::new(mirrors.iter().map(|m| m.parse().unwrap())),
        ..PullOptions::default()
    };
    let mirror = format!("http://{}/", registry.host());
    let desc = store
        .pull(&hub, Arch::X86_64, &with(&[&format!("docker.io={mirror}")]))
        .unwrap();
    assert_eq!(desc.digest().as_ref(), index_digest.as_str());
    assert_eq!(hub.to_string(), "docker.io/team/app:v1");
    let image = store.image(&hub, Arch::X86_64).unwrap();
    assert_eq!(image.label("arch"), Some("x86_64"));

    // A mirror for every registry, for a name whose registry does not exist.
    let nowhere: Reference = "registry.invalid/team/app:v1".parse().unwrap();
    store
        .pull(&nowhere, Arch::X86_64, &with(&[&mirror]))
        .unwrap();
    assert_eq!(
        store.resolve(&nowhere).unwrap().unwrap().digest(),
        desc.digest()
    );
    // A mirror for another registry does not apply: registry.invalid is asked, and fails.
    let err = store
        .pull(
            &nowhere,
            Arch::Aarch64,
            &with(&[&format!("ghcr.io={mirror}")]),
        )
        .unwrap_err();
    let chain = format!("{err}: {}", std::error::Error::source(&err).unwrap());
    assert!(chain.contains("https://registry.invalid/v2/"), "{chain}");

    // Plain http to a mirror that is not on loopback needs --insecure-registry.
    let err = store
        .pull(
            &hub,
            Arch::Aarch64,
            &with(&["docker.io=http://mirror.invalid:5000"]),
        )
        .unwrap_err();
    let chain = format!("{err}: {}", std::error::Error::source(&err).unwrap());
    assert!(
        chain.contains("mirror http://mirror.invalid:5000")
            && chain.contains("--insecure-registry"),
        "{chain}"
    );

    // A mirror that serves another image under a pinned digest is caught by the digest.
    let other: Reference = format!("docker.io/team/app@sha256:{}", "ab".repeat(32))
        .parse()
        .unwrap();
    let err = store
        .pull(
            &other,
            Arch::X86_64,
            &with(&[&format!("docker.io={mirror}")]),
        )
        .unwrap_err();
    assert!(matches!(err, Error::Pull { .. }), "{err}");
    assert!(store.resolve(&other).unwrap().is_none());
}
