//! The subordinate id ranges an administrator gave a user in `/etc/subuid` and `/etc/subgid`. Reads only; a
//! missing or unreadable file means no ranges.

use std::path::Path;

/// Ranges `(start, count)` for `user`/`uid` in a subid file (`name:start:count` or `uid:start:count` lines).
pub fn subordinate_ranges(file: &Path, user: Option<&str>, uid: u32) -> Vec<(u32, u32)> {
    let Ok(text) = crate::sys::safe_fs::read_system(file) else {
        return Vec::new();
    };
    let uid_text = uid.to_string();
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let mut fields = l.split(':');
            let (owner, start, count) = (fields.next()?, fields.next()?, fields.next()?);
            if Some(owner) != user && owner != uid_text {
                return None;
            }
            Some((start.trim().parse().ok()?, count.trim().parse().ok()?))
        })
        .filter(|&(_, count)| count > 0)
        .collect()
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // fixtures in the tests' own temporary directories
mod tests {
    use super::*;

    #[test]
    fn subid_file_by_name_or_uid() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("subuid");
        std::fs::write(&f, "# c\nalice:100000:65536\n1001:200000:10\nbob:300000:0\n").unwrap();
        assert_eq!(subordinate_ranges(&f, Some("alice"), 1000), vec![(100000, 65536)]);
        assert_eq!(subordinate_ranges(&f, Some("carol"), 1001), vec![(200000, 10)]);
        assert!(subordinate_ranges(&f, Some("bob"), 1002).is_empty());
        assert!(subordinate_ranges(&dir.path().join("missing"), Some("alice"), 1000).is_empty());
    }
}
