//! Starts the tests' cluster on its own and keeps it until stopped: a control plane to poke at
//! with kubectl, or (with `--node`) a node that runs pods, for running the tests against an
//! existing cluster (`TOLLGATE_TEST_KUBECONFIG`) the way they run against kind.

use std::io::Write;

const USAGE: &str = "\
usage: testenv [--node]

Starts Tollgate's test cluster (etcd and kube-apiserver on free loopback ports, the CRDs
installed) and keeps it running until this process is stopped (Ctrl-C, SIGTERM): everything it
started stops and is removed with it.

  --node   also start a node that runs pods (kubelet, containerd, kube-proxy, DNS; see
           docs/testing.md), with this workspace's images imported

It prints, one per line, what other processes need to use it:
  kubeconfig=PATH    the admin kubeconfig (TOLLGATE_TEST_KUBECONFIG)
  image-load=COMMAND with --node: loads an image archive into the node's containerd
                     (TOLLGATE_TEST_IMAGE_LOAD)
and then `ready`.";

fn main() {
    let mut with_node = false;
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--node" => with_node = true,
            "--help" | "-h" => {
                println!("{USAGE}");
                return;
            }
            other => {
                eprintln!("testenv: unknown argument {other:?}\n\n{USAGE}");
                std::process::exit(2);
            }
        }
    }
    if std::env::var_os(tollgate_tests::EXTERNAL_KUBECONFIG_ENV).is_some() {
        eprintln!(
            "testenv: {} is set: the cluster would be that one, not a new one; unset it",
            tollgate_tests::EXTERNAL_KUBECONFIG_ENV
        );
        std::process::exit(2);
    }
    // Starting panics with the reason when it cannot (a missing package, a failed build).
    let cluster = if with_node {
        tollgate_tests::cluster_with_node()
    } else {
        tollgate_tests::cluster()
    };
    let mut out = std::io::stdout().lock();
    let mut lines = vec![format!("kubeconfig={}", cluster.kubeconfig().display())];
    if let tollgate_tests::Cluster::LocalWithNode(local) = cluster {
        lines.push(format!("image-load={}", local.node.image_load_command()));
    }
    lines.push("ready".to_owned());
    for line in lines {
        // A closed stdout is no reason to stop the cluster: whoever started it may still use it.
        let _ = writeln!(out, "{line}");
    }
    let _ = out.flush();
    drop(out);
    // The servers' watchdogs stop them when this process is gone, whatever ends it.
    loop {
        std::thread::park();
    }
}
