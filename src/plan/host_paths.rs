//! The one step of building a plan that looks at the host: bind sources are made canonical (and so must exist),
//! env files are read (bounded), required files are checked, device nodes are looked at (type and numbers). Both
//! front ends call [`resolve_host_paths`] once, after every value has been parsed; the parsers themselves never
//! touch the disk.

use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use super::parse::{BlkioKind, BlkioRequest, HostDeviceRequest, MountRequest};
use super::{BlockDevice, DeviceKind, DeviceValue, HostDevice, MountSpec};

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
    #[error("cannot find the device {path:?}")]
    DeviceMissing {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Root only: someone else could swap the node between drun's check and the bind mount.
    #[error("cannot use the device {path:?}: it is reached through {dir:?}, which {why}: another user could swap the node after drun checked it; use a path only root controls")]
    DeviceReplaceable {
        path: PathBuf,
        dir: PathBuf,
        why: &'static str,
    },
    /// `path` as given; `found` says what it (or what its symlinks lead to) is instead.
    #[error("invalid device {path:?}: expected a character or block device node, not {found}")]
    NotADevice { path: PathBuf, found: &'static str },
    /// A block I/O setting's device that is not a block device.
    #[error("invalid block device {path:?}: expected a block device node, not {found}")]
    NotABlockDevice { path: PathBuf, found: &'static str },
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
    /// Host device nodes (`--device /dev/…`, a workflow's `devices`).
    pub devices: Vec<(HostDeviceRequest, L)>,
    /// Block devices of per-device block I/O settings (`--device-read-bps /dev/sda:1mb` …).
    pub blkio: Vec<(BlkioRequest, L)>,
}

impl<L> Default for HostInputs<L> {
    fn default() -> HostInputs<L> {
        HostInputs {
            base: PathBuf::new(),
            mounts: Vec::new(),
            env_files: Vec::new(),
            files: Vec::new(),
            devices: Vec::new(),
            blkio: Vec::new(),
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
    /// The device nodes, with their type and numbers.
    pub devices: Vec<HostDevice>,
    /// The block I/O settings, each with its device's numbers.
    pub blkio: Vec<(BlkioKind, DeviceValue)>,
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
        devices: Vec::with_capacity(inputs.devices.len()),
        blkio: Vec::with_capacity(inputs.blkio.len()),
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
    for (request, at) in inputs.devices {
        out.devices.push(resolve_device(request).map_err(|e| fail(at, e))?);
    }
    for (request, at) in inputs.blkio {
        let device = resolve_device(HostDeviceRequest {
            host: request.path.clone(),
            container: String::new(),
            access: super::DeviceAccess::ALL,
        })
        .and_then(|d| match d.kind {
            DeviceKind::Block => Ok(BlockDevice {
                major: d.major,
                minor: d.minor,
            }),
            DeviceKind::Char => Err(HostPathError::NotABlockDevice {
                path: request.path.clone(),
                found: "a character device",
            }),
        })
        .map_err(|e| match e {
            HostPathError::NotADevice { path, found } => HostPathError::NotABlockDevice { path, found },
            e => e,
        })
        .map_err(|e| fail(at, e))?;
        out.blkio.push((
            request.kind,
            DeviceValue {
                device,
                value: request.value,
            },
        ));
    }
    Ok(out)
}

/// The node `request` names, symlinks followed (as Docker does: `/dev/disk/by-id/…` works). Looked at once, here:
/// the run bind-mounts the canonical path, and as root the device cgroup allows only these numbers, so a node
/// swapped in afterwards stays unusable.
fn resolve_device(request: HostDeviceRequest) -> Result<HostDevice, HostPathError> {
    let missing = |source| HostPathError::DeviceMissing {
        path: request.host.clone(),
        source,
    };
    let host = std::fs::canonicalize(&request.host).map_err(missing)?;
    // As root, the node is then bound by this name (libcontainer opens it by path): no one else may be able to
    // put another file there meanwhile. Rootless, the container gets no more than the caller has anyway (and the
    // owners seen in drun's user namespace are not the host's).
    if !crate::sys::userns::is_rootless() {
        if let Some((dir, why)) = crate::sys::safe_fs::replaceable_by_others(&host, 0) {
            return Err(HostPathError::DeviceReplaceable {
                path: request.host,
                dir,
                why,
            });
        }
    }
    let meta = std::fs::metadata(&host).map_err(missing)?;
    let kind = meta.file_type();
    let kind = if kind.is_char_device() {
        DeviceKind::Char
    } else if kind.is_block_device() {
        DeviceKind::Block
    } else {
        let found = if kind.is_dir() {
            "a directory"
        } else if kind.is_file() {
            "a regular file"
        } else if kind.is_fifo() {
            "a FIFO"
        } else if kind.is_socket() {
            "a socket"
        } else {
            "another kind of file"
        };
        return Err(HostPathError::NotADevice {
            path: request.host,
            found,
        });
    };
    let rdev = meta.rdev();
    Ok(HostDevice {
        host,
        container: request.container,
        kind,
        major: nix::sys::stat::major(rdev),
        minor: nix::sys::stat::minor(rdev),
        access: request.access,
    })
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
            ..Default::default()
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

    #[test]
    fn devices_are_nodes_found_through_symlinks() {
        let t = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/dev/null", t.path().join("null")).unwrap();
        std::fs::write(t.path().join("file"), "x").unwrap();
        let request = |host: &Path| HostDeviceRequest {
            host: host.to_path_buf(),
            container: "/dev/c".into(),
            access: crate::plan::DeviceAccess::parse("rw").unwrap(),
        };
        let resolve = |host: &Path| {
            resolve_host_paths(HostInputs {
                devices: vec![(request(host), 5)],
                ..Default::default()
            })
        };
        let paths = resolve(&t.path().join("null")).unwrap();
        assert_eq!(
            paths.devices,
            vec![HostDevice {
                host: "/dev/null".into(),
                container: "/dev/c".into(),
                kind: DeviceKind::Char,
                major: 1,
                minor: 3,
                access: crate::plan::DeviceAccess::parse("rw").unwrap(),
            }]
        );
        let error = |host: &Path| {
            let f = resolve(host).unwrap_err();
            assert_eq!(f.at, 5);
            f.error.to_string()
        };
        let file = t.path().join("file");
        assert_eq!(
            error(&file),
            format!("invalid device {file:?}: expected a character or block device node, not a regular file")
        );
        assert!(error(t.path()).ends_with("not a directory"));
        assert_eq!(
            error(&t.path().join("nope")),
            format!("cannot find the device {:?}", t.path().join("nope"))
        );
    }
}
