//! The container's output on its way to drun's stdout and stderr: from the stdout and stderr pipes of a logged
//! run (a workflow's), copied to the log file as well, stdout alone also to the caller's copy (a workflow's
//! output); and what a terminal still holds when the container exits. A detached run's monitor writes both pipes
//! and the terminal to the container's rotating log only (`logfile`).
//!
//! Why two pipes, and how the log keeps their order: a dependent workflow uses its dependency's stdout alone, so
//! stdout and stderr cannot share one pipe (which kept their order for free, and still would: a pty or a single
//! socket cannot tell the two streams apart). Each stream has its own pipe; supervision polls both along with its
//! other descriptors and, each time poll returns, copies only the pipes it reported readable, each to drun's own
//! stream of the same name and to the log, then polls again. So the log and the terminal get the container's
//! writes in the order drun sees them arrive: the order they were written whenever writes to the two streams are
//! further apart than drun's wake-up (a program printing line by line), and writes to both within that instant
//! come out stdout first. Programs that buffer stdio reorder far more than that themselves.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use crate::run::logfile::RotatingLog;

/// Where the container's output goes.
pub enum Sink<'a> {
    /// drun's stdout and stderr, and a workflow's log file besides.
    Stdout(Option<&'a mut File>),
    /// A detached container's log.
    Log(RotatingLog),
}

/// A terminal's output, for `tty::pump`: written whole (errors are the sink's to report), never short.
impl Write for Sink<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.put(Stream::Stdout, bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Sink<'_> {
    fn put(&mut self, to: Stream, bytes: &[u8]) {
        match self {
            Sink::Stdout(log) => {
                let _ = match to {
                    Stream::Stdout => {
                        let mut out = std::io::stdout().lock();
                        out.write_all(bytes).and_then(|()| out.flush())
                    }
                    Stream::Stderr => std::io::stderr().lock().write_all(bytes),
                };
                if let Some(l) = log.as_mut() {
                    let _ = l.write_all(bytes);
                }
            }
            Sink::Log(log) => {
                if let Err(e) = log.append(bytes) {
                    tracing::warn!(error = %e, "cannot write the container's log");
                }
            }
        }
    }
}

/// The read ends of a logged run's stdout and stderr pipes.
pub struct Pipes {
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
}

/// The pipes for a logged run: the read ends, and the write ends the container gets as stdout and stderr.
pub fn pipes() -> std::io::Result<(Pipes, OwnedFd, OwnedFd)> {
    let (out_r, out_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let (err_r, err_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    Ok((
        Pipes {
            stdout: out_r,
            stderr: err_r,
        },
        out_w,
        err_w,
    ))
}

/// Which of drun's streams a pipe is copied to.
#[derive(Clone, Copy)]
enum Stream {
    Stdout,
    Stderr,
}

/// The container's output pipes (workflows, detached runs, `drun exec`) and where they go.
pub struct Output<'a> {
    stdout: Option<File>,
    stderr: Option<File>,
    /// Where the output pipes and the container's terminal go.
    pub sink: Sink<'a>,
    /// Gets the container's stdout alone.
    copy: Option<&'a mut dyn Write>,
    /// Kept here instead of going to drun's stdout (`drun exec`'s library callers): at most `capture_cap` bytes,
    /// the first ones; the rest is read and dropped.
    pub capture: Option<Vec<u8>>,
    pub capture_cap: usize,
}

impl<'a> Output<'a> {
    /// The read ends of the output pipes, if the run has them, the log they are copied to besides drun's stdout
    /// and stderr, and the copy of stdout.
    pub fn new(pipes: Option<Pipes>, log: Option<&'a mut File>, copy: Option<&'a mut dyn Write>) -> Output<'a> {
        Output::to_sink(pipes, Sink::Stdout(log), copy)
    }

    /// The read ends of the output pipes, if the run has them, where they go, and the copy of stdout.
    pub fn to_sink(pipes: Option<Pipes>, sink: Sink<'a>, copy: Option<&'a mut dyn Write>) -> Output<'a> {
        let (stdout, stderr) = match pipes {
            Some(p) => (Some(File::from(p.stdout)), Some(File::from(p.stderr))),
            None => (None, None),
        };
        Output {
            stdout,
            stderr,
            sink,
            copy,
            capture: None,
            capture_cap: 0,
        }
    }

    /// Where the output went, once the pipes are done with (a restarted container's output goes there again).
    pub fn into_sink(self) -> Sink<'a> {
        self.sink
    }

    /// Keeps what the pipe carries (at most `cap` bytes) instead of passing it to drun's stdout: one pipe, which
    /// `drun exec` gives both its stdout and stderr.
    pub fn captured(pipe: OwnedFd, cap: usize) -> Output<'a> {
        Output {
            stdout: Some(File::from(pipe)),
            stderr: None,
            sink: Sink::Stdout(None),
            copy: None,
            capture: Some(Vec::new()),
            capture_cap: cap,
        }
    }

    /// The pipes still open, to poll for reading: stdout's, then stderr's.
    pub fn fds(&self) -> [Option<BorrowedFd<'_>>; 2] {
        [
            self.stdout.as_ref().map(|f| f.as_fd()),
            self.stderr.as_ref().map(|f| f.as_fd()),
        ]
    }

    /// Copies what is available now from the pipes `ready` says (stdout's, stderr's); a closed pipe is dropped.
    pub fn pump_ready(&mut self, ready: [bool; 2]) {
        if ready[0] {
            if let Some(p) = self.stdout.as_mut() {
                let copy = self.copy.as_mut().map(|c| &mut **c as &mut dyn Write);
                let capture = self.capture.as_mut().map(|c| (c, self.capture_cap));
                if !copy_available(p, Stream::Stdout, &mut self.sink, copy, capture) {
                    self.stdout = None;
                }
            }
        }
        if ready[1] {
            if let Some(p) = self.stderr.as_mut() {
                if !copy_available(p, Stream::Stderr, &mut self.sink, None, None) {
                    self.stderr = None;
                }
            }
        }
    }

    /// Copies what is available now from both pipes.
    pub fn pump(&mut self) {
        self.pump_ready([true, true]);
    }
}

/// Copies what the container wrote to its terminal before it exited to `sink`.
pub fn drain(master: Option<&OwnedFd>, open: bool, sink: &mut Sink) {
    let Some(m) = master.filter(|_| open) else { return };
    if let Ok(dup) = m.try_clone() {
        copy_available(&mut File::from(dup), Stream::Stdout, sink, None, None);
    }
}

/// Copies what `src` holds now to `sink` as drun's `to` stream (and to `copy`), or to `capture` (up to its cap),
/// without waiting. Returns false once `src` is closed (EOF, or EIO from a terminal whose other side closed).
fn copy_available(
    src: &mut File,
    to: Stream,
    sink: &mut Sink,
    mut copy: Option<&mut dyn Write>,
    mut capture: Option<(&mut Vec<u8>, usize)>,
) -> bool {
    let _ = nix::fcntl::fcntl(
        src.as_fd(),
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    );
    let mut buf = [0u8; 16384];
    loop {
        match src.read(&mut buf) {
            Ok(0) => return false,
            Ok(n) => {
                if let Some((c, cap)) = capture.as_mut() {
                    let room = cap.saturating_sub(c.len());
                    c.extend_from_slice(&buf[..n.min(room)]);
                    continue;
                }
                sink.put(to, &buf[..n]);
                if let Some(c) = copy.as_mut() {
                    let _ = c.write_all(&buf[..n]);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return true,
            Err(_) => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captured_output_keeps_the_first_bytes_up_to_its_cap() {
        let (r, w) = nix::unistd::pipe().unwrap();
        let mut out = Output::captured(r, 10);
        let mut w = File::from(w);
        w.write_all(b"hello ").unwrap();
        out.pump();
        w.write_all(b"world, and more").unwrap();
        drop(w);
        out.pump();
        assert_eq!(out.capture.as_deref(), Some(&b"hello worl"[..]));
        // Everything was read (the writer never blocks on a full pipe), and the closed pipe dropped.
        assert!(out.fds().iter().all(Option::is_none));
    }
}
