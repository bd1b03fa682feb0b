//! Settings that are each valid but not together (`--cpus` with `--cpu-quota`, `--memory-swap` without
//! `--memory`, `net.*` kernel parameters with the host network …), checked once a front end has built its plan.
//! Messages name a setting by its flag and its workflow key.

use super::parse::{self, SysctlNamespace};
use super::{RunPlan, Sharing};

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Conflict {
    #[error(
        "invalid container name {0:?} (--name; a detached workflow's name): use letters, digits, `_`, `.` and `-`, \
         starting with a letter or digit, as Docker does"
    )]
    Name(String),
    #[error(
        "--cpus (cpus, nano_cpus) and --cpu-period/--cpu-quota (cpu_period, cpu_quota) cannot both be set: use one"
    )]
    CpusAndQuota,
    #[error("--memory-swap (memswap_limit) needs --memory (mem_limit)")]
    SwapWithoutMemory,
    #[error("--memory-swap (memswap_limit) {swap} is below --memory (mem_limit) {memory}: it is memory plus swap")]
    SwapBelowMemory { swap: i64, memory: u64 },
    #[error("--memory-reservation (mem_reservation) must not be above --memory (mem_limit)")]
    ReservationAboveMemory,
    #[error("invalid --sysctl (sysctls) {name:?}: {problem}")]
    Sysctl { name: String, problem: parse::Problem },
    #[error("--{what} ({key}) needs the container's own UTS namespace, not --uts host (uts_mode: host)")]
    UtsHost { what: &'static str, key: &'static str },
}

/// Checks the combinations of `plan`'s settings.
pub fn check(plan: &RunPlan) -> Result<(), Conflict> {
    if let Some(name) = &plan.name {
        if !valid_name(name) {
            return Err(Conflict::Name(name.clone()));
        }
    }
    let t = &plan.tuning;
    if plan.cpus.is_some() && (t.cpu_period.is_some() || t.cpu_quota.is_some()) {
        return Err(Conflict::CpusAndQuota);
    }
    if let Some(swap) = t.memswap_limit {
        let Some(memory) = plan.memory else {
            return Err(Conflict::SwapWithoutMemory);
        };
        if swap != -1 && u64::try_from(swap).is_ok_and(|s| s < memory.0) {
            return Err(Conflict::SwapBelowMemory { swap, memory: memory.0 });
        }
    }
    if let (Some(r), Some(m)) = (t.mem_reservation, plan.memory) {
        if r > m {
            return Err(Conflict::ReservationAboveMemory);
        }
    }
    for (name, value) in &plan.sysctls {
        let fail = |problem| Conflict::Sysctl {
            name: name.clone(),
            problem,
        };
        let (_, _, ns) = parse::sysctl(name, value).map_err(|e| fail(e.problem))?;
        let ipc = match ns {
            SysctlNamespace::Ipc => Some(plan.ipc_mode()),
            SysctlNamespace::Network => plan.ipc,
        };
        parse::sysctl_allowed(name, ns, plan.network, ipc).map_err(|e| fail(e.problem))?;
    }
    if plan.uts == Some(Sharing::Host) {
        if plan.hostname.is_some() {
            return Err(Conflict::UtsHost {
                what: "hostname",
                key: "hostname",
            });
        }
        if plan.domainname.is_some() {
            return Err(Conflict::UtsHost {
                what: "domainname",
                key: "domainname",
            });
        }
    }
    Ok(())
}

/// Docker's rule for container names: `[a-zA-Z0-9][a-zA-Z0-9_.-]*`, at most 128 characters (so that a name
/// cannot hold a path, a space or a control character).
fn valid_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_alphanumeric())
        && name.len() <= 128
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

#[cfg(test)]
mod tests {
    #[test]
    fn container_names_follow_dockers_rule() {
        for ok in ["web", "a", "job-1.x_y", "0abc"] {
            assert!(super::valid_name(ok), "{ok}");
        }
        for bad in ["", "-x", ".x", "a b", "a/b", "../x", "x\n", &"a".repeat(129)] {
            assert!(!super::valid_name(bad), "{bad:?}");
        }
    }

    use super::*;
    use crate::plan::NetworkMode;
    use crate::units::ByteSize;

    #[test]
    fn conflicting_settings() {
        let mut p = RunPlan::new("x");
        assert_eq!(check(&p), Ok(()));
        p.cpus = Some(1.0);
        p.tuning.cpu_quota = Some(50_000);
        assert_eq!(check(&p), Err(Conflict::CpusAndQuota));
        p.cpus = None;
        p.tuning.memswap_limit = Some(1 << 20);
        assert_eq!(check(&p), Err(Conflict::SwapWithoutMemory));
        p.memory = Some(ByteSize(2 << 20));
        assert!(matches!(check(&p), Err(Conflict::SwapBelowMemory { .. })));
        p.tuning.memswap_limit = Some(-1);
        assert_eq!(check(&p), Ok(()));
        p.tuning.mem_reservation = Some(ByteSize(4 << 20));
        assert_eq!(check(&p), Err(Conflict::ReservationAboveMemory));
        p.tuning.mem_reservation = None;
        p.sysctls = vec![("net.ipv4.ip_forward".into(), "1".into())];
        let e = check(&p).unwrap_err().to_string();
        assert!(e.contains("net.* parameters would change the host's network"), "{e}");
        p.network = NetworkMode::None;
        assert_eq!(check(&p), Ok(()));
        p.uts = Some(Sharing::Host);
        p.hostname = Some("h".into());
        assert!(matches!(check(&p), Err(Conflict::UtsHost { what: "hostname", .. })));
    }
}
