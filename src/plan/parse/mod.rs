//! The pure parsers both front ends share: every value a `drun run` flag or a workflow key gives for a run is
//! read here, so a flag and its workflow key accept the same language. A parser looks at its text only: it never
//! touches the disk (bind sources and env files are looked at later, by [`super::host_paths`]) and never names the
//! flag or key it was given through; the caller adds `--flag` ([`ParseError::named`]) or `file:line:col`.

mod devices;
mod env;
mod limits;
mod mounts;
#[cfg(test)]
mod props;
mod resources;
mod system;

pub use devices::{cdi_device, device, DeviceRequest, HostDeviceRequest};
pub use env::{env_file_lines, env_item, env_name};
pub use limits::{cpus, size, ulimit, ulimit_values};
pub use mounts::{bind, mount, tmpfs, tmpfs_at, volume, MountRequest};
pub use resources::{
    blkio_device, blkio_text, blkio_value, blkio_weight, cpu_period, cpu_quota, cpu_shares, cpuset, device_cgroup_rule,
    memswap, nano_cpus, oom_score_adj, swappiness, BlkioKind, BlkioRequest,
};
pub use system::{
    dns_option, dns_search, dns_server, domainname, extra_host, extra_host_pair, restart, restart_policy, sharing,
    signal, sysctl, sysctl_allowed, sysctl_text, SysctlNamespace,
};

use std::path::PathBuf;

use crate::gpu::select::{GpuRequest, Selector};
use crate::plan::{NetworkMode, SeccompMode};

/// A value a parser refused: the text it was given and what was wrong with it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid value {value:?}: {problem}")]
pub struct ParseError {
    /// The text as given.
    pub value: String,
    pub problem: Problem,
}

impl ParseError {
    fn new(value: &str, problem: Problem) -> ParseError {
        ParseError {
            value: value.to_string(),
            problem,
        }
    }

    /// The error as its front end shows it: `name` is the flag (`--memory`) or the workflow key (`memory`).
    pub fn named(self, name: impl Into<String>) -> InvalidValue {
        InvalidValue {
            name: name.into(),
            error: self,
        }
    }
}

/// A [`ParseError`] with the name of the flag or key that gave the value: `invalid --memory "lots": expected …`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid {name} {:?}: {}", error.value, error.problem)]
pub struct InvalidValue {
    pub name: String,
    pub error: ParseError,
}

/// What was wrong with a value (the message after `invalid NAME "VALUE": `).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    #[error("expected SRC:DST[:ro|rw]")]
    VolumeShape,
    #[error("mode {0:?}: expected ro or rw")]
    VolumeMode(String),
    #[error("the container path {0:?} must be absolute")]
    RelativeDestination(String),
    #[error("unknown key {0:?} (expected type, source, target, readonly, tmpfs-size or tmpfs-mode)")]
    MountKey(String),
    #[error("target= is required")]
    MountTarget,
    #[error("source= is required for bind")]
    MountSource,
    #[error("type must be bind or tmpfs, not {0:?}")]
    MountType(String),
    #[error("tmpfs-size {0:?} is not a size such as \"16GB\", \"512MiB\" or a number of bytes")]
    TmpfsSize(String),
    #[error("expected NAME=SOFT[:HARD]")]
    UlimitShape,
    #[error("{0:?} is not a number (or -1, unlimited)")]
    UlimitNumber(String),
    #[error("soft limit above hard limit")]
    UlimitOrder,
    #[error("expected a variable name that is not empty and has no `=`")]
    EnvName,
    #[error("expected a size such as \"16GB\", \"512MiB\" or a number of bytes")]
    Size,
    #[error("expected a positive number of CPUs, e.g. 2 or 0.5")]
    Cpus,
    #[error("expected host (the default) or none")]
    Network,
    #[error("expected seccomp=unconfined|PROFILE.json or no-new-privileges[=true|false]")]
    SecurityOpt,
    #[error("expected all, a count, device=0,2 or device=GPU-<uuid>")]
    Gpus,
    #[error("device= needs indices or UUIDs")]
    GpuIds,
    #[error("expected a CDI device name VENDOR/CLASS=NAME, e.g. nvidia.com/gpu=0")]
    CdiDevice,
    #[error(
        "expected a host device /dev/HOST[:/dev/CONTAINER][:rwm] or a CDI device name VENDOR/CLASS=NAME, e.g. \
         nvidia.com/gpu=0"
    )]
    DeviceShape,
    #[error("permissions {0:?}: expected one or more of r (read), w (write) and m (mknod), each once")]
    DeviceAccess(String),
    #[error("the container path {0:?} must name a file below / without `..`")]
    DevicePath(String),
    #[error("expected a list of numbers and ranges, e.g. 0-3 or 0,2")]
    Cpuset,
    #[error("expected a relative weight from 2 to 262144 (the default is 1024)")]
    CpuShares,
    #[error("expected a period in microseconds from 1000 to 1000000")]
    CpuPeriod,
    #[error("expected a quota in microseconds of at least 1000, or -1 for none")]
    CpuQuota,
    #[error("expected a positive number of 10^-9 CPUs, e.g. 1500000000 for 1.5 CPUs")]
    NanoCpus,
    #[error("expected a size such as \"1g\", or -1 for unlimited swap")]
    Memswap,
    #[error("expected a number from 0 to 100")]
    Swappiness,
    #[error("expected a number from -1000 to 1000")]
    OomScoreAdj,
    #[error("expected a weight from 10 to 1000")]
    BlkioWeight,
    #[error("expected a rate in bytes per second, such as 1mb or 1048576")]
    Rate,
    #[error("expected a positive number of I/O operations per second")]
    Iops,
    #[error("expected DEVICE:VALUE, e.g. /dev/sda:1mb")]
    BlkioShape,
    #[error("expected the absolute path of a block device, e.g. /dev/sda")]
    BlkioPath,
    #[error("expected TYPE MAJOR:MINOR ACCESS, e.g. 'c 1:3 rwm' (TYPE a, b or c; * for any number)")]
    DeviceRule,
    #[error("expected an IPv4 or IPv6 address")]
    DnsServer,
    #[error("expected a domain name (letters, digits, `-`, `_` and dots)")]
    DomainName,
    #[error("expected a resolv.conf option, one word such as ndots:2")]
    DnsOption,
    #[error("expected HOST:IP, e.g. db:10.0.0.5")]
    ExtraHost,
    #[error("host-gateway is the address of a bridge network's host; with the host network the host is 127.0.0.1")]
    HostGateway,
    #[error("{0:?} is not in a namespace of the container's own: only the IPC namespace's (kernel.msg*, kernel.sem, kernel.shm*, fs.mqueue.*) and the network namespace's (net.*) can be set, as Docker allows")]
    SysctlNotNamespaced(String),
    #[error("expected NAME=VALUE, e.g. kernel.shmmax=1000000")]
    SysctlShape,
    #[error("a value must be one line")]
    SysctlValue,
    #[error(
        "the network namespace is the host's: net.* parameters would change the host's network; they need network none"
    )]
    SysctlHostNetwork,
    #[error("the IPC namespace is the host's (ipc host): its parameters would change the host's")]
    SysctlHostIpc,
    #[error("expected a signal name or number, e.g. TERM, SIGQUIT or 9")]
    Signal,
    #[error("expected no or on-failure:N")]
    Restart,
    #[error("on-failure needs a maximum number of restarts, e.g. on-failure:3")]
    RestartCount,
    #[error("always and unless-stopped restart a container after drun has exited, which needs a daemon: drun runs in the foreground; use on-failure:N, or a service manager (a systemd unit with Restart=) around drun")]
    RestartDaemon,
    #[error("expected host or private")]
    Sharing,
    #[error("another container's namespace needs a daemon that runs both containers: expected host or private")]
    SharingContainer,
}

/// The network: `host` or `none` (the spellings of `--network`).
pub fn network(text: &str) -> Result<NetworkMode, ParseError> {
    <NetworkMode as clap::ValueEnum>::from_str(text, false).map_err(|_| ParseError::new(text, Problem::Network))
}

/// One `--security-opt` setting.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SecurityOpt {
    Seccomp(SeccompMode),
    NoNewPrivileges(bool),
}

/// `seccomp=unconfined`, `seccomp=PROFILE.json`, `no-new-privileges[=true|false]` (`:` works as `=`, as in Docker).
pub fn security_opt(text: &str) -> Result<SecurityOpt, ParseError> {
    let (key, value) = text.split_once(['=', ':']).unwrap_or((text, ""));
    Ok(match (key, value) {
        ("seccomp", "unconfined") => SecurityOpt::Seccomp(SeccompMode::Unconfined),
        ("seccomp", path) if !path.is_empty() => SecurityOpt::Seccomp(SeccompMode::Profile(PathBuf::from(path))),
        ("no-new-privileges", "" | "true") => SecurityOpt::NoNewPrivileges(true),
        ("no-new-privileges", "false") => SecurityOpt::NoNewPrivileges(false),
        _ => return Err(ParseError::new(text, Problem::SecurityOpt)),
    })
}

/// GPUs as Docker's `--gpus` writes them: `all`, a count, `device=0,2` or `device=GPU-<uuid>` (quotes around the
/// whole value, as a shell-quoted `"device=0,2"`, are allowed).
pub fn gpus(text: &str) -> Result<GpuRequest, ParseError> {
    let v = text.trim().trim_matches('"');
    let selector = if v == "all" {
        Selector::All
    } else if let Some(ids) = v.strip_prefix("device=") {
        let ids: Vec<String> = ids
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect();
        if ids.is_empty() {
            return Err(ParseError::new(v, Problem::GpuIds));
        }
        Selector::Ids(ids)
    } else if let Ok(n) = v.parse::<u32>() {
        Selector::Count(n)
    } else {
        return Err(ParseError::new(v, Problem::Gpus));
    };
    Ok(GpuRequest {
        selector,
        name: None,
        memory_mib: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_by_name_or_number() {
        for (text, n) in [("TERM", 15), ("sigquit", 3), ("9", 9), ("SIGKILL", 9), ("usr1", 10)] {
            assert_eq!(signal(text).map(|s| s as i32), Ok(n), "{text}");
        }
        for bad in ["", "0", "99", "SIGNOPE", "-1"] {
            assert_eq!(signal(bad).unwrap_err().problem, Problem::Signal, "{bad}");
        }
    }

    #[test]
    fn a_named_error_says_which_flag_or_key() {
        let e = size("lots").unwrap_err();
        assert_eq!(
            e.clone().named("--memory").to_string(),
            "invalid --memory \"lots\": expected a size such as \"16GB\", \"512MiB\" or a number of bytes"
        );
        assert!(e
            .named("gpu memory")
            .to_string()
            .starts_with("invalid gpu memory \"lots\": expected a size"));
    }

    #[test]
    fn networks() {
        assert_eq!(network("host"), Ok(NetworkMode::Host));
        assert_eq!(network("none"), Ok(NetworkMode::None));
        assert_eq!(network("bridge").unwrap_err().problem, Problem::Network);
    }

    #[test]
    fn security_opts() {
        use SecurityOpt::*;
        assert_eq!(security_opt("seccomp=unconfined"), Ok(Seccomp(SeccompMode::Unconfined)));
        assert_eq!(security_opt("seccomp:unconfined"), Ok(Seccomp(SeccompMode::Unconfined)));
        assert_eq!(
            security_opt("seccomp=/p.json"),
            Ok(Seccomp(SeccompMode::Profile(PathBuf::from("/p.json"))))
        );
        assert_eq!(security_opt("no-new-privileges"), Ok(NoNewPrivileges(true)));
        assert_eq!(security_opt("no-new-privileges=true"), Ok(NoNewPrivileges(true)));
        assert_eq!(security_opt("no-new-privileges:false"), Ok(NoNewPrivileges(false)));
        for bad in [
            "seccomp",
            "seccomp=",
            "no-new-privileges=maybe",
            "apparmor=unconfined",
            "",
        ] {
            assert_eq!(security_opt(bad).unwrap_err().problem, Problem::SecurityOpt, "{bad}");
        }
    }

    #[test]
    fn gpu_requests() {
        assert_eq!(gpus("all").unwrap().selector, Selector::All);
        assert_eq!(gpus("2").unwrap().selector, Selector::Count(2));
        assert_eq!(
            gpus("\"device=0,2\"").unwrap().selector,
            Selector::Ids(vec!["0".into(), "2".into()])
        );
        assert_eq!(
            gpus("device=GPU-1234").unwrap().selector,
            Selector::Ids(vec!["GPU-1234".into()])
        );
        assert_eq!(gpus("device=").unwrap_err().problem, Problem::GpuIds);
        let e = gpus("lots").unwrap_err();
        assert_eq!(e.problem, Problem::Gpus);
        assert!(e.named("--gpus").to_string().starts_with("invalid --gpus \"lots\""));
    }
}
