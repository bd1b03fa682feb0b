//! Platforms (`os/arch[/variant]`) and choosing one manifest from an index or manifest list.

use std::fmt;
use std::str::FromStr;

use crate::image::manifest::Descriptor;

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Platform {
    pub os: String,
    pub arch: String,
    pub variant: Option<String>,
}

#[derive(Debug, thiserror::Error)]
#[error("invalid platform {0:?}: expected OS/ARCH[/VARIANT], e.g. linux/amd64 or linux/arm64/v8")]
pub struct PlatformError(String);

/// The GOARCH name of the architecture drun was built for (as registries name it).
pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        "arm" => "arm",
        other => other,
    }
}

impl Platform {
    pub fn host() -> Platform {
        Platform {
            os: "linux".into(),
            arch: host_arch().into(),
            variant: None,
        }
    }

    /// Whether an index entry's platform satisfies this request. arm64 images often omit the "v8" variant.
    pub fn matches(&self, os: &str, arch: &str, variant: Option<&str>) -> bool {
        let norm = |v: Option<&str>| match (arch, v) {
            ("arm64", Some("v8")) => None,
            (_, v) => v.map(str::to_string),
        };
        self.os == os && self.arch == arch && (self.variant.is_none() || norm(self.variant.as_deref()) == norm(variant))
    }
}

impl FromStr for Platform {
    type Err = PlatformError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.split('/').collect();
        let ok = |p: &&str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        match parts.as_slice() {
            [os, arch] if ok(os) && ok(arch) => Ok(Platform {
                os: os.to_string(),
                arch: arch.to_string(),
                variant: None,
            }),
            [os, arch, v] if ok(os) && ok(arch) && ok(v) => Ok(Platform {
                os: os.to_string(),
                arch: arch.to_string(),
                variant: Some(v.to_string()),
            }),
            _ => Err(PlatformError(s.to_string())),
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.arch)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// The entry of an index for `want`; the platforms the index has (`os/arch[/variant]`, comma-separated) when it
/// has none for `want`.
pub fn select_platform<'a>(list: &'a [Descriptor], want: &Platform) -> Result<&'a Descriptor, NoPlatform> {
    list.iter()
        .find(|d| {
            d.platform
                .as_ref()
                .is_some_and(|p| want.matches(&p.os, &p.architecture, p.variant.as_deref()))
        })
        .ok_or_else(|| NoPlatform {
            platform: want.clone(),
            available: list
                .iter()
                .filter_map(|d| d.platform.as_ref())
                .map(|p| match &p.variant {
                    Some(v) => format!("{}/{}/{v}", p.os, p.architecture),
                    None => format!("{}/{}", p.os, p.architecture),
                })
                .collect::<Vec<_>>()
                .join(", "),
        })
}

/// An index without a manifest for the platform asked for.
#[derive(Debug, thiserror::Error)]
#[error("no manifest for platform {platform} in the index (available: {available})")]
pub struct NoPlatform {
    pub platform: Platform,
    /// The index's platforms, comma-separated.
    pub available: String,
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // fixtures in the tests' own temporary directories
mod tests {
    use super::*;

    #[test]
    fn parse_and_match() {
        let p: Platform = "linux/arm64/v8".parse().unwrap();
        assert!(p.matches("linux", "arm64", None));
        assert!(p.matches("linux", "arm64", Some("v8")));
        assert!(!p.matches("linux", "amd64", None));
        let arm7: Platform = "linux/arm/v7".parse().unwrap();
        assert!(!arm7.matches("linux", "arm", Some("v6")));
        assert!("linux".parse::<Platform>().is_err());
        assert!("linux/amd64/v1/x".parse::<Platform>().is_err());
        assert_eq!(Platform::host().to_string(), format!("linux/{}", host_arch()));
    }

    #[test]
    fn selects_platform_from_index() {
        use crate::image::manifest::{parse_manifest, ParsedManifest};
        let idx = br#"{"schemaVersion":2,"manifests":[
            {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:1111111111111111111111111111111111111111111111111111111111111111","size":1,"platform":{"os":"linux","architecture":"amd64"}},
            {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:2222222222222222222222222222222222222222222222222222222222222222","size":1,"platform":{"os":"linux","architecture":"arm64","variant":"v8"}}]}"#;
        let Ok(ParsedManifest::Index(list)) = parse_manifest(idx) else {
            panic!("not an index")
        };
        let arm = select_platform(&list, &"linux/arm64".parse().unwrap()).unwrap();
        assert!(arm.digest.hex().starts_with("2222"));
        let err = select_platform(&list, &"linux/s390x".parse().unwrap()).unwrap_err();
        assert_eq!(err.available, "linux/amd64, linux/arm64/v8");
    }
}
