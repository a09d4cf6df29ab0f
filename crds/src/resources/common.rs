//! What the three resources share: conditions, object references and the string patterns of
//! their schemas.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Standard Kubernetes condition (type, status, reason, message, lastTransitionTime, observedGeneration).
pub type Condition = k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

/// Duration strings such as `500ms`, `1s`, `10m`, `1h`, `1h30m` (Go duration syntax, non-negative, no `us`).
pub(crate) const DURATION_PATTERN: &str = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$";
/// Non-negative decimal strings with at most 6 fractional digits: `"100000"`, `"50.00"`, `"0.000150"`.
pub(crate) const DECIMAL_PATTERN: &str = r"^[0-9]{1,15}(\.[0-9]{1,6})?$";
/// A DNS-1123 label: lower-case alphanumerics and '-', starting and ending alphanumeric.
pub(crate) const DNS_LABEL_PATTERN: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";
/// A Kubernetes object name (DNS-1123 subdomain).
pub(crate) const OBJECT_NAME_PATTERN: &str =
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";

/// A reference to another object of the expected kind in the same namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LocalObjectReference {
    /// Name of the referenced object, in the same namespace as the referrer.
    #[schemars(length(min = 1, max = 253), regex(pattern = OBJECT_NAME_PATTERN))]
    pub name: String,
}

impl LocalObjectReference {
    /// A reference to `name`.
    pub fn new(name: impl Into<String>) -> Self {
        Self { name: name.into() }
    }
}
