//! MPI programs launched by `srun` on the two-node cluster of hack/slurm.sh: Open MPI through `--mpi=pmix`, MPICH
//! through `--mpi=pmi2` (Debian's Open MPI has no PMI-2 client), both from drun-test/mpi:bookworm
//! (tests/fixtures/mpi_check.c: a ring of a small and a 1 MiB message, an allreduce of the ranks). First the same
//! binaries on the host (the cluster itself works), then every rank in a drun container, as root and as the test
//! users; a failing rank shows in srun's status and in sacct.

use std::path::PathBuf;

use crate::common::{self, Output};
use crate::slurm::{drun, sacct, Cluster, Submitter};

fn image() -> String {
    common::test_image("mpi:bookworm")
}

/// The image's program for `mpi` ("ompi" or "mpich"), as built for the host runs.
fn host_binary(mpi: &str) -> PathBuf {
    common::cache().join("mpi").join(format!("mpi_check.{mpi}"))
}

/// (srun's --mpi plugin, the program's MPI)
const PAIRS: [(&str, &str); 2] = [("pmix", "ompi"), ("pmi2", "mpich")];

/// Four ranks reported, each once, and the right allreduce sum.
#[track_caller]
fn assert_four_ranks(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what}: {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        out.stdout,
        out.stderr
    );
    let mut ranks: Vec<&str> = out
        .stdout
        .lines()
        .filter_map(|l| l.strip_prefix("rank ")?.split(" on ").next())
        .collect();
    ranks.sort_unstable();
    assert_eq!(
        ranks,
        ["0 of 4", "1 of 4", "2 of 4", "3 of 4"],
        "{what}: {}",
        out.stdout
    );
    assert!(out.stdout.contains("ranks 4 sum 6 ring OK"), "{what}: {}", out.stdout);
}

/// `srun -N2 -n4 --mpi=PLUGIN` of `cmd` as `sub`.
fn srun(cluster: &Cluster, sub: &Submitter, plugin: &str, extra: &[&str], cmd: &[&str]) -> Output {
    let mpi = format!("--mpi={plugin}");
    let args: Vec<&str> = ["-N2", "-n4", mpi.as_str()]
        .iter()
        .copied()
        .chain(extra.iter().copied())
        .chain(cmd.iter().copied())
        .collect();
    sub.run(cluster, "srun", &args)
}

#[test]
fn mpi_ranks_in_containers_reach_pmix_and_pmi2_as_root_and_as_users() {
    assert!(common::is_root(), "the Slurm daemons run as root");
    let cluster = Cluster::up();
    let img = image();

    // The cluster first: the same binaries on the host, two ranks per node.
    let root = Submitter::new(None);
    for (plugin, mpi) in PAIRS {
        let bin = host_binary(mpi);
        let out = srun(&cluster, &root, plugin, &[], &[bin.to_str().unwrap()]);
        assert_four_ranks(&out, &format!("host, {plugin} + {mpi}"));
    }

    for user in [None, Some("drun-sub"), Some("drun-nosub")] {
        let who = user.unwrap_or("root");
        let sub = Submitter::new(user);
        let out = sub.run(&cluster, "srun", &["-N1", drun(), "pull", "-q", &img]);
        assert!(out.status.success(), "{who}: pull: {}", out.stderr);
        for (plugin, mpi) in PAIRS {
            let prog = format!("/mpi_check.{mpi}");
            // Every rank also reads the memory of its node's first rank (process_vm_readv), as MPI's single-copy
            // shared memory does: rootless, the step's containers on a node share one user namespace, without
            // which the kernel refuses it.
            let run = [drun(), "run", "-q", "-e", "MPI_CHECK_CMA=1", &img, &prog];
            let out = srun(&cluster, &sub, plugin, &[], &run);
            assert!(
                out.stdout.contains("cma OK"),
                "{who}, {plugin}: {}\n{}",
                out.stdout,
                out.stderr
            );
            assert_four_ranks(&out, &format!("{who}, {plugin} + {mpi} in containers"));
        }

        // One rank exits 3 (after MPI_Finalize): srun and sacct report the step failed with it.
        let name = format!("mpi-fail-{who}-{}", std::process::id());
        let out = srun(
            &cluster,
            &sub,
            "pmix",
            &["-J", &name],
            &[
                drun(),
                "run",
                "-q",
                "-e",
                "MPI_CHECK_FAIL_RANK=2",
                &img,
                "/mpi_check.ompi",
            ],
        );
        assert_eq!(out.code(), Some(3), "{who}: {}\n{}", out.stdout, out.stderr);
        assert!(out.stdout.contains("ranks 4 sum 6 ring OK"), "{who}: {}", out.stdout);
        let rows = sacct(&sub, &cluster, &name, 1);
        assert_eq!(
            rows.first().map(|r| (r[2].as_str(), r[3].as_str())),
            Some(("FAILED", "3:0")),
            "{who}: {rows:?}"
        );
    }
}

/// Open MPI's shared-memory transport between two ranks of a node, each in its own container, with its
/// single-copy path (cross-memory attach: process_vm_readv/writev, which the default seccomp profile must allow)
/// forced on: the program reads the other rank's memory itself, and Open MPI must not report a failed read.
#[test]
fn mpi_single_copy_shared_memory_works_between_containers() {
    assert!(common::is_root(), "the Slurm daemons run as root");
    let cluster = Cluster::up();
    let sub = Submitter::new(None);
    let img = image();
    let out = sub.run(&cluster, "srun", &["-N1", drun(), "pull", "-q", &img]);
    assert!(out.status.success(), "pull: {}", out.stderr);
    let out = srun(
        &cluster,
        &sub,
        "pmix",
        &[],
        &[
            drun(),
            "run",
            "-q",
            "-e",
            "MPI_CHECK_CMA=1",
            "-e",
            "OMPI_MCA_btl_vader_single_copy_mechanism=cma",
            &img,
            "/mpi_check.ompi",
        ],
    );
    assert!(out.stdout.contains("cma OK"), "{}\n{}", out.stdout, out.stderr);
    assert!(!out.stderr.contains("Read -1"), "a CMA read failed: {}", out.stderr);
    assert_four_ranks(&out, "single copy");
}

/// MPICH's ranks between rootless containers, repeated: in user namespaces of their own, UCX could share memory
/// only through named files and without cross-memory attach, so that the 1 MiB messages went through its TCP
/// transport, with which Debian 12's MPICH 4.0.2 and UCX 1.13 sometimes (about one run in three) spin in
/// `MPI_Finalize` (on the host too, with `UCX_TLS=tcp,self`). In the step's shared namespace they use shared
/// memory and cross-memory attach, as root does. `--time=1` bounds a hang.
#[test]
fn rootless_mpich_ranks_finish_under_pmi2() {
    assert!(common::is_root(), "the Slurm daemons run as root");
    let cluster = Cluster::up();
    let sub = Submitter::new(Some("drun-nosub"));
    let img = image();
    let out = sub.run(&cluster, "srun", &["-N1", drun(), "pull", "-q", &img]);
    assert!(out.status.success(), "pull: {}", out.stderr);
    for i in 0..10 {
        let out = srun(
            &cluster,
            &sub,
            "pmi2",
            &["--time=1"],
            &[drun(), "run", "-q", &img, "/mpi_check.mpich"],
        );
        assert_four_ranks(&out, &format!("drun-nosub, MPICH, run {i}"));
    }
}
