//! Standard output as a command-line tool should treat it: when the reader goes away
//! (`kubectl cassette verify … | head -1`) writing stops quietly instead of panicking, and the
//! command still finishes — `verify`'s exit code is still its verdict. Any other write error
//! is reported once, at the end, as an I/O error. `println!`, `print!` and `eprintln!` in
//! this crate are main.rs's macros, which come here.

use std::fmt;
use std::io::{self, Write};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

static CLOSED: AtomicBool = AtomicBool::new(false);
static FAILED: Mutex<Option<String>> = Mutex::new(None);

/// Writes to standard output, unless its reader has gone away.
pub fn print(args: fmt::Arguments<'_>) {
    if closed() {
        return;
    }
    let mut out = io::stdout().lock();
    let written = out.write_fmt(args).and_then(|()| out.flush());
    if let Err(e) = written {
        note(&e);
    }
}

/// Writes bytes to standard output (an export to `-`), unless its reader has gone away.
pub fn write_all(bytes: &[u8]) {
    if closed() {
        return;
    }
    let mut out = io::stdout().lock();
    if let Err(e) = out.write_all(bytes).and_then(|()| out.flush()) {
        note(&e);
    }
}

/// Writes to standard error; a closed standard error is not worth dying for.
pub fn eprint(args: fmt::Arguments<'_>) {
    let _ = io::stderr().lock().write_fmt(args);
}

/// Whether standard output's reader went away: long-running commands (`replay --follow`)
/// stop then.
pub fn closed() -> bool {
    CLOSED.load(Ordering::Relaxed)
}

/// A write error other than the reader going away, for main to report.
pub fn failure() -> Option<String> {
    FAILED.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

fn note(e: &io::Error) {
    CLOSED.store(true, Ordering::Relaxed);
    if e.kind() != io::ErrorKind::BrokenPipe {
        FAILED
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_or_insert_with(|| format!("cannot write the output: {e}"));
    }
}
