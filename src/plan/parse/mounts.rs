//! Mounts as written: `-v SRC:DST[:ro|rw]`, `--mount type=…,…`, `--tmpfs DST[:OPTS]` and the workflow's
//! `volumes` and `tmpfs` in both their shapes. Every container path must be absolute, whichever form names it.

use std::path::PathBuf;

use super::{ParseError, Problem};
use crate::units::ByteSize;

/// A mount as written; [`crate::plan::host_paths`] makes it a [`crate::plan::MountSpec`]. A bind's source is the
/// text given, not yet looked up on the host (relative to the current directory or to the workflow file).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MountRequest {
    Bind {
        source: PathBuf,
        destination: String,
        read_only: bool,
    },
    Tmpfs {
        destination: String,
        options: Vec<String>,
    },
}

fn absolute(whole: &str, destination: &str) -> Result<String, ParseError> {
    if destination.starts_with('/') {
        Ok(destination.to_string())
    } else {
        Err(ParseError::new(whole, Problem::RelativeDestination(destination.into())))
    }
}

/// `SRC:DST[:ro|rw]` (`-v`, a workflow's `volumes` list).
pub fn volume(text: &str) -> Result<MountRequest, ParseError> {
    match text.split(':').collect::<Vec<_>>().as_slice() {
        [source, destination] => bind_checked(text, source, destination, None),
        [source, destination, mode] => bind_checked(text, source, destination, Some(mode)),
        _ => Err(ParseError::new(text, Problem::VolumeShape)),
    }
}

/// A bind given in parts (a workflow's `volumes` map: `SRC: {bind: DST, mode: ro}`); `mode` is `ro` or `rw`.
pub fn bind(source: &str, destination: &str, mode: Option<&str>) -> Result<MountRequest, ParseError> {
    bind_checked(destination, source, destination, mode)
}

fn bind_checked(whole: &str, source: &str, destination: &str, mode: Option<&str>) -> Result<MountRequest, ParseError> {
    let destination = absolute(whole, destination)?;
    let read_only = match mode {
        None | Some("rw") => false,
        Some("ro") => true,
        Some(other) => return Err(ParseError::new(whole, Problem::VolumeMode(other.into()))),
    };
    Ok(MountRequest::Bind {
        source: PathBuf::from(source),
        destination,
        read_only,
    })
}

/// `DST[:OPTIONS]` (`--tmpfs`, a workflow's `tmpfs` list), options comma-separated (`size=1m,mode=1777`).
pub fn tmpfs(text: &str) -> Result<MountRequest, ParseError> {
    let (destination, options) = text.split_once(':').unwrap_or((text, ""));
    tmpfs_checked(text, destination, options)
}

/// A tmpfs given in parts (a workflow's `tmpfs` map: `/scratch: size=1m`).
pub fn tmpfs_at(destination: &str, options: &str) -> Result<MountRequest, ParseError> {
    tmpfs_checked(destination, destination, options)
}

fn tmpfs_checked(whole: &str, destination: &str, options: &str) -> Result<MountRequest, ParseError> {
    Ok(MountRequest::Tmpfs {
        destination: absolute(whole, destination)?,
        options: options.split(',').filter(|o| !o.is_empty()).map(String::from).collect(),
    })
}

/// Docker's `--mount`: `type=bind,source=…,target=…[,readonly]` or `type=tmpfs,target=…[,tmpfs-size=…]
/// [,tmpfs-mode=…]` (`src`, `destination`, `dst` and `ro` as aliases; `bind` when no type is given).
pub fn mount(text: &str) -> Result<MountRequest, ParseError> {
    let fail = |problem| ParseError::new(text, problem);
    let mut kind = "bind";
    let (mut source, mut target, mut read_only, mut options) = (None, None, false, Vec::new());
    for item in text.split(',') {
        let (key, value) = item.split_once('=').unwrap_or((item, ""));
        match key {
            "type" => kind = value,
            "source" | "src" => source = Some(value),
            "target" | "destination" | "dst" => target = Some(value),
            "readonly" | "ro" => read_only = value.is_empty() || value == "true" || value == "1",
            "tmpfs-size" => {
                let size: ByteSize = value.parse().map_err(|_| fail(Problem::TmpfsSize(value.into())))?;
                options.push(format!("size={}", size.0));
            }
            "tmpfs-mode" => options.push(format!("mode={value}")),
            _ => return Err(fail(Problem::MountKey(key.into()))),
        }
    }
    let destination = absolute(text, target.ok_or_else(|| fail(Problem::MountTarget))?)?;
    match kind {
        "bind" => Ok(MountRequest::Bind {
            source: PathBuf::from(source.ok_or_else(|| fail(Problem::MountSource))?),
            destination,
            read_only,
        }),
        "tmpfs" => Ok(MountRequest::Tmpfs { destination, options }),
        other => Err(fail(Problem::MountType(other.into()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bind_of(source: &str, destination: &str, read_only: bool) -> MountRequest {
        MountRequest::Bind {
            source: source.into(),
            destination: destination.into(),
            read_only,
        }
    }

    fn tmpfs_of(destination: &str, options: &[&str]) -> MountRequest {
        MountRequest::Tmpfs {
            destination: destination.into(),
            options: options.iter().map(|o| o.to_string()).collect(),
        }
    }

    #[test]
    fn volumes() {
        assert_eq!(volume("/data:/d"), Ok(bind_of("/data", "/d", false)));
        assert_eq!(volume("./rel:/d:ro"), Ok(bind_of("./rel", "/d", true)));
        assert_eq!(volume("/data:/d:rw"), Ok(bind_of("/data", "/d", false)));
        assert_eq!(volume("/data").unwrap_err().problem, Problem::VolumeShape);
        assert_eq!(volume("/a:/b:ro:x").unwrap_err().problem, Problem::VolumeShape);
        assert_eq!(
            volume("/a:/b:rx").unwrap_err().problem,
            Problem::VolumeMode("rx".into())
        );
        assert_eq!(
            volume("/a:rel").unwrap_err().problem,
            Problem::RelativeDestination("rel".into())
        );
        assert_eq!(
            bind("./shared", "/data2", Some("ro")),
            Ok(bind_of("./shared", "/data2", true))
        );
        assert_eq!(
            bind("./shared", "/data2", None),
            Ok(bind_of("./shared", "/data2", false))
        );
        assert_eq!(
            bind("s", "/d", Some("x")).unwrap_err().problem,
            Problem::VolumeMode("x".into())
        );
        assert_eq!(
            bind("s", "d", None).unwrap_err().problem,
            Problem::RelativeDestination("d".into())
        );
    }

    #[test]
    fn tmpfs_in_both_forms_must_be_absolute() {
        assert_eq!(tmpfs("/scratch"), Ok(tmpfs_of("/scratch", &[])));
        assert_eq!(
            tmpfs("/scratch:size=1m,mode=1777"),
            Ok(tmpfs_of("/scratch", &["size=1m", "mode=1777"]))
        );
        assert_eq!(tmpfs_at("/scratch", "size=1m"), Ok(tmpfs_of("/scratch", &["size=1m"])));
        assert_eq!(tmpfs_at("/scratch", ""), Ok(tmpfs_of("/scratch", &[])));
        for bad in [tmpfs("scratch:size=1m"), tmpfs_at("scratch", "size=1m")] {
            assert_eq!(bad.unwrap_err().problem, Problem::RelativeDestination("scratch".into()));
        }
    }

    #[test]
    fn mounts() {
        assert_eq!(
            mount("type=bind,source=/data,target=/m,readonly"),
            Ok(bind_of("/data", "/m", true))
        );
        assert_eq!(mount("src=/data,dst=/m"), Ok(bind_of("/data", "/m", false)));
        assert_eq!(
            mount("src=/data,destination=/m,ro=true"),
            Ok(bind_of("/data", "/m", true))
        );
        assert_eq!(
            mount("src=/data,destination=/m,ro=false"),
            Ok(bind_of("/data", "/m", false))
        );
        assert_eq!(
            mount("type=tmpfs,target=/t,tmpfs-size=1m,tmpfs-mode=1777"),
            Ok(MountRequest::Tmpfs {
                destination: "/t".into(),
                options: vec!["size=1048576".into(), "mode=1777".into()],
            })
        );
        let problem = |text| mount(text).unwrap_err().problem;
        assert_eq!(problem("type=bind,target=/m"), Problem::MountSource);
        assert_eq!(problem("type=tmpfs"), Problem::MountTarget);
        assert_eq!(problem("type=volume,target=/m"), Problem::MountType("volume".into()));
        assert_eq!(
            problem("type=tmpfs,target=/t,colour=red"),
            Problem::MountKey("colour".into())
        );
        assert_eq!(
            problem("type=tmpfs,target=/t,tmpfs-size=lots"),
            Problem::TmpfsSize("lots".into())
        );
        // The same rule as --tmpfs and -v: a container path is absolute.
        assert_eq!(problem("type=tmpfs,target=t"), Problem::RelativeDestination("t".into()));
        assert_eq!(
            problem("type=bind,source=/d,target=t"),
            Problem::RelativeDestination("t".into())
        );
    }
}
