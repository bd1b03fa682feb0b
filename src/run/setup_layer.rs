//! A workflow's setup as a layer (`plan::setup`): found in the store, or built once by a run of its own whose
//! upper directory is the layer, then published; the run stacks it above the image's layers.
//!
//! The key is the SHA-256 of everything the setup's result depends on: the image (its config digest), the script
//! (apt sources and packages, `pip install -r`, `setup` commands), the build-time environment, the requirements
//! file's bytes (hashed as read, and those bytes are what the setup sees), the store's ID mapping and the format
//! of this key. The runtime environment, volumes and the project directory are not in it: the setup does not see
//! them. Runs of one key build it once (the key's lock); `--no-cache` builds it again and replaces it.
//!
//! Where the store's file system cannot hold an overlay's upper directory, nothing is kept: the run's script
//! then does the setup inline (its setup block is skipped only when the layer's mark, [`SETUP_DONE`], is there).

use std::fs::File;
use std::path::PathBuf;

use crate::image::ready::{PullPolicy, ReadyImage};
use crate::image::registry::config::Config;
use crate::image::store::{remove_tree, SetupMeta, Store};
use crate::plan::setup::{SetupPlan, SETUP_DONE};
use crate::plan::{MountSpec, RunPlan};
use crate::run::rootfs::RootfsError;
use crate::run::{io_error, RunError, RunHooks, StartView};
use crate::workflow::REQUIREMENTS_PATH;

/// Largest requirements file read (pip's own files are a few KiB).
const REQUIREMENTS_MAX: u64 = 1 << 20;
/// Changes when what the key covers changes.
const KEY_FORMAT: &str = "drun-setup-2";

/// A setup layer the run stacks above the image: its key (recorded by the run, see `state::live_layers`) and tree,
/// and the store's shared lock, held until the run has recorded the key (garbage collection, which takes the lock
/// exclusively, either ran before or sees the record).
pub(super) struct SetupLayer {
    pub key: String,
    pub root: PathBuf,
    pub held: Option<crate::image::store::StoreLock>,
}

/// The setup layer of `plan`, built first if the store lacks it; `None` without a setup, or where it cannot be
/// kept (the run does it inline then).
pub(super) fn ensure(
    store: &Store,
    cfg: &Config,
    plan: &RunPlan,
    image: &ReadyImage,
    state_dir: &std::path::Path,
    quiet: bool,
    log: Option<&mut File>,
) -> Result<Option<SetupLayer>, RunError> {
    let Some(setup) = &plan.setup else {
        return Ok(None);
    };
    let requirements = match &setup.requirements {
        Some(p) => Some(
            crate::sys::safe_fs::read_bounded(p, REQUIREMENTS_MAX)
                .map_err(io_error(format!("read the requirements file {p:?}")))?,
        ),
        None => None,
    };
    let idmap = store.idmap();
    let key = key(setup, plan, image, idmap, requirements.as_deref());
    let lock_name = Store::setup_lock_key(&key);
    // Runs of the same setup wait here for the one that builds it.
    let _building = store.lock_layer(idmap, &lock_name, true)?;
    // Held while the staging directory is in use (garbage collection clears `tmp/` under the exclusive lock), and
    // handed to the run until it has recorded the layer.
    let shared = store.lock_shared()?;
    if !setup.no_cache {
        if let Some(root) = store.setup_root(idmap, &key) {
            tracing::debug!(%key, "setup layer found");
            return Ok(Some(SetupLayer {
                key,
                root,
                held: Some(shared),
            }));
        }
    }
    let staging = store.setup_staging(idmap, &key)?;
    let built = build(
        store,
        cfg,
        plan,
        setup,
        requirements.as_deref(),
        &staging,
        state_dir,
        quiet,
        log,
    );
    let kept = match built {
        Ok(true) => {
            // What the setup saw of the requirements file was a copy in the staging directory.
            let _ = std::fs::remove_file(staging.join("requirements.txt"));
            let meta = SetupMeta {
                image_id: image.record.id().clone(),
                image: image.record.name.clone(),
                source: setup.source.clone(),
                created: time::OffsetDateTime::now_utc(),
                size: crate::image::store::tree_size(&staging.join("upper")),
            };
            store.publish_setup(idmap, &key, &staging, &meta)?;
            tracing::info!(%key, size = meta.size, "setup kept as a layer");
            store.setup_root(idmap, &key).map(|root| SetupLayer {
                key,
                root,
                held: Some(shared),
            })
        }
        Ok(false) => None,
        Err(e) => {
            let _ = remove_tree(&staging);
            return Err(e);
        }
    };
    let _ = remove_tree(&staging);
    Ok(kept)
}

/// Runs the setup with its writable layer in `staging`. False when that layer cannot be kept there (the setup did
/// not run).
#[allow(clippy::too_many_arguments)]
fn build(
    store: &Store,
    cfg: &Config,
    plan: &RunPlan,
    setup: &SetupPlan,
    requirements: Option<&[u8]>,
    staging: &std::path::Path,
    state_dir: &std::path::Path,
    quiet: bool,
    log: Option<&mut File>,
) -> Result<bool, RunError> {
    let mut mounts = Vec::new();
    if let Some(bytes) = requirements {
        let copy = staging.join("requirements.txt");
        crate::sys::safe_fs::write_new(&copy, bytes, 0o644).map_err(io_error("copy the requirements file"))?;
        mounts.push(MountSpec::Bind {
            source: copy,
            destination: REQUIREMENTS_PATH.into(),
            read_only: true,
        });
    }
    // The image as it is, its user, working directory and environment, plus the build-time environment; the run's
    // limits and network. Nothing of the project, its volumes or devices.
    let setup_plan = RunPlan {
        pull: PullPolicy::Never,
        platform: plan.platform.clone(),
        entrypoint: Some(vec!["/bin/sh".into(), "-c".into()]),
        command: Some(vec![setup.script.clone()]),
        // Not the host's variables (`--env-host`, a Slurm job's): they change from job to job, and the key does not
        // cover them. `build_environment` is what a setup sees.
        env: setup.env.clone(),
        mounts,
        memory: plan.memory,
        cpus: plan.cpus,
        pids_limit: plan.pids_limit,
        shm_size: plan.shm_size,
        network: plan.network,
        dns: plan.dns.clone(),
        init: plan.init,
        init_signals_group: plan.init_signals_group,
        cdi_spec_dirs: plan.cdi_spec_dirs.clone(),
        require_limits: plan.require_limits,
        tmp_size: plan.tmp_size,
        ..RunPlan::new(plan.image.clone())
    };
    let needs = setup.needs.clone();
    let mut check = move |view: &StartView| {
        for alternatives in &needs {
            if !alternatives.iter().any(|p| view.has_program(p)) {
                return Err(RunError::Exec {
                    path: alternatives[0].clone(),
                    message: format!(
                        "not found in the image (looked for {} in its PATH); the workflow's setup needs it",
                        alternatives.join(" and ")
                    ),
                    code: crate::exit::NOT_FOUND,
                });
            }
        }
        Ok(())
    };
    let mut hooks = RunHooks {
        log,
        before_start: Some(&mut check),
        setup_in: Some(staging),
        ..RunHooks::default()
    };
    if !quiet {
        #[allow(clippy::print_stderr, reason = "a progress line, as a pull's, unless -q")]
        {
            eprintln!("drun: running the setup of {} (kept for later runs)", setup.source);
        }
    }
    let outcome = match super::run(store, cfg, &setup_plan, state_dir, quiet, &mut hooks) {
        Err(RunError::Rootfs(RootfsError::NotKept { source })) => {
            tracing::warn!(
                error = %source,
                "the setup cannot be kept as a layer (an overlay with its upper directory in the store cannot be \
                 mounted); the container does the setup itself, at every start"
            );
            return Ok(false);
        }
        other => other?,
    };
    if outcome.code != 0 || outcome.interrupted {
        return Err(RunError::SetupFailed { code: outcome.code });
    }
    // The mark that tells the run's script the setup is done must be in the layer (looked up inside it: the
    // container's symlinks there lead nowhere else).
    let mark = crate::run::rootfs::stat_in_root(&staging.join("upper"), SETUP_DONE.trim_start_matches('/'));
    if mark.is_some_and(|m| m.is_file()) {
        Ok(true)
    } else {
        Err(RunError::SetupFailed { code: 0 })
    }
}

/// The cache key: hex SHA-256 over every input, each length-prefixed. Besides what the setup installs, who built
/// it (the user behind sudo: one user's layers are never another's, so none can plant a layer another runs) and
/// what it could reach (network mode, DNS servers) are in it.
fn key(setup: &SetupPlan, plan: &RunPlan, image: &ReadyImage, idmap: &str, requirements: Option<&[u8]>) -> String {
    use sha2::{Digest as _, Sha256};
    let mut h = Sha256::new();
    let mut part = |bytes: &[u8]| {
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(bytes);
    };
    part(KEY_FORMAT.as_bytes());
    part(image.record.id().to_string().as_bytes());
    part(idmap.as_bytes());
    part(setup.script.as_bytes());
    for (k, v) in &setup.env {
        part(k.as_bytes());
        part(v.as_bytes());
    }
    part(requirements.unwrap_or(b"\0none"));
    part(format!("{:?}", crate::sys::userns::invoking_owner()).as_bytes());
    part(format!("{:?} {:?}", plan.network, plan.dns).as_bytes());
    hex::encode(h.finalize())
}
