//! Fleet mode: configuration streamed from the operator.
//!
//! The proxy subscribes over HTTPS (trusting only the operator's CA, authenticated by its
//! ServiceAccount token), applies the full snapshot and then each delta atomically, acknowledges
//! every version it applied, and persists the last applied snapshot in the state dir so that a
//! restart while the operator is away serves the last known configuration. Lost connections are
//! retried with capped exponential backoff across the configured operator URLs.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bytes::{Bytes, BytesMut};
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use tollgate_crds::error_chain::error_chain;
use tollgate_crds::snapshot::Snapshot;
use tollgate_crds::stream::{ConfigMessage, UsageReport};

use crate::config::ProxyConfig;
use crate::pipeline::Proxy;
use crate::quota::CounterStore;
use crate::telemetry::metrics::ProxyMetrics;

/// How often counters are reported to the operator (api.md: status usage at least every 30 s).
const REPORT_EVERY: Duration = Duration::from_secs(10);
/// No message (not even a ping) for this long means the connection is dead.
const IDLE_TIMEOUT: Duration = Duration::from_secs(45);
const SNAPSHOT_FILE: &str = "snapshot.json";

/// Where and how to subscribe.
#[derive(Debug, Clone)]
pub struct ControlPlane {
    /// Operator base URLs (`https://tollgate-operator.tollgate-system.svc:8443`), tried in turn.
    pub urls: Vec<String>,
    /// The operator's CA.
    pub ca: OperatorCa,
    /// File with the bearer token (re-read on every connect: projected tokens rotate).
    pub token_file: PathBuf,
    /// This proxy's name in acknowledgements and operator status (the pod name).
    pub name: String,
    /// Where the last applied snapshot is persisted.
    pub state_dir: PathBuf,
}

type HttpsClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

#[derive(serde::Serialize, serde::Deserialize)]
struct PersistedSnapshot {
    version: u64,
    snapshot: Snapshot,
}

/// Loads the persisted snapshot, if any.
pub fn load_persisted(state_dir: &Path) -> Result<Option<(u64, Snapshot)>> {
    let file = state_dir.join(SNAPSHOT_FILE);
    match std::fs::read(&file) {
        Ok(bytes) => {
            let p: PersistedSnapshot = serde_json::from_slice(&bytes)
                .with_context(|| format!("parsing {}", file.display()))?;
            Ok(Some((p.version, p.snapshot)))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", file.display())),
    }
}

fn persist(state_dir: &Path, version: u64, snapshot: &Snapshot) -> Result<()> {
    std::fs::create_dir_all(state_dir)?;
    let tmp = state_dir.join(format!("{SNAPSHOT_FILE}.tmp"));
    let body = serde_json::to_vec(&PersistedSnapshot {
        version,
        snapshot: snapshot.clone(),
    })?;
    // Owner-only: the snapshot holds backend credentials (routes' requestHeaders).
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let _ = std::fs::remove_file(&tmp);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(&body)?;
    }
    std::fs::rename(&tmp, state_dir.join(SNAPSHOT_FILE))?;
    Ok(())
}

/// Where the operator's CA comes from.
#[derive(Debug, Clone)]
pub enum OperatorCa {
    /// A PEM file (a mounted Secret's `ca.crt`).
    File(PathBuf),
    /// PEM text (`TOLLGATE_CONTROL_PLANE_CA_PEM`, set by sidecar injection).
    Pem(String),
}

fn client(ca: &OperatorCa) -> Result<HttpsClient> {
    let (certs, source): (Vec<_>, String) = match ca {
        OperatorCa::File(file) => (
            CertificateDer::pem_file_iter(file)
                .with_context(|| format!("reading {}", file.display()))?
                .collect(),
            file.display().to_string(),
        ),
        OperatorCa::Pem(text) => (
            CertificateDer::pem_slice_iter(text.as_bytes()).collect(),
            "TOLLGATE_CONTROL_PLANE_CA_PEM".to_owned(),
        ),
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in certs {
        roots.add(cert.with_context(|| format!("parsing {source}"))?)?;
    }
    if roots.is_empty() {
        bail!("{source} holds no PEM certificate");
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .build();
    Ok(Client::builder(TokioExecutor::new()).build(https))
}

impl ControlPlane {
    /// Subscribes forever.
    pub async fn run<S: CounterStore>(
        self,
        proxy: Arc<Proxy<S>>,
        metrics: ProxyMetrics,
        ready: Arc<AtomicBool>,
    ) {
        let mut backoff = Duration::from_millis(250);
        let mut attempt = 0usize;
        loop {
            let url = &self.urls[attempt % self.urls.len()];
            attempt += 1;
            let result = match client(&self.ca) {
                Ok(http) => {
                    self.subscribe(&http, url, &proxy, &metrics, &ready, &mut backoff)
                        .await
                }
                Err(e) => Err(e),
            };
            metrics.control_plane_connected.set(0);
            if let Err(e) = result {
                // Say what the proxy does meanwhile: with nothing received yet it has nothing to serve.
                let meanwhile = if ready.load(Ordering::Relaxed) {
                    "no configuration stream; serving the last configuration"
                } else {
                    "no configuration stream; not ready until the first configuration arrives"
                };
                tracing::warn!(operator = %url, error = %error_chain(e.as_ref()), retry_in = ?backoff, "{meanwhile}");
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(30));
        }
    }

    async fn subscribe<S: CounterStore>(
        &self,
        http: &HttpsClient,
        url: &str,
        proxy: &Arc<Proxy<S>>,
        metrics: &ProxyMetrics,
        ready: &AtomicBool,
        backoff: &mut Duration,
    ) -> Result<()> {
        let token = std::fs::read_to_string(&self.token_file)
            .with_context(|| format!("reading the token file {}", self.token_file.display()))?;
        let req = Request::get(format!("{url}/v1/config/stream?proxy={}", self.name))
            .header(header::AUTHORIZATION, format!("Bearer {}", token.trim()))
            .body(Full::new(Bytes::new()))?;
        let resp = tokio::time::timeout(Duration::from_secs(10), http.request(req))
            .await
            .context("connect timed out")??;
        if resp.status() != StatusCode::OK {
            let status = resp.status();
            let body = resp
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            bail!(
                "operator answered {status}: {}",
                String::from_utf8_lossy(&body)
            );
        }
        tracing::info!(operator = %url, "subscribed to the configuration stream");
        metrics.control_plane_connected.set(1);
        let mut body = resp.into_body();
        let mut buf = BytesMut::new();
        let mut current: Option<(u64, Arc<Snapshot>)> = None;
        let mut report = tokio::time::interval(REPORT_EVERY);
        report.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let read = tokio::select! {
                read = tokio::time::timeout(IDLE_TIMEOUT, body.frame()) => read,
                _ = report.tick() => {
                    let calls = proxy.call_usage(jiff::Timestamp::now());
                    self.report_usage(http, url, token.trim(), proxy.store().usage(), calls)
                        .await;
                    continue;
                }
            };
            let frame = match read {
                Err(_) => bail!("no message for {IDLE_TIMEOUT:?}"),
                Ok(None) => bail!("the operator closed the stream"),
                Ok(Some(frame)) => frame?,
            };
            let Ok(data) = frame.into_data() else {
                continue;
            };
            buf.extend_from_slice(&data);
            while let Some(newline) = buf.iter().position(|b| *b == b'\n') {
                let line = buf.split_to(newline + 1);
                let message: ConfigMessage = serde_json::from_slice(&line[..line.len() - 1])
                    .context("malformed configuration message")?;
                let next = match message {
                    ConfigMessage::Ping => continue,
                    ConfigMessage::Full { version, snapshot } => (version, Arc::new(snapshot)),
                    ConfigMessage::Delta(delta) => {
                        let Some((version, snapshot)) = &current else {
                            bail!("delta before the full snapshot")
                        };
                        if delta.base != *version {
                            bail!(
                                "delta for version {} but at {version}; resubscribing",
                                delta.base
                            );
                        }
                        let mut next = Snapshot::clone(snapshot);
                        next.apply(&delta);
                        (delta.version, Arc::new(next))
                    }
                };
                let (version, snapshot) = next.clone();
                // The proxy's entries are a copy: this one stays for the next delta and to
                // persist.
                proxy.apply(ProxyConfig::build(version, Snapshot::clone(&snapshot)));
                metrics.config_reloads.with_label_values(&["success"]).inc();
                ready.store(true, Ordering::Release);
                *backoff = Duration::from_millis(250);
                current = Some(next);
                tracing::info!(
                    version,
                    routes = snapshot.routes.len(),
                    tenants = snapshot.tenants.len(),
                    "configuration applied"
                );
                let state_dir = self.state_dir.clone();
                let persisted =
                    tokio::task::spawn_blocking(move || persist(&state_dir, version, &snapshot))
                        .await;
                if !matches!(persisted, Ok(Ok(()))) {
                    metrics.state_flush_errors.inc();
                    tracing::warn!("cannot persist the configuration snapshot");
                }
                self.ack(http, url, token.trim(), version).await;
            }
        }
    }

    /// Sends this proxy's counters; the operator sums them across proxies into Tenant status.
    async fn report_usage(
        &self,
        http: &HttpsClient,
        url: &str,
        token: &str,
        counters: Vec<crate::quota::UsageRow>,
        calls: Vec<tollgate_crds::stream::CallUsageRecord>,
    ) {
        let report = UsageReport {
            proxy: self.name.clone(),
            counters,
            calls,
        };
        if let Err(why) = post_json(http, &format!("{url}/v1/usage"), token, &report).await {
            tracing::debug!(%why, "usage report not delivered; the next one replaces it");
        }
    }

    async fn ack(&self, http: &HttpsClient, url: &str, token: &str, version: u64) {
        let ack = serde_json::json!({"proxy": self.name, "version": version});
        if let Err(why) = post_json(http, &format!("{url}/v1/config/ack"), token, &ack).await {
            tracing::warn!(%why, version, "cannot acknowledge the configuration version");
        }
    }
}

/// POSTs `body` as JSON with the proxy's token; `Err` says why it did not succeed.
async fn post_json(
    http: &HttpsClient,
    uri: &str,
    token: &str,
    body: &impl serde::Serialize,
) -> Result<(), String> {
    let body = serde_json::to_vec(body).map_err(|e| e.to_string())?;
    let req = Request::builder()
        .method(Method::POST)
        .uri(uri)
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    match tokio::time::timeout(Duration::from_secs(5), http.request(req)).await {
        Ok(Ok(resp)) if resp.status().is_success() => Ok(()),
        Ok(Ok(resp)) => Err(format!("operator answered {}", resp.status())),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("timed out after 5 s".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn the_operators_ca_comes_from_a_file_or_from_pem_text() -> Result<()> {
        let key = rcgen::KeyPair::generate()?;
        let ca = rcgen::CertificateParams::new(vec!["tollgate-operator".to_owned()])?
            .self_signed(&key)?
            .pem();
        let dir = tempfile::tempdir()?;
        let file = dir.path().join("ca.crt");
        std::fs::write(&file, &ca)?;
        assert!(client(&OperatorCa::File(file)).is_ok());
        assert!(client(&OperatorCa::Pem(ca)).is_ok());
        // Text that holds no certificate says where it came from.
        let refused = client(&OperatorCa::Pem("not a certificate".into()))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            refused.contains("TOLLGATE_CONTROL_PLANE_CA_PEM"),
            "{refused}"
        );
        Ok(())
    }

    #[test]
    fn the_persisted_snapshot_is_readable_by_its_owner_only_and_loads_back() -> Result<()> {
        // It holds routes' backend credentials.
        let dir = tempfile::tempdir()?;
        let snapshot = Snapshot::default();
        persist(dir.path(), 7, &snapshot)?;
        persist(dir.path(), 8, &snapshot)?;
        let mode = std::fs::metadata(dir.path().join(SNAPSHOT_FILE))?
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(load_persisted(dir.path())?.map(|(v, _)| v), Some(8));
        Ok(())
    }
}
