//! The crash campaign (`make test-chaos`, not part of `make test`): drun SIGKILLed at random points of pulls (some
//! through a registry proxy that drops connections), runs (set-up, running, clean-up) and workflows (artifact copy),
//! and pulls into a store on a nearly full disk. After each fault `drun check` may report only what the next command
//! or `--repair` clears (stale runs, staging debris); the next pull and run must succeed and leave no mounts, run
//! directories or cgroups, and `drun check` clean. The seed is printed; `DRUN_CHAOS_SEED` replays a campaign and
//! `DRUN_CHAOS_ITERATIONS` (default 200) sets its length. docs/reliability.md has the figures.

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

/// A small deterministic generator (splitmix64): the campaign's random choices replay from the printed seed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }
    /// One of `items`, each as likely.
    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        let n = u64::try_from(items.len()).unwrap();
        items[usize::try_from(self.below(n)).unwrap()]
    }
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// `DRUN_CHAOS_SEED`, else one from the clock.
pub fn seed(var: &str) -> u64 {
    std::env::var(var).ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        let d = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap();
        d.as_secs().wrapping_mul(1_000_000_000) + u64::from(d.subsec_nanos())
    })
}

pub fn env_count(var: &str, default: usize) -> usize {
    std::env::var(var).ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

/// A cgroup of this test process's own below its memory cgroup, in every v1 hierarchy (or on v2): the containers
/// the test's drun processes start get their cgroups below it, so a leaked one is found there whatever else runs on
/// the host. The test process leaves it, and removes it, on drop.
pub struct CgroupScope {
    dirs: Vec<PathBuf>,
    parent_procs: PathBuf,
}

impl CgroupScope {
    pub fn enter(name: &str) -> CgroupScope {
        let text = std::fs::read_to_string("/proc/self/cgroup").unwrap();
        let v2 = !Path::new("/sys/fs/cgroup/memory").is_dir();
        let own = text
            .lines()
            .find_map(|l| {
                let mut p = l.splitn(3, ':');
                let (_, ctrls, path) = (p.next()?, p.next()?, p.next()?);
                let hit = if v2 {
                    ctrls.is_empty()
                } else {
                    ctrls.split(',').any(|c| c == "memory")
                };
                hit.then(|| path.trim_start_matches('/').to_string())
            })
            .expect("own cgroup");
        let mounts: Vec<PathBuf> = if v2 {
            vec![PathBuf::from("/sys/fs/cgroup")]
        } else {
            std::fs::read_dir("/sys/fs/cgroup")
                .unwrap()
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.join("cgroup.procs").exists() && !p.ends_with("unified") && !p.ends_with("systemd"))
                .collect()
        };
        let main = if v2 {
            PathBuf::from("/sys/fs/cgroup")
        } else {
            PathBuf::from("/sys/fs/cgroup/memory")
        };
        let dirs: Vec<PathBuf> = mounts.iter().map(|m| m.join(&own).join(name)).collect();
        let mine = main.join(&own).join(name);
        std::fs::create_dir_all(&mine).unwrap();
        std::fs::write(mine.join("cgroup.procs"), std::process::id().to_string()).unwrap();
        CgroupScope {
            dirs,
            parent_procs: main.join(&own).join("cgroup.procs"),
        }
    }

    /// Cgroups below the scope: containers' cgroups nobody removed.
    pub fn leaked(&self) -> Vec<String> {
        let mut out = Vec::new();
        for d in &self.dirs {
            if let Ok(rd) = std::fs::read_dir(d) {
                out.extend(
                    rd.flatten()
                        .filter(|e| e.path().is_dir())
                        .map(|e| e.path().display().to_string()),
                );
            }
        }
        out
    }
}

impl Drop for CgroupScope {
    fn drop(&mut self) {
        let _ = std::fs::write(&self.parent_procs, std::process::id().to_string());
        for d in &self.dirs {
            if let Ok(rd) = std::fs::read_dir(d) {
                for e in rd.flatten().filter(|e| e.path().is_dir()) {
                    let _ = std::fs::remove_dir(e.path());
                }
            }
            let _ = std::fs::remove_dir(d);
        }
    }
}

/// What `drun check` printed, by kind.
#[derive(Debug, Default)]
pub struct Checked {
    pub code: Option<i32>,
    pub stale_runs: usize,
    pub staging: usize,
    pub cache_debris: usize,
    /// Any other damage: corrupt records, layers, blobs, aliases, setup layers, locks.
    pub corrupt: Vec<String>,
    pub text: String,
}

impl Checked {
    pub fn problems(&self) -> usize {
        self.stale_runs + self.staging + self.cache_debris + self.corrupt.len()
    }
    pub fn clean(&self) -> bool {
        self.code == Some(0) && self.problems() == 0 && self.text.contains("no problems")
    }
}

pub fn parse_check(out: &Output) -> Checked {
    let mut c = Checked {
        code: out.code(),
        text: format!("{}{}", out.stdout, out.stderr),
        ..Checked::default()
    };
    for l in out.stdout.lines() {
        if l.starts_with("stale run:") {
            c.stale_runs += 1;
        } else if let Some(d) = l.strip_prefix("damage: ") {
            if d.contains("left by an interrupted") {
                c.staging += 1;
            } else if d.contains("a cache file whose writer died") {
                c.cache_debris += 1;
            } else {
                c.corrupt.push(d.to_string());
            }
        }
    }
    c
}

/// Starts `cmd`, waits `delay` (or for `until` to hold, then `delay`), SIGKILLs it: whether it was still running.
/// Its output goes nowhere: processes a killed drun leaves may hold the pipes (until the next drun ends them).
fn kill_after(mut cmd: Command, delay: Duration, until: Option<&dyn Fn() -> bool>) -> bool {
    cmd.stdout(Stdio::null()).stderr(Stdio::null());
    let mut child: Child = cmd.spawn().expect("spawn");
    let start = Instant::now();
    if let Some(ready) = until {
        while !ready() && start.elapsed() < Duration::from_secs(120) {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    std::thread::sleep(delay);
    let _ = nix::sys::signal::kill(pid_of(&child), nix::sys::signal::Signal::SIGKILL);
    child.wait().unwrap().signal() == Some(9)
}

/// Runs `cmd` (which a fail point kills) to its end, its output nowhere: whether it was SIGKILLed.
fn killed_at_fail_point(mut cmd: Command) -> bool {
    cmd.stdout(Stdio::null()).stderr(Stdio::null());
    cmd.status().unwrap().signal() == Some(9)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Fault {
    Pull,
    PullDroppingProxy,
    RunSetup,
    RunRunning,
    RunCleanup,
    WorkflowArtifactCopy,
    FullDisk,
}

const FAULTS: [Fault; 7] = [
    Fault::Pull,
    Fault::PullDroppingProxy,
    Fault::RunSetup,
    Fault::RunRunning,
    Fault::RunCleanup,
    Fault::WorkflowArtifactCopy,
    Fault::FullDisk,
];

#[derive(Default, Debug)]
struct Tally {
    iterations: usize,
    /// The process was SIGKILLed (by the test or a fail point) or the disk was full when it ran.
    injected: usize,
    /// By fail point rather than at a random time.
    at_fail_point: usize,
    /// Connections the proxy dropped.
    drops: usize,
    stale_runs: usize,
    staging: usize,
    cache_debris: usize,
    corrupt: usize,
    /// What the check after the fault found and the next command cleared.
    cleared_by_next: usize,
    /// What was still there after the next command, cleared by `drun check --repair`.
    cleared_by_repair: usize,
    /// Mounts, run directories or cgroups left after the next command.
    leaks: usize,
    failures: usize,
}

struct Campaign {
    sb: Sandbox,
    scope: CgroupScope,
    rng: Rng,
    tally: BTreeMap<Fault, Tally>,
    failures: Vec<String>,
    /// Unfaulted durations, which bound the random kill times.
    pull_time: Duration,
    small_pull_time: Duration,
    run_time: Duration,
    /// What the debian test image takes in a store, in MiB.
    store_mib: u64,
    project: PathBuf,
    workflow: PathBuf,
}

const WORKFLOW: &str = r#"workflows:
  - name: big
    image: {busybox}
    commands:
      - mkdir -p out
      - i=0; while [ $i -lt 64 ]; do dd if=/dev/zero of=out/f$i bs=64k count=8 2>/dev/null; i=$((i+1)); done
      - echo done > out/last
    artifacts: [out]
"#;

impl Campaign {
    fn fail(&mut self, fault: Fault, what: String) {
        eprintln!("FAILURE ({fault:?}): {what}");
        self.tally.entry(fault).or_default().failures += 1;
        self.failures.push(format!("{fault:?}: {what}"));
    }

    fn check(&self, store: Option<&Path>) -> Checked {
        let mut c = self.sb.cmd(&["check"]);
        if let Some(s) = store {
            c.env("DRUN_ROOT", s);
        }
        parse_check(&run(c, Duration::from_secs(120)))
    }

    /// The check right after a fault: counted by kind; corrupt entries are failures.
    fn after_fault(&mut self, fault: Fault, store: Option<&Path>) -> usize {
        let c = self.check(store);
        let t = self.tally.entry(fault).or_default();
        t.stale_runs += c.stale_runs;
        t.staging += c.staging;
        t.cache_debris += c.cache_debris;
        t.corrupt += c.corrupt.len();
        if !c.corrupt.is_empty() {
            let text = c.text.clone();
            self.fail(fault, format!("corrupt after the fault:\n{text}"));
        }
        c.problems()
    }

    /// After the next command: no leftovers, no cgroups, a clean check (else what `--repair` had to clear).
    fn after_next(&mut self, fault: Fault, found: usize, store: Option<&Path>) {
        std::thread::sleep(Duration::from_millis(50));
        let mut left = leftovers(&self.sb);
        left.extend(self.scope.leaked());
        let c = self.check(store);
        let t = self.tally.entry(fault).or_default();
        if !left.is_empty() {
            t.leaks += left.len();
        }
        t.cleared_by_next += found.saturating_sub(c.problems());
        if !c.corrupt.is_empty() {
            let text = c.text.clone();
            self.fail(fault, format!("corrupt after the next command:\n{text}"));
        }
        if !left.is_empty() {
            self.fail(fault, format!("left after the next command: {left:?}"));
        }
        if !c.clean() {
            self.tally.entry(fault).or_default().cleared_by_repair += c.problems();
            eprintln!("after the next command, for --repair: {}", c.text);
            let mut r = self.sb.cmd(&["check", "--repair"]);
            if let Some(s) = store {
                r.env("DRUN_ROOT", s);
            }
            let repaired = run(r, Duration::from_secs(120));
            if !repaired.status.success() || !self.check(store).clean() {
                self.fail(fault, format!("--repair did not clear it: {}", repaired.stdout));
            }
        }
    }

    /// The next normal pull and run after a fault.
    fn pull_and_run(&mut self, fault: Fault, image: &str, store: Option<&Path>) {
        for args in [
            vec!["pull", "-q", image],
            vec!["run", "-q", "--pull=never", image, "true"],
        ] {
            let mut c = self.sb.cmd(&args);
            if let Some(s) = store {
                c.env("DRUN_ROOT", s);
            }
            let out = run(c, Duration::from_secs(300));
            if !out.status.success() {
                self.fail(
                    fault,
                    format!("`drun {}` after the fault failed: {}", args.join(" "), out.stderr),
                );
            }
        }
    }

    fn delay(&mut self, from: Duration, to: Duration) -> Duration {
        let span = u64::try_from(to.saturating_sub(from).as_millis()).unwrap_or(u64::MAX);
        from + Duration::from_millis(self.rng.below(span.max(1)))
    }

    fn iteration(&mut self, fault: Fault) {
        let (bb, deb) = (busybox(), debian());
        self.tally.entry(fault).or_default().iterations += 1;
        // One in four kills at a fail point (the exact stage; one in two for the short clean-up), the others at a
        // random time.
        let fail_point = self.rng.chance(if fault == Fault::RunCleanup { 50 } else { 25 });
        let killed;
        let mut drops = 0;
        let mut proxy_holder = None;
        match fault {
            Fault::Pull | Fault::PullDroppingProxy => {
                // The three-layer debian image (127 MiB unpacked) or the one-layer busybox one, half the time each.
                let (name, upstream) = if self.rng.chance(50) {
                    ("debian:bookworm", deb.clone())
                } else {
                    ("busybox:latest", bb.clone())
                };
                // Every record of the image goes (also those named after an earlier proxy's port), and with them its
                // layers: the pull starts from nothing.
                let listed = self.sb.drun(&["images", "--json"]).ok().stdout;
                let records: serde_json::Value = serde_json::from_str(&listed).unwrap();
                let repo = format!("/drun-test/{}:", name.split(':').next().unwrap());
                for r in records.as_array().unwrap() {
                    let n = r["name"].as_str().unwrap();
                    if n.contains(&repo) {
                        self.sb.drun(&["rmi", n]).ok();
                    }
                }
                let image = if fault == Fault::PullDroppingProxy {
                    // Drops a connection after a random number of bytes, for the first one to three GETs per blob.
                    let at = format!(
                        "reset-blob:{}:{}",
                        1000 + self.rng.below(1_500_000),
                        1 + self.rng.below(3)
                    );
                    let dir = self.sb.path().join(format!("proxy-{}", self.rng.next()));
                    std::fs::create_dir_all(&dir).unwrap();
                    let proxy = Proxy::start(&dir, &registry(), &[&at]);
                    let image = format!("{}/drun-test/{name}", proxy.addr());
                    proxy_holder = Some(proxy);
                    image
                } else {
                    upstream.clone()
                };
                let mut cmd = self.sb.cmd(&["pull", "-q", &image]);
                if fail_point {
                    let points = [
                        "blob-downloading",
                        "layer-before-publish",
                        "layer-after-publish",
                        "before-record",
                    ];
                    cmd.env("DRUN_FAILPOINT", self.rng.pick(&points));
                    killed = killed_at_fail_point(cmd);
                } else {
                    let whole = if name.starts_with("debian") {
                        self.pull_time
                    } else {
                        self.small_pull_time
                    };
                    let d = self.delay(Duration::ZERO, whole);
                    killed = kill_after(cmd, d, None);
                }
                let found = self.after_fault(fault, None);
                // The interrupted pull completes on retry, through the same proxy.
                let retry = self.sb.drun(&["pull", "-q", &image]);
                if !retry.status.success() {
                    self.fail(fault, format!("the retried pull failed: {}", retry.stderr));
                }
                self.pull_and_run(fault, &image, None);
                if let Some(p) = &proxy_holder {
                    drops = p.requests().iter().filter(|r| r.faults.contains("reset-blob")).count();
                }
                self.after_next(fault, found, None);
            }
            Fault::RunSetup | Fault::RunRunning | Fault::RunCleanup => {
                let (args, point, window): (Vec<&str>, &str, (Duration, Duration)) = match fault {
                    Fault::RunSetup => (
                        vec!["true"],
                        if self.rng.chance(50) {
                            "run-setup"
                        } else {
                            "run-created"
                        },
                        (Duration::ZERO, self.run_time),
                    ),
                    Fault::RunRunning => (
                        vec!["sleep", "30"],
                        "",
                        (self.run_time, self.run_time + Duration::from_millis(1500)),
                    ),
                    _ => (
                        vec!["sh", "-c", "sleep 0.5"],
                        "run-cleanup",
                        (
                            self.run_time + Duration::from_millis(450),
                            self.run_time + Duration::from_millis(600),
                        ),
                    ),
                };
                let mut full = vec![
                    "run",
                    "-q",
                    "--pull=never",
                    "--memory",
                    "256m",
                    "--pids-limit",
                    "100",
                    &bb,
                ];
                full.extend(args);
                let mut cmd = self.sb.cmd(&full);
                if fail_point && !point.is_empty() {
                    cmd.env("DRUN_FAILPOINT", point);
                    killed = killed_at_fail_point(cmd);
                } else {
                    let d = self.delay(window.0, window.1);
                    killed = kill_after(cmd, d, None);
                }
                let found = self.after_fault(fault, None);
                self.pull_and_run(fault, &bb, None);
                self.after_next(fault, found, None);
            }
            Fault::WorkflowArtifactCopy => {
                let arts = self.project.join("artifacts");
                let _ = std::fs::remove_dir_all(&arts);
                let mut cmd = self.sb.cmd(&["run", "-q", self.workflow.to_str().unwrap()]);
                if fail_point {
                    cmd.env("DRUN_FAILPOINT", "artifact-copying");
                    killed = killed_at_fail_point(cmd);
                } else {
                    // Once the copy has begun (its destination exists), after up to the copy's usual duration.
                    let dest = arts.join("big/out");
                    let d = Duration::from_millis(self.rng.below(50));
                    killed = kill_after(cmd, d, Some(&|| dest.exists()));
                }
                let found = self.after_fault(fault, None);
                // The next command is the workflow again: it must succeed and copy every file.
                let again = self.sb.drun(&["run", "-q", self.workflow.to_str().unwrap()]);
                let copied = std::fs::read_dir(arts.join("big/out")).map(|r| r.count()).unwrap_or(0);
                if !again.status.success() || copied != 65 {
                    self.fail(
                        fault,
                        format!("the workflow's rerun: {} files, {}", copied, again.stderr),
                    );
                }
                self.after_next(fault, found, None);
            }
            Fault::FullDisk => {
                // A tmpfs store (outside the sandbox, whose mounts count as leftovers), filled before the pull up to
                // a random level: mostly less free space than the image needs, sometimes just enough.
                let outside = tempfile::Builder::new().prefix("drun-chaos-disk-").tempdir().unwrap();
                let small = outside.path().to_path_buf();
                let size = self.store_mib + 64;
                nix::mount::mount(
                    Some("tmpfs"),
                    &small,
                    Some("tmpfs"),
                    nix::mount::MsFlags::empty(),
                    Some(format!("size={size}m").as_str()),
                )
                .unwrap();
                std::fs::create_dir_all(small.join("store")).unwrap();
                let filler = small.join("filler");
                let free_mib = 1 + self.rng.below(self.store_mib + self.store_mib / 8);
                let st = Command::new("dd")
                    .args(["if=/dev/zero", "bs=1M", &format!("count={}", size - free_mib)])
                    .arg(format!("of={}", filler.display()))
                    .stderr(Stdio::null())
                    .status()
                    .unwrap();
                assert!(st.success());
                let store = small.join("store");
                let mut cmd = self.sb.cmd(&["pull", "-q", &deb]);
                cmd.env("DRUN_ROOT", &store);
                let out = run(cmd, Duration::from_secs(300));
                let full = out.stderr.contains("No space left on device");
                if !out.status.success() && !full {
                    self.fail(fault, format!("the pull failed other than for space: {}", out.stderr));
                }
                killed = full;
                let found = self.after_fault(fault, Some(&store));
                std::fs::remove_file(&filler).unwrap();
                self.pull_and_run(fault, &deb, Some(&store));
                self.after_next(fault, found, Some(&store));
                nix::mount::umount2(&small, nix::mount::MntFlags::MNT_DETACH).unwrap();
            }
        }
        let t = self.tally.entry(fault).or_default();
        if killed {
            t.injected += 1;
            if fail_point {
                t.at_fail_point += 1;
            }
        }
        t.drops += drops;
    }

    fn print_summary(&self, seed: u64, took: Duration) {
        eprintln!("\nchaos campaign: seed {seed}, {:.0} s", took.as_secs_f64());
        eprintln!(
            "{:<22} {:>5} {:>8} {:>6} {:>6} {:>6} {:>7} {:>5} {:>7} {:>6} {:>7} {:>5} {:>5}",
            "fault",
            "iter",
            "injected",
            "at-fp",
            "drops",
            "stale",
            "staging",
            "cache",
            "corrupt",
            "next",
            "repair",
            "leaks",
            "fail"
        );
        let mut total = Tally::default();
        for (k, t) in &self.tally {
            eprintln!(
                "{:<22} {:>5} {:>8} {:>6} {:>6} {:>6} {:>7} {:>5} {:>7} {:>6} {:>7} {:>5} {:>5}",
                format!("{k:?}"),
                t.iterations,
                t.injected,
                t.at_fail_point,
                t.drops,
                t.stale_runs,
                t.staging,
                t.cache_debris,
                t.corrupt,
                t.cleared_by_next,
                t.cleared_by_repair,
                t.leaks,
                t.failures
            );
            total.iterations += t.iterations;
            total.injected += t.injected;
            total.at_fail_point += t.at_fail_point;
            total.drops += t.drops;
            total.stale_runs += t.stale_runs;
            total.staging += t.staging;
            total.cache_debris += t.cache_debris;
            total.corrupt += t.corrupt;
            total.cleared_by_next += t.cleared_by_next;
            total.cleared_by_repair += t.cleared_by_repair;
            total.leaks += t.leaks;
            total.failures += t.failures;
        }
        eprintln!(
            "{:<22} {:>5} {:>8} {:>6} {:>6} {:>6} {:>7} {:>5} {:>7} {:>6} {:>7} {:>5} {:>5}",
            "total",
            total.iterations,
            total.injected,
            total.at_fail_point,
            total.drops,
            total.stale_runs,
            total.staging,
            total.cache_debris,
            total.corrupt,
            total.cleared_by_next,
            total.cleared_by_repair,
            total.leaks,
            total.failures
        );
    }
}

#[test]
#[ignore = "make test-chaos: the crash campaign (minutes; root, registries)"]
fn crash_campaign() {
    assert!(
        is_root(),
        "the crash campaign mounts tmpfs stores and runs containers: run it as root"
    );
    let seed = seed("DRUN_CHAOS_SEED");
    let iterations = env_count("DRUN_CHAOS_ITERATIONS", 200);
    eprintln!("chaos campaign: seed {seed} (DRUN_CHAOS_SEED={seed} replays it), {iterations} iterations");
    let sb = Sandbox::new();
    let scope = CgroupScope::enter(&format!("drun-chaos-{}", std::process::id()));
    let project = sb.path().join("project");
    std::fs::create_dir_all(&project).unwrap();
    let workflow = project.join("workflow.yaml");
    std::fs::write(&workflow, WORKFLOW.replace("{busybox}", &busybox())).unwrap();
    // Unfaulted durations first.
    let t = Instant::now();
    sb.drun(&["pull", "-q", &debian()]).ok();
    let pull_time = t.elapsed();
    let du = Command::new("du").arg("-sm").arg(sb.store()).output().unwrap();
    let store_mib: u64 = String::from_utf8_lossy(&du.stdout)
        .split_whitespace()
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap();
    let t = Instant::now();
    sb.drun(&["pull", "-q", &busybox()]).ok();
    let small_pull_time = t.elapsed();
    let t = Instant::now();
    sb.drun(&["run", "-q", "--pull=never", &busybox(), "true"]).ok();
    let run_time = t.elapsed();
    sb.drun(&["run", "-q", workflow.to_str().unwrap()]).ok();
    eprintln!("unfaulted: pull {pull_time:?} (busybox {small_pull_time:?}), run {run_time:?}; the image takes {store_mib} MiB");
    let mut c = Campaign {
        sb,
        scope,
        rng: Rng::new(seed),
        tally: BTreeMap::new(),
        failures: vec![],
        pull_time,
        small_pull_time,
        run_time,
        store_mib,
        project,
        workflow,
    };
    // DRUN_CHAOS_FAULTS=FullDisk,RunCleanup: only those kinds.
    let only = std::env::var("DRUN_CHAOS_FAULTS").unwrap_or_default();
    let kinds: Vec<Fault> = FAULTS
        .into_iter()
        .filter(|f| only.is_empty() || only.split(',').any(|o| o == format!("{f:?}")))
        .collect();
    assert!(!kinds.is_empty(), "DRUN_CHAOS_FAULTS={only:?} names none of {FAULTS:?}");
    let start = Instant::now();
    for i in 0..iterations {
        let fault = c.rng.pick(&kinds);
        if i % 10 == 0 {
            eprintln!("iteration {i}/{iterations} ({:.0} s)", start.elapsed().as_secs_f64());
        }
        c.iteration(fault);
    }
    c.print_summary(seed, start.elapsed());
    assert!(
        c.failures.is_empty(),
        "{} failure(s):\n{}",
        c.failures.len(),
        c.failures.join("\n")
    );
}
