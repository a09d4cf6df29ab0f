//! The namespaces a test node lives in: a network namespace of its own (the node's address, the
//! pod bridge and the Service rules exist only there), and a PID and mount namespace for the
//! container runtime and kubelet, so that nothing they start outlives the test binary.
//!
//! A holder process (`unshare --net --pid --mount --fork --kill-child`) is PID 1 of the new PID
//! namespace. When the test binary ends, the holder's watchdog signals `unshare` (which waits out
//! SIGTERM; SIGKILL follows within seconds), the kernel kills the holder (`--kill-child`), and with
//! it every process of the PID namespace — containerd's shims and every container — and the mount
//! namespace, with every mount kubelet and containerd made, goes with its last process. Nothing is
//! mounted on the host; the containers' cgroups are removed last (see `CLEANUP`).

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::process::Supervised;

/// The node's address inside its network namespace.
pub const NODE_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);

/// Sets the namespace up and becomes PID 1 of it. `/proc` is the host's until the script mounts
/// its own, so `/proc/self/stat` names the holder's PID as the host sees it.
const HOLDER: &str = r#"
set -e
read -r pid _ < /proc/self/stat
mount -t proc proc /proc
# kubelet sets six kernel-wide settings (panic on oops, reboot 10 s after a panic, overcommit...)
# unless they already hold its values, and they are not namespaced: it would change the host's.
# Inside this mount namespace it reads files that hold its values, and leaves the host alone.
for setting in vm/overcommit_memory=1 vm/panic_on_oom=0 kernel/panic=10 kernel/panic_on_oops=1 \
        kernel/keys/root_maxkeys=1000000 kernel/keys/root_maxbytes=25000000; do
    name=${setting%%=*}
    shown="$SYSCTL_DIR/$(echo "$name" | tr / .)"
    echo "${setting#*=}" > "$shown"
    mount --bind "$shown" "/proc/sys/$name"
done
# Where containerd, its CNI plugins and kubelet keep state at fixed paths: private to the node.
for dir in /run/netns /run/containerd /var/lib/cni /var/log/pods /var/log/containers; do
    mkdir -p "$dir"
    mount -t tmpfs -o mode=755 tmpfs "$dir"
done
ip link set lo up
ip link add veth0 type veth peer name veth1
ip addr add "$NODE_IP/24" dev veth0
ip link set veth0 up
ip link set veth1 up
ip route add default dev veth0
echo "$pid" > "$PID_FILE"
exec sleep infinity
"#;

/// Run once the holder (and so every container) is gone: containerd leaves each container's
/// cgroups behind (under `k8s.io/<id>` in every hierarchy), and a frozen container cannot die
/// until thawed. The containers are those containerd still had tasks for.
const CLEANUP: &str = r#"
tasks="$1/node/containerd/state/io.containerd.runtime.v2.task/k8s.io"
for id in $(ls "$tasks" 2>/dev/null); do
    state=/sys/fs/cgroup/freezer/k8s.io/$id/freezer.state
    [ -f "$state" ] && echo THAWED > "$state"
done
for _ in $(seq 1 60); do
    left=0
    for id in $(ls "$tasks" 2>/dev/null); do
        for cgroup in /sys/fs/cgroup/*/k8s.io/"$id" /sys/fs/cgroup/k8s.io/"$id"; do
            [ -d "$cgroup" ] || continue
            rmdir "$cgroup" 2>/dev/null || left=1
        done
    done
    [ "$left" = 0 ] && exit 0
    sleep 0.5
done
"#;

/// A network + PID + mount namespace held open for the test binary's lifetime.
#[derive(Debug)]
pub struct NodeNamespaces {
    holder: Supervised,
    pid: u32,
    dir: PathBuf,
}

impl NodeNamespaces {
    /// Creates the namespaces; `dir` holds the holder's log and PID file, and is removed once the
    /// test binary is gone.
    pub fn create(dir: &Path) -> Result<Self> {
        let pid_file = dir.join("netns.pid");
        let sysctl_dir = dir.join("sysctl-as-kubelet-wants");
        std::fs::create_dir_all(&sysctl_dir)?;
        let mut holder = Supervised::spawn_with_cleanup(
            "namespaces",
            Path::new("/usr/bin/unshare"),
            &[
                "--net".into(),
                "--pid".into(),
                "--mount".into(),
                "--fork".into(),
                "--kill-child".into(),
                "--".into(),
                "sh".into(),
                "-c".into(),
                HOLDER.into(),
            ],
            &dir.join("namespaces.log"),
            Some(dir),
            &[
                ("PID_FILE", pid_file.display().to_string()),
                ("SYSCTL_DIR", sysctl_dir.display().to_string()),
                ("NODE_IP", NODE_IP.to_string()),
            ],
            CLEANUP,
        )?;
        let deadline = Instant::now() + Duration::from_secs(10);
        let pid = loop {
            if let Ok(text) = std::fs::read_to_string(&pid_file)
                && let Ok(pid) = text.trim().parse::<u32>()
            {
                break pid;
            }
            if !holder.is_running() || Instant::now() > deadline {
                bail!(
                    "could not create the node's namespaces (unshare, ip; root needed):\n{}",
                    holder.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        Ok(Self {
            holder,
            pid,
            dir: dir.to_owned(),
        })
    }

    /// The directory removed last, once everything in the namespaces is gone: the node keeps
    /// its files (containerd's, kubelet's) here.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `/proc/PID/ns/net` of the holder.
    pub fn net_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/ns/net", self.pid))
    }

    /// The holder's PID (as the host sees it).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// `nsenter` arguments that run a program in the network namespace only (it replaces
    /// nsenter, so signals reach it directly).
    pub fn enter_net(&self) -> Vec<String> {
        vec![format!("--net={}", self.net_path().display()), "--".into()]
    }

    /// `nsenter` arguments that run a program in all three namespaces, for what starts
    /// containers or mounts volumes (containerd, kubelet). nsenter forks to enter the PID
    /// namespace; [`Supervised`] signals the whole process group.
    pub fn enter_all(&self) -> Vec<String> {
        vec![
            format!("--target={}", self.pid),
            "--net".into(),
            "--pid".into(),
            "--mount".into(),
            "--".into(),
        ]
    }

    /// Runs `program args` in the network namespace and waits for it.
    pub fn run(&self, program: &str, args: &[&str]) -> Result<Output> {
        Command::new("nsenter")
            .args(self.enter_net())
            .arg(program)
            .args(args)
            .output()
            .with_context(|| format!("nsenter ... {program}"))
    }

    /// A TCP connection to `address` made from inside the network namespace (a pod or Service
    /// address, which exists only there). The socket is created on a thread that joined the
    /// namespace; a socket keeps its namespace, so the stream works from any thread.
    pub fn connect(&self, address: SocketAddr, timeout: Duration) -> Result<TcpStream> {
        let path = self.net_path();
        std::thread::scope(|scope| {
            scope
                .spawn(|| -> Result<TcpStream> {
                    let ns = std::fs::File::open(&path)
                        .with_context(|| format!("opening {}", path.display()))?;
                    // Changes only this thread, which ends right after creating the socket.
                    nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
                        .with_context(|| format!("setns into {}", path.display()))?;
                    TcpStream::connect_timeout(&address, timeout)
                        .with_context(|| format!("connecting to {address} in the node's network"))
                })
                .join()
                .map_err(|_| anyhow::anyhow!("the connecting thread panicked"))?
        })
    }

    /// Whether the holder still runs.
    pub fn is_running(&mut self) -> bool {
        self.holder.is_running()
    }
}
