//! Labels this replica's pod with its role in leader election, `tollgate.dev/role: leader` or
//! `standby`, for the configuration Service, which selects the leader's label.
//!
//! Why a label and not readiness: only the leader serves the stream, but a standby that is never
//! Ready stalls every rolling update of the operator (the new pods must become Ready before the
//! old leader may go, and they cannot lead while it holds the Lease) and `helm install --wait`.
//! So every replica with synced caches is Ready, and routing follows the label. Between a
//! failover and the label's update a proxy may still reach a standby; the standby answers 503
//! and the proxy reconnects.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Patch, PatchParams};
use tokio::sync::watch;

/// The label the configuration Service selects (`leader`).
pub const ROLE_LABEL: &str = "tollgate.dev/role";

/// The label's value for a role.
pub fn role(leading: bool) -> &'static str {
    if leading { "leader" } else { "standby" }
}

/// Keeps `pod`'s label equal to this replica's role until `leading` closes. Failed patches are
/// retried with backoff (at most 10 s apart) until they succeed or the role changes again.
pub async fn run(
    client: kube::Client,
    namespace: String,
    pod: String,
    mut leading: watch::Receiver<bool>,
) {
    let pods: Api<Pod> = Api::namespaced(client, &namespace);
    loop {
        let role = role(*leading.borrow_and_update());
        let patch = serde_json::json!({"metadata": {"labels": {ROLE_LABEL: role}}});
        let mut backoff = Duration::from_millis(250);
        let labelled = loop {
            let Err(e) = pods
                .patch(&pod, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            else {
                break true;
            };
            tracing::warn!(
                pod = %pod,
                namespace = %namespace,
                role,
                error = %e,
                retry_in = ?backoff,
                "cannot label this replica's pod with its role (the chart's Role grants patch on pods); proxies find the leader only by that label"
            );
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                changed = leading.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    break false; // the role changed: label for the new one
                }
            }
            backoff = (backoff * 2).min(Duration::from_secs(10));
        };
        if labelled {
            tracing::info!(pod = %pod, role, "labelled this replica's pod with its role");
            if leading.changed().await.is_err() {
                return;
            }
        }
    }
}
