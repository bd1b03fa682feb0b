//! Shared fixtures: the registries and images started by `hack/registry.sh` and `hack/images.sh`, a sandbox per
//! test (its own store, config and home), and running drun with a timeout.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Values from `$DRUN_TEST_STATE/env`, written by `hack/registry.sh up`.
pub fn env(key: &str) -> String {
    static ENV: OnceLock<HashMap<String, String>> = OnceLock::new();
    let map = ENV.get_or_init(|| {
        let state = std::env::var("DRUN_TEST_STATE").unwrap_or_else(|_| "/tmp/drun-test-state".into());
        let path = Path::new(&state).join("env");
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!("cannot read {}: {e}\nstart the test registries first: `make images` (hack/registry.sh up && hack/images.sh)", path.display())
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

    /// A drun command isolated from the caller's store, configuration and credentials.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_drun"));
        c.args(args)
            .env("DRUN_ROOT", self.store())
            .env("DRUN_STATE", self.state())
            .env("DRUN_CONFIG", self.config())
            .env("HOME", self.path().join("home"))
            .env("XDG_RUNTIME_DIR", self.path().join("xdg"))
            .env_remove("DOCKER_CONFIG")
            .env_remove("REGISTRY_AUTH_FILE")
            .env_remove("DRUN_FAILPOINT")
            .env_remove("DRUN_LOG")
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

/// `hack/testproxy.py` in front of a registry, stopped (by PID) on drop.
pub struct Proxy {
    child: Child,
    pub port: u16,
    pub log: PathBuf,
}

impl Proxy {
    pub fn start(dir: &Path, upstream: &str, faults: &[&str]) -> Proxy {
        let port_file = dir.join(format!("proxy-{}.port", std::process::id()));
        let log = dir.join("proxy.log");
        let _ = std::fs::remove_file(&port_file);
        let mut c = Command::new("python3");
        c.arg(env("DRUN_TEST_TESTPROXY"))
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

    /// Logged requests: (method, path, status, range header).
    pub fn requests(&self) -> Vec<(String, String, String, String)> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(|l| {
                let mut p = l.splitn(4, ' ');
                let mut next = || p.next().unwrap_or("").to_string();
                (next(), next(), next(), next())
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

/// Builds the OCI layout a `hack/mkimage.py` spec file describes.
pub fn mkimage(spec_file: &Path) {
    let st = Command::new("python3")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/hack/mkimage.py"))
        .arg("build")
        .arg(spec_file)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success(), "mkimage.py build");
}

impl Sandbox {
    /// `drun ARGS` (a shell command line) at a terminal of its own, as a user's shell would start it: `script`
    /// gives it one.
    pub fn at_terminal(&self, args: &str) -> Command {
        let mut c = Command::new("script");
        c.args(["-qec", &format!("{} {args}", env!("CARGO_BIN_EXE_drun")), "/dev/null"])
            .env("DRUN_ROOT", self.store())
            .env("DRUN_STATE", self.state())
            .env("DRUN_CONFIG", self.config())
            .env_remove("DRUN_LOG")
            .stdin(Stdio::null());
        c
    }
}
