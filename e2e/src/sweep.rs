//! Clean-up after a test binary's shared control plane and node once the binary has exited,
//! however it ended: a `cassette-e2e sweep` process, started with the control plane, waits for
//! the binary's end and then removes what is left. It stops nothing gracefully: the
//! components die with the binary by themselves (`setpriv --pdeathsig`).

use anyhow::{Context, Result, anyhow};
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The write end of the sweeper's stdin, never written: the kernel closes it when this process
/// ends, however it ends, and the sweeper reads that as its cue.
static SWEEPER: OnceLock<ChildStdin> = OnceLock::new();

/// How long the sweeper waits for the binary to be gone once its stdin closed.
const EXIT_TIMEOUT: Duration = Duration::from_secs(30);

/// Start this process's sweeper: once the process has exited, it removes its node's leftovers
/// ([`crate::node::remove_leftovers`]) and then `dirs`. Only one per process.
pub(crate) fn start(dirs: &[&Path]) -> Result<()> {
    let mut command = Command::new(own_binary()?);
    command
        .arg("sweep")
        .arg(format!("--after={}", std::process::id()));
    for dir in dirs {
        command.arg("--remove").arg(dir);
    }
    // A group of its own, so that a Ctrl-C to the tests does not stop the clean-up too.
    command.stdin(Stdio::piped()).process_group(0);
    let mut child = command.spawn().context("starting cassette-e2e sweep")?;
    let stdin = child.stdin.take().context("the sweeper's stdin")?;
    SWEEPER
        .set(stdin)
        .map_err(|_| anyhow!("this process already has a sweeper"))
}

/// `cassette-e2e` itself: this binary when it is that, built by cargo otherwise (a test binary).
fn own_binary() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("the running binary")?;
    if exe.file_name().is_some_and(|n| n == "cassette-e2e") {
        return Ok(exe);
    }
    crate::workspace_binary("cassette-e2e")
}

/// The sweeper's work (`cassette-e2e sweep`): wait until process `pid` has exited (its end
/// closes our stdin), then remove its node's leftovers and each of `dirs`.
pub fn after_exit(pid: i32, dirs: &[PathBuf]) -> Result<()> {
    // Nothing is ever written: this returns when the other end closes.
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
    // The kernel closes a process's files before it sends the parent-death signals; those are
    // sent by the time the process is a zombie.
    let deadline = Instant::now() + EXIT_TIMEOUT;
    while running(pid) {
        anyhow::ensure!(
            Instant::now() < deadline,
            "process {pid} closed its end of the pipe but still runs after {EXIT_TIMEOUT:?}; nothing was removed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    crate::node::remove_leftovers(pid);
    for dir in dirs {
        remove_dir(dir);
    }
    Ok(())
}

/// Whether `pid` exists and is not a zombie.
fn running(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        // The state follows the command name, which is in parentheses.
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X")
    })
}

/// Remove a directory, again for a few seconds while processes that are being killed may still
/// write into it.
fn remove_dir(dir: &Path) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match std::fs::remove_dir_all(dir) {
            Ok(()) => return,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(e) if Instant::now() >= deadline => {
                eprintln!("cassette-e2e sweep: removing {}: {e}", dir.display());
                return;
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}
