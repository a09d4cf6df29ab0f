//! The operator end to end on the real kube-apiserver: objects applied with kubectl, the operator
//! (bound only to deploy/operator-rbac.yaml) and proxies as local processes.

use std::time::Duration;

use anyhow::{Context, Result};
use kube::api::Api;
use tollgate_crds::resources::{ApiRoute, QuotaPolicy, SubscriptionState, Tenant};
use tollgate_tests::billing_sink::BillingSink;
use tollgate_tests::fleet::{Fleet, eventually, tenants_with_status};

const WORLD: &str = r#"
apiVersion: tollgate.dev/v1alpha1
kind: QuotaPolicy
metadata: {name: quota3}
spec:
  quotas: [{name: monthly-requests, limit: "3", period: Month}]
  paymentUrl: https://billing.example.com/pay
---
apiVersion: tollgate.dev/v1alpha1
kind: QuotaPolicy
metadata: {name: priced}
spec:
  quotas: [{name: monthly-spend, metric: Cost, limit: "10", period: Month}]
  pricing: {currency: EUR, perRequest: "0.25"}
---
apiVersion: tollgate.dev/v1alpha1
kind: QuotaPolicy
metadata: {name: rate2}
spec:
  rateLimits: [{name: per-hour, requests: 2, window: 1h}]
---
apiVersion: tollgate.dev/v1alpha1
kind: ApiRoute
metadata: {name: hello}
spec:
  match: {pathPrefix: /hello}
  backend: {directResponse: {status: 200, body: hello}}
---
apiVersion: tollgate.dev/v1alpha1
kind: ApiRoute
metadata: {name: manual}
spec:
  match: {path: /manual}
  backend: {directResponse: {status: 200, body: approved}}
  approval: Manual
---
apiVersion: v1
kind: Secret
metadata: {name: keys, labels: {tollgate.dev/api-key: "true"}}
stringData: {probe: key-probe, alice: key-alice, bob: key-bob, carol: key-carol, dave: key-dave}
---
apiVersion: tollgate.dev/v1alpha1
kind: Tenant
metadata: {name: probe}
spec:
  apiKeys: [{secretRef: {name: keys, key: probe}}]
  subscriptions: [{apiRouteRef: {name: hello}}]
---
apiVersion: tollgate.dev/v1alpha1
kind: Tenant
metadata: {name: alice}
spec:
  quotaPolicyRef: {name: quota3}
  apiKeys: [{secretRef: {name: keys, key: alice}}]
  subscriptions: [{apiRouteRef: {name: hello}}]
---
apiVersion: tollgate.dev/v1alpha1
kind: Tenant
metadata: {name: bob}
spec:
  quotaPolicyRef: {name: rate2}
  apiKeys: [{secretRef: {name: keys, key: bob}}]
  subscriptions: [{apiRouteRef: {name: hello}}]
---
apiVersion: tollgate.dev/v1alpha1
kind: Tenant
metadata: {name: carol}
spec:
  quotaPolicyRef: {name: quota3}
  apiKeys: [{secretRef: {name: keys, key: carol}}]
  subscriptions: [{apiRouteRef: {name: manual}}]
---
apiVersion: tollgate.dev/v1alpha1
kind: Tenant
metadata: {name: dave}
spec:
  quotaPolicyRef: {name: priced}
  apiKeys: [{secretRef: {name: keys, key: dave}}]
  subscriptions: [{apiRouteRef: {name: hello}}]
"#;

const WAIT: Duration = Duration::from_secs(20);

/// For figures that reach Tenant status through the proxies' usage reports (every 10 s) or the
/// leader's Redis reads: a report that is lost, or a status round slowed by a busy API server,
/// costs a whole period more. A longer wait costs nothing while the figures arrive on time.
const REPORTED: Duration = Duration::from_secs(60);

fn condition<'a>(
    conditions: &'a [tollgate_crds::resources::Condition],
    type_: &str,
) -> Option<&'a tollgate_crds::resources::Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Operator (leader) + world + two proxies serving it.
async fn fleet_with_world(prefix: &str) -> Result<Fleet> {
    let mut fleet = Fleet::new(prefix).await?;
    fleet.start_operator().await?;
    serve_world(&mut fleet).await?;
    Ok(fleet)
}

/// Once operator 0 leads: applies the world and starts two proxies serving it.
async fn serve_world(fleet: &mut Fleet) -> Result<()> {
    fleet.wait_leader(0).await?;
    fleet.ns.apply_ok(WORLD)?;
    fleet.start_proxy("proxy-a")?;
    fleet.start_proxy("proxy-b")?;
    for i in 0..2 {
        fleet.wait_status(i, "/hello", "key-probe", 200).await?;
    }
    Ok(())
}

#[tokio::test]
async fn the_fleet_enforces_plans_and_follows_every_edit() -> Result<()> {
    let fleet = fleet_with_world("op-edits").await?;
    let ns = &fleet.ns;

    // 402 after the quota, 429 over the rate (counters are per proxy without Redis).
    for _ in 0..3 {
        assert_eq!(fleet.call(0, "/hello", "key-alice").await?.status, 200);
    }
    let r = fleet.call(0, "/hello", "key-alice").await?;
    assert_eq!(
        (r.status, r.json()["type"].as_str()),
        (402, Some("https://tollgate.dev/problems/quota-exhausted"))
    );
    assert_eq!(r.json()["paymentUrl"], "https://billing.example.com/pay");
    for _ in 0..2 {
        assert_eq!(fleet.call(0, "/hello", "key-bob").await?.status, 200);
    }
    assert_eq!(fleet.call(0, "/hello", "key-bob").await?.status, 429);

    // Status: routes accepted and programmed on both proxies, tenants ready with subscriptions.
    let routes: Api<ApiRoute> = Api::namespaced(ns.client.clone(), &ns.name);
    let tenants: Api<Tenant> = Api::namespaced(ns.client.clone(), &ns.name);
    let plans: Api<QuotaPolicy> = Api::namespaced(ns.client.clone(), &ns.name);
    let programmed = eventually(WAIT, "hello Programmed on 2/2 proxies", || async {
        let r = routes.get("hello").await.ok()?;
        let status = r.status?;
        let p = condition(&status.conditions, "Programmed")?;
        (p.status == "True" && p.message.starts_with("2/2 proxies at version"))
            .then(|| (status.clone(), r.metadata.generation))
    })
    .await?;
    assert_eq!(
        condition(&programmed.0.conditions, "Accepted").map(|c| c.status.as_str()),
        Some("True")
    );
    assert_eq!(programmed.0.observed_generation, programmed.1);
    let alice = eventually(WAIT, "alice Ready", || async {
        let t = tenants.get("alice").await.ok()?;
        let s = t.status?;
        (condition(&s.conditions, "Ready")?.status == "True").then_some(s)
    })
    .await?;
    assert_eq!(
        alice
            .subscriptions
            .first()
            .map(|s| (s.api_route.as_str(), s.state)),
        Some(("hello", SubscriptionState::Active))
    );
    let carol = eventually(WAIT, "carol's subscription pending", || async {
        let s = tenants.get("carol").await.ok()?.status?;
        s.subscriptions
            .first()
            .filter(|s| s.state == SubscriptionState::PendingApproval)
            .cloned()
    })
    .await?;
    assert_eq!(carol.api_route, "manual");
    // An admin is told to act: the Event follows the status round that shows the subscription.
    eventually(WAIT, "the SubscriptionPendingApproval Event", || async {
        let events = ns
            .kubectl(
                &[
                    "get",
                    "events.events.k8s.io",
                    "-o",
                    "jsonpath={.items[*].reason}",
                ],
                None,
            )
            .ok()?;
        String::from_utf8_lossy(&events.stdout)
            .contains("SubscriptionPendingApproval")
            .then_some(())
    })
    .await?;

    // Usage: each proxy reports its counters; Tenant status shows the sum over the fleet (3 on
    // proxy-a, 1 on proxy-b: without Redis, every proxy counts on its own).
    assert_eq!(fleet.call(1, "/hello", "key-alice").await?.status, 200);
    let usage = eventually(
        REPORTED,
        "alice's usage summed over both proxies",
        || async {
            let s = tenants.get("alice").await.ok()?.status?;
            s.usage.first().filter(|u| u.used == "4").cloned()
        },
    )
    .await?;
    assert_eq!(
        (
            usage.quota_policy.as_str(),
            usage.quota.as_str(),
            usage.limit.as_str()
        ),
        ("quota3", "monthly-requests", "3")
    );
    assert!(
        usage.period_start.ends_with("-01T00:00:00Z"),
        "calendar month: {}",
        usage.period_start
    );
    // The month's requests and cost under a priced plan, summed likewise (one call per proxy).
    for proxy in 0..2 {
        assert_eq!(fleet.call(proxy, "/hello", "key-dave").await?.status, 200);
    }
    let month = eventually(
        REPORTED,
        "dave's month summed over both proxies",
        || async {
            let s = tenants.get("dave").await.ok()?.status?;
            s.call_usage.first().filter(|u| u.requests == 2).cloned()
        },
    )
    .await?;
    assert_eq!(
        (
            month.quota_policy.as_str(),
            month.cost.as_str(),
            month.currency.as_deref()
        ),
        ("priced", "0.5", Some("EUR"))
    );

    // Manual approval: 403 until the route owner approves, then served without a restart.
    let r = fleet.call(0, "/manual", "key-carol").await?;
    assert_eq!(
        (r.status, r.json()["type"].as_str()),
        (403, Some("https://tollgate.dev/problems/approval-pending"))
    );
    ns.kubectl_ok_patch(
        "apiroute/manual",
        r#"{"spec":{"approvedTenants":["carol"]}}"#,
    )?;
    fleet.wait_status(0, "/manual", "key-carol", 200).await?;
    fleet.wait_status(1, "/manual", "key-carol", 200).await?;

    // Edit the plan: the new limit is enforced, the counts so far still count.
    ns.apply_ok(&WORLD.replace(r#"limit: "3""#, r#"limit: "5""#))?;
    fleet.wait_status(0, "/hello", "key-alice", 200).await?;
    assert_eq!(fleet.call(0, "/hello", "key-alice").await?.status, 200);
    let r = fleet.call(0, "/hello", "key-alice").await?;
    assert_eq!((r.status, r.json()["limit"].as_u64()), (402, Some(5)));

    // An invalid object gets its condition; everything else keeps working.
    ns.apply_ok(
        "apiVersion: tollgate.dev/v1alpha1\nkind: QuotaPolicy\nmetadata: {name: broken}\nspec: {timezone: Mars/Olympus}\n---\n\
         apiVersion: tollgate.dev/v1alpha1\nkind: Tenant\nmetadata: {name: dave}\nspec: {quotaPolicyRef: {name: broken}}\n",
    )?;
    let broken = eventually(WAIT, "broken Accepted=False", || async {
        let s = plans.get("broken").await.ok()?.status?;
        condition(&s.conditions, "Accepted")
            .filter(|c| c.status == "False")
            .cloned()
    })
    .await?;
    assert_eq!(broken.reason, "UnknownTimeZone");
    assert!(
        broken.message.contains("spec.timezone") && broken.message.contains("Mars/Olympus"),
        "{}",
        broken.message
    );
    let dave = eventually(WAIT, "dave Ready=False", || async {
        let s = tenants.get("dave").await.ok()?.status?;
        condition(&s.conditions, "Ready")
            .filter(|c| c.status == "False")
            .cloned()
    })
    .await?;
    assert_eq!(dave.reason, "PlanNotAccepted");
    assert_eq!(fleet.call(1, "/hello", "key-probe").await?.status, 200);

    // A conflicting route: the newer one is refused with reason Conflict.
    ns.apply_ok("apiVersion: tollgate.dev/v1alpha1\nkind: ApiRoute\nmetadata: {name: hello-copy}\nspec: {match: {pathPrefix: /hello}, backend: {directResponse: {status: 200}}}\n")?;
    let conflict = eventually(WAIT, "hello-copy Accepted=False", || async {
        let s = routes.get("hello-copy").await.ok()?.status?;
        condition(&s.conditions, "Accepted")
            .filter(|c| c.status == "False")
            .cloned()
    })
    .await?;
    assert_eq!(conflict.reason, "Conflict");

    // Delete a route: both proxies answer 404.
    ns.kubectl(&["delete", "apiroute", "hello", "hello-copy"], None)?;
    fleet.wait_status(0, "/hello", "key-probe", 404).await?;
    fleet.wait_status(1, "/hello", "key-probe", 404).await?;
    Ok(())
}

#[tokio::test]
async fn proxies_keep_serving_without_the_operator_and_restart_from_their_snapshot() -> Result<()> {
    let mut fleet = fleet_with_world("op-down").await?;
    fleet.stop_operator(0);
    for i in 0..2 {
        assert_eq!(
            fleet.call(i, "/hello", "key-probe").await?.status,
            200,
            "proxy {i} serves with the operator gone"
        );
    }
    fleet.restart_proxy(0)?;
    fleet
        .wait_status(0, "/hello", "key-probe", 200)
        .await
        .context("the restarted proxy serves its persisted snapshot")?;
    assert!(
        fleet
            .proxy_log(0)
            .contains("serving the persisted configuration"),
        "{}",
        fleet.proxy_log(0)
    );
    Ok(())
}

/// `tollgate_operator_leader` of operators 0 and 1.
async fn leader_gauges(fleet: &Fleet) -> (Option<f64>, Option<f64>) {
    let gauge = |i: usize| Fleet::metric(fleet.operators[i].admin, "tollgate_operator_leader");
    (gauge(0).await, gauge(1).await)
}

#[tokio::test]
async fn only_the_leader_writes_status_and_a_follower_takes_over() -> Result<()> {
    let mut fleet = Fleet::new("op-leader").await?;
    // The pods the operators would run in (objects only: nothing runs them here), for their
    // tollgate.dev/role labels.
    for pod in ["operator-0", "operator-1"] {
        fleet.ns.apply_ok(&format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {pod}}}\nspec: {{containers: [{{name: operator, image: tollgate-operator}}]}}\n"
        ))?;
    }
    let kubeconfig = fleet.operator_kubeconfig().to_path_buf();
    let label_pods = [("TOLLGATE_LABEL_POD_ROLE", "true".to_owned())];
    fleet
        .start_operator_with_env(&kubeconfig, &[], &label_pods)
        .await?;
    fleet.wait_leader(0).await?;
    fleet
        .start_operator_with_env(&kubeconfig, &[], &label_pods)
        .await?;
    let pods: Api<k8s_openapi::api::core::v1::Pod> =
        Api::namespaced(fleet.ns.client.clone(), &fleet.ns.name);
    let roles = || async {
        let mut roles = Vec::new();
        for pod in ["operator-0", "operator-1"] {
            let labels = pods
                .get(pod)
                .await
                .ok()?
                .metadata
                .labels
                .unwrap_or_default();
            roles.push(labels.get("tollgate.dev/role")?.clone());
        }
        Some(roles)
    };
    eventually(
        WAIT,
        "the leader's and the standby's pod labels",
        || async { roles().await.filter(|r| r == &["leader", "standby"]) },
    )
    .await?;
    fleet.ns.apply_ok(WORLD)?;
    fleet.start_proxy("proxy-a")?;
    fleet.wait_status(0, "/hello", "key-probe", 200).await?;
    let routes: Api<ApiRoute> = Api::namespaced(fleet.ns.client.clone(), &fleet.ns.name);
    eventually(WAIT, "hello Programmed", || async {
        let s = routes.get("hello").await.ok()?.status?;
        condition(&s.conditions, "Programmed")
            .filter(|c| c.status == "True")
            .cloned()
    })
    .await?;
    let (leader, follower) = (fleet.operators[0].admin, fleet.operators[1].admin);
    assert_eq!(leader_gauges(&fleet).await, (Some(1.0), Some(0.0)));
    let leader_writes = Fleet::metric(leader, "tollgate_operator_status_writes_total")
        .await
        .unwrap_or(0.0);
    assert!(leader_writes > 0.0, "the leader wrote status");
    assert_eq!(
        Fleet::metric(follower, "tollgate_operator_status_writes_total")
            .await
            .unwrap_or(0.0),
        0.0,
        "the follower wrote none"
    );
    // A follower is ready (rollouts wait for it), but does not serve the stream: its pod is not
    // labelled leader, and a proxy that reaches it anyway is told to go elsewhere.
    assert_eq!(
        tollgate_tests::fleet::get(follower, "/readyz", &[])
            .await?
            .status,
        200,
        "a synced follower is ready"
    );

    // The leader goes away: the follower takes over and the proxy follows it.
    fleet.stop_operator(0);
    fleet.wait_leader(1).await?;
    fleet.ns.apply_ok("apiVersion: tollgate.dev/v1alpha1\nkind: ApiRoute\nmetadata: {name: late}\nspec: {match: {path: /late}, backend: {directResponse: {status: 200}}}\n---\napiVersion: tollgate.dev/v1alpha1\nkind: Tenant\nmetadata: {name: probe}\nspec:\n  apiKeys: [{secretRef: {name: keys, key: probe}}]\n  subscriptions: [{apiRouteRef: {name: hello}}, {apiRouteRef: {name: late}}]\n")?;
    fleet.wait_status(0, "/late", "key-probe", 200).await?;
    eventually(WAIT, "the new leader's pod label", || async {
        roles().await.filter(|r| r[1] == "leader")
    })
    .await?;
    eventually(WAIT, "the new leader's status writes", || async {
        Fleet::metric(follower, "tollgate_operator_status_writes_total")
            .await
            .filter(|n| *n > 0.0)
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn a_leader_whose_clock_runs_an_hour_behind_keeps_the_lease_while_it_renews() -> Result<()> {
    // Before: a follower compared the leader's renewTime (an hour old by the follower's clock)
    // with its own wall clock and took the Lease at its first look: two leaders. Expiry is now
    // measured on the follower's monotonic clock from when it last saw the Lease change.
    let libfaketime = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";
    assert!(
        std::path::Path::new(libfaketime).exists(),
        "libfaketime (Debian package faketime) is needed"
    );
    let mut fleet = Fleet::new("op-skew").await?;
    let kubeconfig = fleet.operator_kubeconfig().to_path_buf();
    let an_hour_behind = [
        ("LD_PRELOAD", libfaketime.to_owned()),
        ("FAKETIME", "-3600".to_owned()),
        ("FAKETIME_DONT_FAKE_MONOTONIC", "1".to_owned()),
    ];
    fleet
        .start_operator_with_env(&kubeconfig, &[], &an_hour_behind)
        .await?;
    fleet.wait_leader(0).await?;
    fleet.start_operator().await?;

    // The leader renews every second (a 3 s lease): watch four renewals, more than a lease's
    // worth, after the follower is up (it looks at the Lease at once, and every second after).
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(fleet.ns.client.clone(), &fleet.ns.name);
    let mut renewals = Vec::new();
    while renewals.len() < 4 {
        let spec = leases
            .get("tollgate-operator")
            .await?
            .spec
            .context("Lease spec")?;
        let holder = spec.holder_identity.unwrap_or_default();
        assert_eq!(holder, "operator-0", "the follower took the Lease");
        if let Some(renewed) = spec.renew_time.map(|t| t.0)
            && renewals.last() != Some(&renewed)
        {
            renewals.push(renewed);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        leader_gauges(&fleet).await,
        (Some(1.0), Some(0.0)),
        "{}",
        fleet.operator_log(1)
    );
    Ok(())
}

#[tokio::test]
async fn operator_metrics_pass_promtool() -> Result<()> {
    let fleet = fleet_with_world("op-metrics").await?;
    let body = tollgate_tests::fleet::get(fleet.operators[0].admin, "/metrics", &[])
        .await?
        .body;
    let text = String::from_utf8_lossy(&body);
    for name in [
        "tollgate_operator_reconciles_total",
        "tollgate_operator_compile_duration_seconds_bucket",
        "tollgate_operator_snapshot_version",
        "tollgate_operator_connected_proxies 2",
        "tollgate_operator_push_bytes_total",
        "tollgate_operator_leader 1",
        "tollgate_operator_status_write_duration_seconds_count",
    ] {
        assert!(text.contains(name), "missing {name}:\n{text}");
    }
    if let Ok(mut child) = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    {
        use std::io::Write;
        child.stdin.take().context("stdin")?.write_all(&body)?;
        let out = child.wait_with_output()?;
        assert!(
            out.status.success(),
            "promtool: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// `curl` status code for `url` with an optional bearer token, trusting the operator's CA.
fn stream_status(fleet: &Fleet, url: &str, token: Option<&str>) -> Result<String> {
    let mut cmd = std::process::Command::new("curl");
    cmd.args([
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "--max-time",
        "5",
        "--cacert",
    ])
    .arg(fleet.ca_file());
    if let Some(token) = token {
        cmd.args(["-H", &format!("Authorization: Bearer {token}")]);
    }
    Ok(String::from_utf8_lossy(&cmd.arg(url).output()?.stdout).into_owned())
}

#[tokio::test]
async fn the_config_stream_refuses_callers_that_are_not_proxies() -> Result<()> {
    let mut fleet = Fleet::new("op-auth").await?;
    fleet.start_operator().await?;
    fleet.wait_leader(0).await?;
    let url = format!("{}/v1/config/stream?proxy=intruder", fleet.operators[0].url);
    assert_eq!(stream_status(&fleet, &url, None)?, "401", "no token");
    assert_eq!(
        stream_status(&fleet, &url, Some("not-a-token"))?,
        "401",
        "garbage token"
    );
    // A real token, but of a ServiceAccount that is not the proxies'.
    fleet
        .ns
        .apply_ok("apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: someone-else}\n")?;
    let other = fleet.ns.kubectl(
        &["create", "token", "someone-else", "--audience", "tollgate"],
        None,
    )?;
    let other = String::from_utf8_lossy(&other.stdout).trim().to_owned();
    assert_eq!(
        stream_status(&fleet, &url, Some(&other))?,
        "401",
        "another ServiceAccount"
    );
    // The proxies' ServiceAccount, but for the wrong audience (the Kubernetes API's).
    let wrong_audience = fleet
        .ns
        .kubectl(&["create", "token", "tollgate-proxy"], None)?;
    let wrong_audience = String::from_utf8_lossy(&wrong_audience.stdout)
        .trim()
        .to_owned();
    assert_eq!(
        stream_status(&fleet, &url, Some(&wrong_audience))?,
        "401",
        "wrong audience"
    );
    // Each refusal is counted by its reason.
    for (reason, count) in [
        ("no_token", 1.0),
        ("not_authenticated", 2.0),
        ("not_allowed", 1.0),
    ] {
        let series = format!("tollgate_operator_proxy_refusals_total{{reason=\"{reason}\"}}");
        assert_eq!(operator_metric(&fleet, &series).await, count, "{series}");
    }
    Ok(())
}

/// The operator's count of `series`, 0 when not exported yet.
async fn operator_metric(fleet: &Fleet, series: &str) -> f64 {
    Fleet::metric(fleet.operators[0].admin, series)
        .await
        .unwrap_or(0.0)
}

#[tokio::test]
async fn status_writes_wake_no_compile_and_an_invalid_object_counts_once() -> Result<()> {
    let mut fleet = Fleet::new("op-wake").await?;
    fleet.start_operator().await?;
    fleet.wait_leader(0).await?;
    let mut world = String::from(
        "apiVersion: tollgate.dev/v1alpha1\nkind: ApiRoute\nmetadata: {name: hello}\n\
         spec: {match: {pathPrefix: /hello}, backend: {directResponse: {status: 200}}}\n---\n\
         apiVersion: tollgate.dev/v1alpha1\nkind: Tenant\nmetadata: {name: lost}\n\
         spec: {quotaPolicyRef: {name: no-such-plan}, subscriptions: [{apiRouteRef: {name: hello}}]}\n",
    );
    for i in 0..20 {
        world.push_str(&format!(
            "---\napiVersion: tollgate.dev/v1alpha1\nkind: Tenant\nmetadata: {{name: t{i}}}\n\
             spec: {{subscriptions: [{{apiRouteRef: {{name: hello}}}}]}}\n"
        ));
    }
    fleet.ns.apply_ok(&world)?;
    let tenants: Api<Tenant> = Api::namespaced(fleet.ns.client.clone(), &fleet.ns.name);
    eventually(WAIT, "21 tenants with a Ready condition", || async {
        (tenants_with_status(&tenants).await.ok()? == 21).then_some(())
    })
    .await?;
    // The operator wrote 21 statuses, each a watch event. Now more status-only changes, made
    // from outside: none of them changes what compile reads.
    let compiles = "tollgate_operator_compile_duration_seconds_count";
    let before = operator_metric(&fleet, compiles).await;
    for i in 0..10 {
        let out = fleet.ns.kubectl(
            &[
                "patch",
                &format!("tenant/t{i}"),
                "--subresource=status",
                "--type=merge",
                "-p",
                r#"{"status": {"usage": [{"quotaPolicy": "x", "quota": "y", "periodStart": "now", "used": "1", "limit": "2"}]}}"#,
            ],
            None,
        )?;
        anyhow::ensure!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Then one spec change: exactly one more compile, and the pipeline is shown to be awake.
    fleet.ns.apply_ok(
        "apiVersion: tollgate.dev/v1alpha1\nkind: Tenant\nmetadata: {name: t0}\n\
         spec: {subscriptions: [{apiRouteRef: {name: hello}}], billing: {state: Suspended}}\n",
    )?;
    eventually(WAIT, "the spec change compiled", || async {
        (operator_metric(&fleet, compiles).await > before).then_some(())
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        operator_metric(&fleet, compiles).await,
        before + 1.0,
        "status-only changes woke the compiler"
    );
    // The tenant without a plan was left out by every compile, and counted once.
    let lost = r#"tollgate_operator_reconcile_errors_total{kind="Tenant",reason="PlanNotFound"}"#;
    assert_eq!(operator_metric(&fleet, lost).await, 1.0);
    assert_eq!(
        operator_metric(&fleet, "tollgate_operator_excluded_objects").await,
        1.0
    );
    Ok(())
}

#[tokio::test]
async fn only_labelled_secrets_are_read_and_status_says_how_to_label_one() -> Result<()> {
    let mut fleet = Fleet::new("op-label").await?;
    fleet.start_operator().await?;
    fleet.wait_leader(0).await?;
    fleet.ns.apply_ok(
        "apiVersion: tollgate.dev/v1alpha1\nkind: ApiRoute\nmetadata: {name: hello}\n\
         spec: {match: {pathPrefix: /hello}, backend: {directResponse: {status: 200}}}\n---\n\
         apiVersion: v1\nkind: Secret\nmetadata: {name: unlabelled}\nstringData: {apiKey: key-unlabelled}\n---\n\
         apiVersion: tollgate.dev/v1alpha1\nkind: Tenant\nmetadata: {name: t}\n\
         spec: {apiKeys: [{secretRef: {name: unlabelled}}], subscriptions: [{apiRouteRef: {name: hello}}]}\n",
    )?;
    let tenants: Api<Tenant> = Api::namespaced(fleet.ns.client.clone(), &fleet.ns.name);
    let not_ready = eventually(WAIT, "t Ready=False", || async {
        let s = tenants.get("t").await.ok()?.status?;
        condition(&s.conditions, "Ready")
            .filter(|c| c.status == "False")
            .cloned()
    })
    .await?;
    assert_eq!(not_ready.reason, "SecretNotFound");
    assert!(
        not_ready
            .message
            .contains("kubectl label secret NAME tollgate.dev/api-key=true"),
        "{}",
        not_ready.message
    );
    fleet.ns.kubectl(
        &["label", "secret", "unlabelled", "tollgate.dev/api-key=true"],
        None,
    )?;
    eventually(WAIT, "t Ready=True once its Secret is labelled", || async {
        let s = tenants.get("t").await.ok()?.status?;
        condition(&s.conditions, "Ready")
            .filter(|c| c.status == "True")
            .cloned()
    })
    .await?;
    Ok(())
}

/// Waits for `child` to exit on its own (its server closed the connection), up to `limit`.
fn exits_within(child: &mut std::process::Child, limit: Duration) -> Result<bool> {
    let deadline = std::time::Instant::now() + limit;
    while std::time::Instant::now() < deadline {
        if child.try_wait()?.is_some() {
            return Ok(true);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    Ok(false)
}

#[tokio::test]
async fn the_operator_drops_clients_that_never_finish_a_request_head() -> Result<()> {
    use std::io::Write;
    let mut fleet = Fleet::new("op-slow").await?;
    fleet.start_operator().await?;
    fleet.wait_leader(0).await?;
    // The admin port (plain HTTP) and the config stream (after a completed TLS handshake): a
    // head started and never finished. Both must be closed by the header timeout (10 s).
    let mut admin = std::net::TcpStream::connect(fleet.operators[0].admin)?;
    admin.write_all(b"GET /metrics HTTP/1.1\r\nHost: op\r\nX-Slow: ")?;
    let authority = fleet.operators[0]
        .url
        .trim_start_matches("https://")
        .to_owned();
    let mut stream = std::process::Command::new("openssl")
        .args(["s_client", "-quiet", "-connect", &authority])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let mut stdin = stream.stdin.take().context("s_client stdin")?;
    stdin.write_all(b"GET /v1/config/stream HTTP/1.1\r\nHost: op\r\nX-Slow: ")?;
    stdin.flush()?;
    assert!(
        exits_within(&mut stream, Duration::from_secs(40))?,
        "the config stream kept a connection whose head never finished"
    );
    admin.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut rest = Vec::new();
    let closed = std::io::Read::read_to_end(&mut admin, &mut rest);
    assert!(
        closed.is_ok(),
        "the admin port kept a connection whose head never finished: {closed:?}"
    );
    drop(stdin);
    Ok(())
}

#[tokio::test]
async fn with_redis_the_fleet_shares_a_quota_and_status_shows_the_redis_counter() -> Result<()> {
    let mut fleet = Fleet::new("redis-usage").await?;
    let redis = fleet.start_redis()?;
    fleet.proxy_args = vec![format!("--store={redis}")];
    let kubeconfig = fleet.operator_kubeconfig().to_path_buf();
    fleet
        .start_operator_as(
            &kubeconfig,
            &[("--store", redis.as_str()), ("--usage-refresh", "1s")],
        )
        .await?;
    serve_world(&mut fleet).await?;

    // One allowance for the fleet: 3 admitted across both proxies, then 402 on either.
    for i in [0, 1, 0] {
        assert_eq!(fleet.call(i, "/hello", "key-alice").await?.status, 200);
    }
    for i in [1, 0] {
        assert_eq!(fleet.call(i, "/hello", "key-alice").await?.status, 402);
    }

    let tenants: Api<Tenant> = Api::namespaced(fleet.ns.client.clone(), &fleet.ns.name);
    let usage = eventually(REPORTED, "alice's usage read from Redis", || async {
        let s = tenants.get("alice").await.ok()?.status?;
        s.usage.first().filter(|u| u.used == "3").cloned()
    })
    .await?;
    assert_eq!(
        (usage.quota.as_str(), usage.limit.as_str()),
        ("monthly-requests", "3")
    );

    // The status follows the counter itself, not what proxies remember: a support engineer
    // credits alice one request in Redis, and both the proxies and the status agree.
    let pattern = format!("tollgate:{{{}/alice|*", fleet.ns.name);
    let keys = fleet.redis_cli(&["--scan", "--pattern", &pattern])?;
    let key = keys.lines().next().context("alice's counter in Redis")?;
    assert_eq!(fleet.redis_cli(&["DECRBY", key, "1"])?.trim(), "2");
    eventually(REPORTED, "alice's usage back to 2", || async {
        let s = tenants.get("alice").await.ok()?.status?;
        s.usage.first().filter(|u| u.used == "2").map(|_| ())
    })
    .await?;
    assert_eq!(fleet.call(1, "/hello", "key-alice").await?.status, 200);
    let admin = fleet.operators[0].admin;
    let reads = Fleet::metric(admin, "tollgate_operator_usage_reads_total{result=\"ok\"}").await;
    assert!(reads.is_some_and(|n| n >= 1.0), "usage reads: {reads:?}");
    Ok(())
}

const ALERTS_WORLD: &str = r#"
apiVersion: tollgate.dev/v1alpha1
kind: QuotaPolicy
metadata: {name: alerted}
spec:
  quotas: [{name: monthly-requests, limit: "4", period: Month, alertAt: [100, 50, 50]}]
---
apiVersion: tollgate.dev/v1alpha1
kind: ApiRoute
metadata: {name: hello}
spec:
  match: {pathPrefix: /hello}
  backend: {directResponse: {status: 200, body: hello}}
---
apiVersion: v1
kind: Secret
metadata: {name: keys, labels: {tollgate.dev/api-key: "true"}}
stringData: {probe: key-probe, erin: key-erin, frank: key-frank}
---
apiVersion: tollgate.dev/v1alpha1
kind: Tenant
metadata: {name: probe}
spec:
  apiKeys: [{secretRef: {name: keys, key: probe}}]
  subscriptions: [{apiRouteRef: {name: hello}}]
---
apiVersion: tollgate.dev/v1alpha1
kind: Tenant
metadata: {name: erin}
spec:
  quotaPolicyRef: {name: alerted}
  apiKeys: [{secretRef: {name: keys, key: erin}}]
  subscriptions: [{apiRouteRef: {name: hello}}]
---
apiVersion: tollgate.dev/v1alpha1
kind: Tenant
metadata: {name: frank}
spec:
  quotaPolicyRef: {name: alerted}
  apiKeys: [{secretRef: {name: keys, key: frank}}]
  subscriptions: [{apiRouteRef: {name: hello}}]
"#;

/// The spend alerts about `tenant`: (type, note) of each Event.
fn spend_alert_events(fleet: &Fleet, tenant: &str) -> Result<Vec<(String, String)>> {
    let out = fleet.ns.kubectl(
        &[
            "get",
            "events.events.k8s.io",
            "-o",
            r#"jsonpath={range .items[?(@.reason=="SpendAlert")]}{.type}{"\t"}{.note}{"\n"}{end}"#,
        ],
        None,
    )?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .filter(|(_, note)| note.contains(&format!("/{tenant} ")))
        .map(|(t, n)| (t.to_owned(), n.to_owned()))
        .collect())
}

/// A plan's spend alerts: each threshold announced once in its period (an Event on the Tenant
/// with its own note, the metric, status.usage[].alertsSent), and not again by the next leader,
/// which starts without the proxies' usage reports (they arrive up to 10 s later).
#[tokio::test]
async fn spend_alerts_are_announced_once_per_threshold_and_period() -> Result<()> {
    let mut fleet = Fleet::new("spend-alerts").await?;
    let kubeconfig = fleet.operator_kubeconfig().to_path_buf();
    // The counts below hold for one leader change, the one the test makes (the leader releases
    // its Lease as it stops): a lease long enough that a busy API server does not add another.
    let lease = [("--lease-duration", "15s")];
    fleet.start_operator_as(&kubeconfig, &lease).await?;
    fleet.wait_leader(0).await?;
    // The standby, started before the proxy so that the proxy knows both.
    fleet.start_operator_as(&kubeconfig, &lease).await?;
    fleet.ns.apply_ok(ALERTS_WORLD)?;
    // erin's owner also gets its alerts, signed, at a webhook.
    let owner = BillingSink::start().await?;
    fleet.ns.apply_ok(&format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: erin-webhook}}\nstringData: {{secret: {WEBHOOK_SECRET}}}\n---\n\
         apiVersion: tollgate.dev/v1alpha1\nkind: Tenant\nmetadata: {{name: erin}}\n\
         spec: {{quotaPolicyRef: {{name: alerted}}, apiKeys: [{{secretRef: {{name: keys, key: erin}}}}], \
         subscriptions: [{{apiRouteRef: {{name: hello}}}}], \
         alertWebhook: {{url: \"{}/alerts\", secretRef: {{name: erin-webhook, key: secret}}}}}}\n",
        owner.url()
    ))?;
    fleet.start_proxy("proxy")?;
    fleet.wait_status(0, "/hello", "key-probe", 200).await?;
    let tenants: Api<Tenant> = Api::namespaced(fleet.ns.client.clone(), &fleet.ns.name);
    let usage_of = |name: &'static str, used: &'static str, sent: &'static [u32]| {
        let tenants = tenants.clone();
        async move {
            let s = tenants.get(name).await.ok()?.status?;
            s.usage
                .first()
                .filter(|u| u.used == used && u.alerts_sent == sent)
                .cloned()
        }
    };
    let alerts = |admin, threshold: &'static str| async move {
        Fleet::metric(
            admin,
            &format!("tollgate_operator_spend_alerts_total{{threshold=\"{threshold}\"}}"),
        )
        .await
    };

    // Half the allowance: the 50% alert (the plan lists it twice; once is what it means).
    for _ in 0..2 {
        assert_eq!(fleet.call(0, "/hello", "key-erin").await?.status, 200);
    }
    let half = eventually(REPORTED, "erin's 50% alert in status", || {
        usage_of("erin", "2", &[50])
    })
    .await
    .with_context(|| fleet.log_tails())?;
    assert_eq!(half.limit, "4");
    let events = eventually(REPORTED, "the 50% Event", || async {
        spend_alert_events(&fleet, "erin")
            .ok()
            .filter(|e| e.len() == 1)
    })
    .await?;
    assert_eq!(events[0].0, "Normal");
    assert!(
        events[0]
            .1
            .contains("used 50% of quota monthly-requests of plan alerted: 2 of 4"),
        "{events:?}"
    );

    // All of it: the 100% alert, a Warning, an Event with its own note; 50% is not repeated.
    for _ in 0..2 {
        assert_eq!(fleet.call(0, "/hello", "key-erin").await?.status, 200);
    }
    assert_eq!(fleet.call(0, "/hello", "key-erin").await?.status, 402);
    eventually(REPORTED, "erin's 100% alert in status", || {
        usage_of("erin", "4", &[50, 100])
    })
    .await
    .with_context(|| fleet.log_tails())?;
    let events = eventually(REPORTED, "the 100% Event", || async {
        spend_alert_events(&fleet, "erin")
            .ok()
            .filter(|e| e.len() == 2)
    })
    .await?;
    assert!(
        events
            .iter()
            .any(|(t, n)| t == "Warning" && n.contains("used 100% of quota monthly-requests")),
        "{events:?}"
    );
    let first = fleet.operators[0].admin;
    assert_eq!(
        (alerts(first, "50").await, alerts(first, "100").await),
        (Some(1.0), Some(1.0))
    );

    // The owner's webhook, sent in the background after each Event.
    eventually(REPORTED, "erin's two webhooks", || async {
        (owner.webhooks().len() >= 2).then_some(())
    })
    .await
    .with_context(|| fleet.log_tails())?;
    let delivered = Fleet::metric(
        first,
        "tollgate_operator_spend_alert_webhooks_total{result=\"delivered\"}",
    )
    .await;
    assert_eq!(delivered, Some(2.0));

    // The standby takes over with no usage reports yet: erin's status keeps its figures and
    // alerts meanwhile, and once the reports arrive nothing is announced again.
    fleet.stop_operator(0);
    let second = fleet.operators[1].admin;
    eventually(WAIT, "the standby leads", || async {
        Fleet::metric(second, "tollgate_operator_leader")
            .await
            .filter(|l| *l == 1.0)
    })
    .await?;
    // frank's half, announced by the new leader: proof that it has the proxy's report, which
    // carries erin's usage too, and has run a status round on it.
    for _ in 0..2 {
        assert_eq!(fleet.call(0, "/hello", "key-frank").await?.status, 200);
    }
    eventually(
        REPORTED,
        "frank's 50% alert from the new leader",
        || async { alerts(second, "50").await.filter(|n| *n == 1.0) },
    )
    .await
    .with_context(|| fleet.log_tails())?;
    // The metric counts the Event, which goes out before the status write that records it.
    eventually(REPORTED, "frank's 50% alert in status", || {
        usage_of("frank", "2", &[50])
    })
    .await
    .with_context(|| fleet.log_tails())?;
    assert_eq!(alerts(second, "100").await, None, "100% announced again");
    usage_of("erin", "4", &[50, 100])
        .await
        .context("erin's status after the leader change")?;
    assert_eq!(spend_alert_events(&fleet, "erin")?.len(), 2);

    // The owner's webhook got each of erin's two alerts once (frank names none), and the
    // Standard Webhooks reference library verifies them with erin's secret.
    let hooks = owner.webhooks();
    assert_eq!(hooks.len(), 2, "{hooks:?}");
    let verdicts = standard_webhook_verdicts(&hooks, WEBHOOK_SECRET)?;
    let mut thresholds: Vec<u64> = verdicts
        .iter()
        .map(|v| {
            let payload = &v["ok"];
            assert_eq!(payload["type"], "spend_alert.threshold_reached", "{v}");
            assert_eq!(payload["data"]["quota"], "monthly-requests", "{v}");
            payload["data"]["threshold"].as_u64().unwrap_or(0)
        })
        .collect();
    thresholds.sort_unstable();
    assert_eq!(thresholds, [50, 100]);
    assert_ne!(
        hooks[0].headers["webhook-id"],
        hooks[1].headers["webhook-id"]
    );
    // A tampered body or another secret fails.
    let mut forged = hooks[0].clone();
    forged.body = forged.body.replace("\"threshold\":50", "\"threshold\":100");
    let other = "whsec_MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
    let refused = [
        standard_webhook_verdicts(&[forged], WEBHOOK_SECRET)?,
        standard_webhook_verdicts(&hooks[..1], other)?,
    ];
    for verdict in refused.iter().flatten() {
        assert!(verdict["error"].is_string(), "{verdict}");
    }
    Ok(())
}

/// erin's webhook signing secret (Standard Webhooks form: `whsec_` and base64 of 32 bytes).
const WEBHOOK_SECRET: &str = "whsec_dG9sbGdhdGUtc3BlbmQtYWxlcnQtc2VjcmV0LTAwMDE=";

/// The Standard Webhooks reference library's verdict on each delivery with `secret`: the
/// payload it verified (`ok`), or its error.
fn standard_webhook_verdicts(
    hooks: &[tollgate_tests::billing_sink::WebhookDelivery],
    secret: &str,
) -> Result<Vec<serde_json::Value>> {
    let input: Vec<serde_json::Value> = hooks
        .iter()
        .map(|h| serde_json::json!({"secret": secret, "headers": h.headers, "body": h.body}))
        .collect();
    let verdicts = tollgate_tests::python::run_json(
        "standard_webhook.py",
        &["verify"],
        &serde_json::Value::from(input),
    )?;
    Ok(serde_json::from_value(verdicts)?)
}
