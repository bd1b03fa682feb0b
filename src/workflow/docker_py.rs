//! docker-py's `containers.run` arguments that a workflow entry refuses, each with why and what to use instead
//! (docs/docker-py.md lists every argument; a test checks each refusal's message against that table), and the
//! notes for those accepted without effect.

/// Refused arguments: (key, reason and alternative).
pub const REFUSED: &[(&str, &str)] = &[
    (
        "cgroup_parent",
        "drun nests each container's cgroup under the cgroup drun runs in, so that a Slurm job's or a systemd unit's \
         limits still apply; start drun in the parent you want instead (systemd-run --scope --slice=NAME drun …)",
    ),
    (
        "cpu_count",
        "it is a Windows-only setting; on Linux use nano_cpus or cpuset_cpus",
    ),
    (
        "cpu_percent",
        "it is a Windows-only setting; on Linux use nano_cpus or cpu_quota",
    ),
    (
        "cpu_rt_period",
        "real-time CPU time needs budgets that the host hands down through every parent cgroup (cgroup v1 only); \
         drun does not hand them out: run real-time work outside a container",
    ),
    (
        "cpu_rt_runtime",
        "real-time CPU time needs budgets that the host hands down through every parent cgroup (cgroup v1 only); \
         drun does not hand them out: run real-time work outside a container",
    ),
    (
        "init_path",
        "drun's init is catatonit, found where the catatonit package installs it; use init: true, or set an init \
         of the image as entrypoint",
    ),
    (
        "isolation",
        "it chooses a Windows isolation technology; Linux containers have one",
    ),
    (
        "links",
        "links join containers on a bridge network, which needs a daemon; with the host network (the default) \
         other workflows' services are on localhost",
    ),
    (
        "log_config",
        "there is no logging driver without a daemon: a workflow's output goes to the terminal and to \
         artifacts/NAME.log",
    ),
    ("lxc_conf", "it configured Docker's long-gone LXC driver"),
    (
        "mac_address",
        "a MAC address belongs to an interface of a bridge network, which needs a daemon; drun uses the host \
         network or none",
    ),
    (
        "ports",
        "publishing ports needs a bridge network, which needs a daemon; with the host network (the default) a \
         service's ports are the host's already",
    ),
    (
        "publish_all_ports",
        "publishing ports needs a bridge network, which needs a daemon; with the host network (the default) a \
         service's ports are the host's already",
    ),
    (
        "runtime",
        "drun is the runtime (it embeds libcontainer); GPUs need no other runtime: use device_requests or \
         resources.gpu",
    ),
    ("storage_opt", STORAGE_OPT_REASON),
    (
        "use_config_proxy",
        "drun does not read proxy settings from Docker's client configuration; pass them in environment, e.g. \
         HTTP_PROXY: ${HTTP_PROXY}",
    ),
    (
        "volume_driver",
        "volume plugins need a daemon; mount what the plugin would provide on the host and use volumes",
    ),
    (
        "volumes_from",
        "there are no other containers to take volumes from without a daemon; use volumes with the same host \
         directories, or a dependency's artifacts",
    ),
];

/// Why `storage_opt` (`--storage-opt`) is refused.
pub const STORAGE_OPT_REASON: &str = "the container's writable layer is a directory of drun's store under an \
     overlay, which has no size or other per-container storage options; mount a sized tmpfs (tmpfs) for scratch \
     space instead";

/// The note for `kernel_memory` (`--kernel-memory`), accepted and ignored as Docker does.
pub const KERNEL_MEMORY_NOTE: &str = "kernel memory limits are deprecated by the kernel and ignored, as Docker \
     ignores them: the memory limit counts kernel memory already";

/// The reason a refused key gives.
pub fn refusal(key: &str) -> Option<&'static str> {
    REFUSED.iter().find(|(k, _)| *k == key).map(|(_, r)| *r)
}
