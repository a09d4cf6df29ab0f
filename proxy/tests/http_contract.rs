//! api.md's HTTP contract, over real sockets, against the `tollgate-proxy` binary in standalone mode.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use support::{Backend, ProxyProcess};

const PLANS: &str = r#"
apiVersion: tollgate.dev/v1alpha1
kind: QuotaPolicy
metadata: {name: roomy, namespace: shop}
spec:
  rateLimits: [{name: per-second, requests: 1000, window: 1s}]
  quotas: [{name: monthly-requests, limit: "1000000", period: Month}]
  paymentUrl: https://billing.example.com/roomy
---
apiVersion: tollgate.dev/v1alpha1
kind: QuotaPolicy
metadata: {name: tiny, namespace: shop}
spec:
  quotas: [{name: monthly-requests, limit: "3", period: Month}]
  paymentUrl: https://billing.example.com/tiny
---
apiVersion: tollgate.dev/v1alpha1
kind: QuotaPolicy
metadata: {name: burst, namespace: shop}
spec:
  rateLimits: [{name: per-hour, requests: 2, window: 1h}]
"#;

fn routes(backend: &str) -> String {
    format!(
        r#"
apiVersion: tollgate.dev/v1alpha1
kind: ApiRoute
metadata: {{name: echo, namespace: shop}}
spec:
  hosts: [api.example.com]
  match: {{pathPrefix: /echo}}
  backend: {{url: "{backend}"}}
---
apiVersion: tollgate.dev/v1alpha1
kind: ApiRoute
metadata: {{name: slow, namespace: shop}}
spec:
  match: {{pathPrefix: /slow}}
  backend: {{url: "{backend}", timeout: 1s}}
---
apiVersion: tollgate.dev/v1alpha1
kind: ApiRoute
metadata: {{name: patient, namespace: shop}}
spec:
  match: {{pathPrefix: /slow/1000}}
  backend: {{url: "{backend}", timeout: 10s}}
---
apiVersion: tollgate.dev/v1alpha1
kind: ApiRoute
metadata: {{name: dead, namespace: shop}}
spec:
  match: {{pathPrefix: /dead}}
  backend: {{url: "http://127.0.0.1:1"}}
---
apiVersion: tollgate.dev/v1alpha1
kind: ApiRoute
metadata: {{name: direct, namespace: shop}}
spec:
  match: {{path: /direct, methods: [GET]}}
  backend: {{directResponse: {{status: 201, contentType: application/json, body: '{{"direct":true}}'}}}}
---
apiVersion: tollgate.dev/v1alpha1
kind: ApiRoute
metadata: {{name: retired, namespace: shop}}
spec:
  match: {{pathPrefix: /old}}
  backend: {{url: "{backend}"}}
  lifecycle: {{state: Retired}}
---
apiVersion: tollgate.dev/v1alpha1
kind: ApiRoute
metadata: {{name: deprecated, namespace: shop}}
spec:
  match: {{pathPrefix: /deprecated}}
  backend: {{directResponse: {{status: 200, body: still here}}}}
  lifecycle: {{state: Deprecated, sunset: "2027-01-01T00:00:00Z", deprecatedAt: "2026-06-01T00:00:00Z"}}
---
apiVersion: tollgate.dev/v1alpha1
kind: ApiRoute
metadata: {{name: manual, namespace: shop}}
spec:
  match: {{pathPrefix: /manual}}
  backend: {{directResponse: {{status: 200, body: approved}}}}
  approval: Manual
  approvedTenants: [acme]
  rejectedTenants: [evil]
"#
    )
}

fn tenant(name: &str, plan: Option<&str>, billing: &str, subscriptions: &[&str]) -> String {
    let plan = plan
        .map(|p| format!("  quotaPolicyRef: {{name: {p}}}\n"))
        .unwrap_or_default();
    let subs: Vec<String> = subscriptions
        .iter()
        .map(|r| format!("{{apiRouteRef: {{name: {r}}}}}"))
        .collect();
    format!(
        "---\napiVersion: v1\nkind: Secret\nmetadata: {{name: {name}-key, namespace: shop}}\nstringData: {{apiKey: key-{name}}}\n\
         ---\napiVersion: tollgate.dev/v1alpha1\nkind: Tenant\nmetadata: {{name: {name}, namespace: shop}}\nspec:\n{plan}  \
         apiKeys: [{{secretRef: {{name: {name}-key}}}}]\n  billing: {billing}\n  subscriptions: [{}]\n",
        subs.join(", ")
    )
}

const ALL_ROUTES: &[&str] = &[
    "echo",
    "slow",
    "patient",
    "dead",
    "direct",
    "retired",
    "deprecated",
    "manual",
];

fn tenants() -> String {
    [
        tenant("acme", Some("roomy"), "{state: Active}", ALL_ROUTES),
        tenant("tiny", Some("tiny"), "{}", &["echo", "dead", "slow"]),
        tenant("bursty", Some("burst"), "{}", &["direct"]),
        tenant("pastdue", Some("roomy"), "{state: PastDue}", &["direct"]),
        tenant(
            "suspended",
            Some("roomy"),
            "{state: Suspended}",
            &["direct"],
        ),
        tenant(
            "cancelled",
            Some("roomy"),
            "{state: Cancelled}",
            &["direct"],
        ),
        tenant(
            "expired",
            Some("roomy"),
            "{paidThrough: '2020-01-01T00:00:00Z'}",
            &["direct"],
        ),
        tenant("pending", Some("roomy"), "{}", &["manual"]),
        tenant("evil", Some("roomy"), "{}", &["manual"]),
        tenant("loner", Some("roomy"), "{}", &[]),
        tenant("free", None, "{}", &["direct"]),
    ]
    .concat()
}

async fn start() -> (Backend, ProxyProcess) {
    let backend = Backend::start().await;
    let proxy = ProxyProcess::start(&[
        ("plans.yaml", PLANS.to_owned()),
        ("routes.yaml", routes(&backend.url())),
        ("tenants.yaml", tenants()),
    ])
    .await;
    (backend, proxy)
}

/// Sends `head` as bytes on a new connection; what comes back until the proxy closes it (at most
/// 5 s). A write cut short is not an error: the proxy may close on a head it refuses.
async fn raw_exchange(p: &ProxyProcess, head: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(p.listen)
        .await
        .expect("connect");
    let _ = stream.write_all(head.as_bytes()).await;
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut buf)).await;
    String::from_utf8_lossy(&buf).into_owned()
}

fn key(name: &str) -> (&'static str, String) {
    ("authorization", format!("Bearer key-{name}"))
}

const HOST: (&str, &str) = ("host", "api.example.com");

#[tokio::test]
async fn no_route_is_404_route_not_found() {
    let (_b, p) = start().await;
    let r = p.get("/nowhere", &[]).await;
    p.problem_check(&r, 404, "route-not-found");
    // Host matters: /echo exists only on api.example.com.
    let r = p.get("/echo/x", &[("host", "other.example.com")]).await;
    p.problem_check(&r, 404, "route-not-found");
    // Method matters.
    let r = p.post("/direct", &[], "").await;
    p.problem_check(&r, 404, "route-not-found");
}

#[tokio::test]
async fn retired_route_is_410() {
    let (_b, p) = start().await;
    let body = p.problem_check(&p.get("/old/thing", &[]).await, 410, "route-retired");
    assert_eq!(body["apiRoute"], "retired");
}

#[tokio::test]
async fn missing_or_unknown_key_is_401_with_www_authenticate() {
    let (_b, p) = start().await;
    for headers in [
        vec![HOST],
        vec![HOST, ("authorization", "Bearer nope")],
        vec![HOST, ("x-api-key", "nope")],
    ] {
        let r = p.get("/echo/x", &headers).await;
        p.problem_check(&r, 401, "unauthorized");
        assert_eq!(
            r.header("www-authenticate"),
            Some("Bearer realm=\"tollgate\"")
        );
        assert!(
            r.header("ratelimit").is_none(),
            "no tenant, no RateLimit headers"
        );
    }
}

#[tokio::test]
async fn subscription_problems_are_403() {
    let (_b, p) = start().await;
    let (k, v) = key("loner");
    let body = p.problem_check(&p.get("/direct", &[(k, &v)]).await, 403, "not-subscribed");
    assert_eq!(
        (body["tenant"].as_str(), body["apiRoute"].as_str()),
        (Some("shop/loner"), Some("direct"))
    );
    let (k, v) = key("pending");
    let r = p.get("/manual", &[(k, &v)]).await;
    p.problem_check(&r, 403, "approval-pending");
    assert!(
        r.header("ratelimit").is_some(),
        "authenticated tenants always get RateLimit headers"
    );
    let (k, v) = key("evil");
    p.problem_check(
        &p.get("/manual", &[(k, &v)]).await,
        403,
        "subscription-rejected",
    );
    let (k, v) = key("acme");
    assert_eq!(p.get("/manual", &[(k, &v)]).await.status, 200);
}

#[tokio::test]
async fn billing_states_are_402_with_payment_url() {
    let (_b, p) = start().await;
    for (tenant, slug) in [
        ("pastdue", "account-past-due"),
        ("suspended", "account-suspended"),
        ("cancelled", "subscription-cancelled"),
        ("expired", "subscription-expired"),
    ] {
        let (k, v) = key(tenant);
        let body = p.problem_check(&p.get("/direct", &[(k, &v)]).await, 402, slug);
        assert_eq!(
            body["paymentUrl"], "https://billing.example.com/roomy",
            "{tenant}"
        );
        assert_eq!(body["tenant"], format!("shop/{tenant}"));
    }
}

#[tokio::test]
async fn a_request_with_a_body_gets_one_set_of_ratelimit_headers() {
    // Requests with a body are served by hyper: the proxy's RateLimit lines go into its header map.
    let (_b, p) = start().await;
    let (k, v) = key("tiny");
    let r = p.post("/echo/x", &[HOST, (k, &v)], "payload").await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let all = |name| {
        r.headers
            .get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap_or_default().to_owned())
            .collect::<Vec<_>>()
    };
    let (policy, state) = (all("ratelimit-policy"), all("ratelimit"));
    assert_eq!(policy.len(), 1, "{policy:?}");
    assert!(
        policy[0].starts_with("\"monthly-requests\";q=3;w="),
        "{policy:?}"
    );
    assert_eq!(state.len(), 1, "{state:?}");
    assert!(
        state[0].starts_with("\"monthly-requests\";r=2;t="),
        "{state:?}"
    );
}

#[tokio::test]
async fn exhausted_quota_is_402_with_retry_after_and_members() {
    let (_b, p) = start().await;
    let (k, v) = key("tiny");
    for remaining in [2, 1, 0] {
        let r = p.get("/echo/x", &[HOST, (k, &v)]).await;
        assert_eq!(r.status, 200);
        let policy = r.header("ratelimit-policy").expect("policy header");
        assert!(
            policy.starts_with("\"monthly-requests\";q=3;w="),
            "{policy}"
        );
        let state = r.header("ratelimit").expect("state header");
        assert!(
            state.starts_with(&format!("\"monthly-requests\";r={remaining};t=")),
            "{state}"
        );
    }
    let r = p.get("/echo/x", &[HOST, (k, &v)]).await;
    let body = p.problem_check(&r, 402, "quota-exhausted");
    assert_eq!(body["quota"], "monthly-requests");
    assert_eq!(body["metric"], "Requests");
    assert_eq!(body["limit"], 3);
    assert_eq!(body["used"], 3);
    assert_eq!(body["tenant"], "shop/tiny");
    assert_eq!(body["apiRoute"], "echo");
    assert_eq!(body["paymentUrl"], "https://billing.example.com/tiny");
    let period_start: jiff::Timestamp = body["periodStart"]
        .as_str()
        .expect("periodStart")
        .parse()
        .expect("RFC 3339");
    let resets_at: jiff::Timestamp = body["resetsAt"]
        .as_str()
        .expect("resetsAt")
        .parse()
        .expect("RFC 3339");
    assert!(period_start < jiff::Timestamp::now() && resets_at > jiff::Timestamp::now());
    let retry_after: u64 = r
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .expect("seconds");
    let t = r.ratelimit_reset().expect("t").unsigned_abs();
    assert!(
        retry_after >= t && retry_after > 0,
        "Retry-After {retry_after} vs t {t}"
    );
    let policy = r.header("ratelimit-policy").expect("policy");
    let w: u64 = policy
        .rsplit("w=")
        .next()
        .and_then(|w| w.parse().ok())
        .expect("w");
    assert!(
        (28 * 86_400..=31 * 86_400).contains(&w),
        "w is the calendar month's length: {w}"
    );
}

#[tokio::test]
async fn a_daily_quota_in_a_dst_zone_lasts_the_local_day() {
    // Europe/Berlin's day is 23 or 25 hours long when DST begins or ends; tests/at-dates.sh runs
    // this on such a day. The period is checked against the calendar, computed here on its own.
    let world = r#"
apiVersion: tollgate.dev/v1alpha1
kind: QuotaPolicy
metadata: {name: berlin}
spec: {quotas: [{name: daily, limit: "1", period: Day}], timezone: Europe/Berlin}
---
apiVersion: tollgate.dev/v1alpha1
kind: ApiRoute
metadata: {name: direct}
spec: {match: {path: /direct}, backend: {directResponse: {status: 200, body: ok}}}
---
apiVersion: v1
kind: Secret
metadata: {name: k}
stringData: {apiKey: key-berlin}
---
apiVersion: tollgate.dev/v1alpha1
kind: Tenant
metadata: {name: t}
spec: {quotaPolicyRef: {name: berlin}, apiKeys: [{secretRef: {name: k}}], subscriptions: [{apiRouteRef: {name: direct}}]}
"#;
    let p = ProxyProcess::start(&[("world.yaml", world.to_owned())]).await;
    let auth = ("x-api-key", "key-berlin");
    let before = jiff::Timestamp::now();
    assert_eq!(p.get("/direct", &[auth]).await.status, 200);
    let r = p.get("/direct", &[auth]).await;
    let after = jiff::Timestamp::now();
    let body = p.problem_check(&r, 402, "quota-exhausted");

    let today = before.in_tz("Europe/Berlin").expect("zone");
    let start = today.start_of_day().expect("midnight").timestamp();
    let end = today
        .tomorrow()
        .and_then(|d| d.start_of_day())
        .expect("next midnight")
        .timestamp();
    let stamp = |member: &str| -> jiff::Timestamp {
        body[member]
            .as_str()
            .expect(member)
            .parse()
            .expect("RFC 3339")
    };
    assert_eq!(stamp("periodStart"), start, "local midnight");
    assert_eq!(stamp("resetsAt"), end, "the next local midnight");
    let day = end.as_second() - start.as_second();
    assert!(matches!(day, 82_800 | 86_400 | 90_000), "{day}");
    let policy = r.header("ratelimit-policy").expect("RateLimit-Policy");
    assert_eq!(
        policy,
        format!("\"daily\";q=1;w={day}"),
        "w is this day's length"
    );
    let t = r.ratelimit_reset().expect("RateLimit t=");
    // t counts down to the next midnight from when the proxy answered, between the two readings.
    assert!(
        (end.as_second() - after.as_second() - 1..=end.as_second() - before.as_second())
            .contains(&t),
        "t={t}"
    );
}

#[tokio::test]
async fn exceeded_rate_limit_is_429_with_retry_after() {
    let (_b, p) = start().await;
    let (k, v) = key("bursty");
    for _ in 0..2 {
        assert_eq!(p.get("/direct", &[(k, &v)]).await.status, 201);
    }
    let r = p.get("/direct", &[(k, &v)]).await;
    let body = p.problem_check(&r, 429, "rate-limited");
    assert_eq!(body["quota"], "per-hour");
    let retry_after: u64 = r
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .expect("seconds");
    assert!(
        (1700..=1800).contains(&retry_after),
        "one request per 30 min frees up: {retry_after}"
    );
    assert_eq!(
        r.header("ratelimit-policy"),
        Some("\"per-hour\";q=2;w=3600")
    );
    assert_eq!(
        r.header("ratelimit"),
        Some(format!("\"per-hour\";r=0;t={retry_after}").as_str())
    );
}

#[tokio::test]
async fn tenant_without_plan_has_no_limits_and_no_ratelimit_headers() {
    let (_b, p) = start().await;
    let (k, v) = key("free");
    for _ in 0..20 {
        let r = p.get("/direct", &[(k, &v)]).await;
        assert_eq!(r.status, 201);
        assert!(r.header("ratelimit").is_none());
    }
}

#[tokio::test]
async fn a_path_is_routed_as_the_backend_will_read_it() {
    let (_b, p) = start().await;
    // tiny is subscribed to /echo, not to /deprecated. Spelled through /echo, the path still
    // names /deprecated once `..` is resolved (as the backend would): before, it matched /echo
    // and reached the backend.
    let (k, v) = key("tiny");
    for path in [
        "/echo/../deprecated/x",
        "/echo/%2e%2e/deprecated/x",
        "/echo/.%2E/deprecated/x",
        "/echo/./../deprecated/x",
        "//deprecated/x",
    ] {
        let body = p.problem_check(&p.get(path, &[HOST, (k, &v)]).await, 403, "not-subscribed");
        assert_eq!(body["apiRoute"], "deprecated", "{path}");
        assert_eq!(body["instance"], "/deprecated/x", "{path}");
    }
    // Spellings backends disagree on are refused, not guessed.
    for path in [
        "/echo/..%2Fdeprecated/x",
        "/echo/..%5cdeprecated/x",
        "/echo/..;/deprecated/x",
        "/echo/%zz",
    ] {
        p.problem_check(&p.get(path, &[HOST, (k, &v)]).await, 400, "bad-request");
    }
    // Inside one route the backend gets the normalized path, the query as sent.
    let (k, v) = key("acme");
    for (path, forwarded) in [
        ("/echo/a/../b?q=/../x", "/echo/b?q=/../x"),
        ("/echo//a///b/", "/echo/a/b/"),
        ("/echo/%7Euser/%2e/x", "/echo/~user/x"),
        ("/echo/group%2fname", "/echo/group%2Fname"),
    ] {
        let r = p.get(path, &[HOST, (k, &v)]).await;
        assert_eq!(r.status, 200, "{path}: {:?}", r.body);
        assert_eq!(r.json()["uri"], forwarded, "{path}");
    }
}

/// The headers the echo backend received for a request sent with `headers` (and `body`, which
/// makes it a POST), after checking that it was answered 200.
async fn headers_seen(
    p: &ProxyProcess,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> serde_json::Value {
    let r = match body {
        Some(body) => p.post("/echo/x", headers, body).await,
        None => p.get("/echo/x", headers).await,
    };
    assert_eq!(r.status, 200, "{:?}", r.body);
    r.json()["headers"].clone()
}

#[tokio::test]
async fn no_api_key_reaches_the_backend_whichever_header_carried_it() {
    let (_b, p) = start().await;
    // One key in both headers: authenticated by it, and neither header is forwarded.
    let same_key = [
        HOST,
        ("authorization", "Bearer key-acme"),
        ("x-api-key", "key-acme"),
    ];
    let seen = headers_seen(&p, &same_key, None).await;
    assert_eq!(seen["x-tollgate-tenant"], "shop/acme");
    assert!(seen.get("authorization").is_none(), "{seen}");
    assert!(seen.get("x-api-key").is_none(), "{seen}");
    // Authenticated by X-Api-Key: a non-Bearer Authorization is the backend's own and passes.
    let basic = [
        HOST,
        ("x-api-key", "key-acme"),
        ("authorization", "Basic YmFja2VuZDpzZWNyZXQ="),
    ];
    let seen = headers_seen(&p, &basic, None).await;
    assert_eq!(seen["authorization"], "Basic YmFja2VuZDpzZWNyZXQ=");
    assert!(seen.get("x-api-key").is_none(), "{seen}");
    // A request with a body takes the other forwarding path: the same rule.
    let seen = headers_seen(&p, &same_key, Some("body")).await;
    assert!(seen.get("authorization").is_none(), "{seen}");
    assert!(seen.get("x-api-key").is_none(), "{seen}");
    // Names a CGI-style backend reads as the proxy's or as a key (`_` for `-`) are dropped;
    // other underscore names pass.
    let spoofing = [
        HOST,
        ("x-api-key", "key-acme"),
        ("X_Tollgate_Tenant", "shop/tiny"),
        ("X_Forwarded_For", "192.0.2.66"),
        ("x_api_key", "key-tiny"),
        ("x_request_id", "kept"),
    ];
    for body in [None, Some("body")] {
        let seen = headers_seen(&p, &spoofing, body).await;
        let names: Vec<&String> = seen.as_object().expect("headers").keys().collect();
        assert!(
            !names.iter().any(|n| n.contains("tollgate_")
                || n.contains("forwarded_")
                || n.contains("api_key")),
            "{names:?}"
        );
        assert_eq!(seen["x_request_id"], "kept");
        assert_eq!(seen["x-tollgate-tenant"], "shop/acme");
    }
}

#[tokio::test]
async fn a_gated_route_is_not_reached_by_another_spelling_of_its_path_or_method() {
    // `/w/reports` needs approval; the broader `/w` does not. Before, each spelling below fell
    // through to `/w` while backends (Werkzeug, Express, Tomcat) served it as `GET /w/reports`.
    let world = r#"
apiVersion: tollgate.dev/v1alpha1
kind: ApiRoute
metadata: {name: reports}
spec:
  match: {path: /w/reports, methods: [GET]}
  backend: {directResponse: {status: 200, body: reports}}
  approval: Manual
---
apiVersion: tollgate.dev/v1alpha1
kind: ApiRoute
metadata: {name: w}
spec: {match: {pathPrefix: /w}, backend: {directResponse: {status: 200, body: open}}}
---
apiVersion: v1
kind: Secret
metadata: {name: k}
stringData: {apiKey: key-w}
---
apiVersion: tollgate.dev/v1alpha1
kind: Tenant
metadata: {name: t}
spec: {apiKeys: [{secretRef: {name: k}}], subscriptions: [{apiRouteRef: {name: reports}}, {apiRouteRef: {name: w}}]}
"#;
    let p = ProxyProcess::start(&[("world.yaml", world.to_owned())]).await;
    let auth = ("x-api-key", "key-w");
    assert_eq!(p.get("/w/other", &[auth]).await.body, "open");
    for spelling in [
        "/w/reports",
        "/w/Reports",
        "/W/REPORTS",
        "/w/reports/",
        "/w/reports;jsessionid=1",
        "/w//reports",
    ] {
        let r = p.get(spelling, &[auth]).await;
        let problem = p.problem_check(&r, 403, "approval-pending");
        assert_eq!(problem["apiRoute"], "reports", "{spelling}");
    }
    let refused = |head: &str| {
        let head = head.to_owned();
        let p = &p;
        async move {
            let answer = raw_exchange(p, &head).await;
            assert!(answer.starts_with("HTTP/1.1 400"), "{head:?} -> {answer}");
            assert!(answer.contains("bad-request"), "{answer}");
            answer
        }
    };
    let lower = refused(
        "get /w/reports HTTP/1.1\r\nHost: a\r\nX-Api-Key: key-w\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(lower.contains("send `GET`"), "{lower}");
    refused("OPTIONS * HTTP/1.1\r\nHost: a\r\nX-Api-Key: key-w\r\nConnection: close\r\n\r\n").await;
    refused("GET a:80 HTTP/1.1\r\nHost: a\r\nX-Api-Key: key-w\r\nConnection: close\r\n\r\n").await;
}

#[tokio::test]
async fn two_different_api_keys_are_a_400_and_never_reach_a_backend() {
    // Before: the first Authorization line decided. With a Basic line first, the X-Api-Key
    // (acme) authorized the request and the backend received the other tenant's Bearer key.
    let (backend, p) = start().await;
    let cases: [&[(&str, &str)]; 3] = [
        &[
            HOST,
            ("authorization", "Basic YmFja2VuZDpzZWNyZXQ="),
            ("authorization", "Bearer key-tiny"),
            ("x-api-key", "key-acme"),
        ],
        &[
            HOST,
            ("authorization", "Bearer key-acme"),
            ("x-api-key", "key-tiny"),
        ],
        &[HOST, ("x-api-key", "key-acme"), ("x-api-key", "key-nobody")],
    ];
    for headers in cases {
        for body in [None, Some("body")] {
            let r = match body {
                Some(body) => p.post("/echo/x", headers, body).await,
                None => p.get("/echo/x", headers).await,
            };
            let problem = p.problem_check(&r, 400, "bad-request");
            let detail = problem["detail"].as_str().unwrap_or_default();
            assert!(detail.contains("two different API keys"), "{detail}");
            assert!(
                !detail.contains("key-"),
                "no key material in the body: {detail}"
            );
        }
    }
    assert_eq!(
        backend
            .connections
            .load(std::sync::atomic::Ordering::SeqCst),
        0,
        "the backend saw none of them"
    );
}

#[tokio::test]
async fn unreachable_backend_is_502_and_not_charged() {
    let (_b, p) = start().await;
    let (k, v) = key("tiny");
    for _ in 0..5 {
        let body = p.problem_check(
            &p.get("/dead/x", &[(k, &v)]).await,
            502,
            "backend-unavailable",
        );
        assert_eq!(body["apiRoute"], "dead");
    }
    // The operator learns why from one warning, not five: route, backend and the cause.
    let stderr = p.stderr();
    let warnings: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("backend request failed"))
        .collect();
    assert_eq!(
        warnings.len(),
        1,
        "one warning for five failures:\n{stderr}"
    );
    for part in [
        "route=shop/dead",
        "backend=127.0.0.1:1",
        "refused",
        "answered=backend-unavailable",
        "failures_not_logged=0",
    ] {
        assert!(warnings[0].contains(part), "{part} in {}", warnings[0]);
    }
    // None of the five 502s was charged: the whole quota of 3 is still there.
    for _ in 0..3 {
        assert_eq!(p.get("/echo/x", &[HOST, (k, &v)]).await.status, 200);
    }
    p.problem_check(
        &p.get("/echo/x", &[HOST, (k, &v)]).await,
        402,
        "quota-exhausted",
    );
}

#[tokio::test]
async fn slow_backend_is_504_and_not_charged() {
    let (_b, p) = start().await;
    let (k, v) = key("tiny");
    // A quick answer on the slow route leaves a pooled connection whose timer is set for that
    // exchange's deadline, earlier than the next one's: the first 504 below needs the timer moved
    // when it fires early. The second waits on a fresh connection (a timed-out one is not reused).
    assert_eq!(p.get("/slow/1", &[(k, &v)]).await.status, 200);
    for _ in 0..2 {
        p.problem_check(
            &p.get("/slow/5000", &[(k, &v)]).await,
            504,
            "backend-timeout",
        );
    }
    // Neither was charged: two more requests fit in the plan's quota of 3.
    for _ in 0..2 {
        assert_eq!(p.get("/echo/x", &[HOST, (k, &v)]).await.status, 200);
    }
}

#[tokio::test]
async fn forwarded_request_is_rewritten_like_a_reverse_proxy_should() {
    let (_b, p) = start().await;
    let r = p
        .post(
            "/echo/items?page=2&q=a%20b",
            &[
                HOST,
                ("x-api-key", "key-acme"),
                ("x-tollgate-tenant", "shop/tiny"),
                ("x-tollgate-whatever", "spoofed"),
                ("connection", "keep-alive, x-client-hop"),
                ("x-client-hop", "hop"),
                ("x-forwarded-for", "203.0.113.7"),
                ("x-custom", "kept"),
            ],
            "hello body",
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let echo = r.json();
    let h = &echo["headers"];
    assert_eq!(echo["method"], "POST");
    assert_eq!(echo["uri"], "/echo/items?page=2&q=a%20b");
    assert_eq!(echo["body"], "hello body");
    assert_eq!(
        h["x-tollgate-tenant"], "shop/acme",
        "the proxy's tenant, never the client's"
    );
    assert!(h.get("x-tollgate-whatever").is_none());
    assert!(h.get("x-api-key").is_none(), "the key is not forwarded");
    assert!(
        h.get("x-client-hop").is_none(),
        "headers named in Connection are hop-by-hop"
    );
    assert_eq!(h["x-forwarded-for"], "203.0.113.7, 127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], "api.example.com");
    assert_eq!(h["x-custom"], "kept");
    // And on the way back, the backend's hop-by-hop headers stop at the proxy.
    assert!(r.header("x-backend-hop").is_none());
    assert!(r.header("ratelimit").is_some());

    let r = p
        .get("/echo/x", &[HOST, ("authorization", "Bearer key-acme")])
        .await;
    assert!(
        r.json()["headers"].get("authorization").is_none(),
        "Authorization with the key is removed"
    );
}

#[tokio::test]
async fn direct_and_deprecated_routes() {
    let (_b, p) = start().await;
    let (k, v) = key("acme");
    let r = p.get("/direct", &[(k, &v)]).await;
    assert_eq!(
        (r.status, r.header("content-type")),
        (201, Some("application/json"))
    );
    assert_eq!(&r.body[..], br#"{"direct":true}"#);
    let r = p.get("/deprecated", &[(k, &v)]).await;
    assert_eq!(r.status, 200);
    // RFC 9745 Date: 2026-06-01T00:00:00Z.
    assert_eq!(r.header("deprecation"), Some("@1780272000"));
    assert_eq!(r.header("sunset"), Some("Fri, 01 Jan 2027 00:00:00 GMT"));
}

#[tokio::test]
async fn tenants_cannot_touch_each_others_counters() {
    let (_b, p) = start().await;
    let (k, tiny) = key("tiny");
    for _ in 0..3 {
        assert_eq!(p.get("/echo/x", &[HOST, (k, &tiny)]).await.status, 200);
    }
    // Whatever headers tiny sends, it is tiny: still exhausted.
    let spoof = [HOST, (k, tiny.as_str()), ("x-tollgate-tenant", "shop/acme")];
    p.problem_check(&p.get("/echo/x", &spoof).await, 402, "quota-exhausted");
    // Adding acme's key too makes two keys: refused, never counted as acme.
    let spoof = [
        HOST,
        (k, tiny.as_str()),
        ("x-tollgate-tenant", "shop/acme"),
        ("x-api-key", "key-acme"),
    ];
    p.problem_check(&p.get("/echo/x", &spoof).await, 400, "bad-request");
    // And acme, even claiming to be tiny, draws on its own allowance.
    let (k, acme) = key("acme");
    let r = p
        .get(
            "/echo/x",
            &[HOST, (k, &acme), ("x-tollgate-tenant", "shop/tiny")],
        )
        .await;
    assert_eq!(r.status, 200);
    assert!(
        r.header("ratelimit")
            .is_some_and(|h| h.contains("\"monthly-requests\";r=999999")),
        "{:?}",
        r.header("ratelimit")
    );
}

#[tokio::test]
async fn restart_keeps_counters() {
    let (_b, mut p) = start().await;
    let (k, v) = key("tiny");
    for _ in 0..2 {
        assert_eq!(p.get("/echo/x", &[HOST, (k, &v)]).await.status, 200);
    }
    p.restart().await;
    assert_eq!(p.get("/echo/x", &[HOST, (k, &v)]).await.status, 200);
    p.problem_check(
        &p.get("/echo/x", &[HOST, (k, &v)]).await,
        402,
        "quota-exhausted",
    );
}

#[tokio::test]
async fn reload_applies_a_new_limit_and_keeps_counts() {
    let (_b, p) = start().await;
    let (k, v) = key("tiny");
    for _ in 0..3 {
        assert_eq!(p.get("/echo/x", &[HOST, (k, &v)]).await.status, 200);
    }
    p.problem_check(
        &p.get("/echo/x", &[HOST, (k, &v)]).await,
        402,
        "quota-exhausted",
    );
    let before = p.config_version().await;
    p.write_manifest(
        "plans.yaml",
        &PLANS.replace(r#"limit: "3""#, r#"limit: "5""#),
    );
    p.wait_for_version_above(before).await;
    // The 3 already used still count: 2 more, then 402.
    for _ in 0..2 {
        assert_eq!(p.get("/echo/x", &[HOST, (k, &v)]).await.status, 200);
    }
    let body = p.problem_check(
        &p.get("/echo/x", &[HOST, (k, &v)]).await,
        402,
        "quota-exhausted",
    );
    assert_eq!(body["limit"], 5);
}

#[tokio::test]
async fn a_broken_file_keeps_the_last_good_config() {
    let (_b, p) = start().await;
    let (k, v) = key("acme");
    let before = p.config_version().await;
    p.write_manifest(
        "tenants.yaml",
        "apiVersion: v1\nkind: Secret\nmetadata: {name: x\n  broken: [\n",
    );
    p.wait_for_version_above(before).await;
    assert_eq!(
        p.get("/direct", &[(k, &v)]).await.status,
        201,
        "acme is still known"
    );
    let stderr = p.stderr();
    assert!(
        stderr.contains("tenants.yaml:"),
        "the error names the file and line:\n{stderr}"
    );
    assert!(stderr.contains("last good version"), "{stderr}");
    // A valid new version is picked up again.
    let before = p.config_version().await;
    p.write_manifest(
        "tenants.yaml",
        &tenants().replace("key-acme", "key-acme-rotated"),
    );
    p.wait_for_version_above(before).await;
    p.problem_check(&p.get("/direct", &[(k, &v)]).await, 401, "unauthorized");
    assert_eq!(
        p.get("/direct", &[("x-api-key", "key-acme-rotated")])
            .await
            .status,
        201
    );
}

#[tokio::test]
async fn an_invalid_object_is_left_out_and_the_rest_keeps_working() {
    let (_b, p) = start().await;
    let before = p.config_version().await;
    let bad = "---\napiVersion: tollgate.dev/v1alpha1\nkind: QuotaPolicy\nmetadata: {name: roomy, namespace: shop}\nspec: {timezone: Mars/Base}\n";
    p.write_manifest("zz-override.yaml", bad);
    p.wait_for_version_above(before).await;
    // roomy is now invalid, so its tenants are out; tiny is unaffected.
    let (k, v) = key("acme");
    p.problem_check(&p.get("/direct", &[(k, &v)]).await, 401, "unauthorized");
    let (k, v) = key("tiny");
    assert_eq!(p.get("/echo/x", &[HOST, (k, &v)]).await.status, 200);
    assert!(p.stderr().contains("Mars/Base"), "the diagnostic is logged");
}

#[tokio::test]
async fn a_64_kib_header_gets_a_clean_431() {
    let (_b, p) = start().await;
    let big = "a".repeat(64 * 1024);
    let text = raw_exchange(
        &p,
        &format!("GET /direct HTTP/1.1\r\nhost: x\r\nx-big: {big}\r\n\r\n"),
    )
    .await;
    assert!(text.starts_with("HTTP/1.1 431"), "got: {text:?}");
    // The proxy is fine afterwards.
    let (k, v) = key("acme");
    assert_eq!(p.get("/direct", &[(k, &v)]).await.status, 201);
}

#[tokio::test]
async fn two_host_headers_are_a_400_and_never_reach_a_backend() {
    // RFC 9112 section 3.2: more than one Host is a bad request (the route and the backend could
    // otherwise read different hosts).
    let (_b, p) = start().await;
    let text = raw_exchange(
        &p,
        "GET /echo/x HTTP/1.1\r\nHost: api.example.com\r\nHost: other.example\r\n\
         Authorization: Bearer key-acme\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(text.starts_with("HTTP/1.1 400"), "got: {text:?}");
    assert!(text.contains("bad-request"), "got: {text:?}");
    assert!(
        !text.contains("\"uri\""),
        "the backend never saw it: {text:?}"
    );
}

#[tokio::test]
async fn sigterm_drains_in_flight_requests_and_saves_counters() {
    let (backend, mut p) = start().await;
    let listen = p.listen;
    let before = backend
        .connections
        .load(std::sync::atomic::Ordering::SeqCst);
    // The backend takes 1 s to answer; SIGTERM arrives once the request has reached it.
    let in_flight = tokio::spawn(async move {
        support::request(
            listen,
            "GET",
            "/slow/1000/x",
            &[("authorization", "Bearer key-acme")],
            bytes::Bytes::new(),
        )
        .await
    });
    while backend
        .connections
        .load(std::sync::atomic::Ordering::SeqCst)
        == before
    {
        assert!(
            !in_flight.is_finished(),
            "answered before reaching the backend"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let status = p.terminate().await;
    assert!(status.success(), "clean exit: {status}\n{}", p.stderr());
    let reply = in_flight.await.expect("join");
    assert_eq!(
        reply.status, 200,
        "the in-flight request completes: {:?}",
        reply.body
    );
    assert_eq!(reply.json()["uri"], "/slow/1000/x");
    let saved =
        std::fs::read_to_string(p.state.join("counters.json")).expect("counters saved on shutdown");
    assert!(saved.contains("shop/acme"), "{saved}");
}

#[tokio::test]
async fn sigterm_closes_idle_keep_alive_connections_at_once() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (_b, mut p) = start().await;
    let mut stream = tokio::net::TcpStream::connect(p.listen)
        .await
        .expect("connect");
    // Two requests on the connection: shutdown must reach it in its second idle wait too.
    for i in 0..2 {
        let req = format!(
            "GET /echo/idle/{i} HTTP/1.1\r\nHost: api.example.com\r\n\
             Authorization: Bearer key-acme\r\n\r\n"
        );
        stream.write_all(req.as_bytes()).await.expect("write");
        let mut got = Vec::new();
        while !String::from_utf8_lossy(&got).contains(&format!("/echo/idle/{i}")) {
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut chunk))
                .await
                .expect("a response")
                .expect("read");
            assert!(n > 0, "closed early: {:?}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&chunk[..n]);
        }
    }
    let terminating = tokio::spawn(async move { p.terminate().await });
    // The idle connection is closed when shutdown begins, not left open until the drain gives
    // up on it (30 s).
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "still open during shutdown");
    assert!(terminating.await.expect("join").success());
}

#[tokio::test]
async fn access_log_lines_reach_stdout_promptly_and_none_are_lost_at_shutdown() {
    let (_b, mut p) = start().await;
    let (k, v) = key("acme");
    // A quiet proxy: one request's line is written without waiting for more traffic.
    let reply = p.get("/echo/quiet", &[HOST, (k, &v)]).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let first = loop {
        if let Some(line) = p.access_log().first() {
            break line.clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no access-log line 10 s after the request"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(first["path"], "/echo/quiet");
    assert_eq!(first["status"], reply.status);
    assert_eq!(first["tenant"], "shop/acme");

    // A burst ended at once by SIGTERM: every line is on stdout when the process has exited.
    let mut statuses = vec![reply.status];
    for i in 0..300 {
        statuses.push(
            p.get(&format!("/echo/burst/{i}"), &[HOST, (k, &v)])
                .await
                .status,
        );
    }
    assert!(p.terminate().await.success());
    // Each worker thread hands its lines over on its own: lines from different workers may
    // interleave out of request order (each carries its time), but none is missing or doubled.
    let logged: BTreeMap<String, u64> = p
        .access_log()
        .iter()
        .map(|l| {
            let path = l["path"].as_str().unwrap_or_default().to_owned();
            (path, l["status"].as_u64().unwrap_or_default())
        })
        .collect();
    let expected: BTreeMap<String, u64> = std::iter::once("/echo/quiet".to_owned())
        .chain((0..300).map(|i| format!("/echo/burst/{i}")))
        .zip(statuses.iter().map(|s| u64::from(*s)))
        .collect();
    assert_eq!(p.access_log().len(), 301, "one line per request");
    assert_eq!(logged, expected);
}

#[tokio::test]
async fn metrics_health_and_usage_endpoints() {
    let (_b, p) = start().await;
    let (k, v) = key("tiny");
    p.get("/echo/x", &[HOST, (k, &v)]).await;
    p.get("/nowhere", &[]).await;
    let (status, _, body) = support::get_raw(p.admin, "/metrics", &[])
        .await
        .expect("metrics");
    assert_eq!(status, 200);
    let text = String::from_utf8_lossy(&body);
    for needle in [
        r#"tollgate_proxy_requests_total{reason="ok",route="shop/echo",status="200"} 1"#,
        r#"tollgate_proxy_rejections_total{reason="route-not-found",status="404"} 1"#,
        "tollgate_proxy_request_duration_seconds_bucket",
        // One backend answer (the 404 never reached a backend).
        "tollgate_proxy_upstream_duration_seconds_count 1",
        "tollgate_proxy_config_version 1",
        r#"tollgate_proxy_config_reloads_total{result="success"} 1"#,
        "tollgate_proxy_active_connections",
    ] {
        assert!(text.contains(needle), "missing {needle}:\n{text}");
    }
    if let Ok(out) = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().expect("stdin").write_all(&body)?;
            child.wait_with_output()
        })
    {
        assert!(
            out.status.success(),
            "promtool check metrics: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(
        support::get_raw(p.admin, "/healthz", &[])
            .await
            .expect("healthz")
            .0,
        200
    );
    let (_, _, usage) = support::get_raw(p.admin, "/usage", &[])
        .await
        .expect("usage");
    let usage: serde_json::Value = serde_json::from_slice(&usage).expect("json");
    let row = usage["usage"]
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["tenant"] == "shop/tiny"))
        .expect("tiny row");
    assert_eq!(
        (
            row["used"].as_str(),
            row["limit"].as_str(),
            row["quota"].as_str()
        ),
        (Some("1"), Some("3"), Some("monthly-requests"))
    );
}

#[tokio::test]
async fn backend_connections_are_kept_alive_and_reused() {
    let (backend, p) = start().await;
    let (k, v) = key("acme");
    for _ in 0..50 {
        let r = p.get("/echo/x", &[HOST, (k, &v)]).await;
        assert_eq!(r.status, 200);
    }
    // Sequential requests: one backend connection, perhaps two if a check-in raced a checkout.
    let used = backend
        .connections
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        used <= 2,
        "50 sequential requests opened {used} backend connections"
    );
}

#[tokio::test]
async fn a_backend_that_closed_an_idle_connection_is_retried_transparently() {
    let (backend, p) = start().await;
    let (k, v) = key("acme");
    assert_eq!(p.get("/echo/x", &[HOST, (k, &v)]).await.status, 200);
    // The backend goes away and comes back on the same port: the pooled connection is dead.
    let addr = backend.addr;
    drop(backend);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let again = support::Backend::start_on(addr).await;
    assert_eq!(
        p.get("/echo/x", &[HOST, (k, &v)]).await.status,
        200,
        "the request is retried on a new connection"
    );
    drop(again);
}

#[tokio::test]
async fn per_tenant_metrics_are_opt_in() {
    let backend = Backend::start().await;
    let files = [
        ("plans.yaml", PLANS.to_owned()),
        ("routes.yaml", routes(&backend.url())),
        ("tenants.yaml", tenants()),
    ];
    let off = ProxyProcess::start(&files).await;
    let on = ProxyProcess::start_with(&files, &["--tenant-metrics=true"]).await;
    for p in [&off, &on] {
        let (k, v) = key("tiny");
        assert_eq!(p.get("/echo/x", &[HOST, (k, &v)]).await.status, 200);
    }
    let text = |p: &ProxyProcess| {
        let admin = p.admin;
        async move {
            String::from_utf8_lossy(
                &support::get_raw(admin, "/metrics", &[])
                    .await
                    .expect("metrics")
                    .2,
            )
            .into_owned()
        }
    };
    assert!(
        !text(&off)
            .await
            .contains("tollgate_proxy_tenant_requests_total")
    );
    let on_text = text(&on).await;
    assert!(
        on_text
            .contains(r#"tollgate_proxy_tenant_requests_total{reason="ok",tenant="shop/tiny"} 1"#),
        "{on_text}"
    );
}

/// `/usage` names every tenant: on any connection but loopback at both ends it is refused, while
/// `/metrics` and the probes answer everyone. Run in a network namespace of the test's own, where
/// 10.77.0.1 is a second address on its loopback device (a peer that is not "loopback").
#[test]
fn usage_answers_loopback_clients_only_while_metrics_answer_everyone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let manifests = dir.path().join("manifests");
    std::fs::create_dir(&manifests).expect("manifests dir");
    std::fs::write(
        manifests.join("route.yaml"),
        "apiVersion: tollgate.dev/v1alpha1\nkind: ApiRoute\nmetadata: {name: r}\n\
         spec: {match: {pathPrefix: /}, backend: {url: \"http://127.0.0.1:9\"}}\n",
    )
    .expect("manifest");
    let script = r#"
        set -eu
        ip link set lo up
        ip addr add 10.77.0.1/32 dev lo
        "$PROXY" --manifests "$DIR/manifests" --state-dir "$DIR" \
            --listen 127.0.0.1:18080 --admin-listen 0.0.0.0:19090 >/dev/null 2>"$DIR/proxy.log" &
        pid=$!
        trap 'kill "$pid" 2>/dev/null || true' EXIT
        for _ in $(seq 200); do
            curl -sf -o /dev/null http://127.0.0.1:19090/readyz && break
            sleep 0.1
        done
        for from in 127.0.0.1 10.77.0.1; do
            for path in /usage /metrics /readyz; do
                code=$(curl -s -o /dev/null -w '%{http_code}' --interface "$from" "http://$from:19090$path")
                echo "$from $path $code"
            done
        done
        # From loopback to the pod's own address: how a mesh sidecar passes any client on.
        code=$(curl -s -o /dev/null -w '%{http_code}' --interface 127.0.0.1 "http://10.77.0.1:19090/usage")
        echo "127.0.0.1 -> 10.77.0.1 /usage $code"
    "#;
    let out = std::process::Command::new("unshare")
        .args(["-n", "sh", "-c", script])
        .env("PROXY", env!("CARGO_BIN_EXE_tollgate-proxy"))
        .env("DIR", dir.path())
        .output()
        .expect("unshare");
    let log = std::fs::read_to_string(dir.path().join("proxy.log")).unwrap_or_default();
    assert!(
        out.status.success(),
        "{}\n{log}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .collect::<Vec<_>>(),
        [
            "127.0.0.1 /usage 200",
            "127.0.0.1 /metrics 200",
            "127.0.0.1 /readyz 200",
            "10.77.0.1 /usage 403",
            "10.77.0.1 /metrics 200",
            "10.77.0.1 /readyz 200",
            "127.0.0.1 -> 10.77.0.1 /usage 403",
        ],
        "{log}"
    );
}
