//! Lease-based leader election (coordination.k8s.io/v1), as client-go's leaderelection does it:
//! the leader renews the Lease every third of its duration; another replica takes over once the
//! Lease has not changed for a full duration. Updates use optimistic concurrency
//! (resourceVersion), so two replicas can never both win the same term.
//!
//! Clocks: expiry is measured on this replica's monotonic clock, from when it last saw the Lease
//! change, never by comparing the Lease's `renewTime` (written by another replica's wall clock)
//! with this replica's wall clock. Replicas whose clocks disagree by any amount therefore neither
//! take over from a live leader (two leaders) nor wait on a dead one past its lease. `renewTime`
//! is still written, for people reading the Lease.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

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

/// The parts of a Lease that change when its holder renews or hands it over.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Record {
    holder: String,
    renew_time: Option<Timestamp>,
    acquire_time: Option<Timestamp>,
    transitions: i32,
    duration_seconds: i32,
}

impl Record {
    fn of(spec: &LeaseSpec) -> Self {
        Self {
            holder: spec.holder_identity.clone().unwrap_or_default(),
            renew_time: spec.renew_time.as_ref().map(|t| t.0),
            acquire_time: spec.acquire_time.as_ref().map(|t| t.0),
            transitions: spec.lease_transitions.unwrap_or(0),
            duration_seconds: spec.lease_duration_seconds.unwrap_or(0),
        }
    }
}

/// A Lease record as this replica last saw it, and when (its own monotonic clock).
#[derive(Debug)]
struct Observation {
    record: Record,
    at: Instant,
}

/// What this replica does with the Lease this round.
#[derive(Debug, PartialEq, Eq)]
enum Turn {
    /// Write it with this replica as holder (renew, or take over).
    Hold,
    /// Leave it: another replica holds it and has renewed within its duration.
    Follow,
}

/// Decides this round from the Lease's `current` record, seen at `now`: a record that differs from
/// the last one observed restarts the holder's term on this replica's clock.
fn decide(observed: &mut Option<Observation>, current: Record, me: &str, now: Instant) -> Turn {
    if observed.as_ref().is_none_or(|o| o.record != current) {
        *observed = Some(Observation {
            record: current,
            at: now,
        });
    }
    let Some(seen) = observed.as_ref() else {
        return Turn::Follow;
    };
    if seen.record.holder == me || seen.record.holder.is_empty() {
        return Turn::Hold;
    }
    let lasts =
        Duration::from_secs(u64::try_from(seen.record.duration_seconds.max(1)).unwrap_or(1));
    if now.duration_since(seen.at) >= lasts {
        Turn::Hold
    } else {
        Turn::Follow
    }
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
    // A leader that cannot renew within two thirds of the duration steps down before a follower
    // (which waits a full duration from the last renewal it saw) can take over.
    let deadline = election.duration * 2 / 3;
    let mut observed = None;
    loop {
        let attempt = try_acquire_or_renew(&api, &election, &mut observed);
        let is_leader = match tokio::time::timeout(deadline, attempt).await {
            Ok(Ok(held)) => held,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, lease = %election.name, "leader election: cannot reach the Lease");
                false
            }
            Err(_) => {
                tracing::warn!(lease = %election.name, timeout = ?deadline, "leader election: the Lease did not answer in time");
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

async fn try_acquire_or_renew(
    api: &Api<Lease>,
    e: &Election,
    observed: &mut Option<Observation>,
) -> Result<bool, kube::Error> {
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
    if decide(observed, Record::of(spec), &e.identity, Instant::now()) == Turn::Follow {
        return Ok(false);
    }
    if spec.holder_identity.as_deref() != Some(e.identity.as_str()) {
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

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: Duration = Duration::from_secs(15);

    fn held_by(holder: &str, renewed: Timestamp) -> Record {
        Record {
            holder: holder.to_owned(),
            renew_time: Some(renewed),
            acquire_time: Some(renewed),
            transitions: 0,
            duration_seconds: 15,
        }
    }

    #[test]
    fn a_leader_whose_clock_runs_an_hour_behind_keeps_the_lease_while_it_renews() {
        // Before: the follower compared the leader's renewTime (an hour old by its own clock)
        // with its wall clock and took over at once: two leaders.
        let behind = Timestamp::now() - jiff::SignedDuration::from_hours(1);
        let start = Instant::now();
        let mut observed = None;
        for round in 0..10u32 {
            let renewed = behind + jiff::SignedDuration::from_secs(5 * i64::from(round));
            let now = start + Duration::from_secs(5 * u64::from(round));
            assert_eq!(
                decide(&mut observed, held_by("leader", renewed), "follower", now),
                Turn::Follow,
                "round {round}"
            );
        }
    }

    #[test]
    fn a_dead_leader_whose_clock_ran_an_hour_ahead_is_replaced_after_one_lease() {
        // Before: its last renewTime lay an hour in this replica's future, so the Lease looked
        // held for an hour after the leader died.
        let ahead = Timestamp::now() + jiff::SignedDuration::from_hours(1);
        let start = Instant::now();
        let mut observed = None;
        let last = held_by("leader", ahead);
        assert_eq!(
            decide(&mut observed, last.clone(), "follower", start),
            Turn::Follow
        );
        let almost = start + LEASE - Duration::from_millis(1);
        assert_eq!(
            decide(&mut observed, last.clone(), "follower", almost),
            Turn::Follow
        );
        assert_eq!(
            decide(&mut observed, last, "follower", start + LEASE),
            Turn::Hold
        );
    }

    #[test]
    fn a_lease_first_seen_is_given_its_full_duration_and_a_released_one_is_free() {
        // A replica that starts cannot know how long ago the holder last renewed: it waits a full
        // duration from its first look, whatever renewTime says (here, a year ago).
        let start = Instant::now();
        let stale = held_by(
            "leader",
            Timestamp::now() - jiff::SignedDuration::from_hours(24 * 365),
        );
        let mut observed = None;
        assert_eq!(
            decide(&mut observed, stale, "follower", start),
            Turn::Follow
        );
        let mut released = held_by("", Timestamp::now());
        released.duration_seconds = 1;
        assert_eq!(
            decide(&mut observed, released, "follower", start),
            Turn::Hold
        );
        assert_eq!(
            decide(&mut None, held_by("me", Timestamp::now()), "me", start),
            Turn::Hold
        );
    }
}
