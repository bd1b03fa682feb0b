//! Low-level operating-system primitives: forking a child ([`fork`]), opening and creating files below a
//! directory descriptor ([`at`]), reading files there ([`read`]) and the rootless user namespace ([`userns`]).
//! Everything above builds on these; nothing here imports from `run`, `image`, `gpu` or the front ends.
//!
//! # The contract for `unsafe` in drun
//!
//! Every `unsafe` block carries a `// SAFETY:` comment that states the precondition it relies on, and why it
//! holds there. Two preconditions come back often enough to be written down once, here.
//!
//! ## A forked child
//!
//! fork(2) copies only the calling thread. Any lock another thread held at that moment (the allocator's, stdio's,
//! `tracing`'s, a `Mutex` of drun's) stays locked forever in the child. POSIX therefore allows the child of a
//! multithreaded process only async-signal-safe functions until it calls one of the exec functions or `_exit`
//! (fork(2), "NOTES"; the list is in signal-safety(7)). In Rust that means: raw system calls (through `libc` or
//! the thin `nix` wrappers that take no `Vec`/`String`, such as `unshare`, `mount` and `openat` with a short path,
//! `write`, `close`), no allocation (no `format!`, `String`, `Vec`, `CString::new`, `Command`), no lock (no
//! `std::io::stderr`, no `tracing`), no panic, and the end through `_exit(2)`, never by returning into the
//! parent's frames or running its destructors and atexit handlers.
//!
//! drun is not single-threaded, so this is the rule for every fork on the run path: a thread keeps the kernel's
//! cgroup migration fast while a container is prepared (`run/warmup.rs`), pulls run a tokio runtime and a pool of
//! unpacking threads, and credential helpers have their output read on a thread. [`fork::fork_child`] is the one
//! function that forks; its callers say in their `SAFETY:` comment that their child keeps to the rule.
//! (libcontainer creates the container with a raw `clone3` and allocates in that child: the warm-up thread stays
//! out of the allocator while it does, see `run/warmup.rs`.)
//!
//! The one exception is a process that has a single thread at the moment it forks: the child is then a complete
//! copy, with no lock held by anyone else, and may allocate and spawn processes. Only the user-namespace set-up at
//! start-up ([`userns::enter`]) relies on it; it checks it first ([`fork::is_single_threaded`]), and
//! `unshare(CLONE_NEWUSER)`, which it is about to call, demands it too.
//!
//! Threads that must change per-thread kernel state (a private mount namespace) do it on a thread of their own,
//! never in the main thread (see `gpu::container_ldconfig`).
//!
//! ## Files on paths others may control
//!
//! [`safe_fs`] holds the only path-following file helpers of drun (`clippy.toml` forbids std's elsewhere): created
//! private and no-follow, read bounded and never blocking on a FIFO.
//!
//! ## Files below a directory descriptor
//!
//! Paths inside an image's or a container's root file system are never resolved by the host's path walk: they are
//! opened with `openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV)` relative to a descriptor of
//! the root (`sys::at`), so a symlink or `..` of the image resolves inside the root and never crosses a mount point;
//! what is read from there is checked to be a regular file on the open descriptor and read with a bound
//! ([`read::read_regular_at`]).

pub mod at;
pub mod command;
pub mod fork;
pub mod fs_type;
pub mod overlay;
pub mod read;
pub mod safe_fs;
pub mod userns;
