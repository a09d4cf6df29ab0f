//! Sidecar footprint benchmark (ignored by default; bench/sidecar.sh runs it), for issue #21:
//! - a sidecar's RSS with its workload's configuration (run as injected), beside a central proxy
//!   holding the whole namespace, in the same run;
//! - the time from the sidecar's start to ready (its configuration received and applied);
//! - the latency it adds on loopback: the same requests to the app directly and through the
//!   sidecar, in alternating rounds over keep-alive connections.
//!
//! No timing assertion: the numbers are printed.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tollgate_crds::synthetic::synthetic;
use tollgate_tests::TestNamespace;
use tollgate_tests::fleet::{Fleet, get};
use tollgate_tests::llm_backend::LlmBackend;
use tollgate_tests::sidecar::{injected_pod, run_sidecar, template};

/// Tenants calling the workload's API.
const WORKLOAD_TENANTS: usize = 10;
/// Requests per round, and rounds per target (alternating).
const PER_ROUND: usize = 500;
const ROUNDS: usize = 8;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

/// The tollgate-proxy process whose command line names `needle` (a state directory only it
/// uses). Its executable decides, not its command line: the watchdog shell that supervises it
/// carries the same words in its own (and measuring that shell once reported 1.7 MiB for every
/// proxy).
fn pid_of(needle: &str) -> Result<u32> {
    for entry in std::fs::read_dir("/proc")?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let exe = std::fs::read_link(entry.path().join("exe")).unwrap_or_default();
        if exe.file_name().and_then(|n| n.to_str()) != Some("tollgate-proxy") {
            continue;
        }
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(needle) {
            return Ok(pid);
        }
    }
    anyhow::bail!("no tollgate-proxy process with {needle}")
}

/// Resident memory of `pid`, MiB.
fn rss_mib(pid: u32) -> Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("VmRSS")?;
    Ok(kib / 1024.0)
}

/// `n` GETs of `path` on one keep-alive connection; each one's latency in microseconds. Bounded
/// in time: a stalled connection ends the benchmark with an error rather than hanging it.
async fn round(addr: SocketAddr, path: &str, key: Option<&str>, n: usize) -> Result<Vec<f64>> {
    tokio::time::timeout(Duration::from_secs(60), round_unbounded(addr, path, key, n))
        .await
        .with_context(|| format!("{n} requests to {addr} took over 60 s"))?
}

async fn round_unbounded(
    addr: SocketAddr,
    path: &str,
    key: Option<&str>,
    n: usize,
) -> Result<Vec<f64>> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let mut req = http::Request::get(path).header("host", "bench");
        if let Some(key) = key {
            req = req.header("authorization", format!("Bearer {key}"));
        }
        let started = Instant::now();
        let resp = send.send_request(req.body(Empty::<Bytes>::new())?).await?;
        let status = resp.status();
        resp.into_body().collect().await?;
        out.push(started.elapsed().as_secs_f64() * 1e6);
        anyhow::ensure!(status == 200, "{path} answered {status}");
    }
    Ok(out)
}

#[tokio::test]
#[ignore = "benchmark: bench/sidecar.sh"]
async fn sidecar_footprint_and_added_latency() -> Result<()> {
    let apps = TestNamespace::new("sidecar-bench").await?;
    let mut fleet = Fleet::new("sidecar-bench-op").await?;
    let kubeconfig = fleet.operator_kubeconfig().to_path_buf();
    fleet
        .start_operator_as(&kubeconfig, &[("--namespace", &apps.name)])
        .await?;
    fleet.wait_leader(0).await?;

    // The rest of the namespace, which the sidecar must not carry: 1,000 tenants (3 routes
    // each) on 100 central routes, 10 plans.
    let world = synthetic(&apps.name, 1_000, 100);
    eprintln!(
        "creating the namespace: {} tenants, {} routes",
        world.tenants.len(),
        world.routes.len()
    );
    let client = apps.client.clone();
    tollgate_tests::create_synthetic(&client, &apps.name, &world, 16).await?;

    // The workload: its route (to the app beside the sidecar), a plan, 10 tenants.
    let mut workload = String::from(
        "apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: default}\n---\n\
         apiVersion: tollgate.dev/v1alpha1\nkind: ApiRoute\nmetadata: {name: api}\n\
         spec: {workloadSelector: {matchLabels: {app: api}}, match: {pathPrefix: /api}}\n---\n\
         apiVersion: tollgate.dev/v1alpha1\nkind: QuotaPolicy\nmetadata: {name: api-plan}\n\
         spec: {rateLimits: [{name: per-second, requests: 100000, window: 1s}],\n\
                quotas: [{name: monthly-requests, metric: Requests, limit: \"100000000\", period: Month}]}\n",
    );
    for i in 0..WORKLOAD_TENANTS {
        workload.push_str(&format!(
            "---\napiVersion: v1\nkind: Secret\nmetadata: {{name: api-key-{i}, labels: {{tollgate.dev/api-key: \"true\"}}}}\n\
             stringData: {{apiKey: key-api-{i}}}\n---\n\
             apiVersion: tollgate.dev/v1alpha1\nkind: Tenant\nmetadata: {{name: api-tenant-{i}}}\n\
             spec: {{quotaPolicyRef: {{name: api-plan}}, apiKeys: [{{secretRef: {{name: api-key-{i}}}}}],\n\
                    subscriptions: [{{apiRouteRef: {{name: api}}}}]}}\n"
        ));
    }
    apps.apply_ok(&workload)?;

    eprintln!("starting the sidecar");
    let app = LlmBackend::start().await;
    let listen_port = tollgate_tests::process::free_port()?;
    let (pod, token) = injected_pod(
        &apps,
        &template(&fleet)?,
        json!({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": "api", "namespace": apps.name, "labels": {"app": "api"},
                            "annotations": {"tollgate.dev/inject": "ingress",
                                            "tollgate.dev/listen-port": listen_port.to_string(),
                                            "tollgate.dev/app-port": app.addr.port().to_string()}},
               "spec": {"containers": [{"name": "app", "image": "app:1"}]}}),
    )
    .await?;

    // Start to ready: the sidecar answers /readyz once its first configuration is applied.
    let started = Instant::now();
    // As injected: one worker per CPU requested (20m: one), like the central proxies of the
    // test fleet.
    let sidecar = run_sidecar(&fleet, &pod, &token, &[])?;
    loop {
        if get(sidecar.admin, "/readyz", &[])
            .await
            .is_ok_and(|r| r.status == 200)
        {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(60),
            "not ready in 60 s"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let ready_ms = started.elapsed().as_secs_f64() * 1000.0;
    let sidecar_pid = pid_of(&sidecar.state_dir.display().to_string())?;
    let sidecar_rss_ready = rss_mib(sidecar_pid)?;

    // A central proxy in the same run, holding the whole namespace (one worker thread too).
    let central = fleet.start_proxy("central")?;
    loop {
        if get(fleet.proxies[central].admin, "/readyz", &[])
            .await
            .is_ok_and(|r| r.status == 200)
        {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(120),
            "central proxy not ready"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let central_pid = pid_of(&fleet.proxies[central].state_dir.display().to_string())?;

    eprintln!("measuring latency");
    // Latency: alternating rounds, direct then through the sidecar, after a warm-up of each.
    round(app.addr, "/api/x", None, 200).await?;
    round(sidecar.listen, "/api/x", Some("key-api-0"), 200).await?;
    let (mut direct, mut through) = (Vec::new(), Vec::new());
    for i in 0..ROUNDS {
        let key = format!("key-api-{}", i % WORKLOAD_TENANTS);
        direct.extend(round(app.addr, "/api/x", None, PER_ROUND).await?);
        through.extend(round(sidecar.listen, "/api/x", Some(&key), PER_ROUND).await?);
    }
    direct.sort_by(f64::total_cmp);
    through.sort_by(f64::total_cmp);
    let sidecar_rss_after = rss_mib(sidecar_pid)?;
    let central_rss = rss_mib(central_pid)?;
    let (d50, d99) = (percentile(&direct, 0.5), percentile(&direct, 0.99));
    let (t50, t99) = (percentile(&through, 0.5), percentile(&through, 0.99));
    println!(
        "namespace: {} tenants, {} routes, {} plans; the sidecar's workload: 1 route, {WORKLOAD_TENANTS} tenants, 1 plan",
        world.tenants.len() + WORKLOAD_TENANTS,
        world.routes.len() + 1,
        world.plans.len() + 1
    );
    println!("sidecar start to ready (configuration received and applied): {ready_ms:.0} ms");
    println!(
        "RSS: sidecar (as injected: a worker per CPU requested, no transparent huge pages) {sidecar_rss_ready:.1} MiB when ready, {sidecar_rss_after:.1} MiB after {} requests; central proxy (one worker) with the whole namespace {central_rss:.1} MiB (sidecar/central {:.2})",
        ROUNDS * PER_ROUND + 200,
        sidecar_rss_after / central_rss
    );
    println!(
        "latency on loopback, {} requests each, keep-alive: direct p50 {d50:.0} us p99 {d99:.0} us; through the sidecar p50 {t50:.0} us p99 {t99:.0} us; added p50 {:.0} us p99 {:.0} us",
        direct.len(),
        t50 - d50,
        t99 - d99
    );
    drop(sidecar);
    Ok(())
}
