//! Google hosts that speak other protocols than Google REST: Artifact Registry's package
//! endpoints (Docker/OCI `v2` on `LOCATION-docker.pkg.dev` and `gcr.io`, and the Python,
//! npm, Maven, Go, Apt and Yum endpoints) and the git hosts of Cloud Source Repositories
//! and Secure Source Manager.

use super::{Classification, Query, segments};
use crate::git::{self, GitService};

const ARTIFACT_REGISTRY: &str = "artifactregistry";

/// An Artifact Registry package host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Registry {
    /// The repository location: `us-central1`, `us`, `europe`.
    location: String,
    /// `docker`, `python`, `npm`, `maven`, `go`, `apt`, `yum`.
    format: String,
    /// `gcr.io` hosts keep their images in a repository named after the host.
    gcr_repository: Option<String>,
}

const FORMATS: &[&str] = &["docker", "python", "npm", "maven", "go", "apt", "yum"];

impl Registry {
    pub(super) fn from_host(host: &str) -> Option<Registry> {
        if let Some(name) = host.strip_suffix(".pkg.dev") {
            let (location, format) = name.rsplit_once('-')?;
            if !FORMATS.contains(&format) || location.is_empty() {
                return None;
            }
            return Some(Registry {
                location: location.to_owned(),
                format: format.to_owned(),
                gcr_repository: None,
            });
        }
        let location = match host {
            "gcr.io" | "us.gcr.io" => "us",
            "eu.gcr.io" => "europe",
            "asia.gcr.io" => "asia",
            _ => return None,
        };
        Some(Registry {
            location: location.to_owned(),
            format: "docker".to_owned(),
            gcr_repository: Some(host.to_owned()),
        })
    }

    fn repository(&self, project: &str, repository: &str) -> String {
        format!(
            "projects/{project}/locations/{}/repositories/{repository}",
            self.location
        )
    }
}

pub(super) fn classify(registry: &Registry, method: &str, path: &str) -> Classification {
    if registry.format == "docker" {
        return docker(registry, method, path);
    }
    // Other formats: PROJECT/REPOSITORY/… ; reads download, writes upload.
    let segs = segments(path);
    let c = Classification::new(ARTIFACT_REGISTRY);
    let (Some(project), Some(repo)) = (segs.first(), segs.get(1)) else {
        return c;
    };
    let c = c.resource(registry.repository(project, repo));
    match method {
        "GET" | "HEAD" => c
            .permission("artifactregistry.repositories.downloadArtifacts")
            .method(format!("{}.download", registry.format)),
        "PUT" | "POST" | "PATCH" => c
            .permission("artifactregistry.repositories.uploadArtifacts")
            .method(format!("{}.upload", registry.format)),
        _ => c,
    }
}

/// The OCI distribution API: `/v2/<name>/manifests/<ref>`, `/v2/<name>/blobs/…`,
/// `/v2/<name>/tags/list`. Names are `PROJECT/REPOSITORY/IMAGE…` on pkg.dev and
/// `PROJECT/IMAGE…` on gcr.io.
fn docker(registry: &Registry, method: &str, path: &str) -> Classification {
    let c = Classification::new(ARTIFACT_REGISTRY);
    let segs = segments(path);
    let strs: Vec<&str> = segs.iter().map(String::as_str).collect();
    let Some(("v2", rest)) = strs.split_first().map(|(a, b)| (*a, b)) else {
        return c;
    };
    // Find the operation from the end: the image name may have any number of segments.
    let (name, operation) = match rest {
        [] | [""] => return c.method("oci.ping"),
        ["_catalog"] => return c.method("oci.catalog"),
        [name @ .., "tags", "list"] => (name, Operation::ListTags),
        [name @ .., "manifests", _reference] => (name, Operation::Manifest),
        [name @ .., "blobs", "uploads"] | [name @ .., "blobs", "uploads", _] => {
            (name, Operation::Upload)
        }
        [name @ .., "blobs", _digest] => (name, Operation::Blob),
        [name @ .., "referrers", _digest] => (name, Operation::ListTags),
        _ => return c,
    };
    let (project, repository) = match (&registry.gcr_repository, name) {
        (Some(gcr), [project, _image, ..]) => (*project, gcr.as_str()),
        (None, [project, repository, _image, ..]) => (*project, *repository),
        _ => return c,
    };
    let c = c.resource(registry.repository(project, repository));
    let (oci, permission) = match (operation, method) {
        (Operation::Manifest, "GET" | "HEAD") => ("oci.getManifest", Some("downloadArtifacts")),
        (Operation::Manifest, "PUT") => ("oci.putManifest", Some("uploadArtifacts")),
        (Operation::Manifest, "DELETE") => ("oci.deleteManifest", None),
        (Operation::Blob, "GET" | "HEAD") => ("oci.getBlob", Some("downloadArtifacts")),
        (Operation::Blob, "DELETE") => ("oci.deleteBlob", None),
        (Operation::Upload, "POST" | "PATCH" | "PUT") => {
            ("oci.uploadBlob", Some("uploadArtifacts"))
        }
        (Operation::Upload, "GET") => ("oci.uploadStatus", Some("uploadArtifacts")),
        (Operation::Upload, "DELETE") => ("oci.cancelUpload", Some("uploadArtifacts")),
        (Operation::ListTags, "GET") => ("oci.listTags", Some("downloadArtifacts")),
        _ => return c,
    };
    let c = c.method(oci);
    match (operation, method) {
        // Deleting by digest deletes a version, by tag deletes a tag; a DELETE that names
        // neither cannot be told apart here, so it asks for the version permission only when
        // the reference is a digest.
        (Operation::Manifest, "DELETE") => {
            let reference = strs.last().copied().unwrap_or("");
            let permission = if reference.contains(':') {
                "artifactregistry.versions.delete"
            } else {
                "artifactregistry.tags.delete"
            };
            c.permission(permission)
        }
        _ => c.maybe_permission(permission.map(|p| format!("artifactregistry.repositories.{p}"))),
    }
}

#[derive(Clone, Copy)]
enum Operation {
    Manifest,
    Blob,
    Upload,
    ListTags,
}

/// Cloud Source Repositories: `source.developers.google.com/p/PROJECT/r/REPO[.git]/…`.
pub(super) fn classify_source_repo(method: &str, path: &str, query: &Query<'_>) -> Classification {
    let c = Classification::new("sourcerepo");
    let Some(request) = git::smart_http(method, path, Some(query.0)) else {
        return c;
    };
    let segs = segments(&request.repository);
    let c = match segs.as_slice() {
        [p, project, r, repo] if p == "p" && r == "r" => c.resource(format!(
            "projects/{project}/repos/{}",
            repo.trim_end_matches(".git")
        )),
        _ => c,
    };
    let permission = match request.service {
        GitService::UploadPack => "source.repos.get",
        GitService::ReceivePack => "source.repos.update",
    };
    c.permission(permission).method(request.service.name())
}

/// Secure Source Manager git: `INSTANCE-NUMBER-git.LOCATION.sourcemanager.dev/PROJECT/REPO.git`.
pub(super) fn classify_source_manager_git(
    location: &str,
    method: &str,
    path: &str,
    query: &Query<'_>,
) -> Classification {
    let c = Classification::new("securesourcemanager");
    let Some(request) = git::smart_http(method, path, Some(query.0)) else {
        return c;
    };
    let segs = segments(&request.repository);
    let c = match segs.as_slice() {
        [project, repo] => c.resource(format!(
            "projects/{project}/locations/{location}/repositories/{}",
            repo.trim_end_matches(".git")
        )),
        _ => c,
    };
    let permission = match request.service {
        GitService::UploadPack => "securesourcemanager.repositories.fetch",
        GitService::ReceivePack => "securesourcemanager.repositories.push",
    };
    c.permission(permission).method(request.service.name())
}

#[cfg(test)]
mod tests {
    use crate::classify::tests::check;

    const DOCKER: &str = "us-central1-docker.pkg.dev";
    const REPO: &str = "projects/p/locations/us-central1/repositories/r";

    #[test]

    #[rustfmt::skip]
    fn docker_push_and_pull() {
        check(&[
            // docker pull
            (DOCKER, "GET", "/v2/", None, None),
            (DOCKER, "HEAD", "/v2/p/r/app/manifests/latest", Some("artifactregistry.repositories.downloadArtifacts"), Some(REPO)),
            (DOCKER, "GET", "/v2/p/r/team/app/manifests/sha256:0123abcd", Some("artifactregistry.repositories.downloadArtifacts"), Some(REPO)),
            (DOCKER, "GET", "/v2/p/r/app/blobs/sha256:0123abcd", Some("artifactregistry.repositories.downloadArtifacts"), Some(REPO)),
            (DOCKER, "GET", "/v2/p/r/app/tags/list", Some("artifactregistry.repositories.downloadArtifacts"), None),
            // docker push
            (DOCKER, "HEAD", "/v2/p/r/app/blobs/sha256:0123abcd", Some("artifactregistry.repositories.downloadArtifacts"), None),
            (DOCKER, "POST", "/v2/p/r/app/blobs/uploads/", Some("artifactregistry.repositories.uploadArtifacts"), Some(REPO)),
            (DOCKER, "PATCH", "/v2/p/r/app/blobs/uploads/5f0c-uuid", Some("artifactregistry.repositories.uploadArtifacts"), None),
            (DOCKER, "PUT", "/v2/p/r/app/blobs/uploads/5f0c-uuid?digest=sha256%3A0123abcd", Some("artifactregistry.repositories.uploadArtifacts"), None),
            (DOCKER, "PUT", "/v2/p/r/app/manifests/v1.2", Some("artifactregistry.repositories.uploadArtifacts"), Some(REPO)),
            (DOCKER, "DELETE", "/v2/p/r/app/manifests/v1.2", Some("artifactregistry.tags.delete"), None),
            (DOCKER, "DELETE", "/v2/p/r/app/manifests/sha256:0123abcd", Some("artifactregistry.versions.delete"), None),
            ("gcr.io", "GET", "/v2/p/app/manifests/latest", Some("artifactregistry.repositories.downloadArtifacts"), Some("projects/p/locations/us/repositories/gcr.io")),
            ("eu.gcr.io", "PUT", "/v2/p/app/manifests/latest", Some("artifactregistry.repositories.uploadArtifacts"), Some("projects/p/locations/europe/repositories/eu.gcr.io")),
        ]);
    }

    #[test]

    #[rustfmt::skip]
    fn other_package_formats() {
        check(&[
            ("us-python.pkg.dev", "GET", "/p/py/simple/requests/", Some("artifactregistry.repositories.downloadArtifacts"), Some("projects/p/locations/us/repositories/py")),
            ("us-python.pkg.dev", "POST", "/p/py/", Some("artifactregistry.repositories.uploadArtifacts"), None),
            ("europe-west1-npm.pkg.dev", "PUT", "/p/npm/@scope%2fpkg", Some("artifactregistry.repositories.uploadArtifacts"), Some("projects/p/locations/europe-west1/repositories/npm")),
            ("us-maven.pkg.dev", "GET", "/p/mvn/com/example/lib/1.0/lib-1.0.jar", Some("artifactregistry.repositories.downloadArtifacts"), None),
        ]);
    }

    #[test]

    #[rustfmt::skip]
    fn google_git_hosts() {
        check(&[
            ("source.developers.google.com", "GET", "/p/proj/r/repo/info/refs?service=git-upload-pack", Some("source.repos.get"), Some("projects/proj/repos/repo")),
            ("source.developers.google.com", "POST", "/p/proj/r/repo/git-receive-pack", Some("source.repos.update"), Some("projects/proj/repos/repo")),
            ("source.developers.google.com", "GET", "/p/proj/r/repo/info/refs?service=git-receive-pack", Some("source.repos.update"), None),
            ("inst-123456-git.us-central1.sourcemanager.dev", "POST", "/proj/repo.git/git-upload-pack", Some("securesourcemanager.repositories.fetch"), Some("projects/proj/locations/us-central1/repositories/repo")),
            ("inst-123456-git.us-central1.sourcemanager.dev", "POST", "/proj/repo.git/git-receive-pack", Some("securesourcemanager.repositories.push"), None),
            ("inst-123456-git.us-central1.sourcemanager.dev", "GET", "/proj/repo.git/HEAD", None, None),
        ]);
    }
}
