//! `drun pull` from every kind of source and registry, and its errors.

use std::time::Duration;

use crate::common::*;

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
    let list = test_image("busybox:docker");
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

    let deb = test_image("debian:bookworm-docker");
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
    let gz = debian();
    let zst = test_image("debian:bookworm-zstd");
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

    let plain = test_image("busybox:uncompressed");
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
        .fails_with(125, &["error: cannot pull", "not found"]);
}

#[test]
fn unknown_image_names_the_reference_and_the_registry_answer() {
    let sb = Sandbox::new();
    let missing = test_image("no-such-image:latest");
    let out = sb
        .drun(&["pull", &missing])
        .fails_with(125, &["error: cannot pull", &missing, "Caused by:"]);
    assert!(
        out.stderr.contains("NameUnknown") || out.stderr.contains("ManifestUnknown"),
        "{}",
        out.stderr
    );
    let tag = test_image("busybox:no-such-tag");
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
fn oci_archives_as_skopeo_writes_them() {
    // `oci-archive:FILE[:TAG]` (what `podman save --format oci-archive` and `skopeo copy … oci-archive:` write) is
    // read in place: the debian image's three gzip layers with whiteouts and an opaque directory, run from it.
    let sb = Sandbox::new();
    let archive = sb.path().join("debian.tar");
    let layout = cache().join("layouts/debian-bookworm");
    let st = std::process::Command::new("skopeo")
        .args(["copy", "-q", &format!("oci:{}:bookworm", layout.display())])
        .arg(format!("oci-archive:{}:bookworm", archive.display()))
        .status()
        .unwrap();
    assert!(st.success(), "skopeo copy to an oci-archive");
    let src = format!("oci-archive:{}:bookworm", archive.display());
    sb.drun(&["pull", "-q", &src]).ok();
    let out = sb
        .drun(&[
            "run",
            "-q",
            &src,
            "sh",
            "-c",
            "test -e /opt/keep/gone && echo GONE-VISIBLE; test -e /opt/replaced/old && echo OPAQUE-BROKEN; \
             cat /opt/keep/changed /opt/replaced/new",
        ])
        .ok();
    assert_eq!(out.stdout, "v2\nnew\n");
    // The same layers as the registry's image: nothing new unpacked.
    let layers = sb.entries("layers/host").len();
    sb.drun(&["pull", "-q", &debian()]).ok();
    assert_eq!(sb.entries("layers/host").len(), layers);
    // Errors name the archive and what is wrong with it.
    sb.drun(&["pull", &format!("oci-archive:{}:nope", archive.display())])
        .fails_with(125, &["no image tagged \"nope\" in", "debian.tar/index.json"]);
    let docker = cache().join("archives/busybox.tar");
    sb.drun(&["pull", &format!("oci-archive:{}", docker.display())])
        .fails_with(125, &["invalid OCI archive", "no member \"index.json\""]);
    sb.drun(&["pull", "oci-archive:"])
        .fails_with(125, &["expected oci-archive:FILE[:TAG]"]);
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
    assert!(out.stderr.contains("error: cannot pull"), "{}", out.stderr);
    assert!(sb.entries("layers/host").is_empty());
    assert!(sb.entries("tmp").is_empty(), "{:?}", sb.entries("tmp"));
    assert!(sb.entries("images").is_empty());
}

#[test]
fn images_inspect_rmi_prune() {
    let sb = Sandbox::new();
    let deb = debian();
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

/// A hostile registry on 127.0.0.1 (a random port), served by threads of this test process: every request is
/// answered by `route(path)`, one request per connection. Stopped on drop.
mod hostile {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    /// How long and how much an endless answer goes on at most, even to a client that reads it all.
    const ENDLESS_SECONDS: u64 = 60;
    const ENDLESS_BYTES: u64 = 512 << 20;

    pub enum Answer {
        /// Status, headers and a whole body (with its Content-Length).
        Full(u16, Vec<(String, String)>, Vec<u8>),
        /// Status and headers, then a body without a length that goes on until the client closes.
        Endless(u16, Vec<(String, String)>),
    }

    type Route = dyn Fn(&str) -> Answer + Send + Sync;

    pub struct Server {
        pub port: u16,
        stop: Arc<AtomicBool>,
        thread: Option<std::thread::JoinHandle<()>>,
    }

    impl Server {
        pub fn start(route: impl Fn(&str) -> Answer + Send + Sync + 'static) -> Server {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            listener.set_nonblocking(true).unwrap();
            let port = listener.local_addr().unwrap().port();
            let stop = Arc::new(AtomicBool::new(false));
            let route: Arc<Route> = Arc::new(route);
            let s = stop.clone();
            let thread = std::thread::spawn(move || {
                while !s.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((conn, _)) => {
                            let route = route.clone();
                            let s = s.clone();
                            std::thread::spawn(move || serve(conn, &*route, &s));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(10)),
                    }
                }
            });
            Server {
                port,
                stop,
                thread: Some(thread),
            }
        }

        pub fn addr(&self) -> String {
            format!("127.0.0.1:{}", self.port)
        }
    }

    impl Drop for Server {
        fn drop(&mut self) {
            self.stop.store(true, Ordering::Relaxed);
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        }
    }

    fn serve(mut conn: TcpStream, route: &Route, stop: &AtomicBool) {
        let _ = conn.set_nonblocking(false);
        let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
        let _ = conn.set_write_timeout(Some(Duration::from_secs(5)));
        let mut head = Vec::new();
        let mut buf = [0u8; 4096];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match conn.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
            // A TLS hello (drun tries HTTPS first): this server speaks plain HTTP only.
            if head[0] == 0x16 || head.len() > 64 << 10 {
                return;
            }
        }
        let text = String::from_utf8_lossy(&head);
        let path = text.split_whitespace().nth(1).unwrap_or("/").to_string();
        let (status, headers, body) = match route(&path) {
            Answer::Full(status, headers, body) => (status, headers, Some(body)),
            Answer::Endless(status, headers) => (status, headers, None),
        };
        let mut out = format!("HTTP/1.1 {status} Hostile\r\nConnection: close\r\n");
        for (k, v) in &headers {
            out.push_str(&format!("{k}: {v}\r\n"));
        }
        if let Some(b) = &body {
            if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("content-length")) {
                out.push_str(&format!("Content-Length: {}\r\n", b.len()));
            }
        }
        out.push_str("\r\n");
        if conn.write_all(out.as_bytes()).is_err() {
            return;
        }
        match body {
            Some(b) => {
                let _ = conn.write_all(&b);
            }
            None => {
                let chunk = vec![b'x'; 64 << 10];
                let start = Instant::now();
                let mut sent = 0u64;
                while sent < ENDLESS_BYTES
                    && start.elapsed() < Duration::from_secs(ENDLESS_SECONDS)
                    && !stop.load(Ordering::Relaxed)
                {
                    if conn.write_all(&chunk).is_err() {
                        break;
                    }
                    sent += chunk.len() as u64;
                }
            }
        }
    }

    pub fn json(status: u16, body: &serde_json::Value) -> Answer {
        Answer::Full(
            status,
            vec![("Content-Type".into(), "application/json".into())],
            serde_json::to_vec(body).unwrap(),
        )
    }
}

/// A manifest whose config descriptor says `size`.
fn manifest_with_config(digest: &str, size: u64) -> serde_json::Value {
    serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest, "size": size},
        "layers": [],
    })
}

#[test]
fn hostile_registry_answers_are_read_within_caps() {
    use hostile::{json, Answer, Server};
    let config_digest = format!("sha256:{}", "a".repeat(64));
    let cd = config_digest.clone();
    let server = Server::start(move |path| match path {
        "/v2/" => json(200, &serde_json::json!({})),
        // (a) a config announced as 1 TiB.
        "/v2/evil/big-config/manifests/latest" => json(200, &manifest_with_config(&cd, 1 << 40)),
        // (b) an error answer that never ends.
        "/v2/evil/endless-error/manifests/latest" => Answer::Endless(404, vec![]),
        // A manifest that never ends, and one that announces 1 TiB.
        "/v2/evil/endless-manifest/manifests/latest" => Answer::Endless(200, vec![]),
        "/v2/evil/huge-manifest/manifests/latest" => Answer::Full(
            200,
            vec![("Content-Length".into(), (1u64 << 40).to_string())],
            b"{".to_vec(),
        ),
        // A small config whose download fails with an endless 500 (retried at once: Retry-After: 0).
        "/v2/evil/endless-500/manifests/latest" => json(200, &manifest_with_config(&cd, 100)),
        p if p.starts_with("/v2/evil/endless-500/blobs/") => {
            Answer::Endless(500, vec![("Retry-After".into(), "0".into())])
        }
        _ => json(
            404,
            &serde_json::json!({"errors": [{"code": "NAME_UNKNOWN", "message": "no such thing"}]}),
        ),
    });
    // (c) a token service whose answer never ends, named by the challenge of a registry's /v2/.
    let tokens = Server::start(|_| Answer::Endless(200, vec![]));
    let tport = tokens.port;
    let challenger = Server::start(move |path| {
        if path == "/v2/" {
            Answer::Full(
                401,
                vec![(
                    "WWW-Authenticate".into(),
                    format!("Bearer realm=\"http://127.0.0.1:{tport}/token\",service=\"hostile\""),
                )],
                b"{}".to_vec(),
            )
        } else {
            Answer::Full(401, vec![], b"{}".to_vec())
        }
    });

    let h = server.addr();
    let cases: Vec<(String, Vec<String>)> = vec![
        (
            format!("{h}/evil/big-config:latest"),
            vec![
                format!("the image config {config_digest} of {h}/evil/big-config:latest from {h} is too large"),
                "1099511627776 bytes (1.0 TiB) declared, drun reads at most 8.0 MiB".into(),
            ],
        ),
        (
            format!("{h}/evil/endless-error:latest"),
            vec![format!("{h}/evil/endless-error:latest: not found in {h}")],
        ),
        (
            format!("{h}/evil/endless-manifest:latest"),
            vec![
                format!("the manifest of {h}/evil/endless-manifest:latest from {h} is too large"),
                "more than 4.0 MiB came and reading stopped there".into(),
            ],
        ),
        (
            format!("{h}/evil/huge-manifest:latest"),
            vec![
                format!("the manifest of {h}/evil/huge-manifest:latest from {h} is too large"),
                "1099511627776 bytes (1.0 TiB) declared, drun reads at most 4.0 MiB".into(),
            ],
        ),
        (
            format!("{h}/evil/endless-500:latest"),
            vec![format!("{h} answered 500")],
        ),
        (
            format!("{}/evil/token:latest", challenger.addr()),
            vec![
                format!(
                    "the token answer of http://127.0.0.1:{tport}/token from {} is too large",
                    challenger.addr()
                ),
                "more than 1.0 MiB came and reading stopped there".into(),
            ],
        ),
    ];
    // Every case is tried, and every one that misbehaves is reported.
    let mut failures = Vec::new();
    for (image, needles) in cases {
        let sb = Sandbox::new();
        let (out, rss, took) = measured(sb.cmd(&["pull", &image]), Duration::from_secs(90));
        let rss_mib = rss >> 20;
        let said: String = out.stderr.chars().take(2000).collect();
        eprintln!("{image}: {}, peak {rss_mib} MiB, {took:?}\n{said}", out.status);
        let mut wrong = Vec::new();
        if out.code() != Some(125) {
            wrong.push(format!("exit {}", out.status));
        }
        wrong.extend(
            needles
                .iter()
                .filter(|n| !out.stderr.contains(n.as_str()))
                .map(|n| format!("no {n:?} in stderr")),
        );
        if rss_mib >= 200 {
            wrong.push(format!("drun grew to {rss_mib} MiB"));
        }
        if took >= Duration::from_secs(60) {
            wrong.push(format!("took {took:?}"));
        }
        if !sb.entries("images").is_empty() {
            wrong.push("an image was recorded".into());
        }
        if !wrong.is_empty() {
            failures.push(format!("{image}: {}\n{said}", wrong.join("; ")));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn a_fifo_in_the_blob_cache_does_not_hang_a_pull() {
    let sb = Sandbox::new();
    let cache = sb.path().join("cache");
    sb.drun(&[&format!("--blob-cache={}", cache.display()), "pull", "-q", &busybox()])
        .ok();
    let blobs: Vec<String> = std::fs::read_dir(cache.join("sha256"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    assert!(!blobs.is_empty(), "the pull filled the blob cache");

    // Another user's cache holds a FIFO (and, for the next pull, a directory) under each blob's name.
    for planted in ["FIFO", "directory"] {
        let sb2 = Sandbox::new();
        let bad = sb2.path().join("bad-cache/sha256");
        std::fs::create_dir_all(&bad).unwrap();
        for b in &blobs {
            match planted {
                "FIFO" => nix::unistd::mkfifo(&bad.join(b), nix::sys::stat::Mode::from_bits_truncate(0o666)).unwrap(),
                _ => std::fs::create_dir(bad.join(b)).unwrap(),
            }
        }
        let cmd = sb2.cmd(&[
            &format!("--blob-cache={}", bad.parent().unwrap().display()),
            "pull",
            &busybox(),
        ]);
        let out = run(cmd, Duration::from_secs(60)).ok();
        assert!(
            out.stderr.contains("ignoring a bad blob in the blob cache") && out.stderr.contains(planted),
            "{}",
            out.stderr
        );
        assert!(out.stderr.contains("1 fetched"), "{}", out.stderr);
        assert!(sb2.layer_roots(&busybox())[0].join("bin/busybox").is_file());
    }
}

#[test]
fn pulls_work_on_a_host_without_ca_certificates() {
    // rustls-native-certs reads only SSL_CERT_FILE and SSL_CERT_DIR when they are set: empty ones make a host
    // without CA certificates, as a minimal CI image is.
    let sb = Sandbox::new();
    let none_dir = sb.path().join("no-certs");
    std::fs::create_dir(&none_dir).unwrap();
    let none_file = none_dir.join("none.pem");
    std::fs::write(&none_file, "").unwrap();
    let envs = [
        ("SSL_CERT_FILE", none_file.as_os_str()),
        ("SSL_CERT_DIR", none_dir.as_os_str()),
    ];

    // Plain HTTP needs no certificate at all.
    let out = sb.drun_with(&["pull", "--log-level", "debug", &busybox()], &envs).ok();
    assert!(out.stderr.contains("Mozilla's root certificates"), "{}", out.stderr);

    // A TLS registry with its own CA: the error names the registry and both fixes ...
    let tls = env("DRUN_TEST_REGISTRY_TLS");
    let image = format!("{tls}/drun-test/busybox:latest");
    sb.drun_with(&["pull", &image], &envs).fails_with(
        125,
        &[
            &format!("TLS certificate of {tls} is not trusted"),
            "no CA certificates",
            "install the ca-certificates package",
            "ca_files",
        ],
    );
    // ... and its CA in ca_files is the fix.
    sb.write_config(&format!("ca_files = [\"{}\"]\n", env("DRUN_TEST_CA")));
    sb.drun_with(&["pull", "-q", &image], &envs).ok();
}

#[test]
fn local_sources_are_read_within_caps_and_never_block() {
    let sb = Sandbox::new();
    let pull = |source: &str| run(sb.cmd(&["pull", source]), Duration::from_secs(60));

    // An OCI layout whose index.json says it is 1 TiB (a sparse file), and one where it is a FIFO.
    let layout = sb.path().join("layout");
    std::fs::create_dir(&layout).unwrap();
    let index = layout.join("index.json");
    std::fs::File::create(&index).unwrap().set_len(1 << 40).unwrap();
    let src = format!("oci:{}", layout.display());
    pull(&src).fails_with(
        125,
        &[
            &format!("{}: the image index is too large", index.display()),
            "1099511627776 bytes (1.0 TiB) declared, drun reads at most 4.0 MiB",
        ],
    );
    std::fs::remove_file(&index).unwrap();
    nix::unistd::mkfifo(&index, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
    pull(&src).fails_with(125, &[&index.display().to_string(), "a FIFO"]);

    // A docker archive that is a FIFO, and one whose manifest.json is 5 MiB.
    let fifo = sb.path().join("archive.tar");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
    pull(&format!("docker-archive:{}", fifo.display())).fails_with(125, &[&fifo.display().to_string(), "a FIFO"]);
    let big = sb.path().join("big.tar");
    let mut tar = tar::Builder::new(std::fs::File::create(&big).unwrap());
    let mut header = tar::Header::new_gnu();
    let size = 5u64 << 20;
    header.set_size(size);
    header.set_mode(0o644);
    header.set_cksum();
    let body = std::io::Read::chain(std::io::Read::take(std::io::repeat(b' '), size - 2), &b"[]"[..]);
    tar.append_data(&mut header, "manifest.json", body).unwrap();
    tar.finish().unwrap();
    drop(tar);
    pull(&format!("docker-archive:{}", big.display())).fails_with(
        125,
        &[
            &format!("{}: its manifest.json is too large", big.display()),
            "5242880 bytes (5.0 MiB) declared, drun reads at most 4.0 MiB",
        ],
    );
    assert!(sb.entries("images").is_empty());
}
