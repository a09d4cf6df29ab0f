//! Real redis-server processes (Debian's package) on free ports: one server, one with TLS, or a
//! three-node Redis Cluster. Shared by the proxy's and the operator's tests.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

fn free_port() -> u16 {
    crate::process::free_port().expect("a free port on 127.0.0.1")
}

#[derive(Debug)]
pub struct Redis {
    pub port: u16,
    child: Option<Child>,
    /// Its working directory: Redis loads a dump.rdb it finds there, so never the test's cwd.
    _dir: Option<tempfile::TempDir>,
    /// What redis-cli needs to reach this server (TLS options included).
    cli: Vec<String>,
    scheme: &'static str,
}

/// A Redis program that runs on the system clock even when the tests run on a moved one
/// (tests/at-dates.sh): libfaketime cannot run Redis (jemalloc's first clock call, made before
/// libfaketime is ready, recurses and fails). So Redis's clock is then months from the proxies',
/// which is what the store's rule for keys is built for: the proxies' clocks name the periods,
/// Redis only counts key lifetimes down.
fn on_system_clock(program: &str) -> Command {
    let mut command = Command::new(program);
    command.env_remove("LD_PRELOAD").env_remove("FAKETIME");
    command
}

fn wait_for_port(port: u16) {
    // Up to 20 s: a loaded machine can be slow to start a server.
    for _ in 0..1000 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("redis-server did not listen on {port}");
}

impl Redis {
    pub fn start(port: u16) -> Self {
        Self::start_with(port, &["--appendonly", "no"])
    }

    pub fn start_with(port: u16, extra: &[&str]) -> Self {
        let mut args = vec!["--port".to_owned(), port.to_string()];
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        Self::spawn(port, &args, vec![], "redis")
    }

    /// A TLS-only server (`--port 0`) with `cert`/`key` signed by `ca`. With `client` (a
    /// certificate and key signed by `ca`), clients must present a certificate (mutual TLS) and
    /// redis-cli uses that one.
    pub fn start_tls(
        port: u16,
        ca: &Path,
        cert: &Path,
        key: &Path,
        client: Option<(&Path, &Path)>,
    ) -> Self {
        let path = |p: &Path| p.display().to_string();
        let args = vec![
            "--port".to_owned(),
            "0".to_owned(),
            "--tls-port".to_owned(),
            port.to_string(),
            "--tls-cert-file".to_owned(),
            path(cert),
            "--tls-key-file".to_owned(),
            path(key),
            "--tls-ca-cert-file".to_owned(),
            path(ca),
            "--tls-auth-clients".to_owned(),
            if client.is_some() { "yes" } else { "no" }.to_owned(),
        ];
        let mut cli = vec!["--tls".to_owned(), "--cacert".to_owned(), path(ca)];
        if let Some((cert, key)) = client {
            cli.extend([
                "--cert".to_owned(),
                path(cert),
                "--key".to_owned(),
                path(key),
            ]);
        }
        Self::spawn(port, &args, cli, "rediss")
    }

    fn spawn(port: u16, args: &[String], cli: Vec<String>, scheme: &'static str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let child = on_system_clock("redis-server")
            .args(["--bind", "127.0.0.1", "--save", ""])
            .arg("--dir")
            .arg(dir.path())
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (Debian package redis-server) is needed");
        wait_for_port(port);
        let mut cli = cli;
        cli.extend(["-p".to_owned(), port.to_string()]);
        Self {
            port,
            child: Some(child),
            _dir: Some(dir),
            cli,
            scheme,
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn url(&self) -> String {
        format!("{}://127.0.0.1:{}", self.scheme, self.port)
    }

    /// Runs redis-cli against this server with `args`; its stdout.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = on_system_clock("redis-cli")
            .args(&self.cli)
            .args(args)
            .output()
            .expect("redis-cli (Debian package redis-tools) is needed");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The sum of every tollgate counter key matching `pattern` (settled keys left out).
    pub fn total(&self, pattern: &str) -> i64 {
        self.sum_keys(pattern, false)
    }

    /// The sum of the settled keys (`tollgate:{tenant|plan}:settled:quota:start`, what the fleet
    /// admitted and finished charging) matching `pattern`.
    pub fn settled(&self, pattern: &str) -> i64 {
        self.sum_keys(pattern, true)
    }

    fn sum_keys(&self, pattern: &str, settled: bool) -> i64 {
        self.cli(&["--scan", "--pattern", pattern])
            .lines()
            .filter(|k| is_settled_key(k) == settled)
            .map(|k| self.cli(&["GET", k]).trim().parse::<i64>().unwrap_or(0))
            .sum()
    }
}

/// Whether `key` is a settled key: after the hash tag, `:settled:quota:start` (a counter's is
/// `:quota:start`, so a quota named `settled` is not mistaken for one).
fn is_settled_key(key: &str) -> bool {
    key.rsplit_once('}')
        .is_some_and(|(_, rest)| rest.starts_with(":settled:") && rest.matches(':').count() == 3)
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A Redis Cluster of three primaries (no replicas), every slot assigned.
#[derive(Debug)]
pub struct RedisCluster {
    pub nodes: Vec<Redis>,
    _dir: tempfile::TempDir,
}

impl RedisCluster {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let nodes: Vec<Redis> = (0..3)
            .map(|i| {
                let port = free_port();
                let node_dir = dir.path().join(format!("node{i}"));
                std::fs::create_dir_all(&node_dir).expect("mkdir");
                Redis::start_with(
                    port,
                    &[
                        "--cluster-enabled",
                        "yes",
                        "--appendonly",
                        "no",
                        "--dir",
                        node_dir.to_str().expect("utf-8 path"),
                    ],
                )
            })
            .collect();
        let addresses: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let created = on_system_clock("redis-cli")
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli --cluster create");
        assert!(
            created.status.success(),
            "cluster create: {}",
            String::from_utf8_lossy(&created.stdout)
        );
        for _ in 0..200 {
            if nodes
                .iter()
                .all(|n| n.cli(&["CLUSTER", "INFO"]).contains("cluster_state:ok"))
            {
                return Self { nodes, _dir: dir };
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("the Redis Cluster never reached cluster_state:ok");
    }

    /// A `redis+cluster://` URL naming the first two nodes as seeds (the third is discovered).
    pub fn url(&self) -> String {
        format!(
            "redis+cluster://127.0.0.1:{},127.0.0.1:{}",
            self.nodes[0].port, self.nodes[1].port
        )
    }

    /// The sum over every node of the counter keys matching `pattern`.
    pub fn total(&self, pattern: &str) -> i64 {
        self.nodes.iter().map(|n| n.total(pattern)).sum()
    }

    /// The sum over every node of the settled keys matching `pattern`.
    pub fn settled(&self, pattern: &str) -> i64 {
        self.nodes.iter().map(|n| n.settled(pattern)).sum()
    }
}

/// A master, one replica and one Sentinel watching them (master name `tollgate`), with a fast
/// failover (down after 500 ms).
#[derive(Debug)]
pub struct RedisSentinel {
    pub master: Redis,
    pub replica: Redis,
    pub sentinel: Redis,
    _dir: tempfile::TempDir,
}

impl RedisSentinel {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let master = Redis::start(free_port());
        let replica_port = free_port();
        let replica = Redis::start_with(
            replica_port,
            &["--replicaof", "127.0.0.1", &master.port.to_string()],
        );
        let sentinel_port = free_port();
        let config = dir.path().join("sentinel.conf");
        std::fs::write(
            &config,
            format!(
                "port {sentinel_port}\nbind 127.0.0.1\ndir {}\n\
                 sentinel monitor tollgate 127.0.0.1 {} 1\n\
                 sentinel down-after-milliseconds tollgate 500\n\
                 sentinel failover-timeout tollgate 2000\n",
                dir.path().display(),
                master.port
            ),
        )
        .expect("write sentinel.conf");
        let child = on_system_clock("redis-server")
            .arg(&config)
            .arg("--sentinel")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server --sentinel");
        wait_for_port(sentinel_port);
        let sentinel = Redis {
            port: sentinel_port,
            child: Some(child),
            _dir: None,
            cli: vec!["-p".to_owned(), sentinel_port.to_string()],
            scheme: "redis",
        };
        // The Sentinel learns about the replica from the master's INFO (at most 10 s).
        for _ in 0..300 {
            let replicas = sentinel.cli(&["SENTINEL", "REPLICAS", "tollgate"]);
            if replicas.contains(&replica_port.to_string()) {
                return Self {
                    master,
                    replica,
                    sentinel,
                    _dir: dir,
                };
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("the Sentinel never saw the replica");
    }

    pub fn url(&self) -> String {
        format!("redis+sentinel://127.0.0.1:{}/tollgate", self.sentinel.port)
    }
}
