//! Installing a precompiled seccomp filter in the container's init, right before its command is executed
//! (libcontainer's executor with one step added). Never compiles anything: that happened before the start.

/// A seccomp filter compiled by drun before the container starts, loaded by drun's executor right before the
/// container's command is executed.
///
/// libcontainer compiles `linux.seccomp` with libseccomp in the container's init process, on every start: for the
/// default profile (about 300 rules on three x86 ABIs) that is ~8 ms of CPU, a third of a warm `drun run`. The BPF
/// program libseccomp generates depends only on the profile, libseccomp's version and the kernel's seccomp API
/// level, so drun compiles it once with the same translation libcontainer uses, caches the program (keyed by all
/// three) and installs it itself with seccomp(2). Profiles this cannot reproduce exactly (user notification, or
/// no-new-privileges switched off, where the filter must be loaded while the process still has CAP_SYS_ADMIN)
/// stay in the spec for libcontainer.
#[derive(Clone)]
pub struct Precompiled {
    pub(super) program: Vec<libc::sock_filter>,
    flags: libc::c_ulong,
}

impl Precompiled {
    /// The number of BPF instructions.
    pub fn len(&self) -> usize {
        self.program.len()
    }

    pub fn is_empty(&self) -> bool {
        self.program.is_empty()
    }

    /// The program from its bytes (as libseccomp exports it and the cache keeps it): `None` unless it is a whole,
    /// non-empty number of instructions the kernel can take (at most `u16::MAX`).
    pub(super) fn from_bytes(bytes: &[u8], flags: libc::c_ulong) -> Option<Precompiled> {
        if bytes.is_empty() || bytes.len() % 8 != 0 || bytes.len() / 8 > usize::from(u16::MAX) {
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

    /// The program and its flags as [`Precompiled::from_saved`] reads them back: the flags (8 bytes,
    /// little-endian), then the instructions.
    pub fn to_saved(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 + self.program.len() * 8);
        #[allow(clippy::useless_conversion)] // c_ulong is u32 on 32-bit targets
        out.extend_from_slice(&u64::from(self.flags).to_le_bytes());
        for i in &self.program {
            out.extend_from_slice(&i.code.to_ne_bytes());
            out.extend_from_slice(&[i.jt, i.jf]);
            out.extend_from_slice(&i.k.to_ne_bytes());
        }
        out
    }

    /// What [`Precompiled::to_saved`] wrote, if it is that.
    pub fn from_saved(bytes: &[u8]) -> Option<Precompiled> {
        let (flags, program) = bytes.split_at_checked(8)?;
        let flags = libc::c_ulong::try_from(u64::from_le_bytes(flags.try_into().ok()?)).ok()?;
        Precompiled::from_bytes(program, flags)
    }

    /// Installs the filter on the calling thread (the container's init, which has no_new_privs set).
    pub fn load(&self) -> std::io::Result<()> {
        let len = u16::try_from(self.program.len())
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "the BPF program is too long"))?;
        let prog = libc::sock_fprog {
            len,
            filter: self.program.as_ptr().cast_mut(),
        };
        // SAFETY: `prog` points at `len` valid instructions that outlive the call; the kernel only reads (copies)
        // them, so the `*mut` it is typed with is never written through.
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

/// libcontainer's executor with a precompiled filter installed just before the command is executed (after
/// libcontainer has set no_new_privs and dropped capabilities, as it would have loaded the filter itself).
#[derive(Clone)]
pub struct Executor {
    pub filter: Option<Precompiled>,
    /// `cgroup.procs` files (descriptors inherited across libcontainer's fork) the process moves itself into before
    /// anything else: `drun exec` puts its process in the container's cgroups of each v1 hierarchy, which
    /// libcontainer's tenant (one cgroup path for all hierarchies) does not know of.
    pub join_cgroups: Vec<std::os::fd::RawFd>,
}

impl libcontainer::workload::Executor for Executor {
    fn exec(&self, spec: &oci_spec::runtime::Spec) -> Result<(), libcontainer::workload::ExecutorError> {
        for &fd in &self.join_cgroups {
            // SAFETY: writes two bytes from a static buffer to a descriptor drun opened for this; "0" is the writer.
            let n = unsafe { libc::write(fd, b"0\n".as_ptr().cast(), 2) };
            let err = std::io::Error::last_os_error();
            // SAFETY: the descriptor is this process's and not used again.
            unsafe { libc::close(fd) };
            if n < 0 {
                #[allow(clippy::print_stderr)]
                {
                    eprintln!("drun: cannot join the container's cgroup: {err}");
                }
                // SAFETY: ends this process before its command runs; nothing of drun's state needs destructors.
                unsafe { libc::_exit(crate::exit::DRUN_ERROR) };
            }
        }
        if let Some(f) = &self.filter {
            if let Err(e) = f.load() {
                // In the container's init, about to exec: its stderr is the container's, the one place to say it.
                #[allow(clippy::print_stderr)]
                {
                    eprintln!("drun: cannot install the seccomp filter in the container: {e}");
                }
                // SAFETY: ends this process (the container's init) at once, as exec would have replaced it;
                // nothing of drun's state in it needs its destructors.
                unsafe { libc::_exit(crate::exit::DRUN_ERROR) };
            }
        }
        // The command starts with no signal blocked, as a fresh process would: a restarted container is created
        // while its supervisor keeps the signals it forwards blocked (`run::restart`).
        let _ = nix::sys::signal::SigSet::empty().thread_set_mask();
        libcontainer::workload::default::get_executor().exec(spec)
    }

    fn validate(&self, spec: &oci_spec::runtime::Spec) -> Result<(), libcontainer::workload::ExecutorValidationError> {
        libcontainer::workload::default::get_executor().validate(spec)
    }
}
