//! `keel __supervise -- PROGRAM [ARGS...]` (hidden): runs one job's command for `keel queue
//! work --exec` so that the command dies with its worker, even when the worker is killed
//! with SIGKILL. It needs no unsafe code (no `prctl` in `pre_exec`): the kernel closes a
//! dead process's pipes, and that end of file is the signal.
//!
//! # Protocol (the worker's side is `exec.rs`)
//!
//! The worker starts the supervisor with a pipe on its stdin and writes the payload's length
//! in bytes as a decimal line, then the payload; it then keeps the pipe open, writing
//! nothing, until the supervisor has exited. The supervisor:
//!
//! - runs PROGRAM as the leader of a new process group (the *command's group*), with the
//!   payload on its stdin and the supervisor's stdout and stderr (which the worker reads);
//! - when its stdin reaches end of file or fails (the worker exited or was killed, or it
//!   cancelled the job by closing the pipe), kills the command's whole group with SIGKILL and
//!   exits;
//! - when PROGRAM exits, kills whatever PROGRAM left running in its group (a job's processes
//!   never outlive the job), then ends as PROGRAM did: with its exit code, or killed by the
//!   same signal (exit 128 + the signal's number if that signal cannot end the supervisor,
//!   as SIGPIPE, which Rust programs ignore).
//!
//! A process that leaves the command's group (`setsid`) escapes both kills. A malformed
//! header or a command that cannot be started ends the supervisor with exit
//! [`EXIT_CANNOT_RUN`] and a message on stderr.

use std::ffi::OsString;
use std::io::{BufRead as _, Read as _, Write as _};
use std::os::unix::process::CommandExt as _;
use std::process::{Child, Command, Stdio};

use rustix::process::{Pid, Signal, WaitId, WaitIdOptions, kill_process, kill_process_group, waitid};

/// The exit code when the command could not be run at all (`126`, as shells use).
pub const EXIT_CANNOT_RUN: i32 = 126;

/// The largest payload accepted (1 GiB): a bound on what a corrupt header makes us allocate.
const MAX_PAYLOAD: usize = 1 << 30;

/// Runs `argv` (PROGRAM and its arguments) as the module docs say; never returns.
pub fn supervise(argv: &[OsString]) -> ! {
    match run(argv) {
        Ok(never) => match never {},
        Err(e) => {
            eprintln!("keel __supervise: {e}");
            std::process::exit(EXIT_CANNOT_RUN)
        }
    }
}

/// Why the command could not be run.
#[derive(Debug, thiserror::Error)]
enum SuperviseError {
    #[error("no command to run")]
    NoCommand,
    #[error("reading the job from the worker: {0}")]
    Header(String),
    #[error("cannot run {0:?}: {1}")]
    Spawn(OsString, std::io::Error),
}

/// The supervisor's work; returns only when the command could not be started.
fn run(argv: &[OsString]) -> Result<std::convert::Infallible, SuperviseError> {
    let (program, args) = argv.split_first().ok_or(SuperviseError::NoCommand)?;
    let payload = read_payload()?;
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(|e| SuperviseError::Spawn(program.clone(), e))?;
    let group = Pid::from_child(&child);
    if let Some(mut stdin) = child.stdin.take() {
        // a command that does not read its input closes the pipe: not an error
        std::thread::spawn(move || {
            let _ = stdin.write_all(&payload);
        });
    }
    std::thread::spawn(move || {
        wait_for_end_of_file();
        // the worker is gone or gave the job up: the job's processes go with it
        let _ = kill_process_group(group, Signal::KILL);
        std::process::exit(128 + Signal::KILL.as_raw());
    });
    exit_as(finish(&mut child, group))
}

/// Reads the header line and the payload from stdin.
fn read_payload() -> Result<Vec<u8>, SuperviseError> {
    let stdin = std::io::stdin();
    let mut input = stdin.lock();
    let mut line = String::new();
    (&mut input)
        .take(32)
        .read_line(&mut line)
        .map_err(|e| SuperviseError::Header(e.to_string()))?;
    let len: usize = line
        .trim_end_matches('\n')
        .parse()
        .ok()
        .filter(|n| *n <= MAX_PAYLOAD)
        .ok_or_else(|| SuperviseError::Header(format!("a bad length line {line:?}")))?;
    let mut payload = vec![0; len];
    input
        .read_exact(&mut payload)
        .map_err(|e| SuperviseError::Header(format!("the payload: {e}")))?;
    Ok(payload)
}

/// Blocks until stdin reaches end of file or fails (anything the worker writes after the
/// payload is ignored).
fn wait_for_end_of_file() {
    let mut buf = [0u8; 64];
    loop {
        match std::io::stdin().read(&mut buf) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

/// Waits for the command to exit, kills what it left in its group, and returns how it ended.
///
/// The command is waited for without being reaped first: while it is a zombie its pid, which
/// is the group's id, cannot be reused, so the kill reaches its group and nothing else.
fn finish(child: &mut Child, group: Pid) -> std::process::ExitStatus {
    loop {
        match waitid(WaitId::Pid(group), WaitIdOptions::EXITED | WaitIdOptions::NOWAIT) {
            Err(e) if e == rustix::io::Errno::INTR => continue,
            _ => break,
        }
    }
    let _ = kill_process_group(group, Signal::KILL);
    loop {
        match child.wait() {
            Ok(status) => return status,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                eprintln!("keel __supervise: waiting for the command: {e}");
                std::process::exit(EXIT_CANNOT_RUN)
            }
        }
    }
}

/// Ends this process as `status` says: the same exit code, or the same signal.
fn exit_as(status: std::process::ExitStatus) -> ! {
    use std::os::unix::process::ExitStatusExt as _;
    if let Some(code) = status.code() {
        std::process::exit(code);
    }
    let signal = status.signal().unwrap_or(Signal::KILL.as_raw());
    if let Some(s) = Signal::from_named_raw(signal) {
        let _ = kill_process(rustix::process::getpid(), s);
    }
    // (still alive: a signal this process ignores)
    std::process::exit(128 + signal)
}
