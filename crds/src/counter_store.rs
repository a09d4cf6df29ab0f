//! Where fleet counters live in Redis: the key layout the proxies count in and the operator reads
//! usage from, the integer units stored, and how to connect (one server, TLS, or a Redis Cluster).
//!
//! Compiled with the `redis` feature (the proxy and the operator enable it; `crdgen` does not).

use std::path::PathBuf;
use std::time::Duration;

use jiff::Timestamp;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClient, ClusterConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, TlsCertificates, Value};
use rust_decimal::Decimal;
use rust_decimal::prelude::ToPrimitive;

use crate::resources::Metric;

/// The Redis key of one counter: (tenant, plan, quota, period start).
///
/// The hash tag `{tenant|plan}` keeps a tenant's counters on one Redis Cluster slot, so the
/// scripts that touch one key and the operator's reads of one tenant go to one node.
pub fn counter_key(tenant: &str, plan: &str, quota: &str, period_start: Timestamp) -> String {
    format!(
        "tollgate:{{{tenant}|{plan}}}:{quota}:{}",
        period_start.as_second()
    )
}

/// The record of one write to `counter` (a lease's grant, or the id of an applied change), in the
/// counter's Redis Cluster slot: `tollgate-op:{tenant|plan}:quota:start:id`.
pub fn op_record_key(counter: &str, id: &str) -> String {
    let rest = counter.strip_prefix("tollgate:").unwrap_or(counter);
    format!("tollgate-op:{rest}:{id}")
}

/// An amount of `metric` in the integer unit stored in Redis (Cost in millionths), rounded up.
pub fn to_units(metric: Metric, amount: Decimal) -> i64 {
    let scaled = if metric == Metric::Cost {
        amount * Decimal::from(1_000_000)
    } else {
        amount
    };
    scaled.ceil().to_i64().unwrap_or(i64::MAX)
}

/// The amount of `metric` that `units` stored in Redis stand for.
pub fn from_units(metric: Metric, units: i64) -> Decimal {
    let d = Decimal::from(units);
    if metric == Metric::Cost {
        d / Decimal::from(1_000_000)
    } else {
        d
    }
}

/// Where the counters are and how to reach them.
#[derive(Debug, Clone, Default)]
pub struct StoreTarget {
    /// `redis://[user:pass@]host:port[/db]`, `rediss://...` for TLS, or
    /// `redis+cluster://[user:pass@]host:port,host:port,...` (`rediss+cluster://` for TLS) with
    /// any reachable seed nodes of a Redis Cluster.
    pub url: String,
    pub tls: StoreTlsArgs,
}

/// TLS files for a `rediss://` store (the same flags on the proxy and the operator).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct StoreTlsArgs {
    /// PEM CA bundle that signed the Redis server's certificate (default: the system trust store).
    #[arg(
        long = "store-ca-file",
        env = "TOLLGATE_STORE_CA_FILE",
        value_name = "PEM"
    )]
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate for Redis servers that require one (mutual TLS); needs
    /// --store-client-key-file.
    #[arg(
        long = "store-client-cert-file",
        env = "TOLLGATE_STORE_CLIENT_CERT_FILE",
        value_name = "PEM"
    )]
    pub client_cert_file: Option<PathBuf>,
    /// PEM private key of --store-client-cert-file.
    #[arg(
        long = "store-client-key-file",
        env = "TOLLGATE_STORE_CLIENT_KEY_FILE",
        value_name = "PEM"
    )]
    pub client_key_file: Option<PathBuf>,
}

/// How long to wait for Redis. Short on purpose: a proxy's request waits on it near a limit.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub connect: Duration,
    pub response: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "--store {0:?}: expected redis://, rediss://, redis+cluster:// or rediss+cluster:// \
         followed by host:port"
    )]
    Scheme(String),
    #[error("--store: {0}")]
    Url(#[from] redis::RedisError),
    #[error("cannot read {path}: {source}")]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("--store-client-cert-file and --store-client-key-file go together")]
    HalfClientCert,
    #[error(
        "--store-ca-file and --store-client-*-file need a TLS URL (rediss:// or rediss+cluster://)"
    )]
    TlsFilesWithoutTls,
}

/// A connection to the counters: one server or a cluster. Cheap to clone (shares the
/// connections); reconnects by itself; connects lazily so a caller starts while Redis is down.
#[derive(Clone)]
pub enum StoreConnection {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl std::fmt::Debug for StoreConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Single(_) => "StoreConnection::Single",
            Self::Cluster(_) => "StoreConnection::Cluster",
        })
    }
}

impl StoreTarget {
    /// The URL with any password replaced by `***`, for logs.
    pub fn redacted_url(&self) -> String {
        match self.url.split_once("://") {
            Some((scheme, rest)) => match rest.rsplit_once('@') {
                Some((userinfo, hosts)) => match userinfo.split_once(':') {
                    Some((user, _password)) => format!("{scheme}://{user}:***@{hosts}"),
                    None => self.url.clone(),
                },
                None => self.url.clone(),
            },
            None => self.url.clone(),
        }
    }

    /// The seed URLs of a cluster URL (`None`: a single server).
    fn cluster_seeds(&self) -> Result<Option<Vec<String>>, StoreError> {
        let (scheme, rest) = self
            .url
            .split_once("://")
            .ok_or_else(|| StoreError::Scheme(self.url.clone()))?;
        let node_scheme = match scheme {
            "redis" | "rediss" => return Ok(None),
            "redis+cluster" => "redis",
            "rediss+cluster" => "rediss",
            _ => return Err(StoreError::Scheme(self.url.clone())),
        };
        // Credentials apply to every node; the last '@' ends them (a password may hold '@').
        let (userinfo, hosts) = match rest.rsplit_once('@') {
            Some((user, hosts)) => (format!("{user}@"), hosts),
            None => (String::new(), rest),
        };
        let seeds: Vec<String> = hosts
            .split(',')
            .filter(|h| !h.trim().is_empty())
            .map(|h| format!("{node_scheme}://{userinfo}{}", h.trim()))
            .collect();
        if seeds.is_empty() {
            return Err(StoreError::Scheme(self.url.clone()));
        }
        Ok(Some(seeds))
    }

    /// The certificates to use instead of the defaults, if any file is given.
    fn certificates(&self) -> Result<Option<TlsCertificates>, StoreError> {
        let tls = &self.tls;
        if tls.ca_file.is_none() && tls.client_cert_file.is_none() && tls.client_key_file.is_none()
        {
            return Ok(None);
        }
        if !self.url.starts_with("rediss") {
            return Err(StoreError::TlsFilesWithoutTls);
        }
        let read = |path: &PathBuf| {
            std::fs::read(path).map_err(|source| StoreError::File {
                path: path.clone(),
                source,
            })
        };
        let client_tls = match (&tls.client_cert_file, &tls.client_key_file) {
            (Some(cert), Some(key)) => Some(redis::ClientTlsConfig {
                client_cert: read(cert)?,
                client_key: read(key)?,
            }),
            (None, None) => None,
            _ => return Err(StoreError::HalfClientCert),
        };
        Ok(Some(TlsCertificates {
            client_tls,
            root_cert: tls.ca_file.as_ref().map(read).transpose()?,
        }))
    }

    /// A lazy connection: nothing is dialled until the first command, and every command after a
    /// failure tries again, so callers decide what an unreachable store means (their failure
    /// policy) instead of failing to start.
    pub fn connect(&self, timeouts: Timeouts) -> Result<StoreConnection, StoreError> {
        let certificates = self.certificates()?;
        match self.cluster_seeds()? {
            None => {
                let client = match certificates {
                    Some(certs) => redis::Client::build_with_tls(self.url.as_str(), certs)?,
                    None => redis::Client::open(self.url.as_str())?,
                };
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(timeouts.connect))
                    .set_response_timeout(Some(timeouts.response))
                    .set_number_of_retries(1);
                Ok(StoreConnection::Single(
                    ConnectionManager::new_lazy_with_config(client, config)?,
                ))
            }
            Some(seeds) => {
                let mut builder = ClusterClient::builder(seeds).retries(1);
                if let Some(certs) = certificates {
                    builder = builder.certs(certs);
                }
                let client = builder.build()?;
                let config = ClusterConfig::new()
                    .set_connection_timeout(timeouts.connect)
                    .set_response_timeout(timeouts.response);
                Ok(StoreConnection::Cluster(
                    client.get_pending_async_connection_with_config(config),
                ))
            }
        }
    }
}

impl ConnectionLike for StoreConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(url: &str) -> StoreTarget {
        StoreTarget {
            url: url.to_owned(),
            ..StoreTarget::default()
        }
    }

    #[test]
    fn cluster_urls_become_one_seed_per_node_with_the_credentials() {
        assert_eq!(target("redis://h:1").cluster_seeds().ok(), Some(None));
        assert_eq!(
            target("rediss+cluster://u:p@ss@a:1, b:2,")
                .cluster_seeds()
                .ok(),
            Some(Some(vec![
                "rediss://u:p@ss@a:1".to_owned(),
                "rediss://u:p@ss@b:2".to_owned()
            ]))
        );
        assert!(target("http://h:1").cluster_seeds().is_err());
        assert!(target("redis+cluster://").cluster_seeds().is_err());
        assert!(target("localhost:6379").cluster_seeds().is_err());
    }

    #[test]
    fn logs_never_show_the_password() {
        assert_eq!(
            target("rediss://app:s3cr@t@h:1").redacted_url(),
            "rediss://app:***@h:1"
        );
        assert_eq!(
            target("redis://:pw@h:1/2").redacted_url(),
            "redis://:***@h:1/2"
        );
        assert_eq!(target("redis://h:1").redacted_url(), "redis://h:1");
    }

    #[test]
    fn tls_files_need_a_tls_url() {
        let mut t = target("redis://h:1");
        t.tls.ca_file = Some("ca.pem".into());
        assert!(matches!(
            t.certificates(),
            Err(StoreError::TlsFilesWithoutTls)
        ));
    }

    #[test]
    fn a_client_certificate_needs_its_key() {
        let mut t = target("rediss://h:1");
        t.tls.client_cert_file = Some("cert.pem".into());
        assert!(matches!(t.certificates(), Err(StoreError::HalfClientCert)));
    }

    #[test]
    fn cost_is_stored_in_millionths_rounded_up() {
        let d = |s: &str| s.parse::<Decimal>().unwrap_or_default();
        assert_eq!(to_units(Metric::Cost, d("0.0000015")), 2);
        assert_eq!(from_units(Metric::Cost, 2_500_000), d("2.5"));
        assert_eq!(to_units(Metric::TotalTokens, d("7")), 7);
    }
}
