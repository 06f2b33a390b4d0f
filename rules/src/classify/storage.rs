//! Cloud Storage: the JSON API (`/storage/v1`, `/upload/storage/v1`, `/download/storage/v1`)
//! and the XML API (`storage.googleapis.com/BUCKET/OBJECT`, `BUCKET.storage.googleapis.com`).
//!
//! Permissions follow Google's "IAM permissions for JSON methods" table; XML requests map to
//! the JSON method that does the same thing. Batch requests carry their operations in the
//! body: the request line alone has no permission; [`crate::batch`] reads and classifies
//! each operation.

use super::{Classification, Query, segments};

const SERVICE: &str = "storage";

/// A request on a Storage API host (`storage.googleapis.com`, `www.googleapis.com`).
pub(super) fn classify_path(method: &str, path: &str, query: &Query<'_>) -> Classification {
    let segs = segments(path);
    let strs: Vec<&str> = segs.iter().map(String::as_str).collect();
    match strs.as_slice() {
        ["storage", "v1", rest @ ..] => json(method, rest, query, Api::Json),
        ["upload", "storage", "v1", rest @ ..] => json(method, rest, query, Api::Upload),
        ["download", "storage", "v1", rest @ ..] => json(method, rest, query, Api::Json),
        ["batch", "storage", "v1", ..] | ["batch", ..] => {
            Classification::new(SERVICE).method("storage.batch")
        }
        _ => classify_xml(method, None, path, query),
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Api {
    Json,
    Upload,
}

fn bucket_resource(bucket: &str) -> String {
    format!("projects/_/buckets/{bucket}")
}

fn object_resource(bucket: &str, object: &str) -> String {
    format!("projects/_/buckets/{bucket}/objects/{object}")
}

/// One row of the JSON API table: the discovery method and the permission it needs.
fn op(method: &str, permission: Option<&str>, resource: Option<String>) -> Classification {
    let c = Classification::new(SERVICE)
        .method(format!("storage.{method}"))
        .maybe_permission(permission.map(str::to_owned));
    match resource {
        Some(r) => c.resource(r),
        None => c,
    }
}

fn json(method: &str, rest: &[&str], query: &Query<'_>, api: Api) -> Classification {
    let m = method;
    match rest {
        ["b"] => {
            let project = query.get("project").map(|p| format!("projects/{p}"));
            match m {
                "GET" => op("buckets.list", Some("storage.buckets.list"), project),
                "POST" => op("buckets.insert", Some("storage.buckets.create"), project),
                _ => unknown(),
            }
        }
        ["b", bucket] => {
            let r = Some(bucket_resource(bucket));
            match m {
                "GET" | "HEAD" => op("buckets.get", Some("storage.buckets.get"), r),
                "PATCH" => op("buckets.patch", Some("storage.buckets.update"), r),
                "PUT" => op("buckets.update", Some("storage.buckets.update"), r),
                "DELETE" => op("buckets.delete", Some("storage.buckets.delete"), r),
                _ => unknown(),
            }
        }
        ["b", bucket, "o", objects @ ..] => object_ops(m, bucket, objects, query, api),
        ["b", bucket, sub @ ..] => bucket_sub(m, bucket, sub),
        ["projects", project, "hmacKeys", key @ ..] => {
            let r = match key {
                [] => format!("projects/{project}"),
                _ => format!("projects/{project}/hmacKeys/{}", key.join("/")),
            };
            let (name, perm) = match (m, key.is_empty()) {
                ("GET", true) => ("hmacKeys.list", "storage.hmacKeys.list"),
                ("POST", true) => ("hmacKeys.create", "storage.hmacKeys.create"),
                ("GET", false) => ("hmacKeys.get", "storage.hmacKeys.get"),
                ("PUT", false) => ("hmacKeys.update", "storage.hmacKeys.update"),
                ("DELETE", false) => ("hmacKeys.delete", "storage.hmacKeys.delete"),
                _ => return unknown(),
            };
            op(name, Some(perm), Some(r))
        }
        ["projects", project, "serviceAccount"] if m == "GET" => op(
            "projects.serviceAccount.get",
            Some("resourcemanager.projects.get"),
            Some(format!("projects/{project}")),
        ),
        ["channels", "stop"] => op("channels.stop", None, None),
        _ => unknown(),
    }
}

fn unknown() -> Classification {
    Classification::new(SERVICE)
}

/// `/b/BUCKET/<sub>`: IAM, ACLs, notifications, managed folders, folders, caches.
fn bucket_sub(m: &str, bucket: &str, sub: &[&str]) -> Classification {
    let r = Some(bucket_resource(bucket));
    let acl = |kind: &str, entity: bool| {
        let verb = match (m, entity) {
            ("GET", false) => "list",
            ("GET", true) => "get",
            ("POST", false) => "insert",
            ("PATCH", true) => "patch",
            ("PUT", true) => "update",
            ("DELETE", true) => "delete",
            _ => return unknown(),
        };
        let perm = if m == "GET" {
            "storage.buckets.getIamPolicy"
        } else {
            "storage.buckets.setIamPolicy"
        };
        op(&format!("{kind}.{verb}"), Some(perm), r.clone())
    };
    match sub {
        ["iam"] => match m {
            "GET" => op(
                "buckets.getIamPolicy",
                Some("storage.buckets.getIamPolicy"),
                r,
            ),
            "PUT" => op(
                "buckets.setIamPolicy",
                Some("storage.buckets.setIamPolicy"),
                r,
            ),
            _ => unknown(),
        },
        ["iam", "testPermissions"] => op("buckets.testIamPermissions", None, r),
        ["lockRetentionPolicy"] if m == "POST" => op(
            "buckets.lockRetentionPolicy",
            Some("storage.buckets.update"),
            r,
        ),
        ["restore"] if m == "POST" => op("buckets.restore", Some("storage.buckets.restore"), r),
        ["relocate"] if m == "POST" => op("buckets.relocate", Some("storage.buckets.relocate"), r),
        ["acl"] => acl("bucketAccessControls", false),
        ["acl", _] => acl("bucketAccessControls", true),
        ["defaultObjectAcl"] => acl("defaultObjectAccessControls", false),
        ["defaultObjectAcl", _] => acl("defaultObjectAccessControls", true),
        ["notificationConfigs", rest @ ..] => {
            let (name, perm) = match (m, rest.is_empty()) {
                ("GET", true) => ("notifications.list", "storage.buckets.get"),
                ("POST", true) => ("notifications.insert", "storage.buckets.update"),
                ("GET", false) => ("notifications.get", "storage.buckets.get"),
                ("DELETE", false) => ("notifications.delete", "storage.buckets.update"),
                _ => return unknown(),
            };
            op(name, Some(perm), r)
        }
        ["managedFolders", rest @ ..] => managed_folders(m, bucket, rest),
        ["folders", rest @ ..] => folders(m, bucket, rest),
        ["anywhereCaches", rest @ ..] => {
            let (name, perm) = match (m, rest) {
                ("GET", []) => ("list", "storage.anywhereCaches.list"),
                ("POST", []) => ("insert", "storage.anywhereCaches.create"),
                ("GET", [_]) => ("get", "storage.anywhereCaches.get"),
                ("PATCH", [_]) => ("update", "storage.anywhereCaches.update"),
                ("POST", [_, "pause"]) => ("pause", "storage.anywhereCaches.pause"),
                ("POST", [_, "resume"]) => ("resume", "storage.anywhereCaches.resume"),
                ("POST", [_, "disable"]) => ("disable", "storage.anywhereCaches.disable"),
                _ => return unknown(),
            };
            op(&format!("anywhereCaches.{name}"), Some(perm), r)
        }
        _ => unknown(),
    }
}

fn managed_folders(m: &str, bucket: &str, rest: &[&str]) -> Classification {
    let folder_resource = |name: &str| format!("projects/_/buckets/{bucket}/managedFolders/{name}");
    let (name, perm, r) = match (m, rest) {
        ("GET", []) => ("list", Some("list"), bucket_resource(bucket)),
        ("POST", []) => ("insert", Some("create"), bucket_resource(bucket)),
        (_, [folder @ .., "iam", "testPermissions"]) => (
            "testIamPermissions",
            None,
            folder_resource(&folder.join("/")),
        ),
        ("GET", [folder @ .., "iam"]) => (
            "getIamPolicy",
            Some("getIamPolicy"),
            folder_resource(&folder.join("/")),
        ),
        ("PUT", [folder @ .., "iam"]) => (
            "setIamPolicy",
            Some("setIamPolicy"),
            folder_resource(&folder.join("/")),
        ),
        ("GET", folder) => ("get", Some("get"), folder_resource(&folder.join("/"))),
        ("PATCH" | "PUT", folder) => ("update", Some("update"), folder_resource(&folder.join("/"))),
        ("DELETE", folder) => ("delete", Some("delete"), folder_resource(&folder.join("/"))),
        _ => return unknown(),
    };
    // Managed folders' permissions are spelt in lower case: storage.managedfolders.get.
    op(
        &format!("managedFolders.{name}"),
        perm.map(|p| format!("storage.managedfolders.{p}"))
            .as_deref(),
        Some(r),
    )
}

fn folders(m: &str, bucket: &str, rest: &[&str]) -> Classification {
    let folder_resource =
        |name: &[&str]| format!("projects/_/buckets/{bucket}/folders/{}", name.join("/"));
    let (name, perm, r) = match (m, rest) {
        ("GET", []) => ("list", "storage.folders.list", bucket_resource(bucket)),
        ("POST", []) => ("insert", "storage.folders.create", bucket_resource(bucket)),
        ("POST", [folder @ .., "renameTo", "folders", _dest]) => {
            ("rename", "storage.folders.rename", folder_resource(folder))
        }
        ("GET", folder) => ("get", "storage.folders.get", folder_resource(folder)),
        ("DELETE", folder) => ("delete", "storage.folders.delete", folder_resource(folder)),
        _ => return unknown(),
    };
    op(&format!("folders.{name}"), Some(perm), Some(r))
}

/// `/b/BUCKET/o[/OBJECT[/…]]`. Clients percent-encode the object name into one segment;
/// a name sent with raw slashes is joined back together.
fn object_ops(
    m: &str,
    bucket: &str,
    objects: &[&str],
    query: &Query<'_>,
    api: Api,
) -> Classification {
    if api == Api::Upload {
        // Every upload (simple, multipart, resumable start and its PUT continuations) creates
        // an object; its name is in `name=` (media uploads) or in the metadata part.
        let resource = match (objects, query.get("name")) {
            (_, Some(name)) => object_resource(bucket, &name),
            ([], None) => bucket_resource(bucket),
            (name, None) => object_resource(bucket, &name.join("/")),
        };
        return match m {
            "POST" | "PUT" => op(
                "objects.insert",
                Some("storage.objects.create"),
                Some(resource),
            ),
            _ => unknown(),
        };
    }
    match (m, objects) {
        ("GET", []) => op(
            "objects.list",
            Some("storage.objects.list"),
            Some(bucket_resource(bucket)),
        ),
        ("POST", []) => op(
            "objects.insert",
            Some("storage.objects.create"),
            Some(bucket_resource(bucket)),
        ),
        ("POST", ["watch"]) => op(
            "objects.watchAll",
            Some("storage.objects.list"),
            Some(bucket_resource(bucket)),
        ),
        ("POST", ["bulkRestore"]) => op(
            "objects.bulkRestore",
            Some("storage.objects.restore"),
            Some(bucket_resource(bucket)),
        ),
        ("POST", [object @ .., "compose"]) if !object.is_empty() => op(
            "objects.compose",
            Some("storage.objects.create"),
            Some(object_resource(bucket, &object.join("/"))),
        ),
        ("POST", [object @ .., "restore"]) if !object.is_empty() => op(
            "objects.restore",
            Some("storage.objects.restore"),
            Some(object_resource(bucket, &object.join("/"))),
        ),
        ("POST", rest) if copy_target(rest).is_some() => {
            let Some((kind, dest_bucket, dest_object)) = copy_target(rest) else {
                return unknown();
            };
            op(
                &format!("objects.{kind}"),
                Some("storage.objects.create"),
                Some(object_resource(dest_bucket, &dest_object)),
            )
        }
        ("POST", [object @ .., "moveTo", "o", dest]) if !object.is_empty() => op(
            "objects.move",
            Some("storage.objects.move"),
            Some(object_resource(bucket, dest)),
        ),
        (_, [object @ .., "acl"]) if !object.is_empty() => {
            object_acl(m, false, object_resource(bucket, &object.join("/")))
        }
        (_, [object @ .., "acl", _entity]) if !object.is_empty() => {
            object_acl(m, true, object_resource(bucket, &object.join("/")))
        }
        (_, object) => {
            let r = Some(object_resource(bucket, &object.join("/")));
            match m {
                "GET" | "HEAD" => op("objects.get", Some("storage.objects.get"), r),
                "PATCH" => op("objects.patch", Some("storage.objects.update"), r),
                "PUT" => op("objects.update", Some("storage.objects.update"), r),
                "DELETE" => op("objects.delete", Some("storage.objects.delete"), r),
                _ => unknown(),
            }
        }
    }
}

/// `OBJECT/rewriteTo/b/DEST/o/DEST_OBJECT` or `OBJECT/copyTo/b/…`.
fn copy_target<'a>(rest: &[&'a str]) -> Option<(&'static str, &'a str, String)> {
    let at = rest
        .iter()
        .position(|s| *s == "rewriteTo" || *s == "copyTo")?;
    if at == 0 {
        return None;
    }
    let kind = if rest[at] == "rewriteTo" {
        "rewrite"
    } else {
        "copy"
    };
    match &rest[at + 1..] {
        ["b", dest_bucket, "o", dest @ ..] if !dest.is_empty() => {
            Some((kind, dest_bucket, dest.join("/")))
        }
        _ => None,
    }
}

fn object_acl(m: &str, entity: bool, resource: String) -> Classification {
    let verb = match (m, entity) {
        ("GET", false) => "list",
        ("GET", true) => "get",
        ("POST", false) => "insert",
        ("PATCH", true) => "patch",
        ("PUT", true) => "update",
        ("DELETE", true) => "delete",
        _ => return unknown(),
    };
    let perm = if m == "GET" {
        "storage.objects.getIamPolicy"
    } else {
        "storage.objects.setIamPolicy"
    };
    op(
        &format!("objectAccessControls.{verb}"),
        Some(perm),
        Some(resource),
    )
}

/// Bucket subresources of the XML API that read or write bucket configuration.
const XML_BUCKET_CONFIG: &[&str] = &[
    "billing",
    "cors",
    "encryptionConfig",
    "lifecycle",
    "location",
    "logging",
    "storageClass",
    "versioning",
    "websiteConfig",
    "tagging",
];

/// The XML API: `/BUCKET/OBJECT` on storage.googleapis.com, or `/OBJECT` on a bucket host.
pub(super) fn classify_xml(
    method: &str,
    bucket_host: Option<&str>,
    path: &str,
    query: &Query<'_>,
) -> Classification {
    let segs = segments(path);
    let (bucket, object): (Option<&str>, Vec<&str>) = match bucket_host {
        Some(bucket) => (Some(bucket), segs.iter().map(String::as_str).collect()),
        None => match segs.split_first() {
            Some((bucket, rest)) if !bucket.is_empty() => {
                (Some(bucket), rest.iter().map(String::as_str).collect())
            }
            _ => (None, Vec::new()),
        },
    };
    let object = object.join("/");
    let m = method;
    let Some(bucket) = bucket else {
        // GET / lists the buckets of the project in x-goog-project-id.
        return match m {
            "GET" => op("buckets.list", Some("storage.buckets.list"), None),
            _ => unknown(),
        };
    };
    let config = XML_BUCKET_CONFIG.iter().any(|k| query.has(k));
    if object.is_empty() {
        let r = Some(bucket_resource(bucket));
        return match m {
            "GET" | "HEAD" if query.has("acl") => op(
                "bucketAccessControls.list",
                Some("storage.buckets.getIamPolicy"),
                r,
            ),
            "GET" if query.has("uploads") => op(
                "multipartUploads.list",
                Some("storage.multipartUploads.list"),
                r,
            ),
            "GET" | "HEAD" if config || m == "HEAD" => {
                op("buckets.get", Some("storage.buckets.get"), r)
            }
            "GET" => op("objects.list", Some("storage.objects.list"), r),
            "PUT" if query.has("acl") => op(
                "bucketAccessControls.update",
                Some("storage.buckets.setIamPolicy"),
                r,
            ),
            "PUT" | "DELETE" if config => op("buckets.patch", Some("storage.buckets.update"), r),
            "PUT" => op("buckets.insert", Some("storage.buckets.create"), r),
            "DELETE" => op("buckets.delete", Some("storage.buckets.delete"), r),
            // An HTML form upload names the object in the form body.
            "POST" => op("objects.insert", Some("storage.objects.create"), r),
            _ => unknown(),
        };
    }
    let r = Some(object_resource(bucket, &object));
    match m {
        "GET" | "HEAD" if query.has("acl") => op(
            "objectAccessControls.list",
            Some("storage.objects.getIamPolicy"),
            r,
        ),
        "GET" if query.has("uploadId") => op(
            "multipartUploads.listParts",
            Some("storage.multipartUploads.listParts"),
            r,
        ),
        "GET" | "HEAD" => op("objects.get", Some("storage.objects.get"), r),
        "PUT" if query.has("acl") => op(
            "objectAccessControls.update",
            Some("storage.objects.setIamPolicy"),
            r,
        ),
        "PUT" | "POST" if query.has("uploadId") || query.has("uploads") => op(
            "multipartUploads.create",
            Some("storage.multipartUploads.create"),
            r,
        ),
        // PUT writes an object (or copies one, with x-goog-copy-source); POST starts a
        // resumable upload (x-goog-resumable: start).
        "PUT" | "POST" => op("objects.insert", Some("storage.objects.create"), r),
        "DELETE" if query.has("uploadId") => op(
            "multipartUploads.abort",
            Some("storage.multipartUploads.abort"),
            r,
        ),
        "DELETE" => op("objects.delete", Some("storage.objects.delete"), r),
        _ => unknown(),
    }
}

#[cfg(test)]
mod tests {
    use crate::classify::tests::check;
    use crate::classify::{HttpRequest, classify};

    const S: &str = "storage.googleapis.com";

    #[test]

    #[rustfmt::skip]
    fn json_api_request_lines() {
        check(&[
            // gcloud storage ls / gsutil ls
            (S, "GET", "/storage/v1/b?project=p&alt=json", Some("storage.buckets.list"), Some("projects/p")),
            (S, "POST", "/storage/v1/b?project=p", Some("storage.buckets.create"), Some("projects/p")),
            (S, "GET", "/storage/v1/b/bkt?alt=json", Some("storage.buckets.get"), Some("projects/_/buckets/bkt")),
            (S, "PATCH", "/storage/v1/b/bkt", Some("storage.buckets.update"), None),
            (S, "DELETE", "/storage/v1/b/bkt", Some("storage.buckets.delete"), Some("projects/_/buckets/bkt")),
            (S, "GET", "/storage/v1/b/bkt/iam", Some("storage.buckets.getIamPolicy"), None),
            (S, "PUT", "/storage/v1/b/bkt/iam", Some("storage.buckets.setIamPolicy"), None),
            (S, "GET", "/storage/v1/b/bkt/iam/testPermissions?permissions=storage.buckets.get", None, None),
            (S, "POST", "/storage/v1/b/bkt/lockRetentionPolicy?ifMetagenerationMatch=3", Some("storage.buckets.update"), None),
            (S, "GET", "/storage/v1/b/bkt/acl", Some("storage.buckets.getIamPolicy"), None),
            (S, "DELETE", "/storage/v1/b/bkt/acl/allUsers", Some("storage.buckets.setIamPolicy"), None),
            (S, "POST", "/storage/v1/b/bkt/defaultObjectAcl", Some("storage.buckets.setIamPolicy"), None),
            (S, "POST", "/storage/v1/b/bkt/notificationConfigs", Some("storage.buckets.update"), None),
            (S, "GET", "/storage/v1/b/bkt/notificationConfigs/1", Some("storage.buckets.get"), None),
            // gcloud storage ls gs://bkt
            (S, "GET", "/storage/v1/b/bkt/o?alt=json&delimiter=%2F&includeFoldersAsPrefixes=True&maxResults=1000&projection=noAcl", Some("storage.objects.list"), Some("projects/_/buckets/bkt")),
            (S, "GET", "/storage/v1/b/bkt/o/obj?alt=media", Some("storage.objects.get"), Some("projects/_/buckets/bkt/objects/obj")),
            (S, "GET", "/storage/v1/b/bkt/o/dir%2Fsub%2Ffile.txt?alt=json", Some("storage.objects.get"), Some("projects/_/buckets/bkt/objects/dir/sub/file.txt")),
            (S, "PATCH", "/storage/v1/b/bkt/o/obj", Some("storage.objects.update"), None),
            (S, "DELETE", "/storage/v1/b/bkt/o/a%2Fb?generation=17", Some("storage.objects.delete"), Some("projects/_/buckets/bkt/objects/a/b")),
            (S, "POST", "/storage/v1/b/bkt/o/merged/compose", Some("storage.objects.create"), Some("projects/_/buckets/bkt/objects/merged")),
            (S, "POST", "/storage/v1/b/src/o/a%2Fb/rewriteTo/b/dst/o/c%2Fd", Some("storage.objects.create"), Some("projects/_/buckets/dst/objects/c/d")),
            (S, "POST", "/storage/v1/b/src/o/a/copyTo/b/dst/o/b", Some("storage.objects.create"), Some("projects/_/buckets/dst/objects/b")),
            (S, "POST", "/storage/v1/b/bkt/o/obj/restore?generation=5", Some("storage.objects.restore"), None),
            (S, "POST", "/storage/v1/b/bkt/o/old/moveTo/o/new", Some("storage.objects.move"), Some("projects/_/buckets/bkt/objects/new")),
            (S, "GET", "/storage/v1/b/bkt/o/obj/acl", Some("storage.objects.getIamPolicy"), None),
            (S, "PUT", "/storage/v1/b/bkt/o/obj/acl/allUsers", Some("storage.objects.setIamPolicy"), None),
            (S, "POST", "/storage/v1/b/bkt/o/watch", Some("storage.objects.list"), None),
            (S, "GET", "/storage/v1/b/bkt/o/watch", Some("storage.objects.get"), Some("projects/_/buckets/bkt/objects/watch")),
            (S, "GET", "/storage/v1/b/bkt/managedFolders", Some("storage.managedfolders.list"), None),
            (S, "GET", "/storage/v1/b/bkt/managedFolders/team%2Fa/iam", Some("storage.managedfolders.getIamPolicy"), Some("projects/_/buckets/bkt/managedFolders/team/a")),
            (S, "DELETE", "/storage/v1/b/bkt/managedFolders/team", Some("storage.managedfolders.delete"), None),
            (S, "POST", "/storage/v1/b/bkt/folders", Some("storage.folders.create"), None),
            (S, "POST", "/storage/v1/b/bkt/folders/a%2F/renameTo/folders/b%2F", Some("storage.folders.rename"), None),
            (S, "POST", "/storage/v1/b/bkt/anywhereCaches/us-c1/pause", Some("storage.anywhereCaches.pause"), None),
            (S, "GET", "/storage/v1/projects/p/hmacKeys", Some("storage.hmacKeys.list"), Some("projects/p")),
            (S, "POST", "/storage/v1/projects/p/hmacKeys?serviceAccountEmail=sa%40p.iam.gserviceaccount.com", Some("storage.hmacKeys.create"), None),
            (S, "DELETE", "/storage/v1/projects/p/hmacKeys/GOOG1E", Some("storage.hmacKeys.delete"), None),
            (S, "GET", "/storage/v1/projects/p/serviceAccount", Some("resourcemanager.projects.get"), None),
            // The old shared endpoint, as older gsutil versions use.
            ("www.googleapis.com", "GET", "/storage/v1/b/bkt/o/obj?alt=media", Some("storage.objects.get"), None),
            // Emulators and tests reach the same API on a local port.
            ("storage.googleapis.com:443", "DELETE", "/storage/v1/b/bkt", Some("storage.buckets.delete"), None),
        ]);
    }

    /// Dot segments and doubled slashes name the bucket the server acts on.
    #[test]

    #[rustfmt::skip]
    fn dot_segments_and_doubled_slashes() {
        check(&[
            (S, "DELETE", "/storage/v1/b/x/../logs", Some("storage.buckets.delete"), Some("projects/_/buckets/logs")),
            (S, "DELETE", "//storage/v1/b/logs/o/x", Some("storage.objects.delete"), Some("projects/_/buckets/logs/objects/x")),
            (S, "DELETE", "/storage/v1/b/./logs/o/x", Some("storage.objects.delete"), Some("projects/_/buckets/logs/objects/x")),
            (S, "GET", "/storage/v1/b/%6Cogs/o/x", Some("storage.objects.get"), Some("projects/_/buckets/logs/objects/x")),
            // An encoded slash stays inside the object name, as Google reads it.
            (S, "DELETE", "/storage/v1/b/logs/o/..%2F..%2Fother", Some("storage.objects.delete"), Some("projects/_/buckets/logs/objects/../../other")),
        ]);
    }

    #[test]

    #[rustfmt::skip]
    fn uploads_and_downloads() {
        check(&[
            (S, "POST", "/upload/storage/v1/b/bkt/o?uploadType=multipart", Some("storage.objects.create"), Some("projects/_/buckets/bkt")),
            (S, "POST", "/upload/storage/v1/b/bkt/o?uploadType=media&name=dir%2Ffile.txt", Some("storage.objects.create"), Some("projects/_/buckets/bkt/objects/dir/file.txt")),
            (S, "POST", "/upload/storage/v1/b/bkt/o?uploadType=resumable&name=big.bin&ifGenerationMatch=0", Some("storage.objects.create"), None),
            (S, "PUT", "/upload/storage/v1/b/bkt/o?uploadType=resumable&upload_id=ADPycdt", Some("storage.objects.create"), None),
            (S, "GET", "/download/storage/v1/b/bkt/o/obj?alt=media", Some("storage.objects.get"), Some("projects/_/buckets/bkt/objects/obj")),
            ("www.googleapis.com", "POST", "/upload/storage/v1/b/bkt/o?uploadType=multipart", Some("storage.objects.create"), None),
        ]);
    }

    #[test]

    #[rustfmt::skip]
    fn xml_api_request_lines() {
        check(&[
            (S, "GET", "/", Some("storage.buckets.list"), None),
            (S, "GET", "/bkt", Some("storage.objects.list"), Some("projects/_/buckets/bkt")),
            (S, "GET", "/bkt?prefix=logs%2F&delimiter=%2F", Some("storage.objects.list"), None),
            (S, "HEAD", "/bkt", Some("storage.buckets.get"), None),
            (S, "PUT", "/bkt", Some("storage.buckets.create"), None),
            (S, "DELETE", "/bkt", Some("storage.buckets.delete"), None),
            (S, "GET", "/bkt?versioning", Some("storage.buckets.get"), None),
            (S, "PUT", "/bkt?cors", Some("storage.buckets.update"), None),
            (S, "GET", "/bkt?acl", Some("storage.buckets.getIamPolicy"), None),
            (S, "GET", "/bkt/dir/file.txt", Some("storage.objects.get"), Some("projects/_/buckets/bkt/objects/dir/file.txt")),
            (S, "PUT", "/bkt/dir/file.txt", Some("storage.objects.create"), None),
            (S, "DELETE", "/bkt/file.txt", Some("storage.objects.delete"), None),
            (S, "PUT", "/bkt/file.txt?acl", Some("storage.objects.setIamPolicy"), None),
            (S, "POST", "/bkt/big?uploads", Some("storage.multipartUploads.create"), None),
            (S, "PUT", "/bkt/big?partNumber=2&uploadId=xyz", Some("storage.multipartUploads.create"), None),
            (S, "DELETE", "/bkt/big?uploadId=xyz", Some("storage.multipartUploads.abort"), None),
            ("bkt.storage.googleapis.com", "GET", "/dir/file.txt", Some("storage.objects.get"), Some("projects/_/buckets/bkt/objects/dir/file.txt")),
            ("my.dotted.bkt.storage.googleapis.com", "GET", "/", Some("storage.objects.list"), Some("projects/_/buckets/my.dotted.bkt")),
            ("bkt.storage.googleapis.com", "DELETE", "/", Some("storage.buckets.delete"), None),
            ("storage.cloud.google.com", "GET", "/bkt/obj", Some("storage.objects.get"), None),
        ]);
    }

    #[test]

    #[rustfmt::skip]
    fn batch_is_left_unknown() {
        let got = classify(&HttpRequest::from_target(
            S,
            "POST",
            "/batch/storage/v1",
            Some("multipart/mixed; boundary=x"),
        ))
        .unwrap();
        assert_eq!(got.service, "storage");
        assert_eq!(got.permission, None);
        assert_eq!(got.method.as_deref(), Some("storage.batch"));
    }

    #[test]

    #[rustfmt::skip]
    fn method_names_are_json_api_ids() {
        let got = classify(&HttpRequest::from_target(
            S,
            "POST",
            "/upload/storage/v1/b/bkt/o?uploadType=multipart",
            None,
        ))
        .unwrap();
        assert_eq!(got.method.as_deref(), Some("storage.objects.insert"));
    }
}
