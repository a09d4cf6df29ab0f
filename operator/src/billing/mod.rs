//! Payment state in from Stripe: a Tenant that names its Stripe customer and subscription
//! (`spec.billing.stripe`) gets its billing state from Stripe's events and a periodic read.
//!
//! - [`signature`]: the `Stripe-Signature` check; [`event`]: what an event says;
//! - [`decide`]: whether it changes the Tenant's `status.stripe` (duplicates and older events
//!   do not); [`tenants`]: finding the Tenants and writing their status conditionally;
//! - [`receiver`]: `POST /stripe/webhook`, on every replica; [`repair`]: the leader's periodic
//!   read of every named subscription.
//!
//! What the proxies enforce follows from `status.stripe` through `compile()` (the effective
//! state, with the plan's grace period for past due), like any other change to a Tenant.

pub mod decide;
pub mod event;
pub mod receiver;
pub mod repair;
pub mod signature;
pub mod tenants;
