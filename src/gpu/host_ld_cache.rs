//! Reads the host's glibc `/etc/ld.so.cache` (the "glibc-ld.so.cache1.1" format, optionally after the old
//! "ld.so-1.7.0" table) to find where the host keeps the driver's libraries, for discovery. Parsed by hand: no
//! maintained crate reads this format, and it is a fixed layout of a header and 24-byte entries. Reads only; the
//! container's cache is refreshed by [`super::container_ldconfig`].

use std::path::{Path, PathBuf};

const OLD_MAGIC: &[u8] = b"ld.so-1.7.0";
const NEW_MAGIC: &[u8] = b"glibc-ld.so.cache1.1";
const NEW_HEADER: usize = 48;
const NEW_ENTRY: usize = 24;
/// x86-64 / aarch64 ELF entries (`flags & 0xff00`), with the ELF bit.
const FLAG_ELF: u32 = 1;

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    b.get(at..at + 4)
        .map(|s| u32::from_le_bytes(s.try_into().expect("4 bytes")))
}

fn cstr_at(b: &[u8], at: usize) -> Option<&str> {
    let s = b.get(at..)?;
    let end = s.iter().position(|c| *c == 0)?;
    std::str::from_utf8(&s[..end]).ok()
}

fn native_arch_flag() -> Option<u32> {
    match std::env::consts::ARCH {
        "x86_64" => Some(0x0300),
        "aarch64" => Some(0x0a00),
        _ => None,
    }
}

/// `(library name, path)` of every ELF entry for this host's architecture.
pub fn parse(bytes: &[u8]) -> Vec<(String, PathBuf)> {
    let mut start = 0usize;
    if bytes.starts_with(OLD_MAGIC) {
        // Old header: magic (11) + nlibs (u32), entries of 12 bytes; the new table follows, 8-byte aligned.
        let Some(n) = u32_at(bytes, 12).and_then(|n| usize::try_from(n).ok()) else {
            return vec![];
        };
        let Some(end) = n.checked_mul(12).and_then(|t| t.checked_add(16 + 7)) else {
            return vec![];
        };
        start = end & !7;
    }
    let b = match bytes.get(start..) {
        Some(b) if b.starts_with(NEW_MAGIC) => b,
        _ => return vec![],
    };
    let Some(nlibs) = u32_at(b, 20).and_then(|n| usize::try_from(n).ok()) else {
        return vec![];
    };
    let arch = native_arch_flag();
    let mut out = Vec::new();
    for i in 0..nlibs {
        let Some(e) = i.checked_mul(NEW_ENTRY).and_then(|o| o.checked_add(NEW_HEADER)) else {
            break;
        };
        let (Some(flags), Some(key), Some(value)) = (u32_at(b, e), u32_at(b, e + 4), u32_at(b, e + 8)) else {
            break;
        };
        if flags & FLAG_ELF == 0 || arch.is_some_and(|a| flags & 0xff00 != a) {
            continue;
        }
        // String offsets are relative to the start of the new table.
        let (Ok(key), Ok(value)) = (usize::try_from(key), usize::try_from(value)) else {
            continue;
        };
        if let (Some(k), Some(v)) = (cstr_at(b, key), cstr_at(b, value)) {
            out.push((k.to_string(), PathBuf::from(v)));
        }
    }
    out
}

/// The most of an ld cache drun reads: a host with every library of a distribution has one of a few MiB.
const CACHE_CAP: u64 = 64 << 20;

/// Entries of `root/etc/ld.so.cache` (paths as the host sees them below `root`, i.e. without the prefix). Only a
/// regular file is read (opened without waiting, should it be a FIFO), and at most [`CACHE_CAP`] bytes of it.
pub fn read(root: &Path) -> Vec<(String, PathBuf)> {
    let path = root.join("etc/ld.so.cache");
    crate::sys::safe_fs::open_regular(&path, true)
        .and_then(|f| crate::sys::safe_fs::read_file_bounded(f, CACHE_CAP, &path))
        .map_or_else(|_| vec![], |bytes| parse(&bytes))
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // fixtures in the tests' own temporary directories
mod tests {
    use super::*;

    #[test]
    fn reads_the_hosts_cache() {
        // Every glibc host has one, listing libc itself.
        let entries = read(Path::new("/"));
        assert!(
            entries.iter().any(|(k, p)| k == "libc.so.6" && p.is_absolute()),
            "{entries:?}"
        );
    }

    #[test]
    fn rejects_garbage() {
        assert!(parse(b"not a cache").is_empty());
        assert!(parse(b"glibc-ld.so.cache1.1\xff\xff\xff\xff").is_empty());
    }
}
