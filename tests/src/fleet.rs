//! A Tollgate fleet on the test control plane: operators and proxies as real local processes, the
//! operator authenticated as a user bound only to `deploy/operator-rbac.yaml`, proxies presenting
//! real ServiceAccount tokens.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::process::Supervised;
use crate::{TestNamespace, cluster, repo_root, workspace_binary};

/// A running operator.
#[derive(Debug)]
pub struct OperatorProcess {
    /// `https://127.0.0.1:PORT` of the configuration stream.
    pub url: String,
    /// Admin address (/metrics, /readyz).
    pub admin: SocketAddr,
    /// The sidecar-injection webhook, when started with --webhook-listen.
    pub webhook: Option<SocketAddr>,
    process: Supervised,
}

/// A running proxy.
#[derive(Debug)]
pub struct ProxyProcess {
    /// Name towards the operator.
    pub name: String,
    /// API address.
    pub listen: SocketAddr,
    /// Admin address.
    pub admin: SocketAddr,
    /// State directory (persisted snapshot and counters).
    pub state_dir: PathBuf,
    token_file: Option<PathBuf>,
    process: Option<Supervised>,
}

/// Operators and proxies in one test namespace.
#[derive(Debug)]
pub struct Fleet {
    /// The namespace (objects, Lease, serving certificate, ServiceAccount).
    pub ns: TestNamespace,
    dir: tempfile::TempDir,
    operator_kubeconfig: PathBuf,
    token_file: PathBuf,
    ca_file: PathBuf,
    /// Operators, in start order.
    pub operators: Vec<OperatorProcess>,
    /// Proxies, in start order.
    pub proxies: Vec<ProxyProcess>,
    /// Extra flags for every proxy started after they are set (`--store=redis://...`).
    pub proxy_args: Vec<String>,
    redis: Option<crate::redis::Redis>,
}

/// A response, fully read.
#[derive(Debug)]
pub struct Reply {
    /// Status code.
    pub status: u16,
    /// Headers.
    pub headers: http::HeaderMap,
    /// Body.
    pub body: Bytes,
}

impl Reply {
    /// The body as JSON (`null` when it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// `GET http://addr/path` with headers.
pub async fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Result<Reply> {
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let mut req = http::Request::get(format!("http://{addr}{path}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = tokio::time::timeout(
        Duration::from_secs(10),
        client.request(req.body(Full::new(Bytes::new()))?),
    )
    .await
    .context("request timed out")??;
    let (parts, body) = resp.into_parts();
    let body = body.collect().await?.to_bytes();
    Ok(Reply {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body,
    })
}

/// Polls `check` every 100 ms until it returns `Some`, or fails after `timeout` with `what`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// How long before a UTC hour boundary a fleet test may start.
const BOUNDARY_MARGIN_SECONDS: i64 = 180;

/// Waits, if the next UTC hour boundary is less than [`BOUNDARY_MARGIN_SECONDS`] away, until it
/// has passed. Fleet tests count requests against hourly, daily and monthly plans, whose periods
/// all end on UTC hour boundaries (in whole-hour zones): one that began near a boundary would see
/// its counts start over half-way, and fail only on the day it happened to run then. (These
/// tests run on the real clock: kube-apiserver's, a Go program's, cannot be moved.)
pub async fn clear_of_period_boundaries() {
    let into_hour = jiff::Timestamp::now().as_second().rem_euclid(3600);
    let left = 3600 - into_hour;
    if left < BOUNDARY_MARGIN_SECONDS {
        tokio::time::sleep(Duration::from_secs(left.unsigned_abs() + 1)).await;
    }
}

impl Fleet {
    /// A namespace with the operator's RBAC bound to a fresh user, and the proxies' ServiceAccount.
    pub async fn new(prefix: &str) -> Result<Self> {
        clear_of_period_boundaries().await;
        let ns = TestNamespace::new(prefix).await?;
        let dir = tempfile::Builder::new()
            .prefix("tollgate-fleet-")
            .tempdir()?;
        let user = format!("tollgate-operator-{}", ns.name);
        // The ClusterRole is cluster-wide: apply it once per test binary (tests run in parallel).
        static CLUSTER_ROLE: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let rbac = repo_root().join("deploy/operator-rbac.yaml");
        {
            let _one_at_a_time = CLUSTER_ROLE
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            ok(ns.kubectl(
                &["apply", "--server-side", "-f", &rbac.display().to_string()],
                None,
            )?)?;
        }
        let bindings = format!(
            "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata: {{name: {user}}}\n\
             roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: tollgate-operator}}\n\
             subjects: [{{apiGroup: rbac.authorization.k8s.io, kind: User, name: {user}}}]\n---\n\
             apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {{name: tollgate-operator}}\n\
             roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: tollgate-operator}}\n\
             subjects: [{{apiGroup: rbac.authorization.k8s.io, kind: User, name: {user}}}]\n---\n\
             apiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: tollgate-proxy}}\n"
        );
        ns.apply_ok(&bindings)?;
        let operator_kubeconfig = cluster().user_kubeconfig(&user, &[])?;
        let token = ok(ns.kubectl(
            &[
                "create",
                "token",
                "tollgate-proxy",
                "--audience",
                "tollgate",
                "--duration",
                "1h",
            ],
            None,
        )?)?;
        let token_file = dir.path().join("token");
        std::fs::write(&token_file, token.trim())?;
        let ca_file = dir.path().join("ca.crt");
        Ok(Self {
            ns,
            dir,
            operator_kubeconfig,
            token_file,
            ca_file,
            operators: Vec::new(),
            proxies: Vec::new(),
            proxy_args: Vec::new(),
            redis: None,
        })
    }

    /// Starts an operator scoped to the namespace; waits until it serves /healthz.
    pub async fn start_operator(&mut self) -> Result<usize> {
        let kubeconfig = self.operator_kubeconfig.clone();
        self.start_operator_as(&kubeconfig, &[]).await
    }

    /// The kubeconfig of the user bound to the operator's RBAC.
    pub fn operator_kubeconfig(&self) -> &std::path::Path {
        &self.operator_kubeconfig
    }

    /// Starts an operator with `kubeconfig` (its identity) and flags that override the defaults
    /// (`("--tls-secret", "x")`).
    pub async fn start_operator_as(
        &mut self,
        kubeconfig: &std::path::Path,
        overrides: &[(&str, &str)],
    ) -> Result<usize> {
        self.start_operator_with_env(kubeconfig, overrides, &[])
            .await
    }

    /// Like [`Fleet::start_operator_as`], with extra environment variables for the process.
    pub async fn start_operator_with_env(
        &mut self,
        kubeconfig: &std::path::Path,
        overrides: &[(&str, &str)],
        env: &[(&str, String)],
    ) -> Result<usize> {
        let index = self.operators.len();
        let log = self.dir.path().join(format!("operator-{index}.log"));
        let mut flags: std::collections::BTreeMap<String, String> = [
            ("--namespace", self.ns.name.clone()),
            ("--operator-namespace", self.ns.name.clone()),
            ("--identity", format!("operator-{index}")),
            // Port 0: the operator picks free ports and logs them; parallel tests never collide.
            ("--config-listen", "127.0.0.1:0".to_owned()),
            ("--admin-listen", "127.0.0.1:0".to_owned()),
            (
                "--proxy-service-account",
                format!("{}:tollgate-proxy", self.ns.name),
            ),
            ("--lease-duration", "3s".to_owned()),
            ("--debounce", "50ms".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        for (k, v) in overrides {
            flags.insert((*k).to_owned(), (*v).to_owned());
        }
        let args: Vec<String> = flags.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let kubeconfig = kubeconfig.to_path_buf();
        let program = workspace_binary("tollgate-operator")?;
        let process = Supervised::spawn_with_env(
            "tollgate-operator",
            &program,
            &args,
            &log,
            None,
            &[
                ("KUBECONFIG", kubeconfig.display().to_string()),
                ("RUST_LOG", "info".into()),
            ]
            .into_iter()
            .chain(env.iter().cloned())
            .collect::<Vec<_>>(),
        )?;
        let addresses =
            logged_addresses(&log, "tollgate-operator starting", &["config=", "admin="]);
        let (config, admin) = match addresses {
            Ok(a) => (a[0], a[1]),
            Err(e) => return Err(e.context(process.log_tail())),
        };
        let webhook = match flags.contains_key("--webhook-listen") {
            true => Some(logged_addresses(&log, "tollgate-operator starting", &["webhook="])?[0]),
            false => None,
        };
        let mut op = OperatorProcess {
            url: format!("https://{config}"),
            admin,
            webhook,
            process,
        };
        eventually(
            Duration::from_secs(30),
            "the operator's /healthz",
            || async {
                get(admin, "/healthz", &[])
                    .await
                    .ok()
                    .filter(|r| r.status == 200)
            },
        )
        .await
        .with_context(|| op.process.log_tail())?;
        if !self.ca_file.exists() {
            let secret = flags
                .get("--tls-secret")
                .map_or("tollgate-operator-tls", String::as_str);
            let ca = ok(self.ns.kubectl(
                &["get", "secret", secret, "-o", "jsonpath={.data.ca\\.crt}"],
                None,
            )?)?;
            use base64::Engine;
            std::fs::write(
                &self.ca_file,
                base64::engine::general_purpose::STANDARD.decode(ca.trim())?,
            )?;
        }
        let _ = op.process.is_running();
        self.operators.push(op);
        Ok(index)
    }

    /// Waits until operator `index` is the ready leader.
    pub async fn wait_leader(&self, index: usize) -> Result<()> {
        let admin = self.operators[index].admin;
        eventually(Duration::from_secs(30), "the operator to lead", || async {
            get(admin, "/readyz", &[])
                .await
                .ok()
                .filter(|r| r.status == 200)
        })
        .await
        .map(|_| ())
        .with_context(|| self.operators[index].process.log_tail())
    }

    /// Stops operator `index` (SIGTERM) and waits for it to exit.
    pub fn stop_operator(&mut self, index: usize) {
        self.operators[index].process.stop_and_wait();
    }

    /// Kills operator `index` with SIGKILL (it releases nothing: its Lease runs out).
    pub fn kill_operator(&mut self, index: usize) {
        self.operators[index].process.kill();
    }

    /// The last lines of every operator's and proxy's log, to attach to a failed wait: what
    /// each process was doing says why the awaited state never came.
    pub fn log_tails(&self) -> String {
        let operators = self
            .operators
            .iter()
            .enumerate()
            .map(|(i, o)| format!("--- operator {i} ---\n{}", o.process.log_tail()));
        let proxies = self.proxies.iter().map(|p| {
            let tail = p.process.as_ref().map(Supervised::log_tail);
            format!("--- proxy {} ---\n{}", p.name, tail.unwrap_or_default())
        });
        operators.chain(proxies).collect::<Vec<_>>().join("\n")
    }

    /// The operator's log.
    pub fn operator_log(&self, index: usize) -> String {
        std::fs::read_to_string(self.operators[index].process.log_path()).unwrap_or_default()
    }

    /// Starts a proxy subscribed to every operator started so far (in order); does not wait.
    pub fn start_proxy(&mut self, name: &str) -> Result<usize> {
        self.add_proxy(name, None)
    }

    fn add_proxy(&mut self, name: &str, token_file: Option<PathBuf>) -> Result<usize> {
        let index = self.proxies.len();
        let state_dir = self.dir.path().join(format!("proxy-{name}-state"));
        let mut proxy = ProxyProcess {
            name: name.to_owned(),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            admin: SocketAddr::from(([127, 0, 0, 1], 0)),
            state_dir,
            token_file,
            process: None,
        };
        self.spawn_proxy(&mut proxy)?;
        self.proxies.push(proxy);
        Ok(index)
    }

    fn spawn_proxy(&self, proxy: &mut ProxyProcess) -> Result<()> {
        let urls: Vec<&str> = self.operators.iter().map(|o| o.url.as_str()).collect();
        let mut args = vec![
            format!("--control-plane={}", urls.join(",")),
            format!("--control-plane-ca={}", self.ca_file.display()),
            format!(
                "--control-plane-token-file={}",
                proxy
                    .token_file
                    .as_ref()
                    .unwrap_or(&self.token_file)
                    .display()
            ),
            format!("--proxy-name={}", proxy.name),
            format!("--listen={}", proxy.listen),
            format!("--admin-listen={}", proxy.admin),
            format!("--state-dir={}", proxy.state_dir.display()),
            "--worker-threads=1".to_owned(),
            "--access-log=false".to_owned(),
        ];
        args.extend(self.proxy_args.iter().cloned());
        let log = self.dir.path().join(format!("proxy-{}.log", proxy.name));
        let _ = std::fs::remove_file(&log);
        let program = workspace_binary("tollgate-proxy")?;
        proxy.process = Some(Supervised::spawn_with_env(
            "tollgate-proxy",
            &program,
            &args,
            &log,
            None,
            &[("RUST_LOG", "info".into())],
        )?);
        // A first start binds port 0 and logs the ports it got; a restart reuses them.
        let addresses = logged_addresses(&log, "tollgate-proxy serving", &["listen=", "admin="])?;
        (proxy.listen, proxy.admin) = (addresses[0], addresses[1]);
        Ok(())
    }

    /// Starts a redis-server on a free port, stopped with the fleet; its URL.
    pub fn start_redis(&mut self) -> Result<String> {
        let server = crate::redis::Redis::start(crate::process::free_port()?);
        let url = server.url();
        self.redis = Some(server);
        Ok(url)
    }

    /// Runs redis-cli against the fleet's redis-server; its output.
    pub fn redis_cli(&self, args: &[&str]) -> Result<String> {
        let redis = self.redis.as_ref().context("no redis-server started")?;
        Ok(redis.cli(args))
    }

    /// Starts a proxy that presents the token in `token_file` (another ServiceAccount's).
    pub fn start_proxy_with_token(&mut self, name: &str, token_file: PathBuf) -> Result<usize> {
        self.add_proxy(name, Some(token_file))
    }

    /// The operator's CA certificate (PEM file), once an operator has started.
    pub fn ca_file(&self) -> &std::path::Path {
        &self.ca_file
    }

    /// The directory for this fleet's files.
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Stops proxy `index` and starts it again with the same name, ports and state dir.
    pub fn restart_proxy(&mut self, index: usize) -> Result<()> {
        let mut proxy = self.proxies.remove(index);
        if let Some(mut p) = proxy.process.take() {
            p.stop_and_wait();
        }
        self.spawn_proxy(&mut proxy)?;
        self.proxies.insert(index, proxy);
        Ok(())
    }

    /// The proxy's log.
    pub fn proxy_log(&self, index: usize) -> String {
        self.proxies[index]
            .process
            .as_ref()
            .map(|p| p.log_tail())
            .unwrap_or_default()
    }

    /// Waits until proxy `index` answers `path` for `key` with `status`.
    pub async fn wait_status(
        &self,
        index: usize,
        path: &str,
        key: &str,
        status: u16,
    ) -> Result<Reply> {
        let addr = self.proxies[index].listen;
        let auth = format!("Bearer {key}");
        eventually(
            Duration::from_secs(20),
            &format!("{path} to answer {status} on proxy {index}"),
            || {
                let auth = auth.clone();
                async move {
                    get(addr, path, &[("authorization", &auth)])
                        .await
                        .ok()
                        .filter(|r| r.status == status)
                }
            },
        )
        .await
        .with_context(|| self.proxy_log(index))
    }

    /// `GET` on proxy `index` with an API key.
    pub async fn call(&self, index: usize, path: &str, key: &str) -> Result<Reply> {
        get(
            self.proxies[index].listen,
            path,
            &[("authorization", &format!("Bearer {key}"))],
        )
        .await
    }

    /// A metric's value from an admin endpoint (first sample whose line starts with `series`).
    pub async fn metric(addr: SocketAddr, series: &str) -> Option<f64> {
        let reply = get(addr, "/metrics", &[]).await.ok()?;
        let text = String::from_utf8_lossy(&reply.body).into_owned();
        text.lines()
            .find(|l| l.starts_with(series))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }
}

/// How many tenants in `tenants`' namespace show a `Ready` condition (written by the operator).
pub async fn tenants_with_status(
    tenants: &kube::Api<tollgate_crds::resources::Tenant>,
) -> Result<usize> {
    let list = tenants.list(&Default::default()).await?;
    Ok(list
        .items
        .iter()
        .filter(|t| {
            t.status
                .as_ref()
                .is_some_and(|s| s.conditions.iter().any(|c| c.type_ == "Ready"))
        })
        .count())
}

/// Waits (up to 30 s) for a log line containing `marker` and parses the `name=ADDR` fields of it.
pub fn logged_addresses(
    log: &std::path::Path,
    marker: &str,
    fields: &[&str],
) -> Result<Vec<SocketAddr>> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(line) = text.lines().rev().find(|l| l.contains(marker)) {
            let parsed: Option<Vec<SocketAddr>> = fields
                .iter()
                .map(|f| {
                    line.split_whitespace()
                        .find_map(|w| w.strip_prefix(f))
                        .and_then(|v| v.parse().ok())
                })
                .collect();
            if let Some(addresses) = parsed {
                return Ok(addresses);
            }
        }
        if text.contains("== exited") || Instant::now() > deadline {
            bail!(
                "no \"{marker}\" line with {fields:?} in {}:\n{text}",
                log.display()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn ok(out: std::process::Output) -> Result<String> {
    if !out.status.success() {
        bail!("kubectl failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl Drop for Fleet {
    fn drop(&mut self) {
        // Processes first: a stopping proxy writes its state dir, which lives in `dir`.
        for proxy in &mut self.proxies {
            if let Some(p) = proxy.process.as_mut() {
                p.stop_and_wait();
            }
        }
        for op in &mut self.operators {
            op.process.stop_and_wait();
        }
        if let Some(redis) = self.redis.as_mut() {
            redis.stop();
        }
    }
}
