//! The files Docker provides in /etc (`hosts`, `hostname`, `resolv.conf`): written into the run directory and
//! bind-mounted over the image's, so the image's own are never changed.

use std::path::{Path, PathBuf};

use crate::run::{io_error, RunError};

/// Writes the files into `run_dir` and returns each with the container path it is mounted at.
pub fn write(run_dir: &Path, hostname: &str) -> Result<Vec<(PathBuf, &'static str)>, RunError> {
    let hosts = format!(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nff00::0\tip6-mcastprefix\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n127.0.1.1\t{hostname}\n"
    );
    let resolv = crate::sys::safe_fs::read_system("/etc/resolv.conf").unwrap_or_default();
    let files = [
        ("hosts", hosts, "/etc/hosts"),
        ("hostname", format!("{hostname}\n"), "/etc/hostname"),
        ("resolv.conf", resolv, "/etc/resolv.conf"),
    ];
    let mut out = Vec::new();
    for (name, content, dst) in files {
        let p = run_dir.join(name);
        // Bind-mounted into the container, where any of its users reads them; the run directory keeps them from
        // the host's other users.
        crate::sys::safe_fs::write_new(&p, content.as_bytes(), 0o644)
            .map_err(|e| io_error(format!("write {p:?}"))(e))?;
        out.push((p, dst));
    }
    Ok(out)
}
