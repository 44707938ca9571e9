//! weftd as the first process of its container (PID 1), without dumb-init or tini.
//!
//! PID 1 has two duties other processes do not: the kernel drops signals sent to it unless it
//! asked for them, and every orphaned process in the namespace becomes its child and stays a
//! zombie until it is waited for. weftd meets both by splitting in two when it finds itself
//! PID 1: the first process starts the same executable with the same arguments as the agent,
//! forwards SIGTERM, SIGINT, SIGHUP and SIGQUIT to it, reaps every child that exits, and
//! leaves with the agent's exit status. The agent does not need to know it is not PID 1.

use std::process::Command;

use nix::errno::Errno;
use nix::sys::signal::{kill, SigSet, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

/// Set in the environment of the agent started by the init half.
pub const CHILD_ENV: &str = "WEFTD_INIT_CHILD";

const FORWARDED: [Signal; 4] = [
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGHUP,
    Signal::SIGQUIT,
];

fn signals() -> SigSet {
    let mut set = SigSet::empty();
    for s in FORWARDED {
        set.add(s);
    }
    set.add(Signal::SIGCHLD);
    set
}

/// True when this process is PID 1 and not already the agent half.
pub fn should_be_init() -> bool {
    std::process::id() == 1 && std::env::var_os(CHILD_ENV).is_none()
}

/// In the agent half: unblock the signals the init half blocked (a blocked signal mask is
/// inherited across exec). Call before any thread starts.
pub fn unblock_inherited_signals() {
    if std::env::var_os(CHILD_ENV).is_some() {
        let _ = signals().thread_unblock();
    }
}

/// Be the init half: start the agent, forward signals, reap everything; return the agent's
/// exit code (128 + the signal number if a signal ended it).
pub fn run_as_init() -> std::io::Result<i32> {
    let set = signals();
    // Blocked before the agent exists, so no signal is lost; sigwait collects them.
    set.thread_block()?;
    let exe = std::env::current_exe()?;
    let child = Command::new(exe)
        .args(std::env::args_os().skip(1))
        .env(CHILD_ENV, "1")
        .spawn()?;
    let agent = Pid::from_raw(child.id() as i32);
    // Reaped below with waitpid, like every other child.
    drop(child);
    loop {
        match set.wait()? {
            Signal::SIGCHLD => {
                if let Some(code) = reap(agent) {
                    return Ok(code);
                }
            }
            sig => {
                let _ = kill(agent, sig);
            }
        }
    }
}

/// Wait for every child that has exited; the agent's exit code once it is among them.
fn reap(agent: Pid) -> Option<i32> {
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) if pid == agent => return Some(code),
            Ok(WaitStatus::Signaled(pid, sig, _)) if pid == agent => return Some(128 + sig as i32),
            Ok(WaitStatus::StillAlive) => return None,
            Ok(_) => continue,
            Err(Errno::EINTR) => continue,
            Err(_) => return None, // ECHILD: nothing left to wait for
        }
    }
}
