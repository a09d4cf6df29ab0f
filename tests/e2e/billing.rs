//! Payment state from Stripe (issue #22) on the real kube-apiserver: Stripe's webhooks delivered
//! to the operator over HTTPS, signed the way Stripe signs them (checked with the official
//! `stripe` SDK's verifier), and the periodic read against stripe-mock; the proxies' answers
//! follow. Usage out: the fleet's settled usage exported to a recording sink exactly once,
//! through a leader killed mid-export.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use jiff::{SignedDuration, Timestamp};
use kube::api::Api;
use serde_json::{Value, json};
use tollgate_crds::resources::{BillingSource, BillingState, Tenant};
use tollgate_operator::billing::signature::sign;
use tollgate_operator::export::sink::{Delivered, Sink, SinkKind, UsageEvent};
use tollgate_tests::billing_sink::BillingSink;
use tollgate_tests::fleet::{Fleet, Reply, eventually, logged_addresses};
use tollgate_tests::stripe_mock::{API_KEY, StripeMock};

const WAIT: Duration = Duration::from_secs(30);
/// The signing secret being rolled out, and the one it replaces: both still valid.
const SECRET: &str = "whsec_tollgate_current";
const OLD_SECRET: &str = "whsec_tollgate_previous";

const WORLD: &str = r#"
apiVersion: tollgate.dev/v1alpha1
kind: QuotaPolicy
metadata: {name: pro}
spec:
  pastDueGracePeriod: 1h
  paymentUrl: https://billing.example.com/pay
---
apiVersion: tollgate.dev/v1alpha1
kind: ApiRoute
metadata: {name: api}
spec:
  match: {pathPrefix: /api}
  backend: {directResponse: {status: 200, body: ok}}
---
apiVersion: v1
kind: Secret
metadata: {name: keys, labels: {tollgate.dev/api-key: "true"}}
stringData: {acme: key-acme, beta: key-beta, gamma: key-gamma}
---
apiVersion: tollgate.dev/v1alpha1
kind: Tenant
metadata: {name: acme}
spec:
  quotaPolicyRef: {name: pro}
  apiKeys: [{secretRef: {name: keys, key: acme}}]
  billing: {stripe: {customer: cus_acme, subscription: sub_acme}}
  subscriptions: [{apiRouteRef: {name: api}}]
---
apiVersion: tollgate.dev/v1alpha1
kind: Tenant
metadata: {name: beta}
spec:
  quotaPolicyRef: {name: pro}
  apiKeys: [{secretRef: {name: keys, key: beta}}]
  billing: {stripe: {customer: cus_beta, subscription: sub_beta}}
  subscriptions: [{apiRouteRef: {name: api}}]
---
apiVersion: tollgate.dev/v1alpha1
kind: Tenant
metadata: {name: gamma}
spec:
  quotaPolicyRef: {name: pro}
  apiKeys: [{secretRef: {name: keys, key: gamma}}]
  subscriptions: [{apiRouteRef: {name: api}}]
"#;

/// A Stripe event about a subscription (`customer.subscription.*`), created at `created`.
fn subscription_event(
    id: &str,
    kind: &str,
    created: Timestamp,
    tenant: &str,
    status: &str,
) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "id": id, "object": "event", "api_version": "2026-08-26.dahlia",
        "created": created.as_second(), "livemode": false, "pending_webhooks": 1,
        "type": kind,
        "data": {"object": {"id": format!("sub_{tenant}"), "object": "subscription",
                            "customer": format!("cus_{tenant}"), "status": status,
                            "items": {"object": "list", "data": []}}}
    }))
    .expect("json")
}

/// An `invoice.*` event in the current API shape (the subscription under `parent`).
fn invoice_event(id: &str, kind: &str, created: Timestamp, tenant: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "id": id, "object": "event", "api_version": "2026-08-26.dahlia",
        "created": created.as_second(), "livemode": false, "pending_webhooks": 1,
        "type": kind,
        "data": {"object": {"id": format!("in_{id}"), "object": "invoice",
                            "customer": format!("cus_{tenant}"),
                            "status": if kind == "invoice.paid" { "paid" } else { "open" },
                            "parent": {"type": "subscription_details",
                                       "subscription_details": {"subscription": format!("sub_{tenant}")}}}}
    }))
    .expect("json")
}

fn ago(secs: i64) -> Timestamp {
    Timestamp::now() - SignedDuration::from_secs(secs)
}

struct Stripe {
    addr: SocketAddr,
    ca: PathBuf,
}

impl Stripe {
    /// Delivers `body` with `header` as `Stripe-Signature` (none when `None`).
    async fn deliver(&self, body: &[u8], header: Option<&str>) -> Result<Reply> {
        let headers: Vec<(&str, &str)> = header
            .map(|h| {
                vec![
                    ("stripe-signature", h),
                    ("content-type", "application/json"),
                ]
            })
            .unwrap_or_default();
        tollgate_tests::https::post(
            self.addr,
            &self.ca,
            "/stripe/webhook",
            &headers,
            body.to_vec(),
        )
        .await
    }

    /// Delivers `body` signed now with `secret`; the receiver's outcome.
    async fn send(&self, body: &[u8], secret: &str) -> Result<String> {
        let header = sign(body, secret, Timestamp::now().as_second());
        let reply = self.deliver(body, Some(&header)).await?;
        anyhow::ensure!(
            reply.status == 200,
            "{} {}",
            reply.status,
            String::from_utf8_lossy(&reply.body)
        );
        Ok(reply.json()["outcome"]
            .as_str()
            .unwrap_or_default()
            .to_owned())
    }
}

/// The official SDK's verdict on each (payload, header, secret): the event id, or its error.
fn sdk_verdicts(deliveries: &[(Vec<u8>, String, &str)]) -> Result<Vec<Value>> {
    let input: Vec<Value> = deliveries
        .iter()
        .map(|(payload, header, secret)| {
            json!({"payload": String::from_utf8_lossy(payload), "header": header, "secret": secret})
        })
        .collect();
    let verdicts =
        tollgate_tests::python::run_json("stripe_webhook.py", &["verify"], &Value::from(input))?;
    Ok(serde_json::from_value(verdicts)?)
}

async fn stripe_status(tenants: &Api<Tenant>, name: &str) -> Option<Tenant> {
    tenants.get_status(name).await.ok()
}

async fn operator_metric(fleet: &Fleet, outcome: &str) -> f64 {
    Fleet::metric(
        fleet.operators[0].admin,
        &format!("tollgate_operator_stripe_webhook_events_total{{outcome=\"{outcome}\"}}"),
    )
    .await
    .unwrap_or(0.0)
}

#[tokio::test]
async fn stripe_webhooks_decide_who_pays_and_nothing_bad_is_applied() -> Result<()> {
    let mut fleet = Fleet::new("billing").await?;
    let secrets = fleet.dir().join("stripe-webhook-secrets");
    std::fs::write(&secrets, format!("# rolling\n{OLD_SECRET}\n{SECRET}\n"))?;
    let kubeconfig = fleet.operator_kubeconfig().to_path_buf();
    let secrets_arg = secrets.display().to_string();
    fleet
        .start_operator_as(
            &kubeconfig,
            &[
                ("--stripe-webhook-listen", "127.0.0.1:0"),
                ("--stripe-webhook-secrets", &secrets_arg),
            ],
        )
        .await?;
    fleet.wait_leader(0).await?;
    let addr = logged_addresses(
        &fleet.dir().join("operator-0.log"),
        "tollgate-operator starting",
        &["stripe_webhook="],
    )?[0];
    let stripe = Stripe {
        addr,
        ca: fleet.ca_file().to_path_buf(),
    };
    fleet.ns.apply_ok(WORLD)?;
    fleet.start_proxy("proxy")?;
    for key in ["key-acme", "key-beta", "key-gamma"] {
        fleet.wait_status(0, "/api", key, 200).await?;
    }
    let tenants: Api<Tenant> = Api::namespaced(fleet.ns.client.clone(), &fleet.ns.name);

    // Our signatures are Stripe's: the official SDK accepts them (and refuses a tampered body).
    // Its environment is made first (it may take a while the first time): the signatures below
    // are checked against Stripe's 300 s tolerance.
    tollgate_tests::python::sdk_python();
    let first = subscription_event(
        "evt_acme_1",
        "customer.subscription.updated",
        ago(10),
        "acme",
        "past_due",
    );
    let header = sign(&first, SECRET, Timestamp::now().as_second());
    let mut tampered = first.clone();
    tampered.extend_from_slice(b" ");
    let verdicts = sdk_verdicts(&[
        (first.clone(), header.clone(), SECRET),
        (tampered.clone(), header.clone(), SECRET),
        (first.clone(), header.clone(), "whsec_someone_else"),
    ])?;
    assert_eq!(verdicts[0], json!({"ok": "evt_acme_1"}), "{verdicts:?}");
    assert!(verdicts[1]["error"].is_string(), "{verdicts:?}");
    assert!(verdicts[2]["error"].is_string(), "{verdicts:?}");

    // Refused, never applied: unsigned, tampered, signed with an unknown secret, stale.
    let stale = sign(&first, SECRET, ago(301).as_second());
    let wrong = sign(&first, "whsec_someone_else", Timestamp::now().as_second());
    for (body, header, outcome) in [
        (&first, None, "bad_signature"),
        (&tampered, Some(header.as_str()), "bad_signature"),
        (&first, Some(wrong.as_str()), "bad_signature"),
        (&first, Some(stale.as_str()), "stale_timestamp"),
    ] {
        let reply = stripe.deliver(body, header).await?;
        assert_eq!(reply.status, 400, "{outcome}: {:?}", reply.json());
        assert_eq!(reply.json()["outcome"], outcome);
    }
    // What a careless or hostile sender tries: a header that parses as nothing, a body over
    // 1 MiB (refused before it is read), and garbage signed with the right secret (acknowledged,
    // so Stripe would not retry it for days, and never applied).
    let reply = stripe.deliver(&first, Some("t=abc,v1=zz")).await?;
    assert_eq!(
        (reply.status, reply.json()["outcome"].clone()),
        (400, json!("bad_signature"))
    );
    // Answered and closed before the body is read: the sender may see the 400 or a cut write.
    let huge = vec![b'x'; 1024 * 1024 + 1];
    if let Ok(reply) = stripe.deliver(&huge, Some(&header)).await {
        assert_eq!(
            (reply.status, reply.json()["outcome"].clone()),
            (400, json!("malformed"))
        );
    }
    eventually(WAIT, "the oversized body refused", || async {
        (operator_metric(&fleet, "malformed").await >= 1.0).then_some(())
    })
    .await?;
    let garbage =
        b"{\"id\": \"evt_garbage\", \"type\": \"customer.subscription.updated\"}".to_vec();
    let signed = sign(&garbage, SECRET, Timestamp::now().as_second());
    let reply = stripe.deliver(&garbage, Some(&signed)).await?;
    assert_eq!(
        (reply.status, reply.json()["outcome"].clone()),
        (200, json!("unreadable"))
    );
    eventually(WAIT, "the refusals counted", || async {
        (operator_metric(&fleet, "bad_signature").await >= 3.0
            && operator_metric(&fleet, "stale_timestamp").await >= 1.0)
            .then_some(())
    })
    .await?;
    let untouched = stripe_status(&tenants, "acme").await.context("acme")?;
    assert!(
        untouched.status.as_ref().is_none_or(|s| s.stripe.is_none()),
        "{:?}",
        untouched.status
    );

    // acme falls past due 10 s ago: within the plan's hour of grace, still served.
    assert_eq!(stripe.send(&first, SECRET).await?, "applied");
    let acme = eventually(
        WAIT,
        "acme's effective state PastDue from Stripe",
        || async {
            stripe_status(&tenants, "acme").await.filter(|t| {
                t.status
                    .as_ref()
                    .and_then(|s| s.billing.as_ref())
                    .is_some_and(|b| {
                        b.state == BillingState::PastDue && b.source == BillingSource::Stripe
                    })
            })
        },
    )
    .await?;
    let status = acme.status.context("status")?;
    let stripe_seen = status.stripe.context("status.stripe")?;
    assert_eq!(stripe_seen.subscription_status.as_deref(), Some("past_due"));
    assert_eq!(stripe_seen.last_event, "evt_acme_1");
    let billing = status.billing.context("status.billing")?;
    let since: Timestamp = billing.since.as_deref().context("since")?.parse()?;
    let grace_until: Timestamp = billing
        .grace_until
        .as_deref()
        .context("graceUntil")?
        .parse()?;
    assert_eq!(
        grace_until.duration_since(since),
        SignedDuration::from_hours(1)
    );

    // beta fell past due two hours ago (an event created then, delivered now, signed with the
    // secret being replaced): the grace is over, 402.
    let beta_late = subscription_event(
        "evt_beta_1",
        "customer.subscription.updated",
        ago(7200),
        "beta",
        "past_due",
    );
    assert_eq!(stripe.send(&beta_late, OLD_SECRET).await?, "applied");
    let refused = fleet.wait_status(0, "/api", "key-beta", 402).await?;
    assert_eq!(
        refused.json()["type"],
        "https://tollgate.dev/problems/account-past-due"
    );
    // The proxy's configuration now holds acme's state too (applied before beta's): past due
    // within the hour's grace, still served.
    assert_eq!(fleet.call(0, "/api", "key-acme").await?.status, 200);
    assert_eq!(
        refused.json()["paymentUrl"],
        "https://billing.example.com/pay"
    );

    // Paid: back to 200. The failure that preceded it, delivered late, changes nothing; the
    // payment delivered twice counts once.
    let paid = invoice_event("evt_beta_2", "invoice.paid", ago(5), "beta");
    let failed_before = invoice_event("evt_beta_0", "invoice.payment_failed", ago(60), "beta");
    assert_eq!(stripe.send(&paid, SECRET).await?, "applied");
    fleet.wait_status(0, "/api", "key-beta", 200).await?;
    assert_eq!(stripe.send(&failed_before, SECRET).await?, "out_of_order");
    assert_eq!(stripe.send(&paid, SECRET).await?, "duplicate");
    let beta = stripe_status(&tenants, "beta").await.context("beta")?;
    let beta_stripe = beta
        .status
        .and_then(|s| s.stripe)
        .context("beta's status.stripe")?;
    assert_eq!(beta_stripe.state, BillingState::Active);
    assert_eq!(beta_stripe.recent_events, ["evt_beta_1", "evt_beta_2"]);
    assert_eq!(fleet.call(0, "/api", "key-beta").await?.status, 200);

    // Cancelled: 402 subscription-cancelled. A paid invoice afterwards does not revive it.
    let cancelled = subscription_event(
        "evt_beta_3",
        "customer.subscription.deleted",
        ago(2),
        "beta",
        "canceled",
    );
    assert_eq!(stripe.send(&cancelled, SECRET).await?, "applied");
    let refused = fleet.wait_status(0, "/api", "key-beta", 402).await?;
    assert_eq!(
        refused.json()["type"],
        "https://tollgate.dev/problems/subscription-cancelled"
    );
    let final_invoice = invoice_event("evt_beta_4", "invoice.paid", ago(1), "beta");
    assert_eq!(stripe.send(&final_invoice, SECRET).await?, "applied");
    let beta = stripe_status(&tenants, "beta").await.context("beta")?;
    let beta_stripe = beta
        .status
        .and_then(|s| s.stripe)
        .context("beta's status.stripe")?;
    assert_eq!(
        (beta_stripe.state, beta_stripe.last_event.as_str()),
        (BillingState::Cancelled, "evt_beta_4")
    );
    assert_eq!(fleet.call(0, "/api", "key-beta").await?.status, 402);

    // Someone else's customer, another subscription of a known customer, another event type:
    // acknowledged (Stripe stops retrying), applied nowhere.
    let stranger = subscription_event(
        "evt_x_1",
        "customer.subscription.updated",
        ago(1),
        "stranger",
        "canceled",
    );
    assert_eq!(stripe.send(&stranger, SECRET).await?, "unknown_customer");
    let mut other_sub: Value = serde_json::from_slice(&subscription_event(
        "evt_acme_other",
        "customer.subscription.updated",
        ago(1),
        "acme",
        "canceled",
    ))?;
    other_sub["data"]["object"]["id"] = json!("sub_acme_second");
    assert_eq!(
        stripe
            .send(&serde_json::to_vec(&other_sub)?, SECRET)
            .await?,
        "other_subscription"
    );
    let charge = serde_json::to_vec(
        &json!({"id": "evt_charge", "object": "event", "created": ago(1).as_second(),
        "type": "charge.succeeded", "data": {"object": {"id": "ch_1", "customer": "cus_acme"}}}),
    )?;
    assert_eq!(stripe.send(&charge, SECRET).await?, "ignored_type");
    // A delivery signed by Stripe's own SDK is accepted like ours.
    let sdk_signed = {
        let body = subscription_event(
            "evt_acme_2",
            "customer.subscription.updated",
            ago(1),
            "acme",
            "active",
        );
        let out = std::process::Command::new(tollgate_tests::python::sdk_python())
            .args([
                concat!(env!("CARGO_MANIFEST_DIR"), "/python/stripe_webhook.py"),
                "sign",
                SECRET,
            ])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut child| {
                std::io::Write::write_all(child.stdin.as_mut().expect("stdin"), &body)?;
                drop(child.stdin.take());
                child.wait_with_output()
            })?;
        anyhow::ensure!(out.status.success(), "stripe_webhook.py sign failed");
        (body, String::from_utf8(out.stdout)?.trim().to_owned())
    };
    let reply = stripe.deliver(&sdk_signed.0, Some(&sdk_signed.1)).await?;
    assert_eq!(
        (reply.status, reply.json()["outcome"].clone()),
        (200, json!("applied"))
    );
    let gamma = stripe_status(&tenants, "gamma").await.context("gamma")?;
    assert!(gamma.status.as_ref().is_none_or(|s| s.stripe.is_none()));
    assert_eq!(fleet.call(0, "/api", "key-gamma").await?.status, 200);

    // A state typed in the spec still wins: suspended by hand, whatever Stripe says.
    fleet.ns.kubectl_ok(&[
        "patch",
        "tenant",
        "acme",
        "--type=merge",
        "-p",
        r#"{"spec":{"billing":{"state":"Suspended"}}}"#,
    ])?;
    let refused = fleet.wait_status(0, "/api", "key-acme", 402).await?;
    assert_eq!(
        refused.json()["type"],
        "https://tollgate.dev/problems/account-suspended"
    );
    // The status is written after the proxies' configuration is published.
    eventually(WAIT, "acme's status: Suspended, from the spec", || async {
        stripe_status(&tenants, "acme")
            .await
            .and_then(|t| t.status?.billing)
            .filter(|b| (b.state, b.source) == (BillingState::Suspended, BillingSource::Spec))
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn a_missed_webhook_is_corrected_by_reading_the_subscription() -> Result<()> {
    let mut fleet = Fleet::new("billing-repair").await?;
    let key_file = fleet.dir().join("stripe-api-key");
    std::fs::write(&key_file, format!("{API_KEY}\n"))?;
    // stripe-mock answers every subscription with its fixture: customer cus_repair, past due.
    let mock = StripeMock::start(fleet.dir(), "cus_repair", "past_due")?;
    let kubeconfig = fleet.operator_kubeconfig().to_path_buf();
    let key_arg = key_file.display().to_string();
    fleet
        .start_operator_as(
            &kubeconfig,
            &[
                ("--stripe-api-key-file", &key_arg),
                ("--stripe-api-base", &mock.url),
                ("--stripe-repair-interval", "1s"),
            ],
        )
        .await?;
    fleet.wait_leader(0).await?;
    fleet.ns.apply_ok(
        r#"
apiVersion: tollgate.dev/v1alpha1
kind: QuotaPolicy
metadata: {name: strict}
spec: {paymentUrl: https://billing.example.com/pay}
---
apiVersion: tollgate.dev/v1alpha1
kind: ApiRoute
metadata: {name: api}
spec:
  match: {pathPrefix: /api}
  backend: {directResponse: {status: 200, body: ok}}
---
apiVersion: v1
kind: Secret
metadata: {name: keys, labels: {tollgate.dev/api-key: "true"}}
stringData: {repair: key-repair, mismatch: key-mismatch}
---
apiVersion: tollgate.dev/v1alpha1
kind: Tenant
metadata: {name: repair}
spec:
  quotaPolicyRef: {name: strict}
  apiKeys: [{secretRef: {name: keys, key: repair}}]
  billing: {stripe: {customer: cus_repair, subscription: sub_repair}}
  subscriptions: [{apiRouteRef: {name: api}}]
---
apiVersion: tollgate.dev/v1alpha1
kind: Tenant
metadata: {name: mismatch}
spec:
  quotaPolicyRef: {name: strict}
  apiKeys: [{secretRef: {name: keys, key: mismatch}}]
  billing: {stripe: {customer: cus_someone_else, subscription: sub_theirs}}
  subscriptions: [{apiRouteRef: {name: api}}]
"#,
    )?;
    fleet.start_proxy("proxy")?;
    // No webhook ever arrives: the read finds the subscription past due (no grace on this plan).
    let refused = fleet.wait_status(0, "/api", "key-repair", 402).await?;
    assert_eq!(
        refused.json()["type"],
        "https://tollgate.dev/problems/account-past-due"
    );
    let tenants: Api<Tenant> = Api::namespaced(fleet.ns.client.clone(), &fleet.ns.name);
    let repair = tenants.get_status("repair").await?;
    let seen = repair
        .status
        .and_then(|s| s.stripe)
        .context("status.stripe")?;
    assert_eq!(seen.last_event, "subscription-read");
    assert_eq!(seen.subscription_status.as_deref(), Some("past_due"));
    // The subscription belongs to another customer than `mismatch` names: never applied.
    assert_eq!(fleet.call(0, "/api", "key-mismatch").await?.status, 200);
    let mismatch = tenants.get_status("mismatch").await?;
    assert!(mismatch.status.as_ref().is_none_or(|s| s.stripe.is_none()));
    let reads = |outcome: &'static str| {
        let admin = fleet.operators[0].admin;
        async move {
            Fleet::metric(
                admin,
                &format!(
                    "tollgate_operator_stripe_subscription_reads_total{{outcome=\"{outcome}\"}}"
                ),
            )
            .await
            .unwrap_or(0.0)
        }
    };
    eventually(WAIT, "the mismatch counted", || async {
        (reads("customer_mismatch").await >= 1.0).then_some(())
    })
    .await?;

    // Paid in Stripe (the webhook lost): the next read corrects it.
    let _mock = mock.restart(fleet.dir(), "cus_repair", "active")?;
    fleet.wait_status(0, "/api", "key-repair", 200).await?;
    eventually(WAIT, "two corrections counted", || async {
        (reads("corrected").await >= 2.0).then_some(())
    })
    .await?;
    Ok(())
}

const EXPORT_WORLD: &str = r#"
apiVersion: tollgate.dev/v1alpha1
kind: QuotaPolicy
metadata: {name: metered}
spec:
  quotas:
  - {name: monthly-requests, limit: "100000", period: Month, meterEventName: api_requests}
---
apiVersion: tollgate.dev/v1alpha1
kind: ApiRoute
metadata: {name: api}
spec:
  match: {pathPrefix: /api}
  backend: {directResponse: {status: 200, body: ok}}
---
apiVersion: v1
kind: Secret
metadata: {name: keys, labels: {tollgate.dev/api-key: "true"}}
stringData: {acme: key-acme, gamma: key-gamma}
---
apiVersion: tollgate.dev/v1alpha1
kind: Tenant
metadata: {name: acme}
spec:
  quotaPolicyRef: {name: metered}
  apiKeys: [{secretRef: {name: keys, key: acme}}]
  billing: {stripe: {customer: cus_acme, subscription: sub_acme}}
  subscriptions: [{apiRouteRef: {name: api}}]
---
apiVersion: tollgate.dev/v1alpha1
kind: Tenant
metadata: {name: gamma}
spec:
  quotaPolicyRef: {name: metered}
  apiKeys: [{secretRef: {name: keys, key: gamma}}]
  subscriptions: [{apiRouteRef: {name: api}}]
"#;

/// A plan that serves past its limit and bills the overage under its own event name.
const OVERAGE_WORLD: &str = r#"
apiVersion: tollgate.dev/v1alpha1
kind: QuotaPolicy
metadata: {name: overage}
spec:
  quotas:
  - {name: monthly-requests, limit: "3", period: Month, whenExhausted: Overage,
     meterEventName: api_requests, overageMeterEventName: api_requests_overage}
---
apiVersion: v1
kind: Secret
metadata: {name: delta-key, labels: {tollgate.dev/api-key: "true"}}
stringData: {apiKey: key-delta}
---
apiVersion: tollgate.dev/v1alpha1
kind: Tenant
metadata: {name: delta}
spec:
  quotaPolicyRef: {name: overage}
  apiKeys: [{secretRef: {name: delta-key}}]
  subscriptions: [{apiRouteRef: {name: api}}]
"#;

/// Calls `/api` `n` times with `key`, alternating between the proxies; every call must be
/// admitted.
async fn admit(fleet: &Fleet, key: &str, n: usize) -> Result<u64> {
    for i in 0..n {
        let reply = fleet.call(i % fleet.proxies.len(), "/api", key).await?;
        anyhow::ensure!(reply.status == 200, "call {i}: {}", reply.status);
    }
    Ok(n as u64)
}

/// The export's status of `tenant` (its one series).
async fn export_status(
    tenants: &Api<Tenant>,
    tenant: &str,
) -> Option<tollgate_crds::resources::ExportStatus> {
    tenants
        .get_status(tenant)
        .await
        .ok()?
        .status?
        .export
        .into_iter()
        .next()
}

#[tokio::test]
async fn usage_reaches_billing_exactly_once_when_the_leader_dies_mid_export() -> Result<()> {
    let mut fleet = Fleet::new("billing-export").await?;
    let redis = fleet.start_redis()?;
    // Requests settle a second after admission (the default waits out the longest backend
    // timeout).
    fleet.proxy_args = vec![format!("--store={redis}"), "--settle-after=1s".into()];
    let sink = BillingSink::start().await?;
    let key_file = fleet.dir().join("stripe-api-key");
    std::fs::write(&key_file, format!("{API_KEY}\n"))?;
    let (key_arg, base) = (key_file.display().to_string(), sink.url());
    let flags = [
        ("--store", redis.as_str()),
        ("--usage-refresh", "1s"),
        ("--usage-export", "stripe"),
        ("--usage-export-interval", "1s"),
        ("--stripe-api-key-file", key_arg.as_str()),
        ("--stripe-api-base", base.as_str()),
    ];
    let kubeconfig = fleet.operator_kubeconfig().to_path_buf();
    fleet.start_operator_as(&kubeconfig, &flags).await?;
    fleet.wait_leader(0).await?;
    fleet.start_operator_as(&kubeconfig, &flags).await?;
    fleet.ns.apply_ok(EXPORT_WORLD)?;
    fleet.start_proxy("a")?;
    fleet.start_proxy("b")?;
    fleet.wait_status(0, "/api", "key-acme", 200).await?;
    fleet.wait_status(1, "/api", "key-acme", 200).await?;
    let mut admitted: u64 = 2;
    let tenants: Api<Tenant> = Api::namespaced(fleet.ns.client.clone(), &fleet.ns.name);
    let billed = |want: u64| {
        let sink = &sink;
        move || async move { (sink.billed("cus_acme") == want).then_some(()) }
    };

    // Usage flows out while the first replica leads.
    admitted += admit(&fleet, "key-acme", 30).await?;
    eventually(
        Duration::from_secs(60),
        "the first 32 requests billed",
        billed(admitted),
    )
    .await
    .with_context(|| fleet.log_tails())?;

    // The leader records the next event, sends it, and dies before the answer comes: the
    // sink has it, the leader never learned.
    sink.hold_next();
    admitted += admit(&fleet, "key-acme", 20).await?;
    let held = eventually(WAIT, "an event held by the sink", || async { sink.held() }).await?;
    let pending = export_status(&tenants, "acme")
        .await
        .and_then(|s| s.pending)
        .context("the held event is pending in the status")?;
    assert_eq!(
        pending.id, held,
        "the status recorded the event before it was sent"
    );
    fleet.kill_operator(0);

    // The standby takes over, sends the pending event again (the sink drops the copy), and the
    // usage that came since follows; two failed sends are retried.
    sink.fail_next(2);
    fleet.wait_leader(1).await?;
    admitted += admit(&fleet, "key-acme", 10).await?;
    eventually(
        Duration::from_secs(60),
        "every admitted request billed",
        billed(admitted),
    )
    .await
    .with_context(|| fleet.log_tails())?;
    let shown = eventually(WAIT, "the cursor at the admitted total", || async {
        export_status(&tenants, "acme")
            .await
            .filter(|s| s.acknowledged == admitted && s.pending.is_none())
    })
    .await?;
    assert_eq!(
        (
            shown.quota_policy.as_str(),
            shown.quota.as_str(),
            shown.event_name.as_str()
        ),
        ("metered", "monthly-requests", "api_requests")
    );
    assert_eq!(shown.metered, admitted);
    assert!(sink.copies() >= 1, "the held event was sent again");
    let second = fleet.operators[1].admin;
    let events = |result: &'static str| async move {
        Fleet::metric(
            second,
            &format!("tollgate_operator_usage_export_events_total{{result=\"{result}\"}}"),
        )
        .await
        .unwrap_or(0.0)
    };
    assert!(
        events("duplicate").await >= 1.0,
        "the copy counted as a duplicate"
    );
    assert!(events("failed").await >= 2.0, "the refused sends counted");

    // Every event: a tg1- identifier, the meter's name, a time in this period, a positive
    // value; all of them for acme's customer (gamma names none).
    let month_start = Timestamp::now()
        .to_zoned(jiff::tz::TimeZone::UTC)
        .first_of_month()?
        .start_of_day()?
        .timestamp()
        .as_second();
    for d in sink.deliveries() {
        assert!(d.id.starts_with("tg1-") && d.id.len() == 68, "{d:?}");
        assert_eq!(
            (d.event_name.as_str(), d.customer.as_str()),
            ("api_requests", "cus_acme")
        );
        assert!(d.value > 0, "{d:?}");
        assert!(
            (month_start..=Timestamp::now().as_second()).contains(&d.timestamp),
            "{d:?}"
        );
    }

    // A tenant without a Stripe customer: its usage is not sent, and its status says why.
    admit(&fleet, "key-gamma", 3).await?;
    let gamma = eventually(WAIT, "gamma's export status", || async {
        export_status(&tenants, "gamma")
            .await
            .filter(|s| s.last_error.is_some())
    })
    .await?;
    assert!(
        gamma
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("spec.billing.stripe")),
        "{gamma:?}"
    );
    assert_eq!(gamma.acknowledged, 0);
    assert_eq!(sink.billed("cus_acme"), admitted, "nothing more for acme");
    Ok(())
}

#[tokio::test]
async fn usage_goes_out_as_cloud_events_and_the_meter_event_form_passes_stripe_mock() -> Result<()>
{
    // The form the operator posts, against Stripe's own API description (stripe-mock checks
    // every parameter against it).
    let dir = tempfile::tempdir()?;
    let mock = StripeMock::start(dir.path(), "cus_acme", "active")?;
    let key_file = dir.path().join("key");
    std::fs::write(&key_file, API_KEY)?;
    let stripe = Sink::new(SinkKind::Stripe {
        api_base: mock.url.clone(),
        api_key_file: key_file,
    });
    let tenant = tollgate_crds::snapshot::ObjectKey::new("shop", "acme");
    let event = UsageEvent {
        id: "tg1-0123",
        event_name: "api_requests",
        value: 7,
        timestamp: Timestamp::now(),
        customer: "cus_acme",
        tenant: &tenant,
        plan: "metered",
        quota: "monthly-requests",
        period_start: "2026-12-01T00:00:00Z",
    };
    assert_eq!(stripe.send(&event).await?, Delivered::Accepted);

    // CloudEvents: a tenant without a Stripe customer is billed as itself.
    let mut fleet = Fleet::new("billing-cloudevents").await?;
    let redis = fleet.start_redis()?;
    // Requests settle a second after admission (the default waits out the longest backend
    // timeout).
    fleet.proxy_args = vec![format!("--store={redis}"), "--settle-after=1s".into()];
    let sink = BillingSink::start().await?;
    let url = format!("{}/events", sink.url());
    let kubeconfig = fleet.operator_kubeconfig().to_path_buf();
    fleet
        .start_operator_as(
            &kubeconfig,
            &[
                ("--store", redis.as_str()),
                ("--usage-export", "cloudevents"),
                ("--usage-export-url", url.as_str()),
                ("--usage-export-interval", "1s"),
            ],
        )
        .await?;
    fleet.wait_leader(0).await?;
    fleet.ns.apply_ok(EXPORT_WORLD)?;
    fleet.ns.apply_ok(OVERAGE_WORLD)?;
    fleet.start_proxy("a")?;
    fleet.wait_status(0, "/api", "key-gamma", 200).await?;
    let admitted = 1 + admit(&fleet, "key-gamma", 5).await?;
    // Overage: served past the limit of 3, and billed in two parts.
    fleet.wait_status(0, "/api", "key-delta", 200).await?;
    admit(&fleet, "key-delta", 6).await?;
    let delta = format!("{}/delta", fleet.ns.name);
    eventually(
        Duration::from_secs(60),
        "delta's allowance and overage",
        || async {
            let by_name = |name: &str| {
                let mut seen = std::collections::HashSet::new();
                sink.deliveries()
                    .into_iter()
                    .filter(|d| {
                        d.customer == delta && d.event_name == name && seen.insert(d.id.clone())
                    })
                    .map(|d| d.value)
                    .sum::<u64>()
            };
            (by_name("api_requests") == 3 && by_name("api_requests_overage") == 4).then_some(())
        },
    )
    .await
    .with_context(|| fleet.log_tails())?;
    let subject = format!("{}/gamma", fleet.ns.name);
    eventually(
        Duration::from_secs(60),
        "gamma's requests as CloudEvents",
        || async { (sink.billed(&subject) == admitted).then_some(()) },
    )
    .await
    .with_context(|| fleet.log_tails())?;
    let event = &sink
        .deliveries()
        .into_iter()
        .find(|d| d.customer == subject)
        .context("gamma's event")?
        .cloud_event;
    assert_eq!(event["specversion"], "1.0");
    assert_eq!(event["type"], "api_requests");
    assert_eq!(event["source"], format!("tollgate/{}/gamma", fleet.ns.name));
    assert_eq!(event["datacontenttype"], "application/json");
    assert_eq!(event["data"]["quota"], "monthly-requests");
    assert!(
        event["id"]
            .as_str()
            .is_some_and(|id| id.starts_with("tg1-"))
    );
    Ok(())
}
