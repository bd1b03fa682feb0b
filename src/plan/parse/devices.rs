//! Devices as written (`--device`, a workflow's `devices` list): a host device node Docker-style,
//! `/dev/HOST[:/dev/CONTAINER][:PERMISSIONS]`, or a CDI device by its fully-qualified name `VENDOR/CLASS=NAME`.
//! A value that starts with `/` is a host device; anything else must be a CDI name (whose vendor cannot be empty,
//! so the two never overlap). Whether the node exists and is a device is [`crate::plan::host_paths`]'s question.

use std::path::PathBuf;

use super::{ParseError, Problem};
use crate::plan::DeviceAccess;

/// A `--device` value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeviceRequest {
    /// A CDI device name (`nvidia.com/gpu=0`), resolved against the host's CDI specs when the run starts.
    Cdi(String),
    /// A host device node, not yet looked at.
    Host(HostDeviceRequest),
}

/// A host device as written: the host path (followed if a symlink, as Docker does), where it appears in the
/// container (the host path as written, by default) and what the container may do with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostDeviceRequest {
    pub host: PathBuf,
    pub container: String,
    pub access: DeviceAccess,
}

/// `/dev/HOST[:/dev/CONTAINER][:rwm]` or `VENDOR/CLASS=NAME`. As in Docker, a second field that is made of the
/// letters r, w and m is the permissions (`/dev/fuse:rw`), anything else the container path; permissions default
/// to `rwm`.
pub fn device(text: &str) -> Result<DeviceRequest, ParseError> {
    if !text.starts_with('/') {
        return cdi_device(text)
            .map(DeviceRequest::Cdi)
            .map_err(|_| ParseError::new(text, Problem::DeviceShape));
    }
    let (host, container, access) = match text.split(':').collect::<Vec<_>>().as_slice() {
        [host] => (*host, *host, None),
        [host, second] => match DeviceAccess::parse(second) {
            Some(access) => (*host, *host, Some(access)),
            None => (*host, *second, None),
        },
        [host, container, access] => (
            *host,
            *container,
            Some(
                DeviceAccess::parse(access)
                    .ok_or_else(|| ParseError::new(text, Problem::DeviceAccess(access.to_string())))?,
            ),
        ),
        _ => return Err(ParseError::new(text, Problem::DeviceShape)),
    };
    Ok(DeviceRequest::Host(HostDeviceRequest {
        host: PathBuf::from(host),
        container: container_path(text, container)?,
        access: access.unwrap_or(DeviceAccess::ALL),
    }))
}

/// The container path made plain (`//` and `.` components dropped); it must be absolute, below `/`, and without
/// `..`, which would only obscure where the node lands.
fn container_path(whole: &str, path: &str) -> Result<String, ParseError> {
    if !path.starts_with('/') {
        return Err(ParseError::new(whole, Problem::RelativeDestination(path.into())));
    }
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty() && *p != ".").collect();
    if parts.is_empty() || parts.contains(&"..") {
        return Err(ParseError::new(whole, Problem::DevicePath(path.into())));
    }
    Ok(format!("/{}", parts.join("/")))
}

/// A fully-qualified CDI device name, `VENDOR/CLASS=NAME` (`nvidia.com/gpu=0`); whether a spec on this host
/// defines it is known only when the container is set up.
pub fn cdi_device(text: &str) -> Result<String, ParseError> {
    let well_formed = text.split_once('=').is_some_and(|(kind, name)| {
        !name.is_empty()
            && kind
                .split_once('/')
                .is_some_and(|(vendor, class)| !vendor.is_empty() && !class.is_empty())
    });
    if well_formed {
        Ok(text.to_string())
    } else {
        Err(ParseError::new(text, Problem::CdiDevice))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(host: &str, container: &str, access: &str) -> DeviceRequest {
        DeviceRequest::Host(HostDeviceRequest {
            host: host.into(),
            container: container.into(),
            access: DeviceAccess::parse(access).unwrap(),
        })
    }

    #[test]
    fn host_devices_as_docker_writes_them() {
        assert_eq!(device("/dev/fuse"), Ok(host("/dev/fuse", "/dev/fuse", "rwm")));
        assert_eq!(device("/dev/fuse:rw"), Ok(host("/dev/fuse", "/dev/fuse", "rw")));
        assert_eq!(
            device("/dev/zero:/dev/myzero"),
            Ok(host("/dev/zero", "/dev/myzero", "rwm"))
        );
        assert_eq!(
            device("/dev/zero:/dev/myzero:r"),
            Ok(host("/dev/zero", "/dev/myzero", "r"))
        );
        assert_eq!(
            device("/dev/zero:/dev//x/./z:mr"),
            Ok(host("/dev/zero", "/dev/x/z", "rm"))
        );
        // The host path as written is the default container path, even a symlink's.
        assert_eq!(
            device("/dev/disk/by-id/x:wm"),
            Ok(host("/dev/disk/by-id/x", "/dev/disk/by-id/x", "wm"))
        );
        let problem = |text| device(text).unwrap_err().problem;
        assert_eq!(problem("/dev/zero:/z:rx"), Problem::DeviceAccess("rx".into()));
        assert_eq!(problem("/dev/zero:/z:"), Problem::DeviceAccess("".into()));
        assert_eq!(problem("/dev/zero:/z:rr"), Problem::DeviceAccess("rr".into()));
        assert_eq!(problem("/dev/zero:z"), Problem::RelativeDestination("z".into()));
        assert_eq!(
            problem("/dev/zero:/dev/../etc/x"),
            Problem::DevicePath("/dev/../etc/x".into())
        );
        assert_eq!(problem("/dev/zero:/"), Problem::DevicePath("/".into()));
        assert_eq!(problem("/dev/zero:/a:r:x"), Problem::DeviceShape);
        assert!(device("/dev/zero:/z:rx")
            .unwrap_err()
            .named("--device")
            .to_string()
            .starts_with("invalid --device \"/dev/zero:/z:rx\": permissions \"rx\""));
    }

    #[test]
    fn anything_not_starting_with_a_slash_is_a_cdi_name() {
        for ok in ["nvidia.com/gpu=0", "example.com/widget=w0", "nvidia.com/gpu=all"] {
            assert_eq!(device(ok), Ok(DeviceRequest::Cdi(ok.into())));
            assert_eq!(cdi_device(ok).as_deref(), Ok(ok));
        }
        for bad in [
            "dev/zero",
            "nvidia.com/gpu",
            "nvidia.com/gpu=",
            "gpu=0",
            "nvidia.com/=0",
            "",
        ] {
            assert_eq!(device(bad).unwrap_err().problem, Problem::DeviceShape, "{bad}");
        }
        for bad in ["/dev/sda", "/gpu=0", "nvidia.com/gpu"] {
            assert_eq!(cdi_device(bad).unwrap_err().problem, Problem::CdiDevice, "{bad}");
        }
        assert_eq!(
            device("gpu0").unwrap_err().named("--device").to_string(),
            "invalid --device \"gpu0\": expected a host device /dev/HOST[:/dev/CONTAINER][:rwm] or a CDI device \
             name VENDOR/CLASS=NAME, e.g. nvidia.com/gpu=0"
        );
    }
}
