//! Which Google service an exchange talks to, and which IAM permission it exercises, in
//! Google's own names (`storage.objects.delete`, `secretmanager.versions.access`).
//!
//! Derived from the request line alone (host, method, path, query, content type) or the gRPC
//! method; bodies are not read here, so a permission that depends on the body (a gRPC
//! `google.iam.v1.IAMPolicy` call) is left unknown rather than guessed, and a batch is
//! classified part by part by [`crate::batch`]. A request to a
//! Google host that is not understood keeps its service and has no permission.

mod generated;
mod grpc;
mod registry;
mod rest;
mod storage;

pub use grpc::classify_grpc;

use crate::authority::VerifiedHost;
use crate::glob::{decode_path, normalize_host};

/// What a request is, in Google's terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Classification {
    /// The Google API, by its API name: `storage`, `pubsub`, `secretmanager`,
    /// `iamcredentials`, `artifactregistry`…
    pub service: String,
    /// The IAM permission the request needs, when it is known: `storage.objects.get`.
    pub permission: Option<String>,
    /// The resource the permission is checked on: `projects/_/buckets/b/objects/o`.
    pub resource: Option<String>,
    /// The API method: a discovery id (`storage.objects.insert`,
    /// `secretmanager.projects.secrets.versions.access`), a gRPC method
    /// (`google.pubsub.v1.Publisher.Publish`), or a registry or git operation.
    pub method: Option<String>,
}

impl Classification {
    /// The permission as recorded: the classified one, or `unknown`
    /// ([`crate::policy::UNKNOWN_PERMISSION`]) for a Google request cassette cannot classify.
    pub fn recorded_permission(&self) -> &str {
        self.permission
            .as_deref()
            .unwrap_or(crate::policy::UNKNOWN_PERMISSION)
    }

    fn new(service: &str) -> Self {
        Classification {
            service: service.to_owned(),
            permission: None,
            resource: None,
            method: None,
        }
    }

    fn permission(mut self, permission: impl Into<String>) -> Self {
        self.permission = Some(permission.into());
        self
    }

    fn maybe_permission(mut self, permission: Option<String>) -> Self {
        self.permission = permission;
        self
    }

    fn resource(mut self, resource: impl Into<String>) -> Self {
        self.resource = Some(resource.into());
        self
    }

    fn method(mut self, method: impl Into<String>) -> Self {
        self.method = Some(method.into());
        self
    }
}

/// The parts of an HTTP request that classification reads.
#[derive(Debug, Clone, Copy)]
pub struct HttpRequest<'a> {
    /// The Host header or `:authority`, maybe with a port.
    pub host: &'a str,
    /// The method, such as `GET`.
    pub method: &'a str,
    /// The path, without the query, as sent (percent-encoded).
    pub path: &'a str,
    /// The query string without the `?`.
    pub query: Option<&'a str>,
    /// The Content-Type header: `application/grpc…` makes the request a gRPC call.
    pub content_type: Option<&'a str>,
}

impl<'a> HttpRequest<'a> {
    /// Splits a request target (`/storage/v1/b?project=p`) into path and query.
    pub fn from_target(
        host: &'a str,
        method: &'a str,
        target: &'a str,
        content_type: Option<&'a str>,
    ) -> Self {
        let (path, query) = match target.split_once('?') {
            Some((path, query)) => (path, Some(query)),
            None => (target, None),
        };
        HttpRequest {
            host,
            method,
            path,
            query,
            content_type,
        }
    }
}

/// Classifies an HTTP request (or a gRPC call carried by one). `None` when the host is not
/// a Google API, registry or Google git host. The path is normalised first
/// ([`crate::path::normalize_path`]): dot segments and doubled slashes name what the server
/// acts on.
pub fn classify(request: &HttpRequest<'_>) -> Option<Classification> {
    let normalized = crate::path::normalize_path(request.path);
    let request = &HttpRequest {
        path: &normalized.path,
        ..*request
    };
    let host = normalize_host(request.host);
    let method = request.method.to_ascii_uppercase();
    let query = Query(request.query.unwrap_or(""));
    let is_grpc = request.content_type.is_some_and(|ct| {
        ct.trim_start()
            .to_ascii_lowercase()
            .starts_with("application/grpc")
    });
    let target = google_host(&host, request.path)?;
    if is_grpc && let GoogleHost::Api(service) = &target {
        return classify_grpc(service, request.path);
    }
    Some(match target {
        GoogleHost::Api(service) => match service.as_str() {
            "storage" => storage::classify_path(&method, request.path, &query),
            _ => classify_rest(&service, &method, request.path, &query),
        },
        GoogleHost::StorageBucket(bucket) => {
            storage::classify_xml(&method, Some(&bucket), request.path, &query)
        }
        GoogleHost::Registry(registry) => registry::classify(&registry, &method, request.path),
        GoogleHost::SourceRepo => registry::classify_source_repo(&method, request.path, &query),
        GoogleHost::SourceManagerGit { location } => {
            registry::classify_source_manager_git(&location, &method, request.path, &query)
        }
        GoogleHost::SourceManager => Classification::new("securesourcemanager"),
    })
}

/// Classifies a request to the upstream the sidecar verified: the host is `host`, never the
/// request's Host header or `:authority` (check those with [`VerifiedHost::check_all`] and
/// refuse a mismatch). `target` is the origin-form target (`/path?query`).
pub fn classify_verified(
    host: &VerifiedHost,
    method: &str,
    target: &str,
    content_type: Option<&str>,
) -> Option<Classification> {
    classify(&HttpRequest::from_target(
        host.name(),
        method,
        target,
        content_type,
    ))
}

/// A REST request on `SERVICE.googleapis.com`: the hand-written tables first (their
/// exceptions are tested), then the table generated from Google's discovery documents for
/// what they do not know.
fn classify_rest(service: &str, method: &str, path: &str, query: &Query<'_>) -> Classification {
    let hand = rest::classify(service, method, path, query);
    if hand.permission.is_some() || rest::needs_no_permission(service, method, path) {
        return hand;
    }
    let Some(found) = generated::find(service, method, path) else {
        return hand;
    };
    let mut c = Classification::new(service)
        .method(found.id)
        .maybe_permission(found.permission.map(str::to_owned));
    c.resource = generated::resource(path).or(hand.resource);
    c
}

/// What a host name tells about the Google service behind it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum GoogleHost {
    /// `SERVICE.googleapis.com` and its regional, mTLS and private forms.
    Api(String),
    /// `BUCKET.storage.googleapis.com`.
    StorageBucket(String),
    /// Artifact Registry (`LOCATION-FORMAT.pkg.dev`) and `gcr.io` hosts.
    Registry(registry::Registry),
    /// Cloud Source Repositories git: `source.developers.google.com`.
    SourceRepo,
    /// Secure Source Manager git: `INSTANCE-PROJECT_NUMBER-git.LOCATION.sourcemanager.dev`.
    SourceManagerGit { location: String },
    /// Other Secure Source Manager hosts (web, instance API).
    SourceManager,
}

/// Whether `host` serves the Cloud Storage API by path, in any of the forms the classifier
/// knows (`storage.googleapis.com`, regional `storage.LOCATION.rep.googleapis.com`, mTLS,
/// Private Service Connect, the shared `www.googleapis.com`, `storage.cloud.google.com`).
pub(crate) fn is_storage_host(host: &str) -> bool {
    matches!(google_host(host, "/storage"), Some(GoogleHost::Api(api)) if api == "storage")
}

fn google_host(host: &str, path: &str) -> Option<GoogleHost> {
    if let Some(bucket) = host.strip_suffix(".storage.googleapis.com") {
        return Some(GoogleHost::StorageBucket(bucket.to_owned()));
    }
    if host == "storage.cloud.google.com" {
        return Some(GoogleHost::Api("storage".to_owned()));
    }
    if host == "source.developers.google.com" {
        return Some(GoogleHost::SourceRepo);
    }
    if let Some(rest) = host.strip_suffix(".sourcemanager.dev") {
        return Some(match rest.split_once('.') {
            Some((instance, location)) if instance.ends_with("-git") => {
                GoogleHost::SourceManagerGit {
                    location: location.to_owned(),
                }
            }
            _ => GoogleHost::SourceManager,
        });
    }
    if let Some(registry) = registry::Registry::from_host(host) {
        return Some(GoogleHost::Registry(registry));
    }
    let name = host.strip_suffix(".googleapis.com")?;
    if name == "www" {
        // The old shared endpoint: www.googleapis.com/storage/v1/…, /upload/storage/v1/…
        let decoded = decode_path(path);
        let mut segments = decoded.trim_start_matches('/').split('/');
        let first = segments.next().unwrap_or("");
        let service = match first {
            "upload" | "download" | "batch" => segments.next().unwrap_or(first),
            _ => first,
        };
        return (!service.is_empty()).then(|| GoogleHost::Api(service.to_owned()));
    }
    Some(GoogleHost::Api(api_name(name).to_owned()))
}

/// The API name from the part of a host before `.googleapis.com`: `pubsub`,
/// `pubsub.us-central1.rep` (regional), `us-central1-pubsub` (locational),
/// `pubsub.mtls`, `storage-myendpoint.p` (Private Service Connect).
fn api_name(name: &str) -> &str {
    let first = name.split('.').next().unwrap_or(name);
    if name.ends_with(".p") {
        return first.split('-').next().unwrap_or(first);
    }
    if name.contains('.') {
        return first;
    }
    // LOCATION-SERVICE, where a location is letters, a dash, letters and digits
    // (us-central1, europe-west4, northamerica-northeast1).
    let mut parts = first.splitn(3, '-');
    if let (Some(area), Some(zone), Some(service)) = (parts.next(), parts.next(), parts.next())
        && area.bytes().all(|b| b.is_ascii_lowercase())
        && zone.bytes().last().is_some_and(|b| b.is_ascii_digit())
        && zone.bytes().next().is_some_and(|b| b.is_ascii_lowercase())
    {
        return service;
    }
    first
}

/// A query string, read on demand.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Query<'a>(&'a str);

impl Query<'_> {
    /// The decoded value of the first `name=` parameter; a bare `name` gives `""`.
    pub(crate) fn get(&self, name: &str) -> Option<String> {
        self.0.split('&').find_map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (decode_query(key) == name).then(|| decode_query(value))
        })
    }

    pub(crate) fn has(&self, name: &str) -> bool {
        self.get(name).is_some()
    }
}

fn decode_query(s: &str) -> String {
    decode_path(&s.replace('+', " "))
}

/// Splits a path into percent-decoded segments, so `%2F` inside a segment stays inside it.
pub(crate) fn segments(path: &str) -> Vec<String> {
    let trimmed = path.strip_prefix('/').unwrap_or(path);
    if trimmed.is_empty() {
        return Vec::new();
    }
    trimmed.split('/').map(decode_path).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (host, method, target, permission, resource)
    type Case = (
        &'static str,
        &'static str,
        &'static str,
        Option<&'static str>,
        Option<&'static str>,
    );

    pub(crate) fn check(cases: &[Case]) {
        for &(host, method, target, permission, resource) in cases {
            let request = HttpRequest::from_target(host, method, target, None);
            let got = classify(&request)
                .unwrap_or_else(|| panic!("{method} {host}{target}: not classified"));
            assert_eq!(
                got.permission.as_deref(),
                permission,
                "{method} {host}{target}: {got:?}"
            );
            if resource.is_some() {
                assert_eq!(
                    got.resource.as_deref(),
                    resource,
                    "{method} {host}{target}: {got:?}"
                );
            }
        }
    }

    #[test]
    fn services_from_hosts() {
        let cases = [
            ("storage.googleapis.com", "/storage/v1/b", "storage"),
            (
                "pubsub.googleapis.com:443",
                "/v1/projects/p/topics",
                "pubsub",
            ),
            ("us-central1-pubsub.googleapis.com", "/v1/x", "pubsub"),
            ("pubsub.us-central1.rep.googleapis.com", "/v1/x", "pubsub"),
            (
                "secretmanager.mtls.googleapis.com",
                "/v1/x",
                "secretmanager",
            ),
            (
                "storage-myendpoint.p.googleapis.com",
                "/storage/v1/b",
                "storage",
            ),
            ("www.googleapis.com", "/storage/v1/b/x", "storage"),
            ("www.googleapis.com", "/upload/storage/v1/b/x/o", "storage"),
            ("iamcredentials.googleapis.com", "/v1/x", "iamcredentials"),
            ("oauth2.googleapis.com", "/token", "oauth2"),
            ("my.bucket.storage.googleapis.com", "/obj", "storage"),
            ("us-docker.pkg.dev", "/v2/", "artifactregistry"),
            ("eu.gcr.io", "/v2/", "artifactregistry"),
            ("source.developers.google.com", "/p/x/r/y", "sourcerepo"),
            (
                "inst-123-git.us-central1.sourcemanager.dev",
                "/p/r.git/info/refs",
                "securesourcemanager",
            ),
        ];
        for (host, path, service) in cases {
            let got = classify(&HttpRequest::from_target(host, "GET", path, None))
                .unwrap_or_else(|| panic!("{host}: not classified"));
            assert_eq!(got.service, service, "{host}{path}");
        }
    }

    /// The host is the verified one whatever the request says: an agent that writes
    /// `Host: secretmanager.googleapis.com` on a connection to storage is classified as
    /// storage (and refused by the authority check).
    #[test]
    fn classification_takes_the_verified_host() {
        let storage = VerifiedHost::new("storage.googleapis.com", 443).unwrap();
        let got = classify_verified(&storage, "DELETE", "/storage/v1/b/logs", None).unwrap();
        assert_eq!(got.service, "storage");
        assert_eq!(got.permission.as_deref(), Some("storage.buckets.delete"));
        assert!(storage.check("secretmanager.googleapis.com", 443).is_err());
        let other = VerifiedHost::new("evil.example", 443).unwrap();
        assert_eq!(
            classify_verified(&other, "DELETE", "/storage/v1/b/logs", None),
            None
        );
    }

    #[test]
    fn other_hosts_are_not_google() {
        for host in [
            "github.com",
            "googleapis.com",
            "storage.googleapis.com.evil.example",
            "example.com",
            "pkg.dev",
        ] {
            assert_eq!(
                classify(&HttpRequest::from_target(host, "GET", "/", None)),
                None,
                "{host}"
            );
        }
    }

    #[test]
    fn grpc_content_type_selects_grpc() {
        let request = HttpRequest::from_target(
            "pubsub.googleapis.com",
            "POST",
            "/google.pubsub.v1.Publisher/Publish",
            Some("application/grpc+proto"),
        );
        let got = classify(&request).unwrap();
        assert_eq!(got.permission.as_deref(), Some("pubsub.topics.publish"));
        assert_eq!(
            got.method.as_deref(),
            Some("google.pubsub.v1.Publisher.Publish")
        );
    }

    #[test]
    fn query_values_are_decoded() {
        let q = Query("project=my%2Dproj&name=a+b%2Fc&flag");
        assert_eq!(q.get("project").as_deref(), Some("my-proj"));
        assert_eq!(q.get("name").as_deref(), Some("a b/c"));
        assert_eq!(q.get("flag").as_deref(), Some(""));
        assert!(!q.has("missing"));
    }
}
