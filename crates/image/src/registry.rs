//! Pulling from and pushing to registries: a small synchronous OCI distribution (v2) client.
//!
//! Supports anonymous and Basic access, the Bearer token flow (`WWW-Authenticate: Bearer
//! realm=…,service=…,scope=…`) with credentials from Docker's `config.json`, OCI and Docker v2
//! manifests and indexes. Everything downloaded is verified against its digest before it is
//! stored; blobs already in the store (and intact) are not downloaded again.

use crate::arch::Arch;
use crate::attestation;
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::mirror::Mirrors;
use crate::reference::Reference;
use crate::store::{self, Kind, Store};
use base64::Engine as _;
use oci_spec::image::{Descriptor, ImageIndex, ImageManifest, MediaType};
use std::collections::HashMap;
use std::fmt;
use std::io::{self, IsTerminal, Read};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The manifest types keel accepts, most preferred first.
const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
                      application/vnd.oci.image.manifest.v1+json, \
                      application/vnd.docker.distribution.manifest.list.v2+json, \
                      application/vnd.docker.distribution.manifest.v2+json";
/// Manifests and indexes larger than this are refused (the registry default is 4 MiB).
const MANIFEST_LIMIT: u64 = 8 * 1024 * 1024;

/// The environment variable that sets the deadline of every pull and of every blob in it, in
/// seconds (`KEEL_PULL_TIMEOUT=3600`), replacing the size-scaled defaults.
pub const PULL_TIMEOUT_ENV: &str = "KEEL_PULL_TIMEOUT";

/// The slowest transfer rate the default deadlines allow for: 64 KiB/s (about 0.5 Mbit/s).
///
/// Why a rate and not a fixed time per blob: layers range from a few KiB to several GiB, so a
/// fixed deadline (say 10 minutes) is either too short for a 2 GiB layer on an ordinary link or
/// lets a hostile registry hold a small blob for the whole time. A deadline of
/// [`BLOB_ALLOWANCE`] plus the blob's size at this rate lets an honest but slow registry finish,
/// and cuts off a registry that trickles bytes to dodge the per-read timeout once it has taken
/// as long as that slow registry would.
pub const MIN_RATE: u64 = 64 * 1024;
/// The fixed part of a blob's default deadline: connection, authentication, redirects to a CDN.
pub const BLOB_ALLOWANCE: Duration = Duration::from_secs(120);
/// The fixed part of a pull's default deadline: tokens, manifests and indexes (the blobs' own
/// deadlines are added to it once their sizes are known).
pub const MANIFEST_ALLOWANCE: Duration = Duration::from_secs(300);

/// How to pull.
#[derive(Clone)]
pub struct PullOptions {
    /// Use plain HTTP even for a non-loopback registry (loopback registries always use HTTP).
    pub insecure: bool,
    /// Never show progress (by default it is shown when stderr is a terminal and the log level
    /// is info or more verbose).
    pub quiet: bool,
    /// The directory holding Docker's `config.json` with registry credentials; by default
    /// `$DOCKER_CONFIG`, else `~/.docker`.
    pub docker_config: Option<PathBuf>,
    /// The most the download of one blob may take, whatever its size. `None`:
    /// [`BLOB_ALLOWANCE`] plus the blob's size at [`MIN_RATE`]. The default options take it
    /// from `KEEL_PULL_TIMEOUT` when that is set.
    pub blob_deadline: Option<Duration>,
    /// The most a whole pull may take, manifests included. `None`: [`MANIFEST_ALLOWANCE`] for
    /// the manifests, plus every missing blob's deadline once their sizes are known. The
    /// default options take it from `KEEL_PULL_TIMEOUT` when that is set.
    pub pull_deadline: Option<Duration>,
    /// Where a pull reports its progress. `None`: a line on stderr, rewritten in place, when
    /// stderr is a terminal, `quiet` is off and info messages are logged; nothing otherwise.
    pub progress: Option<Arc<dyn PullProgress>>,
    /// Mirrors pulls go to instead of their registries (`--mirror`); pushes never use them.
    pub mirrors: Mirrors,
}

impl Default for PullOptions {
    /// No TLS exceptions, progress on a terminal, default credentials, and the deadlines of
    /// `KEEL_PULL_TIMEOUT` if it is set (else the size-scaled defaults).
    fn default() -> Self {
        let deadline = deadline_from_env();
        PullOptions {
            insecure: false,
            quiet: false,
            docker_config: None,
            blob_deadline: deadline,
            pull_deadline: deadline,
            progress: None,
            mirrors: Mirrors::default(),
        }
    }
}

impl fmt::Debug for PullOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PullOptions")
            .field("insecure", &self.insecure)
            .field("quiet", &self.quiet)
            .field("docker_config", &self.docker_config)
            .field("blob_deadline", &self.blob_deadline)
            .field("pull_deadline", &self.pull_deadline)
            .field("progress", &self.progress.as_ref().map(|_| "…"))
            .field("mirrors", &self.mirrors)
            .finish()
    }
}

/// `KEEL_PULL_TIMEOUT` as a duration; an unusable value is ignored with a warning.
fn deadline_from_env() -> Option<Duration> {
    let value = std::env::var(PULL_TIMEOUT_ENV).ok()?;
    match parse_deadline(&value) {
        Ok(d) => d,
        Err(()) => {
            log::warn!(
                "ignoring {PULL_TIMEOUT_ENV}={value:?}: it must be a positive number of seconds"
            );
            None
        }
    }
}

/// A deadline in seconds; empty is none.
fn parse_deadline(value: &str) -> std::result::Result<Option<Duration>, ()> {
    let value = value.trim();
    if value.is_empty() {
        return Ok(None);
    }
    match value.parse::<u64>() {
        Ok(secs) if secs > 0 => Ok(Some(Duration::from_secs(secs))),
        _ => Err(()),
    }
}

/// The default deadline of a blob of `size` bytes: [`BLOB_ALLOWANCE`] plus `size` at
/// [`MIN_RATE`].
pub fn default_blob_deadline(size: u64) -> Duration {
    BLOB_ALLOWANCE.saturating_add(Duration::from_secs(size / MIN_RATE))
}

/// One blob's download, as a pull reports it to a [`PullProgress`].
#[derive(Debug, Clone, Copy)]
pub struct BlobProgress<'a> {
    /// The image being pulled.
    pub reference: &'a str,
    /// The blob.
    pub digest: &'a Digest,
    /// Which of the blobs to download this is, from 1.
    pub index: usize,
    /// How many blobs the pull downloads (those already in the store are not counted).
    pub count: usize,
    /// The bytes of this blob received so far.
    pub received: u64,
    /// The blob's size, from its manifest.
    pub size: u64,
}

/// Where a pull reports progress: called with `received` 0 when a blob starts, then after every
/// chunk that arrives; [`PullProgress::finish`] once the pull ends, whether it worked or not.
pub trait PullProgress: Send + Sync {
    /// A blob's download advanced (or started).
    fn blob(&self, progress: &BlobProgress<'_>);
    /// The pull is over.
    fn finish(&self) {}
}

/// Whether a pull with no [`PullOptions::progress`] shows it: on a terminal, when not quiet,
/// and when info messages are logged (`-q` raises the level to warnings).
fn shows_progress(quiet: bool, terminal: bool, info_logged: bool) -> bool {
    !quiet && terminal && info_logged
}

/// Progress on stderr: one line, rewritten in place and at most a few times a second (by
/// indicatif), cleared when the pull ends.
struct TerminalProgress {
    bar: indicatif::ProgressBar,
    current: Mutex<usize>,
}

impl TerminalProgress {
    fn new() -> TerminalProgress {
        let bar = indicatif::ProgressBar::new(0);
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{bytes:>10}/{total_bytes:<10} {bytes_per_sec:>12} {wide_msg}",
        ) {
            bar.set_style(style);
        }
        TerminalProgress {
            bar,
            current: Mutex::new(0),
        }
    }
}

impl PullProgress for TerminalProgress {
    fn blob(&self, p: &BlobProgress<'_>) {
        if let Ok(mut current) = self.current.lock()
            && *current != p.index
        {
            *current = p.index;
            self.bar.reset();
            self.bar.set_length(p.size);
            let short = p.digest.hex().get(..12).unwrap_or_default();
            self.bar.set_message(format!(
                "{} blob {}/{} {short}",
                p.reference, p.index, p.count
            ));
        }
        self.bar.set_position(p.received);
    }

    fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

/// Calls [`PullProgress::finish`] when dropped, however the pull ends.
struct FinishOnDrop(Arc<dyn PullProgress>);

impl Drop for FinishOnDrop {
    fn drop(&mut self) {
        self.0.finish();
    }
}

/// A deadline a request must meet.
#[derive(Debug, Clone, Copy)]
struct Limit {
    at: Instant,
    limit: Duration,
    /// The whole pull's deadline rather than one blob's.
    whole_pull: bool,
}

impl Limit {
    fn from_now(limit: Duration, whole_pull: bool) -> Limit {
        Limit::from(Instant::now(), limit, whole_pull)
    }

    /// `limit` after `start` (capped at a year, so absurd settings cannot overflow).
    fn from(start: Instant, limit: Duration, whole_pull: bool) -> Limit {
        let limit = limit.min(Duration::from_secs(365 * 24 * 3600));
        Limit {
            at: start + limit,
            limit,
            whole_pull,
        }
    }

    fn scope(&self) -> &'static str {
        if self.whole_pull {
            "the pull's deadline"
        } else {
            "its deadline"
        }
    }
}

/// The earlier of two optional deadlines.
fn earliest(a: Option<Limit>, b: Option<Limit>) -> Option<Limit> {
    match (a, b) {
        (Some(a), Some(b)) => Some(if b.at < a.at { b } else { a }),
        (a, b) => a.or(b),
    }
}

/// A blob download cut off by its deadline; carried in the `io::Error` of [`Timed`].
#[derive(Debug, thiserror::Error)]
#[error("deadline of {} passed after {received} bytes", human(limit.limit))]
struct TimedOut {
    limit: Limit,
    received: u64,
}

/// A blob's body: counts what arrives, reports progress, and fails once `limit` has passed
/// (the socket reads themselves are bounded by the same deadline, see [`Client::send`]).
struct Timed<'a, R> {
    inner: R,
    limit: Limit,
    received: u64,
    progress: Option<(&'a dyn PullProgress, BlobProgress<'a>)>,
}

impl<R: Read> Read for Timed<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let timed_out = |received| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                TimedOut {
                    limit: self.limit,
                    received,
                },
            )
        };
        if Instant::now() >= self.limit.at {
            return Err(timed_out(self.received));
        }
        match self.inner.read(buf) {
            Ok(n) => {
                self.received += u64::try_from(n).unwrap_or(u64::MAX);
                if let Some((sink, p)) = &mut self.progress {
                    p.received = self.received;
                    sink.blob(p);
                }
                Ok(n)
            }
            Err(_) if Instant::now() >= self.limit.at => Err(timed_out(self.received)),
            Err(e) => Err(e),
        }
    }
}

/// A duration as people read it: `1.5s`, `45s`, `20m`, `1h30m`.
fn human(d: Duration) -> String {
    let secs = d.as_secs();
    if secs < 60 {
        if d.subsec_millis() == 0 {
            format!("{secs}s")
        } else {
            format!("{:.1}s", d.as_secs_f64())
        }
    } else if secs < 3600 {
        match secs % 60 {
            0 => format!("{}m", secs / 60),
            s => format!("{}m{s}s", secs / 60),
        }
    } else {
        match (secs % 3600) / 60 {
            0 => format!("{}h", secs / 3600),
            m => format!("{}h{m}m", secs / 3600),
        }
    }
}

/// What can go wrong talking to a registry.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryError {
    /// The request could not be made or its answer not read.
    #[error("request to {url} failed")]
    Http {
        /// The URL.
        url: String,
        /// The cause.
        #[source]
        source: Box<ureq::Error>,
    },
    /// The registry answered with an error status.
    #[error("{url} answered HTTP {status}{}", if message.is_empty() { String::new() } else { format!(": {message}") })]
    Status {
        /// The URL.
        url: String,
        /// The HTTP status.
        status: u16,
        /// The registry's error message, if any.
        message: String,
    },
    /// An SBOM attestation could not be kept.
    #[error("cannot keep the {what}")]
    Attestation {
        /// The manifest or statement.
        what: String,
        /// The cause.
        #[source]
        source: Box<Error>,
    },
    /// An SBOM statement is larger than keel reads.
    #[error("the SBOM statement {digest} is {size} bytes, more than the {} MiB keel reads", attestation::MAX_STATEMENT >> 20)]
    AttestationTooLarge {
        /// The statement's digest.
        digest: String,
        /// Its declared size.
        size: u64,
    },
    /// A `--mirror` cannot be used.
    #[error("cannot pull through the mirror {url}: {reason}")]
    Mirror {
        /// The mirror's URL.
        url: String,
        /// Why.
        reason: &'static str,
    },
    /// The registry refused access.
    #[error(
        "{registry} refused access to {url}; if the image is private, log in with `docker login {registry}` (keel reads ~/.docker/config.json or $DOCKER_CONFIG/config.json)"
    )]
    Unauthorized {
        /// The registry.
        registry: String,
        /// The URL.
        url: String,
    },
    /// The registry's authentication challenge could not be followed.
    #[error("cannot authenticate with {registry}: {reason}")]
    Auth {
        /// The registry.
        registry: String,
        /// What went wrong.
        reason: String,
    },
    /// Docker's credential file could not be read.
    #[error("cannot read registry credentials from {}: {reason}", path.display())]
    Credentials {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Downloaded content does not match the digest it was asked for by.
    #[error("{what} from the registry has digest {actual}, expected {expected}")]
    DigestMismatch {
        /// What was downloaded.
        what: String,
        /// The digest asked for.
        expected: Digest,
        /// What the content hashes to (or a size description).
        actual: String,
    },
    /// A platform of the image to push is not in the store.
    #[error("{reference}: the {what} it lists is not in the store; pull every platform first")]
    Incomplete {
        /// The image.
        reference: String,
        /// What is missing.
        what: String,
    },
    /// The registry's upload answer had no `Location` to upload to.
    #[error("{url} started an upload but gave no Location header")]
    NoUploadLocation {
        /// The URL.
        url: String,
    },
    /// The manifest type is not supported.
    #[error(
        "unsupported manifest type {0:?} (Docker schema 1 images are not supported; re-push the image with a current client)"
    )]
    UnsupportedManifest(String),
    /// A download did not finish within its deadline (see [`PullOptions::blob_deadline`]).
    #[error(
        "{what} did not arrive within {scope} of {}{}; a slow registry can be given more time with {PULL_TIMEOUT_ENV}=SECONDS",
        human(*limit),
        match (received, expected) {
            (Some(r), Some(e)) => format!(" ({r} of {e} bytes came)"),
            (Some(r), None) => format!(" ({r} bytes came)"),
            _ => String::new(),
        }
    )]
    Deadline {
        /// What was being downloaded ("blob sha256:…", a URL).
        what: String,
        /// "its deadline" (the blob's) or "the pull's deadline".
        scope: &'static str,
        /// The deadline.
        limit: Duration,
        /// The bytes that arrived, when known.
        received: Option<u64>,
        /// The bytes expected, when known.
        expected: Option<u64>,
    },
    /// A manifest or index could not be parsed.
    #[error("invalid {what} from the registry")]
    Invalid {
        /// Which document.
        what: String,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
}

type RResult<T> = std::result::Result<T, RegistryError>;

impl Store {
    /// Pull `reference` for `arch` from its registry into the store and tag it.
    ///
    /// For a multi-platform image the index is kept, plus `arch`'s manifest, config and layers.
    /// Returns the descriptor the reference resolved to (the index for a multi-platform image),
    /// so that resolving `name@digest` later finds the same thing.
    pub fn pull(
        &self,
        reference: &Reference,
        arch: Arch,
        options: &PullOptions,
    ) -> Result<Descriptor> {
        let name = reference.to_string();
        let wrap = |source: RegistryError| Error::Pull {
            reference: name.clone(),
            source,
        };
        // A store whose index.json is unreadable fails before anything is downloaded.
        self.index()?;
        let started = Instant::now();
        let pull_limit = |limit: Duration| Limit::from(started, limit, true);
        let mut client = Client::new(reference, options, Purpose::Pull).map_err(wrap)?;
        client.pull_limit = Some(pull_limit(
            options.pull_deadline.unwrap_or(MANIFEST_ALLOWANCE),
        ));
        let target = match (reference.digest(), reference.tag()) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.to_owned(),
            (None, None) => "latest".to_owned(),
        };
        let (top_data, top_type) = client.manifest(&target).map_err(wrap)?;
        let top_digest = Digest::of(&top_data);
        if let Some(expected) = reference.digest()
            && expected != &top_digest
        {
            return Err(wrap(RegistryError::DigestMismatch {
                what: format!("manifest {target}"),
                expected: expected.clone(),
                actual: top_digest.to_string(),
            }));
        }
        let top = Descriptor::new(top_type.clone(), top_data.len() as u64, top_digest.to_oci());
        // The index's SBOM attestations of the chosen platform.
        let mut attestations = Vec::new();
        let (manifest_data, manifest_digest) = match store::kind_of(&top_type) {
            Kind::Manifest => (top_data.clone(), top_digest.clone()),
            Kind::Index => {
                let index: ImageIndex = serde_json::from_slice(&top_data).map_err(|source| {
                    wrap(RegistryError::Invalid {
                        what: "index".into(),
                        source,
                    })
                })?;
                let chosen = store::select_platform(&name, &index, arch)?;
                let digest = store::descriptor_digest(&chosen)?;
                attestations = index
                    .manifests()
                    .iter()
                    .filter(|m| attestation::attests(m, digest.as_str()))
                    .cloned()
                    .collect();
                let (data, media_type) = client.manifest(digest.as_str()).map_err(wrap)?;
                let actual = Digest::of(&data);
                if actual != digest {
                    return Err(wrap(RegistryError::DigestMismatch {
                        what: format!("linux/{arch} manifest"),
                        expected: digest,
                        actual: actual.to_string(),
                    }));
                }
                if store::kind_of(&media_type) != Kind::Manifest {
                    return Err(wrap(RegistryError::UnsupportedManifest(
                        media_type.to_string(),
                    )));
                }
                (data, digest)
            }
            Kind::Other => {
                return Err(wrap(RegistryError::UnsupportedManifest(
                    top_type.to_string(),
                )));
            }
        };
        let manifest: ImageManifest = serde_json::from_slice(&manifest_data).map_err(|source| {
            wrap(RegistryError::Invalid {
                what: format!("manifest {manifest_digest}"),
                source,
            })
        })?;

        let mut blobs = vec![manifest.config().clone()];
        blobs.extend(manifest.layers().iter().cloned());
        let mut missing = Vec::new();
        for b in &blobs {
            let digest = store::descriptor_digest(b)?;
            if !self.blob_intact(&digest, b.size()) && !missing.iter().any(|(d, _)| d == &digest) {
                missing.push((digest, b.size()));
            }
        }
        let blob_limit = |size: u64| {
            Limit::from_now(
                options
                    .blob_deadline
                    .unwrap_or_else(|| default_blob_deadline(size)),
                false,
            )
        };
        if options.pull_deadline.is_none() {
            let blobs = missing.iter().fold(Duration::ZERO, |sum, (_, size)| {
                sum.saturating_add(
                    options
                        .blob_deadline
                        .unwrap_or_else(|| default_blob_deadline(*size)),
                )
            });
            client.pull_limit = Some(pull_limit(MANIFEST_ALLOWANCE.saturating_add(blobs)));
        }
        let progress: Option<Arc<dyn PullProgress>> = match &options.progress {
            Some(p) => Some(Arc::clone(p)),
            None if !missing.is_empty()
                && shows_progress(
                    options.quiet,
                    io::stderr().is_terminal(),
                    log::log_enabled!(log::Level::Info),
                ) =>
            {
                Some(Arc::new(TerminalProgress::new()))
            }
            None => None,
        };
        let _finish = progress.clone().map(FinishOnDrop);
        for (i, (digest, size)) in missing.iter().enumerate() {
            log::debug!("pulling blob {digest} ({size} bytes) of {name}");
            let limit = earliest(Some(blob_limit(*size)), client.pull_limit)
                .unwrap_or_else(|| blob_limit(*size));
            let report = progress.as_deref().map(|sink| {
                let p = BlobProgress {
                    reference: &name,
                    digest,
                    index: i + 1,
                    count: missing.len(),
                    received: 0,
                    size: *size,
                };
                sink.blob(&p);
                (sink, p)
            });
            let body = client.blob(digest, limit).map_err(wrap)?;
            let body = Timed {
                inner: body,
                limit,
                received: 0,
                progress: report,
            };
            match self.put_verified(body, digest, Some(*size)) {
                Ok(_) => {}
                Err(Error::Corrupt { blob, .. }) => {
                    return Err(wrap(RegistryError::DigestMismatch {
                        what: format!("blob {digest}"),
                        expected: digest.clone(),
                        actual: blob.actual,
                    }));
                }
                Err(Error::Io { source, .. })
                    if source.get_ref().is_some_and(|e| e.is::<TimedOut>()) =>
                {
                    let (limit, received) = source
                        .get_ref()
                        .and_then(|e| e.downcast_ref::<TimedOut>())
                        .map_or((limit, None), |t| (t.limit, Some(t.received)));
                    return Err(wrap(RegistryError::Deadline {
                        what: format!("blob {digest}"),
                        scope: limit.scope(),
                        limit: limit.limit,
                        received,
                        expected: Some(*size),
                    }));
                }
                Err(e) => return Err(e),
            }
        }
        drop(_finish);
        for att in &attestations {
            // Best effort: the image is usable without its SBOM, and `keel build`'s SBOM
            // notes an attestation the store does not hold.
            if let Err(e) = self.pull_attestation(&mut client, att) {
                let cause = std::error::Error::source(&e)
                    .map(|c| format!(": {c}"))
                    .unwrap_or_default();
                log::warn!(
                    "{name}: cannot pull its SBOM attestation {}: {e}{cause}",
                    att.digest()
                );
            }
        }
        // Manifest and index last: a partial pull never leaves a manifest without its blobs.
        self.put_blob(&manifest_data)?;
        if manifest_digest != top_digest {
            self.put_blob(&top_data)?;
        }
        self.tag(reference, top.clone())?;
        log::info!("pulled {name} ({top_digest}) for linux/{arch}");
        Ok(top)
    }

    /// Fetches an attestation manifest and its SPDX statements (each at most
    /// [`attestation::MAX_STATEMENT`]), statements first.
    fn pull_attestation(&self, client: &mut Client, att: &Descriptor) -> RResult<()> {
        let keep = |what: String| {
            move |e: Error| RegistryError::Attestation {
                what,
                source: Box::new(e),
            }
        };
        let digest = store::descriptor_digest(att).map_err(keep("attestation manifest".into()))?;
        let (data, _) = client.manifest(digest.as_str())?;
        let actual = Digest::of(&data);
        if actual != digest {
            return Err(RegistryError::DigestMismatch {
                what: "attestation manifest".into(),
                expected: digest,
                actual: actual.to_string(),
            });
        }
        let manifest: ImageManifest =
            serde_json::from_slice(&data).map_err(|source| RegistryError::Invalid {
                what: format!("attestation manifest {digest}"),
                source,
            })?;
        for layer in manifest.layers().iter().filter(|l| attestation::is_spdx(l)) {
            let layer_digest =
                store::descriptor_digest(layer).map_err(keep("SBOM statement".into()))?;
            if layer.size() > attestation::MAX_STATEMENT {
                return Err(RegistryError::AttestationTooLarge {
                    digest: layer_digest.to_string(),
                    size: layer.size(),
                });
            }
            if self.blob_intact(&layer_digest, layer.size()) {
                continue;
            }
            let limit = Limit::from_now(default_blob_deadline(layer.size()), false);
            let limit = earliest(Some(limit), client.pull_limit).unwrap_or(limit);
            let body = client.blob(&layer_digest, limit)?;
            let body = Timed {
                inner: body,
                limit,
                received: 0,
                progress: None,
            };
            self.put_verified(body, &layer_digest, Some(layer.size()))
                .map_err(keep(format!("SBOM statement {layer_digest}")))?;
        }
        self.put_blob(&data)
            .map_err(keep(format!("attestation manifest {digest}")))?;
        Ok(())
    }

    /// Push `source` (an image of the store: a manifest, or an index with every platform it
    /// lists) to `dest`'s registry under `dest`'s tag (or digest). Blobs the registry already
    /// has are not sent. Returns the pushed top-level descriptor; its digest is unchanged.
    pub fn push(
        &self,
        source: &Reference,
        dest: &Reference,
        options: &PullOptions,
    ) -> Result<Descriptor> {
        let name = source.to_string();
        let top = self.resolve(source)?.ok_or_else(|| Error::NotFound {
            reference: name.clone(),
            store: self.path().to_path_buf(),
        })?;
        let wrap = |source: RegistryError| Error::Push {
            reference: dest.to_string(),
            source,
        };
        let mut client = Client::new(dest, options, Purpose::Push).map_err(wrap)?;
        let top_digest = store::descriptor_digest(&top)?;
        let top_data = self.read_blob(&top_digest)?;
        let mut manifests: Vec<(Digest, MediaType, Vec<u8>)> = Vec::new();
        match store::kind_of(top.media_type()) {
            Kind::Manifest => manifests.push((
                top_digest.clone(),
                top.media_type().clone(),
                top_data.clone(),
            )),
            Kind::Index => {
                let index: ImageIndex =
                    serde_json::from_slice(&top_data).map_err(|e| Error::json("image index", e))?;
                for m in index.manifests() {
                    let digest = store::descriptor_digest(m)?;
                    if !self.has_blob(&digest) {
                        return Err(wrap(RegistryError::Incomplete {
                            reference: name.clone(),
                            what: format!("manifest {digest}"),
                        }));
                    }
                    manifests.push((
                        digest.clone(),
                        m.media_type().clone(),
                        self.read_blob(&digest)?,
                    ));
                }
            }
            Kind::Other => {
                return Err(wrap(RegistryError::UnsupportedManifest(
                    top.media_type().to_string(),
                )));
            }
        }
        let mut sent = 0usize;
        for (digest, _, data) in &manifests {
            let manifest: ImageManifest = serde_json::from_slice(data)
                .map_err(|e| Error::json(format!("manifest {digest}"), e))?;
            let mut blobs = vec![manifest.config().clone()];
            blobs.extend(manifest.layers().iter().cloned());
            for b in blobs {
                let d = store::descriptor_digest(&b)?;
                let content = self.read_blob(&d)?;
                if client.upload_blob(&d, &content).map_err(wrap)? {
                    sent += 1;
                }
            }
        }
        // Children first: a registry accepts an index only when its manifests exist.
        if store::kind_of(top.media_type()) == Kind::Index {
            for (digest, media_type, data) in &manifests {
                client
                    .put_manifest(digest.as_str(), media_type, data)
                    .map_err(wrap)?;
            }
        }
        let target = match (dest.tag(), dest.digest()) {
            (Some(tag), _) => tag.to_owned(),
            (None, Some(d)) if d == &top_digest => d.to_string(),
            (None, Some(d)) => {
                return Err(wrap(RegistryError::DigestMismatch {
                    what: format!("push of {name}"),
                    expected: d.clone(),
                    actual: top_digest.to_string(),
                }));
            }
            (None, None) => "latest".to_owned(),
        };
        client
            .put_manifest(&target, top.media_type(), &top_data)
            .map_err(wrap)?;
        log::info!("pushed {name} to {dest} ({top_digest}, {sent} blobs sent)");
        Ok(top)
    }

    /// Whether a blob is present and matches its digest (a damaged one is fetched again).
    fn blob_intact(&self, digest: &Digest, size: u64) -> bool {
        match self.layout().open_blob(digest, Some(size)) {
            Ok(mut r) => io::copy(&mut r, &mut io::sink()).is_ok(),
            Err(_) => false,
        }
    }
}

/// How requests are authorised, once a challenge has been answered.
#[derive(Debug, Clone)]
enum Auth {
    None,
    Basic(String),
    Bearer(String),
}

/// A connection to one repository of one registry.
struct Client {
    agent: ureq::Agent,
    /// `scheme://host[:port]`, or a mirror's URL (which may have a path).
    base: String,
    /// Who is asked: the registry's name, or the mirror's `host[:port]` (credentials are looked
    /// up for it).
    registry: String,
    repository: String,
    credentials: Option<(String, String)>,
    auth: Auth,
    /// The whole pull's deadline (none for a push).
    pull_limit: Option<Limit>,
    /// The deadline of the request being made, when it has its own (a blob's).
    request_limit: Option<Limit>,
}

/// Why a [`Client`] is made: only pulls go through a mirror.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Purpose {
    Pull,
    Push,
}

impl Client {
    fn new(reference: &Reference, options: &PullOptions, purpose: Purpose) -> RResult<Client> {
        let registry = reference.registry().to_owned();
        let mirror = match purpose {
            Purpose::Pull => options.mirrors.for_registry(&registry),
            Purpose::Push => None,
        };
        let (base, registry) = match mirror {
            Some(url) => {
                let uri: ureq::http::Uri = url.parse().map_err(|_| RegistryError::Mirror {
                    url: url.to_owned(),
                    reason: "not a URL",
                })?;
                let authority = uri.authority().map(|a| a.as_str()).unwrap_or_default();
                if uri.scheme_str() == Some("http") && !options.insecure && !is_loopback(authority)
                {
                    return Err(RegistryError::Mirror {
                        url: url.to_owned(),
                        reason: "plain http to a host that is not loopback: use https, or --insecure-registry",
                    });
                }
                log::info!("pulling {reference} through the mirror {url}");
                (url.to_owned(), authority.to_owned())
            }
            None => {
                let host = if registry == crate::reference::DEFAULT_REGISTRY {
                    "registry-1.docker.io".to_owned()
                } else {
                    registry.clone()
                };
                let scheme = if options.insecure || is_loopback(&host) {
                    "http"
                } else {
                    "https"
                };
                (format!("{scheme}://{host}"), registry)
            }
        };
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .user_agent(concat!("keel/", env!("CARGO_PKG_VERSION")))
            .timeout_connect(Some(Duration::from_secs(30)))
            .timeout_recv_response(Some(Duration::from_secs(60)))
            .timeout_per_read(Some(Duration::from_secs(120)))
            .build()
            .new_agent();
        Ok(Client {
            agent,
            base,
            credentials: credentials(options.docker_config.as_deref(), &registry)?,
            registry,
            repository: reference.repository().to_owned(),
            auth: Auth::None,
            pull_limit: None,
            request_limit: None,
        })
    }

    /// GET a manifest by tag or digest: its bytes and media type.
    fn manifest(&mut self, target: &str) -> RResult<(Vec<u8>, MediaType)> {
        let url = format!("{}/v2/{}/manifests/{target}", self.base, self.repository);
        let mut resp = self.get(&url, Some(ACCEPT))?;
        let content_type = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or(v).trim().to_owned());
        let data = resp
            .body_mut()
            .with_config()
            .limit(MANIFEST_LIMIT)
            .read_to_vec()
            .map_err(|e| self.http_error(&url, e))?;
        let media_type = match content_type.as_deref().map(MediaType::from) {
            Some(mt) if store::kind_of(&mt) != Kind::Other => mt,
            // application/json, octet-stream or nothing: the document says what it is.
            other => store::sniff_media_type(&data)
                .or(other)
                .unwrap_or_else(|| MediaType::Other("unknown".into())),
        };
        if let MediaType::Other(s) = &media_type
            && s.contains("manifest.v1")
        {
            return Err(RegistryError::UnsupportedManifest(s.clone()));
        }
        Ok((data, media_type))
    }

    /// GET a blob: a reader over its (unverified) content, whose reads fail once `limit` has
    /// passed.
    fn blob(&mut self, digest: &Digest, limit: Limit) -> RResult<impl Read + use<>> {
        let url = format!("{}/v2/{}/blobs/{digest}", self.base, self.repository);
        self.request_limit = Some(limit);
        let resp = self.get(&url, None);
        self.request_limit = None;
        Ok(resp?.into_body().into_reader())
    }

    /// The deadline the next request must meet, if any.
    fn limit(&self) -> Option<Limit> {
        earliest(self.pull_limit, self.request_limit)
    }

    /// The time left before the current deadline; a [`RegistryError::Deadline`] once it has
    /// passed.
    fn time_left(&self, url: &str) -> RResult<Option<Duration>> {
        match self.limit() {
            None => Ok(None),
            Some(l) => match l.at.checked_duration_since(Instant::now()) {
                Some(left) if !left.is_zero() => Ok(Some(left)),
                _ => Err(self.deadline_error(url, l)),
            },
        }
    }

    fn deadline_error(&self, url: &str, limit: Limit) -> RegistryError {
        RegistryError::Deadline {
            what: url.to_owned(),
            scope: limit.scope(),
            limit: limit.limit,
            received: None,
            expected: None,
        }
    }

    /// A failed request or body read: [`RegistryError::Deadline`] if the deadline has passed
    /// (ureq stops waiting then), else [`RegistryError::Http`].
    fn http_error(&self, url: &str, e: ureq::Error) -> RegistryError {
        match self.limit() {
            Some(l) if Instant::now() >= l.at => self.deadline_error(url, l),
            _ => http_error(url, e),
        }
    }

    /// Sends a request with an optional body, answering one authentication challenge; returns
    /// the response whatever its status (other than a first 401).
    fn send(
        &mut self,
        method: &str,
        url: &str,
        headers: &[(&str, String)],
        body: Option<&[u8]>,
    ) -> RResult<ureq::http::Response<ureq::Body>> {
        let mut challenged = false;
        loop {
            let auth = match &self.auth {
                Auth::None => None,
                Auth::Basic(b) => Some(format!("Basic {b}")),
                Auth::Bearer(t) => Some(format!("Bearer {t}")),
            };
            let mut all: Vec<(&str, String)> = headers.to_vec();
            if let Some(a) = auth {
                all.push(("Authorization", a));
            }
            // ureq bounds every socket read (and the whole exchange, body included) by the
            // time left, so a registry that trickles bytes cannot outlast the deadline.
            let left = self.time_left(url)?;
            let result = match (method, body) {
                ("HEAD", _) => all
                    .iter()
                    .fold(within(self.agent.head(url), left), |r, (k, v)| {
                        r.header(*k, v)
                    })
                    .call(),
                ("POST", b) => {
                    let r = all
                        .iter()
                        .fold(within(self.agent.post(url), left), |r, (k, v)| {
                            r.header(*k, v)
                        });
                    r.send(b.unwrap_or_default())
                }
                ("PUT", b) => {
                    let r = all
                        .iter()
                        .fold(within(self.agent.put(url), left), |r, (k, v)| {
                            r.header(*k, v)
                        });
                    r.send(b.unwrap_or_default())
                }
                _ => all
                    .iter()
                    .fold(within(self.agent.get(url), left), |r, (k, v)| {
                        r.header(*k, v)
                    })
                    .call(),
            };
            let resp = result.map_err(|e| self.http_error(url, e))?;
            if resp.status().as_u16() == 401 && !challenged {
                challenged = true;
                let header = resp
                    .headers()
                    .get("www-authenticate")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                self.answer(&header)?;
                continue;
            }
            return Ok(resp);
        }
    }

    /// Turns a non-2xx response into an error.
    fn check(
        &self,
        url: &str,
        mut resp: ureq::http::Response<ureq::Body>,
    ) -> RResult<ureq::http::Response<ureq::Body>> {
        let status = resp.status().as_u16();
        if (200..300).contains(&status) {
            return Ok(resp);
        }
        if status == 401 || status == 403 {
            return Err(RegistryError::Unauthorized {
                registry: self.registry.clone(),
                url: url.to_owned(),
            });
        }
        let body = resp
            .body_mut()
            .with_config()
            .limit(64 * 1024)
            .read_to_string()
            .unwrap_or_default();
        Err(RegistryError::Status {
            url: url.to_owned(),
            status,
            message: registry_message(&body),
        })
    }

    /// Uploads a blob unless the registry has it (monolithic upload: POST, then PUT ?digest=).
    fn upload_blob(&mut self, digest: &Digest, data: &[u8]) -> RResult<bool> {
        let url = format!("{}/v2/{}/blobs/{digest}", self.base, self.repository);
        if self.send("HEAD", &url, &[], None)?.status().is_success() {
            return Ok(false);
        }
        let start = format!("{}/v2/{}/blobs/uploads/", self.base, self.repository);
        let resp = self.send("POST", &start, &[], None)?;
        let resp = self.check(&start, resp)?;
        let location = resp
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| RegistryError::NoUploadLocation { url: start.clone() })?
            .to_owned();
        let mut put = if location.starts_with('/') {
            format!("{}{location}", self.base)
        } else {
            location
        };
        put.push(if put.contains('?') { '&' } else { '?' });
        put.push_str(&format!("digest={}", url_encode(digest.as_str())));
        let headers = [("Content-Type", "application/octet-stream".to_owned())];
        let resp = self.send("PUT", &put, &headers, Some(data))?;
        self.check(&put, resp)?;
        Ok(true)
    }

    /// PUTs a manifest or index under `target` (a tag or its digest).
    fn put_manifest(&mut self, target: &str, media_type: &MediaType, data: &[u8]) -> RResult<()> {
        let url = format!("{}/v2/{}/manifests/{target}", self.base, self.repository);
        let headers = [("Content-Type", media_type.to_string())];
        let resp = self.send("PUT", &url, &headers, Some(data))?;
        self.check(&url, resp)?;
        Ok(())
    }

    /// GET `url`, answering one authentication challenge if the registry sends it.
    fn get(
        &mut self,
        url: &str,
        accept: Option<&str>,
    ) -> RResult<ureq::http::Response<ureq::Body>> {
        let headers: Vec<(&str, String)> = accept
            .map(|a| ("Accept", a.to_owned()))
            .into_iter()
            .collect();
        let resp = self.send("GET", url, &headers, None)?;
        self.check(url, resp)
    }

    /// Set up authorisation for a `WWW-Authenticate` challenge.
    fn answer(&mut self, header: &str) -> RResult<()> {
        let auth_err = |reason: String| RegistryError::Auth {
            registry: self.registry.clone(),
            reason,
        };
        let (scheme, params) = parse_challenge(header)
            .ok_or_else(|| auth_err(format!("unreadable WWW-Authenticate header {header:?}")))?;
        let basic = self
            .credentials
            .as_ref()
            .map(|(u, p)| base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}")));
        if scheme.eq_ignore_ascii_case("basic") {
            self.auth = match basic {
                Some(b) => Auth::Basic(b),
                None => Auth::None,
            };
            return Ok(());
        }
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(auth_err(format!(
                "unsupported authentication scheme {scheme:?}"
            )));
        }
        let realm = params
            .get("realm")
            .ok_or_else(|| auth_err("the Bearer challenge has no realm".into()))?;
        let send_credentials =
            realm_gets_credentials(&self.base, &self.registry, realm).map_err(auth_err)?;
        let scope = params
            .get("scope")
            .cloned()
            .unwrap_or_else(|| format!("repository:{}:pull", self.repository));
        let mut url = format!(
            "{realm}{}scope={}",
            if realm.contains('?') { "&" } else { "?" },
            url_encode(&scope)
        );
        if let Some(service) = params.get("service") {
            url.push_str(&format!("&service={}", url_encode(service)));
        }
        // ureq drops Authorization when it follows a redirect (its default), so a realm on the
        // registry's host cannot forward the credentials elsewhere either.
        let mut req = within(self.agent.get(&url), self.time_left(&url)?);
        match &basic {
            Some(b) if send_credentials => {
                req = req.header("Authorization", format!("Basic {b}"));
            }
            Some(_) => log::warn!(
                "not sending the credentials for {} to the token service at {realm}, which is on another host; asking it for an anonymous token",
                self.registry
            ),
            None => {}
        }
        let mut resp = req.call().map_err(|e| self.http_error(&url, e))?;
        let status = resp.status().as_u16();
        if status == 401 || status == 403 {
            return Err(RegistryError::Unauthorized {
                registry: self.registry.clone(),
                url,
            });
        }
        let body = resp
            .body_mut()
            .with_config()
            .limit(1024 * 1024)
            .read_to_vec()
            .map_err(|e| self.http_error(&url, e))?;
        if !(200..300).contains(&status) {
            return Err(RegistryError::Status {
                url,
                status,
                message: registry_message(&String::from_utf8_lossy(&body)),
            });
        }
        #[derive(serde::Deserialize)]
        struct Token {
            token: Option<String>,
            access_token: Option<String>,
        }
        let token: Token =
            serde_json::from_slice(&body).map_err(|source| RegistryError::Invalid {
                what: "token response".into(),
                source,
            })?;
        let token = token
            .token
            .or(token.access_token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| auth_err(format!("the token service at {realm} returned no token")))?;
        self.auth = Auth::Bearer(token);
        Ok(())
    }
}

/// `request`, which must be over (body included) within `left` when that is given.
fn within<B>(request: ureq::RequestBuilder<B>, left: Option<Duration>) -> ureq::RequestBuilder<B> {
    match left {
        Some(left) => request.config().timeout_global(Some(left)).build(),
        None => request,
    }
}

fn http_error(url: &str, e: ureq::Error) -> RegistryError {
    RegistryError::Http {
        url: url.to_owned(),
        source: Box::new(e),
    }
}

/// The messages of a registry's `{"errors":[{"code":…,"message":…}]}` body, else the body's start.
fn registry_message(body: &str) -> String {
    #[derive(serde::Deserialize)]
    struct Errors {
        errors: Vec<ErrorEntry>,
    }
    #[derive(serde::Deserialize)]
    struct ErrorEntry {
        code: Option<String>,
        message: Option<String>,
    }
    match serde_json::from_str::<Errors>(body) {
        Ok(e) => e
            .errors
            .into_iter()
            .map(|e| match (e.code, e.message) {
                (Some(c), Some(m)) => format!("{c}: {m}"),
                (c, m) => c.or(m).unwrap_or_default(),
            })
            .collect::<Vec<_>>()
            .join("; "),
        Err(_) => body.trim().chars().take(200).collect(),
    }
}

/// Whether the Basic credentials for `registry` (reached at `base`, `scheme://host[:port]`) go
/// with the token request to a Bearer challenge's `realm`; an error refuses the realm.
///
/// Docker and containerd send the credentials to whatever realm the challenge names. keel sends
/// them only to the registry's own host (any port): the credentials were given for that host,
/// and a challenge can come from wherever a request was redirected (a blob's CDN) or from
/// whoever fronts the registry. A realm on another host gets an anonymous token request, which
/// is all a public image needs. The one exception is Docker Hub, whose registry
/// (registry-1.docker.io) and token service (auth.docker.io) are one service on two hosts.
///
/// The realm must be https unless the registry itself is plain http (on loopback, or with
/// `--insecure-registry`): a token, credentials or not, is not fetched in the clear.
fn realm_gets_credentials(
    base: &str,
    registry: &str,
    realm: &str,
) -> std::result::Result<bool, String> {
    let parts = |url: &str| -> Option<(String, String)> {
        let uri: ureq::http::Uri = url.parse().ok()?;
        let scheme = uri.scheme_str()?.to_ascii_lowercase();
        let host = uri.host()?.to_ascii_lowercase();
        Some((scheme, host))
    };
    let (realm_scheme, realm_host) = parts(realm)
        .filter(|(scheme, _)| scheme == "https" || scheme == "http")
        .ok_or_else(|| format!("the token realm {realm:?} is not an http(s) URL"))?;
    let (base_scheme, base_host) =
        parts(base).ok_or_else(|| format!("invalid registry URL {base:?}"))?;
    if realm_scheme == "http" && base_scheme == "https" {
        return Err(format!(
            "the token realm {realm:?} is not https (plain http is only for a loopback registry or with --insecure-registry)"
        ));
    }
    let docker_hub =
        registry == crate::reference::DEFAULT_REGISTRY && realm_host == "auth.docker.io";
    Ok(realm_host == base_host || docker_hub)
}

/// Loopback hosts, where plain HTTP is used: `localhost`, `127.*`, `[::1]` (any port).
fn is_loopback(host: &str) -> bool {
    let without_port = if host.starts_with('[') {
        host.split(']')
            .next()
            .map(|h| format!("{h}]"))
            .unwrap_or_default()
    } else {
        host.split(':').next().unwrap_or(host).to_owned()
    };
    without_port == "localhost" || without_port.starts_with("127.") || without_port == "[::1]"
}

/// Parse `Scheme key="value", key=value, …` into the scheme and its parameters.
fn parse_challenge(header: &str) -> Option<(String, HashMap<String, String>)> {
    let header = header.trim();
    let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
    if scheme.is_empty() {
        return None;
    }
    let mut params = HashMap::new();
    let mut chars = rest.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() {
            break;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.peek().copied() {
                if c == ',' {
                    break;
                }
                value.push(c);
                chars.next();
            }
        }
        params.insert(key.trim().to_ascii_lowercase(), value.trim().to_owned());
    }
    Some((scheme.to_owned(), params))
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            b => format!("%{b:02X}"),
        })
        .collect()
}

/// The user's credentials for `registry` from Docker's `config.json` (`auths.<host>.auth`, or
/// `username`/`password`), honouring `DOCKER_CONFIG`.
fn credentials(dir: Option<&Path>, registry: &str) -> RResult<Option<(String, String)>> {
    let from_env = std::env::var_os("DOCKER_CONFIG")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .map(|h| PathBuf::from(h).join(".docker"))
        });
    let Some(dir) = dir.map(Path::to_path_buf).or(from_env) else {
        return Ok(None);
    };
    let path = dir.join("config.json");
    let data = match std::fs::read(&path) {
        Ok(d) => d,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(RegistryError::Credentials {
                path,
                reason: e.to_string(),
            });
        }
    };
    credentials_from(&data, registry).map_err(|reason| RegistryError::Credentials { path, reason })
}

fn credentials_from(
    config: &[u8],
    registry: &str,
) -> std::result::Result<Option<(String, String)>, String> {
    #[derive(serde::Deserialize)]
    struct Config {
        #[serde(default)]
        auths: HashMap<String, Entry>,
    }
    #[derive(serde::Deserialize)]
    struct Entry {
        auth: Option<String>,
        username: Option<String>,
        password: Option<String>,
    }
    let config: Config = serde_json::from_slice(config).map_err(|e| e.to_string())?;
    let docker_hub = ["docker.io", "index.docker.io", "registry-1.docker.io"];
    let wanted = |key: &str| {
        let host = key
            .trim_start_matches("https://")
            .trim_start_matches("http://")
            .split('/')
            .next()
            .unwrap_or_default();
        if registry == crate::reference::DEFAULT_REGISTRY {
            docker_hub.contains(&host)
        } else {
            host == registry
        }
    };
    let mut keys: Vec<&String> = config.auths.keys().filter(|k| wanted(k)).collect();
    keys.sort();
    for key in keys {
        let entry = &config.auths[key];
        if let Some(auth) = entry.auth.as_deref().filter(|a| !a.is_empty()) {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(auth.trim())
                .map_err(|e| format!("auths.{key}.auth is not base64: {e}"))?;
            let decoded =
                String::from_utf8(decoded).map_err(|_| format!("auths.{key}.auth is not UTF-8"))?;
            let (user, pass) = decoded
                .split_once(':')
                .ok_or_else(|| format!("auths.{key}.auth is not user:password"))?;
            return Ok(Some((user.to_owned(), pass.to_owned())));
        }
        if let (Some(u), Some(p)) = (&entry.username, &entry.password) {
            return Ok(Some((u.clone(), p.clone())));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenge_parsing() {
        let (scheme, p) = parse_challenge(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/nginx:pull,push""#,
        )
        .unwrap();
        assert_eq!(scheme, "Bearer");
        assert_eq!(p["realm"], "https://auth.docker.io/token");
        assert_eq!(p["service"], "registry.docker.io");
        assert_eq!(p["scope"], "repository:library/nginx:pull,push");
        let (scheme, p) = parse_challenge(r#"Basic realm=Registry"#).unwrap();
        assert_eq!(scheme, "Basic");
        assert_eq!(p["realm"], "Registry");
        assert!(parse_challenge("").is_none());
    }

    #[test]
    fn loopback_detection() {
        for h in [
            "localhost",
            "localhost:5000",
            "127.0.0.1",
            "127.1.2.3:80",
            "[::1]",
            "[::1]:5000",
        ] {
            assert!(is_loopback(h), "{h}");
        }
        for h in [
            "registry-1.docker.io",
            "ghcr.io",
            "10.0.0.1:5000",
            "localhost.example.com",
            "[::2]:1",
        ] {
            assert!(!is_loopback(h), "{h}");
        }
    }

    #[test]
    fn docker_config_credentials() {
        let auth = base64::engine::general_purpose::STANDARD.encode("me:s3cr:et");
        let config = format!(
            r#"{{"auths":{{"https://index.docker.io/v1/":{{"auth":"{auth}"}},
                "localhost:5000":{{"username":"u","password":"p"}},
                "ghcr.io":{{"auth":""}}}}}}"#
        );
        let c = |r| credentials_from(config.as_bytes(), r).unwrap();
        assert_eq!(c("docker.io"), Some(("me".into(), "s3cr:et".into())));
        assert_eq!(c("localhost:5000"), Some(("u".into(), "p".into())));
        assert_eq!(c("ghcr.io"), None);
        assert_eq!(c("quay.io"), None);
        let bad = r#"{"auths":{"quay.io":{"auth":"!!"}}}"#;
        assert!(
            credentials_from(bad.as_bytes(), "quay.io")
                .unwrap_err()
                .contains("base64")
        );
    }

    #[test]
    fn registry_messages() {
        assert_eq!(
            registry_message(
                r#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}"#
            ),
            "MANIFEST_UNKNOWN: manifest unknown"
        );
        assert_eq!(registry_message("  plain text \n"), "plain text");
    }

    #[test]
    fn realm_rules() {
        let check = |base, registry, realm| realm_gets_credentials(base, registry, realm);
        // The registry's own host, any port or case, gets the credentials.
        assert_eq!(
            check("https://ghcr.io", "ghcr.io", "https://ghcr.io/token"),
            Ok(true)
        );
        assert_eq!(
            check("https://ghcr.io", "ghcr.io", "https://GHCR.io:8443/t"),
            Ok(true)
        );
        let loopback = "http://127.0.0.1:5000";
        assert_eq!(
            check(loopback, "127.0.0.1:5000", "http://127.0.0.1:5001/t"),
            Ok(true)
        );
        // Docker Hub's token service, for Docker Hub only.
        let hub = "https://registry-1.docker.io";
        assert_eq!(
            check(hub, "docker.io", "https://auth.docker.io/token"),
            Ok(true)
        );
        assert_eq!(
            check("https://quay.io", "quay.io", "https://auth.docker.io/token"),
            Ok(false)
        );
        // Any other host gets an anonymous request, however much it looks like the registry.
        for realm in [
            "https://evil.example/token",
            "https://ghcr.io.evil.example/token",
            "https://ghcr.io@evil.example/token",
            "https://auth.ghcr.io/token",
        ] {
            assert_eq!(
                check("https://ghcr.io", "ghcr.io", realm),
                Ok(false),
                "{realm}"
            );
        }
        // Plain http only when the registry is plain http itself.
        let e = check("https://ghcr.io", "ghcr.io", "http://ghcr.io/token").unwrap_err();
        assert!(e.contains("not https"), "{e}");
        assert_eq!(
            check(loopback, "127.0.0.1:5000", "https://127.0.0.1/t"),
            Ok(true)
        );
        for realm in ["/token", "ftp://ghcr.io/token", "token", ""] {
            let e = check("https://ghcr.io", "ghcr.io", realm).unwrap_err();
            assert!(e.contains("not an http(s) URL"), "{realm}: {e}");
        }
    }

    /// Serves `count` connections on `listener` (for at most ten seconds), answering each with
    /// `reply(request head)`; every request head goes to the returned channel.
    fn serve(
        listener: std::net::TcpListener,
        count: usize,
        reply: impl Fn(&str) -> String + Send + 'static,
    ) -> std::sync::mpsc::Receiver<String> {
        use std::io::Write;
        let (tx, rx) = std::sync::mpsc::channel();
        listener.set_nonblocking(true).unwrap();
        std::thread::spawn(move || {
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            let mut served = 0;
            while served < count && std::time::Instant::now() < deadline {
                let Ok((mut stream, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                served += 1;
                let _ = stream.set_nonblocking(false);
                let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                let mut head = Vec::new();
                let mut chunk = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut chunk) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&chunk[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&head).into_owned();
                let _ = stream.write_all(reply(&head).as_bytes());
                let _ = tx.send(head);
            }
        });
        rx
    }

    fn response(status: &str, headers: &str, body: &str) -> String {
        format!(
            "HTTP/1.1 {status}\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    }

    fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
        head.split("\r\n")
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim())
    }

    /// A registry on 127.0.0.1 whose Bearer challenge names a token service on `token_ip`;
    /// fetches a manifest with Docker credentials for the registry and returns the request
    /// heads the token service and the registry saw.
    fn token_request_via(token_ip: &str) -> (String, Vec<String>) {
        let registry = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let token = std::net::TcpListener::bind((token_ip, 0)).unwrap();
        let host = format!("127.0.0.1:{}", registry.local_addr().unwrap().port());
        let realm = format!(
            "http://{token_ip}:{}/token",
            token.local_addr().unwrap().port()
        );
        let seen_by_registry = serve(registry, 2, move |head| {
            if header(head, "authorization") == Some("Bearer tok") {
                let mt = "Content-Type: application/vnd.oci.image.manifest.v1+json\r\n";
                response("200 OK", mt, "{}")
            } else {
                let challenge = format!(
                    "WWW-Authenticate: Bearer realm=\"{realm}\",service=\"s\",scope=\"repository:team/app:pull\"\r\n"
                );
                response("401 Unauthorized", &challenge, "")
            }
        });
        let seen_by_token = serve(token, 1, |_| response("200 OK", "", r#"{"token":"tok"}"#));

        let dir = tempfile::tempdir().unwrap();
        let auth = base64::engine::general_purpose::STANDARD.encode("user:pass");
        std::fs::write(
            dir.path().join("config.json"),
            format!(r#"{{"auths":{{"{host}":{{"auth":"{auth}"}}}}}}"#),
        )
        .unwrap();
        let reference: Reference = format!("{host}/team/app:v1").parse().unwrap();
        let options = PullOptions {
            quiet: true,
            docker_config: Some(dir.path().to_path_buf()),
            ..PullOptions::default()
        };
        let mut client = Client::new(&reference, &options, Purpose::Pull).unwrap();
        let (data, _) = client.manifest("v1").unwrap();
        assert_eq!(data, b"{}");
        let wait = Duration::from_secs(10);
        let token_head = seen_by_token.recv_timeout(wait).unwrap();
        let registry_heads = (0..2)
            .map(|_| seen_by_registry.recv_timeout(wait).unwrap())
            .collect();
        (token_head, registry_heads)
    }

    #[test]
    fn credentials_go_to_a_token_realm_on_the_registry_host_only() {
        let basic = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("user:pass")
        );
        // Same host (another port): the token request carries the credentials.
        let (token, registry) = token_request_via("127.0.0.1");
        assert!(
            token.starts_with("GET /token?scope=repository%3Ateam%2Fapp%3Apull&service=s "),
            "{token}"
        );
        assert_eq!(header(&token, "authorization"), Some(basic.as_str()));
        assert_eq!(header(&registry[0], "authorization"), None);
        assert_eq!(header(&registry[1], "authorization"), Some("Bearer tok"));
        // Another host (127.0.0.2): asked for an anonymous token, the credentials stay home.
        let (token, registry) = token_request_via("127.0.0.2");
        assert!(token.starts_with("GET /token?"), "{token}");
        assert_eq!(header(&token, "authorization"), None, "{token}");
        assert!(!token.contains(&basic[6..]), "{token}");
        assert_eq!(header(&registry[1], "authorization"), Some("Bearer tok"));
    }

    #[test]
    fn a_plain_http_realm_is_refused_for_an_https_registry() {
        let reference: Reference = "registry.example.com/team/app:v1".parse().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let options = PullOptions {
            docker_config: Some(dir.path().to_path_buf()),
            ..PullOptions::default()
        };
        let mut client = Client::new(&reference, &options, Purpose::Pull).unwrap();
        // Refused before any request is made (the realm's host does not exist).
        let e = client
            .answer(r#"Bearer realm="http://registry.example.com.invalid/token",service="s""#)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("cannot authenticate with registry.example.com: the token realm"),
            "{e}"
        );
        assert!(e.contains("is not https"), "{e}");
    }

    #[test]
    fn deadlines() {
        assert_eq!(parse_deadline(""), Ok(None));
        assert_eq!(parse_deadline(" 90 "), Ok(Some(Duration::from_secs(90))));
        assert_eq!(parse_deadline("0"), Err(()));
        assert_eq!(parse_deadline("10m"), Err(()));
        // 2 min fixed, plus the size at 64 KiB/s: 64 MiB gets 1024 s more.
        assert_eq!(default_blob_deadline(0), Duration::from_secs(120));
        assert_eq!(
            default_blob_deadline(64 << 20),
            Duration::from_secs(120 + 1024)
        );
        assert_eq!(human(Duration::from_millis(1500)), "1.5s");
        assert_eq!(human(Duration::from_secs(45)), "45s");
        assert_eq!(human(Duration::from_secs(1200)), "20m");
        assert_eq!(human(Duration::from_secs(1264)), "21m4s");
        assert_eq!(human(Duration::from_secs(5400)), "1h30m");
        let a = Limit::from_now(Duration::from_secs(5), false);
        let b = Limit::from_now(Duration::from_secs(1), true);
        assert!(earliest(Some(a), Some(b)).is_some_and(|l| l.whole_pull));
        assert!(earliest(Some(a), None).is_some_and(|l| !l.whole_pull));
        assert!(earliest(None, None).is_none());
    }

    #[test]
    fn progress_shows_on_a_terminal_at_info_only() {
        assert!(shows_progress(false, true, true));
        assert!(!shows_progress(true, true, true), "quiet");
        assert!(!shows_progress(false, false, true), "not a terminal");
        assert!(!shows_progress(false, true, false), "log level above info");
    }

    #[test]
    fn url_encoding() {
        assert_eq!(
            url_encode("repository:a/b:pull"),
            "repository%3Aa%2Fb%3Apull"
        );
    }
}
