//! Running a container: [`run`] takes a [`RunPlan`] through named phases, one file each, and returns how the
//! container ended.
//!
//! | phase | file |
//! |---|---|
//! | resolve the image (found or pulled, per the plan's policy) | `image::ready` (the run path never pulls) |
//! | the run's id and directory | `context.rs`, `state.rs` |
//! | cgroup and limits | `cgroups/`, created on a thread by `warmup.rs` |
//! | a workflow's setup: a kept layer above the image's, built by a run of its own first | `setup_layer.rs` |
//! | root file system: the image's layers as an overlay | `rootfs.rs` |
//! | the effective mounts (the copy-on-write mount prepared) | `mounts.rs` |
//! | process: args, env, user, cwd | `process.rs`, `user.rs`; executable check `executable.rs`; `--init` `init.rs` |
//! | MPI under `srun`: the PMI-2 fd, PMIx directories and settings | `pmi.rs` |
//! | network namespace (`--network none`); /etc/hosts, hostname, resolv.conf | `network.rs`; `etc_files.rs` |
//! | devices and GPUs | `devices.rs` (host device nodes, RDMA's through `rdma`), `gpu::prepare` |
//! | OCI spec, /dev/shm size, bundle | `spec.rs`, `shm.rs` |
//! | seccomp: default profile, compile, cache, load | `seccomp/` |
//! | create and start the container (libcontainer) | `start.rs` |
//! | supervise: signals, output, terminal | `supervise.rs`, `signals.rs`, `output.rs`, `tty.rs` |
//! | end what is left, clean up | `cleanup.rs`, `reap.rs`, `state.rs` |
//!
//! `exec.rs` runs another process in a running container (`drun exec`), through the same executor.
//!
//! libcontainer creates the container with raw clone3 and runs Rust code in the child, so nothing may be inside
//! the allocator on another thread then: the pull (tokio, writer threads) finishes and drops its threads before
//! anything here starts, and the cgroup warm-up thread allocates nothing once its cgroup is created (waited for
//! before the container is). The container's init is drun's child; drun waits for it itself (no automatic
//! reaper) and forwards signals to it.

pub mod cgroups;
mod cleanup;
mod context;
pub mod detach;
mod devices;
pub(crate) mod error;
mod etc_files;
pub mod exec;
mod executable;
pub mod finished;
pub mod health;
mod hooks;
mod init;
pub mod logfile;
mod mounts;
mod network;
mod output;
pub mod pmi;
mod process;
pub mod reap;
pub mod restart;
pub mod rootfs;
pub mod seccomp;
mod setup_layer;
pub mod shared_mount;
mod shm;
mod signals;
pub mod spec;
pub mod squash_mount;
mod start;
pub mod state;
mod supervise;
pub mod tty;
pub mod user;
pub mod warmup;

use std::path::Path;

use crate::image::ready::{self, ImageRequest};
use crate::image::registry::config::Config;
use crate::image::store::Store;
use crate::plan::{MountSpec, RunPlan};
use cgroups::{CgroupPlan, ResourceLimits};
use cleanup::Cleanup;
use context::RunContext;
use spec::SpecInputs;

pub(crate) use error::io_error;
pub use error::RunError;
pub use hooks::{BeforeStart, Detach, ExitView, Outcome, RunHooks, StartView};
pub use init::init_available;

/// Runs `plan` in the foreground (state under `state_dir`) and returns how the container ended.
pub fn run(
    store: &Store,
    cfg: &Config,
    plan: &RunPlan,
    state_dir: &Path,
    quiet: bool,
    hooks: &mut RunHooks,
) -> Result<Outcome, RunError> {
    error::check_privileged()?;
    // The image, pulled first if the plan's policy says so.
    let request = ImageRequest {
        reference: &plan.image,
        pull: plan.pull,
        platform: plan.platform.as_ref(),
        quiet,
    };
    let image = ready::ready_image(store, cfg, &request)?;
    crate::failpoint::pause("run-image-found");
    // A workflow's setup: a layer of the store above the image's, built first if it is not there yet.
    let mut setup = setup_layer::ensure(store, cfg, plan, &image, state_dir, quiet, hooks.log.as_deref_mut())?;
    // The run's id and directory (and its clean-up, whatever happens from here on).
    let (ctx, run_dir, names_lock) = RunContext::create(plan, state_dir)?;
    let mut cleanup = Cleanup::new(&ctx, run_dir);

    // Its cgroup, and the limits that cgroup can enforce.
    let cgroup = CgroupPlan::prepare(&ctx.short_id)?;
    let limits = ResourceLimits::of(plan);
    cgroups::check_enforced(&cgroup, &limits, plan.require_limits)?;
    shm::warn_if_unsized(plan);
    let mut info = ctx.run_info(&image, &cgroup);
    if let Some(d) = &hooks.detach {
        info.detached = true;
        info.auto_remove = d.auto_remove;
    }
    info.stop_signal = plan
        .stop_signal
        .map(|s| s as i32)
        .or_else(|| image_stop_signal(&image.config));

    // Where its writable layers go: beside the run, or in memory where that file system cannot hold them.
    let mut scratch = rootfs::Scratch::new(&ctx.dir, plan.tmp_size.or(cfg.tmp_size));
    if let Some(dir) = hooks.setup_in {
        scratch = scratch.kept_in(dir);
    }
    if let Some(s) = &setup {
        info.layers.push(crate::image::store::Store::setup_lock_key(&s.key));
    }
    // Registered under the store's shared lock: garbage collection either ran before or sees this run's layers.
    // A squashfs image file is mounted (after the record: a crash leaves the mount to the next `reap_stale`) and
    // is the overlay's only lower layer; `_squash` ends its squashfuse, if any, once the run is cleaned up.
    let (root, _squash) = {
        let mut again = 0;
        let (_shared, mut layers) = loop {
            let shared = store.lock_shared()?;
            if image.squash.is_some() {
                break (shared, vec![]);
            }
            match image.layer_dirs(store) {
                Ok(dirs) => break (shared, dirs),
                // Removed (`drun rmi`, `drun prune` of another drun) between finding the image and this lock: found
                // (pulled) again as the policy says, as long as it is the same image (the run's record names its
                // layers).
                Err(missing @ ready::ReadyError::LayerMissing { .. })
                    if again < 2 && plan.pull != ready::PullPolicy::Never =>
                {
                    drop(shared);
                    again += 1;
                    tracing::debug!(image = %image.record.name, "its layers went meanwhile: finding it again");
                    let found = ready::ready_image(store, cfg, &request)?;
                    if found.record.config_digest != image.record.config_digest {
                        return Err(missing.into());
                    }
                }
                Err(e) => return Err(e.into()),
            }
        };
        layers.extend(setup.as_ref().map(|s| s.root.clone()));
        cleanup.record(info.clone())?;
        // The setup layer is recorded as this run's: garbage collection keeps it from now on.
        if let Some(s) = setup.as_mut() {
            s.held = None;
        }
        drop(names_lock);
        cleanup.start_warmup(&cgroup, limits);
        match &image.squash {
            Some(sq) => {
                let mounted = squash_mount::mount_image(sq, store, state_dir, &ctx.dir)?;
                layers.insert(0, mounted.dir.clone());
                (rootfs::prepare(&mut scratch, &ctx.dir, &layers)?.0, Some(mounted))
            }
            None => (rootfs::prepare(&mut scratch, &ctx.dir, &layers)?.0, None),
        }
    };
    let mut mounts = mounts::effective(&plan.mounts, &ctx.dir, &mut scratch)?;

    // The process: what runs, as whom, where; checked before anything starts.
    let mut process = process::resolve(plan, &image.config, &root, &ctx.short_id)?;
    // Inside `srun --mpi=…`: the step's PMI server, reachable from the container.
    let pmi = pmi::detect(plan);
    pmi::apply(&pmi, plan, mounts.list.to_mut(), &mut process.env);
    // GPUs chosen before the command is looked up: it may be one of the driver's utilities that they bring.
    let mut gpus = crate::gpu::prepare(
        plan.gpus.as_ref(),
        &plan.devices,
        &plan.cdi_spec_dirs,
        &process.env,
        &ctx.dir.join("cdi"),
    )?;
    let mut visible = mounts.list.to_vec();
    visible.extend(
        gpus.iter_mut()
            .flat_map(|g| g.mounted_files())
            .map(|(container, host)| MountSpec::Bind {
                source: host.into(),
                destination: container,
                read_only: true,
            }),
    );
    executable::check(&root, &visible, &process.args, &process.env, &process.cwd)?;
    hooks.call_before_start(&StartView {
        root: &root,
        mounts: &mounts.list,
        env: &process.env,
        cwd: &process.cwd,
    })?;
    process::create_workdir(&root, &mounts.list, &process.cwd)?;
    let init = init::wrap(plan, &mut process.args)?;
    info.command = process.args.clone();

    // What it sees of the host: network, /etc files, devices and GPUs, its cgroup.
    let netns = network::prepare(plan, &ctx.dir)?;
    let etc_files = etc_files::write(&ctx.dir, &process.hostname, &plan.dns)?;
    let host_devices = devices::with_rdma(plan)?;
    cleanup.cgroup_created()?;
    crate::failpoint::hit("run-setup");
    cgroup.hide_host_hierarchy()?;

    // The OCI spec, its seccomp filter compiled (or taken from the cache), the bundle.
    let mut spec = spec::build(&SpecInputs {
        plan,
        mounts: &mounts.list,
        args: process.args,
        env: process.env,
        cwd: process.cwd,
        user: process.user,
        rootfs: &root,
        hostname: process.hostname,
        shm_bytes: shm::shm_bytes(plan),
        cgroup: &cgroup,
        etc_files,
        netns,
        init,
        host_devices: &host_devices,
    })?;
    // With --rdma, the host's verbs libraries for an image without its own; one ld cache refresh with the GPUs'.
    let rdma_libs = match plan.rdma {
        true => crate::rdma::libs::for_image(&crate::rdma::rdma_root(), &root),
        false => crate::rdma::libs::HostLibraries::default(),
    };
    rdma_libs.add_mounts(&mut spec);
    match gpus {
        Some(g) => g.apply(&mut spec, &root, &rdma_libs.libraries)?,
        None => crate::gpu::container_ldconfig::refresh(&root, &rdma_libs.libraries)
            .map_err(crate::gpu::GpuError::LdCache)?,
    }
    let poststop_hooks = spec::has_poststop_hooks(&spec);
    let filter = seccomp::take_precompiled(&mut spec, &seccomp::BpfCache::new(store.cache_dir(seccomp::CACHE_KIND)))?;
    seccomp::save_for_exec(&ctx.dir, filter.as_ref())?;
    let bundle = spec::write_bundle(&ctx.dir, &spec)?;

    // A detached run's output goes to its log, created before anything starts.
    let logged = hooks.detach.is_some() || hooks.log.is_some();
    let mut log = match &hooks.detach {
        Some(d) => Some(logfile::RotatingLog::create(&ctx.dir, d.log).map_err(io_error("create the container's log"))?),
        None => None,
    };

    // Start, supervise until the init exits (again, the same container, for `--restart on-failure`), end what
    // is left, clean up.
    let cgroup_writes = cgroup.v1_writes(&plan.tuning);
    let mut restarts = restart::Restarts::new(hooks.restart);
    // Each restart keeps the last container's end: what the run reports if the next start does not happen.
    let mut last: Option<(start::Started, Result<Outcome, RunError>)> = None;
    let (started, status) = loop {
        let restarting = last.is_some();
        let started = start::start(
            &ctx,
            &bundle,
            filter.clone(),
            pmi.fd,
            &cgroup,
            logged,
            &cgroup_writes,
            &mut cleanup,
            info.clone(),
            restarting,
        );
        let mut started = match (started, last.take()) {
            (Ok(s), _) => s,
            // `drun stop` or `drun kill` came while it was restarted: it ends as it last exited.
            (Err(RunError::StopRequested), Some(last)) => break last,
            (Err(e), last) => {
                // A detached run keeps its record and log, with the last exit, whatever failed on a restart.
                if let Some((_, Ok(o))) = &last {
                    cleanup.finished(Some(o.code));
                }
                return Err(e);
            }
        };
        restarts.started();
        // Its health check, probed from a thread of this process until the container ends (`health`).
        let prober = health::effective(&plan.health, image.healthcheck.as_ref())
            .filter(|_| !health::probe_reachable_from(plan, restarting))
            .map(|config| health::Prober::start(state_dir, &ctx.dir, &ctx.id, config));
        if let (Some(d), false) = (hooks.detach.as_mut(), restarting) {
            (d.started)(&ctx.id, &ctx.dir);
        }
        let terminal = match &started.console {
            Some(console) => {
                Some(tty::Terminal::attach(console).map_err(io_error("receive the container's terminal"))?)
            }
            None => None,
        };
        let master = terminal.as_ref().map(|t| &t.master);
        let mut output = output::Output::to_sink(
            started.output.take(),
            match log.take() {
                Some(l) => output::Sink::Log(l),
                None => output::Sink::Stdout(hooks.log.as_deref_mut()),
            },
            hooks.stdout.as_mut().map(|c| &mut **c as &mut dyn std::io::Write),
        );
        let status = supervise::supervise(started.pid, &mut started.signals, master, plan.interactive, &mut output);
        if let Some(p) = prober {
            p.stop();
        }
        if let output::Sink::Log(l) = output.into_sink() {
            log = Some(l);
        }
        drop(terminal);
        let code = match &status {
            Ok(o) if restarts.again(o.code, o.interrupted, &ctx.dir) => o.code,
            _ => break (started, status),
        };
        let max = match hooks.restart {
            crate::plan::RestartPolicy::OnFailure(n) => n,
            crate::plan::RestartPolicy::No => 0,
        };
        #[allow(
            clippy::print_stderr,
            reason = "what drun does, as a pull's progress; in a detached run's monitor log"
        )]
        {
            eprintln!(
                "drun: the container exited with {code}; restarting it ({} of {max}, --restart on-failure)",
                restarts.count
            );
        }
        // Nothing of it may run on: then libcontainer forgets it (and removes its cgroup, made again below).
        if !cleanup.end_container(true, true, &started, &cgroup) {
            break (started, status);
        }
        cleanup.forget_container();
        info.restart_count = restarts.count;
        info.pid = None;
        info.pid_start = None;
        let prepared = cleanup
            .record(info.clone())
            .map(|()| restarts.back_off(&started.signals, &ctx.dir))
            .and_then(|go| {
                if go {
                    cgroup.create_dirs(&limits)?;
                    cgroup.write_limits(&limits)?;
                }
                Ok(go)
            });
        match prepared {
            Ok(true) => {}
            Ok(false) => break (started, status),
            Err(e) => {
                cleanup.finished(Some(code));
                return Err(e);
            }
        }
        // The forwarded signals stay blocked (and pending ones are read by the next start's signalfd): the
        // container's process unblocks them itself before its command runs (`seccomp::Executor`).
        info.started = time::OffsetDateTime::now_utc();
        crate::failpoint::pause("run-restarting");
        last = Some((started, status));
    };
    cleanup.finished(status.as_ref().ok().map(|o| o.code));
    crate::failpoint::hit("run-cleanup");

    let ended = cleanup.end_container(status.is_ok(), poststop_hooks, &started, &cgroup);
    hooks::call_after_exit(&mut hooks.after_exit, ended, mounts.overlay_view.as_deref());
    let late_interrupt = started.signals.take_late_interrupt() || restarts.interrupted;
    started.signals.unblock();
    drop(cleanup);
    status.map(|mut o| {
        o.interrupted |= late_interrupt;
        o
    })
}

/// The image config's StopSignal (a name or number), if it names a signal.
fn image_stop_signal(config: &oci_spec::image::Config) -> Option<i32> {
    let text = config.stop_signal().as_deref()?;
    crate::plan::parse::signal(text)
        .map(|s| s as i32)
        .inspect_err(|e| tracing::warn!("ignoring the image's StopSignal: {e}"))
        .ok()
}
