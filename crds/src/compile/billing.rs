//! A tenant's effective billing state: what `spec.billing.state` says, or, for a tenant that
//! names a Stripe subscription, what Stripe last said (`status.stripe`), with the plan's grace
//! period for past due.
//!
//! A state typed in the spec other than Active wins over Stripe: suspending a tenant by hand
//! must not wait for its payments to fail. A tenant that names a subscription Stripe has not
//! spoken about yet is served as Active (fail open: the periodic read or the first event
//! settles it within one repair interval).

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};

use crate::resources::{Billing, BillingSource, BillingState, BillingStatus, StripeStatus};

/// The effective billing state, with its instants parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EffectiveBilling {
    /// The state requests are judged by.
    pub state: BillingState,
    /// Where it came from.
    pub source: BillingSource,
    /// When it began, when known.
    pub since: Option<Timestamp>,
    /// PastDue: served until then.
    pub grace_until: Option<Timestamp>,
}

impl EffectiveBilling {
    /// As the Tenant's `status.billing`.
    pub fn status(&self) -> BillingStatus {
        BillingStatus {
            state: self.state,
            source: self.source,
            since: self.since.map(|t| t.to_string()),
            grace_until: self.grace_until.map(|t| t.to_string()),
        }
    }
}

/// The effective state of a tenant with `spec`'s billing, `stripe` its status from Stripe, and
/// `grace` its plan's past-due grace period.
pub fn effective_billing(
    spec: &Billing,
    stripe: Option<&StripeStatus>,
    grace: Option<Duration>,
) -> EffectiveBilling {
    let typed = EffectiveBilling {
        state: spec.state,
        source: BillingSource::Spec,
        since: None,
        grace_until: None,
    };
    let (Some(named), BillingState::Active) = (spec.stripe.as_ref(), spec.state) else {
        return typed;
    };
    let Some(stripe) = stripe.filter(|s| s.describes(named)) else {
        return typed;
    };
    let since = stripe.since.parse::<Timestamp>().ok();
    // The grace is for a paying customer's retries. `unpaid`: Stripe has given up retrying;
    // `incomplete`: the first payment never went through, so nothing was ever paid for.
    let retrying = !matches!(
        stripe.subscription_status.as_deref(),
        Some("unpaid" | "incomplete")
    );
    let grace_until = match (stripe.state, since, grace) {
        (BillingState::PastDue, Some(since), Some(grace)) if retrying => Some(
            SignedDuration::try_from(grace)
                .ok()
                .and_then(|g| since.checked_add(g).ok())
                .unwrap_or(Timestamp::MAX),
        ),
        _ => None,
    };
    EffectiveBilling {
        state: stripe.state,
        source: BillingSource::Stripe,
        since,
        grace_until,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::StripeRef;

    fn stripe(state: BillingState, since: Timestamp) -> StripeStatus {
        StripeStatus {
            customer: "cus_1".into(),
            subscription: "sub_1".into(),
            subscription_status: Some("past_due".into()),
            state,
            since: since.to_string(),
            last_event: "evt_1".into(),
            last_event_time: since.to_string(),
            recent_events: vec!["evt_1".into()],
            updated_at: since.to_string(),
        }
    }

    fn named() -> Billing {
        Billing {
            stripe: Some(StripeRef {
                customer: "cus_1".into(),
                subscription: "sub_1".into(),
            }),
            ..Billing::default()
        }
    }

    /// A status written by hand or by another version, missing fields, still reads (a Tenant that
    /// does not would stop the operator's watch of every Tenant) and describes nothing.
    #[test]
    fn a_partial_stripe_status_reads_and_describes_nothing() {
        let tenant: crate::resources::Tenant = serde_json::from_value(serde_json::json!({
            "apiVersion": "tollgate.dev/v1alpha1", "kind": "Tenant",
            "metadata": {"name": "t", "namespace": "ns"},
            "spec": {"billing": {"stripe": {"customer": "cus_1", "subscription": "sub_1"}}},
            "status": {"stripe": {"state": "PastDue"}, "billing": {"state": "PastDue"}}
        }))
        .expect("a partial status reads");
        let status = tenant.status.expect("status");
        let stripe = status.stripe.expect("status.stripe");
        let named = tenant.spec.billing.stripe.clone().expect("named");
        assert!(!stripe.describes(&named));
        let effective = effective_billing(&tenant.spec.billing, Some(&stripe), None);
        assert_eq!(
            (effective.state, effective.source),
            (BillingState::Active, BillingSource::Spec)
        );
    }

    #[test]
    fn stripe_decides_unless_the_spec_says_otherwise() {
        let since = Timestamp::now() - SignedDuration::from_hours(1);
        let grace = Some(Duration::from_secs(3 * 3600));
        let past_due = stripe(BillingState::PastDue, since);
        let e = effective_billing(&named(), Some(&past_due), grace);
        assert_eq!(e.state, BillingState::PastDue);
        assert_eq!(e.source, BillingSource::Stripe);
        assert_eq!(e.since, Some(since));
        assert_eq!(e.grace_until, Some(since + SignedDuration::from_hours(3)));
        // No grace period on the plan: past due is refused at once.
        assert_eq!(
            effective_billing(&named(), Some(&past_due), None).grace_until,
            None
        );
        // Suspended by hand wins.
        let suspended = Billing {
            state: BillingState::Suspended,
            ..named()
        };
        let e = effective_billing(&suspended, Some(&past_due), grace);
        assert_eq!(
            (e.state, e.source),
            (BillingState::Suspended, BillingSource::Spec)
        );
        // Cancelled in Stripe gets no grace.
        let e = effective_billing(
            &named(),
            Some(&stripe(BillingState::Cancelled, since)),
            grace,
        );
        assert_eq!((e.state, e.grace_until), (BillingState::Cancelled, None));
        // Nor does unpaid: Stripe stopped retrying.
        let unpaid = StripeStatus {
            subscription_status: Some("unpaid".into()),
            ..past_due.clone()
        };
        let e = effective_billing(&named(), Some(&unpaid), grace);
        assert_eq!((e.state, e.grace_until), (BillingState::PastDue, None));
        // A grace too long to add is unending, not none.
        let e = effective_billing(&named(), Some(&past_due), Some(Duration::MAX));
        assert_eq!(e.grace_until, Some(Timestamp::MAX));
    }

    #[test]
    fn a_status_about_another_subscription_counts_for_nothing() {
        let since = Timestamp::now();
        let old = StripeStatus {
            subscription: "sub_before".into(),
            ..stripe(BillingState::Cancelled, since)
        };
        let e = effective_billing(&named(), Some(&old), None);
        assert_eq!(
            (e.state, e.source),
            (BillingState::Active, BillingSource::Spec)
        );
    }

    #[test]
    fn without_stripe_the_spec_decides() {
        let since = Timestamp::now();
        let plain = Billing {
            state: BillingState::PastDue,
            ..Billing::default()
        };
        // status.stripe left over from an earlier spec counts no more.
        let e = effective_billing(&plain, Some(&stripe(BillingState::Active, since)), None);
        assert_eq!(
            (e.state, e.source),
            (BillingState::PastDue, BillingSource::Spec)
        );
        // Stripe has not spoken yet: served as the spec says (Active).
        let e = effective_billing(&named(), None, None);
        assert_eq!(
            (e.state, e.source),
            (BillingState::Active, BillingSource::Spec)
        );
    }
}
