//! Reading a Stripe event: which customer and subscription it is about, and what it says about
//! paying. Only the fields Tollgate uses are read, in both the current API shape and the older
//! one (an invoice names its subscription under `parent.subscription_details` since
//! 2025-03-31, under `subscription` before), so the endpoint's API version does not matter.

use jiff::Timestamp;
use serde_json::Value;
use tollgate_crds::resources::BillingState;

/// A Stripe subscription's `status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SubscriptionStatus {
    /// `active`.
    Active,
    /// `trialing`.
    Trialing,
    /// `past_due`: a renewal payment failed; Stripe is retrying.
    PastDue,
    /// `unpaid`: retries are exhausted and the subscription stays in place unpaid.
    Unpaid,
    /// `canceled`.
    Canceled,
    /// `paused`: a trial ended without a payment method.
    Paused,
    /// `incomplete`: the first payment has not succeeded yet.
    Incomplete,
    /// `incomplete_expired`: the first payment never succeeded.
    IncompleteExpired,
}

impl SubscriptionStatus {
    /// Parses Stripe's spelling; `None` for a status this version does not know.
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "active" => Self::Active,
            "trialing" => Self::Trialing,
            "past_due" => Self::PastDue,
            "unpaid" => Self::Unpaid,
            "canceled" => Self::Canceled,
            "paused" => Self::Paused,
            "incomplete" => Self::Incomplete,
            "incomplete_expired" => Self::IncompleteExpired,
            _ => return None,
        })
    }

    /// Stripe's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Trialing => "trialing",
            Self::PastDue => "past_due",
            Self::Unpaid => "unpaid",
            Self::Canceled => "canceled",
            Self::Paused => "paused",
            Self::Incomplete => "incomplete",
            Self::IncompleteExpired => "incomplete_expired",
        }
    }

    /// The billing state a tenant with this subscription has. Past due and incomplete get the
    /// plan's grace period (Stripe is still collecting); unpaid is past due with the grace
    /// already counted from when the subscription first fell past due.
    pub fn state(self) -> BillingState {
        match self {
            Self::Active | Self::Trialing => BillingState::Active,
            Self::PastDue | Self::Unpaid | Self::Incomplete => BillingState::PastDue,
            Self::Paused => BillingState::Suspended,
            Self::Canceled | Self::IncompleteExpired => BillingState::Cancelled,
        }
    }
}

/// What an event (or a read of the subscription) says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    /// The subscription's status (`customer.subscription.created`, `.updated`, `.deleted`,
    /// `.paused`, `.resumed`, or a read through the API).
    Subscription(SubscriptionStatus),
    /// `invoice.paid`.
    InvoicePaid,
    /// `invoice.payment_failed`.
    PaymentFailed,
}

/// An event about a subscription.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// `evt_…`.
    pub id: String,
    /// When Stripe created it: the order of events.
    pub created: Timestamp,
    /// Its type, as Stripe names it.
    pub kind: String,
    /// The customer (`cus_…`).
    pub customer: String,
    /// The subscription (`sub_…`); `None` for an invoice outside any subscription.
    pub subscription: Option<String>,
    /// What it says.
    pub signal: Signal,
}

/// A delivery, read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// An event Tollgate acts on.
    Event(Event),
    /// An event of a type Tollgate does not act on (acknowledged, not applied).
    OtherType {
        /// `evt_…`.
        id: String,
        /// Its type.
        kind: String,
    },
}

/// Why a delivery could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EventError {
    /// Not JSON, or not an event.
    #[error("not a Stripe event: {0}")]
    NotAnEvent(String),
    /// A field Tollgate needs is missing or has the wrong type.
    #[error("{kind} event {id} has no usable {field}")]
    Missing {
        /// `evt_…`.
        id: String,
        /// Its type.
        kind: String,
        /// The field.
        field: &'static str,
    },
    /// A subscription status this version does not know.
    #[error("{kind} event {id} has an unknown subscription status {status:?}")]
    UnknownStatus {
        /// `evt_…`.
        id: String,
        /// Its type.
        kind: String,
        /// The status.
        status: String,
    },
}

/// An id field that may be expanded into an object (`"cus_1"` or `{"id": "cus_1", …}`).
fn id_of(value: &Value) -> Option<String> {
    match value {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Object(o) => o.get("id").and_then(Value::as_str).map(str::to_owned),
        _ => None,
    }
}

/// Reads a delivered body.
pub fn parse(body: &[u8]) -> Result<Delivery, EventError> {
    let doc: Value =
        serde_json::from_slice(body).map_err(|e| EventError::NotAnEvent(e.to_string()))?;
    if doc["object"] != "event" {
        return Err(EventError::NotAnEvent("\"object\" is not \"event\"".into()));
    }
    let id = doc["id"]
        .as_str()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| EventError::NotAnEvent("no \"id\"".into()))?
        .to_owned();
    let kind = doc["type"]
        .as_str()
        .ok_or_else(|| EventError::NotAnEvent("no \"type\"".into()))?
        .to_owned();
    let missing = |field| EventError::Missing {
        id: id.clone(),
        kind: kind.clone(),
        field,
    };
    let object = &doc["data"]["object"];
    let (signal, subscription) = match kind.as_str() {
        "customer.subscription.created"
        | "customer.subscription.updated"
        | "customer.subscription.deleted"
        | "customer.subscription.paused"
        | "customer.subscription.resumed" => {
            let status = object["status"].as_str().ok_or_else(|| missing("status"))?;
            let status =
                SubscriptionStatus::parse(status).ok_or_else(|| EventError::UnknownStatus {
                    id: id.clone(),
                    kind: kind.clone(),
                    status: status.to_owned(),
                })?;
            let subscription = id_of(&object["id"]).ok_or_else(|| missing("data.object.id"))?;
            (Signal::Subscription(status), Some(subscription))
        }
        "invoice.paid" | "invoice.payment_failed" => {
            let subscription = id_of(&object["parent"]["subscription_details"]["subscription"])
                .or_else(|| id_of(&object["subscription"]));
            let signal = if kind == "invoice.paid" {
                Signal::InvoicePaid
            } else {
                Signal::PaymentFailed
            };
            (signal, subscription)
        }
        _ => return Ok(Delivery::OtherType { id, kind }),
    };
    let created = doc["created"]
        .as_i64()
        .and_then(|t| Timestamp::from_second(t).ok())
        .ok_or_else(|| missing("created"))?;
    let customer = id_of(&object["customer"]).ok_or_else(|| missing("data.object.customer"))?;
    Ok(Delivery::Event(Event {
        id,
        created,
        kind,
        customer,
        subscription,
        signal,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn body(value: Value) -> Vec<u8> {
        serde_json::to_vec(&value).expect("json")
    }

    #[test]
    fn subscription_events_name_their_status() {
        let delivery = parse(&body(json!({
            "id": "evt_1", "object": "event", "created": 1_700_000_000,
            "type": "customer.subscription.updated",
            "data": {"object": {"id": "sub_1", "object": "subscription",
                                "customer": "cus_1", "status": "past_due"},
                     "previous_attributes": {"status": "active"}}
        })))
        .expect("parsed");
        assert_eq!(
            delivery,
            Delivery::Event(Event {
                id: "evt_1".into(),
                created: Timestamp::from_second(1_700_000_000).expect("t"),
                kind: "customer.subscription.updated".into(),
                customer: "cus_1".into(),
                subscription: Some("sub_1".into()),
                signal: Signal::Subscription(SubscriptionStatus::PastDue),
            })
        );
    }

    #[test]
    fn invoices_name_their_subscription_in_either_api_shape() {
        for object in [
            json!({"customer": "cus_1", "parent": {"type": "subscription_details",
                   "subscription_details": {"subscription": "sub_1"}}}),
            json!({"customer": {"id": "cus_1", "object": "customer"}, "subscription": "sub_1"}),
        ] {
            let Delivery::Event(event) = parse(&body(json!({
                "id": "evt_2", "object": "event", "created": 1_700_000_001,
                "type": "invoice.payment_failed", "data": {"object": object}
            })))
            .expect("parsed") else {
                panic!("an event");
            };
            assert_eq!(event.customer, "cus_1");
            assert_eq!(event.subscription.as_deref(), Some("sub_1"));
            assert_eq!(event.signal, Signal::PaymentFailed);
        }
    }

    #[test]
    fn other_types_are_acknowledged_and_bad_bodies_refused() {
        assert_eq!(
            parse(&body(
                json!({"id": "evt_3", "object": "event", "created": 1,
                               "type": "charge.succeeded", "data": {"object": {}}})
            )),
            Ok(Delivery::OtherType {
                id: "evt_3".into(),
                kind: "charge.succeeded".into()
            })
        );
        assert!(matches!(parse(b"not json"), Err(EventError::NotAnEvent(_))));
        assert!(matches!(
            parse(&body(
                json!({"id": "evt_4", "object": "event", "created": 1,
                               "type": "customer.subscription.updated",
                               "data": {"object": {"id": "sub_1", "customer": "cus_1",
                                                   "status": "on_holiday"}}})
            )),
            Err(EventError::UnknownStatus { .. })
        ));
        assert!(matches!(
            parse(&body(
                json!({"id": "evt_5", "object": "event", "created": 1,
                               "type": "invoice.paid", "data": {"object": {}}})
            )),
            Err(EventError::Missing {
                field: "data.object.customer",
                ..
            })
        ));
    }

    #[test]
    fn every_status_maps_to_a_state() {
        for (text, state) in [
            ("active", BillingState::Active),
            ("trialing", BillingState::Active),
            ("past_due", BillingState::PastDue),
            ("unpaid", BillingState::PastDue),
            ("incomplete", BillingState::PastDue),
            ("paused", BillingState::Suspended),
            ("canceled", BillingState::Cancelled),
            ("incomplete_expired", BillingState::Cancelled),
        ] {
            let status = SubscriptionStatus::parse(text).expect(text);
            assert_eq!(status.as_str(), text);
            assert_eq!(status.state(), state, "{text}");
        }
    }
}
