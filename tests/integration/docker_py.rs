//! docs/docker-py.md's table of docker-py's `containers.run` arguments, walked row by row (issue 18): every
//! supported argument set in a workflow entry and checked from inside a real container, every ignored one for its
//! note, every refused one for the message the table gives. A row this file has no check for fails the test.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use crate::common::*;

/// One row of the table.
#[derive(Debug)]
struct Row {
    arg: String,
    status: String,
    text: String,
}

/// The rows of docs/docker-py.md's table (`| \`arg\` | status | what drun does |`).
fn table() -> Vec<Row> {
    let doc = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/docker-py.md")).unwrap();
    doc.lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .map(|l| {
            let (arg, rest) = l.split_once('`').unwrap();
            let cells: Vec<&str> = rest.trim_start_matches(" |").splitn(2, " | ").collect();
            Row {
                arg: arg.to_string(),
                status: cells[0].trim().to_string(),
                text: cells[1].trim_end_matches(" |").replace("\\|", "|"),
            }
        })
        .collect()
}

/// What the host looks like to the checks: namespaces, host name, the loop device of the block I/O rows.
struct Host {
    ns: std::collections::HashMap<&'static str, String>,
    hostname: String,
    /// A loop device the test made, scheduled by BFQ, and its `MAJOR:MINOR`.
    dev: String,
    devnum: String,
}

/// A loop device over a file of `dir`, with the BFQ scheduler (block I/O weights need it), detached on drop.
struct Loop(String);

impl Loop {
    fn new(dir: &Path) -> Loop {
        let img = dir.join("loop.img");
        std::fs::File::create(&img).unwrap().set_len(16 << 20).unwrap();
        let out = std::process::Command::new("losetup")
            .args(["-f", "--show"])
            .arg(&img)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "losetup: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let dev = String::from_utf8(out.stdout).unwrap().trim().to_string();
        let name = dev.trim_start_matches("/dev/");
        std::fs::write(format!("/sys/block/{name}/queue/scheduler"), "bfq")
            .expect("the BFQ scheduler (modprobe bfq) for the block I/O weight rows");
        Loop(dev)
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = std::process::Command::new("losetup").args(["-d", &self.0]).status();
    }
}

/// A supported or ignored row's workflow entry: YAML lines below `name` and `image` (indented 4), and the
/// shell script that must succeed in the container (None: the entry sets its own command).
fn entry(arg: &str, h: &Host) -> Option<(String, Option<String>)> {
    let (dev, num) = (&h.dev, &h.devnum);
    let cg = |file: &str, want: &str| format!("[ \"$(cat /sys/fs/cgroup/{file})\" = \"{want}\" ]");
    let ns = |kind: &str| format!("[ \"$(readlink /proc/self/ns/{kind})\" = \"{}\" ]", h.ns[kind]);
    let only_loopback = "[ \"$(grep -c : /proc/net/dev)\" = 1 ]".to_string();
    let busybox_ran = "test -x /bin/busybox".to_string();
    let (yaml, script): (String, String) = match arg {
        "auto_remove" | "remove" | "stdout" | "stderr" | "stream" => (format!("{arg}: true"), "true".into()),
        "kernel_memory" => ("kernel_memory: 64m".into(), "true".into()),
        "version" => ("version: \"3.10\"".into(), "true".into()),
        "blkio_weight" => (
            "blkio_weight: 300".into(),
            "cat /sys/fs/cgroup/blkio/blkio.weight /sys/fs/cgroup/blkio/blkio.bfq.weight 2>/dev/null | grep -qw 300"
                .into(),
        ),
        "blkio_weight_device" => (
            format!("blkio_weight_device: [{{Path: {dev}, Weight: 400}}]"),
            format!("cat /sys/fs/cgroup/blkio/blkio*weight_device | grep -qx '{num} 400'"),
        ),
        "cap_add" => (
            "cap_add: [NET_RAW]".into(),
            "c=$(sed -n 's/^CapEff:.//p' /proc/self/status); [ $(( 0x$c >> 13 & 1 )) = 1 ]".into(),
        ),
        "cap_drop" => (
            "cap_drop: [CHOWN]".into(),
            "c=$(sed -n 's/^CapEff:.//p' /proc/self/status); [ $(( 0x$c & 1 )) = 0 ]".into(),
        ),
        "command" => ("command: [sh, -c, \"test -x /bin/busybox\"]".into(), String::new()),
        // The probe runs in the workflow's container: what it writes appears in its root file system.
        "healthcheck" => (
            "healthcheck: {test: [CMD-SHELL, touch /tmp/probed], interval: 100000000, retries: 3}".into(),
            "i=0; while [ ! -e /tmp/probed ] && [ $i -lt 1200 ]; do sleep 0.1; i=$((i+1)); done; test -e /tmp/probed"
                .into(),
        ),
        "entrypoint" => (
            "entrypoint: [sh, -c]\n    command: [\"test -x /bin/busybox\"]".into(),
            String::new(),
        ),
        "cpu_period" => ("cpu_period: 50000".into(), cg("cpu*/cpu.cfs_period_us", "50000")),
        "cpu_quota" => ("cpu_quota: 25000".into(), cg("cpu*/cpu.cfs_quota_us", "25000")),
        "cpu_shares" => ("cpu_shares: 512".into(), cg("cpu*/cpu.shares", "512")),
        "cpuset_cpus" => ("cpuset_cpus: \"0\"".into(), cg("cpuset/cpuset.cpus", "0")),
        "cpuset_mems" => ("cpuset_mems: \"0\"".into(), cg("cpuset/cpuset.mems", "0")),
        "nano_cpus" => ("nano_cpus: 500000000".into(), cg("cpu*/cpu.cfs_quota_us", "50000")),
        "device_cgroup_rules" => (
            "device_cgroup_rules: [\"c 10:200 rwm\"]".into(),
            "grep -qx 'c 10:200 rwm' /sys/fs/cgroup/devices/devices.list".into(),
        ),
        "device_read_bps" => (
            format!("device_read_bps: [{{Path: {dev}, Rate: 1048576}}]"),
            format!("grep -qx '{num} 1048576' /sys/fs/cgroup/blkio/blkio.throttle.read_bps_device"),
        ),
        "device_write_bps" => (
            format!("device_write_bps: [\"{dev}:2mb\"]"),
            format!("grep -qx '{num} 2097152' /sys/fs/cgroup/blkio/blkio.throttle.write_bps_device"),
        ),
        "device_read_iops" => (
            format!("device_read_iops: [{{Path: {dev}, Rate: 100}}]"),
            format!("grep -qx '{num} 100' /sys/fs/cgroup/blkio/blkio.throttle.read_iops_device"),
        ),
        "device_write_iops" => (
            format!("device_write_iops: [\"{dev}:200\"]"),
            format!("grep -qx '{num} 200' /sys/fs/cgroup/blkio/blkio.throttle.write_iops_device"),
        ),
        "devices" => (
            "devices: [\"/dev/zero:/dev/myzero:r\"]".into(),
            "test -c /dev/myzero && [ \"$(head -c 3 /dev/myzero | wc -c)\" = 3 ]".into(),
        ),
        // The simulated driver of tests/fixtures/fake-driver.sh (DRUN_DRIVER_ROOT): both of its GPUs.
        "device_requests" => (
            "device_requests: [{driver: nvidia, count: -1, capabilities: [[gpu]]}]".into(),
            "test -c /dev/nvidia0 && test -c /dev/nvidia1".into(),
        ),
        "dns" => (
            "dns: [10.9.8.7]".into(),
            "grep -qx 'nameserver 10.9.8.7' /etc/resolv.conf".into(),
        ),
        "dns_opt" => (
            "dns_opt: [\"ndots:3\"]".into(),
            "grep -qx 'options ndots:3' /etc/resolv.conf".into(),
        ),
        "dns_search" => (
            "dns_search: [corp.example]".into(),
            "grep -qx 'search corp.example' /etc/resolv.conf".into(),
        ),
        "domainname" => (
            "domainname: example.org".into(),
            "[ \"$(cat /proc/sys/kernel/domainname)\" = example.org ]".into(),
        ),
        "environment" => (
            "environment: {GREETER: world}".into(),
            "[ \"$GREETER\" = world ]".into(),
        ),
        "extra_hosts" => (
            "extra_hosts: {db: 10.1.2.3}".into(),
            "grep -qx '10.1.2.3\tdb' /etc/hosts || grep -q '^10.1.2.3[[:space:]]db$' /etc/hosts".into(),
        ),
        "group_add" => (
            "group_add: [1234]".into(),
            "grep '^Groups:' /proc/self/status | grep -qw 1234".into(),
        ),
        "hostname" => ("hostname: box".into(), "[ \"$(hostname)\" = box ]".into()),
        "image" => (String::new(), busybox_ran),
        "init" => ("init: false".into(), "[ \"$(cat /proc/1/comm)\" = sh ]".into()),
        "ipc_mode" => ("ipc_mode: host".into(), ns("ipc")),
        "pid_mode" => ("pid_mode: host".into(), ns("pid")),
        "uts_mode" => (
            "uts_mode: host".into(),
            format!("{} && [ \"$(hostname)\" = \"{}\" ]", ns("uts"), h.hostname),
        ),
        "userns_mode" => ("userns_mode: host".into(), ns("user")),
        // Checked on the dry run's output and the log below.
        "labels" => ("labels: {team: vision}".into(), "true".into()),
        "name" => (String::new(), "true".into()),
        "mem_limit" => ("mem_limit: 64m".into(), cg("memory/memory.limit_in_bytes", "67108864")),
        "mem_reservation" => (
            "mem_limit: 64m\n    mem_reservation: 32m".into(),
            cg("memory/memory.soft_limit_in_bytes", "33554432"),
        ),
        "mem_swappiness" => ("mem_swappiness: 10".into(), cg("memory/memory.swappiness", "10")),
        "memswap_limit" => (
            "mem_limit: 64m\n    memswap_limit: 128m".into(),
            cg("memory/memory.memsw.limit_in_bytes", "134217728"),
        ),
        "oom_kill_disable" => (
            "mem_limit: 64m\n    oom_kill_disable: true".into(),
            "grep -qx 'oom_kill_disable 1' /sys/fs/cgroup/memory/memory.oom_control".into(),
        ),
        "oom_score_adj" => (
            "oom_score_adj: 300".into(),
            "[ \"$(cat /proc/self/oom_score_adj)\" = 300 ]".into(),
        ),
        "pids_limit" => ("pids_limit: 50".into(), cg("pids/pids.max", "50")),
        "mounts" => (
            "mounts: [\"type=tmpfs,target=/t2\", {type: bind, source: ./data, target: /data2, read_only: true}]".into(),
            "grep -q ' /t2 tmpfs ' /proc/mounts && [ \"$(cat /data2/hello)\" = hi ] && ! touch /data2/x 2>/dev/null"
                .into(),
        ),
        "network" => ("network: none".into(), only_loopback),
        "network_disabled" => ("network_disabled: true".into(), only_loopback),
        "network_mode" => ("network_mode: none".into(), only_loopback),
        "platform" => (
            format!(
                "platform: linux/{}",
                if cfg!(target_arch = "aarch64") {
                    "arm64"
                } else {
                    "amd64"
                }
            ),
            busybox_ran,
        ),
        "privileged" => (
            "privileged: true".into(),
            "c=$(sed -n 's/^CapEff:.//p' /proc/self/status); [ $(( 0x$c >> 21 & 1 )) = 1 ]".into(),
        ),
        "read_only" => ("read_only: true".into(), "! touch /x 2>/dev/null".into()),
        // Fails on its first run, succeeds on its second: the counter is on the host.
        "restart_policy" => (
            "restart_policy: {Name: on-failure, MaximumRetryCount: 2}\n    volumes: [\"./state:/state\"]".into(),
            "n=$(cat /state/n 2>/dev/null || echo 0); echo $((n+1)) > /state/n; [ \"$n\" -ge 1 ]".into(),
        ),
        "security_opt" => (
            "security_opt: [\"no-new-privileges=false\"]".into(),
            "grep '^NoNewPrivs:' /proc/self/status | grep -qw 0".into(),
        ),
        "shm_size" => (
            "shm_size: 32m".into(),
            "[ \"$(df -k /dev/shm | tail -1 | awk '{print $2}')\" = 32768 ]".into(),
        ),
        "stdin_open" => ("stdin_open: true".into(), "read l; [ \"$l\" = hello-stdin ]".into()),
        "sysctls" => (
            "sysctls: {kernel.shmmax: 1000000}".into(),
            "[ \"$(cat /proc/sys/kernel/shmmax)\" = 1000000 ]".into(),
        ),
        "tmpfs" => (
            "tmpfs: [\"/scratch:size=1m\"]".into(),
            "grep -q ' /scratch tmpfs ' /proc/mounts".into(),
        ),
        "tty" => ("tty: true".into(), "[ -t 1 ]".into()),
        "ulimits" => (
            "ulimits: [{name: nofile, soft: 512, hard: 1024}]".into(),
            "[ \"$(ulimit -n)\" = 512 ] && [ \"$(ulimit -Hn)\" = 1024 ]".into(),
        ),
        "user" => (
            "user: \"1000:1000\"".into(),
            "[ \"$(id -u):$(id -g)\" = 1000:1000 ]".into(),
        ),
        "volumes" => (
            "volumes: [\"./data:/data:ro\"]".into(),
            "[ \"$(cat /data/hello)\" = hi ]".into(),
        ),
        "working_dir" => ("working_dir: sub".into(), "[ \"$(pwd)\" = /workflow/sub ]".into()),
        _ => return None,
    };
    let own_argv = matches!(arg, "command" | "entrypoint");
    Some((yaml, (!own_argv).then_some(script)))
}

/// Arguments checked by a test of their own in this file.
const OWN_TESTS: &[(&str, &str)] = &[
    ("stop_signal", "stop_signal_is_what_sigterm_becomes"),
    ("detach", "detach_runs_a_workflow_in_the_background_under_its_monitor"),
];

fn host() -> Host {
    let link = |kind: &str| {
        std::fs::read_link(format!("/proc/self/ns/{kind}"))
            .unwrap()
            .display()
            .to_string()
    };
    Host {
        ns: ["ipc", "pid", "uts", "user"]
            .into_iter()
            .map(|k| (k, link(k)))
            .collect(),
        hostname: std::fs::read_to_string("/proc/sys/kernel/hostname")
            .unwrap()
            .trim()
            .to_string(),
        dev: String::new(),
        devnum: String::new(),
    }
}

#[test]
fn every_docker_py_argument_is_applied_ignored_or_refused_as_the_table_says() {
    assert!(is_root(), "container tests need root");
    let rows = table();
    assert!(rows.len() >= 88, "docs/docker-py.md lists {} arguments", rows.len());
    let sb = Sandbox::new();
    sb.drun(&["pull", "-q", &busybox()]).ok();
    let project = sb.path().join("project");
    for d in ["data", "state"] {
        std::fs::create_dir_all(project.join(d)).unwrap();
    }
    std::fs::write(project.join("data/hello"), "hi").unwrap();
    let lo = Loop::new(sb.path());
    let mut h = host();
    let name = lo.0.trim_start_matches("/dev/").to_string();
    h.devnum = std::fs::read_to_string(format!("/sys/block/{name}/dev"))
        .unwrap()
        .trim()
        .to_string();
    h.dev = lo.0.clone();
    let driver = sb.path().join("driver");
    let st = std::process::Command::new("bash")
        .arg(fixture("fake-driver.sh"))
        .arg(&driver)
        .status()
        .unwrap();
    assert!(st.success(), "fake-driver.sh failed");
    let cdi = sb.path().join("cdi");
    std::fs::create_dir_all(&cdi).unwrap();

    // Every supported and ignored row: one workflow each, all in one file.
    let mut file = String::from("workflows:\n");
    let mut batch = Vec::new();
    let mut missing = Vec::new();
    for row in &rows {
        match row.status.as_str() {
            "yes" | "ignored" => {
                if OWN_TESTS.iter().any(|(a, _)| *a == row.arg) {
                    continue;
                }
                let Some((yaml, script)) = entry(&row.arg, &h) else {
                    missing.push(row.arg.clone());
                    continue;
                };
                file.push_str(&format!("  - name: {}\n    image: {}\n", row.arg, busybox()));
                if !yaml.is_empty() {
                    file.push_str(&format!("    {yaml}\n"));
                }
                if let Some(s) = script {
                    file.push_str(&format!("    commands:\n      - {}\n", yaml_quote(&s)));
                }
                batch.push(row);
            }
            "refused" => {}
            other => panic!("row {:?}: unknown status {other:?}", row.arg),
        }
    }
    assert!(
        missing.is_empty(),
        "rows of docs/docker-py.md without a check: {missing:?}"
    );
    let wf = project.join("workflow.yaml");
    std::fs::write(&wf, &file).unwrap();

    // labels: in the plan the dry run prints.
    let dry = sb.drun(&["run", "--dry-run", wf.to_str().unwrap()]).ok();
    assert!(dry.stdout.contains("label:       team=vision"), "{}", dry.stdout);

    let mut cmd = sb.cmd(&["run", "--keep-going", wf.to_str().unwrap()]);
    cmd.env("DRUN_DRIVER_ROOT", &driver)
        .env("DRUN_CDI_SPEC_DIRS", &cdi)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    child.stdin.take().unwrap().write_all(b"hello-stdin\n").unwrap();
    let out = wait(child, Duration::from_secs(600));
    let mut failed = Vec::new();
    for row in &batch {
        let ok = out.stderr.contains(&format!("Workflow \"{}\" is successful.", row.arg));
        let noted = row.status != "ignored"
            || out
                .stderr
                .lines()
                .any(|l| l.contains(&format!("workflow {:?}", row.arg)) && l.contains("is ignored"));
        if !ok || !noted {
            let log = std::fs::read_to_string(project.join(format!("artifacts/{}.log", row.arg))).unwrap_or_default();
            failed.push(format!("{} (noted: {noted}): {log}", row.arg));
        }
    }
    assert!(
        failed.is_empty(),
        "rows whose check failed: {failed:#?}\nstderr:\n{}",
        out.stderr
    );
    // name: the workflow's log is named after it; restart_policy: two runs, the first one failed.
    assert!(project.join("artifacts/name.log").is_file());
    assert_eq!(std::fs::read_to_string(project.join("state/n")).unwrap().trim(), "2");
    assert!(
        out.stderr.contains("restarting it (1 of 2, restart_policy on-failure)"),
        "{}",
        out.stderr
    );

    // Every refused row: refused by name, with the table's reason, before anything runs.
    for row in rows.iter().filter(|r| r.status == "refused") {
        let reason = row
            .text
            .strip_prefix("Refused: ")
            .expect("a refused row's text starts with `Refused: `");
        let file = sb.path().join(format!("refused-{}.yaml", row.arg));
        std::fs::write(
            &file,
            format!(
                "workflows:\n  - name: r\n    image: {}\n    {}: 1\n",
                busybox(),
                row.arg
            ),
        )
        .unwrap();
        sb.drun(&["run", "--dry-run", file.to_str().unwrap()])
            .fails_with(125, &[&format!("`{}` is not supported: {reason}", row.arg)]);
    }
    // The values of supported arguments that need a daemon, or would change the host.
    for (yaml, message) in [
        (
            "network: bridge",
            "network \"bridge\" is not supported: networks other than host and none",
        ),
        (
            "restart_policy: {Name: always}",
            "always and unless-stopped restart a container after drun has exited",
        ),
        (
            "ipc_mode: \"container:db\"",
            "another container's namespace needs a daemon",
        ),
        (
            "sysctls: {net.ipv4.ip_forward: 1}",
            "net.* parameters would change the host's network",
        ),
        (
            "sysctls: {kernel.panic: 1}",
            "\"kernel.panic\" is not in a namespace of the container's own",
        ),
        (
            "extra_hosts: {gw: host-gateway}",
            "with the host network the host is 127.0.0.1",
        ),
    ] {
        let file = sb.path().join("refused-value.yaml");
        std::fs::write(
            &file,
            format!("workflows:\n  - name: r\n    image: {}\n    {yaml}\n", busybox()),
        )
        .unwrap();
        sb.drun(&["run", "--dry-run", file.to_str().unwrap()])
            .fails_with(125, &[message]);
    }
    drop(lo);
}

/// A YAML double-quoted scalar.
fn yaml_quote(s: &str) -> String {
    format!(
        "\"{}\"",
        s.replace('\\', "\\\\").replace('"', "\\\"").replace('\t', "\\t")
    )
}

/// `stop_signal`: SIGTERM to drun reaches the container as the stop signal (here SIGUSR1, which the script
/// traps; a plain SIGTERM would end it with 143).
#[test]
fn stop_signal_is_what_sigterm_becomes() {
    assert!(is_root(), "container tests need root");
    let sb = Sandbox::new();
    sb.drun(&["pull", "-q", &busybox()]).ok();
    let project = sb.path().join("project");
    std::fs::create_dir_all(project.join("state")).unwrap();
    let wf = project.join("workflow.yaml");
    std::fs::write(
        &wf,
        format!(
            "workflows:\n  - name: stop\n    image: {}\n    stop_signal: SIGUSR1\n    volumes: [\"./state:/state\"]\n    \
             commands:\n      - \"trap 'echo usr1 > /state/got; exit 7' USR1; touch /state/ready; while :; do sleep 0.1; done\"\n",
            busybox()
        ),
    )
    .unwrap();
    let mut cmd = sb.cmd(&["run", wf.to_str().unwrap()]);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = cmd.spawn().unwrap();
    let ready: PathBuf = project.join("state/ready");
    wait_until("the container's trap", || ready.exists());
    nix::sys::signal::kill(pid_of(&child), nix::sys::signal::Signal::SIGTERM).unwrap();
    let out = wait(child, Duration::from_secs(120));
    assert_eq!(
        std::fs::read_to_string(project.join("state/got")).unwrap(),
        "usr1\n",
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("is interrupted (exit code 7)"), "{}", out.stderr);
}

/// `detach: true`: the workflow's container runs in the background under a monitor of its own (as `drun run -d`),
/// named after the workflow; its output for dependents is the container's id; `restart_policy` is the monitor's
/// (the same container again); `auto_remove` leaves nothing; artifacts and services are refused.
#[test]
fn detach_runs_a_workflow_in_the_background_under_its_monitor() {
    assert!(is_root(), "container tests need root");
    let sb = Sandbox::new();
    let image = busybox();
    sb.drun(&["pull", "-q", &image]).ok();
    let project = sb.path().join("project");
    std::fs::create_dir_all(&project).unwrap();
    let wf = project.join("workflow.yaml");
    // A value with a line break, which a command line or an env file could not carry to the monitor.
    std::fs::write(
        &wf,
        format!(
            "workflows:\n  - name: server\n    image: {image}\n    detach: true\n    \
             restart_policy: {{Name: on-failure, MaximumRetryCount: 1}}\n    environment:\n      MSG: \"two\\nlines\"\n    \
             commands:\n      - 'n=$(cat /n 2>/dev/null || echo 0); n=$((n+1)); echo $n > /n; echo \"start $n $MSG\"; exit 3'\n  \
             - name: client\n    image: {image}\n    deps: [server]\n    commands:\n      - 'echo \"server is ${{deps.server.stdout}}\"'\n  \
             - name: gone\n    image: {image}\n    detach: true\n    auto_remove: true\n    commands: [\"exit 5\"]\n"
        ),
    )
    .unwrap();
    let out = sb.drun(&["run", wf.to_str().unwrap()]).ok();
    let line = out
        .stderr
        .lines()
        .find(|l| l.contains("Workflow \"server\" runs in the background as container "))
        .unwrap_or_else(|| panic!("{}", out.stderr));
    let short = line.split("container ").nth(1).unwrap()[..12].to_string();
    let id = out
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("server is "))
        .unwrap_or_else(|| panic!("{}\n{}", out.stdout, out.stderr))
        .to_string();
    assert!(id.len() == 64 && id.starts_with(&short), "{id:?} {short:?}");
    assert!(
        out.stderr.contains("Workflow \"server\" is successful."),
        "{}",
        out.stderr
    );
    // Restarted once by its monitor: the same container (its own layer kept the count), then its last exit.
    assert_eq!(sb.drun(&["wait", "server"]).ok().stdout, "3\n");
    assert_eq!(
        sb.drun(&["logs", "server"]).ok().stdout,
        "start 1 two\nlines\nstart 2 two\nlines\n"
    );
    let ps: serde_json::Value = serde_json::from_str(&sb.drun(&["ps", "-a", "--json"]).ok().stdout).unwrap();
    let runs = ps.as_array().unwrap();
    assert_eq!(runs.len(), 1, "auto_remove left a record: {ps:#}");
    assert_eq!(
        (runs[0]["id"].as_str(), runs[0]["restart_count"].as_i64()),
        (Some(id.as_str()), Some(1))
    );
    sb.drun(&["rm", "server"]).ok();
    assert!(leftovers(&sb).is_empty(), "{:?}", leftovers(&sb));

    // What a container that outlives the workflow run cannot have, each refused at its place.
    for (extra, line, needle) in [
        ("artifacts: [out]", 4, "`detach: true` cannot have artifacts"),
        (
            "services: [{name: db, image: x}]",
            4,
            "`detach: true` cannot have services",
        ),
        (
            "auto_remove: true\n    restart_policy: on-failure:2",
            4,
            "with `auto_remove` cannot have a `restart_policy`",
        ),
    ] {
        std::fs::write(
            &wf,
            format!("workflows:\n  - name: bad\n    image: {image}\n    detach: true\n    {extra}\n    commands: [\"true\"]\n"),
        )
        .unwrap();
        sb.drun(&["run", wf.to_str().unwrap()])
            .fails_with(125, &[&format!("workflow.yaml:{line}:13: "), needle]);
    }
}

/// Where the host's block I/O scheduler has no weights for a device, its weight is ignored with a warning, as
/// Docker does, and the container runs.
#[test]
fn a_block_io_weight_without_bfq_is_ignored_with_a_warning() {
    assert!(is_root(), "container tests need root");
    let sb = Sandbox::new();
    sb.drun(&["pull", "-q", &busybox()]).ok();
    let lo = Loop::new(sb.path());
    let name = lo.0.trim_start_matches("/dev/");
    std::fs::write(format!("/sys/block/{name}/queue/scheduler"), "none").unwrap();
    let weight = format!("{}:300", lo.0);
    let out = sb
        .drun(&["run", "--blkio-weight-device", &weight, &busybox(), "true"])
        .ok();
    assert!(
        out.stderr
            .contains("is not scheduled by BFQ: its weight (--blkio-weight-device, blkio_weight_device) is ignored"),
        "{}",
        out.stderr
    );
}
