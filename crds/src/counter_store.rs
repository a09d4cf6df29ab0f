//! Where fleet counters live in Redis: the key layout the proxies count in and the operator reads
//! usage from, the integer units stored, and how to connect (one server, TLS, or a Redis Cluster).
//!
//! Compiled with the `redis` feature (the proxy and the operator enable it; `crdgen` does not).

use std::path::PathBuf;
use std::time::Duration;

use jiff::Timestamp;
use std::sync::Arc;

use redis::aio::{
    ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection,
};
use redis::cluster::{ClusterClient, ClusterConfig};
use redis::cluster_async::ClusterConnection;
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{AsyncConnectionConfig, Cmd, Pipeline, RedisFuture, TlsCertificates, Value};
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

/// The Redis key of a counter's settled usage: what the fleet admitted and finished charging in
/// the period (requests answered, calls' final tokens and cost), never leases or reservations.
/// It only grows, so billing exports can read it as a cursor (the operator's usage export).
/// Same slot as the counter.
pub fn settled_key(tenant: &str, plan: &str, quota: &str, period_start: Timestamp) -> String {
    format!(
        "tollgate:{{{tenant}|{plan}}}:settled:{quota}:{}",
        period_start.as_second()
    )
}

/// The Redis key of one fleet-wide rate-limit window: (tenant, plan, rate limit, window number
/// since the epoch), in the tenant's slot like its quotas.
pub fn rate_window_key(tenant: &str, plan: &str, rate_limit: &str, window_index: i64) -> String {
    format!("tollgate:{{{tenant}|{plan}}}:rate:{rate_limit}:{window_index}")
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
    /// `redis://[user:pass@]host:port[/db]`, `rediss://...` for TLS,
    /// `redis+cluster://[user:pass@]host:port,host:port,...` (`rediss+cluster://` for TLS) with
    /// any reachable seed nodes of a Redis Cluster, or
    /// `redis+sentinel://[user:pass@]host:port,host:port/MASTER[/db]` (`rediss+sentinel://`: TLS to
    /// the master) with the Sentinels that watch MASTER; the credentials are the master's.
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
        "--store {0:?} is not a Redis URL: expected redis://, rediss://, redis+cluster://, rediss+cluster://, \
         redis+sentinel:// or rediss+sentinel:// followed by host:port (Sentinel: \
         host:port,.../MASTER_NAME)"
    )]
    Scheme(String),
    #[error("--store: {0}")]
    Url(#[from] redis::RedisError),
    #[error("{flag} {path}: cannot read it")]
    File {
        flag: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("--store-client-cert-file and --store-client-key-file go together")]
    HalfClientCert,
    #[error(
        "--store-ca-file and --store-client-*-file need a TLS URL (rediss://, rediss+cluster:// or rediss+sentinel://)"
    )]
    TlsFilesWithoutTls,
}

/// A connection to the counters: one server or a cluster. Cheap to clone (shares the
/// connections); reconnects by itself; connects lazily so a caller starts while Redis is down.
#[derive(Clone)]
pub enum StoreConnection {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
    Sentinel(Arc<SentinelConnection>),
}

/// The current master of a Sentinel-watched group. On a connection error, or a READONLY answer
/// (the old master was demoted), the connection is dropped and the next command asks the
/// Sentinels for the master again.
pub struct SentinelConnection {
    sentinels: tokio::sync::Mutex<SentinelClient>,
    master: parking_lot::Mutex<Option<MultiplexedConnection>>,
    config: AsyncConnectionConfig,
}

impl std::fmt::Debug for SentinelConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SentinelConnection").finish_non_exhaustive()
    }
}

impl SentinelConnection {
    async fn master(&self) -> redis::RedisResult<MultiplexedConnection> {
        if let Some(c) = self.master.lock().clone() {
            return Ok(c);
        }
        let mut sentinels = self.sentinels.lock().await;
        if let Some(c) = self.master.lock().clone() {
            return Ok(c); // Another caller connected while this one waited.
        }
        let connection = sentinels
            .async_get_client()
            .await?
            .get_multiplexed_async_connection_with_config(&self.config)
            .await?;
        *self.master.lock() = Some(connection.clone());
        Ok(connection)
    }

    fn check<T>(&self, result: redis::RedisResult<T>) -> redis::RedisResult<T> {
        if let Err(e) = &result
            && (e.is_io_error()
                || e.is_connection_dropped()
                || e.is_timeout()
                || e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly))
        {
            *self.master.lock() = None;
        }
        result
    }
}

impl std::fmt::Debug for StoreConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Single(_) => "StoreConnection::Single",
            Self::Cluster(_) => "StoreConnection::Cluster",
            Self::Sentinel(_) => "StoreConnection::Sentinel",
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

    /// How the URL says to reach the counters.
    fn topology(&self) -> Result<Topology, StoreError> {
        let bad = || StoreError::Scheme(self.url.clone());
        let (scheme, rest) = self.url.split_once("://").ok_or_else(bad)?;
        let (tls, sentinel) = match scheme {
            "redis" | "rediss" => return Ok(Topology::Single),
            "redis+cluster" => (false, false),
            "rediss+cluster" => (true, false),
            "redis+sentinel" => (false, true),
            "rediss+sentinel" => (true, true),
            _ => return Err(bad()),
        };
        // Credentials apply to every node; the last '@' ends them (a password may hold '@').
        let (userinfo, hosts) = match rest.rsplit_once('@') {
            Some((user, hosts)) => (Some(user), hosts),
            None => (None, rest),
        };
        let (hosts, path) = hosts.split_once('/').unwrap_or((hosts, ""));
        let hosts: Vec<&str> = hosts
            .split(',')
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .collect();
        if hosts.is_empty() {
            return Err(bad());
        }
        if !sentinel {
            let node_scheme = if tls { "rediss" } else { "redis" };
            let user = userinfo.map(|u| format!("{u}@")).unwrap_or_default();
            let path = if path.is_empty() {
                String::new()
            } else {
                format!("/{path}")
            };
            return Ok(Topology::Cluster(
                hosts
                    .iter()
                    .map(|h| format!("{node_scheme}://{user}{h}{path}"))
                    .collect(),
            ));
        }
        let mut sentinels = Vec::new();
        for host in hosts {
            let (name, port) = match host.rsplit_once(':') {
                Some((name, port)) => (name, port.parse::<u16>().map_err(|_| bad())?),
                None => (host, 26379),
            };
            sentinels.push(redis::ConnectionAddr::Tcp(name.to_owned(), port));
        }
        let mut path = path.split('/');
        let master = path.next().filter(|m| !m.is_empty()).ok_or_else(bad)?;
        let db = match path.next() {
            Some(db) if !db.is_empty() => db.parse::<i64>().map_err(|_| bad())?,
            _ => 0,
        };
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8()
                .map(|s| s.into_owned())
                .map_err(|_| bad())
        };
        let (username, password) = match userinfo.map(|u| u.split_once(':').unwrap_or((u, ""))) {
            Some((user, pass)) => (decode(user)?, decode(pass)?),
            None => (String::new(), String::new()),
        };
        Ok(Topology::Sentinel {
            sentinels,
            master: master.to_owned(),
            username,
            password,
            db,
            tls,
        })
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
        let read = |flag: &'static str, path: &PathBuf| {
            std::fs::read(path).map_err(|source| StoreError::File {
                flag,
                path: path.clone(),
                source,
            })
        };
        let client_tls = match (&tls.client_cert_file, &tls.client_key_file) {
            (Some(cert), Some(key)) => Some(redis::ClientTlsConfig {
                client_cert: read("--store-client-cert-file", cert)?,
                client_key: read("--store-client-key-file", key)?,
            }),
            (None, None) => None,
            _ => return Err(StoreError::HalfClientCert),
        };
        Ok(Some(TlsCertificates {
            client_tls,
            root_cert: tls
                .ca_file
                .as_ref()
                .map(|ca| read("--store-ca-file", ca))
                .transpose()?,
        }))
    }

    /// A lazy connection: nothing is dialled until the first command, and every command after a
    /// failure tries again, so callers decide what an unreachable store means (their failure
    /// policy) instead of failing to start.
    pub fn connect(&self, timeouts: Timeouts) -> Result<StoreConnection, StoreError> {
        let certificates = self.certificates()?;
        match self.topology()? {
            Topology::Single => {
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
            Topology::Cluster(seeds) => {
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
            Topology::Sentinel {
                sentinels,
                master,
                username,
                password,
                db,
                tls,
            } => {
                let mut builder =
                    SentinelClientBuilder::new(sentinels, master, SentinelServerType::Master)?
                        .set_client_to_redis_db(db);
                if !username.is_empty() {
                    builder = builder.set_client_to_redis_username(username);
                }
                if !password.is_empty() {
                    builder = builder.set_client_to_redis_password(password);
                }
                if tls {
                    builder = builder.set_client_to_redis_tls_mode(redis::TlsMode::Secure);
                    if let Some(certs) = certificates {
                        builder = builder.set_client_to_redis_certificates(certs);
                    }
                }
                Ok(StoreConnection::Sentinel(Arc::new(SentinelConnection {
                    sentinels: tokio::sync::Mutex::new(builder.build()?),
                    master: parking_lot::Mutex::new(None),
                    config: AsyncConnectionConfig::new()
                        .set_connection_timeout(Some(timeouts.connect))
                        .set_response_timeout(Some(timeouts.response)),
                })))
            }
        }
    }
}

/// The shape of the store a URL names.
#[derive(Debug, PartialEq)]
enum Topology {
    Single,
    /// Seed node URLs.
    Cluster(Vec<String>),
    Sentinel {
        sentinels: Vec<redis::ConnectionAddr>,
        master: String,
        username: String,
        password: String,
        db: i64,
        tls: bool,
    },
}

impl ConnectionLike for StoreConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
            Self::Sentinel(s) => Box::pin(async move {
                let mut master = s.master().await?;
                s.check(master.req_packed_command(cmd).await)
            }),
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
            Self::Sentinel(s) => Box::pin(async move {
                let mut master = s.master().await?;
                s.check(master.req_packed_commands(pipeline, offset, count).await)
            }),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
            Self::Sentinel(s) => s.master.lock().as_ref().map_or(0, ConnectionLike::get_db),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The layout the operator reads usage from and Redis Cluster places by: a tenant's keys and
    /// their operation records share the `{tenant|plan}` hash tag (one slot).
    #[test]
    fn a_tenants_keys_and_records_share_one_hash_tag() {
        let start: Timestamp = "2026-11-01T00:00:00Z".parse().expect("instant");
        let quota = counter_key("shop/acme", "shop/pro", "monthly", start);
        assert_eq!(quota, "tollgate:{shop/acme|shop/pro}:monthly:1793491200");
        let rate = rate_window_key("shop/acme", "shop/pro", "per-second", 1_764_000_000);
        assert_eq!(
            rate,
            "tollgate:{shop/acme|shop/pro}:rate:per-second:1764000000"
        );
        let record = op_record_key(&quota, "abc-1");
        assert_eq!(
            record,
            "tollgate-op:{shop/acme|shop/pro}:monthly:1793491200:abc-1"
        );
        let tag = |k: &str| k[k.find('{').unwrap_or(0)..=k.find('}').unwrap_or(0)].to_owned();
        assert_eq!(tag(&quota), tag(&rate));
        assert_eq!(tag(&quota), tag(&record));
    }

    fn target(url: &str) -> StoreTarget {
        StoreTarget {
            url: url.to_owned(),
            ..StoreTarget::default()
        }
    }

    #[test]
    fn cluster_urls_become_one_seed_per_node_with_the_credentials() {
        assert_eq!(
            target("redis://h:1").topology().ok(),
            Some(Topology::Single)
        );
        assert_eq!(
            target("rediss+cluster://u:p@ss@a:1, b:2,").topology().ok(),
            Some(Topology::Cluster(vec![
                "rediss://u:p@ss@a:1".to_owned(),
                "rediss://u:p@ss@b:2".to_owned()
            ]))
        );
        assert!(target("http://h:1").topology().is_err());
        assert!(target("redis+cluster://").topology().is_err());
        assert!(target("localhost:6379").topology().is_err());
    }

    #[test]
    fn sentinel_urls_name_the_sentinels_the_master_and_its_credentials() {
        assert_eq!(
            target("rediss+sentinel://app:p%40ss@s1:26380,s2/orders/3")
                .topology()
                .ok(),
            Some(Topology::Sentinel {
                sentinels: vec![
                    redis::ConnectionAddr::Tcp("s1".into(), 26380),
                    redis::ConnectionAddr::Tcp("s2".into(), 26379),
                ],
                master: "orders".into(),
                username: "app".into(),
                password: "p@ss".into(),
                db: 3,
                tls: true,
            })
        );
        for bad in [
            "redis+sentinel://s1:26379",
            "redis+sentinel://s1:26379/",
            "redis+sentinel://s1:port/m",
            "redis+sentinel://s1/m/db",
        ] {
            assert!(target(bad).topology().is_err(), "{bad}");
        }
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
