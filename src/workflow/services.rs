//! A workflow's `services:`: background containers (a database, a message broker, an HTTP server) that its
//! commands talk to. [`services`] reads them from the entry; the runner ([`start`], [`Started::stop`]) starts
//! each as `drun run -d` would (drun executed again: a detached container needs its own monitor process, see
//! `run::detach`), waits until each one with a health check is healthy, and once the workflow's container has
//! ended stops them, saves their logs beside the workflow's and removes them, whatever the workflow's outcome.
//!
//! With the host network (the default) the workflow reaches a service on localhost, at the port the service
//! listens on: two services (or two concurrent runs of one workflow file) that listen on the same port clash.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_saphyr::Spanned;

use super::entry::EntryInputs;
use super::error::WorkflowError;
use super::schema::{self, Scalar, StringOrList};
use crate::run::health::{parse_duration, HealthPlan, HealthTest};

/// One service, as the entry declares it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceSpec {
    pub name: String,
    pub image: String,
    pub env: Vec<(String, String)>,
    /// Replaces the image's Entrypoint (`Some(vec![])` clears it).
    pub entrypoint: Option<Vec<String>>,
    /// Replaces the image's Cmd.
    pub command: Option<Vec<String>>,
    pub health: HealthPlan,
}

/// The entry's `services`, checked.
pub(super) fn services(w: &schema::Workflow, inputs: &EntryInputs<'_>) -> Result<Vec<ServiceSpec>, WorkflowError> {
    let locator = inputs.locator;
    let mut out: Vec<ServiceSpec> = Vec::new();
    for s in &w.services {
        let svc = &s.value;
        let name = svc.name.value.clone();
        let name_ok = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
        if !name_ok {
            return Err(locator.at(
                &svc.name.referenced,
                format!("invalid service name {name:?}: use letters, digits, `_`, `-` and `.`"),
            ));
        }
        if out.iter().any(|o| o.name == name) {
            return Err(locator.at(&svc.name.referenced, format!("service {name:?} is declared twice")));
        }
        if svc.image.value.trim().is_empty() {
            return Err(locator.at(&svc.image.referenced, "image must not be empty".into()));
        }
        let mut env = Vec::new();
        for (k, v, loc) in super::settings::environment(svc.environment.as_ref(), inputs)? {
            if v.outputs().next().is_some() {
                return Err(locator.at(
                    &loc,
                    "a service starts before the workflow's dependencies' outputs are used: `${deps.…}` is not \
                     available in a service's environment"
                        .into(),
                ));
            }
            env.push((k, v.written()));
        }
        let words = |what: &str, v: &Spanned<StringOrList>| match &v.value {
            StringOrList::List(l) => Ok(l.clone()),
            StringOrList::String(text) => shlex::split(text)
                .ok_or_else(|| locator.at(&v.referenced, format!("{what} {text:?} has unbalanced quotes"))),
        };
        let entrypoint = svc.entrypoint.as_ref().map(|e| words("entrypoint", e)).transpose()?;
        let command = svc.command.as_ref().map(|c| words("command", c)).transpose()?;
        let health = match &svc.healthcheck {
            Some(h) => healthcheck(h, inputs)?,
            None => HealthPlan::default(),
        };
        out.push(ServiceSpec {
            name,
            image: svc.image.value.trim().to_string(),
            env,
            entrypoint,
            command,
            health,
        });
    }
    Ok(out)
}

/// docker-py's `healthcheck`: `test` as a list (`["CMD", …]`, `["CMD-SHELL", "…"]`, `["NONE"]`) or a string
/// (a shell command, as docker-py makes it `CMD-SHELL`); durations in nanoseconds (docker-py) or with a unit.
pub(super) fn healthcheck(
    h: &Spanned<schema::Healthcheck>,
    inputs: &EntryInputs<'_>,
) -> Result<HealthPlan, WorkflowError> {
    let at = |message: String| inputs.locator.at(&h.referenced, message);
    let test = match &h.value.test {
        None => None,
        Some(StringOrList::String(cmd)) if cmd.trim().is_empty() => return Err(at("healthcheck test is empty".into())),
        Some(StringOrList::String(cmd)) => Some(HealthTest::Shell(cmd.clone())),
        Some(StringOrList::List(list)) => {
            HealthTest::from_docker(list).map_err(|e| at(format!("invalid healthcheck test: {e}")))?
        }
    };
    let duration = |key: &str, v: &Option<Scalar>| -> Result<Option<Duration>, WorkflowError> {
        let Some(Scalar(text)) = v else { return Ok(None) };
        // docker-py's unit: nanoseconds; 0 means "the default", as in Docker's API.
        let d = match text.parse::<u64>() {
            Ok(0) => return Ok(None),
            Ok(ns) => Duration::from_nanos(ns),
            Err(_) => parse_duration(text).map_err(|e| at(format!("invalid healthcheck {key}: {e}")))?,
        };
        if d.is_zero() {
            return Ok(None);
        }
        if d < Duration::from_millis(10) && key != "start_period" {
            return Err(at(format!(
                "invalid healthcheck {key} {text:?}: at least 10ms (a bare number is in nanoseconds, as docker-py \
                 has it; write 1s for a second)"
            )));
        }
        Ok(Some(d))
    };
    let retries = match &h.value.retries {
        None => None,
        Some(Scalar(text)) => match text.parse::<u32>() {
            Ok(0) => None,
            Ok(n) => Some(n),
            Err(_) => {
                return Err(at(format!(
                    "invalid healthcheck retries {text:?}: expected a whole number"
                )))
            }
        },
    };
    Ok(HealthPlan {
        disabled: false,
        test,
        interval: duration("interval", &h.value.interval)?,
        timeout: duration("timeout", &h.value.timeout)?,
        start_period: duration("start_period", &h.value.start_period)?,
        retries,
    })
}

/// What starting the services needs.
pub struct StartInputs<'a> {
    pub store_root: &'a Path,
    pub state_dir: &'a Path,
    /// The workflow's name: the services' container names start with it.
    pub job: &'a str,
}

/// A service that runs.
pub struct Running {
    pub name: String,
    pub id: String,
}

/// Why the services could not all be made ready.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("service {name:?} could not be started: {why}")]
    Start { name: String, why: String },
    #[error("service {name:?} is not ready: {why}")]
    NotReady {
        name: String,
        why: crate::run::health::WaitError,
    },
}

/// The drun command line that starts `svc` in the background. Its environment goes through `env_file`, a file
/// private to this user (not the command line, which other users can read in /proc, and never the launching
/// drun's own environment, where a `LD_PRELOAD` or `PATH` meant for the container would act on drun itself).
fn launch_command(
    svc: &ServiceSpec,
    inputs: &StartInputs<'_>,
    container_name: &str,
    env_file: Option<&Path>,
) -> Command {
    let mut cmd = Command::new("/proc/self/exe");
    std::os::unix::process::CommandExt::arg0(&mut cmd, "drun");
    cmd.arg("--root")
        .arg(inputs.store_root)
        .arg("--state")
        .arg(inputs.state_dir)
        .args(["run", "-d", "-q", "--name", container_name]);
    // Images were made ready before any workflow ran.
    cmd.args(["--pull", "never"]);
    if let Some(f) = env_file {
        cmd.arg("--env-file").arg(f);
    }
    let mut args: Vec<String> = Vec::new();
    match svc.entrypoint.as_deref() {
        None => {}
        Some([]) => {
            cmd.args(["--entrypoint", ""]);
        }
        Some([first, rest @ ..]) => {
            cmd.arg("--entrypoint").arg(first);
            args.extend(rest.iter().cloned());
        }
    }
    let h = &svc.health;
    match &h.test {
        Some(HealthTest::None) => {
            cmd.arg("--no-healthcheck");
        }
        Some(HealthTest::Shell(c)) => {
            cmd.arg("--health-cmd").arg(c);
        }
        // `--health-cmd` is a shell command: the argv, quoted for the shell.
        Some(HealthTest::Cmd(argv)) => {
            cmd.arg("--health-cmd")
                .arg(shlex::try_join(argv.iter().map(String::as_str)).unwrap_or_default());
        }
        None => {}
    }
    if h.test != Some(HealthTest::None) {
        let ms = |d: Duration| format!("{}ms", d.as_millis());
        for (flag, d) in [
            ("--health-interval", h.interval),
            ("--health-timeout", h.timeout),
            ("--health-start-period", h.start_period),
        ] {
            if let Some(d) = d {
                cmd.arg(flag).arg(ms(d));
            }
        }
        if let Some(r) = h.retries {
            cmd.arg("--health-retries").arg(r.to_string());
        }
    }
    cmd.arg("--").arg(&svc.image);
    if let Some(c) = &svc.command {
        args.extend(c.iter().cloned());
    }
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // Started while drun holds SIGINT, SIGTERM and SIGHUP back ([`HeldSignals`]): the service (its monitor, and
    // the container that inherits its mask) must get them, `drun stop`'s SIGTERM first of all.
    // SAFETY: the closure runs in the forked child before exec and only calls sigprocmask(2), which is
    // async-signal-safe; the empty set lives on the child's stack for the call.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            let mut none: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut none);
            if libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut()) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    };
    cmd
}

/// Starts one service; returns its container id.
pub fn start(svc: &ServiceSpec, inputs: &StartInputs<'_>) -> Result<Running, ServiceError> {
    let fail = |why: String| ServiceError::Start {
        name: svc.name.clone(),
        why,
    };
    let container_name = format!("{}-{}-{}", container_safe(inputs.job), svc.name, std::process::id());
    let env_file = write_env_file(svc, inputs.state_dir, &container_name).map_err(fail)?;
    let out = launch_command(svc, inputs, &container_name, env_file.as_deref()).output();
    // Read by the launcher and by the monitor before the container starts; the launcher returns after that.
    if let Some(f) = &env_file {
        let _ = std::fs::remove_file(f);
    }
    let out = out.map_err(|e| fail(format!("cannot run drun: {e}")))?;
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    // Its messages (a pull's warnings, why it failed), without drun's own "error: " prefix.
    let said = String::from_utf8_lossy(&out.stderr);
    let said: Vec<&str> = said
        .lines()
        .map(|l| l.strip_prefix("error: ").unwrap_or(l).trim())
        .filter(|l| !l.is_empty())
        .collect();
    if !out.status.success() || id.len() != 64 {
        return Err(fail(match (said.is_empty(), out.status.code()) {
            (false, _) => said.join("; "),
            (true, Some(code)) => format!("`drun run -d` exited with {code}"),
            (true, None) => "`drun run -d` was killed".into(),
        }));
    }
    for line in said {
        tracing::warn!(service = %svc.name, "{line}");
    }
    Ok(Running {
        name: svc.name.clone(),
        id,
    })
}

/// The service's environment as an env file (`KEY=VALUE` lines) in the state directory (private to this user),
/// created new with mode 0600; `None` without variables.
fn write_env_file(svc: &ServiceSpec, state_dir: &Path, container_name: &str) -> Result<Option<PathBuf>, String> {
    if svc.env.is_empty() {
        return Ok(None);
    }
    let mut text = String::new();
    for (k, v) in &svc.env {
        // An env file holds one variable per line, trimmed: what it cannot carry is refused, not changed.
        if v.contains(['\n', '\r']) || v.trim() != v {
            return Err(format!(
                "the value of {k:?} starts or ends with white space or holds a line break, which a service's \
                 environment cannot carry"
            ));
        }
        text.push_str(&format!("{k}={v}\n"));
    }
    let path = state_dir.join(format!(".env-{container_name}"));
    crate::sys::safe_fs::write_new(&path, text.as_bytes(), 0o600)
        .map_err(|e| format!("cannot write its environment to {path:?}: {e}"))?;
    Ok(Some(path))
}

/// A workflow's name as part of a container name.
fn container_safe(job: &str) -> String {
    job.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_.-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// How long a service with this health check may take to turn healthy: every probe it may take (a failing one
/// turns it unhealthy after `retries` of them, past the start period), and a minute more on a loaded machine.
pub fn health_bound(config: &crate::run::health::HealthConfig) -> Duration {
    // Saturating: an image's values can be as large as a u64 of nanoseconds and a u32 of retries.
    let probe = config.interval.saturating_add(config.timeout);
    config
        .start_period
        .saturating_add(probe.saturating_mul(config.retries.saturating_add(1)))
        .saturating_add(Duration::from_secs(60))
}

impl Running {
    fn run(&self, state_dir: &Path) -> Option<crate::run::finished::Run> {
        crate::run::finished::find(state_dir, &self.id).ok()
    }

    /// Blocks until it is healthy, when it has a health check; fails if it turns unhealthy or ends.
    /// `interrupted` ends the wait early (drun got a Ctrl-C meanwhile).
    pub fn wait_ready(&self, state_dir: &Path, interrupted: &dyn Fn() -> bool) -> Result<(), ServiceError> {
        let not_ready = |why| ServiceError::NotReady {
            name: self.name.clone(),
            why,
        };
        let Some(run) = self.run(state_dir) else {
            return Err(not_ready(crate::run::health::WaitError::Ended {
                id: self.id[..12].to_string(),
                code: String::new(),
                want: "healthy",
            }));
        };
        let Some(health) = crate::run::health::read(&run.dir) else {
            return Ok(());
        };
        let bound = health_bound(&health.config);
        crate::run::health::wait_for(
            &run.dir,
            run.short_id(),
            crate::run::health::Status::Healthy,
            Some(bound),
            &|| run.is_running() && !interrupted(),
        )
        .map(|_| ())
        .map_err(not_ready)
    }

    /// Stops it (SIGTERM, SIGKILL after 10 s, as `docker stop`), copies its log to `log` and removes it.
    pub fn stop_and_remove(&self, state_dir: &Path, log: Option<std::fs::File>) -> Result<(), String> {
        let Some(run) = self.run(state_dir) else {
            return Err("it is gone".into());
        };
        let mut problems = Vec::new();
        if let Err(e) = run.stop(Duration::from_secs(10)) {
            problems.push(format!("cannot stop it: {e}"));
        }
        if let Some(mut f) = log {
            let files = crate::run::logfile::files(&run.dir);
            if let Err(e) = crate::run::logfile::copy_from(&files, 0, 0, &mut f) {
                problems.push(format!("cannot save its log: {e}"));
            }
        }
        if let Err(e) = run.remove(state_dir) {
            problems.push(format!("cannot remove it: {e}"));
        }
        match problems.is_empty() {
            true => Ok(()),
            false => Err(problems.join("; ")),
        }
    }
}

/// Where a service's log is saved: `artifacts/<workflow>.services/<service>.log`.
pub fn log_path(artifacts_root: &Path, job: &str, service: &str) -> PathBuf {
    artifacts_root
        .join(format!("{job}.services"))
        .join(format!("{service}.log"))
}

/// SIGINT, SIGTERM and SIGHUP held back while services start or stop, so that a Ctrl-C then still stops them
/// (it would otherwise end drun and leave them running); the container's own run forwards them as usual.
pub struct HeldSignals {
    set: nix::sys::signal::SigSet,
}

impl HeldSignals {
    pub fn hold() -> HeldSignals {
        let mut set = nix::sys::signal::SigSet::empty();
        for s in [
            nix::sys::signal::Signal::SIGINT,
            nix::sys::signal::Signal::SIGTERM,
            nix::sys::signal::Signal::SIGHUP,
        ] {
            set.add(s);
        }
        let _ = set.thread_block();
        HeldSignals { set }
    }

    /// One of them arrived meanwhile (it stays pending).
    pub fn pending(&self) -> Option<i32> {
        // SAFETY: an all-zero sigset_t is a valid (empty) set, filled in by sigpending(2) below.
        let mut pending: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: sigpending(2) writes the set it is given, which lives for the call.
        if unsafe { libc::sigpending(&mut pending) } != 0 {
            return None;
        }
        self.set
            .iter()
            // SAFETY: sigismember(3) reads the set, which lives for the call.
            .find(|s| unsafe { libc::sigismember(&pending, *s as i32) } == 1)
            .map(|s| s as i32)
    }

    /// Lets them through again; returns the first that arrived meanwhile (taken, so it does not end drun now).
    pub fn release(self) -> Option<i32> {
        let mut first = None;
        let zero = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        loop {
            // SAFETY: sigtimedwait(2) with a zero timeout takes one pending signal of the set, if any; the set
            // and the timeout live for the call, no siginfo is asked for.
            let sig = unsafe { libc::sigtimedwait(self.set.as_ref(), std::ptr::null_mut(), &zero) };
            if sig <= 0 {
                break;
            }
            first.get_or_insert(sig);
        }
        let _ = self.set.thread_unblock();
        first
    }
}
