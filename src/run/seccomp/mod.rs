//! Seccomp for the container: the default profile (`default_profile`, a data table), compiling a profile to BPF
//! once (`compile`), keeping the program for later runs (`cache`), and installing it in the container's init
//! right before its command (`load`). [`take_precompiled`] ties them together for the run path.
//!
//! `--privileged` or `--security-opt seccomp=unconfined` run without a filter; `seccomp=FILE.json` uses another
//! profile, precompiled the same way when drun can load it itself.

mod cache;
pub use cache::is_whole as cached_filter_is_whole;
mod compile;
mod default_profile;
mod load;

use serde::Deserialize;
use serde_json::Value;

pub use cache::BpfCache;
pub use default_profile::default_profile;
pub use load::{Executor, Precompiled};

/// The store's cache directory for compiled filters: `<store>/cache/seccomp/`.
pub const CACHE_KIND: &str = "seccomp";

#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    #[error("invalid seccomp profile: {0}")]
    Invalid(String),
    #[error("libseccomp cannot compile the seccomp profile")]
    Compile(#[from] libseccomp::error::SeccompError),
    #[error("cannot {what} for the seccomp profile")]
    Io { what: &'static str, source: std::io::Error },
}

/// Takes `linux.seccomp` out of `spec` and returns it compiled, when drun can load it itself: the profile uses no
/// user notification and the process runs with no-new-privileges. The program is read from `cache` when a valid
/// copy is there, else compiled and saved there for the next run.
pub fn take_precompiled(spec: &mut Value, cache: &BpfCache) -> Result<Option<Precompiled>, FilterError> {
    use oci_spec::runtime::{LinuxSeccomp, LinuxSeccompAction as A, LinuxSeccompFilterFlag as F};
    let Some(value) = spec.pointer("/linux/seccomp").cloned() else {
        return Ok(None);
    };
    if spec.pointer("/process/noNewPrivileges") != Some(&Value::Bool(true)) {
        return Ok(None);
    }
    let profile = LinuxSeccomp::deserialize(&value).map_err(|e| FilterError::Invalid(e.to_string()))?;
    let notify = profile.default_action() == A::ScmpActNotify
        || profile
            .syscalls()
            .iter()
            .flatten()
            .any(|r| r.action() == A::ScmpActNotify)
        || profile.listener_path().is_some();
    let mut flags: libc::c_ulong = 0;
    for f in profile.flags().iter().flatten() {
        flags |= match f {
            F::SeccompFilterFlagTsync => libc::SECCOMP_FILTER_FLAG_TSYNC,
            F::SeccompFilterFlagLog => libc::SECCOMP_FILTER_FLAG_LOG,
            F::SeccompFilterFlagSpecAllow => libc::SECCOMP_FILTER_FLAG_SPEC_ALLOW,
            // Only meaningful with a notification listener: left to libcontainer.
            F::SeccompFilterFlagWaitKillableRecv => return Ok(None),
        };
    }
    if notify {
        return Ok(None);
    }
    let key = cache::cache_key(&value);
    let filter = match cache.read(&key, flags) {
        Some(f) => f,
        None => {
            let bytes = compile::compile(&profile)?;
            let f = Precompiled::from_bytes(&bytes, flags)
                .ok_or_else(|| FilterError::Invalid(format!("libseccomp produced {} bytes of BPF", bytes.len())))?;
            if let Err(e) = cache.write(&key, &bytes) {
                let path = cache.path(&key);
                tracing::debug!(path = %path.display(), error = %e, "cannot cache the compiled seccomp filter");
            }
            tracing::debug!(instructions = f.len(), "seccomp filter compiled");
            f
        }
    };
    if let Some(linux) = spec.get_mut("linux").and_then(Value::as_object_mut) {
        linux.remove("seccomp");
    }
    Ok(Some(filter))
}

/// The file in a run directory that holds the container's precompiled filter for `drun exec`, whose processes
/// must get the same one: empty when drun loads none (no filter, or a profile left in the spec).
const SAVED_FOR_EXEC: &str = "seccomp.bpf";
/// The most [`saved_for_exec`] reads: a BPF program has at most `u16::MAX` instructions.
const SAVED_CAP: u64 = 8 + 8 * u16::MAX as u64;

/// Keeps the container's filter in its run directory `run_dir` for `drun exec` (see [`saved_for_exec`]).
pub fn save_for_exec(run_dir: &std::path::Path, filter: Option<&Precompiled>) -> Result<(), FilterError> {
    let bytes = filter.map(Precompiled::to_saved).unwrap_or_default();
    crate::sys::safe_fs::write_replace(&run_dir.join(SAVED_FOR_EXEC), &bytes, 0o600).map_err(|source| FilterError::Io {
        what: "keep the filter for exec",
        source,
    })
}

/// The filter [`save_for_exec`] kept in `run_dir`: `None` when the container's process has none loaded by drun.
pub fn saved_for_exec(run_dir: &std::path::Path) -> Result<Option<Precompiled>, FilterError> {
    let bytes = crate::sys::safe_fs::read_bounded(&run_dir.join(SAVED_FOR_EXEC), SAVED_CAP).map_err(|source| {
        FilterError::Io {
            what: "read the container's filter",
            source,
        }
    })?;
    if bytes.is_empty() {
        return Ok(None);
    }
    Precompiled::from_saved(&bytes)
        .map(Some)
        .ok_or_else(|| FilterError::Invalid(format!("the run directory's {SAVED_FOR_EXEC} is not a BPF program")))
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // fixtures in the tests' own temporary directories
mod tests {
    use super::*;

    fn spec(nnp: bool) -> Value {
        serde_json::json!({
            "process": {"noNewPrivileges": nnp},
            "linux": {"seccomp": default_profile(), "namespaces": []}
        })
    }

    /// A cache in a directory of its own, the way the run path makes one in the store.
    fn store() -> (tempfile::TempDir, BpfCache) {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::image::store::Store::open(dir.path()).unwrap();
        let cache = BpfCache::new(store.cache_dir(CACHE_KIND));
        (dir, cache)
    }

    fn cached_files(dir: &tempfile::TempDir) -> Vec<std::path::PathBuf> {
        std::fs::read_dir(dir.path().join("cache").join(CACHE_KIND))
            .map(|rd| rd.flatten().map(|e| e.path()).collect())
            .unwrap_or_default()
    }

    #[test]
    fn the_filter_kept_for_exec_reads_back_the_same() {
        let (_dir, cache) = store();
        let f = take_precompiled(&mut spec(true), &cache).unwrap().expect("precompiled");
        let run = tempfile::tempdir().unwrap();
        save_for_exec(run.path(), Some(&f)).unwrap();
        let back = saved_for_exec(run.path()).unwrap().expect("a filter");
        assert_eq!(back.to_saved(), f.to_saved());
        save_for_exec(run.path(), None).unwrap();
        assert!(saved_for_exec(run.path()).unwrap().is_none());
        std::fs::write(run.path().join(SAVED_FOR_EXEC), b"short").unwrap();
        assert!(saved_for_exec(run.path()).is_err());
    }

    #[test]
    fn compiles_once_then_reads_the_cache() {
        let (dir, cache) = store();
        let mut first = spec(true);
        let f1 = take_precompiled(&mut first, &cache).unwrap().expect("precompiled");
        // Hundreds of rules on three ABIs: a real program, and the profile is gone from the spec.
        assert!(f1.len() > 100, "{} instructions", f1.len());
        assert!(first.pointer("/linux/seccomp").is_none());
        assert!(first.pointer("/linux/namespaces").is_some());
        let files = cached_files(&dir);
        assert_eq!(files.len(), 1, "{files:?}");
        let on_disk = std::fs::read(&files[0]).unwrap();
        assert!(on_disk.starts_with(cache::CACHE_MAGIC));
        assert_eq!(on_disk.len(), 8 + f1.len() * 8 + 32);

        let mut second = spec(true);
        let f2 = take_precompiled(&mut second, &cache).unwrap().expect("precompiled");
        assert_eq!(f2.len(), f1.len());
        let same = f1
            .program
            .iter()
            .zip(&f2.program)
            .all(|(a, b)| (a.code, a.jt, a.jf, a.k) == (b.code, b.jt, b.jf, b.k));
        assert!(same, "the cached program differs from the compiled one");
        assert_eq!(cached_files(&dir).len(), 1);
    }

    #[test]
    fn a_corrupt_cache_file_is_ignored_and_replaced() {
        let (dir, cache) = store();
        let good = take_precompiled(&mut spec(true), &cache).unwrap().unwrap();
        let file = cached_files(&dir).remove(0);
        let mut bytes = std::fs::read(&file).unwrap();
        // One instruction altered: an "allow" where there was something else would be a hole.
        bytes[8 + 5 * 8 + 4] ^= 0xff;
        std::fs::write(&file, &bytes).unwrap();
        assert!(cache::read_cached(&file, 0).is_none());
        let again = take_precompiled(&mut spec(true), &cache).unwrap().unwrap();
        assert_eq!(again.len(), good.len());
        assert!(
            cache::read_cached(&file, 0).is_some(),
            "the corrupt file was not rewritten"
        );
        // A truncated file too.
        std::fs::write(&file, &bytes[..20]).unwrap();
        assert!(cache::read_cached(&file, 0).is_none());
    }

    #[test]
    fn left_to_libcontainer_without_no_new_privileges_or_with_notify() {
        let (dir, cache) = store();
        let mut without_nnp = spec(false);
        assert!(take_precompiled(&mut without_nnp, &cache).unwrap().is_none());
        assert_eq!(without_nnp, spec(false), "the spec must be left alone");

        let mut notify = spec(true);
        notify["linux"]["seccomp"]["syscalls"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!({"names": ["mkdir"], "action": "SCMP_ACT_NOTIFY"}));
        let before = notify.clone();
        assert!(take_precompiled(&mut notify, &cache).unwrap().is_none());
        assert_eq!(notify, before);

        let mut none = serde_json::json!({"process": {"noNewPrivileges": true}, "linux": {}});
        assert!(take_precompiled(&mut none, &cache).unwrap().is_none());
        assert!(cached_files(&dir).is_empty());
    }

    #[test]
    fn an_invalid_profile_is_an_error() {
        let (_dir, cache) = store();
        let mut bad = serde_json::json!({
            "process": {"noNewPrivileges": true},
            "linux": {"seccomp": {"defaultAction": "SCMP_ACT_NOPE"}}
        });
        assert!(matches!(
            take_precompiled(&mut bad, &cache),
            Err(FilterError::Invalid(_))
        ));
    }
}
