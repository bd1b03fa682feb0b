//! The distributed-training variables PyTorch, NCCL and JAX launchers read (`MASTER_ADDR`, `MASTER_PORT`,
//! `WORLD_SIZE`, `RANK`, `LOCAL_RANK`, `LOCAL_WORLD_SIZE`, `NODE_RANK`), derived from a Slurm step's own variables.
//! Pure parsing, except [`node_addr`], which asks Slurm (bounded in time) where the first node is.

use std::time::Duration;

/// The variables this module sets, in the order they are set.
pub const TRAINING_VARS: &[&str] = &[
    "MASTER_ADDR",
    "MASTER_PORT",
    "WORLD_SIZE",
    "RANK",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "NODE_RANK",
];

/// What deriving the variables gave: the settings, and what could not be derived (for a warning).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct TrainingEnv {
    pub vars: Vec<(String, String)>,
    pub warnings: Vec<String>,
}

/// The training variables of the Slurm step described by `get` (the host's variables), leaving out those in
/// `skip` (the caller set them). `node_addr` answers the first node's address (normally [`node_addr`]); it is
/// asked only when `MASTER_ADDR` is wanted. Outside a task of a step (no `SLURM_STEP_ID` and `SLURM_PROCID`: a
/// batch script or an `salloc` shell, where a rank would be a lie) nothing is set.
pub fn training_env(
    get: &dyn Fn(&str) -> Option<String>,
    skip: &dyn Fn(&str) -> bool,
    node_addr: &dyn Fn(&str) -> Result<String, String>,
) -> TrainingEnv {
    let mut out = TrainingEnv::default();
    let number = |name: &str| get(name).and_then(|v| v.trim().parse::<u64>().ok());
    let (Some(step), Some(_)) = (number("SLURM_STEP_ID"), number("SLURM_PROCID")) else {
        return out;
    };
    let first = |names: &[&str]| names.iter().find_map(|n| get(n).filter(|v| !v.is_empty()));
    let mut set = |name: &str, value: Option<String>, why: &str| {
        if skip(name) {
            return;
        }
        match value {
            Some(v) => out.vars.push((name.to_string(), v)),
            None => out.warnings.push(format!(
                "{name} is not set in the container: {why}; set it with -e {name}=…"
            )),
        }
    };

    let master = match first(&["SLURM_STEP_NODELIST", "SLURM_NODELIST"]) {
        Some(list) if !skip("MASTER_ADDR") => match first_host(&list) {
            Some(host) => {
                node_addr(&host).map_err(|e| format!("cannot find the address of the first node {host:?}: {e}"))
            }
            None => Err(format!(
                "invalid SLURM_STEP_NODELIST {list:?}: expected a Slurm host list"
            )),
        },
        Some(_) => Err(String::new()),
        None => Err("SLURM_STEP_NODELIST is not set".to_string()),
    };
    let why = master.as_ref().err().cloned().unwrap_or_default();
    set("MASTER_ADDR", master.ok(), &why);
    let port = number("SLURM_JOB_ID").map(|job| master_port(job, step).to_string());
    set("MASTER_PORT", port, "SLURM_JOB_ID is not a number");
    let world = first(&["SLURM_STEP_NUM_TASKS", "SLURM_NTASKS"]);
    set("WORLD_SIZE", world, "SLURM_STEP_NUM_TASKS is not set");
    set("RANK", get("SLURM_PROCID"), "");
    set("LOCAL_RANK", get("SLURM_LOCALID"), "SLURM_LOCALID is not set");
    let node = number("SLURM_NODEID");
    let local_world = first(&["SLURM_STEP_TASKS_PER_NODE", "SLURM_TASKS_PER_NODE"])
        .and_then(|list| tasks_per_node(&list))
        .zip(node)
        .and_then(|(counts, node)| counts.get(usize::try_from(node).ok()?).copied())
        .map(|n| n.to_string());
    set(
        "LOCAL_WORLD_SIZE",
        local_world,
        "SLURM_STEP_TASKS_PER_NODE does not give this node's task count",
    );
    set("NODE_RANK", node.map(|n| n.to_string()), "SLURM_NODEID is not set");
    out
}

/// The rendezvous port of step `step` of job `job`: in 10000–29999, unprivileged and below Linux's ephemeral range
/// (32768–60999 by default), so no outgoing connection holds it. Ten steps of a job that run at once get ten ports;
/// jobs 2000 ids apart share one (only a problem when they also share their first node).
pub fn master_port(job: u64, step: u64) -> u16 {
    let port = 10_000 + (job % 2000) * 10 + step % 10;
    u16::try_from(port).expect("below 30000 by construction")
}

/// The first host name of a Slurm host list: `n[1-2]` → `n1`, `gpu[007-010,3],cpu1` → `gpu007`,
/// `rack[2-3]-node[01-04]` → `rack2-node01`. None for an empty or malformed list.
pub fn first_host(list: &str) -> Option<String> {
    let mut host = String::new();
    let mut rest = list.trim();
    loop {
        match rest.find(['[', ',']) {
            None => {
                host.push_str(rest);
                break;
            }
            Some(i) if rest.as_bytes()[i] == b',' => {
                host.push_str(&rest[..i]);
                break;
            }
            Some(i) => {
                host.push_str(&rest[..i]);
                let close = rest[i..].find(']')? + i;
                let first = rest[i + 1..close].split(',').next()?;
                let start = first.split('-').next()?;
                if start.is_empty() || !start.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                host.push_str(start);
                rest = &rest[close + 1..];
            }
        }
    }
    // It becomes an argument of `scontrol`: never an option.
    let ok = !host.is_empty()
        && !host.starts_with('-')
        && host.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    ok.then_some(host)
}

/// The per-node task counts of `SLURM_STEP_TASKS_PER_NODE`: `2(x3),1` → `[2, 2, 2, 1]`. None when malformed, or
/// when it would describe more than 100 000 nodes.
pub fn tasks_per_node(list: &str) -> Option<Vec<u64>> {
    const MAX_NODES: u64 = 100_000;
    let mut out = Vec::new();
    for item in list.trim().split(',') {
        let (count, repeat) = match item.split_once('(') {
            Some((count, rep)) => (count, rep.strip_prefix('x')?.strip_suffix(')')?.parse::<u64>().ok()?),
            None => (item, 1),
        };
        let count = count.parse::<u64>().ok()?;
        if repeat == 0 || out.len() as u64 + repeat > MAX_NODES {
            return None;
        }
        out.extend(std::iter::repeat_n(count, usize::try_from(repeat).ok()?));
    }
    Some(out)
}

/// The `NodeAddr=` of one node in `scontrol show node -o NAME`'s output, when it looks like a host name or an
/// address (Slurm's output is trusted no further than that).
pub fn parse_node_addr(scontrol_output: &str) -> Option<String> {
    let addr = scontrol_output
        .split_whitespace()
        .find_map(|field| field.strip_prefix("NodeAddr="))?;
    let ok = !addr.is_empty()
        && addr.len() <= 255
        && addr
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:[]%".contains(&b));
    ok.then(|| addr.to_string())
}

/// Where Slurm's clients are installed: distribution packages, then the usual prefixes of a site build.
const SCONTROL_DIRS: &[&str] = &[
    "/usr/bin",
    "/usr/local/bin",
    "/bin",
    "/opt/slurm/bin",
    "/usr/local/slurm/bin",
];

/// The `scontrol` to run. As root, not a PATH lookup: root's PATH inside a job is the submitter's environment
/// (`srun` passes it along), so a directory an ordinary user controls could come first and that user's
/// `scontrol` would run as root. Root takes the first of [`SCONTROL_DIRS`] whose program, and every directory
/// above it, is root's and writable by no one else. Rootless, PATH is the caller's own to choose.
fn scontrol() -> Result<std::path::PathBuf, String> {
    if crate::sys::userns::is_rootless() {
        return Ok("scontrol".into());
    }
    static FOUND: std::sync::OnceLock<Option<std::path::PathBuf>> = std::sync::OnceLock::new();
    FOUND
        .get_or_init(|| {
            SCONTROL_DIRS
                .iter()
                .map(|d| std::path::Path::new(d).join("scontrol"))
                .find(|p| trusted_by_root(p))
        })
        .clone()
        .ok_or_else(|| format!("no scontrol that only root can change in {}", SCONTROL_DIRS.join(", ")))
}

/// `path` (symlinks followed, each step checked) is an executable regular file that only root can replace: it
/// and every directory that leads to it belong to root and are not writable by group or others.
fn trusted_by_root(path: &std::path::Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let Ok(real) = std::fs::canonicalize(path) else {
        return false;
    };
    let ok = |p: &std::path::Path| {
        std::fs::metadata(p).is_ok_and(|m| crate::sys::safe_fs::open_to_others(&m, |uid| uid == 0, false).is_none())
    };
    let file_ok = std::fs::metadata(&real).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
    // The link itself and the directories on the way to it (/usr/bin → /bin on merged-/usr systems) as well as
    // those of its target.
    file_ok && real.ancestors().all(ok) && path.parent().is_some_and(|d| d.ancestors().all(ok))
}

/// How long [`node_addr`] waits for `scontrol`.
const SCONTROL_TIMEOUT: Duration = Duration::from_secs(3);

/// The address of Slurm node `node` as the container can use it: its `NodeAddr`, asked of slurmctld with the
/// host's `scontrol show node -o NODE` (bounded by [`SCONTROL_TIMEOUT`]), and, when that is a name rather than an
/// address, resolved on the host.
///
/// Why this source: the node *name* need not resolve at all (Slurm keeps name and address apart; the test
/// cluster's `n1` and `n2` do not), and a name that resolves through the host's `/etc/hosts` still would not in
/// the container, which gets a fresh `/etc/hosts`. `NodeAddr` is the address Slurm itself reaches the node at.
/// It is asked on the host, by drun, so the image needs no Slurm client. slurm.conf could be read instead, but
/// its node lines may come from `Include` files, host-list ranges or `scontrol update` (cloud and dynamic
/// nodes), which only slurmctld knows for sure; the question costs one RPC, about 10 ms.
///
/// The answer is kept for the job in drun's state directory ([`cache_file`]): the other tasks and later steps of
/// the job on this node read it instead of asking slurmctld again (forking `scontrol` and its RPC were about a
/// third of `drun run`'s time in a step).
pub fn node_addr(node: &str) -> Result<String, String> {
    let job = std::env::var("SLURM_JOB_ID").unwrap_or_default();
    let key = format!("{job} {node}");
    let cache = cache_file();
    if let Some(addr) = cache.as_deref().and_then(|f| cached(f, &key)) {
        return Ok(addr);
    }
    let addr = ask_node_addr(node)?;
    if let Some(f) = cache {
        // A cache: a failed write only costs the next task the question.
        let _ = crate::sys::safe_fs::write_replace(&f, format!("{key}\n{addr}\n").as_bytes(), 0o600);
    }
    Ok(addr)
}

/// Where [`node_addr`] keeps its last answer: in drun's state directory (`DRUN_STATE`, else the default), when
/// that exists and is private to this user (it is not created here).
fn cache_file() -> Option<std::path::PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let dir = std::env::var_os("DRUN_STATE")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(crate::run::state::default_state_dir);
    let m = std::fs::symlink_metadata(&dir).ok()?;
    let private = m.is_dir() && m.uid() == nix::unistd::geteuid().as_raw() && m.mode() & 0o077 == 0;
    private.then(|| dir.join("slurm-node-addr"))
}

/// The cached address for `key` (`JOB NODE`), if that is what `file` holds and it is an address.
fn cached(file: &std::path::Path, key: &str) -> Option<String> {
    let bytes = crate::sys::safe_fs::read_bounded(file, 4096).ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let mut lines = text.lines();
    (lines.next()? == key).then_some(())?;
    let addr = lines.next()?;
    addr.parse::<std::net::IpAddr>().is_ok().then(|| addr.to_string())
}

fn ask_node_addr(node: &str) -> Result<String, String> {
    let mut cmd = std::process::Command::new(scontrol()?);
    cmd.args(["show", "node", "-o", node]);
    let out = crate::sys::command::output_within(cmd, SCONTROL_TIMEOUT, 64 << 10)
        .map_err(|e| format!("`scontrol show node -o {node}` failed: {e}"))?;
    let addr = parse_node_addr(&String::from_utf8_lossy(&out))
        .ok_or_else(|| format!("`scontrol show node -o {node}` gave no NodeAddr"))?;
    if addr.parse::<std::net::IpAddr>().is_ok() {
        return Ok(addr);
    }
    // A name: Slurm's own daemons resolve it the same way, so the host answers it promptly.
    let resolved = std::net::ToSocketAddrs::to_socket_addrs(&(addr.as_str(), 0))
        .map_err(|e| format!("cannot resolve its NodeAddr {addr:?}: {e}"))?
        .map(|a| a.ip())
        .min_by_key(|ip| ip.is_ipv6());
    resolved
        .map(|ip| ip.to_string())
        .ok_or_else(|| format!("its NodeAddr {addr:?} has no address"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cached_node_address_is_used_only_for_its_job_and_node() {
        let t = tempfile::tempdir().unwrap();
        let f = t.path().join("slurm-node-addr");
        crate::sys::safe_fs::write_replace(&f, b"12 n1\n10.0.0.1\n", 0o600).unwrap();
        assert_eq!(cached(&f, "12 n1").as_deref(), Some("10.0.0.1"));
        assert_eq!(cached(&f, "13 n1"), None);
        assert_eq!(cached(&f, "12 n2"), None);
        crate::sys::safe_fs::write_replace(&f, b"12 n1\n--option\n", 0o600).unwrap();
        assert_eq!(cached(&f, "12 n1"), None, "only an address is believed");
    }

    #[test]
    fn first_hosts_of_host_lists() {
        for (list, want) in [
            ("n1", Some("n1")),
            ("-oneliner", None),
            ("n[1-2]", Some("n1")),
            ("n[2,5-7]", Some("n2")),
            ("gpu[007-010,3],cpu1", Some("gpu007")),
            ("a1,b[1-3]", Some("a1")),
            ("rack[2-3]-node[01-04]", Some("rack2-node01")),
            ("node-1.cluster", Some("node-1.cluster")),
            ("", None),
            ("n[", None),
            ("n[x-y]", None),
            ("n[]", None),
            ("bad name", None),
        ] {
            assert_eq!(first_host(list).as_deref(), want, "{list:?}");
        }
    }

    #[test]
    fn tasks_per_node_lists() {
        assert_eq!(tasks_per_node("4"), Some(vec![4]));
        assert_eq!(tasks_per_node("2(x3)"), Some(vec![2, 2, 2]));
        assert_eq!(tasks_per_node("2(x3),1"), Some(vec![2, 2, 2, 1]));
        assert_eq!(tasks_per_node("3,1(x2),5"), Some(vec![3, 1, 1, 5]));
        for bad in ["", "x", "2(3)", "2(x3", "2(x0)", "2(x999999999999)", "-1", "1,,2"] {
            assert_eq!(tasks_per_node(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn master_ports_are_unprivileged_and_per_step() {
        assert_eq!(master_port(1, 0), 10_010);
        assert_eq!(master_port(1, 1), 10_011);
        assert_eq!(master_port(1999, 9), 29_999);
        assert_eq!(master_port(2000, 0), 10_000);
        for job in [0, 7, 123_456, u64::MAX] {
            for step in [0, 9, 10, u64::MAX] {
                assert!((10_000..30_000).contains(&master_port(job, step)));
            }
        }
    }

    #[test]
    fn node_addr_from_scontrol_output() {
        let out = "NodeName=n1 Arch=x86_64 CoresPerSocket=1 Gres=gpu:2 NodeAddr=127.0.0.1 NodeHostName=localhost \
                   Port=28077 Reason=some reason [root@2026]\n";
        assert_eq!(parse_node_addr(out).as_deref(), Some("127.0.0.1"));
        assert_eq!(
            parse_node_addr("NodeName=x NodeAddr=ib-n1.example NodeHostName=n1").as_deref(),
            Some("ib-n1.example")
        );
        assert_eq!(parse_node_addr("NodeName=x NodeAddr= Port=1"), None);
        assert_eq!(parse_node_addr("NodeName=x NodeAddr=a\u{1b}[2J"), None);
        assert_eq!(parse_node_addr("Node n1 not found"), None);
    }

    fn step_vars(name: &str) -> Option<String> {
        let v = match name {
            "SLURM_JOB_ID" => "1234",
            "SLURM_STEP_ID" => "2",
            "SLURM_PROCID" => "5",
            "SLURM_LOCALID" => "1",
            "SLURM_NODEID" => "2",
            "SLURM_STEP_NUM_TASKS" => "8",
            "SLURM_NTASKS" => "99",
            "SLURM_STEP_NODELIST" => "gpu[07-09]",
            "SLURM_STEP_TASKS_PER_NODE" => "3(x2),2",
            _ => return None,
        };
        Some(v.to_string())
    }

    fn addr_of(node: &str) -> Result<String, String> {
        match node {
            "gpu07" => Ok("10.0.0.7".into()),
            _ => Err("no such node".into()),
        }
    }

    fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn a_step_gives_every_variable() {
        let env = training_env(&step_vars, &|_| false, &addr_of);
        assert_eq!(
            env,
            TrainingEnv {
                vars: pairs(&[
                    ("MASTER_ADDR", "10.0.0.7"),
                    ("MASTER_PORT", &master_port(1234, 2).to_string()),
                    ("WORLD_SIZE", "8"),
                    ("RANK", "5"),
                    ("LOCAL_RANK", "1"),
                    ("LOCAL_WORLD_SIZE", "2"),
                    ("NODE_RANK", "2"),
                ]),
                warnings: vec![],
            }
        );
    }

    #[test]
    fn what_the_caller_set_is_neither_derived_nor_looked_up() {
        let asked = std::cell::Cell::new(false);
        let lookup = |n: &str| {
            asked.set(true);
            addr_of(n)
        };
        let env = training_env(&step_vars, &|n| n == "MASTER_ADDR" || n == "RANK", &lookup);
        assert!(!asked.get(), "no scontrol call for a MASTER_ADDR given with -e");
        let names: Vec<&str> = env.vars.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            names,
            [
                "MASTER_PORT",
                "WORLD_SIZE",
                "LOCAL_RANK",
                "LOCAL_WORLD_SIZE",
                "NODE_RANK"
            ]
        );
        assert!(env.warnings.is_empty());
    }

    #[test]
    fn an_unknown_first_node_gives_a_warning_naming_the_fix() {
        let vars = |n: &str| match n {
            "SLURM_STEP_NODELIST" => Some("n[1-2]".to_string()),
            _ => step_vars(n),
        };
        let env = training_env(&vars, &|_| false, &addr_of);
        assert!(!env.vars.iter().any(|(k, _)| k == "MASTER_ADDR"));
        assert_eq!(
            env.warnings,
            [
                "MASTER_ADDR is not set in the container: cannot find the address of the first node \"n1\": no such \
              node; set it with -e MASTER_ADDR=…"
            ]
        );
    }

    #[test]
    fn outside_a_step_nothing_is_set() {
        // A batch script or an salloc shell: a job, but no task of a step.
        let batch = |n: &str| match n {
            "SLURM_JOB_ID" => Some("7".to_string()),
            "SLURM_NTASKS" => Some("8".to_string()),
            _ => None,
        };
        assert_eq!(training_env(&batch, &|_| false, &addr_of), TrainingEnv::default());
        assert_eq!(training_env(&|_| None, &|_| false, &addr_of), TrainingEnv::default());
    }

    #[test]
    fn older_variables_fill_in() {
        // SLURM_STEP_* missing: the job-wide SLURM_NTASKS, SLURM_NODELIST and SLURM_TASKS_PER_NODE serve.
        let vars = |n: &str| match n {
            "SLURM_STEP_NUM_TASKS" | "SLURM_STEP_NODELIST" | "SLURM_STEP_TASKS_PER_NODE" => None,
            "SLURM_NODELIST" => Some("gpu07".to_string()),
            "SLURM_TASKS_PER_NODE" => Some("1(x2),4".to_string()),
            _ => step_vars(n),
        };
        let env = training_env(&vars, &|_| false, &addr_of);
        let get = |k: &str| env.vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(
            (get("MASTER_ADDR"), get("WORLD_SIZE"), get("LOCAL_WORLD_SIZE")),
            (Some("10.0.0.7"), Some("99"), Some("4"))
        );
    }
}
