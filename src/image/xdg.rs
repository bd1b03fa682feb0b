//! XDG base directories: where an ordinary user's configuration and store live by default.

use std::path::{Path, PathBuf};

/// `$VAR` if set and absolute, else `$HOME/<fallback>`.
pub fn xdg_dir(var: &str, fallback: &str) -> Option<PathBuf> {
    match std::env::var_os(var).map(PathBuf::from) {
        Some(p) if p.is_absolute() => Some(p),
        _ => std::env::var_os("HOME").map(|h| Path::new(&h).join(fallback)),
    }
}
