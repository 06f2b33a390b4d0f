//! Starting and stopping the pod's recording (the `cassette-recording` writer), and the
//! bridge that lets the data path hand it records.

use crate::RunArgs;
use crate::metrics::Metrics;
use crate::record::{EventSink, Recorder};
use anyhow::{Context, Result, bail};

use cassette_recording::record::Event;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

/// The running recording.
pub struct Recording {
    pub recorder: Recorder,
    writer: cassette_recording::Recorder,
    stats: tokio::task::JoinHandle<()>,
}

struct Writer(cassette_recording::Recorder);

impl EventSink for Writer {
    fn emit(&self, event: Event) -> Result<(), String> {
        self.0.append(event).map(|_| ()).map_err(|e| e.to_string())
    }

    fn durable(
        &self,
        event: Event,
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + '_>> {
        Box::pin(async move {
            let mut ack = self.0.append(event).map_err(|e| e.to_string())?;
            ack.durable().await;
            Ok(())
        })
    }
}

/// Start the writer (recovering and shipping what an earlier run left in the spool).
pub async fn start(
    args: &RunArgs,
    account: Option<String>,
    metrics: Arc<Metrics>,
) -> Result<Recording> {
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
    let mut digest_key = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut digest_key)
        .map_err(|_| anyhow::anyhow!("the system RNG failed"))?;
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
    config.digest_key = digest_key.to_vec();
    config.agent = account.clone();
    config.gcs.endpoint = args.gcs_endpoint.clone();
    config.gcs.anonymous = args.gcs_anonymous;
    config.session_uid = args.session_uid.clone().filter(|uid| !uid.is_empty());
    let writer = cassette_recording::Recorder::start(config)
        .await
        .context("starting the recorder")?;
    let recorder = Recorder::new(
        Arc::new(Writer(writer.clone())),
        durability == cassette_recording::Durability::Strict,
        args.max_body_bytes,
        ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &digest_key),
        account,
    );
    // Mirror the writer's counters into the metrics.
    let stats = {
        let writer = writer.clone();
        tokio::spawn(async move {
            let (mut last_failures, mut last_records) = (0, 0);
            loop {
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
        })
    };
    Ok(Recording {
        recorder,
        writer,
        stats,
    })
}

impl Recording {
    /// The recording crate's writer (public key, stats).
    pub fn writer(&self) -> cassette_recording::Recorder {
        self.writer.clone()
    }

    /// Seal, ship and write the manifest.
    pub async fn shutdown(self) -> Result<()> {
        self.stats.abort();
        self.writer
            .shutdown()
            .await
            .context("closing the recording")?;
        Ok(())
    }
}
