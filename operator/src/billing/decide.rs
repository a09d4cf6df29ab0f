//! Whether an event (or a read of the subscription) changes what a Tenant's status records from
//! Stripe, and how. Pure: the receiver and the repair loop both call [`decide`] on the status they
//! just read, and write the result with that read's resourceVersion, so two replicas (or a
//! replica and the repair loop) racing on one Tenant cannot interleave.
//!
//! - An event applied before (its id is among the recent ones) is a duplicate.
//! - An event created before the newest one applied is out of order and changes nothing: Stripe
//!   does not promise delivery order, and an old `past_due` must not undo a newer `active`.
//!   Events created in the same second are applied in the order they arrive (Stripe's
//!   timestamps have one-second resolution); when such an event changes what the status says,
//!   [`is_tie`] tells the receiver to read the subscription at once, which settles it.

use jiff::Timestamp;
use tollgate_crds::resources::{BillingState, StripeRef, StripeStatus};

use super::event::{Signal, SubscriptionStatus};

/// How many applied event ids a Tenant's status keeps for recognising redeliveries. Stripe
/// retries an undelivered event for three days; by then newer events have made an old one out of
/// order anyway, so a short list suffices.
pub const RECENT_EVENTS: usize = 16;

/// What the newest applied observation was, when it is not an event.
pub const SUBSCRIPTION_READ: &str = "subscription-read";

/// The outcome for one Tenant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Write this status.
    Apply(StripeStatus),
    /// Applied before; nothing to do.
    Duplicate,
    /// Created before the newest observation applied; nothing to do.
    OutOfOrder {
        /// The newest applied observation's time.
        newest: Timestamp,
    },
    /// A read that agrees with the status (nothing written: a read of every subscription every
    /// interval must not become a write of every Tenant).
    Unchanged,
}

/// What one observation says, and where it came from.
#[derive(Clone, Copy, Debug)]
pub struct Observation<'a> {
    /// The event's id; `None` for a read of the subscription.
    pub event: Option<&'a str>,
    /// When the event was created, or when the read was made.
    pub at: Timestamp,
    /// What it says.
    pub signal: Signal,
}

/// Decides for a Tenant that names `named` and whose status records `current` (`None`: nothing
/// from Stripe yet; a status about what the Tenant named before counts as nothing).
pub fn decide(
    current: Option<&StripeStatus>,
    named: &StripeRef,
    seen: Observation<'_>,
    now: Timestamp,
) -> Decision {
    let current = current.filter(|c| c.describes(named));
    let last: Option<Timestamp> = current.and_then(|c| c.last_event_time.parse().ok());
    if let (Some(id), Some(c)) = (seen.event, current)
        && c.recent_events.iter().any(|e| e == id)
    {
        return Decision::Duplicate;
    }
    if let Some(newest) = last
        && seen.at < newest
    {
        return Decision::OutOfOrder { newest };
    }
    let previous_state = current.map_or(BillingState::Active, |c| c.state);
    let previous_status = current.and_then(|c| c.subscription_status.clone());
    let (state, subscription_status) = match seen.signal {
        Signal::Subscription(status) => (status.state(), Some(status.as_str().to_owned())),
        // An invoice moves only between good standing and past due: a paid invoice does not
        // revive a cancelled or paused subscription, and a failed one does not make a cancelled
        // subscription merely past due.
        // When an invoice moves the state, the subscription's status moves with it (Stripe sets
        // a subscription past_due when its invoice fails and active when it is paid); keeping
        // the old one would misdescribe it (an `unpaid` kept after a payment would deny the
        // grace of the next failure).
        Signal::PaymentFailed if previous_state == BillingState::Active => (
            BillingState::PastDue,
            Some(SubscriptionStatus::PastDue.as_str().to_owned()),
        ),
        Signal::InvoicePaid if previous_state == BillingState::PastDue => (
            BillingState::Active,
            Some(SubscriptionStatus::Active.as_str().to_owned()),
        ),
        Signal::PaymentFailed | Signal::InvoicePaid => (previous_state, previous_status.clone()),
    };
    if seen.event.is_none()
        && current.is_some_and(|c| c.state == state && c.subscription_status == subscription_status)
    {
        return Decision::Unchanged;
    }
    let since = match current {
        Some(c) if c.state == state => c.since.clone(),
        _ => seen.at.to_string(),
    };
    let mut recent_events = current.map(|c| c.recent_events.clone()).unwrap_or_default();
    if let Some(id) = seen.event {
        recent_events.push(id.to_owned());
        let excess = recent_events.len().saturating_sub(RECENT_EVENTS);
        recent_events.drain(..excess);
    }
    Decision::Apply(StripeStatus {
        customer: named.customer.clone(),
        subscription: named.subscription.clone(),
        subscription_status,
        state,
        since,
        last_event: seen.event.unwrap_or(SUBSCRIPTION_READ).to_owned(),
        last_event_time: seen.at.to_string(),
        recent_events,
        updated_at: now.to_string(),
    })
}

/// Whether `seen`, an event, was created in the same second as the newest observation in
/// `current` and `applied` says something else than `current`: arrival order decided between
/// them, and only a read of the subscription tells which is right.
pub fn is_tie(
    current: Option<&StripeStatus>,
    seen: Observation<'_>,
    applied: &StripeStatus,
) -> bool {
    let Some(current) = current
        .filter(|c| c.customer == applied.customer && c.subscription == applied.subscription)
    else {
        return false;
    };
    seen.event.is_some()
        && current.last_event_time.parse::<Timestamp>().ok() == Some(seen.at)
        && (current.state != applied.state
            || current.subscription_status != applied.subscription_status)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::billing::event::SubscriptionStatus;

    /// An instant `offset_secs` from one fixed "now" (taken once from the clock: the logic never
    /// compares instants with the clock).
    fn at(offset_secs: i64) -> Timestamp {
        static NOW: std::sync::OnceLock<Timestamp> = std::sync::OnceLock::new();
        *NOW.get_or_init(Timestamp::now) + jiff::SignedDuration::from_secs(offset_secs)
    }

    fn event(id: &str, secs: i64, signal: Signal) -> Observation<'_> {
        Observation {
            event: Some(id),
            at: at(secs),
            signal,
        }
    }

    fn named() -> StripeRef {
        StripeRef {
            customer: "cus_1".into(),
            subscription: "sub_1".into(),
        }
    }

    fn applied(decision: Decision) -> StripeStatus {
        match decision {
            Decision::Apply(status) => status,
            other => panic!("expected Apply, got {other:?}"),
        }
    }

    const PAST_DUE: Signal = Signal::Subscription(SubscriptionStatus::PastDue);
    const ACTIVE: Signal = Signal::Subscription(SubscriptionStatus::Active);

    #[test]
    fn past_due_then_paid_then_cancelled() {
        let now = at(0);
        let s1 = applied(decide(None, &named(), event("evt_1", -30, PAST_DUE), now));
        assert_eq!(s1.state, BillingState::PastDue);
        assert_eq!(s1.since, at(-30).to_string());
        // Still past due (unpaid): the grace keeps counting from the first past-due event.
        let unpaid = Signal::Subscription(SubscriptionStatus::Unpaid);
        let s2 = applied(decide(
            Some(&s1),
            &named(),
            event("evt_2", -20, unpaid),
            now,
        ));
        assert_eq!(
            (s2.state, s2.since.as_str()),
            (BillingState::PastDue, s1.since.as_str())
        );
        assert_eq!(s2.subscription_status.as_deref(), Some("unpaid"));
        let s3 = applied(decide(
            Some(&s2),
            &named(),
            event("evt_3", -10, Signal::InvoicePaid),
            now,
        ));
        assert_eq!(s3.state, BillingState::Active);
        assert_eq!(s3.since, at(-10).to_string());
        // The subscription's status moves with the paid invoice: it is no longer `unpaid`.
        assert_eq!(s3.subscription_status.as_deref(), Some("active"));
        let cancelled = Signal::Subscription(SubscriptionStatus::Canceled);
        let s4 = applied(decide(
            Some(&s3),
            &named(),
            event("evt_4", -5, cancelled),
            now,
        ));
        assert_eq!(s4.state, BillingState::Cancelled);
        assert_eq!(s4.recent_events, ["evt_1", "evt_2", "evt_3", "evt_4"]);
        // A paid invoice does not revive a cancelled subscription.
        let s5 = applied(decide(
            Some(&s4),
            &named(),
            event("evt_5", -4, Signal::InvoicePaid),
            now,
        ));
        assert_eq!(s5.state, BillingState::Cancelled);
    }

    #[test]
    fn redeliveries_and_older_events_change_nothing() {
        let now = at(0);
        let s1 = applied(decide(None, &named(), event("evt_new", -10, ACTIVE), now));
        assert_eq!(
            decide(Some(&s1), &named(), event("evt_new", -10, ACTIVE), now),
            Decision::Duplicate
        );
        assert_eq!(
            decide(Some(&s1), &named(), event("evt_old", -60, PAST_DUE), now),
            Decision::OutOfOrder {
                newest: s1.last_event_time.parse().expect("time")
            }
        );
        // The same second: applied in arrival order, and a tie when it says something else.
        let tied = event("evt_same", -10, PAST_DUE);
        let same = applied(decide(Some(&s1), &named(), tied, now));
        assert_eq!(same.state, BillingState::PastDue);
        assert!(is_tie(Some(&s1), tied, &same));
        // Not a tie: a later second, or the same second saying the same.
        let later = event("evt_later", -9, PAST_DUE);
        assert!(!is_tie(
            Some(&s1),
            later,
            &applied(decide(Some(&s1), &named(), later, now))
        ));
        let agreeing = event("evt_agree", -10, ACTIVE);
        assert!(!is_tie(
            Some(&s1),
            agreeing,
            &applied(decide(Some(&s1), &named(), agreeing, now))
        ));
    }

    #[test]
    fn a_failed_payment_makes_an_active_tenant_past_due_only() {
        let now = at(0);
        let s1 = applied(decide(
            None,
            &named(),
            event("evt_1", -10, Signal::PaymentFailed),
            now,
        ));
        assert_eq!(s1.state, BillingState::PastDue);
        assert_eq!(s1.subscription_status.as_deref(), Some("past_due"));
        let paused = Signal::Subscription(SubscriptionStatus::Paused);
        let s2 = applied(decide(Some(&s1), &named(), event("evt_2", -9, paused), now));
        let s3 = applied(decide(
            Some(&s2),
            &named(),
            event("evt_3", -8, Signal::PaymentFailed),
            now,
        ));
        assert_eq!(s3.state, BillingState::Suspended);
    }

    #[test]
    fn reads_write_only_what_changed_and_outrank_older_events() {
        let now = at(0);
        let read = |status, secs| Observation {
            event: None,
            at: at(secs),
            signal: Signal::Subscription(status),
        };
        let s1 = applied(decide(
            None,
            &named(),
            read(SubscriptionStatus::Active, -20),
            now,
        ));
        assert_eq!(s1.last_event, SUBSCRIPTION_READ);
        assert!(s1.recent_events.is_empty());
        assert_eq!(
            decide(
                Some(&s1),
                &named(),
                read(SubscriptionStatus::Active, -10),
                now
            ),
            Decision::Unchanged
        );
        let s2 = applied(decide(
            Some(&s1),
            &named(),
            read(SubscriptionStatus::PastDue, -5),
            now,
        ));
        assert_eq!(s2.state, BillingState::PastDue);
        // An event created before that read, delivered late, does not undo it.
        assert!(matches!(
            decide(Some(&s2), &named(), event("evt_late", -6, ACTIVE), now),
            Decision::OutOfOrder { .. }
        ));
    }

    #[test]
    fn a_status_about_another_subscription_is_started_afresh() {
        let now = at(0);
        let old = applied(decide(None, &named(), event("evt_1", -10, ACTIVE), now));
        let renamed = StripeRef {
            subscription: "sub_2".into(),
            ..named()
        };
        // An event of the new subscription older than the old one's newest still applies.
        let cancelled = Signal::Subscription(SubscriptionStatus::Canceled);
        let fresh = applied(decide(
            Some(&old),
            &renamed,
            event("evt_0", -20, cancelled),
            now,
        ));
        assert_eq!(fresh.subscription, "sub_2");
        assert_eq!(fresh.recent_events, ["evt_0"]);
        assert_eq!(fresh.state, BillingState::Cancelled);
    }

    #[test]
    fn the_recent_list_is_bounded() {
        let now = at(0);
        let ids: Vec<String> = (0..RECENT_EVENTS + 5).map(|i| format!("evt_{i}")).collect();
        let mut status: Option<StripeStatus> = None;
        for (i, id) in ids.iter().enumerate() {
            let secs = i64::try_from(i).expect("small") - 100;
            status = Some(applied(decide(
                status.as_ref(),
                &named(),
                event(id, secs, ACTIVE),
                now,
            )));
        }
        let status = status.expect("applied");
        assert_eq!(status.recent_events.len(), RECENT_EVENTS);
        assert_eq!(status.recent_events.last(), ids.last());
    }
}
