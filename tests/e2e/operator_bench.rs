//! Operator benchmark (ignored by default; bench/operator.sh runs it):
//! - compile time and full-snapshot bytes with 10,000 tenants and 1,000 routes, and the bytes
//!   pushed for one tenant's change;
//! - time from `kubectl apply` to enforcement at every proxy, p50/p99 over 20 changes;
//! - one round of reading every tenant's usage from Redis (the leader's roll-up), 10,000 tenants;
//! - an operator started on a world of 10,000 tenants already in the API server: time until every
//!   tenant shows its first status, compiles on the way, and the operator's memory;
//! - compile time, memory and snapshot bytes at 100,000 tenants (in process);
//! - (SCALE=1) an operator and a fleet proxy on 100,000 tenants in a real API server.

use std::time::{Duration, Instant};

use anyhow::Result;
use tollgate_crds::resources::BillingState;
use tollgate_crds::stream::{ConfigMessage, diff};
use tollgate_crds::synthetic::synthetic;
use tollgate_tests::fleet::{Fleet, get};

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

#[tokio::test]
#[ignore = "benchmark: bench/operator.sh"]
async fn compile_size_and_propagation() -> Result<()> {
    // Compile and wire sizes, in process.
    let mut world = synthetic("bench", 10_000, 1_000);
    let mut compile_ms = Vec::new();
    let mut compiled = None;
    for _ in 0..5 {
        let started = Instant::now();
        compiled = Some(tollgate_crds::compile(&world.objects()));
        compile_ms.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    compile_ms.sort_by(f64::total_cmp);
    let before = compiled.map(|c| c.snapshot).unwrap_or_default();
    let full = serde_json::to_vec(&ConfigMessage::Full {
        version: 1,
        snapshot: before.clone(),
    })?;
    world.tenants[4242].spec.billing.state = BillingState::Suspended;
    let after = tollgate_crds::compile(&world.objects()).snapshot;
    let delta = serde_json::to_vec(&ConfigMessage::Delta(diff(&before, &after, 1, 2)))?;
    println!("10,000 tenants, 1,000 routes, 10 plans:");
    println!(
        "  compile: median {:.1} ms (5 runs, min {:.1}, max {:.1})",
        percentile(&compile_ms, 0.5),
        compile_ms[0],
        compile_ms[4]
    );
    println!(
        "  full snapshot on the wire: {} bytes ({:.1} MiB)",
        full.len(),
        full.len() as f64 / 1048576.0
    );
    println!("  one tenant's change on the wire: {} bytes", delta.len());

    // Propagation: kubectl apply -> every proxy enforces the new limit.
    let mut fleet = Fleet::new("op-bench").await?;
    fleet.start_operator().await?;
    fleet.wait_leader(0).await?;
    let plan = |limit: u32| {
        format!(
            "apiVersion: tollgate.dev/v1alpha1\nkind: QuotaPolicy\nmetadata: {{name: bench}}\n\
             spec: {{quotas: [{{name: monthly-requests, limit: \"{limit}\", period: Month}}]}}\n"
        )
    };
    fleet.ns.apply_ok(&plan(1000))?;
    fleet.ns.apply_ok(
        "apiVersion: tollgate.dev/v1alpha1\nkind: ApiRoute\nmetadata: {name: hello}\nspec: {match: {pathPrefix: /hello}, backend: {directResponse: {status: 200}}}\n---\n\
         apiVersion: v1\nkind: Secret\nmetadata: {name: k, labels: {tollgate.dev/api-key: \"true\"}}\nstringData: {apiKey: key-bench}\n---\n\
         apiVersion: tollgate.dev/v1alpha1\nkind: Tenant\nmetadata: {name: bench}\n\
         spec: {quotaPolicyRef: {name: bench}, apiKeys: [{secretRef: {name: k}}], subscriptions: [{apiRouteRef: {name: hello}}]}\n",
    )?;
    fleet.start_proxy("proxy-a")?;
    fleet.start_proxy("proxy-b")?;
    for i in 0..2 {
        fleet.wait_status(i, "/hello", "key-bench", 200).await?;
    }
    let mut samples = Vec::new();
    for change in 1..=20u32 {
        let limit = 1000 + change;
        let want = format!("q={limit};");
        let started = Instant::now();
        fleet.ns.apply_ok(&plan(limit))?;
        for i in 0..2 {
            let addr = fleet.proxies[i].listen;
            loop {
                let r = get(addr, "/hello", &[("authorization", "Bearer key-bench")]).await?;
                if r.headers
                    .get("ratelimit-policy")
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|v| v.contains(&want))
                {
                    break;
                }
                anyhow::ensure!(
                    started.elapsed() < Duration::from_secs(30),
                    "change {change} not enforced in 30 s"
                );
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
        samples.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    samples.sort_by(f64::total_cmp);
    println!(
        "kubectl apply -> enforced at 2/2 proxies, 20 changes: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        percentile(&samples, 0.5),
        percentile(&samples, 0.99),
        samples[samples.len() - 1]
    );
    Ok(())
}

#[tokio::test]
#[ignore = "benchmark: bench/operator.sh"]
async fn usage_roll_up_from_redis() -> Result<()> {
    use tollgate_crds::counter_store::StoreTarget;
    let redis = tollgate_tests::redis::Redis::start(tollgate_tests::process::free_port()?);
    let port = redis.port;
    let snapshot = tollgate_crds::compile(&synthetic("bench", 10_000, 1_000).objects()).snapshot;
    let metrics = tollgate_operator::metrics::OperatorMetrics::new(&prometheus::Registry::new())?;
    let target = StoreTarget {
        url: format!("redis://127.0.0.1:{port}"),
        tls: Default::default(),
    };
    let usage = tollgate_operator::usage::RedisUsage::connect(&target, metrics)?;
    // No counters exist yet: MGET answers nil; the cost measured is the round trips.
    let mut rounds = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        let failed = usage.refresh(&snapshot, jiff::Timestamp::now()).await;
        anyhow::ensure!(failed == 0, "{failed} reads failed");
        rounds.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    rounds.sort_by(f64::total_cmp);
    println!(
        "usage roll-up from Redis, {} tenants: median {:.0} ms per round (5 rounds, min {:.0}, max {:.0})",
        snapshot.tenants.len(),
        percentile(&rounds, 0.5),
        rounds[0],
        rounds[4]
    );
    Ok(())
}

#[tokio::test]
#[ignore = "benchmark: bench/operator.sh"]
async fn first_statuses_of_ten_thousand_tenants() -> Result<()> {
    let mut fleet = Fleet::new("op-first").await?;
    let world = synthetic(&fleet.ns.name, 10_000, 1_000);
    let client = fleet.ns.client.clone();
    let ns = fleet.ns.name.clone();
    let started = Instant::now();
    tollgate_tests::create_synthetic(&client, &ns, &world, 32).await?;
    println!(
        "created 10,000 tenants (3 subscriptions each), their 10,000 key Secrets, 1,000 routes, 10 plans in {:.0} s",
        started.elapsed().as_secs_f64()
    );

    // Built before the stopwatch starts (start_operator builds the binaries on first use).
    tollgate_tests::workspace_binary("tollgate-operator")?;
    let started = Instant::now();
    fleet.start_operator().await?;
    fleet.wait_leader(0).await?;
    let tenants: kube::Api<tollgate_crds::resources::Tenant> =
        kube::Api::namespaced(client.clone(), &ns);
    let all_ready = loop {
        let with_status = tollgate_tests::fleet::tenants_with_status(&tenants).await?;
        if with_status == 10_000 {
            break started.elapsed();
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(600),
            "{with_status} of 10,000 tenants have a status after 600 s"
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    };
    let admin = fleet.operators[0].admin;
    let metric =
        |series: &'static str| async move { Fleet::metric(admin, series).await.unwrap_or(0.0) };
    println!(
        "operator start -> all 10,000 tenants have a status: {:.1} s; compiles: {}; status writes: {}; RSS {:.0} MiB",
        all_ready.as_secs_f64(),
        metric("tollgate_operator_compile_duration_seconds_count").await,
        metric("tollgate_operator_status_writes_total{kind=\"Tenant\"}").await,
        metric("process_resident_memory_bytes").await / 1048576.0
    );
    Ok(())
}

/// A line of /proc/self/status in KiB (`VmRSS`, `VmHWM`).
fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix(field)?
                .trim()
                .strip_suffix("kB")?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

#[tokio::test]
#[ignore = "benchmark: bench/operator.sh"]
async fn compile_at_a_hundred_thousand_tenants() -> Result<()> {
    // The objects as the operator's caches hold them, then compiled as the publisher does: the
    // resident memory each step adds, and the peak (this test binary's, so the objects'
    // construction counts too).
    let base = status_kib("VmRSS:");
    let world = synthetic("bench", 100_000, 1_000);
    let objects = world.objects();
    let with_objects = status_kib("VmRSS:");
    let mut compile_ms = Vec::new();
    let mut snapshot = None;
    for _ in 0..3 {
        let started = Instant::now();
        snapshot = Some(tollgate_crds::compile(&objects).snapshot);
        compile_ms.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    compile_ms.sort_by(f64::total_cmp);
    let with_snapshot = status_kib("VmRSS:");
    let snapshot = snapshot.unwrap_or_default();
    let full = serde_json::to_vec(&ConfigMessage::Full {
        version: 1,
        snapshot,
    })?;
    println!("100,000 tenants, 1,000 routes, 10 plans (in process):");
    println!(
        "  compile: median {:.0} ms (3 runs, min {:.0}, max {:.0})",
        percentile(&compile_ms, 0.5),
        compile_ms[0],
        compile_ms[2]
    );
    println!(
        "  memory: objects +{:.0} MiB, snapshot +{:.0} MiB, peak {:.0} MiB",
        (with_objects.saturating_sub(base)) as f64 / 1024.0,
        (with_snapshot.saturating_sub(with_objects)) as f64 / 1024.0,
        status_kib("VmHWM:") as f64 / 1024.0
    );
    println!(
        "  full snapshot on the wire: {:.1} MiB",
        full.len() as f64 / 1048576.0
    );
    Ok(())
}

/// Tenants for [`operator_and_a_fleet_proxy_at_scale`]: `TOLLGATE_BENCH_TENANTS`, or 100,000.
fn scale_tenants() -> Result<usize> {
    match std::env::var("TOLLGATE_BENCH_TENANTS") {
        Ok(n) => n.parse().map_err(|_| {
            anyhow::anyhow!("TOLLGATE_BENCH_TENANTS is a count of tenants, not '{n}'")
        }),
        Err(_) => Ok(100_000),
    }
}

#[tokio::test]
#[ignore = "benchmark: SCALE=1 bench/operator.sh (about 20 minutes)"]
async fn operator_and_a_fleet_proxy_at_scale() -> Result<()> {
    // A world of 100,000 tenants (3 subscriptions each, a key Secret each), 1,000 routes and 10
    // plans in a real API server; then an operator started on it, and a proxy fed by it.
    let count = scale_tenants()?;
    let mut fleet = Fleet::new("op-scale").await?;
    let world = synthetic(&fleet.ns.name, count, 1_000);
    let client = fleet.ns.client.clone();
    let ns = fleet.ns.name.clone();
    let started = Instant::now();
    tollgate_tests::create_synthetic(&client, &ns, &world, 64).await?;
    println!(
        "created {count} tenants (3 subscriptions each), their {count} key Secrets, 1,000 routes, 10 plans in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    drop(world);
    // Built before the stopwatch starts.
    tollgate_tests::workspace_binary("tollgate-operator")?;
    tollgate_tests::workspace_binary("tollgate-proxy")?;

    let started = Instant::now();
    fleet.start_operator().await?;
    fleet.wait_leader(0).await?;
    let leader = started.elapsed();
    let operator = fleet.operators[0].admin;
    let metric = |addr, series: &'static str| async move {
        Fleet::metric(addr, series).await.unwrap_or(0.0)
    };
    let proxy = fleet.start_proxy("scale-0")?;
    let admin = fleet.proxies[proxy].admin;
    // Serving the whole world: ready, and the last tenant's key known (401 would be unknown,
    // 404 a route missing; its subscriptions decide between 200, 403 and the backend's 502).
    let last = format!("key-tenant-{:05}", count - 1);
    let served = loop {
        let ready = get(admin, "/readyz", &[])
            .await
            .is_ok_and(|r| r.status == 200);
        if ready
            && let Ok(reply) = fleet.call(proxy, "/api/00000/x", &last).await
            && reply.status != 401
            && reply.status != 404
        {
            break started.elapsed();
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(900),
            "the proxy does not serve the whole world 900 s after the operator started\n{}",
            fleet.log_tails()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // Its memory once the snapshot is persisted too (written after it is applied).
    let persisted = fleet.proxies[proxy].state_dir.join("snapshot.json");
    while !persisted.exists() {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(960),
            "no persisted snapshot"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mib = |bytes: f64| bytes / 1048576.0;
    println!(
        "operator start -> leader {:.1} s -> a proxy serving the whole world {:.1} s",
        leader.as_secs_f64(),
        served.as_secs_f64()
    );
    println!(
        "  operator: RSS {:.0} MiB, compiles {} taking {:.2} s in all, {:.1} MiB pushed",
        mib(metric(operator, "process_resident_memory_bytes").await),
        metric(operator, "tollgate_operator_compile_duration_seconds_count").await,
        metric(operator, "tollgate_operator_compile_duration_seconds_sum").await,
        mib(metric(operator, "tollgate_operator_push_bytes_total").await)
    );
    println!(
        "  proxy: RSS {:.0} MiB (the snapshot applied and persisted)",
        mib(metric(admin, "process_resident_memory_bytes").await)
    );
    // Then every tenant's first status (the operator's write load at this size).
    let tenants: kube::Api<tollgate_crds::resources::Tenant> =
        kube::Api::namespaced(client.clone(), &ns);
    let statuses = loop {
        let with_status = tollgate_tests::fleet::tenants_with_status(&tenants).await?;
        if with_status == count {
            break Some(started.elapsed());
        }
        if started.elapsed() > Duration::from_secs(1800) {
            println!("  {with_status} of {count} tenants have a status after 1800 s");
            break None;
        }
        tokio::time::sleep(Duration::from_secs(10)).await;
    };
    if let Some(statuses) = statuses {
        println!(
            "  every tenant's first status {:.0} s after the operator started",
            statuses.as_secs_f64()
        );
    }
    println!(
        "  then: operator RSS {:.0} MiB, compiles {}, status writes {}; proxy RSS {:.0} MiB",
        mib(metric(operator, "process_resident_memory_bytes").await),
        metric(operator, "tollgate_operator_compile_duration_seconds_count").await,
        metric(
            operator,
            "tollgate_operator_status_writes_total{kind=\"Tenant\"}"
        )
        .await,
        mib(metric(admin, "process_resident_memory_bytes").await)
    );
    Ok(())
}
