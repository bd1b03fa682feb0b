//! Compiling a runtime-spec seccomp profile to a BPF program with libseccomp, translated exactly as
//! libcontainer's `initialize_seccomp` would (so the program is the one libcontainer would load). Loads nothing.

use super::FilterError;

/// The runtime spec's profile translated for libseccomp as libcontainer's `initialize_seccomp` does (same
/// actions, default errno, argument comparisons, skipped rules), then exported as BPF instead of loaded.
pub(super) fn compile(profile: &oci_spec::runtime::LinuxSeccomp) -> Result<Vec<u8>, FilterError> {
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
                        .map(|a| {
                            let index = u32::try_from(a.index())
                                .map_err(|_| FilterError::Invalid(format!("argument index {}", a.index())))?;
                            Ok(ScmpArgCompare::new(index, op(a.op(), a.value_two()), a.value()))
                        })
                        .collect::<Result<_, FilterError>>()?;
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
    // SAFETY: memfd_create with a valid NUL-terminated name; the descriptor it returns is owned by the File below.
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
    let errno = match errno {
        None => libc::EPERM,
        Some(e) => i32::try_from(e).map_err(|_| FilterError::Invalid(format!("errnoRet {e}")))?,
    };
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
