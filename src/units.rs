//! Human-readable sizes, parsed the way Docker and dstack write them and printed the way `docker images` does.

use std::fmt;
use std::str::FromStr;

/// A size in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Default, serde::Serialize, serde::Deserialize)]
pub struct ByteSize(pub u64);

#[derive(Debug, thiserror::Error)]
#[error("invalid size {0:?}: expected a number with an optional unit (b, k, m, g, t; KB/KiB/MB/MiB/GB/GiB …)")]
pub struct ByteSizeError(String);

impl FromStr for ByteSize {
    type Err = ByteSizeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ByteSizeError(s.to_string());
        let t = s.trim();
        let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let num: f64 = num.parse().map_err(|_| err())?;
        // Docker treats k/m/g as binary multiples; dstack writes "16GB" meaning the same, so both map to 1024^n.
        let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kb" | "kib" => 1 << 10,
            "m" | "mb" | "mib" => 1 << 20,
            "g" | "gb" | "gib" => 1 << 30,
            "t" | "tb" | "tib" => 1 << 40,
            _ => return Err(err()),
        };
        if !num.is_finite() || num < 0.0 {
            return Err(err());
        }
        // `as` saturates: `num` is finite and not negative, and a size beyond u64 becomes u64::MAX.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let bytes = (num * mult as f64).round() as u64;
        Ok(ByteSize(bytes))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
        let mut v = self.0 as f64;
        let mut i = 0;
        while v >= 1024.0 && i + 1 < UNITS.len() {
            v /= 1024.0;
            i += 1;
        }
        if i == 0 {
            write!(f, "{} B", self.0)
        } else {
            write!(f, "{v:.1} {}", UNITS[i])
        }
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // fixtures in the tests' own temporary directories
mod tests {
    use super::*;

    #[test]
    fn parses_docker_and_dstack_forms() {
        assert_eq!("256m".parse::<ByteSize>().unwrap().0, 256 << 20);
        assert_eq!("16GB".parse::<ByteSize>().unwrap().0, 16 << 30);
        assert_eq!("512MiB".parse::<ByteSize>().unwrap().0, 512 << 20);
        assert_eq!("1.5g".parse::<ByteSize>().unwrap().0, 3 << 29);
        assert_eq!("100".parse::<ByteSize>().unwrap().0, 100);
        assert!("12parsecs".parse::<ByteSize>().is_err());
        assert!("".parse::<ByteSize>().is_err());
    }

    #[test]
    fn displays() {
        assert_eq!(ByteSize(10).to_string(), "10 B");
        assert_eq!(ByteSize(3 << 20).to_string(), "3.0 MiB");
    }
}
