//! Resource values: sizes (`--memory`, `--shm-size`, a workflow's `memory`, `shm_size`, `gpu.memory`), CPUs and
//! ulimits (`NAME=SOFT[:HARD]` and docker-py's `{name, soft, hard}`).

use super::{ParseError, Problem};
use crate::plan::Ulimit;
use crate::units::ByteSize;

/// A size as Docker and dstack write them: `256m`, `16GB`, `512MiB`, a number of bytes.
pub fn size(text: &str) -> Result<ByteSize, ParseError> {
    text.parse().map_err(|_| ParseError::new(text, Problem::Size))
}

/// A positive, finite number of CPUs (`1.5`).
pub fn cpus(text: &str) -> Result<f64, ParseError> {
    match text.parse::<f64>() {
        Ok(n) if n > 0.0 && n.is_finite() => Ok(n),
        _ => Err(ParseError::new(text, Problem::Cpus)),
    }
}

/// `NAME=SOFT[:HARD]`; `-1` or `unlimited` is no limit; without HARD, both limits are SOFT.
pub fn ulimit(text: &str) -> Result<Ulimit, ParseError> {
    let fail = |problem| ParseError::new(text, problem);
    let (name, values) = text.split_once('=').ok_or_else(|| fail(Problem::UlimitShape))?;
    let number = |s: &str| -> Result<u64, ParseError> {
        if s == "-1" || s == "unlimited" {
            Ok(u64::MAX)
        } else {
            s.parse().map_err(|_| fail(Problem::UlimitNumber(s.into())))
        }
    };
    let (soft, hard) = match values.split_once(':') {
        Some((soft, hard)) => (number(soft)?, number(hard)?),
        None => (number(values)?, number(values)?),
    };
    ordered(text, name, soft, hard)
}

/// docker-py's `{name, soft, hard}`: a negative number is no limit; without `hard`, both limits are `soft`.
pub fn ulimit_values(name: &str, soft: i64, hard: Option<i64>) -> Result<Ulimit, ParseError> {
    let limit = |v: i64| u64::try_from(v).unwrap_or(u64::MAX);
    ordered(name, name, limit(soft), limit(hard.unwrap_or(soft)))
}

fn ordered(whole: &str, name: &str, soft: u64, hard: u64) -> Result<Ulimit, ParseError> {
    if soft > hard {
        return Err(ParseError::new(whole, Problem::UlimitOrder));
    }
    Ok(Ulimit {
        name: name.to_string(),
        soft,
        hard,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(name: &str, soft: u64, hard: u64) -> Ulimit {
        Ulimit {
            name: name.into(),
            soft,
            hard,
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(size("256m"), Ok(ByteSize(256 << 20)));
        assert_eq!(size("16GB"), Ok(ByteSize(16 << 30)));
        assert_eq!(size("100"), Ok(ByteSize(100)));
        assert_eq!(size("16XB").unwrap_err().problem, Problem::Size);
        assert_eq!(size("").unwrap_err().problem, Problem::Size);
    }

    #[test]
    fn cpu_counts() {
        assert_eq!(cpus("2"), Ok(2.0));
        assert_eq!(cpus("0.5"), Ok(0.5));
        for bad in ["0", "-1", "lots", "inf", "NaN", ""] {
            assert_eq!(cpus(bad).unwrap_err().problem, Problem::Cpus, "{bad}");
        }
    }

    #[test]
    fn ulimits_as_text() {
        assert_eq!(ulimit("nofile=1024:2048"), Ok(limit("nofile", 1024, 2048)));
        assert_eq!(ulimit("nofile=256"), Ok(limit("nofile", 256, 256)));
        assert_eq!(ulimit("core=-1"), Ok(limit("core", u64::MAX, u64::MAX)));
        assert_eq!(ulimit("core=0:unlimited"), Ok(limit("core", 0, u64::MAX)));
        assert_eq!(ulimit("nofile").unwrap_err().problem, Problem::UlimitShape);
        assert_eq!(
            ulimit("nofile=x").unwrap_err().problem,
            Problem::UlimitNumber("x".into())
        );
        assert_eq!(ulimit("nofile=2:1").unwrap_err().problem, Problem::UlimitOrder);
    }

    #[test]
    fn ulimits_as_a_map() {
        assert_eq!(ulimit_values("nofile", 512, Some(1024)), Ok(limit("nofile", 512, 1024)));
        assert_eq!(ulimit_values("nofile", 512, None), Ok(limit("nofile", 512, 512)));
        assert_eq!(ulimit_values("core", -1, None), Ok(limit("core", u64::MAX, u64::MAX)));
        let e = ulimit_values("nofile", 2, Some(1)).unwrap_err();
        assert_eq!(e.problem, Problem::UlimitOrder);
        assert_eq!(e.value, "nofile");
    }
}
