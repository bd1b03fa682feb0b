//! Rootless drun, run as real unprivileged users made by `tests/fixtures/test-users.sh`: `drun-sub` (subordinate uid/gid
//! ranges in /etc/subuid and /etc/subgid) and `drun-nosub` (none, like an LDAP account on an HPC node). drun is
//! started through `setpriv`, which execs it directly: signals reach drun itself.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::{self, Output, Proxy};

pub(crate) const SUB: &str = "drun-sub";
pub(crate) const NOSUB: &str = "drun-nosub";

/// A test user's sandbox: a home of its own (store and config below it by default), and a runtime dir.
pub(crate) struct UserBox {
    user: &'static str,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    dir: tempfile::TempDir,
}

fn ids(user: &str) -> (u32, u32) {
    let u = nix::unistd::User::from_name(user).unwrap().unwrap_or_else(|| {
        panic!("test user {user} is missing: run `bash tests/fixtures/test-users.sh up` (make test does)")
    });
    (u.uid.as_raw(), u.gid.as_raw())
}

impl UserBox {
    pub(crate) fn new(user: &'static str) -> UserBox {
        assert!(
            common::is_root(),
            "rootless tests are started as root, which makes the users' sandboxes"
        );
        let (uid, gid) = ids(user);
        let dir = tempfile::Builder::new().prefix("drun-rl-").tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        for sub in ["home", "xdg", "work"] {
            let p = dir.path().join(sub);
            std::fs::create_dir(&p).unwrap();
            std::os::unix::fs::chown(&p, Some(uid), Some(gid)).unwrap();
        }
        std::fs::set_permissions(
            dir.path().join("xdg"),
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        )
        .unwrap();
        std::fs::write(dir.path().join("config.toml"), "").unwrap();
        UserBox { user, uid, gid, dir }
    }

    pub(crate) fn path(&self) -> &Path {
        self.dir.path()
    }

    pub(crate) fn home(&self) -> PathBuf {
        self.path().join("home")
    }

    pub(crate) fn work(&self) -> PathBuf {
        self.path().join("work")
    }

    /// The default store of a rootless user: `$XDG_DATA_HOME/drun`, i.e. `~/.local/share/drun`.
    pub(crate) fn store(&self) -> PathBuf {
        self.home().join(".local/share/drun")
    }

    pub(crate) fn cmd(&self, args: &[&str]) -> Command {
        let mut c = common::as_user(self.uid, self.gid, &self.home(), env!("CARGO_BIN_EXE_drun"));
        c.args(args)
            .env("USER", self.user)
            .env("XDG_RUNTIME_DIR", self.path().join("xdg"))
            .env("DRUN_CONFIG", self.path().join("config.toml"))
            .current_dir(self.work());
        c
    }

    pub(crate) fn drun(&self, args: &[&str]) -> Output {
        common::run(self.cmd(args), Duration::from_secs(300))
    }

    fn sh(&self, flags: &[&str], image: &str, script: &str) -> Output {
        let mut a = vec!["run", "-q"];
        a.extend_from_slice(flags);
        a.extend_from_slice(&[image, "sh", "-c", script]);
        self.drun(&a)
    }

    /// Run directories and libcontainer state left in the user's state dir.
    pub(crate) fn leftovers(&self) -> Vec<String> {
        let state = self.path().join("xdg/drun");
        ["containers", "libcontainer"]
            .iter()
            .filter_map(|d| std::fs::read_dir(state.join(d)).ok())
            .flat_map(|rd| rd.flatten().map(|e| e.path().display().to_string()))
            .collect()
    }
}

fn lines(s: &str) -> Vec<&str> {
    s.lines().map(str::trim).collect()
}

#[test]
fn pull_and_run_as_users_with_and_without_subordinate_ids() {
    for user in [SUB, NOSUB] {
        let ub = UserBox::new(user);
        ub.drun(&["pull", "-q", &common::debian()]).ok();
        // Layers are unpacked per ID mapping, into the user's own default store.
        let layers = ub.store().join("layers");
        let keys: Vec<String> = std::fs::read_dir(&layers)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(keys.len(), 1, "{keys:?}");
        assert!(keys[0].starts_with(&format!("u{}-", ub.uid)), "{keys:?}");
        assert_eq!(std::fs::metadata(ub.store()).unwrap().uid(), ub.uid);

        let out = ub
            .sh(
                &["-v", &format!("{}:/data", ub.work().display()), "--shm-size", "64m"],
                &common::debian(),
                "id -u; id -g; wc -l < /proc/self/uid_map; stat -c '%g %a' /etc/shadow /usr/bin/passwd; \
                 echo from-root > /data/out.txt; df -k /dev/shm | tail -1 | awk '{print $2}'; \
                 ls /proc/1/root >/dev/null 2>&1 && echo own-pid-ns",
            )
            .ok();
        let l = lines(&out.stdout);
        assert_eq!(&l[..2], ["0", "0"], "container root: {out:?}", out = out.stdout);
        // Subordinate ranges give a second uid_map line; group 42 (shadow) exists only with them.
        let (map_lines, shadow_gid) = if user == SUB { ("2", "42") } else { ("1", "0") };
        assert_eq!(l[2], map_lines);
        assert_eq!(l[3], format!("{shadow_gid} 640"));
        // setuid bits are dropped when unpacking without privileges.
        assert_eq!(l[4], "0 755");
        assert_eq!(l[5], "65536", "a 64m /dev/shm");
        assert_eq!(l[6], "own-pid-ns");
        // What container root writes is the caller's on the host.
        let meta = std::fs::metadata(ub.work().join("out.txt")).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (ub.uid, ub.gid));

        // Whiteouts, opaque directories and hardlinks into a lower layer, unpacked without privileges: through
        // the overlay mounted in the user namespace (userxattr), and through a flattened copy.
        let check = "for p in /etc/issue.net /usr/share/doc/apt /opt/keep/gone /opt/replaced/old; do \
                     [ -e $p ] && echo present:$p; done; cat /opt/replaced/new /opt/keep/changed; \
                     stat -c '%u:%g %a' /opt/perm/owned /opt/perm/setuid; \
                     [ /opt/links/hard-a -ef /opt/links/hard-b ] && echo hardlinked; cat /opt/links/hard-lower";
        let owned = if user == SUB { "1234:5678 640" } else { "0:0 640" };
        let want = format!("new\nv2\n{owned}\n0:0 755\nhardlinked\nstays\n");
        assert_eq!(
            ub.sh(&[], &common::debian(), check).ok().stdout,
            want,
            "{user}: overlay"
        );
        let mut c = ub.cmd(&["run", "-q", &common::debian(), "sh", "-c", check]);
        c.env("DRUN_ROOTFS", "flatten");
        let out = common::run(c, Duration::from_secs(300)).ok();
        assert_eq!(out.stdout, want, "{user}: flattened");

        // Exit codes as for root.
        assert_eq!(ub.sh(&[], &common::busybox(), "exit 3").code(), Some(3));
        ub.drun(&["run", "-q", &common::busybox(), "no-such-cmd"])
            .fails_with(127, &["no-such-cmd"]);
        ub.drun(&["run", "-q", &common::busybox(), "/etc/passwd"])
            .fails_with(126, &["/etc/passwd"]);
        // --network none: only loopback, up.
        let out = ub
            .sh(
                &["--network", "none"],
                &common::busybox(),
                "ls /sys/class/net; ip -o -4 addr show lo",
            )
            .ok();
        assert!(
            out.stdout.starts_with("lo\n") && out.stdout.contains("127.0.0.1"),
            "{}",
            out.stdout
        );
        assert!(ub.leftovers().is_empty(), "{:?}", ub.leftovers());
    }
}

#[test]
fn users_outside_the_mapping_are_refused_clearly() {
    let ub = UserBox::new(NOSUB);
    ub.drun(&["run", "-q", "-u", "1000", &common::busybox(), "id"])
        .fails_with(125, &["uid 1000", "no subordinate ids", "/etc/subuid"]);
    // With ranges, other users exist and own what they write.
    let ub = UserBox::new(SUB);
    let out = ub
        .sh(
            &["-u", "1000:1000"],
            &common::busybox(),
            "id -u; touch /tmp/f; stat -c %u /tmp/f",
        )
        .ok();
    assert_eq!(lines(&out.stdout), ["1000", "1000"]);
}

#[test]
fn keep_id_runs_as_the_caller_with_a_passwd_entry() {
    for user in [SUB, NOSUB] {
        let ub = UserBox::new(user);
        // Pulled for the default mapping first: keep-id with subordinate ids is another mapping, whose layers
        // are unpacked when first needed (not with --pull=never).
        ub.drun(&["pull", "-q", &common::busybox()]).ok();
        if user == SUB {
            ub.drun(&[
                "run",
                "-q",
                "--pull=never",
                "--userns",
                "keep-id",
                &common::busybox(),
                "true",
            ])
            .fails_with(125, &["not unpacked for this ID mapping", "--pull=never"]);
        }
        let out = ub
            .sh(
                &["--userns", "keep-id", "-v", &format!("{}:/data", ub.work().display())],
                &common::busybox(),
                "id -u; id -g; id -un; echo $HOME; stat -c %u $HOME; touch /data/mine; \
                 stat -c '%u' /etc/passwd",
            )
            .ok();
        let l = lines(&out.stdout);
        assert_eq!(l[0], ub.uid.to_string());
        assert_eq!(l[1], ub.gid.to_string());
        assert_eq!(l[2], user);
        // The home directory of the caller's host passwd entry, created in the container if missing.
        let host_home = nix::unistd::User::from_name(user).unwrap().unwrap().dir;
        assert_eq!(l[3], host_home.display().to_string());
        assert_eq!(l[4], ub.uid.to_string());
        assert_eq!(std::fs::metadata(ub.work().join("mine")).unwrap().uid(), ub.uid);
        // The image's own files stay root's with subordinate ids; squashed to the caller without.
        assert_eq!(l[5], if user == SUB { "0" } else { &l[0] });
        // One image, unpacked for two mappings (with ranges): rmi removes every copy.
        let copies = || -> usize {
            std::fs::read_dir(ub.store().join("layers"))
                .unwrap()
                .flatten()
                .map(|k| std::fs::read_dir(k.path()).unwrap().count())
                .sum()
        };
        assert_eq!(copies(), if user == SUB { 2 } else { 1 });
        ub.drun(&["rmi", &common::busybox()]).ok();
        assert_eq!(copies(), 0);
    }
}

/// Issue 16: rootless, a host device is bind-mounted (no mknod in a user namespace, no device cgroup to write);
/// permissions narrower than `rw` cannot be enforced there, and drun says so.
#[test]
fn host_devices_are_bind_mounted_rootless() {
    let ub = UserBox::new(SUB);
    let out = ub
        .sh(
            &[
                "--device",
                "/dev/zero:/dev/myzero",
                "--device",
                "/dev/null:/dev/ronull:r",
            ],
            &common::busybox(),
            "stat -c '%t:%T' /dev/myzero; head -c 3 /dev/myzero | wc -c; echo x > /dev/myzero && echo w=ok",
        )
        .ok();
    assert_eq!(out.stdout, "1:5\n3\nw=ok\n");
    assert!(
        out.stderr
            .contains("device permissions NOT enforced rootless: \"/dev/null\" is given as \"/dev/ronull\""),
        "{}",
        out.stderr
    );
    assert!(
        !out.stderr.contains("/dev/zero"),
        "rwm needs no warning: {}",
        out.stderr
    );
    // Refused before anything starts, as for root.
    ub.drun(&["run", "-q", "--device", "/etc/passwd", &common::busybox(), "true"])
        .fails_with(
            125,
            &["invalid device \"/etc/passwd\": expected a character or block device node"],
        );
    assert!(ub.leftovers().is_empty(), "{:?}", ub.leftovers());
}

#[test]
fn limits_are_warned_about_or_required() {
    for user in [SUB, NOSUB] {
        limits_as(user);
    }
}

fn limits_as(user: &'static str) {
    // This host's cgroups are v1 (hybrid): nothing can be delegated to an ordinary user.
    let ub = UserBox::new(user);
    let out = ub
        .sh(
            &["--memory", "64m", "--cpus", "0.5", "--pids-limit", "50"],
            &common::busybox(),
            "echo ran",
        )
        .ok();
    assert_eq!(out.stdout, "ran\n");
    let warnings: Vec<&str> = out.stderr.lines().filter(|l| l.contains("NOT enforced")).collect();
    assert_eq!(warnings.len(), 1, "{user}: one warning: {}", out.stderr);
    for flag in ["--memory 64", "--cpus 0.5", "--pids-limit 50", "--require-limits"] {
        assert!(warnings[0].contains(flag), "{flag}: {}", warnings[0]);
    }
    let out = ub.drun(&[
        "run",
        "-q",
        "--require-limits",
        "--memory",
        "64m",
        &common::busybox(),
        "echo",
        "ran",
    ]);
    let out = out.fails_with(125, &["--require-limits", "--memory 64"]);
    assert!(!out.stdout.contains("ran"));
    // No limit asked for: no warning.
    let out = ub.sh(&[], &common::busybox(), "true").ok();
    assert!(!out.stderr.contains("NOT enforced"), "{}", out.stderr);
}

/// Processes whose command line starts with `marker` (drun's own command line only contains it).
fn pids_running(marker: &str) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).replace('\0', " ").starts_with(marker))
                .unwrap_or(false)
        })
        .collect()
}

#[test]
fn signals_exit_codes_and_a_killed_drun_without_a_tty() {
    for user in [SUB, NOSUB] {
        signals_as(user);
    }
}

fn signals_as(user: &'static str) {
    let ub = UserBox::new(user);
    ub.drun(&["pull", "-q", &common::busybox()]).ok();
    // SIGTERM reaches the container through --init; the exit status is 128+15.
    let marker = format!("sleep 3{}", std::process::id() % 1000);
    let child = ub
        .cmd(&[
            "run",
            "-q",
            "--init",
            "--name",
            "term-me",
            &common::busybox(),
            "sh",
            "-c",
            &marker,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    common::wait_until("the container", || !pids_running(&marker).is_empty());
    let ps = ub.drun(&["ps", "-q"]).ok();
    assert_eq!(ps.stdout.lines().count(), 1, "{}", ps.stdout);
    nix::sys::signal::kill(common::pid_of(&child), nix::sys::signal::SIGTERM).unwrap();
    let out = common::wait(child, Duration::from_secs(30));
    assert_eq!(out.code(), Some(143), "{}", out.stderr);
    assert!(pids_running(&marker).is_empty());

    // A SIGKILLed drun leaves its container and run directory; the next drun cleans both up.
    let child = ub
        .cmd(&["run", "-q", &common::busybox(), "sh", "-c", &marker])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    common::wait_until("the container", || !pids_running(&marker).is_empty());
    let mut child = child;
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        !ub.leftovers().is_empty(),
        "the run directory outlives a SIGKILLed drun"
    );
    assert!(
        !pids_running(&marker).is_empty(),
        "so does the container: the next drun must kill it"
    );
    ub.drun(&["ps"]).ok();
    common::wait_until("the orphaned container to be killed", || {
        pids_running(&marker).is_empty()
    });
    assert!(ub.leftovers().is_empty(), "{:?}", ub.leftovers());
}

#[test]
fn state_falls_back_to_tmp_when_xdg_runtime_dir_is_unusable() {
    // `srun` may carry a login node's XDG_RUNTIME_DIR that does not exist on the compute node. The fallback,
    // /tmp/drun-<uid>, is a fixed host path: drun runs with a /tmp of this test's own (removed with the sandbox).
    let ub = UserBox::new(NOSUB);
    let tmp = ub.path().join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o1777)).unwrap();
    let mut c = ub.cmd(&["--log-level", "debug", "run", "-q", &common::busybox(), "true"]);
    c.env("XDG_RUNTIME_DIR", "/run/user/does-not-exist");
    let out = common::run(with_tmp_at(c, &tmp, ub.path()), Duration::from_secs(120)).ok();
    assert!(out.stderr.contains("XDG_RUNTIME_DIR is not usable"), "{}", out.stderr);
    let fallback = tmp.join(format!("drun-{}", ub.uid));
    let meta = std::fs::metadata(&fallback).unwrap();
    assert_eq!((meta.uid(), meta.mode() & 0o777), (ub.uid, 0o700));
}

/// `c` (a command of [`common::as_user`]: a clean environment) in a mount namespace of its own whose /tmp is `tmp`;
/// `keep` (a directory below /tmp, such as the sandbox `tmp` is in) and the drun binary's directory (below /tmp
/// too when the checkout is) stay reachable at their own paths.
fn with_tmp_at(c: Command, tmp: &Path, keep: &Path) -> Command {
    let script = r#"set -e
tmp=$1
shift
while [ "$1" != -- ]; do
    case $1 in /tmp/*)
        mkdir -p "$tmp/${1#/tmp/}"
        mount --bind "$1" "$tmp/${1#/tmp/}" ;;
    esac
    shift
done
shift
mount --rbind "$tmp" /tmp
exec "$@"
"#;
    let drun_dir = Path::new(env!("CARGO_BIN_EXE_drun")).parent().unwrap();
    let mut w = Command::new("unshare");
    w.args(["--mount", "--propagation", "private", "--", "sh", "-c", script, "sh"])
        .arg(tmp)
        .arg(keep)
        .arg(drun_dir)
        .arg("--")
        .arg(c.get_program())
        .args(c.get_args())
        .env_clear()
        .stdin(Stdio::null());
    common::copy_env(&c, &mut w);
    if let Some(d) = c.get_current_dir() {
        w.current_dir(d);
    }
    w
}

#[test]
fn workflow_artifacts_belong_to_the_caller() {
    for user in [SUB, NOSUB] {
        workflow_as(user);
    }
}

fn workflow_as(user: &'static str) {
    let ub = UserBox::new(user);
    std::fs::write(
        ub.work().join("workflow.yaml"),
        format!(
            "workflows:\n  - name: make\n    provider: docker\n    image: {}\n    resources:\n      memory: 64MB\n    commands:\n      - mkdir -p out\n      - echo by-root > out/root.txt\n      - echo by-other > out/other.txt\n      - chown 1234:1234 out/other.txt || true\n      - exit 4\n    artifacts:\n      - out\n",
            common::busybox()
        ),
    )
    .unwrap();
    let out = ub.drun(&["run", "-q", "workflow.yaml"]);
    let out = out.fails_with(4, &["limits NOT enforced", "is failed (exit code 4)"]);
    assert!(out.stderr.contains("--memory"));
    // A failed run still saves its artifacts, all owned by the caller on the host.
    let art = ub.work().join("artifacts");
    for f in ["make/out/root.txt", "make/out/other.txt", "make.log"] {
        let m = std::fs::metadata(art.join(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
        assert_eq!((m.uid(), m.gid()), (ub.uid, ub.gid), "{f}");
    }
    assert_eq!(
        std::fs::read_to_string(art.join("make/out/other.txt")).unwrap(),
        "by-other\n"
    );
    assert!(ub.leftovers().is_empty(), "{:?}", ub.leftovers());
}

#[test]
fn a_broken_newuidmap_is_explained() {
    let ub = UserBox::new(SUB);
    // A copy without the setuid bit shadows the real one in PATH.
    let bin = ub.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    for tool in ["newuidmap", "newgidmap"] {
        std::fs::copy(format!("/usr/bin/{tool}"), bin.join(tool)).unwrap();
        std::fs::set_permissions(bin.join(tool), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    }
    let mut c = ub.cmd(&["run", "-q", &common::busybox(), "true"]);
    c.env("PATH", format!("{}:/usr/bin:/bin", bin.display()));
    common::run(c, Duration::from_secs(60)).fails_with(
        125,
        &[
            "newuidmap failed",
            "neither setuid root nor has file capabilities",
            "chmod u+s",
            "drun-sub:",
        ],
    );
}

#[test]
fn one_users_processes_share_a_root_and_users_share_a_blob_cache() {
    let proxy_dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::start(proxy_dir.path(), &common::registry(), &[]);
    let image = format!("{}/drun-test/debian:bookworm", proxy.addr());
    let blob_gets = |p: &Proxy, digest: &str| {
        p.requests()
            .into_iter()
            .filter(|r| r.method == "GET" && r.path.ends_with(digest) && r.status.starts_with('2'))
            .count()
    };
    // Four pulls of one user into one --root at once: each blob is downloaded once.
    let ub = UserBox::new(SUB);
    let shared_root = ub.path().join("shared-root");
    std::fs::create_dir(&shared_root).unwrap();
    std::os::unix::fs::chown(&shared_root, Some(ub.uid), Some(ub.gid)).unwrap();
    let cache = ub.path().join("blob-cache");
    std::fs::create_dir(&cache).unwrap();
    std::os::unix::fs::chown(&cache, Some(ub.uid), Some(ub.gid)).unwrap();
    let root_arg = format!("--root={}", shared_root.display());
    let cache_arg = format!("--blob-cache={}", cache.display());
    let children: Vec<_> = (0..4)
        .map(|_| {
            ub.cmd(&[&root_arg, &cache_arg, "pull", "-q", &image])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for c in children {
        common::wait(c, Duration::from_secs(300)).ok();
    }
    // Every layer blob was fetched once; the cache holds them all, verified and readable by others.
    let cached: Vec<_> = std::fs::read_dir(cache.join("sha256")).unwrap().flatten().collect();
    assert_eq!(cached.len(), 3, "the image's three layer blobs");
    for c in &cached {
        let digest = c.file_name().to_string_lossy().into_owned();
        assert_eq!(blob_gets(&proxy, &digest), 1, "{digest}: {:?}", proxy.requests());
        assert_eq!(c.metadata().unwrap().mode() & 0o777, 0o644);
    }
    ub.drun(&[&root_arg, "run", "-q", "--pull=never", &image, "true"]).ok();

    // Another user with its own store reads the layers from the cache, not the registry (and cannot write there).
    let other = UserBox::new(NOSUB);
    other.drun(&[&cache_arg, "pull", "-q", &image]).ok();
    for c in &cached {
        let digest = c.file_name().to_string_lossy().into_owned();
        assert_eq!(blob_gets(&proxy, &digest), 1, "{digest} again: {:?}", proxy.requests());
    }
    other
        .drun(&[
            &cache_arg,
            "run",
            "-q",
            "--pull=never",
            &image,
            "cat",
            "/etc/debian_version",
        ])
        .ok();

    // A corrupted cache entry is ignored (and reported), the registry serves the layer.
    let third = UserBox::new(NOSUB);
    let bad = ub.path().join("bad-cache");
    std::fs::create_dir_all(bad.join("sha256")).unwrap();
    for c in &cached {
        std::fs::write(bad.join("sha256").join(c.file_name()), b"not the layer").unwrap();
    }
    let out = third
        .drun(&[&format!("--blob-cache={}", bad.display()), "pull", "-q", &image])
        .ok();
    assert!(
        out.stderr.contains("ignoring a bad blob in the blob cache"),
        "{}",
        out.stderr
    );
    third.drun(&["run", "-q", "--pull=never", &image, "true"]).ok();
}

#[test]
fn whiteouts_kept_as_markers_go_through_overlay_and_stay_inside_the_root() {
    // Where a kernel (before 5.8) or file system cannot make overlay whiteouts or opaque markers for an ordinary
    // user, they are recorded beside the layer; a run turns them into an overlay layer of its own below the
    // marked one (issue 17: it used to flatten the image into a copy). DRUN_WHITEOUTS=markers takes that path on
    // this kernel.
    let ub = UserBox::new(SUB);
    let run = |args: &[&str]| {
        let mut c = ub.cmd(args);
        c.env("DRUN_WHITEOUTS", "markers");
        common::run(c, Duration::from_secs(300))
    };
    run(&["pull", "-q", &common::debian()]).ok();
    let markers: Vec<PathBuf> = std::fs::read_dir(ub.store().join("layers"))
        .unwrap()
        .flatten()
        .flat_map(|k| std::fs::read_dir(k.path()).unwrap().flatten())
        .map(|l| l.path().join("markers.json"))
        .filter(|p| p.is_file())
        .collect();
    assert_eq!(markers.len(), 1, "the whiteout layer: {markers:?}");
    let text = std::fs::read_to_string(&markers[0]).unwrap();
    assert!(text.contains("\"whiteouts\"") && text.contains("\"opaque\""), "{text}");
    let out = ub
        .sh(
            &["--log-level", "debug"],
            &common::debian(),
            "for p in /etc/issue.net /usr/share/doc/apt /opt/keep/gone /opt/replaced/old; do \
             [ -e $p ] && echo present:$p; done; cat /opt/replaced/new /opt/keep/changed /opt/keep/stays; \
             grep -c '^overlay / overlay' /proc/mounts",
        )
        .ok();
    assert_eq!(out.stdout, "new\nv2\nstays\n1\n");
    assert!(!out.stderr.contains("flatten"), "{}", out.stderr);

    // Markers aimed outside remove nothing there: a lower layer plants `link -> <outside>`, the upper one
    // whites out `link/victim` and makes `link` opaque.
    let outside = ub.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("victim"), "victim\n").unwrap();
    // The user could delete it if drun followed the symlink: the directory is theirs.
    std::os::unix::fs::chown(&outside, Some(ub.uid), Some(ub.gid)).unwrap();
    std::os::unix::fs::chown(outside.join("victim"), Some(ub.uid), Some(ub.gid)).unwrap();
    let layout = escape_layout(ub.path(), &outside);
    let image = format!("oci:{}:latest", layout.display());
    run(&["pull", "-q", &image]).ok();
    let out = run(&[
        "run",
        "-q",
        &image,
        "/bin/busybox",
        "sh",
        "-c",
        "ls -d /link; ls /link | wc -l",
    ])
    .ok();
    assert_eq!(out.stdout, "/link\n0\n", "the upper layer's empty opaque directory");
    assert_eq!(std::fs::read_to_string(outside.join("victim")).unwrap(), "victim\n");
}

/// An OCI layout (made with tests/fixtures/mkimage.py) of two uncompressed layers: busybox and `link -> outside`, then
/// `link/.wh.victim` and `link/.wh..wh..opq`.
fn escape_layout(dir: &Path, outside: &Path) -> PathBuf {
    let tar_of = |name: &str, build: &dyn Fn(&mut tar::Builder<std::fs::File>)| {
        let p = dir.join(name);
        let mut b = tar::Builder::new(std::fs::File::create(&p).unwrap());
        build(&mut b);
        b.finish().unwrap();
        p
    };
    let file = |b: &mut tar::Builder<std::fs::File>, path: &str, data: &[u8], mode: u32| {
        let mut h = common::tar_header(tar::EntryType::Regular, mode, data.len() as u64);
        b.append_data(&mut h, path, data).unwrap();
    };
    let busybox = std::fs::read("/bin/busybox").unwrap();
    let lower = tar_of("lower.tar", &|b| {
        file(b, "bin/busybox", &busybox, 0o755);
        let mut h = common::tar_header(tar::EntryType::Symlink, 0o777, 0);
        b.append_link(&mut h, "link", outside).unwrap();
    });
    let upper = tar_of("upper.tar", &|b| {
        file(b, "link/.wh.victim", b"", 0o644);
        file(b, "link/.wh..wh..opq", b"", 0o644);
    });
    let layout = dir.join("layout");
    let spec = serde_json::json!({
        "layout": layout, "tag": "latest", "created": "2024-01-01T00:00:00Z",
        "images": [{"os": "linux", "architecture": "amd64", "config": {"Cmd": ["/bin/busybox", "true"]},
                    "layers": [{"tar": lower, "compression": "none", "created_by": "link to outside"},
                               {"tar": upper, "compression": "none", "created_by": "whiteouts through it"}]}]
    });
    let spec_file = dir.join("spec.json");
    std::fs::write(&spec_file, spec.to_string()).unwrap();
    common::mkimage_build(&spec_file);
    // Readable by the test user.
    Command::new("chmod")
        .args(["-R", "a+rX"])
        .arg(&layout)
        .status()
        .unwrap();
    layout
}

#[test]
fn a_state_directory_others_can_write_is_refused() {
    // What is in the state directory decides what drun deletes and kills: one that another user made, or that
    // others can write, is refused (the /tmp/drun-<uid> fallback could be squatted).
    let ub = UserBox::new(SUB);
    let squatted = ub.path().join("squatted");
    std::fs::create_dir(&squatted).unwrap();
    std::fs::set_permissions(&squatted, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let arg = format!("--state={}", squatted.display());
    ub.drun(&[&arg, "ps"])
        .fails_with(125, &["is not a private directory of yours"]);
    // The user's own, but writable by others: refused too.
    std::os::unix::fs::chown(&squatted, Some(ub.uid), Some(ub.gid)).unwrap();
    ub.drun(&[&arg, "run", "-q", &common::busybox(), "true"])
        .fails_with(125, &["is not a private directory of yours"]);
    std::fs::set_permissions(&squatted, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    ub.drun(&[&arg, "run", "-q", &common::busybox(), "true"]).ok();
}

#[test]
fn a_rootless_host_pid_run_leaves_no_process_behind() {
    // Without a cgroup of its own (drun-nosub on a v1 host), only drun's subreaper sweep can end a process that
    // left the container's session: `setsid` escapes a process group, and the init's death ends nothing with the
    // host's pid namespace.
    let ub = UserBox::new(NOSUB);
    ub.drun(&["pull", "-q", &common::busybox()]).ok();
    let marker = format!("drun-leftover-{}", std::process::id());
    let out = ub
        .sh(
            &["--pid", "host"],
            &common::busybox(),
            // The container's main process ends once the escaped one runs (it made its file).
            &format!(
                "setsid sh -c 'touch /tmp/escaped; sleep 600; : {marker}' </dev/null >/dev/null 2>&1 & \
                 until [ -e /tmp/escaped ]; do sleep 0.01; done; echo started"
            ),
        )
        .ok();
    assert!(out.stdout.contains("started"), "{out:?}", out = out.stdout);
    // drun has exited: any process whose command line names the marker is the container's.
    let left: Vec<i32> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| String::from_utf8_lossy(&c).contains(&marker))
        })
        .collect();
    for &p in &left {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(p), nix::sys::signal::Signal::SIGKILL);
    }
    assert!(left.is_empty(), "processes of the container outlived it: {left:?}");
}

#[test]
fn rootless_images_of_128_layers_run_through_overlay_without_a_copy() {
    // As images_of_128_layers_run_through_overlay_without_a_copy in run.rs, in drun's user namespace.
    let ub = UserBox::new(SUB);
    let layout = common::many_layer_layout(ub.path(), 128);
    let image = format!("oci:{}:latest", layout.display());
    ub.drun(&["pull", "-q", &image]).ok();
    for knob in ["", "no-lowerdir-plus"] {
        let mut c = ub.cmd(&[
            "run",
            "-q",
            &image,
            "/bin/busybox",
            "sh",
            "-c",
            common::MANY_LAYER_SCRIPT,
        ]);
        c.env("DRUN_ROOTFS", knob);
        let out = common::run(c, Duration::from_secs(300)).ok();
        assert_eq!(out.stdout, common::many_layer_view(128), "DRUN_ROOTFS={knob:?}");
    }
    assert!(ub.leftovers().is_empty(), "{:?}", ub.leftovers());
}

#[test]
fn rootless_export_and_run_of_a_squashfs_image_file() {
    // An ordinary user cannot mount squashfs in a user namespace: drun mounts the file with squashfuse inside its
    // own, `allow_other` so that the container's other users (subordinate ids) read it too.
    let ub = UserBox::new(SUB);
    let file = ub.work().join("debian.sqsh");
    ub.drun(&["export", &common::debian(), "-o", &file.display().to_string()])
        .ok();
    let mut c = ub.cmd(&["--log-level", "drun=debug", "run", "-q", "-u", "1234"]);
    c.arg(&file).args([
        "sh",
        "-c",
        "id -u; cat /opt/perm/owned /opt/keep/changed; test -e /opt/keep/gone || echo gone",
    ]);
    let out = common::run(c, Duration::from_secs(120)).ok();
    assert!(out.stderr.contains("mounted with squashfuse"), "{}", out.stderr);
    assert_eq!(out.stdout, "1234\nowned\nv2\ngone\n");
    assert!(ub.leftovers().is_empty(), "{:?}", ub.leftovers());
}

#[test]
fn rootless_pull_squash_runs_through_squashfuse_with_nothing_unpacked() {
    let ub = UserBox::new(SUB);
    ub.drun(&["pull", "-q", "--squash", &common::debian()]).ok();
    let layers = ub.store().join("layers");
    let unpacked: Vec<_> = std::fs::read_dir(&layers)
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(unpacked.is_empty(), "{unpacked:?}");
    let mut c = ub.cmd(&[
        "--log-level",
        "drun=debug",
        "run",
        "-q",
        "-u",
        "1234",
        &common::debian(),
    ]);
    c.args([
        "sh",
        "-c",
        "id -u; cat /opt/perm/owned /opt/keep/changed; stat -c '%u %g' /opt/perm/owned; test -e /opt/keep/gone || echo gone",
    ]);
    let out = common::run(c, Duration::from_secs(120)).ok();
    assert!(out.stderr.contains("mounted with squashfuse"), "{}", out.stderr);
    assert_eq!(out.stdout, "1234\nowned\nv2\n1234 5678\ngone\n");
    assert!(ub.leftovers().is_empty(), "{:?}", ub.leftovers());
}

#[test]
fn rootless_export_to_an_archive_keeps_the_images_owners() {
    // An ordinary user with subordinate ids exports from its own store (unpacked for its mapping, read inside
    // its user namespace): root pulls the archive and sees the image's owners and modes.
    let ub = UserBox::new(SUB);
    let image = common::debian();
    let archive = ub.work().join("debian.tar");
    ub.drun(&["export", &image, "-o", &format!("docker-archive:{}", archive.display())])
        .ok();
    let sb = common::Sandbox::new();
    sb.drun(&["pull", "-q", &format!("docker-archive:{}", archive.display())])
        .ok();
    let out = sb
        .drun(&[
            "run",
            "-q",
            &image,
            "sh",
            "-c",
            "stat -c '%u %g %a' /opt/perm/owned; cat /opt/keep/changed; test -e /opt/keep/gone || echo gone",
        ])
        .ok();
    assert_eq!(out.stdout, "1234 5678 640\nv2\ngone\n");
}

#[test]
fn rootless_runs_from_a_shared_image_directory() {
    // An ordinary user converts into an image directory and runs from it through squashfuse; nothing unpacked.
    let ub = UserBox::new(SUB);
    let dir = ub.work().join("images");
    let mut c = ub.cmd(&[
        "--log-level",
        "drun=debug",
        "--image-dir",
        &dir.display().to_string(),
        "run",
        "-q",
    ]);
    c.args([
        &common::debian(),
        "sh",
        "-c",
        "stat -c '%u %g' /opt/perm/owned; cat /opt/keep/changed",
    ]);
    let out = common::run(c, Duration::from_secs(300)).ok();
    assert!(
        out.stderr.contains("converted into the image directory"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("mounted with squashfuse"), "{}", out.stderr);
    assert_eq!(out.stdout, "1234 5678\nv2\n");
    let layers: Vec<_> = std::fs::read_dir(ub.store().join("layers"))
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(layers.is_empty(), "{layers:?}");
    assert!(ub.leftovers().is_empty(), "{:?}", ub.leftovers());
}

#[test]
fn exec_as_a_rootless_user_joins_the_container_and_others_are_refused() {
    use crate::exec::{assert_same_confinement, processes_running, start_named, SELF_REPORT};
    let ub = UserBox::new(SUB);
    ub.drun(&["pull", "-q", &common::busybox()]).ok();
    let image = common::busybox();
    let (run, pid) = start_named(
        ub.cmd(&[
            "run",
            "--name",
            "svc",
            "--cap-add",
            "SYS_PTRACE",
            &image,
            "sleep",
            "600",
        ]),
        &|| ub.drun(&["ps", "--json"]).ok().stdout,
        "svc",
    );
    // In the container's user namespace (the subordinate mapping: two lines), as its root, confined as it is.
    let out = ub
        .drun(&["exec", "svc", "sh", "-c", "id -u; wc -l < /proc/self/uid_map"])
        .ok();
    assert_eq!(lines(&out.stdout), ["0", "2"]);
    let report = ub.drun(&["exec", "svc", "sh", "-c", SELF_REPORT]).ok().stdout;
    let init_cgroup = ub.drun(&["exec", "svc", "cat", "/proc/1/cgroup"]).ok().stdout;
    assert_same_confinement(&report, pid, &init_cgroup);
    // Another user in the container's namespace, and the statuses as for root.
    let out = ub.drun(&["exec", "-u", "nobody", "svc", "id", "-u"]).ok();
    assert_eq!(out.stdout, "65534\n");
    assert_eq!(ub.drun(&["exec", "svc", "sh", "-c", "exit 3"]).code(), Some(3));
    ub.drun(&["exec", "svc", "no-such-cmd"])
        .fails_with(127, &["no-such-cmd"]);

    // Another user sees no such container, and cannot use the owner's state directory.
    let other = UserBox::new(NOSUB);
    other
        .drun(&["exec", "svc", "true"])
        .fails_with(125, &["no running container \"svc\""]);
    let state = ub.path().join("xdg/drun");
    other
        .drun(&["--state", state.to_str().unwrap(), "exec", "svc", "true"])
        .fails_with(125, &["cannot use the state directory", "Permission denied"]);

    // An exec'd process ends with the container; nothing is left.
    let mut c = ub.cmd(&["exec", "svc", "sleep", "6132"]);
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    let exec_child = c.spawn().unwrap();
    common::wait_until("the exec'd sleep", || processes_running("sleep 6132").len() == 1);
    ub.drun(&["kill", "svc"]).ok();
    assert_eq!(common::wait(run, Duration::from_secs(60)).code(), Some(137));
    assert_eq!(common::wait(exec_child, Duration::from_secs(60)).code(), Some(137));
    assert!(processes_running("sleep 6132").is_empty());
    assert!(ub.leftovers().is_empty(), "{:?}", ub.leftovers());
    ub.drun(&["exec", "svc", "true"])
        .fails_with(125, &["no running container \"svc\""]);
    // Without a cgroup (no delegation here) and with the host's pid namespace, nothing would end an exec'd
    // process with the container: refused.
    let (run, _) = start_named(
        ub.cmd(&["run", "--name", "hp", "--pid", "host", &image, "sleep", "600"]),
        &|| ub.drun(&["ps", "--json"]).ok().stdout,
        "hp",
    );
    ub.drun(&["exec", "hp", "true"])
        .fails_with(125, &["shares the host's pid namespace and has no cgroup"]);
    ub.drun(&["kill", "hp"]).ok();
    assert_eq!(common::wait(run, Duration::from_secs(60)).code(), Some(137));
    assert!(ub.leftovers().is_empty(), "{:?}", ub.leftovers());
}

#[test]
fn rootless_workflow_setups_are_kept_as_layers_of_the_users_store() {
    for user in [SUB, NOSUB] {
        let ub = UserBox::new(user);
        std::fs::write(
            ub.work().join("wf.yaml"),
            format!(
                "workflows:\n  - name: s\n    image: {}\n    setup:\n      - mkdir -p /opt/tool && echo tool-1 > /opt/tool/v\n      - rm -rf /etc/profile.d\n    commands:\n      - cat /opt/tool/v\n      - test ! -e /etc/profile.d && echo removed\n",
                common::busybox()
            ),
        )
        .unwrap();
        let first = ub.drun(&["run", "wf.yaml"]).ok();
        assert!(first.stderr.contains("running the setup"), "{user}: {}", first.stderr);
        assert!(
            first.stdout.contains("tool-1") && first.stdout.contains("removed"),
            "{user}: {}",
            first.stdout
        );
        let second = ub.drun(&["run", "wf.yaml"]).ok();
        assert!(
            !second.stderr.contains("running the setup"),
            "{user}: {}",
            second.stderr
        );
        // The deletion is kept too: a whiteout in the layer, in the user's ID mapping.
        assert!(
            second.stdout.contains("tool-1") && second.stdout.contains("removed"),
            "{user}: {}",
            second.stdout
        );
        let setup = ub.store().join("setup");
        let maps: Vec<_> = std::fs::read_dir(&setup)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(maps.len(), 1, "{user}: {maps:?}");
        assert!(ub.leftovers().is_empty(), "{user}: {:?}", ub.leftovers());
    }
}

/// A rootless health probe is a `drun exec` started inside the container's user namespace, with the host's files
/// in view: a container that shares the host's pids and may trace (`CAP_SYS_PTRACE`) could reach the host
/// through it, so drun does not probe such a container, and says so. Without that capability it probes.
#[test]
fn no_health_probes_where_a_rootless_container_could_trace_them() {
    let ub = UserBox::new(SUB);
    let img = common::busybox();
    ub.drun(&["pull", "-q", &img]).ok();
    let run = |extra: &[&str]| {
        let mut a = vec![
            "run",
            "-q",
            "--pid",
            "host",
            "--health-cmd",
            "true",
            "--health-interval",
            "100ms",
        ];
        a.extend_from_slice(extra);
        a.extend_from_slice(&[&img, "sleep", "1"]);
        ub.drun(&a).ok()
    };
    let warning = "the health check is not run";
    let out = run(&["--cap-add", "SYS_PTRACE"]);
    assert!(out.stderr.contains(warning), "{}", out.stderr);
    let out = run(&["--privileged"]);
    assert!(out.stderr.contains(warning), "{}", out.stderr);
    let out = run(&[]);
    assert!(!out.stderr.contains(warning), "{}", out.stderr);
}
