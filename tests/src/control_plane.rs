//! etcd + kube-apiserver on free loopback ports, with client-certificate auth, RBAC and
//! service-account token signing, as envtest runs them.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::pki::{Ca, CertPair};
use crate::process::{Supervised, free_port};

/// A running local control plane.
#[derive(Debug)]
pub struct LocalControlPlane {
    /// Scratch directory (certificates, etcd data, kubeconfigs); removed when the servers stop.
    pub dir: PathBuf,
    /// `https://127.0.0.1:PORT`.
    pub server: String,
    /// Admin kubeconfig (system:masters).
    pub admin_kubeconfig: PathBuf,
    ca: Ca,
    etcd: Supervised,
    apiserver: Supervised,
}

impl LocalControlPlane {
    /// Starts etcd and kube-apiserver from the binaries in `bin` (see tests/testenv/provision.sh).
    pub fn start(bin: &Path) -> Result<Self> {
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
        let serving = ca.server(&["localhost", "127.0.0.1"])?;
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
        let etcd = Supervised::spawn(
            "etcd",
            &bin.join("etcd"),
            &[
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

        let port = free_port()?;
        let server = format!("https://127.0.0.1:{port}");
        let apiserver = Supervised::spawn(
            "kube-apiserver",
            &bin.join("kube-apiserver"),
            &[
                format!("--etcd-servers={etcd_url}"),
                format!("--cert-dir={}", dir.join("certs").display()),
                format!("--tls-cert-file={}", dir.join("apiserver.crt").display()),
                format!(
                    "--tls-private-key-file={}",
                    dir.join("apiserver.key").display()
                ),
                format!("--client-ca-file={}", dir.join("ca.crt").display()),
                format!("--secure-port={port}"),
                "--bind-address=127.0.0.1".into(),
                "--advertise-address=127.0.0.1".into(),
                "--service-cluster-ip-range=10.0.0.0/24".into(),
                "--allow-privileged=true".into(),
                "--disable-admission-plugins=ServiceAccount".into(),
                "--authorization-mode=RBAC".into(),
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
            ],
            &dir.join("kube-apiserver.log"),
            Some(&dir),
        )?;

        let admin_kubeconfig = dir.join("admin.kubeconfig");
        write(
            &admin_kubeconfig,
            &kubeconfig(&server, &ca.cert_pem, "admin", &admin),
        )?;
        let mut plane = Self {
            dir,
            server,
            admin_kubeconfig,
            ca,
            etcd,
            apiserver,
        };
        plane.wait_ready(Duration::from_secs(90))?;
        Ok(plane)
    }

    fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            for server in [&mut self.etcd, &mut self.apiserver] {
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
