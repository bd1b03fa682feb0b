//! A node's record of the image files whose squashfs data drun hashed and found to be what their trailer (or
//! image-directory record) says: the full check runs once per node and file, not once per run or per store.
//!
//! A record is named by the squashfs digest, the device and the inode, and holds the file's identity (device,
//! inode, size and both change times, which only a writer of the file could alter): two files with the same data
//! (a store's copy and an image directory's) each have theirs, and a user's file never displaces root's record
//! nor makes root's check of another file wait. As real root the records are the node's, in
//! `/run/drun/squash-verified` (root's, on the tmpfs that the device numbers in the keys are valid for: one boot),
//! shared by every store and state directory on the node, as the kernel that mounts the files is one. Otherwise
//! they are in the store's cache. While one process checks a digest, the others wait for its result on a lock
//! instead of reading the file too: 16 tasks starting on a node hash a 3 GB image once (hack/bench-scale).

use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

use super::digest_prefix;
use crate::digest::Digest;
use crate::image::store::Store;

/// The node-wide records (real root only).
const NODE_DIR: &str = "/run/drun/squash-verified";

pub enum CheckError {
    Io(io::Error),
    /// What the data hashes to.
    Digest(Digest),
}

/// Checks that the first `size` bytes of `f` (whose metadata is `md`) hash to `digest`, unless this very file was
/// checked on this node before; records a good result.
pub fn check_once(
    store: &Store,
    f: &mut File,
    md: &std::fs::Metadata,
    digest: &Digest,
    size: u64,
) -> Result<(), CheckError> {
    let key = file_identity(md);
    let dir = records_dir(store);
    let entry = dir.as_ref().map(|d| d.join(record_name(digest, md)));
    let known = || entry.as_ref().is_some_and(|e| is_recorded(e, &key));
    if known() {
        return Ok(());
    }
    let _one_at_a_time = dir
        .as_ref()
        .and_then(|d| lock(&d.join(format!("{}.lock", record_name(digest, md)))));
    if known() {
        return Ok(());
    }
    tracing::debug!(digest = %digest, "checking the digest of an image file's squashfs data");
    let actual = digest_prefix(f, size).map_err(CheckError::Io)?;
    if actual != *digest {
        return Err(CheckError::Digest(actual));
    }
    if let Some(e) = &entry {
        let _ = crate::sys::safe_fs::write_replace(e, key.as_bytes(), 0o600);
    }
    Ok(())
}

/// Records that the file drun itself just wrote and hashed (`md` from its own descriptor, after the rename that
/// published it) has squashfs data with `digest`.
pub fn record_written(store: &Store, md: &std::fs::Metadata, digest: &Digest) {
    if let Some(dir) = records_dir(store) {
        let _ =
            crate::sys::safe_fs::write_replace(&dir.join(record_name(digest, md)), file_identity(md).as_bytes(), 0o600);
    }
}

/// What says a file is the one checked before: device, inode, size and both change times, as one line.
fn file_identity(md: &std::fs::Metadata) -> String {
    format!(
        "{} {} {} {}.{} {}.{}\n",
        md.dev(),
        md.ino(),
        md.len(),
        md.mtime(),
        md.mtime_nsec(),
        md.ctime(),
        md.ctime_nsec()
    )
}

/// The records' directory, made if needed; `None` where it cannot be made private (then every check reads the
/// file).
fn records_dir(store: &Store) -> Option<PathBuf> {
    let real_root = nix::unistd::geteuid().is_root() && crate::sys::userns::current().is_none();
    if !real_root {
        let dir = store.cache_dir("squash-verified");
        return crate::sys::safe_fs::create_dir_all_mode(&dir, 0o700)
            .is_ok()
            .then_some(dir);
    }
    let dir = PathBuf::from(NODE_DIR);
    crate::sys::safe_fs::create_dir_all_mode(&dir, 0o700).ok()?;
    // Root's and no one else's, or not used: a record there lets the kernel mount a file.
    let private =
        |p: &Path| std::fs::symlink_metadata(p).is_ok_and(|m| m.is_dir() && m.uid() == 0 && m.mode() & 0o022 == 0);
    (private(&dir) && dir.parent().is_some_and(private)).then_some(dir)
}

fn is_recorded(entry: &Path, key: &str) -> bool {
    crate::sys::safe_fs::read_bounded(entry, 256).is_ok_and(|k| k == key.as_bytes())
}

/// A record's name: the digest, the device and the inode.
fn record_name(digest: &Digest, md: &std::fs::Metadata) -> String {
    format!("{}-{}-{}", digest.hex(), md.dev(), md.ino())
}

fn lock(path: &Path) -> Option<Flock<File>> {
    let f = crate::sys::safe_fs::open_or_create(path, 0o600).ok()?;
    Flock::lock(f, FlockArg::LockExclusive).ok()
}
