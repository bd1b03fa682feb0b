//! Host devices (`--device /dev/HOST[:/dev/CONTAINER][:rwm]`) in the OCI spec: each node is bind-mounted from the
//! host, as the GPU path does with its nodes (one path for root and rootless, and no mknod, which the device
//! cgroup would refuse for an `r` or `rw` device: libcontainer applies the cgroup before it makes `/dev`), and, as
//! root, allowed in the device cgroup with the permissions given (enforced on v1, and on v2 by libcgroups' eBPF
//! filter). Rootless, there is no device cgroup to write: the user namespace keeps the container to what the
//! caller may do with the node on the host anyway, and narrower permissions cannot be enforced (a read-only
//! mount does not stop writes to a device node), which drun says.

use serde_json::{json, Value};

use crate::plan::{DeviceAccess, DeviceKind, HostDevice, RunPlan};

/// Container paths a device may not take: the nodes and mounts every container's `/dev` already has.
const RESERVED: &[&str] = &[
    "/dev/null",
    "/dev/zero",
    "/dev/full",
    "/dev/random",
    "/dev/urandom",
    "/dev/tty",
    "/dev/ptmx",
    "/dev/console",
    "/dev/pts",
    "/dev/shm",
    "/dev/mqueue",
    "/dev/init",
    "/dev/fd",
    "/dev/stdin",
    "/dev/stdout",
    "/dev/stderr",
    "/proc",
    "/sys",
];

/// The container path of a device collides with what every container has.
#[derive(Debug, thiserror::Error)]
#[error(
    "invalid container path {0:?} for a device: every container has it already; choose another, such as /dev/my-device"
)]
pub struct ReservedPath(pub String);

/// The plan's host devices, then with `--rdma` the host's RDMA devices (read and write: libibverbs opens them
/// read-write) that `--device` did not already give.
pub fn with_rdma(plan: &RunPlan) -> Result<Vec<HostDevice>, crate::rdma::RdmaError> {
    let mut devices = plan.host_devices.clone();
    if plan.rdma {
        for node in crate::rdma::discover()? {
            if !devices.iter().any(|d| d.container == node.container) {
                devices.push(HostDevice {
                    host: node.host,
                    container: node.container,
                    kind: DeviceKind::Char,
                    major: node.major,
                    minor: node.minor,
                    access: DeviceAccess::parse("rw").expect("valid letters"),
                });
            }
        }
    }
    Ok(devices)
}

/// `/dev` itself, or one of [`RESERVED`] or below it.
fn reserved(path: &str) -> bool {
    path == "/dev"
        || RESERVED.iter().any(|r| {
            path.strip_prefix(r)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
        })
}

/// The bind mounts of `devices`, and their device-cgroup allow rules (for a spec that has `linux.resources`).
pub fn edits(devices: &[HostDevice], rootless: bool) -> Result<(Vec<Value>, Vec<Value>), ReservedPath> {
    let mut mounts = Vec::with_capacity(devices.len());
    let mut rules = Vec::with_capacity(devices.len());
    for d in devices {
        if reserved(&d.container) {
            return Err(ReservedPath(d.container.clone()));
        }
        if rootless && !(d.access.read && d.access.write) {
            tracing::warn!(
                "device permissions NOT enforced rootless: {:?} is given as {:?}, not {:?} (no device cgroup \
                 without root; the container may use it as you can on the host)",
                d.host,
                d.container,
                d.access.letters()
            );
        }
        mounts.push(json!({"destination": d.container, "type": "bind", "source": d.host,
                           "options": ["bind", "rprivate", "nosuid"]}));
        rules.push(json!({
            "allow": true,
            "type": d.kind.letter(),
            "major": d.major,
            "minor": d.minor,
            "access": d.access.letters(),
        }));
    }
    Ok((mounts, rules))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(container: &str, access: &str) -> HostDevice {
        HostDevice {
            host: "/dev/loop0".into(),
            container: container.into(),
            kind: DeviceKind::Block,
            major: 7,
            minor: 0,
            access: DeviceAccess::parse(access).unwrap(),
        }
    }

    #[test]
    fn a_bind_mount_and_an_allow_rule_per_device() {
        let (mounts, rules) = edits(&[device("/dev/myloop", "r")], false).unwrap();
        assert_eq!(
            mounts,
            [
                json!({"destination": "/dev/myloop", "type": "bind", "source": "/dev/loop0",
                    "options": ["bind", "rprivate", "nosuid"]})
            ]
        );
        assert_eq!(
            rules,
            [json!({"allow": true, "type": "b", "major": 7, "minor": 0, "access": "r"})]
        );
        let (rootless, _) = edits(&[device("/dev/myloop", "r")], true).unwrap();
        assert_eq!(rootless, mounts);
    }

    #[test]
    fn what_every_container_has_is_not_replaced() {
        for taken in ["/dev/null", "/dev/shm", "/dev/pts/0", "/dev", "/proc/x"] {
            let e = edits(&[device(taken, "rwm")], false).unwrap_err();
            assert_eq!(e.0, taken);
        }
        for free in ["/dev/null2", "/dev/shmem", "/dev/net/tun", "/opt/dev"] {
            assert!(edits(&[device(free, "rwm")], false).is_ok(), "{free}");
        }
    }
}
