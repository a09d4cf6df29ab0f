//! A cluster that runs pods, and the way tests reach them: the local test node
//! ([`crate::node`]), or an existing cluster named by `TOLLGATE_TEST_KUBECONFIG` (kind, k3d...).
//!
//! On the local node, pod and Service addresses exist only inside the node's network namespace:
//! the tests connect from inside it, through kube-proxy, as a client in the cluster would. On an
//! existing cluster those addresses are not reachable from the test machine, so each [`Target`]
//! gets a `kubectl port-forward` of its own. A port-forward to a Service picks one of its pods and
//! ends with that pod: what depends on the Service's load balancing, or on the node itself
//! (freezing a container, restarting containerd), runs on the local node only
//! ([`PodCluster::local_node`]).
//!
//! The images come from this workspace either way ([`crate::images`]): imported into the local
//! node, or loaded into the existing cluster by the command in `TOLLGATE_TEST_IMAGE_LOAD` (for
//! kind, `kind load image-archive --name NAME`), which gets each archive's path as its last
//! argument.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

use crate::images::{self, Image};
use crate::process::Supervised;
use crate::{Cluster, LocalNode, kubectl_with, ok_output};

/// Environment variable with the command that loads an image archive into an existing cluster.
pub const IMAGE_LOAD_ENV: &str = "TOLLGATE_TEST_IMAGE_LOAD";

/// Something in the cluster that listens: a Service's port, or a pod's.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    /// A Service port (as the Service declares it, not the pods' target port).
    Service {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// The Service's port.
        port: u16,
    },
    /// A port of one pod.
    Pod {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// The container port.
        port: u16,
    },
}

impl Target {
    /// `kubectl port-forward`'s name for it.
    fn resource(&self) -> (String, &str, u16) {
        match self {
            Self::Service {
                namespace,
                name,
                port,
            } => (format!("service/{name}"), namespace, *port),
            Self::Pod {
                namespace,
                name,
                port,
            } => (format!("pod/{name}"), namespace, *port),
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (resource, namespace, port) = self.resource();
        write!(f, "{namespace}/{resource}:{port}")
    }
}

/// A cluster whose pods the tests reach (see the module's documentation).
#[derive(Debug)]
pub struct PodCluster {
    kubeconfig: PathBuf,
    local: Option<&'static LocalNode>,
    /// Tollgate's images and the test-only ones, in the cluster.
    pub images: Vec<Image>,
    /// Where a target's address resolved to (local node: addresses do not change for a
    /// Service or a pod name).
    resolved: Mutex<HashMap<Target, SocketAddr>>,
    /// The port-forward of each target (existing cluster), each behind a lock of its own: a
    /// forward starting for one target does not hold up connections to the others.
    forwards: Mutex<HashMap<Target, Arc<Mutex<Option<Forward>>>>>,
    /// Owns the image archives' directory (existing cluster): removes it once the test binary
    /// is gone.
    _janitor: Option<Supervised>,
}

/// A running `kubectl port-forward` and the loopback port it listens on.
#[derive(Debug)]
struct Forward {
    /// Owned: dropping it stops kubectl.
    _process: Supervised,
    local: SocketAddr,
}

impl PodCluster {
    /// The cluster of `cluster` (started with a node, or existing), with the images loaded.
    pub(crate) fn new(cluster: &'static Cluster) -> Result<Self> {
        let (local, images, janitor) = match cluster {
            Cluster::LocalWithNode(local) => (Some(&**local), local.images.clone(), None),
            Cluster::External { kubeconfig } => {
                let load = std::env::var(IMAGE_LOAD_ENV).map_err(|_| {
                    anyhow::anyhow!(
                        "the tests that run pods on the existing cluster {} need its images: set \
                         {IMAGE_LOAD_ENV} to the command that loads an OCI image archive into it \
                         (kind: `kind load image-archive --name NAME`; k3s: `k3s ctr images \
                         import`); the archive's path is appended",
                        kubeconfig.display()
                    )
                })?;
                let scratch = tempfile::Builder::new()
                    .prefix("tollgate-test-pods-")
                    .tempdir()?
                    .keep();
                // Owns the directory: removes it once the test binary is gone, whatever the end.
                let janitor = Supervised::spawn(
                    "scratch",
                    Path::new("sleep"),
                    &["infinity".to_owned()],
                    &scratch.join("janitor.log"),
                    Some(&scratch),
                )?;
                // Redis runs only in a test that needs the local node.
                let built = images::workload_images(&scratch, false)?;
                for image in &built {
                    load_image(&load, image)?;
                }
                (None, built, Some(janitor))
            }
            Cluster::Local(_) => bail!("this test binary started a cluster without a node"),
        };
        Ok(Self {
            kubeconfig: cluster.kubeconfig().to_owned(),
            local,
            images,
            resolved: Mutex::default(),
            forwards: Mutex::default(),
            _janitor: janitor,
        })
    }

    /// The local test node, or `None` on an existing cluster.
    pub fn local_node(&self) -> Option<&'static LocalNode> {
        self.local
    }

    /// The admin kubeconfig.
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// A Service's first port, as a target.
    pub fn service(&self, namespace: &str, name: &str) -> Result<Target> {
        let port = self.jsonpath(
            namespace,
            &format!("service/{name}"),
            "{.spec.ports[0].port}",
        )?;
        Ok(Target::Service {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            port: port
                .parse()
                .with_context(|| format!("service {namespace}/{name}'s port {port:?}"))?,
        })
    }

    /// A TCP connection to `target`.
    pub fn connect(&self, target: &Target) -> Result<TcpStream> {
        match self.local {
            Some(local) => local.node.connect(self.resolve(target)?),
            None => self.forwarded(target),
        }
    }

    /// The address of `target` inside the local node's network.
    fn resolve(&self, target: &Target) -> Result<SocketAddr> {
        if let Some(address) = lock(&self.resolved).get(target) {
            return Ok(*address);
        }
        let (ip, port) = match target {
            Target::Service {
                namespace,
                name,
                port,
            } => (
                self.jsonpath(namespace, &format!("service/{name}"), "{.spec.clusterIP}")?,
                port,
            ),
            Target::Pod {
                namespace,
                name,
                port,
            } => (
                self.jsonpath(namespace, &format!("pod/{name}"), "{.status.podIP}")?,
                port,
            ),
        };
        let address = SocketAddr::new(
            ip.parse()
                .with_context(|| format!("the address of {target}: {ip:?}"))?,
            *port,
        );
        lock(&self.resolved).insert(target.clone(), address);
        Ok(address)
    }

    /// A connection through `target`'s port-forward, started (again, when the pod it forwarded to
    /// is gone) as needed.
    fn forwarded(&self, target: &Target) -> Result<TcpStream> {
        let slot = lock(&self.forwards)
            .entry(target.clone())
            .or_default()
            .clone();
        let mut slot = lock(&slot);
        if let Some(forward) = slot.as_mut() {
            if let Ok(stream) = TcpStream::connect_timeout(&forward.local, CONNECT_TIMEOUT) {
                return Ok(stream);
            }
            // Gone with its pod (kubectl exits), or no longer listening: a new one.
            *slot = None;
        }
        let forward = self.port_forward(target)?;
        let stream = TcpStream::connect_timeout(&forward.local, CONNECT_TIMEOUT)
            .with_context(|| format!("connecting to the port-forward of {target}"))?;
        *slot = Some(forward);
        Ok(stream)
    }

    fn port_forward(&self, target: &Target) -> Result<Forward> {
        let (resource, namespace, port) = target.resource();
        // A directory of its own, which its watchdog removes after writing its last line (in the
        // images' directory, that line could land while the directory was being removed).
        let dir = tempfile::Builder::new()
            .prefix("tollgate-test-forward-")
            .tempdir()?
            .keep();
        let log = dir.join("port-forward.log");
        let args = [
            "--kubeconfig".to_owned(),
            self.kubeconfig.display().to_string(),
            "-n".into(),
            namespace.to_owned(),
            "port-forward".into(),
            "--address=127.0.0.1".into(),
            resource,
            format!(":{port}"),
        ];
        let mut process = Supervised::spawn(
            &format!("port-forward {target}"),
            Path::new("kubectl"),
            &args,
            &log,
            Some(&dir),
        )?;
        // kubectl prints "Forwarding from 127.0.0.1:PORT -> TARGET_PORT" once it listens.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            // A whole line only: a line still being written could name part of the port.
            let listening = text.lines().find_map(|line| {
                let (local, _) = line.strip_prefix("Forwarding from ")?.split_once(" -> ")?;
                local.parse::<SocketAddr>().ok()
            });
            if let Some(local) = listening {
                return Ok(Forward {
                    _process: process,
                    local,
                });
            }
            ensure!(
                process.is_running() && Instant::now() < deadline,
                "kubectl port-forward {target} did not start: {}",
                process.log_tail()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn jsonpath(&self, namespace: &str, object: &str, path: &str) -> Result<String> {
        let args = [
            "-n",
            namespace,
            "get",
            object,
            "-o",
            &format!("jsonpath={path}"),
        ];
        let out = ok_output(&args, kubectl_with(&self.kubeconfig, &args, None)?)?;
        Ok(out.trim().to_owned())
    }
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A test that panicked while holding it leaves a map that is still consistent.
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Runs the user's image-loading `command` with `image`'s archive as its last argument.
fn load_image(command: &str, image: &Image) -> Result<()> {
    let out = std::process::Command::new("sh")
        .args(["-c", &format!("{command} \"$1\""), "load"])
        .arg(&image.archive)
        .output()
        .with_context(|| format!("running {IMAGE_LOAD_ENV} ({command})"))?;
    ensure!(
        out.status.success(),
        "{IMAGE_LOAD_ENV} ({command}) could not load {} ({}): {}{}",
        image.reference,
        image.archive.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}
