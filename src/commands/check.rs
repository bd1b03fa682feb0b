//! `drun check [--repair] [--deep]`: the store's damage and leftovers (`image::store::check`) and the runs whose
//! drun died (`run::state::stale_runs`), with the shared squashfs mounts no live run uses
//! (`run::shared_mount::unreferenced`). Exit status 1 when something was found and not repaired.

use std::time::Instant;

use anyhow::Result;

use crate::cli::{CheckArgs, GlobalArgs};

pub fn execute(global: &GlobalArgs, args: CheckArgs) -> Result<i32> {
    let started = Instant::now();
    let store = super::open_store(global)?;
    let state = super::state_dir(global)?;
    // Repair waits for the exclusive lock, as prune does; a check takes it only if it is free.
    let lock = if args.repair {
        Some(store.lock_exclusive()?)
    } else {
        store.try_lock_exclusive()?
    };
    let report = store.check(lock.is_some(), args.deep);
    let stale = crate::run::state::stale_runs(&state);
    for p in &report.problems {
        println!("damage: {}", p.what);
    }
    for dir in &stale {
        println!(
            "stale run: {} (its drun died; its mounts, cgroup and processes may be left)",
            dir.display()
        );
    }
    // Shared squashfs mounts that no live run uses (a drun killed between mounting and referencing one).
    let unused = crate::run::shared_mount::unreferenced(&state);
    for mnt in &unused {
        println!("unused mount: {} (a squashfs image no live run uses)", mnt.display());
    }
    let found = report.problems.len() + stale.len() + unused.len();
    if let (true, Some(lock)) = (args.repair, &lock) {
        for line in store.repair(lock, &report.problems)? {
            println!("{line}");
        }
        let reaped = crate::run::state::reap_stale(&state);
        if reaped > 0 {
            println!("repaired: {reaped} stale run(s) cleaned up");
        }
    }
    if lock.is_none() {
        println!("note: tmp/ was not checked: another drun holds the store (a pull, or a run starting); --repair waits for it");
    }
    println!(
        "checked {} images, {} layers, {} setup layers, {} blobs and the runs in {} ms{}: {}",
        report.images,
        report.layers,
        report.setup_layers,
        report.blobs,
        started.elapsed().as_millis(),
        if args.deep { " (deep)" } else { "" },
        match (found, args.repair) {
            (0, _) => "no problems".to_string(),
            (n, true) => format!("{n} problem(s), repaired"),
            (n, false) => format!("{n} problem(s); `drun check --repair` removes them"),
        }
    );
    Ok(if found > 0 && !args.repair { 1 } else { 0 })
}
