//! The store under concurrency, crashes, network faults and a full disk.

use std::collections::HashMap;
use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

use crate::common::*;

fn debian_via(proxy: &Proxy) -> String {
    format!("{}/drun-test/debian:bookworm", proxy.addr())
}

/// Successful blob GETs per blob path.
fn blob_gets(proxy: &Proxy) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for r in proxy.requests() {
        if r.method == "GET" && r.path.contains("/blobs/") && (r.status == "200" || r.status == "206") {
            *m.entry(r.path).or_insert(0) += 1;
        }
    }
    m
}

#[test]
fn eight_concurrent_pulls_download_each_layer_once() {
    let sb = Sandbox::new();
    let proxy = Proxy::start(sb.path(), &registry(), &[]);
    let image = debian_via(&proxy);
    let children: Vec<_> = (0..8)
        .map(|_| {
            let mut c = sb.cmd(&["pull", &image]);
            c.stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped());
            c.spawn().unwrap()
        })
        .collect();
    let outs: Vec<Output> = children
        .into_iter()
        .map(|c| wait(c, Duration::from_secs(300)))
        .collect();
    let digests: Vec<String> = outs.into_iter().map(|o| o.ok().stdout).collect();
    assert!(digests.windows(2).all(|w| w[0] == w[1]));
    let gets = blob_gets(&proxy);
    let doc: serde_json::Value = serde_json::from_str(&sb.drun(&["inspect", &image]).ok().stdout).unwrap();
    let layers: Vec<String> = doc["Layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .collect();
    assert!(layers.len() >= 3);
    // Each layer blob was fetched exactly once, by one of the eight. (The small config is fetched by each.)
    for l in &layers {
        let path = format!("/v2/drun-test/debian/blobs/{l}");
        assert_eq!(gets.get(&path), Some(&1), "{l}: {gets:?}");
    }
    assert!(sb.entries("tmp").is_empty());
}

#[test]
fn killed_pulls_leave_nothing_that_reads_as_complete() {
    let image = debian();
    for point in [
        "blob-downloading",
        "layer-before-publish",
        "layer-after-publish",
        "before-record",
    ] {
        let sb = Sandbox::new();
        let out = sb.drun_with(&["pull", &image], &[("DRUN_FAILPOINT", point.as_ref())]);
        assert_eq!(
            out.status.signal(),
            Some(9),
            "fail point {point} was not reached: {}",
            out.stderr
        );
        // No image record appears before the very end.
        assert!(sb.drun(&["images", "-q"]).ok().stdout.is_empty(), "{point}");
        // Every published layer is complete (its metadata is written before the rename that publishes it).
        for l in sb.entries("layers/host") {
            assert!(
                sb.store().join("layers/host").join(&l).join("layer.json").is_file(),
                "{point}: {l} incomplete"
            );
        }
        // The next pull finishes the job and the result is whole.
        let again = sb.drun(&["pull", &image]).ok();
        assert!(again.stderr.contains("pulled"), "{point}: {}", again.stderr);
        let roots = sb.layer_roots(&image);
        assert_eq!(read_in_layers(&roots, "opt/keep/changed").unwrap(), "v2\n", "{point}");
        assert!(roots.iter().all(|r| r.is_dir()), "{point}");
        assert!(sb.entries("tmp").is_empty(), "{point}: {:?}", sb.entries("tmp"));
        // prune after a crash frees only debris, never the complete image.
        sb.drun(&["prune"]).ok();
        assert_eq!(sb.layer_roots(&image).len(), roots.len());
    }
}

#[test]
fn dropped_connections_resume_with_range_requests() {
    let sb = Sandbox::new();
    let proxy = Proxy::start(sb.path(), &registry(), &["reset-blob:1000000"]);
    sb.drun(&["pull", &debian_via(&proxy)]).ok();
    let reqs = proxy.requests();
    let resets = reqs.iter().filter(|r| r.faults.contains("reset-blob")).count();
    assert!(resets >= 1, "{reqs:?}");
    assert!(
        reqs.iter()
            .any(|r| r.status == "206" && r.range.starts_with("bytes=1000000-")),
        "no resumed request: {reqs:?}"
    );
    assert_eq!(
        read_in_layers(&sb.layer_roots(&debian_via(&proxy)), "opt/keep/changed").unwrap(),
        "v2\n"
    );
}

#[test]
fn registries_ignoring_range_still_resume_correctly() {
    let sb = Sandbox::new();
    let proxy = Proxy::start(sb.path(), &registry(), &["reset-blob:1000000", "no-range"]);
    sb.drun(&["pull", &debian_via(&proxy)]).ok();
    let reqs = proxy.requests();
    assert!(reqs.iter().any(|r| r.faults.contains("reset-blob")), "{reqs:?}");
    assert!(reqs.iter().all(|r| r.status != "206"));
    assert_eq!(
        read_in_layers(&sb.layer_roots(&debian_via(&proxy)), "opt/keep/changed").unwrap(),
        "v2\n"
    );
}

#[test]
fn server_errors_and_rate_limits_are_retried() {
    // A blob's first GET is answered 429 with a Retry-After far longer than drun's own first backoff (250 ms,
    // src/image/registry.rs), its next two 503 without one; the manifest's first 500.
    const RETRY_AFTER_MS: u64 = 3000;
    let sb = Sandbox::new();
    let rate_limit = format!("status-blob:429:1:retry-after={}", RETRY_AFTER_MS / 1000);
    let proxy = Proxy::start(
        sb.path(),
        &registry(),
        &[&rate_limit, "status-blob:503:2", "status-manifest:500"],
    );
    sb.drun(&["pull", &debian_via(&proxy)]).ok();
    let reqs = proxy.requests();
    assert!(reqs.iter().filter(|r| r.status == "503").count() >= 2, "{reqs:?}");
    assert!(reqs.iter().any(|r| r.status == "500"), "{reqs:?}");
    // The header was read: each blob's retry after its 429 came no sooner than the server asked.
    let limited: Vec<&Request> = reqs.iter().filter(|r| r.status == "429").collect();
    assert!(!limited.is_empty(), "{reqs:?}");
    for r in limited {
        let retry = reqs
            .iter()
            .filter(|n| n.path == r.path && n.at_ms > r.at_ms)
            .min_by_key(|n| n.at_ms)
            .unwrap_or_else(|| panic!("{} was not retried: {reqs:?}", r.path));
        let waited = retry.at_ms - r.at_ms;
        assert!(
            waited >= RETRY_AFTER_MS,
            "{} retried {waited} ms after a 429 with Retry-After: {} s",
            r.path,
            RETRY_AFTER_MS / 1000
        );
    }
}

#[test]
fn persistent_server_errors_give_up_with_the_registry_answer() {
    let sb = Sandbox::new();
    let proxy = Proxy::start(sb.path(), &registry(), &["status-manifest:502:100"]);
    sb.drun(&["pull", &debian_via(&proxy)])
        .fails_with(125, &["502", &proxy.addr()]);
    assert!(sb.entries("images").is_empty());
}

#[test]
fn full_disk_fails_cleanly() {
    assert!(
        is_root(),
        "this test mounts a small tmpfs: run it as root (make test does)"
    );
    let sb = Sandbox::new();
    let small = sb.path().join("small");
    std::fs::create_dir_all(&small).unwrap();
    nix::mount::mount(
        Some("tmpfs"),
        &small,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        Some("size=8m"),
    )
    .unwrap();
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
        }
    }
    let _guard = Unmount(small.clone());
    let mut c = sb.cmd(&["pull", &debian()]);
    c.env("DRUN_ROOT", &small);
    let out = run(c, Duration::from_secs(120)).fails_with(125, &["error: cannot pull", "No space left on device"]);
    let _ = out;
    // Nothing half-written: no staging debris and no image record (complete layers may remain for the next try).
    let tmp: Vec<_> = std::fs::read_dir(small.join("tmp")).unwrap().flatten().collect();
    assert!(tmp.is_empty(), "{tmp:?}");
    assert_eq!(std::fs::read_dir(small.join("images")).unwrap().count(), 0);
}

/// A layer for the images of [`a_layer_linking_into_its_lowers_is_never_shared_across_chains`].
fn tar_of(build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    build(&mut b);
    b.into_inner().unwrap()
}

#[test]
fn a_layer_linking_into_its_lowers_is_never_shared_across_chains() {
    // Two images share their top layer (same diff_id): a hardlink bin/run-me -> bin/tool, a file of the layer
    // below. Their lower layers differ. Pulled first, the attacker's image must not decide what the victim's runs.
    use crate::unpack::{oci_layout, plain, raw_entry};
    use tar::EntryType::{Directory, Link, Regular};
    let sb = Sandbox::new();
    let busybox = std::fs::read("/bin/busybox").unwrap();
    let lower = |who: &str| {
        tar_of(|b| {
            raw_entry(b, Directory, b"bin/", b"", b"", 0o755);
            raw_entry(b, Regular, b"bin/busybox", b"", &busybox, 0o755);
            let script = format!("#!/bin/busybox sh\necho {who}\n");
            raw_entry(b, Regular, b"bin/tool", b"", script.as_bytes(), 0o755);
        })
    };
    let top = tar_of(|b| raw_entry(b, Link, b"bin/run-me", b"bin/tool", b"", 0o755));
    // The same linking layer twice in one image: two chains, each produced once, without waiting on each other.
    let twice = oci_layout(
        &sb.path().join("twice"),
        &[plain(lower("twice")), plain(top.clone()), plain(top.clone())],
        &["/bin/run-me"],
    );
    sb.drun(&["pull", "-q", &twice]).ok();
    assert_eq!(sb.drun(&["run", "-q", &twice]).ok().stdout, "twice\n");
    sb.drun(&["rmi", &twice]).ok();
    assert!(sb.entries("layers/host").is_empty(), "{:?}", sb.entries("layers/host"));
    let attacker = oci_layout(
        &sb.path().join("attacker"),
        &[plain(lower("attacker")), plain(top.clone())],
        &["/bin/run-me"],
    );
    let victim = oci_layout(
        &sb.path().join("victim"),
        &[plain(lower("victim")), plain(top)],
        &["/bin/run-me"],
    );
    sb.drun(&["pull", "-q", &attacker]).ok();
    sb.drun(&["pull", "-q", &victim]).ok();
    assert_eq!(sb.drun(&["run", "-q", &victim]).ok().stdout, "victim\n");
    assert_eq!(sb.drun(&["run", "-q", &attacker]).ok().stdout, "attacker\n");
    // The shared layer is stored per chain (its lowers by diff_id), and what each image's record names is there.
    let doc: serde_json::Value = serde_json::from_str(&sb.drun(&["inspect", &victim]).ok().stdout).unwrap();
    assert!(doc["Layers"][0]["chain_id"].is_null(), "{doc}");
    assert!(doc["Layers"][1]["chain_id"].is_string(), "{doc}");
    let mut keys = sb.entries("layers/host");
    keys.sort();
    assert_eq!(keys.len(), 4, "{keys:?}");
    assert_eq!(keys.iter().filter(|k| k.starts_with("chain-")).count(), 2, "{keys:?}");
    // Garbage collection goes by the same keys: removing the attacker's image frees its two layers only.
    sb.drun(&["rmi", &attacker]).ok();
    assert_eq!(sb.entries("layers/host").len(), 2, "{:?}", sb.entries("layers/host"));
    sb.drun(&["prune"]).ok();
    assert_eq!(sb.drun(&["run", "-q", "--pull=never", &victim]).ok().stdout, "victim\n");
    // And in the other order, with the victim's layers already there, the attacker's image gets its own.
    sb.drun(&["pull", "-q", &attacker]).ok();
    assert_eq!(sb.drun(&["run", "-q", &attacker]).ok().stdout, "attacker\n");
    assert_eq!(sb.drun(&["run", "-q", &victim]).ok().stdout, "victim\n");
}

/// `drun check` finds each kind of damage planted in a store and in the state directory, `--repair` removes it
/// (with the images that needed it), and the next pull and run just work; `--deep` finds a truncated file.
#[test]
fn check_finds_each_kind_of_damage_and_repair_removes_it() {
    use std::os::unix::fs::symlink;
    let sb = Sandbox::new();
    let (bb, deb) = (busybox(), debian());
    sb.drun(&["pull", "-q", &bb]).ok();
    sb.drun(&["pull", "-q", &deb]).ok();
    let clean = sb.drun(&["check"]).ok();
    assert!(clean.stdout.contains("no problems"), "{}", clean.stdout);

    let images: serde_json::Value = serde_json::from_str(&sb.drun(&["images", "--json"]).ok().stdout).unwrap();
    let config_of = |name: &str| -> String {
        let r = images.as_array().unwrap().iter().find(|r| r["name"] == name).unwrap();
        r["config_digest"]
            .as_str()
            .unwrap()
            .trim_start_matches("sha256:")
            .to_string()
    };
    let store = sb.store();
    // An unreadable record; busybox's config changed under its digest; a debian layer never completed.
    std::fs::write(store.join("images/0000.json"), "{").unwrap();
    std::fs::write(store.join("blobs/sha256").join(config_of(&bb)), "not the config").unwrap();
    let deb_layer = sb.layer_roots(&deb)[1].parent().unwrap().to_path_buf();
    std::fs::remove_file(deb_layer.join("layer.json")).unwrap();
    // Leftovers: staging of a dead pull, an alias naming nothing, a setup layer without its metadata, a cache
    // file whose writer died, a lock that is a symlink, a run whose drun died.
    std::fs::create_dir_all(store.join("tmp/layer-host-dead/root")).unwrap();
    std::fs::create_dir_all(store.join("images/aliases")).unwrap();
    std::fs::write(store.join("images/aliases/ffff"), "nothing:here").unwrap();
    std::fs::create_dir_all(store.join("setup/host/abcd/root")).unwrap();
    std::fs::create_dir_all(store.join("cache/seccomp")).unwrap();
    std::fs::write(store.join("cache/seccomp/.x.bpf.tmp-999999999"), "x").unwrap();
    std::fs::write(store.join("cache/seccomp/0000.bpf"), "drunbpf1 not a program").unwrap();
    symlink("/etc/passwd", store.join("locks/evil.lock")).unwrap();
    let stale = sb.state().join("containers/0123456789ab");
    std::fs::create_dir_all(&stale).unwrap();

    let found = check_fails(
        sb.drun(&["check"]),
        &[
            "damage: image record",
            "0000.json: unreadable",
            &format!("damage: image {bb}: its config sha256:"),
            "does not match its digest",
            "its layer.json is missing: it was never completely unpacked",
            &format!("damage: image {deb}: its layer"),
            "tmp/layer-host-dead: left by an interrupted pull",
            "names no image record",
            "setup layer abcd: its setup.json is missing",
            ".x.bpf.tmp-999999999: a cache file whose writer died",
            "0000.bpf: a damaged compiled seccomp filter",
            "evil.lock: not a regular file",
            "stale run:",
            "0123456789ab",
            "`drun check --repair` removes them",
        ],
    );
    assert!(!found.stdout.contains("no problems"), "{}", found.stdout);
    let repaired = sb.drun(&["check", "--repair"]).ok();
    for needle in [
        format!("removed image {bb} (pull it again)"),
        format!("removed image {deb} (pull it again)"),
        "repaired:".to_string(),
        "stale run(s) cleaned up".to_string(),
    ] {
        assert!(repaired.stdout.contains(&needle), "{needle}: {}", repaired.stdout);
    }
    assert!(std::fs::read_to_string("/etc/passwd").unwrap().contains("root:"));
    let after = sb.drun(&["check"]).ok();
    assert!(after.stdout.contains("no problems"), "{}", after.stdout);
    assert!(!stale.exists());
    // The next commands just work: the images come back.
    sb.drun(&["run", "-q", &bb, "true"]).ok();
    sb.drun(&["run", "-q", &deb, "true"]).ok();

    // A file truncated in a layer: only the deep check reads that far.
    let bin = sb.layer_roots(&bb)[0].join("bin/busybox");
    let len = std::fs::metadata(&bin).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&bin)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let shallow = sb.drun(&["check"]).ok();
    assert!(shallow.stdout.contains("no problems"), "{}", shallow.stdout);
    check_fails(
        sb.drun(&["check", "--deep"]),
        &["fewer than the", "its unpacking wrote"],
    );
    sb.drun(&["check", "--deep", "--repair"]).ok();
    sb.drun(&["run", "-q", &bb, "true"]).ok();
    let after = sb.drun(&["check", "--deep"]).ok();
    assert!(after.stdout.contains("no problems"), "{}", after.stdout);
}

/// `drun check` found problems: exit status 1, each needle in what it printed (on stdout, as a report).
fn check_fails(out: Output, needles: &[&str]) -> Output {
    assert_eq!(out.code(), Some(1), "{}\n{}", out.stdout, out.stderr);
    for n in needles {
        assert!(out.stdout.contains(n), "stdout lacks {n:?}:\n{}", out.stdout);
    }
    out
}

/// A store written before the store recorded its layout format (tests/fixtures/store-format0.tar.gz, made by
/// drun at c95ecf5 from a one-layer OCI layout) is upgraded in place and reads as before; a store of a newer
/// format is refused by every command, with what to do.
#[test]
fn a_store_of_an_older_format_is_upgraded_and_a_newer_one_refused() {
    let sb = Sandbox::new();
    std::fs::create_dir_all(sb.store()).unwrap();
    let status = std::process::Command::new("tar")
        .arg("-xzf")
        .arg(fixture("store-format0.tar.gz"))
        .arg("-C")
        .arg(sb.store())
        .status()
        .unwrap();
    assert!(status.success());
    assert!(!sb.store().join("store.json").exists());
    let images = sb.drun(&["images"]).ok();
    assert!(images.stdout.contains("oci:/tmp/fx/layout:v1"), "{}", images.stdout);
    assert_eq!(read_to_string(sb.store().join("store.json")), r#"{"format":1}"#);
    let check = sb.drun(&["check", "--deep"]).ok();
    assert!(
        check.stdout.contains("1 images, 1 layers") && check.stdout.contains("no problems"),
        "{}",
        check.stdout
    );
    let inspect = sb.drun(&["inspect", "oci:/tmp/fx/layout:v1"]).ok();
    assert!(
        inspect.stdout.contains("format-fixture") || inspect.stdout.contains("\"Layers\""),
        "{}",
        inspect.stdout
    );
    let layer = std::fs::read_dir(sb.store().join("layers/host"))
        .unwrap()
        .flatten()
        .next()
        .unwrap()
        .path();
    assert_eq!(
        read_to_string(layer.join("root/etc/format-fixture.txt")),
        "a store written before the store had a format version\n"
    );

    std::fs::write(sb.store().join("store.json"), r#"{"format": 2}"#).unwrap();
    for args in [
        vec!["images"],
        vec!["run", "-q", "--pull", "never", "oci:/tmp/fx/layout:v1"],
        vec!["check"],
    ] {
        sb.drun(&args).fails_with(
            125,
            &[
                "has layout format 2, newer than this drun's (1)",
                "run that drun, or give this one another store",
            ],
        );
    }
}

fn read_to_string(p: impl AsRef<std::path::Path>) -> String {
    std::fs::read_to_string(p.as_ref()).unwrap_or_else(|e| panic!("{}: {e}", p.as_ref().display()))
}

/// A stored config left damaged (what a power cut leaves where a file system wrote the rename before the data,
/// found by `vm::power_cuts_during_pulls_leave_a_consistent_store` with a drun without the syncs) is replaced by
/// the next pull instead of being trusted because it exists.
#[test]
fn a_damaged_stored_blob_is_replaced_by_the_next_pull() {
    let sb = Sandbox::new();
    let bb = busybox();
    sb.drun(&["pull", "-q", &bb]).ok();
    let images: serde_json::Value = serde_json::from_str(&sb.drun(&["images", "--json"]).ok().stdout).unwrap();
    let config = images[0]["config_digest"]
        .as_str()
        .unwrap()
        .trim_start_matches("sha256:")
        .to_string();
    std::fs::write(sb.store().join("blobs/sha256").join(&config), "").unwrap();
    for e in std::fs::read_dir(sb.store().join("images")).unwrap().flatten() {
        if e.path().extension().is_some_and(|x| x == "json") {
            std::fs::remove_file(e.path()).unwrap();
        }
    }
    sb.drun(&["pull", "-q", &bb]).ok();
    sb.drun(&["run", "-q", "--pull", "never", &bb, "true"]).ok();
    let check = sb.drun(&["check", "--deep"]).ok();
    assert!(check.stdout.contains("no problems"), "{}", check.stdout);
}
