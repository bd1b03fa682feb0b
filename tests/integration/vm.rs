//! cgroup v2 for real: a pure-v2 Debian kernel under qemu (TCG) runs `tests/vm/cgroup-v2.sh` with this drun.

use std::process::Command;
use std::time::Duration;

use crate::common::*;

#[test]
fn limits_devices_shm_and_cleanup_on_a_pure_cgroup_v2_kernel() {
    assert!(is_root(), "the VM harness needs root (make test runs it as root)");
    let repo = env!("CARGO_MANIFEST_DIR");
    let many = tempfile::Builder::new().prefix("drun-vm-many-").tempdir().unwrap();
    let layout = many_layer_layout(many.path(), 128);
    let check = many.path().join("check");
    std::fs::create_dir(&check).unwrap();
    std::fs::write(check.join("script"), MANY_LAYER_SCRIPT).unwrap();
    // Without the trailing newline, as the guest's `$(…)` reads it.
    std::fs::write(check.join("view"), many_layer_view(128).trim_end()).unwrap();
    let mut c = Command::new("bash");
    c.arg(format!("{repo}/hack/vm-test.sh"))
        .args([
            "--timeout",
            "420",
            "--bin",
            &format!("{}:/usr/bin/drun", env!("CARGO_BIN_EXE_drun")),
            "--bin",
            "/usr/bin/setpriv:/opt/util-linux/setpriv",
        ])
        .args([
            "--add",
            &format!("{}:/images/busybox", cache().join("layouts/busybox").display()),
            "--add",
            &format!("{}:/images/many", layout.display()),
            "--add",
            &format!("{}:/images/many-check", check.display()),
        ])
        .arg(format!("{repo}/tests/vm/cgroup-v2.sh"));
    let out = run(c, Duration::from_secs(480));
    assert!(
        out.status.success() && out.stdout.contains(" 0 failed"),
        "VM run failed ({}):\n{}\n{}",
        out.status,
        out.stdout,
        out.stderr
    );
    for check in [
        "ok: 128 layers named by descriptor paths",
        "ok: memory.low is --memory-reservation",
        "ok: --oom-kill-disable is ignored with a warning",
    ] {
        assert!(out.stdout.contains(check), "{check:?} missing:\n{}", out.stdout);
    }
}
