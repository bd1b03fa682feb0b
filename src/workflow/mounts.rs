//! The workflow's own mounts — the project directory (copy-on-write), the requirements file, the dependencies'
//! artifacts and the job's mounted artifacts — added to a job's plan in one place, [`WorkflowJob::run_plan`].

use std::path::Path;
#[cfg(test)]
use std::path::PathBuf;

use super::{WorkflowJob, WorkflowSet, REQUIREMENTS_PATH};
use crate::plan::{MountSpec, PullPolicy, RunPlan};

/// When a job's plan is made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Before anything runs (a dry run; making the images ready): every dependency artifact is mounted.
    Planned,
    /// Right before the job starts, every image already made ready by the runner: dependency artifacts that were
    /// not produced are left out, and `--pull always` is not repeated (it would only fetch the same manifest).
    Starting,
}

/// A dependency's artifact that was not produced, so it is not mounted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MissingArtifact {
    pub dependency: String,
    pub path: String,
}

impl WorkflowJob {
    /// The plan this job runs with: its entry's plan and the workflow's own mounts, with the artifacts under
    /// `artifacts_root/<job>/`. At [`Stage::Starting`], also the dependency artifacts left out.
    pub fn run_plan(&self, set: &WorkflowSet, artifacts_root: &Path, stage: Stage) -> (RunPlan, Vec<MissingArtifact>) {
        let mut missing = Vec::new();
        // The project first: the run path mounts it before everything else, so mounts below it land on top.
        let mut mounts = vec![MountSpec::Overlay {
            source: set.dir.clone(),
            destination: self.project_mount.clone(),
        }];
        mounts.extend(self.entry_plan.mounts.iter().cloned());
        if let Some(req) = &self.requirements {
            mounts.push(MountSpec::Bind {
                source: req.clone(),
                destination: REQUIREMENTS_PATH.into(),
                read_only: true,
            });
        }
        for dep in self.deps.iter().filter_map(|d| set.job(d)) {
            for a in &dep.artifacts {
                let source = artifacts_root.join(&dep.name).join(&a.path);
                if stage == Stage::Starting && !source.exists() {
                    missing.push(MissingArtifact {
                        dependency: dep.name.clone(),
                        path: a.path.clone(),
                    });
                    continue;
                }
                mounts.push(MountSpec::Bind {
                    source,
                    destination: format!("{}/{}", dep.working_dir, a.path),
                    read_only: true,
                });
            }
        }
        for a in self.artifacts.iter().filter(|a| a.mount) {
            mounts.push(MountSpec::Bind {
                source: artifacts_root.join(&self.name).join(&a.path),
                destination: format!("{}/{}", self.working_dir, a.path),
                read_only: false,
            });
        }
        let pull = match (stage, self.entry_plan.pull) {
            (Stage::Starting, PullPolicy::Always) => PullPolicy::Missing,
            (_, policy) => policy,
        };
        let plan = RunPlan {
            mounts,
            pull,
            ..self.entry_plan.clone()
        };
        (plan, missing)
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // fixtures in the tests' own temporary directories
mod tests {
    use super::*;
    use crate::workflow::RunWideOptions;

    #[test]
    fn the_workflow_mounts_come_in_one_place() {
        let project = tempfile::tempdir().unwrap();
        let file = project.path().join("wf.yaml");
        std::fs::write(project.path().join("req.txt"), "x\n").unwrap();
        std::fs::write(
            &file,
            "workflows:\n  - name: first\n    image: x\n    artifacts: [out, model]\n  - name: second\n    image: x\n    \
             requirements: req.txt\n    tmpfs: [/t]\n    deps: [first]\n    artifacts: [{path: live, mount: true}]\n",
        )
        .unwrap();
        let options = RunWideOptions {
            pull: PullPolicy::Always,
            ..RunWideOptions::default()
        };
        let set = crate::workflow::load(&file, &|_| None, &options).unwrap();
        let artifacts = project.path().join("artifacts");
        let job = set.job("second").unwrap();
        let (plan, missing) = job.run_plan(&set, &artifacts, Stage::Planned);
        assert!(missing.is_empty());
        assert_eq!(plan.pull, PullPolicy::Always);
        let bind = |source: PathBuf, destination: &str, read_only| MountSpec::Bind {
            source,
            destination: destination.into(),
            read_only,
        };
        assert_eq!(
            plan.mounts,
            vec![
                MountSpec::Overlay {
                    source: set.dir.clone(),
                    destination: "/workflow".into()
                },
                MountSpec::Tmpfs {
                    destination: "/t".into(),
                    options: vec![]
                },
                bind(project.path().join("req.txt"), REQUIREMENTS_PATH, true),
                bind(artifacts.join("first/out"), "/workflow/out", true),
                bind(artifacts.join("first/model"), "/workflow/model", true),
                bind(artifacts.join("second/live"), "/workflow/live", false),
            ]
        );
        // Right before the job starts: only what its dependency produced, and no second pull.
        std::fs::create_dir_all(artifacts.join("first/model")).unwrap();
        let (plan, missing) = job.run_plan(&set, &artifacts, Stage::Starting);
        assert_eq!(
            missing,
            vec![MissingArtifact {
                dependency: "first".into(),
                path: "out".into()
            }]
        );
        assert_eq!(plan.pull, PullPolicy::Missing);
        assert!(!plan
            .mounts
            .iter()
            .any(|m| matches!(m, MountSpec::Bind { destination, .. } if destination == "/workflow/out")));
    }
}
