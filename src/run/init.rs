//! `--init`: catatonit as the container's PID 1, bind-mounted at /dev/init, running the command as its child
//! and passing signals on (to the command's whole process group with `init_signals_group`).

use std::path::PathBuf;

use crate::plan::RunPlan;
use crate::run::RunError;

/// Whether an init for `--init` is installed.
pub fn init_available() -> bool {
    find_init().is_some()
}

/// catatonit, the init for `--init`: statically linked, so it runs in any image.
fn find_init() -> Option<PathBuf> {
    [
        "/usr/bin/catatonit",
        "/usr/libexec/catatonit/catatonit",
        "/usr/libexec/podman/catatonit",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.is_file())
}

/// With `--init`, puts the init in front of `args` and returns its host path (for the /dev/init bind mount).
pub fn wrap(plan: &RunPlan, args: &mut Vec<String>) -> Result<Option<PathBuf>, RunError> {
    if !plan.init {
        return Ok(None);
    }
    let init = find_init().ok_or(RunError::NoInit)?;
    let group = plan.init_signals_group.then(|| "-g".to_string());
    *args = std::iter::once("/dev/init".to_string())
        .chain(group)
        .chain(std::iter::once("--".to_string()))
        .chain(std::mem::take(args))
        .collect();
    Ok(Some(init))
}
