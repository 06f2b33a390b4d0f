//! Resource-oriented Google REST APIs (AIP-131…136): `/v1/projects/p/secrets/s:addVersion`.
//!
//! The path names a collection or a resource, the HTTP method or a `:verb` says what is done
//! to it, and the permission is `<prefix>.<collection>.<verb>` with per-service exceptions
//! written out below. Only collections listed for a service get a permission; anything else
//! on a known host keeps its service and no permission.

use super::{Classification, Query, segments};

/// How one API spells its permissions.
struct Api {
    /// The API name (`secretmanager`).
    service: &'static str,
    /// The IAM prefix (`secretmanager`; `resourcemanager` for cloudresourcemanager).
    prefix: &'static str,
    /// (collection in the path, collection in the permission)
    collections: &'static [(&'static str, &'static str)],
    /// (permission collection, `:verb`, permission) — `None` means no permission is needed.
    verbs: &'static [(&'static str, &'static str, Option<&'static str>)],
    /// Pub/Sub creates topics, subscriptions and snapshots with PUT on the resource.
    put_creates: bool,
}

#[rustfmt::skip]
const PUBSUB: Api = Api {
    service: "pubsub",
    prefix: "pubsub",
    collections: &[
        ("topics", "topics"),
        ("subscriptions", "subscriptions"),
        ("snapshots", "snapshots"),
        ("schemas", "schemas"),
    ],
    verbs: &[
        ("topics", "publish", Some("pubsub.topics.publish")),
        ("subscriptions", "pull", Some("pubsub.subscriptions.consume")),
        ("subscriptions", "streamingPull", Some("pubsub.subscriptions.consume")),
        ("subscriptions", "acknowledge", Some("pubsub.subscriptions.consume")),
        ("subscriptions", "modifyAckDeadline", Some("pubsub.subscriptions.consume")),
        ("subscriptions", "seek", Some("pubsub.subscriptions.consume")),
        ("subscriptions", "modifyPushConfig", Some("pubsub.subscriptions.update")),
        ("subscriptions", "detach", Some("pubsub.topics.detachSubscription")),
        ("schemas", "validate", Some("pubsub.schemas.validate")),
        ("schemas", "validateMessage", Some("pubsub.schemas.validate")),
        ("schemas", "commit", Some("pubsub.schemas.commit")),
        ("schemas", "rollback", Some("pubsub.schemas.rollback")),
        ("schemas", "listRevisions", Some("pubsub.schemas.listRevisions")),
        ("schemas", "deleteRevision", Some("pubsub.schemas.deleteRevision")),
    ],
    put_creates: true,
};

#[rustfmt::skip]
const SECRET_MANAGER: Api = Api {
    service: "secretmanager",
    prefix: "secretmanager",
    collections: &[
        ("secrets", "secrets"),
        ("versions", "versions"),
        ("locations", "locations"),
    ],
    verbs: &[
        ("secrets", "addVersion", Some("secretmanager.versions.add")),
        ("versions", "access", Some("secretmanager.versions.access")),
        ("versions", "enable", Some("secretmanager.versions.enable")),
        ("versions", "disable", Some("secretmanager.versions.disable")),
        ("versions", "destroy", Some("secretmanager.versions.destroy")),
    ],
    put_creates: false,
};

#[rustfmt::skip]
const IAM: Api = Api {
    service: "iam",
    prefix: "iam",
    collections: &[
        ("serviceAccounts", "serviceAccounts"),
        ("keys", "serviceAccountKeys"),
        ("roles", "roles"),
        ("workloadIdentityPools", "workloadIdentityPools"),
        ("providers", "workloadIdentityPoolProviders"),
        ("workforcePools", "workforcePools"),
    ],
    verbs: &[
        ("serviceAccounts", "patch", Some("iam.serviceAccounts.update")),
        ("serviceAccounts", "enable", Some("iam.serviceAccounts.enable")),
        ("serviceAccounts", "disable", Some("iam.serviceAccounts.disable")),
        ("serviceAccounts", "undelete", Some("iam.serviceAccounts.undelete")),
        ("serviceAccounts", "signBlob", Some("iam.serviceAccounts.signBlob")),
        ("serviceAccounts", "signJwt", Some("iam.serviceAccounts.signJwt")),
        ("serviceAccountKeys", "upload", Some("iam.serviceAccountKeys.create")),
        ("serviceAccountKeys", "enable", Some("iam.serviceAccountKeys.enable")),
        ("serviceAccountKeys", "disable", Some("iam.serviceAccountKeys.disable")),
        ("roles", "undelete", Some("iam.roles.undelete")),
        ("roles", "queryGrantableRoles", None),
        ("workloadIdentityPools", "undelete", Some("iam.workloadIdentityPools.undelete")),
        ("workloadIdentityPoolProviders", "undelete", Some("iam.workloadIdentityPoolProviders.undelete")),
    ],
    put_creates: false,
};

#[rustfmt::skip]
const IAM_CREDENTIALS: Api = Api {
    service: "iamcredentials",
    prefix: "iam",
    collections: &[("serviceAccounts", "serviceAccounts")],
    verbs: &[
        ("serviceAccounts", "generateAccessToken", Some("iam.serviceAccounts.getAccessToken")),
        ("serviceAccounts", "generateIdToken", Some("iam.serviceAccounts.getOpenIdToken")),
        ("serviceAccounts", "signBlob", Some("iam.serviceAccounts.signBlob")),
        ("serviceAccounts", "signJwt", Some("iam.serviceAccounts.signJwt")),
    ],
    put_creates: false,
};

#[rustfmt::skip]
const RESOURCE_MANAGER: Api = Api {
    service: "cloudresourcemanager",
    prefix: "resourcemanager",
    collections: &[
        ("projects", "projects"),
        ("folders", "folders"),
        ("organizations", "organizations"),
        ("tagKeys", "tagKeys"),
        ("tagValues", "tagValues"),
    ],
    verbs: &[
        ("projects", "undelete", Some("resourcemanager.projects.undelete")),
        ("projects", "move", Some("resourcemanager.projects.move")),
        ("projects", "search", Some("resourcemanager.projects.get")),
        ("projects", "getAncestry", Some("resourcemanager.projects.get")),
        ("folders", "undelete", Some("resourcemanager.folders.undelete")),
        ("folders", "move", Some("resourcemanager.folders.move")),
        ("folders", "search", Some("resourcemanager.folders.get")),
        ("organizations", "search", Some("resourcemanager.organizations.get")),
    ],
    put_creates: false,
};

#[rustfmt::skip]
const SOURCE_REPO: Api = Api {
    service: "sourcerepo",
    prefix: "source",
    collections: &[("repos", "repos")],
    verbs: &[],
    put_creates: false,
};

#[rustfmt::skip]
const SECURE_SOURCE_MANAGER: Api = Api {
    service: "securesourcemanager",
    prefix: "securesourcemanager",
    collections: &[("instances", "instances"), ("repositories", "repositories")],
    verbs: &[],
    put_creates: false,
};

#[rustfmt::skip]
const ARTIFACT_REGISTRY: Api = Api {
    service: "artifactregistry",
    prefix: "artifactregistry",
    collections: &[
        ("repositories", "repositories"),
        ("packages", "packages"),
        ("versions", "versions"),
        ("tags", "tags"),
        ("files", "files"),
        ("dockerImages", "dockerimages"),
        ("mavenArtifacts", "mavenartifacts"),
        ("npmPackages", "npmpackages"),
        ("pythonPackages", "pythonpackages"),
    ],
    verbs: &[("files", "download", Some("artifactregistry.files.download"))],
    put_creates: false,
};

#[rustfmt::skip]
const CLOUD_BUILD: Api = Api {
    service: "cloudbuild",
    prefix: "cloudbuild",
    collections: &[
        ("builds", "builds"),
        // Triggers are governed by the builds permissions.
        ("triggers", "builds"),
        ("workerPools", "workerpools"),
        ("connections", "connections"),
        ("repositories", "repositories"),
    ],
    verbs: &[
        ("builds", "cancel", Some("cloudbuild.builds.update")),
        ("builds", "retry", Some("cloudbuild.builds.create")),
        ("builds", "approve", Some("cloudbuild.builds.approve")),
        ("builds", "run", Some("cloudbuild.builds.create")),
        // Webhook-triggered builds authenticate with a secret in the URL, not IAM.
        ("builds", "webhook", None),
        ("repositories", "accessReadToken", Some("cloudbuild.repositories.accessReadToken")),
        ("repositories", "accessReadWriteToken", Some("cloudbuild.repositories.accessReadWriteToken")),
    ],
    put_creates: false,
};

const APIS: &[&Api] = &[
    &PUBSUB,
    &SECRET_MANAGER,
    &IAM,
    &IAM_CREDENTIALS,
    &RESOURCE_MANAGER,
    &SOURCE_REPO,
    &SECURE_SOURCE_MANAGER,
    &ARTIFACT_REGISTRY,
    &CLOUD_BUILD,
];

/// A REST path read as alternating collections and ids, with an optional custom verb.
#[derive(Debug)]
struct ResourcePath {
    /// Decoded segments after the version, without the verb.
    segments: Vec<String>,
    /// The `:verb` on the last segment.
    verb: Option<String>,
}

impl ResourcePath {
    /// Reads `/v1/projects/p/secrets/s:addVersion`; `None` without a version segment.
    fn parse(path: &str) -> Option<ResourcePath> {
        let mut segs = segments(path);
        let version = segs.first()?;
        if !is_version(version) {
            return None;
        }
        segs.remove(0);
        let mut verb = None;
        if let Some(last) = segs.last_mut()
            && let Some((id, v)) = last.rsplit_once(':')
            && is_verb(v)
            && !is_digest_algorithm(id)
        {
            verb = Some(v.to_owned());
            *last = id.to_owned();
            if last.is_empty() {
                segs.pop();
            }
        }
        Some(ResourcePath {
            segments: segs,
            verb,
        })
    }

    /// The collection names (even positions), in order.
    fn collections(&self) -> Vec<&str> {
        self.segments
            .iter()
            .step_by(2)
            .map(String::as_str)
            .collect()
    }

    /// True when the path ends in an id (a resource), false when it ends in a collection.
    fn names_resource(&self) -> bool {
        !self.segments.is_empty() && self.segments.len().is_multiple_of(2)
    }

    /// The resource name: the whole path for a resource, the parent for a collection.
    fn resource(&self) -> Option<String> {
        let end = if self.names_resource() {
            self.segments.len()
        } else {
            self.segments.len().saturating_sub(1)
        };
        (end > 0).then(|| self.segments[..end].join("/"))
    }
}

fn is_version(segment: &str) -> bool {
    let Some(rest) = segment.strip_prefix('v') else {
        return false;
    };
    rest.as_bytes().first().is_some_and(u8::is_ascii_digit)
        && rest.bytes().all(|b| b.is_ascii_alphanumeric())
}

fn is_verb(verb: &str) -> bool {
    verb.as_bytes().first().is_some_and(u8::is_ascii_lowercase)
        && verb.bytes().all(|b| b.is_ascii_alphabetic())
}

/// `sha256:abc…` in a digest is not a custom verb.
fn is_digest_algorithm(id: &str) -> bool {
    ["sha256", "sha512", "sha1"]
        .iter()
        .any(|alg| id.ends_with(alg))
}

/// A request on `SERVICE.googleapis.com` other than Storage.
pub(super) fn classify(
    service: &str,
    method: &str,
    path: &str,
    _query: &Query<'_>,
) -> Classification {
    let unknown = Classification::new(service);
    let Some(api) = APIS.iter().find(|api| api.service == service) else {
        return unknown;
    };
    let Some(rp) = ResourcePath::parse(path) else {
        return unknown;
    };
    let collections = rp.collections();
    let discovery = discovery_id(service, &collections, method, &rp);
    let mut c = Classification::new(service);
    if let Some(d) = discovery {
        c = c.method(d);
    }
    if let Some(r) = rp.resource() {
        c = c.resource(r);
    }
    c.maybe_permission(permission(api, &rp, &collections, method))
}

/// Whether the hand-written tables know that a request needs no permission (predefined
/// roles, `testIamPermissions`, a verb listed without one), so that the generated table
/// does not give it one.
pub(super) fn needs_no_permission(service: &str, method: &str, path: &str) -> bool {
    let Some(api) = APIS.iter().find(|api| api.service == service) else {
        return false;
    };
    let Some(rp) = ResourcePath::parse(path) else {
        return false;
    };
    let collections = rp.collections();
    if let Some(p) = special_case(api, &rp, &collections, method) {
        return p.is_none();
    }
    let collection = collections.last().and_then(|last| {
        api.collections
            .iter()
            .find(|(path_name, _)| path_name == last)
            .map(|(_, perm_name)| *perm_name)
    });
    match (collection, rp.verb.as_deref()) {
        (_, Some("testIamPermissions")) => true,
        (Some(collection), Some(verb)) => api
            .verbs
            .iter()
            .any(|(coll, v, perm)| *coll == collection && *v == verb && perm.is_none()),
        _ => false,
    }
}

/// The permission for a parsed path, or `None` when it is not known.
fn permission(api: &Api, rp: &ResourcePath, collections: &[&str], method: &str) -> Option<String> {
    if let Some(p) = special_case(api, rp, collections, method) {
        return p;
    }
    let last = *collections.last()?;
    let collection = api
        .collections
        .iter()
        .find(|(path_name, _)| *path_name == last)
        .map(|(_, perm_name)| *perm_name)?;
    let verb = match rp.verb.as_deref() {
        Some(verb) => {
            if let Some((_, _, perm)) = api
                .verbs
                .iter()
                .find(|(coll, v, _)| *coll == collection && *v == verb)
            {
                return perm.map(str::to_owned);
            }
            match verb {
                "getIamPolicy" | "setIamPolicy" => verb,
                // Anyone may ask which of their own permissions they hold.
                _ => return None,
            }
        }
        None => match (method, rp.names_resource()) {
            ("GET", false) => "list",
            ("POST", false) => "create",
            ("GET", true) => "get",
            ("PUT", true) if api.put_creates => "create",
            ("PATCH" | "PUT", true) => "update",
            ("DELETE", true) => "delete",
            _ => return None,
        },
    };
    Some(format!("{}.{collection}.{verb}", api.prefix))
}

/// Paths whose permission does not follow from the collection and the verb.
/// `Some(None)` means "known to need no permission (or not knowable)".
fn special_case(
    api: &Api,
    rp: &ResourcePath,
    collections: &[&str],
    method: &str,
) -> Option<Option<String>> {
    let segs: Vec<&str> = rp.segments.iter().map(String::as_str).collect();
    let verb = rp.verb.as_deref();
    let owned = |p: &str| Some(Some(p.to_owned()));
    match (api.service, segs.as_slice(), verb, method) {
        // Listing a topic's subscriptions or snapshots reads the topic.
        ("pubsub", ["projects", _, "topics", _, "subscriptions" | "snapshots"], None, "GET") => {
            owned("pubsub.topics.get")
        }
        // Predefined roles and permission queries need no permission.
        ("iam", ["roles", ..] | ["permissions"], _, _) => Some(None),
        ("iam", ["iamPolicies"], _, _) => Some(None),
        // Deny policies: /v2/policies/<attachment point>/denypolicies[/<id>]
        ("iam", ["policies", _, "denypolicies", rest @ ..], None, _) => {
            let verb = match (method, rest.len()) {
                ("GET", 0) => "list",
                ("POST", 0) => "create",
                ("GET", 1) => "get",
                ("PUT" | "PATCH", 1) => "update",
                ("DELETE", 1) => "delete",
                _ => return Some(None),
            };
            Some(Some(format!("iam.denypolicies.{verb}")))
        }
        // Liens are created and deleted with the project's updateLiens permission.
        ("cloudresourcemanager", ["liens", ..], None, "POST" | "DELETE") => {
            owned("resourcemanager.projects.updateLiens")
        }
        ("cloudresourcemanager", ["liens", ..], None, "GET") => {
            owned("resourcemanager.projects.get")
        }
        // A project's Source Repositories settings.
        ("sourcerepo", ["projects", _, "config"], None, "GET") => {
            owned("source.repos.getProjectConfig")
        }
        ("sourcerepo", ["projects", _, "config"], None, "PATCH") => {
            owned("source.repos.updateProjectConfig")
        }
        ("artifactregistry", ["projects", _, "projectSettings"], None, "GET") => {
            owned("artifactregistry.projectsettings.get")
        }
        ("artifactregistry", ["projects", _, "projectSettings"], None, "PATCH") => {
            owned("artifactregistry.projectsettings.update")
        }
        _ if collections.last() == Some(&"operations") => Some(None),
        _ => None,
    }
}

/// The discovery-document method id: `secretmanager.projects.secrets.versions.access`.
fn discovery_id(
    service: &str,
    collections: &[&str],
    method: &str,
    rp: &ResourcePath,
) -> Option<String> {
    if collections.is_empty() {
        return None;
    }
    let verb = match (rp.verb.as_deref(), method, rp.names_resource()) {
        (Some(v), _, _) => v,
        (None, "GET", false) => "list",
        (None, "POST", false) => "create",
        (None, "GET", true) => "get",
        (None, "PATCH", true) => "patch",
        (None, "PUT", true) if service == "pubsub" => "create",
        (None, "PUT", true) => "update",
        (None, "DELETE", true) => "delete",
        _ => return None,
    };
    Some(format!("{service}.{}.{verb}", collections.join(".")))
}

#[cfg(test)]
mod tests {
    use crate::classify::tests::check;
    use crate::classify::{HttpRequest, classify};

    const PUBSUB: &str = "pubsub.googleapis.com";
    const SM: &str = "secretmanager.googleapis.com";
    const IAM: &str = "iam.googleapis.com";
    const CRM: &str = "cloudresourcemanager.googleapis.com";
    const AR: &str = "artifactregistry.googleapis.com";
    const CB: &str = "cloudbuild.googleapis.com";

    #[test]

    #[rustfmt::skip]
    fn pubsub_rest() {
        check(&[
            (PUBSUB, "PUT", "/v1/projects/p/topics/t", Some("pubsub.topics.create"), Some("projects/p/topics/t")),
            (PUBSUB, "GET", "/v1/projects/p/topics/t", Some("pubsub.topics.get"), None),
            (PUBSUB, "PATCH", "/v1/projects/p/topics/t", Some("pubsub.topics.update"), None),
            (PUBSUB, "DELETE", "/v1/projects/p/topics/t", Some("pubsub.topics.delete"), None),
            (PUBSUB, "GET", "/v1/projects/p/topics?pageSize=100", Some("pubsub.topics.list"), Some("projects/p")),
            (PUBSUB, "POST", "/v1/projects/p/topics/t:publish", Some("pubsub.topics.publish"), Some("projects/p/topics/t")),
            (PUBSUB, "GET", "/v1/projects/p/topics/t/subscriptions", Some("pubsub.topics.get"), None),
            (PUBSUB, "GET", "/v1/projects/p/topics/t:getIamPolicy", Some("pubsub.topics.getIamPolicy"), None),
            (PUBSUB, "POST", "/v1/projects/p/topics/t:setIamPolicy", Some("pubsub.topics.setIamPolicy"), None),
            (PUBSUB, "POST", "/v1/projects/p/topics/t:testIamPermissions", None, None),
            (PUBSUB, "PUT", "/v1/projects/p/subscriptions/s", Some("pubsub.subscriptions.create"), None),
            (PUBSUB, "POST", "/v1/projects/p/subscriptions/s:pull", Some("pubsub.subscriptions.consume"), None),
            (PUBSUB, "POST", "/v1/projects/p/subscriptions/s:acknowledge", Some("pubsub.subscriptions.consume"), None),
            (PUBSUB, "POST", "/v1/projects/p/subscriptions/s:modifyAckDeadline", Some("pubsub.subscriptions.consume"), None),
            (PUBSUB, "POST", "/v1/projects/p/subscriptions/s:modifyPushConfig", Some("pubsub.subscriptions.update"), None),
            (PUBSUB, "POST", "/v1/projects/p/subscriptions/s:detach", Some("pubsub.topics.detachSubscription"), None),
            (PUBSUB, "PUT", "/v1/projects/p/snapshots/snap", Some("pubsub.snapshots.create"), None),
            (PUBSUB, "POST", "/v1/projects/p/schemas?schemaId=s", Some("pubsub.schemas.create"), None),
            (PUBSUB, "POST", "/v1/projects/p/schemas:validate", Some("pubsub.schemas.validate"), None),
            (PUBSUB, "POST", "/v1/projects/p/schemas/s:commit", Some("pubsub.schemas.commit"), None),
        ]);
    }

    #[test]

    #[rustfmt::skip]
    fn secret_manager_rest() {
        check(&[
            (SM, "GET", "/v1/projects/p/secrets", Some("secretmanager.secrets.list"), Some("projects/p")),
            (SM, "POST", "/v1/projects/p/secrets?secretId=s", Some("secretmanager.secrets.create"), None),
            (SM, "GET", "/v1/projects/p/secrets/s", Some("secretmanager.secrets.get"), None),
            (SM, "PATCH", "/v1/projects/p/secrets/s?updateMask=labels", Some("secretmanager.secrets.update"), None),
            (SM, "DELETE", "/v1/projects/p/secrets/s", Some("secretmanager.secrets.delete"), None),
            (SM, "POST", "/v1/projects/p/secrets/s:addVersion", Some("secretmanager.versions.add"), Some("projects/p/secrets/s")),
            (SM, "GET", "/v1/projects/p/secrets/s/versions", Some("secretmanager.versions.list"), Some("projects/p/secrets/s")),
            (SM, "GET", "/v1/projects/p/secrets/s/versions/3", Some("secretmanager.versions.get"), None),
            (SM, "GET", "/v1/projects/p/secrets/s/versions/latest:access", Some("secretmanager.versions.access"), Some("projects/p/secrets/s/versions/latest")),
            (SM, "POST", "/v1/projects/p/secrets/s/versions/latest:access", Some("secretmanager.versions.access"), None),
            (SM, "POST", "/v1/projects/p/secrets/s/versions/2:destroy", Some("secretmanager.versions.destroy"), None),
            (SM, "POST", "/v1/projects/p/secrets/s/versions/2:disable", Some("secretmanager.versions.disable"), None),
            (SM, "GET", "/v1/projects/p/secrets/s:getIamPolicy", Some("secretmanager.secrets.getIamPolicy"), None),
            (SM, "POST", "/v1/projects/p/secrets/s:setIamPolicy", Some("secretmanager.secrets.setIamPolicy"), None),
            (SM, "GET", "/v1/projects/p/locations/us-east1/secrets/s/versions/1:access", Some("secretmanager.versions.access"), None),
            ("secretmanager.us-east1.rep.googleapis.com", "GET", "/v1/projects/p/locations/us-east1/secrets", Some("secretmanager.secrets.list"), None),
            (SM, "GET", "/v1/projects/p/locations", Some("secretmanager.locations.list"), None),
        ]);
    }

    #[test]

    #[rustfmt::skip]
    fn iam_rest() {
        check(&[
            (IAM, "POST", "/v1/projects/-/serviceAccounts/sa@p.iam.gserviceaccount.com/keys", Some("iam.serviceAccountKeys.create"), Some("projects/-/serviceAccounts/sa@p.iam.gserviceaccount.com")),
            (IAM, "POST", "/v1/projects/p/serviceAccounts/sa%40p.iam.gserviceaccount.com/keys", Some("iam.serviceAccountKeys.create"), Some("projects/p/serviceAccounts/sa@p.iam.gserviceaccount.com")),
            (IAM, "POST", "/v1/projects/p/serviceAccounts/sa@p.iam.gserviceaccount.com/keys:upload", Some("iam.serviceAccountKeys.create"), None),
            (IAM, "GET", "/v1/projects/p/serviceAccounts/sa@p.iam.gserviceaccount.com/keys?keyTypes=USER_MANAGED", Some("iam.serviceAccountKeys.list"), None),
            (IAM, "DELETE", "/v1/projects/p/serviceAccounts/sa@p.iam.gserviceaccount.com/keys/abc123", Some("iam.serviceAccountKeys.delete"), None),
            (IAM, "POST", "/v1/projects/p/serviceAccounts/sa@p.iam.gserviceaccount.com/keys/abc123:disable", Some("iam.serviceAccountKeys.disable"), None),
            (IAM, "GET", "/v1/projects/p/serviceAccounts", Some("iam.serviceAccounts.list"), None),
            (IAM, "POST", "/v1/projects/p/serviceAccounts", Some("iam.serviceAccounts.create"), None),
            (IAM, "DELETE", "/v1/projects/p/serviceAccounts/sa@p.iam.gserviceaccount.com", Some("iam.serviceAccounts.delete"), None),
            (IAM, "POST", "/v1/projects/p/serviceAccounts/sa@p.iam.gserviceaccount.com:getIamPolicy", Some("iam.serviceAccounts.getIamPolicy"), None),
            (IAM, "POST", "/v1/projects/p/serviceAccounts/sa@p.iam.gserviceaccount.com:setIamPolicy", Some("iam.serviceAccounts.setIamPolicy"), None),
            (IAM, "POST", "/v1/projects/p/serviceAccounts/sa@p.iam.gserviceaccount.com:signJwt", Some("iam.serviceAccounts.signJwt"), None),
            (IAM, "POST", "/v1/projects/p/roles", Some("iam.roles.create"), None),
            (IAM, "PATCH", "/v1/projects/p/roles/deployer", Some("iam.roles.update"), None),
            (IAM, "GET", "/v1/roles/editor", None, None),
            (IAM, "POST", "/v1/permissions:queryTestablePermissions", None, None),
            (IAM, "GET", "/v1/projects/p/locations/global/workloadIdentityPools/pool/providers/gh", Some("iam.workloadIdentityPoolProviders.get"), None),
            (IAM, "POST", "/v2/policies/cloudresourcemanager.googleapis.com%2Fprojects%2Fp/denypolicies?policyId=x", Some("iam.denypolicies.create"), None),
            ("iamcredentials.googleapis.com", "POST", "/v1/projects/-/serviceAccounts/sa@p.iam.gserviceaccount.com:generateAccessToken", Some("iam.serviceAccounts.getAccessToken"), Some("projects/-/serviceAccounts/sa@p.iam.gserviceaccount.com")),
            ("iamcredentials.googleapis.com", "POST", "/v1/projects/-/serviceAccounts/sa@p.iam.gserviceaccount.com:generateIdToken", Some("iam.serviceAccounts.getOpenIdToken"), None),
            ("iamcredentials.googleapis.com", "POST", "/v1/projects/-/serviceAccounts/sa@p.iam.gserviceaccount.com:signBlob", Some("iam.serviceAccounts.signBlob"), None),
        ]);
    }

    #[test]

    #[rustfmt::skip]
    fn resource_manager_rest() {
        check(&[
            (CRM, "POST", "/v1/projects/p:getIamPolicy", Some("resourcemanager.projects.getIamPolicy"), Some("projects/p")),
            (CRM, "POST", "/v1/projects/p:setIamPolicy", Some("resourcemanager.projects.setIamPolicy"), None),
            (CRM, "POST", "/v3/projects/p:setIamPolicy", Some("resourcemanager.projects.setIamPolicy"), None),
            (CRM, "POST", "/v1/projects/p:testIamPermissions", None, None),
            (CRM, "GET", "/v1/projects/p", Some("resourcemanager.projects.get"), None),
            (CRM, "GET", "/v1/projects?filter=name%3Adev", Some("resourcemanager.projects.list"), None),
            (CRM, "DELETE", "/v3/projects/p", Some("resourcemanager.projects.delete"), None),
            (CRM, "POST", "/v3/projects/p:move", Some("resourcemanager.projects.move"), None),
            (CRM, "GET", "/v3/projects:search?query=parent%3Afolders%2F1", Some("resourcemanager.projects.get"), None),
            (CRM, "POST", "/v3/folders/123:getIamPolicy", Some("resourcemanager.folders.getIamPolicy"), None),
            (CRM, "POST", "/v1/organizations/42:setIamPolicy", Some("resourcemanager.organizations.setIamPolicy"), None),
            (CRM, "POST", "/v3/tagKeys", Some("resourcemanager.tagKeys.create"), None),
            (CRM, "POST", "/v3/liens", Some("resourcemanager.projects.updateLiens"), None),
            (CRM, "GET", "/v3/operations/op1", None, None),
        ]);
    }

    #[test]

    #[rustfmt::skip]
    fn source_artifact_and_build_rest() {
        check(&[
            ("sourcerepo.googleapis.com", "GET", "/v1/projects/p/repos", Some("source.repos.list"), None),
            ("sourcerepo.googleapis.com", "POST", "/v1/projects/p/repos", Some("source.repos.create"), None),
            ("sourcerepo.googleapis.com", "DELETE", "/v1/projects/p/repos/r", Some("source.repos.delete"), None),
            ("sourcerepo.googleapis.com", "GET", "/v1/projects/p/repos/r:getIamPolicy", Some("source.repos.getIamPolicy"), None),
            ("sourcerepo.googleapis.com", "PATCH", "/v1/projects/p/config", Some("source.repos.updateProjectConfig"), None),
            ("securesourcemanager.googleapis.com", "POST", "/v1/projects/p/locations/us-central1/repositories?repository_id=r", Some("securesourcemanager.repositories.create"), None),
            ("securesourcemanager.googleapis.com", "DELETE", "/v1/projects/p/locations/us-central1/instances/i", Some("securesourcemanager.instances.delete"), None),
            (AR, "GET", "/v1/projects/p/locations/us/repositories", Some("artifactregistry.repositories.list"), Some("projects/p/locations/us")),
            (
                AR,
                "DELETE",
                "/v1/projects/p/locations/us/repositories/r/packages/img/versions/sha256:abcdef0123",
                Some("artifactregistry.versions.delete"),
                Some(
                    "projects/p/locations/us/repositories/r/packages/img/versions/sha256:abcdef0123",
                ),
            ),
            (AR, "GET", "/v1/projects/p/locations/us/repositories/r/dockerImages", Some("artifactregistry.dockerimages.list"), None),
            (AR, "GET", "/v1/projects/p/locations/us/repositories/r/files/f:download?alt=media", Some("artifactregistry.files.download"), None),
            (AR, "POST", "/v1/projects/p/locations/us/repositories/r:setIamPolicy", Some("artifactregistry.repositories.setIamPolicy"), None),
            (CB, "POST", "/v1/projects/p/builds", Some("cloudbuild.builds.create"), Some("projects/p")),
            (CB, "POST", "/v1/projects/p/locations/us-central1/builds", Some("cloudbuild.builds.create"), None),
            (CB, "GET", "/v1/projects/p/builds/b1", Some("cloudbuild.builds.get"), None),
            (CB, "POST", "/v1/projects/p/builds/b1:cancel", Some("cloudbuild.builds.update"), None),
            (CB, "POST", "/v1/projects/p/triggers/t:run", Some("cloudbuild.builds.create"), None),
            (CB, "PATCH", "/v1/projects/p/triggers/t", Some("cloudbuild.builds.update"), None),
            (CB, "GET", "/v1/projects/p/locations/us-central1/workerPools", Some("cloudbuild.workerpools.list"), None),
            (CB, "GET", "/v1/projects/p/locations/us-central1/operations/x", None, None),
        ]);
    }

    #[test]

    #[rustfmt::skip]
    fn discovery_method_ids() {
        let cases = [
            (SM, "GET", "/v1/projects/p/secrets/s/versions/latest:access", "secretmanager.projects.secrets.versions.access"),
            (PUBSUB, "PUT", "/v1/projects/p/topics/t", "pubsub.projects.topics.create"),
            (IAM, "POST", "/v1/projects/-/serviceAccounts/sa/keys", "iam.projects.serviceAccounts.keys.create"),
            (CRM, "POST", "/v1/projects/p:getIamPolicy", "cloudresourcemanager.projects.getIamPolicy"),
        ];
        for (host, method, target, want) in cases {
            let got = classify(&HttpRequest::from_target(host, method, target, None)).unwrap();
            assert_eq!(got.method.as_deref(), Some(want), "{method} {host}{target}");
        }
    }

    #[test]

    #[rustfmt::skip]
    fn unknown_paths_keep_the_service() {
        let cases = [
            (SM, "GET", "/"),
            (SM, "GET", "/v1/projects/p/unknownThings/x"),
            (PUBSUB, "POST", "/v1/projects/p/topics/t:frobnicate"),
        ];
        for (host, method, target) in cases {
            let got = classify(&HttpRequest::from_target(host, method, target, None)).unwrap();
            assert_eq!(got.permission, None, "{method} {host}{target}: {got:?}");
            assert!(host.starts_with(&got.service), "{got:?}");
        }
    }
}
