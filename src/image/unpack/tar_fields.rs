//! What a tar header says about an entry: numeric fields read as Docker (Go's archive/tar) reads them, converted
//! to the kernel's types with a range check, and what PAX records add (xattrs, precise mtimes). Never reads an
//! entry's data.

use std::io::{self, Read};

use nix::sys::time::TimeSpec;

/// A header field that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum HeaderFieldError {
    #[error("invalid numeric header field {value:?}: expected an octal number")]
    NotANumber { value: String },
    #[error("invalid {field} {value} in the header: expected at most {max}")]
    OutOfRange { field: &'static str, value: u64, max: u64 },
    #[error("cannot read a base-256 header field")]
    Base256(#[source] io::Error),
}

/// A numeric header field read as Go's archive/tar (Docker's reader) reads it: base-256 when the high bit is set
/// (left to the `tar` crate, `parsed`), else octal between spaces and NULs, and a blank field is 0. GNU tar and
/// Python's tarfile leave the fields an entry type does not use blank, which the crate refuses.
fn numeric(field: &[u8], parsed: impl FnOnce() -> io::Result<u64>) -> Result<u64, HeaderFieldError> {
    if field.first().is_some_and(|b| b & 0x80 != 0) {
        return parsed().map_err(HeaderFieldError::Base256);
    }
    let blank = |b: &u8| *b == b' ' || *b == 0;
    let start = field.iter().position(|b| !blank(b)).unwrap_or(field.len());
    let end = field.iter().rposition(|b| !blank(b)).map_or(start, |e| e + 1);
    let text = &field[start..end];
    if text.is_empty() {
        return Ok(0);
    }
    std::str::from_utf8(text)
        .ok()
        .and_then(|t| u64::from_str_radix(t, 8).ok())
        .ok_or_else(|| HeaderFieldError::NotANumber {
            value: String::from_utf8_lossy(text).into_owned(),
        })
}

/// `value` as the kernel's 32-bit type (an id, a device number), or an error naming the field.
fn fit_u32(field: &'static str, value: u64) -> Result<u32, HeaderFieldError> {
    u32::try_from(value).map_err(|_| HeaderFieldError::OutOfRange {
        field,
        value,
        max: u32::MAX.into(),
    })
}

/// Mode, owner and mtime of an entry's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct HeaderFields {
    /// Permission bits, setuid/setgid and sticky (`0o7777`); the file type is the entry type's.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Seconds since the epoch.
    pub mtime: i64,
}

/// Mode, owner and mtime of an entry's header (see [`numeric`]). The mode's bits beyond `0o7777` are ignored; an
/// owner beyond 32 bits or an mtime beyond `i64` cannot be represented and is an error.
pub(super) fn header_fields(h: &tar::Header) -> Result<HeaderFields, HeaderFieldError> {
    let old = h.as_old();
    let mode = numeric(&old.mode, || h.mode().map(u64::from))? & 0o7777;
    let uid = numeric(&old.uid, || h.uid())?;
    let gid = numeric(&old.gid, || h.gid())?;
    let mtime = numeric(&old.mtime, || h.mtime())?;
    Ok(HeaderFields {
        mode: u32::try_from(mode).expect("12 bits fit in u32"),
        uid: fit_u32("uid", uid)?,
        gid: fit_u32("gid", gid)?,
        mtime: i64::try_from(mtime).map_err(|_| HeaderFieldError::OutOfRange {
            field: "mtime",
            value: mtime,
            max: i64::MAX.unsigned_abs(),
        })?,
    })
}

/// The device numbers of a character or block device entry; 0 where the header format has none or leaves them
/// blank (see [`numeric`]).
pub(super) fn device_numbers(h: &tar::Header) -> Result<(u32, u32), HeaderFieldError> {
    let fields = match (h.as_ustar(), h.as_gnu()) {
        (Some(u), _) => Some((u.dev_major, u.dev_minor)),
        (None, Some(g)) => Some((g.dev_major, g.dev_minor)),
        (None, None) => None,
    };
    let Some((major, minor)) = fields else {
        return Ok((0, 0));
    };
    let major = numeric(&major, || h.device_major().map(|v| v.unwrap_or(0).into()))?;
    let minor = numeric(&minor, || h.device_minor().map(|v| v.unwrap_or(0).into()))?;
    Ok((
        fit_u32("device major number", major)?,
        fit_u32("device minor number", minor)?,
    ))
}

/// What PAX records add to an entry: xattrs from `SCHILY.xattr.*` and a precise `mtime`. overlayfs' own
/// attributes are dropped: an image must not be able to plant redirects or metacopy markers that the kernel
/// would interpret.
#[derive(Default)]
pub(super) struct PaxExtras {
    pub xattrs: Vec<(String, Vec<u8>)>,
    pub mtime: Option<TimeSpec>,
}

pub(super) fn pax_extras<R: Read>(entry: &mut tar::Entry<'_, R>) -> io::Result<PaxExtras> {
    let mut out = PaxExtras::default();
    if let Some(exts) = entry.pax_extensions()? {
        for ext in exts {
            let ext = ext?;
            let Ok(key) = ext.key() else { continue };
            if let Some(name) = key.strip_prefix("SCHILY.xattr.") {
                // overlayfs' own attributes (trusted.* as root, user.* with `userxattr` rootless) would change
                // what the overlay shows; images do not get to set them.
                if !name.starts_with("trusted.overlay.") && !name.starts_with("user.overlay.") {
                    out.xattrs.push((name.to_string(), ext.value_bytes().to_vec()));
                }
            } else if key == "mtime" {
                out.mtime = ext.value().ok().and_then(parse_pax_time);
            }
        }
    }
    Ok(out)
}

/// PAX times are decimal seconds with an optional fraction ("1700000000.123456789").
fn parse_pax_time(v: &str) -> Option<TimeSpec> {
    let (sec, frac) = v.split_once('.').unwrap_or((v, ""));
    let sec: i64 = sec.parse().ok()?;
    let digits: String = frac.chars().take(9).collect();
    let nsec: i64 = if digits.is_empty() {
        0
    } else {
        format!("{digits:0<9}").parse().ok()?
    };
    // A negative time with a fraction counts down from the whole second.
    Some(if sec < 0 && nsec > 0 {
        TimeSpec::new(sec - 1, 1_000_000_000 - nsec)
    } else {
        TimeSpec::new(sec, nsec)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_fields_read_as_go_reads_them() {
        let never = || -> io::Result<u64> { panic!("not base-256") };
        assert_eq!(numeric(b"\0\0\0\0\0\0\0\0", never).unwrap(), 0);
        assert_eq!(numeric(b"        ", never).unwrap(), 0);
        assert_eq!(numeric(b"0000755\0", never).unwrap(), 0o755);
        assert_eq!(numeric(b" 755 \0\0\0", never).unwrap(), 0o755);
        assert!(numeric(b"12x\0", never).is_err());
        assert_eq!(numeric(&[0x80, 0, 0, 1], || Ok(7)).unwrap(), 7);
        // A FIFO as GNU tar and Python's tarfile write it: device fields blank.
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Fifo);
        h.as_gnu_mut().unwrap().dev_major = [0; 8];
        h.as_gnu_mut().unwrap().dev_minor = [0; 8];
        assert!(h.device_major().is_err(), "the crate refuses blank fields");
        assert_eq!(device_numbers(&h).unwrap(), (0, 0));
        h.set_device_major(4).unwrap();
        h.set_device_minor(64).unwrap();
        assert_eq!(device_numbers(&h).unwrap(), (4, 64));
    }

    #[test]
    fn header_numbers_out_of_range_are_errors() {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o104755);
        h.set_uid(1 << 32);
        assert!(matches!(
            header_fields(&h),
            Err(HeaderFieldError::OutOfRange { field: "uid", .. })
        ));
        h.set_uid(1000);
        h.set_gid(100);
        h.set_mtime(1_700_000_000);
        assert_eq!(
            header_fields(&h).unwrap(),
            HeaderFields {
                mode: 0o4755,
                uid: 1000,
                gid: 100,
                mtime: 1_700_000_000
            }
        );
        h.set_mtime(u64::MAX);
        assert!(matches!(
            header_fields(&h),
            Err(HeaderFieldError::OutOfRange { field: "mtime", .. })
        ));
    }

    #[test]
    fn pax_times() {
        assert_eq!(
            parse_pax_time("1700000000.5"),
            Some(TimeSpec::new(1_700_000_000, 500_000_000))
        );
        assert_eq!(parse_pax_time("12"), Some(TimeSpec::new(12, 0)));
        assert_eq!(parse_pax_time("-1.25"), Some(TimeSpec::new(-2, 750_000_000)));
        assert_eq!(parse_pax_time("x"), None);
    }
}
