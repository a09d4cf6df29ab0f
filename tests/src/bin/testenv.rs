//! Starts the tests' cluster on its own and keeps it until stopped: a control plane to poke at
//! with kubectl, or (with `--node`) a node that runs pods, for running the tests against an
//! existing cluster (`TOLLGATE_TEST_KUBECONFIG`) the way they run against kind.

use std::io::Write;

const USAGE: &str = "\
usage: testenv [--node] [--exit-with PID]

Starts Tollgate's test cluster (etcd and kube-apiserver on free loopback ports, the CRDs
installed) and keeps it running until this process is stopped (Ctrl-C, SIGTERM): everything it
started stops and is removed with it.

  --node           also start a node that runs pods (kubelet, containerd, kube-proxy, DNS; see
                   docs/testing.md); only the pods' sandbox image is left in it, so that what
                   runs there is what was loaded with the image-load command
  --exit-with PID  also stop when process PID is gone (a script that started this one and
                   may be killed without a chance to stop it)

It prints, one per line, what other processes need to use it:
  kubeconfig=PATH    the admin kubeconfig (TOLLGATE_TEST_KUBECONFIG)
  image-load=COMMAND with --node: loads an image archive into the node's containerd
                     (TOLLGATE_TEST_IMAGE_LOAD)
and then `ready`.";

fn main() {
    let mut with_node = false;
    let mut exit_with = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--node" => with_node = true,
            "--exit-with" => {
                let value = args.next().unwrap_or_default();
                match value.parse::<i32>() {
                    Ok(pid) if pid > 0 => exit_with = Some(nix::unistd::Pid::from_raw(pid)),
                    _ => {
                        eprintln!(
                            "testenv: --exit-with needs a process ID, got {value:?}\n\n{USAGE}"
                        );
                        std::process::exit(2);
                    }
                }
            }
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
    let mut lines = vec![format!("kubeconfig={}", cluster.kubeconfig().display())];
    if let tollgate_tests::Cluster::LocalWithNode(local) = cluster {
        for image in local.images.iter().filter(|i| i.name != "pause") {
            if let Err(e) = local.node.remove_image(image) {
                eprintln!("testenv: {e:#}");
                std::process::exit(1);
            }
        }
        lines.push(format!("image-load={}", local.node.image_load_command()));
    }
    let mut out = std::io::stdout().lock();
    lines.push("ready".to_owned());
    for line in lines {
        // A closed stdout is no reason to stop the cluster: whoever started it may still use it.
        let _ = writeln!(out, "{line}");
    }
    let _ = out.flush();
    drop(out);
    // The servers' watchdogs stop them when this process is gone, whatever ends it.
    loop {
        std::thread::sleep(std::time::Duration::from_secs(1));
        if let Some(pid) = exit_with
            && nix::sys::signal::kill(pid, None).is_err()
        {
            return;
        }
    }
}
