//! Checking, before anything starts, that the command can be executed: looked up in its PATH inside the root
//! file system and the volumes, as the kernel will. 127 when it does not exist, 126 when it is not executable.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::plan::{MountSpec, DEFAULT_PATH};
use crate::run::{mounts, rootfs, RunError};

/// Checks that `args[0]` can be executed in the root file system (or a volume over it), with the PATH of `env`
/// and the working directory `cwd` for a relative path.
pub fn check(root: &Path, mounts: &[MountSpec], args: &[String], env: &[String], cwd: &str) -> Result<(), RunError> {
    let prog = &args[0];
    let candidates: Vec<String> = if prog.contains('/') {
        vec![if prog.starts_with('/') {
            prog.clone()
        } else {
            format!("{}/{prog}", cwd.trim_end_matches('/'))
        }]
    } else {
        let path = env.iter().find_map(|e| e.strip_prefix("PATH=")).unwrap_or(DEFAULT_PATH);
        path.split(':')
            .filter(|d| !d.is_empty())
            .map(|d| format!("{}/{prog}", d.trim_end_matches('/')))
            .collect()
    };
    let mut not_exec = None;
    for c in &candidates {
        // A path below a volume is looked up on the host; below a tmpfs it cannot be known yet.
        let meta = match mounts::covering(mounts, c) {
            Some((MountSpec::Bind { source, .. } | MountSpec::Overlay { source, .. }, rest)) => {
                std::fs::metadata(if rest.is_empty() {
                    source.clone()
                } else {
                    source.join(rest)
                })
                .ok()
            }
            Some((MountSpec::Tmpfs { .. }, _)) => return Ok(()),
            None => rootfs::stat_in_root(root, c),
        };
        if let Some(m) = meta {
            if m.is_file() && m.permissions().mode() & 0o111 != 0 {
                return Ok(());
            }
            not_exec.get_or_insert((
                c.clone(),
                if m.is_dir() {
                    "is a directory"
                } else {
                    "permission denied: not executable"
                },
            ));
        }
    }
    match not_exec {
        Some((path, why)) => Err(RunError::Exec {
            path,
            message: format!("cannot execute: {why}"),
            code: crate::exit::CANNOT_EXECUTE,
        }),
        None if prog.contains('/') => Err(RunError::Exec {
            path: prog.clone(),
            message: "no such file or directory in the image".into(),
            code: crate::exit::NOT_FOUND,
        }),
        None => Err(RunError::Exec {
            path: prog.clone(),
            message: "executable file not found in $PATH".into(),
            code: crate::exit::NOT_FOUND,
        }),
    }
}
