//! Fail points for crash-safety tests: `DRUN_FAILPOINT=<name>` makes drun SIGKILL itself when it reaches the
//! named stage, the same as an operator's `kill -9` or a node losing power at that moment.

/// Kills the process with SIGKILL if `DRUN_FAILPOINT` names this point.
pub fn hit(name: &str) {
    if std::env::var_os("DRUN_FAILPOINT").is_some_and(|v| v == name) {
        tracing::warn!(failpoint = name, "fail point reached: killing drun");
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    }
}
