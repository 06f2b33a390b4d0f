//! `cassette-e2e contain`: a program set up as a pod's container would see it, then exec'd.
//! The harness's kubelet runs every container through this, inside the pod's network
//! namespace. It is not a container runtime: there is no image, no PID namespace, no cgroup.
//!
//! In a mount namespace of its own (made by `unshare --mount` before it starts), an empty tmpfs
//! hides the host's `/var/run/secrets` and `/run/secrets`, the volumes are bind-mounted at
//! their paths (read-only where asked) and the root mount is made read-only if asked; the
//! capability bounding set is cut to the container's capabilities; then no_new_privs is set if
//! asked, the UID and GID are set, and the program runs from its working directory. The rest
//! of the host's filesystem stays visible.

use anyhow::{Context, Result, bail};
use rustix::fs::{StatVfsMountFlags, statvfs};
use rustix::mount::{
    MountFlags, MountPropagationFlags, mount, mount_bind_recursive, mount_change, mount_remount,
};
use rustix::process::getppid;
use rustix::thread::{
    CapabilitySet, capabilities, clear_ambient_capability_set, remove_capability_from_bounding_set,
    set_capabilities, set_no_new_privs,
};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;
use std::str::FromStr;

/// Where Kubernetes puts what it hands a container (the service-account token) and where
/// other runtimes put their secrets. The host's own — a node's, or the harness's pod's when it
/// runs in one — must never show through, with or without a volume mounted there.
const SECRETS_DIRS: [&str; 2] = ["/var/run/secrets", "/run/secrets"];

/// Linux capabilities by number, named as a pod's securityContext names them.
pub const CAPABILITIES: [&str; 41] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// A volume mount: `SOURCE:TARGET` or `SOURCE:TARGET:ro`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    /// The host directory.
    pub source: PathBuf,
    /// Where the container sees it.
    pub target: PathBuf,
    /// Mounted read-only.
    pub read_only: bool,
}

impl FromStr for Mount {
    type Err = String;

    fn from_str(spec: &str) -> Result<Self, String> {
        let mut parts = spec.splitn(3, ':');
        let (Some(source), Some(target)) = (parts.next(), parts.next()) else {
            return Err(format!("{spec:?}: expected SOURCE:TARGET[:ro]"));
        };
        let read_only = match parts.next() {
            None => false,
            Some("ro") => true,
            Some(other) => return Err(format!("{spec:?}: unknown option {other:?}")),
        };
        Ok(Mount {
            source: source.into(),
            target: target.into(),
            read_only,
        })
    }
}

/// What one container gets.
#[derive(Debug)]
pub struct Container {
    /// Bind mounts, in order.
    pub mounts: Vec<Mount>,
    /// The UID and GID to run as (supplementary groups cleared); root when absent.
    pub user: Option<(u32, u32)>,
    /// Set no_new_privs (the container's `allowPrivilegeEscalation: false`).
    pub no_new_privs: bool,
    /// The only capabilities the container may hold (names from [`CAPABILITIES`]); all when
    /// absent (a privileged container).
    pub capabilities: Option<Vec<String>>,
    /// Make the root mount read-only (the container's `readOnlyRootFilesystem`).
    pub read_only_root: bool,
    /// The working directory.
    pub workdir: PathBuf,
    /// The program and its arguments.
    pub command: Vec<String>,
}

/// Set this process up as `container` and exec its program; returns only on failure. The
/// process must already be in a mount namespace of its own (the kubelet starts it under
/// `unshare --mount`): it refuses to mount anything in its parent's.
pub fn exec(container: &Container) -> Result<std::convert::Infallible> {
    let program = container.command.first().context("a program to run")?;
    ensure_own_mount_namespace()?;
    mount_change(
        "/",
        MountPropagationFlags::REC | MountPropagationFlags::PRIVATE,
    )
    .context("making / private")?;
    hide_host_secrets()?;
    for mount in &container.mounts {
        bind(mount)?;
    }
    if container.read_only_root {
        remount_root_read_only()?;
    }
    if let Some(keep) = &container.capabilities {
        bound_capabilities(keep)?;
    }
    let mut command = Command::new(program);
    command
        .args(&container.command[1..])
        .current_dir(&container.workdir);
    if let Some((uid, gid)) = container.user {
        // std clears the supplementary groups when root sets a UID.
        command.uid(uid).gid(gid);
    }
    if container.no_new_privs {
        // Inherited across exec.
        set_no_new_privs(true).context("PR_SET_NO_NEW_PRIVS")?;
    }
    let error = command.exec();
    Err(error).with_context(|| format!("executing {program}"))
}

/// Refuse to run in the mount namespace of the process that started us: the mounts below would
/// change the host's view (or the harness's pod's).
fn ensure_own_mount_namespace() -> Result<()> {
    let parent = getppid().map_or(1, |pid| pid.as_raw_nonzero().get());
    let ours = std::fs::read_link("/proc/self/ns/mnt").context("reading /proc/self/ns/mnt")?;
    let theirs = std::fs::read_link(format!("/proc/{parent}/ns/mnt"))
        .with_context(|| format!("reading /proc/{parent}/ns/mnt"))?;
    if ours == theirs {
        bail!(
            "contain runs in its parent's mount namespace ({}); start it under `unshare --mount`",
            ours.display()
        );
    }
    Ok(())
}

/// An empty tmpfs over each of [`SECRETS_DIRS`], before any volume is mounted beneath.
fn hide_host_secrets() -> Result<()> {
    let mut hidden: Vec<PathBuf> = Vec::new();
    for dir in SECRETS_DIRS {
        // Made on the host if missing (empty, like any mount point), so that the mount points
        // of volumes beneath it are made in the tmpfs rather than on the host.
        std::fs::create_dir_all(dir).with_context(|| format!("creating {dir}"))?;
        // /var/run is usually a link to /run: one tmpfs then hides both.
        let real = std::fs::canonicalize(dir).with_context(|| format!("resolving {dir}"))?;
        if hidden.contains(&real) {
            continue;
        }
        mount(
            "tmpfs",
            &real,
            "tmpfs",
            MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
            c"mode=0755,size=1m",
        )
        .with_context(|| format!("mounting a tmpfs over {}", real.display()))?;
        hidden.push(real);
    }
    Ok(())
}

/// The root mount, read-only in this namespace only. Mounts beneath it (the volumes, `/proc`,
/// `/dev`, the netns's `/etc/hosts`) keep their own flags.
fn remount_root_read_only() -> Result<()> {
    let stat = statvfs("/").context("statvfs /")?;
    // A bind remount sets the mount's flags anew: keep the ones the root has.
    let kept = [
        (StatVfsMountFlags::NOSUID, MountFlags::NOSUID),
        (StatVfsMountFlags::NODEV, MountFlags::NODEV),
        (StatVfsMountFlags::NOEXEC, MountFlags::NOEXEC),
        (StatVfsMountFlags::NOATIME, MountFlags::NOATIME),
        (StatVfsMountFlags::NODIRATIME, MountFlags::NODIRATIME),
        (StatVfsMountFlags::RELATIME, MountFlags::RELATIME),
    ]
    .into_iter()
    .filter(|(has, _)| stat.f_flag.contains(*has))
    .fold(MountFlags::empty(), |flags, (_, keep)| flags | keep);
    mount_remount("/", MountFlags::BIND | MountFlags::RDONLY | kept, "")
        .context("making / read-only")
}

/// Cut the bounding set to `keep` and empty the inheritable and ambient sets, as a runtime
/// does for a container's process: after exec, a root program holds `keep` and nothing more,
/// and no program (setuid or with file capabilities) can gain anything outside it. A non-root
/// program holds nothing either way. Capabilities this kernel lacks are ignored, as runc does.
fn bound_capabilities(keep: &[String]) -> Result<()> {
    for name in keep {
        if !CAPABILITIES.contains(&name.as_str()) {
            bail!("unknown capability {name:?}");
        }
    }
    let last: u32 = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .context("reading /proc/sys/kernel/cap_last_cap")?
        .trim()
        .parse()
        .context("parsing /proc/sys/kernel/cap_last_cap")?;
    for cap in 0..=last {
        if CAPABILITIES
            .get(cap as usize)
            .is_some_and(|name| keep.iter().any(|k| k == name))
        {
            continue;
        }
        let set = 1u64
            .checked_shl(cap)
            .map(CapabilitySet::from_bits_retain)
            .with_context(|| format!("capability {cap} does not fit a 64-bit set"))?;
        remove_capability_from_bounding_set(set)
            .with_context(|| format!("dropping capability {cap} from the bounding set"))?;
    }
    clear_ambient_capability_set().context("clearing the ambient capabilities")?;
    clear_inheritable()
}

/// Empty this process's inheritable set, keeping its effective and permitted sets (what it
/// still needs before exec: mounting is done, setting the UID is not).
fn clear_inheritable() -> Result<()> {
    let mut sets = capabilities(None).context("capget")?;
    sets.inheritable = CapabilitySet::empty();
    set_capabilities(None, sets).context("capset")
}

/// Bind `mount.source` at `mount.target` (made if missing), read-only if asked.
fn bind(mount: &Mount) -> Result<()> {
    let (source, target) = (&mount.source, &mount.target);
    std::fs::create_dir_all(target)
        .with_context(|| format!("creating the mount point {}", target.display()))?;
    mount_bind_recursive(source, target)
        .with_context(|| format!("binding {} at {}", source.display(), target.display()))?;
    if mount.read_only {
        mount_remount(target, MountFlags::BIND | MountFlags::RDONLY, "")
            .with_context(|| format!("making {} read-only", target.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mounts_parse_as_the_kubelet_writes_them() {
        assert_eq!(
            "/k/vol:/var/run/x:ro".parse::<Mount>(),
            Ok(Mount {
                source: "/k/vol".into(),
                target: "/var/run/x".into(),
                read_only: true,
            })
        );
        assert_eq!(
            "/k/ws:/workspace".parse::<Mount>().map(|m| m.read_only),
            Ok(false)
        );
        assert!("/k/ws".parse::<Mount>().is_err());
        assert!("/k/ws:/w:rw".parse::<Mount>().is_err());
    }
}
