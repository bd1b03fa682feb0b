//! Health checks, as Docker runs them: a probe command run in the container every `interval` (once the container
//! has started), each bounded by `timeout`; the container is `starting` until a probe succeeds (`healthy`), and
//! `unhealthy` after `retries` consecutive failures (failures during `start_period` do not count). The check comes
//! from `--health-*` flags over the image config's `Healthcheck` (a Docker extension that oci-spec's typed config
//! drops: [`image_healthcheck`] reads it from the raw config JSON).
//!
//! The drun that supervises the container (a detached run's monitor, or the foreground drun) runs the probes on a
//! thread of its own ([`Prober`]), each as `drun exec` does it (`run::exec`: the container's namespaces, cgroup,
//! capabilities, seccomp filter), in a child process (drun executed again), so that the supervision loop, its
//! signal handling and its reaping stay as they are. The status and the last probe results are kept in
//! `health.json` in the run directory (private, as all state), where `drun ps` and `drun wait --condition` read
//! them.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// The file in the run directory.
pub const HEALTH_FILE: &str = "health.json";
/// How many probe results are kept (Docker keeps 5).
const KEPT_RESULTS: usize = 5;
/// How much of a probe's output is kept (Docker keeps 4 KiB).
const KEPT_OUTPUT: usize = 4096;
/// Docker's defaults.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_RETRIES: u32 = 3;

/// What a health check runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum HealthTest {
    /// `NONE`: no health check (also disables the image's).
    None,
    /// `CMD`: this argv.
    Cmd(Vec<String>),
    /// `CMD-SHELL`: this command, run by `/bin/sh -c`.
    Shell(String),
}

impl HealthTest {
    /// Docker's list form: `["NONE"]`, `["CMD", ARG…]`, `["CMD-SHELL", COMMAND]`; `[]` is "not set" (`None`).
    pub fn from_docker(list: &[String]) -> Result<Option<HealthTest>, String> {
        match list {
            [] => Ok(None),
            [kind, ..] if kind == "NONE" => Ok(Some(HealthTest::None)),
            [kind, args @ ..] if kind == "CMD" && !args.is_empty() => Ok(Some(HealthTest::Cmd(args.to_vec()))),
            [kind, cmd] if kind == "CMD-SHELL" => Ok(Some(HealthTest::Shell(cmd.clone()))),
            [kind, ..] if kind == "CMD" || kind == "CMD-SHELL" => Err(format!(
                "{kind:?} takes {}",
                if kind == "CMD" {
                    "a command"
                } else {
                    "exactly one command line"
                }
            )),
            [kind, ..] => Err(format!("unknown test kind {kind:?} (expected NONE, CMD or CMD-SHELL)")),
        }
    }

    /// The argv run in the container.
    fn argv(&self) -> Vec<String> {
        match self {
            HealthTest::None => vec![],
            HealthTest::Cmd(args) => args.clone(),
            HealthTest::Shell(cmd) => vec!["/bin/sh".into(), "-c".into(), cmd.clone()],
        }
    }
}

/// The health check a run asks for (`--health-*`, a workflow's `healthcheck`): each setting over the image's.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HealthPlan {
    /// `--no-healthcheck`: neither this nor the image's.
    pub disabled: bool,
    pub test: Option<HealthTest>,
    pub interval: Option<Duration>,
    pub timeout: Option<Duration>,
    pub start_period: Option<Duration>,
    pub retries: Option<u32>,
}

/// Whether the container could reach its health probes, which are not run then (with a warning, once): rootless,
/// a probe is a `drun exec` started inside the container's user namespace, with every capability there and the
/// host's files in view, and a container that sees the host's pids and may trace processes of its namespace
/// (`CAP_SYS_PTRACE`, `--privileged`) could reach the host's files through it.
pub fn probe_reachable_from(plan: &crate::plan::RunPlan, quiet: bool) -> bool {
    let traces = plan.privileged
        || plan.cap_add.iter().any(|c| {
            let c = c.to_ascii_uppercase();
            let c = c.trim_start_matches("CAP_");
            c == "SYS_PTRACE" || c == "ALL"
        });
    let reachable = traces && plan.pid_mode() == crate::plan::Sharing::Host && crate::sys::userns::is_rootless();
    if reachable && !quiet {
        tracing::warn!(
            "the health check is not run: this rootless container shares the host's pid namespace and may trace processes (CAP_SYS_PTRACE), so it could reach drun's probe and through it your files"
        );
    }
    reachable
}

/// The image config's `Healthcheck` (durations in nanoseconds there; 0 means "the default").
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImageHealthcheck {
    pub test: Option<HealthTest>,
    pub interval: Option<Duration>,
    pub timeout: Option<Duration>,
    pub start_period: Option<Duration>,
    pub retries: Option<u32>,
}

/// The health check that runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthConfig {
    pub test: HealthTest,
    #[serde(with = "millis")]
    pub interval: Duration,
    #[serde(with = "millis")]
    pub timeout: Duration,
    #[serde(with = "millis")]
    pub start_period: Duration,
    pub retries: u32,
}

mod millis {
    use std::time::Duration;

    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        <u64 as serde::Deserialize>::deserialize(d).map(Duration::from_millis)
    }
}

/// The image's `Healthcheck`, read from the raw config JSON (`config.Healthcheck`); `None` when it has none or
/// it cannot be understood (warned about: the image still runs, as it would without one).
pub fn image_healthcheck(raw_config: &[u8]) -> Option<ImageHealthcheck> {
    let doc: serde_json::Value = serde_json::from_slice(raw_config).ok()?;
    let hc = doc.get("config")?.get("Healthcheck")?;
    if hc.is_null() {
        return None;
    }
    let nanos = |key: &str| {
        hc.get(key)
            .and_then(serde_json::Value::as_u64)
            .filter(|n| *n > 0)
            .map(Duration::from_nanos)
    };
    let test: Vec<String> = match hc.get("Test") {
        Some(serde_json::Value::Array(items)) => items
            .iter()
            .map(|i| i.as_str().map(str::to_string))
            .collect::<Option<_>>()
            .unwrap_or_default(),
        _ => vec![],
    };
    let test = match HealthTest::from_docker(&test) {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!("ignoring the image's Healthcheck: {e}");
            return None;
        }
    };
    Some(ImageHealthcheck {
        test,
        interval: nanos("Interval"),
        timeout: nanos("Timeout"),
        start_period: nanos("StartPeriod"),
        retries: hc
            .get("Retries")
            .and_then(serde_json::Value::as_u64)
            .filter(|n| *n > 0)
            .map(|n| u32::try_from(n).unwrap_or(u32::MAX)),
    })
}

/// The check that runs: the plan's settings over the image's, Docker's defaults for the rest; `None` when there
/// is no test, or it is `NONE`, or the plan disables health checks.
pub fn effective(plan: &HealthPlan, image: Option<&ImageHealthcheck>) -> Option<HealthConfig> {
    if plan.disabled {
        return None;
    }
    let image = image.cloned().unwrap_or_default();
    let test = plan.test.clone().or(image.test)?;
    if test == HealthTest::None {
        return None;
    }
    // An image's values are not checked as the flags are: at least 100 ms (about what starting a probe takes;
    // Docker's floor is 1 ms), so that an image cannot make drun start probes back to back.
    let floor = |d: Option<Duration>| d.map(|d| d.max(Duration::from_millis(100)));
    Some(HealthConfig {
        test,
        interval: plan.interval.or(floor(image.interval)).unwrap_or(DEFAULT_INTERVAL),
        timeout: plan.timeout.or(floor(image.timeout)).unwrap_or(DEFAULT_TIMEOUT),
        start_period: plan.start_period.or(image.start_period).unwrap_or_default(),
        retries: plan.retries.or(image.retries).unwrap_or(DEFAULT_RETRIES),
    })
}

/// A Go duration as Docker's `--health-*` flags take it: `30s`, `1m30s`, `500ms`, `1.5s`, `2h`; or a number of
/// seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let expected = || format!("invalid duration {text:?}: expected a number with a unit, such as 30s, 500ms or 1m30s");
    if let Ok(secs) = text.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let mut rest = text;
    let mut total = Duration::ZERO;
    if rest.is_empty() {
        return Err(expected());
    }
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(expected)?;
        let value: f64 = rest[..num_end].parse().map_err(|_| expected())?;
        rest = &rest[num_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_end] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(expected()),
        };
        rest = &rest[unit_end..];
        total += Duration::try_from_secs_f64(value * scale).map_err(|_| expected())?;
    }
    Ok(total)
}

/// A container's health, as `health.json` holds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Starting,
    Healthy,
    Unhealthy,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Starting => "starting",
            Status::Healthy => "healthy",
            Status::Unhealthy => "unhealthy",
        }
    }
}

/// One probe's result.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ProbeResult {
    #[serde(with = "time::serde::rfc3339")]
    pub start: time::OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub end: time::OffsetDateTime,
    /// 0 healthy, anything else a failure (-1: it timed out or could not be run).
    pub exit_code: i32,
    /// Its stdout and stderr together, at most 4 KiB (lossy UTF-8).
    pub output: String,
}

/// The record in `health.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Health {
    pub status: Status,
    pub failing_streak: u32,
    pub config: HealthConfig,
    /// The last few probes, oldest first.
    pub log: Vec<ProbeResult>,
}

impl Health {
    /// Docker's "health: starting" / "healthy" / "unhealthy", as `ps` shows it after "Up …".
    pub fn ps_label(&self) -> &'static str {
        match self.status {
            Status::Starting => "health: starting",
            Status::Healthy => "healthy",
            Status::Unhealthy => "unhealthy",
        }
    }

    /// The last probe, in words, for an error message.
    pub fn last_probe(&self) -> String {
        match self.log.last() {
            Some(p) if p.exit_code == -1 => format!("the last probe failed: {:?}", p.output.trim_end()),
            Some(p) => format!("the last probe exited with {}: {:?}", p.exit_code, p.output.trim_end()),
            None => "no probe has run".to_string(),
        }
    }
}

/// The health record of the run in `dir`, if it has a health check.
pub fn read(dir: &Path) -> Option<Health> {
    let bytes = crate::sys::safe_fs::read_bounded(&dir.join(HEALTH_FILE), 1 << 20).ok()?;
    serde_json::from_slice(&bytes).ok()
}

fn write(dir: &Path, health: &Health) {
    let bytes = serde_json::to_vec_pretty(health).expect("health serialises");
    if let Err(e) = crate::sys::safe_fs::write_replace(&dir.join(HEALTH_FILE), &bytes, 0o600) {
        tracing::warn!(error = %e, "cannot record the container's health");
    }
}

/// The probe thread of one container; stopped (and joined) by [`Prober::stop`] once the container has ended.
pub struct Prober {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Prober {
    /// Records the container (`id`, run directory `dir` under `state_dir`) as `starting` and starts probing it.
    pub fn start(state_dir: &Path, dir: &Path, id: &str, config: HealthConfig) -> Prober {
        let health = Health {
            status: Status::Starting,
            failing_streak: 0,
            config,
            log: vec![],
        };
        write(dir, &health);
        let stop = Arc::new(AtomicBool::new(false));
        let job = ProbeJob {
            state_dir: state_dir.to_path_buf(),
            dir: dir.to_path_buf(),
            id: id.to_string(),
            stop: stop.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("health".into())
            .spawn(move || job.run(health))
            .inspect_err(|e| tracing::warn!(error = %e, "cannot start the health checks"))
            .ok();
        Prober { stop, thread }
    }

    /// Ends the probes: one in flight is killed.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

struct ProbeJob {
    state_dir: PathBuf,
    dir: PathBuf,
    id: String,
    stop: Arc<AtomicBool>,
}

impl ProbeJob {
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// Sleeps `d` unless stopped meanwhile; false if stopped.
    fn sleep(&self, d: Duration) -> bool {
        let until = Instant::now() + d;
        while !self.stopped() {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return true;
            }
            std::thread::sleep(left.min(Duration::from_millis(50)));
        }
        false
    }

    fn run(self, mut health: Health) {
        let started = Instant::now();
        let config = health.config.clone();
        while self.sleep(config.interval) {
            let result = self.probe(&config);
            if self.stopped() {
                // Killed because the container ended: not a verdict on its health.
                return;
            }
            if result.exit_code == 0 {
                health.status = Status::Healthy;
                health.failing_streak = 0;
            } else if started.elapsed() >= config.start_period {
                health.failing_streak += 1;
                if health.failing_streak >= config.retries {
                    health.status = Status::Unhealthy;
                }
            }
            health.log.push(result);
            if health.log.len() > KEPT_RESULTS {
                health.log.remove(0);
            }
            write(&self.dir, &health);
        }
    }

    /// One probe: `drun exec ID TEST…` (this binary again), its output through a pipe, bounded by the timeout.
    fn probe(&self, config: &HealthConfig) -> ProbeResult {
        let start = time::OffsetDateTime::now_utc();
        let (code, output) = match self.exec(config) {
            Ok(r) => r,
            Err(e) => (-1, format!("cannot run the health check: {e}")),
        };
        ProbeResult {
            start,
            end: time::OffsetDateTime::now_utc(),
            exit_code: code,
            output,
        }
    }

    fn exec(&self, config: &HealthConfig) -> std::io::Result<(i32, String)> {
        let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK)?;
        // The child's end blocks, as a program's output normally does.
        nix::fcntl::fcntl(&write, nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::empty()))?;
        let mut cmd = Command::new("/proc/self/exe");
        cmd.arg0("drun")
            .arg("--state")
            .arg(&self.state_dir)
            .arg("exec")
            .arg(&self.id)
            // The image's test is the command, never options of `drun exec` (`["CMD", "-u", "0", …]`).
            .arg("--")
            .args(config.test.argv())
            .stdin(Stdio::null())
            .stdout(Stdio::from(write.try_clone()?))
            .stderr(Stdio::from(write))
            // Its own process group: a Ctrl-C at the terminal of a foreground run is the container's, not the
            // probe's.
            .process_group(0);
        // This thread blocks the signals the supervising drun forwards (read from its signalfd): the probe starts
        // with none blocked, as from a shell, so that the SIGTERM of a timeout reaches it.
        // SAFETY: the closure runs in the forked child before exec and only calls sigprocmask(2), which is
        // async-signal-safe; the empty set lives on the child's stack for the call.
        unsafe {
            cmd.pre_exec(|| {
                let mut none: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut none);
                if libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut()) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            })
        };
        let mut child = cmd.spawn()?;
        let mut pipe = std::fs::File::from(read);
        let mut output = Vec::new();
        // An image's timeout may be centuries: no overflow.
        let deadline = Instant::now()
            .checked_add(config.timeout)
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(365 * 86400));
        let mut timed_out = false;
        let mut open = true;
        let status = loop {
            if open {
                let mut buf = [0u8; 4096];
                loop {
                    match pipe.read(&mut buf) {
                        Ok(0) => {
                            open = false;
                            break;
                        }
                        Ok(n) => {
                            let room = KEPT_OUTPUT.saturating_sub(output.len());
                            output.extend_from_slice(&buf[..n.min(room)]);
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                        Err(_) => {
                            open = false;
                            break;
                        }
                    }
                }
            }
            if let Some(status) = child.try_wait()? {
                if !open {
                    break Some(status);
                }
                // What is still in the pipe (a process of the probe that outlives it may hold it open: not
                // waited for).
                let mut fds = [nix::poll::PollFd::new(
                    std::os::fd::AsFd::as_fd(&pipe),
                    nix::poll::PollFlags::POLLIN,
                )];
                // Bounded: a process that keeps writing to it would keep this thread here for ever.
                let drained = Instant::now() >= deadline || self.stopped();
                if drained || nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(20u16)).unwrap_or(0) == 0 {
                    break Some(status);
                }
                continue;
            }
            if self.stopped() || Instant::now() >= deadline {
                timed_out = !self.stopped();
                // drun exec passes SIGTERM on to the probe; SIGKILL for both if that is not enough.
                if let Ok(pid) = i32::try_from(child.id()) {
                    let pid = nix::unistd::Pid::from_raw(pid);
                    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
                }
                let grace = Instant::now() + Duration::from_secs(2);
                while Instant::now() < grace && child.try_wait()?.is_none() {
                    std::thread::sleep(Duration::from_millis(20));
                }
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            let mut fds = [nix::poll::PollFd::new(
                std::os::fd::AsFd::as_fd(&pipe),
                nix::poll::PollFlags::POLLIN,
            )];
            let wait = if open { 50u16 } else { 20 };
            if open {
                let _ = nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(wait));
            } else {
                std::thread::sleep(Duration::from_millis(wait.into()));
            }
        };
        let text = String::from_utf8_lossy(&output).into_owned();
        Ok(match status {
            Some(s) => (
                s.code().unwrap_or_else(|| {
                    crate::exit::from_signal(std::os::unix::process::ExitStatusExt::signal(&s).unwrap_or(9))
                }),
                text,
            ),
            None if timed_out => (
                -1,
                format!("Health check exceeded timeout ({})", human_duration(config.timeout)),
            ),
            None => (-1, text),
        })
    }
}

/// `30s`, `1.5s`, `500ms`.
pub fn human_duration(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else if d.as_secs() == 0 {
        format!("{}ms", d.as_millis())
    } else {
        format!("{}s", d.as_secs_f64())
    }
}

/// How waiting for a health status ended badly.
#[derive(Debug, thiserror::Error)]
pub enum WaitError {
    #[error("container {0} has no health check (give one with --health-cmd, or the image's HEALTHCHECK)")]
    NoHealthCheck(String),
    #[error("container {id} is unhealthy: {last}")]
    Unhealthy { id: String, last: String },
    #[error("container {id} turned healthy")]
    Healthy { id: String },
    #[error("container {id} ended{code} before it was {want}")]
    Ended {
        id: String,
        code: String,
        want: &'static str,
    },
    #[error("container {id} is still {status} after {secs}s")]
    TimedOut {
        id: String,
        status: &'static str,
        secs: u64,
    },
}

/// Blocks until the run in `dir` (short id `id`) has the health `want` (healthy or unhealthy); fails if it turns
/// the other way (for `healthy`), ends first, or `limit` passes. `running` says whether it still runs.
pub fn wait_for(
    dir: &Path,
    id: &str,
    want: Status,
    limit: Option<Duration>,
    running: &dyn Fn() -> bool,
) -> Result<Health, WaitError> {
    let deadline = limit.map(|l| Instant::now() + l);
    loop {
        // Whether it ran is looked at first: a status read after it ended is its last.
        let alive = running();
        let health = read(dir);
        match &health {
            Some(h) if h.status == want => return Ok(h.clone()),
            Some(h) if want == Status::Healthy && h.status == Status::Unhealthy => {
                return Err(WaitError::Unhealthy {
                    id: id.to_string(),
                    last: h.last_probe(),
                })
            }
            None if alive => return Err(WaitError::NoHealthCheck(id.to_string())),
            _ => {}
        }
        if !alive {
            let code = crate::run::state::read_info(dir)
                .and_then(|i| i.exit)
                .and_then(|e| e.code)
                .map_or(String::new(), |c| format!(" (exit code {c})"));
            return Err(WaitError::Ended {
                id: id.to_string(),
                code,
                want: want.as_str(),
            });
        }
        if let Some(d) = deadline {
            if Instant::now() >= d {
                return Err(WaitError::TimedOut {
                    id: id.to_string(),
                    status: health.map_or("starting", |h| h.status.as_str()),
                    secs: limit.unwrap_or_default().as_secs(),
                });
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_gos() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert!(parse_duration("").is_err() && parse_duration("5x").is_err() && parse_duration("s").is_err());
    }

    #[test]
    fn the_image_check_is_read_from_the_raw_config() {
        let raw = br#"{"config":{"Healthcheck":{"Test":["CMD-SHELL","wget -q -O- http://127.0.0.1/"],
            "Interval":2000000000,"Retries":5}}}"#;
        let image = image_healthcheck(raw).unwrap();
        assert_eq!(
            image.test,
            Some(HealthTest::Shell("wget -q -O- http://127.0.0.1/".into()))
        );
        let plan = HealthPlan {
            timeout: Some(Duration::from_secs(1)),
            ..HealthPlan::default()
        };
        let c = effective(&plan, Some(&image)).unwrap();
        assert_eq!(
            (c.interval, c.timeout, c.retries, c.start_period),
            (Duration::from_secs(2), Duration::from_secs(1), 5, Duration::ZERO)
        );
        let none = image_healthcheck(br#"{"config":{"Healthcheck":{"Test":["NONE"]}}}"#).unwrap();
        assert_eq!(effective(&HealthPlan::default(), Some(&none)), None);
        assert!(image_healthcheck(br#"{"config":{}}"#).is_none());
        let off = HealthPlan {
            disabled: true,
            ..HealthPlan::default()
        };
        assert_eq!(effective(&off, Some(&image)), None);
        assert_eq!(
            HealthTest::from_docker(&["CMD".into(), "true".into()]),
            Ok(Some(HealthTest::Cmd(vec!["true".into()])))
        );
        assert!(HealthTest::from_docker(&["SHELL".into()]).is_err());
    }
}
