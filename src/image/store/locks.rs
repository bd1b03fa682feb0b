//! The store's locks: `flock(2)` on files in `locks/`, released by the kernel when a process dies. The store lock
//! (shared by pulls, exclusive for removal) and one lock per layer key (held while the layer is produced).

use std::fs::{File, OpenOptions};

use nix::fcntl::{Flock, FlockArg};

use super::{io_err, Store, StoreError};

/// A held lock; released on drop.
pub struct StoreLock(#[allow(dead_code)] Flock<File>);

impl Store {
    fn lock_file(&self, name: &str, arg: FlockArg) -> Result<StoreLock, StoreError> {
        let path = self.root.join("locks").join(name);
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_err("open the lock file", &path))?;
        Flock::lock(f, arg).map(StoreLock).map_err(|(_, e)| StoreError::Io {
            action: "lock",
            path,
            source: e.into(),
        })
    }

    /// Shared lock held by every pull (and later every run) while it uses the store.
    pub fn lock_shared(&self) -> Result<StoreLock, StoreError> {
        self.lock_file("store.lock", FlockArg::LockShared)
    }

    /// Exclusive lock for removing things from the store.
    pub fn lock_exclusive(&self) -> Result<StoreLock, StoreError> {
        self.lock_file("store.lock", FlockArg::LockExclusive)
    }

    /// The exclusive store lock if no other process holds the store lock now (`drun check` without `--repair`).
    pub fn try_lock_exclusive(&self) -> Result<Option<StoreLock>, StoreError> {
        match self.lock_file("store.lock", FlockArg::LockExclusiveNonblock) {
            Ok(l) => Ok(Some(l)),
            Err(StoreError::Io { source, .. }) if source.raw_os_error() == Some(libc::EWOULDBLOCK) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Exclusive lock for producing the layer `key` (see [`super::layer_key`]); `wait: false` returns `None` at
    /// once when another holds it.
    pub fn lock_layer(&self, idmap: &str, key: &str, wait: bool) -> Result<Option<StoreLock>, StoreError> {
        let arg = if wait {
            FlockArg::LockExclusive
        } else {
            FlockArg::LockExclusiveNonblock
        };
        match self.lock_file(&format!("layer-{idmap}-{key}.lock"), arg) {
            Ok(l) => Ok(Some(l)),
            Err(StoreError::Io { source, .. }) if !wait && source.raw_os_error() == Some(libc::EWOULDBLOCK) => Ok(None),
            Err(e) => Err(e),
        }
    }
}
