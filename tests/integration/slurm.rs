//! drun under a real Slurm cluster (hack/slurm.sh: munged, slurmctld with slurmdbd accounting, two slurmd on
//! this host, fake GPU GRES with `ConstrainDevices=yes`), as root and as an unprivileged user.
//!
//! The two GRES GPUs are the simulated driver's nodes (tests/fixtures/fake-driver.sh over the cluster's own dev/nvidia0
//! and dev/nvidia1): a step's devices cgroup denies the GPUs it was not given (EPERM), which is how drun tells
//! which GPUs are the step's.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{self, Output};

pub(crate) struct Cluster {
    dir: tempfile::TempDir,
    /// One cluster at a time in this test binary: both would be nodes n1 and n2 of this host.
    _alone: std::sync::MutexGuard<'static, ()>,
}

static ONE_CLUSTER: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl Cluster {
    pub(crate) fn up() -> Cluster {
        let alone = ONE_CLUSTER.lock().unwrap_or_else(|e| e.into_inner());
        let dir = tempfile::Builder::new().prefix("drun-slurm-").tempdir().unwrap();
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/hack/slurm.sh");
        let cluster = Cluster { dir, _alone: alone };
        let out = common::run(
            {
                let mut c = Command::new("bash");
                c.arg(script).arg("up").arg(cluster.dir.path()).arg("--sacct");
                c
            },
            Duration::from_secs(240),
        );
        assert!(
            out.status.success(),
            "slurm.sh up failed:\n{}\n{}",
            out.stdout,
            out.stderr
        );
        // The simulated driver (libraries, /proc entries, nvidia-smi) around the cluster's GRES device nodes.
        let st = Command::new("bash")
            .arg(common::fixture("fake-driver.sh"))
            .arg(cluster.driver_root())
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(st.success(), "fake-driver.sh failed");
        cluster
    }

    pub(crate) fn path(&self) -> &Path {
        self.dir.path()
    }

    fn driver_root(&self) -> PathBuf {
        self.path().to_path_buf()
    }

    fn conf(&self) -> PathBuf {
        self.path().join("slurm.conf")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/hack/slurm.sh"))
            .arg("down")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Who submits: root with a sandbox store, or a test user (rootless drun) with its own home.
pub(crate) struct Submitter {
    uid: u32,
    gid: u32,
    home: PathBuf,
    pub(crate) work: PathBuf,
    /// The user's XDG_RUNTIME_DIR (drun's state): without one drun would use the fixed /tmp/drun-<uid>.
    runtime: PathBuf,
    _dir: tempfile::TempDir,
}

impl Submitter {
    pub(crate) fn new(user: Option<&str>) -> Submitter {
        let (uid, gid) = match user {
            Some(u) => {
                let u = nix::unistd::User::from_name(u)
                    .unwrap()
                    .unwrap_or_else(|| panic!("test user {u} is missing: run `bash tests/fixtures/test-users.sh up`"));
                (u.uid.as_raw(), u.gid.as_raw())
            }
            None => (0, 0),
        };
        let dir = tempfile::Builder::new().prefix("drun-slurm-user-").tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let (home, work, runtime) = (dir.path().join("home"), dir.path().join("work"), dir.path().join("xdg"));
        for d in [&home, &work, &runtime] {
            std::fs::create_dir(d).unwrap();
            std::os::unix::fs::chown(d, Some(uid), Some(gid)).unwrap();
        }
        std::fs::set_permissions(&runtime, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
        Submitter {
            uid,
            gid,
            home,
            work,
            runtime,
            _dir: dir,
        }
    }

    /// A Slurm client command (srun, sbatch, sacct) as this submitter, in its work directory.
    pub(crate) fn cmd(&self, cluster: &Cluster, prog: &str, args: &[&str]) -> Command {
        let mut c = common::as_user(self.uid, self.gid, &self.home, prog);
        c.args(args)
            .env("SLURM_CONF", cluster.conf())
            .env("DRUN_DRIVER_ROOT", cluster.driver_root())
            .env("DRUN_CONFIG", "/dev/null")
            .current_dir(&self.work);
        if self.uid == 0 {
            // Root's store and state for this test only.
            c.env("DRUN_ROOT", self.home.join("store"))
                .env("DRUN_STATE", self.home.join("state"));
        } else {
            c.env("XDG_RUNTIME_DIR", &self.runtime);
        }
        c
    }

    pub(crate) fn run(&self, cluster: &Cluster, prog: &str, args: &[&str]) -> Output {
        common::run(self.cmd(cluster, prog, args), Duration::from_secs(300))
    }
}

pub(crate) fn drun() -> &'static str {
    env!("CARGO_BIN_EXE_drun")
}

/// `sacct` rows `JobID|JobName|State|ExitCode` of the job named `name` (polled: records arrive just after
/// the job ends).
pub(crate) fn sacct(sub: &Submitter, cluster: &Cluster, name: &str, want_rows: usize) -> Vec<Vec<String>> {
    let start = Instant::now();
    loop {
        let out = sub.run(
            cluster,
            "sacct",
            &["-n", "-P", "-X", "--name", name, "-o", "JobID,JobName,State,ExitCode"],
        );
        let rows: Vec<Vec<String>> = out
            .stdout
            .lines()
            .map(|l| l.split('|').map(String::from).collect())
            .collect();
        let done = rows.len() >= want_rows && rows.iter().all(|r| !["RUNNING", "PENDING"].contains(&r[2].as_str()));
        if done || start.elapsed() > Duration::from_secs(30) {
            return rows;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn scenario(cluster: &Cluster, user: Option<&str>) {
    let who = user.unwrap_or("root");
    let sub = Submitter::new(user);
    let tag = format!("{who}-{}", std::process::id());
    // The image is pulled once by a step on one node (the store is shared by both nodes, as on a shared FS).
    let out = sub.run(cluster, "srun", &["-N1", drun(), "pull", "-q", &common::busybox()]);
    assert!(out.status.success(), "{who}: pull: {}", out.stderr);

    // Two nodes, one container each, no TTY; the step's rank goes in with -e.
    let out = sub.run(
        cluster,
        "srun",
        &[
            "-N2",
            "--label",
            drun(),
            "run",
            "-q",
            "-e",
            "SLURM_NODEID",
            &common::busybox(),
            "sh",
            "-c",
            "echo node=$SLURM_NODEID uid=$(id -u)",
        ],
    );
    assert!(out.status.success(), "{who}: srun -N2: {}", out.stderr);
    let mut lines: Vec<&str> = out
        .stdout
        .lines()
        .map(|l| l.split_once(": ").map_or(l, |x| x.1))
        .collect();
    lines.sort_unstable();
    assert_eq!(lines, ["node=0 uid=0", "node=1 uid=0"], "{who}: {}", out.stdout);

    // The container's exit status is the step's, in srun's status and in sacct.
    let name = format!("exit-{tag}");
    let out = sub.run(
        cluster,
        "srun",
        &[
            "-N1",
            "-J",
            &name,
            drun(),
            "run",
            "-q",
            &common::busybox(),
            "sh",
            "-c",
            "exit 3",
        ],
    );
    assert_eq!(out.code(), Some(3), "{who}: {}", out.stderr);
    let rows = sacct(&sub, cluster, &name, 1);
    assert_eq!(rows.len(), 1, "{who}: {rows:?}");
    assert_eq!(
        (rows[0][2].as_str(), rows[0][3].as_str()),
        ("FAILED", "3:0"),
        "{who}: {rows:?}"
    );

    // Two steps of one job, one GRES GPU each: each container gets exactly the GPU its step was given.
    let script = format!(
        "#!/bin/sh\nfor s in a b; do\n  srun -n1 --exact --gres=gpu:1 {d} run -q --gpus all -e SLURM_STEP_GPUS {img} \
         sh -c 'echo \"$SLURM_STEP_GPUS $(ls /dev | grep -E \"^nvidia[0-9]+$\" | tr \"\\n\" \" \")$NVIDIA_VISIBLE_DEVICES\"' > gpu-$s.txt &\ndone\nwait\n",
        d = drun(),
        img = common::busybox()
    );
    std::fs::write(sub.work.join("gpus.sh"), script).unwrap();
    let name = format!("gpus-{tag}");
    let out = sub.run(
        cluster,
        "sbatch",
        &[
            "--wait",
            "-J",
            &name,
            "-N1",
            "-n2",
            "--gres=gpu:2",
            "-o",
            "gpus.log",
            "gpus.sh",
        ],
    );
    let log = std::fs::read_to_string(sub.work.join("gpus.log")).unwrap_or_default();
    assert!(out.status.success(), "{who}: gpu job: {}\n{log}", out.stderr);
    let mut seen = Vec::new();
    for s in ["a", "b"] {
        let text = std::fs::read_to_string(sub.work.join(format!("gpu-{s}.txt"))).unwrap();
        let f: Vec<&str> = text.split_whitespace().collect();
        // SLURM_STEP_GPUS is Slurm's index into gres.conf's File list: nvidia0, nvidia1.
        assert_eq!(f.len(), 3, "{who}: one GPU per step: {text:?}\n{log}");
        assert_eq!(f[1], format!("nvidia{}", f[0]), "{who}: the step's own GPU: {text:?}");
        assert!(f[2].starts_with("GPU-"), "{who}: {text:?}");
        seen.push(f[1].to_string());
    }
    seen.sort();
    assert_eq!(seen, ["nvidia0", "nvidia1"], "{who}: the two steps got different GPUs");

    // Workflows as batch jobs: artifacts saved (the submitter's) whether they succeed or fail, the exit status in
    // sacct.
    std::fs::write(
        sub.work.join("workflow.yaml"),
        format!(
            "workflows:\n  - name: good\n    provider: docker\n    image: {img}\n    resources:\n      shm_size: 16MB\n    commands:\n      - mkdir -p out\n      - df -k /dev/shm | tail -1 | awk '{{print $2}}' > out/shm.txt\n    artifacts:\n      - out\n  - name: bad\n    provider: docker\n    image: {img}\n    commands:\n      - mkdir -p out\n      - echo from-slurm > out/result.txt\n      - exit 5\n    artifacts:\n      - out\n",
            img = common::busybox()
        ),
    )
    .unwrap();
    for (wf, ok, state, code) in [("good", true, "COMPLETED", "0:0"), ("bad", false, "FAILED", "5:0")] {
        let name = format!("wf-{wf}-{tag}");
        let wrap = format!("{} run -q workflow.yaml {wf}", drun());
        let log = format!("wf-{wf}.log");
        let out = sub.run(
            cluster,
            "sbatch",
            &["--wait", "-J", &name, "-N1", "-o", &log, "--wrap", &wrap],
        );
        let text = std::fs::read_to_string(sub.work.join(&log)).unwrap_or_default();
        assert_eq!(out.status.success(), ok, "{who}: workflow {wf}: {}\n{text}", out.stderr);
        let rows = sacct(&sub, cluster, &name, 1);
        assert_eq!(
            (rows[0][2].as_str(), rows[0][3].as_str()),
            (state, code),
            "{who}: {wf}: {rows:?}"
        );
    }
    let shm = sub.work.join("artifacts/good/out/shm.txt");
    assert_eq!(
        std::fs::read_to_string(&shm).unwrap(),
        "16384\n",
        "{who}: 16 MB /dev/shm"
    );
    let result = sub.work.join("artifacts/bad/out/result.txt");
    assert_eq!(std::fs::read_to_string(&result).unwrap(), "from-slurm\n");
    for f in [&shm, &result] {
        let m = std::fs::metadata(f).unwrap();
        assert_eq!((m.uid(), m.gid()), (sub.uid, sub.gid), "{who}: {}", f.display());
    }
}

#[test]
fn srun_and_sbatch_run_containers_as_root_and_as_a_user() {
    assert!(common::is_root(), "the Slurm daemons run as root");
    let cluster = Cluster::up();
    scenario(&cluster, None);
    scenario(&cluster, Some("drun-sub"));
    scenario(&cluster, Some("drun-nosub"));
}

/// `srun -N2 -n4 drun run …`: each task's container gets MASTER_ADDR (the first node's Slurm NodeAddr, 127.0.0.1
/// here, where the node names n1 and n2 do not resolve), one MASTER_PORT, WORLD_SIZE, RANK, LOCAL_RANK,
/// LOCAL_WORLD_SIZE and NODE_RANK, and the step's SLURM_* variables; `--no-training-env` leaves the training
/// ones out; `drun doctor` in a step shows them.
fn training_env(cluster: &Cluster, user: Option<&str>) {
    let who = user.unwrap_or("root");
    let sub = Submitter::new(user);
    let out = sub.run(cluster, "srun", &["-N1", drun(), "pull", "-q", &common::busybox()]);
    assert!(out.status.success(), "{who}: pull: {}", out.stderr);
    let script =
        "echo $SLURM_PROCID $RANK $WORLD_SIZE $LOCAL_RANK $LOCAL_WORLD_SIZE $NODE_RANK $MASTER_ADDR $MASTER_PORT";
    let out = sub.run(
        cluster,
        "srun",
        &[
            "-N2",
            "-n4",
            drun(),
            "run",
            "-q",
            &common::busybox(),
            "sh",
            "-c",
            script,
        ],
    );
    assert!(out.status.success(), "{who}: {}", out.stderr);
    let mut lines: Vec<Vec<String>> = out
        .stdout
        .lines()
        .map(|l| l.split_whitespace().map(String::from).collect())
        .collect();
    lines.sort();
    assert_eq!(lines.len(), 4, "{who}: {}", out.stdout);
    let port = lines[0][7].clone();
    let port_number: u16 = port.parse().unwrap();
    assert!((10_000..30_000).contains(&port_number), "{who}: {port}");
    for (rank, fields) in lines.iter().enumerate() {
        // Block distribution: tasks 0 and 1 on n1, 2 and 3 on n2.
        let want = [
            rank.to_string(),
            rank.to_string(),
            "4".into(),
            (rank % 2).to_string(),
            "2".into(),
            (rank / 2).to_string(),
            "127.0.0.1".into(),
            port.clone(),
        ];
        assert_eq!(fields, &want, "{who}: task {rank}: {}", out.stdout);
    }

    let out = sub.run(
        cluster,
        "srun",
        &[
            "-N1",
            "-n2",
            drun(),
            "run",
            "-q",
            "--no-training-env",
            &common::busybox(),
            "sh",
            "-c",
            "echo ${RANK-unset} ${MASTER_ADDR-unset} $SLURM_PROCID",
        ],
    );
    assert!(out.status.success(), "{who}: {}", out.stderr);
    let mut lines: Vec<&str> = out.stdout.lines().collect();
    lines.sort_unstable();
    assert_eq!(lines, ["unset unset 0", "unset unset 1"], "{who}");

    let out = sub.run(cluster, "srun", &["-N1", "-n1", drun(), "doctor"]);
    assert!(out.status.success(), "{who}: {}\n{}", out.stdout, out.stderr);
    let line = out
        .stdout
        .lines()
        .find(|l| l.contains("training env"))
        .unwrap_or_else(|| panic!("{who}: {}", out.stdout));
    assert!(
        line.contains("ok") && line.contains("MASTER_ADDR=127.0.0.1") && line.contains("WORLD_SIZE=1 RANK=0"),
        "{who}: {line}"
    );

    // Inside a step the container has the node's hostname (NCCL and MPI find the ranks of one node by it), in
    // /etc/hostname too: here the Slurm node names, as both slurmd share this host's; --hostname still wins.
    let out = sub.run(
        cluster,
        "srun",
        &[
            "-N2",
            "-n2",
            drun(),
            "run",
            "-q",
            &common::busybox(),
            "sh",
            "-c",
            "echo $(hostname) $(cat /etc/hostname)",
        ],
    );
    assert!(out.status.success(), "{who}: {}", out.stderr);
    let mut lines: Vec<&str> = out.stdout.lines().collect();
    lines.sort_unstable();
    assert_eq!(lines, ["n1 n1", "n2 n2"], "{who}");
    let out = sub.run(
        cluster,
        "srun",
        &[
            "-N1",
            drun(),
            "run",
            "-q",
            "--hostname",
            "box",
            &common::busybox(),
            "hostname",
        ],
    );
    assert!(out.status.success(), "{who}: {}", out.stderr);
    assert_eq!(out.stdout.trim(), "box", "{who}");
}

#[test]
fn srun_tasks_get_the_distributed_training_environment() {
    assert!(common::is_root(), "the Slurm daemons run as root");
    let cluster = Cluster::up();
    training_env(&cluster, None);
    training_env(&cluster, Some("drun-sub"));
}

/// The start time (clock ticks after boot) of process `pid`, while it exists.
fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.split_whitespace().nth(19)?.parse().ok()
}

/// `scancel` ends a step's container, even one that ignores SIGTERM: on cgroup v1 the container stays in the
/// step's freezer cgroup, where Slurm's proctrack/cgroup finds what to SIGKILL (it was in a cgroup of its own
/// below drun's memory cgroup, and survived its step, the job left completing). With the host's pid namespace
/// (Slurm's default) the container's `$$` is its host pid.
#[test]
fn scancel_ends_the_containers_of_a_step() {
    assert!(common::is_root(), "the Slurm daemons run as root");
    let cluster = Cluster::up();
    let sub = Submitter::new(None);
    let out = sub.run(&cluster, "srun", &["-N1", drun(), "pull", "-q", &common::busybox()]);
    assert!(out.status.success(), "pull: {}", out.stderr);
    let name = format!("cancel-{}", std::process::id());
    let wrap = format!(
        "srun -n2 {} run -q {} sh -c 'trap \"\" TERM; echo pid=$$; while :; do sleep 1; done'",
        drun(),
        common::busybox()
    );
    let out = sub.run(
        &cluster,
        "sbatch",
        &["-J", &name, "-N1", "-n2", "-o", "cancel.log", "--wrap", &wrap],
    );
    assert!(out.status.success(), "sbatch: {}", out.stderr);
    let log = sub.work.join("cancel.log");
    let read_pids = || -> Vec<i32> {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.strip_prefix("pid=")?.trim().parse().ok())
            .collect()
    };
    let start = Instant::now();
    while read_pids().len() < 2 && start.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_millis(200));
    }
    let pids: Vec<(i32, u64)> = read_pids()
        .into_iter()
        .filter_map(|p| Some((p, start_time(p)?)))
        .collect();
    assert_eq!(
        pids.len(),
        2,
        "two running containers: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );

    let out = sub.run(&cluster, "scancel", &["-n", &name]);
    assert!(out.status.success(), "scancel: {}", out.stderr);
    let alive = || -> Vec<i32> {
        pids.iter()
            .filter(|(p, t)| start_time(*p) == Some(*t))
            .map(|(p, _)| *p)
            .collect()
    };
    // Slurm sends SIGTERM, then SIGKILL after KillWait (2 s).
    let start = Instant::now();
    while !alive().is_empty() && start.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(200));
    }
    let left = alive();
    for &p in &left {
        // Ours (same start time): end them so that the cluster can go down.
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(p), nix::sys::signal::Signal::SIGKILL);
    }
    assert!(left.is_empty(), "processes of the cancelled step still run: {left:?}");
    let start = Instant::now();
    let queued = || sub.run(&cluster, "squeue", &["-h", "-n", &name]).stdout;
    while !queued().trim().is_empty() && start.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(queued().trim(), "", "the job is gone");
    // Slurm SIGKILLed the step's drun processes too, which left their runs' mounts: the next drun command in that
    // state directory (here `ps`) cleans up after runs whose drun is gone.
    let home = sub.home.display().to_string();
    let mounted = || -> Vec<String> {
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .filter(|l| l.contains(&home))
            .map(str::to_string)
            .collect()
    };
    let out = sub.run(&cluster, drun(), &["ps", "-a"]);
    assert!(out.status.success(), "ps: {}", out.stderr);
    assert!(
        mounted().is_empty(),
        "left mounted after the cancelled step: {:#?}",
        mounted()
    );
}

/// The rootless containers of a step on a node share one user namespace (MPI's shared memory needs it), where
/// each drun leaves a holder process (`drun-userns`). A container given CAP_SYS_PTRACE, and seeing the host's
/// pids as every container of a step does, must not reach the host's files through its drun or a holder
/// (`/proc/PID/root`, `/proc/PID/cwd`): both are not dumpable, and the holder's root is an empty tmpfs. (Before,
/// a dumpable drun in the container's namespace let it read the user's 0600 files.)
#[test]
fn rootless_containers_of_a_step_cannot_reach_the_host_through_drun() {
    assert!(common::is_root(), "the Slurm daemons run as root");
    let cluster = Cluster::up();
    let sub = Submitter::new(Some("drun-sub"));
    let secret = sub.home.join("secret");
    std::fs::write(&secret, "host secret\n").unwrap();
    std::os::unix::fs::chown(&secret, Some(sub.uid), Some(sub.gid)).unwrap();
    std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let out = sub.run(&cluster, "srun", &["-N1", drun(), "pull", "-q", &common::busybox()]);
    assert!(out.status.success(), "pull: {}", out.stderr);
    // Every drun process and holder of the node, each rank counting the holders it sees (its own at least).
    let script = format!(
        "n=0; for p in /proc/[0-9]*; do c=$(cat $p/comm 2>/dev/null); \
         case $c in drun-userns) n=$((n+1));; esac; \
         case $c in drun|drun-userns) for f in root cwd; do \
           cat $p/$f{} 2>/dev/null && echo LEAK $c $p/$f; done;; esac; done; echo holders $n",
        secret.display()
    );
    let out = sub.run(
        &cluster,
        "srun",
        &[
            "-N1",
            "-n2",
            drun(),
            "run",
            "-q",
            "--cap-add",
            "SYS_PTRACE",
            &common::busybox(),
            "sh",
            "-c",
            &script,
        ],
    );
    assert!(out.status.success(), "{}\n{}", out.stdout, out.stderr);
    assert!(!out.stdout.contains("host secret"), "{}", out.stdout);
    let holders: Vec<u32> = out
        .stdout
        .lines()
        .filter_map(|l| l.strip_prefix("holders ")?.trim().parse().ok())
        .collect();
    assert_eq!(holders.len(), 2, "{}", out.stdout);
    assert!(
        holders.iter().all(|&n| n >= 1),
        "every rank sees a holder: {}",
        out.stdout
    );

    // A rank joining the namespace is not reachable either, at no moment: the second rank's drun stops right
    // after it joined (pause point `userns-joined`), while the first rank's container looks for it. (Made not
    // dumpable only after joining, it was reachable then, and an O_PATH descriptor of its root stays usable.)
    let w = &sub.work;
    std::fs::write(w.join("pause"), "").unwrap();
    let probe = format!(
        "touch /w/started; i=0; while [ ! -e /w/pause.reached ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done; \
         [ -e /w/pause.reached ] && echo joiner paused; \
         for p in /proc/[0-9]*; do c=$(cat $p/comm 2>/dev/null); case $c in drun|drun-userns) \
           cat $p/root{} 2>/dev/null && echo LEAK $c $p;; esac; done; rm -f /w/pause",
        secret.display()
    );
    let rank = format!(
        "if [ \"$SLURM_PROCID\" = 0 ]; then exec {drun} run -q --cap-add SYS_PTRACE -v {w}:/w {img} sh -c '{probe}'; \
         else while [ ! -e {w}/started ]; do sleep 0.05; done; \
         DRUN_PAUSEPOINT=userns-joined:{w}/pause exec {drun} run -q {img} true; fi",
        drun = drun(),
        w = w.display(),
        img = common::busybox(),
    );
    let out = sub.run(&cluster, "srun", &["-N1", "-n2", "sh", "-c", &rank]);
    assert!(out.status.success(), "{}\n{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("joiner paused"), "{}\n{}", out.stdout, out.stderr);
    assert!(!out.stdout.contains("host secret"), "{}", out.stdout);
}

/// Blob GETs the proxy answered, by path: how many times each blob was downloaded.
fn blob_downloads(proxy: &common::Proxy) -> std::collections::BTreeMap<String, usize> {
    let mut n = std::collections::BTreeMap::new();
    for r in proxy.requests() {
        if r.method == "GET" && r.path.contains("/blobs/sha256:") && r.status.starts_with('2') {
            *n.entry(r.path).or_insert(0) += 1;
        }
    }
    n
}

/// What a run left mounted or running after its step: squashfs or FUSE mounts and loop devices of files below
/// `below` in this (the host's) mount namespace, and squashfuse processes of `uid` still alive (a rootless drun
/// mounts in a namespace of its own, which lives as long as they do).
fn left_mounted(below: &Path, uid: u32) -> Vec<String> {
    let below = below.display().to_string();
    let mut left: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.contains(&below))
        .map(str::to_string)
        .collect();
    for e in std::fs::read_dir("/sys/block").unwrap().flatten() {
        if let Ok(b) = std::fs::read_to_string(e.path().join("loop/backing_file")) {
            if b.contains(&below) {
                left.push(format!("{}: {b}", e.path().display()));
            }
        }
    }
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let owned = e.metadata().is_ok_and(|m| m.uid() == uid);
        let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        if owned && cmdline.starts_with(b"squashfuse\0") {
            left.push(format!(
                "squashfuse {}: {}",
                e.path().display(),
                String::from_utf8_lossy(&cmdline)
            ));
        }
    }
    left
}

/// `srun -N2 -n16 --overcommit drun --image-dir DIR run IMAGE` of an image no node has: one task
/// downloads each blob once and converts once, every task runs, nothing is left mounted; then a producer
/// SIGKILLed before it publishes is recovered from by the next step.
fn image_dir_at_scale(cluster: &Cluster, user: Option<&str>) {
    let who = user.unwrap_or("root");
    let sub = Submitter::new(user);
    let proxy_dir = tempfile::tempdir().unwrap();
    let proxy = common::Proxy::start(proxy_dir.path(), &common::registry(), &[]);
    let image = format!("{}/drun-test/busybox:latest", proxy.addr());
    let srun = |dir: &Path, tasks: &[&str], env: &[(&str, &str)]| {
        let mut args: Vec<&str> = tasks.to_vec();
        let dir = dir.display().to_string();
        args.extend([drun(), "--image-dir", &dir, "run", &image, "cat", "/etc/drun-arch"]);
        let mut c = sub.cmd(cluster, "srun", &args);
        // Each node declares 1000 MB: mksquashfs's caches bounded.
        c.env("DRUN_SQUASH_MEM", "128M");
        for (k, v) in env {
            c.env(k, v);
        }
        common::run(c, Duration::from_secs(300))
    };
    // Eight tasks per node on nodes of two CPUs (this Slurm refuses `--ntasks-per-node=8` above the node's CPUs
    // even with `--overcommit`; `-n16` spreads them eight a node).
    let wide = ["-N2", "-n16", "--overcommit"];

    let dir = sub.work.join("images");
    let out = srun(&dir, &wide, &[]);
    assert!(out.status.success(), "{who}: {}", out.stderr);
    assert_eq!(
        out.stdout.matches("amd64").count(),
        16,
        "{who}: every task ran: {}",
        out.stderr
    );
    assert_eq!(
        out.stderr.matches("converted into the image directory").count(),
        1,
        "{who}: one conversion: {}",
        out.stderr
    );
    let downloads = blob_downloads(&proxy);
    assert!(!downloads.is_empty(), "{who}: {:?}", proxy.requests());
    assert!(
        downloads.values().all(|&n| n == 1),
        "{who}: each blob once: {downloads:#?}"
    );
    let files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".sqsh"))
        .collect();
    assert_eq!(files.len(), 1, "{who}: one image file");
    let left = left_mounted(sub.work.parent().unwrap(), sub.uid);
    assert!(left.is_empty(), "{who}: left mounted: {left:#?}");

    // The producer is SIGKILLed after converting, before publishing (the file renamed into place, no record):
    // its step fails, the next converts again and every task runs.
    let recovered = |dir: &Path, after: &str| {
        let before = blob_downloads(&proxy);
        let out = srun(dir, &wide, &[]);
        assert!(
            out.status.success(),
            "{who}: after a producer killed {after}: {}",
            out.stderr
        );
        assert_eq!(out.stdout.matches("amd64").count(), 16, "{who}: {}", out.stderr);
        assert_eq!(
            out.stderr.matches("converted into the image directory").count(),
            1,
            "{who}: {}",
            out.stderr
        );
        // The layers again, once (a killed producer leaves none; the config may be in the store already).
        let now = blob_downloads(&proxy);
        let again: Vec<usize> = now.iter().map(|(blob, n)| n - before.get(blob).unwrap_or(&0)).collect();
        assert!(
            again.iter().all(|&n| n <= 1) && again.contains(&1),
            "{who}: each blob at most once more: {before:#?} {now:#?}"
        );
        let left = left_mounted(sub.work.parent().unwrap(), sub.uid);
        assert!(left.is_empty(), "{who}: left mounted: {left:#?}");
    };
    let dir = sub.work.join("images-killed");
    let killed = srun(&dir, &["-N1", "-n1"], &[("DRUN_FAILPOINT", "image-dir-before-publish")]);
    assert!(
        !killed.status.success(),
        "{who}: the producer was killed: {}",
        killed.stdout
    );
    recovered(&dir, "before publishing");

    // SIGKILLed mid-conversion (the stream half written into the image file): the next step converts again,
    // and removes the partial file once it is old enough to be no live producer's (aged here).
    let dir = sub.work.join("images-killed-mid");
    let killed = srun(&dir, &["-N1", "-n1"], &[("DRUN_FAILPOINT", "squash-streaming")]);
    assert!(
        !killed.status.success(),
        "{who}: the producer was killed: {}",
        killed.stdout
    );
    let partials = || -> Vec<PathBuf> {
        std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().contains(".drun-tmp-"))
            .map(|e| e.path())
            .collect()
    };
    let partial = partials();
    assert_eq!(
        partial.len(),
        1,
        "{who}: the killed producer's partial file: {partial:?}"
    );
    let hour_ago = std::time::SystemTime::now() - Duration::from_secs(3600);
    std::fs::File::options()
        .write(true)
        .open(&partial[0])
        .unwrap()
        .set_modified(hour_ago)
        .unwrap();
    recovered(&dir, "mid-conversion");
    assert!(partials().is_empty(), "{who}: {:?}", partials());
}

#[test]
fn sixteen_tasks_on_two_nodes_convert_a_cold_image_once_as_root_and_as_a_user() {
    assert!(common::is_root(), "the Slurm daemons run as root");
    let cluster = Cluster::up();
    image_dir_at_scale(&cluster, None);
    image_dir_at_scale(&cluster, Some("drun-sub"));
}

#[test]
#[ignore = "3.4 GB image: make test-scale (tests/fixtures/scale-images.sh large)"]
fn large_scale_image_runs_from_an_image_dir_under_slurm_as_root_and_as_a_user() {
    // The 3.4 GB "CUDA/PyTorch-like" image, cold, from an image directory: one conversion (streamed), then every
    // task of a two-node step sees the image's tree (the kernel's shared mount as root, squashfuse as a user).
    assert!(common::is_root(), "the Slurm daemons run as root");
    let cluster = Cluster::up();
    let image = common::test_image("scale-cuda:large");
    let want = crate::scale::expected("large", "scale-cuda");
    for user in [None, Some("drun-sub")] {
        let who = user.unwrap_or("root");
        let sub = Submitter::new(user);
        let dir = sub.work.join("images").display().to_string();
        let check = crate::scale::check_args(&image, &want);
        let mut args = vec!["-N2", "-n4", "--overcommit", "-l", drun(), "--image-dir", &dir];
        args.extend(check.iter().map(String::as_str));
        let mut c = sub.cmd(&cluster, "srun", &args);
        c.env("DRUN_SQUASH_MEM", "128M");
        let started = Instant::now();
        let out = common::run(c, Duration::from_secs(1800));
        eprintln!(
            "scale: {who}: srun -N2 -n4 of a cold image: {:.1} s",
            started.elapsed().as_secs_f64()
        );
        assert!(out.status.success(), "{who}: {}", out.stderr);
        for task in 0..4 {
            let label = format!("{task}: ");
            let seen: String = out
                .stdout
                .lines()
                .filter_map(|l| l.trim_start().strip_prefix(&label))
                .map(|l| format!("{l}\n"))
                .collect();
            assert_eq!(seen, want.view, "{who}: task {task}: {}", out.stdout);
        }
        assert_eq!(
            out.stderr.matches("converted into the image directory").count(),
            1,
            "{who}: one conversion: {}",
            out.stderr
        );
        let how = if user.is_none() {
            "mounted by the kernel"
        } else {
            "mounted with squashfuse"
        };
        assert!(out.stderr.contains(how), "{who}: {}", out.stderr);
        let left = left_mounted(sub.work.parent().unwrap(), sub.uid);
        assert!(left.is_empty(), "{who}: left mounted: {left:#?}");
    }
}
