//! The `gs://` sink through the official `google-cloud-storage` client: uploads with
//! `ifGenerationMatch=0` (create, never replace) and a known CRC32C, custom metadata and
//! optional object retention. The Rust client has no list call (its admin client speaks gRPC),
//! so listing goes through the JSON API (`GET /storage/v1/b/B/o`) with the same credentials.

use std::sync::Once;
use std::time::{Duration, SystemTime};

use google_cloud_auth::credentials::{CacheableResource, Credentials};
use google_cloud_gax::retry_policy::RetryPolicyExt;
use google_cloud_storage::client::Storage;
use google_cloud_storage::model::object::Retention;
use google_cloud_storage::model::object::retention::Mode;
use google_cloud_storage::retry_policy::RetryableErrors;
use serde::Deserialize;

use super::{GcsOptions, Listing, ObjectMeta, Put, SinkError, check_key};

const GOOGLE_ENDPOINT: &str = "https://storage.googleapis.com";

/// A GCS bucket (and prefix within it) as a sink.
#[derive(Clone)]
pub struct GcsSink {
    client: Storage,
    credentials: Credentials,
    http: reqwest::Client,
    endpoint: String,
    bucket: String,
    prefix: String,
}

impl std::fmt::Debug for GcsSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GcsSink")
            .field("endpoint", &self.endpoint)
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// Installs ring as the process's rustls provider, once (a provider already installed stays).
/// ring is the only crypto provider in cassette; the HTTP stack under the GCS client needs a
/// process default even for plain-http emulators.
pub fn install_ring_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Err means another part of the process installed one already: that one stays.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

impl GcsSink {
    /// A client for `gs://bucket/prefix`. Makes no request.
    pub async fn connect(
        bucket: &str,
        prefix: &str,
        options: &GcsOptions,
    ) -> Result<GcsSink, SinkError> {
        install_ring_provider();
        let url = format!("gs://{bucket}/{prefix}");
        let credentials = if options.anonymous {
            google_cloud_auth::credentials::anonymous::Builder::new().build()
        } else {
            google_cloud_auth::credentials::Builder::default()
                .build()
                .map_err(|e| SinkError::BadUrl {
                    url: url.clone(),
                    why: format!("no application-default credentials: {e}"),
                })?
        };
        let endpoint = options
            .endpoint
            .clone()
            .unwrap_or_else(|| GOOGLE_ENDPOINT.to_string())
            .trim_end_matches('/')
            .to_string();
        let mut builder = Storage::builder()
            .with_credentials(credentials.clone())
            // The shipper retries with its own backoff; one attempt per call here.
            .with_retry_policy(RetryableErrors.with_attempt_limit(1))
            // Segments are small; single-request uploads avoid resumable sessions.
            .with_resumable_upload_threshold(usize::MAX);
        if options.endpoint.is_some() {
            builder = builder.with_endpoint(endpoint.clone());
        }
        let client = builder.build().await.map_err(|e| SinkError::BadUrl {
            url: url.clone(),
            why: format!("cannot build a GCS client: {e}"),
        })?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| SinkError::BadUrl {
                url,
                why: format!("cannot build an HTTP client: {e}"),
            })?;
        Ok(GcsSink {
            client,
            credentials,
            http,
            endpoint,
            bucket: bucket.to_string(),
            prefix: prefix.trim_matches('/').to_string(),
        })
    }

    fn object_name(&self, key: &str) -> String {
        if self.prefix.is_empty() {
            key.to_string()
        } else {
            format!("{}/{key}", self.prefix)
        }
    }

    fn bucket_path(&self) -> String {
        format!("projects/_/buckets/{}", self.bucket)
    }

    pub(super) fn url_of(&self, key: &str) -> String {
        format!("gs://{}/{}", self.bucket, self.object_name(key))
    }

    pub(super) async fn put_once(
        &self,
        key: &str,
        bytes: bytes::Bytes,
        meta: &ObjectMeta,
    ) -> Result<Put, SinkError> {
        check_key(key)?;
        let name = self.object_name(key);
        let crc = crc32c::crc32c(&bytes);
        let mut write = self
            .client
            .write_object(self.bucket_path(), name.clone(), bytes.clone())
            .set_if_generation_match(0)
            .set_metadata(meta.pairs.clone())
            .set_content_type(meta.content_type)
            .with_known_crc32c(crc);
        if let Some(period) = meta.retain_for {
            let until = wkt_time(SystemTime::now() + period);
            write = write.set_retention(
                Retention::new()
                    .set_mode(Mode::Unlocked)
                    .set_retain_until_time(until),
            );
        }
        match write.send_unbuffered().await {
            Ok(_) => Ok(Put::Created),
            Err(e) if e.http_status_code() == Some(412) => {
                // Already there: fine if it is what we meant to write (a retry after a lost
                // response), a conflict otherwise.
                match self.get(key).await? {
                    Some(existing) if existing == bytes => Ok(Put::AlreadyThere),
                    _ => Err(SinkError::Conflict {
                        key: self.url_of(key),
                    }),
                }
            }
            Err(e) => Err(classify("write", &self.url_of(key), &e)),
        }
    }

    pub(super) async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, SinkError> {
        check_key(key)?;
        let url = self.url_of(key);
        let mut response = match self
            .client
            .read_object(self.bucket_path(), self.object_name(key))
            .send()
            .await
        {
            Ok(r) => r,
            Err(e) if e.http_status_code() == Some(404) => return Ok(None),
            Err(e) => return Err(classify("read", &url, &e)),
        };
        let mut out = Vec::new();
        while let Some(chunk) = response.next().await {
            let chunk = chunk.map_err(|e| classify("read", &url, &e))?;
            out.extend_from_slice(&chunk);
        }
        Ok(Some(out))
    }

    pub(super) async fn list(&self, prefix: &str) -> Result<Listing, SinkError> {
        let full_prefix = if prefix.is_empty() {
            if self.prefix.is_empty() {
                String::new()
            } else {
                format!("{}/", self.prefix)
            }
        } else {
            self.object_name(prefix)
        };
        let strip = if self.prefix.is_empty() {
            0
        } else {
            self.prefix.len() + 1
        };
        let url = format!("{}/storage/v1/b/{}/o", self.endpoint, self.bucket);
        let shown = format!("gs://{}/{full_prefix}", self.bucket);
        let mut listing = Listing::default();
        let mut page_token: Option<String> = None;
        loop {
            let mut query = vec![
                ("prefix", full_prefix.clone()),
                ("delimiter", "/".to_string()),
                ("fields", "items(name),prefixes,nextPageToken".to_string()),
            ];
            if let Some(t) = &page_token {
                query.push(("pageToken", t.clone()));
            }
            let headers = match self.credentials.headers(http::Extensions::new()).await {
                Ok(CacheableResource::New { data, .. }) => data,
                Ok(CacheableResource::NotModified) => http::HeaderMap::new(),
                Err(e) => {
                    return Err(SinkError::Unavailable {
                        op: "list",
                        key: shown,
                        detail: format!("no credentials: {e}"),
                    });
                }
            };
            let response = self
                .http
                .get(&url)
                .headers(headers)
                .query(&query)
                .send()
                .await
                .map_err(|e| SinkError::Unavailable {
                    op: "list",
                    key: shown.clone(),
                    detail: e.to_string(),
                })?;
            let status = response.status();
            if !status.is_success() {
                let body = response.text().await.unwrap_or_default();
                let detail = format!(
                    "HTTP {status}: {}",
                    body.chars().take(300).collect::<String>()
                );
                return Err(if status.is_server_error() || status.as_u16() == 429 {
                    SinkError::Unavailable {
                        op: "list",
                        key: shown,
                        detail,
                    }
                } else {
                    SinkError::Refused {
                        op: "list",
                        key: shown,
                        detail,
                    }
                });
            }
            let page: ListPage = response.json().await.map_err(|e| SinkError::Unavailable {
                op: "list",
                key: shown.clone(),
                detail: format!("unreadable listing: {e}"),
            })?;
            listing.objects.extend(
                page.items
                    .into_iter()
                    .map(|i| i.name[strip.min(i.name.len())..].to_string()),
            );
            listing.prefixes.extend(
                page.prefixes
                    .into_iter()
                    .map(|p| p[strip.min(p.len())..].to_string()),
            );
            match page.next_page_token {
                Some(t) if !t.is_empty() => page_token = Some(t),
                _ => break,
            }
        }
        listing.objects.sort();
        listing.prefixes.sort();
        Ok(listing)
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ListPage {
    #[serde(default)]
    items: Vec<ListItem>,
    #[serde(default)]
    prefixes: Vec<String>,
    #[serde(default)]
    next_page_token: Option<String>,
}

#[derive(Deserialize)]
struct ListItem {
    name: String,
}

fn wkt_time(t: SystemTime) -> google_cloud_wkt::Timestamp {
    let since = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    google_cloud_wkt::Timestamp::clamp(since.as_secs() as i64, since.subsec_nanos() as i32)
}

fn classify(op: &'static str, key: &str, e: &google_cloud_storage::Error) -> SinkError {
    let detail = e.to_string();
    match e.http_status_code() {
        Some(code) if (400..500).contains(&code) && code != 408 && code != 429 => {
            SinkError::Refused {
                op,
                key: key.to_string(),
                detail,
            }
        }
        _ => SinkError::Unavailable {
            op,
            key: key.to_string(),
            detail,
        },
    }
}
