//! `drun run`: real containers from the local registry, checked from inside.

use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::common::*;

/// A sandbox with busybox pulled, so tests time the run, not the pull.
/// A sandbox with busybox pulled (container tests need root).
pub(crate) fn ready() -> Sandbox {
    assert!(is_root(), "container tests need root (make test runs them as root)");
    let sb = Sandbox::new();
    sb.drun(&["pull", "-q", &busybox()]).ok();
    sb
}

/// `drun run [flags] busybox sh -c SCRIPT`.
fn sh(sb: &Sandbox, flags: &[&str], script: &str) -> Output {
    let image = busybox();
    let mut args = vec!["run"];
    args.extend_from_slice(flags);
    args.extend_from_slice(&[&image, "sh", "-c", script]);
    sb.drun(&args)
}

/// A static C probe (see [`static_c`]) mounted read-only at `/NAME` in busybox: a function that runs it with
/// extra `drun run` flags.
fn busybox_probe<'a>(sb: &'a Sandbox, name: &str, source: &str) -> impl Fn(&[&str]) -> Output + 'a {
    let vol = format!("{}:/{name}:ro", static_c(sb.path(), name, source).display());
    let path = format!("/{name}");
    move |flags: &[&str]| {
        let image = busybox();
        let mut args = vec!["run"];
        args.extend_from_slice(flags);
        args.extend_from_slice(&["-v", &vol, &image, &path]);
        sb.drun(&args)
    }
}

/// The container cgroup directories of a run id (from --cidfile), on any hierarchy.
pub(crate) fn cgroup_dirs(id: &str) -> Vec<String> {
    let name = format!("drun-{}", &id[..12]);
    let out = std::process::Command::new("find")
        .args(["/sys/fs/cgroup", "-maxdepth", "6", "-type", "d", "-name", &name])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).lines().map(String::from).collect()
}

/// Docker's `--rm` is accepted (every foreground run is removed when it exits); it once failed as "invalid image
/// reference \"--rm\"".
#[test]
fn dockers_rm_flag_is_accepted() {
    let sb = ready();
    let out = sb.drun(&["run", "--rm", &busybox(), "echo", "removed"]).ok();
    assert_eq!(out.stdout, "removed\n");
    assert!(leftovers(&sb).is_empty(), "{:?}", leftovers(&sb));
    // An option drun does not know is named as such.
    let out = sb.drun(&["run", "--no-such-option", &busybox(), "true"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(
        out.stderr.contains("unknown option \"--no-such-option\""),
        "{}",
        out.stderr
    );
}

#[test]
fn exit_status_is_the_containers() {
    let sb = ready();
    assert_eq!(sh(&sb, &[], "exit 0").code(), Some(0));
    assert_eq!(sh(&sb, &[], "exit 3").code(), Some(3));
    // Killed by a signal: 128 + N. (A PID 1 cannot be SIGKILLed from inside; under --init the shell is PID 2.)
    assert_eq!(sh(&sb, &["--init"], "kill -9 $$").code(), Some(137));
    sb.drun(&["run", &busybox(), "no-such-command"])
        .fails_with(127, &["no-such-command", "not found"]);
    sb.drun(&["run", &busybox(), "/no/such/file"])
        .fails_with(127, &["/no/such/file"]);
    sb.drun(&["run", &busybox(), "/etc/passwd"])
        .fails_with(126, &["/etc/passwd", "cannot execute"]);
    sb.drun(&["run", &busybox(), "/etc"])
        .fails_with(126, &["is a directory"]);
    sb.drun(&["run", "--pull", "never", &debian(), "true"])
        .fails_with(125, &["--pull=never"]);
    sb.drun(&["run", &test_image("nope:latest"), "true"])
        .fails_with(125, &["error: cannot pull"]);
    assert!(leftovers(&sb).is_empty(), "{:?}", leftovers(&sb));
}

#[test]
fn output_streams_in_order_and_stdin_with_i() {
    let sb = ready();
    let out = sh(&sb, &[], "echo one; echo two >&2; echo three").ok();
    assert_eq!(out.stdout, "one\nthree\n");
    assert_eq!(out.stderr, "two\n");
    let mut c = sb.cmd(&["run", "-i", &busybox(), "cat"]);
    c.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"from stdin\n").unwrap();
    }
    let out = wait(child, Duration::from_secs(60)).ok();
    assert_eq!(out.stdout, "from stdin\n");
    // Without -i, stdin is /dev/null.
    assert_eq!(sb.drun(&["run", &busybox(), "cat"]).ok().stdout, "");
}

#[test]
fn image_config_env_user_workdir_hostname() {
    let sb = ready();
    let envfile = sb.path().join("env");
    std::fs::write(&envfile, "# comment\nFROM_FILE=yes\nBOTH=file\n").unwrap();
    let out = sh(
        &sb,
        &[
            "-e",
            "FOO=bar",
            "--env-file",
            envfile.to_str().unwrap(),
            "-e",
            "BOTH=cli",
            "-w",
            "/made/here",
            "--hostname",
            "box1",
        ],
        "echo $FOO $FROM_FILE $BOTH $PATH; pwd; hostname; cat /etc/hostname; grep box1 /etc/hosts | cut -f2; id -u",
    )
    .ok();
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(
        lines[0],
        "bar yes cli /usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    );
    assert_eq!(&lines[1..], &["/made/here", "box1", "box1", "box1", "0"]);
    let passwd = sh(&sb, &[], "grep ^nobody: /etc/passwd").ok().stdout;
    let home = passwd.trim().split(':').nth(5).unwrap().to_string();
    let out = sh(&sb, &["-u", "nobody"], "id -u; id -g; echo $HOME").ok();
    assert_eq!(out.stdout, format!("65534\n65534\n{home}\n"));
    assert_eq!(
        sh(&sb, &["-u", "1234:5678"], "id -u; id -g").ok().stdout,
        "1234\n5678\n"
    );
    sb.drun(&["run", "-u", "mallory", &busybox(), "true"])
        .fails_with(125, &["mallory"]);
    // Entrypoint override; the image's Cmd is sh.
    let out = sb
        .drun(&["run", "--entrypoint", "echo", &busybox(), "via", "entrypoint"])
        .ok();
    assert_eq!(out.stdout, "via entrypoint\n");
    // The host's resolv.conf is the container's.
    let host = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    assert_eq!(sh(&sb, &[], "cat /etc/resolv.conf").ok().stdout, host);
}

#[test]
fn memory_limit_is_visible_enforced_and_not_raisable() {
    let sb = ready();
    let cid = sb.path().join("cid");
    let out = sh(
        &sb,
        &["--memory", "64m", "--cidfile", cid.to_str().unwrap()],
        "cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/memory.max 2>/dev/null; \
         for f in /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/memory.max; do \
           [ -e $f ] && echo 999999999 > $f && echo RAISED; done; \
         rmdir /sys/fs/cgroup/memory 2>/dev/null && echo REMOVED; df -k /dev/shm | tail -1",
    )
    .ok();
    assert!(out.stdout.starts_with("67108864\n"), "{}", out.stdout);
    assert!(
        !out.stdout.contains("RAISED") && !out.stdout.contains("REMOVED"),
        "container root changed its limit: {}",
        out.stdout
    );
    // /dev/shm defaults to the memory limit.
    assert!(
        out.stdout.lines().last().unwrap().split_whitespace().nth(1) == Some("65536"),
        "{}",
        out.stdout
    );
    let id = std::fs::read_to_string(&cid).unwrap();
    assert!(
        cgroup_dirs(&id).is_empty(),
        "cgroup left behind: {:?}",
        cgroup_dirs(&id)
    );

    // Exceeding the limit: tmpfs pages are charged to the cgroup and cannot be swapped: the OOM killer ends it.
    let image = busybox();
    let out = sb.drun(&[
        "run",
        "--memory",
        "32m",
        "--shm-size",
        "256m",
        &image,
        "dd",
        "if=/dev/zero",
        "of=/dev/shm/fill",
        "bs=1M",
        "count=200",
    ]);
    assert_eq!(out.code(), Some(137), "{}", out.stderr);
    assert!(leftovers(&sb).is_empty(), "{:?}", leftovers(&sb));
}

#[test]
fn cpu_and_pids_limits() {
    let sb = ready();
    let out = sh(
        &sb,
        &["--cpus", "0.5", "--pids-limit", "20"],
        "cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us /sys/fs/cgroup/cpu/cpu.cfs_period_us /sys/fs/cgroup/cpu.max 2>/dev/null; \
         cat /sys/fs/cgroup/pids/pids.max /sys/fs/cgroup/pids.max 2>/dev/null; \
         timeout 2 sh -c 'while :; do :; done'; \
         cat /sys/fs/cgroup/cpu/cpu.stat /sys/fs/cgroup/cpu.stat 2>/dev/null | grep -E '^(nr_throttled|throttled_time|throttled_usec)'",
    )
    .ok();
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert!(
        out.stdout.contains("50000\n100000\n") || out.stdout.contains("50000 100000\n"),
        "{}",
        out.stdout
    );
    assert!(lines.contains(&"20"), "{}", out.stdout);
    let throttled: u64 = lines
        .iter()
        .find_map(|l| l.strip_prefix("nr_throttled ").and_then(|v| v.trim().parse().ok()))
        .expect("nr_throttled in cpu.stat");
    assert!(
        throttled > 0,
        "a busy loop under --cpus 0.5 was never throttled: {}",
        out.stdout
    );
    // A fork bomb stops at the pids limit instead of taking the host down: with 10 tasks allowed, the probe (one)
    // makes nine children and the tenth fork fails with EAGAIN. Without a limit the same probe makes all 30.
    let forker = busybox_probe(&sb, "forker", FORK_PROBE);
    let limited = forker(&["--pids-limit", "10"]).ok();
    assert_eq!(limited.stdout, "forked 9, then errno 11\n", "{}", limited.stderr);
    let unlimited = forker(&[]).ok();
    assert_eq!(unlimited.stdout, "forked 30\n", "{}", unlimited.stderr);
}

/// A static probe that forks up to 30 children (each waits to be killed with its pid namespace) and says how
/// many forks worked, and the errno of the one that failed.
const FORK_PROBE: &str = r#"#include <errno.h>
#include <stdio.h>
#include <unistd.h>
int main(void) {
    for (int n = 0; n < 30; n++) {
        pid_t p = fork();
        if (p < 0) { printf("forked %d, then errno %d\n", n, errno); return 0; }
        if (p == 0) { pause(); _exit(0); }
    }
    puts("forked 30");
    return 0;
}
"#;

#[test]
fn shm_size_flag() {
    let sb = ready();
    let out = sh(&sb, &["--shm-size", "1g"], "df -k /dev/shm | tail -1").ok();
    assert_eq!(out.stdout.split_whitespace().nth(1), Some("1048576"), "{}", out.stdout);
}

#[test]
fn default_security_and_privileged() {
    let sb = ready();
    let out = sh(
        &sb,
        &[],
        "grep -E '^(NoNewPrivs|Seccomp):' /proc/self/status; \
         mkdir -p /tmp/m; mount -t tmpfs t /tmp/m 2>/dev/null && echo MOUNTED; \
         unshare -m true 2>/dev/null && echo UNSHARED; \
         ping -c1 -W1 127.0.0.1 >/dev/null 2>&1 && echo PINGED; \
         mknod /tmp/sda b 8 0 2>/dev/null && echo MKNOD; \
         cat /proc/kcore 2>/dev/null | head -c1 | grep -q . && echo KCORE; \
         echo 1 > /proc/sys/vm/drop_caches 2>/dev/null && echo PROCSYS; \
         ls /proc | grep -c '^[0-9]'; ls /dev | tr '\\n' ' '",
    )
    .ok();
    assert!(
        out.stdout.contains("NoNewPrivs:\t1") && out.stdout.contains("Seccomp:\t2"),
        "{}",
        out.stdout
    );
    for bad in ["MOUNTED", "UNSHARED", "PINGED", "MKNOD", "KCORE", "PROCSYS"] {
        assert!(
            !out.stdout.contains(bad),
            "{bad} succeeded under the default profile: {}",
            out.stdout
        );
    }
    // Only the container's own processes are visible (sh, ls, grep).
    let procs: usize = out.stdout.lines().rev().nth(1).unwrap().trim().parse().unwrap();
    assert!(procs <= 4, "host processes visible: {procs}");
    // The standard devices only.
    assert_eq!(
        out.stdout.lines().last().unwrap().trim(),
        "fd full mqueue null ptmx pts random shm stderr stdin stdout tty urandom zero"
    );

    // Deliberate exceptions.
    let out = sh(
        &sb,
        &["--cap-add", "NET_RAW"],
        "ping -c1 -W2 127.0.0.1 >/dev/null && echo PINGED",
    )
    .ok();
    assert!(out.stdout.contains("PINGED"), "{}", out.stderr);
    let out = sh(
        &sb,
        &["--privileged"],
        "mkdir -p /tmp/m; mount -t tmpfs t /tmp/m && echo MOUNTED; grep Seccomp: /proc/self/status",
    )
    .ok();
    assert!(
        out.stdout.contains("MOUNTED") && out.stdout.contains("Seccomp:\t0"),
        "{}",
        out.stdout
    );
    let out = sh(
        &sb,
        &[
            "--security-opt",
            "seccomp=unconfined",
            "--security-opt",
            "no-new-privileges=false",
        ],
        "grep -E '^(NoNewPrivs|Seccomp):' /proc/self/status",
    )
    .ok();
    assert_eq!(out.stdout, "NoNewPrivs:\t0\nSeccomp:\t0\n");
    sb.drun(&["run", "--cap-add", "FLY", &busybox(), "true"])
        .fails_with(125, &["unknown capability"]);
}

#[test]
fn volumes_tmpfs_read_only_and_network_none() {
    let sb = ready();
    let data = sb.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("in"), "from host\n").unwrap();
    let v = format!("{}:/data", data.display());
    let ro = format!("{}:/ro:ro", data.display());
    let out = sh(
        &sb,
        &["-v", &v, "-v", &ro, "--tmpfs", "/scratch:size=1m", "--mount", &format!("type=bind,source={},target=/m,readonly", data.display())],
        "cat /data/in; echo out > /data/out; echo x > /ro/x 2>/dev/null && echo RO-WRITTEN; echo x > /m/x 2>/dev/null && echo M-WRITTEN; \
         df -k /scratch | tail -1",
    )
    .ok();
    assert!(out.stdout.starts_with("from host\n"), "{}", out.stdout);
    assert!(!out.stdout.contains("WRITTEN"), "{}", out.stdout);
    assert_eq!(
        out.stdout.lines().last().unwrap().split_whitespace().nth(1),
        Some("1024")
    );
    assert_eq!(std::fs::read_to_string(data.join("out")).unwrap(), "out\n");

    let out = sh(&sb, &["--read-only"], "touch /x 2>/dev/null && echo WROTE; echo ok").ok();
    assert_eq!(out.stdout, "ok\n");
    // Writes to the root land in the run's own layer and vanish with it.
    sh(&sb, &[], "echo scribble > /etc/passwd").ok();
    assert!(sh(&sb, &[], "cat /etc/passwd").ok().stdout.starts_with("root:"));

    let out = sh(
        &sb,
        &["--network", "none"],
        "cat /proc/net/dev | tail -n +3 | cut -d: -f1 | tr -d ' '; ping -c1 -W1 127.0.0.1 >/dev/null 2>&1; echo",
    )
    .ok();
    assert_eq!(out.stdout.lines().next(), Some("lo"), "{}", out.stdout);
    assert_eq!(
        out.stdout.lines().filter(|l| !l.is_empty()).count(),
        1,
        "{}",
        out.stdout
    );
    // Without --network the container is in the host's network namespace: this test's own, not merely one with
    // the interfaces every namespace has.
    let host = std::fs::read_link("/proc/self/ns/net").unwrap().display().to_string();
    let net_ns = |flags: &[&str]| {
        sh(&sb, flags, "readlink /proc/self/ns/net")
            .ok()
            .stdout
            .trim()
            .to_string()
    };
    assert_eq!(net_ns(&[]), host);
    assert_eq!(net_ns(&["--network", "host"]), host);
    assert_ne!(net_ns(&["--network", "none"]), host);
    sb.drun(&["run", "--network", "bridge", &busybox(), "true"])
        .fails_with(125, &["--network"]);
    sb.drun(&["run", "-v", "/no/such/dir:/x", &busybox(), "true"])
        .fails_with(125, &["/no/such/dir"]);
    assert!(leftovers(&sb).is_empty(), "{:?}", leftovers(&sb));
}

/// The host pids of the running containers' inits (`drun ps --json`).
fn container_pids(sb: &Sandbox) -> Vec<i32> {
    let list: serde_json::Value = serde_json::from_str(&sb.drun(&["ps", "--json"]).ok().stdout).unwrap();
    list.as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["pid"].as_i64().and_then(|p| i32::try_from(p).ok()))
        .collect()
}

/// `root` and its descendants (host pids), with their command names, from /proc.
fn process_tree(root: i32) -> Vec<(i32, String)> {
    let mut procs = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        // `pid (comm) state ppid ...`; comm may hold spaces and parentheses.
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let ppid = stat[close + 1..]
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse::<i32>().ok());
        procs.push((pid, ppid.unwrap_or(0), stat[open + 1..close].to_string()));
    }
    let mut tree: Vec<(i32, String)> = procs
        .iter()
        .filter(|p| p.0 == root)
        .map(|p| (p.0, p.2.clone()))
        .collect();
    let mut i = 0;
    while i < tree.len() {
        let parent = tree[i].0;
        tree.extend(procs.iter().filter(|p| p.1 == parent).map(|p| (p.0, p.2.clone())));
        i += 1;
    }
    tree
}

/// Starts `drun run ...` in the background and returns once the new container runs a process called `ready`
/// (every caller's workload reaches a `sleep` after setting up what the test then signals: a trap, catatonit's
/// handlers). The caller waits for the child.
#[allow(clippy::zombie_processes)]
fn start_until_running(sb: &Sandbox, args: &[&str], ready: &str) -> std::process::Child {
    let before = container_pids(sb);
    let mut c = sb.cmd(args);
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    let start = Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            let out = wait(child, Duration::from_secs(5));
            panic!("drun exited ({st}) before its container ran {ready:?}: {}", out.stderr);
        }
        let running = container_pids(sb).into_iter().filter(|p| !before.contains(p));
        if running.flat_map(process_tree).any(|(_, comm)| comm == ready) {
            return child;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the container did not start {ready:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn signal(child: &std::process::Child, sig: nix::sys::signal::Signal) {
    nix::sys::signal::kill(pid_of(child), sig).unwrap();
}

/// Whether `sig` waits in the shared pending set of process `pid` (drun blocks the signals it forwards and reads
/// them from a signalfd: once read, the bit clears).
fn signal_pending(pid: u32, sig: nix::sys::signal::Signal) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let mask = status
        .lines()
        .find_map(|l| l.strip_prefix("ShdPnd:"))
        .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
        .unwrap_or(0);
    mask & (1u64 << (sig as u32 - 1)) != 0
}

/// A static probe for the zombie check: it forks a child that forks a grandchild and exits, so the grandchild
/// is orphaned and handed to the pid namespace's init; then it says whether that init reaped it ("reaped") or
/// left it a zombie for two seconds ("zombie"). Run as the container's command, the probe itself is PID 1 and
/// reaps nothing; under --init, catatonit is PID 1.
const ORPHAN_PROBE: &str = r#"#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
int main(void) {
    int fds[2];
    if (pipe(fds) != 0) return 2;
    pid_t child = fork();
    if (child == 0) {
        pid_t grandchild = fork();
        if (grandchild == 0) _exit(0);
        write(fds[1], &grandchild, sizeof grandchild);
        _exit(0);
    }
    pid_t orphan = 0;
    if (read(fds[0], &orphan, sizeof orphan) != sizeof orphan) return 2;
    waitpid(child, NULL, 0);
    char path[64], stat[512];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)orphan);
    char state = '?';
    for (int i = 0; i < 200; i++) {
        FILE *f = fopen(path, "r");
        if (!f) { puts("reaped"); return 0; }
        size_t n = fread(stat, 1, sizeof stat - 1, f);
        fclose(f);
        stat[n] = 0;
        char *close = strrchr(stat, ')');
        state = close && close[1] ? close[2] : '?';
        usleep(10000);
    }
    if (state == 'Z') puts("zombie"); else printf("still there, state %c\n", state);
    return 0;
}
"#;

#[test]
fn signals_are_forwarded() {
    use nix::sys::signal::Signal;
    let sb = ready();
    let image = busybox();
    // A handler in the workload sees the forwarded signal (the loop's sleep runs once the trap is set).
    let child = start_until_running(
        &sb,
        &[
            "run",
            &image,
            "sh",
            "-c",
            "trap 'echo got-term; exit 7' TERM; while :; do sleep 0.1; done",
        ],
        "sleep",
    );
    signal(&child, Signal::SIGTERM);
    let out = wait(child, Duration::from_secs(30));
    assert_eq!(out.code(), Some(7), "{}", out.stderr);
    assert_eq!(out.stdout, "got-term\n");

    // PID 1 without a handler ignores SIGTERM; with --init, catatonit forwards it and the sleep dies.
    let child = start_until_running(&sb, &["run", "--init", &image, "sleep", "60"], "sleep");
    signal(&child, Signal::SIGTERM);
    let out = wait(child, Duration::from_secs(30));
    assert_eq!(out.code(), Some(143), "{}", out.stderr);

    // Two SIGINTs within a few seconds kill a container that ignores them: the second is sent once drun has
    // taken the first.
    let child = start_until_running(&sb, &["run", &image, "sleep", "60"], "sleep");
    signal(&child, Signal::SIGINT);
    wait_until("drun to take the first SIGINT", || {
        !signal_pending(child.id(), Signal::SIGINT)
    });
    signal(&child, Signal::SIGINT);
    let out = wait(child, Duration::from_secs(30));
    assert_eq!(out.code(), Some(137), "{}", out.stderr);

    // --init reaps zombies: an orphaned child does not linger as <defunct>. Without --init the probe is PID 1,
    // which reaps nothing: there the orphan stays a zombie, which shows the probe sees one.
    let orphan = busybox_probe(&sb, "orphan", ORPHAN_PROBE);
    let out = orphan(&["--init"]).ok();
    assert_eq!(out.stdout, "reaped\n", "{}", out.stderr);
    let out = orphan(&[]).ok();
    assert_eq!(out.stdout, "zombie\n", "{}", out.stderr);
    assert!(leftovers(&sb).is_empty(), "{:?}", leftovers(&sb));
}

#[test]
fn ps_kill_names_and_concurrency() {
    use nix::sys::signal::Signal;
    let sb = ready();
    let image = busybox();
    let a = start_until_running(&sb, &["run", "--name", "alpha", &image, "sleep", "60"], "sleep");
    sb.drun(&["run", "--name", "alpha", &image, "true"])
        .fails_with(125, &["already running"]);
    let mut b = start_until_running(&sb, &["run", "--name", "beta", &image, "sleep", "60"], "sleep");
    let ps = sb.drun(&["ps"]).ok().stdout;
    assert!(
        ps.contains("alpha") && ps.contains("beta") && ps.contains("sleep 60"),
        "{ps}"
    );
    let json: serde_json::Value = serde_json::from_str(&sb.drun(&["ps", "--json"]).ok().stdout).unwrap();
    assert_eq!(json.as_array().unwrap().len(), 2);
    sb.drun(&["kill", "alpha"]).ok();
    assert_eq!(wait(a, Duration::from_secs(30)).code(), Some(137));
    sb.drun(&["kill", "-s", "TERM", "beta"]).ok();
    // sleep as PID 1 ignores TERM; KILL ends it. (`drun kill` signals the init itself: a TERM that were fatal
    // would have set the exit status, 143, before `drun kill` returned.)
    assert!(b.try_wait().unwrap().is_none(), "TERM ended beta");
    assert!(sb.drun(&["ps"]).ok().stdout.contains("beta"));
    sb.drun(&["kill", "-s", "9", "beta"]).ok();
    assert_eq!(wait(b, Duration::from_secs(30)).code(), Some(137));
    sb.drun(&["kill", "gamma"]).fails_with(125, &["no running container"]);

    // Many at once.
    let children: Vec<_> = (0..4)
        .map(|i| {
            let mut c = sb.cmd(&["run", &image, "sh", "-c", &format!("sleep 0.5; exit {i}")]);
            c.stdout(Stdio::piped()).stderr(Stdio::piped());
            c.spawn().unwrap()
        })
        .collect();
    for (i, c) in (0i32..).zip(children) {
        let out = wait(c, Duration::from_secs(60));
        assert_eq!(out.code(), Some(i), "{}", out.stderr);
    }
    let _ = Signal::SIGKILL;
    assert!(leftovers(&sb).is_empty(), "{:?}", leftovers(&sb));
}

#[test]
fn a_killed_drun_is_cleaned_up_by_the_next() {
    let sb = ready();
    let cid = sb.path().join("cid");
    let mut child = start_until_running(
        &sb,
        &["run", "--cidfile", cid.to_str().unwrap(), &busybox(), "sleep", "60"],
        "sleep",
    );
    let id = std::fs::read_to_string(&cid).unwrap();
    let info: serde_json::Value = serde_json::from_str(&sb.drun(&["ps", "--json"]).ok().stdout).unwrap();
    let pid = i32::try_from(info[0]["pid"].as_i64().unwrap()).unwrap();
    nix::sys::signal::kill(pid_of(&child), nix::sys::signal::Signal::SIGKILL).unwrap();
    wait_until("the killed drun to be gone", || child.try_wait().unwrap().is_some());
    assert!(!leftovers(&sb).is_empty(), "the killed drun left nothing to clean?");
    // The next drun invocation notices the dead supervisor and removes everything, the container's processes too
    // (which also closes the output pipes they inherited from the killed drun).
    sb.drun(&["ps"]).ok();
    let out = wait(child, Duration::from_secs(30));
    assert_eq!(out.status.signal(), Some(9));
    assert!(leftovers(&sb).is_empty(), "{:?}", leftovers(&sb));
    assert!(cgroup_dirs(&id).is_empty(), "{:?}", cgroup_dirs(&id));
    wait_until("the container process to end", || {
        !std::path::Path::new(&format!("/proc/{pid}")).exists()
            || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .unwrap_or_default()
                .contains(") Z")
    });
}

/// Found by the crash campaign (tests/integration/chaos.rs): the container's init, cloned from drun before its
/// start, holds a copy of the run's lock until its exec. A drun SIGKILLed between creating and starting the
/// container left that init waiting for the start for ever, holding the lock and the caller's output pipes: the
/// run looked live to `drun check` and to the next drun, and was never cleaned up.
#[test]
fn a_drun_killed_between_creating_and_starting_its_container_is_cleaned_up() {
    let sb = ready();
    let mut c = sb.cmd(&["run", &busybox(), "true"]);
    c.env("DRUN_FAILPOINT", "run-created")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    assert_eq!(
        c.status().unwrap().signal(),
        Some(9),
        "fail point run-created not reached"
    );
    let checked = sb.drun(&["check"]);
    assert_eq!(checked.code(), Some(1), "{}", checked.stdout);
    let stale = checked
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("stale run: "))
        .unwrap_or_else(|| panic!("no stale run: {}", checked.stdout));
    let id = stale
        .split_whitespace()
        .next()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .to_string();
    // The next drun ends the waiting init and removes the run.
    sb.drun(&["run", "-q", &busybox(), "true"]).ok();
    assert!(leftovers(&sb).is_empty(), "{:?}", leftovers(&sb));
    assert!(cgroup_dirs(&id).is_empty(), "{:?}", cgroup_dirs(&id));
    assert!(sb.drun(&["check"]).ok().stdout.contains("no problems"));
}

/// Found by the crash campaign: a drun SIGKILLed between creating its run directory (under a hidden name) and
/// naming it left the directory for a minute, unseen by `drun check` and the next drun. The hidden name now says
/// which drun creates it, and a later drun removes it as soon as that one is gone.
#[test]
fn a_run_directory_whose_creator_died_is_removed_by_the_next_drun() {
    let sb = ready();
    let mut c = sb.cmd(&["run", &busybox(), "true"]);
    c.env("DRUN_FAILPOINT", "run-dir-hidden")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    assert_eq!(
        c.status().unwrap().signal(),
        Some(9),
        "fail point run-dir-hidden not reached"
    );
    assert_eq!(leftovers(&sb).len(), 1, "{:?}", leftovers(&sb));
    let checked = sb.drun(&["check"]);
    assert!(
        checked.code() == Some(1) && checked.stdout.contains("stale run:"),
        "{}",
        checked.stdout
    );
    sb.drun(&["run", "-q", &busybox(), "true"]).ok();
    assert!(leftovers(&sb).is_empty(), "{:?}", leftovers(&sb));
    assert!(sb.drun(&["check"]).ok().stdout.contains("no problems"));
}

/// Found by the concurrency soak (tests/integration/soak.rs): an image removed by another drun (`rmi`, `prune`)
/// between a run finding it and the run registering its layers made the run fail ("layer … is missing; pull the
/// image again"), although its pull policy would have pulled it. The run now finds (pulls) the same image again.
#[test]
fn an_image_removed_while_a_run_starts_is_pulled_again() {
    let sb = ready();
    let flag = sb.path().join("paused");
    std::fs::write(&flag, "").unwrap();
    let mut c = sb.cmd(&["run", "-q", &busybox(), "echo", "ran"]);
    c.env("DRUN_PAUSEPOINT", format!("run-image-found:{}", flag.display()))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = c.spawn().unwrap();
    let reached = sb.path().join("paused.reached");
    wait_until("the run to find its image", || reached.exists());
    sb.drun(&["rmi", &busybox()]).ok();
    assert!(sb.entries("layers/host").is_empty(), "{:?}", sb.entries("layers/host"));
    std::fs::remove_file(&flag).unwrap();
    let out = wait(child, Duration::from_secs(120)).ok();
    assert_eq!(out.stdout, "ran\n");
    assert!(leftovers(&sb).is_empty(), "{:?}", leftovers(&sb));
    // With --pull=never it stays an error.
    std::fs::write(&flag, "").unwrap();
    let _ = std::fs::remove_file(&reached);
    let mut c = sb.cmd(&["run", "-q", "--pull=never", &busybox(), "true"]);
    c.env("DRUN_PAUSEPOINT", format!("run-image-found:{}", flag.display()))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = c.spawn().unwrap();
    wait_until("the run to find its image", || reached.exists());
    sb.drun(&["rmi", &busybox()]).ok();
    std::fs::remove_file(&flag).unwrap();
    wait(child, Duration::from_secs(120)).fails_with(125, &["is missing; pull the image again"]);
}

#[test]
fn tty_gives_the_container_a_real_terminal() {
    let sb = ready();
    let c = sb.at_terminal(&format!(
        "run -t {} sh -c 'tty; test -t 0 && test -t 1 && echo BOTH-TTY; exit 4'",
        busybox()
    ));
    let out = run(c, Duration::from_secs(60));
    assert_eq!(out.code(), Some(4), "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains("/dev/pts/0") && out.stdout.contains("BOTH-TTY"),
        "{}",
        out.stdout
    );
    // Without a terminal around drun, -t still gives the container one.
    let out = sh(&sb, &["-t"], "tty").ok();
    assert_eq!(out.stdout.trim(), "/dev/pts/0");
    assert!(leftovers(&sb).is_empty(), "{:?}", leftovers(&sb));
}

#[test]
fn flattened_root_when_overlay_is_unavailable() {
    let sb = ready();
    let deb = debian();
    sb.drun(&["pull", "-q", &deb]).ok();
    let script = "test -e /opt/keep/gone && echo GONE-VISIBLE; test -e /opt/replaced/old && echo OPAQUE-BROKEN; \
                  cat /opt/keep/changed /opt/replaced/new; stat -c '%u %a' /opt/perm/setuid; \
                  echo scribble > /opt/keep/stays; grep -c overlay /proc/mounts || true";
    let out = sb
        .drun_with(
            &["run", &deb, "sh", "-c", script],
            &[("DRUN_ROOTFS", "flatten".as_ref())],
        )
        .ok();
    // Whiteouts and the opaque directory are honoured, owners and modes kept, and the root is not an overlay.
    assert_eq!(out.stdout, "v2\nnew\n0 4755\n0\n", "{}", out.stderr);
    // The store's layers were not touched by the write.
    let roots = sb.layer_roots(&deb);
    assert_eq!(read_in_layers(&roots, "opt/keep/stays").unwrap(), "stays\n");
    assert!(leftovers(&sb).is_empty(), "{:?}", leftovers(&sb));
}

#[test]
fn host_pid_and_ipc_namespaces_and_the_slurm_default() {
    let sb = ready();
    let count = "ls /proc | grep -c '^[0-9]'";
    let private: u32 = sh(&sb, &[], count).ok().stdout.trim().parse().unwrap();
    let host: u32 = sh(&sb, &["--pid", "host"], count).ok().stdout.trim().parse().unwrap();
    assert!(private <= 4 && host > 10, "private {private}, host {host}");
    // --ipc host shares the host's /dev/shm, as MPI ranks and CUDA IPC on one node need.
    let name = format!("drun-it-{}", std::process::id());
    sh(&sb, &["--ipc", "host"], &format!("echo shared > /dev/shm/{name}")).ok();
    let shm = std::path::Path::new("/dev/shm").join(&name);
    assert_eq!(std::fs::read_to_string(&shm).unwrap(), "shared\n");
    std::fs::remove_file(&shm).unwrap();
    // Inside a Slurm job both default to the host's; --pid private still wins.
    let in_job = sb
        .drun_with(
            &["run", &busybox(), "sh", "-c", count],
            &[("SLURM_JOB_ID", "42".as_ref())],
        )
        .ok();
    assert!(in_job.stdout.trim().parse::<u32>().unwrap() > 10, "{}", in_job.stdout);
    let forced = sb
        .drun_with(
            &["run", "--pid", "private", &busybox(), "sh", "-c", count],
            &[("SLURM_JOB_ID", "42".as_ref())],
        )
        .ok();
    assert!(forced.stdout.trim().parse::<u32>().unwrap() <= 4);
    // A /dev/shm size asked for in a job gets its own /dev/shm of that size; with --ipc host it cannot be had,
    // and drun says so.
    let df = "df -k /dev/shm | tail -1 | awk '{print $2}'";
    let sized = sb
        .drun_with(
            &["run", "--shm-size", "16m", &busybox(), "sh", "-c", df],
            &[("SLURM_JOB_ID", "42".as_ref())],
        )
        .ok();
    assert_eq!(sized.stdout, "16384\n");
    let ignored = sh(&sb, &["--ipc", "host", "--shm-size", "16m"], df).ok();
    assert_ne!(ignored.stdout, "16384\n");
    assert!(ignored.stderr.contains("is NOT applied"), "{}", ignored.stderr);
    sb.drun(&["run", "--pid", "sideways", &busybox(), "true"])
        .fails_with(125, &["--pid"]);
}

#[test]
fn seccomp_blocks_keyctl_and_bpf() {
    let sb = ready();
    // busybox has no keyctl applet: a tiny static probe reports the errno of each syscall (0 = allowed).
    let probe = busybox_probe(
        &sb,
        "probe",
        "#include <errno.h>\n#include <stdio.h>\n#include <unistd.h>\n#include <sys/syscall.h>\n\
         static int try(long r) { return r < 0 ? errno : 0; }\n\
         int main(void) {\n\
           printf(\"keyctl=%d\\n\", try(syscall(SYS_keyctl, 0 /* KEYCTL_GET_KEYRING_ID */, -3 /* session */, 0)));\n\
           printf(\"bpf=%d\\n\", try(syscall(SYS_bpf, 0 /* BPF_MAP_CREATE */, 0, 0)));\n\
           return 0;\n\
         }\n",
    );
    let out = probe(&[]).ok();
    assert_eq!(
        out.stdout, "keyctl=1\nbpf=1\n",
        "EPERM expected under the default profile"
    );
    // Unconfined, keyctl reaches the kernel (which answers for itself: no EPERM from seccomp).
    let out = probe(&["--security-opt", "seccomp=unconfined"]).ok();
    assert!(
        out.stdout.starts_with("keyctl=") && !out.stdout.starts_with("keyctl=1\n"),
        "{}",
        out.stdout
    );
}

/// The seccomp program of process `pid` (its most recent filter), read with PTRACE_SECCOMP_GET_FILTER.
fn seccomp_program(pid: i32) -> Vec<u64> {
    use nix::sys::ptrace;
    const PTRACE_SECCOMP_GET_FILTER: libc::c_uint = 0x420c;
    let p = nix::unistd::Pid::from_raw(pid);
    ptrace::seize(p, ptrace::Options::empty()).unwrap();
    ptrace::interrupt(p).unwrap();
    nix::sys::wait::waitpid(p, None).unwrap();
    // SAFETY: with a null buffer the call only returns the number of instructions.
    let n = unsafe { libc::ptrace(PTRACE_SECCOMP_GET_FILTER, pid, 0, std::ptr::null_mut::<libc::c_void>()) };
    let mut prog = vec![0u64; usize::try_from(n).unwrap_or(0)];
    // SAFETY: `prog` has room for the `n` 8-byte instructions the kernel copies.
    let m = unsafe { libc::ptrace(PTRACE_SECCOMP_GET_FILTER, pid, 0, prog.as_mut_ptr()) };
    let _ = ptrace::detach(p, None);
    assert!(n > 0 && m == n, "PTRACE_SECCOMP_GET_FILTER on {pid}: {n}, {m}");
    prog
}

#[test]
fn the_precompiled_seccomp_filter_is_the_one_libcontainer_would_load() {
    let sb = ready();
    let image = busybox();
    let filter_of = |flags: &[&str]| {
        let mut args = vec!["run"];
        args.extend_from_slice(flags);
        args.extend_from_slice(&[&image, "sleep", "60"]);
        let child = start_until_running(&sb, &args, "sleep");
        let info: serde_json::Value = serde_json::from_str(&sb.drun(&["ps", "--json"]).ok().stdout).unwrap();
        let pid = i32::try_from(info[0]["pid"].as_i64().unwrap()).unwrap();
        let prog = seccomp_program(pid);
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).unwrap();
        let out = wait(child, Duration::from_secs(30));
        assert_eq!(out.status.code(), Some(137), "{}", out.stderr);
        prog
    };
    // drun's own: compiled once, cached in the store, installed by drun's executor.
    let drun = filter_of(&[]);
    let cached: Vec<_> = std::fs::read_dir(sb.store().join("cache/seccomp"))
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert_eq!(cached.len(), 1, "{cached:?}");
    // Without no-new-privileges the profile stays in the spec and libcontainer compiles and loads it itself.
    let libcontainer = filter_of(&["--security-opt", "no-new-privileges=false"]);
    assert!(drun.len() > 100, "{} instructions", drun.len());
    assert_eq!(drun.len(), libcontainer.len(), "different program lengths");
    assert!(drun == libcontainer, "the programs differ");
    // The cached program is what was loaded: magic, the program, its sha256.
    let bytes = std::fs::read(&cached[0]).unwrap();
    let from_cache: Vec<u64> = bytes[8..bytes.len() - 32]
        .chunks_exact(8)
        .map(|c| u64::from_ne_bytes(c.try_into().unwrap()))
        .collect();
    assert!(from_cache == drun, "the loaded program is not the cached one");
    // A damaged cache file is noticed, replaced, and the container still runs confined.
    let mut damaged = bytes.clone();
    damaged[8 + 40] ^= 0xff;
    std::fs::write(&cached[0], &damaged).unwrap();
    let out = sh(
        &sb,
        &["--log-level", "warn"],
        "grep Seccomp: /proc/self/status; unshare -m true 2>/dev/null && echo UNSHARED; true",
    )
    .ok();
    assert_eq!(out.stdout, "Seccomp:\t2\n", "{}", out.stderr);
    assert!(out.stderr.contains("corrupt cached seccomp filter"), "{}", out.stderr);
    assert_eq!(
        std::fs::read(&cached[0]).unwrap(),
        bytes,
        "the damaged file was not replaced"
    );
    assert!(leftovers(&sb).is_empty(), "{:?}", leftovers(&sb));
}

#[test]
fn the_root_overlay_is_volatile_and_nothing_is_left() {
    let sb = ready();
    // The upper directory is discarded with the run: overlayfs is told not to sync it (Linux >= 5.10).
    let out = sh(&sb, &[], "grep ' / overlay ' /proc/mounts; echo data > /written").ok();
    assert!(out.stdout.contains("volatile"), "{}", out.stdout);
    assert!(leftovers(&sb).is_empty(), "{:?}", leftovers(&sb));
}

#[test]
fn commands_from_volumes_are_found() {
    let sb = ready();
    let dir = sb.path().join("work");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("run.sh"), "#!/bin/sh\necho from-volume\n").unwrap();
    std::fs::set_permissions(dir.join("run.sh"), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::write(dir.join("data.txt"), "not a program\n").unwrap();
    let vol = format!("{}:/work", dir.display());
    assert_eq!(
        sb.drun(&["run", "-v", &vol, &busybox(), "/work/run.sh"]).ok().stdout,
        "from-volume\n"
    );
    assert_eq!(
        sb.drun(&["run", "-v", &vol, "-w", "/work", &busybox(), "./run.sh"])
            .ok()
            .stdout,
        "from-volume\n"
    );
    sb.drun(&["run", "-v", &vol, &busybox(), "/work/data.txt"])
        .fails_with(126, &["/work/data.txt"]);
    sb.drun(&["run", "-v", &vol, &busybox(), "/work/missing.sh"])
        .fails_with(127, &["/work/missing.sh"]);
}

/// A one-layer image written by the test: a static busybox with the applets the tests use, `/etc/group`, and
/// whatever `extra` adds (hostile entries). Written as an OCI layout with tests/fixtures/mkimage.py; returns its `oci:`
/// reference, already pulled into `sb`.
pub fn tiny_image(sb: &Sandbox, name: &str, extra: &dyn Fn(&mut tar::Builder<std::fs::File>)) -> String {
    let dir = sb.path().join(format!("image-{name}"));
    std::fs::create_dir_all(&dir).unwrap();
    let layer = dir.join("layer.tar");
    let mut b = tar::Builder::new(std::fs::File::create(&layer).unwrap());
    for d in ["bin", "dev", "etc", "tmp"] {
        b.append_data(
            &mut tar_header(tar::EntryType::Directory, 0o755, 0),
            d,
            std::io::empty(),
        )
        .unwrap();
    }
    let busybox = std::fs::read("/bin/busybox").unwrap();
    let mut h = tar_header(tar::EntryType::Regular, 0o755, busybox.len() as u64);
    b.append_data(&mut h, "bin/busybox", busybox.as_slice()).unwrap();
    for applet in ["sh", "cat", "grep", "ls", "true"] {
        b.append_link(
            &mut tar_header(tar::EntryType::Symlink, 0o777, 0),
            format!("bin/{applet}"),
            "busybox",
        )
        .unwrap();
    }
    extra(&mut b);
    b.finish().unwrap();
    drop(b);
    let layout = dir.join("layout");
    let spec = serde_json::json!({
        "layout": layout, "tag": "latest", "created": "2024-01-01T00:00:00Z",
        "images": [{"os": "linux", "architecture": "amd64",
                    "config": {"Cmd": ["/bin/sh"], "Env": ["PATH=/bin"]},
                    "layers": [{"tar": layer, "compression": "none", "created_by": name}]}]
    });
    let spec_file = dir.join("spec.json");
    std::fs::write(&spec_file, spec.to_string()).unwrap();
    mkimage_build(&spec_file);
    let image = format!("oci:{}:latest", layout.display());
    sb.drun(&["pull", "-q", &image]).ok();
    image
}

/// Adds a special file (FIFO or device) or symlink entry to a test layer.
pub fn special(b: &mut tar::Builder<std::fs::File>, path: &str, kind: tar::EntryType, dev: (u32, u32), link: &str) {
    let mut h = tar_header(kind, if kind == tar::EntryType::Symlink { 0o777 } else { 0o644 }, 0);
    // Device numbers written for FIFOs too (0): drun reads them for every special file.
    if matches!(
        kind,
        tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo
    ) {
        h.set_device_major(dev.0).unwrap();
        h.set_device_minor(dev.1).unwrap();
    }
    if kind == tar::EntryType::Symlink {
        b.append_link(&mut h, path, link).unwrap();
    } else {
        b.append_data(&mut h, path, std::io::empty()).unwrap();
    }
}

/// `drun run` with a time limit, drun's address space capped: a hostile image must not make it hang or take the
/// machine's memory (a read of /dev/zero without bound would).
fn run_bounded(sb: &Sandbox, args: &[&str]) -> Output {
    use std::os::unix::process::CommandExt;
    let mut c = sb.cmd(args);
    // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        c.pre_exec(|| {
            let cap = 2 << 30;
            nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_AS, cap, cap).map_err(Into::into)
        });
    }
    run(c, Duration::from_secs(60))
}

#[test]
fn an_images_passwd_that_is_a_fifo_or_dev_zero_is_refused_not_read() {
    let sb = ready();
    let group = |b: &mut tar::Builder<std::fs::File>| {
        let text = b"root:x:0:\nnogroup:x:65534:\n";
        let mut h = tar_header(tar::EntryType::Regular, 0o644, text.len() as u64);
        b.append_data(&mut h, "etc/group", &text[..]).unwrap();
    };
    let fifo = tiny_image(&sb, "passwd-fifo", &|b| {
        group(b);
        special(b, "etc/passwd", tar::EntryType::Fifo, (0, 0), "");
    });
    // A symlink to the image's own /dev/zero (symlinks resolve inside the root), and /etc/group a device itself.
    let zero = tiny_image(&sb, "passwd-zero", &|b| {
        special(b, "dev/zero", tar::EntryType::Char, (1, 5), "");
        special(b, "etc/passwd", tar::EntryType::Symlink, (0, 0), "/dev/zero");
        special(b, "etc/group", tar::EntryType::Char, (1, 5), "");
    });
    for (image, kind) in [(&fifo, "a FIFO"), (&zero, "a character device")] {
        // Root and numeric users run as Docker runs them without a passwd file, with a warning that says why.
        // (Nothing in the container opens them: busybox's `id` would block on the FIFO there too.)
        let ids = "grep -E '^(Uid|Gid):' /proc/self/status";
        let out = run_bounded(&sb, &["run", image, "sh", "-c", ids]).ok();
        assert_eq!(out.stdout, "Uid:\t0\t0\t0\t0\nGid:\t0\t0\t0\t0\n");
        assert!(
            out.stderr.contains("ignoring the image's /etc/passwd") && out.stderr.contains(kind),
            "{}",
            out.stderr
        );
        let out = run_bounded(&sb, &["run", "-u", "65534:65534", image, "sh", "-c", ids]).ok();
        assert_eq!(
            out.stdout,
            "Uid:\t65534\t65534\t65534\t65534\nGid:\t65534\t65534\t65534\t65534\n"
        );
        // A name has to be looked up: a clear error naming the file and what it is.
        run_bounded(&sb, &["run", "-u", "nobody", image, "true"])
            .fails_with(125, &["unable to find user nobody", "/etc/passwd", kind]);
    }
    run_bounded(&sb, &["run", "-u", "0:nogroup", &zero, "true"]).fails_with(
        125,
        &["unable to find group nogroup", "/etc/group", "a character device"],
    );
    assert!(leftovers(&sb).is_empty(), "{:?}", leftovers(&sb));
}

#[test]
fn seccomp_blocks_io_uring_as_docker_does() {
    let sb = ready();
    let uring = busybox_probe(
        &sb,
        "uring",
        "#include <errno.h>\n#include <stdio.h>\n#include <string.h>\n#include <unistd.h>\n#include <sys/syscall.h>\n\
         int main(void) {\n\
           unsigned char params[120]; /* struct io_uring_params */\n\
           memset(params, 0, sizeof params);\n\
           long r = syscall(425 /* io_uring_setup */, 4, params);\n\
           printf(\"io_uring_setup=%d\\n\", r < 0 ? errno : 0);\n\
           return 0;\n\
         }\n",
    );
    let out = uring(&[]).ok();
    assert_eq!(
        out.stdout, "io_uring_setup=1\n",
        "EPERM expected, as under Docker's default profile"
    );
    // Unconfined the kernel answers for itself: it works where the host allows io_uring.
    let host_allows = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled").map_or(true, |v| v.trim() == "0");
    if host_allows {
        let out = uring(&["--security-opt", "seccomp=unconfined"]).ok();
        assert_eq!(out.stdout, "io_uring_setup=0\n");
    }
}

/// Issue 16: MPI's single-copy shared memory (Open MPI's CMA) reads and writes a peer rank's memory with
/// process_vm_readv/process_vm_writev, which Docker's default profile allows and drun's refused (EPERM).
#[test]
fn seccomp_allows_cross_process_memory_access_as_docker_does() {
    let sb = ready();
    let cma = busybox_probe(
        &sb,
        "cma",
        "#define _GNU_SOURCE\n#include <errno.h>\n#include <stdio.h>\n#include <string.h>\n#include <unistd.h>\n\
         #include <sys/uio.h>\n#include <sys/wait.h>\n\
         static char buf[16] = \"parent\";\n\
         int main(void) {\n\
           int up[2], down[2];\n\
           char c, got[16] = {0}, w[16] = \"written\";\n\
           if (pipe(up) || pipe(down)) return 2;\n\
           pid_t pid = fork();\n\
           if (pid == 0) {\n\
             strcpy(buf, \"child\");\n\
             if (write(up[1], \"x\", 1) != 1 || read(down[0], &c, 1) != 1) return 2;\n\
             return strcmp(buf, \"written\") == 0 ? 0 : 1;\n\
           }\n\
           if (read(up[0], &c, 1) != 1) return 2;\n\
           struct iovec local = {got, sizeof buf}, remote = {buf, sizeof buf}, mine = {w, sizeof w};\n\
           if (process_vm_readv(pid, &local, 1, &remote, 1, 0) < 0) printf(\"readv=%d\\n\", errno);\n\
           else printf(\"readv=0 %s\\n\", got);\n\
           printf(\"writev=%d\\n\", process_vm_writev(pid, &mine, 1, &remote, 1, 0) < 0 ? errno : 0);\n\
           if (write(down[1], \"x\", 1) != 1) return 2;\n\
           int st;\n\
           waitpid(pid, &st, 0);\n\
           printf(\"child=%d\\n\", WEXITSTATUS(st));\n\
           return 0;\n\
         }\n",
    );
    let want = "readv=0 child\nwritev=0\nchild=0\n";
    assert_eq!(
        cma(&[]).ok().stdout,
        want,
        "allowed by the default profile, as by Docker's"
    );
    // As another user than root in the container too: the kernel's own check (same user) is what remains.
    assert_eq!(cma(&["-u", "1000:1000"]).ok().stdout, want);
}

#[test]
fn the_primary_group_is_a_supplementary_group_as_in_docker() {
    let sb = ready();
    let deb = debian();
    sb.drun(&["pull", "-q", &deb]).ok();
    let bb = busybox();
    let groups = "id; grep ^Groups: /proc/self/status";
    let run_as = |image: &str, user: Option<&str>| {
        let mut args = vec!["run"];
        if let Some(u) = user {
            args.extend_from_slice(&["-u", u]);
        }
        args.extend_from_slice(&[image, "sh", "-c", groups]);
        sb.drun(&args).ok().stdout
    };
    let cases = [
        (
            deb.as_str(),
            Some("nobody"),
            "uid=65534(nobody) gid=65534(nogroup) groups=65534(nogroup)\nGroups:\t65534 \n",
        ),
        (
            deb.as_str(),
            None,
            "uid=0(root) gid=0(root) groups=0(root)\nGroups:\t0 \n",
        ),
        // A numeric user without a passwd entry: group 0, which Docker also makes a supplementary group.
        (
            deb.as_str(),
            Some("4242"),
            "uid=4242 gid=0(root) groups=0(root)\nGroups:\t0 \n",
        ),
        // A named group replaces the user's groups: it alone.
        (
            deb.as_str(),
            Some("nobody:daemon"),
            "uid=65534(nobody) gid=1(daemon) groups=1(daemon)\nGroups:\t1 \n",
        ),
        (
            bb.as_str(),
            Some("nobody"),
            "uid=65534(nobody) gid=65534(nobody) groups=65534(nobody)\nGroups:\t65534 \n",
        ),
    ];
    for (image, user, want) in cases {
        assert_eq!(run_as(image, user), want, "{image} as {user:?}");
    }
}

#[test]
fn log_output_is_coloured_only_on_a_terminal() {
    let sb = ready();
    // A warning-producing run, its stderr a pipe.
    let out = sh(&sb, &["--ipc", "host", "--shm-size", "16m"], "true").ok();
    assert!(out.stderr.contains("is NOT applied"), "{}", out.stderr);
    assert!(
        !out.stderr.contains("\x1b["),
        "colour codes in a pipe: {:?}",
        out.stderr
    );
    // At a terminal (`script` gives drun one) it is coloured, unless NO_COLOR is set to anything but "".
    let at_terminal = |no_color: Option<&str>| {
        let mut c = sb.at_terminal(&format!("run --ipc host --shm-size 16m {} true", busybox()));
        c.env_remove("NO_COLOR");
        if let Some(v) = no_color {
            c.env("NO_COLOR", v);
        }
        let out = run(c, Duration::from_secs(60));
        assert!(out.stdout.contains("is NOT applied"), "{}", out.stdout);
        out.stdout.contains("\x1b[")
    };
    assert!(at_terminal(None), "no colour at a terminal");
    assert!(at_terminal(Some("")), "an empty NO_COLOR does not count");
    assert!(!at_terminal(Some("1")), "NO_COLOR=1 ignored");
}

#[test]
fn images_of_128_layers_run_through_overlay_without_a_copy() {
    // 128 store paths do not fit overlayfs's one-page mount options: drun gives them with the new mount API's
    // `lowerdir+` where the kernel has it (Linux ≥ 6.8), else as short descriptor paths (forced here with
    // DRUN_ROOTFS=no-lowerdir-plus; the 6.1 VM of tests/vm/cgroup-v2.sh gets it for real). Never a flattened copy.
    let sb = Sandbox::new();
    let layout = many_layer_layout(sb.path(), 128);
    let image = format!("oci:{}:latest", layout.display());
    sb.drun(&["pull", "-q", &image]).ok();
    let new_api = kernel_at_least(6, 8);
    let forms: &[(Option<&str>, &str)] = if new_api {
        &[(None, "LowerdirPlus"), (Some("no-lowerdir-plus"), "DescriptorPaths")]
    } else {
        &[(None, "DescriptorPaths")]
    };
    for (knob, form) in forms {
        let mut c = sb.cmd(&[
            "--log-level",
            "drun=debug",
            "run",
            "-q",
            &image,
            "/bin/busybox",
            "sh",
            "-c",
            MANY_LAYER_SCRIPT,
        ]);
        if let Some(k) = knob {
            c.env("DRUN_ROOTFS", k);
        }
        let out = run(c, Duration::from_secs(300)).ok();
        assert_eq!(out.stdout, many_layer_view(128), "{knob:?}");
        assert!(
            out.stderr.contains(&format!("layers=128 form={form}")),
            "{knob:?}: expected the {form} form:\n{}",
            out.stderr
        );
    }
}
