//! The one step of building a plan that looks at the host: bind sources are made canonical (and so must exist),
//! env files are read (bounded), required files are checked. Both front ends call [`resolve_host_paths`] once,
//! after every value has been parsed; the parsers themselves never touch the disk.

use std::io;
use std::path::{Path, PathBuf};

use super::parse::MountRequest;
use super::MountSpec;

/// An env file larger than this is refused (it is read whole).
const ENV_FILE_LIMIT: u64 = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum HostPathError {
    #[error("cannot find the bind source {path:?}")]
    BindSource {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot read the env file {path:?}")]
    EnvFile {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A file that must exist does not (or is not a regular file).
    #[error("cannot find the file {path:?}")]
    MissingFile { path: PathBuf },
}

/// What a front end names on the host, as written, each item with where it was written (`L`: a flag, a place in
/// a workflow file), for the error.
#[derive(Debug)]
pub struct HostInputs<L> {
    /// What relative paths are relative to: the workflow file's directory (an empty path: the current directory).
    pub base: PathBuf,
    pub mounts: Vec<(MountRequest, L)>,
    pub env_files: Vec<(PathBuf, L)>,
    /// Regular files that must exist (a workflow's `requirements`).
    pub files: Vec<(PathBuf, L)>,
}

impl<L> Default for HostInputs<L> {
    fn default() -> HostInputs<L> {
        HostInputs {
            base: PathBuf::new(),
            mounts: Vec::new(),
            env_files: Vec::new(),
            files: Vec::new(),
        }
    }
}

/// [`HostInputs`] looked up, each list in the order given.
#[derive(Debug)]
pub struct HostPaths {
    /// Bind sources made canonical; tmpfs mounts as they were.
    pub mounts: Vec<MountSpec>,
    /// The text of each env file (not UTF-8: lossily converted).
    pub env_files: Vec<String>,
    /// The required files, relative ones joined to the base.
    pub files: Vec<PathBuf>,
}

/// A failed lookup and where its input was written.
#[derive(Debug)]
pub struct HostPathFailure<L> {
    pub at: L,
    pub error: HostPathError,
}

/// Looks up everything in `inputs`; the first failure ends it.
pub fn resolve_host_paths<L>(inputs: HostInputs<L>) -> Result<HostPaths, HostPathFailure<L>> {
    let base = inputs.base;
    let fail = |at, error| HostPathFailure { at, error };
    let mut out = HostPaths {
        mounts: Vec::with_capacity(inputs.mounts.len()),
        env_files: Vec::with_capacity(inputs.env_files.len()),
        files: Vec::with_capacity(inputs.files.len()),
    };
    for (request, at) in inputs.mounts {
        out.mounts.push(resolve_mount(request, &base).map_err(|e| fail(at, e))?);
    }
    for (path, at) in inputs.env_files {
        let text = crate::sys::safe_fs::read_user_file(&base.join(&path), ENV_FILE_LIMIT)
            .map_err(|source| fail(at, HostPathError::EnvFile { path, source }))?;
        out.env_files.push(String::from_utf8_lossy(&text).into_owned());
    }
    for (path, at) in inputs.files {
        let path = base.join(path);
        if !path.is_file() {
            return Err(fail(at, HostPathError::MissingFile { path }));
        }
        out.files.push(path);
    }
    Ok(out)
}

fn resolve_mount(request: MountRequest, base: &Path) -> Result<MountSpec, HostPathError> {
    Ok(match request {
        MountRequest::Bind {
            source,
            destination,
            read_only,
        } => MountSpec::Bind {
            source: std::fs::canonicalize(base.join(&source)).map_err(|e| HostPathError::BindSource {
                path: source,
                source: e,
            })?,
            destination,
            read_only,
        },
        MountRequest::Tmpfs { destination, options } => MountSpec::Tmpfs { destination, options },
    })
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // fixtures in the tests' own temporary directories
mod tests {
    use super::*;

    #[test]
    fn relative_paths_are_relative_to_the_base_and_failures_say_where() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir(t.path().join("data")).unwrap();
        std::fs::write(t.path().join("env"), "A=1\n").unwrap();
        std::fs::write(t.path().join("req.txt"), "x\n").unwrap();
        let bind = |source: &str| MountRequest::Bind {
            source: source.into(),
            destination: "/d".into(),
            read_only: true,
        };
        let paths = resolve_host_paths(HostInputs {
            base: t.path().to_path_buf(),
            mounts: vec![(bind("./data/"), 1)],
            env_files: vec![("env".into(), 2)],
            files: vec![("req.txt".into(), 3)],
        })
        .unwrap();
        assert_eq!(
            paths.mounts,
            vec![MountSpec::Bind {
                source: t.path().canonicalize().unwrap().join("data"),
                destination: "/d".into(),
                read_only: true,
            }]
        );
        assert_eq!(paths.env_files, vec!["A=1\n".to_string()]);
        assert_eq!(paths.files, vec![t.path().join("req.txt")]);

        let failure = |inputs: HostInputs<u32>| resolve_host_paths(inputs).unwrap_err();
        let base = t.path().to_path_buf();
        let f = failure(HostInputs {
            base: base.clone(),
            mounts: vec![(bind("data"), 1), (bind("nope"), 2)],
            ..Default::default()
        });
        assert_eq!(f.at, 2);
        assert_eq!(f.error.to_string(), "cannot find the bind source \"nope\"");
        let f = failure(HostInputs {
            base: base.clone(),
            env_files: vec![("nope.env".into(), 7)],
            ..Default::default()
        });
        assert!(matches!(f.error, HostPathError::EnvFile { .. }) && f.at == 7);
        let f = failure(HostInputs {
            base,
            files: vec![("data".into(), 9)],
            ..Default::default()
        });
        assert!(matches!(f.error, HostPathError::MissingFile { .. }) && f.at == 9);
    }
}
