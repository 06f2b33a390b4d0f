//! A running container as one process group, so that stopping it stops what it started too
//! (git's helpers, a shell's pipeline); dropping it, on any path, stops it.
//!
//! The main process is not reaped until the container is done with: until then its PID, which
//! is also the group's ID, cannot be reused, so a signal to the group reaches this container
//! and nothing else. A descendant that leaves the group (`setsid`) is not followed; a cgroup
//! or PID namespace would, and the harness has neither.

use anyhow::{Context, Result};
use rustix::io::Errno;
use rustix::process::{Pid, Signal, WaitId, WaitIdOptions, kill_process_group, waitid};
use std::io;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

/// How long a container that is abandoned (an error, a panic, a dropped future) gets between
/// SIGTERM and SIGKILL.
const ABANDON_GRACE: Duration = Duration::from_secs(2);
/// How often a container is checked for exit.
const POLL: Duration = Duration::from_millis(50);

/// One started container.
pub struct ContainerProcess {
    name: String,
    child: Child,
    /// The main process's exit status, once reaped.
    status: Option<ExitStatus>,
}

impl ContainerProcess {
    /// Start `command` as the leader of a new process group.
    pub fn spawn(name: &str, mut command: Command) -> Result<Self> {
        command.process_group(0);
        let child = command
            .spawn()
            .with_context(|| format!("starting container {name}"))?;
        Ok(Self {
            name: name.to_string(),
            child,
            status: None,
        })
    }

    /// Whether the main process has exited (it is left unreaped).
    pub fn has_exited(&self) -> Result<bool> {
        if self.status.is_some() {
            return Ok(true);
        }
        exited_unreaped(self.child.id())
            .with_context(|| format!("checking on container {}", self.name))
    }

    /// Kill whatever is left of the container and reap its main process, as a runtime tears a
    /// container down once its main process ends; the main process's exit status.
    pub fn kill(&mut self) -> Result<ExitStatus> {
        if let Some(status) = self.status {
            return Ok(status);
        }
        self.signal(Signal::KILL)?;
        let status = self
            .child
            .wait()
            .with_context(|| format!("reaping container {}", self.name))?;
        self.status = Some(status);
        Ok(status)
    }

    /// Wait up to `timeout` for the main process to exit without blocking the runtime, then
    /// kill what is left; `None` while it still runs.
    pub async fn wait_timeout(&mut self, timeout: Duration) -> Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.has_exited()? {
                return self.kill().map(Some);
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Stop the container as the kubelet does: SIGTERM, and SIGKILL after `grace`.
    pub async fn stop(&mut self, grace: Duration) -> Result<ExitStatus> {
        self.signal(Signal::TERM)?;
        match self.wait_timeout(grace).await? {
            Some(status) => Ok(status),
            None => self.kill(),
        }
    }

    /// [`Self::stop`] for [`Drop`]: blocking, with a short grace.
    fn stop_blocking(&mut self) -> Result<ExitStatus> {
        self.signal(Signal::TERM)?;
        let deadline = Instant::now() + ABANDON_GRACE;
        while !self.has_exited()? && Instant::now() < deadline {
            std::thread::sleep(POLL);
        }
        self.kill()
    }

    /// Signal every process of the group; nothing once the main process is reaped, as its
    /// PID may then belong to someone else.
    fn signal(&self, signal: Signal) -> Result<()> {
        if self.status.is_some() {
            return Ok(());
        }
        signal_group(self.child.id(), signal)
            .with_context(|| format!("signalling container {}", self.name))
    }
}

impl Drop for ContainerProcess {
    fn drop(&mut self) {
        if self.status.is_none()
            && let Err(error) = self.stop_blocking()
        {
            eprintln!("kubelet: stopping container {}: {error:#}", self.name);
        }
    }
}

/// Whether our child `pid` has exited, leaving it a zombie (`waitid` with `WNOWAIT`).
fn exited_unreaped(pid: u32) -> io::Result<bool> {
    let pid = as_pid(pid)?;
    let options = WaitIdOptions::EXITED | WaitIdOptions::NOHANG | WaitIdOptions::NOWAIT;
    loop {
        match waitid(WaitId::Pid(pid), options) {
            // With WNOHANG there is no status while the child has not exited.
            Ok(status) => return Ok(status.is_some()),
            Err(Errno::INTR) => continue,
            Err(error) => return Err(error.into()),
        }
    }
}

/// `kill(-pgid, signal)`; a group with no process left is not an error.
fn signal_group(pgid: u32, signal: Signal) -> io::Result<()> {
    match kill_process_group(as_pid(pgid)?, signal) {
        Ok(()) | Err(Errno::SRCH) => Ok(()),
        Err(error) => Err(error.into()),
    }
}

fn as_pid(pid: u32) -> io::Result<Pid> {
    i32::try_from(pid)
        .ok()
        .and_then(Pid::from_raw)
        .ok_or_else(|| io::Error::other(format!("{pid} is not a process ID")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shell(script: &str) -> Command {
        let mut command = Command::new("sh");
        command.args(["-c", script]);
        command
    }

    /// Running, as opposed to gone or a zombie nobody has reaped yet.
    fn alive(pid: i32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
            // The state follows the command name, which is in parentheses.
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next())
                .is_some_and(|state| state != "Z" && state != "X")
        })
    }

    /// The PID a container's descendant wrote to `file`, once it has.
    fn read_pid(file: &std::path::Path) -> i32 {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(pid) = std::fs::read_to_string(file)
                .ok()
                .and_then(|s| s.trim().parse().ok())
            {
                return pid;
            }
            assert!(Instant::now() < deadline, "no PID in {}", file.display());
            std::thread::sleep(POLL);
        }
    }

    fn wait_gone(pid: i32) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while alive(pid) {
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(POLL);
        }
        true
    }

    #[tokio::test]
    async fn stopping_a_container_stops_its_descendants() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let pid_file = dir.path().join("grandchild");
        // A grandchild that outlives nothing on its own: the shell waits on it.
        let mut container = ContainerProcess::spawn(
            "sleeper",
            shell(&format!(
                "sleep 300 & echo $! > {}; wait",
                pid_file.display()
            )),
        )?;
        let grandchild = read_pid(&pid_file);
        assert!(alive(grandchild));
        let status = container.stop(Duration::from_secs(5)).await?;
        assert!(!status.success());
        assert!(wait_gone(grandchild), "the grandchild survived the stop");
        Ok(())
    }

    #[tokio::test]
    async fn a_container_that_ends_takes_its_leftovers_with_it() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let pid_file = dir.path().join("leftover");
        let mut container = ContainerProcess::spawn(
            "leaves-a-child",
            shell(&format!("sleep 300 & echo $! > {}", pid_file.display())),
        )?;
        let status = container
            .wait_timeout(Duration::from_secs(10))
            .await?
            .context("the shell exits at once")?;
        assert!(status.success());
        assert!(wait_gone(read_pid(&pid_file)), "the leftover still runs");
        Ok(())
    }

    #[test]
    fn dropping_a_container_stops_it() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let pid_file = dir.path().join("grandchild");
        let container = ContainerProcess::spawn(
            "abandoned",
            shell(&format!(
                "trap '' TERM; sleep 300 & echo $! > {}; wait",
                pid_file.display()
            )),
        )?;
        let leader = i32::try_from(container.child.id())?;
        let grandchild = read_pid(&pid_file);
        drop(container);
        // The shell ignored SIGTERM: it was killed after the grace, and reaped.
        assert!(!alive(leader));
        assert!(wait_gone(grandchild), "the grandchild survived the drop");
        Ok(())
    }
}
