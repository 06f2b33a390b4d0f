//! Starting and stopping the pod's recording: the `cassette-recording` writer, which spools,
//! seals, signs and ships, seen by the data path through [`Recording`].

use super::{EventSink, NotRecorded, Recording};
use crate::RunArgs;
use crate::metrics::Metrics;
use anyhow::{Context, Result, bail};
use cassette_recording::record::Event;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

impl EventSink for cassette_recording::Recorder {
    fn append(&self, event: Event) -> Result<(), NotRecorded> {
        cassette_recording::Recorder::append(self, event)?;
        Ok(())
    }

    fn append_durable(
        &self,
        event: Event,
    ) -> Pin<Box<dyn Future<Output = Result<(), NotRecorded>> + Send + '_>> {
        Box::pin(async move {
            let mut ack = cassette_recording::Recorder::append(self, event)?;
            ack.durable().await;
            Ok(())
        })
    }

    fn next_exchange_id(&self) -> u64 {
        cassette_recording::Recorder::next_exchange_id(self)
    }

    fn next_conn_id(&self) -> u64 {
        cassette_recording::Recorder::next_conn_id(self)
    }

    fn accepting(&self) -> bool {
        cassette_recording::Recorder::accepting(self)
    }
}

/// The running recording: the data path's handle and the writer behind it.
pub struct Started {
    pub recording: Recording,
    pub writer: cassette_recording::Recorder,
    stats: tokio::task::JoinHandle<()>,
}

/// What the recording takes from the session.
pub struct Keys<'a> {
    /// The session's fingerprint key: it keys the digests of bodies, so an auditor holding it
    /// can check a candidate body against what was not stored.
    pub digest: &'a [u8],
    /// `spec.recording.retention`: each object written gets it, where the bucket allows.
    pub retention: Option<Duration>,
}

/// Start the writer (recovering and shipping what an earlier run left in the spool).
pub async fn start(
    args: &RunArgs,
    keys: Keys<'_>,
    account: Option<String>,
    metrics: Arc<Metrics>,
) -> Result<Started> {
    let durability = match args.durability.as_str() {
        "batched" => cassette_recording::Durability::Batched,
        "strict" => cassette_recording::Durability::Strict,
        other => bail!("durability must be batched or strict, not {other:?}"),
    };
    let on_failure = match args.on_failure.as_str() {
        "closed" => cassette_recording::OnFailure::Closed,
        "open" => cassette_recording::OnFailure::Open,
        other => bail!("onFailure must be closed or open, not {other:?}"),
    };
    let path = cassette_recording::RecordingPath {
        namespace: args.namespace.clone(),
        session: args.session.clone(),
        pod: args.pod.clone(),
        pod_uid: args.pod_uid.clone(),
    };
    let mut config = cassette_recording::RecorderConfig::new(&args.sink, &args.spool, path);
    config.durability = durability;
    config.on_failure = on_failure;
    config.max_body_bytes = args.max_body_bytes;
    config.digest_key = keys.digest.to_vec();
    config.retention = keys.retention;
    config.agent = account.clone();
    config.gcs.endpoint = args.gcs_endpoint.clone();
    config.gcs.anonymous = args.gcs_anonymous;
    config.session_uid = args.session_uid.clone().filter(|uid| !uid.is_empty());
    let writer = cassette_recording::Recorder::start(config)
        .await
        .context("starting the recorder")?;
    let recording = Recording::new(
        Arc::new(writer.clone()),
        durability == cassette_recording::Durability::Strict,
        args.max_body_bytes,
        ring::hmac::Key::new(ring::hmac::HMAC_SHA256, keys.digest),
        account,
        metrics.clone(),
    );
    let stats = tokio::spawn(mirror_stats(writer.clone(), recording.clone(), metrics));
    Ok(Started {
        recording,
        writer,
        stats,
    })
}

/// Mirror the writer's counters into the metrics, every second, and write the gaps of cut
/// exchanges as soon as the recording takes records again, traffic or not.
async fn mirror_stats(
    writer: cassette_recording::Recorder,
    recording: Recording,
    metrics: Arc<Metrics>,
) {
    let (mut last_failures, mut last_records) = (0, 0);
    loop {
        recording.flush_gaps();
        let s = writer.stats();
        metrics
            .recorded_records
            .inc_by(s.records.saturating_sub(last_records));
        last_records = s.records;
        metrics.spool_bytes.set(s.spool_bytes as i64);
        if s.ship_failures > last_failures {
            metrics
                .ship_failures
                .inc_by(s.ship_failures - last_failures);
            last_failures = s.ship_failures;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

impl Started {
    /// Seal, ship and write the manifest by `deadline`; what cannot be shipped by then is
    /// listed in the manifest and the spool's report (the error says where).
    pub async fn shutdown_by(
        self,
        deadline: tokio::time::Instant,
    ) -> Result<(), cassette_recording::ShutdownError> {
        self.stats.abort();
        self.recording.flush_gaps();
        self.writer.shutdown_by(deadline).await.map(|_| ())
    }
}

/// Hand what could not be shipped to the kubelet as the container's termination message (at
/// `path`, its `terminationMessagePath`), so it shows in the pod's status (`kubectl get pod
/// -o yaml`) after the pod's spool is gone.
pub fn termination_message(path: &std::path::Path, error: &cassette_recording::ShutdownError) {
    let text = match error {
        cassette_recording::ShutdownError::Unshipped { report, .. } => {
            std::fs::read_to_string(report).unwrap_or_else(|_| error.to_string())
        }
        other => other.to_string(),
    };
    // The kubelet keeps 4 KiB of it.
    let text: String = text.chars().take(4000).collect();
    if let Err(e) = std::fs::write(path, text) {
        tracing::warn!(error = %e, "the termination message could not be written");
    }
}
