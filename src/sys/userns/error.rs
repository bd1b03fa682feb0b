//! What can go wrong entering the user namespace, each error with what the user or an administrator can change
//! (the kernel refusing user namespaces, newuidmap/newgidmap not installed setuid, ranges that do not fit).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use nix::errno::Errno;

use crate::sys::fork::ForkError;

#[derive(Debug, thiserror::Error)]
pub enum UsernsError {
    #[error("cannot create a user namespace ({}): {advice}", .errno.desc())]
    Unshare { errno: Errno, advice: &'static str },
    #[error("cannot create a user namespace: drun has more than one thread already (this is a bug in drun)")]
    Threaded,
    #[error("cannot write {path} of the new user namespace")]
    WriteMap {
        path: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// newuidmap or newgidmap refused: `output` is what it said, `advice` what to check.
    #[error("cannot map the user namespace's ids: {name} failed ({tool:?}): {output}{advice}")]
    MapHelper {
        name: &'static str,
        tool: PathBuf,
        output: String,
        advice: String,
    },
    #[error("cannot map the user namespace's ids: the process running newuidmap/newgidmap failed: {0}")]
    HelperProcess(String),
    #[error("cannot start the process that runs newuidmap/newgidmap")]
    Fork(#[source] ForkError),
    #[error("cannot create a pipe to the process that runs newuidmap/newgidmap")]
    Pipe(#[source] Errno),
    #[error("cannot create a mount namespace")]
    MountNamespace(#[source] Errno),
    #[error("cannot make the mount namespace private")]
    PrivateMounts(#[source] Errno),
    #[error("cannot change whether drun is dumpable (prctl PR_SET_DUMPABLE)")]
    NotDumpable(#[source] std::io::Error),
    #[error("cannot join the user namespace of process {pid}")]
    Join {
        pid: i32,
        #[source]
        source: std::io::Error,
    },
}

/// `--userns` was given something other than `auto` or `keep-id`.
#[derive(Debug, thiserror::Error)]
#[error("invalid user namespace mode {0:?}: expected auto or keep-id")]
pub struct InvalidUsernsMode(pub String);

/// Why the kernel refused a user namespace, and what to change.
pub fn unshare_advice(errno: Errno) -> &'static str {
    let read = |p: &str| crate::sys::safe_fs::read_system(p).ok().map(|s| s.trim().to_string());
    if read("/proc/sys/user/max_user_namespaces").as_deref() == Some("0") {
        "user namespaces are disabled on this host (user.max_user_namespaces = 0): an administrator can enable them \
         with `sysctl -w user.max_user_namespaces=15000`"
    } else if read("/proc/sys/kernel/unprivileged_userns_clone").as_deref() == Some("0") {
        "unprivileged user namespaces are disabled (kernel.unprivileged_userns_clone = 0): an administrator can \
         enable them with `sysctl -w kernel.unprivileged_userns_clone=1`"
    } else if read("/proc/sys/kernel/apparmor_restrict_unprivileged_userns").as_deref() == Some("1") {
        "AppArmor restricts unprivileged user namespaces (kernel.apparmor_restrict_unprivileged_userns = 1): an \
         administrator can give drun a profile with `userns,` or set the sysctl to 0"
    } else if errno == Errno::EINVAL {
        "drun must be single-threaded here (this is a bug in drun)"
    } else {
        "rootless drun needs unprivileged user namespaces (Linux ≥ 3.8 with them enabled)"
    }
}

/// What to check when the helper `tool` (newuidmap or newgidmap) refused the ranges of `file` for `user`.
pub(super) fn helper_advice(tool: &Path, file: &str, user: &str, ranges: &[(u32, u32)]) -> String {
    use std::os::unix::fs::MetadataExt;
    let mut advice = String::new();
    let setuid = std::fs::metadata(tool).is_ok_and(|m| m.mode() & 0o4000 != 0 && m.uid() == 0);
    // File capabilities live on the file itself, not on a symlink to it.
    let real = std::fs::canonicalize(tool).unwrap_or_else(|_| tool.to_path_buf());
    let has_caps = crate::sys::read::xattr_present(&real, "security.capability");
    if !setuid && !has_caps {
        let _ = write!(
            advice,
            "\n  {} is neither setuid root nor has file capabilities: an administrator must run `chmod u+s {0}` (or \
             `setcap cap_set{1}id+ep {0}`), e.g. by reinstalling the `uidmap` package",
            tool.display(),
            if file.ends_with("subuid") { "u" } else { "g" }
        );
    }
    let shown: Vec<String> = ranges.iter().map(|(s, c)| format!("{user}:{s}:{c}")).collect();
    let _ = write!(
        advice,
        "\n  drun asked it to map the ranges of {file} for {user} ({}); check that they are right, do not overlap \
         another user's, and that /etc/subuid and /etc/subgid both have them. Without ranges drun uses a single-id \
         mapping instead.",
        shown.join(", ")
    );
    advice
}
