//! etcd + kube-apiserver on free loopback ports, with client-certificate auth, RBAC and
//! service-account token signing, as envtest runs them.
//!
//! For a test node ([`crate::node`]) the same servers run inside the node's network namespace, as
//! on a cluster's control-plane node: kube-apiserver listens on the node's address (Services and
//! pods reach it through the `kubernetes` Service), authorizes kubelets with the Node authorizer
//! and admits pods with their ServiceAccounts. The tests reach it through a forwarder on a
//! loopback port of the host.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::netns::{NODE_IP, NodeNamespaces};
use crate::pki::{Ca, CertPair};
use crate::process::{Supervised, free_port};

/// kube-apiserver's port inside a node's network namespace.
pub const NODE_APISERVER_PORT: u16 = 6443;
/// The Service range; the `kubernetes` Service takes its first address.
pub const SERVICE_CIDR: &str = "10.0.0.0/24";
/// The `kubernetes` Service's address.
pub const KUBERNETES_SERVICE_IP: &str = "10.0.0.1";

/// A running local control plane.
#[derive(Debug)]
pub struct LocalControlPlane {
    /// Scratch directory (certificates, etcd data, kubeconfigs); removed when the servers stop.
    pub dir: PathBuf,
    /// `https://127.0.0.1:PORT`.
    pub server: String,
    /// Admin kubeconfig (system:masters).
    pub admin_kubeconfig: PathBuf,
    /// The API server's URL as seen from inside the node's network (the same as `server`
    /// without a node).
    pub node_server: String,
    ca: Ca,
    etcd: Supervised,
    apiserver: Supervised,
    forwarders: Vec<Supervised>,
}

impl LocalControlPlane {
    /// Starts etcd and kube-apiserver from the binaries in `bin` (see tests/testenv/provision.sh),
    /// on the host's loopback, or inside `node`'s network namespace.
    pub fn start(bin: &Path, node: Option<&NodeNamespaces>) -> Result<Self> {
        for name in ["etcd", "kube-apiserver"] {
            if !bin.join(name).is_file() {
                bail!(
                    "{} not found; run tests/testenv/provision.sh (tests/run.sh does)",
                    bin.join(name).display()
                );
            }
        }
        let dir = tempfile::Builder::new()
            .prefix("tollgate-testenv-")
            .tempdir()?
            .keep();
        let ca = Ca::new("tollgate-test-ca")?;
        let node_ip = NODE_IP.to_string();
        let serving = if node.is_some() {
            // Reached as pods reach it: by the Service's names and address, and the node's.
            ca.server(&[
                "localhost",
                "127.0.0.1",
                &node_ip,
                KUBERNETES_SERVICE_IP,
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
            ])?
        } else {
            ca.server(&["localhost", "127.0.0.1"])?
        };
        let admin = ca.client("tollgate-test-admin", &["system:masters"])?;
        write(&dir.join("ca.crt"), &ca.cert_pem)?;
        write(&dir.join("apiserver.crt"), &serving.cert_pem)?;
        write(&dir.join("apiserver.key"), &serving.key_pem)?;
        // Service-account tokens are signed with this key and verified with its public half.
        let sa_key = rcgen::KeyPair::generate()?;
        write(&dir.join("sa.key"), &sa_key.serialize_pem())?;
        write(&dir.join("sa.pub"), &sa_key.public_key_pem())?;

        let etcd_port = free_port()?;
        let peer_port = free_port()?;
        let etcd_url = format!("http://127.0.0.1:{etcd_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let etcd = spawn_in(
            node,
            "etcd",
            &bin.join("etcd"),
            vec![
                "--name=default".into(),
                format!("--data-dir={}", dir.join("etcd").display()),
                format!("--listen-client-urls={etcd_url}"),
                format!("--advertise-client-urls={etcd_url}"),
                format!("--listen-peer-urls={peer_url}"),
                format!("--initial-advertise-peer-urls={peer_url}"),
                format!("--initial-cluster=default={peer_url}"),
                "--unsafe-no-fsync=true".into(),
                "--log-level=warn".into(),
            ],
            &dir.join("etcd.log"),
            Some(&dir),
        )?;

        let host_port = free_port()?;
        let server = format!("https://127.0.0.1:{host_port}");
        let port = if node.is_some() {
            NODE_APISERVER_PORT
        } else {
            host_port
        };
        let mut args = vec![
            format!("--etcd-servers={etcd_url}"),
            format!("--cert-dir={}", dir.join("certs").display()),
            format!("--tls-cert-file={}", dir.join("apiserver.crt").display()),
            format!(
                "--tls-private-key-file={}",
                dir.join("apiserver.key").display()
            ),
            format!("--client-ca-file={}", dir.join("ca.crt").display()),
            format!("--secure-port={port}"),
            format!("--service-cluster-ip-range={SERVICE_CIDR}"),
            "--allow-privileged=true".into(),
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
            format!(
                "--service-account-key-file={}",
                dir.join("sa.pub").display()
            ),
            format!(
                "--service-account-signing-key-file={}",
                dir.join("sa.key").display()
            ),
            "--enable-priority-and-fairness=false".into(),
            "--v=1".into(),
        ];
        if node.is_some() {
            // Kubelets act as their Node; the API server reaches them (logs, exec) as a master.
            let kubelet_client = ca.client("kube-apiserver-kubelet-client", &["system:masters"])?;
            write(&dir.join("kubelet-client.crt"), &kubelet_client.cert_pem)?;
            write(&dir.join("kubelet-client.key"), &kubelet_client.key_pem)?;
            args.extend([
                "--bind-address=0.0.0.0".into(),
                format!("--advertise-address={node_ip}"),
                "--authorization-mode=Node,RBAC".into(),
                "--enable-admission-plugins=NodeRestriction".into(),
                format!(
                    "--kubelet-client-certificate={}",
                    dir.join("kubelet-client.crt").display()
                ),
                format!(
                    "--kubelet-client-key={}",
                    dir.join("kubelet-client.key").display()
                ),
                "--kubelet-preferred-address-types=InternalIP".into(),
            ]);
        } else {
            // No controller-manager creates ServiceAccounts here, so pods are admitted without.
            args.extend([
                "--bind-address=127.0.0.1".into(),
                "--advertise-address=127.0.0.1".into(),
                "--disable-admission-plugins=ServiceAccount".into(),
                "--authorization-mode=RBAC".into(),
            ]);
        }
        let apiserver = spawn_in(
            node,
            "kube-apiserver",
            &bin.join("kube-apiserver"),
            args,
            &dir.join("kube-apiserver.log"),
            Some(&dir),
        )?;
        let mut forwarders = Vec::new();
        let node_server = match node {
            None => server.clone(),
            Some(node) => {
                // host 127.0.0.1:PORT -> a Unix socket in the scratch directory (sockets cross
                // network namespaces by path) -> 127.0.0.1:6443 inside the node's network.
                let socket = dir.join("apiserver.sock");
                forwarders.push(spawn_in(
                    Some(node),
                    "apiserver-forwarder-inside",
                    Path::new("/usr/bin/socat"),
                    vec![
                        format!("UNIX-LISTEN:{},fork,unlink-early", socket.display()),
                        format!("TCP:127.0.0.1:{NODE_APISERVER_PORT}"),
                    ],
                    &dir.join("forwarder-inside.log"),
                    None,
                )?);
                forwarders.push(Supervised::spawn(
                    "apiserver-forwarder",
                    Path::new("/usr/bin/socat"),
                    &[
                        format!("TCP-LISTEN:{host_port},bind=127.0.0.1,fork,reuseaddr"),
                        format!("UNIX-CONNECT:{}", socket.display()),
                    ],
                    &dir.join("forwarder.log"),
                    None,
                )?);
                format!("https://127.0.0.1:{NODE_APISERVER_PORT}")
            }
        };

        let admin_kubeconfig = dir.join("admin.kubeconfig");
        write(
            &admin_kubeconfig,
            &kubeconfig(&server, &ca.cert_pem, "admin", &admin),
        )?;
        let mut plane = Self {
            dir,
            server,
            admin_kubeconfig,
            node_server,
            ca,
            etcd,
            apiserver,
            forwarders,
        };
        plane.wait_ready(Duration::from_secs(90))?;
        Ok(plane)
    }

    fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let servers = [&mut self.etcd, &mut self.apiserver]
                .into_iter()
                .chain(self.forwarders.iter_mut());
            for server in servers {
                if !server.is_running() {
                    bail!(
                        "{} exited during start-up:\n{}",
                        server.name(),
                        server.log_tail()
                    );
                }
            }
            let ready = Command::new("kubectl")
                .arg("--kubeconfig")
                .arg(&self.admin_kubeconfig)
                .args(["get", "--raw", "/readyz"])
                .output()
                .context("running kubectl (is it installed?)")?;
            if ready.status.success() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "kube-apiserver not ready after {timeout:?}: {}\n{}",
                    String::from_utf8_lossy(&ready.stderr),
                    self.apiserver.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// A kubeconfig for `user` in `groups`, authenticated by a client certificate from the test CA.
    pub fn user_kubeconfig(&self, user: &str, groups: &[&str]) -> Result<PathBuf> {
        let cert = self.ca.client(user, groups)?;
        let path = self.dir.join(format!("user-{user}.kubeconfig"));
        write(
            &path,
            &kubeconfig(&self.server, &self.ca.cert_pem, user, &cert),
        )?;
        Ok(path)
    }

    /// A kubeconfig for `user` in `groups` that reaches the API server from inside the node's
    /// network (for kubelet, kube-proxy, the scheduler...).
    pub fn node_kubeconfig(&self, user: &str, groups: &[&str]) -> Result<PathBuf> {
        let cert = self.ca.client(user, groups)?;
        let path = self
            .dir
            .join(format!("node-{user}.kubeconfig").replace(':', "-"));
        write(
            &path,
            &kubeconfig(&self.node_server, &self.ca.cert_pem, user, &cert),
        )?;
        Ok(path)
    }

    /// The test CA's certificate file (it signs the API server's serving certificate and every
    /// client certificate).
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    /// The ServiceAccount token signing key file.
    pub fn service_account_key_file(&self) -> PathBuf {
        self.dir.join("sa.key")
    }
}

/// Spawns a server on the host, or inside `node`'s network namespace.
fn spawn_in(
    node: Option<&NodeNamespaces>,
    name: &str,
    program: &Path,
    args: Vec<String>,
    log: &Path,
    scratch: Option<&Path>,
) -> Result<Supervised> {
    match node {
        None => Supervised::spawn(name, program, &args, log, scratch),
        Some(node) => {
            let mut full = node.enter_net();
            full.push(program.display().to_string());
            full.extend(args);
            Supervised::spawn(name, Path::new("/usr/bin/nsenter"), &full, log, scratch)
        }
    }
}

fn write(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

fn b64(text: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(text)
}

/// A kubeconfig with embedded CA and client certificate.
fn kubeconfig(server: &str, ca_pem: &str, user: &str, cert: &CertPair) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\n\
         users:\n- name: {user}\n  user:\n    client-certificate-data: {crt}\n    client-key-data: {key}\n\
         contexts:\n- name: test\n  context: {{cluster: test, user: {user}}}\ncurrent-context: test\n",
        ca = b64(ca_pem),
        crt = b64(&cert.cert_pem),
        key = b64(&cert.key_pem),
    )
}
