//! The Tenants that name a Stripe customer, and writing what Stripe said into their status.

use std::sync::Arc;

use jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use tollgate_crds::resources::{StripeRef, StripeStatus, Tenant};
use tollgate_crds::snapshot::ObjectKey;

use super::decide::{Decision, Observation, decide, is_tie};
use crate::watch::{Caches, all};

/// The field manager of `status.stripe` (the leader's status writer owns the rest of the status).
pub const FIELD_MANAGER: &str = "tollgate-operator-stripe";

/// Attempts at a conditional write before giving up (each conflict means another writer just
/// wrote the Tenant; the next attempt decides on what it wrote).
const ATTEMPTS: usize = 5;

/// What happened to one Tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// The status now says this.
    Written {
        /// What it says.
        status: StripeStatus,
        /// An event of the same second as the one before it decided by arrival order
        /// ([`super::decide::is_tie`]): worth a read of the subscription.
        tied: bool,
    },
    /// Applied before.
    Duplicate,
    /// Older than the newest observation applied.
    OutOfOrder {
        /// That observation's time.
        newest: Timestamp,
    },
    /// A read that agrees with the status.
    Unchanged,
    /// The Tenant, as the API server has it now, no longer names this customer and subscription.
    NotNamed,
}

/// Why a write failed.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The API server refused or could not be reached.
    #[error("{0}")]
    Api(#[from] kube::Error),
    /// Other writers kept winning.
    #[error("the Tenant kept changing under {ATTEMPTS} attempts")]
    Contended,
}

/// Tenants with `spec.billing.stripe`, read from the operator's caches and written through the
/// API server.
#[derive(Clone)]
pub struct StripeTenants {
    /// The API client.
    pub client: kube::Client,
    /// The watched Tenants.
    pub caches: Caches,
}

impl std::fmt::Debug for StripeTenants {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StripeTenants").finish_non_exhaustive()
    }
}

impl StripeTenants {
    /// Every watched Tenant that names `customer`.
    pub fn naming_customer(&self, customer: &str) -> Vec<Arc<Tenant>> {
        all(&self.caches.tenants)
            .into_iter()
            .filter(|t| {
                t.spec
                    .billing
                    .stripe
                    .as_ref()
                    .is_some_and(|s| s.customer == customer)
            })
            .collect()
    }

    /// Every watched Tenant that names a Stripe subscription.
    pub fn with_stripe(&self) -> Vec<Arc<Tenant>> {
        all(&self.caches.tenants)
            .into_iter()
            .filter(|t| t.spec.billing.stripe.is_some())
            .collect()
    }

    /// Decides on the Tenant as the API server has it now (if it still names `about`) and
    /// writes the result, on condition that nobody wrote the Tenant in between (retried on
    /// conflict).
    pub async fn apply(
        &self,
        tenant: &ObjectKey,
        about: &StripeRef,
        seen: Observation<'_>,
    ) -> Result<Applied, WriteError> {
        let api: Api<Tenant> = Api::namespaced(self.client.clone(), &tenant.namespace);
        for _ in 0..ATTEMPTS {
            // The object (RBAC grants get on tenants, patch on tenants/status).
            let current = api.get(&tenant.name).await?;
            if current.spec.billing.stripe.as_ref() != Some(about) {
                return Ok(Applied::NotNamed);
            }
            let stripe = current.status.as_ref().and_then(|s| s.stripe.as_ref());
            let status = match decide(stripe, about, seen, Timestamp::now()) {
                Decision::Apply(status) => status,
                Decision::Duplicate => return Ok(Applied::Duplicate),
                Decision::OutOfOrder { newest } => return Ok(Applied::OutOfOrder { newest }),
                Decision::Unchanged => return Ok(Applied::Unchanged),
            };
            let patch = json!({
                "apiVersion": "tollgate.dev/v1alpha1",
                "kind": "Tenant",
                "metadata": {
                    "name": tenant.name,
                    "namespace": tenant.namespace,
                    // The precondition: written only over the status just decided on.
                    "resourceVersion": current.metadata.resource_version,
                },
                "status": {"stripe": status},
            });
            let params = PatchParams::apply(FIELD_MANAGER).force();
            match api
                .patch_status(&tenant.name, &params, &Patch::Apply(&patch))
                .await
            {
                Ok(_) => {
                    let tied = is_tie(stripe, seen, &status);
                    return Ok(Applied::Written { status, tied });
                }
                Err(kube::Error::Api(e)) if e.code == 409 => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(WriteError::Contended)
    }
}
