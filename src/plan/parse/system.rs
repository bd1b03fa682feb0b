//! What the container sees of the system: name resolution (`--dns`, `--dns-search`, `--dns-option`,
//! `--add-host`), names (`--domainname`), kernel parameters (`--sysctl`), namespace modes (`--ipc`, `--pid`,
//! `--uts` as a workflow writes them), the stop signal and the restart policy.

use std::net::IpAddr;

use nix::sys::signal::Signal;

use super::{ParseError, Problem};
use crate::plan::{NetworkMode, RestartPolicy, Sharing};

/// A name server: an IPv4 or IPv6 address.
pub fn dns_server(text: &str) -> Result<IpAddr, ParseError> {
    text.trim()
        .parse()
        .map_err(|_| ParseError::new(text, Problem::DnsServer))
}

/// A host or domain name: labels of letters, digits, `-` and `_`, separated by dots, at most 253 characters (a
/// trailing dot is allowed: `example.com.`).
fn is_domain(name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// A DNS search domain (`.` alone, as Docker allows, means none).
pub fn dns_search(text: &str) -> Result<String, ParseError> {
    if text == "." || is_domain(text) {
        Ok(text.to_string())
    } else {
        Err(ParseError::new(text, Problem::DomainName))
    }
}

/// A resolv.conf option (`ndots:2`, `edns0`): one word.
pub fn dns_option(text: &str) -> Result<String, ParseError> {
    if text.is_empty() || text.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(ParseError::new(text, Problem::DnsOption));
    }
    Ok(text.to_string())
}

/// `--domainname`: a domain name.
pub fn domainname(text: &str) -> Result<String, ParseError> {
    if is_domain(text) {
        Ok(text.to_string())
    } else {
        Err(ParseError::new(text, Problem::DomainName))
    }
}

/// An `/etc/hosts` entry, `HOST:IP` (or `HOST=IP`, Docker's newer spelling; an IPv6 address may hold `:`).
pub fn extra_host(text: &str) -> Result<(String, IpAddr), ParseError> {
    let (name, ip) = text
        .split_once('=')
        .or_else(|| text.split_once(':'))
        .ok_or_else(|| ParseError::new(text, Problem::ExtraHost))?;
    extra_host_pair(name, ip).map_err(|e| ParseError::new(text, e.problem))
}

/// docker-py's `extra_hosts` map entry: host name to address.
pub fn extra_host_pair(name: &str, ip: &str) -> Result<(String, IpAddr), ParseError> {
    if ip == "host-gateway" {
        return Err(ParseError::new(ip, Problem::HostGateway));
    }
    let ip = ip.trim_start_matches('[').trim_end_matches(']');
    match (is_domain(name), ip.parse::<IpAddr>()) {
        (true, Ok(addr)) => Ok((name.to_string(), addr)),
        _ => Err(ParseError::new(&format!("{name}:{ip}"), Problem::ExtraHost)),
    }
}

/// The namespace a kernel parameter belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SysctlNamespace {
    Ipc,
    Network,
}

/// Kernel parameters of the IPC namespace (Docker's list); `fs.mqueue.*` too.
const IPC_SYSCTLS: &[&str] = &[
    "kernel.msgmax",
    "kernel.msgmnb",
    "kernel.msgmni",
    "kernel.sem",
    "kernel.shmall",
    "kernel.shmmax",
    "kernel.shmmni",
    "kernel.shm_rmid_forced",
];

/// A kernel parameter (`NAME=VALUE`, or a name and a value from a map), namespaced ones only, as Docker allows:
/// the IPC namespace's (`kernel.shmmax`, `fs.mqueue.*` …) and the network namespace's (`net.*`). Anything else
/// would change the host for everyone.
pub fn sysctl(name: &str, value: &str) -> Result<(String, String, SysctlNamespace), ParseError> {
    let whole = format!("{name}={value}");
    let name = name.trim().replace('/', ".");
    let ns = if IPC_SYSCTLS.contains(&name.as_str()) || name.starts_with("fs.mqueue.") {
        SysctlNamespace::Ipc
    } else if name.starts_with("net.") {
        SysctlNamespace::Network
    } else {
        return Err(ParseError::new(&whole, Problem::SysctlNotNamespaced(name)));
    };
    if value.contains(['\n', '\0']) {
        return Err(ParseError::new(&whole, Problem::SysctlValue));
    }
    Ok((name, value.to_string(), ns))
}

/// `--sysctl NAME=VALUE`.
pub fn sysctl_text(text: &str) -> Result<(String, String, SysctlNamespace), ParseError> {
    let (name, value) = text
        .split_once('=')
        .ok_or_else(|| ParseError::new(text, Problem::SysctlShape))?;
    sysctl(name, value)
}

/// A parameter's namespace must be the container's own: `net.*` needs `--network none`, IPC ones a private IPC
/// namespace (`--ipc host` shares the host's).
pub fn sysctl_allowed(
    name: &str,
    ns: SysctlNamespace,
    network: NetworkMode,
    ipc: Option<Sharing>,
) -> Result<(), ParseError> {
    match ns {
        SysctlNamespace::Network if network == NetworkMode::Host => {
            Err(ParseError::new(name, Problem::SysctlHostNetwork))
        }
        SysctlNamespace::Ipc if ipc == Some(Sharing::Host) => Err(ParseError::new(name, Problem::SysctlHostIpc)),
        _ => Ok(()),
    }
}

/// A signal by name (`SIGINT`, `INT`, any case) or number (`2`).
pub fn signal(text: &str) -> Result<Signal, ParseError> {
    let fail = || ParseError::new(text, Problem::Signal);
    let t = text.trim();
    if let Ok(n) = t.parse::<i32>() {
        return Signal::try_from(n).map_err(|_| fail());
    }
    let upper = t.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    name.parse().map_err(|_| fail())
}

/// `--restart`: `no`, or `on-failure:N` (at most N more runs). `always` and `unless-stopped` keep a container
/// running across exits and reboots: a daemon's job, refused with the reason.
pub fn restart(text: &str) -> Result<RestartPolicy, ParseError> {
    let (name, count) = match text.split_once(':') {
        Some((n, c)) => (n, Some(c)),
        None => (text, None),
    };
    restart_policy(name, count).map_err(|e| ParseError::new(text, e.problem))
}

/// docker-py's `{Name, MaximumRetryCount}`.
pub fn restart_policy(name: &str, count: Option<&str>) -> Result<RestartPolicy, ParseError> {
    match (name, count) {
        ("" | "no", None | Some("0")) => Ok(RestartPolicy::No),
        ("on-failure", Some(c)) => match c.trim().parse::<u32>() {
            Ok(n) => Ok(RestartPolicy::OnFailure(n)),
            Err(_) => Err(ParseError::new(c, Problem::RestartCount)),
        },
        ("on-failure", None) => Err(ParseError::new(name, Problem::RestartCount)),
        ("always" | "unless-stopped", _) => Err(ParseError::new(name, Problem::RestartDaemon)),
        _ => Err(ParseError::new(name, Problem::Restart)),
    }
}

/// A namespace mode as docker-py writes `ipc_mode`, `pid_mode` and `uts_mode`: `host`, or `private`/empty.
/// Another container's namespace (`container:NAME`) has no meaning without a daemon that runs both.
pub fn sharing(text: &str) -> Result<Sharing, ParseError> {
    match text {
        "host" => Ok(Sharing::Host),
        "" | "private" => Ok(Sharing::Private),
        _ if text.starts_with("container:") => Err(ParseError::new(text, Problem::SharingContainer)),
        _ => Err(ParseError::new(text, Problem::Sharing)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_resolution() {
        assert_eq!(dns_server("10.0.0.2"), Ok("10.0.0.2".parse().unwrap()));
        assert_eq!(dns_server("::1"), Ok("::1".parse().unwrap()));
        assert_eq!(dns_server("dns.example").unwrap_err().problem, Problem::DnsServer);
        assert_eq!(dns_search("corp.example"), Ok("corp.example".into()));
        assert_eq!(dns_search("bad domain").unwrap_err().problem, Problem::DomainName);
        assert_eq!(dns_option("ndots:2"), Ok("ndots:2".into()));
        assert_eq!(dns_option("a b").unwrap_err().problem, Problem::DnsOption);
        assert_eq!(
            extra_host("db:10.1.2.3"),
            Ok(("db".into(), "10.1.2.3".parse().unwrap()))
        );
        assert_eq!(extra_host("db=::1"), Ok(("db".into(), "::1".parse().unwrap())));
        assert_eq!(extra_host("db:fe80::1"), Ok(("db".into(), "fe80::1".parse().unwrap())));
        assert_eq!(extra_host("db").unwrap_err().problem, Problem::ExtraHost);
        assert_eq!(extra_host("db:nowhere").unwrap_err().problem, Problem::ExtraHost);
        assert_eq!(extra_host("db:host-gateway").unwrap_err().problem, Problem::HostGateway);
        assert_eq!(domainname("example.org"), Ok("example.org".into()));
        assert_eq!(domainname("-x").unwrap_err().problem, Problem::DomainName);
    }

    #[test]
    fn sysctls() {
        let (n, v, ns) = sysctl_text("kernel.shmmax=1000000").unwrap();
        assert_eq!(
            (n.as_str(), v.as_str(), ns),
            ("kernel.shmmax", "1000000", SysctlNamespace::Ipc)
        );
        assert_eq!(sysctl("fs/mqueue/msg_max", "20").unwrap().2, SysctlNamespace::Ipc);
        assert_eq!(sysctl("net.ipv4.ip_forward", "1").unwrap().2, SysctlNamespace::Network);
        assert_eq!(
            sysctl("kernel.panic", "1").unwrap_err().problem,
            Problem::SysctlNotNamespaced("kernel.panic".into())
        );
        assert_eq!(sysctl_text("net.x").unwrap_err().problem, Problem::SysctlShape);
        let host = sysctl_allowed("net.ipv4.ip_forward", SysctlNamespace::Network, NetworkMode::Host, None);
        assert_eq!(host.unwrap_err().problem, Problem::SysctlHostNetwork);
        assert!(sysctl_allowed("net.ipv4.ip_forward", SysctlNamespace::Network, NetworkMode::None, None).is_ok());
        let ipc = sysctl_allowed(
            "kernel.sem",
            SysctlNamespace::Ipc,
            NetworkMode::Host,
            Some(Sharing::Host),
        );
        assert_eq!(ipc.unwrap_err().problem, Problem::SysctlHostIpc);
    }

    #[test]
    fn signals() {
        assert_eq!(signal("SIGUSR1"), Ok(Signal::SIGUSR1));
        assert_eq!(signal("usr1"), Ok(Signal::SIGUSR1));
        assert_eq!(signal("2"), Ok(Signal::SIGINT));
        assert_eq!(signal("SIGNOPE").unwrap_err().problem, Problem::Signal);
        assert_eq!(signal("99").unwrap_err().problem, Problem::Signal);
    }

    #[test]
    fn restart_policies() {
        assert_eq!(restart("no"), Ok(RestartPolicy::No));
        assert_eq!(restart("on-failure:3"), Ok(RestartPolicy::OnFailure(3)));
        assert_eq!(restart_policy("on-failure", Some("2")), Ok(RestartPolicy::OnFailure(2)));
        assert_eq!(restart("on-failure").unwrap_err().problem, Problem::RestartCount);
        assert_eq!(restart("always").unwrap_err().problem, Problem::RestartDaemon);
        assert_eq!(restart("unless-stopped").unwrap_err().problem, Problem::RestartDaemon);
        assert_eq!(restart("sometimes").unwrap_err().problem, Problem::Restart);
    }

    #[test]
    fn namespace_modes() {
        assert_eq!(sharing("host"), Ok(Sharing::Host));
        assert_eq!(sharing(""), Ok(Sharing::Private));
        assert_eq!(sharing("container:db").unwrap_err().problem, Problem::SharingContainer);
        assert_eq!(sharing("shared").unwrap_err().problem, Problem::Sharing);
    }
}
