//! Fleet-wide quotas on a real redis-server: several proxies, one tenant, an exact total.

mod support;

use std::time::Duration;

use jiff::{Timestamp, ToSpan, Zoned};

use support::ProxyProcess;
use tollgate_tests::redis::Redis;

fn world(limit: u32, policy: &str) -> String {
    format!(
        "apiVersion: tollgate.dev/v1alpha1\nkind: QuotaPolicy\nmetadata: {{name: plan}}\n\
         spec: {{quotas: [{{name: monthly, limit: \"{limit}\", period: Month}}], failurePolicy: {policy}}}\n---\n\
         apiVersion: tollgate.dev/v1alpha1\nkind: ApiRoute\nmetadata: {{name: api}}\n\
         spec: {{match: {{pathPrefix: /api}}, backend: {{directResponse: {{status: 200, body: ok}}}}}}\n---\n\
         apiVersion: v1\nkind: Secret\nmetadata: {{name: k}}\nstringData: {{apiKey: key-fleet}}\n---\n\
         apiVersion: tollgate.dev/v1alpha1\nkind: Tenant\nmetadata: {{name: t}}\n\
         spec: {{quotaPolicyRef: {{name: plan}}, apiKeys: [{{secretRef: {{name: k}}}}], subscriptions: [{{apiRouteRef: {{name: api}}}}]}}\n"
    )
}

async fn fleet(redis: &Redis, limit: u32, policy: &str, size: usize) -> Vec<ProxyProcess> {
    // Settled usage a second after admission (the default waits for the longest backend
    // timeout), so the tests read it soon.
    fleet_on(
        &["--store", &redis.url(), "--settle-after", "1s"],
        limit,
        policy,
        size,
    )
    .await
}

/// `size` proxies started with `store_args`, one tenant with a monthly quota of `limit`.
async fn fleet_on(store_args: &[&str], limit: u32, policy: &str, size: usize) -> Vec<ProxyProcess> {
    let mut proxies = Vec::new();
    for _ in 0..size {
        proxies.push(
            ProxyProcess::start_with(&[("world.yaml", world(limit, policy))], store_args).await,
        );
    }
    proxies
}

/// Sends `per_proxy` requests to every proxy at once; returns (admitted, refused with 402, other).
async fn drive(proxies: &[ProxyProcess], per_proxy: usize) -> (usize, usize, usize) {
    drive_paced(proxies, per_proxy, Duration::ZERO).await
}

/// Like `drive`, with `pause` after each request of each of the 4 clients per proxy (so the
/// run lasts long enough to break things in the middle of it).
async fn drive_paced(
    proxies: &[ProxyProcess],
    per_proxy: usize,
    pause: Duration,
) -> (usize, usize, usize) {
    let mut tasks = Vec::new();
    for p in proxies {
        let listen = p.listen;
        for _ in 0..4 {
            tasks.push(tokio::spawn(async move {
                let mut counts = (0, 0, 0);
                for _ in 0..per_proxy / 4 {
                    let r = support::request(
                        listen,
                        "GET",
                        "/api/x",
                        &[("x-api-key", "key-fleet")],
                        bytes::Bytes::new(),
                    )
                    .await;
                    match r.status {
                        200 => counts.0 += 1,
                        402 => counts.1 += 1,
                        _ => counts.2 += 1,
                    }
                    if !pause.is_zero() {
                        tokio::time::sleep(pause).await;
                    }
                }
                counts
            }));
        }
    }
    let mut total = (0, 0, 0);
    for t in tasks {
        let c = t.await.expect("join");
        total = (total.0 + c.0, total.1 + c.1, total.2 + c.2);
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn four_proxies_admit_exactly_a_small_limit() {
    let redis = Redis::start(support::free_port());
    let proxies = fleet(&redis, 10, "FailClosed", 4).await;
    let (admitted, refused, other) = drive(&proxies, 40).await;
    assert_eq!((admitted, refused, other), (10, 150, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn four_proxies_never_exceed_a_large_limit_and_redis_agrees() {
    let redis = Redis::start(support::free_port());
    let proxies = fleet(&redis, 1000, "FailClosed", 4).await;
    let (admitted, refused, other) = drive(&proxies, 320).await;
    assert_eq!(other, 0);
    assert!(
        admitted <= 1000,
        "overshoot: {admitted} admitted for a limit of 1000"
    );
    // Refusals while another proxy still held unused units: at most a slice each.
    assert!(admitted >= 1000 - 4 * 16, "under-admission: {admitted}");
    assert_eq!(admitted + refused, 1280);
    // Idle slices go back within about 2 s: Redis then holds exactly what was admitted.
    let in_redis = settled_total(&redis, admitted as i64).await;
    assert_eq!(in_redis, admitted as i64, "Redis total vs admitted");
    // The settled key (what billing exports) holds exactly the admissions, never a lease.
    assert_eq!(
        settled_usage(&redis, admitted as i64).await,
        admitted as i64,
        "settled usage vs admitted"
    );
    // The proxies' own account agrees: leased minus returned is what they admitted.
    // (Regression: the returned-units counter never moved.)
    let leased = metric_total(&proxies, "tollgate_proxy_store_leased_units_total", "").await;
    let returned = metric_total(&proxies, "tollgate_proxy_store_returned_units_total", "").await;
    assert_eq!(
        leased - returned,
        admitted as f64,
        "leased {leased}, returned {returned}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_down_fail_closed_answers_503_and_fail_open_reconciles() {
    let port = support::free_port();
    let mut redis = Redis::start(port);
    let closed = fleet(&redis, 100, "FailClosed", 1).await;
    let open = ProxyProcess::start_with(
        &[(
            "world.yaml",
            world(100, "FailOpen")
                .replace("key-fleet", "key-open")
                .replace("name: t}", "name: t2}"),
        )],
        &["--store", &redis.url(), "--settle-after", "1s"],
    )
    .await;
    assert_eq!(
        closed[0]
            .get("/api/x", &[("x-api-key", "key-fleet")])
            .await
            .status,
        200
    );
    redis.stop();
    for _ in 0..5 {
        let r = closed[0].get("/api/x", &[("x-api-key", "key-fleet")]).await;
        r.problem(503, "quota-store-unavailable");
    }
    // The outage is logged once, when it starts, not once per refused request.
    let unreachable_lines = |p: &ProxyProcess| {
        p.stderr()
            .lines()
            .filter(|l| l.contains("WARN") && l.contains("Redis unreachable"))
            .count()
    };
    assert_eq!(unreachable_lines(&closed[0]), 1, "{}", closed[0].stderr());
    for _ in 0..3 {
        assert_eq!(
            open.get("/api/x", &[("x-api-key", "key-open")])
                .await
                .status,
            200,
            "FailOpen keeps serving"
        );
    }
    // Redis comes back (empty: no persistence in this test): FailOpen's admissions are added.
    let redis = Redis::start(port);
    let mut total = 0;
    for _ in 0..300 {
        total = redis.total("tollgate:{default/t2|*");
        if total >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        total, 3,
        "the 3 requests admitted during the outage are in Redis"
    );
    assert_eq!(
        settled_usage_of(&redis, "tollgate:{default/t2|*", 3).await,
        3,
        "and in its settled usage"
    );
    assert_eq!(unreachable_lines(&open), 1, "{}", open.stderr());
    assert!(
        open.stderr().contains("Redis reachable again"),
        "the end of the outage is logged too:\n{}",
        open.stderr()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_proxy_killed_with_sigkill_loses_at_most_its_slice() {
    let redis = Redis::start(support::free_port());
    let first = fleet(&redis, 1000, "FailClosed", 1).await.remove(0);
    for _ in 0..10 {
        assert_eq!(
            first
                .get("/api/x", &[("x-api-key", "key-fleet")])
                .await
                .status,
            200
        );
    }
    // Far from the limit, one slice served all ten: one Redis call, nine local admissions.
    let (_, _, metrics) = support::get_raw(first.admin, "/metrics", &[])
        .await
        .expect("metrics");
    let metrics = String::from_utf8_lossy(&metrics);
    assert!(
        metrics.contains("tollgate_proxy_store_local_admissions_total 9"),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"tollgate_proxy_store_round_trips_total{op="lease",result="ok"} 1"#),
        "{metrics}"
    );
    let slice = redis.total("tollgate:*");
    assert_eq!(slice, 15, "a slice is 1/64 of the remaining 1000");
    drop(first); // SIGKILL: its 5 unused units are not returned.
    let second = fleet(&redis, 1000, "FailClosed", 1).await.remove(0);
    let (admitted, refused, _) = drive(std::slice::from_ref(&second), 1000).await;
    assert_eq!(
        admitted,
        1000 - 15,
        "lost exactly the unused part of the killed proxy's slice"
    );
    assert_eq!(refused, 15);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn four_proxies_share_a_rate_limit_window() {
    // Fixed windows: the proxies start clear of an hour boundary, where two windows would both
    // count (support::clear_of_period_boundaries).
    let redis = Redis::start(support::free_port());
    let world = world(1_000_000, "FailClosed").replace(
        "quotas: [{name: monthly, limit: \"1000000\", period: Month}]",
        "rateLimits: [{name: per-hour, requests: 20, window: 1h}]",
    );
    assert!(world.contains("per-hour"));
    let mut proxies = Vec::new();
    for _ in 0..4 {
        proxies.push(
            ProxyProcess::start_with(&[("world.yaml", world.clone())], &["--store", &redis.url()])
                .await,
        );
    }
    let (admitted, _, other) = drive(&proxies, 40).await;
    assert_eq!(
        (admitted, other),
        (20, 140),
        "20 per hour across the fleet; the rest 429"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_redis_restart_with_aof_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let aof = [
        "--appendonly",
        "yes",
        "--appendfsync",
        "always",
        "--dir",
        dir.path().to_str().expect("utf-8 path"),
    ];
    let port = support::free_port();
    let mut redis = Redis::start_with(port, &aof);
    // A small limit: every admission is a Redis call, so every admitted request is in the AOF.
    let proxy = fleet(&redis, 30, "FailClosed", 1).await.remove(0);
    for _ in 0..10 {
        assert_eq!(
            proxy
                .get("/api/x", &[("x-api-key", "key-fleet")])
                .await
                .status,
            200
        );
    }
    redis.stop();
    let _redis = Redis::start_with(port, &aof);
    let mut admitted = 10;
    for _ in 0..40 {
        match proxy
            .get("/api/x", &[("x-api-key", "key-fleet")])
            .await
            .status
        {
            200 => admitted += 1,
            402 => {}
            503 => tokio::time::sleep(Duration::from_millis(100)).await, // reconnecting
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(
        admitted, 30,
        "the 10 admitted before the restart still count"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refused_request_during_an_outage_leaves_no_debt() {
    // Regression: with FailOpen and Redis down, a request that took a Requests unit "on credit"
    // and was then refused by another quota still added that unit to Redis later.
    let backend = support::Backend::start().await;
    let port = support::free_port();
    let mut redis = Redis::start(port);
    let world = format!(
        "apiVersion: tollgate.dev/v1alpha1\nkind: QuotaPolicy\nmetadata: {{name: plan}}\n\
         spec: {{failurePolicy: FailOpen, reservation: {{maxOutputTokens: 20}}, quotas: [{{name: calls, limit: \"100\", period: Month}}, {{name: tokens, metric: TotalTokens, limit: \"31\", period: Month}}]}}\n---\n\
         apiVersion: tollgate.dev/v1alpha1\nkind: ApiRoute\nmetadata: {{name: chat}}\n\
         spec: {{match: {{pathPrefix: /v1/chat}}, backend: {{url: \"{}\"}}, metering: OpenAI}}\n---\n\
         apiVersion: v1\nkind: Secret\nmetadata: {{name: k}}\nstringData: {{apiKey: key-debt}}\n---\n\
         apiVersion: tollgate.dev/v1alpha1\nkind: Tenant\nmetadata: {{name: t}}\n\
         spec: {{quotaPolicyRef: {{name: plan}}, apiKeys: [{{secretRef: {{name: k}}}}], subscriptions: [{{apiRouteRef: {{name: chat}}}}]}}\n",
        backend.url()
    );
    let proxy =
        ProxyProcess::start_with(&[("world.yaml", world)], &["--store", &redis.url()]).await;
    let auth = ("x-api-key", "key-debt");
    assert_eq!(
        proxy
            .post("/v1/chat/completions", &[auth], "{}")
            .await
            .status,
        200,
        "30 tokens charged"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    redis.stop();
    for _ in 0..3 {
        proxy
            .post("/v1/chat/completions", &[auth], "{}")
            .await
            .problem(402, "quota-exhausted");
    }
    let redis = Redis::start(port);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    // Redis restarted empty (no persistence here): nothing may have been added for the refusals.
    assert_eq!(
        redis.total("tollgate:*:calls:*"),
        0,
        "refused requests left debt behind"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_redis_cluster_counts_exactly_like_one_server() {
    let cluster = tollgate_tests::redis::RedisCluster::start();
    let proxies = fleet_on(&["--store", &cluster.url()], 10, "FailClosed", 4).await;
    let (admitted, refused, other) = drive(&proxies, 40).await;
    assert_eq!((admitted, refused, other), (10, 150, 0));
    assert_eq!(
        cluster.total("tollgate:*"),
        10,
        "the counter is in the cluster"
    );
}

/// A CA, a server certificate it signed for 127.0.0.1 and a client certificate, written to `dir`
/// as PEM files: [CA, server cert, server key, client cert, client key].
fn write_ca_and_certs(dir: &std::path::Path) -> [std::path::PathBuf; 5] {
    let ca_key = rcgen::KeyPair::generate().expect("key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    // A subject of its own: OpenSSL (redis-server, redis-cli) takes a leaf whose issuer equals its
    // subject for self-signed.
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "tollgate test CA");
    let ca_cert = ca_params.self_signed(&ca_key).expect("ca");
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .expect("params")
        .signed_by(&key, &issuer)
        .expect("cert");
    let client_key = rcgen::KeyPair::generate().expect("key");
    let mut client_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    client_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "tollgate-proxy");
    let client = client_params
        .signed_by(&client_key, &issuer)
        .expect("client cert");
    let paths = [
        "ca.pem",
        "redis.pem",
        "redis.key",
        "client.pem",
        "client.key",
    ]
    .map(|name| dir.join(name));
    std::fs::write(&paths[0], ca_cert.pem()).expect("write");
    std::fs::write(&paths[1], cert.pem()).expect("write");
    std::fs::write(&paths[2], key.serialize_pem()).expect("write");
    std::fs::write(&paths[3], client.pem()).expect("write");
    std::fs::write(&paths[4], client_key.serialize_pem()).expect("write");
    paths
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rediss_with_a_private_ca_counts_and_an_untrusted_server_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let [ca, cert, key, _, _] = write_ca_and_certs(dir.path());
    let redis = Redis::start_tls(support::free_port(), &ca, &cert, &key, None);
    let ca_arg = ca.display().to_string();
    let proxies = fleet_on(
        &["--store", &redis.url(), "--store-ca-file", &ca_arg],
        10,
        "FailClosed",
        2,
    )
    .await;
    let (admitted, refused, other) = drive(&proxies, 40).await;
    assert_eq!((admitted, refused, other), (10, 70, 0));
    assert_eq!(redis.total("tollgate:*"), 10);

    // Without the CA the server's certificate is not trusted: no counting there, so FailClosed.
    let untrusting = fleet_on(&["--store", &redis.url()], 10, "FailClosed", 1).await;
    untrusting[0]
        .get("/api/x", &[("x-api-key", "key-fleet")])
        .await
        .problem(503, "quota-store-unavailable");
}

#[tokio::test]
async fn tls_files_without_a_tls_url_stop_the_proxy_with_a_clear_message() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate-proxy"))
        .args([
            "--manifests",
            "/nonexistent",
            "--store",
            "redis://127.0.0.1:1",
        ])
        .args(["--store-ca-file", "/nonexistent/ca.pem"])
        .output()
        .expect("run tollgate-proxy");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("need a TLS URL (rediss://"), "{stderr}");
}

/// Two proxies on `redis` serving `world`, their wall clocks reading `start` now.
async fn proxies_with_clock(redis: &Redis, world: &str, start: Timestamp) -> [ProxyProcess; 2] {
    let clock = support::clock_starting_at(start);
    let env: Vec<(&str, &str)> = clock.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let files = [("world.yaml", world.to_owned())];
    let args = ["--store", &redis.url()];
    [
        ProxyProcess::start_with_env(&files, &args, &env).await,
        ProxyProcess::start_with_env(&files, &args, &env).await,
    ]
}

/// The monthly counter key of the test world's tenant for the period starting at `start`.
fn monthly_key(start: &Zoned) -> String {
    format!(
        "tollgate:{{default/t|default/plan}}:monthly:{}",
        start.timestamp().as_second()
    )
}

/// Seconds Redis will keep `key` (negative: no such key, or no expiry).
fn ttl(redis: &Redis, key: &str) -> i64 {
    redis.cli(&["TTL", key]).trim().parse().unwrap_or(-3)
}

const WEEK: i64 = 7 * 86_400;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_monthly_quota_starts_over_at_midnight_in_the_plans_time_zone() {
    let redis = Redis::start(support::free_port());
    // The proxies' clocks start 30 s before the next local midnight that begins a month in Sao
    // Paulo (UTC-3), whatever today is: from seconds to a month ahead of Redis's clock.
    let zone = "America/Sao_Paulo";
    let now = Timestamp::now().in_tz(zone).expect("zone");
    let this_month = now
        .date()
        .first_of_month()
        .to_zoned(now.time_zone().clone())
        .expect("midnight");
    let next_month = this_month.checked_add(1.month()).expect("next month");
    let start = next_month.timestamp() - 30.seconds();
    let world = world(3, "FailClosed").replace(
        "failurePolicy: FailClosed}",
        "failurePolicy: FailClosed, timezone: America/Sao_Paulo}",
    );
    assert!(world.contains("Sao_Paulo"));
    let proxies = proxies_with_clock(&redis, &world, start).await;
    let key = ("x-api-key", "key-fleet");
    let (ending, next) = (monthly_key(&this_month), monthly_key(&next_month));

    for p in proxies.iter().cycle().take(3) {
        assert_eq!(p.get("/api/x", &[key]).await.status, 200);
    }
    let refused = proxies[1].get("/api/x", &[key]).await;
    refused.problem(402, "quota-exhausted");
    let reset = refused.ratelimit_reset().expect("RateLimit header with t=");
    assert!(
        reset <= 30,
        "the month ends within 30 s, reset says {reset}"
    );
    assert_eq!(redis.total(&ending), 3, "the ending month's key holds it");

    // Local midnight passes: a new period, a new key, the full allowance again.
    tokio::time::sleep(Duration::from_secs(reset.unsigned_abs() + 1)).await;
    for p in proxies.iter().cycle().take(3) {
        assert_eq!(p.get("/api/x", &[key]).await.status, 200, "the new month");
    }
    proxies[0]
        .get("/api/x", &[key])
        .await
        .problem(402, "quota-exhausted");
    assert_eq!(redis.total(&ending), 3, "the ended month is kept as it was");
    assert_eq!(redis.total(&next), 3);
    // Both months stay countable for a week after they end by the proxies' clock, wherever
    // Redis's clock is (it only counts the lifetime down): the ended month's key was last written
    // at most 30 s before its end.
    let ended = ttl(&redis, &ending);
    assert!(
        ended > 6 * 86_400 && ended <= WEEK + 30,
        "the ended month's key lives {ended} s; a week and at most 30 s expected"
    );
    let current = ttl(&redis, &next);
    let after = next_month.checked_add(1.month()).expect("the month after");
    let longest = after.timestamp().as_second() - next_month.timestamp().as_second() + WEEK;
    assert!(
        current > WEEK && current <= longest,
        "the new month's key lives {current} s; its month and a week ({longest} s) at most"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn proxies_whose_clocks_run_weeks_behind_redis_keep_their_counters() {
    // Before: keys were given Redis an instant to expire at, from the proxy's clock; a proxy
    // 40 days behind Redis had each key deleted as it was written, so neither the month nor the
    // hour ever filled up.
    let redis = Redis::start(support::free_port());
    let world = world(3, "FailClosed").replace(
        "quotas: [",
        "rateLimits: [{name: hourly, requests: 2, window: 1h}], quotas: [",
    );
    assert!(world.contains("hourly"));
    // 10 s into an hour (UTC): neither the hour nor the month ends during the test.
    let behind = Timestamp::now() - (40 * 24).hours();
    let start = Timestamp::from_second(behind.as_second() / 3600 * 3600 + 10).expect("instant");
    let proxies = proxies_with_clock(&redis, &world, start).await;
    let key = ("x-api-key", "key-fleet");

    assert_eq!(proxies[0].get("/api/x", &[key]).await.status, 200);
    assert_eq!(proxies[1].get("/api/x", &[key]).await.status, 200);
    proxies[0]
        .get("/api/x", &[key])
        .await
        .problem(429, "rate-limited");
    let hour = format!(
        "tollgate:{{default/t|default/plan}}:rate:hourly:{}",
        start.as_second() / 3600
    );
    assert_eq!(
        redis.total(&hour),
        2,
        "the hour's key holds both admissions"
    );
    // The hour's window, then the next one (a key outlives its window by one window).
    let left = ttl(&redis, &hour);
    assert!(
        left > 3600 && left <= 2 * 3600 - 10 + 1,
        "the hour's key lives {left} s"
    );
    let month = start.in_tz("UTC").expect("utc").date().first_of_month();
    let month_key = monthly_key(&month.to_zoned(jiff::tz::TimeZone::UTC).expect("midnight"));
    let left = ttl(&redis, &month_key);
    assert!(
        left > WEEK,
        "the month's key lives {left} s: past its month by a week"
    );
}

/// The sum over `proxies` of the samples of `series` whose line contains `filter`.
async fn metric_total(proxies: &[ProxyProcess], series: &str, filter: &str) -> f64 {
    let mut total = 0.0;
    for p in proxies {
        let (_, _, metrics) = support::get_raw(p.admin, "/metrics", &[])
            .await
            .expect("metrics");
        total += String::from_utf8_lossy(&metrics)
            .lines()
            .filter(|l| l.starts_with(series) && l.contains(filter))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>();
    }
    total
}

/// Redis with an append-only file fsynced on every write, in `dir`.
fn aof_args(dir: &std::path::Path) -> [&str; 6] {
    [
        "--appendonly",
        "yes",
        "--appendfsync",
        "always",
        "--dir",
        dir.to_str().expect("utf-8 path"),
    ]
}

/// The sum of Redis's counters once idle slices have gone back (about 2 s after the last use;
/// polled up to 30 s, for a loaded machine).
async fn settled_total(redis: &Redis, expected: i64) -> i64 {
    let mut total = redis.total("tollgate:*");
    for _ in 0..300 {
        if total == expected {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        total = redis.total("tollgate:*");
    }
    total
}

/// The sum of Redis's settled keys once the proxies have flushed (every second; polled up to
/// 30 s, for a loaded machine).
async fn settled_usage(redis: &Redis, expected: i64) -> i64 {
    settled_usage_of(redis, "tollgate:*", expected).await
}

/// [`settled_usage`] of the keys matching `pattern`.
async fn settled_usage_of(redis: &Redis, pattern: &str, expected: i64) -> i64 {
    let mut total = redis.settled(pattern);
    for _ in 0..300 {
        if total == expected {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        total = redis.settled(pattern);
    }
    total
}

/// What a run through a Redis restart leaves: the counts, the restarted Redis, the proxies.
struct RestartRun {
    counts: (usize, usize, usize),
    redis: Redis,
    proxies: Vec<ProxyProcess>,
    _dir: tempfile::TempDir,
}

/// 4 proxies (one tenant, a monthly `limit`, `policy`) driven with 4 x 160 paced requests, while
/// Redis (AOF, fsync always) is killed 150 ms in and restarted 300 ms later.
async fn through_a_redis_restart(limit: u32, policy: &str) -> RestartRun {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = support::free_port();
    let mut redis = Redis::start_with(port, &aof_args(dir.path()));
    let proxies = fleet(&redis, limit, policy, 4).await;
    let driving = drive_paced(&proxies, 160, Duration::from_millis(10));
    let outage = async {
        tokio::time::sleep(Duration::from_millis(150)).await;
        redis.stop();
        tokio::time::sleep(Duration::from_millis(300)).await;
        Redis::start_with(port, &aof_args(dir.path()))
    };
    let (counts, redis) = tokio::join!(driving, outage);
    RestartRun {
        counts,
        redis,
        proxies,
        _dir: dir,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn four_proxies_through_a_redis_restart_fail_closed_never_over_admit() {
    let run = through_a_redis_restart(300, "FailClosed").await;
    let ((admitted, refused, unavailable), redis) = (run.counts, &run.redis);
    // Regression: a lease that Redis applied (and wrote to its AOF) but never answered, because
    // it died first, stayed counted in Redis without being admitted (Redis 300, admitted 299).
    // Leases now leave a record that the proxy asks for once Redis is back.
    assert_eq!(admitted + refused + unavailable, 640);
    assert!(
        unavailable > 0,
        "FailClosed answers 503 while Redis is down"
    );
    assert!(
        admitted <= 300,
        "over-admitted: {admitted} for a limit of 300"
    );
    assert_eq!(
        settled_total(redis, admitted as i64).await,
        admitted as i64,
        "Redis counts exactly what was admitted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn four_proxies_through_a_redis_restart_fail_open_lose_nothing() {
    // Small slices (a limit near the traffic): proxies ask Redis often, also during the outage.
    let run = through_a_redis_restart(700, "FailOpen").await;
    let ((admitted, refused, other), redis, proxies) = (run.counts, &run.redis, &run.proxies);
    assert_eq!(
        (admitted, refused, other),
        (640, 0, 0),
        "FailOpen keeps serving"
    );
    let failed_calls = metric_total(
        proxies,
        "tollgate_proxy_store_round_trips_total",
        r#"result="error""#,
    )
    .await;
    assert!(
        failed_calls > 0.0,
        "the outage happened while proxies needed Redis"
    );
    // What was admitted during the outage is added when Redis is back; slices go back.
    // Regression: a lease applied but unanswered was counted twice (its grant in Redis, and the
    // request as FailOpen debt): 647 for 640.
    assert_eq!(
        settled_total(redis, 640).await,
        640,
        "every admission is in Redis"
    );
    // Settled usage too, once each: a flush applied and unanswered is sent again with its id.
    assert_eq!(
        settled_usage(redis, 640).await,
        640,
        "every admission is settled once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mutual_tls_counts_with_a_client_certificate_and_refuses_without() {
    let dir = tempfile::tempdir().expect("tempdir");
    let [ca, cert, key, client_cert, client_key] = write_ca_and_certs(dir.path());
    let redis = Redis::start_tls(
        support::free_port(),
        &ca,
        &cert,
        &key,
        Some((&client_cert, &client_key)),
    );
    let arg = |p: &std::path::Path| p.display().to_string();
    let (ca, client_cert, client_key) = (arg(&ca), arg(&client_cert), arg(&client_key));
    let url = redis.url();
    let with_cert = fleet_on(
        &[
            "--store",
            &url,
            "--store-ca-file",
            &ca,
            "--store-client-cert-file",
            &client_cert,
            "--store-client-key-file",
            &client_key,
        ],
        3,
        "FailClosed",
        1,
    )
    .await;
    let (admitted, refused, other) = drive(&with_cert, 8).await;
    assert_eq!((admitted, refused, other), (3, 5, 0));
    assert_eq!(redis.total("tollgate:*"), 3);

    let without_cert = fleet_on(
        &["--store", &url, "--store-ca-file", &ca],
        3,
        "FailClosed",
        1,
    )
    .await;
    without_cert[0]
        .get("/api/x", &[("x-api-key", "key-fleet")])
        .await
        .problem(503, "quota-store-unavailable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sentinel_failover_moves_the_count_to_the_new_master() {
    let mut group = tollgate_tests::redis::RedisSentinel::start();
    let proxies = fleet_on(&["--store", &group.url()], 20, "FailClosed", 2).await;
    let key = ("x-api-key", "key-fleet");
    for p in proxies.iter().cycle().take(6) {
        assert_eq!(p.get("/api/x", &[key]).await.status, 200);
    }
    // Wait until the replica has every acknowledged write (replication is asynchronous: Redis
    // loses what the master acknowledged and never sent, whatever the client does).
    for _ in 0..100 {
        if group.replica.total("tollgate:*") == group.master.total("tollgate:*") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    group.master.stop();

    // FailClosed answers 503 until the Sentinel has promoted the replica, then counting goes on.
    let mut admitted = 6;
    let mut unavailable = 0;
    for _ in 0..300 {
        match proxies[admitted % 2].get("/api/x", &[key]).await.status {
            200 => admitted += 1,
            503 => {
                unavailable += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            402 => break,
            other => panic!("unexpected {other}"),
        }
    }
    assert!(unavailable > 0, "the failover was noticed");
    assert_eq!(admitted, 20, "exactly the limit across the failover");
    assert_eq!(
        settled_total(&group.replica, 20).await,
        20,
        "the promoted replica holds the count"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slice_held_when_the_period_ends_goes_back_to_that_period() {
    // Regression: at a period boundary the proxy dropped its counter for the ended period with
    // the unspent part of its slice, leaving the ended month's total inflated in Redis.
    use tollgate_proxy::quota::{CounterStore, Subject, redis::RedisStore};
    let redis = Redis::start(support::free_port());
    let world = tollgate_crds::synthetic::synthetic("shop", 10, 1);
    let config = tollgate_proxy::config::ProxyConfig::build(
        1,
        tollgate_crds::compile(&world.objects()).snapshot,
    );
    // plan-9: a monthly quota of 10,000 (UTC), so a slice is 10,000 / 64 = 156 units.
    let tenant = config
        .tenants_by_key
        .values()
        .find(|t| t.plan.as_ref().is_some_and(|p| p.id.ends_with("/plan-9")))
        .expect("a tenant on plan-9")
        .clone();
    let plan = tenant.plan.clone().expect("plan");
    let metrics =
        tollgate_proxy::telemetry::metrics::StoreMetrics::new(&prometheus::Registry::new())
            .expect("metrics");
    let target = tollgate_crds::counter_store::StoreTarget {
        url: redis.url(),
        tls: Default::default(),
    };
    let store =
        RedisStore::connect(&target, true, Duration::from_secs(60), metrics).expect("store");
    let last_second: jiff::Timestamp = "2026-11-30T23:59:59Z".parse().expect("time");
    let subject = Subject {
        tenant: &tenant.id,
        plan: &plan,
    };
    assert!(matches!(
        store
            .admit(
                subject,
                last_second,
                &tollgate_proxy::quota::Metered::default()
            )
            .await,
        tollgate_proxy::quota::Admission::Admitted { .. }
    ));
    let november = format!(
        "tollgate:{{{}|{}}}:monthly-requests:1793491200",
        tenant.id, plan.id
    );
    assert_eq!(redis.total(&november), 156, "one slice leased");
    // Three seconds into December, before the slice is idle for 2 s by the monotonic clock.
    let december: jiff::Timestamp = "2026-12-01T00:00:02Z".parse().expect("time");
    store.settle_at(december, false).await;
    assert_eq!(
        redis.total(&november),
        1,
        "November counts what was admitted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_llm_calls_on_two_proxies_cannot_spend_past_the_budget() {
    // Reservations are taken in Redis atomically: 20 slow calls spread over two proxies, each
    // reserving 1021 tokens and using 1010, on a 3000-token budget. Two fit; the fleet's count
    // ends at what they used.
    let backend = support::Backend::start().await;
    let port = support::free_port();
    let redis = Redis::start(port);
    let world = format!(
        "apiVersion: tollgate.dev/v1alpha1\nkind: QuotaPolicy\nmetadata: {{name: plan}}\n\
         spec: {{reservation: {{estimate: Bound}}, quotas: [{{name: tokens, metric: TotalTokens, limit: \"3000\", period: Month}}]}}\n---\n\
         apiVersion: tollgate.dev/v1alpha1\nkind: ApiRoute\nmetadata: {{name: chat}}\n\
         spec: {{match: {{pathPrefix: /v1/chat}}, backend: {{url: \"{}\"}}, metering: OpenAI}}\n---\n\
         apiVersion: v1\nkind: Secret\nmetadata: {{name: k}}\nstringData: {{apiKey: key-llm}}\n---\n\
         apiVersion: tollgate.dev/v1alpha1\nkind: Tenant\nmetadata: {{name: t}}\n\
         spec: {{quotaPolicyRef: {{name: plan}}, apiKeys: [{{secretRef: {{name: k}}}}], subscriptions: [{{apiRouteRef: {{name: chat}}}}]}}\n",
        backend.url()
    );
    let mut proxies = Vec::new();
    for _ in 0..2 {
        proxies.push(
            ProxyProcess::start_with(&[("world.yaml", world.clone())], &["--store", &redis.url()])
                .await,
        );
    }
    let headers = [
        ("x-api-key", "key-llm"),
        ("content-type", "application/json"),
        ("x-llm-output-tokens", "1000"),
        ("x-llm-delay-ms", "500"),
    ];
    let body = r#"{"model":"gpt-4o-mini","max_tokens":1000}"#;
    let calls = (0..20).map(|i| proxies[i % 2].post("/v1/chat/completions", &headers, body));
    let replies = futures::future::join_all(calls).await;
    let statuses: Vec<u16> = replies.iter().map(|r| r.status).collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        2,
        "{statuses:?}"
    );
    assert_eq!(statuses.iter().filter(|s| **s == 402).count(), 18);
    // Settled from 2 x 1021 reserved to 2 x 1010 used; the settled usage holds what they used,
    // never the reservations (the 18 refused calls' included).
    assert_eq!(settled_usage(&redis, 2020).await, 2020, "settled tokens");
    for _ in 0..500 {
        if redis.total("tollgate:*:tokens:*") == 2020 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!(
        "the fleet's count is {}, not 2020",
        redis.total("tollgate:*:tokens:*")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reservation_refused_by_a_rate_limit_goes_back_to_redis() {
    // Regression: the units Redis granted for a reservation that a rate limit then refused
    // stayed with the proxy while the tenant kept being admitted, and the fleet answered 402
    // with nearly all the budget left. Each call reserves 1021 of 5000 tokens and uses 30; one
    // call in three is refused by the rate limit (2 a second, a call every 300 ms).
    let backend = support::Backend::start().await;
    let port = support::free_port();
    let redis = Redis::start(port);
    let world = format!(
        "apiVersion: tollgate.dev/v1alpha1\nkind: QuotaPolicy\nmetadata: {{name: plan}}\n\
         spec: {{reservation: {{estimate: Bound}}, rateLimits: [{{name: per-second, requests: 2, window: 1s}}], quotas: [{{name: tokens, metric: TotalTokens, limit: \"5000\", period: Month}}]}}\n---\n\
         apiVersion: tollgate.dev/v1alpha1\nkind: ApiRoute\nmetadata: {{name: chat}}\n\
         spec: {{match: {{pathPrefix: /v1/chat}}, backend: {{url: \"{}\"}}, metering: OpenAI}}\n---\n\
         apiVersion: v1\nkind: Secret\nmetadata: {{name: k}}\nstringData: {{apiKey: key-rl}}\n---\n\
         apiVersion: tollgate.dev/v1alpha1\nkind: Tenant\nmetadata: {{name: t}}\n\
         spec: {{quotaPolicyRef: {{name: plan}}, apiKeys: [{{secretRef: {{name: k}}}}], subscriptions: [{{apiRouteRef: {{name: chat}}}}]}}\n",
        backend.url()
    );
    let proxy =
        ProxyProcess::start_with(&[("world.yaml", world)], &["--store", &redis.url()]).await;
    let headers = [
        ("x-api-key", "key-rl"),
        ("content-type", "application/json"),
    ];
    let body = r#"{"model":"gpt-4o-mini","max_tokens":1000}"#;
    let (mut served, mut limited) = (0, 0);
    for _ in 0..30 {
        match proxy
            .post("/v1/chat/completions", &headers, body)
            .await
            .status
        {
            200 => served += 1,
            429 => limited += 1,
            other => panic!(
                "{other} after {served} served and {limited} rate-limited: Redis counts {}",
                redis.total("tollgate:*:tokens:*")
            ),
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(
        served > 0 && limited > 0,
        "{served} served, {limited} limited"
    );
}

/// One tenant (`key-billed`) under `quota` on every path, forwarded to `backend` with a 1 s
/// timeout.
fn billed_world(backend: &str, quota: &str) -> String {
    format!(
        "apiVersion: tollgate.dev/v1alpha1\nkind: QuotaPolicy\nmetadata: {{name: plan}}\n\
         spec: {{quotas: [{quota}]}}\n---\n\
         apiVersion: tollgate.dev/v1alpha1\nkind: ApiRoute\nmetadata: {{name: api}}\n\
         spec: {{match: {{pathPrefix: /}}, backend: {{url: \"{backend}\", timeout: 1s}}}}\n---\n\
         apiVersion: v1\nkind: Secret\nmetadata: {{name: k}}\nstringData: {{apiKey: key-billed}}\n---\n\
         apiVersion: tollgate.dev/v1alpha1\nkind: Tenant\nmetadata: {{name: t}}\n\
         spec: {{quotaPolicyRef: {{name: plan}}, apiKeys: [{{secretRef: {{name: k}}}}], subscriptions: [{{apiRouteRef: {{name: api}}}}]}}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn requests_given_back_by_a_504_are_never_settled_for_billing() {
    // Regression: a request was settled at admission and flushed within a second; the 504 that
    // gave it back a second later could not take it out of the settled key, and billing counted
    // it. Requests now settle --settle-after their admission, once they cannot be given back.
    let backend = support::Backend::start().await;
    let redis = Redis::start(support::free_port());
    let world = billed_world(
        &backend.url(),
        r#"{name: monthly, limit: "100", period: Month}"#,
    );
    let mut proxy = ProxyProcess::start_with(
        &[("world.yaml", world)],
        &["--store", &redis.url(), "--settle-after", "3s"],
    )
    .await;
    let key = [("x-api-key", "key-billed")];
    for _ in 0..3 {
        assert_eq!(proxy.get("/slow/1", &key).await.status, 200);
    }
    for _ in 0..2 {
        proxy.problem_check(&proxy.get("/slow/3000", &key).await, 504, "backend-timeout");
    }
    assert_eq!(settled_usage(&redis, 3).await, 3, "settled while serving");
    // Whatever was still settling is flushed at shutdown: nothing more.
    assert!(proxy.terminate().await.success());
    assert_eq!(redis.settled("tollgate:*"), 3, "settled after shutdown");
    assert_eq!(redis.total("tollgate:*"), 3, "the counter agrees");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_overage_quota_serves_past_its_limit_says_so_and_counts_every_request() {
    let backend = support::Backend::start().await;
    let redis = Redis::start(support::free_port());
    let world = billed_world(
        &backend.url(),
        r#"{name: monthly, limit: "3", period: Month, whenExhausted: Overage}"#,
    );
    let mut proxies = Vec::new();
    for _ in 0..2 {
        proxies.push(
            ProxyProcess::start_with(
                &[("world.yaml", world.clone())],
                &["--store", &redis.url(), "--settle-after", "1s"],
            )
            .await,
        );
    }
    let key = [("x-api-key", "key-billed")];
    let mut overage = 0;
    for i in 0..8 {
        let reply = proxies[i % 2].get("/api/x", &key).await;
        assert_eq!(reply.status, 200, "served past the limit");
        if let Some(named) = reply.header("tollgate-overage") {
            assert_eq!(named, "\"monthly\"");
            assert_eq!(
                reply.header("ratelimit"),
                Some(
                    format!("\"monthly\";r=0;t={}", reply.ratelimit_reset().unwrap_or(0)).as_str()
                ),
            );
            overage += 1;
        }
    }
    // Up to the limit the proxies lease one unit at a time (slices shrink near it): the count
    // is exact, and every request past it says so.
    assert_eq!(overage, 5, "responses that said overage");
    assert_eq!(
        settled_usage(&redis, 8).await,
        8,
        "every request is settled"
    );
    // The memory store too, with no Redis: the fourth request on is overage, each says so.
    let alone = ProxyProcess::start(&[(
        "world.yaml",
        billed_world(
            &backend.url(),
            r#"{name: monthly, limit: "3", period: Month, whenExhausted: Overage}"#,
        ),
    )])
    .await;
    let said: Vec<bool> = futures::future::join_all((0..5).map(|_| alone.get("/api/x", &key)))
        .await
        .iter()
        .map(|r| {
            assert_eq!(r.status, 200);
            r.header("tollgate-overage").is_some()
        })
        .collect();
    assert_eq!(said.iter().filter(|s| **s).count(), 2, "{said:?}");
}
