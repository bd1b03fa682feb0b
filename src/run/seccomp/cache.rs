//! Compiled seccomp filters kept for the next run: one file per profile in a directory given by the caller (the
//! store's `cache/seccomp/`). A file is the magic, the program and the program's sha256, replaced atomically; a
//! truncated or altered one is ignored (and rewritten), never loaded.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::load::Precompiled;

pub(super) const CACHE_MAGIC: &[u8; 8] = b"drunbpf1";
/// The most a cache file may hold: a BPF program is at most 4096 instructions (32 KiB).
const CACHE_FILE_CAP: u64 = 1 << 20;

/// A directory of compiled filters, keyed by [`cache_key`].
pub struct BpfCache {
    dir: PathBuf,
}

impl BpfCache {
    /// The cache in `dir` (created on the first write, 0700).
    pub fn new(dir: PathBuf) -> BpfCache {
        BpfCache { dir }
    }

    /// The file that holds the program for `key`.
    pub fn path(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.bpf"))
    }

    /// The program cached for `key`, if a valid copy is there.
    pub fn read(&self, key: &str, flags: libc::c_ulong) -> Option<Precompiled> {
        let path = self.path(key);
        let filter = read_cached(&path, flags)?;
        tracing::debug!(path = %path.display(), instructions = filter.len(), "seccomp filter from the cache");
        Some(filter)
    }

    /// Saves `program` (libseccomp's exported BPF) for `key`.
    pub fn write(&self, key: &str, program: &[u8]) -> std::io::Result<()> {
        let mut data = Vec::with_capacity(CACHE_MAGIC.len() + program.len() + 32);
        data.extend_from_slice(CACHE_MAGIC);
        data.extend_from_slice(program);
        data.extend_from_slice(&Sha256::digest(program));
        crate::sys::safe_fs::create_dir_all_mode(&self.dir, 0o700)?;
        crate::sys::safe_fs::write_replace(&self.path(key), &data, 0o600)
    }
}

/// What the generated program depends on: the profile, drun's translation of it, libseccomp's version and the
/// running kernel (libseccomp picks actions and flags by the kernel's seccomp API level).
pub fn cache_key(profile: &serde_json::Value) -> String {
    let mut h = Sha256::new();
    h.update(b"drun seccomp v1\0");
    h.update(env!("CARGO_PKG_VERSION").as_bytes());
    h.update(b"\0");
    if let Ok(v) = libseccomp::ScmpVersion::current() {
        h.update(format!("{}.{}.{}", v.major, v.minor, v.micro).as_bytes());
    }
    h.update(b"\0");
    if let Ok(u) = nix::sys::utsname::uname() {
        h.update(u.release().as_encoded_bytes());
        h.update(b"\0");
        h.update(u.machine().as_encoded_bytes());
    }
    h.update(b"\0");
    h.update(serde_json::to_vec(profile).expect("JSON serialises"));
    hex::encode(h.finalize())
}

/// Whether a cache file is whole (its magic, and the program's sha256 matching), for `drun check`.
pub fn is_whole(path: &Path) -> bool {
    let Ok(data) = crate::sys::safe_fs::read_bounded(path, CACHE_FILE_CAP) else {
        return false;
    };
    let Some(body) = data.strip_prefix(CACHE_MAGIC.as_slice()) else {
        return false;
    };
    body.len()
        .checked_sub(32)
        .and_then(|n| body.split_at_checked(n))
        .is_some_and(|(program, sum)| Sha256::digest(program).as_slice() == sum)
}

/// A cache file's program, if the file is whole: the magic, the program, and the program's sha256.
pub(super) fn read_cached(path: &Path, flags: libc::c_ulong) -> Option<Precompiled> {
    // In drun's private store.
    let data = crate::sys::safe_fs::read_bounded(path, CACHE_FILE_CAP).ok()?;
    let body = data.strip_prefix(CACHE_MAGIC.as_slice())?;
    let (program, sum) = body.split_at_checked(body.len().checked_sub(32)?)?;
    if Sha256::digest(program).as_slice() != sum {
        tracing::warn!(path = %path.display(), "ignoring a corrupt cached seccomp filter");
        return None;
    }
    Precompiled::from_bytes(program, flags)
}
