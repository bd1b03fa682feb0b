//! The walk through one layer tarball: each entry is checked and created below the layer directory —
//! directories, regular files, symlinks and device nodes here, whiteouts and hardlinks in their own files — and
//! directories' modes and times are applied at the end. Never writes outside the layer directory.

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;
use std::sync::Arc;

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::{
    fchmod, fchmodat, futimens, mkdirat, mknodat, utimensat, FchmodatFlags, Mode, SFlag, UtimensatFlags,
};
use nix::sys::time::TimeSpec;
use nix::unistd::{fchown, Gid, Uid};

use super::header_budget::for_each_entry;
use super::names::components;
use super::tar_fields::{device_numbers, header_fields, pax_extras};
use super::whiteouts::{markers_forced, OPAQUE_MARKER, WHITEOUT_PREFIX};
use super::writer_pool::{finish_file, WriteJob, WriteTask, WriterPool, POOL_FILE_MAX};
use super::{LowerLink, Markers, UnpackError, UnpackOptions, UnpackStats, Unpacked, MAX_NAME, MAX_TRACKED};
use crate::sys::at::{
    chown_at, create_dirs_in_root, create_new_at, is_dir_at, open_dir, open_in_root, relative_path, remove_at,
    set_xattr,
};

/// Per-path overhead counted against [`MAX_TRACKED`] (allocation and index entries).
pub(super) const TRACKED_OVERHEAD: usize = 96;
/// Jobs given to the writer pool between two barriers at most: bounds the set of their paths.
const PENDING_MAX: usize = 4096;

/// Counts the paths kept in memory across entries against [`MAX_TRACKED`].
pub(super) struct TrackedPaths(usize);

impl TrackedPaths {
    pub(super) fn add(&mut self, len: usize) -> Result<(), UnpackError> {
        self.0 += len + TRACKED_OVERHEAD;
        if self.0 > MAX_TRACKED {
            return Err(UnpackError::TooManyPaths { limit: MAX_TRACKED });
        }
        Ok(())
    }
}

/// A directory whose mode and times are applied once the layer is unpacked.
struct DirMeta {
    /// The directory's path below the layer root, as [`relative_path`] makes it.
    path: Vec<u8>,
    depth: usize,
    mode: u32,
    mtime: TimeSpec,
}

/// Where an entry goes: the directory that holds it, its name there, its path below the layer root (as
/// [`relative_path`] makes it) and its name for messages.
pub(super) struct Place<'n> {
    pub parent: OwnedFd,
    pub name: &'n OsStr,
    pub key: Vec<u8>,
    pub shown: String,
}

impl Place<'_> {
    /// The error for a failed operation on this entry.
    pub(super) fn error(&self, source: impl Into<io::Error>) -> UnpackError {
        UnpackError::Entry {
            path: self.shown.clone(),
            source: source.into(),
        }
    }
}

/// What an entry's header (and PAX records) say it should be given.
struct EntryMeta {
    /// Permission bits, already reduced for an unprivileged unpacker.
    mode: u32,
    owner: Option<(u32, u32)>,
    times: TimeSpec,
    xattrs: Vec<(String, Vec<u8>)>,
}

/// One layer being unpacked: what is remembered across its entries.
pub(super) struct Extraction<'r> {
    pub root: BorrowedFd<'r>,
    pub opts: UnpackOptions,
    /// `DRUN_WHITEOUTS=markers` (see [`markers_forced`]).
    pub force_markers: bool,
    pub stats: UnpackStats,
    pub lower_links: Vec<LowerLink>,
    pub markers: Markers,
    /// Whiteouts of this layer kept as markers (see the hardlink case).
    pub whited: HashSet<Vec<u8>>,
    pub tracked: TrackedPaths,
    dirs: Vec<DirMeta>,
    dir_index: HashMap<Vec<u8>, usize>,
    pool: WriterPool,
    /// Paths with a job in the pool since the last barrier.
    pending: HashSet<Vec<u8>>,
}

/// Unpacks the tar stream `src` into the existing, empty directory `dest`.
pub fn unpack_layer<R: Read>(src: R, dest: &Path, opts: UnpackOptions) -> Result<Unpacked, UnpackError> {
    let root_fd = open_dir(dest).map_err(|source| UnpackError::Entry {
        path: dest.display().to_string(),
        source,
    })?;
    let mut layer = Extraction {
        root: root_fd.as_fd(),
        opts,
        force_markers: markers_forced(),
        stats: UnpackStats::default(),
        lower_links: Vec::new(),
        markers: Markers::default(),
        whited: HashSet::new(),
        tracked: TrackedPaths(0),
        dirs: Vec::new(),
        dir_index: HashMap::new(),
        pool: WriterPool::new(),
        pending: HashSet::new(),
    };
    for_each_entry(src, |entry| layer.entry(entry))?;
    layer.finish()
}

impl Extraction<'_> {
    /// Unpacks one entry.
    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<(), UnpackError> {
        self.stats.entries += 1;
        let kind = entry.header().entry_type();
        let raw = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw).into_owned();
        let comps = components(&raw)?;
        let Some((&name, parent_comps)) = comps.split_last() else {
            // "./" or "/": the layer root itself; its metadata belongs to the image's root, not to a layer.
            return Ok(());
        };
        let key = relative_path(&comps).into_os_string().into_vec();
        // Whiteouts and hardlinks may touch any earlier path; anything else only its own.
        let ordered = matches!(kind, tar::EntryType::Link) || name.as_bytes().starts_with(WHITEOUT_PREFIX.as_bytes());
        if !self.pending.is_empty() && (ordered || self.pending.contains(&key) || self.pending.len() >= PENDING_MAX) {
            self.pool.barrier()?;
            self.pending.clear();
        }
        let parent = create_dirs_in_root(self.root, parent_comps).map_err(|source| UnpackError::Entry {
            path: shown.clone(),
            source,
        })?;
        let place = Place {
            parent,
            name,
            key,
            shown,
        };

        if name.as_bytes() == OPAQUE_MARKER.as_bytes() {
            return self.opaque_marker(&place, parent_comps);
        }
        if let Some(target) = name.as_bytes().strip_prefix(WHITEOUT_PREFIX.as_bytes()) {
            return self.whiteout(&place, parent_comps, target);
        }

        let fields = header_fields(entry.header()).map_err(|source| UnpackError::Header {
            path: place.shown.clone(),
            source,
        })?;
        let extras = pax_extras(entry).map_err(|e| place.error(e))?;
        let meta = EntryMeta {
            mode: if self.opts.unprivileged {
                fields.mode & 0o1777
            } else {
                fields.mode
            },
            owner: self.opts.owner(fields.uid, fields.gid),
            times: extras.mtime.unwrap_or_else(|| TimeSpec::new(fields.mtime, 0)),
            xattrs: extras.xattrs,
        };
        match kind {
            tar::EntryType::Directory => self.directory(place, comps.len(), meta),
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                self.regular_file(entry, place, meta)
            }
            tar::EntryType::Symlink => {
                let target = link_target(entry, &place, "symlink")?;
                self.pool.submit(WriteTask {
                    parent: Arc::new(place.parent),
                    name: name.to_owned(),
                    shown: place.shown,
                    owner: meta.owner,
                    times: meta.times,
                    job: WriteJob::Symlink { target },
                })?;
                self.pending.insert(place.key);
                Ok(())
            }
            tar::EntryType::Link => {
                let target = link_target(entry, &place, "hardlink")?;
                self.hardlink(&place, &raw, &comps, target)
            }
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                self.device_node(entry.header(), kind, &place, &meta)
            }
            other => Err(UnpackError::Unsupported {
                path: place.shown,
                kind: other,
            }),
        }
    }

    fn directory(&mut self, place: Place<'_>, depth: usize, meta: EntryMeta) -> Result<(), UnpackError> {
        let pfd = place.parent.as_fd();
        if !is_dir_at(pfd, place.name) {
            remove_at(pfd, place.name).map_err(|e| place.error(e))?;
            mkdirat(pfd, place.name, Mode::from_bits_truncate(0o700)).map_err(|e| place.error(e))?;
        }
        let dir = open_in_root(
            self.root,
            Path::new(OsStr::from_bytes(&place.key)),
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW,
        )
        .map_err(|e| place.error(e))?;
        if let Some((uid, gid)) = meta.owner {
            fchown(dir.as_fd(), Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid))).map_err(|e| place.error(e))?;
        }
        for (k, v) in &meta.xattrs {
            set_xattr(dir.as_fd(), k, v).map_err(|e| place.error(e))?;
        }
        // Mode and times are applied last: creating children would change the times, and a read-only
        // directory would stop an unprivileged unpacker from filling it.
        let key = place.key;
        let dir_meta = DirMeta {
            path: key.clone(),
            depth,
            mode: meta.mode,
            mtime: meta.times,
        };
        match self.dir_index.get(&key) {
            Some(&i) => self.dirs[i] = dir_meta,
            None => {
                self.tracked.add(2 * key.len())?;
                self.dir_index.insert(key, self.dirs.len());
                self.dirs.push(dir_meta);
            }
        }
        Ok(())
    }

    /// A small file is read whole and handed to the writer pool; a large one is streamed here.
    fn regular_file<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        place: Place<'_>,
        meta: EntryMeta,
    ) -> Result<(), UnpackError> {
        let size = entry.size();
        if size <= POOL_FILE_MAX {
            let mut data = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
            entry
                .take(POOL_FILE_MAX)
                .read_to_end(&mut data)
                .map_err(UnpackError::Read)?;
            self.stats.bytes += data.len() as u64;
            self.pool.submit(WriteTask {
                parent: Arc::new(place.parent),
                name: place.name.to_owned(),
                shown: place.shown,
                owner: meta.owner,
                times: meta.times,
                job: WriteJob::File {
                    data,
                    mode: meta.mode,
                    xattrs: meta.xattrs,
                },
            })?;
            self.pending.insert(place.key);
            return Ok(());
        }
        let pfd = place.parent.as_fd();
        remove_at(pfd, place.name).map_err(|e| place.error(e))?;
        let mut file = create_new_at(pfd, place.name).map_err(|e| place.error(e))?;
        self.stats.bytes += io::copy(entry, &mut file).map_err(|e| place.error(e))?;
        finish_file(&file, meta.owner, meta.mode, &meta.xattrs, &meta.times).map_err(|e| place.error(e))
    }

    /// A character or block device (skipped, and counted, when unprivileged), or a FIFO.
    fn device_node(
        &mut self,
        header: &tar::Header,
        kind: tar::EntryType,
        place: &Place<'_>,
        meta: &EntryMeta,
    ) -> Result<(), UnpackError> {
        if self.opts.unprivileged && kind != tar::EntryType::Fifo {
            self.stats.skipped_devices += 1;
            return Ok(());
        }
        let numbers = || {
            device_numbers(header).map_err(|source| UnpackError::Header {
                path: place.shown.clone(),
                source,
            })
        };
        let (sflag, (major, minor)) = match kind {
            tar::EntryType::Char => (SFlag::S_IFCHR, numbers()?),
            tar::EntryType::Block => (SFlag::S_IFBLK, numbers()?),
            // A FIFO has no device numbers: its header fields are not read (tools leave them blank).
            _ => (SFlag::S_IFIFO, (0, 0)),
        };
        let (pfd, name) = (place.parent.as_fd(), place.name);
        remove_at(pfd, name).map_err(|e| place.error(e))?;
        mknodat(
            pfd,
            name,
            sflag,
            Mode::from_bits_truncate(0o600),
            nix::sys::stat::makedev(major.into(), minor.into()),
        )
        .map_err(|e| place.error(e))?;
        if let Some((uid, gid)) = meta.owner {
            chown_at(pfd, name, uid, gid).map_err(|e| place.error(e))?;
        }
        fchmodat(
            pfd,
            name,
            Mode::from_bits_truncate(meta.mode),
            FchmodatFlags::FollowSymlink,
        )
        .map_err(|e| place.error(e))?;
        utimensat(pfd, name, &meta.times, &meta.times, UtimensatFlags::NoFollowSymlink).map_err(|e| place.error(e))
    }

    /// Waits for the writers, then applies the directories' modes and times, deepest first, so that a parent's
    /// mtime is set after its children's metadata changes.
    fn finish(mut self) -> Result<Unpacked, UnpackError> {
        self.pool.barrier()?;
        drop(self.pool);
        self.dirs.sort_by_key(|d| std::cmp::Reverse(d.depth));
        for d in self.dirs {
            let path = Path::new(OsStr::from_bytes(&d.path));
            let shown = path.display().to_string();
            let wrap = |e: Errno| UnpackError::Entry {
                path: shown.clone(),
                source: e.into(),
            };
            // A later entry may have replaced the directory; then there is nothing to finish.
            let dir = match open_in_root(
                self.root,
                path,
                OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW,
            ) {
                Ok(fd) => fd,
                Err(Errno::ENOENT | Errno::ENOTDIR | Errno::ELOOP) => continue,
                Err(e) => return Err(wrap(e)),
            };
            fchmod(dir.as_fd(), Mode::from_bits_truncate(d.mode)).map_err(wrap)?;
            futimens(dir.as_fd(), &d.mtime, &d.mtime).map_err(wrap)?;
        }
        if !self.markers.is_empty() {
            tracing::debug!(
                whiteouts = self.markers.whiteouts.len(),
                opaque = self.markers.opaque.len(),
                "whiteouts kept as markers: root file systems with this layer get them as a layer of their own"
            );
        }
        Ok(Unpacked {
            stats: self.stats,
            lower_links: self.lower_links,
            markers: self.markers,
        })
    }
}

/// The target of a symlink or hardlink entry (`what`), at most [`MAX_NAME`] bytes.
fn link_target<R: Read>(
    entry: &tar::Entry<'_, R>,
    place: &Place<'_>,
    what: &'static str,
) -> Result<Vec<u8>, UnpackError> {
    let target = entry
        .link_name_bytes()
        .ok_or_else(|| place.error(io::Error::other(format!("{what} without target"))))?;
    if target.len() > MAX_NAME {
        return Err(UnpackError::NameTooLong {
            path: place.shown.clone(),
            what: "link target",
            limit: MAX_NAME,
        });
    }
    Ok(target.into_owned())
}
