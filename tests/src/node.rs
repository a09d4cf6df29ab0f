//! A real Kubernetes node for the end-to-end tests: kubelet on containerd (runc, Debian's CNI
//! bridge), kube-proxy, cluster DNS (CoreDNS), and the controller-manager and scheduler beside the
//! API server — all inside the node's own namespaces ([`crate::netns`]), so pod addresses
//! (10.88.0.0/24) and Service addresses (10.0.0.0/24) exist only there. Images come from OCI
//! archives built offline ([`crate::images`]) and imported into the node's containerd.
//!
//! Settings this machine needs, measured (../shared/notes/node-spike.md):
//! - `restrict_oom_score_adj`: the test process lacks CAP_SYS_RESOURCE, so runc cannot set the
//!   negative oom_score_adj containerd asks for sandboxes;
//! - kubelet without QoS cgroups (`cgroupsPerQOS: false`), cgroupfs driver, no swap check (the
//!   containers' cgroups, `k8s.io/<id>`, are removed when the test binary ends: see netns.rs);
//! - kube-proxy masquerades all Service traffic (`masqueradeAll`): pods on one bridge then see
//!   replies come back through the node, without br_netfilter.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

use crate::control_plane::LocalControlPlane;
use crate::images::Image;
use crate::netns::{NODE_IP, NodeNamespaces};
use crate::process::Supervised;

/// The node's name.
pub const NODE_NAME: &str = "tollgate-node";
/// The pods' address range on the node's bridge.
pub const POD_CIDR: &str = "10.88.0.0/24";
/// Cluster DNS listens on the node's address (kubelet's `clusterDNS`).
pub const CLUSTER_DOMAIN: &str = "cluster.local";

/// A running node.
#[derive(Debug)]
pub struct Node {
    /// The node's namespaces: reach pod and Service addresses through them.
    pub namespaces: NodeNamespaces,
    dir: PathBuf,
    containerd_socket: PathBuf,
    containerd_args: Vec<String>,
    daemons: Mutex<Vec<Supervised>>,
    /// Time from nothing to a Ready node with working DNS.
    pub started_in: Duration,
}

impl Node {
    /// Starts the controller-manager, the scheduler, containerd, kubelet, kube-proxy and CoreDNS
    /// for `plane`, which runs in `namespaces` already; waits until the node is Ready.
    /// `images` are imported before kubelet starts (the pause image among them).
    pub fn start(
        bin: &Path,
        plane: &LocalControlPlane,
        namespaces: NodeNamespaces,
        started: Instant,
        images: &[Image],
    ) -> Result<Self> {
        for name in [
            "kube-controller-manager",
            "kube-scheduler",
            "kubelet",
            "kube-proxy",
            "coredns",
        ] {
            ensure!(
                bin.join(name).is_file(),
                "{} not found; run tests/testenv/provision.sh (tests/run.sh does)",
                bin.join(name).display()
            );
        }
        for program in [
            "/usr/bin/containerd",
            "/usr/sbin/runc",
            "/usr/lib/cni/bridge",
        ] {
            ensure!(
                Path::new(program).exists(),
                "{program} not found: apt-get install containerd runc containernetworking-plugins (tests/run.sh does)"
            );
        }
        // In the namespaces' directory, removed after everything in them is gone (the control
        // plane's goes when etcd and kube-apiserver stop, while kubelet may still write).
        let dir = namespaces.dir().join("node");
        std::fs::create_dir_all(&dir)?;
        let mut node = Self {
            namespaces,
            containerd_socket: dir.join("containerd.sock"),
            containerd_args: Vec::new(),
            dir,
            daemons: Mutex::new(Vec::new()),
            started_in: Duration::ZERO,
        };
        node.start_controllers(bin, plane)?;
        node.start_containerd(images)?;
        node.start_kubelet(bin, plane)?;
        node.start_kube_proxy(bin, plane)?;
        node.start_dns(bin, plane)?;
        node.wait_ready(plane, Duration::from_secs(120))?;
        node.started_in = started.elapsed();
        Ok(node)
    }

    /// Starts a daemon through `nsenter ENTER program args`, logging to DIR/NAME.log.
    fn spawn(&self, enter: Vec<String>, name: &str, program: &Path, args: &[String]) -> Result<()> {
        let mut full = enter;
        full.push(program.display().to_string());
        full.extend_from_slice(args);
        let log = self.dir.join(format!("{name}.log"));
        let daemon = Supervised::spawn(name, Path::new("/usr/bin/nsenter"), &full, &log, None)?;
        self.daemons().push(daemon);
        Ok(())
    }

    /// A daemon in the node's network only.
    fn spawn_net(&self, name: &str, program: &Path, args: Vec<String>) -> Result<()> {
        self.spawn(self.namespaces.enter_net(), name, program, &args)
    }

    /// A daemon that starts containers or mounts volumes: in all three namespaces.
    fn spawn_all(&self, name: &str, program: &Path, args: &[String]) -> Result<()> {
        self.spawn(self.namespaces.enter_all(), name, program, args)
    }

    fn start_controllers(&mut self, bin: &Path, plane: &LocalControlPlane) -> Result<()> {
        let cm = plane.node_kubeconfig("system:kube-controller-manager", &[])?;
        let cm = cm.display().to_string();
        self.spawn_net(
            "kube-controller-manager",
            &bin.join("kube-controller-manager"),
            vec![
                format!("--kubeconfig={cm}"),
                format!("--authentication-kubeconfig={cm}"),
                format!("--authorization-kubeconfig={cm}"),
                // kube-root-ca.crt in every namespace: what pods trust the API server with.
                format!("--root-ca-file={}", plane.ca_file().display()),
                format!(
                    "--service-account-private-key-file={}",
                    plane.service_account_key_file().display()
                ),
                "--use-service-account-credentials=true".into(),
                "--leader-elect=false".into(),
                "--bind-address=127.0.0.1".into(),
                "--v=1".into(),
            ],
        )?;
        let scheduler = plane.node_kubeconfig("system:kube-scheduler", &[])?;
        let scheduler = scheduler.display().to_string();
        self.spawn_net(
            "kube-scheduler",
            &bin.join("kube-scheduler"),
            vec![
                format!("--kubeconfig={scheduler}"),
                format!("--authentication-kubeconfig={scheduler}"),
                format!("--authorization-kubeconfig={scheduler}"),
                "--leader-elect=false".into(),
                "--bind-address=127.0.0.1".into(),
                "--v=1".into(),
            ],
        )
    }

    fn start_containerd(&mut self, images: &[Image]) -> Result<()> {
        let sandbox = images
            .iter()
            .find(|image| image.name == "pause")
            .context("the pause image is needed for pod sandboxes")?;
        let cni = self.dir.join("cni");
        std::fs::create_dir_all(&cni)?;
        std::fs::write(
            cni.join("10-tollgate-test.conflist"),
            serde_json::json!({
                "cniVersion": "1.0.0",
                "name": "tollgate-test",
                "plugins": [
                    {
                        "type": "bridge",
                        "bridge": "cni0",
                        "isGateway": true,
                        "ipMasq": true,
                        "hairpinMode": true,
                        "ipam": {
                            "type": "host-local",
                            "ranges": [[{"subnet": POD_CIDR}]],
                            "routes": [{"dst": "0.0.0.0/0"}],
                            "dataDir": self.dir.join("cni-ipam").display().to_string(),
                        }
                    },
                    {"type": "portmap", "capabilities": {"portMappings": true}}
                ]
            })
            .to_string(),
        )?;
        let config = self.dir.join("containerd.toml");
        std::fs::write(
            &config,
            format!(
                r#"version = 2
root = "{dir}/containerd/root"
state = "{dir}/containerd/state"
[grpc]
  address = "{socket}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{sandbox}"
  # This machine's root lacks CAP_SYS_RESOURCE: no negative oom_score_adj.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{cni}"
"#,
                dir = self.dir.display(),
                socket = self.containerd_socket.display(),
                sandbox = sandbox.reference,
                cni = cni.display(),
            ),
        )?;
        self.containerd_args = vec!["--config".into(), config.display().to_string()];
        self.spawn_all(
            "containerd",
            Path::new("/usr/bin/containerd"),
            &self.containerd_args,
        )?;
        self.wait_containerd()?;
        for image in images {
            self.import(image)?;
        }
        Ok(())
    }

    fn daemons(&self) -> std::sync::MutexGuard<'_, Vec<Supervised>> {
        self.daemons
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn wait_containerd(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.ctr(&["version"]).is_err() {
            if Instant::now() > deadline {
                bail!("containerd did not start:\n{}", self.log_tail("containerd"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    /// `ctr -n k8s.io ARGS` against the node's containerd; stdout.
    pub fn ctr(&self, args: &[&str]) -> Result<String> {
        let out = Command::new("ctr")
            .arg("--address")
            .arg(&self.containerd_socket)
            .args(["--namespace", "k8s.io"])
            .args(args)
            .output()
            .context("ctr (Debian package containerd)")?;
        ensure!(
            out.status.success(),
            "ctr {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The shell command that imports an image archive (its path appended) into the node's
    /// containerd, for processes other than this one (`testenv --node`).
    pub fn image_load_command(&self) -> String {
        // Single-quoted for the shell (a quote inside is closed, escaped and reopened).
        let socket = self.containerd_socket.display().to_string();
        format!(
            "ctr --address '{}' --namespace k8s.io images import",
            socket.replace('\'', r"'\''")
        )
    }

    /// Removes an image from the node's containerd (by its reference).
    pub fn remove_image(&self, image: &Image) -> Result<()> {
        self.ctr(&["images", "rm", &image.reference])?;
        Ok(())
    }

    /// Imports an image archive into the node's containerd (what `kind load image-archive`
    /// does).
    pub fn import(&self, image: &Image) -> Result<()> {
        self.ctr(&["images", "import", &image.archive.display().to_string()])?;
        Ok(())
    }

    fn start_kubelet(&mut self, bin: &Path, plane: &LocalControlPlane) -> Result<()> {
        let kubeconfig =
            plane.node_kubeconfig(&format!("system:node:{NODE_NAME}"), &["system:nodes"])?;
        let root = self.dir.join("kubelet");
        std::fs::create_dir_all(&root)?;
        // Pods that do not use cluster DNS resolve through it too: nothing outside exists.
        let resolv = self.dir.join("resolv.conf");
        std::fs::write(&resolv, format!("nameserver {NODE_IP}\n"))?;
        let config = self.dir.join("kubelet.yaml");
        std::fs::write(
            &config,
            format!(
                r#"apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: {NODE_IP}
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
containerRuntimeEndpoint: unix://{socket}
cgroupDriver: cgroupfs
cgroupsPerQOS: false
enforceNodeAllocatable: []
failSwapOn: false
localStorageCapacityIsolation: false
clusterDNS: [{NODE_IP}]
clusterDomain: {CLUSTER_DOMAIN}
resolvConf: {resolv}
authentication:
  anonymous: {{enabled: false}}
  webhook: {{enabled: false}}
  x509: {{clientCAFile: {ca}}}
authorization: {{mode: AlwaysAllow}}
# The machine's disk is shared with everything else: never evict test pods for it.
evictionHard: {{memory.available: "1Mi", nodefs.available: "1%", imagefs.available: "1%", nodefs.inodesFree: "1%"}}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
rotateCertificates: false
syncFrequency: 10s
fileCheckFrequency: 10s
"#,
                socket = self.containerd_socket.display(),
                resolv = resolv.display(),
                ca = plane.ca_file().display(),
            ),
        )?;
        self.spawn_all(
            "kubelet",
            &bin.join("kubelet"),
            &[
                format!("--config={}", config.display()),
                format!("--kubeconfig={}", kubeconfig.display()),
                format!("--root-dir={}", root.display()),
                format!("--cert-dir={}", self.dir.join("kubelet-pki").display()),
                format!("--hostname-override={NODE_NAME}"),
                format!("--node-ip={NODE_IP}"),
                "--v=1".into(),
            ],
        )
    }

    fn start_kube_proxy(&mut self, bin: &Path, plane: &LocalControlPlane) -> Result<()> {
        let kubeconfig = plane.node_kubeconfig("system:kube-proxy", &[])?;
        let config = self.dir.join("kube-proxy.yaml");
        std::fs::write(
            &config,
            format!(
                r#"apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {{kubeconfig: {kubeconfig}}}
hostnameOverride: {NODE_NAME}
mode: iptables
clusterCIDR: {POD_CIDR}
iptables: {{masqueradeAll: true}}
conntrack: {{maxPerCore: 0}}
metricsBindAddress: 127.0.0.1:10249
healthzBindAddress: 127.0.0.1:10256
"#,
                kubeconfig = kubeconfig.display(),
            ),
        )?;
        self.spawn_net(
            "kube-proxy",
            &bin.join("kube-proxy"),
            vec![format!("--config={}", config.display()), "--v=1".into()],
        )
    }

    fn start_dns(&mut self, bin: &Path, plane: &LocalControlPlane) -> Result<()> {
        let kubeconfig = plane.node_kubeconfig("system:coredns", &["system:masters"])?;
        let corefile = self.dir.join("Corefile");
        std::fs::write(
            &corefile,
            format!(
                r#".:53 {{
    errors
    health 127.0.0.1:18080
    ready 127.0.0.1:18181
    kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{
        kubeconfig {kubeconfig} test
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
        ttl 5
    }}
    cache 5
}}
"#,
                kubeconfig = kubeconfig.display(),
            ),
        )?;
        self.spawn_net(
            "coredns",
            &bin.join("coredns"),
            vec!["-conf".into(), corefile.display().to_string()],
        )
    }

    fn wait_ready(&mut self, plane: &LocalControlPlane, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            for daemon in self.daemons().iter_mut() {
                if !daemon.is_running() {
                    bail!(
                        "{} exited during start-up:\n{}",
                        daemon.name(),
                        daemon.log_tail()
                    );
                }
            }
            let ready = crate::kubectl_with(
                &plane.admin_kubeconfig,
                &[
                    "get",
                    "node",
                    NODE_NAME,
                    "-o",
                    "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
                ],
                None,
            )?;
            let dns = self
                .namespaces
                .run("curl", &["-sf", "http://127.0.0.1:18181/ready"])?;
            if String::from_utf8_lossy(&ready.stdout).trim() == "True" && dns.status.success() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "node {NODE_NAME} not Ready with DNS after {timeout:?}: {}\nkubelet:\n{}\ncoredns:\n{}",
                    String::from_utf8_lossy(&ready.stderr),
                    self.log_tail("kubelet"),
                    self.log_tail("coredns"),
                );
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// The last lines of a daemon's log (kubelet, containerd, kube-proxy, coredns,
    /// kube-controller-manager, kube-scheduler).
    pub fn log_tail(&self, name: &str) -> String {
        self.daemons()
            .iter()
            .find(|d| d.name() == name)
            .map(Supervised::log_tail)
            .unwrap_or_default()
    }

    /// A TCP connection to a pod or Service address, from inside the node's network.
    pub fn connect(&self, address: SocketAddr) -> Result<std::net::TcpStream> {
        self.namespaces.connect(address, Duration::from_secs(5))
    }

    /// SIGKILLs a container's process, as a crash or the kernel's OOM killer would: nothing in it
    /// gets to clean up (a leader does not release its Lease). `id` is the container ID of the
    /// pod's status without its `containerd://` prefix.
    pub fn kill_container(&self, id: &str) -> Result<()> {
        self.ctr(&["tasks", "kill", "--signal", "SIGKILL", id])?;
        Ok(())
    }

    /// Freezes a container's processes (the cgroup freezer): a hung process, or one cut off
    /// from everything, that still exists. [`Node::resume_container`] thaws it.
    pub fn pause_container(&self, id: &str) -> Result<()> {
        self.ctr(&["tasks", "pause", id])?;
        Ok(())
    }

    /// Thaws a container frozen by [`Node::pause_container`].
    pub fn resume_container(&self, id: &str) -> Result<()> {
        self.ctr(&["tasks", "resume", id])?;
        Ok(())
    }

    /// Stops containerd (its containers keep running, as on a real node) and starts it again.
    pub fn restart_containerd(&self) -> Result<()> {
        let index = self
            .daemons()
            .iter()
            .position(|d| d.name() == "containerd")
            .context("containerd is not running")?;
        let mut old = self.daemons().remove(index);
        old.stop_and_wait();
        self.spawn_all(
            "containerd",
            Path::new("/usr/bin/containerd"),
            &self.containerd_args,
        )?;
        self.wait_containerd()
    }
}
