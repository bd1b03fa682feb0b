//! Which host variables reach the container (docs/running.md#environment): none but `-e` outside Slurm,
//! `--env-host` with drun's own and the host-specific ones left out, a Slurm job's SLURM_*/PMI_*/PMIX_* and the
//! training variables in a step, and `-e` over everything. The job here is simulated by its variables; the real
//! cluster's test is in slurm.rs.

use crate::common::{self, Sandbox};

/// The container's environment as sorted `KEY=VALUE` lines.
fn container_env(sb: &Sandbox, envs: &[(&str, &str)], flags: &[&str]) -> Vec<String> {
    let mut c = sb.cmd(&["run", "-q"]);
    c.args(flags).args([&common::busybox(), "env"]);
    for (k, v) in envs {
        c.env(k, v);
    }
    let out = common::run(c, std::time::Duration::from_secs(120)).ok();
    let mut lines: Vec<String> = out.stdout.lines().map(String::from).collect();
    lines.sort();
    lines
}

fn value<'a>(env: &'a [String], key: &str) -> Option<&'a str> {
    env.iter().find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
}

const HOST: &[(&str, &str)] = &[
    ("DRUN_TEST_SECRET", "s3cret"),
    ("OMP_NUM_THREADS", "7"),
    ("LD_LIBRARY_PATH", "/host/lib"),
    ("PATH", "/host/bin:/usr/bin:/bin"),
    ("HOSTNAME", "the-host"),
];

#[test]
fn host_variables_reach_the_container_only_when_asked() {
    let sb = Sandbox::new();
    let env = container_env(&sb, HOST, &[]);
    for key in ["DRUN_TEST_SECRET", "OMP_NUM_THREADS", "LD_LIBRARY_PATH", "SLURM_JOB_ID"] {
        assert_eq!(value(&env, key), None, "{key} leaked: {env:?}");
    }
    assert_eq!(
        value(&env, "PATH"),
        Some("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"),
        "the image's PATH"
    );

    // --env-host: all but DRUN_*, LD_*, PATH, HOSTNAME, HOME …; the image's Env over the host's, -e over both.
    let env = container_env(&sb, HOST, &["--env-host", "-e", "OMP_NUM_THREADS=2"]);
    assert_eq!(value(&env, "OMP_NUM_THREADS"), Some("2"), "-e wins: {env:?}");
    for key in ["DRUN_TEST_SECRET", "DRUN_ROOT", "LD_LIBRARY_PATH"] {
        assert_eq!(value(&env, key), None, "{key} passed: {env:?}");
    }
    assert_eq!(
        value(&env, "PATH"),
        Some("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    );
    assert_ne!(value(&env, "HOSTNAME"), Some("the-host"));
    assert_eq!(
        value(&env, "HOME"),
        Some("/root"),
        "the container user's home, not the host's"
    );
    let env = container_env(&sb, HOST, &["--env-host"]);
    assert_eq!(value(&env, "OMP_NUM_THREADS"), Some("7"), "{env:?}");

    // -e overrides the image's Env (as Docker): PATH here.
    let env = container_env(&sb, HOST, &["-e", "PATH=/bin:/x"]);
    assert_eq!(value(&env, "PATH"), Some("/bin:/x"));
}

/// A task of a Slurm step, as slurmstepd describes it (rank 5 of 8 on the third node, three nodes).
const STEP: &[(&str, &str)] = &[
    ("SLURM_JOB_ID", "4321"),
    ("SLURM_STEP_ID", "3"),
    ("SLURM_PROCID", "5"),
    ("SLURM_LOCALID", "1"),
    ("SLURM_NODEID", "2"),
    ("SLURM_STEP_NUM_TASKS", "8"),
    ("SLURM_STEP_NODELIST", "gpu[07-09]"),
    ("SLURM_STEP_TASKS_PER_NODE", "3(x2),2"),
    ("PMI_FD", "9"),
    ("PMIX_RANK", "5"),
    ("OTHER", "x"),
];

#[test]
fn a_slurm_step_passes_its_variables_and_the_training_ones() {
    let sb = Sandbox::new();
    // -e MASTER_ADDR: drun does not ask Slurm for the first node (there is no cluster here).
    let env = container_env(&sb, STEP, &["-e", "MASTER_ADDR=10.0.0.7", "-e", "RANK=caller"]);
    for (key, want) in [
        ("SLURM_PROCID", "5"),
        ("SLURM_STEP_NODELIST", "gpu[07-09]"),
        ("PMI_FD", "9"),
        ("PMIX_RANK", "5"),
        ("MASTER_ADDR", "10.0.0.7"),
        ("MASTER_PORT", "13213"),
        ("WORLD_SIZE", "8"),
        ("RANK", "caller"),
        ("LOCAL_RANK", "1"),
        ("LOCAL_WORLD_SIZE", "2"),
        ("NODE_RANK", "2"),
    ] {
        assert_eq!(value(&env, key), Some(want), "{key}: {env:?}");
    }
    assert_eq!(value(&env, "OTHER"), None);

    // --no-training-env: Slurm's own variables only.
    let env = container_env(&sb, STEP, &["--no-training-env"]);
    assert_eq!(value(&env, "SLURM_PROCID"), Some("5"));
    for key in [
        "MASTER_ADDR",
        "MASTER_PORT",
        "WORLD_SIZE",
        "RANK",
        "LOCAL_RANK",
        "NODE_RANK",
    ] {
        assert_eq!(value(&env, key), None, "{key}: {env:?}");
    }
}

#[test]
fn an_unknown_first_node_is_a_warning_that_names_the_fix() {
    let sb = Sandbox::new();
    let mut c = sb.cmd(&[
        "run",
        "-q",
        &common::busybox(),
        "sh",
        "-c",
        "echo rank=$RANK addr=${MASTER_ADDR-unset}",
    ]);
    for (k, v) in STEP {
        c.env(k, v);
    }
    // No scontrol that could answer: a PATH without one, and no cluster.
    c.env("PATH", "/nonexistent");
    let out = common::run(c, std::time::Duration::from_secs(120)).ok();
    assert_eq!(out.stdout.trim(), "rank=5 addr=unset");
    assert!(
        out.stderr.contains(
            "warning: MASTER_ADDR is not set in the container: cannot find the address of the first node \"gpu07\""
        ) && out.stderr.contains("set it with -e MASTER_ADDR="),
        "{}",
        out.stderr
    );
}
