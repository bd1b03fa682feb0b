//! The host's verbs user-space libraries for an `--rdma` run whose image has none, as CDI-style read-only bind
//! mounts (what the GPU path does for the driver's libraries): `libibverbs.so.1` and, where the host has them,
//! `librdmacm.so.1` and libibverbs's netlink libraries (`libnl-3`, `libnl-route-3`) that the image lacks; the
//! provider plugins of the host's libibverbs directory (`<libdir>/libibverbs/*.so`, with the libraries they link
//! to, such as `libmlx5.so.1`); and the provider list `/etc/libibverbs.d/*.driver`. All at the host's paths,
//! where the host's libibverbs looks for its providers. The run path then refreshes the container's ld cache for
//! them (`gpu::container_ldconfig`).
//!
//! An image that has its own `libibverbs.so.1` keeps it and its own providers: a library and providers of two
//! rdma-core releases are not mixed. Host files are read under [`super::rdma_root`].

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

/// The library whose presence in the image means "the image has its verbs stack".
const VERBS: &str = "libibverbs.so.1";
/// What else is given when the host has it and the image does not (librdmacm and libibverbs's own dependencies).
const COMPANIONS: [&str; 3] = ["librdmacm.so.1", "libnl-3.so.200", "libnl-route-3.so.200"];
/// The most provider plugins and `.driver` files taken (rdma-core ships about 20 of each).
const MAX_ENTRIES: usize = 128;
const DRIVERS_DIR: &str = "/etc/libibverbs.d";

/// Library directories, in the order looked at: the Debian multiarch ones, then the RPM and plain ones.
fn lib_dirs() -> Vec<String> {
    let triplet = format!("{}-linux-gnu", std::env::consts::ARCH);
    vec![
        format!("/usr/lib/{triplet}"),
        format!("/lib/{triplet}"),
        "/usr/lib64".into(),
        "/lib64".into(),
        "/usr/lib".into(),
        "/lib".into(),
    ]
}

/// What an `--rdma` run mounts: (host path, container path) of every file, and which of them are libraries for
/// the ld cache.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct HostLibraries {
    pub mounts: Vec<(PathBuf, String)>,
    pub libraries: Vec<(PathBuf, String)>,
}

fn under(root: &Path, path: &str) -> PathBuf {
    root.join(path.trim_start_matches('/'))
}

/// Whether the image (its root `rootfs`) has `name` in one of the library directories, resolved inside the root.
fn image_has(rootfs: &std::os::fd::OwnedFd, name: &str) -> bool {
    use std::os::fd::AsFd;
    lib_dirs().iter().any(|d| {
        let path = PathBuf::from(format!("{}/{name}", d.trim_start_matches('/')));
        crate::sys::at::open_in_root(rootfs.as_fd(), &path, nix::fcntl::OFlag::O_PATH).is_ok()
    })
}

/// The host's files (under `root`) for an image whose root is `rootfs`; empty when the image has its own verbs
/// library or the host has none.
pub fn for_image(root: &Path, rootfs: &Path) -> HostLibraries {
    let Ok(image) = crate::sys::at::open_dir(rootfs) else {
        return HostLibraries::default();
    };
    if image_has(&image, VERBS) {
        tracing::debug!("the image has its own {VERBS}: the host's verbs libraries are not given");
        return HostLibraries::default();
    }
    host_libraries(root, |name| image_has(&image, name))
}

/// The host's files: `in_image` says which companion libraries the image already has.
fn host_libraries(root: &Path, in_image: impl Fn(&str) -> bool) -> HostLibraries {
    let mut out = HostLibraries::default();
    let Some(dir) = lib_dirs().into_iter().find(|d| under(root, d).join(VERBS).exists()) else {
        return out;
    };
    // The real file of a host library, mounted under its own name (ldconfig then makes the SONAME link).
    let real = |host: &Path| -> Option<(PathBuf, String)> {
        let file = std::fs::canonicalize(host).ok().filter(|p| p.is_file())?;
        let name = file.file_name()?.to_str()?.to_string();
        Some((file, name))
    };
    let add_library = |out: &mut HostLibraries, file: PathBuf, ctr: String| {
        if !out.mounts.iter().any(|(_, c)| *c == ctr) {
            out.mounts.push((file.clone(), ctr.clone()));
            out.libraries.push((file, ctr));
        }
    };
    for name in std::iter::once(VERBS).chain(COMPANIONS.iter().copied().filter(|n| !in_image(n))) {
        if let Some((file, real_name)) = real(&under(root, &dir).join(name)) {
            add_library(&mut out, file, format!("{dir}/{real_name}"));
        }
    }
    // Providers: each plugin at its own path (libibverbs dlopens it there); one that is a link to a library of
    // the directory above (libmlx5-rdmav34.so -> ../libmlx5.so.1.24.44.0) brings that library too.
    let host_dir = std::fs::canonicalize(under(root, &dir)).ok();
    for entry in sorted_entries(&under(root, &dir).join("libibverbs")) {
        let Some(plugin) = entry.file_name().and_then(|n| n.to_str()).map(String::from) else {
            continue;
        };
        if !plugin.ends_with(".so") {
            continue;
        }
        let Some((file, real_name)) = real(&entry) else {
            continue;
        };
        out.mounts.push((file.clone(), format!("{dir}/libibverbs/{plugin}")));
        if file.parent().map(Path::to_path_buf) == host_dir {
            add_library(&mut out, file, format!("{dir}/{real_name}"));
        }
    }
    for entry in sorted_entries(&under(root, DRIVERS_DIR)) {
        let Some(name) = entry.file_name().and_then(|n| n.to_str()).map(String::from) else {
            continue;
        };
        if name.ends_with(".driver") && entry.is_file() {
            out.mounts.push((entry, format!("{DRIVERS_DIR}/{name}")));
        }
    }
    out
}

/// The entries of a host directory, sorted, at most [`MAX_ENTRIES`]; none when it cannot be read.
fn sorted_entries(dir: &Path) -> Vec<PathBuf> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .take(MAX_ENTRIES)
        .collect();
    entries.sort();
    entries
}

impl HostLibraries {
    /// Adds the read-only bind mounts to the OCI spec.
    pub fn add_mounts(&self, spec: &mut Value) {
        if let Some(mounts) = spec["mounts"].as_array_mut() {
            for (host, ctr) in &self.mounts {
                mounts.push(json!({"destination": ctr, "type": "bind", "source": host,
                                   "options": ["ro", "nosuid", "nodev", "rbind", "rprivate"]}));
            }
        }
        if !self.mounts.is_empty() {
            tracing::debug!(
                files = self.mounts.len(),
                "the host's verbs libraries are given to the container"
            );
        }
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // fixtures in the tests' own temporary directories
mod tests {
    use super::*;

    fn touch(root: &Path, path: &str) {
        let p = under(root, path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, "").unwrap();
    }

    #[test]
    fn host_files_are_found_and_named_as_on_the_host() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        let dir = lib_dirs()[0].clone();
        touch(root, &format!("{dir}/libibverbs.so.1.14.44.0"));
        std::os::unix::fs::symlink("libibverbs.so.1.14.44.0", under(root, &dir).join("libibverbs.so.1")).unwrap();
        touch(root, &format!("{dir}/libnl-3.so.200"));
        touch(root, &format!("{dir}/libmlx5.so.1.24.44.0"));
        touch(root, &format!("{dir}/libibverbs/README"));
        std::os::unix::fs::symlink(
            "../libmlx5.so.1.24.44.0",
            under(root, &dir).join("libibverbs/libmlx5-rdmav34.so"),
        )
        .unwrap();
        touch(root, "/etc/libibverbs.d/mlx5.driver");
        touch(root, "/etc/libibverbs.d/notes.txt");
        let found = host_libraries(root, |_| false);
        let ctr: Vec<&str> = found.mounts.iter().map(|(_, c)| c.as_str()).collect();
        assert_eq!(
            ctr,
            [
                format!("{dir}/libibverbs.so.1.14.44.0"),
                format!("{dir}/libnl-3.so.200"),
                format!("{dir}/libibverbs/libmlx5-rdmav34.so"),
                format!("{dir}/libmlx5.so.1.24.44.0"),
                "/etc/libibverbs.d/mlx5.driver".to_string(),
            ]
        );
        assert_eq!(found.libraries.len(), 3, "{:?}", found.libraries);
        // A companion the image has is left to it; no host library, nothing.
        assert!(!host_libraries(root, |n| n == "libnl-3.so.200")
            .mounts
            .iter()
            .any(|(_, c)| c.contains("libnl")));
        assert_eq!(host_libraries(&root.join("none"), |_| false), HostLibraries::default());
    }
}
