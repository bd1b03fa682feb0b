//! The run's effective mount list: the plan's mounts with its copy-on-write mount (a workflow's project
//! directory) prepared as an overlay of its own and shown as a bind of that overlay's view. Computed once, after
//! the root file system; the spec, the executable lookup and the working directory all read this list, never the
//! plan's. The plan itself is never changed.

use std::borrow::Cow;
use std::path::{Path, PathBuf};

use crate::plan::MountSpec;
use crate::run::{rootfs, RunError};

/// The mounts a run makes, in order (later ones shadow earlier ones).
pub struct Mounts<'a> {
    /// No [`MountSpec::Overlay`] in it: the copy-on-write mount is a bind of `overlay_view`, first.
    pub list: Cow<'a, [MountSpec]>,
    /// The host path of the copy-on-write mount's merged view, if the plan has one.
    pub overlay_view: Option<PathBuf>,
}

/// Prepares the plan's copy-on-write mount (at most one), in the run directory, and returns the effective list.
/// Without one, the list is the plan's own.
pub fn effective<'a>(
    planned: &'a [MountSpec],
    run_dir: &Path,
    scratch: &mut rootfs::Scratch,
) -> Result<Mounts<'a>, RunError> {
    let mut overlays = planned.iter().filter_map(|m| match m {
        MountSpec::Overlay { source, destination } => Some((source, destination)),
        _ => None,
    });
    let Some((source, destination)) = overlays.next() else {
        return Ok(Mounts {
            list: Cow::Borrowed(planned),
            overlay_view: None,
        });
    };
    if overlays.next().is_some() {
        return Err(RunError::TwoOverlays);
    }
    // Its own overlay with the host directory as the lower layer, bind-mounted before every other mount, so
    // volumes and artifact mounts below it land on top.
    let view = rootfs::prepare_project(scratch, run_dir, source)?;
    let list = std::iter::once(MountSpec::Bind {
        source: view.clone(),
        destination: destination.clone(),
        read_only: false,
    })
    .chain(
        planned
            .iter()
            .filter(|m| !matches!(m, MountSpec::Overlay { .. }))
            .cloned(),
    )
    .collect();
    Ok(Mounts {
        list: Cow::Owned(list),
        overlay_view: Some(view),
    })
}

/// The last mount (later ones shadow earlier ones) whose destination contains `path`, and the rest of `path`
/// below that destination (relative, empty for the destination itself).
pub fn covering<'a, 'p>(mounts: &'a [MountSpec], path: &'p str) -> Option<(&'a MountSpec, &'p str)> {
    mounts.iter().rev().find_map(|m| {
        let dest = match m {
            MountSpec::Bind { destination, .. }
            | MountSpec::Tmpfs { destination, .. }
            | MountSpec::Overlay { destination, .. } => destination.trim_end_matches('/'),
        };
        let rest = path.strip_prefix(dest)?;
        (rest.is_empty() || rest.starts_with('/')).then(|| (m, rest.trim_start_matches('/')))
    })
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // fixtures in the tests' own temporary directories
mod tests {
    use super::*;

    fn bind(source: &str, destination: &str) -> MountSpec {
        MountSpec::Bind {
            source: source.into(),
            destination: destination.into(),
            read_only: false,
        }
    }

    #[test]
    fn without_an_overlay_the_list_is_the_plans() {
        let planned = vec![bind("/a", "/data"), bind("/b", "/data/sub")];
        let m = effective(
            &planned,
            Path::new("/nonexistent"),
            &mut rootfs::Scratch::new(Path::new("/nonexistent"), None),
        )
        .unwrap();
        assert!(matches!(m.list, Cow::Borrowed(_)));
        assert!(m.overlay_view.is_none());
        assert_eq!(covering(&m.list, "/data/sub/x"), Some((&planned[1], "x")));
        assert_eq!(covering(&m.list, "/data"), Some((&planned[0], "")));
        assert_eq!(covering(&m.list, "/database"), None);
    }

    #[test]
    fn two_overlays_are_refused() {
        let overlay = |d: &str| MountSpec::Overlay {
            source: "/src".into(),
            destination: d.into(),
        };
        let planned = vec![overlay("/a"), overlay("/b")];
        assert!(matches!(
            effective(
                &planned,
                Path::new("/nonexistent"),
                &mut rootfs::Scratch::new(Path::new("/nonexistent"), None)
            ),
            Err(RunError::TwoOverlays)
        ));
    }
}
