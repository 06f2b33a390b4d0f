//! Leader election over a coordination.k8s.io Lease, so that of several replicas exactly one
//! runs the controller (all of them serve webhooks). A small loop: acquire when the lease is
//! free or stale, renew while held, release on shutdown so the next replica need not wait.

use anyhow::{Context, Result};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, ObjectMeta, PostParams};
use kube::{Client, Error};
use std::time::Duration;
use tokio::sync::watch;

/// How long a lease holds without renewal.
const LEASE_SECONDS: i32 = 15;
/// How often the holder renews.
const RENEW_EVERY: Duration = Duration::from_secs(5);
/// How often a follower looks whether the lease is free.
const RETRY_EVERY: Duration = Duration::from_secs(2);

/// One replica's view of the lease.
pub struct Elector {
    api: Api<Lease>,
    name: String,
    identity: String,
}

/// What to do with the lease as it stands.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Nobody holds it, or the holder stopped renewing: take it.
    Acquire,
    /// We hold it: renew it.
    Renew,
    /// Someone else holds it.
    Follow,
}

/// Decide from the lease and the time.
pub fn step(spec: Option<&LeaseSpec>, identity: &str, now: Timestamp) -> Step {
    let Some(spec) = spec else {
        return Step::Acquire;
    };
    match spec.holder_identity.as_deref() {
        None | Some("") => Step::Acquire,
        Some(holder) if holder == identity => Step::Renew,
        Some(_) => {
            let renewed = spec.renew_time.as_ref().map(|t| t.0);
            let duration = spec.lease_duration_seconds.unwrap_or(LEASE_SECONDS);
            match renewed {
                Some(at) if at + SignedDuration::from_secs(i64::from(duration)) > now => {
                    Step::Follow
                }
                _ => Step::Acquire,
            }
        }
    }
}

impl Elector {
    pub fn new(client: Client, namespace: &str, name: &str, identity: &str) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            name: name.into(),
            identity: identity.into(),
        }
    }

    /// Hold the lease whenever possible, telling `leading` whether we do, until `stop` fires;
    /// then release it if held.
    pub async fn run(self, leading: watch::Sender<bool>, mut stop: watch::Receiver<bool>) {
        loop {
            let held = match self.try_once().await {
                Ok(held) => held,
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), lease = %self.name, "leader election");
                    // Without a renewal we must assume the lease is lost once it would lapse;
                    // stepping down at once is the safe side.
                    false
                }
            };
            leading.send_if_modified(|was| {
                let changed = *was != held;
                if changed {
                    tracing::info!(lease = %self.name, identity = %self.identity, leading = held, "leadership changed");
                }
                *was = held;
                changed
            });
            let wait = if held { RENEW_EVERY } else { RETRY_EVERY };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.changed() => break,
            }
        }
        if *leading.borrow() {
            leading.send_replace(false);
            if let Err(e) = self.release().await {
                tracing::warn!(error = %format!("{e:#}"), "releasing the lease");
            }
        }
    }

    async fn try_once(&self) -> Result<bool> {
        let now = Timestamp::now();
        let existing = self.api.get_opt(&self.name).await?;
        let step = step(
            existing.as_ref().and_then(|l| l.spec.as_ref()),
            &self.identity,
            now,
        );
        let mut lease = existing.clone().unwrap_or_else(|| Lease {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                ..Default::default()
            },
            spec: None,
        });
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        match step {
            Step::Follow => return Ok(false),
            Step::Renew => spec.renew_time = Some(MicroTime(now)),
            Step::Acquire => {
                spec.holder_identity = Some(self.identity.clone());
                spec.acquire_time = Some(MicroTime(now));
                spec.renew_time = Some(MicroTime(now));
                spec.lease_duration_seconds = Some(LEASE_SECONDS);
                spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
            }
        }
        let written = match existing {
            None => self.api.create(&PostParams::default(), &lease).await,
            Some(_) => {
                self.api
                    .replace(&self.name, &PostParams::default(), &lease)
                    .await
            }
        };
        match written {
            Ok(_) => Ok(true),
            // Someone else wrote between our read and write: they win this round.
            Err(Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e).with_context(|| format!("writing Lease {}", self.name)),
        }
    }

    async fn release(&self) -> Result<()> {
        let mut lease = self.api.get(&self.name).await?;
        if let Some(spec) = lease.spec.as_mut()
            && spec.holder_identity.as_deref() == Some(&self.identity)
        {
            spec.holder_identity = None;
            self.api
                .replace(&self.name, &PostParams::default(), &lease)
                .await?;
            tracing::info!(lease = %self.name, "released the lease");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(holder: Option<&str>, renewed: &str) -> LeaseSpec {
        LeaseSpec {
            holder_identity: holder.map(String::from),
            renew_time: Some(MicroTime(renewed.parse().unwrap())),
            lease_duration_seconds: Some(15),
            ..Default::default()
        }
    }

    #[test]
    fn a_fresh_lease_of_another_is_followed_and_a_stale_one_taken() {
        let now: Timestamp = "2026-01-01T00:00:20Z".parse().unwrap();
        assert_eq!(step(None, "a", now), Step::Acquire);
        assert_eq!(
            step(Some(&lease(None, "2026-01-01T00:00:19Z")), "a", now),
            Step::Acquire
        );
        assert_eq!(
            step(Some(&lease(Some("b"), "2026-01-01T00:00:10Z")), "a", now),
            Step::Follow
        );
        assert_eq!(
            step(Some(&lease(Some("b"), "2026-01-01T00:00:04Z")), "a", now),
            Step::Acquire
        );
        assert_eq!(
            step(Some(&lease(Some("a"), "2026-01-01T00:00:04Z")), "a", now),
            Step::Renew
        );
    }
}
