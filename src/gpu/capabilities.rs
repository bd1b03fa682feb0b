//! `NVIDIA_DRIVER_CAPABILITIES`: which driver libraries and utilities each capability (compute, utility, video,
//! graphics, ngx) brings into a container, after libnvidia-container's lists. Tables and parsing only.

/// Library groups of `NVIDIA_DRIVER_CAPABILITIES` (libnvidia-container's lists).
pub const CAPABILITY_LIBS: &[(&str, &[&str])] = &[
    ("utility", &["libnvidia-ml", "libnvidia-cfg", "libnvidia-nscq"]),
    (
        "compute",
        &[
            "libcuda",
            "libcudadebugger",
            "libnvidia-opencl",
            "libnvidia-gpucomp",
            "libnvidia-ptxjitcompiler",
            "libnvidia-fatbinaryloader",
            "libnvidia-allocator",
            "libnvidia-compiler",
            "libnvidia-pkcs11",
            "libnvidia-pkcs11-openssl3",
            "libnvidia-nvvm",
        ],
    ),
    (
        "video",
        &[
            "libvdpau_nvidia",
            "libnvidia-encode",
            "libnvidia-opticalflow",
            "libnvcuvid",
        ],
    ),
    (
        "graphics",
        &[
            "libnvidia-eglcore",
            "libnvidia-glcore",
            "libnvidia-tls",
            "libnvidia-glsi",
            "libnvidia-fbc",
            "libnvidia-ifr",
            "libnvidia-rtcore",
            "libnvoptix",
            "libGLX_nvidia",
            "libEGL_nvidia",
            "libGLESv2_nvidia",
            "libGLESv1_CM_nvidia",
            "libnvidia-glvkspirv",
            "libnvidia-cbl",
        ],
    ),
    ("ngx", &["libnvidia-ngx"]),
];

/// Utility binaries and the capability that brings them.
pub const BINARIES: &[(&str, &str)] = &[
    ("nvidia-smi", "utility"),
    ("nvidia-debugdump", "utility"),
    ("nvidia-persistenced", "utility"),
    ("nvidia-cuda-mps-control", "compute"),
    ("nvidia-cuda-mps-server", "compute"),
];

/// The capability group of a library file name, if it is a known driver library.
pub fn library_capability(file: &str) -> Option<&'static str> {
    let stem = file.split(".so").next()?;
    CAPABILITY_LIBS
        .iter()
        .find(|(_, libs)| libs.contains(&stem))
        .map(|(cap, _)| *cap)
}

/// The capabilities named by `NVIDIA_DRIVER_CAPABILITIES` (unset or empty: compute and utility).
pub fn capabilities(value: Option<&str>) -> Vec<String> {
    let v = value.map(str::trim).unwrap_or("");
    if v.is_empty() {
        return vec!["compute".into(), "utility".into()];
    }
    let caps: Vec<String> = v
        .split(',')
        .map(|c| c.trim().to_string())
        .filter(|c| !c.is_empty())
        .collect();
    if caps.iter().any(|c| c == "all") {
        return vec!["all".into()];
    }
    caps
}

/// Whether `caps` (from [`capabilities`]) include `cap`.
pub(super) fn wants(caps: &[String], cap: &str) -> bool {
    caps.iter().any(|c| c == "all" || c == cap)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capability_groups() {
        assert_eq!(library_capability("libcuda.so.550.54.15"), Some("compute"));
        assert_eq!(library_capability("libnvidia-ml.so.550.54.15"), Some("utility"));
        assert_eq!(library_capability("libnvidia-encode.so.1"), Some("video"));
        assert_eq!(library_capability("libsomething.so.1"), None);
        assert_eq!(capabilities(None), ["compute", "utility"]);
        assert_eq!(capabilities(Some("video, compute")), ["video", "compute"]);
        assert_eq!(capabilities(Some("compute,all")), ["all"]);
        assert!(wants(&capabilities(Some("all")), "graphics"));
        assert!(!wants(&capabilities(None), "video"));
    }
}
