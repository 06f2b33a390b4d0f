//! The harness's stand-in for a kubelet: it runs a pod *as the API server stored it* — after
//! the webhooks mutated it — as processes in a [`Topology`]'s pod namespace.
//!
//! What it does, in a kubelet's order:
//! - volumes: `emptyDir` as a fresh directory; `projected` service-account tokens from the
//!   TokenRequest API (bound to the pod), ConfigMaps, Secrets and downward-API files; a
//!   `kube-root-ca.crt` ConfigMap is published first, as the controller-manager would. They
//!   live in a per-pod directory only root may enter, owned as the kubelet owns them: with
//!   `fsGroup`, everything is the group's and group-readable (group-writable in an
//!   `emptyDir`); a projected token goes, mode 0600, to the UID every container runs as when
//!   they all name one, and otherwise keeps its `defaultMode`;
//! - environment: the container's `env` (values, `fieldRef`, Secret and ConfigMap keys) and
//!   the `KUBERNETES_SERVICE_*` variables, which point at the `kubernetes` Service address
//!   (10.0.0.1:443) that a relay in the net namespace forwards to the API server;
//! - each container through `cassette-e2e contain` ([`crate::contain`]), as a process group
//!   of its own: its own mount namespace in which an empty tmpfs hides the host's
//!   `/var/run/secrets` and `/run/secrets`, its volume mounts (read-only where the spec says),
//!   its `runAsUser`/`runAsGroup`, its `workingDir`, `command`/`args` over the image's
//!   entrypoint;
//! - its securityContext: `runAsNonRoot` refuses a container that would run as UID 0 (one
//!   without a `runAsUser` too: the harness runs every image as root); `capabilities` are
//!   computed as containerd computes them (its defaults, `add`, `drop`, `ALL`; a privileged
//!   container keeps all) and bound the container: a root container holds exactly those, a
//!   non-root one holds none, as under a runtime; `allowPrivilegeEscalation: false` sets
//!   no_new_privs; `readOnlyRootFilesystem` makes the root mount read-only;
//! - init containers in order, each to success; native sidecars (init containers with
//!   `restartPolicy: Always`) started and held to their startup probe; then the containers,
//!   to their exit; then the sidecars stopped, last started first, with SIGTERM and SIGKILL
//!   after the grace period. When a container's main process ends, what is left of its process
//!   group is killed, as a runtime tears down the container; a container left behind by an
//!   error (or a dropped future) is stopped, SIGKILL two seconds after SIGTERM;
//! - the pod's status (`Running`, then `Succeeded` or `Failed` with exit codes) patched back.
//!
//! What it does not do:
//! - images: the caller maps each image to an entrypoint on this machine; containers that give
//!   a `command` run it from the host's filesystem, which every container sees, apart from its
//!   volumes and the secrets directories. Mount points are made on the host, empty;
//! - isolation beyond the mount namespace: no PID, user or IPC namespace (containers see each
//!   other's and the host's processes), no cgroups (resources are not limited), no
//!   `seccompProfile`, AppArmor or SELinux; a descendant that leaves its process group
//!   (`setsid`) outlives its container;
//! - a whole read-only root: `readOnlyRootFilesystem` covers the root mount only, so `/dev/shm`
//!   and other separately mounted host filesystems stay writable where permissions allow;
//! - a runtime's exact stop: SIGTERM goes to the container's whole process group, where a
//!   runtime signals its PID 1 alone;
//! - restarts, and probes after start-up.

mod process;

use crate::contain::CAPABILITIES;
use crate::netns::{Identity, Side, Topology};
use crate::relay::Relay;
use anyhow::{Context, Result, bail};
use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, EnvVar, Pod, PodSpec, Probe, Secret, SecurityContext, ServiceAccount,
    Volume,
};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use process::ContainerProcess;
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

/// The `kubernetes` Service's address, as in-cluster clients dial it (the first address of
/// the harness's service range; the API server's certificate names it).
pub const KUBERNETES_SERVICE_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
/// The `kubernetes` Service's port.
pub const KUBERNETES_SERVICE_PORT: u16 = 443;

/// How a run of a pod ended.
#[derive(Debug)]
pub struct PodRun {
    /// Each container's name and exit code (init containers and sidecars included).
    pub exit_codes: BTreeMap<String, i32>,
    /// Each container's stdout and stderr, as it wrote them.
    pub logs: BTreeMap<String, String>,
}

impl PodRun {
    /// A container's combined output.
    pub fn log(&self, container: &str) -> &str {
        self.logs.get(container).map_or("", String::as_str)
    }
}

/// Runs stored pods in one topology's pod namespace.
pub struct Kubelet<'t> {
    topology: &'t Topology,
    client: Client,
    contain: PathBuf,
    images: BTreeMap<String, PathBuf>,
    dir: tempfile::TempDir,
    _api_server: Relay,
}

impl<'t> Kubelet<'t> {
    /// A kubelet for `topology`, talking to the cluster as `client` (an admin, as a node's
    /// credentials would be), running containers through `contain_binary` (`cassette-e2e`).
    /// `api_server` is the API server's address in the root namespace.
    pub fn new(
        topology: &'t Topology,
        client: Client,
        contain_binary: &Path,
        api_server: SocketAddr,
    ) -> Result<Self> {
        // The Service address lives on the net side, reached over the pod's default route.
        let out = Command::new(crate::netns::find_binary("ip"))
            .args(["-n", topology.net_ns(), "addr", "add"])
            .arg(format!("{KUBERNETES_SERVICE_IP}/32"))
            .args(["dev", "lo"])
            .output()?;
        if !out.status.success() {
            bail!(
                "adding {KUBERNETES_SERVICE_IP} to {}: {}",
                topology.net_ns(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let relay = Relay::out_of_namespace(
            topology,
            Side::Net,
            SocketAddr::from((KUBERNETES_SERVICE_IP, KUBERNETES_SERVICE_PORT)),
            api_server,
        )?;
        let dir = tempfile::Builder::new()
            .prefix("cassette-kubelet-")
            .tempdir()?;
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755))?;
        Ok(Self {
            topology,
            client,
            contain: contain_binary.to_path_buf(),
            images: BTreeMap::new(),
            dir,
            _api_server: relay,
        })
    }

    /// Run containers of `image` (that give no `command`) from `entrypoint`; the binary is
    /// copied where every UID may execute it.
    pub fn image(&mut self, image: &str, entrypoint: &Path) -> Result<()> {
        let bin = self.dir.path().join("images");
        fs::create_dir_all(&bin)?;
        fs::set_permissions(&bin, fs::Permissions::from_mode(0o755))?;
        let name = entrypoint.file_name().context("an entrypoint file name")?;
        let copy = bin.join(name);
        fs::copy(entrypoint, &copy).with_context(|| format!("copying {}", entrypoint.display()))?;
        fs::set_permissions(&copy, fs::Permissions::from_mode(0o755))?;
        self.images.insert(image.to_string(), copy);
        Ok(())
    }

    /// Run the stored pod `namespace/name` to completion (its containers must exit within
    /// `timeout`). An init container that fails or a sidecar that never starts is an error
    /// with its output; containers that exit non-zero are reported in the result.
    pub async fn run(&self, namespace: &str, name: &str, timeout: Duration) -> Result<PodRun> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let pod = pods.get(name).await.context("reading the stored pod")?;
        let spec = pod.spec.clone().context("the pod has a spec")?;
        let root = self.dir.path().join(format!("{namespace}_{name}"));
        fs::create_dir_all(root.join("logs"))?;
        // Root's alone: it holds every container's volumes (the sidecar's token among them) and
        // containers see the host's filesystem. A container reaches its own volumes through the
        // bind mounts `contain` makes before it drops to the container's UID.
        fs::set_permissions(&root, fs::Permissions::from_mode(0o700))?;
        let volumes = self.volumes(&pod, &root).await?;

        let mut run = PodRun {
            exit_codes: BTreeMap::new(),
            logs: BTreeMap::new(),
        };
        self.patch_phase(&pod, "Running", None).await?;
        // Each started container stops itself when dropped, so none outlives an error here.
        let mut sidecars: Vec<(String, ContainerProcess)> = Vec::new();
        let result = async {
            for container in spec.init_containers.iter().flatten() {
                let log = root.join("logs").join(format!("{}.log", container.name));
                let mut process = self.start(&pod, container, &volumes, &log).await?;
                if container.restart_policy.as_deref() == Some("Always") {
                    let started = self.wait_started(container, &mut process, &log).await;
                    sidecars.push((container.name.clone(), process));
                    started?;
                    continue;
                }
                let status = wait_for(&mut process, &container.name, timeout).await?;
                run.exit_codes.insert(container.name.clone(), code(status));
                if !status.success() {
                    bail!(
                        "init container {} exited with {status}:\n{}",
                        container.name,
                        fs::read_to_string(&log).unwrap_or_default()
                    );
                }
            }
            let mut running = Vec::new();
            for container in &spec.containers {
                let log = root.join("logs").join(format!("{}.log", container.name));
                let process = self.start(&pod, container, &volumes, &log).await?;
                running.push((container.name.clone(), process));
            }
            for (name, mut process) in running {
                let status = wait_for(&mut process, &name, timeout).await?;
                run.exit_codes.insert(name, code(status));
            }
            Ok(())
        }
        .await;

        // The containers are done (or the pod failed): stop the sidecars, last started first.
        let grace = Duration::from_secs(
            spec.termination_grace_period_seconds
                .unwrap_or(30)
                .try_into()
                .unwrap_or(30),
        );
        while let Some((name, mut process)) = sidecars.pop() {
            let status = process.stop(grace).await?;
            run.exit_codes.insert(name, code(status));
        }
        let names = spec
            .init_containers
            .iter()
            .flatten()
            .chain(&spec.containers);
        for container in names {
            let log = root.join("logs").join(format!("{}.log", container.name));
            if let Ok(text) = fs::read_to_string(&log) {
                run.logs.insert(container.name.clone(), text);
            }
        }
        let succeeded = result.is_ok()
            && spec
                .containers
                .iter()
                .all(|c| run.exit_codes.get(&c.name) == Some(&0));
        let phase = if succeeded { "Succeeded" } else { "Failed" };
        self.patch_phase(&pod, phase, Some(&run)).await?;
        result.map(|()| run)
    }

    /// What the kubelet reports: the phase, the pod's address, and terminated containers.
    async fn patch_phase(&self, pod: &Pod, phase: &str, run: Option<&PodRun>) -> Result<()> {
        let pods: Api<Pod> =
            Api::namespaced(self.client.clone(), &pod.namespace().unwrap_or_default());
        let statuses = |containers: &[Container]| -> Vec<serde_json::Value> {
            containers
                .iter()
                .filter_map(|c| {
                    let code = run?.exit_codes.get(&c.name)?;
                    Some(json!({
                        "name": c.name,
                        "image": c.image,
                        "imageID": "",
                        "ready": false,
                        "restartCount": 0,
                        "state": {"terminated": {"exitCode": code, "reason": if *code == 0 { "Completed" } else { "Error" }}}
                    }))
                })
                .collect()
        };
        let spec = pod.spec.clone().unwrap_or_default();
        let mut status = json!({
            "phase": phase,
            "podIP": self.topology.pod_ip().to_string(),
            "podIPs": [{"ip": self.topology.pod_ip().to_string()}],
        });
        if run.is_some() {
            status["containerStatuses"] = json!(statuses(&spec.containers));
            status["initContainerStatuses"] = json!(statuses(
                spec.init_containers.as_deref().unwrap_or_default()
            ));
        }
        pods.patch_status(
            &pod.name_any(),
            &PatchParams::default(),
            &Patch::Merge(json!({"status": status})),
        )
        .await
        .with_context(|| format!("setting the pod's phase to {phase}"))?;
        Ok(())
    }

    /// Every volume of the pod as a directory, owned as the kubelet would own it.
    async fn volumes(&self, pod: &Pod, root: &Path) -> Result<BTreeMap<String, PathBuf>> {
        let namespace = pod.namespace().unwrap_or_default();
        self.publish_root_ca(&namespace).await?;
        let ownership = Ownership::of(pod.spec.as_ref().context("a pod spec")?)?;
        let mut dirs = BTreeMap::new();
        for volume in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
            let dir = root.join("volumes").join(&volume.name);
            fs::create_dir_all(&dir)?;
            self.fill(pod, volume, &dir, ownership)
                .await
                .with_context(|| format!("volume {:?}", volume.name))?;
            if let Some(gid) = ownership.fs_group {
                // Only an emptyDir is writable; the kubelet writes the others read-only.
                grant_group(&dir, gid, volume.empty_dir.is_none())
                    .with_context(|| format!("volume {:?}: fsGroup {gid}", volume.name))?;
            }
            dirs.insert(volume.name.clone(), dir);
        }
        Ok(dirs)
    }

    async fn fill(
        &self,
        pod: &Pod,
        volume: &Volume,
        dir: &Path,
        ownership: Ownership,
    ) -> Result<()> {
        let namespace = pod.namespace().unwrap_or_default();
        if volume.empty_dir.is_some() {
            // World-writable, as the kubelet makes an emptyDir.
            fs::set_permissions(dir, fs::Permissions::from_mode(0o777))?;
            return Ok(());
        }
        fs::set_permissions(dir, fs::Permissions::from_mode(0o755))?;
        if let Some(secret) = &volume.secret {
            let name = secret.secret_name.as_deref().context("a secret name")?;
            // As the kubelet does, a Secret that is not there yet is waited for (the operator
            // makes a session's fingerprint key when it first sees the session).
            let secrets = Api::<Secret>::namespaced(self.client.clone(), &namespace);
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
            let stored = loop {
                match secrets.get_opt(name).await {
                    Ok(Some(stored)) => break stored,
                    Ok(None) if std::time::Instant::now() < deadline => {
                        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
                    }
                    Ok(None) => bail!("Secret {name} did not appear within 30s"),
                    Err(e) => return Err(e).with_context(|| format!("reading Secret {name}")),
                }
            };
            let data = stored.data.unwrap_or_default();
            let mode = secret.default_mode.unwrap_or(0o644);
            let items: Vec<(String, String)> = match &secret.items {
                Some(items) => items
                    .iter()
                    .map(|i| (i.key.clone(), i.path.clone()))
                    .collect(),
                None => data.keys().map(|k| (k.clone(), k.clone())).collect(),
            };
            for (key, path) in items {
                let bytes = data
                    .get(&key)
                    .with_context(|| format!("Secret {name} has no key {key:?}"))?;
                write(&dir.join(path), &bytes.0, mode)?;
            }
            return Ok(());
        }
        let Some(projected) = &volume.projected else {
            bail!("the harness runs emptyDir, secret and projected volumes only");
        };
        let mode = projected.default_mode.unwrap_or(0o644);
        for source in projected.sources.iter().flatten() {
            if let Some(token) = &source.service_account_token {
                let account = pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.service_account_name.clone())
                    .unwrap_or_else(|| "default".into());
                let request = TokenRequest {
                    spec: TokenRequestSpec {
                        audiences: token.audience.clone().into_iter().collect(),
                        expiration_seconds: token.expiration_seconds,
                        bound_object_ref: Some(BoundObjectReference {
                            api_version: Some("v1".into()),
                            kind: Some("Pod".into()),
                            name: Some(pod.name_any()),
                            uid: pod.uid(),
                        }),
                    },
                    ..Default::default()
                };
                let issued = Api::<ServiceAccount>::namespaced(self.client.clone(), &namespace)
                    .create_token_request(&account, &PostParams::default(), &request)
                    .await
                    .with_context(|| format!("requesting a token for ServiceAccount {account}"))?;
                let token_text = issued.status.context("a token")?.token;
                let path = dir.join(&token.path);
                // As the kubelet does: a token that an fsGroup or the pod's one UID can read
                // is readable by nobody else.
                let token_mode = if ownership.fs_user.is_some() || ownership.fs_group.is_some() {
                    0o600
                } else {
                    mode
                };
                write(&path, token_text.as_bytes(), token_mode)?;
                if let Some(uid) = ownership.fs_user {
                    std::os::unix::fs::chown(&path, Some(uid), None)
                        .with_context(|| format!("giving {} to UID {uid}", path.display()))?;
                }
            }
            if let Some(config_map) = &source.config_map {
                let stored = Api::<ConfigMap>::namespaced(self.client.clone(), &namespace)
                    .get(&config_map.name)
                    .await
                    .with_context(|| format!("reading ConfigMap {}", config_map.name))?;
                let data = stored.data.unwrap_or_default();
                for item in config_map.items.iter().flatten() {
                    let text = data.get(&item.key).with_context(|| {
                        format!("ConfigMap {} has no key {:?}", config_map.name, item.key)
                    })?;
                    write(&dir.join(&item.path), text.as_bytes(), mode)?;
                }
            }
            if let Some(downward) = &source.downward_api {
                for item in downward.items.iter().flatten() {
                    let field = item.field_ref.as_ref().context("a fieldRef")?;
                    let text = field_value(pod, &field.field_path, self.topology.pod_ip())?;
                    write(&dir.join(&item.path), text.as_bytes(), mode)?;
                }
            }
            if source.secret.is_some() || source.cluster_trust_bundle.is_some() {
                bail!("the harness projects tokens, ConfigMaps and the downward API only");
            }
        }
        Ok(())
    }

    /// `kube-root-ca.crt`, as the controller-manager publishes it into every namespace.
    async fn publish_root_ca(&self, namespace: &str) -> Result<()> {
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), namespace);
        if api.get_opt("kube-root-ca.crt").await?.is_some() {
            return Ok(());
        }
        let ca = crate::cluster_ca_pem(crate::cluster().kubeconfig())?;
        let config_map: ConfigMap = serde_json::from_value(json!({
            "metadata": {"name": "kube-root-ca.crt"},
            "data": {"ca.crt": ca}
        }))?;
        match api.create(&PostParams::default(), &config_map).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
            Err(e) => Err(e).context("publishing kube-root-ca.crt"),
        }
    }

    /// Start one container, its output to `log`.
    async fn start(
        &self,
        pod: &Pod,
        container: &Container,
        volumes: &BTreeMap<String, PathBuf>,
        log: &Path,
    ) -> Result<ContainerProcess> {
        let mut command = self.command(pod, container, volumes).await?;
        command.stdout(fs::File::create(log)?);
        command.stderr(fs::File::options().append(true).open(log)?);
        ContainerProcess::spawn(&container.name, command)
    }

    /// The process for one container: `ip netns exec <pod> unshare --mount cassette-e2e contain …
    /// -- program`.
    async fn command(
        &self,
        pod: &Pod,
        container: &Container,
        volumes: &BTreeMap<String, PathBuf>,
    ) -> Result<std::process::Command> {
        let spec = pod.spec.as_ref().context("a pod spec")?;
        // Refused before anything is made for it, as the kubelet refuses to create it.
        let confinement = Confinement::of(spec, container)?;
        let image = container.image.as_deref().unwrap_or_default();
        let (program, mut args) = match container.command.as_deref() {
            Some([program, rest @ ..]) => (PathBuf::from(program), rest.to_vec()),
            _ => (
                self.images.get(image).cloned().with_context(|| {
                    format!(
                        "container {:?}: no command, and no entrypoint known for image {image:?}",
                        container.name
                    )
                })?,
                Vec::new(),
            ),
        };
        args.extend(container.args.iter().flatten().cloned());
        let env = self.env(pod, container).await?;

        // A mount namespace of the container's own, private: what contain mounts stays there.
        let unshare = crate::netns::find_binary("unshare");
        let mut command = self.topology.pod_command(Identity::Root, unshare, env);
        command
            .args(["--mount", "--propagation", "private", "--"])
            .arg(&self.contain)
            .arg("contain");
        for mount in container.volume_mounts.iter().flatten() {
            if mount.sub_path.is_some() || mount.sub_path_expr.is_some() {
                bail!(
                    "container {:?}: subPath mounts are not run by the harness",
                    container.name
                );
            }
            let source = volumes.get(&mount.name).with_context(|| {
                format!(
                    "container {:?} mounts unknown volume {:?}",
                    container.name, mount.name
                )
            })?;
            let ro = if mount.read_only == Some(true) {
                ":ro"
            } else {
                ""
            };
            command.arg(format!(
                "--mount={}:{}{ro}",
                source.display(),
                mount.mount_path
            ));
        }
        let Confinement {
            uid,
            gid,
            no_new_privs,
            capabilities,
            read_only_root,
        } = confinement;
        if uid != 0 || gid != 0 {
            command
                .arg(format!("--uid={uid}"))
                .arg(format!("--gid={gid}"));
        }
        if no_new_privs {
            command.arg("--no-new-privs");
        }
        if let Some(capabilities) = capabilities {
            let names: Vec<&str> = capabilities.into_iter().collect();
            command.arg(format!("--capabilities={}", names.join(",")));
        }
        if read_only_root {
            command.arg("--read-only-root");
        }
        if let Some(workdir) = &container.working_dir {
            command.arg(format!("--workdir={workdir}"));
        }
        command.arg("--").arg(program).args(args);
        Ok(command)
    }

    /// The container's environment as the kubelet builds it.
    async fn env(&self, pod: &Pod, container: &Container) -> Result<Vec<(String, String)>> {
        let namespace = pod.namespace().unwrap_or_default();
        let mut env = vec![
            ("HOSTNAME".to_string(), pod.name_any()),
            (
                "KUBERNETES_SERVICE_HOST".into(),
                KUBERNETES_SERVICE_IP.to_string(),
            ),
            (
                "KUBERNETES_SERVICE_PORT".into(),
                KUBERNETES_SERVICE_PORT.to_string(),
            ),
            (
                "KUBERNETES_PORT".into(),
                format!("tcp://{KUBERNETES_SERVICE_IP}:{KUBERNETES_SERVICE_PORT}"),
            ),
        ];
        for EnvVar {
            name,
            value,
            value_from,
        } in container.env.iter().flatten()
        {
            let resolved = match (value, value_from) {
                (Some(value), _) => value.clone(),
                (None, Some(from)) => {
                    if let Some(field) = &from.field_ref {
                        field_value(pod, &field.field_path, self.topology.pod_ip())?
                    } else if let Some(key) = &from.secret_key_ref {
                        let secret = Api::<Secret>::namespaced(self.client.clone(), &namespace)
                            .get(&key.name)
                            .await?;
                        let bytes = secret
                            .data
                            .unwrap_or_default()
                            .remove(&key.key)
                            .with_context(|| {
                                format!("Secret {} has no key {}", key.name, key.key)
                            })?;
                        String::from_utf8(bytes.0)?
                    } else if let Some(key) = &from.config_map_key_ref {
                        Api::<ConfigMap>::namespaced(self.client.clone(), &namespace)
                            .get(&key.name)
                            .await?
                            .data
                            .unwrap_or_default()
                            .remove(&key.key)
                            .with_context(|| {
                                format!("ConfigMap {} has no key {}", key.name, key.key)
                            })?
                    } else {
                        bail!(
                            "env {name}: only fieldRef, secretKeyRef and configMapKeyRef are run"
                        );
                    }
                }
                (None, None) => String::new(),
            };
            env.retain(|(existing, _)| existing != name);
            env.push((name.clone(), resolved));
        }
        Ok(env)
    }

    /// Hold a native sidecar to its startup probe (an HTTP GET from inside the pod), failing
    /// when the probe's budget runs out or the process exits.
    async fn wait_started(
        &self,
        container: &Container,
        process: &mut ContainerProcess,
        log: &Path,
    ) -> Result<()> {
        let Some(probe) = container
            .startup_probe
            .as_ref()
            .or(container.readiness_probe.as_ref())
        else {
            return Ok(());
        };
        let (port, path) = http_probe(probe)?;
        let period = Duration::from_secs(probe.period_seconds.unwrap_or(10).max(1) as u64);
        let attempts = probe.failure_threshold.unwrap_or(3).max(1);
        // Probe faster than the period (the harness has no reason to wait), within its budget.
        let deadline = Instant::now() + period * attempts as u32;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        loop {
            if process.has_exited()? {
                let status = process.kill()?;
                bail!(
                    "sidecar {} exited ({status}) before it started:\n{}",
                    container.name,
                    fs::read_to_string(log).unwrap_or_default()
                );
            }
            if self
                .probe_once(addr, &path)
                .is_ok_and(|status| (200..400).contains(&status))
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "sidecar {} failed its startup probe (GET {path} on port {port}):\n{}",
                    container.name,
                    fs::read_to_string(log).unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn probe_once(&self, addr: SocketAddr, path: &str) -> Result<u16> {
        let mut stream = self
            .topology
            .connect(Side::Pod, addr, Duration::from_secs(1))?;
        stream.set_read_timeout(Some(Duration::from_secs(2)))?;
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: kube-probe/1.34\r\nConnection: close\r\n\r\n"
        )?;
        let mut head = [0u8; 64];
        let n = stream.read(&mut head)?;
        let line = String::from_utf8_lossy(&head[..n]);
        line.split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .context("no status line")
    }
}

/// The capabilities containerd gives a container that neither adds nor drops any.
const RUNTIME_DEFAULT_CAPABILITIES: [&str; 14] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "FSETID",
    "FOWNER",
    "MKNOD",
    "NET_RAW",
    "SETGID",
    "SETUID",
    "SETFCAP",
    "SETPCAP",
    "NET_BIND_SERVICE",
    "SYS_CHROOT",
    "KILL",
    "AUDIT_WRITE",
];

/// What the stand-in enforces of a container's securityContext (its own fields over the
/// pod's), as `cassette-e2e contain` arguments.
#[derive(Debug, PartialEq, Eq)]
struct Confinement {
    uid: u32,
    gid: u32,
    /// `allowPrivilegeEscalation: false`.
    no_new_privs: bool,
    /// The capabilities it may hold; `None` for a privileged container (all of them).
    capabilities: Option<BTreeSet<&'static str>>,
    read_only_root: bool,
}

impl Confinement {
    /// The container's confinement; an error for a container the kubelet would not create
    /// (`runAsNonRoot` with root as its user).
    fn of(spec: &PodSpec, container: &Container) -> Result<Self> {
        let own = container.security_context.as_ref();
        let pod = spec.security_context.as_ref();
        let uid = own
            .and_then(|c| c.run_as_user)
            .or_else(|| pod.and_then(|c| c.run_as_user));
        let gid = own
            .and_then(|c| c.run_as_group)
            .or_else(|| pod.and_then(|c| c.run_as_group));
        let non_root = own
            .and_then(|c| c.run_as_non_root)
            .or_else(|| pod.and_then(|c| c.run_as_non_root));
        if non_root == Some(true) && uid.unwrap_or(0) == 0 {
            let why = if uid.is_some() {
                "its runAsUser is 0"
            } else {
                "it sets no runAsUser, and the harness runs every image as root"
            };
            bail!(
                "container {:?} has runAsNonRoot but would run as root ({why}); it was not \
                 started (a kubelet reports CreateContainerConfigError)",
                container.name
            );
        }
        Ok(Self {
            uid: id(uid.unwrap_or(0), "runAsUser")?,
            gid: id(gid.unwrap_or(0), "runAsGroup")?,
            no_new_privs: own.and_then(|c| c.allow_privilege_escalation) == Some(false),
            capabilities: capabilities(own),
            read_only_root: own.and_then(|c| c.read_only_root_filesystem) == Some(true),
        })
    }
}

/// A container's capabilities as containerd computes them: the runtime's defaults, all of
/// them if `add` says ALL, none if `drop` says ALL, then the named ones added and dropped.
/// containerd prefixes `CAP_` to each name and runc ignores names it does not know, so
/// `CAP_NET_RAW` (or any unknown name) adds and drops nothing; so here.
fn capabilities(context: Option<&SecurityContext>) -> Option<BTreeSet<&'static str>> {
    if context.and_then(|c| c.privileged) == Some(true) {
        return None;
    }
    let requested = context.and_then(|c| c.capabilities.as_ref());
    let names = |list: Option<&Vec<String>>| -> Vec<String> {
        list.into_iter()
            .flatten()
            .map(|name| name.to_ascii_uppercase())
            .collect()
    };
    let add = names(requested.and_then(|c| c.add.as_ref()));
    let drop = names(requested.and_then(|c| c.drop.as_ref()));
    let mut set: BTreeSet<&'static str> = RUNTIME_DEFAULT_CAPABILITIES.into_iter().collect();
    if add.iter().any(|name| name == "ALL") {
        set.extend(CAPABILITIES);
    }
    if drop.iter().any(|name| name == "ALL") {
        set.clear();
    }
    set.extend(
        CAPABILITIES
            .into_iter()
            .filter(|known| add.iter().any(|name| name == known)),
    );
    set.retain(|known| !drop.iter().any(|name| name == known));
    Some(set)
}

/// Who owns a pod's volume files, as the kubelet decides it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Ownership {
    /// The pod's `fsGroup`: every volume's files become this group's.
    fs_group: Option<u32>,
    /// The UID every container of the pod runs as, when they all name the same one: projected
    /// service-account tokens are given to it (the kubelet's `FsUser`).
    fs_user: Option<u32>,
}

impl Ownership {
    fn of(spec: &PodSpec) -> Result<Self> {
        let pod = spec.security_context.as_ref();
        let fs_group = pod
            .and_then(|c| c.fs_group)
            .map(|gid| id(gid, "fsGroup"))
            .transpose()?;
        let pod_uid = pod.and_then(|c| c.run_as_user);
        let uids: Option<Vec<i64>> = spec
            .init_containers
            .iter()
            .flatten()
            .chain(&spec.containers)
            .map(|c| {
                c.security_context
                    .as_ref()
                    .and_then(|c| c.run_as_user)
                    .or(pod_uid)
            })
            .collect();
        let fs_user = match uids.as_deref() {
            Some([first, rest @ ..]) if rest.iter().all(|uid| uid == first) => {
                Some(id(*first, "runAsUser")?)
            }
            _ => None,
        };
        Ok(Self { fs_group, fs_user })
    }
}

/// What the kubelet does for `fsGroup`: everything in the volume becomes the group's and
/// readable by it (writable too in a read-write volume); directories are setgid, so that files
/// made later stay the group's.
fn grant_group(path: &Path, gid: u32, read_only: bool) -> Result<()> {
    let meta = fs::symlink_metadata(path)?;
    std::os::unix::fs::lchown(path, None, Some(gid))
        .with_context(|| format!("giving {} to GID {gid}", path.display()))?;
    if meta.file_type().is_symlink() {
        return Ok(());
    }
    let mut mask = if read_only { 0o440 } else { 0o660 };
    if meta.is_dir() {
        mask |= 0o2110;
        for entry in fs::read_dir(path)? {
            grant_group(&entry?.path(), gid, read_only)?;
        }
    }
    fs::set_permissions(
        path,
        fs::Permissions::from_mode(meta.permissions().mode() | mask),
    )?;
    Ok(())
}

/// A UID or GID from a spec (an `int64` there).
fn id(value: i64, field: &str) -> Result<u32> {
    u32::try_from(value).with_context(|| format!("{field} {value} is not a valid ID"))
}

/// The port and path of an HTTP GET probe.
fn http_probe(probe: &Probe) -> Result<(u16, String)> {
    let get = probe
        .http_get
        .as_ref()
        .context("only httpGet probes are run")?;
    let port = match &get.port {
        k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(port) => {
            u16::try_from(*port)?
        }
        k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(name) => {
            bail!("named probe port {name:?} is not run by the harness")
        }
    };
    Ok((port, get.path.clone().unwrap_or_else(|| "/".into())))
}

/// The downward API's fields.
fn field_value(pod: &Pod, path: &str, pod_ip: Ipv4Addr) -> Result<String> {
    let spec = pod.spec.as_ref();
    Ok(match path {
        "metadata.name" => pod.name_any(),
        "metadata.namespace" => pod.namespace().unwrap_or_default(),
        "metadata.uid" => pod.uid().unwrap_or_default(),
        "spec.serviceAccountName" => spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_else(|| "default".into()),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
        "status.podIP" => pod_ip.to_string(),
        other => bail!("fieldRef {other:?} is not run by the harness"),
    })
}

fn write(path: &Path, bytes: &[u8], mode: i32) -> Result<()> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent)?;
    }
    fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode as u32))?;
    Ok(())
}

fn code(status: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

/// Wait for a container to exit; kill it after `timeout` and say so.
async fn wait_for(
    process: &mut ContainerProcess,
    name: &str,
    timeout: Duration,
) -> Result<ExitStatus> {
    match process.wait_timeout(timeout).await? {
        Some(status) => Ok(status),
        None => {
            process.kill()?;
            bail!("container {name} did not exit within {timeout:?}; it was killed")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod_spec(value: serde_json::Value) -> PodSpec {
        serde_json::from_value(value).expect("a pod spec")
    }

    fn container(value: serde_json::Value) -> Container {
        serde_json::from_value(value).expect("a container")
    }

    fn set(names: &[&'static str]) -> Option<BTreeSet<&'static str>> {
        Some(names.iter().copied().collect())
    }

    #[test]
    fn injected_containers_run_with_what_their_spec_grants() -> Result<()> {
        let spec = pod_spec(json!({
            "securityContext": {"runAsUser": 1000, "runAsGroup": 1000, "runAsNonRoot": true},
            "containers": []
        }));
        let init = container(json!({
            "name": "cassette-init",
            "securityContext": {
                "runAsUser": 0, "runAsGroup": 0, "runAsNonRoot": false,
                "allowPrivilegeEscalation": false, "readOnlyRootFilesystem": false,
                "capabilities": {"drop": ["ALL"], "add": ["NET_ADMIN", "NET_RAW", "SETUID", "SETGID"]}
            }
        }));
        assert_eq!(
            Confinement::of(&spec, &init)?,
            Confinement {
                uid: 0,
                gid: 0,
                no_new_privs: true,
                capabilities: set(&["NET_ADMIN", "NET_RAW", "SETGID", "SETUID"]),
                read_only_root: false,
            }
        );
        let sidecar = container(json!({
            "name": "cassette-sidecar",
            "securityContext": {
                "runAsUser": 1337, "runAsGroup": 1337, "runAsNonRoot": true,
                "allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
                "capabilities": {"drop": ["ALL"]}
            }
        }));
        assert_eq!(
            Confinement::of(&spec, &sidecar)?,
            Confinement {
                uid: 1337,
                gid: 1337,
                no_new_privs: true,
                capabilities: set(&[]),
                read_only_root: true,
            }
        );
        // The agent: the pod's user, the runtime's defaults without SETUID and SETGID.
        let agent = container(json!({
            "name": "agent",
            "securityContext": {
                "allowPrivilegeEscalation": false,
                "capabilities": {"drop": ["SETUID", "SETGID"]}
            }
        }));
        let confined = Confinement::of(&spec, &agent)?;
        assert_eq!((confined.uid, confined.gid), (1000, 1000));
        let capabilities = confined.capabilities.context("bounded")?;
        assert!(!capabilities.contains("SETUID") && !capabilities.contains("SETGID"));
        assert!(capabilities.contains("CHOWN") && !capabilities.contains("NET_ADMIN"));
        Ok(())
    }

    #[test]
    fn run_as_non_root_refuses_a_container_that_would_run_as_root() {
        let pod_says_non_root = pod_spec(json!({
            "securityContext": {"runAsNonRoot": true},
            "containers": []
        }));
        for (agent, why) in [
            (json!({"name": "agent"}), "sets no runAsUser"),
            (
                json!({"name": "agent", "securityContext": {"runAsUser": 0}}),
                "runAsUser is 0",
            ),
        ] {
            let error = Confinement::of(&pod_says_non_root, &container(agent))
                .expect_err("a root container under runAsNonRoot")
                .to_string();
            assert!(
                error.contains("container \"agent\" has runAsNonRoot") && error.contains(why),
                "{error}"
            );
        }
        let own_user = container(json!({"name": "agent", "securityContext": {"runAsUser": 1000}}));
        assert!(Confinement::of(&pod_says_non_root, &own_user).is_ok());
    }

    #[test]
    fn capabilities_are_computed_as_containerd_computes_them() {
        let with = |value: serde_json::Value| -> Option<BTreeSet<&'static str>> {
            capabilities(Some(
                &serde_json::from_value(value).expect("a securityContext"),
            ))
        };
        let defaults: BTreeSet<&str> = RUNTIME_DEFAULT_CAPABILITIES.into_iter().collect();
        assert_eq!(capabilities(None), Some(defaults.clone()));
        // ALL first, then the named ones: everything but CHOWN.
        let all_but_chown =
            with(json!({"capabilities": {"add": ["ALL"], "drop": ["chown"]}})).expect("bounded");
        assert_eq!(all_but_chown.len(), CAPABILITIES.len() - 1);
        assert!(!all_but_chown.contains("CHOWN"));
        // A CAP_-prefixed name is not a name containerd knows: SETUID is not dropped.
        assert_eq!(
            with(json!({"capabilities": {"drop": ["CAP_SETUID"]}})),
            Some(defaults)
        );
        assert_eq!(with(json!({"privileged": true})), None);
    }

    #[test]
    fn a_token_goes_to_the_one_uid_every_container_runs_as() -> Result<()> {
        let shared = pod_spec(json!({
            "securityContext": {"runAsUser": 1000},
            "initContainers": [{"name": "setup"}],
            "containers": [{"name": "agent", "securityContext": {"runAsUser": 1000}}]
        }));
        assert_eq!(
            Ownership::of(&shared)?,
            Ownership {
                fs_group: None,
                fs_user: Some(1000)
            }
        );
        // An injected pod: root init, the sidecar as 1337, the agent as 1000: nobody in
        // particular, so the token keeps its defaultMode and stays root's.
        let injected = pod_spec(json!({
            "securityContext": {"runAsUser": 1000, "fsGroup": 2000},
            "initContainers": [
                {"name": "cassette-init", "securityContext": {"runAsUser": 0}},
                {"name": "cassette-sidecar", "securityContext": {"runAsUser": 1337}}
            ],
            "containers": [{"name": "agent"}]
        }));
        assert_eq!(
            Ownership::of(&injected)?,
            Ownership {
                fs_group: Some(2000),
                fs_user: None
            }
        );
        // A container that names no UID runs as the image says: unknown here.
        let unnamed = pod_spec(json!({
            "containers": [{"name": "a", "securityContext": {"runAsUser": 1000}}, {"name": "b"}]
        }));
        assert_eq!(Ownership::of(&unnamed)?.fs_user, None);
        Ok(())
    }

    #[test]
    fn an_fs_group_can_read_a_read_only_volume_and_write_an_empty_dir() -> Result<()> {
        use std::os::unix::fs::MetadataExt;
        // An owner may give a file to its own group.
        let gid = rustix::process::getgid().as_raw();
        let volume = tempfile::tempdir()?;
        write(&volume.path().join("sub/key"), b"secret", 0o400)?;
        grant_group(volume.path(), gid, true)?;
        let key = fs::metadata(volume.path().join("sub/key"))?;
        assert_eq!((key.gid(), key.mode() & 0o7777), (gid, 0o440));
        let sub = fs::metadata(volume.path().join("sub"))?;
        assert_eq!(sub.mode() & 0o2550, 0o2550, "{:o}", sub.mode());

        let scratch = tempfile::tempdir()?;
        write(&scratch.path().join("notes"), b"", 0o600)?;
        grant_group(scratch.path(), gid, false)?;
        let notes = fs::metadata(scratch.path().join("notes"))?;
        assert_eq!(notes.mode() & 0o7777, 0o660);
        Ok(())
    }
}
