//! The `gs://` sink through the official `google-cloud-storage` client: uploads with
//! `ifGenerationMatch=0` (create, never replace) and a known CRC32C, custom metadata and
//! optional object retention. The Rust client has no list call (its admin client speaks gRPC),
//! so listing goes through the JSON API (`GET /storage/v1/b/B/o`) with the same credentials,
//! and so does the retention sweep's `DELETE /storage/v1/b/B/o/O?ifGenerationMatch=G`.

use std::sync::Once;
use std::time::{Duration, SystemTime};

use google_cloud_auth::credentials::{CacheableResource, Credentials};
use google_cloud_gax::retry_policy::RetryPolicyExt;
use google_cloud_storage::client::Storage;
use google_cloud_storage::model::object::Retention;
use google_cloud_storage::model::object::retention::Mode;
use google_cloud_storage::retry_policy::RetryableErrors;
use http::{HeaderMap, StatusCode};
use serde::Deserialize;

use super::{
    Deleted, GcsOptions, Listing, ObjectMeta, Protection, Put, SinkError, StoredObject, check_key,
};

const GOOGLE_ENDPOINT: &str = "https://storage.googleapis.com";

/// A GCS bucket (and prefix within it) as a sink.
#[derive(Clone)]
pub struct GcsSink {
    /// Set once the bucket refused object retention: why (objects go without it from then).
    retention_refused: std::sync::Arc<std::sync::OnceLock<String>>,
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
            retention_refused: Default::default(),
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

    /// Why the bucket refused object retention, once it has: objects are written without it.
    pub fn retention_refused(&self) -> Option<&str> {
        self.retention_refused.get().map(String::as_str)
    }

    pub(super) async fn put_once(
        &self,
        key: &str,
        bytes: bytes::Bytes,
        meta: &ObjectMeta,
    ) -> Result<Put, SinkError> {
        let retain = meta
            .retain_for
            .filter(|_| self.retention_refused().is_none());
        match self.put_once_with(key, bytes.clone(), meta, retain).await {
            Err(SinkError::Refused { detail, .. })
                if retain.is_some() && refuses_retention(&detail) =>
            {
                // The bucket does not take object retention (not enabled on it, or no
                // permission to set it): the record matters more than its retention.
                tracing::warn!(%detail, "the bucket refused object retention; objects are written without it");
                let _ = self.retention_refused.set(detail);
                self.put_once_with(key, bytes, meta, None).await
            }
            other => other,
        }
    }

    async fn put_once_with(
        &self,
        key: &str,
        bytes: bytes::Bytes,
        meta: &ObjectMeta,
        retain: Option<Duration>,
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
        if let Some(period) = retain {
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
                // response), a conflict otherwise — and a conflict too when the recorder may
                // not read it (create-only rights, as the README asks for): it cannot tell,
                // and retrying would never tell it either.
                match self.get(key).await {
                    Ok(Some(existing)) if existing == bytes => Ok(Put::AlreadyThere),
                    Ok(_) | Err(SinkError::Refused { .. }) => Err(SinkError::Conflict {
                        key: self.url_of(key),
                    }),
                    Err(e) => Err(e),
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

    /// The object name of a key prefix; the bucket's whole sink prefix for an empty one.
    fn full_prefix(&self, prefix: &str) -> String {
        if prefix.is_empty() {
            if self.prefix.is_empty() {
                String::new()
            } else {
                format!("{}/", self.prefix)
            }
        } else {
            self.object_name(prefix)
        }
    }

    /// The key of an object name (the sink's prefix cut off).
    fn key_of(&self, name: &str) -> String {
        let strip = if self.prefix.is_empty() {
            0
        } else {
            self.prefix.len() + 1
        };
        name[strip.min(name.len())..].to_string()
    }

    async fn auth_headers(&self, op: &'static str, shown: &str) -> Result<HeaderMap, SinkError> {
        match self.credentials.headers(http::Extensions::new()).await {
            Ok(CacheableResource::New { data, .. }) => Ok(data),
            Ok(CacheableResource::NotModified) => Ok(HeaderMap::new()),
            Err(e) => Err(SinkError::Unavailable {
                op,
                key: shown.to_string(),
                detail: format!("no credentials: {e}"),
            }),
        }
    }

    /// Every page of `GET /storage/v1/b/B/o` with these query parameters.
    async fn list_pages(
        &self,
        query: &[(&str, String)],
        shown: &str,
    ) -> Result<Vec<ListPage>, SinkError> {
        let url = format!("{}/storage/v1/b/{}/o", self.endpoint, self.bucket);
        let unavailable = |detail: String| SinkError::Unavailable {
            op: "list",
            key: shown.to_string(),
            detail,
        };
        let mut pages = Vec::new();
        let mut page_token: Option<String> = None;
        loop {
            let mut query = query.to_vec();
            if let Some(t) = &page_token {
                query.push(("pageToken", t.clone()));
            }
            let response = self
                .http
                .get(&url)
                .headers(self.auth_headers("list", shown).await?)
                .query(&query)
                .send()
                .await
                .map_err(|e| unavailable(e.to_string()))?;
            let status = response.status();
            if !status.is_success() {
                let body = response.text().await.unwrap_or_default();
                return Err(http_error("list", shown, status, &body));
            }
            let page: ListPage = response
                .json()
                .await
                .map_err(|e| unavailable(format!("unreadable listing: {e}")))?;
            page_token = page.next_page_token.clone().filter(|t| !t.is_empty());
            pages.push(page);
            if page_token.is_none() {
                return Ok(pages);
            }
        }
    }

    pub(super) async fn list(&self, prefix: &str) -> Result<Listing, SinkError> {
        let full_prefix = self.full_prefix(prefix);
        let shown = format!("gs://{}/{full_prefix}", self.bucket);
        let query = [
            ("prefix", full_prefix),
            ("delimiter", "/".to_string()),
            ("fields", "items(name),prefixes,nextPageToken".to_string()),
        ];
        let mut listing = Listing::default();
        for page in self.list_pages(&query, &shown).await? {
            listing
                .objects
                .extend(page.items.iter().map(|i| self.key_of(&i.name)));
            listing
                .prefixes
                .extend(page.prefixes.iter().map(|p| self.key_of(p)));
        }
        listing.objects.sort();
        listing.prefixes.sort();
        Ok(listing)
    }

    pub(super) async fn list_stored(&self, prefix: &str) -> Result<Vec<StoredObject>, SinkError> {
        let full_prefix = self.full_prefix(prefix);
        let shown = format!("gs://{}/{full_prefix}", self.bucket);
        let query = [
            ("prefix", full_prefix),
            ("fields", STORED_FIELDS.to_string()),
        ];
        let mut out = Vec::new();
        for page in self.list_pages(&query, &shown).await? {
            for item in page.items {
                let key = self.key_of(&item.name);
                out.push(
                    stored_object(item, key).map_err(|detail| SinkError::Unavailable {
                        op: "list",
                        key: shown.clone(),
                        detail,
                    })?,
                );
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    pub(super) async fn delete(&self, object: &StoredObject) -> Result<Deleted, SinkError> {
        check_key(&object.key)?;
        let shown = self.url_of(&object.key);
        let mut url =
            reqwest::Url::parse(&format!("{}/storage/v1/b/{}/o", self.endpoint, self.bucket))
                .map_err(|e| SinkError::BadUrl {
                    url: self.endpoint.clone(),
                    why: e.to_string(),
                })?;
        // One path segment: the object name's slashes are escaped.
        url.path_segments_mut()
            .map_err(|()| SinkError::BadUrl {
                url: self.endpoint.clone(),
                why: "cannot be a base URL".into(),
            })?
            .push(&self.object_name(&object.key));
        let mut request = self
            .http
            .delete(url)
            .headers(self.auth_headers("delete", &shown).await?);
        if let Some(generation) = object.generation {
            request = request.query(&[("ifGenerationMatch", generation.to_string())]);
        }
        let response = request.send().await.map_err(|e| SinkError::Unavailable {
            op: "delete",
            key: shown.clone(),
            detail: e.to_string(),
        })?;
        let status = response.status();
        let body = if status.is_success() {
            String::new()
        } else {
            response.text().await.unwrap_or_default()
        };
        delete_outcome(status, &body, object.generation, &shown)
    }
}

/// Whether a refused write was refused for its object retention: the bucket does not have
/// object retention enabled, or the writer may not set it (`storage.objects.setRetention`).
fn refuses_retention(detail: &str) -> bool {
    detail.to_ascii_lowercase().contains("retention")
}

/// What `list_stored` asks the JSON API for.
const STORED_FIELDS: &str = "items(name,generation,timeCreated,temporaryHold,eventBasedHold,\
retention(retainUntilTime),retentionExpirationTime,metadata),nextPageToken";

/// What a `DELETE` answer means. A hold, retention or a newer generation keeps the object,
/// which is an answer, as is a missing permission: the sweep reports it and goes on.
fn delete_outcome(
    status: StatusCode,
    body: &str,
    generation: Option<i64>,
    shown: &str,
) -> Result<Deleted, SinkError> {
    match status.as_u16() {
        200..=299 => Ok(Deleted::Deleted),
        404 => Ok(Deleted::AlreadyGone),
        412 => Ok(Deleted::Kept(match generation {
            Some(g) => {
                format!("it was replaced after it was listed (generation {g} is no longer current)")
            }
            None => "a precondition failed".into(),
        })),
        403 => Ok(Deleted::Kept(format!(
            "Cloud Storage refused the delete: {}",
            error_message(body)
        ))),
        _ => Err(http_error("delete", shown, status, body)),
    }
}

/// The `error.message` of a JSON API error body, or the body's start.
fn error_message(body: &str) -> String {
    #[derive(Deserialize)]
    struct Envelope {
        error: Inner,
    }
    #[derive(Deserialize)]
    struct Inner {
        message: String,
    }
    match serde_json::from_str::<Envelope>(body) {
        Ok(e) => e.error.message,
        Err(_) => body.chars().take(300).collect(),
    }
}

fn http_error(op: &'static str, shown: &str, status: StatusCode, body: &str) -> SinkError {
    let detail = format!("HTTP {status}: {}", error_message(body));
    if status.is_server_error() || status.as_u16() == 429 || status.as_u16() == 408 {
        SinkError::Unavailable {
            op,
            key: shown.to_string(),
            detail,
        }
    } else {
        SinkError::Refused {
            op,
            key: shown.to_string(),
            detail,
        }
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

/// An object resource as listed; only `name` is asked for by `list`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ListItem {
    name: String,
    #[serde(default)]
    generation: Option<String>,
    #[serde(default)]
    time_created: Option<String>,
    #[serde(default)]
    temporary_hold: Option<bool>,
    #[serde(default)]
    event_based_hold: Option<bool>,
    #[serde(default)]
    retention: Option<ItemRetention>,
    #[serde(default)]
    metadata: Option<std::collections::BTreeMap<String, String>>,
    #[serde(default)]
    retention_expiration_time: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ItemRetention {
    #[serde(default)]
    retain_until_time: Option<String>,
}

/// A listed object resource as a [`StoredObject`].
fn stored_object(item: ListItem, key: String) -> Result<StoredObject, String> {
    let time = |what: &str, text: &str| {
        text.parse::<jiff::Timestamp>()
            .map(SystemTime::from)
            .map_err(|e| format!("{}: {what} {text:?} is not a time: {e}", item.name))
    };
    let created = match &item.time_created {
        Some(t) => time("timeCreated", t)?,
        None => return Err(format!("{}: the listing has no timeCreated", item.name)),
    };
    let generation = match &item.generation {
        Some(g) => Some(
            g.parse::<i64>()
                .map_err(|_| format!("{}: generation {g:?} is not a number", item.name))?,
        ),
        None => None,
    };
    let mut protections = Vec::new();
    if item.temporary_hold == Some(true) {
        protections.push(Protection::TemporaryHold);
    }
    if item.event_based_hold == Some(true) {
        protections.push(Protection::EventBasedHold);
    }
    if let Some(until) = item
        .retention
        .as_ref()
        .and_then(|r| r.retain_until_time.as_deref())
    {
        protections.push(Protection::RetainedUntil(time("retainUntilTime", until)?));
    }
    if let Some(until) = &item.retention_expiration_time {
        protections.push(Protection::BucketPolicyUntil(time(
            "retentionExpirationTime",
            until,
        )?));
    }
    Ok(StoredObject {
        key,
        created,
        generation,
        protections,
        metadata: item.metadata.unwrap_or_default(),
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listed_object_carries_its_time_generation_holds_and_retention() {
        let item: ListItem = serde_json::from_value(serde_json::json!({
            "name": "pfx/ns/s/p-u/seg-000001.jsonl.zst",
            "generation": "1700000000000001",
            "timeCreated": "2026-01-02T03:04:05.678Z",
            "temporaryHold": true,
            "eventBasedHold": false,
            "retention": {"mode": "Unlocked", "retainUntilTime": "2026-04-02T00:00:00Z"},
            "retentionExpirationTime": "2026-03-01T00:00:00Z"
        }))
        .unwrap();
        let stored = stored_object(item, "ns/s/p-u/seg-000001.jsonl.zst".into()).unwrap();
        let at = |t: &str| SystemTime::from(t.parse::<jiff::Timestamp>().unwrap());
        assert_eq!(stored.created, at("2026-01-02T03:04:05.678Z"));
        assert_eq!(stored.generation, Some(1_700_000_000_000_001));
        assert_eq!(
            stored.protections,
            [
                Protection::TemporaryHold,
                Protection::RetainedUntil(at("2026-04-02T00:00:00Z")),
                Protection::BucketPolicyUntil(at("2026-03-01T00:00:00Z")),
            ]
        );
        // A hold outlasts every date.
        assert_eq!(
            stored.kept_by(at("2030-01-01T00:00:00Z")),
            Some(&Protection::TemporaryHold)
        );

        let bare: ListItem = serde_json::from_value(serde_json::json!({
            "name": "x", "generation": "7", "timeCreated": "2026-01-02T03:04:05Z"
        }))
        .unwrap();
        let stored = stored_object(bare, "x".into()).unwrap();
        assert!(stored.protections.is_empty());
        let broken: ListItem =
            serde_json::from_value(serde_json::json!({"name": "x", "timeCreated": "yesterday"}))
                .unwrap();
        assert!(stored_object(broken, "x".into()).is_err());
    }

    #[test]
    fn a_write_refused_for_its_retention_is_told_apart() {
        assert!(refuses_retention(
            "the service reports an error with code INVALID_ARGUMENT: Object retention is not enabled for this bucket."
        ));
        assert!(refuses_retention(
            "HTTP 403: sidecar@p.iam.gserviceaccount.com does not have storage.objects.setRetention access"
        ));
        assert!(!refuses_retention(
            "HTTP 403: sidecar@p.iam.gserviceaccount.com does not have storage.objects.create access"
        ));
    }

    #[test]
    fn a_refused_or_stale_delete_keeps_the_object_with_the_reason() {
        let shown = "gs://b/ns/s/p/seg-000001.jsonl.zst";
        let ok = |code: u16, body: &str| {
            delete_outcome(StatusCode::from_u16(code).unwrap(), body, Some(5), shown)
        };
        assert_eq!(ok(204, "").unwrap(), Deleted::Deleted);
        assert_eq!(ok(404, "").unwrap(), Deleted::AlreadyGone);
        let held = ok(
            403,
            r#"{"error":{"code":403,"message":"Object 'x' is under active Temporary hold and cannot be deleted, overwritten or archived until hold is removed."}}"#,
        )
        .unwrap();
        assert!(
            matches!(&held, Deleted::Kept(why) if why.contains("Temporary hold")),
            "{held:?}"
        );
        let stale = ok(412, "").unwrap();
        assert!(
            matches!(&stale, Deleted::Kept(why) if why.contains("generation 5")),
            "{stale:?}"
        );
        assert!(matches!(
            ok(503, "busy"),
            Err(SinkError::Unavailable { .. })
        ));
        assert!(matches!(ok(400, "bad"), Err(SinkError::Refused { .. })));
    }
}
