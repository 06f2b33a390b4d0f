//! `kubectl_complete-cassette`: kubectl (1.26+) runs it with the words after `kubectl
//! cassette` (the last one the word being completed) and reads cobra's `__complete` answer.
//! It asks `kubectl-cassette __complete …`, found beside this executable or on PATH; it does
//! no completing of its own.

use std::path::PathBuf;
use std::process::{Command, ExitCode};

const MAIN: &str = "kubectl-cassette";

/// kubectl-cassette beside this executable (how krew and `cargo install` lay them out), else
/// the first on PATH.
fn main_binary() -> Option<PathBuf> {
    let beside = std::env::current_exe()
        .ok()
        .and_then(|me| Some(me.parent()?.join(MAIN)))
        .filter(|p| p.is_file());
    beside.or_else(|| {
        std::env::var_os("PATH").and_then(|path| {
            std::env::split_paths(&path)
                .map(|dir| dir.join(MAIN))
                .find(|p| p.is_file())
        })
    })
}

fn main() -> ExitCode {
    let Some(binary) = main_binary() else {
        // Cobra's "an error occurred, ignore the completions" directive.
        println!(":1");
        eprintln!("kubectl_complete-cassette: {MAIN} is neither beside this program nor on PATH");
        return ExitCode::SUCCESS;
    };
    match Command::new(&binary)
        .arg("__complete")
        .args(std::env::args_os().skip(1))
        .status()
    {
        Ok(status) if status.success() => ExitCode::SUCCESS,
        Ok(_) => ExitCode::FAILURE,
        Err(e) => {
            println!(":1");
            eprintln!(
                "kubectl_complete-cassette: cannot run {}: {e}",
                binary.display()
            );
            ExitCode::SUCCESS
        }
    }
}
