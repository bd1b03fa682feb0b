//! Cgroup values beyond `--memory`/`--cpus`/`--pids-limit` (docker-py's `cpu_shares`, `cpuset_cpus`,
//! `mem_reservation`, `device_read_bps` …): ranges as Docker and the kernel take them. A block device is named by
//! its path here; [`crate::plan::host_paths`] finds its numbers.

use std::path::PathBuf;

use super::{size, ParseError, Problem};
use crate::plan::{DeviceAccess, DeviceKind, DeviceRule};

/// What a per-device block I/O value is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlkioKind {
    Weight,
    ReadBps,
    WriteBps,
    ReadIops,
    WriteIops,
}

/// A per-device block I/O value as written: the device's host path, not looked at yet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlkioRequest {
    pub kind: BlkioKind,
    pub path: PathBuf,
    pub value: u64,
}

/// A CPU or memory-node list as the kernel writes it: `0-3`, `0,2`, `0-3,8-11`.
pub fn cpuset(text: &str) -> Result<String, ParseError> {
    let fail = || ParseError::new(text, Problem::Cpuset);
    let number = |s: &str| -> Result<u32, ParseError> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(fail());
        }
        s.parse().map_err(|_| fail())
    };
    for part in text.split(',') {
        match part.split_once('-') {
            Some((a, b)) if number(a)? <= number(b)? => {}
            Some(_) => return Err(fail()),
            None => {
                number(part)?;
            }
        }
    }
    Ok(text.to_string())
}

/// A number in `range`, given as text (a flag) or as YAML's number.
fn ranged<T: std::str::FromStr + PartialOrd>(
    text: &str,
    range: std::ops::RangeInclusive<T>,
    problem: Problem,
) -> Result<T, ParseError> {
    match text.trim().parse::<T>() {
        Ok(n) if range.contains(&n) => Ok(n),
        _ => Err(ParseError::new(text, problem)),
    }
}

/// `cpu_shares`: a relative weight, 2 to 262144 (the kernel's range for `cpu.shares`).
pub fn cpu_shares(text: &str) -> Result<u64, ParseError> {
    ranged(text, 2..=262_144, Problem::CpuShares)
}

/// `cpu_period`: 1 ms to 1 s, in microseconds.
pub fn cpu_period(text: &str) -> Result<u64, ParseError> {
    ranged(text, 1_000..=1_000_000, Problem::CpuPeriod)
}

/// `cpu_quota`: at least 1 ms in microseconds, or -1 (no quota).
pub fn cpu_quota(text: &str) -> Result<i64, ParseError> {
    match text.trim().parse::<i64>() {
        Ok(n) if n == -1 || n >= 1_000 => Ok(n),
        _ => Err(ParseError::new(text, Problem::CpuQuota)),
    }
}

/// docker-py's `nano_cpus`: CPUs in units of 10⁻⁹, as a number of CPUs (`--cpus`).
pub fn nano_cpus(text: &str) -> Result<f64, ParseError> {
    match text.trim().parse::<u64>() {
        // Exact enough: a CPU count is turned into a quota of whole microseconds.
        #[allow(clippy::cast_precision_loss)]
        Ok(n) if n > 0 => Ok(n as f64 / 1e9),
        _ => Err(ParseError::new(text, Problem::NanoCpus)),
    }
}

/// `memswap_limit`: memory plus swap, a size, or -1 for unlimited swap.
pub fn memswap(text: &str) -> Result<i64, ParseError> {
    if text.trim() == "-1" {
        return Ok(-1);
    }
    let bytes = size(text).map_err(|_| ParseError::new(text, Problem::Memswap))?;
    i64::try_from(bytes.0).map_err(|_| ParseError::new(text, Problem::Memswap))
}

/// `mem_swappiness`: 0 to 100.
pub fn swappiness(text: &str) -> Result<u64, ParseError> {
    ranged(text, 0..=100, Problem::Swappiness)
}

/// `oom_score_adj`: -1000 to 1000.
pub fn oom_score_adj(text: &str) -> Result<i32, ParseError> {
    ranged(text, -1000..=1000, Problem::OomScoreAdj)
}

/// `blkio_weight`, and the weight of `blkio_weight_device`: 10 to 1000.
pub fn blkio_weight(text: &str) -> Result<u16, ParseError> {
    ranged(text, 10..=1000, Problem::BlkioWeight)
}

/// A per-device value's number: a weight (10–1000), a rate in bytes per second (a size: `1mb`) or in I/O
/// operations per second (a positive number).
pub fn blkio_value(kind: BlkioKind, text: &str) -> Result<u64, ParseError> {
    match kind {
        BlkioKind::Weight => blkio_weight(text).map(u64::from),
        BlkioKind::ReadBps | BlkioKind::WriteBps => match size(text) {
            Ok(s) if s.0 > 0 => Ok(s.0),
            _ => Err(ParseError::new(text, Problem::Rate)),
        },
        BlkioKind::ReadIops | BlkioKind::WriteIops => ranged(text, 1..=u64::MAX, Problem::Iops),
    }
}

/// docker-py's `{Path, Rate}` (or `{Path, Weight}`): the path must be absolute.
pub fn blkio_device(kind: BlkioKind, path: &str, value: &str) -> Result<BlkioRequest, ParseError> {
    if !path.starts_with('/') {
        return Err(ParseError::new(path, Problem::BlkioPath));
    }
    Ok(BlkioRequest {
        kind,
        path: PathBuf::from(path),
        value: blkio_value(kind, value)?,
    })
}

/// The flags' `PATH:VALUE` (`/dev/sda:1mb`).
pub fn blkio_text(kind: BlkioKind, text: &str) -> Result<BlkioRequest, ParseError> {
    let (path, value) = text
        .rsplit_once(':')
        .ok_or_else(|| ParseError::new(text, Problem::BlkioShape))?;
    blkio_device(kind, path, value).map_err(|e| ParseError::new(text, e.problem))
}

/// A device cgroup rule, `TYPE MAJOR:MINOR ACCESS`: TYPE `a`, `b` or `c`; `*` for any number (`c 1:3 rwm`,
/// `c 13:* rm`).
pub fn device_cgroup_rule(text: &str) -> Result<DeviceRule, ParseError> {
    let fail = || ParseError::new(text, Problem::DeviceRule);
    let words: Vec<&str> = text.split_whitespace().collect();
    let [kind, numbers, access] = words.as_slice() else {
        return Err(fail());
    };
    let kind = match *kind {
        "a" => None,
        "b" => Some(DeviceKind::Block),
        "c" => Some(DeviceKind::Char),
        _ => return Err(fail()),
    };
    let (major, minor) = numbers.split_once(':').ok_or_else(fail)?;
    let number = |s: &str| -> Result<Option<u64>, ParseError> {
        if s == "*" {
            Ok(None)
        } else {
            s.parse().map(Some).map_err(|_| fail())
        }
    };
    Ok(DeviceRule {
        kind,
        major: number(major)?,
        minor: number(minor)?,
        access: DeviceAccess::parse(access).ok_or_else(fail)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpusets() {
        for ok in ["0", "0-3", "0,2", "0-3,8-11", "1-1"] {
            assert_eq!(cpuset(ok).as_deref(), Ok(ok), "{ok}");
        }
        for bad in ["", "a", "3-1", "0,", "-1", "0-", " 0", "0-3,x"] {
            assert_eq!(cpuset(bad).unwrap_err().problem, Problem::Cpuset, "{bad:?}");
        }
    }

    #[test]
    fn cpu_values() {
        assert_eq!(cpu_shares("512"), Ok(512));
        assert_eq!(cpu_shares("1").unwrap_err().problem, Problem::CpuShares);
        assert_eq!(cpu_period("50000"), Ok(50_000));
        assert_eq!(cpu_period("999").unwrap_err().problem, Problem::CpuPeriod);
        assert_eq!(cpu_quota("25000"), Ok(25_000));
        assert_eq!(cpu_quota("-1"), Ok(-1));
        assert_eq!(cpu_quota("0").unwrap_err().problem, Problem::CpuQuota);
        assert_eq!(nano_cpus("1500000000"), Ok(1.5));
        assert_eq!(nano_cpus("0").unwrap_err().problem, Problem::NanoCpus);
    }

    #[test]
    fn memory_values() {
        assert_eq!(memswap("-1"), Ok(-1));
        assert_eq!(memswap("512m"), Ok(512 << 20));
        assert_eq!(memswap("lots").unwrap_err().problem, Problem::Memswap);
        assert_eq!(swappiness("0"), Ok(0));
        assert_eq!(swappiness("101").unwrap_err().problem, Problem::Swappiness);
        assert_eq!(oom_score_adj("-500"), Ok(-500));
        assert_eq!(oom_score_adj("1001").unwrap_err().problem, Problem::OomScoreAdj);
    }

    #[test]
    fn block_io_values() {
        assert_eq!(blkio_weight("300"), Ok(300));
        assert_eq!(blkio_weight("5").unwrap_err().problem, Problem::BlkioWeight);
        let r = blkio_text(BlkioKind::ReadBps, "/dev/vda:1mb").unwrap();
        assert_eq!((r.path, r.value), (PathBuf::from("/dev/vda"), 1 << 20));
        assert_eq!(blkio_text(BlkioKind::WriteIops, "/dev/vda:100").unwrap().value, 100);
        assert_eq!(
            blkio_text(BlkioKind::ReadIops, "/dev/vda:0").unwrap_err().problem,
            Problem::Iops
        );
        assert_eq!(
            blkio_text(BlkioKind::ReadBps, "/dev/vda").unwrap_err().problem,
            Problem::BlkioShape
        );
        assert_eq!(
            blkio_device(BlkioKind::Weight, "vda", "100").unwrap_err().problem,
            Problem::BlkioPath
        );
    }

    #[test]
    fn device_rules() {
        let r = device_cgroup_rule("c 1:3 rwm").unwrap();
        assert_eq!((r.kind, r.major, r.minor), (Some(DeviceKind::Char), Some(1), Some(3)));
        let r = device_cgroup_rule("a *:* r").unwrap();
        assert_eq!(
            (r.kind, r.major, r.minor, r.access.letters().as_str()),
            (None, None, None, "r")
        );
        for bad in ["c 1:3", "x 1:3 rwm", "c 1 rwm", "c 1:3 rwx", "c a:3 r"] {
            assert_eq!(
                device_cgroup_rule(bad).unwrap_err().problem,
                Problem::DeviceRule,
                "{bad}"
            );
        }
    }
}
