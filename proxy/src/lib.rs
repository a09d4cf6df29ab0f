//! Tollgate's proxy: authenticates API callers by key and enforces their plans at the ingress.
//!
//! A request's path through the code, folder by folder:
//! - [`listen`]: accepts connections (TCP, TLS, connection limits) and reads requests — our own
//!   HTTP/1.1 engine (`listen::h1`) or hyper for HTTP/2 and hand-offs (`listen::by_hyper`).
//! - [`http1`]: the wire format both sides share: header lines kept as received, the client's
//!   headers read from them, lazily armed timers.
//! - [`pipeline`]: the checks in api.md's order (path, route, key, subscription, approval,
//!   billing, quotas, rate limits), each a function of the request and one configuration version
//!   (`pipeline::checks`), then the response: problem bodies, RateLimit and lifecycle headers.
//! - [`quota`]: plans as the counters see them, the counter stores (memory, Redis) and the
//!   RateLimit header rendering.
//! - [`upstream`]: the request the backend sees, pooled backend connections, the exchange.
//! - [`llm`]: calls whose usage is metered (tokens, cost): the request read and its usage
//!   reserved before it goes upstream, the response's usage read as it streams and settled.
//! - [`telemetry`]: Prometheus metrics, the access log, throttled warnings.
//!
//! And the control path:
//! - [`config`]: one configuration version indexed for the hot path (routes by host and path,
//!   tenants by key digest, plans).
//! - [`sources`]: where versions come from: manifests in a directory (standalone) or the
//!   operator's config stream (fleet).
//! - [`admin`]: the admin listener (`/metrics`, `/usage`, health).
//! - [`run`]: the process: runtime, store, listeners, signals.
#![forbid(unsafe_code)]

pub mod admin;
pub mod cli;
pub mod config;
pub mod fast_map;
pub mod http1;
pub mod listen;
pub mod llm;
pub mod pipeline;
pub mod quota;
pub mod run;
pub mod sources;
pub mod telemetry;
pub mod upstream;

pub use run::run;
pub use tollgate_crds::process::init_logging;
