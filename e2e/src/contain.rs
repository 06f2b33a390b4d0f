//! `cassette-e2e contain`: a program set up as a pod's container would see it, then exec'd.
//! The harness's kubelet runs every container through this, inside the pod's network
//! namespace. It is not a container runtime: there is no image, no PID namespace, no cgroup.
//!
//! In a mount namespace of its own, an empty tmpfs hides the host's `/var/run/secrets` and
//! `/run/secrets`, and the volumes are bind-mounted at their paths (read-only where asked);
//! then the UID and GID are set and no_new_privs if asked, and the program runs from its
//! working directory. The rest of the host's filesystem stays visible.

use anyhow::{Context, Result};
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
