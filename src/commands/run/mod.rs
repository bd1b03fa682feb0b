//! `drun run`: a container from an image (`drun run IMAGE [COMMAND…]`, [`container`]) or the workflows of a
//! workflow file (`drun run WORKFLOW.yaml [NAME…]`, [`workflow`]).

pub(crate) mod container;
mod workflow;

use anyhow::Result;

use crate::cli::{CommonRunArgs, GlobalArgs, RunArgs};
use crate::plan::host_env::{self, HostEnv, HostEnvOptions};
use crate::plan::parse::{env_file_lines, env_item};

/// Runs a container or a workflow file; returns drun's exit status.
pub fn execute(global: &GlobalArgs, args: RunArgs) -> Result<i32> {
    // The image argument takes hyphen values (for `drun run IMAGE -c …`), so an option clap does not know lands
    // here: say so rather than "invalid image reference".
    if let Some(option) = args.image_and_command.first().filter(|a| a.starts_with('-')) {
        anyhow::bail!("unknown option {option:?} for `drun run` (options go before the image; see `drun run --help`)");
    }
    if is_workflow_file(&args.image_and_command[0]) {
        workflow::execute(global, args)
    } else {
        container::execute(global, args)
    }
}

/// Whether the first argument names a workflow file (always, for `*.yaml`/`*.yml`: never pulled as an image).
pub fn is_workflow_file(arg: &str) -> bool {
    arg.ends_with(".yaml") || arg.ends_with(".yml")
}

/// The host's environment, for `-e KEY` and a workflow's `${VAR}`.
fn host_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// `--env-file` settings (the files' texts, in order), then `-e` ones: later ones win.
fn environment(common: &CommonRunArgs, env_file_texts: &[String]) -> Result<Vec<(String, String)>> {
    let mut env = Vec::new();
    for (file, text) in common.env_file.iter().zip(env_file_texts) {
        for (line, item) in env_file_lines(text) {
            let setting = env_item(item, &host_env).map_err(|e| e.named(format!("--env-file {file:?} line {line}")))?;
            env.extend(setting);
        }
    }
    for item in &common.env {
        env.extend(env_item(item, &host_env).map_err(|e| e.named("--env"))?);
    }
    Ok(env)
}

/// The host variables that reach the container (`--env-host`, a Slurm job's; `explicit` are the `-e` and
/// `--env-file` settings); what could not be derived is printed as a warning.
fn host_variables(common: &CommonRunArgs, explicit: &[(String, String)]) -> HostEnv {
    let options = HostEnvOptions {
        env_host: common.env_host,
        no_training_env: common.no_training_env,
    };
    let (env, warnings) = host_env::host_env(
        &host_env::process_env(),
        explicit,
        options,
        &crate::plan::slurm_env::node_addr,
    );
    for w in warnings {
        eprintln!("warning: {w}");
    }
    env
}

/// `--tmp-size`, parsed.
fn tmp_size(common: &CommonRunArgs) -> Result<Option<crate::units::ByteSize>> {
    let size = common
        .tmp_size
        .as_deref()
        .map(crate::plan::parse::size)
        .transpose()
        .map_err(|e| e.named("--tmp-size"))?;
    // A tmpfs of size 0 has no limit at all.
    if size.is_some_and(|s| s.0 == 0) {
        anyhow::bail!("invalid --tmp-size \"0\": expected a size above zero");
    }
    Ok(size)
}
