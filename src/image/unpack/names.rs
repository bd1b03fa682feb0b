//! Layer entry names, checked before anything is written: split into components, `..` refused, a leading `/`
//! read as the layer root, no name longer than [`MAX_NAME`], no component longer than [`NAME_MAX`] and no NUL
//! byte (which the kernel cannot take, and which a C reader such as `tar2sqfs` would cut the name at: the name
//! it wrote would not be the one drun checked).

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

use super::{UnpackError, MAX_NAME};

/// An entry name, split into safe components. Leading "./" and repeated slashes are normal in layer tarballs; a
/// leading "/" is read as the layer root, as Docker and Podman do (umoci writes an entry named "/", older tools
/// wrote "/etc/passwd"): the name is relative to the layer whatever it starts with, and ".." is refused, so it
/// never leads outside.
pub(super) fn components(raw: &[u8]) -> Result<Vec<&OsStr>, UnpackError> {
    let shown = || String::from_utf8_lossy(raw).into_owned();
    if raw.len() > MAX_NAME {
        return Err(UnpackError::NameTooLong {
            path: String::from_utf8_lossy(&raw[..64]).into_owned() + "…",
            what: "name",
            limit: MAX_NAME,
        });
    }
    if raw.contains(&0) {
        return Err(UnpackError::NulInName { path: shown() });
    }
    let mut out = Vec::new();
    for c in raw.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err(UnpackError::DotDot { path: shown() }),
            c if c.len() > NAME_MAX => {
                return Err(UnpackError::NameTooLong {
                    path: shown(),
                    what: "file name",
                    limit: NAME_MAX,
                })
            }
            c => out.push(OsStr::from_bytes(c)),
        }
    }
    Ok(out)
}

/// The longest file name (one component): Linux's `NAME_MAX`, and squashfs's.
pub(super) const NAME_MAX: usize = 255;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_names_are_checked() {
        assert_eq!(
            components(b"./usr//bin/").unwrap(),
            vec![OsStr::new("usr"), OsStr::new("bin")]
        );
        // A leading "/" is the layer root, never the host's.
        assert_eq!(
            components(b"/etc//passwd").unwrap(),
            vec![OsStr::new("etc"), OsStr::new("passwd")]
        );
        assert!(components(b"/").unwrap().is_empty());
        assert!(matches!(components(b"/../etc"), Err(UnpackError::DotDot { .. })));
        assert!(matches!(
            components(&[b'a'; MAX_NAME + 1]),
            Err(UnpackError::NameTooLong { .. })
        ));
        assert!(matches!(components(b"a/../../etc"), Err(UnpackError::DotDot { .. })));
        assert!(matches!(components(b".."), Err(UnpackError::DotDot { .. })));
        assert!(components(b"./").unwrap().is_empty());
        assert!(matches!(
            components(b"etc/secret\0x"),
            Err(UnpackError::NulInName { .. })
        ));
        assert!(matches!(
            components(format!("d/{}", "n".repeat(256)).as_bytes()),
            Err(UnpackError::NameTooLong { .. })
        ));
        assert_eq!(components("n".repeat(255).as_bytes()).unwrap().len(), 1);
    }
}
