//! Where a run's writable layers (the overlays' upper and work directories, and the layers made from whiteout
//! markers) go: in the run's directory, or, where its file system cannot hold an overlay's upper directory
//! (overlayfs, as in a CI job container; network file systems), on a tmpfs of the run's own at `<run>/mem`,
//! sized by `--tmp-size` (default: half of RAM). The container's writes then live in memory, charged to its
//! memory cgroup like any tmpfs page it writes; drun says so once per run.

use std::path::{Path, PathBuf};

use nix::mount::{mount, MsFlags};

use crate::units::ByteSize;

/// The name of the tmpfs mount point in a run's directory (unmounted by the run's clean-up).
pub const MEMORY_DIR: &str = "mem";

/// The place for one run's writable layers.
pub struct Scratch {
    run_dir: PathBuf,
    /// Where the writable layers go on disk: the run directory, or a setup layer's staging directory.
    disk: PathBuf,
    /// The upper directory is kept as a layer (a workflow's setup): complete (no redirects, no metacopy), and
    /// never in memory.
    keep: bool,
    size: ByteSize,
    /// The tmpfs, once mounted.
    memory: Option<PathBuf>,
    /// Why the tmpfs could not be used, once tried: the run's directory is all there is.
    memory_failed: Option<String>,
    /// The run directory is on a file system known to refuse an upper directory.
    unfit: bool,
    /// Why the writable layers are in memory, until the user was told (once, when an overlay used it).
    untold: Option<String>,
}

impl Scratch {
    /// The writable layers of the run in `run_dir`; `size` bounds them where they must be kept in memory.
    pub fn new(run_dir: &Path, size: Option<ByteSize>) -> Scratch {
        Scratch {
            run_dir: run_dir.to_path_buf(),
            disk: run_dir.to_path_buf(),
            keep: false,
            size: size.unwrap_or_else(|| ByteSize(crate::run::shm::half_of_ram())),
            memory: None,
            memory_failed: None,
            untold: None,
            unfit: false,
        }
    }

    /// Writable layers in `dir` (a setup layer's staging directory, on the store's file system), kept after the
    /// run: never moved to memory.
    pub fn kept_in(mut self, dir: &Path) -> Scratch {
        self.disk = dir.to_path_buf();
        self.keep = true;
        self.memory_failed = Some("the writable layer is kept as a layer of the store".into());
        self
    }

    /// Whether the upper directory is kept (see [`Scratch::kept_in`]).
    pub fn keeps_upper(&self) -> bool {
        self.keep
    }

    /// The directory under which the writable layers go now.
    pub fn base(&self) -> &Path {
        self.memory.as_deref().unwrap_or(&self.disk)
    }

    pub fn in_memory(&self) -> bool {
        self.memory.is_some()
    }

    /// Why the writable layers could not be moved to memory, when the run directory's file system is known not
    /// to hold them (elsewhere, a kernel without overlayfs for the caller fails the same way on every run: not
    /// news).
    pub fn memory_refused(&self) -> Option<&str> {
        self.memory_failed.as_deref().filter(|_| self.unfit)
    }

    /// Moves the writable layers made from now on to the run's tmpfs when the run directory's file system is known
    /// not to hold an overlay's upper directory.
    pub fn check_file_system(&mut self) {
        if self.memory.is_none() && self.memory_failed.is_none() {
            if let Some(fs) = crate::sys::fs_type::refuses_overlay_upper(&self.disk) {
                self.unfit = true;
                self.use_memory(&format!(
                    "{:?} is on {fs}, which cannot hold an overlay's upper directory",
                    self.disk.parent().unwrap_or(&self.disk)
                ));
            }
        }
    }

    /// Says, once per run, that an overlay's writable layer is in memory (after it was mounted there).
    pub fn announce(&mut self) {
        if let Some(why) = self.untold.take() {
            tracing::warn!(
                "the container's writable layer is kept in memory, on a tmpfs of at most {} (--tmp-size): {why}",
                self.size
            );
        }
    }

    /// Moves the writable layers made from now on to the run's tmpfs (`why`: the reason, for the warning).
    /// False when that cannot be (it was tried before, or the tmpfs cannot be mounted).
    pub fn use_memory(&mut self, why: &str) -> bool {
        if self.memory.is_some() || self.memory_failed.is_some() {
            return false;
        }
        let dir = self.run_dir.join(MEMORY_DIR);
        let mounted = crate::sys::safe_fs::create_dir_mode(&dir, 0o700)
            .map_err(|e| e.to_string())
            .and_then(|_| {
                let data = format!("size={},mode=0700", self.size.0);
                mount(
                    Some("tmpfs"),
                    &dir,
                    Some("tmpfs"),
                    MsFlags::empty(),
                    Some(data.as_str()),
                )
                .map_err(|e| e.to_string())
            });
        // In a user namespace the overlay keeps its attributes in `user.overlay.*`, which tmpfs stores only from
        // Linux 6.6 on; before, overlayfs would mount without them and fail later, when the container replaces a
        // directory: never use such a tmpfs.
        let mounted = mounted.and_then(|()| {
            if crate::sys::userns::current().is_none() {
                return Ok(());
            }
            let probe = crate::sys::safe_fs::open_dir_nofollow(&dir)
                .and_then(|d| crate::sys::at::set_xattr(std::os::fd::AsFd::as_fd(&d), "user.drun.probe", b"1"));
            probe.map_err(|e| {
                let _ = nix::mount::umount2(&dir, nix::mount::MntFlags::MNT_DETACH);
                format!("tmpfs keeps no user xattrs here (Linux 6.6 or later does): {e}")
            })
        });
        match mounted {
            Ok(()) => {
                self.memory = Some(dir);
                self.untold = Some(why.to_string());
                true
            }
            Err(e) => {
                tracing::debug!(error = %e, "cannot keep the writable layer on a tmpfs");
                self.memory_failed = Some(e);
                false
            }
        }
    }
}
