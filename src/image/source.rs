//! What the user typed as an image, resolved to where it comes from.
//!
//! `busybox` → `docker.io/library/busybox:latest` (Docker's normalisation, done by `oci_client::Reference`);
//! `oci:DIR[:TAG]` → an OCI image layout on disk; `oci-archive:FILE[:TAG]` → such a layout in a tarball (what
//! `podman save --format oci-archive` and `skopeo copy … oci-archive:` write); `docker-archive:FILE` → a
//! `docker save` tarball;
//! `docker://REF` → explicitly a registry reference.

use std::path::{Path, PathBuf};

use oci_client::Reference;

#[derive(Debug, Clone)]
pub enum ImageSource {
    Registry(Reference),
    OciLayout { dir: PathBuf, tag: Option<String> },
    OciArchive { file: PathBuf, tag: Option<String> },
    DockerArchive { file: PathBuf },
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("invalid image reference {input:?}")]
    Reference {
        input: String,
        source: oci_client::ParseError,
    },
    #[error("invalid image source {input:?}: {reason}")]
    Local { input: String, reason: &'static str },
}

fn absolute(p: &str) -> PathBuf {
    let p = Path::new(p);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|d| d.join(p))
            .unwrap_or_else(|_| p.to_path_buf())
    }
}

/// `PATH[:TAG]`: the tag is what follows the last ':' when that part has no '/' (a path may contain ':').
fn path_and_tag(rest: &str) -> (PathBuf, Option<String>) {
    match rest.rsplit_once(':') {
        Some((p, t)) if !t.contains('/') && !p.is_empty() => (absolute(p), Some(t.to_string())),
        _ => (absolute(rest), None),
    }
}

impl ImageSource {
    pub fn parse(input: &str) -> Result<ImageSource, SourceError> {
        for (prefix, expected) in [
            ("oci:", "expected oci:DIR[:TAG]"),
            ("oci-archive:", "expected oci-archive:FILE[:TAG]"),
        ] {
            let Some(rest) = input.strip_prefix(prefix) else {
                continue;
            };
            if rest.is_empty() {
                return Err(SourceError::Local {
                    input: input.into(),
                    reason: expected,
                });
            }
            let (path, tag) = path_and_tag(rest);
            return Ok(if prefix == "oci:" {
                ImageSource::OciLayout { dir: path, tag }
            } else {
                ImageSource::OciArchive { file: path, tag }
            });
        }
        if let Some(rest) = input.strip_prefix("docker-archive:") {
            if rest.is_empty() {
                return Err(SourceError::Local {
                    input: input.into(),
                    reason: "expected docker-archive:FILE",
                });
            }
            return Ok(ImageSource::DockerArchive { file: absolute(rest) });
        }
        let r = input.strip_prefix("docker://").unwrap_or(input);
        let reference = Reference::try_from(r).map_err(|source| SourceError::Reference {
            input: input.to_string(),
            source,
        })?;
        Ok(ImageSource::Registry(reference))
    }

    /// The name an image from this source is recorded under in the store.
    pub fn canonical_name(&self) -> String {
        match self {
            ImageSource::Registry(r) => r.whole(),
            ImageSource::OciLayout { dir, tag } => match tag {
                Some(t) => format!("oci:{}:{t}", dir.display()),
                None => format!("oci:{}", dir.display()),
            },
            ImageSource::OciArchive { file, tag } => match tag {
                Some(t) => format!("oci-archive:{}:{t}", file.display()),
                None => format!("oci-archive:{}", file.display()),
            },
            ImageSource::DockerArchive { file } => format!("docker-archive:{}", file.display()),
        }
    }
}

/// Names under which a typed reference may be recorded (for `rmi`, `inspect`): its canonical form if it parses.
pub fn lookup_names(typed: &str) -> Vec<String> {
    ImageSource::parse(typed)
        .map(|s| vec![s.canonical_name()])
        .unwrap_or_default()
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // fixtures in the tests' own temporary directories
mod tests {
    use super::*;

    #[test]
    fn docker_normalisation() {
        let name = |s: &str| ImageSource::parse(s).unwrap().canonical_name();
        assert_eq!(name("busybox"), "docker.io/library/busybox:latest");
        assert_eq!(name("docker://busybox:1.36"), "docker.io/library/busybox:1.36");
        assert_eq!(
            name("127.0.0.1:5000/drun-test/busybox"),
            "127.0.0.1:5000/drun-test/busybox:latest"
        );
        let d = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        assert_eq!(name(&format!("quay.io/a/b@{d}")), format!("quay.io/a/b@{d}"));
        assert!(ImageSource::parse("not a reference").is_err());
        assert!(ImageSource::parse("library/UPPER").is_err());
    }

    #[test]
    fn local_sources() {
        match ImageSource::parse("oci:/srv/layout:v1").unwrap() {
            ImageSource::OciLayout { dir, tag } => {
                assert_eq!(dir, PathBuf::from("/srv/layout"));
                assert_eq!(tag.as_deref(), Some("v1"));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            ImageSource::parse("oci:/srv/layout").unwrap(),
            ImageSource::OciLayout { tag: None, .. }
        ));
        assert!(matches!(
            ImageSource::parse("docker-archive:/x.tar").unwrap(),
            ImageSource::DockerArchive { .. }
        ));
        assert!(ImageSource::parse("oci:").is_err());
        match ImageSource::parse("oci-archive:/x/image.tar:v2").unwrap() {
            ImageSource::OciArchive { file, tag } => {
                assert_eq!(file, PathBuf::from("/x/image.tar"));
                assert_eq!(tag.as_deref(), Some("v2"));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            ImageSource::parse("oci-archive:/x/image.tar").unwrap(),
            ImageSource::OciArchive { tag: None, .. }
        ));
        assert!(ImageSource::parse("oci-archive:").is_err());
    }
}

/// Property tests: any text is a source or an error (never a panic); a well-formed registry reference keeps its
/// registry, repository and tag; `oci:DIR:TAG` splits at the last colon.
#[cfg(test)]
mod props {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #![proptest_config(crate::props::config())]

        #[test]
        fn any_text_is_a_source_or_an_error(text in "\\PC{0,80}") {
            let _ = ImageSource::parse(&text).map(|s| s.canonical_name());
        }

        #[test]
        fn registry_references_keep_their_parts(
            port in 1024u16..65535,
            repo in "[a-z0-9]{1,8}(/[a-z0-9]{1,8}){0,2}",
            tag in "[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}",
        ) {
            let text = format!("127.0.0.1:{port}/{repo}:{tag}");
            match ImageSource::parse(&text) {
                Ok(src @ ImageSource::Registry(_)) => prop_assert_eq!(src.canonical_name(), text),
                other => prop_assert!(false, "{text:?} gave {other:?}"),
            }
        }

        #[test]
        fn layout_paths_split_at_the_last_colon(
            dir in "/[a-z0-9_:]{1,12}(/[a-z0-9_.]{1,8}){0,2}",
            tag in "[a-z0-9_.-]{1,10}",
        ) {
            match ImageSource::parse(&format!("oci:{dir}:{tag}")) {
                Ok(ImageSource::OciLayout { dir: d, tag: t }) => {
                    prop_assert_eq!(d, PathBuf::from(&dir));
                    prop_assert_eq!(t, Some(tag));
                }
                other => prop_assert!(false, "{other:?}"),
            }
        }
    }
}
