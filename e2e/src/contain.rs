//! `cassette-e2e contain`: a program set up as a pod's container would see it, then exec'd.
//! The harness's kubelet runs every container through this, inside the pod's network
//! namespace. It is not a container runtime: there is no image, no PID namespace, no cgroup.
//!
//! In a mount namespace of its own, an empty tmpfs hides the host's `/var/run/secrets` and
//! `/run/secrets`, the volumes are bind-mounted at their paths (read-only where asked) and the
//! root mount is made read-only if asked; the capability bounding set is cut to the
//! container's capabilities; then no_new_privs is set if asked, the UID and GID are set, and
//! the program runs from its working directory. The rest of the host's filesystem stays
//! visible.

use anyhow::{Context, Result, bail};
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
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
/// process must be single-threaded (`unshare(CLONE_NEWNS)` refuses otherwise).
pub fn exec(container: &Container) -> Result<std::convert::Infallible> {
    let program = container.command.first().context("a program to run")?;
    // SAFETY: plain syscalls with constant arguments, before this process execs.
    unsafe {
        check(libc::unshare(libc::CLONE_NEWNS), || {
            "unshare(CLONE_NEWNS)".into()
        })?;
        check(
            libc::mount(
                std::ptr::null(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ),
            || "making / private".into(),
        )?;
    }
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
        // SAFETY: prctl with constant arguments; inherited across exec.
        unsafe {
            check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), || {
                "PR_SET_NO_NEW_PRIVS".into()
            })?;
        }
    }
    let error = command.exec();
    Err(error).with_context(|| format!("executing {program}"))
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
        let target = cstr(&real)?;
        // SAFETY: a mount in our own mount namespace; the strings outlive the call.
        unsafe {
            check(
                libc::mount(
                    c"tmpfs".as_ptr(),
                    target.as_ptr(),
                    c"tmpfs".as_ptr(),
                    libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                    c"mode=0755,size=1m".as_ptr().cast(),
                ),
                || format!("mounting a tmpfs over {}", real.display()),
            )?;
        }
        hidden.push(real);
    }
    Ok(())
}

/// The root mount, read-only in this namespace only. Mounts beneath it (the volumes, `/proc`,
/// `/dev`, the netns's `/etc/hosts`) keep their own flags.
fn remount_root_read_only() -> Result<()> {
    // SAFETY: statvfs is plain data; all zeroes is a valid value.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: statvfs writes only into `stat`, which lives across the call.
    let rc = unsafe { libc::statvfs(c"/".as_ptr(), &mut stat) };
    check(rc, || "statvfs /".into())?;
    // A bind remount sets the mount's flags anew: keep the ones the root has (the ST_ and MS_
    // values of these are the same).
    let kept = stat.f_flag
        & (libc::ST_NOSUID
            | libc::ST_NODEV
            | libc::ST_NOEXEC
            | libc::ST_NOATIME
            | libc::ST_NODIRATIME
            | libc::ST_RELATIME);
    // SAFETY: a remount in our own mount namespace.
    unsafe {
        check(
            libc::mount(
                std::ptr::null(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | kept,
                std::ptr::null(),
            ),
            || "making / read-only".into(),
        )
    }
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
    let last: usize = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .context("reading /proc/sys/kernel/cap_last_cap")?
        .trim()
        .parse()
        .context("parsing /proc/sys/kernel/cap_last_cap")?;
    for cap in 0..=last {
        if CAPABILITIES
            .get(cap)
            .is_some_and(|name| keep.iter().any(|k| k == name))
        {
            continue;
        }
        // SAFETY: prctl with plain integer arguments.
        check(
            unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) },
            || format!("dropping capability {cap} from the bounding set"),
        )?;
    }
    // SAFETY: prctl with constant arguments.
    check(
        unsafe {
            libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_CLEAR_ALL,
                0,
                0,
                0,
            )
        },
        || "clearing the ambient capabilities".into(),
    )?;
    clear_inheritable()
}

/// The kernel's capability header and sets (`struct __user_cap_header_struct` and, twice for
/// 64 bits, `struct __user_cap_data_struct`).
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// Empty this process's inheritable set, keeping its effective and permitted sets (what it
/// still needs before exec: mounting is done, setting the UID is not).
fn clear_inheritable() -> Result<()> {
    let mut header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: capget fills `data`, two entries as version 3 requires; both outlive the call.
    if unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error()).context("capget");
    }
    for set in &mut data {
        set.inheritable = 0;
    }
    // SAFETY: capset reads `data`, two entries as version 3 requires; both outlive the call.
    if unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error()).context("capset");
    }
    Ok(())
}

/// Bind `mount.source` at `mount.target` (made if missing), read-only if asked.
fn bind(mount: &Mount) -> Result<()> {
    let (source, target) = (&mount.source, &mount.target);
    std::fs::create_dir_all(target)
        .with_context(|| format!("creating the mount point {}", target.display()))?;
    let (src, dst) = (cstr(source)?, cstr(target)?);
    // SAFETY: bind mounts of existing paths in our own mount namespace; the strings outlive
    // the calls.
    unsafe {
        check(
            libc::mount(
                src.as_ptr(),
                dst.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND | libc::MS_REC,
                std::ptr::null(),
            ),
            || format!("binding {} at {}", source.display(), target.display()),
        )?;
        if mount.read_only {
            check(
                libc::mount(
                    std::ptr::null(),
                    dst.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY,
                    std::ptr::null(),
                ),
                || format!("making {} read-only", target.display()),
            )?;
        }
    }
    Ok(())
}

fn cstr(path: &Path) -> Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .with_context(|| format!("{} has a NUL byte", path.display()))
}

fn check(rc: libc::c_int, what: impl FnOnce() -> String) -> Result<()> {
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).with_context(what);
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
