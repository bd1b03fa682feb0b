//! Which of the host's environment variables reach the container besides `-e` and `--env-file`: none, except
//! inside a Slurm job (its `SLURM_*`, `PMI_*` and `PMIX_*`, which MPI needs, and the training variables of
//! [`super::slurm_env`]) and with `--env-host` (all but drun's own and the host-specific ones of
//! [`env_host_excluded`]). docs/running.md ("Environment") is the policy in words; this file is its one place in
//! code. Pure: the host's variables come in as a list.

use super::slurm_env::{self, TrainingEnv};

/// The host's variables a plan carries, by layer. The container's environment is, later layers winning: PATH and
/// HOSTNAME defaults, `inherited`, the image's Env (then HOME and TERM defaults), `job`, the plan's own `env`
/// (`--env-file`, then `-e`).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HostEnv {
    /// `--env-host`: below the image's Env, as in Podman (a host's PATH must not hide the image's).
    pub inherited: Vec<(String, String)>,
    /// A Slurm job's variables and the training variables derived from them: above the image's Env, which cannot
    /// know the step it runs in.
    pub job: Vec<(String, String)>,
}

/// What the caller asked for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HostEnvOptions {
    /// `--env-host`: pass every host variable but the excluded ones.
    pub env_host: bool,
    /// `--no-training-env`: do not set MASTER_ADDR, RANK and the others in a Slurm step.
    pub no_training_env: bool,
}

/// The prefixes of the variables passed inside a Slurm job: Slurm's own, and those of its PMI-2 and PMIx servers,
/// which an MPI library in the container reads to find its rank and the server.
pub const SLURM_PREFIXES: &[&str] = &["SLURM_", "PMI_", "PMIX_"];

/// Whether `--env-host` leaves `name` out: drun's own settings (`DRUN_*`: store, state and test overrides that
/// name host paths), the dynamic loader's (`LD_*`: host library paths and preloads would be loaded into the
/// image's programs), and what describes the host process rather than the job (`HOME`, `HOSTNAME`, `PATH`, `PWD`,
/// `OLDPWD`, `SHLVL`, `_`): the container gets its own.
pub fn env_host_excluded(name: &str) -> bool {
    name.starts_with("DRUN_")
        || name.starts_with("LD_")
        || ["HOME", "HOSTNAME", "PATH", "PWD", "OLDPWD", "SHLVL", "_"].contains(&name)
}

/// Whether a host variable is one a Slurm job passes through.
pub fn is_slurm_variable(name: &str) -> bool {
    SLURM_PREFIXES.iter().any(|p| name.starts_with(p))
}

/// The host variables for a plan. `host` is the host's environment (`std::env::vars`, its non-UTF-8 entries left
/// out), `explicit` the caller's `-e`/`--env-file` settings (a training variable set there is not derived, and
/// its first node not looked up), `node_addr` the lookup of a node's address ([`slurm_env::node_addr`]). Returns
/// the layers and warnings about training variables that could not be derived.
pub fn host_env(
    host: &[(String, String)],
    explicit: &[(String, String)],
    options: HostEnvOptions,
    node_addr: &dyn Fn(&str) -> Result<String, String>,
) -> (HostEnv, Vec<String>) {
    let mut env = HostEnv::default();
    if options.env_host {
        env.inherited = host.iter().filter(|(k, _)| !env_host_excluded(k)).cloned().collect();
    }
    let get = |name: &str| host.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    if get("SLURM_JOB_ID").is_none() {
        return (env, Vec::new());
    }
    env.job = host.iter().filter(|(k, _)| is_slurm_variable(k)).cloned().collect();
    if options.no_training_env {
        return (env, Vec::new());
    }
    let set_by_caller =
        |name: &str| explicit.iter().any(|(k, _)| k == name) || env.inherited.iter().any(|(k, _)| k == name);
    let TrainingEnv { vars, warnings } = slurm_env::training_env(&get, &set_by_caller, node_addr);
    env.job.extend(vars);
    (env, warnings)
}

/// The process's environment as UTF-8 pairs (others cannot be carried into a plan and are left out).
pub fn process_env() -> Vec<(String, String)> {
    std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn no_lookup(_: &str) -> Result<String, String> {
        panic!("no node lookup expected")
    }

    const HOST: &[(&str, &str)] = &[
        ("PATH", "/usr/bin"),
        ("HOME", "/home/me"),
        ("DRUN_ROOT", "/x"),
        ("LD_PRELOAD", "/lib/evil.so"),
        ("OMP_NUM_THREADS", "4"),
        ("PMIX_RANK", "3"),
    ];

    #[test]
    fn outside_slurm_no_host_variable_passes() {
        let (env, warnings) = host_env(&pairs(HOST), &[], HostEnvOptions::default(), &no_lookup);
        assert_eq!((env, warnings), (HostEnv::default(), vec![]));
    }

    #[test]
    fn env_host_passes_all_but_drun_loader_and_host_specific_ones() {
        let options = HostEnvOptions {
            env_host: true,
            ..HostEnvOptions::default()
        };
        let (env, _) = host_env(&pairs(HOST), &[], options, &no_lookup);
        assert_eq!(env.inherited, pairs(&[("OMP_NUM_THREADS", "4"), ("PMIX_RANK", "3")]));
        assert!(env.job.is_empty(), "not in a Slurm job");
    }

    #[test]
    fn a_slurm_job_passes_its_slurm_pmi_and_pmix_variables() {
        let mut host = pairs(HOST);
        host.extend(pairs(&[
            ("SLURM_JOB_ID", "12"),
            ("SLURMD_NODENAME", "n1"),
            ("PMI_FD", "5"),
            ("PMIX_SERVER_URI4", "pmix-server.1;tcp4://127.0.0.1:1"),
            ("PMIXX", "no"),
        ]));
        // A batch script (no step): the job's variables, no training variables.
        let (env, warnings) = host_env(&host, &[], HostEnvOptions::default(), &no_lookup);
        assert_eq!(
            env.job,
            pairs(&[
                ("PMIX_RANK", "3"),
                ("SLURM_JOB_ID", "12"),
                ("PMI_FD", "5"),
                ("PMIX_SERVER_URI4", "pmix-server.1;tcp4://127.0.0.1:1"),
            ])
        );
        assert!(env.inherited.is_empty() && warnings.is_empty());
    }

    fn step() -> Vec<(String, String)> {
        pairs(&[
            ("SLURM_JOB_ID", "12"),
            ("SLURM_STEP_ID", "0"),
            ("SLURM_PROCID", "1"),
            ("SLURM_LOCALID", "1"),
            ("SLURM_NODEID", "0"),
            ("SLURM_STEP_NUM_TASKS", "2"),
            ("SLURM_STEP_NODELIST", "n1"),
            ("SLURM_STEP_TASKS_PER_NODE", "2"),
            ("MASTER_PORT", "1"),
        ])
    }

    fn value<'a>(vars: &'a [(String, String)], name: &str) -> Option<&'a str> {
        vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    #[test]
    fn a_step_gets_the_training_variables_unless_the_caller_set_them_or_opted_out() {
        let addr = |_: &str| Ok("10.1.1.1".to_string());
        let (env, warnings) = host_env(&step(), &[], HostEnvOptions::default(), &addr);
        assert!(warnings.is_empty());
        assert_eq!(value(&env.job, "SLURM_PROCID"), Some("1"));
        assert_eq!(value(&env.job, "MASTER_ADDR"), Some("10.1.1.1"));
        assert_eq!(value(&env.job, "RANK"), Some("1"));
        assert_eq!(
            value(&env.job, "MASTER_PORT"),
            Some("10120"),
            "the host's MASTER_PORT is not passed"
        );

        // -e MASTER_ADDR: neither derived nor looked up.
        let explicit = pairs(&[("MASTER_ADDR", "head")]);
        let (env, _) = host_env(&step(), &explicit, HostEnvOptions::default(), &no_lookup);
        assert_eq!(value(&env.job, "MASTER_ADDR"), None);

        // --env-host with the host's MASTER_PORT: the host's value, in the inherited layer.
        let options = HostEnvOptions {
            env_host: true,
            ..HostEnvOptions::default()
        };
        let (env, _) = host_env(&step(), &explicit, options, &no_lookup);
        assert_eq!(value(&env.job, "MASTER_PORT"), None);
        assert_eq!(value(&env.inherited, "MASTER_PORT"), Some("1"));

        // --no-training-env: the Slurm variables only.
        let options = HostEnvOptions {
            no_training_env: true,
            ..HostEnvOptions::default()
        };
        let (env, _) = host_env(&step(), &[], options, &no_lookup);
        assert_eq!(env.job.len(), 8);
        assert!(env.job.iter().all(|(k, _)| k.starts_with("SLURM_")));
    }
}
