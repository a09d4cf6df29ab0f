//! Lease-based leader election (coordination.k8s.io/v1), as client-go's leaderelection does it:
//! the leader renews the Lease every third of its duration; another replica takes over once the
//! lease has not been renewed for a full duration. Updates use optimistic concurrency
//! (resourceVersion), so two replicas can never both win the same term.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, ObjectMeta, PostParams};
use tokio::sync::watch;

/// Leader-election settings.
#[derive(Debug, Clone)]
pub struct Election {
    /// Lease namespace.
    pub namespace: String,
    /// Lease name.
    pub name: String,
    /// This replica's identity.
    pub identity: String,
    /// Lease duration.
    pub duration: Duration,
}

/// Runs the election forever, publishing whether this replica leads.
pub async fn run(
    client: kube::Client,
    election: Election,
    leading: watch::Sender<bool>,
    flag: Arc<AtomicBool>,
) {
    let api: Api<Lease> = Api::namespaced(client, &election.namespace);
    let retry = election.duration / 3;
    loop {
        let is_leader = match try_acquire_or_renew(&api, &election).await {
            Ok(held) => held,
            Err(e) => {
                tracing::warn!(error = %e, lease = %election.name, "leader election: cannot reach the Lease");
                // Losing contact for a whole lease duration means another replica may lead now.
                false
            }
        };
        if flag.swap(is_leader, Ordering::AcqRel) != is_leader {
            if is_leader {
                tracing::info!(identity = %election.identity, "became the leader");
            } else {
                tracing::info!(identity = %election.identity, "not the leader");
            }
            let _ = leading.send(is_leader);
        }
        tokio::time::sleep(retry).await;
    }
}

async fn try_acquire_or_renew(api: &Api<Lease>, e: &Election) -> Result<bool, kube::Error> {
    let now = Timestamp::now();
    let seconds = i32::try_from(e.duration.as_secs().max(1)).unwrap_or(i32::MAX);
    let existing = api.get_opt(&e.name).await?;
    let Some(mut lease) = existing else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(e.name.clone()),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(e.identity.clone()),
                lease_duration_seconds: Some(seconds),
                acquire_time: Some(MicroTime(now)),
                renew_time: Some(MicroTime(now)),
                lease_transitions: Some(0),
                ..Default::default()
            }),
        };
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(err) => Err(err),
        };
    };
    let spec = lease.spec.get_or_insert_with(Default::default);
    let holder = spec.holder_identity.clone().unwrap_or_default();
    let renewed = spec
        .renew_time
        .as_ref()
        .map(|t| t.0)
        .unwrap_or(Timestamp::UNIX_EPOCH);
    let lasted = i64::from(spec.lease_duration_seconds.unwrap_or(seconds));
    let expired = now.as_second() > renewed.as_second() + lasted;
    if holder != e.identity && !expired && !holder.is_empty() {
        return Ok(false);
    }
    if holder != e.identity {
        spec.holder_identity = Some(e.identity.clone());
        spec.acquire_time = Some(MicroTime(now));
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
    }
    spec.renew_time = Some(MicroTime(now));
    spec.lease_duration_seconds = Some(seconds);
    let name = e.name.clone();
    match api.replace(&name, &PostParams::default(), &lease).await {
        Ok(_) => Ok(true),
        // Someone else updated it first: they hold it this round.
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
        Err(err) => Err(err),
    }
}

/// Gives the Lease up on shutdown, so a follower takes over at once instead of after a full lease
/// duration (client-go's ReleaseOnCancel).
pub async fn release(client: kube::Client, election: &Election) {
    let api: Api<Lease> = Api::namespaced(client, &election.namespace);
    let Ok(Some(mut lease)) = api.get_opt(&election.name).await else {
        return;
    };
    let Some(spec) = lease.spec.as_mut() else {
        return;
    };
    if spec.holder_identity.as_deref() != Some(election.identity.as_str()) {
        return;
    }
    spec.holder_identity = None;
    spec.lease_duration_seconds = Some(1);
    spec.renew_time = Some(MicroTime(Timestamp::now()));
    match api
        .replace(&election.name, &PostParams::default(), &lease)
        .await
    {
        Ok(_) => tracing::info!("released the leader Lease"),
        Err(e) => {
            tracing::warn!(error = %e, "could not release the leader Lease; a follower takes over when it expires")
        }
    }
}
