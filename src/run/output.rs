//! The container's output on its way to drun's stdout: from the shared stdout/stderr pipe of a logged run (a
//! workflow's), copied to the log file as well, and what a terminal still holds when the container exits. A
//! detached run's monitor writes the pipe and the terminal to the container's rotating log only (`logfile`).

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};

use crate::run::logfile::RotatingLog;

/// Where the container's output goes.
pub enum Sink<'a> {
    /// drun's stdout, and a workflow's log file besides.
    Stdout(Option<&'a mut File>),
    /// A detached container's log.
    Log(RotatingLog),
}

/// A terminal's output, for `tty::pump`: written whole (errors are the sink's to report), never short.
impl Write for Sink<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.put(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Sink<'_> {
    fn put(&mut self, bytes: &[u8]) {
        match self {
            Sink::Stdout(log) => {
                let mut out = std::io::stdout().lock();
                let _ = out.write_all(bytes);
                let _ = out.flush();
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

/// The container's output pipe (workflows, detached runs, `drun exec`) and where it goes.
pub struct Output<'a> {
    pub pipe: Option<File>,
    /// Where the output pipe and the container's terminal go.
    pub sink: Sink<'a>,
    /// Kept here instead of going to the sink (`drun exec`'s library callers): at most `capture_cap` bytes,
    /// the first ones; the rest is read and dropped.
    pub capture: Option<Vec<u8>>,
    pub capture_cap: usize,
}

impl<'a> Output<'a> {
    /// The read end of the output pipe, if the run has one, and the log it is copied to besides drun's stdout.
    pub fn new(pipe: Option<OwnedFd>, log: Option<&'a mut File>) -> Output<'a> {
        Output::to_sink(pipe, Sink::Stdout(log))
    }

    /// The read end of the output pipe, if the run has one, and where it goes.
    pub fn to_sink(pipe: Option<OwnedFd>, sink: Sink<'a>) -> Output<'a> {
        Output {
            pipe: pipe.map(File::from),
            sink,
            capture: None,
            capture_cap: 0,
        }
    }

    /// Keeps what the pipe carries (at most `cap` bytes) instead of passing it to drun's stdout.
    pub fn captured(pipe: OwnedFd, cap: usize) -> Output<'a> {
        Output {
            capture: Some(Vec::new()),
            capture_cap: cap,
            ..Output::new(Some(pipe), None)
        }
    }

    /// Copies what is available now; the pipe is dropped once it is closed.
    pub fn pump(&mut self) {
        let Some(p) = self.pipe.as_mut() else { return };
        let capture = self.capture.as_mut().map(|c| (c, self.capture_cap));
        if !copy_available(p, &mut self.sink, capture) {
            self.pipe = None;
        }
    }
}

/// Copies what the container wrote to its terminal before it exited to `sink`.
pub fn drain(master: Option<&OwnedFd>, open: bool, sink: &mut Sink) {
    let Some(m) = master.filter(|_| open) else { return };
    if let Ok(dup) = m.try_clone() {
        copy_available(&mut File::from(dup), sink, None);
    }
}

/// Copies what `src` holds now to `sink`, or to `capture` (up to its cap), without waiting. Returns false once
/// `src` is closed (EOF, or EIO from a terminal whose other side closed).
fn copy_available(src: &mut File, sink: &mut Sink, mut capture: Option<(&mut Vec<u8>, usize)>) -> bool {
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
                sink.put(&buf[..n]);
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
        assert!(out.pipe.is_none());
    }
}
