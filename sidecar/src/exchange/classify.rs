//! The classify stage: what an exchange is, as far as its request line tells — the Google
//! service and permission, and git smart HTTP — worked out once and read by every later
//! stage (policy, git, the recording).

use cassette_recording::record::Classification;
use cassette_rules::authority::VerifiedHost;
use cassette_rules::classify::{self, classify_verified};
use cassette_rules::git::{GitService, SmartHttpRequest, smart_http};
use http::HeaderMap;

/// What the request is.
#[derive(Clone, Debug, Default)]
pub struct Classified {
    /// As the recording keeps it; `None` when it is neither Google nor git. An unclassified
    /// Google request's permission is recorded as `unknown`.
    pub record: Option<Classification>,
    /// The Google classification in full (service, permission, method, resource).
    pub google: Option<classify::Classification>,
    /// git smart HTTP, when it is that.
    pub git: Option<SmartHttpRequest>,
}

impl Classified {
    /// The Google service, if any.
    #[cfg(test)]
    pub fn service(&self) -> Option<&str> {
        self.record.as_ref().and_then(|c| c.service.as_deref())
    }

    /// The IAM permission, if known.
    pub fn permission(&self) -> Option<&str> {
        self.google.as_ref().and_then(|c| c.permission.as_deref())
    }
}

/// Classify a request to the verified `host` by its method, target (path and query) and
/// headers. The request's own Host header or `:authority` plays no part.
pub fn request(
    host: &VerifiedHost,
    method: &http::Method,
    target: &str,
    headers: &HeaderMap,
) -> Classified {
    let content_type = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let google = classify_verified(host, method.as_str(), target, content_type);
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    let git = smart_http(method.as_str(), path, query);
    if google.is_none() && git.is_none() {
        return Classified::default();
    }
    Classified {
        record: Some(Classification {
            service: google.as_ref().map(|g| g.service.clone()),
            permission: google.as_ref().map(|g| g.recorded_permission().to_string()),
            git_service: git.as_ref().map(|g| {
                match g.service {
                    GitService::UploadPack => "upload-pack",
                    GitService::ReceivePack => "receive-pack",
                }
                .to_string()
            }),
        }),
        google,
        git,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cassette_rules::git::Phase;

    #[test]
    fn google_and_git_requests_are_classified_once_for_every_stage() {
        let h = HeaderMap::new();
        let host = |name| VerifiedHost::new(name, 443).unwrap();
        let delete = request(
            &host("storage.googleapis.com"),
            &http::Method::DELETE,
            "/storage/v1/b/prod",
            &h,
        );
        assert_eq!(delete.service(), Some("storage"));
        assert_eq!(delete.permission(), Some("storage.buckets.delete"));
        assert!(delete.git.is_none());

        let push = request(
            &host("git.test"),
            &http::Method::POST,
            "/repo.git/git-receive-pack",
            &h,
        );
        let git = push.git.as_ref().unwrap();
        assert_eq!(
            (git.service, git.phase),
            (GitService::ReceivePack, Phase::Rpc)
        );
        assert_eq!(
            push.record.unwrap().git_service.as_deref(),
            Some("receive-pack")
        );

        let other = request(&host("example.com"), &http::Method::GET, "/", &h);
        assert!(other.record.is_none() && other.git.is_none());

        // A Google request cassette cannot classify is recorded with permission "unknown".
        let odd = request(
            &host("storage.googleapis.com"),
            &http::Method::PATCH,
            "/no/such/api",
            &h,
        );
        assert_eq!(odd.service(), Some("storage"));
        assert_eq!(odd.permission(), None);
        assert_eq!(
            odd.record.unwrap().permission.as_deref(),
            Some(cassette_rules::policy::UNKNOWN_PERMISSION)
        );
    }
}
