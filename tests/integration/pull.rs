//! `drun pull` from every kind of source and registry, and its errors.

use crate::common::*;

fn busybox() -> String {
    format!("{}/drun-test/busybox:latest", registry())
}

#[test]
fn multi_arch_index_resolves_to_the_host_platform() {
    let sb = Sandbox::new();
    let out = sb.drun(&["pull", &busybox()]).ok();
    assert!(out.stdout.trim().starts_with("sha256:"), "{}", out.stdout);
    // Not a terminal: one summary line, no progress bars.
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
    assert!(
        out.stderr.contains("pulled (1 layers: 1 fetched, 0 reused"),
        "{}",
        out.stderr
    );
    let roots = sb.layer_roots(&busybox());
    assert_eq!(read_in_layers(&roots, "etc/drun-arch").unwrap().trim(), "amd64");
    assert!(roots[0].join("bin/busybox").is_file());

    sb.drun(&["pull", "--platform", "linux/arm64", &busybox()]).ok();
    let roots = sb.layer_roots(&busybox());
    assert_eq!(read_in_layers(&roots, "etc/drun-arch").unwrap().trim(), "arm64");

    sb.drun(&["pull", "--platform", "linux/s390x", &busybox()]).fails_with(
        125,
        &["no manifest for platform linux/s390x", "linux/amd64", "linux/arm64"],
    );
    sb.drun(&["pull", "--platform", "linux", &busybox()])
        .fails_with(125, &["invalid platform \"linux\""]);
}

#[test]
fn warm_repull_fetches_nothing() {
    let sb = Sandbox::new();
    let first = sb.drun(&["pull", &busybox()]).ok();
    let again = sb.drun(&["pull", &busybox()]).ok();
    assert_eq!(first.stdout, again.stdout);
    assert!(
        again.stderr.contains("up to date (1 layers: 0 fetched, 1 reused"),
        "{}",
        again.stderr
    );
}

#[test]
fn docker_schema2_manifest_list_and_manifest() {
    let sb = Sandbox::new();
    let list = format!("{}/drun-test/busybox:docker", registry());
    sb.drun(&["pull", &list]).ok();
    let doc: serde_json::Value = serde_json::from_str(&sb.drun(&["inspect", &list]).ok().stdout).unwrap();
    assert_eq!(
        doc["Manifest"]["mediaType"],
        "application/vnd.docker.distribution.manifest.v2+json"
    );
    assert!(doc["IndexDigest"].is_string(), "a manifest list was resolved: {doc}");
    assert!(doc["Layers"][0]["media_type"]
        .as_str()
        .unwrap()
        .starts_with("application/vnd.docker.image.rootfs.diff.tar"));
    assert_eq!(
        read_in_layers(&sb.layer_roots(&list), "etc/drun-arch").unwrap().trim(),
        "amd64"
    );

    let deb = format!("{}/drun-test/debian:bookworm-docker", registry());
    sb.drun(&["pull", "-q", &deb]).ok();
    let doc: serde_json::Value = serde_json::from_str(&sb.drun(&["inspect", &deb]).ok().stdout).unwrap();
    assert_eq!(
        doc["Manifest"]["mediaType"],
        "application/vnd.docker.distribution.manifest.v2+json"
    );
    assert!(doc["IndexDigest"].is_null());
}

#[test]
fn gzip_zstd_and_plain_layers_share_unpacked_layers() {
    let sb = Sandbox::new();
    let gz = format!("{}/drun-test/debian:bookworm", registry());
    let zst = format!("{}/drun-test/debian:bookworm-zstd", registry());
    let first = sb.drun(&["pull", &gz]).ok();
    let n: usize = sb.entries("layers/host").len();
    assert!(n >= 3, "debian has at least 3 layers, store has {n}");
    assert!(
        first.stderr.contains(&format!("{n} fetched, 0 reused")),
        "{}",
        first.stderr
    );
    // The zstd variant has other blob digests but the same diff_ids: nothing is downloaded again.
    let second = sb.drun(&["pull", &zst]).ok();
    assert!(
        second.stderr.contains(&format!("({n} layers: 0 fetched, {n} reused")),
        "{}",
        second.stderr
    );
    let doc: serde_json::Value = serde_json::from_str(&sb.drun(&["inspect", &zst]).ok().stdout).unwrap();
    assert!(doc["Layers"]
        .as_array()
        .unwrap()
        .iter()
        .all(|l| l["media_type"].as_str().unwrap().ends_with("+zstd")));

    // In a fresh store, the zstd image unpacks to the same trees.
    let sb2 = Sandbox::new();
    sb2.drun(&["pull", "-q", &zst]).ok();
    let mut a = sb.entries("layers/host");
    let mut b = sb2.entries("layers/host");
    a.sort();
    b.sort();
    assert_eq!(a, b);

    let plain = format!("{}/drun-test/busybox:uncompressed", registry());
    sb2.drun(&["pull", "-q", &plain]).ok();
    let doc: serde_json::Value = serde_json::from_str(&sb2.drun(&["inspect", &plain]).ok().stdout).unwrap();
    assert_eq!(doc["Layers"][0]["media_type"], "application/vnd.oci.image.layer.v1.tar");
    assert!(sb2.layer_roots(&plain)[0].join("bin/busybox").is_file());
}

#[test]
fn pull_by_digest_and_reference_normalisation() {
    let sb = Sandbox::new();
    let digest = sb.drun(&["pull", "-q", &busybox()]).ok().stdout.trim().to_string();
    // -q prints only the digest.
    let by_digest = format!("{}/drun-test/busybox@{digest}", registry());
    let out = sb.drun(&["pull", &by_digest]).ok();
    assert_eq!(out.stdout.trim(), digest);
    let list = sb.drun(&["images", "--json"]).ok();
    let imgs: serde_json::Value = serde_json::from_str(&list.stdout).unwrap();
    let names: Vec<&str> = imgs
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&by_digest.as_str()), "{names:?}");
    // A wrong digest is refused by the registry or by drun, never stored.
    let wrong = format!("{}/drun-test/busybox@sha256:{}", registry(), "0".repeat(64));
    sb.drun(&["pull", &wrong])
        .fails_with(125, &["error: failed to pull", "not found"]);
}

#[test]
fn unknown_image_names_the_reference_and_the_registry_answer() {
    let sb = Sandbox::new();
    let missing = format!("{}/drun-test/no-such-image:latest", registry());
    let out = sb
        .drun(&["pull", &missing])
        .fails_with(125, &["error: failed to pull", &missing, "Caused by:"]);
    assert!(
        out.stderr.contains("NameUnknown") || out.stderr.contains("ManifestUnknown"),
        "{}",
        out.stderr
    );
    let tag = format!("{}/drun-test/busybox:no-such-tag", registry());
    sb.drun(&["pull", &tag]).fails_with(125, &[&tag, "ManifestUnknown"]);
    assert!(sb.drun(&["images", "-q"]).ok().stdout.is_empty());
    sb.drun(&["pull", "Not A Reference"])
        .fails_with(125, &["invalid image reference"]);
}

#[test]
fn unreachable_registry_fails_clearly() {
    let sb = Sandbox::new();
    // Port 9 (discard) on loopback: nothing listens there.
    sb.drun(&["pull", "127.0.0.1:9/x/y:z"])
        .fails_with(125, &["127.0.0.1:9", "unreachable"]);
}

#[test]
fn basic_auth_from_docker_config_and_wrong_credentials() {
    use base64::Engine as _;
    let sb = Sandbox::new();
    let reg = env("DRUN_TEST_REGISTRY_BASIC");
    let image = format!("{reg}/drun-test/busybox:latest");
    // Anonymous: refused.
    sb.drun(&["pull", &image])
        .fails_with(125, &[&image, "refused the credentials", &reg]);

    let docker_dir = sb.path().join("docker");
    std::fs::create_dir_all(&docker_dir).unwrap();
    let write = |user: &str, pass: &str| {
        let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
        std::fs::write(
            docker_dir.join("config.json"),
            format!(r#"{{"auths":{{"{reg}":{{"auth":"{auth}"}}}}}}"#),
        )
        .unwrap();
    };
    write(&env("DRUN_TEST_USER"), "wrong-password");
    let out = sb.drun_with(&["pull", &image], &[("DOCKER_CONFIG", docker_dir.as_ref())]);
    let out = out.fails_with(125, &["refused the credentials", &reg]);
    assert!(!out.stderr.contains("wrong-password"), "secrets must not be printed");

    write(&env("DRUN_TEST_USER"), &env("DRUN_TEST_PASSWORD"));
    sb.drun_with(&["pull", &image], &[("DOCKER_CONFIG", docker_dir.as_ref())])
        .ok();
}

#[test]
fn containers_auth_json_and_registry_auth_file() {
    let sb = Sandbox::new();
    let reg = env("DRUN_TEST_REGISTRY_BASIC");
    let image = format!("{reg}/drun-test/busybox:latest");
    let body = format!(
        r#"{{"auths":{{"{reg}":{{"username":"{}","password":"{}"}}}}}}"#,
        env("DRUN_TEST_USER"),
        env("DRUN_TEST_PASSWORD")
    );
    // ${XDG_RUNTIME_DIR}/containers/auth.json (the sandbox sets XDG_RUNTIME_DIR).
    let xdg = sb.path().join("xdg/containers");
    std::fs::create_dir_all(&xdg).unwrap();
    std::fs::write(xdg.join("auth.json"), &body).unwrap();
    sb.drun(&["pull", "-q", &image]).ok();
    std::fs::remove_file(xdg.join("auth.json")).unwrap();

    let file = sb.path().join("auth-file.json");
    std::fs::write(&file, &body).unwrap();
    let sb2 = Sandbox::new();
    sb2.drun_with(&["pull", "-q", &image], &[("REGISTRY_AUTH_FILE", file.as_ref())])
        .ok();
}

#[test]
fn credential_helper_from_cred_helpers() {
    let sb = Sandbox::new();
    let reg = env("DRUN_TEST_REGISTRY_BASIC");
    let image = format!("{reg}/drun-test/busybox:latest");
    let bin = sb.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let helper = bin.join("docker-credential-druntest");
    // The helper records what it was asked, so the test sees the protocol was followed.
    std::fs::write(
        &helper,
        format!(
            "#!/bin/sh\n[ \"$1\" = get ] || exit 1\nread server\necho \"$server\" > {}/asked\nprintf '{{\"ServerURL\":\"%s\",\"Username\":\"{}\",\"Secret\":\"{}\"}}' \"$server\"\n",
            sb.path().display(),
            env("DRUN_TEST_USER"),
            env("DRUN_TEST_PASSWORD")
        ),
    )
    .unwrap();
    std::fs::set_permissions(&helper, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let docker_dir = sb.path().join("docker");
    std::fs::create_dir_all(&docker_dir).unwrap();
    std::fs::write(
        docker_dir.join("config.json"),
        format!(r#"{{"credHelpers":{{"{reg}":"druntest"}}}}"#),
    )
    .unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    sb.drun_with(
        &["pull", "-q", &image],
        &[("DOCKER_CONFIG", docker_dir.as_ref()), ("PATH", path.as_ref())],
    )
    .ok();
    assert_eq!(std::fs::read_to_string(sb.path().join("asked")).unwrap().trim(), reg);

    // credsStore: the same helper for every registry.
    let sb2 = Sandbox::new();
    std::fs::write(docker_dir.join("config.json"), r#"{"credsStore":"druntest"}"#).unwrap();
    sb2.drun_with(
        &["pull", "-q", &image],
        &[("DOCKER_CONFIG", docker_dir.as_ref()), ("PATH", path.as_ref())],
    )
    .ok();
}

#[test]
fn anonymous_bearer_token_flow() {
    let sb = Sandbox::new();
    let image = format!("{}/drun-test/busybox:latest", env("DRUN_TEST_REGISTRY_TOKEN"));
    let out = sb.drun(&["pull", &image, "--log-level", "debug"]).ok();
    assert!(out.stderr.contains("pulled"), "{}", out.stderr);
    assert_eq!(
        read_in_layers(&sb.layer_roots(&image), "etc/drun-arch").unwrap().trim(),
        "amd64"
    );
}

#[test]
fn tls_registry_needs_its_ca_and_works_with_it() {
    let sb = Sandbox::new();
    let image = format!("{}/drun-test/busybox:latest", env("DRUN_TEST_REGISTRY_TLS"));
    sb.drun(&["pull", &image])
        .fails_with(125, &["certificate", "not trusted", "ca_files"]);
    sb.write_config(&format!(
        "[registries.\"{}\"]\nca_files = [\"{}\"]\n",
        env("DRUN_TEST_REGISTRY_TLS"),
        env("DRUN_TEST_CA")
    ));
    sb.drun(&["pull", "-q", &image]).ok();
    // The global list works too.
    let sb2 = Sandbox::new();
    sb2.write_config(&format!("ca_files = [\"{}\"]\n", env("DRUN_TEST_CA")));
    sb2.drun(&["pull", "-q", &image]).ok();
    // A broken config file is an error, not silently ignored.
    sb2.write_config("ca_files = 3\n");
    sb2.drun(&["pull", "-q", &image])
        .fails_with(125, &["invalid config file"]);
}

#[test]
fn oci_layout_and_docker_archive_sources() {
    let sb = Sandbox::new();
    let layout = cache().join("layouts/busybox");
    let src = format!("oci:{}:latest", layout.display());
    sb.drun(&["pull", &src]).ok();
    assert_eq!(
        read_in_layers(&sb.layer_roots(&src), "etc/drun-arch").unwrap().trim(),
        "amd64"
    );
    sb.drun(&["pull", &format!("oci:{}:nope", layout.display())])
        .fails_with(125, &["no image tagged \"nope\""]);

    let archive = cache().join("archives/busybox.tar");
    let sb2 = Sandbox::new();
    let out = sb2
        .drun(&["pull", &format!("docker-archive:{}", archive.display())])
        .ok();
    // Recorded under the archive's RepoTags, normalised like any reference.
    let name = out.stderr.split(':').next().unwrap().to_string();
    assert!(name.contains("drun-test/busybox"), "{}", out.stderr);
    let roots = sb2.layer_roots(&name);
    assert!(roots[0].join("bin/busybox").is_file());
    // The same layers as the registry's image (same diff_ids).
    sb2.drun(&["pull", &busybox()]).ok();
    assert_eq!(sb2.entries("layers/host").len(), 1);

    sb2.drun(&["pull", "docker-archive:/nonexistent.tar"])
        .fails_with(125, &["/nonexistent.tar"]);
}

#[test]
fn tampered_local_blob_is_rejected_and_nothing_is_stored() {
    let sb = Sandbox::new();
    let layout = sb.path().join("layout");
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(cache().join("layouts/busybox"))
        .arg(&layout)
        .status()
        .unwrap();
    assert!(status.success());
    // Flip a byte in the middle of every layer-sized blob (manifests and configs are small).
    for e in std::fs::read_dir(layout.join("blobs/sha256")).unwrap().flatten() {
        let mut data = std::fs::read(e.path()).unwrap();
        if data.len() > 64 * 1024 {
            let mid = data.len() / 2;
            data[mid] ^= 0xff;
            std::fs::write(e.path(), data).unwrap();
        }
    }
    let out = sb.drun(&["pull", &format!("oci:{}:latest", layout.display())]);
    assert_eq!(out.code(), Some(125), "{}", out.stderr);
    assert!(out.stderr.contains("error: failed to pull"), "{}", out.stderr);
    assert!(sb.entries("layers/host").is_empty());
    assert!(sb.entries("tmp").is_empty(), "{:?}", sb.entries("tmp"));
    assert!(sb.entries("images").is_empty());
}

#[test]
fn images_inspect_rmi_prune() {
    let sb = Sandbox::new();
    let deb = format!("{}/drun-test/debian:bookworm", registry());
    sb.drun(&["pull", "-q", &busybox()]).ok();
    sb.drun(&["pull", "-q", &deb]).ok();
    let table = sb.drun(&["images"]).ok().stdout;
    assert!(table.starts_with("REFERENCE"), "{table}");
    assert!(table.contains(&busybox()) && table.contains(&deb), "{table}");
    let json: serde_json::Value = serde_json::from_str(&sb.drun(&["images", "--json"]).ok().stdout).unwrap();
    assert_eq!(json.as_array().unwrap().len(), 2);
    let id = json[0]["config_digest"].as_str().unwrap()[7..19].to_string();
    let doc: serde_json::Value = serde_json::from_str(&sb.drun(&["inspect", &id]).ok().stdout).unwrap();
    assert!(doc["Config"]["rootfs"]["diff_ids"].is_array());

    let layers_before = sb.entries("layers/host").len();
    let out = sb.drun(&["rmi", &deb]).ok();
    assert!(out.stdout.contains(&format!("Untagged: {deb}")));
    assert!(sb.entries("layers/host").len() < layers_before);
    assert_eq!(sb.entries("layers/host").len(), 1, "busybox's layer stays");
    sb.drun(&["rmi", &deb]).fails_with(125, &["no image"]);
    // Nothing left to free.
    assert_eq!(sb.drun(&["prune", "-q"]).ok().stdout.trim(), "0");
    sb.drun(&["rmi", &busybox()]).ok();
    assert!(sb.entries("layers/host").is_empty());
    assert!(sb.entries("blobs/sha256").is_empty());
}
