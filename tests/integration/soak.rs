//! The concurrency soak (`make test-soak`, not part of `make test`): four streams at once — two as root on one
//! shared store and state directory (and a shared blob cache), and the rootless test users drun-sub and drun-nosub on
//! their own stores — each doing `DRUN_SOAK_OPERATIONS` (default 250) random operations: pull, run with limits, an
//! OOM, a signal, a workflow with artifacts, rmi, prune, check. Afterwards: no failure other than the faults the
//! test causes itself (the OOM's 137, the signal's 143, an rmi of an image another stream removed first), no
//! leftovers, mounts or cgroups, `drun check` clean on every store, and the detached monitors' memory flat. The
//! stream stops early at `DRUN_SOAK_MINUTES` (default 14) so the whole soak stays within 15 minutes.

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::chaos::{env_count, parse_check, seed, CgroupScope, Rng};
use crate::common::*;
use crate::rootless::UserBox;

/// How a stream runs drun: as root on the shared sandbox, or as a test user.
enum Who {
    Root(Arc<Sandbox>),
    User(UserBox),
}

impl Who {
    fn cmd(&self, args: &[&str]) -> Command {
        match self {
            Who::Root(sb) => {
                let mut c = sb.cmd(args);
                c.env("DRUN_BLOB_CACHE", sb.path().join("blob-cache"));
                c
            }
            Who::User(ub) => ub.cmd(args),
        }
    }
    fn drun(&self, args: &[&str]) -> Output {
        run(self.cmd(args), Duration::from_secs(300))
    }
    fn rootless(&self) -> bool {
        matches!(self, Who::User(_))
    }
    /// A directory of the stream's own that its user may write.
    fn dir(&self, name: &str) -> PathBuf {
        let d = match self {
            Who::Root(sb) => sb.path().join(name),
            Who::User(ub) => ub.work().join(name),
        };
        if !d.exists() {
            std::fs::create_dir_all(&d).unwrap();
            if let Who::User(ub) = self {
                std::os::unix::fs::chown(&d, Some(ub.uid), Some(ub.gid)).unwrap();
            }
        }
        d
    }
}

#[derive(Default, Debug, Clone)]
struct OpTally {
    done: usize,
    /// Ended as the test's own fault makes it end (OOM kill, signal, rmi of an image already gone).
    expected_faults: usize,
    failures: usize,
}

#[derive(Default)]
struct StreamReport {
    ops: BTreeMap<&'static str, OpTally>,
    failures: Vec<String>,
    monitor_rss_kib: Option<(u64, u64)>,
    took: Duration,
}

const OPS: [&str; 9] = [
    "pull",
    "run-limits",
    "oom",
    "signal",
    "workflow",
    "rmi",
    "prune",
    "check",
    "run-debian",
];

fn rss_kib(pid: i32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// The monitor of the detached run `id`: the parent of its container's first process.
fn monitor_pid(state: &Path, id: &str) -> Option<i32> {
    let dir = std::fs::read_dir(state.join("containers"))
        .ok()?
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with(&id[..12.min(id.len())]))?;
    let info: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("info.json")).ok()?).ok()?;
    let pid = info["pid"].as_i64()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    after.split_whitespace().nth(1)?.parse().ok()
}

fn stream(n: usize, who: Who, ops: usize, seed: u64, deadline: Instant) -> (Who, StreamReport) {
    let mut rng = Rng::new(seed.wrapping_add(n as u64 * 7919));
    let mut rep = StreamReport::default();
    let start = Instant::now();
    let (bb, deb) = (busybox(), debian());
    let project = who.dir(&format!("project-{n}"));
    let wf = project.join("workflow.yaml");
    std::fs::write(
        &wf,
        format!(
            "workflows:\n  - name: w\n    image: {bb}\n    commands:\n      - mkdir -p out\n      - \
             echo ${{var.n}} > out/n\n      - dd if=/dev/zero of=out/blob bs=64k count=16 2>/dev/null\n    \
             artifacts: [out]\n"
        ),
    )
    .unwrap();
    if let Who::User(ub) = &who {
        std::os::unix::fs::chown(&wf, Some(ub.uid), Some(ub.gid)).unwrap();
    }
    // A detached run for the whole stream (root streams): its monitor's memory at the start and the end.
    let mut detached = None;
    if let Who::Root(sb) = &who {
        let out = who.drun(&["run", "-d", "-q", &bb, "sleep", "100000"]);
        if out.status.success() {
            let id = out.stdout.trim().to_string();
            std::thread::sleep(Duration::from_millis(500));
            let mon = monitor_pid(&sb.state(), &id);
            let first = mon.and_then(rss_kib);
            detached = Some((id, mon, first));
        } else {
            rep.failures.push(format!("stream {n}: run -d: {}", out.stderr));
        }
    }
    for i in 0..ops {
        if Instant::now() > deadline {
            eprintln!("stream {n}: the deadline stopped it after {i} operations");
            break;
        }
        let mut op = rng.pick(&OPS);
        if op == "oom" && who.rootless() {
            // Without a cgroup of its own (cgroup v1, rootless) no memory limit applies: a run with limits instead.
            op = "run-limits";
        }
        let result: Result<bool, String> = match op {
            "pull" => {
                let image = if rng.chance(50) { &bb } else { &deb };
                let o = who.drun(&["pull", "-q", image]);
                o.status.success().then_some(false).ok_or(o.stderr)
            }
            "run-limits" => {
                let o = who.drun(&[
                    "run",
                    "-q",
                    "--memory",
                    "64m",
                    "--pids-limit",
                    "64",
                    &bb,
                    "sh",
                    "-c",
                    "echo ok",
                ]);
                if o.status.success() && o.stdout == "ok\n" {
                    Ok(false)
                } else {
                    Err(format!("{} {:?} {}", o.status, o.stdout, o.stderr))
                }
            }
            "run-debian" => {
                let o = who.drun(&["run", "-q", &deb, "cat", "/opt/keep/changed"]);
                if o.status.success() && o.stdout == "v2\n" {
                    Ok(false)
                } else {
                    Err(format!("{} {:?} {}", o.status, o.stdout, o.stderr))
                }
            }
            "oom" => {
                let o = who.drun(&[
                    "run",
                    "-q",
                    "--memory",
                    "32m",
                    "--memory-swap",
                    "32m",
                    &bb,
                    "sh",
                    "-c",
                    "dd if=/dev/zero of=/dev/null bs=96M count=1",
                ]);
                if o.code() == Some(137) {
                    Ok(true)
                } else {
                    Err(format!("expected 137: {} {}", o.status, o.stderr))
                }
            }
            "signal" => {
                // The container's shell (PID 1, so only trapped signals reach it, as with `docker run` without
                // --init) exits 128+N for the signal drun forwards to it.
                let (sig, code) = if rng.chance(50) {
                    (nix::sys::signal::Signal::SIGTERM, 143)
                } else {
                    (nix::sys::signal::Signal::SIGINT, 130)
                };
                let script = "trap 'exit 143' TERM; trap 'exit 130' INT; echo up; sleep 60 & wait";
                let mut c = who.cmd(&["run", "-q", &bb, "sh", "-c", script]);
                c.stdout(Stdio::piped()).stderr(Stdio::piped());
                let child = c.spawn().unwrap();
                std::thread::sleep(Duration::from_millis(500 + rng.below(1000)));
                let _ = nix::sys::signal::kill(pid_of(&child), sig);
                let o = wait(child, Duration::from_secs(120));
                if o.code() == Some(code) && o.stdout == "up\n" {
                    Ok(true)
                } else if o.stdout.is_empty()
                    && (o.code().is_some_and(|c| c != 0) || o.status.signal() == Some(sig as i32))
                {
                    // The signal came while drun was still starting the container (a slow start under load): drun
                    // ended (by the signal itself before it forwards signals); the next commands clean up.
                    Ok(true)
                } else {
                    Err(format!("after {sig}: {} {:?} {}", o.status, o.stdout, o.stderr))
                }
            }
            "workflow" => {
                let _ = std::fs::remove_dir_all(project.join("artifacts"));
                let var = format!("n={i}");
                let o = who.drun(&["run", "-q", "--var", &var, wf.to_str().unwrap()]);
                let got = std::fs::read_to_string(project.join("artifacts/w/out/n")).unwrap_or_default();
                let size = std::fs::metadata(project.join("artifacts/w/out/blob"))
                    .map(|m| m.len())
                    .unwrap_or(0);
                if o.status.success() && got == format!("{i}\n") && size == 1 << 20 {
                    Ok(false)
                } else {
                    Err(format!("workflow: {} {got:?} {size} {}", o.status, o.stderr))
                }
            }
            "rmi" => {
                let o = who.drun(&["rmi", &deb]);
                if o.status.success() {
                    Ok(false)
                } else if o.code() == Some(125) && o.stderr.contains("debian") {
                    // Not in the store (never pulled, or another stream removed it first).
                    Ok(true)
                } else {
                    Err(format!("rmi: {} {}", o.status, o.stderr))
                }
            }
            "prune" => {
                let o = who.drun(&["prune"]);
                o.status.success().then_some(false).ok_or(o.stderr)
            }
            "check" => {
                let o = who.drun(&["check"]);
                let c = parse_check(&o);
                if o.code() == Some(0) && c.problems() == 0 {
                    Ok(false)
                } else {
                    Err(format!("check during the soak: {}", c.text))
                }
            }
            _ => unreachable!(),
        };
        let t = rep.ops.entry(op).or_default();
        t.done += 1;
        match result {
            Ok(expected_fault) => t.expected_faults += usize::from(expected_fault),
            Err(e) => {
                t.failures += 1;
                eprintln!("stream {n} op {i} {op}: FAILURE {e}");
                rep.failures.push(format!("stream {n} op {i} {op}: {e}"));
            }
        }
    }
    if let Some((id, mon, first)) = detached {
        let last = mon.and_then(rss_kib);
        if let (Some(a), Some(b)) = (first, last) {
            rep.monitor_rss_kib = Some((a, b));
        } else {
            rep.failures
                .push(format!("stream {n}: the detached run's monitor is gone: {mon:?}"));
        }
        let o = who.drun(&["rm", "-f", &id]);
        if !o.status.success() {
            rep.failures.push(format!("stream {n}: rm -f: {}", o.stderr));
        }
    }
    rep.took = start.elapsed();
    (who, rep)
}

#[test]
#[ignore = "make test-soak: the concurrency soak (up to 15 minutes; root, registries, test users)"]
fn four_streams_of_mixed_operations() {
    assert!(
        is_root(),
        "the soak runs containers as root and as the test users: run it as root"
    );
    let seed = seed("DRUN_SOAK_SEED");
    let ops = env_count("DRUN_SOAK_OPERATIONS", 250);
    let minutes = env_count("DRUN_SOAK_MINUTES", 14);
    eprintln!(
        "soak: seed {seed} (DRUN_SOAK_SEED replays the choices), 4 streams x {ops} operations, at most {minutes} min"
    );
    let scope = CgroupScope::enter(&format!("drun-soak-{}", std::process::id()));
    let sb = Arc::new(Sandbox::new());
    let deadline = Instant::now() + Duration::from_secs(60 * minutes as u64);
    let start = Instant::now();
    let reports = Arc::new(Mutex::new(Vec::new()));
    let whos = vec![
        Who::Root(sb.clone()),
        Who::Root(sb.clone()),
        Who::User(UserBox::new("drun-sub")),
        Who::User(UserBox::new("drun-nosub")),
    ];
    let handles: Vec<_> = whos
        .into_iter()
        .enumerate()
        .map(|(n, who)| {
            let reports = reports.clone();
            std::thread::spawn(move || {
                let (who, rep) = stream(n, who, ops, seed, deadline);
                reports.lock().unwrap().push((n, who, rep));
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let took = start.elapsed();
    let mut reports = std::mem::take(&mut *reports.lock().unwrap());
    reports.sort_by_key(|r| r.0);
    // Afterwards: every store checks clean, nothing is left.
    let mut failures: Vec<String> = vec![];
    let mut leaks: Vec<String> = leftovers(&sb);
    leaks.extend(scope.leaked());
    let root_check = parse_check(&sb.drun(&["check"]));
    if !root_check.clean() {
        failures.push(format!("root store: {}", root_check.text));
    }
    let mut user_checks = vec![];
    for (n, who, _) in &reports {
        if let Who::User(ub) = who {
            leaks.extend(ub.leftovers());
            let c = parse_check(&ub.drun(&["check"]));
            if !c.clean() {
                failures.push(format!("stream {n}'s store: {}", c.text));
            }
            user_checks.push(c.clean());
        }
    }
    eprintln!("\nsoak: seed {seed}, {:.0} s", took.as_secs_f64());
    eprintln!(
        "{:<8} {:<11} {:>6} {:>9} {:>8}",
        "stream", "operation", "done", "expected", "failures"
    );
    let mut totals: BTreeMap<&str, OpTally> = BTreeMap::new();
    for (n, who, rep) in &reports {
        let label = match who {
            Who::Root(_) => "root",
            Who::User(_) if *n == 2 => "drun-sub",
            Who::User(_) => "drun-nosub",
        };
        let done: usize = rep.ops.values().map(|t| t.done).sum();
        eprintln!(
            "stream {n} ({label}): {done} operations in {:.0} s, monitor RSS {:?} KiB (start, end)",
            rep.took.as_secs_f64(),
            rep.monitor_rss_kib
        );
        for (op, t) in &rep.ops {
            eprintln!(
                "{:<8} {:<11} {:>6} {:>9} {:>8}",
                n, op, t.done, t.expected_faults, t.failures
            );
            let e = totals.entry(op).or_default();
            e.done += t.done;
            e.expected_faults += t.expected_faults;
            e.failures += t.failures;
        }
        failures.extend(rep.failures.iter().cloned());
        if let Some((a, b)) = rep.monitor_rss_kib {
            // Flat: not grown by more than 1 MiB over the stream.
            if b > a + 1024 {
                failures.push(format!("stream {n}: the detached monitor grew from {a} to {b} KiB"));
            }
        }
    }
    for (op, t) in &totals {
        eprintln!(
            "{:<8} {:<11} {:>6} {:>9} {:>8}",
            "all", op, t.done, t.expected_faults, t.failures
        );
    }
    eprintln!(
        "leaks: {} {:?}; root store check clean: {}; user stores clean: {:?}",
        leaks.len(),
        leaks,
        root_check.clean(),
        user_checks
    );
    assert!(leaks.is_empty(), "leaks: {leaks:?}");
    assert!(
        failures.is_empty(),
        "{} failure(s):\n{}",
        failures.len(),
        failures.join("\n")
    );
}
