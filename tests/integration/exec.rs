//! `drun exec` into a running container (issue 17): output and exit statuses, environment, user and working
//! directory, stdin and terminals, the same namespaces, cgroup, capabilities, seccomp filter and
//! no-new-privileges as the container's process (compared with it from the host), and exec'd processes ending
//! with the container, leaving nothing behind. The rootless cases are in `rootless.rs`.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{busybox, leftovers, wait, Output, Sandbox};
use crate::run::ready;

/// A foreground `drun run --name NAME [flags] busybox sleep 600` in the background, once its container runs
/// `sleep`; with the container's host pid.
pub(crate) fn start_named(cmd: Command, ps: &dyn Fn() -> String, name: &str) -> (Child, i32) {
    let mut cmd = cmd;
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let start = Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            let out = wait(child, Duration::from_secs(5));
            panic!("drun exited ({st}) before its container ran: {}", out.stderr);
        }
        let list: serde_json::Value = serde_json::from_str(&ps()).unwrap();
        let pid = list.as_array().unwrap().iter().find_map(|c| {
            (c["name"].as_str() == Some(name))
                .then(|| c["pid"].as_i64())
                .flatten()
                .and_then(|p| i32::try_from(p).ok())
        });
        if let Some(pid) = pid {
            if std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "sleep") {
                return (child, pid);
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "container {name} did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn start(sb: &Sandbox, name: &str, flags: &[&str]) -> (Child, i32) {
    let image = busybox();
    let mut args = vec!["run", "--name", name];
    args.extend_from_slice(flags);
    args.extend_from_slice(&[&image, "sleep", "600"]);
    start_named(sb.cmd(&args), &|| sb.drun(&["ps", "--json"]).ok().stdout, name)
}

/// Ends the container (its init killed) and checks that its drun reports it and that nothing is left.
fn stop(sb: &Sandbox, name: &str, run: Child) {
    sb.drun(&["kill", name]).ok();
    assert_eq!(wait(run, Duration::from_secs(60)).code(), Some(137));
    assert!(leftovers(sb).is_empty(), "{:?}", leftovers(sb));
}

fn exec(sb: &Sandbox, args: &[&str]) -> Output {
    let mut a = vec!["exec"];
    a.extend_from_slice(args);
    sb.drun(&a)
}

/// The lines of /proc/PID/status that name `keys`, as `key:\tvalue`.
pub(crate) fn status_lines(status: &str, keys: &[&str]) -> Vec<String> {
    status
        .lines()
        .filter(|l| keys.iter().any(|k| l.split(':').next() == Some(*k)))
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect()
}

/// What the security checks compare between the container's init and an exec'd process.
pub(crate) const SECURITY_KEYS: &[&str] = &[
    "Seccomp",
    "Seccomp_filters",
    "NoNewPrivs",
    "CapInh",
    "CapPrm",
    "CapEff",
    "CapBnd",
    "CapAmb",
];

/// The probe an exec runs to report on itself: its status lines, cgroups and namespaces.
pub(crate) const SELF_REPORT: &str = "cat /proc/self/status; echo ==; cat /proc/self/cgroup; echo ==; \
                                      for n in mnt pid ipc uts net cgroup user; do readlink /proc/self/ns/$n; done";

/// [`SELF_REPORT`] for the host process `pid`, read from the host.
pub(crate) fn host_report(pid: i32) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let ns: Vec<String> = ["mnt", "pid", "ipc", "uts", "net", "cgroup", "user"]
        .iter()
        .map(|n| {
            std::fs::read_link(format!("/proc/{pid}/ns/{n}"))
                .unwrap()
                .display()
                .to_string()
        })
        .collect();
    format!("{status}==\n{cgroup}==\n{}\n", ns.join("\n"))
}

/// Asserts that the exec'd process's report ([`SELF_REPORT`]) matches the container's init (host pid
/// `init_pid`): security settings and namespaces read from the host, and cgroups as the init's seen from inside
/// (`/proc/1/cgroup`, `init_cgroup`: the same cgroup namespace gives both the same view).
pub(crate) fn assert_same_confinement(exec_report: &str, init_pid: i32, init_cgroup: &str) {
    let init = host_report(init_pid);
    let parts = |r: &str| -> Vec<String> { r.split("==\n").map(str::to_string).collect() };
    let (e, i) = (parts(exec_report), parts(&init));
    assert_eq!(e.len(), 3, "{exec_report}");
    assert_eq!(
        status_lines(&e[0], SECURITY_KEYS),
        status_lines(&i[0], SECURITY_KEYS),
        "security settings differ"
    );
    let sec = status_lines(&e[0], &["Seccomp", "NoNewPrivs"]);
    assert_eq!(sec, ["NoNewPrivs: 1", "Seccomp: 2"], "{exec_report}");
    assert_eq!(e[2].trim(), i[2].trim(), "namespaces differ");
    assert!(!init_cgroup.is_empty());
    assert_eq!(e[1], init_cgroup, "cgroups differ");
}

#[test]
fn exec_shares_the_containers_namespaces_cgroup_capabilities_and_seccomp_filter() {
    let sb = ready();
    // Capabilities other than the default set: the exec'd process must get the container's, not a default.
    let (run, pid) = start(&sb, "conf", &["--cap-add", "SYS_PTRACE", "--cap-drop", "CHOWN"]);
    let report = exec(&sb, &["conf", "sh", "-c", SELF_REPORT]).ok().stdout;
    let init_cgroup = exec(&sb, &["conf", "cat", "/proc/1/cgroup"]).ok().stdout;
    assert_same_confinement(&report, pid, &init_cgroup);
    // With a terminal and as another user, the same filter and flags.
    let out = exec(
        &sb,
        &[
            "-u",
            "nobody",
            "conf",
            "sh",
            "-c",
            "grep -E '^(Seccomp|NoNewPrivs):' /proc/self/status",
        ],
    )
    .ok()
    .stdout;
    assert_eq!(out, "NoNewPrivs:\t1\nSeccomp:\t2\n");
    // The filter itself: a syscall the default profile denies fails in the exec'd process as in the container.
    let out = exec(&sb, &["conf", "sh", "-c", "unshare -U true 2>&1; echo rc=$?"])
        .ok()
        .stdout;
    assert!(out.contains("rc=1") && out.contains("Operation not permitted"), "{out}");
    stop(&sb, "conf", run);
    // A profile libcontainer loads itself (here: no-new-privileges off) would not reach an exec'd process: refused.
    let (run, _) = start(&sb, "nnp", &["--security-opt", "no-new-privileges=false"]);
    exec(&sb, &["nnp", "true"]).fails_with(125, &["seccomp profile", "would not apply to the new process"]);
    // Without a filter at all, exec works, unconfined as the container.
    stop(&sb, "nnp", run);
    let (run, pid) = start(&sb, "unconfined", &["--security-opt", "seccomp=unconfined"]);
    let out = exec(&sb, &["unconfined", "grep", "^Seccomp:", "/proc/self/status"])
        .ok()
        .stdout;
    assert_eq!(out, "Seccomp:\t0\n");
    let report = exec(&sb, &["unconfined", "sh", "-c", SELF_REPORT]).ok().stdout;
    let parts: Vec<&str> = report.split("==\n").collect();
    let init = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert_eq!(
        status_lines(parts[0], SECURITY_KEYS),
        status_lines(&init, SECURITY_KEYS)
    );
    stop(&sb, "unconfined", run);
}

#[test]
fn exec_output_and_exit_statuses_are_dockers() {
    let sb = ready();
    let (run, _) = start(&sb, "codes", &[]);
    assert_eq!(exec(&sb, &["codes", "echo", "hello"]).ok().stdout, "hello\n");
    let out = exec(&sb, &["codes", "sh", "-c", "echo out; echo err >&2; exit 3"]);
    assert_eq!(
        (out.code(), out.stdout.as_str(), out.stderr.as_str()),
        (Some(3), "out\n", "err\n")
    );
    exec(&sb, &["codes", "no-such-cmd"]).fails_with(127, &["no-such-cmd", "not found in $PATH"]);
    exec(&sb, &["codes", "/bin/no-such"]).fails_with(127, &["/bin/no-such"]);
    exec(&sb, &["codes", "/etc/passwd"]).fails_with(126, &["/etc/passwd", "not executable"]);
    exec(&sb, &["codes", "/etc"]).fails_with(126, &["is a directory"]);
    assert_eq!(exec(&sb, &["codes", "sh", "-c", "kill -9 $$"]).code(), Some(137));
    assert_eq!(exec(&sb, &["codes", "sh", "-c", "kill -TERM $$"]).code(), Some(143));
    // The id's prefix works as the name does.
    let list: serde_json::Value = serde_json::from_str(&sb.drun(&["ps", "--json"]).ok().stdout).unwrap();
    let id = list[0]["id"].as_str().unwrap().to_string();
    assert_eq!(exec(&sb, &[&id[..8], "echo", "by-id"]).ok().stdout, "by-id\n");
    // drun's own errors: 125.
    exec(&sb, &["nothing-here", "true"]).fails_with(125, &["no running container \"nothing-here\""]);
    exec(&sb, &["-w", "relative", "codes", "true"]).fails_with(125, &["must be an absolute path"]);
    exec(&sb, &["-w", "/no/such/dir", "codes", "true"]).fails_with(126, &["\"/no/such/dir\"", "no such directory"]);
    exec(&sb, &["-u", "nosuchuser", "codes", "true"]).fails_with(125, &["unable to find user nosuchuser"]);
    stop(&sb, "codes", run);
    // Once the container has ended: a clear error, 125.
    exec(&sb, &["codes", "true"]).fails_with(125, &["no running container \"codes\""]);
}

#[test]
fn exec_environment_user_and_working_directory() {
    let sb = ready();
    let (run, _) = start(
        &sb,
        "env",
        &["-e", "FROM_RUN=run", "-e", "BOTH=run", "-w", "/srv", "-u", "1000:1000"],
    );
    let out = exec(
        &sb,
        &[
            "-e",
            "BOTH=exec",
            "-e",
            "FROM_EXEC=exec",
            "env",
            "sh",
            "-c",
            "echo $FROM_RUN $BOTH $FROM_EXEC $HOME; echo $PATH; pwd; id -u; id -g",
        ],
    )
    .ok()
    .stdout;
    let lines: Vec<&str> = out.lines().collect();
    // The container's environment (-e given at run), the exec's -e over it; the container's user and directory.
    assert_eq!(lines[0], "run exec exec /");
    assert!(lines[1].contains("/bin"), "{out}");
    assert_eq!(&lines[2..], ["/srv", "1000", "1000"]);
    // -u by name (HOME follows it) and by uid:gid, -w.
    let out = exec(
        &sb,
        &[
            "-u",
            "nobody",
            "-w",
            "/tmp",
            "env",
            "sh",
            "-c",
            "id -u; id -g; echo $HOME; pwd",
        ],
    )
    .ok()
    .stdout;
    assert_eq!(out, "65534\n65534\n/nonexistent\n/tmp\n");
    let out = exec(&sb, &["-u", "1234:5678", "env", "sh", "-c", "id -u; id -g"])
        .ok()
        .stdout;
    assert_eq!(out, "1234\n5678\n");
    // A bare -e NAME takes drun's own value.
    let mut c = sb.cmd(&["exec", "-e", "HOSTVAR", "env", "sh", "-c", "echo $HOSTVAR"]);
    c.env("HOSTVAR", "from-host");
    assert_eq!(
        crate::common::run(c, Duration::from_secs(60)).ok().stdout,
        "from-host\n"
    );
    stop(&sb, "env", run);
}

#[test]
fn exec_passes_stdin_only_with_i_and_gives_a_terminal_with_t() {
    use std::io::Write;
    let sb = ready();
    let (run, _) = start(&sb, "io", &[]);
    let interactive = |flags: &[&str]| {
        let mut args = vec!["exec"];
        args.extend_from_slice(flags);
        args.extend_from_slice(&["io", "sh", "-c", "cat; test -t 0 && echo tty || echo no-tty"]);
        let mut c = sb.cmd(&args);
        c.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = c.spawn().unwrap();
        child.stdin.take().unwrap().write_all(b"from stdin\n").unwrap();
        wait(child, Duration::from_secs(60))
    };
    assert_eq!(interactive(&["-i"]).ok().stdout, "from stdin\nno-tty\n");
    // Without -i the process reads /dev/null.
    assert_eq!(interactive(&[]).ok().stdout, "no-tty\n");
    // -t at a terminal: a pty in the container (TERM set), the status passed on.
    let mut c = sb.at_terminal("exec -t io sh -c 'tty; echo $TERM; test -t 0 && test -t 1 && exit 4'");
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    let out = wait(c.spawn().unwrap(), Duration::from_secs(60));
    assert_eq!(out.code(), Some(4), "{}{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains("/dev/pts/") && out.stdout.contains("xterm"),
        "{}",
        out.stdout
    );
    stop(&sb, "io", run);
}

/// Host processes whose command line is exactly `cmdline` (NUL-separated in /proc).
pub(crate) fn processes_running(cmdline: &str) -> Vec<i32> {
    let want: Vec<u8> = cmdline.split(' ').flat_map(|w| w.bytes().chain([0])).collect();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<i32>().ok())
        .filter(|p| std::fs::read(format!("/proc/{p}/cmdline")).is_ok_and(|c| c == want))
        .collect()
}

#[test]
fn exec_processes_end_with_the_container_and_nothing_is_left() {
    let sb = ready();
    let (run, _) = start(&sb, "ends", &[]);
    let mut c = sb.cmd(&["exec", "ends", "sleep", "6131"]);
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    let exec_child = c.spawn().unwrap();
    crate::common::wait_until("the exec'd sleep", || processes_running("sleep 6131").len() == 1);
    // The container ends: the kernel ends every process of its pid namespace, the exec'd one too.
    sb.drun(&["kill", "ends"]).ok();
    assert_eq!(wait(run, Duration::from_secs(60)).code(), Some(137));
    assert_eq!(wait(exec_child, Duration::from_secs(60)).code(), Some(137));
    assert!(processes_running("sleep 6131").is_empty());
    assert!(leftovers(&sb).is_empty(), "{:?}", leftovers(&sb));
    // With the host's pid namespace the container's cgroup is what ends it.
    let (run, _) = start(&sb, "hostpids", &["--pid", "host"]);
    let mut c = sb.cmd(&["exec", "hostpids", "sleep", "6133"]);
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    let exec_child = c.spawn().unwrap();
    crate::common::wait_until("the exec'd sleep", || processes_running("sleep 6133").len() == 1);
    stop(&sb, "hostpids", run);
    assert_eq!(wait(exec_child, Duration::from_secs(60)).code(), Some(137));
    assert!(processes_running("sleep 6133").is_empty());
    // Many execs leave nothing in the container's state while it runs either.
    let (run, _) = start(&sb, "many", &[]);
    for i in 0..5 {
        assert_eq!(exec(&sb, &["many", "sh", "-c", &format!("exit {i}")]).code(), Some(i));
    }
    let lc: Vec<String> = std::fs::read_dir(sb.state().join("libcontainer"))
        .unwrap()
        .flatten()
        .flat_map(|d| std::fs::read_dir(d.path()).unwrap().flatten())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("tenant-"))
        .collect();
    assert!(lc.is_empty(), "{lc:?}");
    stop(&sb, "many", run);
}
