//! What the proxy tells its operators: Prometheus metrics, the access log, and warnings throttled
//! so that a failing backend or store does not flood the log.

pub mod access_log;
pub mod metrics;
pub mod warn_throttle;
