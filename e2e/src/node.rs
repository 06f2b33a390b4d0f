//! A real one-node cluster around the harness's control plane: containerd + runc + CNI bridge
//! (Debian's), kubelet and kube-proxy (built from the pinned `k8s.io/kubernetes` module) and
//! CoreDNS in a network namespace of their own, kube-controller-manager and kube-scheduler
//! beside the API server. Pods run as real pods.
//!
//! The network, for lease slot `S` (an flock per slot, so parallel test binaries never share
//! one):
//!
//! ```text
//!  root namespace                         node namespace (casnode<pid>)
//!  API server 127.0.0.1:P <- relay        kubelet, kube-proxy, containerd, CoreDNS :53
//!  10.232.S.1 (cnh<S>)  <---- veth ---->  10.232.S.2 (eth0, the node's InternalIP)
//!  route 10.244.S.0/24 via 10.232.S.2     cni0 10.244.S.1/24 -- pods 10.244.S.x
//! ```
//!
//! The node's components reach the API server through a relay on 10.232.S.1; the API server
//! reaches the kubelet (logs, exec) and pods over the route. Pods resolve names through
//! CoreDNS on the bridge's gateway (cluster names from the API, the test upstreams' names to
//! the host side), and 169.254.169.254:80 is DNAT-ed in the node namespace to
//! [`NodeInfo::metadata_target`] on the host side, as GKE redirects it to its metadata server.
//! The `kubernetes` Service reaches the API server through the same relay (the API server
//! advertises loopback, which no pod can reach).
//!
//! Processes run only in the node's *network* namespace (`nsenter --net`), not in a mount
//! namespace of their own: the kubelet's volume mounts must be seen by containerd and runc.
//! Every path the components write is under one temporary directory; nothing uses the
//! machine's defaults.

use crate::controlplane::{dying_with_spawner, spawn as spawn_logged};
use crate::relay::Relay;
use anyhow::{Context, Result, bail};
use rustix::fs::{FlockOperation, flock};
use rustix::mount::{UnmountFlags, unmount};
use rustix::process::{Pid, Signal, kill_process, test_kill_process};
use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The node's name in the API.
pub const NODE_NAME: &str = "cassette-node";
/// The cluster's DNS domain.
pub const CLUSTER_DOMAIN: &str = "cluster.local";
/// The port the fake metadata server is expected on, at [`NodeInfo::host_ip`].
pub const METADATA_TARGET_PORT: u16 = 80;

/// How long the node may take to register Ready (containerd, images, kubelet).
const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// Where slot leases are held (an flock per slot, released when the holder dies).
const LEASE_DIR: &str = "/run/cassette-e2e";
/// Where named network namespaces live.
const NETNS_RUN_DIR: &str = "/run/netns";
/// The CNI plugins of Debian's containernetworking-plugins.
const CNI_BIN_DIR: &str = "/usr/lib/cni";
/// libcni's result cache.
const CNI_CACHE_DIR: &str = "/var/lib/cni/results";
/// Where the kubelet links every container's log, whatever its podLogsDir.
const CONTAINER_LOG_LINKS: &str = "/var/log/containers";

/// The node's binaries: built from their Go modules by `e2e/controlplane/build.sh --node`.
pub struct NodeBinaries {
    pub kubelet: PathBuf,
    pub kube_proxy: PathBuf,
    pub kube_scheduler: PathBuf,
    pub kube_controller_manager: PathBuf,
    pub coredns: PathBuf,
}

impl NodeBinaries {
    /// Build (first time only) and locate them.
    pub fn ensure() -> Result<Self> {
        let out = script_lines(
            &crate::repo_root().join("e2e/controlplane/build.sh"),
            &["--node"],
        )?;
        let find = |key: &str| {
            out.get(key)
                .map(PathBuf::from)
                .with_context(|| format!("build.sh --node printed no {key}= line"))
        };
        Ok(Self {
            kubelet: find("KUBELET")?,
            kube_proxy: find("KUBE_PROXY")?,
            kube_scheduler: find("KUBE_SCHEDULER")?,
            kube_controller_manager: find("KUBE_CONTROLLER_MANAGER")?,
            coredns: find("COREDNS")?,
        })
    }
}

/// The images every node has: the sandbox image and the tests' agent image, built by
/// `e2e/images/build.sh` from `docker/`.
pub const NODE_IMAGES: &[&str] = &["pause", "agent"];

/// Build (cached by content) the named images; `name=binary` for the ones that take a prebuilt
/// binary (`sidecar`, `operator`). Returns name → (reference, OCI archive).
pub fn build_images(specs: &[String]) -> Result<BTreeMap<String, (String, PathBuf)>> {
    let args: Vec<&str> = specs.iter().map(String::as_str).collect();
    let out = script_lines(&crate::repo_root().join("e2e/images/build.sh"), &args)?;
    let mut images = BTreeMap::new();
    for spec in specs {
        let name = spec.split('=').next().unwrap_or(spec);
        let var = name.to_uppercase().replace('-', "_");
        let image = out
            .get(&format!("{var}_IMAGE"))
            .with_context(|| format!("images/build.sh printed no {var}_IMAGE line"))?;
        let archive = out
            .get(&format!("{var}_ARCHIVE"))
            .with_context(|| format!("images/build.sh printed no {var}_ARCHIVE line"))?;
        images.insert(name.to_string(), (image.clone(), PathBuf::from(archive)));
    }
    Ok(images)
}

/// What a test needs to know about the running node.
#[derive(Clone, Debug)]
pub struct NodeInfo {
    /// The node's network namespace (for `ip netns exec`).
    pub netns: String,
    /// The lease slot S of 10.232.S.0/24 and 10.244.S.0/24.
    pub slot: u8,
    /// containerd's socket (for `ctr --address`).
    pub containerd_socket: PathBuf,
    /// The directory holding every component's state and logs.
    pub dir: PathBuf,
    /// Image name (`agent`, `pause`, …) → reference, imported into the node's containerd.
    pub images: BTreeMap<String, String>,
}

impl NodeInfo {
    /// The host side of the node's veth, 10.232.S.1: where the node reaches the root namespace.
    pub fn host_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 232, self.slot, 1)
    }

    /// The node's InternalIP, 10.232.S.2.
    pub fn node_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 232, self.slot, 2)
    }

    /// The pods' network, 10.244.S.0/24.
    pub fn pod_cidr(&self) -> String {
        format!("10.244.{}.0/24", self.slot)
    }

    /// The bridge's address, 10.244.S.1: the pods' gateway and cluster DNS.
    pub fn dns_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 244, self.slot, 1)
    }

    /// Where 169.254.169.254:80 is sent from pods: the host side, [`METADATA_TARGET_PORT`].
    pub fn metadata_target(&self) -> SocketAddrV4 {
        SocketAddrV4::new(self.host_ip(), METADATA_TARGET_PORT)
    }

    /// The host side as a [`crate::netns::Site`]: where the tests' upstreams and emulators
    /// listen for pods (the names CoreDNS maps to the host side, and the metadata target).
    pub fn host_side(&self) -> crate::netns::Site {
        crate::netns::Site::root(self.host_ip())
    }

    /// Build (cached by content) and import into the node's containerd the images `specs`
    /// name (`coding-agent`, `sidecar=<binary>`, …), beyond the [`NODE_IMAGES`] every node
    /// has. Returns name → reference.
    pub fn load_images(&self, specs: &[String]) -> Result<BTreeMap<String, String>> {
        let mut loaded = BTreeMap::new();
        for (name, (image, archive)) in build_images(specs)? {
            self.import(&image, &archive)?;
            loaded.insert(name, image);
        }
        Ok(loaded)
    }

    /// Import an OCI archive into the node's containerd and check that it lists `image`.
    fn import(&self, image: &str, archive: &Path) -> Result<()> {
        let listed = self.ctr().args(["images", "ls", "-q"]).output()?;
        if String::from_utf8_lossy(&listed.stdout)
            .lines()
            .any(|l| l.trim() == image)
        {
            return Ok(());
        }
        let out = self
            .ctr_within("10m")
            .args(["images", "import"])
            .arg(archive)
            .output()
            .context("running ctr images import")?;
        if !out.status.success() {
            bail!(
                "ctr images import {} failed: {}",
                archive.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let listed = self.ctr().args(["images", "ls", "-q"]).output()?;
        let listed = String::from_utf8_lossy(&listed.stdout);
        if !listed.lines().any(|l| l.trim() == image) {
            bail!(
                "after importing {}, containerd lists no {image} (it lists: {})",
                archive.display(),
                listed.trim()
            );
        }
        Ok(())
    }

    /// An image's reference, if the node has it.
    pub fn image(&self, name: &str) -> Result<&str> {
        self.images
            .get(name)
            .map(String::as_str)
            .with_context(|| format!("the node has no {name} image"))
    }

    /// `ctr` against the node's containerd, in its `k8s.io` namespace.
    pub fn ctr(&self) -> Command {
        self.ctr_within("30s")
    }

    /// `ctr` that gives containerd `timeout` (Go's duration syntax) to answer: unpacking a
    /// large image's layers on two busy cores takes longer than other calls.
    fn ctr_within(&self, timeout: &str) -> Command {
        let mut command = Command::new("ctr");
        command.arg("--address").arg(&self.containerd_socket).args([
            "-n",
            "k8s.io",
            "--timeout",
            timeout,
        ]);
        command
    }

    /// The last bytes of a component's log (`containerd`, `kubelet`, `kube-proxy`, `coredns`,
    /// `kube-controller-manager`, `kube-scheduler`), for error messages.
    pub fn log_tail(&self, component: &str) -> String {
        crate::controlplane::tail(&self.dir.join(format!("{component}.log")), 4096)
    }
}

/// Where the control plane is, as the node needs it.
pub struct PlaneAccess<'a> {
    /// The API server's loopback address.
    pub server: SocketAddr,
    /// The admin kubeconfig.
    pub admin_kubeconfig: &'a Path,
    /// The cluster CA (PEM) file, for the controller-manager's root CA publisher.
    pub ca_file: PathBuf,
    /// The service-account signing key, for the controller-manager.
    pub sa_key_file: PathBuf,
    /// Writes a kubeconfig for a user (client certificate) and returns its path.
    pub user_kubeconfig: &'a dyn Fn(&str, Option<&str>) -> Result<PathBuf>,
}

/// The running node. Dropping it stops everything, removes the pods' sandboxes and network
/// namespaces, unmounts what the kubelet and containerd mounted and removes the directory.
pub struct Node {
    info: NodeInfo,
    dir: Option<tempfile::TempDir>,
    /// Started processes, in start order; stopped in reverse.
    children: Vec<(String, Child)>,
    host_veth: String,
    netns_created: bool,
    _relay: Option<Relay>,
    _lease: fs::File,
}

impl Node {
    /// Start the node against a running control plane and wait until it is Ready, its
    /// service-account controller has made `default/default`, kube-proxy has written its rules
    /// and CoreDNS answers.
    pub fn start(plane: &PlaneAccess<'_>) -> Result<Self> {
        let started = Instant::now();
        let bins = NodeBinaries::ensure()?;
        let specs: Vec<String> = NODE_IMAGES.iter().map(|s| s.to_string()).collect();
        let built = build_images(&specs)?;
        reap_stale();
        let (slot, lease) = lease_slot()?;
        let dir = tempfile::Builder::new()
            .prefix(&format!("cassette-node-{}-", std::process::id()))
            .tempdir()
            .context("creating the node's directory")?;
        let info = NodeInfo {
            netns: format!("casnode{}", std::process::id()),
            slot,
            containerd_socket: dir.path().join("containerd.sock"),
            dir: dir.path().to_path_buf(),
            images: built
                .iter()
                .map(|(name, (image, _))| (name.clone(), image.clone()))
                .collect(),
        };
        let mut node = Node {
            host_veth: format!("cnh{slot}"),
            info,
            dir: Some(dir),
            children: Vec::new(),
            netns_created: false,
            _relay: None,
            _lease: lease,
        };
        if let Err(e) = node.bring_up(plane, &bins, &built) {
            let kept = node.keep_logs();
            return Err(e.context(format!("starting the node (its logs are kept in {kept})")));
        }
        eprintln!(
            "cassette-e2e: node {NODE_NAME} Ready in {:.1}s (netns {}, pods {}, state in {})",
            started.elapsed().as_secs_f64(),
            node.info.netns,
            node.info.pod_cidr(),
            node.info.dir.display()
        );
        Ok(node)
    }

    fn bring_up(
        &mut self,
        plane: &PlaneAccess<'_>,
        bins: &NodeBinaries,
        built: &BTreeMap<String, (String, PathBuf)>,
    ) -> Result<()> {
        self.network()?;
        let (relay, api_port) = self.relay(plane.server)?;
        self._relay = Some(relay);
        self.control_plane_components(plane, bins)?;
        self.containerd()?;
        for (image, archive) in built.values() {
            self.info.import(image, archive)?;
        }
        self.kubelet(bins, plane, api_port)?;
        self.wait_ready(plane.admin_kubeconfig)?;
        self.kube_proxy(bins, plane, api_port)?;
        self.coredns(bins, plane, api_port)?;
        self.wait_services(plane.admin_kubeconfig)?;
        self.kubernetes_service(plane.admin_kubeconfig, api_port)
    }

    /// Send pods' traffic for the `kubernetes` Service to the API server through the relay.
    /// The API server advertises its loopback address, which no pod can reach, so kube-proxy
    /// has no usable endpoint for it; a DNAT ahead of kube-proxy's rules (the serving
    /// certificate names the service's address) stands in for a routable advertise address.
    fn kubernetes_service(&self, admin: &Path, api_port: u16) -> Result<()> {
        let out = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(admin)
            .args([
                "get",
                "service",
                "kubernetes",
                "-o",
                "jsonpath={.spec.clusterIP}",
            ])
            .output()?;
        let service_ip = String::from_utf8_lossy(&out.stdout).trim().to_string();
        anyhow::ensure!(
            out.status.success() && service_ip.parse::<Ipv4Addr>().is_ok(),
            "reading the kubernetes service's address: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        run(
            "ip",
            &[
                "netns",
                "exec",
                &self.info.netns,
                "iptables",
                "-t",
                "nat",
                "-I",
                "PREROUTING",
                "1",
                "-s",
                &self.info.pod_cidr(),
                "-d",
                &format!("{service_ip}/32"),
                "-p",
                "tcp",
                "--dport",
                "443",
                "-j",
                "DNAT",
                "--to-destination",
                &format!("{}:{api_port}", self.info.host_ip()),
            ],
        )
    }

    /// Copy the components' logs out of the directory (which goes away with the node).
    fn keep_logs(&self) -> String {
        let kept = std::env::temp_dir().join(format!("cassette-node-logs-{}", std::process::id()));
        let _ = fs::create_dir_all(&kept);
        if let Ok(entries) = fs::read_dir(self.dir()) {
            for entry in entries.flatten() {
                let path = entry.path();
                if path
                    .extension()
                    .is_some_and(|e| e == "log" || e == "json" || e == "toml")
                    || path.file_name().is_some_and(|n| n == "Corefile")
                {
                    let _ = fs::copy(&path, kept.join(entry.file_name()));
                }
            }
        }
        kept.display().to_string()
    }

    /// What tests need to know about the node.
    pub fn info(&self) -> &NodeInfo {
        &self.info
    }

    fn dir(&self) -> &Path {
        &self.info.dir
    }

    /// The namespace, the veth pair, addresses, routes, forwarding and the metadata DNAT.
    fn network(&mut self) -> Result<()> {
        let ns = self.info.netns.clone();
        let (host, node) = (self.info.host_ip(), self.info.node_ip());
        if Path::new(NETNS_RUN_DIR).join(&ns).exists() {
            remove_netns(&ns);
        }
        run("ip", &["netns", "add", &ns])?;
        self.netns_created = true;
        // A veth of a dead holder of this slot would have gone with its namespace; one of a
        // live holder cannot exist (the slot is leased).
        let _ = run_quiet("ip", &["link", "del", &self.host_veth]);
        run(
            "ip",
            &[
                "link",
                "add",
                &self.host_veth,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                &ns,
            ],
        )?;
        run(
            "ip",
            &["addr", "add", &format!("{host}/24"), "dev", &self.host_veth],
        )?;
        run("ip", &["link", "set", &self.host_veth, "up"])?;
        run(
            "ip",
            &[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{node}/24"),
                "dev",
                "eth0",
            ],
        )?;
        run("ip", &["-n", &ns, "link", "set", "lo", "up"])?;
        run("ip", &["-n", &ns, "link", "set", "eth0", "up"])?;
        run(
            "ip",
            &[
                "-n",
                &ns,
                "route",
                "add",
                "default",
                "via",
                &host.to_string(),
            ],
        )?;
        run(
            "ip",
            &[
                "route",
                "add",
                &self.info.pod_cidr(),
                "via",
                &node.to_string(),
                "dev",
                &self.host_veth,
            ],
        )?;
        let in_ns = |args: &[&str]| -> Result<()> {
            let mut all = vec!["netns", "exec", ns.as_str()];
            all.extend_from_slice(args);
            run("ip", &all)
        };
        in_ns(&["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
        // As on GKE: the node sends pods' metadata traffic to its metadata server.
        in_ns(&[
            "iptables",
            "-t",
            "nat",
            "-A",
            "PREROUTING",
            "-s",
            &self.info.pod_cidr(),
            "-d",
            "169.254.169.254/32",
            "-p",
            "tcp",
            "--dport",
            "80",
            "-j",
            "DNAT",
            "--to-destination",
            &self.info.metadata_target().to_string(),
        ])?;
        Ok(())
    }

    /// A relay on the host side of the veth to the API server on loopback; returns its port.
    fn relay(&self, server: SocketAddr) -> Result<(Relay, u16)> {
        let listener = TcpListener::bind(SocketAddrV4::new(self.info.host_ip(), 0))
            .context("binding the API server relay on the node's host side")?;
        let relay = Relay::forward(listener, server)?;
        let port = relay.addr().port();
        Ok((relay, port))
    }

    /// A kubeconfig for a node-side component: the user's certificate, the relay as server,
    /// the API server's certificate checked for `localhost` (one of its names).
    fn node_kubeconfig(
        &self,
        plane: &PlaneAccess<'_>,
        user: &str,
        group: Option<&str>,
        api_port: u16,
    ) -> Result<PathBuf> {
        let source = (plane.user_kubeconfig)(user, group)?;
        let mut config: serde_json::Value = serde_json::from_str(&fs::read_to_string(&source)?)
            .with_context(|| format!("reading {}", source.display()))?;
        let cluster = &mut config["clusters"][0]["cluster"];
        cluster["server"] = format!("https://{}:{api_port}", self.info.host_ip()).into();
        cluster["tls-server-name"] = "localhost".into();
        let path = self
            .dir()
            .join(format!("{}.kubeconfig", user.replace(':', "-")));
        fs::write(&path, serde_json::to_string_pretty(&config)?)?;
        Ok(path)
    }

    fn control_plane_components(
        &mut self,
        plane: &PlaneAccess<'_>,
        bins: &NodeBinaries,
    ) -> Result<()> {
        let kcm_kubeconfig =
            (plane.user_kubeconfig)("system:kube-controller-manager", Some("system:masters"))?;
        let certs = self.dir().join("certs");
        fs::create_dir_all(&certs)?;
        let mut kcm = self.command(&bins.kube_controller_manager, false);
        kcm.arg(format!("--kubeconfig={}", kcm_kubeconfig.display()))
            .arg(format!("--root-ca-file={}", plane.ca_file.display()))
            .arg(format!(
                "--service-account-private-key-file={}",
                plane.sa_key_file.display()
            ))
            .arg("--use-service-account-credentials=false")
            .arg("--leader-elect=false")
            .arg("--bind-address=127.0.0.1")
            .arg(format!("--secure-port={}", free_port()?))
            .arg(format!("--cert-dir={}", certs.display()))
            .arg("--v=1");
        self.spawn("kube-controller-manager", kcm)?;

        let scheduler_kubeconfig = (plane.user_kubeconfig)("system:kube-scheduler", None)?;
        let mut scheduler = self.command(&bins.kube_scheduler, false);
        scheduler
            .arg(format!("--kubeconfig={}", scheduler_kubeconfig.display()))
            .arg("--leader-elect=false")
            .arg("--bind-address=127.0.0.1")
            .arg(format!("--secure-port={}", free_port()?))
            .arg(format!("--cert-dir={}", certs.display()))
            .arg("--v=1");
        self.spawn("kube-scheduler", scheduler)?;
        Ok(())
    }

    fn containerd(&mut self) -> Result<()> {
        let dir = self.dir().to_path_buf();
        let cni_conf = dir.join("cni");
        fs::create_dir_all(&cni_conf)?;
        let slot = self.info.slot;
        let conflist = serde_json::json!({
            "cniVersion": "0.4.0",
            "name": "cassette",
            "plugins": [{
                "type": "bridge",
                "bridge": "cni0",
                "isGateway": true,
                "ipMasq": false,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    // Dual-stack pods, as GKE's dual-stack clusters give: an agent's IPv6
                    // must meet the capture rules, not an absent route.
                    "ranges": [
                        [{"subnet": self.info.pod_cidr(), "gateway": format!("10.244.{slot}.1")}],
                        [{"subnet": format!("fd00:244:{slot:x}::/64"), "gateway": format!("fd00:244:{slot:x}::1")}],
                    ],
                    "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}],
                    "dataDir": dir.join("cni-ipam"),
                },
            }],
        });
        fs::write(
            cni_conf.join("10-cassette.conflist"),
            serde_json::to_string_pretty(&conflist)?,
        )?;
        let pause = self.info.image("pause")?.to_string();
        let d = |name: &str| dir.join(name).display().to_string();
        let config = format!(
            r#"version = 2
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs"]

[grpc]
  address = "{socket}"

[ttrpc]
  address = "{socket}.ttrpc"

[plugins."io.containerd.internal.v1.opt"]
  path = "{opt}"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{pause}"
  # This machine's root lacks CAP_SYS_RESOURCE: runc must not lower oom_score_adj.
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "{runc}"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_BIN_DIR}"
    conf_dir = "{cni}"
    max_conf_num = 1
"#,
            root = d("containerd/root"),
            state = d("containerd/state"),
            socket = self.info.containerd_socket.display(),
            opt = d("containerd/opt"),
            runc = d("containerd/runc"),
            cni = cni_conf.display(),
        );
        let config_path = dir.join("containerd.toml");
        fs::write(&config_path, config)?;
        let mut containerd = self.command("containerd", true);
        containerd.arg("--config").arg(&config_path);
        self.spawn("containerd", containerd)?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            self.check_alive()?;
            let ok = self
                .info
                .ctr()
                .arg("version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "containerd did not answer within 30s; its log ends with:\n{}",
                    self.info.log_tail("containerd")
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn kubelet(
        &mut self,
        bins: &NodeBinaries,
        plane: &PlaneAccess<'_>,
        api_port: u16,
    ) -> Result<()> {
        let kubeconfig = self.node_kubeconfig(
            plane,
            &format!("system:node:{NODE_NAME}"),
            Some("system:nodes"),
            api_port,
        )?;
        // Without the Node authorizer, the kubelet's rights come from the system:node role.
        let binding = serde_json::json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": "cassette-e2e:nodes"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "system:node"},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "system:nodes"}],
        });
        kubectl_apply(plane.admin_kubeconfig, &binding.to_string())?;
        let dir = self.dir().to_path_buf();
        let config = serde_json::json!({
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "cgroupDriver": "cgroupfs",
            "cgroupsPerQOS": false,
            "enforceNodeAllocatable": [],
            "failSwapOn": false,
            "containerRuntimeEndpoint": format!("unix://{}", self.info.containerd_socket.display()),
            "evictionHard": {},
            "localStorageCapacityIsolation": false,
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "authentication": {"anonymous": {"enabled": true}, "webhook": {"enabled": false}},
            "authorization": {"mode": "AlwaysAllow"},
            "address": self.info.node_ip().to_string(),
            "port": 10250,
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": 10248,
            "clusterDomain": CLUSTER_DOMAIN,
            "clusterDNS": [self.info.dns_ip().to_string()],
            "podLogsDir": dir.join("pod-logs"),
            "serializeImagePulls": false,
            "registerNode": true,
            "nodeStatusUpdateFrequency": "4s",
            "syncFrequency": "10s",
            "fileCheckFrequency": "10s",
            "shutdownGracePeriod": "0s",
        });
        let config_path = dir.join("kubelet.json");
        fs::write(&config_path, serde_json::to_string_pretty(&config)?)?;
        let mut kubelet = self.command(&bins.kubelet, true);
        kubelet
            .arg(format!("--config={}", config_path.display()))
            .arg(format!("--kubeconfig={}", kubeconfig.display()))
            .arg(format!("--root-dir={}", dir.join("kubelet").display()))
            .arg(format!("--cert-dir={}", dir.join("kubelet-pki").display()))
            .arg(format!("--hostname-override={NODE_NAME}"))
            .arg(format!("--node-ip={}", self.info.node_ip()))
            .arg("--v=1");
        self.spawn("kubelet", kubelet)
    }

    fn kube_proxy(
        &mut self,
        bins: &NodeBinaries,
        plane: &PlaneAccess<'_>,
        api_port: u16,
    ) -> Result<()> {
        let kubeconfig = self.node_kubeconfig(plane, "system:kube-proxy", None, api_port)?;
        let config = serde_json::json!({
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration",
            "clientConnection": {"kubeconfig": kubeconfig},
            "mode": "iptables",
            "clusterCIDR": self.info.pod_cidr(),
            "hostnameOverride": NODE_NAME,
            "bindAddress": self.info.node_ip().to_string(),
            "healthzBindAddress": "127.0.0.1:10256",
            "metricsBindAddress": "127.0.0.1:10249",
            // Leave the kernel's conntrack limits and timeouts alone (they are not ours).
            "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
            // Pods on one bridge reach each other's services without br_netfilter (which this
            // machine may not load): masquerading makes the reply come back through the node.
            "iptables": {"masqueradeAll": true, "syncPeriod": "10s", "minSyncPeriod": "0s"},
        });
        let config_path = self.dir().join("kube-proxy.json");
        fs::write(&config_path, serde_json::to_string_pretty(&config)?)?;
        let mut proxy = self.command(&bins.kube_proxy, true);
        proxy
            .arg(format!("--config={}", config_path.display()))
            .arg("--v=1");
        self.spawn("kube-proxy", proxy)
    }

    fn coredns(
        &mut self,
        bins: &NodeBinaries,
        plane: &PlaneAccess<'_>,
        api_port: u16,
    ) -> Result<()> {
        let kubeconfig = self.node_kubeconfig(
            plane,
            "system:cassette-coredns",
            Some("system:masters"),
            api_port,
        )?;
        let host = self.info.host_ip();
        let mut hosts = String::new();
        for name in crate::netns::UPSTREAM_HOSTS {
            hosts.push_str(&format!("        {host} {name}\n"));
        }
        hosts.push_str(&format!(
            "        {} {} metadata\n",
            crate::netns::METADATA_IP,
            crate::netns::METADATA_HOST
        ));
        // Cluster names from the API; the test upstreams' names to the host side; anything else
        // is NXDOMAIN at once (nothing is forwarded off the machine).
        let corefile = format!(
            "{CLUSTER_DOMAIN}:53 {{\n    errors\n    kubernetes {CLUSTER_DOMAIN} {{\n        kubeconfig {kubeconfig} cassette-e2e\n        pods insecure\n        ttl 5\n    }}\n}}\n\
             .:53 {{\n    errors\n    hosts {{\n{hosts}        ttl 5\n    }}\n}}\n",
            kubeconfig = kubeconfig.display(),
        );
        let corefile_path = self.dir().join("Corefile");
        fs::write(&corefile_path, corefile)?;
        let mut coredns = self.command(&bins.coredns, true);
        coredns.arg("-conf").arg(&corefile_path);
        self.spawn("coredns", coredns)
    }

    fn wait_ready(&mut self, admin: &Path) -> Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut last = String::new();
        while Instant::now() < deadline {
            self.check_alive()?;
            let out = Command::new("kubectl")
                .arg("--kubeconfig")
                .arg(admin)
                .arg("--request-timeout=10s")
                .args([
                    "get",
                    "node",
                    NODE_NAME,
                    "-o",
                    r#"jsonpath={.status.conditions[?(@.type=="Ready")].status} {.status.conditions[?(@.type=="Ready")].message}"#,
                ])
                .output()?;
            last = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            if out.status.success() && last.starts_with("True") {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        bail!(
            "node {NODE_NAME} was not Ready after {READY_TIMEOUT:?} (last: {}); the kubelet's log ends with:\n{}",
            last.trim(),
            self.info.log_tail("kubelet")
        )
    }

    /// The service-account controller's `default` account, kube-proxy's rule for the
    /// `kubernetes` service, and CoreDNS listening.
    fn wait_services(&mut self, admin: &Path) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut missing = "";
        while Instant::now() < deadline {
            self.check_alive()?;
            let sa = Command::new("kubectl")
                .arg("--kubeconfig")
                .arg(admin)
                .arg("--request-timeout=10s")
                .args(["get", "serviceaccount", "default", "-n", "default"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()?;
            let rules = Command::new("ip")
                .args(["netns", "exec", &self.info.netns])
                .arg("iptables-save")
                .output()?;
            let dns = TcpStream::connect_timeout(
                &SocketAddr::new(self.info.node_ip().into(), 53),
                Duration::from_millis(500),
            );
            missing = if !sa.success() {
                "the default service account (kube-controller-manager)"
            } else if !String::from_utf8_lossy(&rules.stdout).contains("default/kubernetes") {
                "kube-proxy's rules for the kubernetes service"
            } else if dns.is_err() {
                "CoreDNS on port 53"
            } else {
                return Ok(());
            };
            std::thread::sleep(Duration::from_millis(250));
        }
        bail!(
            "the node's services did not come up within 60s: still waiting for {missing}; logs in {}",
            self.info.dir.display()
        )
    }

    /// A command for a component that dies with the thread that spawns it, inside the node's
    /// network namespace when `in_node` (`nsenter --net`: only the network namespace, mounts
    /// stay shared).
    fn command(&self, program: impl AsRef<OsStr>, in_node: bool) -> Command {
        if !in_node {
            return dying_with_spawner(program);
        }
        let netns = Path::new(NETNS_RUN_DIR).join(&self.info.netns);
        let mut command = dying_with_spawner(crate::netns::find_binary("nsenter"));
        command
            .arg(format!("--net={}", netns.display()))
            .arg("--")
            .arg(program);
        command
    }

    /// Start a component (made by [`Node::command`]) with its output in `<dir>/<name>.log`.
    fn spawn(&mut self, name: &str, command: Command) -> Result<()> {
        let log = self.dir().join(format!("{name}.log"));
        let child = spawn_logged(command, &log)?;
        self.children.push((name.to_string(), child));
        Ok(())
    }

    fn check_alive(&mut self) -> Result<()> {
        for (name, child) in &mut self.children {
            if let Some(status) = child.try_wait()? {
                bail!(
                    "{name} exited ({status}); its log ends with:\n{}",
                    self.info.log_tail(name)
                );
            }
        }
        Ok(())
    }

    /// Stop everything and clean up. Best effort: problems go to stderr.
    pub fn stop(&mut self) {
        let Some(dir) = self.dir.take() else {
            return;
        };
        // The kubelet first, so it restarts nothing; then every container and sandbox.
        if let Some(i) = self.children.iter().position(|(n, _)| n == "kubelet") {
            let (_, child) = self.children.remove(i);
            crate::controlplane::terminate(child);
        }
        if self.children.iter().any(|(n, _)| n == "containerd") {
            remove_tasks(&self.info);
        }
        while let Some((_, child)) = self.children.pop() {
            crate::controlplane::terminate(child);
        }
        kill_shims(&self.info.containerd_socket);
        remove_container_log_links(dir.path());
        unmount_under(dir.path());
        if self.netns_created {
            remove_netns(&self.info.netns);
            self.netns_created = false;
        }
        let _ = run_quiet("ip", &["link", "del", &self.host_veth]);
        let _ = run_quiet("ip", &["route", "del", &self.info.pod_cidr()]);
        if let Err(e) = dir.close() {
            eprintln!("cassette-e2e: removing the node's directory: {e}");
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Kill every container task of the node's containerd and remove the pod network namespaces
/// their sandboxes held (CNI's DEL never runs when the node is torn down at once).
fn remove_tasks(info: &NodeInfo) {
    let Ok(out) = info.ctr().args(["tasks", "ls"]).output() else {
        return;
    };
    let mut netns_inodes = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines().skip(1) {
        let mut words = line.split_whitespace();
        let (Some(id), Some(pid)) = (words.next(), words.next()) else {
            continue;
        };
        let Ok(pid) = pid.parse::<i32>() else {
            continue;
        };
        if let Ok(meta) = fs::metadata(format!("/proc/{pid}/ns/net")) {
            netns_inodes.push(meta.ino());
        }
        kill(pid);
        let _ = info
            .ctr()
            .args(["tasks", "delete", "--force", id])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
    remove_pod_netns(&netns_inodes);
    // CNI's result cache (libcni's default directory; containerd 1.6 has no setting for it)
    // holds an entry per sandbox until a DEL that a torn-down node never sends.
    let ids = info
        .ctr()
        .args(["containers", "ls", "-q"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let ids: Vec<&str> = ids
        .lines()
        .map(str::trim)
        .filter(|l| l.len() == 64)
        .collect();
    if let Ok(entries) = fs::read_dir(CNI_CACHE_DIR) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if ids.iter().any(|id| name.contains(id)) {
                let _ = fs::remove_file(entry.path());
            }
        }
    }
}

/// Remove the kubelet's links in `/var/log/containers` (a path it does not let us choose)
/// that point into this node's directory.
fn remove_container_log_links(dir: &Path) {
    let Ok(entries) = fs::read_dir(CONTAINER_LOG_LINKS) else {
        return;
    };
    for entry in entries.flatten() {
        if fs::read_link(entry.path()).is_ok_and(|target| target.starts_with(dir)) {
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// Kill the containerd shims that serve a given containerd (their command line names its
/// socket; they outlive containerd by design) and the containers they still run, and remove
/// the pod network namespaces those containers held. After a clean [`remove_tasks`] there is
/// nothing but the shims; after a test process was killed outright, this is the clean-up.
fn kill_shims(socket: &Path) {
    let socket = socket.to_string_lossy().into_owned();
    let processes = processes();
    let shims: Vec<i32> = processes
        .iter()
        .filter(|(_, _, args)| {
            args.first().is_some_and(|a| a.contains("containerd-shim")) && args.contains(&socket)
        })
        .map(|(pid, _, _)| *pid)
        .collect();
    let mut netns_inodes = Vec::new();
    for (pid, ppid, _) in &processes {
        if shims.contains(ppid) {
            if let Ok(meta) = fs::metadata(format!("/proc/{pid}/ns/net")) {
                netns_inodes.push(meta.ino());
            }
            // A container's init, a child of one of this node's shims: killing it ends its PID
            // namespace.
            kill(*pid);
        }
    }
    for pid in shims {
        kill(pid);
    }
    remove_pod_netns(&netns_inodes);
}

/// Every process as (pid, parent pid, command line).
fn processes() -> Vec<(i32, i32, Vec<String>)> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut all = Vec::new();
    for entry in entries.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let (Ok(cmdline), Ok(stat)) = (
            fs::read(format!("/proc/{pid}/cmdline")),
            fs::read_to_string(format!("/proc/{pid}/stat")),
        ) else {
            continue;
        };
        // The parent is the second field after the parenthesised command name.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        let args = cmdline
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        all.push((pid, ppid, args));
    }
    all
}

/// Remove the `/run/netns/cni-*` namespaces whose inode is one of `inodes`.
fn remove_pod_netns(inodes: &[u64]) {
    if inodes.is_empty() {
        return;
    }
    let Ok(entries) = fs::read_dir(NETNS_RUN_DIR) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("cni-")
            && fs::metadata(entry.path()).is_ok_and(|meta| inodes.contains(&meta.ino()))
        {
            remove_netns(&name);
        }
    }
}

/// Lazily unmount every mount point under `dir`, deepest first.
fn unmount_under(dir: &Path) {
    let Ok(mountinfo) = fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let prefix = dir.to_string_lossy().into_owned();
    let mut points: Vec<String> = mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|p| p.replace("\\040", " "))
        .filter(|p| p.starts_with(&prefix))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for point in points {
        if let Err(e) = unmount(point.as_str(), UnmountFlags::DETACH) {
            eprintln!("cassette-e2e: unmounting {point}: {e}");
        }
    }
}

/// SIGKILL a process by PID; one that is already gone is no error.
fn kill(pid: i32) {
    if let Some(pid) = Pid::from_raw(pid) {
        let _ = kill_process(pid, Signal::KILL);
    }
}

/// Kill what runs in a named network namespace, unmount and remove it.
fn remove_netns(name: &str) {
    for _ in 0..50 {
        let pids = crate::netns::namespace_pids(name).unwrap_or_default();
        if pids.is_empty() {
            break;
        }
        for pid in pids {
            kill(pid);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    if let Err(e) = run("ip", &["netns", "del", name]) {
        eprintln!("cassette-e2e: removing network namespace {name}: {e:#}");
    }
}

/// Remove node namespaces whose test process is gone and whose sweeper did not run (both
/// killed), with the shims of their containerd and the mounts of their directory.
fn reap_stale() {
    let Ok(entries) = fs::read_dir(NETNS_RUN_DIR) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("casnode")
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        // Signal 0 only checks that the process exists.
        if Pid::from_raw(pid).is_none_or(|pid| test_kill_process(pid).is_ok()) {
            continue;
        }
        eprintln!(
            "cassette-e2e: removing node namespace {name} left by process {pid}, which is gone"
        );
        remove_leftovers(pid);
    }
}

/// Remove what the node of process `pid`, which is gone, left: its containerd's shims and
/// containers, its network namespace, the mounts under its directory and the directory. Its
/// components died with the process (`setpriv --pdeathsig`); see [`crate::sweep`].
pub(crate) fn remove_leftovers(pid: i32) {
    // The shims first (they live in the node namespace, and removing it would kill them
    // without their containers), then the namespace, then the mounts and the directory.
    let dirs: Vec<PathBuf> = fs::read_dir(std::env::temp_dir())
        .into_iter()
        .flatten()
        .flatten()
        .filter(|d| {
            d.file_name()
                .to_string_lossy()
                .starts_with(&format!("cassette-node-{pid}-"))
        })
        .map(|d| d.path())
        .collect();
    for dir in &dirs {
        kill_shims(&dir.join("containerd.sock"));
    }
    let netns = format!("casnode{pid}");
    if Path::new(NETNS_RUN_DIR).join(&netns).exists() {
        remove_netns(&netns);
    }
    for dir in &dirs {
        remove_container_log_links(dir);
        unmount_under(dir);
        let _ = fs::remove_dir_all(dir);
    }
}

/// An exclusive lease on one slot (0..=255) for the life of the returned file.
fn lease_slot() -> Result<(u8, fs::File)> {
    fs::create_dir_all(LEASE_DIR).with_context(|| format!("creating {LEASE_DIR}"))?;
    let start = (std::process::id() % 256) as usize;
    for i in 0..256 {
        let slot = ((start + i) % 256) as u8;
        let path = Path::new(LEASE_DIR).join(format!("node-{slot}.lock"));
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        if flock(&file, FlockOperation::NonBlockingLockExclusive).is_ok() {
            return Ok((slot, file));
        }
    }
    bail!("all 256 node slots are leased by running tests")
}

/// Run a script and read its `KEY=value` lines.
fn script_lines(script: &Path, args: &[&str]) -> Result<BTreeMap<String, String>> {
    let out = Command::new("bash")
        .arg(script)
        .args(args)
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    if !out.status.success() {
        bail!(
            "{} failed ({}); see its output above",
            script.display(),
            out.status
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect())
}

fn kubectl_apply(kubeconfig: &Path, manifest: &str) -> Result<()> {
    use std::io::Write;
    let mut child = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(["apply", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .context("kubectl's stdin")?
        .write_all(manifest.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "kubectl apply failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn run(program: &str, args: &[&str]) -> Result<()> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn run_quiet(program: &str, args: &[&str]) -> Result<()> {
    let status = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()?;
    anyhow::ensure!(status.success(), "{program} failed");
    Ok(())
}

/// In a test returning `Result`: skip it, saying why, when the real node cannot run here.
#[macro_export]
macro_rules! require_node {
    () => {
        if let Some(reason) = $crate::node::unavailable_reason() {
            println!("skipped: {reason}");
            return Ok(());
        }
    };
}

/// Whether a real node can run here; node tests skip with this reason otherwise.
pub fn unavailable_reason() -> Option<String> {
    if std::env::var_os(crate::KUBECONFIG_ENV).is_some() {
        return Some(format!(
            "the node tests run the harness's own node, not a cluster given by {}",
            crate::KUBECONFIG_ENV
        ));
    }
    if let Some(reason) = crate::netns::unavailable_reason() {
        return Some(reason);
    }
    for tool in ["containerd", "runc", "ctr", "buildah", "debootstrap"] {
        if !crate::netns::find_binary(tool).is_file() {
            return Some(format!(
                "the node tests need {tool} (make deps installs containerd, runc, CNI plugins, buildah and debootstrap)"
            ));
        }
    }
    if !Path::new(CNI_BIN_DIR).join("bridge").is_file() {
        return Some(format!(
            "the node tests need the CNI plugins in {CNI_BIN_DIR}"
        ));
    }
    None
}
