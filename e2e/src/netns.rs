//! Two network namespaces joined by a veth pair: a "pod" that the agent's commands run in, and
//! a "net" that holds every upstream (the fake metadata server, git, echo, the emulators).
//!
//! Nothing here touches the root namespace's networking: the veth pair is created inside the
//! pod namespace with its peer placed straight into the net namespace, and every address lives
//! in one of the two. Names are mapped to the net side through `/etc/netns/<pod>/hosts`, which
//! `ip netns exec` bind-mounts over `/etc/hosts`. Dropping a [`Topology`] kills whatever still
//! runs inside it and removes both namespaces and the hosts directory.
//!
//! ```no_run
//! # fn main() -> anyhow::Result<()> {
//! use cassette_e2e::clients::{AgentHome, stdout_within};
//! use cassette_e2e::netns::{Identity, Topology};
//! use cassette_e2e::upstreams::{Upstreams, UpstreamsConfig};
//!
//! let topology = Topology::create()?;
//! // From an integration test: env!("CARGO_BIN_EXE_cassette-e2e").
//! let upstreams = Upstreams::start(&topology, &UpstreamsConfig::new("target/debug/cassette-e2e"))?;
//! let home = AgentHome::new(Identity::AGENT)?;
//! let env = home.env(&upstreams.ca_pem_path());
//! let mut curl = topology.pod_command(Identity::AGENT, "curl", env);
//! curl.args(["-sS", "https://echo.test/echo"]);
//! let answer = stdout_within(curl, std::time::Duration::from_secs(30))?;
//! # Ok(()) }
//! ```

use anyhow::{Context, Result, bail};
use rustix::fs::{FlockOperation, flock};
use rustix::io::Errno;
use rustix::process::{Pid, Signal, geteuid, kill_process, test_kill_process};
use rustix::thread::{LinkNameSpaceType, move_into_link_name_space};
use std::ffi::OsStr;
use std::fs;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::fd::AsFd;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// The GKE metadata server's address; it lives in the net namespace, reached over the default
/// route as on a node.
pub const METADATA_IP: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);

/// Names that resolve to the net side's address inside the pod namespace.
pub const UPSTREAM_HOSTS: &[&str] = &[
    "storage.googleapis.com",
    "pubsub.googleapis.com",
    "source.developers.google.com",
    "git.test",
    "api.git.test",
    "echo.test",
];

/// The name that resolves to [`METADATA_IP`] inside the pod namespace.
pub const METADATA_HOST: &str = "metadata.google.internal";

/// The UID and GID an agent's commands run as in the tests (not root, not the sidecar's 1337).
pub const AGENT_UID: u32 = 1000;

/// The PATH a command gets when the caller's environment does not name one.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Where named namespaces live (iproute2's convention).
const NETNS_RUN_DIR: &str = "/run/netns";
/// Where `ip netns exec` looks for per-namespace `/etc` files.
const NETNS_ETC_DIR: &str = "/etc/netns";
/// Where subnet leases are held (an flock per /24, released when the holder dies).
const LEASE_DIR: &str = "/run/cassette-e2e";

/// Who a command runs as inside a namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Identity {
    /// Root with all capabilities, like the sidecar's init container.
    Root,
    /// A plain user: real and effective UID/GID set, supplementary groups cleared.
    User { uid: u32, gid: u32 },
}

impl Identity {
    /// The agent's identity in the tests: UID and GID [`AGENT_UID`].
    pub const AGENT: Identity = Identity::User {
        uid: AGENT_UID,
        gid: AGENT_UID,
    };

    /// A user with the same number as UID and GID.
    pub fn user(id: u32) -> Self {
        Identity::User { uid: id, gid: id }
    }
}

/// Which of the two namespaces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// Where the agent (and later the sidecar) runs.
    Pod,
    /// Where the upstreams run.
    Net,
}

/// A pod namespace and a net namespace joined by a veth pair on a /24 of 10.231.0.0/16.
pub struct Topology {
    pod: String,
    net: String,
    subnet: u8,
    hosts_dir: PathBuf,
    /// Namespaces created so far, removed on drop (also after a partial set-up).
    created: Vec<String>,
    /// Holds the subnet's flock for as long as the topology lives.
    _lease: fs::File,
}

impl Topology {
    /// Create both namespaces, the veth pair, the addresses, the default route and the hosts
    /// files. Needs root. Namespaces left behind by test processes that died are removed first.
    pub fn create() -> Result<Self> {
        reap_stale();
        let (subnet, lease) = lease_subnet()?;
        let (pod, net) = fresh_names()?;
        let mut topology = Topology {
            hosts_dir: Path::new(NETNS_ETC_DIR).join(&pod),
            pod,
            net,
            subnet,
            created: Vec::new(),
            _lease: lease,
        };
        topology.build()?;
        Ok(topology)
    }

    fn build(&mut self) -> Result<()> {
        for name in [self.pod.clone(), self.net.clone()] {
            ip(&["netns", "add", &name])?;
            self.created.push(name);
        }
        let (pod, net) = (self.pod.as_str(), self.net.as_str());
        // Create the pair inside the pod namespace with its peer placed directly into the net
        // namespace: no interface ever appears in the root namespace.
        ip(&[
            "-n", pod, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", net,
        ])?;
        let pod_cidr = format!("{}/24", self.pod_ip());
        let net_cidr = format!("{}/24", self.net_ip());
        let metadata_cidr = format!("{METADATA_IP}/32");
        ip(&["-n", pod, "addr", "add", &pod_cidr, "dev", "eth0"])?;
        ip(&["-n", net, "addr", "add", &net_cidr, "dev", "eth0"])?;
        ip(&["-n", net, "addr", "add", &metadata_cidr, "dev", "lo"])?;
        for ns in [pod, net] {
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
            ip(&["-n", ns, "link", "set", "eth0", "up"])?;
        }
        let gateway = self.net_ip().to_string();
        ip(&["-n", pod, "route", "add", "default", "via", &gateway])?;
        self.write_etc()
    }

    /// `/etc/netns/<pod>/{hosts,resolv.conf}`: the upstream names point at the net side, the
    /// metadata name at 169.254.169.254, and DNS at the net side (nothing answers on 53, so an
    /// unknown name fails at once instead of leaking to the machine's resolver).
    fn write_etc(&self) -> Result<()> {
        fs::create_dir_all(&self.hosts_dir)
            .with_context(|| format!("creating {}", self.hosts_dir.display()))?;
        fs::set_permissions(&self.hosts_dir, fs::Permissions::from_mode(0o755))?;
        let mut hosts = String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost\n");
        for host in UPSTREAM_HOSTS {
            hosts.push_str(&format!("{}\t{host}\n", self.net_ip()));
        }
        hosts.push_str(&format!("{METADATA_IP}\t{METADATA_HOST} metadata\n"));
        write_public(&self.hosts_dir.join("hosts"), &hosts)?;
        let resolv = format!(
            "nameserver {}\noptions timeout:1 attempts:1\n",
            self.net_ip()
        );
        write_public(&self.hosts_dir.join("resolv.conf"), &resolv)
    }

    /// The pod namespace's name (for `ip netns exec`).
    pub fn pod_ns(&self) -> &str {
        &self.pod
    }

    /// The net namespace's name.
    pub fn net_ns(&self) -> &str {
        &self.net
    }

    /// A namespace's name by side.
    pub fn ns(&self, side: Side) -> &str {
        match side {
            Side::Pod => &self.pod,
            Side::Net => &self.net,
        }
    }

    /// The third octet X of this topology's 10.231.X.0/24.
    pub fn subnet(&self) -> u8 {
        self.subnet
    }

    /// The pod side of the veth pair, 10.231.X.2.
    pub fn pod_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 231, self.subnet, 2)
    }

    /// The net side of the veth pair, 10.231.X.1: the pod's default gateway and the address
    /// every upstream name resolves to.
    pub fn net_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 231, self.subnet, 1)
    }

    /// The metadata server's address (in the net namespace).
    pub fn metadata_ip(&self) -> Ipv4Addr {
        METADATA_IP
    }

    /// The directory whose `hosts` and `resolv.conf` the pod namespace sees as `/etc/…`.
    pub fn pod_etc_dir(&self) -> &Path {
        &self.hosts_dir
    }

    /// A command that runs `program` in the pod namespace as `identity`, with exactly `env`
    /// (plus [`DEFAULT_PATH`] when `env` names no `PATH`) and `/` as working directory.
    pub fn pod_command<I, K, V>(
        &self,
        identity: Identity,
        program: impl AsRef<OsStr>,
        env: I,
    ) -> Command
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<OsStr>,
        V: AsRef<OsStr>,
    {
        command(&self.pod, identity, program, env)
    }

    /// A command that runs `program` in the net namespace as `identity` (see
    /// [`Topology::pod_command`]).
    pub fn net_command<I, K, V>(
        &self,
        identity: Identity,
        program: impl AsRef<OsStr>,
        env: I,
    ) -> Command
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<OsStr>,
        V: AsRef<OsStr>,
    {
        command(&self.net, identity, program, env)
    }

    /// Run `f` on a thread that has entered one of the namespaces, e.g. to open sockets there
    /// from the test process. Sockets keep their namespace after the thread ends.
    pub fn enter<R: Send>(&self, side: Side, f: impl FnOnce() -> R + Send) -> Result<R> {
        in_namespace(self.ns(side), f)
    }

    /// Connect to `addr` from inside a namespace.
    pub fn connect(&self, side: Side, addr: SocketAddr, timeout: Duration) -> Result<TcpStream> {
        self.enter(side, || TcpStream::connect_timeout(&addr, timeout))?
            .with_context(|| format!("connecting to {addr} from namespace {}", self.ns(side)))
    }

    /// Wait until something listens on `addr` as seen from a namespace.
    pub fn wait_for_port(&self, side: Side, addr: SocketAddr, timeout: Duration) -> Result<()> {
        let started = Instant::now();
        loop {
            let last = match self.connect(side, addr, Duration::from_millis(500)) {
                Ok(_) => return Ok(()),
                Err(e) => e,
            };
            if started.elapsed() > timeout {
                return Err(last.context(format!("nothing listened on {addr} after {timeout:?}")));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The PIDs of the processes that run inside a namespace.
    pub fn pids(&self, side: Side) -> Result<Vec<i32>> {
        namespace_pids(self.ns(side))
    }
}

/// Where a test's far end runs (the upstreams, the emulators): the net side of a [`Topology`],
/// which the stand-in's pod reaches over its veth, or the root namespace beside the real node,
/// which pods reach through the node's routes ([`crate::node::NodeInfo::host_side`]).
#[derive(Clone, Debug)]
pub struct Site {
    /// The named network namespace, or `None` for the root namespace.
    ns: Option<String>,
    /// The address every upstream listens on and every upstream name resolves to.
    ip: Ipv4Addr,
    /// Where the fake metadata server listens (port 80).
    metadata_ip: Ipv4Addr,
}

impl Site {
    /// The root namespace at `ip`, with the metadata server on `ip` too (the node sends
    /// 169.254.169.254:80 there, as GKE sends it to its metadata server).
    pub fn root(ip: Ipv4Addr) -> Self {
        Self {
            ns: None,
            ip,
            metadata_ip: ip,
        }
    }

    /// The address the upstreams listen on.
    pub fn ip(&self) -> Ipv4Addr {
        self.ip
    }

    /// The address the fake metadata server listens on.
    pub fn metadata_ip(&self) -> Ipv4Addr {
        self.metadata_ip
    }

    /// A command that runs `program` at this site as `identity`, with exactly `env` (see
    /// [`command`]).
    pub fn command<I, K, V>(
        &self,
        identity: Identity,
        program: impl AsRef<OsStr>,
        env: I,
    ) -> Command
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<OsStr>,
        V: AsRef<OsStr>,
    {
        match &self.ns {
            Some(ns) => command(ns, identity, program, env),
            None => {
                let mut command = match identity {
                    Identity::Root => Command::new(program),
                    Identity::User { uid, gid } => {
                        let mut c = Command::new(setpriv_binary());
                        c.arg(format!("--reuid={uid}"))
                            .arg(format!("--regid={gid}"))
                            .arg("--clear-groups")
                            .arg("--")
                            .arg(program);
                        c
                    }
                };
                command.env_clear();
                let mut has_path = false;
                for (key, value) in env {
                    has_path |= key.as_ref() == "PATH";
                    command.env(key, value);
                }
                if !has_path {
                    command.env("PATH", DEFAULT_PATH);
                }
                command.current_dir("/").stdin(Stdio::null());
                command
            }
        }
    }

    /// Run `f` where this site's sockets live.
    pub fn enter<R: Send>(&self, f: impl FnOnce() -> R + Send) -> Result<R> {
        match &self.ns {
            Some(ns) => in_namespace(ns, f),
            None => Ok(f()),
        }
    }

    /// Connect to `addr` from this site.
    pub fn connect(&self, addr: SocketAddr, timeout: Duration) -> Result<TcpStream> {
        self.enter(|| TcpStream::connect_timeout(&addr, timeout))?
            .with_context(|| format!("connecting to {addr} from {self}"))
    }
}

impl std::fmt::Display for Site {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.ns {
            Some(ns) => write!(f, "namespace {ns}"),
            None => write!(f, "the root namespace"),
        }
    }
}

impl From<&Topology> for Site {
    /// The net side: every upstream on [`Topology::net_ip`], the metadata server on
    /// [`METADATA_IP`].
    fn from(topology: &Topology) -> Self {
        Self {
            ns: Some(topology.net.clone()),
            ip: topology.net_ip(),
            metadata_ip: topology.metadata_ip(),
        }
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for name in self.created.iter().rev() {
            remove_namespace(name);
        }
        let _ = fs::remove_dir_all(&self.hosts_dir);
    }
}

/// A command that runs `program` in namespace `ns` as `identity`, with a clean environment:
/// exactly `env`, plus [`DEFAULT_PATH`] when `env` names no `PATH`. The working directory is
/// `/` (set another with `current_dir`); stdin is null. For tokio, convert it with
/// `tokio::process::Command::from(command)`.
pub fn command<I, K, V>(ns: &str, identity: Identity, program: impl AsRef<OsStr>, env: I) -> Command
where
    I: IntoIterator<Item = (K, V)>,
    K: AsRef<OsStr>,
    V: AsRef<OsStr>,
{
    let mut command = Command::new(ip_binary());
    command.args(["netns", "exec", ns]);
    if let Identity::User { uid, gid } = identity {
        command
            .arg(setpriv_binary())
            .arg(format!("--reuid={uid}"))
            .arg(format!("--regid={gid}"))
            .arg("--clear-groups")
            .arg("--");
    }
    command.arg(program);
    command.env_clear();
    let mut has_path = false;
    for (key, value) in env {
        has_path |= key.as_ref() == "PATH";
        command.env(key, value);
    }
    if !has_path {
        command.env("PATH", DEFAULT_PATH);
    }
    command.current_dir("/").stdin(Stdio::null());
    command
}

/// Run `f` on a fresh thread that has joined namespace `ns` (`setns(CLONE_NEWNET)`); the
/// calling thread stays where it is.
pub fn in_namespace<R: Send>(ns: &str, f: impl FnOnce() -> R + Send) -> Result<R> {
    let path = Path::new(NETNS_RUN_DIR).join(ns);
    let file = fs::File::open(&path)
        .with_context(|| format!("opening {} (does the namespace exist?)", path.display()))?;
    std::thread::scope(|scope| {
        scope
            .spawn(move || {
                // This changes only this thread's network namespace, and the thread ends when
                // `f` returns.
                move_into_link_name_space(file.as_fd(), Some(LinkNameSpaceType::Network))
                    .with_context(|| format!("entering network namespace {ns}"))?;
                Ok(f())
            })
            .join()
            .map_err(|_| anyhow::anyhow!("the thread in namespace {ns} panicked"))?
    })
}

/// The PIDs running in a namespace, per `ip netns pids`.
pub fn namespace_pids(ns: &str) -> Result<Vec<i32>> {
    let out = ip(&["netns", "pids", ns])?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|pid| pid.parse().ok())
        .collect())
}

/// Kill everything inside a namespace, delete it and its `/etc/netns` directory. Best effort:
/// used from `Drop`, it reports problems on stderr and goes on.
fn remove_namespace(name: &str) {
    for _ in 0..50 {
        let pids = namespace_pids(name).unwrap_or_default();
        if pids.is_empty() {
            break;
        }
        // Processes that live in a namespace this harness made.
        for pid in pids.into_iter().filter_map(Pid::from_raw) {
            let _ = kill_process(pid, Signal::KILL);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    if let Err(e) = ip(&["netns", "del", name]) {
        eprintln!("cassette-e2e: removing network namespace {name}: {e:#}");
    }
    let _ = fs::remove_dir_all(Path::new(NETNS_ETC_DIR).join(name));
}

/// Remove namespaces named like ours whose creating process is gone (a test that was killed
/// before its `Drop` ran).
fn reap_stale() {
    let Ok(entries) = fs::read_dir(NETNS_RUN_DIR) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = owner_pid(&name) else {
            continue;
        };
        // Signal 0 only checks that the process exists.
        let alive = Pid::from_raw(pid)
            .is_none_or(|pid| matches!(test_kill_process(pid), Ok(()) | Err(Errno::PERM)));
        if !alive {
            eprintln!(
                "cassette-e2e: removing namespace {name} left by process {pid}, which is gone"
            );
            remove_namespace(&name);
        }
    }
}

/// The PID in a name of the form `cas<pid>x<n>p` or `cas<pid>x<n>n`.
fn owner_pid(name: &str) -> Option<i32> {
    let rest = name.strip_prefix("cas")?;
    let rest = rest.strip_suffix('p').or_else(|| rest.strip_suffix('n'))?;
    let (pid, n) = rest.split_once('x')?;
    if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    pid.parse().ok()
}

/// A pair of names no other namespace has: `cas<pid>x<n>p` and `cas<pid>x<n>n`.
fn fresh_names() -> Result<(String, String)> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let pid = std::process::id();
    for _ in 0..1000 {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let pod = format!("cas{pid}x{n}p");
        let net = format!("cas{pid}x{n}n");
        let taken = |name: &str| Path::new(NETNS_RUN_DIR).join(name).exists();
        if !taken(&pod) && !taken(&net) {
            return Ok((pod, net));
        }
    }
    bail!("no free namespace name for process {pid}")
}

/// Take an exclusive lease on one /24 of 10.231.0.0/16 for the life of the returned file.
fn lease_subnet() -> Result<(u8, fs::File)> {
    fs::create_dir_all(LEASE_DIR).with_context(|| format!("creating {LEASE_DIR}"))?;
    // Start at a different place in each process so parallel test binaries rarely collide.
    let start = (std::process::id() % 256) as usize;
    for i in 0..256 {
        let subnet = ((start + i) % 256) as u8;
        let path = Path::new(LEASE_DIR).join(format!("subnet-{subnet}.lock"));
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        if flock(&file, FlockOperation::NonBlockingLockExclusive).is_ok() {
            return Ok((subnet, file));
        }
    }
    bail!("all 256 subnets of 10.231.0.0/16 are leased by running tests")
}

fn write_public(path: &Path, contents: &str) -> Result<()> {
    let mut file = fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o644)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    file.write_all(contents.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

/// Run `ip` with arguments and fail with its stderr when it fails.
fn ip(args: &[&str]) -> Result<Output> {
    let out = Command::new(ip_binary())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("running ip (is iproute2 installed?)")?;
    if !out.status.success() {
        bail!(
            "ip {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}

fn ip_binary() -> PathBuf {
    find_binary("ip")
}

fn setpriv_binary() -> PathBuf {
    find_binary("setpriv")
}

/// A tool's absolute path, so commands still find it after their environment is cleared.
pub fn find_binary(name: &str) -> PathBuf {
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .chain(DEFAULT_PATH.split(':'))
        .filter(|dir| !dir.is_empty())
        .map(|dir| Path::new(dir).join(name))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| PathBuf::from(name))
}

/// Whether this process may create namespaces; the tests skip with this reason otherwise.
pub fn unavailable_reason() -> Option<String> {
    if !geteuid().is_root() {
        return Some("network namespace tests need root (ip netns, veth, setpriv)".into());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_pid_reads_only_our_names() {
        assert_eq!(owner_pid("cas1234x0p"), Some(1234));
        assert_eq!(owner_pid("cas1234x17n"), Some(1234));
        assert_eq!(owner_pid("cas1234x0"), None);
        assert_eq!(owner_pid("cas1234xp"), None);
        assert_eq!(owner_pid("cni-1234"), None);
        assert_eq!(owner_pid("casabcx1p"), None);
    }

    #[test]
    fn command_clears_the_environment_and_drops_privileges() {
        let cmd = command("ns1", Identity::user(1000), "git", [("HOME", "/tmp/h")]);
        let args: Vec<_> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            args,
            [
                "netns",
                "exec",
                "ns1",
                &setpriv_binary().to_string_lossy(),
                "--reuid=1000",
                "--regid=1000",
                "--clear-groups",
                "--",
                "git"
            ]
        );
        let env: Vec<_> = cmd
            .get_envs()
            .map(|(k, v)| (k.to_owned(), v.map(|v| v.to_owned())))
            .collect();
        assert!(
            env.iter()
                .any(|(k, v)| k == "PATH" && v.as_deref() == Some(OsStr::new(DEFAULT_PATH)))
        );
        assert!(env.iter().any(|(k, _)| k == "HOME"));
        assert_eq!(env.len(), 2);
    }
}
