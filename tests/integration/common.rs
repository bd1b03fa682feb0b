//! Shared fixtures and helpers: the registries and images started by `tests/fixtures/registry.sh` and
//! `tests/fixtures/images.sh`, the test images' references, a sandbox per test (its own store, config and home,
//! and none of the caller's `DRUN_*`, `SLURM_*` or `NVIDIA_*` variables), running drun with a timeout, and the
//! fault proxy.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Values from `$DRUN_TEST_STATE/env`, written by `tests/fixtures/registry.sh up`.
pub fn env(key: &str) -> String {
    static ENV: OnceLock<HashMap<String, String>> = OnceLock::new();
    let map = ENV.get_or_init(|| {
        let state = std::env::var("DRUN_TEST_STATE").unwrap_or_else(|_| "/tmp/drun-test-state".into());
        let path = Path::new(&state).join("env");
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "cannot read {}: {e}\nstart the test registries first: `make images` (tests/fixtures/images.sh)",
                path.display()
            )
        });
        text.lines()
            .filter_map(|l| l.strip_prefix("export "))
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.trim_matches('"').trim_matches('\'').to_string()))
            .collect()
    });
    map.get(key)
        .cloned()
        .unwrap_or_else(|| panic!("{key} is not set in $DRUN_TEST_STATE/env"))
}

pub fn registry() -> String {
    env("DRUN_TEST_REGISTRY")
}

pub fn cache() -> PathBuf {
    PathBuf::from(env("DRUN_TEST_CACHE"))
}

/// A file of `tests/fixtures/` (scripts the tests run: the fault proxy, the image builder, the fake driver, ...).
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

/// `NAME:TAG` of the test registry's `drun-test/` images (built by `tests/fixtures/images.sh`).
pub fn test_image(name_and_tag: &str) -> String {
    format!("{}/drun-test/{name_and_tag}", registry())
}

/// The multi-arch busybox test image.
pub fn busybox() -> String {
    test_image("busybox:latest")
}

/// The three-layer Debian test image (whiteouts, hardlinks into a lower layer, odd modes and owners).
pub fn debian() -> String {
    test_image("debian:bookworm")
}

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// A test's own directory: store, config, home, credentials.
pub struct Sandbox {
    pub dir: tempfile::TempDir,
}

pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }
    #[track_caller]
    pub fn ok(self) -> Output {
        assert!(
            self.status.success(),
            "drun failed ({}):\nstdout:\n{}\nstderr:\n{}",
            self.status,
            self.stdout,
            self.stderr
        );
        self
    }
    #[track_caller]
    pub fn fails_with(self, code: i32, needles: &[&str]) -> Output {
        assert_eq!(
            self.code(),
            Some(code),
            "expected exit {code}, got {}:\nstdout:\n{}\nstderr:\n{}",
            self.status,
            self.stdout,
            self.stderr
        );
        for n in needles {
            assert!(self.stderr.contains(n), "stderr lacks {n:?}:\n{}", self.stderr);
        }
        self
    }
}

/// The drun under test: cargo's build of it, or `DRUN_TEST_BIN` where the test binary was carried to another
/// machine without its build tree (hack/gpu-hardware.sh).
pub fn drun_exe() -> std::ffi::OsString {
    std::env::var_os("DRUN_TEST_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_drun").into())
}

impl Sandbox {
    pub fn new() -> Sandbox {
        let dir = tempfile::Builder::new().prefix("drun-it-").tempdir().expect("tempdir");
        for sub in ["home", "xdg", "root"] {
            std::fs::create_dir_all(dir.path().join(sub)).unwrap();
        }
        std::fs::write(dir.path().join("config.toml"), "").unwrap();
        Sandbox { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn store(&self) -> PathBuf {
        self.path().join("root")
    }

    /// Run state of this sandbox's containers.
    pub fn state(&self) -> PathBuf {
        self.path().join("state")
    }

    pub fn config(&self) -> PathBuf {
        self.path().join("config.toml")
    }

    pub fn write_config(&self, text: &str) {
        std::fs::write(self.config(), text).unwrap();
    }

    /// A drun command isolated from the caller's store, configuration, credentials and job environment.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(drun_exe());
        without_callers_settings(&mut c);
        c.args(args)
            .env("DRUN_ROOT", self.store())
            .env("DRUN_STATE", self.state())
            .env("DRUN_CONFIG", self.config())
            .env("HOME", self.path().join("home"))
            .env("XDG_RUNTIME_DIR", self.path().join("xdg"))
            .env_remove("DOCKER_CONFIG")
            .env_remove("REGISTRY_AUTH_FILE")
            .stdin(Stdio::null());
        c
    }

    pub fn drun(&self, args: &[&str]) -> Output {
        run(self.cmd(args), Duration::from_secs(300))
    }

    /// Unpacked layer trees of a stored image, bottom first.
    pub fn layer_roots(&self, name: &str) -> Vec<PathBuf> {
        let out = self.drun(&["inspect", name]).ok();
        let doc: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
        doc["Layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| {
                // The store's key (src/image/store.rs): the ChainID for a layer that links into its lowers.
                let key = match l["chain_id"].as_str() {
                    Some(c) => format!("chain-{}", c.strip_prefix("sha256:").unwrap()),
                    None => l["diff_id"]
                        .as_str()
                        .unwrap()
                        .strip_prefix("sha256:")
                        .unwrap()
                        .to_string(),
                };
                self.store().join("layers/host").join(key).join("root")
            })
            .collect()
    }

    /// Entries of a store subdirectory (e.g. "tmp", "layers/host").
    pub fn entries(&self, sub: &str) -> Vec<String> {
        match std::fs::read_dir(self.store().join(sub)) {
            Ok(rd) => rd
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect(),
            Err(_) => vec![],
        }
    }
}

/// Removes from `c`'s environment every `DRUN_*`, `SLURM_*` and `NVIDIA_*` variable the test process inherited:
/// inside a Slurm allocation, with a shared blob cache or a GPU host's settings, drun would act on them and the
/// tests would check something else. What a test needs it sets again after this.
pub fn without_callers_settings(c: &mut Command) {
    for (key, _) in std::env::vars_os() {
        let k = key.to_string_lossy();
        if ["DRUN_", "SLURM_", "NVIDIA_"].iter().any(|p| k.starts_with(p)) {
            c.env_remove(&key);
        }
    }
    // drun's GPU discovery follows it.
    c.env_remove("LD_LIBRARY_PATH");
}

/// Gives `to` the environment changes `from` makes (set and removed variables): for a drun command line that a
/// wrapper (a shell, a cgroup move) starts.
pub fn copy_env(from: &Command, to: &mut Command) {
    for (k, v) in from.get_envs() {
        match v {
            Some(v) => to.env(k, v),
            None => to.env_remove(k),
        };
    }
}

/// The pid of a child process, as nix takes it.
pub fn pid_of(child: &Child) -> nix::unistd::Pid {
    nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("a pid fits in i32"))
}

/// Polls `ready` every 20 ms until it holds, for at most a minute.
#[track_caller]
pub fn wait_until(what: &str, mut ready: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ready() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs a command to completion, killing it after `limit`.
pub fn run(mut cmd: Command, limit: Duration) -> Output {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = cmd.spawn().expect("spawn");
    wait(child, limit)
}

pub fn wait(mut child: Child, limit: Duration) -> Output {
    let mut so = child.stdout.take().unwrap();
    let mut se = child.stderr.take().unwrap();
    let t1 = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = so.read_to_string(&mut s);
        s
    });
    let t2 = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = se.read_to_string(&mut s);
        s
    });
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let st = child.wait().unwrap();
            panic!(
                "command timed out after {limit:?} ({st}); stderr so far: {}",
                t2.join().unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: t1.join().unwrap(),
        stderr: t2.join().unwrap(),
    }
}

/// `tests/fixtures/testproxy.py` in front of a registry, stopped (by PID) on drop.
pub struct Proxy {
    child: Child,
    pub port: u16,
    pub log: PathBuf,
}

/// A request the proxy logged.
#[derive(Debug)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub status: String,
    /// The client's `Range` header, or `-`.
    pub range: String,
    /// The faults that fired for it (`reset-blob`, `no-range`, `status-blob`, ...), comma-separated; empty when none.
    pub faults: String,
    /// When it arrived, in milliseconds of the proxy's monotonic clock.
    pub at_ms: u64,
}

impl Proxy {
    /// Starts the proxy with `faults` (testproxy.py's `--fault` specs).
    pub fn start(dir: &Path, upstream: &str, faults: &[&str]) -> Proxy {
        let port_file = dir.join(format!("proxy-{}.port", std::process::id()));
        let log = dir.join("proxy.log");
        let _ = std::fs::remove_file(&port_file);
        let mut c = Command::new("python3");
        c.arg(fixture("testproxy.py"))
            .args(["--upstream", upstream, "--port-file"])
            .arg(&port_file)
            .arg("--log")
            .arg(&log)
            .args(["--max-seconds", "300"]);
        for f in faults {
            c.args(["--fault", f]);
        }
        let child = c
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start testproxy.py");
        let start = Instant::now();
        let port = loop {
            if let Some(p) = std::fs::read_to_string(&port_file)
                .ok()
                .and_then(|s| s.trim().parse().ok())
            {
                break p;
            }
            assert!(start.elapsed() < Duration::from_secs(10), "testproxy did not start");
            std::thread::sleep(Duration::from_millis(20));
        };
        Proxy { child, port, log }
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The requests logged so far, in the order they were answered.
    pub fn requests(&self) -> Vec<Request> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(|l| {
                let mut words = l.split_whitespace();
                let mut next = || words.next().unwrap_or("").to_string();
                let (method, path, status, range) = (next(), next(), next(), next());
                let rest: Vec<String> = std::iter::from_fn(|| words.next().map(String::from)).collect();
                let field = |name: &str| rest.iter().find_map(|w| w.strip_prefix(name)).unwrap_or("").to_string();
                Request {
                    method,
                    path,
                    status,
                    range,
                    faults: field("fault="),
                    at_ms: field("at=")
                        .parse()
                        .unwrap_or_else(|_| panic!("no at= in the proxy's log line {l:?}")),
                }
            })
            .collect()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads a file below a stored image's layers, top layer first (what the merged root shows, ignoring whiteouts).
pub fn read_in_layers(roots: &[PathBuf], rel: &str) -> Option<String> {
    roots
        .iter()
        .rev()
        .find_map(|r| std::fs::read_to_string(r.join(rel)).ok())
}

impl Sandbox {
    /// `drun` with extra environment variables.
    pub fn drun_with(&self, args: &[&str], envs: &[(&str, &std::ffi::OsStr)]) -> Output {
        let mut c = self.cmd(args);
        for (k, v) in envs {
            c.env(k, v);
        }
        run(c, Duration::from_secs(300))
    }
}

/// Mounts below the sandbox and its run directories left behind.
pub fn leftovers(sb: &Sandbox) -> Vec<String> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    let mut out: Vec<String> = mounts
        .lines()
        .filter(|l| l.contains(sb.path().to_str().unwrap()))
        .map(String::from)
        .collect();
    if let Ok(rd) = std::fs::read_dir(sb.state().join("containers")) {
        out.extend(rd.flatten().map(|e| e.path().display().to_string()));
    }
    if let Ok(rd) = std::fs::read_dir(sb.state().join("libcontainer")) {
        out.extend(rd.flatten().map(|e| e.path().display().to_string()));
    }
    out
}

/// `prog` run as `uid`/`gid` (with that user's groups) through `setpriv`, which execs it directly (signals reach
/// it), with a clean environment holding only PATH and `home` as HOME.
pub fn as_user(uid: u32, gid: u32, home: &Path, prog: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut c = Command::new("setpriv");
    c.arg(format!("--reuid={uid}"))
        .arg(format!("--regid={gid}"))
        .args(["--init-groups", "--"])
        .arg(prog)
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin")
        .env("HOME", home)
        .stdin(Stdio::null());
    c
}

/// Compiles a C program statically (build-essential is in `make deps`) to `dir/name`: a probe that runs in any
/// image.
pub fn static_c(dir: &Path, name: &str, source: &str) -> PathBuf {
    let src = dir.join(format!("{name}.c"));
    std::fs::write(&src, source).unwrap();
    let out = dir.join(name);
    let st = Command::new("gcc")
        .args(["-static", "-O2", "-o"])
        .arg(&out)
        .arg(&src)
        .status()
        .unwrap();
    assert!(st.success(), "gcc -static failed (build-essential is in make deps)");
    out
}

/// The header of an entry of a layer a test writes: GNU format, owned by root, mtime 0.
pub fn tar_header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h
}

/// Builds the OCI layout a `tests/fixtures/mkimage.py` spec file describes.
pub fn mkimage_build(spec_file: &Path) {
    mkimage(&["build".as_ref(), spec_file.as_os_str()]);
}

/// Writes the layer tarball `out` of one of `tests/fixtures/mkimage.py`'s recipes (`extra`: its options).
pub fn mkimage_layer(recipe: &str, out: &Path, extra: &[&std::ffi::OsStr]) {
    let mut args = vec!["layer".as_ref(), recipe.as_ref(), out.as_os_str()];
    args.extend_from_slice(extra);
    mkimage(&args);
}

fn mkimage(args: &[&std::ffi::OsStr]) {
    let st = Command::new("python3")
        .arg(fixture("mkimage.py"))
        .args(args)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success(), "mkimage.py {args:?}");
}

/// Runs `cmd` to completion (killed after `limit`), with the peak resident memory of its process in bytes and how
/// long it ran. The peak is the `VmHWM` of its /proc status, sampled every few milliseconds until it exits
/// (`ru_maxrss` would not do: at `exec` the kernel carries the spawning process's high-water mark over, and that is
/// this test process's). Its output is kept up to 1 MiB, so that an unbounded one cannot grow this process either.
pub fn measured(mut cmd: Command, limit: Duration) -> (Output, u64, Duration) {
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let capped = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = (&mut r).take(1 << 20).read_to_end(&mut buf);
            let _ = std::io::copy(&mut r, &mut std::io::sink());
            String::from_utf8_lossy(&buf).into_owned()
        })
    };
    let t1 = capped(Box::new(child.stdout.take().unwrap()));
    let t2 = capped(Box::new(child.stderr.take().unwrap()));
    let status_file = format!("/proc/{}/status", child.id());
    let start = Instant::now();
    let mut peak_kib = 0u64;
    let mut timed_out = false;
    let status = loop {
        if let Some(hwm) = std::fs::read_to_string(&status_file).ok().and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        }) {
            peak_kib = peak_kib.max(hwm);
        }
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if !timed_out && start.elapsed() > limit {
            timed_out = true;
            let _ = child.kill();
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let took = start.elapsed();
    let stderr = t2.join().unwrap();
    assert!(!timed_out, "{cmd:?} ran longer than {limit:?}; stderr: {stderr}");
    let out = Output {
        status,
        stdout: t1.join().unwrap(),
        stderr,
    };
    (out, peak_kib * 1024, took)
}

impl Sandbox {
    /// `drun ARGS` (a shell command line) at a terminal of its own, as a user's shell would start it: `script`
    /// gives it one.
    pub fn at_terminal(&self, args: &str) -> Command {
        let mut c = Command::new("script");
        without_callers_settings(&mut c);
        c.args(["-qec", &format!("{} {args}", drun_exe().to_string_lossy()), "/dev/null"])
            .env("DRUN_ROOT", self.store())
            .env("DRUN_STATE", self.state())
            .env("DRUN_CONFIG", self.config())
            .stdin(Stdio::null());
        c
    }
}

/// An OCI layout of `layers` uncompressed layers (made with tests/fixtures/mkimage.py, readable by the test users):
/// busybox, then layers 1.. each adding `/layers/N` and replacing `/top` with "N"; every tenth deletes the previous
/// layer's file (a whiteout) and layer 50 makes `/opq` opaque over layer 20's `/opq/old`. What a container sees is
/// [`many_layer_view`]: any layer applied out of order or dropped changes it.
pub fn many_layer_layout(dir: &Path, layers: usize) -> PathBuf {
    assert!(layers > 50, "the opaque directory is made by layer 50");
    let layer = |n: usize, build: &dyn Fn(&mut tar::Builder<std::fs::File>)| {
        let p = dir.join(format!("layer-{n}.tar"));
        let mut b = tar::Builder::new(std::fs::File::create(&p).unwrap());
        build(&mut b);
        b.finish().unwrap();
        p
    };
    let file = |b: &mut tar::Builder<std::fs::File>, path: &str, data: &[u8]| {
        let mut h = tar_header(tar::EntryType::Regular, 0o644, data.len() as u64);
        b.append_data(&mut h, path, data).unwrap();
    };
    let busybox = std::fs::read("/bin/busybox").unwrap();
    let mut tars = vec![layer(0, &|b| {
        let mut h = tar_header(tar::EntryType::Regular, 0o755, busybox.len() as u64);
        b.append_data(&mut h, "bin/busybox", busybox.as_slice()).unwrap();
    })];
    for n in 1..layers {
        tars.push(layer(n, &|b| {
            file(b, &format!("layers/{n}"), b"");
            file(b, "top", n.to_string().as_bytes());
            if n % 10 == 0 {
                file(b, &format!("layers/.wh.{}", n - 1), b"");
            }
            if n == 20 {
                file(b, "opq/old", b"");
            }
            if n == 50 {
                file(b, "opq/.wh..wh..opq", b"");
                file(b, "opq/new", b"");
            }
        }));
    }
    let layout = dir.join("layout");
    let spec = serde_json::json!({
        "layout": layout, "tag": "latest", "created": "2024-01-01T00:00:00Z",
        "images": [{"os": "linux", "architecture": "amd64", "config": {"Cmd": ["/bin/busybox", "true"]},
                    "layers": tars.iter().enumerate().map(|(n, t)| serde_json::json!(
                        {"tar": t, "compression": "none", "created_by": format!("layer {n}")})).collect::<Vec<_>>()}]
    });
    let spec_file = dir.join("spec.json");
    std::fs::write(&spec_file, spec.to_string()).unwrap();
    mkimage_build(&spec_file);
    for t in tars {
        std::fs::remove_file(t).unwrap();
    }
    let st = Command::new("chmod")
        .args(["-R", "a+rX"])
        .arg(&layout)
        .status()
        .unwrap();
    assert!(st.success());
    layout
}

/// The script a container of [`many_layer_layout`] runs: the top file, how many layer files are left, the opaque
/// directory's entries and the file-system type of `/` (overlay, not a flattened copy).
pub const MANY_LAYER_SCRIPT: &str = "cat /top; echo; ls /layers | wc -l; ls /opq; \
     while read -r dev mnt fs rest; do [ \"$mnt\" = / ] && r=$fs; done < /proc/mounts; echo $r";

/// What [`MANY_LAYER_SCRIPT`] prints for an image of `layers` layers seen through overlay.
pub fn many_layer_view(layers: usize) -> String {
    let files = (layers - 1) - (layers - 1) / 10;
    format!("{}\n{files}\nnew\noverlay\n", layers - 1)
}

/// The value of extended attribute `name` of `p`, read by python3 (std has no xattr call); `None` when it has
/// none.
pub fn xattr(p: &Path, name: &str) -> Option<Vec<u8>> {
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import os,sys; sys.stdout.buffer.write(os.getxattr(sys.argv[1], sys.argv[2]))",
        ])
        .arg(p)
        .arg(name)
        .output()
        .ok()?;
    out.status.success().then_some(out.stdout)
}

/// Whether the running kernel is at least `major.minor`.
pub fn kernel_at_least(major: u32, minor: u32) -> bool {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .ok()
        .and_then(|r| {
            let mut v = r.split(['.', '-']).map(|n| n.parse::<u32>().unwrap_or(0));
            Some((v.next()?, v.next()?))
        })
        .is_some_and(|v| v >= (major, minor))
}
