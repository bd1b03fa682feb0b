//! `drun run IMAGE [COMMAND…]`: flags → [`RunPlan`] (through the shared parsers, each error naming its flag, then
//! the one look at the host) → a container in the foreground; exits with the container's status.

use anyhow::{bail, Context, Result};

use crate::cli::{GlobalArgs, RunArgs};
use crate::image::registry::config::Config;
use crate::plan::host_paths::{resolve_host_paths, HostInputs};
use crate::plan::parse::{self, DeviceRequest, SecurityOpt};
use crate::plan::{CgroupTuning, RunPlan, SeccompMode};
use crate::run::detach::{self, Launch, Report};
use crate::run::logfile::LogOptions;

pub(super) fn execute(global: &GlobalArgs, args: RunArgs) -> Result<i32> {
    if !args.given.workflow.is_empty() {
        bail!(
            "{} are for workflow files (WORKFLOW.yaml)",
            and_list(&crate::cli::run::workflow_only_flags())
        );
    }
    let plan = plan_from_args(&args)?;
    if args.container.rm && plan.restart != crate::plan::RestartPolicy::No {
        // As Docker: a container removed when it exits cannot be restarted.
        bail!("--rm and --restart conflict: a container that is removed when it exits cannot be restarted");
    }
    // `drun run -d`: this drun starts the monitor and reports; the monitor (the same command again) runs it.
    if args.container.detach {
        let log = LogOptions::parse(&args.container.log_opt)?;
        return match Report::take() {
            Some(report) => monitor(global, &plan, report, log, args.container.rm, args.common.quiet),
            None => match detach::launch().context("cannot start the container's monitor")? {
                Launch::Started(id) => {
                    println!("{id}");
                    Ok(0)
                }
                Launch::Failed(code) => Ok(code),
            },
        };
    } else if !args.container.log_opt.is_empty() {
        bail!("--log-opt is for detached runs (-d): a foreground run's output goes to drun's own");
    }
    run(global, &plan, args.common.quiet, crate::run::RunHooks::default())
}

/// A detached run's monitor (`run::detach`): runs `plan` with the container's output going to its `log`, tells
/// `report` once the container runs, and stays its parent until it ends.
pub(crate) fn monitor(
    global: &GlobalArgs,
    plan: &RunPlan,
    report: Report,
    log: LogOptions,
    auto_remove: bool,
    quiet: bool,
) -> Result<i32> {
    if plan.interactive && !plan.tty {
        detach::hold_stdin_open().context("cannot keep the container's stdin open")?;
    }
    let mut report = Some(report);
    let mut on_started = |id: &str, dir: &std::path::Path| {
        if let Some(r) = report.take() {
            r.started(id, dir);
        }
    };
    let hooks = crate::run::RunHooks {
        detach: Some(crate::run::Detach {
            log,
            auto_remove,
            started: &mut on_started,
        }),
        ..Default::default()
    };
    run(global, plan, quiet, hooks)
}

/// Runs `plan` with `hooks`; drun's exit status is the container's.
fn run(global: &GlobalArgs, plan: &RunPlan, quiet: bool, mut hooks: crate::run::RunHooks) -> Result<i32> {
    let cfg = Config::load()?;
    let store = super::super::open_store(global)?;
    let state_dir = super::super::state_dir(global)?;
    // With an image directory, a registry or archive image runs from its squashfs file there (converted once, by
    // whichever node gets there first).
    let from_dir;
    let plan = match super::super::pull::image_dir(global, &cfg) {
        Some(dir) if crate::image::squash::is_squash_path(&plan.image).is_none() => {
            let source = crate::image::source::ImageSource::parse(&plan.image)?;
            let opts = crate::image::pull::PullOptions {
                platform: plan.platform.clone(),
                quiet,
            };
            let file = super::super::pull::ensure_in_image_dir(&dir, &store, &cfg, &source, &opts)?;
            from_dir = RunPlan {
                image: format!("sqsh:{}", file.display()),
                ..plan.clone()
            };
            &from_dir
        }
        _ => plan,
    };
    // --restart on-failure:N: the run restarts the same container (`run::restart`).
    hooks.restart = plan.restart;
    match crate::run::run(&store, &cfg, plan, &state_dir, quiet, &mut hooks) {
        Ok(outcome) => Ok(outcome.code),
        Err(e @ crate::run::RunError::Exec { .. }) => {
            let code = e.exit_code();
            eprintln!("error: {e}");
            Ok(code)
        }
        Err(e) => Err(e.into()),
    }
}

/// "a, b and c".
pub(super) fn and_list(items: &[String]) -> String {
    match items {
        [] => String::new(),
        [one] => one.clone(),
        [rest @ .., last] => format!("{} and {last}", rest.join(", ")),
    }
}

/// The plan the flags describe.
fn plan_from_args(args: &RunArgs) -> Result<RunPlan> {
    let (a, common) = (&args.container, &args.common);
    let mut words = args.image_and_command.iter();
    let image = words.next().context("an image is required")?;
    let command: Vec<String> = words.cloned().collect();

    let mut host = HostInputs::default();
    for v in &a.volume {
        host.mounts
            .push((parse::volume(v).map_err(|e| e.named("--volume"))?, ()));
    }
    for m in &a.mount {
        host.mounts.push((parse::mount(m).map_err(|e| e.named("--mount"))?, ()));
    }
    for t in &a.tmpfs {
        host.mounts.push((parse::tmpfs(t).map_err(|e| e.named("--tmpfs"))?, ()));
    }
    host.env_files = common.env_file.iter().map(|f| (f.clone(), ())).collect();
    let mut seccomp = SeccompMode::Default;
    let mut no_new_privileges = true;
    for o in &a.security_opt {
        match parse::security_opt(o).map_err(|e| e.named("--security-opt"))? {
            SecurityOpt::Seccomp(mode) => seccomp = mode,
            SecurityOpt::NoNewPrivileges(on) => no_new_privileges = on,
        }
    }
    let size = |flag: &str, v: &Option<String>| v.as_deref().map(parse::size).transpose().map_err(|e| e.named(flag));
    let memory = size("--memory", &a.memory)?;
    let shm_size = size("--shm-size", &a.shm_size)?;
    let cpus = a
        .cpus
        .as_deref()
        .map(parse::cpus)
        .transpose()
        .map_err(|e| e.named("--cpus"))?;
    let ulimits = a
        .ulimit
        .iter()
        .map(|u| parse::ulimit(u).map_err(|e| e.named("--ulimit")))
        .collect::<Result<_, _>>()?;
    let gpus = a
        .gpus
        .as_deref()
        .map(parse::gpus)
        .transpose()
        .map_err(|e| e.named("--gpus"))?;
    let mut devices = Vec::new();
    for d in &a.device {
        match parse::device(d).map_err(|e| e.named("--device"))? {
            DeviceRequest::Cdi(name) => devices.push(name),
            DeviceRequest::Host(request) => host.devices.push((request, ())),
        }
    }
    let platform = common.platform.as_deref().map(str::parse).transpose()?;
    let (tuning, blkio) = tuning_from_args(a)?;
    host.blkio = blkio;
    let oom_score_adj = named(&a.oom_score_adj, "--oom-score-adj", parse::oom_score_adj)?;
    let mut dns = crate::plan::NameResolution::default();
    for d in &a.dns {
        dns.servers.push(parse::dns_server(d).map_err(|e| e.named("--dns"))?);
    }
    for d in &a.dns_search {
        dns.search
            .push(parse::dns_search(d).map_err(|e| e.named("--dns-search"))?);
    }
    for d in &a.dns_option {
        dns.options
            .push(parse::dns_option(d).map_err(|e| e.named("--dns-option"))?);
    }
    for h in &a.add_host {
        dns.extra_hosts
            .push(parse::extra_host(h).map_err(|e| e.named("--add-host"))?);
    }
    let mut sysctls = Vec::new();
    for s in &a.sysctl {
        let (name, value, _) = parse::sysctl_text(s).map_err(|e| e.named("--sysctl"))?;
        sysctls.push((name, value));
    }
    let domainname = named(&a.domainname, "--domainname", parse::domainname)?;
    let stop_signal = named(&a.stop_signal, "--stop-signal", parse::signal)?;
    let restart = named(&a.restart, "--restart", parse::restart)?.unwrap_or_default();
    let health = health_from_args(a)?;

    // Every value parsed: now the one look at the host.
    let host = resolve_host_paths(host).map_err(|failure| failure.error)?;
    let mut tuning = tuning;
    for (kind, value) in host.blkio {
        tuning.push_blkio(kind, value);
    }
    let env = super::environment(common, &host.env_files)?;
    let host_env = super::host_variables(common, &env);
    let plan = RunPlan {
        tuning,
        oom_score_adj,
        uts: a.uts,
        domainname,
        dns,
        group_add: a.group_add.clone(),
        sysctls,
        stop_signal,
        restart,
        pull: common.pull,
        platform,
        entrypoint: a
            .entrypoint
            .as_ref()
            .map(|e| if e.is_empty() { vec![] } else { vec![e.clone()] }),
        command: (!command.is_empty()).then_some(command),
        env,
        host_env,
        mounts: host.mounts,
        workdir: a.workdir.clone(),
        user: a.user.clone(),
        memory,
        cpus,
        pids_limit: a.pids_limit,
        shm_size,
        tmp_size: super::tmp_size(common)?,
        network: a.network,
        ipc: a.ipc,
        pid: a.pid,
        hostname: a.hostname.clone(),
        read_only: a.read_only,
        cap_add: a.cap_add.clone(),
        cap_drop: a.cap_drop.clone(),
        privileged: a.privileged,
        seccomp,
        no_new_privileges,
        ulimits,
        name: a.name.clone(),
        interactive: a.interactive,
        tty: a.tty,
        init: a.init,
        cidfile: a.cidfile.clone(),
        gpus,
        devices,
        host_devices: host.devices,
        rdma: a.rdma,
        cdi_spec_dirs: common.cdi_spec_dir.clone(),
        require_limits: common.require_limits,
        health,
        ..RunPlan::new(image.clone())
    };
    crate::plan::check::check(&plan)?;
    Ok(plan)
}

/// `--health-*` and `--no-healthcheck`.
fn health_from_args(a: &crate::cli::ContainerArgs) -> Result<crate::run::health::HealthPlan> {
    use crate::run::health::{parse_duration, HealthPlan, HealthTest};
    let duration = |flag: &str, v: &Option<String>| -> Result<Option<std::time::Duration>> {
        v.as_deref()
            .map(|t| parse_duration(t).map_err(|e| anyhow::anyhow!("invalid {flag}: {e}")))
            .transpose()
    };
    let plan = HealthPlan {
        disabled: a.no_healthcheck,
        test: a.health_cmd.clone().map(HealthTest::Shell),
        interval: duration("--health-interval", &a.health_interval)?,
        timeout: duration("--health-timeout", &a.health_timeout)?,
        start_period: duration("--health-start-period", &a.health_start_period)?,
        retries: a.health_retries,
    };
    if plan.disabled
        && plan
            != (HealthPlan {
                disabled: true,
                ..HealthPlan::default()
            })
    {
        bail!("--no-healthcheck conflicts with the --health-* options");
    }
    for (flag, d) in [("--health-interval", plan.interval), ("--health-timeout", plan.timeout)] {
        if d.is_some_and(|d| d < std::time::Duration::from_millis(10)) {
            bail!("invalid {flag}: it must be at least 10ms");
        }
    }
    if plan.retries == Some(0) {
        bail!("invalid --health-retries 0: it must be at least 1");
    }
    if a.health_cmd.as_deref().is_some_and(|c| c.trim().is_empty()) {
        bail!("invalid --health-cmd \"\": give a command");
    }
    Ok(plan)
}

/// An optional flag's value through its parser, an error naming the flag.
fn named<T>(
    value: &Option<String>,
    flag: &str,
    parser: impl Fn(&str) -> Result<T, parse::ParseError>,
) -> Result<Option<T>> {
    Ok(value.as_deref().map(parser).transpose().map_err(|e| e.named(flag))?)
}

/// The cgroup flags beyond --memory, --cpus and --pids-limit; block devices are named by path, looked up later.
fn tuning_from_args(a: &crate::cli::ContainerArgs) -> Result<(CgroupTuning, Vec<(parse::BlkioRequest, ())>)> {
    if let Some(o) = a.storage_opt.first() {
        bail!(
            "--storage-opt {o:?} is not supported: {}",
            crate::workflow::docker_py::STORAGE_OPT_REASON
        );
    }
    let tuning = CgroupTuning {
        cpu_shares: named(&a.cpu_shares, "--cpu-shares", parse::cpu_shares)?,
        cpu_period: named(&a.cpu_period, "--cpu-period", parse::cpu_period)?,
        cpu_quota: named(&a.cpu_quota, "--cpu-quota", parse::cpu_quota)?,
        cpuset_cpus: named(&a.cpuset_cpus, "--cpuset-cpus", parse::cpuset)?,
        cpuset_mems: named(&a.cpuset_mems, "--cpuset-mems", parse::cpuset)?,
        mem_reservation: named(&a.memory_reservation, "--memory-reservation", parse::size)?,
        memswap_limit: named(&a.memory_swap, "--memory-swap", parse::memswap)?,
        mem_swappiness: named(&a.memory_swappiness, "--memory-swappiness", parse::swappiness)?,
        oom_kill_disable: a.oom_kill_disable,
        blkio_weight: named(&a.blkio_weight, "--blkio-weight", parse::blkio_weight)?,
        device_cgroup_rules: a
            .device_cgroup_rule
            .iter()
            .map(|r| parse::device_cgroup_rule(r).map_err(|e| e.named("--device-cgroup-rule")))
            .collect::<Result<_, _>>()?,
        ..CgroupTuning::default()
    };
    if let Some(k) = &a.kernel_memory {
        parse::size(k).map_err(|e| e.named("--kernel-memory"))?;
        eprintln!("warning: {}", crate::workflow::docker_py::KERNEL_MEMORY_NOTE);
    }
    let mut blkio = Vec::new();
    for (flag, kind, values) in [
        (
            "--blkio-weight-device",
            parse::BlkioKind::Weight,
            &a.blkio_weight_device,
        ),
        ("--device-read-bps", parse::BlkioKind::ReadBps, &a.device_read_bps),
        ("--device-write-bps", parse::BlkioKind::WriteBps, &a.device_write_bps),
        ("--device-read-iops", parse::BlkioKind::ReadIops, &a.device_read_iops),
        ("--device-write-iops", parse::BlkioKind::WriteIops, &a.device_write_iops),
    ] {
        for v in values {
            blkio.push((parse::blkio_text(kind, v).map_err(|e| e.named(flag))?, ()));
        }
    }
    Ok((tuning, blkio))
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // fixtures in the tests' own temporary directories
mod tests {
    use super::*;
    use crate::cli::Command;
    use crate::plan::{MountSpec, NetworkMode, PullPolicy, Sharing, Ulimit};
    use crate::units::ByteSize;

    fn args(flags: &[&str]) -> RunArgs {
        match crate::cli::parse_from(["drun", "run"].iter().chain(flags))
            .unwrap()
            .command
        {
            Command::Run(a) => *a,
            other => panic!("{other:?}"),
        }
    }

    fn plan(flags: &[&str]) -> Result<RunPlan> {
        plan_from_args(&args(flags))
    }

    fn error(flags: &[&str]) -> String {
        format!("{:#}", plan(flags).unwrap_err())
    }

    #[test]
    fn no_flags_give_the_secure_defaults() {
        let p = plan(&["busybox"]).unwrap();
        assert!(p.no_new_privileges && p.seccomp == SeccompMode::Default && !p.privileged);
        assert_eq!((p.image.as_str(), p.command.as_ref()), ("busybox", None));
        assert_eq!(
            (p.network, p.pull, p.ipc, p.pid),
            (NetworkMode::Host, PullPolicy::Missing, None, None)
        );
    }

    #[test]
    fn every_flag_lands_in_the_plan() {
        let t = tempfile::tempdir().unwrap();
        let data = t.path().join("data");
        std::fs::create_dir(&data).unwrap();
        let env_file = t.path().join("e.env");
        std::fs::write(&env_file, "# settings\nA=from-file\nB=2\n").unwrap();
        let volume = format!("{}:/data:ro", data.display());
        let mount = format!("type=bind,src={},dst=/m", data.display());
        let p = plan(&[
            "--env-file",
            env_file.to_str().unwrap(),
            "-e",
            "A=from-flag",
            "-v",
            &volume,
            "--mount",
            &mount,
            "--tmpfs",
            "/scratch:size=1m",
            "-m",
            "256m",
            "--shm-size",
            "64m",
            "--cpus",
            "1.5",
            "--pids-limit",
            "50",
            "--net",
            "none",
            "--ipc",
            "host",
            "--pid",
            "private",
            "--pull",
            "never",
            "--security-opt",
            "seccomp=unconfined",
            "--security-opt",
            "no-new-privileges=false",
            "--ulimit",
            "nofile=10:20",
            "--gpus",
            "2",
            "--device",
            "nvidia.com/gpu=0",
            "--device",
            "/dev/null:/dev/mynull:r",
            "--entrypoint",
            "",
            "-u",
            "1:2",
            "-w",
            "/w",
            "busybox",
            "sh",
            "-c",
            "true",
        ])
        .unwrap();
        let canonical = data.canonicalize().unwrap();
        assert_eq!(
            p.env,
            [("A", "from-file"), ("B", "2"), ("A", "from-flag")].map(|(k, v)| (k.to_string(), v.to_string()))
        );
        assert_eq!(
            p.mounts,
            vec![
                MountSpec::Bind {
                    source: canonical.clone(),
                    destination: "/data".into(),
                    read_only: true
                },
                MountSpec::Bind {
                    source: canonical,
                    destination: "/m".into(),
                    read_only: false
                },
                MountSpec::Tmpfs {
                    destination: "/scratch".into(),
                    options: vec!["size=1m".into()]
                },
            ]
        );
        assert_eq!(
            (p.memory, p.shm_size),
            (Some(ByteSize(256 << 20)), Some(ByteSize(64 << 20)))
        );
        assert_eq!((p.cpus, p.pids_limit), (Some(1.5), Some(50)));
        assert_eq!(
            (p.network, p.ipc, p.pid),
            (NetworkMode::None, Some(Sharing::Host), Some(Sharing::Private))
        );
        assert_eq!(p.pull, PullPolicy::Never);
        assert_eq!((p.seccomp, p.no_new_privileges), (SeccompMode::Unconfined, false));
        assert_eq!(
            p.ulimits,
            vec![Ulimit {
                name: "nofile".into(),
                soft: 10,
                hard: 20
            }]
        );
        assert!(p.gpus.is_some() && p.devices == ["nvidia.com/gpu=0"]);
        assert_eq!(
            p.host_devices,
            vec![crate::plan::HostDevice {
                host: "/dev/null".into(),
                container: "/dev/mynull".into(),
                kind: crate::plan::DeviceKind::Char,
                major: 1,
                minor: 3,
                access: crate::plan::DeviceAccess::parse("r").unwrap(),
            }]
        );
        assert_eq!(p.entrypoint, Some(vec![]));
        assert_eq!(p.command, Some(vec!["sh".into(), "-c".into(), "true".into()]));
        assert_eq!((p.user.as_deref(), p.workdir.as_deref()), (Some("1:2"), Some("/w")));
    }

    #[test]
    fn errors_name_the_flag() {
        assert!(error(&["--gpus", "lots", "img"]).starts_with("invalid --gpus \"lots\": expected all"));
        assert!(error(&["-m", "lots", "img"]).starts_with("invalid --memory \"lots\": expected a size"));
        assert!(error(&["--cpus", "0", "img"]).starts_with("invalid --cpus \"0\": expected a positive number"));
        assert!(error(&["--tmpfs", "rel", "img"]).contains("invalid --tmpfs \"rel\": the container path \"rel\""));
        assert!(error(&["--mount", "type=tmpfs,target=rel", "img"]).contains("must be absolute"));
        assert!(error(&["-v", "/a", "img"]).starts_with("invalid --volume \"/a\": expected SRC:DST"));
        assert!(error(&["--ulimit", "nofile=2:1", "img"]).contains("soft limit above hard limit"));
        assert!(error(&["-e", "=x", "img"]).starts_with("invalid --env \"=x\""));
        assert!(error(&["--security-opt", "apparmor=x", "img"]).starts_with("invalid --security-opt"));
        assert!(error(&["--device", "dev/fuse", "img"]).starts_with("invalid --device \"dev/fuse\": expected a host"));
        assert!(error(&["--device", "/dev/null:/n:x", "img"]).starts_with("invalid --device \"/dev/null:/n:x\""));
        assert_eq!(
            error(&["--device", "/etc/passwd", "img"]),
            "invalid device \"/etc/passwd\": expected a character or block device node, not a regular file"
        );
        // The host is looked at only once every value parsed.
        let e = error(&["-v", "/no/such/dir:/x", "img"]);
        assert!(e.starts_with("cannot find the bind source \"/no/such/dir\": "), "{e}");
        assert!(error(&["--env-file", "/no/such.env", "img"]).starts_with("cannot read the env file \"/no/such.env\""));
    }

    #[test]
    fn dockers_tuning_and_system_flags_land_in_the_plan() {
        let p = plan(&[
            "-c",
            "512",
            "--cpuset-cpus",
            "0-1",
            "--cpu-period",
            "50000",
            "--cpu-quota",
            "25000",
            "-m",
            "64m",
            "--memory-swap",
            "-1",
            "--memory-reservation",
            "32m",
            "--oom-kill-disable",
            "--oom-score-adj",
            "-500",
            "--device-cgroup-rule",
            "c 10:200 rwm",
            "--dns",
            "10.0.0.2",
            "--add-host",
            "db:10.0.0.5",
            "--group-add",
            "video",
            "--network",
            "none",
            "--sysctl",
            "net.ipv4.ip_forward=1",
            "--uts",
            "host",
            "--stop-signal",
            "INT",
            "--restart",
            "on-failure:3",
            "busybox",
        ])
        .unwrap();
        let t = &p.tuning;
        assert_eq!((t.cpu_shares, t.cpuset_cpus.as_deref()), (Some(512), Some("0-1")));
        assert_eq!(
            (t.cpu_period, t.cpu_quota, t.memswap_limit),
            (Some(50_000), Some(25_000), Some(-1))
        );
        assert_eq!(t.mem_reservation, Some(ByteSize(32 << 20)));
        assert!(t.oom_kill_disable && t.device_cgroup_rules.len() == 1);
        assert_eq!(p.oom_score_adj, Some(-500));
        assert_eq!(p.dns.servers, vec!["10.0.0.2".parse::<std::net::IpAddr>().unwrap()]);
        assert_eq!(p.dns.extra_hosts[0].0, "db");
        assert_eq!(p.group_add, ["video"]);
        assert_eq!(p.sysctls, vec![("net.ipv4.ip_forward".to_string(), "1".to_string())]);
        assert_eq!(
            (p.uts, p.stop_signal),
            (Some(Sharing::Host), Some(nix::sys::signal::Signal::SIGINT))
        );
        assert_eq!(p.restart, crate::plan::RestartPolicy::OnFailure(3));
        assert!(error(&["--cpuset-cpus", "3-1", "img"]).starts_with("invalid --cpuset-cpus \"3-1\""));
        assert!(error(&["--restart", "always", "img"]).contains("which needs a daemon"));
        assert!(error(&["--sysctl", "kernel.panic=1", "img"]).contains("not in a namespace of the container's own"));
        assert!(error(&["--sysctl", "net.core.somaxconn=1", "img"]).contains("need network none"));
        assert!(error(&["--storage-opt", "size=1g", "img"]).starts_with("--storage-opt \"size=1g\" is not supported"));
        assert!(error(&["--device-read-bps", "/dev/null:1mb", "img"])
            .starts_with("invalid block device \"/dev/null\": expected a block device node, not a character device"));
    }

    #[test]
    fn workflow_flags_are_refused_for_an_image() {
        let e = execute(&global(), args(&["--dry-run", "img"]));
        assert_eq!(
            e.unwrap_err().to_string(),
            "--artifacts, --dry-run, --keep-going, --var, --var-file, --no-cache and --log-format are for workflow files (WORKFLOW.yaml)"
        );
    }

    fn global() -> GlobalArgs {
        GlobalArgs {
            root: None,
            state: None,
            blob_cache: None,
            image_dir: None,
            log_level: None,
        }
    }
}
