//! Fail points for crash-safety tests: `DRUN_FAILPOINT=<name>` makes drun SIGKILL itself when it reaches the
//! named stage, the same as an operator's `kill -9` or a node losing power at that moment.
//! `DRUN_PAUSEPOINT=<name>:<file>` makes it wait at the named stage instead, for races between drun processes.

/// Kills the process with SIGKILL if `DRUN_FAILPOINT` names this point.
pub fn hit(name: &str) {
    if std::env::var_os("DRUN_FAILPOINT").is_some_and(|v| v == name) {
        tracing::warn!(failpoint = name, "fail point reached: killing drun");
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    }
}

/// Waits at this point while the file `DRUN_PAUSEPOINT=<name>:<file>` names exists, after creating
/// `<file>.reached` to say that it got here (for at most ten minutes): a test then acts at exactly this stage, e.g.
/// removes the image that a run has just found, and removes the file to let drun go on.
pub fn pause(name: &str) {
    let Some(spec) = std::env::var_os("DRUN_PAUSEPOINT") else {
        return;
    };
    let spec = spec.to_string_lossy();
    let Some(file) = spec.strip_prefix(name).and_then(|r| r.strip_prefix(':')) else {
        return;
    };
    let file = std::path::Path::new(file);
    let mut reached = file.as_os_str().to_owned();
    reached.push(".reached");
    tracing::warn!(
        pausepoint = name,
        "pause point reached: waiting while {} exists",
        file.display()
    );
    let _ = crate::sys::safe_fs::write_new(std::path::Path::new(&reached), b"", 0o600);
    let start = std::time::Instant::now();
    while file.exists() && start.elapsed() < std::time::Duration::from_secs(600) {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// Whether `DRUN_FAILPOINT_ERROR` (a comma-separated list) names this point: the caller then behaves as if the
/// operation there had failed (e.g. `image-dir-flock`: `flock` refused, as on a file system without it).
pub fn error(name: &str) -> bool {
    std::env::var("DRUN_FAILPOINT_ERROR").is_ok_and(|v| v.split(',').any(|p| p == name))
}
