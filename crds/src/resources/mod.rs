//! The three Tollgate custom resources, exactly as users write them (api.md).
//!
//! These types are the schema: `crdgen` renders them into `deploy/crds.yaml`, doc comments become the
//! descriptions `kubectl explain` shows, and `x_kube(validation)` attributes become the CEL rules the
//! API server enforces at admission. Anything the schema cannot check is checked by [`crate::compile`].

mod api_route;
mod common;
mod quota_policy;
mod tenant;

pub use api_route::*;
pub use common::{Condition, LocalObjectReference};
pub use quota_policy::*;
pub use tenant::*;

/// The API group of every Tollgate resource.
pub const GROUP: &str = "tollgate.dev";
/// The served and stored version.
pub const VERSION: &str = "v1alpha1";

/// Condition types, reasons and builders shared by the operator and the tests.
pub mod conditions {
    /// QuotaPolicy and ApiRoute: the object is valid and part of the compiled configuration.
    pub const ACCEPTED: &str = "Accepted";
    /// ApiRoute: how many connected proxies run a configuration that contains this version of the route.
    pub const PROGRAMMED: &str = "Programmed";
    /// Tenant: keys, plan and subscriptions resolved; the tenant can call its APIs.
    pub const READY: &str = "Ready";
}
