//! The default seccomp profile: an allow-list in the spirit of Docker's. Everything not listed fails with EPERM.
//! Left out on purpose: mounting and namespaces (`mount`, `umount2`, `pivot_root`, `unshare`, `setns`), the kernel
//! keyring (`add_key`, `keyctl`, `request_key`), module and kexec loading, `bpf`, `perf_event_open`,
//! `userfaultfd`, clock and swap administration, `reboot`, `acct`, `quotactl`, file-handle syscalls
//! (`open_by_handle_at`), `ptrace`-like cross-process memory access, `clone` with namespace flags, and io_uring
//! (`io_uring_setup`, `io_uring_enter`, `io_uring_register`: its requests bypass seccomp altogether, and Docker's
//! default profile has left it out since moby 25, so programs fall back to ordinary system calls on EPERM).
//! `--privileged` or `--security-opt seccomp=unconfined` run without it; `seccomp=FILE.json` uses another.

use serde::Deserialize;
use serde_json::{json, Value};
use std::path::Path;

use crate::image::store::Store;

const ALLOWED: &[&str] = &[
    "accept",
    "accept4",
    "access",
    "adjtimex",
    "alarm",
    "arch_prctl",
    "bind",
    "brk",
    "capget",
    "capset",
    "chdir",
    "chmod",
    "chown",
    "clock_adjtime",
    "clock_getres",
    "clock_gettime",
    "clock_nanosleep",
    "close",
    "close_range",
    "connect",
    "copy_file_range",
    "creat",
    "dup",
    "dup2",
    "dup3",
    "epoll_create",
    "epoll_create1",
    "epoll_ctl",
    "epoll_pwait",
    "epoll_pwait2",
    "epoll_wait",
    "eventfd",
    "eventfd2",
    "execve",
    "execveat",
    "exit",
    "exit_group",
    "faccessat",
    "faccessat2",
    "fadvise64",
    "fallocate",
    "fanotify_mark",
    "fchdir",
    "fchmod",
    "fchmodat",
    "fchown",
    "fchownat",
    "fcntl",
    "fdatasync",
    "fgetxattr",
    "flistxattr",
    "flock",
    "fork",
    "fremovexattr",
    "fsetxattr",
    "fstat",
    "fstatfs",
    "fsync",
    "ftruncate",
    "futex",
    "futex_waitv",
    "futimesat",
    "get_robust_list",
    "get_thread_area",
    "getcpu",
    "getcwd",
    "getdents",
    "getdents64",
    "getegid",
    "geteuid",
    "getgid",
    "getgroups",
    "getitimer",
    "getpeername",
    "getpgid",
    "getpgrp",
    "getpid",
    "getppid",
    "getpriority",
    "getrandom",
    "getresgid",
    "getresuid",
    "getrlimit",
    "getrusage",
    "getsid",
    "getsockname",
    "getsockopt",
    "gettid",
    "gettimeofday",
    "getuid",
    "getxattr",
    "inotify_add_watch",
    "inotify_init",
    "inotify_init1",
    "inotify_rm_watch",
    "io_cancel",
    "io_destroy",
    "io_getevents",
    "io_pgetevents",
    "io_setup",
    "io_submit",
    "ioctl",
    "ioprio_get",
    "ioprio_set",
    "ipc",
    "kill",
    "landlock_add_rule",
    "landlock_create_ruleset",
    "landlock_restrict_self",
    "lchown",
    "lgetxattr",
    "link",
    "linkat",
    "listen",
    "listxattr",
    "llistxattr",
    "lremovexattr",
    "lseek",
    "lsetxattr",
    "lstat",
    "madvise",
    "membarrier",
    "memfd_create",
    "mincore",
    "mkdir",
    "mkdirat",
    "mknod",
    "mknodat",
    "mlock",
    "mlock2",
    "mlockall",
    "mmap",
    "mprotect",
    "mq_getsetattr",
    "mq_notify",
    "mq_open",
    "mq_timedreceive",
    "mq_timedsend",
    "mq_unlink",
    "mremap",
    "msgctl",
    "msgget",
    "msgrcv",
    "msgsnd",
    "msync",
    "munlock",
    "munlockall",
    "munmap",
    "name_to_handle_at",
    "nanosleep",
    "newfstatat",
    "open",
    "openat",
    "openat2",
    "pause",
    "pidfd_getfd",
    "pidfd_open",
    "pidfd_send_signal",
    "pipe",
    "pipe2",
    "pkey_alloc",
    "pkey_free",
    "pkey_mprotect",
    "poll",
    "ppoll",
    "prctl",
    "pread64",
    "preadv",
    "preadv2",
    "prlimit64",
    "process_mrelease",
    "pselect6",
    "pwrite64",
    "pwritev",
    "pwritev2",
    "read",
    "readahead",
    "readlink",
    "readlinkat",
    "readv",
    "recvfrom",
    "recvmmsg",
    "recvmsg",
    "remap_file_pages",
    "removexattr",
    "rename",
    "renameat",
    "renameat2",
    "restart_syscall",
    "rmdir",
    "rseq",
    "rt_sigaction",
    "rt_sigpending",
    "rt_sigprocmask",
    "rt_sigqueueinfo",
    "rt_sigreturn",
    "rt_sigsuspend",
    "rt_sigtimedwait",
    "rt_tgsigqueueinfo",
    "sched_get_priority_max",
    "sched_get_priority_min",
    "sched_getaffinity",
    "sched_getattr",
    "sched_getparam",
    "sched_getscheduler",
    "sched_rr_get_interval",
    "sched_setaffinity",
    "sched_setattr",
    "sched_setparam",
    "sched_setscheduler",
    "sched_yield",
    "seccomp",
    "select",
    "semctl",
    "semget",
    "semop",
    "semtimedop",
    "send",
    "sendfile",
    "sendmmsg",
    "sendmsg",
    "sendto",
    "set_robust_list",
    "set_thread_area",
    "set_tid_address",
    "setfsgid",
    "setfsuid",
    "setgid",
    "setgroups",
    "setitimer",
    "setpgid",
    "setpriority",
    "setregid",
    "setresgid",
    "setresuid",
    "setreuid",
    "setrlimit",
    "setsid",
    "setsockopt",
    "setuid",
    "setxattr",
    "shmat",
    "shmctl",
    "shmdt",
    "shmget",
    "shutdown",
    "sigaltstack",
    "signalfd",
    "signalfd4",
    "socket",
    "socketcall",
    "socketpair",
    "splice",
    "stat",
    "statfs",
    "statx",
    "symlink",
    "symlinkat",
    "sync",
    "sync_file_range",
    "syncfs",
    "sysinfo",
    "tee",
    "tgkill",
    "time",
    "timer_create",
    "timer_delete",
    "timer_getoverrun",
    "timer_gettime",
    "timer_settime",
    "timerfd_create",
    "timerfd_gettime",
    "timerfd_settime",
    "times",
    "tkill",
    "truncate",
    "umask",
    "uname",
    "unlink",
    "unlinkat",
    "utime",
    "utimensat",
    "utimes",
    "vfork",
    "vmsplice",
    "wait4",
    "waitid",
    "write",
    "writev",
];

/// Namespace flags of clone(2): CLONE_NEWNS|NEWCGROUP|NEWUTS|NEWIPC|NEWUSER|NEWPID|NEWNET.
const CLONE_NS_FLAGS: u64 = 0x7E02_0000;
const EPERM: u32 = 1;
const ENOSYS: u32 = 38;

/// The host's native ABIs: each architecture added to a filter multiplies the time libseccomp takes to build it.
fn native_architectures() -> &'static [&'static str] {
    match std::env::consts::ARCH {
        "x86_64" => &["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "aarch64" => &["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"],
        "powerpc64" => &["SCMP_ARCH_PPC64LE"],
        "s390x" => &["SCMP_ARCH_S390X"],
        "riscv64" => &["SCMP_ARCH_RISCV64"],
        _ => &[],
    }
}

/// The profile as the runtime spec's `linux.seccomp` JSON.
pub fn default_profile() -> Value {
    json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": EPERM,
        "architectures": native_architectures(),
        "syscalls": [
            {"names": ALLOWED, "action": "SCMP_ACT_ALLOW"},
            // Plain fork/thread clones only: no new namespaces.
            {"names": ["clone"], "action": "SCMP_ACT_ALLOW",
             "args": [{"index": 0, "value": CLONE_NS_FLAGS, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}]},
            // clone3 passes its flags in memory, which seccomp cannot inspect: ENOSYS makes libcs fall back to clone.
            {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": ENOSYS},
            // personality(2) only for the harmless execution domains (Linux, 32-bit address space, UNAME26).
            {"names": ["personality"], "action": "SCMP_ACT_ALLOW", "args": [{"index": 0, "value": 0, "op": "SCMP_CMP_EQ"}]},
            {"names": ["personality"], "action": "SCMP_ACT_ALLOW", "args": [{"index": 0, "value": 8, "op": "SCMP_CMP_EQ"}]},
            {"names": ["personality"], "action": "SCMP_ACT_ALLOW", "args": [{"index": 0, "value": 131072, "op": "SCMP_CMP_EQ"}]},
            {"names": ["personality"], "action": "SCMP_ACT_ALLOW", "args": [{"index": 0, "value": 131080, "op": "SCMP_CMP_EQ"}]},
            {"names": ["personality"], "action": "SCMP_ACT_ALLOW", "args": [{"index": 0, "value": 4294967295u64, "op": "SCMP_CMP_EQ"}]},
        ]
    })
}

/// A seccomp filter compiled by drun before the container starts, loaded by drun's executor right before the
/// container's command is executed.
///
/// libcontainer compiles `linux.seccomp` with libseccomp in the container's init process, on every start: for the
/// default profile (about 300 rules on three x86 ABIs) that is ~8 ms of CPU, a third of a warm `drun run`. The BPF
/// program libseccomp generates depends only on the profile, libseccomp's version and the kernel's seccomp API
/// level, so drun compiles it once with the same translation libcontainer uses, caches the program in the store
/// (keyed by all three) and installs it itself with seccomp(2). Profiles this cannot reproduce exactly (user
/// notification, or no-new-privileges switched off, where the filter must be loaded while the process still has
/// CAP_SYS_ADMIN) stay in the spec for libcontainer.
#[derive(Clone)]
pub struct Precompiled {
    program: Vec<libc::sock_filter>,
    flags: libc::c_ulong,
}

#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    #[error("invalid seccomp profile: {0}")]
    Invalid(String),
    #[error("libseccomp could not compile the seccomp profile")]
    Compile(#[from] libseccomp::error::SeccompError),
    #[error("failed to compile the seccomp profile: {what}")]
    Io { what: &'static str, source: std::io::Error },
}

const CACHE_MAGIC: &[u8; 8] = b"drunbpf1";
/// The store's cache directory for compiled filters: `<store>/cache/seccomp/`.
const CACHE_KIND: &str = "seccomp";

impl Precompiled {
    /// The number of BPF instructions.
    pub fn len(&self) -> usize {
        self.program.len()
    }

    pub fn is_empty(&self) -> bool {
        self.program.is_empty()
    }

    fn from_bytes(bytes: &[u8], flags: libc::c_ulong) -> Option<Precompiled> {
        if bytes.is_empty() || bytes.len() % 8 != 0 || bytes.len() / 8 > u16::MAX as usize {
            return None;
        }
        let program = bytes
            .chunks_exact(8)
            .map(|c| libc::sock_filter {
                code: u16::from_ne_bytes([c[0], c[1]]),
                jt: c[2],
                jf: c[3],
                k: u32::from_ne_bytes([c[4], c[5], c[6], c[7]]),
            })
            .collect();
        Some(Precompiled { program, flags })
    }

    /// Installs the filter on the calling thread (the container's init, which has no_new_privs set).
    pub fn load(&self) -> std::io::Result<()> {
        let prog = libc::sock_fprog {
            len: self.program.len() as u16,
            filter: self.program.as_ptr() as *mut libc::sock_filter,
        };
        // SAFETY: `prog` points at `len` valid instructions that outlive the call; the kernel copies them.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                self.flags,
                &prog as *const libc::sock_fprog,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}

/// Takes `linux.seccomp` out of `spec` and returns it compiled, when drun can load it itself: the profile uses no
/// user notification and the process runs with no-new-privileges. The program is read from the store's cache
/// when a valid copy is there, else compiled and saved there for the next run.
pub fn take_precompiled(spec: &mut Value, store: &Store) -> Result<Option<Precompiled>, FilterError> {
    use oci_spec::runtime::{LinuxSeccomp, LinuxSeccompAction as A, LinuxSeccompFilterFlag as F};
    let Some(value) = spec.pointer("/linux/seccomp").cloned() else {
        return Ok(None);
    };
    if spec.pointer("/process/noNewPrivileges") != Some(&Value::Bool(true)) {
        return Ok(None);
    }
    let profile = LinuxSeccomp::deserialize(&value).map_err(|e| FilterError::Invalid(e.to_string()))?;
    let notify = profile.default_action() == A::ScmpActNotify
        || profile
            .syscalls()
            .iter()
            .flatten()
            .any(|r| r.action() == A::ScmpActNotify)
        || profile.listener_path().is_some();
    let mut flags: libc::c_ulong = 0;
    for f in profile.flags().iter().flatten() {
        flags |= match f {
            F::SeccompFilterFlagTsync => libc::SECCOMP_FILTER_FLAG_TSYNC,
            F::SeccompFilterFlagLog => libc::SECCOMP_FILTER_FLAG_LOG,
            F::SeccompFilterFlagSpecAllow => libc::SECCOMP_FILTER_FLAG_SPEC_ALLOW,
            // Only meaningful with a notification listener: left to libcontainer.
            F::SeccompFilterFlagWaitKillableRecv => return Ok(None),
        };
    }
    if notify {
        return Ok(None);
    }
    let key = format!("{}.bpf", cache_key(&value));
    let path = store.cache_path(CACHE_KIND, &key);
    let filter = match read_cached(&path, flags) {
        Some(f) => {
            tracing::debug!(path = %path.display(), instructions = f.len(), "seccomp filter from the cache");
            f
        }
        None => {
            let bytes = compile(&profile)?;
            let f = Precompiled::from_bytes(&bytes, flags)
                .ok_or_else(|| FilterError::Invalid(format!("libseccomp produced {} bytes of BPF", bytes.len())))?;
            if let Err(e) = write_cached(store, &key, &bytes) {
                tracing::debug!(path = %path.display(), "cannot cache the compiled seccomp filter: {e}");
            }
            tracing::debug!(instructions = f.len(), "seccomp filter compiled");
            f
        }
    };
    if let Some(linux) = spec.get_mut("linux").and_then(Value::as_object_mut) {
        linux.remove("seccomp");
    }
    Ok(Some(filter))
}

/// What the generated program depends on: the profile, drun's translation of it, libseccomp's version and the
/// running kernel (libseccomp picks actions and flags by the kernel's seccomp API level).
fn cache_key(profile: &Value) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(b"drun seccomp v1\0");
    h.update(env!("CARGO_PKG_VERSION").as_bytes());
    h.update(b"\0");
    if let Ok(v) = libseccomp::ScmpVersion::current() {
        h.update(format!("{}.{}.{}", v.major, v.minor, v.micro).as_bytes());
    }
    h.update(b"\0");
    if let Ok(u) = nix::sys::utsname::uname() {
        h.update(u.release().as_encoded_bytes());
        h.update(b"\0");
        h.update(u.machine().as_encoded_bytes());
    }
    h.update(b"\0");
    h.update(serde_json::to_vec(profile).expect("JSON serialises"));
    hex::encode(h.finalize())
}

/// A cache file is the magic, the program and the program's sha256: a truncated or altered file is not used.
fn read_cached(path: &Path, flags: libc::c_ulong) -> Option<Precompiled> {
    use sha2::{Digest, Sha256};
    // In drun's private store; a BPF program is at most 4096 instructions (32 KiB).
    let data = crate::safe_fs::read_bounded(path, 1 << 20).ok()?;
    let body = data.strip_prefix(CACHE_MAGIC.as_slice())?;
    let (program, sum) = body.split_at_checked(body.len().checked_sub(32)?)?;
    if Sha256::digest(program).as_slice() != sum {
        tracing::warn!(path = %path.display(), "ignoring a corrupt cached seccomp filter");
        return None;
    }
    Precompiled::from_bytes(program, flags)
}

fn write_cached(store: &Store, key: &str, program: &[u8]) -> Result<(), crate::image::store::StoreError> {
    use sha2::{Digest, Sha256};
    let mut data = Vec::with_capacity(CACHE_MAGIC.len() + program.len() + 32);
    data.extend_from_slice(CACHE_MAGIC);
    data.extend_from_slice(program);
    data.extend_from_slice(&Sha256::digest(program));
    store.write_cache(CACHE_KIND, key, &data)
}

/// The runtime spec's profile translated for libseccomp as libcontainer's `initialize_seccomp` does (same
/// actions, default errno, argument comparisons, skipped rules), then exported as BPF instead of loaded.
fn compile(profile: &oci_spec::runtime::LinuxSeccomp) -> Result<Vec<u8>, FilterError> {
    use libseccomp::{ScmpArgCompare, ScmpFilterContext, ScmpSyscall};
    use std::io::{Read, Seek};
    let default = action(profile.default_action(), profile.default_errno_ret())?;
    let mut ctx = ScmpFilterContext::new(default)?;
    for &a in profile.architectures().iter().flatten() {
        ctx.add_arch(arch(a))?;
    }
    ctx.set_ctl_nnp(false)?;
    for rule in profile.syscalls().iter().flatten() {
        let act = action(rule.action(), rule.errno_ret())?;
        if act == default {
            continue;
        }
        for name in rule.names() {
            let Ok(sc) = ScmpSyscall::from_name(name) else {
                tracing::debug!(name, "seccomp: syscall unknown to libseccomp, rule skipped");
                continue;
            };
            match rule.args() {
                Some(args) => {
                    let cmps: Vec<ScmpArgCompare> = args
                        .iter()
                        .map(|a| ScmpArgCompare::new(a.index() as u32, op(a.op(), a.value_two()), a.value()))
                        .collect();
                    let mut seen = std::collections::HashSet::new();
                    if args.iter().all(|a| seen.insert(a.index())) {
                        ctx.add_rule_conditional(act, sc, &cmps)?;
                    } else {
                        // One comparison per argument per rule (seccomp_rule_add(3)): each becomes its own rule.
                        for c in &cmps {
                            ctx.add_rule_conditional(act, sc, std::slice::from_ref(c))?;
                        }
                    }
                }
                None => {
                    ctx.add_rule(act, sc)?;
                }
            }
        }
    }
    let io = |what| move |source| FilterError::Io { what, source };
    let name = c"drun-seccomp";
    // SAFETY: memfd_create with a valid C string; the fd is owned by the File below.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(io("create a memfd")(std::io::Error::last_os_error()));
    }
    // SAFETY: `fd` was just created and is owned by nothing else.
    let mut f = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    ctx.export_bpf(&f)?;
    let mut bytes = Vec::new();
    f.rewind().map_err(io("read the BPF program"))?;
    f.read_to_end(&mut bytes).map_err(io("read the BPF program"))?;
    Ok(bytes)
}

fn action(a: oci_spec::runtime::LinuxSeccompAction, errno: Option<u32>) -> Result<libseccomp::ScmpAction, FilterError> {
    use libseccomp::ScmpAction as S;
    use oci_spec::runtime::LinuxSeccompAction as A;
    let errno = errno.map_or(libc::EPERM, |e| e as i32);
    Ok(match a {
        A::ScmpActKill | A::ScmpActKillThread => S::KillThread,
        A::ScmpActKillProcess => S::KillProcess,
        A::ScmpActTrap => S::Trap,
        A::ScmpActErrno => S::Errno(errno),
        A::ScmpActTrace => {
            S::Trace(u16::try_from(errno).map_err(|_| FilterError::Invalid(format!("SCMP_ACT_TRACE value {errno}")))?)
        }
        A::ScmpActAllow => S::Allow,
        A::ScmpActLog => S::Log,
        A::ScmpActNotify => S::Notify,
    })
}

fn op(o: oci_spec::runtime::LinuxSeccompOperator, two: Option<u64>) -> libseccomp::ScmpCompareOp {
    use libseccomp::ScmpCompareOp as C;
    use oci_spec::runtime::LinuxSeccompOperator as O;
    match o {
        O::ScmpCmpNe => C::NotEqual,
        O::ScmpCmpLt => C::Less,
        O::ScmpCmpLe => C::LessOrEqual,
        O::ScmpCmpEq => C::Equal,
        O::ScmpCmpGe => C::GreaterEqual,
        O::ScmpCmpGt => C::Greater,
        O::ScmpCmpMaskedEq => C::MaskedEqual(two.unwrap_or(0)),
    }
}

fn arch(a: oci_spec::runtime::Arch) -> libseccomp::ScmpArch {
    use libseccomp::ScmpArch as S;
    use oci_spec::runtime::Arch as A;
    match a {
        A::ScmpArchNative => S::Native,
        A::ScmpArchX86 => S::X86,
        A::ScmpArchX86_64 => S::X8664,
        A::ScmpArchX32 => S::X32,
        A::ScmpArchArm => S::Arm,
        A::ScmpArchAarch64 => S::Aarch64,
        A::ScmpArchMips => S::Mips,
        A::ScmpArchMips64 => S::Mips64,
        A::ScmpArchMips64n32 => S::Mips64N32,
        A::ScmpArchMipsel => S::Mipsel,
        A::ScmpArchMipsel64 => S::Mipsel64,
        A::ScmpArchMipsel64n32 => S::Mipsel64N32,
        A::ScmpArchPpc => S::Ppc,
        A::ScmpArchPpc64 => S::Ppc64,
        A::ScmpArchPpc64le => S::Ppc64Le,
        A::ScmpArchS390 => S::S390,
        A::ScmpArchS390x => S::S390X,
        A::ScmpArchRiscv64 => S::Riscv64,
        A::ScmpArchParisc => S::Parisc,
        A::ScmpArchParisc64 => S::Parisc64,
        A::ScmpArchLoongarch64 => S::Loongarch64,
        A::ScmpArchM68k => S::M68k,
        A::ScmpArchSh => S::Sh,
        A::ScmpArchSheb => S::Sheb,
    }
}

/// libcontainer's executor with a precompiled filter installed just before the command is executed (after
/// libcontainer has set no_new_privs and dropped capabilities, as it would have loaded the filter itself).
#[derive(Clone)]
pub struct Executor {
    pub filter: Option<Precompiled>,
}

impl libcontainer::workload::Executor for Executor {
    fn exec(&self, spec: &oci_spec::runtime::Spec) -> Result<(), libcontainer::workload::ExecutorError> {
        if let Some(f) = &self.filter {
            if let Err(e) = f.load() {
                eprintln!("drun: cannot install the seccomp filter in the container: {e}");
                // SAFETY: ends this (the container's init) process; nothing else runs in it.
                unsafe { libc::_exit(crate::exit::DRUN_ERROR) };
            }
        }
        libcontainer::workload::default::get_executor().exec(spec)
    }

    fn validate(&self, spec: &oci_spec::runtime::Spec) -> Result<(), libcontainer::workload::ExecutorValidationError> {
        libcontainer::workload::default::get_executor().validate(spec)
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // fixtures in the tests' own temporary directories
mod tests {
    use super::*;

    #[test]
    fn profile_parses_as_a_runtime_spec_seccomp() {
        let s: oci_spec::runtime::LinuxSeccomp = serde_json::from_value(default_profile()).unwrap();
        let names: Vec<&String> = s.syscalls().as_ref().unwrap().iter().flat_map(|r| r.names()).collect();
        for forbidden in [
            "mount",
            "unshare",
            "setns",
            "keyctl",
            "bpf",
            "ptrace",
            "reboot",
            "init_module",
            "io_uring_setup",
            "io_uring_enter",
            "io_uring_register",
        ] {
            assert!(
                !names.iter().any(|n| *n == forbidden),
                "{forbidden} must not be allowed"
            );
        }
        assert!(names.iter().any(|n| *n == "execve"));
    }

    fn spec(nnp: bool) -> Value {
        serde_json::json!({
            "process": {"noNewPrivileges": nnp},
            "linux": {"seccomp": default_profile(), "namespaces": []}
        })
    }

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        (dir, store)
    }

    fn cached_files(store: &Store) -> Vec<std::path::PathBuf> {
        std::fs::read_dir(store.root().join("cache").join(CACHE_KIND))
            .map(|rd| rd.flatten().map(|e| e.path()).collect())
            .unwrap_or_default()
    }

    #[test]
    fn compiles_once_then_reads_the_cache() {
        let (_dir, cache) = store();
        let mut first = spec(true);
        let f1 = take_precompiled(&mut first, &cache).unwrap().expect("precompiled");
        // Hundreds of rules on three ABIs: a real program, and the profile is gone from the spec.
        assert!(f1.len() > 100, "{} instructions", f1.len());
        assert!(first.pointer("/linux/seccomp").is_none());
        assert!(first.pointer("/linux/namespaces").is_some());
        let files = cached_files(&cache);
        assert_eq!(files.len(), 1, "{files:?}");
        let on_disk = std::fs::read(&files[0]).unwrap();
        assert!(on_disk.starts_with(CACHE_MAGIC));
        assert_eq!(on_disk.len(), 8 + f1.len() * 8 + 32);

        let mut second = spec(true);
        let f2 = take_precompiled(&mut second, &cache).unwrap().expect("precompiled");
        assert_eq!(f2.len(), f1.len());
        let same = f1
            .program
            .iter()
            .zip(&f2.program)
            .all(|(a, b)| (a.code, a.jt, a.jf, a.k) == (b.code, b.jt, b.jf, b.k));
        assert!(same, "the cached program differs from the compiled one");
        assert_eq!(cached_files(&cache).len(), 1);
    }

    #[test]
    fn a_corrupt_cache_file_is_ignored_and_replaced() {
        let (_dir, cache) = store();
        let good = take_precompiled(&mut spec(true), &cache).unwrap().unwrap();
        let file = cached_files(&cache).remove(0);
        let mut bytes = std::fs::read(&file).unwrap();
        // One instruction altered: an "allow" where there was something else would be a hole.
        bytes[8 + 5 * 8 + 4] ^= 0xff;
        std::fs::write(&file, &bytes).unwrap();
        assert!(read_cached(&file, 0).is_none());
        let again = take_precompiled(&mut spec(true), &cache).unwrap().unwrap();
        assert_eq!(again.len(), good.len());
        assert!(read_cached(&file, 0).is_some(), "the corrupt file was not rewritten");
        // A truncated file too.
        std::fs::write(&file, &bytes[..20]).unwrap();
        assert!(read_cached(&file, 0).is_none());
    }

    #[test]
    fn left_to_libcontainer_without_no_new_privileges_or_with_notify() {
        let (_dir, cache) = store();
        let mut without_nnp = spec(false);
        assert!(take_precompiled(&mut without_nnp, &cache).unwrap().is_none());
        assert_eq!(without_nnp, spec(false), "the spec must be left alone");

        let mut notify = spec(true);
        notify["linux"]["seccomp"]["syscalls"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!({"names": ["mkdir"], "action": "SCMP_ACT_NOTIFY"}));
        let before = notify.clone();
        assert!(take_precompiled(&mut notify, &cache).unwrap().is_none());
        assert_eq!(notify, before);

        let mut none = serde_json::json!({"process": {"noNewPrivileges": true}, "linux": {}});
        assert!(take_precompiled(&mut none, &cache).unwrap().is_none());
        assert!(cached_files(&cache).is_empty());
    }

    #[test]
    fn an_invalid_profile_is_an_error() {
        let (_dir, cache) = store();
        let mut bad = serde_json::json!({
            "process": {"noNewPrivileges": true},
            "linux": {"seccomp": {"defaultAction": "SCMP_ACT_NOPE"}}
        });
        assert!(matches!(
            take_precompiled(&mut bad, &cache),
            Err(FilterError::Invalid(_))
        ));
    }
}
