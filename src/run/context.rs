//! What every phase of one run shares: the plan, the container's id and its run directory. Created once, before
//! anything of the container exists; read-only afterwards.

use std::path::{Path, PathBuf};

use crate::image::ready::ReadyImage;
use crate::plan::RunPlan;
use crate::run::cgroups::{CgroupPlan, Version};
use crate::run::state::{self, RunDir, RunInfo};
use crate::run::{io_error, RunError};

/// The values every phase of one run shares.
pub struct RunContext<'a> {
    pub plan: &'a RunPlan,
    /// drun's state directory (`/run/drun` for root).
    pub state_dir: &'a Path,
    /// The container's id: 64 hex digits.
    pub id: String,
    /// Its first 12: the default hostname, and the name of its cgroup and console socket.
    pub short_id: String,
    /// The run directory, `<state>/containers/<id>/`: root file system, /etc files, bundle, network namespace.
    pub dir: PathBuf,
}

impl<'a> RunContext<'a> {
    /// Cleans up after drun processes that died, refuses a name a listed container has (running, or ended and
    /// kept), and creates the run's directory (locked for as long as the returned [`RunDir`] lives). A named
    /// run also gets the state directory's names lock: held until its record (with the name) is written, so that
    /// two runs never both take one name.
    pub fn create(
        plan: &'a RunPlan,
        state_dir: &'a Path,
    ) -> Result<(RunContext<'a>, RunDir, Option<state::NamesLock>), RunError> {
        state::reap_stale(state_dir);
        let names_lock = match plan.name {
            Some(_) => Some(state::NamesLock::take(state_dir).map_err(io_error("lock the container names"))?),
            None => None,
        };
        if let Some(n) = &plan.name {
            let listed = crate::run::finished::list_all(state_dir);
            if let Some(other) = listed.iter().find(|r| r.info.name.as_deref() == Some(n)) {
                return Err(match other.running {
                    true => RunError::NameInUse(n.clone()),
                    false => RunError::NameKept {
                        name: n.clone(),
                        id: other.short_id().to_string(),
                    },
                });
            }
        }
        let id = random_id();
        let short_id = id[..12].to_string();
        let run_dir = RunDir::create(state_dir, &id).map_err(io_error("create the run directory"))?;
        let context = RunContext {
            plan,
            state_dir,
            id,
            short_id,
            dir: run_dir.path.clone(),
        };
        Ok((context, run_dir, names_lock))
    }

    /// The run's record as first written (no command or pid yet).
    pub fn run_info(&self, image: &ReadyImage, cgroup: &CgroupPlan) -> RunInfo {
        RunInfo {
            id: self.id.clone(),
            name: self.plan.name.clone(),
            image: image.record.name.clone(),
            command: vec![],
            pid: None,
            started: time::OffsetDateTime::now_utc(),
            cgroup_path: cgroup.path.clone(),
            pid_start: None,
            cgroup_v2: cgroup.version == Version::V2,
            cgroup_dirs: cgroup.dirs_to_record(),
            layers: image.record.layers.iter().map(|l| l.key()).collect(),
            labels: self.plan.labels.clone(),
            detached: false,
            supervisor: crate::run::state::Supervisor::this_process(),
            auto_remove: false,
            stop_signal: None,
            restart_count: 0,
            exit: None,
        }
    }
}

fn random_id() -> String {
    let mut b = [0u8; 32];
    #[allow(clippy::disallowed_methods)] // the kernel's device
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        use std::io::Read;
        let _ = f.read_exact(&mut b);
    }
    hex::encode(b)
}
