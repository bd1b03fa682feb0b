//! `drun doctor`'s checks: what this host and this caller give drun (kernel features, ids, devices, the Slurm
//! context, storage), each as a [`Check`] with the fix when something is missing. Reads only: creates, mounts and
//! changes nothing, and prints nothing (`commands/doctor.rs` does).

mod hpc;
mod identity;
mod kernel;
mod storage;

use std::path::PathBuf;

use serde::Serialize;

/// How a check came out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Present and usable.
    Ok,
    /// For information: absent, but nothing drun needs here (no GPU, not in a Slurm job).
    Note,
    /// drun works, but less well or with less (no limits, flattened copies, a single-id mapping): the fix says how.
    Warn,
    /// Something `drun run` needs for this caller: runs fail until it is fixed.
    Missing,
}

impl Status {
    /// The word the text report shows.
    pub fn label(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Note => "note",
            Status::Warn => "warn",
            Status::Missing => "MISSING",
        }
    }
}

/// One line of the report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Check {
    pub section: &'static str,
    pub name: &'static str,
    pub status: Status,
    pub value: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl Check {
    fn new(section: &'static str, name: &'static str, status: Status, value: impl Into<String>) -> Check {
        Check {
            section,
            name,
            status,
            value: value.into(),
            fix: None,
        }
    }

    fn fix(mut self, fix: impl Into<String>) -> Check {
        self.fix = Some(fix.into());
        self
    }
}

/// The whole report, in the order the sections print.
#[derive(Debug, Serialize)]
pub struct Report {
    pub ok: bool,
    pub checks: Vec<Check>,
}

/// The locations the command line chose (`--root`, `--state`, `--blob-cache`, or their defaults).
pub struct Locations {
    pub store: PathBuf,
    pub state: PathBuf,
    pub blob_cache: Option<PathBuf>,
}

/// Runs every check for the calling user (drun doctor never enters a user namespace: it looks at the caller as
/// the host sees it).
pub fn examine(locations: &Locations) -> Report {
    let rootless = !nix::unistd::geteuid().is_root();
    let mut checks = Vec::new();
    checks.extend(kernel::checks(rootless));
    checks.extend(identity::checks(rootless));
    checks.extend(hpc::checks());
    checks.extend(storage::checks(locations));
    Report {
        ok: !checks.iter().any(|c| c.status == Status::Missing),
        checks,
    }
}

/// A small system file's text (`/proc`, `/sys`), trimmed; None when it cannot be read.
fn read_trimmed(path: impl AsRef<std::path::Path>) -> Option<String> {
    crate::sys::safe_fs::read_system(path.as_ref())
        .ok()
        .map(|s| s.trim().to_string())
}
