//! gRPC calls to Google APIs: `/google.pubsub.v1.Publisher/Publish` → `pubsub.topics.publish`.
//!
//! The resource is in the request message, which is not read here, so gRPC classifications
//! carry no resource; `google.iam.v1.IAMPolicy` calls, whose permission depends on that
//! resource, carry no permission either.

use super::Classification;

/// (proto package, API name)
const PACKAGES: &[(&str, &str)] = &[
    ("google.storage.v2", "storage"),
    ("google.pubsub.v1", "pubsub"),
    ("google.cloud.secretmanager.v1", "secretmanager"),
    ("google.cloud.secretmanager.v1beta2", "secretmanager"),
    ("google.iam.admin.v1", "iam"),
    ("google.iam.credentials.v1", "iamcredentials"),
    ("google.cloud.resourcemanager.v3", "cloudresourcemanager"),
    ("google.devtools.sourcerepo.v1", "sourcerepo"),
    ("google.cloud.securesourcemanager.v1", "securesourcemanager"),
    ("google.devtools.artifactregistry.v1", "artifactregistry"),
    ("google.devtools.cloudbuild.v1", "cloudbuild"),
    ("google.devtools.cloudbuild.v2", "cloudbuild"),
];

/// (service, method, permission); a `None` permission means none is needed or it cannot be
/// known without the request message.
#[rustfmt::skip]
const METHODS: &[(&str, &str, Option<&str>)] = &[
    // Cloud Storage
    ("google.storage.v2.Storage", "DeleteBucket", Some("storage.buckets.delete")),
    ("google.storage.v2.Storage", "GetBucket", Some("storage.buckets.get")),
    ("google.storage.v2.Storage", "CreateBucket", Some("storage.buckets.create")),
    ("google.storage.v2.Storage", "ListBuckets", Some("storage.buckets.list")),
    ("google.storage.v2.Storage", "LockBucketRetentionPolicy", Some("storage.buckets.update")),
    ("google.storage.v2.Storage", "UpdateBucket", Some("storage.buckets.update")),
    ("google.storage.v2.Storage", "GetIamPolicy", None),
    ("google.storage.v2.Storage", "SetIamPolicy", None),
    ("google.storage.v2.Storage", "TestIamPermissions", None),
    ("google.storage.v2.Storage", "ComposeObject", Some("storage.objects.create")),
    ("google.storage.v2.Storage", "DeleteObject", Some("storage.objects.delete")),
    ("google.storage.v2.Storage", "RestoreObject", Some("storage.objects.restore")),
    ("google.storage.v2.Storage", "GetObject", Some("storage.objects.get")),
    ("google.storage.v2.Storage", "ReadObject", Some("storage.objects.get")),
    ("google.storage.v2.Storage", "BidiReadObject", Some("storage.objects.get")),
    ("google.storage.v2.Storage", "UpdateObject", Some("storage.objects.update")),
    ("google.storage.v2.Storage", "WriteObject", Some("storage.objects.create")),
    ("google.storage.v2.Storage", "BidiWriteObject", Some("storage.objects.create")),
    ("google.storage.v2.Storage", "StartResumableWrite", Some("storage.objects.create")),
    ("google.storage.v2.Storage", "QueryWriteStatus", Some("storage.objects.create")),
    ("google.storage.v2.Storage", "CancelResumableWrite", Some("storage.objects.create")),
    ("google.storage.v2.Storage", "ListObjects", Some("storage.objects.list")),
    ("google.storage.v2.Storage", "RewriteObject", Some("storage.objects.create")),
    ("google.storage.v2.Storage", "MoveObject", Some("storage.objects.move")),
    // Pub/Sub
    ("google.pubsub.v1.Publisher", "CreateTopic", Some("pubsub.topics.create")),
    ("google.pubsub.v1.Publisher", "UpdateTopic", Some("pubsub.topics.update")),
    ("google.pubsub.v1.Publisher", "Publish", Some("pubsub.topics.publish")),
    ("google.pubsub.v1.Publisher", "GetTopic", Some("pubsub.topics.get")),
    ("google.pubsub.v1.Publisher", "ListTopics", Some("pubsub.topics.list")),
    ("google.pubsub.v1.Publisher", "ListTopicSubscriptions", Some("pubsub.topics.get")),
    ("google.pubsub.v1.Publisher", "ListTopicSnapshots", Some("pubsub.topics.get")),
    ("google.pubsub.v1.Publisher", "DeleteTopic", Some("pubsub.topics.delete")),
    ("google.pubsub.v1.Publisher", "DetachSubscription", Some("pubsub.topics.detachSubscription")),
    ("google.pubsub.v1.Subscriber", "CreateSubscription", Some("pubsub.subscriptions.create")),
    ("google.pubsub.v1.Subscriber", "GetSubscription", Some("pubsub.subscriptions.get")),
    ("google.pubsub.v1.Subscriber", "UpdateSubscription", Some("pubsub.subscriptions.update")),
    ("google.pubsub.v1.Subscriber", "ListSubscriptions", Some("pubsub.subscriptions.list")),
    ("google.pubsub.v1.Subscriber", "DeleteSubscription", Some("pubsub.subscriptions.delete")),
    ("google.pubsub.v1.Subscriber", "ModifyAckDeadline", Some("pubsub.subscriptions.consume")),
    ("google.pubsub.v1.Subscriber", "Acknowledge", Some("pubsub.subscriptions.consume")),
    ("google.pubsub.v1.Subscriber", "Pull", Some("pubsub.subscriptions.consume")),
    ("google.pubsub.v1.Subscriber", "StreamingPull", Some("pubsub.subscriptions.consume")),
    ("google.pubsub.v1.Subscriber", "ModifyPushConfig", Some("pubsub.subscriptions.update")),
    ("google.pubsub.v1.Subscriber", "Seek", Some("pubsub.subscriptions.consume")),
    ("google.pubsub.v1.Subscriber", "GetSnapshot", Some("pubsub.snapshots.get")),
    ("google.pubsub.v1.Subscriber", "ListSnapshots", Some("pubsub.snapshots.list")),
    ("google.pubsub.v1.Subscriber", "CreateSnapshot", Some("pubsub.snapshots.create")),
    ("google.pubsub.v1.Subscriber", "UpdateSnapshot", Some("pubsub.snapshots.update")),
    ("google.pubsub.v1.Subscriber", "DeleteSnapshot", Some("pubsub.snapshots.delete")),
    ("google.pubsub.v1.SchemaService", "CreateSchema", Some("pubsub.schemas.create")),
    ("google.pubsub.v1.SchemaService", "GetSchema", Some("pubsub.schemas.get")),
    ("google.pubsub.v1.SchemaService", "ListSchemas", Some("pubsub.schemas.list")),
    ("google.pubsub.v1.SchemaService", "ListSchemaRevisions", Some("pubsub.schemas.listRevisions")),
    ("google.pubsub.v1.SchemaService", "CommitSchema", Some("pubsub.schemas.commit")),
    ("google.pubsub.v1.SchemaService", "RollbackSchema", Some("pubsub.schemas.rollback")),
    ("google.pubsub.v1.SchemaService", "DeleteSchemaRevision", Some("pubsub.schemas.deleteRevision")),
    ("google.pubsub.v1.SchemaService", "DeleteSchema", Some("pubsub.schemas.delete")),
    ("google.pubsub.v1.SchemaService", "ValidateSchema", Some("pubsub.schemas.validate")),
    ("google.pubsub.v1.SchemaService", "ValidateMessage", Some("pubsub.schemas.validate")),
    // Secret Manager
    ("google.cloud.secretmanager.v1.SecretManagerService", "ListSecrets", Some("secretmanager.secrets.list")),
    ("google.cloud.secretmanager.v1.SecretManagerService", "CreateSecret", Some("secretmanager.secrets.create")),
    ("google.cloud.secretmanager.v1.SecretManagerService", "AddSecretVersion", Some("secretmanager.versions.add")),
    ("google.cloud.secretmanager.v1.SecretManagerService", "GetSecret", Some("secretmanager.secrets.get")),
    ("google.cloud.secretmanager.v1.SecretManagerService", "UpdateSecret", Some("secretmanager.secrets.update")),
    ("google.cloud.secretmanager.v1.SecretManagerService", "DeleteSecret", Some("secretmanager.secrets.delete")),
    ("google.cloud.secretmanager.v1.SecretManagerService", "ListSecretVersions", Some("secretmanager.versions.list")),
    ("google.cloud.secretmanager.v1.SecretManagerService", "GetSecretVersion", Some("secretmanager.versions.get")),
    ("google.cloud.secretmanager.v1.SecretManagerService", "AccessSecretVersion", Some("secretmanager.versions.access")),
    ("google.cloud.secretmanager.v1.SecretManagerService", "DisableSecretVersion", Some("secretmanager.versions.disable")),
    ("google.cloud.secretmanager.v1.SecretManagerService", "EnableSecretVersion", Some("secretmanager.versions.enable")),
    ("google.cloud.secretmanager.v1.SecretManagerService", "DestroySecretVersion", Some("secretmanager.versions.destroy")),
    ("google.cloud.secretmanager.v1.SecretManagerService", "SetIamPolicy", Some("secretmanager.secrets.setIamPolicy")),
    ("google.cloud.secretmanager.v1.SecretManagerService", "GetIamPolicy", Some("secretmanager.secrets.getIamPolicy")),
    ("google.cloud.secretmanager.v1.SecretManagerService", "TestIamPermissions", None),
    // IAM credentials
    ("google.iam.credentials.v1.IAMCredentials", "GenerateAccessToken", Some("iam.serviceAccounts.getAccessToken")),
    ("google.iam.credentials.v1.IAMCredentials", "GenerateIdToken", Some("iam.serviceAccounts.getOpenIdToken")),
    ("google.iam.credentials.v1.IAMCredentials", "SignBlob", Some("iam.serviceAccounts.signBlob")),
    ("google.iam.credentials.v1.IAMCredentials", "SignJwt", Some("iam.serviceAccounts.signJwt")),
    // IAM admin
    ("google.iam.admin.v1.IAM", "ListServiceAccounts", Some("iam.serviceAccounts.list")),
    ("google.iam.admin.v1.IAM", "GetServiceAccount", Some("iam.serviceAccounts.get")),
    ("google.iam.admin.v1.IAM", "CreateServiceAccount", Some("iam.serviceAccounts.create")),
    ("google.iam.admin.v1.IAM", "UpdateServiceAccount", Some("iam.serviceAccounts.update")),
    ("google.iam.admin.v1.IAM", "PatchServiceAccount", Some("iam.serviceAccounts.update")),
    ("google.iam.admin.v1.IAM", "DeleteServiceAccount", Some("iam.serviceAccounts.delete")),
    ("google.iam.admin.v1.IAM", "UndeleteServiceAccount", Some("iam.serviceAccounts.undelete")),
    ("google.iam.admin.v1.IAM", "EnableServiceAccount", Some("iam.serviceAccounts.enable")),
    ("google.iam.admin.v1.IAM", "DisableServiceAccount", Some("iam.serviceAccounts.disable")),
    ("google.iam.admin.v1.IAM", "ListServiceAccountKeys", Some("iam.serviceAccountKeys.list")),
    ("google.iam.admin.v1.IAM", "GetServiceAccountKey", Some("iam.serviceAccountKeys.get")),
    ("google.iam.admin.v1.IAM", "CreateServiceAccountKey", Some("iam.serviceAccountKeys.create")),
    ("google.iam.admin.v1.IAM", "UploadServiceAccountKey", Some("iam.serviceAccountKeys.create")),
    ("google.iam.admin.v1.IAM", "DeleteServiceAccountKey", Some("iam.serviceAccountKeys.delete")),
    ("google.iam.admin.v1.IAM", "DisableServiceAccountKey", Some("iam.serviceAccountKeys.disable")),
    ("google.iam.admin.v1.IAM", "EnableServiceAccountKey", Some("iam.serviceAccountKeys.enable")),
    ("google.iam.admin.v1.IAM", "SignBlob", Some("iam.serviceAccounts.signBlob")),
    ("google.iam.admin.v1.IAM", "SignJwt", Some("iam.serviceAccounts.signJwt")),
    ("google.iam.admin.v1.IAM", "GetIamPolicy", Some("iam.serviceAccounts.getIamPolicy")),
    ("google.iam.admin.v1.IAM", "SetIamPolicy", Some("iam.serviceAccounts.setIamPolicy")),
    ("google.iam.admin.v1.IAM", "CreateRole", Some("iam.roles.create")),
    ("google.iam.admin.v1.IAM", "UpdateRole", Some("iam.roles.update")),
    ("google.iam.admin.v1.IAM", "DeleteRole", Some("iam.roles.delete")),
    ("google.iam.admin.v1.IAM", "UndeleteRole", Some("iam.roles.undelete")),
    // Resource Manager
    ("google.cloud.resourcemanager.v3.Projects", "GetProject", Some("resourcemanager.projects.get")),
    ("google.cloud.resourcemanager.v3.Projects", "ListProjects", Some("resourcemanager.projects.list")),
    ("google.cloud.resourcemanager.v3.Projects", "SearchProjects", Some("resourcemanager.projects.get")),
    ("google.cloud.resourcemanager.v3.Projects", "CreateProject", Some("resourcemanager.projects.create")),
    ("google.cloud.resourcemanager.v3.Projects", "UpdateProject", Some("resourcemanager.projects.update")),
    ("google.cloud.resourcemanager.v3.Projects", "MoveProject", Some("resourcemanager.projects.move")),
    ("google.cloud.resourcemanager.v3.Projects", "DeleteProject", Some("resourcemanager.projects.delete")),
    ("google.cloud.resourcemanager.v3.Projects", "UndeleteProject", Some("resourcemanager.projects.undelete")),
    ("google.cloud.resourcemanager.v3.Projects", "GetIamPolicy", Some("resourcemanager.projects.getIamPolicy")),
    ("google.cloud.resourcemanager.v3.Projects", "SetIamPolicy", Some("resourcemanager.projects.setIamPolicy")),
    ("google.cloud.resourcemanager.v3.Projects", "TestIamPermissions", None),
    ("google.cloud.resourcemanager.v3.Folders", "GetFolder", Some("resourcemanager.folders.get")),
    ("google.cloud.resourcemanager.v3.Folders", "ListFolders", Some("resourcemanager.folders.list")),
    ("google.cloud.resourcemanager.v3.Folders", "CreateFolder", Some("resourcemanager.folders.create")),
    ("google.cloud.resourcemanager.v3.Folders", "UpdateFolder", Some("resourcemanager.folders.update")),
    ("google.cloud.resourcemanager.v3.Folders", "MoveFolder", Some("resourcemanager.folders.move")),
    ("google.cloud.resourcemanager.v3.Folders", "DeleteFolder", Some("resourcemanager.folders.delete")),
    ("google.cloud.resourcemanager.v3.Folders", "GetIamPolicy", Some("resourcemanager.folders.getIamPolicy")),
    ("google.cloud.resourcemanager.v3.Folders", "SetIamPolicy", Some("resourcemanager.folders.setIamPolicy")),
    // Source Repositories
    ("google.devtools.sourcerepo.v1.SourceRepo", "ListRepos", Some("source.repos.list")),
    ("google.devtools.sourcerepo.v1.SourceRepo", "GetRepo", Some("source.repos.get")),
    ("google.devtools.sourcerepo.v1.SourceRepo", "CreateRepo", Some("source.repos.create")),
    ("google.devtools.sourcerepo.v1.SourceRepo", "UpdateRepo", Some("source.repos.update")),
    ("google.devtools.sourcerepo.v1.SourceRepo", "DeleteRepo", Some("source.repos.delete")),
    ("google.devtools.sourcerepo.v1.SourceRepo", "GetIamPolicy", Some("source.repos.getIamPolicy")),
    ("google.devtools.sourcerepo.v1.SourceRepo", "SetIamPolicy", Some("source.repos.setIamPolicy")),
    ("google.devtools.sourcerepo.v1.SourceRepo", "GetProjectConfig", Some("source.repos.getProjectConfig")),
    ("google.devtools.sourcerepo.v1.SourceRepo", "UpdateProjectConfig", Some("source.repos.updateProjectConfig")),
    // Secure Source Manager
    ("google.cloud.securesourcemanager.v1.SecureSourceManager", "ListInstances", Some("securesourcemanager.instances.list")),
    ("google.cloud.securesourcemanager.v1.SecureSourceManager", "GetInstance", Some("securesourcemanager.instances.get")),
    ("google.cloud.securesourcemanager.v1.SecureSourceManager", "CreateInstance", Some("securesourcemanager.instances.create")),
    ("google.cloud.securesourcemanager.v1.SecureSourceManager", "DeleteInstance", Some("securesourcemanager.instances.delete")),
    ("google.cloud.securesourcemanager.v1.SecureSourceManager", "ListRepositories", Some("securesourcemanager.repositories.list")),
    ("google.cloud.securesourcemanager.v1.SecureSourceManager", "GetRepository", Some("securesourcemanager.repositories.get")),
    ("google.cloud.securesourcemanager.v1.SecureSourceManager", "CreateRepository", Some("securesourcemanager.repositories.create")),
    ("google.cloud.securesourcemanager.v1.SecureSourceManager", "DeleteRepository", Some("securesourcemanager.repositories.delete")),
    ("google.cloud.securesourcemanager.v1.SecureSourceManager", "GetIamPolicyRepo", Some("securesourcemanager.repositories.getIamPolicy")),
    ("google.cloud.securesourcemanager.v1.SecureSourceManager", "SetIamPolicyRepo", Some("securesourcemanager.repositories.setIamPolicy")),
    // Artifact Registry
    ("google.devtools.artifactregistry.v1.ArtifactRegistry", "ListRepositories", Some("artifactregistry.repositories.list")),
    ("google.devtools.artifactregistry.v1.ArtifactRegistry", "GetRepository", Some("artifactregistry.repositories.get")),
    ("google.devtools.artifactregistry.v1.ArtifactRegistry", "CreateRepository", Some("artifactregistry.repositories.create")),
    ("google.devtools.artifactregistry.v1.ArtifactRegistry", "UpdateRepository", Some("artifactregistry.repositories.update")),
    ("google.devtools.artifactregistry.v1.ArtifactRegistry", "DeleteRepository", Some("artifactregistry.repositories.delete")),
    ("google.devtools.artifactregistry.v1.ArtifactRegistry", "ListPackages", Some("artifactregistry.packages.list")),
    ("google.devtools.artifactregistry.v1.ArtifactRegistry", "GetPackage", Some("artifactregistry.packages.get")),
    ("google.devtools.artifactregistry.v1.ArtifactRegistry", "DeletePackage", Some("artifactregistry.packages.delete")),
    ("google.devtools.artifactregistry.v1.ArtifactRegistry", "ListVersions", Some("artifactregistry.versions.list")),
    ("google.devtools.artifactregistry.v1.ArtifactRegistry", "GetVersion", Some("artifactregistry.versions.get")),
    ("google.devtools.artifactregistry.v1.ArtifactRegistry", "DeleteVersion", Some("artifactregistry.versions.delete")),
    ("google.devtools.artifactregistry.v1.ArtifactRegistry", "ListFiles", Some("artifactregistry.files.list")),
    ("google.devtools.artifactregistry.v1.ArtifactRegistry", "GetFile", Some("artifactregistry.files.get")),
    ("google.devtools.artifactregistry.v1.ArtifactRegistry", "ListTags", Some("artifactregistry.tags.list")),
    ("google.devtools.artifactregistry.v1.ArtifactRegistry", "GetTag", Some("artifactregistry.tags.get")),
    ("google.devtools.artifactregistry.v1.ArtifactRegistry", "CreateTag", Some("artifactregistry.tags.create")),
    ("google.devtools.artifactregistry.v1.ArtifactRegistry", "UpdateTag", Some("artifactregistry.tags.update")),
    ("google.devtools.artifactregistry.v1.ArtifactRegistry", "DeleteTag", Some("artifactregistry.tags.delete")),
    ("google.devtools.artifactregistry.v1.ArtifactRegistry", "ListDockerImages", Some("artifactregistry.dockerimages.list")),
    ("google.devtools.artifactregistry.v1.ArtifactRegistry", "GetDockerImage", Some("artifactregistry.dockerimages.get")),
    ("google.devtools.artifactregistry.v1.ArtifactRegistry", "GetIamPolicy", Some("artifactregistry.repositories.getIamPolicy")),
    ("google.devtools.artifactregistry.v1.ArtifactRegistry", "SetIamPolicy", Some("artifactregistry.repositories.setIamPolicy")),
    // Cloud Build
    ("google.devtools.cloudbuild.v1.CloudBuild", "CreateBuild", Some("cloudbuild.builds.create")),
    ("google.devtools.cloudbuild.v1.CloudBuild", "GetBuild", Some("cloudbuild.builds.get")),
    ("google.devtools.cloudbuild.v1.CloudBuild", "ListBuilds", Some("cloudbuild.builds.list")),
    ("google.devtools.cloudbuild.v1.CloudBuild", "CancelBuild", Some("cloudbuild.builds.update")),
    ("google.devtools.cloudbuild.v1.CloudBuild", "RetryBuild", Some("cloudbuild.builds.create")),
    ("google.devtools.cloudbuild.v1.CloudBuild", "ApproveBuild", Some("cloudbuild.builds.approve")),
    ("google.devtools.cloudbuild.v1.CloudBuild", "CreateBuildTrigger", Some("cloudbuild.builds.create")),
    ("google.devtools.cloudbuild.v1.CloudBuild", "GetBuildTrigger", Some("cloudbuild.builds.get")),
    ("google.devtools.cloudbuild.v1.CloudBuild", "ListBuildTriggers", Some("cloudbuild.builds.list")),
    ("google.devtools.cloudbuild.v1.CloudBuild", "DeleteBuildTrigger", Some("cloudbuild.builds.delete")),
    ("google.devtools.cloudbuild.v1.CloudBuild", "UpdateBuildTrigger", Some("cloudbuild.builds.update")),
    ("google.devtools.cloudbuild.v1.CloudBuild", "RunBuildTrigger", Some("cloudbuild.builds.create")),
    ("google.devtools.cloudbuild.v1.CloudBuild", "CreateWorkerPool", Some("cloudbuild.workerpools.create")),
    ("google.devtools.cloudbuild.v1.CloudBuild", "GetWorkerPool", Some("cloudbuild.workerpools.get")),
    ("google.devtools.cloudbuild.v1.CloudBuild", "DeleteWorkerPool", Some("cloudbuild.workerpools.delete")),
    ("google.devtools.cloudbuild.v1.CloudBuild", "UpdateWorkerPool", Some("cloudbuild.workerpools.update")),
    ("google.devtools.cloudbuild.v1.CloudBuild", "ListWorkerPools", Some("cloudbuild.workerpools.list")),
];

/// Classifies a gRPC call by its method path, `/package.Service/Method`. `host_service` is the
/// API name the host gave; it names calls to shared services such as
/// `google.iam.v1.IAMPolicy` and to packages not listed here. `None` when `path` is not a
/// gRPC method path.
pub fn classify_grpc(host_service: &str, path: &str) -> Option<Classification> {
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    if service.is_empty() || method.is_empty() || method.contains('/') {
        return None;
    }
    let api = service
        .rsplit_once('.')
        .and_then(|(package, _)| PACKAGES.iter().find(|(p, _)| *p == package))
        .map_or(host_service, |(_, api)| *api);
    let permission = METHODS
        .iter()
        .find(|(s, m, _)| *s == service && *m == method)
        .and_then(|(_, _, p)| *p);
    Some(
        Classification::new(api)
            .method(format!("{service}.{method}"))
            .maybe_permission(permission.map(str::to_owned)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]

    #[rustfmt::skip]
    fn grpc_methods() {
        let cases = [
            ("pubsub", "/google.pubsub.v1.Publisher/Publish", "pubsub", Some("pubsub.topics.publish")),
            ("pubsub", "/google.pubsub.v1.Subscriber/StreamingPull", "pubsub", Some("pubsub.subscriptions.consume")),
            ("pubsub", "/google.pubsub.v1.Subscriber/Acknowledge", "pubsub", Some("pubsub.subscriptions.consume")),
            ("pubsub", "/google.pubsub.v1.Publisher/CreateTopic", "pubsub", Some("pubsub.topics.create")),
            ("storage", "/google.storage.v2.Storage/ReadObject", "storage", Some("storage.objects.get")),
            ("storage", "/google.storage.v2.Storage/BidiWriteObject", "storage", Some("storage.objects.create")),
            ("storage", "/google.storage.v2.Storage/DeleteBucket", "storage", Some("storage.buckets.delete")),
            ("secretmanager", "/google.cloud.secretmanager.v1.SecretManagerService/AccessSecretVersion", "secretmanager", Some("secretmanager.versions.access")),
            ("iamcredentials", "/google.iam.credentials.v1.IAMCredentials/GenerateAccessToken", "iamcredentials", Some("iam.serviceAccounts.getAccessToken")),
            ("iam", "/google.iam.admin.v1.IAM/CreateServiceAccountKey", "iam", Some("iam.serviceAccountKeys.create")),
            ("cloudresourcemanager", "/google.cloud.resourcemanager.v3.Projects/SetIamPolicy", "cloudresourcemanager", Some("resourcemanager.projects.setIamPolicy")),
            ("artifactregistry", "/google.devtools.artifactregistry.v1.ArtifactRegistry/DeleteVersion", "artifactregistry", Some("artifactregistry.versions.delete")),
            ("cloudbuild", "/google.devtools.cloudbuild.v1.CloudBuild/CreateBuild", "cloudbuild", Some("cloudbuild.builds.create")),
            // The permission of a shared IAM call depends on the resource in the message.
            ("pubsub", "/google.iam.v1.IAMPolicy/SetIamPolicy", "pubsub", None),
            ("pubsub", "/google.pubsub.v1.Publisher/SomethingNew", "pubsub", None),
            ("spanner", "/google.spanner.v1.Spanner/ExecuteSql", "spanner", None),
        ];
        for (host_service, path, service, permission) in cases {
            let got = classify_grpc(host_service, path).unwrap();
            assert_eq!(got.service, service, "{path}");
            assert_eq!(got.permission.as_deref(), permission, "{path}");
        }
    }

    #[test]

    #[rustfmt::skip]
    fn not_grpc_paths() {
        for path in ["", "/", "/google.pubsub.v1.Publisher", "/a/b/c", "nopath"] {
            assert_eq!(classify_grpc("pubsub", path), None, "{path:?}");
        }
    }
}
