//! One unpacked layer of the store written back as an OCI layer tar (uncompressed), for `drun export` when the
//! layer's original blob is not kept: the same files, owners, modes, modification times, xattrs,
//! symlinks, hardlinks within the layer, device nodes and FIFOs, with overlayfs' whiteouts (0:0 character
//! devices, the opaque xattr) and the store's markers turned back into OCI's `.wh.` entries. Entries are written
//! in name order, so one layer always gives the same bytes. Never follows a symlink of the tree.
//!
//! Hand-written on the `tar` crate's headers rather than its `append_dir_all`: that follows neither the overlay
//! whiteout forms nor xattrs, and does not detect hardlinks.

use std::collections::{BTreeSet, HashMap};
use std::ffi::{OsStr, OsString};
use std::io::{self, Read, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use tar::{Builder, EntryType, Header};

use crate::image::unpack::{Markers, MARKERS_FILE, MARKERS_FILE_MAX, OVERLAY_OPAQUE_XATTR, OVERLAY_USER_OPAQUE_XATTR};

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_MARKER: &str = ".wh..wh..opq";
/// The most bytes of xattr names, and of one value, read from a file (the kernel's own limit is 64 KiB).
const XATTR_MAX: usize = 64 << 10;

/// Files with more than one link already written, by (device, inode): their path in the layer tar that has them.
/// Kept from one layer to the next of an image: a layer's hardlink to a lower layer's file (which the store
/// keeps as a link to the lower layer's inode) is written back as that hardlink.
pub type Links = HashMap<(u64, u64), PathBuf>;

/// Writes the layer stored in `layer_dir` (its `root/` and markers) as a tar to `out`, finished with the two
/// end blocks; returns `out`.
pub fn write_layer_tar<W: Write>(layer_dir: &Path, out: W, links: &mut Links) -> io::Result<W> {
    let markers = match crate::sys::safe_fs::read_bounded(&layer_dir.join(MARKERS_FILE), MARKERS_FILE_MAX) {
        Ok(data) => serde_json::from_slice::<Markers>(&data).map_err(io::Error::other)?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => Markers::default(),
        Err(e) => return Err(e),
    };
    let mut w = TreeWriter {
        tar: Builder::new(out),
        links,
        opaque_markers: markers.opaque.iter().map(|p| trim_rel(p)).collect(),
    };
    w.tar.mode(tar::HeaderMode::Complete);
    w.dir(&layer_dir.join("root"), Path::new(""))?;
    // Whiteouts the file system could not hold: each deletes a path of the layers below.
    let mut whiteouts: Vec<PathBuf> = markers
        .whiteouts
        .iter()
        .map(|p| {
            let p = PathBuf::from(OsString::from_vec(trim_rel(p)));
            let mut name = OsString::from(WHITEOUT_PREFIX);
            name.push(p.file_name().unwrap_or_default());
            p.with_file_name(name)
        })
        .collect();
    whiteouts.sort();
    for p in whiteouts {
        w.empty_file(&p)?;
    }
    w.tar.into_inner()
}

/// A marker's path without a leading `./` or `/`.
fn trim_rel(p: &[u8]) -> Vec<u8> {
    let mut p = p;
    loop {
        if let Some(r) = p.strip_prefix(b"./") {
            p = r;
        } else if let Some(r) = p.strip_prefix(b"/") {
            p = r;
        } else {
            break;
        }
    }
    p.strip_suffix(b"/").unwrap_or(p).to_vec()
}

struct TreeWriter<'a, W: Write> {
    tar: Builder<W>,
    links: &'a mut Links,
    /// Directories the markers say are opaque.
    opaque_markers: BTreeSet<Vec<u8>>,
}

impl<W: Write> TreeWriter<'_, W> {
    /// The entries of directory `abs` (at `rel` in the layer), in name order, then theirs.
    fn dir(&mut self, abs: &Path, rel: &Path) -> io::Result<()> {
        let mut names: Vec<OsString> = std::fs::read_dir(abs)?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<io::Result<_>>()?;
        names.sort();
        for name in names {
            self.entry(&abs.join(&name), &rel.join(&name), &name)?;
        }
        Ok(())
    }

    fn entry(&mut self, abs: &Path, rel: &Path, name: &OsStr) -> io::Result<()> {
        let md = std::fs::symlink_metadata(abs)?;
        let ft = md.file_type();
        // overlayfs' whiteout: OCI's `.wh.NAME`.
        if ft.is_char_device() && md.rdev() == 0 {
            let mut wh = OsString::from(WHITEOUT_PREFIX);
            wh.push(name);
            return self.empty_file(&rel.with_file_name(wh));
        }
        let (mut pax, opaque) = xattrs(abs)?;
        // The header holds whole seconds; a PAX record keeps the rest (as images built by BuildKit have it).
        if md.mtime_nsec() != 0 && md.mtime() >= 0 {
            pax.push((
                "mtime".into(),
                format!("{}.{:09}", md.mtime(), md.mtime_nsec()).into_bytes(),
            ));
        }
        let mut h = header(&md);
        if !pax.is_empty() {
            self.tar
                .append_pax_extensions(pax.iter().map(|(k, v)| (k.as_str(), v.as_slice())))?;
        }
        if ft.is_dir() {
            h.set_entry_type(EntryType::Directory);
            self.tar.append_data(&mut h, rel, io::empty())?;
            if opaque || self.opaque_markers.contains(rel.as_os_str().as_bytes()) {
                self.empty_file(&rel.join(OPAQUE_MARKER))?;
            }
            return self.dir(abs, rel);
        }
        if ft.is_symlink() {
            h.set_entry_type(EntryType::Symlink);
            return self.tar.append_link(&mut h, rel, std::fs::read_link(abs)?);
        }
        if ft.is_file() {
            if md.nlink() > 1 {
                if let Some(first) = self.links.get(&(md.dev(), md.ino())) {
                    h.set_entry_type(EntryType::Link);
                    let first = first.clone();
                    return self.tar.append_link(&mut h, rel, first);
                }
                self.links.insert((md.dev(), md.ino()), rel.to_path_buf());
            }
            let f = crate::sys::safe_fs::open_regular(abs, false)?;
            let size = f.metadata()?.len();
            h.set_size(size);
            h.set_entry_type(EntryType::Regular);
            return self.tar.append_data(&mut h, rel, Exactly::new(f, size));
        }
        let (kind, dev) = if ft.is_char_device() {
            (EntryType::Char, true)
        } else if ft.is_block_device() {
            (EntryType::Block, true)
        } else if ft.is_fifo() {
            (EntryType::Fifo, false)
        } else {
            // Sockets are not layer content (tar cannot hold them either).
            return Ok(());
        };
        h.set_entry_type(kind);
        if dev {
            h.set_device_major(rustix::fs::major(md.rdev()))?;
            h.set_device_minor(rustix::fs::minor(md.rdev()))?;
        }
        self.tar.append_data(&mut h, rel, io::empty())
    }

    /// A whiteout or opaque marker: an empty regular file.
    fn empty_file(&mut self, rel: &Path) -> io::Result<()> {
        let mut h = Header::new_gnu();
        h.set_entry_type(EntryType::Regular);
        h.set_mode(0o644);
        h.set_size(0);
        h.set_mtime(0);
        self.tar.append_data(&mut h, rel, io::empty())
    }
}

/// A header with the file's mode, owner and modification time.
fn header(md: &std::fs::Metadata) -> Header {
    let mut h = Header::new_gnu();
    h.set_mode(md.mode() & 0o7777);
    h.set_uid(u64::from(md.uid()));
    h.set_gid(u64::from(md.gid()));
    h.set_mtime(u64::try_from(md.mtime()).unwrap_or(0));
    h.set_size(0);
    h
}

/// A PAX record: key and value.
type PaxRecord = (String, Vec<u8>);

/// The xattrs of `path` (not followed) as PAX records, without overlayfs' own; and whether the overlay's opaque
/// xattr is set.
fn xattrs(path: &Path) -> io::Result<(Vec<PaxRecord>, bool)> {
    let mut names = vec![0u8; XATTR_MAX];
    let n = match rustix::fs::llistxattr(path, &mut names[..]) {
        Ok(n) => n,
        Err(rustix::io::Errno::NOTSUP) => return Ok((vec![], false)),
        Err(e) => return Err(e.into()),
    };
    let mut out = Vec::new();
    let mut opaque = false;
    for raw in names[..n].split(|&b| b == 0).filter(|s| !s.is_empty()) {
        let name = String::from_utf8_lossy(raw).into_owned();
        let mut value = vec![0u8; XATTR_MAX];
        let len = match rustix::fs::lgetxattr(path, raw, &mut value[..]) {
            Ok(len) => len,
            // Removed meanwhile.
            Err(rustix::io::Errno::NODATA) => continue,
            Err(e) => return Err(e.into()),
        };
        value.truncate(len);
        if name == OVERLAY_OPAQUE_XATTR || name == OVERLAY_USER_OPAQUE_XATTR {
            opaque |= value == b"y";
            continue;
        }
        if name.starts_with("trusted.overlay.") || name.starts_with("user.overlay.") {
            continue;
        }
        out.push((format!("SCHILY.xattr.{name}"), value));
    }
    out.sort();
    Ok((out, opaque))
}

/// Exactly `size` bytes of a reader: an error if it ends before (a file shrank under the export).
struct Exactly<R> {
    inner: io::Take<R>,
    left: u64,
}

impl<R: Read> Exactly<R> {
    fn new(r: R, size: u64) -> Self {
        Exactly {
            inner: r.take(size),
            left: size,
        }
    }
}

impl<R: Read> Read for Exactly<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && self.left > 0 && !buf.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "a file of the layer shrank while it was read",
            ));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // fixtures in the test's own temporary directory
mod tests {
    use super::*;

    fn entries(tar: &[u8]) -> Vec<(String, EntryType, String)> {
        let mut a = tar::Archive::new(tar);
        a.entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let link = e
                    .link_name()
                    .unwrap()
                    .map(|l| l.display().to_string())
                    .unwrap_or_default();
                (e.path().unwrap().display().to_string(), e.header().entry_type(), link)
            })
            .collect()
    }

    #[test]
    fn markers_become_whiteouts_and_links_stay_links_in_name_order() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("etc/opaque")).unwrap();
        std::fs::write(root.join("etc/b"), b"data").unwrap();
        std::fs::hard_link(root.join("etc/b"), root.join("etc/a-link")).unwrap();
        std::os::unix::fs::symlink("b", root.join("etc/sym")).unwrap();
        let markers = Markers {
            whiteouts: vec![b"etc/gone".to_vec(), b"top".to_vec()],
            opaque: vec![b"./etc/opaque".to_vec()],
        };
        std::fs::write(dir.path().join(MARKERS_FILE), serde_json::to_vec(&markers).unwrap()).unwrap();
        let tar = write_layer_tar(dir.path(), Vec::new(), &mut Links::new()).unwrap();
        let got = entries(&tar);
        let names: Vec<&str> = got.iter().map(|(n, _, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "etc",
                "etc/a-link",
                "etc/b",
                "etc/opaque",
                "etc/opaque/.wh..wh..opq",
                "etc/sym",
                ".wh.top",
                "etc/.wh.gone"
            ]
        );
        // The first name of a linked file holds the data; the next is a hardlink to it.
        assert_eq!(got[1].1, EntryType::Regular);
        assert_eq!(got[2], ("etc/b".into(), EntryType::Link, "etc/a-link".into()));
        assert_eq!(got[5], ("etc/sym".into(), EntryType::Symlink, "b".into()));
        // The same tree gives the same bytes.
        assert_eq!(write_layer_tar(dir.path(), Vec::new(), &mut Links::new()).unwrap(), tar);
    }
}
