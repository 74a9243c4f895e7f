//! Pulling from and pushing to registries: a small synchronous OCI distribution (v2) client.
//!
//! Supports anonymous and Basic access, the Bearer token flow (`WWW-Authenticate: Bearer
//! realm=…,service=…,scope=…`) with credentials from Docker's `config.json`, OCI and Docker v2
//! manifests and indexes. Everything downloaded is verified against its digest before it is
//! stored; blobs already in the store (and intact) are not downloaded again.

use crate::arch::Arch;
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::reference::Reference;
use crate::store::{self, Kind, Store};
use base64::Engine as _;
use oci_spec::image::{Descriptor, ImageIndex, ImageManifest, MediaType};
use std::collections::HashMap;
use std::io::{self, IsTerminal, Read};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The manifest types keel accepts, most preferred first.
const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
                      application/vnd.oci.image.manifest.v1+json, \
                      application/vnd.docker.distribution.manifest.list.v2+json, \
                      application/vnd.docker.distribution.manifest.v2+json";
/// Manifests and indexes larger than this are refused (the registry default is 4 MiB).
const MANIFEST_LIMIT: u64 = 8 * 1024 * 1024;

/// How to pull.
#[derive(Debug, Clone, Default)]
pub struct PullOptions {
    /// Use plain HTTP even for a non-loopback registry (loopback registries always use HTTP).
    pub insecure: bool,
    /// Never show a progress bar (by default one is shown when stderr is a terminal).
    pub quiet: bool,
    /// The directory holding Docker's `config.json` with registry credentials; by default
    /// `$DOCKER_CONFIG`, else `~/.docker`.
    pub docker_config: Option<PathBuf>,
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
        let mut client = Client::new(reference, options).map_err(wrap)?;
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
        let total: u64 = missing.iter().map(|(_, s)| s).sum();
        let bar = progress_bar(total, options.quiet);
        for (digest, size) in &missing {
            log::debug!("pulling blob {digest} ({size} bytes) of {name}");
            bar.set_message(format!("{name} {}", &digest.hex()[..12]));
            let body = client.blob(digest).map_err(wrap)?;
            match self.put_verified(bar.wrap_read(body), digest, Some(*size)) {
                Ok(_) => {}
                Err(Error::Corrupt { blob, .. }) => {
                    return Err(wrap(RegistryError::DigestMismatch {
                        what: format!("blob {digest}"),
                        expected: digest.clone(),
                        actual: blob.actual,
                    }));
                }
                Err(e) => return Err(e),
            }
        }
        bar.finish_and_clear();
        // Manifest and index last: a partial pull never leaves a manifest without its blobs.
        self.put_blob(&manifest_data)?;
        if manifest_digest != top_digest {
            self.put_blob(&top_data)?;
        }
        self.tag(reference, top.clone())?;
        log::info!("pulled {name} ({top_digest}) for linux/{arch}");
        Ok(top)
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
        let mut client = Client::new(dest, options).map_err(wrap)?;
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

fn progress_bar(total: u64, quiet: bool) -> indicatif::ProgressBar {
    if quiet || total == 0 || !io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(total);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
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
    /// `scheme://host[:port]`.
    base: String,
    registry: String,
    repository: String,
    credentials: Option<(String, String)>,
    auth: Auth,
}

impl Client {
    fn new(reference: &Reference, options: &PullOptions) -> RResult<Client> {
        let registry = reference.registry().to_owned();
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
            base: format!("{scheme}://{host}"),
            credentials: credentials(options.docker_config.as_deref(), &registry)?,
            registry,
            repository: reference.repository().to_owned(),
            auth: Auth::None,
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
            .map_err(|e| http_error(&url, e))?;
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

    /// GET a blob: a reader over its (unverified) content.
    fn blob(&mut self, digest: &Digest) -> RResult<impl Read + use<>> {
        let url = format!("{}/v2/{}/blobs/{digest}", self.base, self.repository);
        let resp = self.get(&url, None)?;
        Ok(resp.into_body().into_reader())
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
            let result = match (method, body) {
                ("HEAD", _) => all
                    .iter()
                    .fold(self.agent.head(url), |r, (k, v)| r.header(*k, v))
                    .call(),
                ("POST", b) => {
                    let r = all
                        .iter()
                        .fold(self.agent.post(url), |r, (k, v)| r.header(*k, v));
                    r.send(b.unwrap_or_default())
                }
                ("PUT", b) => {
                    let r = all
                        .iter()
                        .fold(self.agent.put(url), |r, (k, v)| r.header(*k, v));
                    r.send(b.unwrap_or_default())
                }
                _ => all
                    .iter()
                    .fold(self.agent.get(url), |r, (k, v)| r.header(*k, v))
                    .call(),
            };
            let resp = result.map_err(|e| http_error(url, e))?;
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
        let mut req = self.agent.get(&url);
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
        let mut resp = req.call().map_err(|e| http_error(&url, e))?;
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
            .map_err(|e| http_error(&url, e))?;
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
        let mut client = Client::new(&reference, &options).unwrap();
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
        let mut client = Client::new(&reference, &options).unwrap();
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
    fn url_encoding() {
        assert_eq!(
            url_encode("repository:a/b:pull"),
            "repository%3Aa%2Fb%3Apull"
        );
    }
}
