//! Pulls from hostile or broken registries: an in-process HTTP server on loopback that serves
//! an image from a store, and can trickle a manifest or blob one byte at a time (as a registry
//! that sends a byte just before every read timeout would), or serve an image whose config lies
//! about its layers.

use keel_image::oci::ImageConfigurationBuilder;
use keel_image::{
    Arch, BlobProgress, Digest, Error, PullOptions, PullProgress, Reference, RegistryError, Store,
};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keel_testutil::tar_with;

/// What the fake registry trickles (one byte every 100 ms) instead of sending at once.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Trickle {
    Nothing,
    Manifest,
    /// The blob with this digest hex.
    Blob(&'static str),
    /// Sends the headers of the blob with this digest hex, then nothing.
    Stall(&'static str),
}

/// A registry on 127.0.0.1 serving `repo:1` from the blobs directory of `store`, whose
/// manifest is `manifest`. Returns its port.
fn serve(store: PathBuf, manifest: Vec<u8>, trickle: Arc<Mutex<Option<String>>>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let (store, manifest, trickle) = (store.clone(), manifest.clone(), trickle.clone());
            std::thread::spawn(move || handle(stream, &store, &manifest, &trickle));
        }
    });
    port
}

fn handle(mut client: TcpStream, store: &Path, manifest: &[u8], trickle: &Mutex<Option<String>>) {
    let mut head = Vec::new();
    let mut chunk = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match client.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&chunk[..n]),
        }
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let path = head.split(' ').nth(1).unwrap_or_default().to_owned();
    let slow = trickle.lock().unwrap().clone();
    let (body, content_type, key) = if path.starts_with("/v2/repo/manifests/") {
        (
            manifest.to_vec(),
            "application/vnd.oci.image.manifest.v1+json",
            "manifest".to_owned(),
        )
    } else if let Some(digest) = path.strip_prefix("/v2/repo/blobs/sha256:") {
        match std::fs::read(store.join("blobs/sha256").join(digest)) {
            Ok(data) => (data, "application/octet-stream", digest.to_owned()),
            Err(_) => {
                let _ = client.write_all(
                    b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
                return;
            }
        }
    } else {
        let _ = client
            .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        return;
    };
    let header = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    if client.write_all(header.as_bytes()).is_err() {
        return;
    }
    if slow.as_deref() == Some(format!("stall:{key}").as_str()) {
        // Hold the connection open, silent, until the client hangs up (or a minute passes).
        let _ = client.set_read_timeout(Some(Duration::from_secs(60)));
        let _ = client.read(&mut chunk);
        return;
    }
    if slow.as_deref() == Some(key.as_str()) {
        // One byte at a time, never fast enough to finish, always before a read times out;
        // gives up when the client hangs up (or after a minute).
        let until = Instant::now() + Duration::from_secs(60);
        for b in &body {
            if Instant::now() > until || client.write_all(&[*b]).is_err() {
                return;
            }
            let _ = client.flush();
            std::thread::sleep(Duration::from_millis(100));
        }
    } else {
        let _ = client.write_all(&body);
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    src: Store,
    store: Store,
    /// The fake registry's `repo:1`.
    remote: Reference,
    trickle: Arc<Mutex<Option<String>>>,
    /// Config digest, then layer digests.
    blobs: Vec<(Digest, u64)>,
}

impl Fixture {
    /// A source image of two layers (one of 200 KiB), served by a fake registry, and an empty
    /// store to pull into. With `lie`, the config's first diff_id is wrong.
    fn new(lie: bool) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let src = Store::open(dir.path().join("src")).unwrap();
        let layers = [
            tar_with("etc/hello", b"hello"),
            tar_with(
                "big",
                &(0..200 * 1024u32)
                    .map(|i| (i * 7 % 251) as u8)
                    .collect::<Vec<_>>(),
            ),
        ];
        let mut config = ImageConfigurationBuilder::default().build().unwrap();
        let desc = if lie {
            // Written honestly, then the config replaced by one that claims another first layer.
            let honest = src
                .write_image(Arch::X86_64, config.clone(), &layers)
                .unwrap();
            let image = image_of(&src, &honest);
            config = image.config.clone();
            let mut diff_ids = config.rootfs().diff_ids().clone();
            diff_ids[0] = Digest::of(b"not this layer").to_string();
            config.rootfs_mut().set_diff_ids(diff_ids);
            let config_data = serde_json::to_vec(&config).unwrap();
            let config_digest = src.put_blob(&config_data).unwrap();
            let mut manifest = image.manifest.clone();
            manifest.set_config(keel_image::oci::Descriptor::new(
                keel_image::oci::MediaType::ImageConfig,
                config_data.len() as u64,
                config_digest.to_oci(),
            ));
            let data = serde_json::to_vec(&manifest).unwrap();
            let digest = src.put_blob(&data).unwrap();
            keel_image::oci::Descriptor::new(
                keel_image::oci::MediaType::ImageManifest,
                data.len() as u64,
                digest.to_oci(),
            )
        } else {
            src.write_image(Arch::X86_64, config, &layers).unwrap()
        };
        let image = image_of(&src, &desc);
        let manifest_digest: Digest = desc.digest().as_ref().parse().unwrap();
        let manifest = src.read_blob(&manifest_digest).unwrap();
        let mut blobs = vec![image.manifest.config().clone()];
        blobs.extend(image.layers().iter().cloned());
        let blobs = blobs
            .iter()
            .map(|d| (d.digest().as_ref().parse().unwrap(), d.size()))
            .collect();
        let trickle = Arc::new(Mutex::new(None));
        let port = serve(src.path().to_path_buf(), manifest, trickle.clone());
        let store = Store::open(dir.path().join("pulled")).unwrap();
        Fixture {
            _dir: dir,
            src,
            store,
            remote: format!("127.0.0.1:{port}/repo:1").parse().unwrap(),
            trickle,
            blobs,
        }
    }

    fn trickle(&self, what: Trickle) {
        *self.trickle.lock().unwrap() = match what {
            Trickle::Nothing => None,
            Trickle::Manifest => Some("manifest".into()),
            Trickle::Blob(hex) => Some(hex.into()),
            Trickle::Stall(hex) => Some(format!("stall:{hex}")),
        };
    }
}

fn image_of(store: &Store, desc: &keel_image::oci::Descriptor) -> keel_image::Image {
    let r: Reference = format!("x@{}", desc.digest()).parse().unwrap();
    store.image(&r, Arch::X86_64).unwrap()
}

/// One progress report: digest, index, count, received, size.
type Event = (String, usize, usize, u64, u64);

/// Records what a pull reports.
#[derive(Default)]
struct Recorder {
    events: Mutex<Vec<Event>>,
    finished: Mutex<usize>,
}

impl PullProgress for Recorder {
    fn blob(&self, p: &BlobProgress<'_>) {
        assert!(p.reference.ends_with("/repo:1"), "{}", p.reference);
        self.events.lock().unwrap().push((
            p.digest.to_string(),
            p.index,
            p.count,
            p.received,
            p.size,
        ));
    }

    fn finish(&self) {
        *self.finished.lock().unwrap() += 1;
    }
}

fn options(recorder: &Arc<Recorder>) -> PullOptions {
    PullOptions {
        quiet: true,
        progress: Some(recorder.clone()),
        ..PullOptions::default()
    }
}

/// The deadline error at the end of `err`'s chain.
fn deadline(err: &Error) -> (&RegistryError, String) {
    let Error::Pull { source, .. } = err else {
        panic!("not a pull error: {err:?}")
    };
    assert!(
        matches!(source, RegistryError::Deadline { .. }),
        "{source:?}"
    );
    (source, format!("{err}: {source}"))
}

#[test]
fn a_trickling_blob_is_cut_off_at_its_deadline() {
    let f = Fixture::new(false);
    let (layer, size) = f.blobs[2].clone();
    let hex: &'static str = Box::leak(layer.hex().to_owned().into_boxed_str());
    f.trickle(Trickle::Blob(hex));
    let recorder = Arc::new(Recorder::default());
    let opts = PullOptions {
        blob_deadline: Some(Duration::from_secs(1)),
        ..options(&recorder)
    };
    let started = Instant::now();
    let err = f.store.pull(&f.remote, Arch::X86_64, &opts).unwrap_err();
    let took = started.elapsed();
    assert!(took < Duration::from_secs(10), "took {took:?}");
    let (cause, chain) = deadline(&err);
    let RegistryError::Deadline { received, .. } = cause else {
        unreachable!()
    };
    let received = received.unwrap();
    assert!(received > 0 && received < 30, "{received} bytes");
    assert!(
        chain.starts_with(&format!(
            "cannot pull {}: blob {layer} did not arrive within its deadline of 1s ({received} of {size} bytes came); a slow registry can be given more time with KEEL_PULL_TIMEOUT=SECONDS",
            f.remote
        )),
        "{chain}"
    );
    // The progress shown was ended, nothing was tagged, and the blob was not stored.
    assert_eq!(*recorder.finished.lock().unwrap(), 1);
    assert!(f.store.resolve(&f.remote).unwrap().is_none());
    assert!(!f.store.has_blob(&layer));
}

#[test]
fn a_silent_blob_is_cut_off_at_its_deadline() {
    // No byte at all after the headers: the socket read itself must give up at the deadline.
    let f = Fixture::new(false);
    let (layer, size) = f.blobs[2].clone();
    let hex: &'static str = Box::leak(layer.hex().to_owned().into_boxed_str());
    f.trickle(Trickle::Stall(hex));
    let recorder = Arc::new(Recorder::default());
    let opts = PullOptions {
        blob_deadline: Some(Duration::from_secs(1)),
        ..options(&recorder)
    };
    let started = Instant::now();
    let err = f.store.pull(&f.remote, Arch::X86_64, &opts).unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(10));
    let (_, chain) = deadline(&err);
    assert!(
        chain.contains(&format!(
            "blob {layer} did not arrive within its deadline of 1s (0 of {size} bytes came)"
        )),
        "{chain}"
    );
}

#[test]
fn a_trickling_manifest_is_cut_off_at_the_pull_deadline() {
    let f = Fixture::new(false);
    f.trickle(Trickle::Manifest);
    let recorder = Arc::new(Recorder::default());
    let opts = PullOptions {
        pull_deadline: Some(Duration::from_millis(1500)),
        ..options(&recorder)
    };
    let started = Instant::now();
    let err = f.store.pull(&f.remote, Arch::X86_64, &opts).unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(10));
    let (_, chain) = deadline(&err);
    assert!(
        chain.ends_with(
            "/v2/repo/manifests/1 did not arrive within the pull's deadline of 1.5s; a slow registry can be given more time with KEEL_PULL_TIMEOUT=SECONDS"
        ),
        "{chain}"
    );
    // No blob was reached, so no progress was shown.
    assert!(recorder.events.lock().unwrap().is_empty());
}

#[test]
fn the_pull_deadline_also_bounds_each_blob() {
    let f = Fixture::new(false);
    let (layer, _) = f.blobs[2].clone();
    let hex: &'static str = Box::leak(layer.hex().to_owned().into_boxed_str());
    f.trickle(Trickle::Blob(hex));
    let recorder = Arc::new(Recorder::default());
    let opts = PullOptions {
        pull_deadline: Some(Duration::from_secs(1)),
        ..options(&recorder)
    };
    let err = f.store.pull(&f.remote, Arch::X86_64, &opts).unwrap_err();
    let (_, chain) = deadline(&err);
    assert!(
        chain.contains(&format!(
            "blob {layer} did not arrive within the pull's deadline of 1s ("
        )),
        "{chain}"
    );
}

#[test]
fn a_pull_reports_the_progress_of_each_blob() {
    let f = Fixture::new(false);
    f.trickle(Trickle::Nothing);
    let recorder = Arc::new(Recorder::default());
    f.store
        .pull(&f.remote, Arch::X86_64, &options(&recorder))
        .unwrap();
    let events = recorder.events.lock().unwrap().clone();
    assert_eq!(*recorder.finished.lock().unwrap(), 1);
    // Every blob (config and two layers, in manifest order) starts at 0 and ends at its size,
    // never going backwards.
    let count = f.blobs.len();
    for (i, (digest, size)) in f.blobs.iter().enumerate() {
        let mine: Vec<_> = events
            .iter()
            .filter(|e| e.0 == digest.to_string())
            .collect();
        assert!(mine.len() >= 2, "{digest}: {mine:?}");
        assert!(
            mine.iter()
                .all(|e| e.1 == i + 1 && e.2 == count && e.4 == *size)
        );
        assert_eq!(mine[0].3, 0);
        assert_eq!(mine.last().unwrap().3, *size);
        assert!(mine.windows(2).all(|w| w[0].3 <= w[1].3));
    }
    // The big layer came in more than one piece.
    let big = f.blobs[2].0.to_string();
    assert!(events.iter().filter(|e| e.0 == big).count() > 2);

    // Pulled again, nothing is downloaded and nothing is shown.
    let again = Arc::new(Recorder::default());
    f.store
        .pull(&f.remote, Arch::X86_64, &options(&again))
        .unwrap();
    assert!(again.events.lock().unwrap().is_empty());
    let _ = &f.src;
}

#[test]
fn a_pulled_image_whose_config_lies_fails_when_its_layer_is_read() {
    let f = Fixture::new(true);
    let recorder = Arc::new(Recorder::default());
    // The pull itself only checks blob digests, which all match.
    f.store
        .pull(&f.remote, Arch::X86_64, &options(&recorder))
        .unwrap();
    let image = f.store.image(&f.remote, Arch::X86_64).unwrap();
    let mut first = f.store.open_image_layer(&image, 0).unwrap();
    let err = std::io::copy(&mut first, &mut std::io::sink()).unwrap_err();
    let m = keel_image::DiffIdMismatch::find(&err).expect("a DiffIdMismatch");
    assert_eq!(m.image, f.remote.to_string());
    assert_eq!(m.layer, f.blobs[1].0);
    assert_eq!(m.expected, Digest::of(b"not this layer").to_string());
    assert_eq!(m.actual, Digest::of(&tar_with("etc/hello", b"hello")));
    assert!(
        err.to_string().starts_with(&format!(
            "layer {} of {} does not match its image config: rootfs.diff_ids says {}",
            f.blobs[1].0, f.remote, m.expected
        )),
        "{err}"
    );
    // The honest second layer reads through.
    let mut second = f.store.open_image_layer(&image, 1).unwrap();
    std::io::copy(&mut second, &mut std::io::sink()).unwrap();
    second.finish().unwrap();
}
