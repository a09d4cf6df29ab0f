//! The configuration stream between the operator and its proxies.
//!
//! Newline-delimited JSON over one long-lived HTTPS response: a proxy first receives the full
//! snapshot, then one [`Delta`] per compile that changed anything, carrying only the objects that
//! changed (one tenant's edit with 10,000 tenants loaded sends one tenant). Each delta names the
//! version it applies on (`base`); a proxy that is not at `base` reconnects and gets a full snapshot.
//! Proxies acknowledge each applied version with a separate request, which the operator reports in
//! `Programmed` conditions.

use std::collections::HashMap;
use std::hash::Hash;

use serde::{Deserialize, Serialize};

use crate::snapshot::{ObjectKey, Plan, Route, Snapshot, Tenant};

/// One line of the stream.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum ConfigMessage {
    /// The whole configuration.
    Full {
        /// Its version.
        version: u64,
        /// The snapshot.
        snapshot: Snapshot,
    },
    /// What changed since `base`.
    Delta(Delta),
    /// Keep-alive, so both ends notice a dead connection.
    Ping,
}

/// The changes between two versions.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Delta {
    /// Version this delta applies on.
    pub base: u64,
    /// Version after applying it.
    pub version: u64,
    /// Added or changed routes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    /// Added or changed tenants.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tenants: Vec<Tenant>,
    /// Added or changed plans.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub plans: Vec<Plan>,
    /// Removed routes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed_routes: Vec<ObjectKey>,
    /// Removed tenants.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed_tenants: Vec<ObjectKey>,
    /// Removed plans.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed_plans: Vec<ObjectKey>,
}

impl Delta {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
            && self.tenants.is_empty()
            && self.plans.is_empty()
            && self.removed_routes.is_empty()
            && self.removed_tenants.is_empty()
            && self.removed_plans.is_empty()
    }
}

fn diff_items<T: Clone + PartialEq, K: Eq + Hash + Clone>(
    old: &[T],
    new: &[T],
    key: impl Fn(&T) -> &K,
) -> (Vec<T>, Vec<K>) {
    let before: HashMap<&K, &T> = old.iter().map(|t| (key(t), t)).collect();
    let after: HashMap<&K, &T> = new.iter().map(|t| (key(t), t)).collect();
    let changed = new
        .iter()
        .filter(|t| before.get(key(t)).is_none_or(|o| *o != *t))
        .cloned()
        .collect();
    let removed = old
        .iter()
        .filter(|t| !after.contains_key(key(t)))
        .map(|t| key(t).clone())
        .collect();
    (changed, removed)
}

/// The delta that turns `old` (at `base`) into `new` (at `version`).
pub fn diff(old: &Snapshot, new: &Snapshot, base: u64, version: u64) -> Delta {
    let (routes, removed_routes) = diff_items(&old.routes, &new.routes, |r| &r.key);
    let (tenants, removed_tenants) = diff_items(&old.tenants, &new.tenants, |t| &t.key);
    let (plans, removed_plans) = diff_items(&old.plans, &new.plans, |p| &p.key);
    Delta {
        base,
        version,
        routes,
        tenants,
        plans,
        removed_routes,
        removed_tenants,
        removed_plans,
    }
}

fn apply_items<T, K: Eq + Hash>(
    items: &mut Vec<T>,
    changed: &[T],
    removed: &[K],
    key: impl Fn(&T) -> &K,
) where
    T: Clone,
{
    let drop: std::collections::HashSet<&K> =
        removed.iter().chain(changed.iter().map(&key)).collect();
    items.retain(|t| !drop.contains(key(t)));
    items.extend(changed.iter().cloned());
}

impl Snapshot {
    /// Applies `delta` in place (the caller checks `delta.base`).
    pub fn apply(&mut self, delta: &Delta) {
        apply_items(
            &mut self.routes,
            &delta.routes,
            &delta.removed_routes,
            |r| &r.key,
        );
        apply_items(
            &mut self.tenants,
            &delta.tenants,
            &delta.removed_tenants,
            |t| &t.key,
        );
        apply_items(&mut self.plans, &delta.plans, &delta.removed_plans, |p| {
            &p.key
        });
        self.sort_routes();
        self.tenants.sort_by(|a, b| a.key.cmp(&b.key));
        self.plans.sort_by(|a, b| a.key.cmp(&b.key));
    }
}

/// One proxy's counters, reported to the operator, which sums them across proxies into
/// `Tenant.status.usage`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct UsageReport {
    /// The reporting proxy.
    pub proxy: String,
    /// Its counters (all of them: a report replaces the previous one).
    pub counters: Vec<UsageRecord>,
    /// Its metered calls' usage by token type and cost, per tenant and plan, in the current
    /// month (absent from proxies that predate it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub calls: Vec<CallUsageRecord>,
}

/// Tokens of metered calls, by how they are priced.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct TokenCounts {
    /// Prompt tokens neither read from nor written to a cache.
    pub input: u64,
    /// Prompt tokens read from a cache.
    pub cached_input: u64,
    /// Prompt tokens written to a cache.
    pub cache_write_input: u64,
    /// Output tokens other than reasoning.
    pub output: u64,
    /// Reasoning (thinking) tokens.
    pub reasoning: u64,
}

impl TokenCounts {
    /// Adds `other`, saturating.
    pub fn add(&mut self, other: &TokenCounts) {
        self.input = self.input.saturating_add(other.input);
        self.cached_input = self.cached_input.saturating_add(other.cached_input);
        self.cache_write_input = self
            .cache_write_input
            .saturating_add(other.cache_write_input);
        self.output = self.output.saturating_add(other.output);
        self.reasoning = self.reasoning.saturating_add(other.reasoning);
    }
}

/// A tenant's requests under one plan that meters usage (token or Cost quotas), in one calendar
/// month of the plan's time zone: how many, their tokens by type, and what they cost in the
/// plan's currency.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CallUsageRecord {
    /// `namespace/name` of the tenant.
    pub tenant: String,
    /// `namespace/name` of the plan.
    pub plan: String,
    /// Start of the month.
    pub period_start: jiff::Timestamp,
    /// End of the month.
    pub period_end: jiff::Timestamp,
    /// Requests settled (answered: those refunded after a backend failure are not counted).
    pub requests: u64,
    /// Their tokens (a call that never reported usage counts what it was charged: its bound).
    pub tokens: TokenCounts,
    /// What they cost, per-request prices included (fixed-point decimal).
    pub cost: rust_decimal::Decimal,
    /// The plan's `pricing.currency`; absent when the plan has no prices.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub currency: Option<String>,
}

/// One counter: a tenant's use of one quota of one plan in one period.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct UsageRecord {
    /// `namespace/name` of the tenant.
    pub tenant: String,
    /// `namespace/name` of the plan.
    pub plan: String,
    /// Quota name.
    pub quota: String,
    /// Period start.
    pub period_start: jiff::Timestamp,
    /// Period end.
    pub period_end: jiff::Timestamp,
    /// Used in the period.
    pub used: rust_decimal::Decimal,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::{BillingState, FailurePolicy};
    use crate::snapshot::KeyDigest;

    fn tenant(name: &str, state: BillingState) -> Tenant {
        Tenant {
            key: ObjectKey::new("ns", name),
            display_name: None,
            key_digests: vec![KeyDigest::of(name.as_bytes())],
            plan: None,
            billing_state: state,
            past_due_grace_until: None,
            paid_through: None,
            subscriptions: vec![],
        }
    }

    fn plan(name: &str) -> Plan {
        Plan {
            key: ObjectKey::new("ns", name),
            rate_limits: vec![],
            quotas: vec![],
            timezone: "UTC".into(),
            pricing: None,
            payment_url: None,
            failure_policy: FailurePolicy::FailClosed,
            reservation: Default::default(),
            allowed_models: vec![],
            past_due_grace_ms: 0,
        }
    }

    #[test]
    fn one_changed_tenant_among_many_sends_one_tenant() {
        let mut old = Snapshot::default();
        for i in 0..10_000 {
            old.tenants
                .push(tenant(&format!("t{i:05}"), BillingState::Active));
        }
        old.plans.push(plan("p"));
        let mut new = old.clone();
        new.tenants[4242].billing_state = BillingState::Suspended;
        new.plans.clear();
        let delta = diff(&old, &new, 1, 2);
        assert_eq!(delta.tenants.len(), 1);
        assert_eq!(delta.tenants[0].key.name, "t04242");
        assert_eq!(delta.removed_plans, vec![ObjectKey::new("ns", "p")]);
        let bytes = serde_json::to_vec(&ConfigMessage::Delta(delta.clone())).expect("json");
        assert!(
            bytes.len() < 1024,
            "one tenant's change is small on the wire: {} bytes",
            bytes.len()
        );
        let mut applied = old.clone();
        applied.apply(&delta);
        assert_eq!(applied, new);
    }

    #[test]
    fn identical_snapshots_have_an_empty_delta() {
        let s = Snapshot {
            tenants: vec![tenant("a", BillingState::Active)],
            ..Default::default()
        };
        assert!(diff(&s, &s, 1, 2).is_empty());
    }

    #[test]
    fn messages_round_trip_as_one_json_line() {
        let msg = ConfigMessage::Full {
            version: 7,
            snapshot: Snapshot::default(),
        };
        let line = serde_json::to_string(&msg).expect("json");
        assert!(!line.contains('\n'));
        assert_eq!(
            serde_json::from_str::<ConfigMessage>(&line).expect("parse"),
            msg
        );
    }
}
