//! Kernel mounts of squashfs image files shared by the runs of one node: one read-only mount per image (keyed by
//! the sha256 of its squashfs data, which drun checked before the kernel got the file: the same bytes, whichever
//! file they came from), referenced by every live run that uses it, unmounted when the last reference goes.
//!
//! ```text
//! <state>/squash/<squashfs digest hex>/lock        flock(2): held while references are added or removed
//! <state>/squash/<squashfs digest hex>/mnt/        the mount point
//! <state>/squash/<squashfs digest hex>/refs/<id>   a reference of the run whose directory is containers/<id>
//! ```
//!
//! Only real root kernel-mounts image files (an ordinary user's drun uses squashfuse, one mount per run). All of
//! it lives in root's private state directory (0700, see [`crate::run::state::ensure_private`]), so on a host with
//! several slurmd (one kernel) every root drun of one state directory shares one mount; nothing is keyed by host
//! name.
//! A reference is alive exactly when its run is, by the rules of run directories ([`state::is_live`]: the run's
//! lock is held by a drun that still lives): a run SIGKILLed leaves a reference that the next user of the mount,
//! the next run's clean-up ([`state::reap_stale`] calls [`sweep`]) or the clean-up of the dead run itself drops,
//! unmounting the file once no live reference is left. A drun killed between mounting and writing its reference
//! leaves a mount with no reference at all, found the same way.
//!
//! The drun processes of one state directory are taken to share a mount namespace (root's drun runs in the
//! host's): whether the image is mounted is looked up in the caller's own namespace each time, never believed
//! from a record.
//!
//! Unmounting is lazy (`MNT_DETACH`): should a run still use the mount when it goes (it cannot while its reference
//! lives), its overlay keeps its own reference to the squashfs and goes on reading it.

use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

use crate::run::state;

/// The directory of the shared mounts in the state directory `state`.
fn root(state: &Path) -> PathBuf {
    state.join("squash")
}

/// A run id as drun makes them (64 hex digits): a reference's name, never a path.
fn is_run_id(name: &str) -> bool {
    name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Takes the lock of the mount in `key_dir`, creating the directory and its lock unless `sweeping` (a sweep
/// waits for no one and creates no directory (only, at worst, the lock file in one that is there): `None` when
/// the lock is busy or the directory gone).
///
/// The last release removes the directory, lock file included, while it holds the lock: a waiter then holds a
/// lock on a file no longer there, which protects nothing. So the lock counts only when the file at the path is
/// the one locked; otherwise it is taken again.
fn lock(key_dir: &Path, sweeping: bool) -> io::Result<Option<Flock<File>>> {
    let path = key_dir.join("lock");
    loop {
        if !sweeping {
            crate::sys::safe_fs::create_dir_mode(key_dir, 0o700)?;
        }
        let f = match crate::sys::safe_fs::open_or_create(&path, 0o600) {
            Ok(f) => f,
            // Its directory was removed meanwhile by the last release.
            Err(e) if e.kind() == io::ErrorKind::NotFound && !sweeping => continue,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let how = if sweeping {
            FlockArg::LockExclusiveNonblock
        } else {
            FlockArg::LockExclusive
        };
        let held = match Flock::lock(f, how) {
            Ok(l) => l,
            Err((_, nix::errno::Errno::EWOULDBLOCK)) if sweeping => return Ok(None),
            Err((_, e)) => return Err(e.into()),
        };
        let locked = held.metadata()?;
        let same = std::fs::symlink_metadata(&path).is_ok_and(|m| m.dev() == locked.dev() && m.ino() == locked.ino());
        if same {
            return Ok(Some(held));
        }
        if sweeping {
            return Ok(None);
        }
    }
}

/// Whether `mnt` is a squashfs mount point (not the empty directory below it).
fn mounted(mnt: &Path) -> bool {
    let (Ok(m), Ok(parent)) = (
        std::fs::symlink_metadata(mnt),
        std::fs::symlink_metadata(mnt.with_file_name("")),
    ) else {
        return false;
    };
    m.dev() != parent.dev() && crate::sys::fs_type::of(mnt).is_ok_and(|(name, _)| name == "squashfs")
}

/// Removes the references in `refs` whose run is not alive; how many live ones are left.
fn drop_dead(state: &Path, refs: &Path) -> usize {
    let Ok(rd) = std::fs::read_dir(refs) else {
        return 0;
    };
    let mut live = 0;
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let alive = is_run_id(&name) && state::is_live(&state::containers_dir(state).join(&name));
        if alive {
            live += 1;
        } else {
            tracing::debug!(run = %name, "dropping the squashfs mount reference of a run that ended");
            let _ = std::fs::remove_file(e.path());
        }
    }
    live
}

/// Unmounts the mount of `key_dir` (its lock held, no live reference left) and removes the directory.
fn unmount_and_remove(key_dir: &Path) {
    let mnt = key_dir.join("mnt");
    // A mount that a drun killed at the wrong moment left below a newer one is unmounted too.
    for _ in 0..8 {
        if !mounted(&mnt) {
            break;
        }
        if let Err(e) = nix::mount::umount2(
            &mnt,
            nix::mount::MntFlags::MNT_DETACH | nix::mount::MntFlags::UMOUNT_NOFOLLOW,
        ) {
            tracing::warn!(mount = %mnt.display(), error = %e, "cannot unmount a squashfs image no run uses");
            return;
        }
        tracing::debug!(mount = %mnt.display(), "unmounted a squashfs image no run uses any more");
    }
    let refs = key_dir.join("refs");
    let removed = std::fs::remove_dir(&refs)
        .or_else(|e| if refs.exists() { Err(e) } else { Ok(()) })
        .and_then(|()| std::fs::remove_dir(&mnt).or_else(|e| if mnt.exists() { Err(e) } else { Ok(()) }));
    if removed.is_ok() {
        // The lock last: a drun waiting for it notices that it is gone (see `lock`).
        let _ = std::fs::remove_file(key_dir.join("lock"));
        let _ = std::fs::remove_dir(key_dir);
    }
}

/// The shared mount of the image whose squashfs digest is `key` (hex), for the run `run_id` (whose run directory
/// is live): its mount point, with a reference of the run recorded. `mount` is called with the lock held, with
/// the mount point and whether the image is mounted there already: it checks the file (always: one run's file
/// being good says nothing of another's) and mounts it if it is not; no two drun of the state directory check or
/// mount one image at once.
pub fn acquire<E: From<io::Error>>(
    state: &Path,
    key: &str,
    run_id: &str,
    mount: impl FnOnce(&Path, bool) -> Result<(), E>,
) -> Result<PathBuf, E> {
    let root = root(state);
    crate::sys::safe_fs::create_dir_mode(&root, 0o700)?;
    let key_dir = root.join(key);
    let _lock = lock(&key_dir, false)?;
    let refs = key_dir.join("refs");
    let mnt = key_dir.join("mnt");
    crate::sys::safe_fs::create_dir_mode(&refs, 0o700)?;
    crate::sys::safe_fs::create_dir_mode(&mnt, 0o700)?;
    drop_dead(state, &refs);
    let already = mounted(&mnt);
    mount(&mnt, already)?;
    crate::failpoint::hit("shared-mount-unreferenced");
    crate::sys::safe_fs::open_or_create(&refs.join(run_id), 0o600)?;
    tracing::debug!(mount = %mnt.display(), shared = already, "squashfs image mount referenced");
    Ok(mnt)
}

/// Drops the references of the run `run_id` (its container gone, its root file system unmounted), unmounting
/// what no live run uses any more.
pub fn release(state: &Path, run_id: &str) {
    let Ok(rd) = std::fs::read_dir(root(state)) else {
        return;
    };
    for e in rd.flatten() {
        let key_dir = e.path();
        if !key_dir.join("refs").join(run_id).exists() {
            continue;
        }
        let Ok(Some(_lock)) = lock(&key_dir, false) else {
            continue;
        };
        let _ = std::fs::remove_file(key_dir.join("refs").join(run_id));
        if drop_dead(state, &key_dir.join("refs")) == 0 {
            unmount_and_remove(&key_dir);
        }
    }
}

/// Drops the references of runs that died and unmounts what no live run uses any more; mounts whose lock another
/// drun holds are left to it.
pub fn sweep(state: &Path) {
    let Ok(rd) = std::fs::read_dir(root(state)) else {
        return;
    };
    for e in rd.flatten() {
        if !e.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let key_dir = e.path();
        let Ok(Some(_lock)) = lock(&key_dir, true) else {
            continue;
        };
        if drop_dead(state, &key_dir.join("refs")) == 0 {
            unmount_and_remove(&key_dir);
        }
    }
}

/// Mount points of shared mounts that no live run references (what [`sweep`] would unmount), left mounted (only
/// their locks are taken, briefly); one whose lock another drun holds (it is being mounted or released) is not
/// counted.
pub fn unreferenced(state: &Path) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(root(state)) else {
        return vec![];
    };
    let live_ref = |r: std::fs::DirEntry| {
        let name = r.file_name().to_string_lossy().into_owned();
        is_run_id(&name) && state::is_live(&state::containers_dir(state).join(&name))
    };
    rd.flatten()
        .map(|e| e.path())
        .filter(|d| mounted(&d.join("mnt")))
        .filter(|d| {
            let Ok(Some(_lock)) = lock(d, true) else {
                return false;
            };
            std::fs::read_dir(d.join("refs")).map_or(true, |refs| !refs.flatten().any(live_ref))
        })
        .map(|d| d.join("mnt"))
        .collect()
}
