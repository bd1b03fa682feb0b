//! Mounting an overlay whatever the number of its lower layers.
//!
//! mount(2) takes the options as one string of at most a page (the kernel copies one page, NUL included), and
//! every lower layer is a path in it: 45 store paths of ~90 characters already exceed 4 KiB, and NVIDIA's NGC images
//! have 50–90 layers. Three forms, tried in order:
//!
//! 1. **Options**: `lowerdir=A:B:…` in mount(2)'s data, when it fits (most images; `/proc/mounts` then shows the
//!    store's paths, as Docker's overlay2 does).
//! 2. **`lowerdir+`**: the new mount API (`fsopen`/`fsconfig`/`fsmount`/`move_mount`), one `fsconfig` call per
//!    lower layer, each with a page of its own (Linux ≥ 6.8; older kernels reject the key).
//! 3. **Descriptor paths**: each lower layer opened `O_PATH` and named `/proc/self/fd/N` (17 characters instead of
//!    ~90, so about 220 layers fit a page), resolved by the kernel when the overlay is mounted. It replaces the short
//!    symlinked names containers/storage keeps in `l/`, which need a store-wide directory of links and a `chdir`
//!    (process-wide, and drun has threads) to mount relative paths.
//!
//! Beyond that (or overlayfs's own limit of 500 lower layers) the mount fails and the caller flattens the image.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

use nix::mount::{mount, MsFlags};

/// An overlay to mount: `lowers` top first, as overlayfs lists them.
#[derive(Debug)]
pub struct Overlay<'a> {
    pub lowers: &'a [&'a Path],
    pub upper: &'a Path,
    pub work: &'a Path,
    /// `userxattr`: overlayfs's own attributes in `user.overlay.*` (in a user namespace, Linux ≥ 5.11).
    pub userxattr: bool,
    /// `volatile`: no sync of the upper directory's file system at unmount (Linux ≥ 5.10).
    pub volatile: bool,
    /// `redirect_dir=off,metacopy=off`: the upper directory holds every change in full (a renamed directory is
    /// copied up whole, a changed file's data too), so that it can serve as a layer of its own. With `userxattr`
    /// the kernel refuses both options (EINVAL) and never creates either.
    pub complete_upper: bool,
}

/// How the lower layers were given to the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    Options,
    LowerdirPlus,
    DescriptorPaths,
}

/// Which forms may be used: [`Form::LowerdirPlus`] can be skipped, so that the descriptor paths a pre-6.8 kernel
/// gets are tested on newer ones too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NewApi {
    Allowed,
    Skipped,
}

/// Mounts `o` at `target`; returns the form used. An error is the last form's (EINVAL from an option the kernel
/// lacks, E2BIG when not even the descriptor paths fit a page).
pub fn mount_overlay(target: &Path, o: &Overlay, new_api: NewApi) -> io::Result<Form> {
    let page = page_size();
    let full = options(o, o.lowers.iter().map(|p| escape(p)));
    if full.len() < page {
        legacy(target, &full)?;
        return Ok(Form::Options);
    }
    if new_api == NewApi::Allowed {
        match lowerdir_plus(target, o) {
            Ok(()) => return Ok(Form::LowerdirPlus),
            Err(e) => tracing::debug!(error = %e, "overlayfs has no lowerdir+ here; naming lower layers by descriptor"),
        }
    }
    let fds = o
        .lowers
        .iter()
        .map(|p| crate::sys::at::open_dir(p))
        .collect::<io::Result<Vec<OwnedFd>>>()?;
    let short = options(o, fds.iter().map(|fd| format!("/proc/self/fd/{}", fd.as_raw_fd())));
    if short.len() >= page {
        return Err(io::Error::new(
            io::ErrorKind::ArgumentListTooLong,
            format!("{} lower layers do not fit overlayfs's mount options", o.lowers.len()),
        ));
    }
    legacy(target, &short)?;
    // The overlay holds its own references to the layers: the descriptors may close now.
    drop(fds);
    Ok(Form::DescriptorPaths)
}

fn page_size() -> usize {
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .and_then(|n| usize::try_from(n).ok())
        .unwrap_or(4096)
}

/// overlayfs splits its options at `,` and lower directories at `:`, both escapable with a backslash.
fn escape(p: &Path) -> String {
    p.display()
        .to_string()
        .replace('\\', "\\\\")
        .replace(':', "\\:")
        .replace(',', "\\,")
}

fn options(o: &Overlay, lowers: impl Iterator<Item = String>) -> String {
    let lower = lowers.collect::<Vec<_>>().join(":");
    let mut data = format!(
        "lowerdir={lower},upperdir={},workdir={}",
        escape(o.upper),
        escape(o.work)
    );
    if o.userxattr {
        data.push_str(",userxattr");
    }
    if o.volatile {
        data.push_str(",volatile");
    }
    if o.complete_upper && !o.userxattr {
        data.push_str(",redirect_dir=off,metacopy=off");
    }
    data
}

fn legacy(target: &Path, data: &str) -> io::Result<()> {
    mount(Some("overlay"), target, Some("overlay"), MsFlags::empty(), Some(data)).map_err(io::Error::from)
}

/// The new mount API: paths are given one by one, unescaped, each up to a page.
fn lowerdir_plus(target: &Path, o: &Overlay) -> io::Result<()> {
    use rustix::mount::{
        fsconfig_create, fsconfig_set_flag, fsconfig_set_string, fsmount, fsopen, move_mount, FsMountFlags,
        FsOpenFlags, MountAttrFlags, MoveMountFlags,
    };
    let fs = fsopen("overlay", FsOpenFlags::FSOPEN_CLOEXEC)?;
    for l in o.lowers {
        fsconfig_set_string(&fs, "lowerdir+", *l)?;
    }
    fsconfig_set_string(&fs, "upperdir", o.upper)?;
    fsconfig_set_string(&fs, "workdir", o.work)?;
    if o.userxattr {
        fsconfig_set_flag(&fs, "userxattr")?;
    }
    if o.volatile {
        fsconfig_set_flag(&fs, "volatile")?;
    }
    if o.complete_upper && !o.userxattr {
        fsconfig_set_string(&fs, "redirect_dir", "off")?;
        fsconfig_set_string(&fs, "metacopy", "off")?;
    }
    fsconfig_create(&fs)?;
    let mnt = fsmount(&fs, FsMountFlags::FSMOUNT_CLOEXEC, MountAttrFlags::empty())?;
    move_mount(
        &mnt,
        "",
        rustix::fs::CWD,
        target,
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn separators_in_paths_are_escaped() {
        assert_eq!(escape(Path::new("/a:b,c\\d")), "/a\\:b\\,c\\\\d");
        let lowers = [Path::new("/l1"), Path::new("/l2")];
        let o = Overlay {
            lowers: &lowers,
            upper: Path::new("/u"),
            work: Path::new("/w"),
            userxattr: true,
            volatile: false,
            complete_upper: false,
        };
        assert_eq!(
            options(&o, o.lowers.iter().map(|p| escape(p))),
            "lowerdir=/l1:/l2,upperdir=/u,workdir=/w,userxattr"
        );
    }
}
