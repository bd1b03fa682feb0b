//! The container's output on its way to drun's stdout: from the shared stdout/stderr pipe of a logged run (a
//! workflow's), copied to the log file as well, and what a terminal still holds when the container exits.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};

/// The container's output pipe (workflows) and where it goes besides drun's stdout.
pub struct Output<'a> {
    pub pipe: Option<File>,
    pub log: Option<&'a mut File>,
}

impl<'a> Output<'a> {
    /// The read end of the output pipe, if the run has one, and the log it is copied to.
    pub fn new(pipe: Option<OwnedFd>, log: Option<&'a mut File>) -> Output<'a> {
        Output {
            pipe: pipe.map(File::from),
            log,
        }
    }

    /// Copies what is available now; the pipe is dropped once it is closed.
    pub fn pump(&mut self) {
        let Some(p) = self.pipe.as_mut() else { return };
        if !copy_available(p, self.log.as_deref_mut()) {
            self.pipe = None;
        }
    }
}

/// Copies what the container wrote to its terminal before it exited.
pub fn drain(master: Option<&OwnedFd>, open: bool) {
    let Some(m) = master.filter(|_| open) else { return };
    if let Ok(dup) = m.try_clone() {
        copy_available(&mut File::from(dup), None);
    }
}

/// Copies what `src` holds now to drun's stdout (and `log`), without waiting. Returns false once `src` is closed
/// (EOF, or EIO from a terminal whose other side closed).
fn copy_available(src: &mut File, mut log: Option<&mut File>) -> bool {
    let _ = nix::fcntl::fcntl(
        src.as_fd(),
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    );
    let mut buf = [0u8; 16384];
    loop {
        match src.read(&mut buf) {
            Ok(0) => return false,
            Ok(n) => {
                let mut out = std::io::stdout().lock();
                let _ = out.write_all(&buf[..n]);
                let _ = out.flush();
                if let Some(l) = log.as_mut() {
                    let _ = l.write_all(&buf[..n]);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return true,
            Err(_) => return false,
        }
    }
}
