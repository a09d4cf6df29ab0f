//! Calls whose usage is metered: token and Cost quotas that a budget can trust.
//!
//! In order, for a route with token metering (`metering: OpenAI | Anthropic | Gemini`) under a
//! plan with token or Cost quotas:
//! 1. [`request`]: the request body is read (up to [`request::MAX_BODY`]): the model, the call's
//!    own output bound, and for a streamed OpenAI chat request that did not ask for usage, the
//!    body rewritten to ask (`stream_options.include_usage`).
//! 2. [`reservation`]: what the call may use, estimated from the body's size, its bound and
//!    [`estimate`] (recent calls of the model); the counter store admits the call only if the
//!    reservation fits in every quota, and takes it (402 before the backend is called otherwise).
//! 3. [`meter`]: the response is read as it streams to the client; [`formats`] knows where each
//!    provider reports usage, [`json_scan`] finds it in a JSON body of any size, and [`usage`]
//!    prices it. When the body ends, the usage replaces the reservation in the store, and
//!    [`ledger`] adds it to the tenant's month (tokens by type, cost).
//!
//! 4. [`translate`]: on a route whose callers speak another API than its backend, the call is
//!    translated before it goes (OpenAI Chat Completions <-> Anthropic Messages, -> Gemini) and
//!    the answer after it was metered.
//!
//! A budget is therefore exceeded only by what calls in flight when it runs out use beyond their
//! reservations (docs/reference.md states the bound).

pub mod estimate;
pub mod formats;
pub mod json_scan;
pub mod ledger;
pub mod meter;
pub mod prompt;
pub mod request;
pub mod reservation;
pub mod translate;
pub mod usage;

pub use estimate::Estimates;
pub use ledger::Ledger;
pub use meter::{Charge, Meter, MeteredBody, Settlement};
pub use request::CallRequest;
