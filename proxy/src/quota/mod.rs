//! The quota engine: calendar quotas (402) and rate limits (429) per (tenant, plan).
//!
//! Counters are per (tenant, plan, quota): every route a tenant calls under the same plan draws on
//! the same allowance. They live behind [`CounterStore`] so the hot path does not care whether they
//! are in memory (standalone) or shared through Redis (fleet).
//!
//! Semantics, whatever the store:
//! - Quotas are checked before rate limits; a request is charged only if every check passes, and
//!   check-and-charge is atomic per (tenant, plan): concurrent requests never overshoot a limit.
//! - A Requests quota admits while `used + 1 <= limit`; token and Cost quotas, charged after the
//!   response, admit while `used < limit` (the last request may overshoot by its own usage).
//! - Counters key on the period's start; a new period starts from zero.

pub mod decision;
pub mod gcra;
pub mod headers;
pub mod memory;
pub mod persist;
pub mod plan;
pub mod redis;
pub mod store;

pub use decision::{Admission, LimitState, Metered};
pub use memory::MemoryStore;
pub use plan::PlanEntry;
pub use store::{CounterStore, Subject, UsageRow};
