//! Pays the kernel's cgroup-migration grace period off the critical path.
//!
//! Moving a process between cgroups takes the kernel's global `cgroup_threadgroup_rwsem` for writing. When no
//! migration happened for a while, that first write waits for an RCU grace period (the semaphore switches its
//! readers to their slow path through `rcu_sync`): 5–15 ms on the VM drun is developed on, which is most of what
//! separates drun from runc on a warm start (libcontainer's intermediate process moves itself into the
//! container's cgroup on the critical path). Later migrations within a grace period of one another cost ~50 µs.
//!
//! So, while a container is being prepared, a thread moves drun into the cgroup it is already in (a no-op
//! migration: writing "0" to its own `cgroup.procs`) about once a millisecond: the first of those writes waits for
//! the grace period in parallel with image and bundle preparation, and the later ones keep the fast path on until
//! the container has started. When drun moves itself into a supervisor cgroup (cgroup v2, see `cgroups`), it does
//! so through [`move_self`], which points the thread at the new cgroup under the same lock, so the thread never
//! moves drun back. Best effort throughout: where drun may not write its cgroup (rootless, most often), nothing
//! runs.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use crate::run::cgroups::CgroupError;
use std::time::{Duration, Instant};

/// The `cgroup.procs` file the thread writes to, while one runs.
static TARGET: Mutex<Option<File>> = Mutex::new(None);

/// How long the thread works at most (a run that pulls an image first outlives it; it then waits to be stopped).
const MAX_RUN: Duration = Duration::from_secs(2);
/// Well under one grace period, so the fast path never lapses.
const INTERVAL: Duration = Duration::from_millis(1);

/// What the caller must have done before the container is created (creating its cgroup), with its outcome.
type Prelude = Box<dyn FnOnce() -> Result<(), CgroupError> + Send>;

struct Shared {
    stop: AtomicBool,
    prelude: Mutex<Option<Result<(), CgroupError>>>,
    prelude_done: Condvar,
}

/// A warm-up thread (or, where none can run, the prelude's outcome); stopped by [`stop`](Self::stop) or on
/// drop.
pub struct Warmup {
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Warmup {
    /// Runs `prelude` (creating the container's cgroup: mkdir in a cgroup file system waits behind a migration
    /// that waits for a grace period, so it comes first) and then keeps migrating, on a thread of its own, unless
    /// another warm-up runs or drun's cgroup cannot be written: then `prelude` runs here and now.
    pub fn start(prelude: Prelude) -> Warmup {
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            prelude: Mutex::new(None),
            prelude_done: Condvar::new(),
        });
        let inert = |shared: Arc<Shared>, prelude: Prelude| {
            *lock(&shared.prelude) = Some(prelude());
            Warmup { shared, thread: None }
        };
        let Some(path) = crate::run::cgroups::own_procs_file() else {
            return inert(shared, prelude);
        };
        let mut target = lock(&TARGET);
        if target.is_some() {
            drop(target);
            return inert(shared, prelude);
        }
        let Ok(file) = std::fs::OpenOptions::new().write(true).open(&path) else {
            drop(target);
            return inert(shared, prelude);
        };
        *target = Some(file);
        drop(target);
        // libcontainer creates the container with a raw clone3 and allocates in the child: this thread must never
        // be inside the allocator then. Its start-up and the prelude allocate, but the caller waits for the
        // prelude (`prelude_result`) before creating the container; after it, the thread allocates nothing until
        // it is stopped (only once the container has started), and at its time limit it parks instead of exiting.
        let prelude = Arc::new(Mutex::new(Some(prelude)));
        let (theirs, their_prelude) = (shared.clone(), prelude.clone());
        let spawned = std::thread::Builder::new().name("cgroup-warmup".into()).spawn(move || {
            // Signals go to drun's main thread, which forwards them to the container.
            let _ = nix::sys::signal::SigSet::all().thread_block();
            let run = lock(&their_prelude).take();
            if let Some(run) = run {
                // A panic must still reach the caller, which would otherwise wait for the outcome forever.
                let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)).unwrap_or_else(|_| {
                    Err(CgroupError::Write {
                        path: PathBuf::from("/sys/fs/cgroup"),
                        source: std::io::Error::other("the thread creating the container's cgroup panicked"),
                    })
                });
                *lock(&theirs.prelude) = Some(outcome);
                theirs.prelude_done.notify_all();
            }
            let until = Instant::now() + MAX_RUN;
            while !theirs.stop.load(Ordering::Acquire) {
                if Instant::now() >= until {
                    std::thread::park();
                    continue;
                }
                if let Some(f) = lock(&TARGET).as_mut() {
                    // Errors are ignored: the lock (and so the grace period) is taken before most of them.
                    let _ = f.write(b"0");
                }
                std::thread::park_timeout(INTERVAL);
            }
        });
        match spawned {
            Ok(t) => Warmup {
                shared,
                thread: Some(t),
            },
            Err(_) => {
                *lock(&TARGET) = None;
                let run = lock(&prelude).take().expect("the thread never started");
                inert(shared, run)
            }
        }
    }

    /// Waits for the prelude and returns its outcome (once; later calls return Ok).
    pub fn prelude_result(&self) -> Result<(), CgroupError> {
        let mut slot = lock(&self.shared.prelude);
        loop {
            if let Some(outcome) = slot.take() {
                // Leaves a success behind for later calls.
                *slot = Some(Ok(()));
                return outcome;
            }
            slot = self.shared.prelude_done.wait(slot).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Stops the thread and waits for it (after its prelude, and at most one write, ~50 µs).
    pub fn stop(&mut self) {
        let Some(t) = self.thread.take() else { return };
        self.shared.stop.store(true, Ordering::Release);
        t.thread().unpark();
        let _ = t.join();
        *lock(&TARGET) = None;
    }

    /// Whether a thread was started.
    pub fn is_running(&self) -> bool {
        self.thread.is_some()
    }
}

impl Drop for Warmup {
    fn drop(&mut self) {
        self.stop();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Moves drun (all its threads) into the cgroup whose `cgroup.procs` is `procs`; a running warm-up thread
/// follows it there.
pub fn move_self(procs: &Path) -> std::io::Result<()> {
    let mut target = lock(&TARGET);
    let mut file = std::fs::OpenOptions::new().write(true).open(procs)?;
    file.write_all(std::process::id().to_string().as_bytes())?;
    if target.is_some() {
        *target = Some(file);
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // fixtures in the tests' own temporary directories
mod tests {
    use super::*;

    /// One warm-up at a time per process: the tests that start them take turns.
    static TURN: Mutex<()> = Mutex::new(());

    #[test]
    fn the_prelude_runs_once_and_its_error_reaches_the_caller() {
        let _turn = lock(&TURN);
        let ran = Arc::new(AtomicBool::new(false));
        let flag = ran.clone();
        let mut w = Warmup::start(Box::new(move || {
            flag.store(true, Ordering::SeqCst);
            Err(CgroupError::Write {
                path: PathBuf::from("/nowhere"),
                source: std::io::Error::other("refused"),
            })
        }));
        let err = w.prelude_result().expect_err("the prelude's error");
        assert!(err.to_string().contains("/nowhere"), "{err}");
        assert!(ran.load(Ordering::SeqCst));
        assert!(w.prelude_result().is_ok(), "reported once");
        w.stop();
        assert!(!w.is_running());
        // Stopped: the next warm-up may start (on a thread where its cgroup is writable, else inline).
        let w2 = Warmup::start(Box::new(|| Ok(())));
        assert!(w2.prelude_result().is_ok());
        assert_eq!(
            w2.is_running(),
            own_cgroup_writable(),
            "the warm-up thread runs where this process may write its own cgroup.procs, and only there"
        );
        if nix::unistd::geteuid().is_root() {
            assert!(
                w2.is_running(),
                "root can write its own cgroup.procs: the warm-up thread should run"
            );
        }
    }

    /// Whether this process may write its own cgroup.procs (as root, or in a cgroup delegated to its user).
    fn own_cgroup_writable() -> bool {
        crate::run::cgroups::own_procs_file().is_some_and(|p| std::fs::OpenOptions::new().write(true).open(p).is_ok())
    }

    #[test]
    fn a_panicking_prelude_is_an_error_not_a_hang() {
        let _turn = lock(&TURN);
        let prelude: Prelude = Box::new(|| panic!("prelude failure (expected by this test)"));
        if !own_cgroup_writable() {
            // No warm-up thread (rootless, most often): the prelude runs inline, and its panic is the caller's.
            let inline = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| Warmup::start(prelude)));
            assert!(inline.is_err(), "an inline prelude's panic reaches the caller");
            return;
        }
        let w = Warmup::start(prelude);
        assert!(
            w.is_running(),
            "its own cgroup.procs is writable: the warm-up thread should run"
        );
        let err = w.prelude_result().expect_err("the panic as an error");
        assert!(err.to_string().contains("/sys/fs/cgroup"), "{err}");
    }

    #[test]
    fn finds_own_cgroup_file() {
        // Every test host has a cgroup file system; the path must end in this process's cgroup.procs.
        let p = crate::run::cgroups::own_procs_file().expect("a cgroup.procs for this process");
        assert!(p.ends_with("cgroup.procs"), "{}", p.display());
        let listed = crate::sys::safe_fs::read_system(&p).unwrap_or_default();
        assert!(
            listed.lines().any(|l| l.trim() == std::process::id().to_string()),
            "{} does not list this process",
            p.display()
        );
    }
}
