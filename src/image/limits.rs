//! How much drun reads into memory from a registry or a local image source, and bounded readers that keep to it.
//!
//! A registry, an image tarball and a shared directory are all untrusted: a size they declare (a descriptor's
//! `size`, a `Content-Length`, a tar header) is checked against the cap before anything is allocated, and a body
//! that declares nothing is read only up to the cap. The caps follow other runtimes: containerd and
//! containers/image (Podman, CRI-O, skopeo) read manifests under 4 MiB, configs under a few MiB and token
//! answers under 1 MiB.
//!
//! Files are opened with [`safe_fs::open_regular`]: without blocking (a FIFO planted where a file is expected
//! would otherwise hang the open and every read), and read only when `fstat` says they are regular files.

use std::io::{self, Read};
use std::path::Path;

use crate::sys::safe_fs;
use crate::units::ByteSize;

/// Manifests and image indexes (also an OCI layout's `index.json` and a docker archive's `manifest.json`):
/// containerd's and containers/image's limit.
pub const MAX_MANIFEST: u64 = 4 << 20;
/// Image configs: twice containers/image's 4 MiB, for images with a long history.
pub const MAX_CONFIG: u64 = 8 << 20;
/// The body of an error answer: only its first lines are ever shown.
pub const MAX_ERROR_BODY: u64 = 64 << 10;
/// A token service's answer (containers/image's limit).
pub const MAX_TOKEN: u64 = 1 << 20;
/// A credentials file or a credential helper's answer.
pub const MAX_CREDENTIALS: u64 = 1 << 20;
/// A CA certificate bundle named in `ca_files` (the system's whole bundle is about 200 KiB).
pub const MAX_CA_FILE: u64 = 16 << 20;

/// Something was larger than drun reads.
#[derive(Debug, thiserror::Error)]
#[error("{}", self.describe())]
pub struct TooLarge {
    /// The declared size, or how much had come when reading stopped (then the real size is larger).
    pub size: u64,
    pub cap: u64,
    /// Whether `size` was declared (a descriptor, a `Content-Length`, a file's size) rather than read.
    pub declared: bool,
}

impl TooLarge {
    /// A declared size over the cap.
    pub fn declared(size: u64, cap: u64) -> TooLarge {
        TooLarge {
            size,
            cap,
            declared: true,
        }
    }

    /// Reading stopped after `read` bytes, more than the cap.
    pub fn read(read: u64, cap: u64) -> TooLarge {
        TooLarge {
            size: read,
            cap,
            declared: false,
        }
    }

    fn describe(&self) -> String {
        if self.declared {
            let human = if self.size >= 1024 {
                format!(" ({})", ByteSize(self.size))
            } else {
                String::new()
            };
            format!(
                "{} bytes{human} declared, drun reads at most {}",
                self.size,
                ByteSize(self.cap)
            )
        } else {
            format!(
                "more than {} came and reading stopped there, drun reads at most that much",
                ByteSize(self.cap)
            )
        }
    }
}

/// Checks a declared size against `cap` before anything is allocated for it.
pub fn check_declared(size: u64, cap: u64) -> Result<(), TooLarge> {
    if size > cap {
        Err(TooLarge::declared(size, cap))
    } else {
        Ok(())
    }
}

/// Why a bounded read failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error(transparent)]
    TooLarge(#[from] TooLarge),
}

/// Reads all of `r`, but stops with [`TooLarge`] as soon as more than `cap` bytes came.
pub fn read_to_end_capped(r: impl Read, cap: u64) -> Result<Vec<u8>, ReadError> {
    let mut out = Vec::new();
    r.take(cap.saturating_add(1)).read_to_end(&mut out)?;
    if out.len() as u64 > cap {
        return Err(TooLarge::read(out.len() as u64, cap).into());
    }
    Ok(out)
}

/// Reads a whole regular file of at most `cap` bytes (see [`safe_fs::open_regular`]); its size is checked before
/// reading.
pub fn read_file_capped(path: &Path, cap: u64, follow: bool) -> Result<Vec<u8>, ReadError> {
    let f = safe_fs::open_regular(path, follow)?;
    check_declared(f.metadata()?.len(), cap)?;
    read_to_end_capped(f, cap)
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // fixtures in the tests' own temporary directories
mod tests {
    use super::*;

    #[test]
    fn reads_stop_at_the_cap() {
        assert_eq!(read_to_end_capped(&b"abcd"[..], 4).unwrap(), b"abcd");
        let err = read_to_end_capped(io::repeat(7), 1000).unwrap_err();
        assert!(
            matches!(
                err,
                ReadError::TooLarge(TooLarge {
                    size: 1001,
                    cap: 1000,
                    declared: false
                })
            ),
            "{err}"
        );
        assert_eq!(
            err.to_string(),
            "more than 1000 B came and reading stopped there, drun reads at most that much"
        );
        assert_eq!(
            check_declared(1 << 40, MAX_CONFIG).unwrap_err().to_string(),
            "1099511627776 bytes (1.0 TiB) declared, drun reads at most 8.0 MiB"
        );
    }

    #[test]
    fn only_regular_files_are_opened_and_never_block() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let err = safe_fs::open_regular(&fifo, true).unwrap_err();
        assert!(err.to_string().contains("a FIFO"), "{err}");
        let err = read_file_capped(dir.path(), 10, true).unwrap_err();
        assert!(err.to_string().contains("a directory"), "{err}");
        assert!(safe_fs::open_regular(Path::new("/dev/zero"), true).is_err());

        let file = dir.path().join("file");
        std::fs::write(&file, b"0123456789").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        assert_eq!(read_file_capped(&link, 10, true).unwrap(), b"0123456789");
        assert!(
            safe_fs::open_regular(&link, false).is_err(),
            "no-follow refuses a symlink"
        );
        let err = read_file_capped(&file, 9, false).unwrap_err();
        assert!(
            matches!(
                err,
                ReadError::TooLarge(TooLarge {
                    size: 10,
                    cap: 9,
                    declared: true
                })
            ),
            "{err}"
        );
    }
}
