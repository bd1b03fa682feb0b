//! `drun cdi generate`: a CDI spec for this host's NVIDIA driver, for drun and any other CDI-aware runtime.

use anyhow::{bail, Context, Result};

use crate::cli::{CdiArgs, CdiCommand};
use crate::gpu::{self, cdi};

pub fn execute(a: CdiArgs) -> Result<i32> {
    match a.command {
        CdiCommand::Generate { output, capabilities } => {
            let root = gpu::driver_root();
            let Some(driver) = gpu::discover(&root)? else {
                bail!(
                    "no NVIDIA driver found: {:?} does not exist",
                    gpu::host_path(&root, "/proc/driver/nvidia/gpus")
                );
            };
            let spec = cdi::generate(&driver, &gpu::capabilities(Some(&capabilities)));
            let json = output
                .as_ref()
                .is_some_and(|o| o.extension().is_some_and(|e| e == "json"));
            let text = if json {
                serde_json::to_string_pretty(&spec)? + "\n"
            } else {
                serde_saphyr::to_string(&spec).context("cannot write the CDI spec as YAML")?
            };
            match output {
                Some(path) => {
                    // Read by every CDI consumer (podman, containerd, other users' drun): the caller's umask.
                    crate::sys::safe_fs::write_replace(&path, text.as_bytes(), crate::sys::safe_fs::for_caller(0o666))
                        .with_context(|| format!("cannot write the CDI spec {path:?}"))?;
                    eprintln!(
                        "wrote {} ({} GPU(s), driver {})",
                        path.display(),
                        driver.gpus.len(),
                        driver.version
                    );
                }
                None => print!("{text}"),
            }
            Ok(0)
        }
    }
}
