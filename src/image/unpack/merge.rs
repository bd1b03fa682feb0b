//! An image's layers merged into one tar stream, the tree overlayfs would show over the unpacked layers, written
//! for a squashfs writer (`tar2sqfs`) instead of unpacked: nothing of the image touches the disk but the image
//! file itself.
//!
//! Layers are read from the top down, so that what an upper layer decided is known when a lower one is read: an
//! entry is written only if no upper layer has the same path (a directory over a directory merges: the upper's
//! metadata, both layers' children), deleted it or an ancestor (`.wh.NAME`), made an ancestor opaque
//! (`.wh..wh..opq`), or put a non-directory at an ancestor. A non-directory under an upper directory hides the
//! lower layers' children of that path, as overlayfs stops its lookup there. A parent an entry needs that its
//! layer does not name is, as for the unpacker, a directory of the layer's own (root's, 0755), which the writer
//! creates; lower layers' entries for it are not written.
//!
//! A hardlink to a file of its own layer is written as it is; one to a lower layer's file is written before its
//! target (`tar2sqfs` links the two once the target comes), and the first lower layer to name the target must
//! have a regular file there. What cannot be written in one pass is refused with [`MergeError::NotStreamable`],
//! and the caller converts through an unpacked copy instead: a hardlink whose target's data went by unwritten (an
//! upper layer replaced or deleted it) or that its own layer replaces, a layer naming one path twice (but a
//! directory first implied by a child) or putting something below its own non-directory, and a PAX header over
//! 60 KiB (tar2sqfs's limit is 64).
//!
//! Entries are written afresh (a PAX header with the normalised path, link target and xattrs, then a GNU header),
//! never copied: what the writer parses is what drun checked. Memory is bounded as the unpacker's is (headers,
//! names, [`MAX_TRACKED`] bytes of remembered paths).

use std::collections::{HashMap, HashSet};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;

use super::header_budget::for_each_entry;
use super::layer::TRACKED_OVERHEAD;
use super::names::components;
use super::tar_fields::{device_numbers, header_fields, pax_extras};
use super::whiteouts::{OPAQUE_MARKER, WHITEOUT_PREFIX};
use super::{UnpackError, MAX_NAME, MAX_TRACKED};

#[derive(Debug, thiserror::Error)]
pub enum MergeError {
    #[error(transparent)]
    Layer(#[from] UnpackError),
    #[error("{path:?} cannot be streamed into the image file: {reason}")]
    NotStreamable { path: String, reason: &'static str },
    #[error("cannot write the merged tar stream")]
    Write(#[source] io::Error),
    #[error("an earlier layer stopped part-way: the merged stream is incomplete")]
    Incomplete,
}

/// What an upper layer put at a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Dir,
    /// A parent the layer did not name (see the module's notes).
    ImplicitDir,
    /// A regular file (or a hardlink to one).
    File,
    /// A symlink or a device node.
    Other,
}

impl Kind {
    fn is_dir(self) -> bool {
        matches!(self, Kind::Dir | Kind::ImplicitDir)
    }
}

#[derive(Debug, Clone, Copy)]
struct Seen {
    /// The layer, counted from the top.
    layer: u32,
    kind: Kind,
}

/// What to do with an entry.
enum Verdict {
    Write,
    /// Hidden by an upper layer; `blocks` when it also hides what lower layers have below its path (a
    /// non-directory under an upper directory).
    Hidden {
        blocks: bool,
    },
    /// A directory under an upper one, or named twice in its layer: the first's metadata stays.
    Merged,
}

/// What the merge wrote.
#[derive(Debug, Default, Clone, Copy)]
pub struct MergeStats {
    pub entries: u64,
    pub bytes: u64,
    pub hidden: u64,
}

/// The merge of an image's layers, fed from the top layer down.
pub struct LayerMerge<W: Write> {
    out: W,
    /// The layer being read, counted from the top.
    layer: u32,
    seen: HashMap<Vec<u8>, Seen>,
    /// Paths deleted by upper layers (and everything below them).
    deleted: HashSet<Vec<u8>>,
    /// Directories whose lower contents upper layers hide.
    opaque: HashSet<Vec<u8>>,
    /// This layer's whiteouts and opaque directories: they apply to the layers below it only.
    layer_deleted: HashSet<Vec<u8>>,
    layer_opaque: HashSet<Vec<u8>>,
    /// Targets of hardlinks into lower layers, written before their target: the first lower layer to name the
    /// path must have a regular file there (`tar2sqfs` links them once it has it).
    forward: HashMap<Vec<u8>, u32>,
    tracked: usize,
    /// A layer failed part-way: the stream holds part of it.
    broken: bool,
    pub stats: MergeStats,
}

impl<W: Write> LayerMerge<W> {
    pub fn new(out: W) -> LayerMerge<W> {
        LayerMerge {
            out,
            layer: 0,
            seen: HashMap::new(),
            deleted: HashSet::new(),
            opaque: HashSet::new(),
            layer_deleted: HashSet::new(),
            layer_opaque: HashSet::new(),
            forward: HashMap::new(),
            tracked: 0,
            broken: false,
            stats: MergeStats::default(),
        }
    }

    /// Reads the next layer down (the top one first) from the tar stream `src` and writes what it adds.
    pub fn add_layer<R: Read>(&mut self, src: R) -> Result<(), MergeError> {
        if self.broken {
            return Err(MergeError::Incomplete);
        }
        self.broken = true;
        for_each_entry(src, |entry| self.entry(entry))?;
        self.deleted.extend(self.layer_deleted.drain());
        self.opaque.extend(self.layer_opaque.drain());
        self.layer += 1;
        self.broken = false;
        Ok(())
    }

    /// Ends the stream (two zero blocks) and returns the writer, flushed.
    pub fn finish(mut self) -> Result<W, MergeError> {
        if self.broken {
            return Err(MergeError::Incomplete);
        }
        if let Some(target) = self.forward.keys().next() {
            return Err(not_streamable(
                String::from_utf8_lossy(target).into_owned(),
                "a hardlink's target is in no lower layer",
            ));
        }
        self.out.write_all(&[0u8; 1024]).map_err(MergeError::Write)?;
        self.out.flush().map_err(MergeError::Write)?;
        Ok(self.out)
    }

    fn track(&mut self, len: usize) -> Result<(), UnpackError> {
        self.tracked += len + TRACKED_OVERHEAD;
        if self.tracked > MAX_TRACKED {
            return Err(UnpackError::TooManyPaths { limit: MAX_TRACKED });
        }
        Ok(())
    }

    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<(), MergeError> {
        let kind = entry.header().entry_type();
        let raw = entry.path_bytes().into_owned();
        let shown = || String::from_utf8_lossy(&raw).into_owned();
        let comps = components(&raw)?;
        let Some((name, parents)) = comps.split_last() else {
            // The layer root: its metadata is the image root's, not a layer's (as the unpacker reads it).
            return Ok(());
        };
        let parent = join(parents.iter().map(|c| c.as_bytes()));
        if name.as_bytes() == OPAQUE_MARKER.as_bytes() {
            self.track(parent.len())?;
            self.layer_opaque.insert(parent);
            return Ok(());
        }
        if let Some(target) = name.as_bytes().strip_prefix(WHITEOUT_PREFIX.as_bytes()) {
            if target.is_empty() || target == b"." || target == b".." {
                return Err(UnpackError::BadWhiteout { path: shown() }.into());
            }
            let gone = join(parents.iter().map(|c| c.as_bytes()).chain([target]));
            self.track(gone.len())?;
            self.layer_deleted.insert(gone);
            return Ok(());
        }
        let key = join(comps.iter().map(|c| c.as_bytes()));
        let new_kind = match kind {
            tar::EntryType::Directory => Kind::Dir,
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse | tar::EntryType::Link => {
                Kind::File
            }
            tar::EntryType::Symlink | tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                Kind::Other
            }
            other => {
                return Err(UnpackError::Unsupported {
                    path: shown(),
                    kind: other,
                }
                .into())
            }
        };
        match self.verdict(&key, new_kind, &shown)? {
            Verdict::Hidden { blocks } => {
                if self.forward.contains_key(&key) {
                    return Err(not_streamable(
                        shown(),
                        "an upper layer's hardlink to it cannot be kept",
                    ));
                }
                self.stats.hidden += 1;
                if blocks {
                    self.track(key.len())?;
                    self.layer_opaque.insert(key);
                }
                return Ok(());
            }
            Verdict::Merged => return Ok(()),
            Verdict::Write => {}
        }
        let link = match kind {
            tar::EntryType::Symlink | tar::EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| not_streamable(shown(), "a link without a target"))?
                    .into_owned();
                if target.len() > MAX_NAME {
                    return Err(UnpackError::NameTooLong {
                        path: shown(),
                        what: "link target",
                        limit: MAX_NAME,
                    }
                    .into());
                }
                // The kernel refuses it (the unpacker fails there), and the writer would cut the target at it.
                if target.contains(&0) {
                    return Err(UnpackError::NulInName { path: shown() }.into());
                }
                Some(target)
            }
            _ => None,
        };
        let link = match (kind, link) {
            (tar::EntryType::Link, Some(target)) => {
                let tcomps = components(&target).map_err(|_| UnpackError::LinkDotDot {
                    path: shown(),
                    target: String::from_utf8_lossy(&target).into_owned(),
                })?;
                let tkey = join(tcomps.iter().map(|c| c.as_bytes()));
                match self.seen.get(&tkey) {
                    // Its target, written from this layer before it.
                    Some(s) if s.layer == self.layer && s.kind == Kind::File => {}
                    // A file of a lower layer, unless something above it or in this layer hides it: written when
                    // that layer comes (see `forward`).
                    None if matches!(self.verdict(&tkey, Kind::File, &shown)?, Verdict::Write)
                        && !self.hidden_by_this_layer(&tkey) =>
                    {
                        self.track(tkey.len())?;
                        self.forward.insert(tkey.clone(), self.layer);
                    }
                    _ => {
                        return Err(not_streamable(
                            shown(),
                            "a hardlink to a file this layer or an upper one replaces or hides",
                        ))
                    }
                }
                Some(tkey)
            }
            (_, link) => link,
        };
        match self.forward.get(&key) {
            // The file a hardlink of this layer means is a lower one; this one would take its place.
            Some(&l) if l == self.layer => {
                return Err(not_streamable(
                    shown(),
                    "the layer replaces a file it also hardlinks to",
                ))
            }
            Some(_) if new_kind == Kind::File && kind != tar::EntryType::Link => {
                self.forward.remove(&key);
            }
            Some(_) => {
                return Err(not_streamable(
                    shown(),
                    "an upper layer hardlinks to it, but it is no file",
                ))
            }
            None => {}
        }
        // Parents this layer does not name are its own directories (see the module's notes).
        for end in slash_positions(&key) {
            if !self.seen.contains_key(&key[..end]) {
                self.track(end)?;
                self.seen.insert(
                    key[..end].to_vec(),
                    Seen {
                        layer: self.layer,
                        kind: Kind::ImplicitDir,
                    },
                );
            }
        }
        if self
            .seen
            .insert(
                key.clone(),
                Seen {
                    layer: self.layer,
                    kind: new_kind,
                },
            )
            .is_none()
        {
            self.track(key.len())?;
        }
        self.write_entry(entry, kind, &key, link.as_deref(), &shown)
    }

    /// Whether this layer's own whiteouts or opaque directories hide `key` in the layers below.
    fn hidden_by_this_layer(&self, key: &[u8]) -> bool {
        self.layer_deleted.contains(key)
            || slash_positions(key)
                .any(|end| self.layer_deleted.contains(&key[..end]) || self.layer_opaque.contains(&key[..end]))
    }

    fn verdict(&self, key: &[u8], kind: Kind, shown: &dyn Fn() -> String) -> Result<Verdict, MergeError> {
        for end in slash_positions(key) {
            let a = &key[..end];
            if self.deleted.contains(a) || self.opaque.contains(a) {
                return Ok(Verdict::Hidden { blocks: false });
            }
            match self.seen.get(a) {
                // Below a symlink or file of its own layer: the unpacker refuses that layer; so does the fallback.
                Some(s) if !s.kind.is_dir() && s.layer == self.layer => {
                    return Err(not_streamable(shown(), "it is below a non-directory of its own layer"))
                }
                Some(s) if !s.kind.is_dir() => return Ok(Verdict::Hidden { blocks: false }),
                _ => {}
            }
        }
        if self.deleted.contains(key) {
            return Ok(Verdict::Hidden { blocks: false });
        }
        let Some(s) = self.seen.get(key) else {
            return Ok(Verdict::Write);
        };
        if s.layer == self.layer {
            return match (s.kind, kind) {
                // Named by a child first, then itself: its own metadata.
                (Kind::ImplicitDir, Kind::Dir) => Ok(Verdict::Write),
                // The last one's metadata counts, and the first is written already.
                _ => Err(not_streamable(shown(), "the layer names it twice")),
            };
        }
        Ok(match (s.kind.is_dir(), kind == Kind::Dir) {
            (true, true) => Verdict::Merged,
            (true, false) => Verdict::Hidden { blocks: true },
            (false, _) => Verdict::Hidden { blocks: false },
        })
    }

    /// Writes one entry: a PAX header (path, link target, large numbers, xattrs), a GNU header, the data.
    fn write_entry<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        kind: tar::EntryType,
        key: &[u8],
        link: Option<&[u8]>,
        shown: &dyn Fn() -> String,
    ) -> Result<(), MergeError> {
        let header_err = |source| UnpackError::Header { path: shown(), source };
        let fields = header_fields(entry.header()).map_err(header_err)?;
        let extras = pax_extras(entry).map_err(|source| UnpackError::Entry { path: shown(), source })?;
        let regular = matches!(
            kind,
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse
        );
        let size = if regular { entry.size() } else { 0 };
        let mut pax = Vec::new();
        pax_record(&mut pax, "path", key);
        if let Some(l) = link {
            pax_record(&mut pax, "linkpath", l);
        }
        // Beyond the header's octal fields: PAX says it in decimal (the GNU header has base-256 too).
        for (k, v) in [
            ("uid", u64::from(fields.uid)),
            ("gid", u64::from(fields.gid)),
            ("size", size),
        ] {
            if v > 0o7777777 {
                pax_record(&mut pax, k, v.to_string().as_bytes());
            }
        }
        for (k, v) in &extras.xattrs {
            // squashfs keeps user.*, trusted.* and security.* only (ACLs in system.* are lost as mksquashfs loses
            // them); a key with a NUL the writer would cut.
            let kept = ["user.", "trusted.", "security."].iter().any(|p| k.starts_with(p));
            if kept && !k.contains('\0') {
                pax_record(&mut pax, &format!("SCHILY.xattr.{k}"), v);
            }
        }
        // tar2sqfs reads PAX headers of up to 64 KiB (a large xattr value); the unpacker takes up to 1 MiB.
        if pax.len() > 60 << 10 {
            return Err(not_streamable(shown(), "its PAX header is over 60 KiB"));
        }
        let mut x = tar::Header::new_ustar();
        x.set_entry_type(tar::EntryType::XHeader);
        x.set_path("PaxHeader").expect("a short name");
        x.set_mode(0o644);
        x.set_size(pax.len() as u64);
        x.set_cksum();
        let w = |e| MergeError::Write(e);
        self.out.write_all(x.as_bytes()).map_err(w)?;
        self.out.write_all(&pax).map_err(w)?;
        pad(&mut self.out, pax.len() as u64).map_err(w)?;

        let mut h = tar::Header::new_gnu();
        h.set_entry_type(if regular { tar::EntryType::Regular } else { kind });
        // The name field holds a prefix only: the PAX path is the name.
        let short = &key[..key.len().min(99)];
        h.as_old_mut().name[..short.len()].copy_from_slice(short);
        h.set_mode(fields.mode);
        h.set_uid(fields.uid.into());
        h.set_gid(fields.gid.into());
        h.set_mtime(u64::try_from(fields.mtime).unwrap_or(0));
        h.set_size(size);
        if matches!(kind, tar::EntryType::Char | tar::EntryType::Block) {
            let (major, minor) = device_numbers(entry.header()).map_err(header_err)?;
            h.set_device_major(major).map_err(w)?;
            h.set_device_minor(minor).map_err(w)?;
        }
        h.set_cksum();
        self.out.write_all(h.as_bytes()).map_err(w)?;
        if regular {
            let n = io::copy(&mut entry.take(size), &mut self.out).map_err(|e| match e.kind() {
                io::ErrorKind::WriteZero | io::ErrorKind::BrokenPipe => MergeError::Write(e),
                _ => UnpackError::Read(e).into(),
            })?;
            if n != size {
                return Err(UnpackError::Read(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("{}: the layer ends inside its data", shown()),
                ))
                .into());
            }
            pad(&mut self.out, size).map_err(w)?;
            self.stats.bytes += size;
        }
        self.stats.entries += 1;
        Ok(())
    }
}

fn not_streamable(path: String, reason: &'static str) -> MergeError {
    MergeError::NotStreamable { path, reason }
}

/// Components joined by `/`, without a leading one.
fn join<'a>(comps: impl Iterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut out = Vec::new();
    for c in comps {
        if !out.is_empty() {
            out.push(b'/');
        }
        out.extend_from_slice(c);
    }
    out
}

/// The ends of `key`'s strict ancestors: `a/b/c` gives 1 (`a`) and 3 (`a/b`).
fn slash_positions(key: &[u8]) -> impl Iterator<Item = usize> + '_ {
    key.iter().enumerate().filter(|(_, b)| **b == b'/').map(|(i, _)| i)
}

/// One PAX record: "LEN KEY=VALUE\n", LEN counting the whole record, its own digits included.
fn pax_record(out: &mut Vec<u8>, key: &str, value: &[u8]) {
    let body = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut len = body + 1;
    while len != body + len.to_string().len() {
        len = body + len.to_string().len();
    }
    out.extend_from_slice(len.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(key.as_bytes());
    out.push(b'=');
    out.extend_from_slice(value);
    out.push(b'\n');
}

/// Zeros up to the next 512-byte block.
fn pad(out: &mut impl Write, len: u64) -> io::Result<()> {
    let rest = (512 - len % 512) % 512;
    out.write_all(&[0u8; 512][..usize::try_from(rest).expect("under 512")])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A layer: (name, kind, data or link target), kinds 'd' 'f' 'l' (symlink) 'h' (hardlink).
    fn layer(entries: &[(&str, char, &str)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, kind, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_mode(if *kind == 'd' { 0o755 } else { 0o644 });
            h.set_mtime(1);
            match kind {
                'd' => {
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_size(0);
                    b.append_data(&mut h, name, io::empty()).unwrap();
                }
                'f' => {
                    h.set_size(data.len() as u64);
                    b.append_data(&mut h, name, data.as_bytes()).unwrap();
                }
                'l' | 'h' => {
                    h.set_entry_type(if *kind == 'l' {
                        tar::EntryType::Symlink
                    } else {
                        tar::EntryType::Link
                    });
                    h.set_size(0);
                    b.append_link(&mut h, name, data).unwrap();
                }
                _ => unreachable!(),
            }
        }
        b.into_inner().unwrap()
    }

    /// Merges layers given bottom first (as a manifest lists them); the result as "path kind [data]" lines.
    fn merge(layers: &[Vec<u8>]) -> Result<Vec<String>, MergeError> {
        let mut m = LayerMerge::new(Vec::new());
        for l in layers.iter().rev() {
            m.add_layer(&l[..])?;
        }
        let out = m.finish()?;
        let mut a = tar::Archive::new(&out[..]);
        let mut lines = Vec::new();
        for e in a.entries().unwrap() {
            let mut e = e.unwrap();
            let path = String::from_utf8(e.path_bytes().into_owned()).unwrap();
            let line = match e.header().entry_type() {
                tar::EntryType::Directory => format!("{path} d"),
                tar::EntryType::Regular => {
                    let mut s = String::new();
                    e.read_to_string(&mut s).unwrap();
                    format!("{path} f {s}")
                }
                t => format!(
                    "{path} {} {}",
                    if t == tar::EntryType::Link { 'h' } else { 'l' },
                    String::from_utf8(e.link_name_bytes().unwrap().into_owned()).unwrap()
                ),
            };
            lines.push(line);
        }
        Ok(lines)
    }

    #[test]
    fn upper_layers_win_and_delete() {
        let base = layer(&[
            ("etc/", 'd', ""),
            ("etc/a", 'f', "old"),
            ("etc/gone", 'f', "x"),
            ("opt/", 'd', ""),
            ("opt/hidden", 'f', "x"),
            ("var/", 'd', ""),
            ("var/kept", 'f', "k"),
            ("lib", 'l', "usr/lib"),
        ]);
        let top = layer(&[
            ("etc/", 'd', ""),
            ("etc/a", 'f', "new"),
            ("etc/.wh.gone", 'f', ""),
            ("opt/", 'd', ""),
            ("opt/.wh..wh..opq", 'f', ""),
            ("opt/mine", 'f', "m"),
            ("lib/", 'd', ""),
            ("lib/x", 'f', "x"),
        ]);
        let got = merge(&[base, top]).unwrap();
        assert_eq!(
            got,
            [
                "etc d",
                "etc/a f new",
                "opt d",
                "opt/mine f m",
                "lib d",
                "lib/x f x",
                "var d",
                "var/kept f k"
            ]
        );
    }

    #[test]
    fn a_file_over_a_directory_hides_what_is_below_it_in_every_lower_layer() {
        let l0 = layer(&[("d/", 'd', ""), ("d/deep", 'f', "0")]);
        let l1 = layer(&[("d", 'f', "file")]);
        let l2 = layer(&[("d/", 'd', ""), ("d/top", 'f', "2")]);
        // overlayfs: l2's directory over l1's file stops there; l0's d/deep is not shown.
        assert_eq!(merge(&[l0, l1, l2]).unwrap(), ["d d", "d/top f 2"]);
        let l0 = layer(&[("d/", 'd', ""), ("d/deep", 'f', "0")]);
        let l1 = layer(&[("d", 'f', "file")]);
        assert_eq!(merge(&[l0, l1]).unwrap(), ["d f file"]);
    }

    #[test]
    fn parents_a_layer_does_not_name_are_its_own() {
        let l0 = layer(&[("a/", 'd', ""), ("a/low", 'f', "0"), ("b", 'f', "")]);
        let l1 = layer(&[("a/b/c", 'f', "1")]);
        // `a` is l1's (implicit): l0's entry for it is not written, its children are.
        assert_eq!(merge(&[l0, l1]).unwrap(), ["a/b/c f 1", "a/low f 0", "b f "]);
        // A layer naming a parent after its child gives it its own metadata.
        let l0 = layer(&[("a/b", 'f', "1"), ("a/", 'd', "")]);
        assert_eq!(merge(&[l0]).unwrap(), ["a/b f 1", "a d"]);
    }

    #[test]
    fn hardlinks_within_a_layer_stream_others_are_refused() {
        let l0 = layer(&[("a", 'f', "data"), ("b", 'h', "a")]);
        assert_eq!(merge(&[l0]).unwrap(), ["a f data", "b h a"]);
        // Its target deleted by an upper layer: its data went by unwritten.
        let l0 = layer(&[("a", 'f', "data"), ("b", 'h', "a")]);
        let l1 = layer(&[(".wh.a", 'f', "")]);
        assert!(matches!(merge(&[l0, l1]), Err(MergeError::NotStreamable { .. })));
        // Its target in a lower layer: the link first, the file when its layer comes.
        let l0 = layer(&[("a", 'f', "data")]);
        let l1 = layer(&[("b", 'h', "a")]);
        assert_eq!(merge(&[l0, l1]).unwrap(), ["b h a", "a f data"]);
        // ... but not if an upper layer replaced it (the link means the lower file) ...
        let l0 = layer(&[("a", 'f', "data")]);
        let l1 = layer(&[("b", 'h', "a")]);
        let l2 = layer(&[("a", 'f', "new")]);
        assert!(matches!(merge(&[l0, l1, l2]), Err(MergeError::NotStreamable { .. })));
        // ... or its own layer does after the link ...
        let l0 = layer(&[("a", 'f', "data")]);
        let l1 = layer(&[("b", 'h', "a"), ("a", 'f', "new")]);
        assert!(matches!(merge(&[l0, l1]), Err(MergeError::NotStreamable { .. })));
        // ... or no lower layer has it, or has something else there.
        let l0 = layer(&[("c", 'f', "data")]);
        let l1 = layer(&[("b", 'h', "a")]);
        assert!(matches!(merge(&[l0, l1]), Err(MergeError::NotStreamable { .. })));
        let l0 = layer(&[("a/", 'd', "")]);
        let l1 = layer(&[("b", 'h', "a")]);
        assert!(matches!(merge(&[l0, l1]), Err(MergeError::NotStreamable { .. })));
        // A link that is itself hidden needs nothing.
        let l0 = layer(&[("a", 'f', "data"), ("b", 'h', "a")]);
        let l1 = layer(&[("a", 'f', "new"), ("b", 'f', "new b")]);
        assert_eq!(merge(&[l0, l1]).unwrap(), ["a f new", "b f new b"]);
    }

    #[test]
    fn a_file_named_twice_in_a_layer_is_refused_and_stops_the_merge() {
        let l0 = layer(&[("a", 'f', "1"), ("a", 'f', "2")]);
        let mut m = LayerMerge::new(Vec::new());
        assert!(matches!(m.add_layer(&l0[..]), Err(MergeError::NotStreamable { .. })));
        assert!(matches!(m.add_layer(&layer(&[])[..]), Err(MergeError::Incomplete)));
        assert!(matches!(m.finish(), Err(MergeError::Incomplete)));
    }

    /// A layer of one regular file `name`, with PAX records `pax` before it.
    fn pax_layer(pax: &[(&str, &[u8])], kind: tar::EntryType, link: &str) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut data = Vec::new();
        for (k, v) in pax {
            pax_record(&mut data, k, v);
        }
        let mut x = tar::Header::new_ustar();
        x.set_entry_type(tar::EntryType::XHeader);
        x.set_size(data.len() as u64);
        x.set_cksum();
        b.append(&x, &data[..]).unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_size(0);
        h.set_mode(0o644);
        if kind == tar::EntryType::Symlink {
            h.set_link_name(link).unwrap();
        }
        h.set_path("placeholder").unwrap();
        h.set_cksum();
        b.append(&h, io::empty()).unwrap();
        b.into_inner().unwrap()
    }

    #[test]
    fn what_the_writer_would_read_otherwise_is_refused() {
        // A NUL in a name: tar2sqfs would cut the name there (`etc/secret\0x` would become `etc/secret`, out of
        // reach of the whiteout that deletes it); in a symlink's target likewise.
        let l = pax_layer(&[("path", b"etc/secret\0x")], tar::EntryType::Regular, "");
        assert!(matches!(
            merge(&[l]),
            Err(MergeError::Layer(UnpackError::NulInName { .. }))
        ));
        let l = pax_layer(
            &[("path", b"s"), ("linkpath", b"/etc\0x")],
            tar::EntryType::Symlink,
            "x",
        );
        assert!(matches!(
            merge(&[l]),
            Err(MergeError::Layer(UnpackError::NulInName { .. }))
        ));
        // A name squashfs cannot hold.
        let long = format!("d/{}", "n".repeat(300));
        let l = pax_layer(&[("path", long.as_bytes())], tar::EntryType::Regular, "");
        assert!(matches!(
            merge(&[l]),
            Err(MergeError::Layer(UnpackError::NameTooLong { .. }))
        ));
        // A PAX header over tar2sqfs's limit: through the unpacked copy instead.
        let big = vec![b'v'; 70 << 10];
        let l = pax_layer(
            &[("path", b"f"), ("SCHILY.xattr.user.big", &big)],
            tar::EntryType::Regular,
            "",
        );
        assert!(matches!(merge(&[l]), Err(MergeError::NotStreamable { .. })));
    }

    #[test]
    fn layers_the_unpacker_reads_differently_go_through_it() {
        // A directory named twice: the last one's metadata counts, and the first is written.
        let l0 = layer(&[("d/", 'd', ""), ("d/", 'd', "")]);
        assert!(matches!(merge(&[l0]), Err(MergeError::NotStreamable { .. })));
        // Something below a symlink of the same layer: the unpacker refuses the layer.
        let l0 = layer(&[("x", 'l', "/etc"), ("x/g", 'f', "g")]);
        assert!(matches!(merge(&[l0]), Err(MergeError::NotStreamable { .. })));
    }

    #[test]
    fn acls_are_dropped_as_squashfs_cannot_hold_them() {
        let l = pax_layer(
            &[
                ("path", b"f"),
                ("SCHILY.xattr.system.posix_acl_access", b"\x02\0\0\0"),
                ("SCHILY.xattr.user.k", b"v"),
            ],
            tar::EntryType::Regular,
            "",
        );
        let mut m = LayerMerge::new(Vec::new());
        m.add_layer(&l[..]).unwrap();
        let out = m.finish().unwrap();
        let mut a = tar::Archive::new(&out[..]);
        let mut e = a.entries().unwrap().next().unwrap().unwrap();
        let keys: Vec<String> = e
            .pax_extensions()
            .unwrap()
            .unwrap()
            .map(|x| x.unwrap().key().unwrap().to_string())
            .collect();
        assert!(keys.contains(&"SCHILY.xattr.user.k".to_string()), "{keys:?}");
        assert!(!keys.iter().any(|k| k.contains("system.")), "{keys:?}");
    }

    #[test]
    fn names_xattrs_and_owners_survive() {
        let long = format!("{}/{}", "d".repeat(150), "f".repeat(150));
        let mut b = tar::Builder::new(Vec::new());
        let mut pax = Vec::new();
        pax_record(&mut pax, "SCHILY.xattr.user.k", b"v\0\xff");
        pax_record(&mut pax, "SCHILY.xattr.trusted.overlay.opaque", b"y");
        let mut x = tar::Header::new_ustar();
        x.set_entry_type(tar::EntryType::XHeader);
        x.set_size(pax.len() as u64);
        x.set_cksum();
        b.append(&x, &pax[..]).unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_size(2);
        h.set_mode(0o4755);
        h.set_uid(3_000_000);
        h.set_gid(7);
        b.append_data(&mut h, &long, &b"hi"[..]).unwrap();
        let l0 = b.into_inner().unwrap();
        let mut m = LayerMerge::new(Vec::new());
        m.add_layer(&l0[..]).unwrap();
        let out = m.finish().unwrap();
        let mut a = tar::Archive::new(&out[..]);
        let mut e = a.entries().unwrap().next().unwrap().unwrap();
        assert_eq!(e.path_bytes().as_ref(), long.as_bytes());
        assert_eq!(e.header().mode().unwrap(), 0o4755);
        assert_eq!(e.header().uid().unwrap(), 3_000_000);
        assert_eq!(e.header().gid().unwrap(), 7);
        let exts: Vec<(String, Vec<u8>)> = e
            .pax_extensions()
            .unwrap()
            .unwrap()
            .map(|x| {
                let x = x.unwrap();
                (x.key().unwrap().to_string(), x.value_bytes().to_vec())
            })
            .collect();
        assert!(
            exts.contains(&("SCHILY.xattr.user.k".into(), b"v\0\xff".to_vec())),
            "{exts:?}"
        );
        // overlayfs' own attributes are dropped, as the unpacker drops them.
        assert!(!exts.iter().any(|(k, _)| k.contains("overlay")), "{exts:?}");
        let mut s = String::new();
        e.read_to_string(&mut s).unwrap();
        assert_eq!(s, "hi");
    }

    #[test]
    fn pax_record_lengths_count_themselves() {
        for n in [0, 1, 90, 94, 95, 96, 990, 995, 9990] {
            let mut out = Vec::new();
            pax_record(&mut out, "k", &vec![b'x'; n]);
            let (len, _) = std::str::from_utf8(&out[..out.iter().position(|b| *b == b' ').unwrap()])
                .map(|s| (s.parse::<usize>().unwrap(), ()))
                .unwrap();
            assert_eq!(len, out.len(), "value of {n}");
        }
    }
}
