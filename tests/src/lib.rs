//! Harness for Tollgate's end-to-end tests.
//!
//! [`cluster()`] is one Kubernetes control plane per test binary: a real etcd + kube-apiserver
//! started on free loopback ports (binaries from `tests/testenv/provision.sh`, found through
//! `TOLLGATE_TESTENV_BIN`), or the existing cluster named by `TOLLGATE_TEST_KUBECONFIG`.
//! Each test takes a fresh namespace with [`TestNamespace::new`]. Servers die with the test
//! binary, whatever way it ends.

pub mod billing_sink;
pub mod control_plane;
pub mod fleet;
pub mod https;
pub mod images;
pub mod layout;
pub mod llm_backend;
pub mod netns;
pub mod node;
pub mod pki;
pub mod pods;
pub mod process;
pub mod python;
pub mod redis;
pub mod sidecar;
pub mod stripe_mock;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};

use control_plane::LocalControlPlane;
use netns::NodeNamespaces;
use node::Node;

/// Environment variable naming an existing cluster's kubeconfig to test against instead.
pub const EXTERNAL_KUBECONFIG_ENV: &str = "TOLLGATE_TEST_KUBECONFIG";
/// Environment variable naming the directory with kube-apiserver, etcd and helm.
pub const TESTENV_BIN_ENV: &str = "TOLLGATE_TESTENV_BIN";

/// The cluster a test binary runs against.
#[derive(Debug)]
pub enum Cluster {
    /// etcd + kube-apiserver started by this test binary.
    Local(Box<LocalControlPlane>),
    /// The same inside a node's namespaces, with the node (kubelet, containerd, kube-proxy,
    /// DNS, controller-manager, scheduler): pods run.
    LocalWithNode(Box<LocalNode>),
    /// An existing cluster (kind, k3d...).
    External {
        /// Its kubeconfig.
        kubeconfig: PathBuf,
    },
}

/// A local control plane and its node.
#[derive(Debug)]
pub struct LocalNode {
    /// etcd, kube-apiserver (in the node's network).
    pub plane: LocalControlPlane,
    /// kubelet and the rest.
    pub node: Node,
    /// The images imported into the node.
    pub images: Vec<images::Image>,
    /// How long building them took.
    pub images_built_in: std::time::Duration,
}

static CLUSTER: OnceLock<Result<Cluster, String>> = OnceLock::new();

/// The shared cluster, started on first use. Panics with the start-up error (a test cannot run
/// without it, and the message says how to fix it).
pub fn cluster() -> &'static Cluster {
    started(CLUSTER.get_or_init(|| start_cluster(false).map_err(|e| format!("{e:#}"))))
}

/// The shared cluster with a node that runs pods (see [`node`]), started on first use. A test
/// binary uses either this or [`cluster`] first: the cluster is started once.
pub fn cluster_with_node() -> &'static Cluster {
    let cluster =
        started(CLUSTER.get_or_init(|| start_cluster(true).map_err(|e| format!("{e:#}"))));
    if let Cluster::Local(_) = cluster {
        panic!("this test binary started a cluster without a node before asking for one");
    }
    cluster
}

/// The cluster whose pods the tests run and reach ([`pods::PodCluster`]): the local node of
/// [`cluster_with_node`], or the existing cluster of `TOLLGATE_TEST_KUBECONFIG` with this
/// workspace's images loaded into it. Started on first use; panics with the reason it cannot be.
pub fn pods() -> &'static pods::PodCluster {
    static PODS: OnceLock<Result<pods::PodCluster, String>> = OnceLock::new();
    match PODS
        .get_or_init(|| pods::PodCluster::new(cluster_with_node()).map_err(|e| format!("{e:#}")))
    {
        Ok(pods) => pods,
        Err(e) => panic!("cluster for pods unavailable: {e}"),
    }
}

fn started(result: &'static Result<Cluster, String>) -> &'static Cluster {
    match result {
        Ok(cluster) => cluster,
        Err(e) => panic!("test cluster unavailable: {e}"),
    }
}

fn start_cluster(with_node: bool) -> Result<Cluster> {
    if let Ok(path) = std::env::var(EXTERNAL_KUBECONFIG_ENV) {
        // This workspace's CRDs, as the tests expect them (a chart installed earlier may have
        // left older ones: Helm never upgrades CRDs).
        let cluster = Cluster::External {
            kubeconfig: PathBuf::from(path),
        };
        install_crds(&cluster)?;
        return Ok(cluster);
    }
    let bin = match std::env::var(TESTENV_BIN_ENV) {
        Ok(bin) => PathBuf::from(bin),
        Err(_) => provision()?,
    };
    let cluster = if with_node {
        let building = std::time::Instant::now();
        // Image archives and the namespaces' log; removed once the test binary is gone.
        let scratch = tempfile::Builder::new()
            .prefix("tollgate-testenv-node-")
            .tempdir()?
            .keep();
        let images = images::node_images(&bin, &scratch)?;
        let images_built_in = building.elapsed();
        let started = std::time::Instant::now();
        let namespaces = NodeNamespaces::create(&scratch)?;
        let plane = LocalControlPlane::start(&bin, Some(&namespaces))?;
        let node = Node::start(&bin, &plane, namespaces, started, &images)?;
        Cluster::LocalWithNode(Box::new(LocalNode {
            plane,
            node,
            images,
            images_built_in,
        }))
    } else {
        Cluster::Local(Box::new(LocalControlPlane::start(&bin, None)?))
    };
    install_crds(&cluster)?;
    Ok(cluster)
}

/// Runs the provisioning script (cached builds return at once) and returns its bin directory.
fn provision() -> Result<PathBuf> {
    let script = repo_root().join("tests/testenv/provision.sh");
    let out = Command::new(&script)
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    if !out.status.success() {
        bail!(
            "{} failed:\n{}",
            script.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn install_crds(cluster: &Cluster) -> Result<()> {
    let crds = repo_root().join("deploy/crds.yaml");
    cluster.kubectl_ok(&["apply", "--server-side", "-f", &crds.display().to_string()])?;
    cluster.kubectl_ok(&[
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/apiroutes.tollgate.dev",
        "crd/tenants.tollgate.dev",
        "crd/quotapolicies.tollgate.dev",
    ])?;
    Ok(())
}

impl Cluster {
    /// The admin kubeconfig.
    pub fn kubeconfig(&self) -> &Path {
        match self {
            Self::Local(plane) => &plane.admin_kubeconfig,
            Self::LocalWithNode(local) => &local.plane.admin_kubeconfig,
            Self::External { kubeconfig } => kubeconfig,
        }
    }

    /// `kubectl --kubeconfig ADMIN args...`.
    pub fn kubectl(&self, args: &[&str]) -> Result<Output> {
        kubectl_with(self.kubeconfig(), args, None)
    }

    /// Like [`Self::kubectl`], failing with kubectl's stderr unless it succeeds; returns stdout.
    pub fn kubectl_ok(&self, args: &[&str]) -> Result<String> {
        ok_output(args, self.kubectl(args)?)
    }

    /// A kube client acting as admin. Create one per test: clients belong to a tokio runtime.
    pub async fn client(&self) -> Result<kube::Client> {
        client_for(self.kubeconfig()).await
    }

    /// A kubeconfig for a user with only the permissions RBAC grants it (local clusters only: it
    /// is signed by the test CA).
    pub fn user_kubeconfig(&self, user: &str, groups: &[&str]) -> Result<PathBuf> {
        match self {
            Self::Local(plane) => plane.user_kubeconfig(user, groups),
            Self::LocalWithNode(local) => local.plane.user_kubeconfig(user, groups),
            Self::External { .. } => {
                bail!("minting client certificates needs the local test control plane")
            }
        }
    }
}

/// `kubectl --kubeconfig CONFIG args...`, optionally with `stdin` piped in.
pub fn kubectl_with(kubeconfig: &Path, args: &[&str], stdin: Option<&str>) -> Result<Output> {
    use std::io::Write;
    let mut cmd = Command::new("kubectl");
    cmd.arg("--kubeconfig").arg(kubeconfig).args(args);
    cmd.stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    cmd.stdin(if stdin.is_some() {
        std::process::Stdio::piped()
    } else {
        std::process::Stdio::null()
    });
    let mut child = cmd.spawn().context("running kubectl (is it installed?)")?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes())?;
    }
    Ok(child.wait_with_output()?)
}

/// A kube client from a kubeconfig file.
pub async fn client_for(kubeconfig: &Path) -> Result<kube::Client> {
    let kc = Kubeconfig::read_from(kubeconfig)?;
    let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?;
    Ok(kube::Client::try_from(config)?)
}

/// A namespace of its own for one test, and an admin client.
#[derive(Clone)]
pub struct TestNamespace {
    /// Namespace name.
    pub name: String,
    /// Admin client.
    pub client: kube::Client,
}

impl std::fmt::Debug for TestNamespace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestNamespace")
            .field("name", &self.name)
            .finish()
    }
}

static NAMESPACE_SEQ: AtomicU32 = AtomicU32::new(0);

impl TestNamespace {
    /// Creates `PREFIX-PID-N`.
    pub async fn new(prefix: &str) -> Result<Self> {
        let cluster = cluster();
        let client = cluster.client().await?;
        let name = format!(
            "{prefix}-{}-{}",
            std::process::id(),
            NAMESPACE_SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let ns: Namespace =
            serde_json::from_value(serde_json::json!({"metadata": {"name": name}}))?;
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await?;
        Ok(Self { name, client })
    }

    /// `kubectl -n NS args...` as admin, with optional stdin.
    pub fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> Result<Output> {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        kubectl_with(cluster().kubeconfig(), &full, stdin)
    }

    /// `kubectl -n NS args...` (with `stdin`), failing with kubectl's message; its stdout.
    pub fn kubectl_ok_stdin(&self, args: &[&str], stdin: &str) -> Result<String> {
        ok_output(args, self.kubectl(args, Some(stdin))?)
    }

    /// `kubectl -n NS args...`, failing with kubectl's message; its stdout.
    pub fn kubectl_ok(&self, args: &[&str]) -> Result<String> {
        ok_output(args, self.kubectl(args, None)?)
    }

    /// `kubectl -n NS apply -f -` with `yaml`; returns the output, successful or not.
    pub fn apply(&self, yaml: &str) -> Result<Output> {
        self.kubectl(&["apply", "-f", "-"], Some(yaml))
    }

    /// `kubectl patch TARGET --type merge -p PATCH`, failing with kubectl's message.
    pub fn kubectl_ok_patch(&self, target: &str, patch: &str) -> Result<String> {
        let out = self.kubectl(&["patch", target, "--type", "merge", "-p", patch], None)?;
        if !out.status.success() {
            bail!(
                "kubectl patch {target} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Applies `yaml` and fails with kubectl's message unless it was accepted.
    pub fn apply_ok(&self, yaml: &str) -> Result<String> {
        let out = self.apply(yaml)?;
        if !out.status.success() {
            bail!(
                "kubectl apply rejected:\n{}\n---\n{yaml}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// `out`'s stdout when kubectl `args` succeeded, else an error with its stderr.
pub(crate) fn ok_output(args: &[&str], out: Output) -> Result<String> {
    if !out.status.success() {
        bail!(
            "kubectl {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The path of one of this workspace's binaries (`target/debug/NAME`), building
/// `tollgate-operator`, `tollgate-proxy` and the test binaries (`echo-backend`) first if a test
/// needs them and they are not there.
pub fn workspace_binary(name: &str) -> Result<PathBuf> {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let dir = BUILT.get_or_init(|| {
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        // target/debug/deps/<test binary>, or target/debug/<binary> (testenv).
        let dir = exe.parent().ok_or("unexpected test binary location")?;
        let debug = if dir.file_name().is_some_and(|n| n == "deps") {
            dir.parent().ok_or("unexpected test binary location")?
        } else {
            dir
        }
        .to_path_buf();
        let target = debug.parent().ok_or("unexpected target dir")?.to_path_buf();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
        // Build with the profile of the running tests (target/debug or target/release), unless
        // TOLLGATE_TEST_PROFILE names another: benchmarks run release binaries from a test
        // harness built in the dev profile, which saves building the harness with fat LTO.
        let (debug, profile) = match std::env::var("TOLLGATE_TEST_PROFILE") {
            Ok(profile) if !profile.is_empty() => {
                let dir = if profile == "dev" {
                    "debug"
                } else {
                    profile.as_str()
                };
                (target.join(dir), profile)
            }
            _ => {
                let profile = match debug.file_name().and_then(|n| n.to_str()) {
                    Some("debug") | None => "dev",
                    Some(other) => other,
                };
                (debug.clone(), profile.to_owned())
            }
        };
        let status = Command::new(cargo)
            .args([
                "build",
                "--quiet",
                "--bins",
                "-p",
                "tollgate-operator",
                "-p",
                "tollgate-proxy",
                "-p",
                "tollgate-tests",
                "--profile",
                &profile,
            ])
            .arg("--target-dir")
            .arg(&target)
            .current_dir(repo_root())
            .status()
            .map_err(|e| format!("running cargo build: {e}"))?;
        if !status.success() {
            return Err(format!("cargo build of the binaries failed: {status}"));
        }
        Ok(debug)
    });
    match dir {
        Ok(dir) => Ok(dir.join(name)),
        Err(e) => bail!("{e}"),
    }
}

impl Cluster {
    /// A kubeconfig that authenticates with a bearer `token` (a ServiceAccount's), against the
    /// same server and CA as the admin kubeconfig.
    pub fn token_kubeconfig(&self, name: &str, token: &str) -> Result<PathBuf> {
        let server = self.kubectl_ok(&[
            "config",
            "view",
            "--raw",
            "--minify",
            "-o",
            "jsonpath={.clusters[0].cluster.server}",
        ])?;
        let ca = self.kubectl_ok(&[
            "config",
            "view",
            "--raw",
            "--minify",
            "-o",
            "jsonpath={.clusters[0].cluster.certificate-authority-data}",
        ])?;
        // Inside the control plane's scratch dir, which goes away with it.
        let dir = match self {
            Self::Local(plane) => plane.dir.clone(),
            Self::LocalWithNode(local) => local.plane.dir.clone(),
            Self::External { .. } => std::env::temp_dir(),
        };
        let path = dir.join(format!("{name}.kubeconfig"));
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {{server: {server}, certificate-authority-data: {ca}}}\n\
                 users:\n- name: u\n  user: {{token: {token}}}\ncontexts:\n- name: c\n  context: {{cluster: c, user: u}}\ncurrent-context: c\n",
                token = token.trim()
            ),
        )?;
        Ok(path)
    }
}

/// The directory of the test environment's binaries (built by tests/testenv/provision.sh).
pub fn testenv_bin() -> Result<PathBuf> {
    match std::env::var(TESTENV_BIN_ENV) {
        Ok(bin) => Ok(PathBuf::from(bin)),
        Err(_) => provision(),
    }
}

/// The helm binary of the test environment.
pub fn helm() -> Result<PathBuf> {
    Ok(testenv_bin()?.join("helm"))
}

/// `helm ARGS` with the test environment's helm; the output, successful or not.
pub fn run_helm(args: &[&str]) -> Result<Output> {
    Ok(Command::new(helm()?).args(args).output()?)
}

/// `helm ARGS`, failing with helm's message unless it succeeds; returns stdout.
pub fn helm_ok(args: &[&str]) -> Result<String> {
    let out = run_helm(args)?;
    if !out.status.success() {
        bail!(
            "helm {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The `--listen ADDRESS:PORT` argument of the test servers (`echo-backend`, `llm-backend`),
/// `default` when absent; `Err` is the message to print (`usage` for `--help`).
pub fn listen_argument(usage: &str, default: &str) -> Result<std::net::SocketAddr, String> {
    let mut args = std::env::args().skip(1);
    let mut listen = default.to_owned();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--listen" => listen = args.next().ok_or(usage)?,
            "--help" | "-h" => return Err(usage.to_owned()),
            other => return Err(format!("unknown argument {other:?}\n{usage}")),
        }
    }
    listen
        .parse()
        .map_err(|e| format!("--listen {listen:?}: {e}\n{usage}"))
}

/// Creates every object of `world` in namespace `ns` through the API server, `concurrency` at a
/// time: its plans, routes, key Secrets, then tenants (what the benchmarks load).
pub async fn create_synthetic(
    client: &kube::Client,
    ns: &str,
    world: &tollgate_crds::synthetic::Synthetic,
    concurrency: usize,
) -> Result<()> {
    create_all(client, ns, &world.plans, concurrency).await?;
    create_all(client, ns, &world.routes, concurrency).await?;
    create_all(client, ns, &world.secrets, concurrency).await?;
    create_all(client, ns, &world.tenants, concurrency).await
}

async fn create_all<K>(
    client: &kube::Client,
    ns: &str,
    objects: &[K],
    concurrency: usize,
) -> Result<()>
where
    K: kube::Resource<Scope = kube::core::NamespaceResourceScope>
        + Clone
        + k8s_openapi::serde::Serialize
        + k8s_openapi::serde::de::DeserializeOwned
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    use futures::StreamExt;
    let api: kube::Api<K> = kube::Api::namespaced(client.clone(), ns);
    let failed = futures::stream::iter(objects)
        .map(|o| {
            let api = api.clone();
            async move {
                api.create(&kube::api::PostParams::default(), o)
                    .await
                    .is_err()
            }
        })
        .buffer_unordered(concurrency)
        .filter(|failed| futures::future::ready(*failed))
        .count()
        .await;
    anyhow::ensure!(failed == 0, "{failed} objects not created");
    Ok(())
}
