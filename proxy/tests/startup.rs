//! How tollgate-proxy starts, and what it refuses to start with: the binary itself, its exit
//! status and its log.

use std::path::Path;
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

/// Starts tollgate-proxy with `args` (listeners on free ports), its stderr in `dir`.
fn spawn(dir: &Path, args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_tollgate-proxy"))
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .args(args)
        .stderr(std::fs::File::create(dir.join("stderr")).expect("stderr file"))
        .spawn()
        .expect("run tollgate-proxy")
}

/// Waits up to 20 s until the proxy exits or its stderr contains `line`; then stops it. Returns
/// its exit status if it exited by itself, and its stderr.
fn wait_for(mut child: Child, dir: &Path, line: &str) -> (Option<ExitStatus>, String) {
    let stderr = || std::fs::read_to_string(dir.join("stderr")).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return (Some(status), stderr());
        }
        if stderr().contains(line) || Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return (None, stderr());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_state_dir_that_cannot_be_written_stops_the_proxy_at_start() {
    // Nothing to restore there (reads find no file), and nothing can be created (procfs refuses
    // even root): before, the proxy served, and every save failed until the counters were lost.
    let dir = tempfile::tempdir().expect("temp dir");
    let manifests = dir.path().to_str().expect("utf-8 path");
    let child = spawn(
        dir.path(),
        &[
            "--manifests",
            manifests,
            "--state-dir",
            "/proc/tollgate-state",
        ],
    );
    let (status, stderr) = wait_for(child, dir.path(), "tollgate-proxy serving");
    assert!(
        status.is_some_and(|s| !s.success()),
        "still serving, or exited 0:\n{stderr}"
    );
    assert!(
        stderr.contains("--state-dir must be a writable directory"),
        "{stderr}"
    );
}

#[test]
fn a_manifest_that_does_not_parse_at_start_stops_the_proxy_with_its_file_and_line() {
    // Later a broken file keeps its last good version; at start it has none. Before, the proxy
    // served the other files, ready, and answered this file's tenants 401.
    let dir = tempfile::tempdir().expect("temp dir");
    let manifests = dir.path().join("manifests");
    std::fs::create_dir(&manifests).expect("manifests dir");
    std::fs::write(
        manifests.join("routes.yaml"),
        "apiVersion: tollgate.dev/v1alpha1\nkind: ApiRoute\nmetadata: {name: a}\n\
         spec: {match: {pathPrefix: /a}, backend: {url: 'http://127.0.0.1:1'}}\n",
    )
    .expect("write");
    std::fs::write(
        manifests.join("tenants.yaml"),
        "apiVersion: v1\nkind: Secret\nmetadata: {name: x\n  broken: [\n",
    )
    .expect("write");
    let state = dir.path().join("state");
    let child = spawn(
        dir.path(),
        &[
            "--manifests",
            manifests.to_str().expect("utf-8 path"),
            "--state-dir",
            state.to_str().expect("utf-8 path"),
        ],
    );
    let (status, stderr) = wait_for(child, dir.path(), "tollgate-proxy serving");
    assert!(
        status.is_some_and(|s| !s.success()),
        "still serving, or exited 0:\n{stderr}"
    );
    assert!(
        stderr.contains("tenants.yaml:"),
        "the file and line: {stderr}"
    );
    assert!(
        stderr.contains("at start there is no earlier version to keep"),
        "{stderr}"
    );
}

#[test]
fn an_unreachable_operator_before_any_configuration_is_reported_as_not_ready() {
    // Before: "serving the last configuration", with no configuration to serve.
    let dir = tempfile::tempdir().expect("temp dir");
    let state = dir.path().join("state");
    let child = spawn(
        dir.path(),
        &[
            "--control-plane",
            "https://127.0.0.1:1",
            "--control-plane-ca",
            "/nonexistent/ca.crt",
            "--state-dir",
            state.to_str().expect("utf-8 path"),
        ],
    );
    let (status, stderr) = wait_for(child, dir.path(), "no configuration stream");
    assert_eq!(status, None, "keeps running and retrying:\n{stderr}");
    let warning = stderr
        .lines()
        .find(|l| l.contains("no configuration stream"))
        .unwrap_or_default();
    assert!(
        warning.contains("not ready until the first configuration arrives")
            && warning.contains("/nonexistent/ca.crt"),
        "{stderr}"
    );
}

/// The proxy keeps transparent huge pages out of its heap: each one counts 2 MiB resident however
/// little of it is used (8 MiB of 20 at rest, measured). Two guards, both checked: the kernel's
/// flag for the process (set at start-up, for kernels that give huge pages unasked), and no huge
/// page in use after loading a configuration (mimalloc built not to ask for them).
#[cfg(target_os = "linux")]
#[test]
fn the_proxy_runs_without_transparent_huge_pages() {
    let dir = tempfile::tempdir().expect("tempdir");
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/quickstart");
    let state = dir.path().join("state");
    let mut child = spawn(
        dir.path(),
        &[
            "--manifests",
            &examples.display().to_string(),
            "--state-dir",
            &state.display().to_string(),
        ],
    );
    let pid = child.id();
    let proc_file = |name: &str| std::fs::read_to_string(format!("/proc/{pid}/{name}"));
    let deadline = Instant::now() + Duration::from_secs(20);
    while !std::fs::read_to_string(dir.path().join("stderr"))
        .unwrap_or_default()
        .contains("tollgate-proxy serving")
    {
        assert!(Instant::now() < deadline, "the proxy never served");
        assert!(
            child.try_wait().expect("wait").is_none(),
            "the proxy exited"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let status = proc_file("status").expect("/proc/PID/status");
    let smaps = proc_file("smaps_rollup").expect("/proc/PID/smaps_rollup");
    let _ = child.kill();
    let _ = child.wait();
    // Kernels before 5.0 have no THP_enabled line; their processes are checked by the page count.
    if let Some(line) = status.lines().find(|l| l.starts_with("THP_enabled:")) {
        assert_eq!(line.split_whitespace().nth(1), Some("0"), "{line}");
    }
    let huge_kib = smaps
        .lines()
        .find(|l| l.starts_with("AnonHugePages:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse::<u64>().ok())
        .expect("AnonHugePages in smaps_rollup");
    assert_eq!(huge_kib, 0, "{smaps}");
}
