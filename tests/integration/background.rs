//! Background containers (`drun run -d`): a service from busybox `httpd` reached by a client container, `logs -f`,
//! `stop`, `wait`, `rm`, `ps -a` after each step, `--rm -d`, a SIGKILLed monitor, log rotation, other users kept
//! out, and rootless detached runs; each with leftover checks (mounts, cgroups, run directories).

use std::os::unix::fs::PermissionsExt;
use std::process::Stdio;
use std::time::Duration;

use crate::common::*;
use crate::rootless::{UserBox, NOSUB, SUB};
use crate::run::{cgroup_dirs, ready};

/// `drun run -d ARGS…`: the container's full id, which is all it prints.
fn detach(sb: &Sandbox, args: &[&str]) -> String {
    let mut a = vec!["run", "-d", "-q"];
    a.extend_from_slice(args);
    let out = sb.drun(&a).ok();
    let id = out.stdout.trim().to_string();
    assert!(
        id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()),
        "not an id: {:?}\n{}",
        out.stdout,
        out.stderr
    );
    id
}

/// The STATUS column of `drun ps -a` for container `id` ("" when it is not listed).
fn status(sb: &Sandbox, id: &str) -> String {
    let ps = sb.drun(&["ps", "-a"]).ok().stdout;
    ps.lines()
        .find(|l| l.starts_with(&id[..12]))
        .map(|l| {
            // After the COMMAND column: STATUS is the 5th column and may contain spaces, as Docker's does.
            let head = ps.lines().next().unwrap();
            let (from, to) = (head.find("STATUS").unwrap(), head.find("     PID").unwrap());
            l.get(from..to.min(l.len())).unwrap_or("").trim().to_string()
        })
        .unwrap_or_default()
}

/// Everything a run may leave: mounts below the sandbox, run and libcontainer directories, its cgroups.
fn all_leftovers(sb: &Sandbox, id: &str) -> Vec<String> {
    let mut left = leftovers(sb);
    left.extend(cgroup_dirs(id));
    left
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn a_detached_http_service_serves_a_client_logs_stops_and_is_removed() {
    let sb = ready();
    let image = busybox();
    let port = free_port();
    let serve = format!(
        "mkdir -p /www && echo hello-from-the-service > /www/index.html && echo serving on {port} && \
         echo to-stderr >&2 && exec httpd -f -v -p 127.0.0.1:{port} -h /www"
    );
    let id = detach(&sb, &["--name", "web", "--network", "host", &image, "sh", "-c", &serve]);
    assert!(status(&sb, &id).starts_with("Up "), "{}", status(&sb, &id));
    let follow = sb
        .cmd(&["logs", "-f", "web"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    // A client container fetches from it (retried until the server listens).
    let url = format!("http://127.0.0.1:{port}/");
    let mut body = String::new();
    wait_until("the service to answer", || {
        let out = sb.drun(&["run", "-q", "--network", "host", &image, "wget", "-q", "-O", "-", &url]);
        body = out.stdout;
        out.status.success()
    });
    assert_eq!(body, "hello-from-the-service\n");
    let logs = sb.drun(&["logs", &id[..12]]).ok().stdout;
    assert!(logs.starts_with(&format!("serving on {port}\nto-stderr\n")), "{logs}");
    assert_eq!(sb.drun(&["logs", "--tail", "1", "web"]).ok().stdout.lines().count(), 1);
    // A second process in the service's container sees its files.
    assert_eq!(
        sb.drun(&["exec", "web", "cat", "/www/index.html"]).ok().stdout,
        "hello-from-the-service\n"
    );

    // httpd as PID 1 has no SIGTERM handler: stop sends SIGKILL once the timeout has passed.
    let started = std::time::Instant::now();
    assert_eq!(sb.drun(&["stop", "-t", "1", "web"]).ok().stdout, "web\n");
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert!(status(&sb, &id).starts_with("Exited (137) "), "{}", status(&sb, &id));
    assert_eq!(sb.drun(&["wait", "web"]).ok().stdout, "137\n");
    // Following ends once the container has ended, with everything it wrote.
    let followed = wait(follow, Duration::from_secs(60));
    assert!(followed.status.success(), "{}", followed.stderr);
    assert!(followed.stdout.starts_with(&logs), "{}", followed.stdout);
    // Nothing of it runs or is mounted; only its record and log stay until `drun rm`.
    let kept: Vec<String> = std::fs::read_dir(sb.state().join("containers").join(&id))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let mut kept_sorted = kept.clone();
    kept_sorted.sort();
    assert_eq!(
        kept_sorted,
        ["container.log", "info.json", "lock", "monitor.log"],
        "{kept:?}"
    );
    assert!(cgroup_dirs(&id).is_empty(), "{:?}", cgroup_dirs(&id));
    assert!(std::fs::read_dir(sb.state().join("libcontainer"))
        .unwrap()
        .next()
        .is_none());
    assert!(
        !std::fs::read_to_string("/proc/self/mounts")
            .unwrap()
            .contains(sb.path().to_str().unwrap()),
        "a mount is left"
    );
    assert_eq!(
        sb.drun(&["logs", "web"]).ok().stdout,
        logs,
        "the log outlives the container"
    );

    assert_eq!(sb.drun(&["rm", "web"]).ok().stdout, "web\n");
    assert_eq!(status(&sb, &id), "", "removed, not listed");
    sb.drun(&["logs", "web"])
        .fails_with(125, &["no such container \"web\""]);
    assert!(all_leftovers(&sb, &id).is_empty(), "{:?}", all_leftovers(&sb, &id));
}

#[test]
fn stop_sends_the_stop_signal_first_and_wait_reports_exit_codes() {
    let sb = ready();
    let image = busybox();
    // A handler for the stop signal ends the container itself, before any SIGKILL.
    let trap =
        |sig: &str, code: u8| format!("trap 'echo caught-{sig}; exit {code}' {sig}; while :; do sleep 0.1; done");
    let term = detach(&sb, &[&image, "sh", "-c", &trap("TERM", 42)]);
    let usr1 = detach(&sb, &["--stop-signal", "USR1", &image, "sh", "-c", &trap("USR1", 43)]);
    let exits = detach(&sb, &[&image, "sh", "-c", "exit 3"]);
    let killed = detach(&sb, &["--init", &image, "sleep", "600"]);
    let started = std::time::Instant::now();
    sb.drun(&["stop", "-t", "120", &term[..12], &usr1[..12]]).ok();
    assert!(started.elapsed() < Duration::from_secs(60), "stop waited for SIGKILL");
    sb.drun(&["kill", "-s", "TERM", &killed]).ok();
    let out = sb.drun(&["wait", &term, &usr1, &exits, &killed]).ok();
    assert_eq!(out.stdout, "42\n43\n3\n143\n", "{}", out.stderr);
    assert_eq!(sb.drun(&["logs", &term]).ok().stdout, "caught-TERM\n");
    assert_eq!(sb.drun(&["logs", &usr1]).ok().stdout, "caught-USR1\n");
    for (id, want) in [
        (&term, "Exited (42) "),
        (&exits, "Exited (3) "),
        (&killed, "Exited (143) "),
    ] {
        assert!(status(&sb, id).starts_with(want), "{}", status(&sb, id));
    }
    // `ps` alone lists running containers only; -q and --json follow -a too.
    assert!(!sb.drun(&["ps"]).ok().stdout.contains(&term[..12]));
    assert_eq!(sb.drun(&["ps", "-a", "-q"]).ok().stdout.lines().count(), 4);
    let json: serde_json::Value = serde_json::from_str(&sb.drun(&["ps", "-a", "--json"]).ok().stdout).unwrap();
    let codes: Vec<i64> = json
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["exit"]["code"].as_i64().unwrap())
        .collect();
    assert_eq!(codes.len(), 4);
    sb.drun(&["rm", &term, &usr1, &exits, &killed]).ok();
    for id in [&term, &usr1, &exits, &killed] {
        assert!(all_leftovers(&sb, id).is_empty(), "{:?}", all_leftovers(&sb, id));
    }
    sb.drun(&["wait", "nosuch"])
        .fails_with(125, &["no such container \"nosuch\""]);
}

/// The restart count `drun ps -a --json` reports for container `id`.
fn restart_count(sb: &Sandbox, id: &str) -> i64 {
    let json: serde_json::Value = serde_json::from_str(&sb.drun(&["ps", "-a", "--json"]).ok().stdout).unwrap();
    let run = json.as_array().unwrap().iter().find(|r| r["id"] == id).cloned();
    run.map_or(-1, |r| r["restart_count"].as_i64().unwrap_or(0))
}

#[test]
fn restart_on_failure_starts_the_same_container_again_until_stopped() {
    let sb = ready();
    let image = busybox();
    // Counts its starts in its own writable layer: the same container, restarted, sees what it wrote before.
    let count = "n=$(cat /starts 2>/dev/null || echo 0); n=$((n+1)); echo $n > /starts; echo start $n";

    // Detached: its monitor restarts it twice (same id, log and writable layer), then records the last exit.
    let fails = detach(
        &sb,
        &[
            "--restart",
            "on-failure:2",
            &image,
            "sh",
            "-c",
            &format!("{count}; exit 3"),
        ],
    );
    assert_eq!(sb.drun(&["wait", &fails]).ok().stdout, "3\n");
    assert_eq!(sb.drun(&["logs", &fails]).ok().stdout, "start 1\nstart 2\nstart 3\n");
    assert_eq!(restart_count(&sb, &fails), 2);
    assert!(
        status(&sb, &fails).starts_with("Exited (3) "),
        "{}",
        status(&sb, &fails)
    );
    // One that succeeds on its second start is not started a third time.
    let second = detach(
        &sb,
        &[
            "--restart",
            "on-failure:5",
            &image,
            "sh",
            "-c",
            &format!("{count}; [ $n -ge 2 ]"),
        ],
    );
    assert_eq!(sb.drun(&["wait", &second]).ok().stdout, "0\n");
    assert_eq!(restart_count(&sb, &second), 1);

    // Stopped on purpose (its stop signal ends it with 143): never restarted, whatever the policy allows.
    let stopped = detach(
        &sb,
        &[
            "--restart",
            "on-failure:5",
            "--init",
            &image,
            "sh",
            "-c",
            &format!("{count}; exec sleep 600"),
        ],
    );
    wait_until("the container to start", || {
        sb.drun(&["logs", &stopped]).ok().stdout == "start 1\n"
    });
    sb.drun(&["stop", "-t", "30", &stopped]).ok();
    assert_eq!(sb.drun(&["wait", &stopped]).ok().stdout, "143\n");
    assert_eq!(restart_count(&sb, &stopped), 0);
    // `drun kill` too; a restart between stop's look at the record and its signal would show as a second start.
    let killed = detach(
        &sb,
        &[
            "--restart",
            "on-failure:5",
            &image,
            "sh",
            "-c",
            &format!("{count}; exec sleep 600"),
        ],
    );
    wait_until("the container to start", || {
        sb.drun(&["logs", &killed]).ok().stdout == "start 1\n"
    });
    sb.drun(&["kill", &killed]).ok();
    assert_eq!(sb.drun(&["wait", &killed]).ok().stdout, "137\n");
    assert_eq!(sb.drun(&["logs", &killed]).ok().stdout, "start 1\n");

    // A stop that comes while it is being restarted (before the new init's pid is recorded, when the stop has
    // nothing to signal): the container is not started again.
    let flag = sb.path().join("restarting");
    std::fs::write(&flag, "").unwrap();
    let script = format!("{count}; exit 3");
    let mut c = sb.cmd(&[
        "run",
        "-d",
        "-q",
        "--restart",
        "on-failure:3",
        &image,
        "sh",
        "-c",
        &script,
    ]);
    c.env("DRUN_PAUSEPOINT", format!("run-restarting:{}", flag.display()));
    let late = run(c, Duration::from_secs(120)).ok().stdout.trim().to_string();
    let reached = sb.path().join("restarting.reached");
    wait_until("the restart's pause point", || reached.exists());
    let stop = sb
        .cmd(&["stop", "-t", "30", &late])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mark = sb.state().join("containers").join(&late).join("stop-requested");
    wait_until("stop's mark", || mark.exists());
    std::fs::remove_file(&flag).unwrap();
    let stopped_late = wait(stop, Duration::from_secs(120));
    assert!(stopped_late.status.success(), "{}", stopped_late.stderr);
    assert_eq!(sb.drun(&["wait", &late]).ok().stdout, "3\n");
    assert_eq!(sb.drun(&["logs", &late]).ok().stdout, "start 1\n");

    // In the foreground too: the same container, drun's status is the last exit's; its cidfile is written once.
    let cidfile = sb.path().join("cid");
    let out = sb.drun(&[
        "run",
        "-q",
        "--cidfile",
        cidfile.to_str().unwrap(),
        "--restart",
        "on-failure:1",
        &image,
        "sh",
        "-c",
        &format!("{count}; exit 4"),
    ]);
    assert_eq!(
        (out.code(), out.stdout.as_str()),
        (Some(4), "start 1\nstart 2\n"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("restarting it (1 of 1, --restart on-failure)"),
        "{}",
        out.stderr
    );
    // As Docker: a container removed when it exits cannot be restarted.
    sb.drun(&["run", "-d", "--rm", "--restart", "on-failure:1", &image, "true"])
        .fails_with(125, &["--rm and --restart conflict"]);

    assert_eq!(std::fs::read_to_string(&cidfile).unwrap().len(), 64);
    sb.drun(&["rm", &fails, &second, &stopped, &killed, &late]).ok();
    for id in [&fails, &second, &stopped, &killed, &late] {
        assert!(all_leftovers(&sb, id).is_empty(), "{:?}", all_leftovers(&sb, id));
    }
}

#[test]
fn rm_refuses_a_running_container_and_names_stay_unique_until_rm() {
    let sb = ready();
    let image = busybox();
    let id = detach(&sb, &["--name", "svc", &image, "sleep", "600"]);
    sb.drun(&["run", "-d", "--name", "svc", &image, "true"])
        .fails_with(125, &["already running"]);
    sb.drun(&["rm", "svc"])
        .fails_with(125, &["it is running", "drun rm -f"]);
    assert!(status(&sb, &id).starts_with("Up "));
    assert_eq!(sb.drun(&["rm", "-f", "svc"]).ok().stdout, "svc\n");
    assert!(all_leftovers(&sb, &id).is_empty(), "{:?}", all_leftovers(&sb, &id));

    // An ended container keeps its name until it is removed, for foreground runs too.
    let ended = detach(&sb, &["--name", "svc", &image, "true"]);
    assert_eq!(sb.drun(&["wait", "svc"]).ok().stdout, "0\n");
    sb.drun(&["run", "--name", "svc", &image, "true"])
        .fails_with(125, &["already in use by container", &ended[..12], "drun rm"]);
    sb.drun(&["rm", "svc"]).ok();
    sb.drun(&["run", "--name", "svc", &image, "true"]).ok();
    assert!(
        all_leftovers(&sb, &ended).is_empty(),
        "{:?}",
        all_leftovers(&sb, &ended)
    );
}

#[test]
fn detached_runs_keep_stdin_open_with_i_and_log_their_terminal_with_t() {
    let sb = ready();
    let image = busybox();
    let cat = detach(&sb, &["-i", &image, "cat"]);
    let no_input = detach(&sb, &[&image, "cat"]);
    let shell = detach(&sb, &["-it", "--name", "box", &image, "sh"]);
    let tty = detach(&sb, &["-t", &image, "sh", "-c", "tty; echo on-the-terminal"]);
    assert_eq!(sb.drun(&["wait", &no_input, &tty]).ok().stdout, "0\n0\n");
    assert_eq!(
        sb.drun(&["logs", &tty]).ok().stdout,
        "/dev/pts/0\r\non-the-terminal\r\n"
    );
    wait_until("the shell's prompt in its log", || {
        sb.drun(&["logs", "box"]).stdout.contains("/ # ")
    });
    std::thread::sleep(Duration::from_secs(1));
    for id in [&cat, &shell] {
        assert!(status(&sb, id).starts_with("Up "), "{}", status(&sb, id));
    }
    sb.drun(&["rm", "-f", &cat, &shell, &no_input, &tty]).ok();
    for id in [&cat, &shell, &no_input, &tty] {
        assert!(all_leftovers(&sb, id).is_empty(), "{:?}", all_leftovers(&sb, id));
    }
}

#[test]
fn a_detached_rm_run_leaves_nothing_and_still_reports_its_exit_code() {
    let sb = ready();
    let id = detach(&sb, &["--rm", &busybox(), "sh", "-c", "echo bye; sleep 1; exit 5"]);
    assert!(status(&sb, &id).starts_with("Up "), "{}", status(&sb, &id));
    assert_eq!(sb.drun(&["logs", "-f", &id]).ok().stdout, "bye\n");
    // The directory may be gone already: the code comes from the lock file `wait` holds open.
    let out = sb.drun(&["wait", &id]);
    if out.code() == Some(0) {
        assert_eq!(out.stdout, "5\n");
    } else {
        out.fails_with(125, &["no such container"]);
    }
    let id2 = detach(&sb, &["--rm", &busybox(), "sh", "-c", "sleep 2; exit 6"]);
    assert_eq!(sb.drun(&["wait", &id2]).ok().stdout, "6\n");
    wait_until("the --rm run to be removed", || status(&sb, &id2).is_empty());
    assert_eq!(sb.drun(&["ps", "-a", "-q"]).ok().stdout, "");
    for id in [&id, &id2] {
        assert!(all_leftovers(&sb, id).is_empty(), "{:?}", all_leftovers(&sb, id));
    }
}

#[test]
fn a_sigkilled_monitor_is_cleaned_up_and_listed_as_unknown() {
    let sb = ready();
    let id = detach(&sb, &["--name", "orphan", &busybox(), "sleep", "600"]);
    let json: serde_json::Value = serde_json::from_str(&sb.drun(&["ps", "--json"]).ok().stdout).unwrap();
    let pid = i32::try_from(json[0]["pid"].as_i64().unwrap()).unwrap();
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let monitor: i32 = stat[stat.rfind(')').unwrap() + 2..]
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let cmdline = std::fs::read_to_string(format!("/proc/{monitor}/cmdline")).unwrap();
    assert!(
        cmdline.contains("drun") && cmdline.contains("-d"),
        "the init's parent is the monitor: {cmdline:?}"
    );
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(monitor), nix::sys::signal::Signal::SIGKILL).unwrap();
    wait_until("the monitor to be gone", || {
        std::fs::read_to_string(format!("/proc/{monitor}/stat")).map_or(true, |s| s.contains(") Z"))
    });
    assert!(
        !cgroup_dirs(&id).is_empty(),
        "the container outlives its monitor until a drun reaps it"
    );
    // The next drun ends the container and cleans up, but keeps the record: its end was not seen.
    let st = status(&sb, &id);
    assert!(st.starts_with("Unknown (monitor killed) "), "{st}");
    wait_until("the container process to end", || {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |s| s.contains(") Z"))
    });
    assert!(cgroup_dirs(&id).is_empty(), "{:?}", cgroup_dirs(&id));
    sb.drun(&["wait", "orphan"]).fails_with(125, &["monitor was killed"]);
    sb.drun(&["rm", "orphan"]).ok();
    assert!(all_leftovers(&sb, &id).is_empty(), "{:?}", all_leftovers(&sb, &id));
}

#[test]
fn a_detached_containers_log_is_rotated_within_its_bounds() {
    let sb = ready();
    // About 580 kB of output into at most 2 × 64 KiB.
    let script = "i=0; while [ $i -lt 20000 ]; do echo \"line $i of the detached log test\"; i=$((i+1)); done";
    let id = detach(
        &sb,
        &[
            "--log-opt",
            "max-size=64k",
            "--log-opt",
            "max-file=2",
            &busybox(),
            "sh",
            "-c",
            script,
        ],
    );
    assert_eq!(sb.drun(&["wait", &id]).ok().stdout, "0\n");
    let dir = sb.state().join("containers").join(&id);
    let sizes: Vec<(String, u64)> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("container.log"))
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                e.metadata().unwrap().len(),
            )
        })
        .collect();
    assert_eq!(sizes.len(), 2, "{sizes:?}");
    assert!(sizes.iter().all(|(_, n)| *n <= 64 << 10), "{sizes:?}");
    let logs = sb.drun(&["logs", &id]).ok().stdout;
    assert!(
        logs.len() as u64 <= 128 << 10 && logs.len() > 64 << 10,
        "{}",
        logs.len()
    );
    assert!(logs.ends_with("line 19999 of the detached log test\n"));
    assert_eq!(
        sb.drun(&["logs", "--tail", "2", &id]).ok().stdout,
        "line 19998 of the detached log test\nline 19999 of the detached log test\n"
    );
    // Foreground runs take no --log-opt, and a bad one is named.
    sb.drun(&["run", "--log-opt", "max-size=1k", &busybox(), "true"])
        .fails_with(125, &["--log-opt is for detached runs"]);
    sb.drun(&["run", "-d", "--log-opt", "max-file=0", &busybox(), "true"])
        .fails_with(125, &["invalid --log-opt \"max-file=0\""]);
    sb.drun(&["rm", &id]).ok();
    assert!(all_leftovers(&sb, &id).is_empty(), "{:?}", all_leftovers(&sb, &id));
}

#[test]
fn other_users_can_neither_see_nor_touch_a_detached_container() {
    let sb = ready();
    // Others may traverse to the state directory itself (which stays private): the refusal is drun's, not a
    // side effect of the sandbox's own mode.
    std::fs::set_permissions(sb.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let id = detach(
        &sb,
        &["--name", "private", &busybox(), "sh", "-c", "echo secret; sleep 600"],
    );
    let state = format!("--state={}", sb.state().display());
    for user in [SUB, NOSUB] {
        let ub = UserBox::new(user);
        for cmd in [
            &["logs", "private"][..],
            &["stop", "private"],
            &["wait", "private"],
            &["rm", "-f", "private"],
        ] {
            // Their own state directory does not have it.
            ub.drun(cmd).fails_with(125, &["no such container \"private\""]);
            let mut with_state = vec![state.as_str()];
            with_state.extend_from_slice(cmd);
            let out = ub.drun(&with_state);
            assert_eq!(out.code(), Some(125), "{cmd:?} as {user}: {}{}", out.stdout, out.stderr);
            assert!(!out.stdout.contains("secret"), "{}", out.stdout);
        }
        let mut with_id = vec![state.as_str(), "logs"];
        with_id.push(&id);
        assert!(!ub.drun(&with_id).stdout.contains("secret"));
    }
    assert!(status(&sb, &id).starts_with("Up "), "{}", status(&sb, &id));
    assert_eq!(sb.drun(&["logs", "private"]).ok().stdout, "secret\n");
    sb.drun(&["rm", "-f", "private"]).ok();
    assert!(all_leftovers(&sb, &id).is_empty(), "{:?}", all_leftovers(&sb, &id));
}

#[test]
fn detached_runs_work_rootless() {
    let ub = UserBox::new(SUB);
    ub.drun(&["pull", "-q", &busybox()]).ok();
    let out = ub
        .drun(&[
            "run",
            "-d",
            "-q",
            "--name",
            "mine",
            "--health-cmd",
            "test \"$(id -u)\" = 0",
            "--health-interval",
            "200ms",
            &busybox(),
            "sh",
            "-c",
            "echo rootless-hello; id -u; sleep 600",
        ])
        .ok();
    let id = out.stdout.trim().to_string();
    assert_eq!(id.len(), 64, "{out:?}", out = out.stdout);
    wait_until("the output", || {
        ub.drun(&["logs", "mine"]).stdout == "rootless-hello\n0\n"
    });
    // Its health probes run in the monitor's user namespace, rootless too.
    ub.drun(&["wait", "--condition", "healthy", "--timeout", "120s", "mine"])
        .ok();
    assert!(ub.drun(&["ps"]).ok().stdout.contains(" (healthy) "));
    assert!(ub.drun(&["ps"]).ok().stdout.contains("mine"));
    // `drun exec` joins the namespaces the monitor made.
    assert_eq!(
        ub.drun(&["exec", "mine", "cat", "/proc/1/cmdline"]).ok().stdout,
        ["sleep", "600", ""].join("\0")
    );
    // Another user reaches neither it nor its state directory.
    let other = UserBox::new(NOSUB);
    let state = format!("--state={}", ub.path().join("xdg/drun").display());
    other.drun(&[&state, "stop", "mine"]).fails_with(125, &[]);
    other.drun(&["stop", "mine"]).fails_with(125, &["no such container"]);
    ub.drun(&["stop", "-t", "1", "mine"]).ok();
    assert_eq!(ub.drun(&["wait", "mine"]).ok().stdout, "137\n");
    let ps = ub.drun(&["ps", "-a"]).ok().stdout;
    assert!(ps.contains("Exited (137)"), "{ps}");
    ub.drun(&["rm", "mine"]).ok();
    // Its monitor restarts it in the same user namespace and writable layer (`--restart on-failure`).
    let count = "n=$(cat /starts 2>/dev/null || echo 0); n=$((n+1)); echo $n > /starts; echo start $n; exit 3";
    let again = ub
        .drun(&[
            "run",
            "-d",
            "-q",
            "--restart",
            "on-failure:1",
            &busybox(),
            "sh",
            "-c",
            count,
        ])
        .ok()
        .stdout
        .trim()
        .to_string();
    assert_eq!(ub.drun(&["wait", &again]).ok().stdout, "3\n");
    assert_eq!(ub.drun(&["logs", &again]).ok().stdout, "start 1\nstart 2\n");
    ub.drun(&["rm", &again]).ok();
    // A workflow's detached entry: its monitor, started from the workflow's drun, runs in that user namespace.
    let wf = ub.work().join("workflow.yaml");
    std::fs::write(
        &wf,
        format!(
            "workflows:\n  - name: bg\n    image: {}\n    detach: true\n    commands: [\"id -u; exit 4\"]\n",
            busybox()
        ),
    )
    .unwrap();
    let out = ub.drun(&["run", "workflow.yaml"]).ok();
    assert!(
        out.stderr
            .contains("Workflow \"bg\" runs in the background as container "),
        "{}",
        out.stderr
    );
    assert_eq!(ub.drun(&["wait", "bg"]).ok().stdout, "4\n");
    assert_eq!(ub.drun(&["logs", "bg"]).ok().stdout, "0\n");
    ub.drun(&["rm", "bg"]).ok();
    assert!(ub.leftovers().is_empty(), "{:?}", ub.leftovers());
    assert!(cgroup_dirs(&id).is_empty(), "{:?}", cgroup_dirs(&id));
}

/// Processes whose command line names `needle` (a container id): a monitor, a probe's `drun exec`.
fn processes_naming(needle: &str) -> Vec<String> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().bytes().all(|b| b.is_ascii_digit()))
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains(needle))
        .collect()
}

/// The `health` record `drun ps --json` shows for container `id`.
fn health_json(sb: &Sandbox, id: &str) -> serde_json::Value {
    let ps: serde_json::Value = serde_json::from_str(&sb.drun(&["ps", "-a", "--json"]).ok().stdout).unwrap();
    ps.as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == id)
        .map(|c| c["health"].clone())
        .unwrap_or_default()
}

#[test]
fn a_health_check_turns_a_service_healthy_and_a_failing_one_unhealthy() {
    let sb = ready();
    let image = busybox();
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}/");
    // The server listens only after a second: the first probes fail, without counting against it.
    let serve = format!(
        "mkdir -p /www && echo healthy-service > /www/index.html && sleep 1 && exec httpd -f -p 127.0.0.1:{port} -h /www"
    );
    let check = format!("wget -q -O- {url}");
    let id = detach(
        &sb,
        &[
            "--name",
            "web",
            "--health-cmd",
            &check,
            "--health-interval",
            "200ms",
            "--health-timeout",
            "5s",
            "--health-retries",
            "100",
            &image,
            "sh",
            "-c",
            &serve,
        ],
    );
    let st = status(&sb, &id);
    assert!(st.starts_with("Up ") && st.ends_with(')'), "{st}");
    sb.drun(&["wait", "--condition", "healthy", "--timeout", "120s", "web"])
        .ok();
    let st = status(&sb, &id);
    assert!(st.starts_with("Up ") && st.ends_with(" (healthy)"), "{st}");
    // The probes ran in the container (its files, its network), their results kept, privately.
    let health = health_json(&sb, &id);
    assert_eq!(health["status"], "healthy", "{health}");
    let last = health["log"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(
        (last["exit_code"].as_i64(), last["output"].as_str()),
        (Some(0), Some("healthy-service\n"))
    );
    let file = sb.state().join("containers").join(&id).join("health.json");
    assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
    // A client container talks to it.
    let out = sb.drun(&["run", "-q", &image, "wget", "-q", "-O", "-", &url]).ok();
    assert_eq!(out.stdout, "healthy-service\n");

    // A check that keeps failing turns its container unhealthy: waiting for healthy fails, naming the probe.
    let bad = detach(
        &sb,
        &[
            "--name",
            "bad",
            "--health-cmd",
            "echo not-ready; exit 1",
            "--health-interval",
            "200ms",
            "--health-retries",
            "2",
            &image,
            "sleep",
            "600",
        ],
    );
    sb.drun(&["wait", "--condition", "healthy", "bad"]).fails_with(
        125,
        &[
            &format!("container {} is unhealthy", &bad[..12]),
            "exited with 1: \"not-ready\"",
        ],
    );
    assert!(status(&sb, &bad).ends_with(" (unhealthy)"), "{}", status(&sb, &bad));
    sb.drun(&["wait", "--condition", "unhealthy", "bad"]).ok();
    // A container that ends before it is healthy, one without a health check, a --no-healthcheck run.
    let ends = detach(
        &sb,
        &[
            "--health-cmd",
            "true",
            "--health-interval",
            "1s",
            &image,
            "sh",
            "-c",
            "exit 3",
        ],
    );
    sb.drun(&["wait", "--condition", "healthy", &ends[..12]])
        .fails_with(125, &["ended (exit code 3) before it was healthy"]);
    let plain = detach(&sb, &[&image, "sleep", "600"]);
    sb.drun(&["wait", "--condition", "healthy", &plain[..12]])
        .fails_with(125, &["has no health check"]);
    assert_eq!(status(&sb, &plain).matches('(').count(), 0, "{}", status(&sb, &plain));
    sb.drun(&["run", "--no-healthcheck", "--health-cmd", "true", &image, "true"])
        .fails_with(125, &["--no-healthcheck conflicts"]);
    let ps = sb.drun(&["ps", "-a"]).ok().stdout;
    assert!(ps.contains("Exited (3)"), "{ps}");

    sb.drun(&["rm", "-f", "web", "bad", &ends[..12], &plain[..12]]).ok();
    assert_eq!(sb.drun(&["ps", "-a", "-q"]).ok().stdout, "");
    for c in [&id, &bad, &ends, &plain] {
        assert!(all_leftovers(&sb, c).is_empty(), "{:?}", all_leftovers(&sb, c));
        assert!(
            processes_naming(&c[..12]).is_empty(),
            "{:?}",
            processes_naming(&c[..12])
        );
    }
}

#[test]
fn foreground_runs_and_image_healthchecks_are_probed_too() {
    let sb = ready();
    // A foreground run is probed as Docker probes any container: the probe's file appears in its root.
    let out = sb
        .drun(&[
            "run",
            "-q",
            "--health-cmd",
            "touch /tmp/probed",
            "--health-interval",
            "100ms",
            &busybox(),
            "sh",
            "-c",
            "i=0; while [ ! -e /tmp/probed ] && [ $i -lt 1200 ]; do sleep 0.1; i=$((i+1)); done; ls /tmp/probed",
        ])
        .ok();
    assert_eq!(out.stdout, "/tmp/probed\n");

    // An image whose config has a Healthcheck (CMD form), which the typed OCI config does not carry.
    let layout = image_with_healthcheck(&sb, &["CMD", "touch", "/tmp/from-image"], 100_000_000);
    let src = format!("oci:{}:uncompressed", layout.display());
    sb.drun(&["pull", "-q", &src]).ok();
    let id = detach(&sb, &[&src, "sleep", "600"]);
    sb.drun(&["wait", "--condition", "healthy", "--timeout", "120s", &id[..12]])
        .ok();
    assert_eq!(
        sb.drun(&["exec", &id[..12], "ls", "/tmp/from-image"]).ok().stdout,
        "/tmp/from-image\n"
    );
    assert_eq!(
        health_json(&sb, &id)["config"]["interval"],
        100,
        "{}",
        health_json(&sb, &id)
    );
    // --no-healthcheck turns the image's off; --health-cmd replaces its test.
    let off = detach(&sb, &["--no-healthcheck", &src, "sleep", "600"]);
    sb.drun(&["wait", "--condition", "healthy", &off[..12]])
        .fails_with(125, &["has no health check"]);
    let other = detach(
        &sb,
        &["--health-cmd", "exit 1", "--health-retries", "1", &src, "sleep", "600"],
    );
    sb.drun(&["wait", "--condition", "healthy", &other[..12]])
        .fails_with(125, &["is unhealthy"]);
    sb.drun(&["rm", "-f", &id[..12], &off[..12], &other[..12]]).ok();
    assert_eq!(sb.drun(&["ps", "-a", "-q"]).ok().stdout, "");
    for c in [&id, &off, &other] {
        assert!(all_leftovers(&sb, c).is_empty(), "{:?}", all_leftovers(&sb, c));
    }
}

/// A copy of the one-layer busybox layout whose config has `Healthcheck: {Test: test, Interval: interval_ns}`.
fn image_with_healthcheck(sb: &Sandbox, test: &[&str], interval_ns: u64) -> std::path::PathBuf {
    use sha2::Digest;
    let dir = sb.path().join("hc-layout");
    let st = std::process::Command::new("cp")
        .arg("-r")
        .arg(cache().join("layouts/busybox-uncompressed"))
        .arg(&dir)
        .status()
        .unwrap();
    assert!(st.success());
    let blob = |digest: &str| dir.join("blobs/sha256").join(digest.trim_start_matches("sha256:"));
    let put = |bytes: &[u8]| -> (String, usize) {
        let digest = format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)));
        std::fs::write(blob(&digest), bytes).unwrap();
        (digest, bytes.len())
    };
    let mut index: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
    let mdigest = index["manifests"][0]["digest"].as_str().unwrap().to_string();
    let mut manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(blob(&mdigest)).unwrap()).unwrap();
    let cdigest = manifest["config"]["digest"].as_str().unwrap().to_string();
    let mut config: serde_json::Value = serde_json::from_slice(&std::fs::read(blob(&cdigest)).unwrap()).unwrap();
    config["config"]["Healthcheck"] = serde_json::json!({"Test": test, "Interval": interval_ns});
    let (d, n) = put(&serde_json::to_vec(&config).unwrap());
    manifest["config"]["digest"] = d.into();
    manifest["config"]["size"] = n.into();
    let (d, n) = put(&serde_json::to_vec(&manifest).unwrap());
    index["manifests"][0]["digest"] = d.into();
    index["manifests"][0]["size"] = n.into();
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    dir
}
