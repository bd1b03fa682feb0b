//! The registry configuration: CA certificates trusted for every registry, and per-registry settings (plain HTTP
//! allowed, CA certificates). Read from files only; never contacts a registry.
//!
//! Files, later ones overriding earlier ones per registry: `/etc/drun/config.toml`, then
//! `$XDG_CONFIG_HOME/drun/config.toml` (default `~/.config/drun/config.toml`); `DRUN_CONFIG=FILE` replaces both.
//!
//! ```toml
//! # the most a container's writable layer may hold where it is kept in memory (a state directory on overlayfs
//! # or NFS); default: half of RAM. `--tmp-size` overrides it.
//! tmp_size = "8g"
//! image_dir = "/shared/drun-images"
//! # bound mksquashfs's caches (its `-mem`) in `pull --squash` and image directory conversions (also
//! # `DRUN_SQUASH_MEM`); default: 256M (mksquashfs's own would be a quarter of RAM)
//! squash_mem = "256M"
//!
//! # extra CA certificates trusted for every registry (PEM files)
//! ca_files = ["/etc/drun/certs/site-ca.pem"]
//!
//! [registries."registry.example.org:5000"]
//! insecure = true                          # allow plain HTTP and unverified TLS for this registry
//! ca_files = ["/etc/drun/certs/reg.pem"]  # CA certificates for this registry only
//! ```
//! Registries on 127.0.0.0/8, `::1` and `localhost` may use plain HTTP without configuration, as in Docker.
//!
//! TLS certificates are verified against the system's CA certificates (`SSL_CERT_FILE` and `SSL_CERT_DIR`
//! replace the system's locations when set) and `ca_files`. A host without any CA certificates (a minimal CI
//! image without the ca-certificates package) uses Mozilla's root certificates instead; plain-HTTP registries
//! never need any.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;

use crate::image::xdg::xdg_dir;

/// The configuration files, merged.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub ca_files: Vec<PathBuf>,
    #[serde(default)]
    pub registries: BTreeMap<String, RegistryConfig>,
    /// The default of `--tmp-size` (see `run/rootfs/memory.rs`).
    #[serde(default, deserialize_with = "size")]
    pub tmp_size: Option<crate::units::ByteSize>,
    /// The default of `--image-dir` (see `image/image_dir.rs`).
    #[serde(default)]
    pub image_dir: Option<PathBuf>,
    /// mksquashfs's `-mem` in conversions (`pull --squash`, `--image-dir`); `DRUN_SQUASH_MEM` overrides it.
    #[serde(default)]
    pub squash_mem: Option<String>,
}

fn size<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<crate::units::ByteSize>, D::Error> {
    let text = String::deserialize(d)?;
    text.parse()
        .ok()
        .filter(|s: &crate::units::ByteSize| s.0 > 0)
        .map(Some)
        .ok_or_else(|| {
            serde::de::Error::custom(format!(
                "invalid size {text:?}: expected a number of bytes above zero, with an optional unit (k, m, g)"
            ))
        })
}

/// The settings of one registry (`[registries."host[:port]"]`).
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    #[serde(default)]
    pub insecure: bool,
    #[serde(default)]
    pub ca_files: Vec<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the config file {path:?}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("invalid config file {path:?}")]
    Parse { path: PathBuf, source: toml::de::Error },
}

impl Config {
    /// Loads the system and user configuration files (missing files are fine).
    pub fn load() -> Result<Config, ConfigError> {
        let files: Vec<PathBuf> = match std::env::var_os("DRUN_CONFIG") {
            Some(f) => vec![PathBuf::from(f)],
            None => {
                let mut v = vec![PathBuf::from("/etc/drun/config.toml")];
                if let Some(dir) = xdg_dir("XDG_CONFIG_HOME", ".config") {
                    v.push(dir.join("drun/config.toml"));
                }
                v
            }
        };
        let mut cfg = Config::default();
        for path in files {
            let text = match crate::sys::safe_fs::read_user_file(&path, 1 << 20) {
                Ok(t) => String::from_utf8_lossy(&t).into_owned(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(source) => return Err(ConfigError::Read { path, source }),
            };
            let more: Config = toml::from_str(&text).map_err(|source| ConfigError::Parse {
                path: path.clone(),
                source,
            })?;
            cfg.ca_files.extend(more.ca_files);
            cfg.registries.extend(more.registries);
            cfg.tmp_size = more.tmp_size.or(cfg.tmp_size);
            cfg.image_dir = more.image_dir.or(cfg.image_dir);
            cfg.squash_mem = more.squash_mem.or(cfg.squash_mem);
        }
        Ok(cfg)
    }

    /// The settings of `host` (`name[:port]`); the defaults when it has none.
    pub fn registry(&self, host: &str) -> RegistryConfig {
        self.registries.get(host).cloned().unwrap_or_default()
    }

    /// Whether plain HTTP may be used for `host` (`name[:port]`).
    pub fn allows_http(&self, host: &str) -> bool {
        self.registry(host).insecure || is_loopback_host(host)
    }
}

/// `localhost`, `127.x.y.z` or `[::1]`, with or without a port.
pub fn is_loopback_host(host: &str) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or(rest)
    } else {
        host.rsplit_once(':').map_or(
            host,
            |(h, p)| {
                if p.bytes().all(|b| b.is_ascii_digit()) {
                    h
                } else {
                    host
                }
            },
        )
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // fixtures in the tests' own temporary directories
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts() {
        for h in [
            "localhost",
            "localhost:5000",
            "127.0.0.1:5000",
            "127.1.2.3",
            "[::1]:5000",
        ] {
            assert!(is_loopback_host(h), "{h}");
        }
        for h in ["docker.io", "10.0.0.1:5000", "localhost.example.com", "128.0.0.1"] {
            assert!(!is_loopback_host(h), "{h}");
        }
    }

    #[test]
    fn parses_registry_table() {
        let cfg: Config = toml::from_str(
            "ca_files = [\"/a.pem\"]\n[registries.\"r.example:5000\"]\ninsecure = true\nca_files = [\"/b.pem\"]\n",
        )
        .unwrap();
        assert!(cfg.allows_http("r.example:5000"));
        assert!(!cfg.allows_http("other.example"));
        assert_eq!(cfg.registry("r.example:5000").ca_files, vec![PathBuf::from("/b.pem")]);
        assert!(toml::from_str::<Config>("[registries.x]\ninsecur = true\n").is_err());
    }
}
