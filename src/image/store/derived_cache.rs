//! `cache/<kind>/`: files derived from something else and kept for reuse (compiled seccomp filters). The store
//! only gives each kind its directory; the cache that owns a kind writes, checks and rebuilds its own files there
//! (`run::seccomp::BpfCache`).

use std::path::PathBuf;

use super::Store;

impl Store {
    /// The directory of the derived files of `kind`.
    pub fn cache_dir(&self, kind: &str) -> PathBuf {
        self.root.join("cache").join(kind)
    }
}
