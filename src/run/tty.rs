//! `-t`: a real terminal for the container. libcontainer creates the pseudo-terminal inside the container and
//! sends its master side over a unix socket (the OCI console socket); drun puts its own terminal in raw mode and
//! copies bytes both ways, and passes window-size changes on.

use std::io::{IoSliceMut, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::time::{Duration, Instant};

use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg, Termios};

/// Receives the pty master libcontainer sends to the console socket.
pub fn receive_master(listener: &UnixListener, timeout: Duration) -> std::io::Result<OwnedFd> {
    listener.set_nonblocking(true)?;
    let deadline = Instant::now() + timeout;
    let (stream, _) = loop {
        match listener.accept() {
            Ok(s) => break s,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(e) => return Err(e),
        }
    };
    stream.set_nonblocking(false)?;
    let mut buf = [0u8; 256];
    let mut iov = [IoSliceMut::new(&mut buf)];
    let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let msg = recvmsg::<()>(stream.as_raw_fd(), &mut iov, Some(&mut cmsg), MsgFlags::empty())
        .map_err(std::io::Error::from)?;
    for c in msg.cmsgs().map_err(std::io::Error::from)? {
        if let ControlMessageOwned::ScmRights(fds) = c {
            if let Some(&fd) = fds.first() {
                // SAFETY: the kernel just installed this descriptor in our table for us; nobody else owns it.
                return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        }
    }
    Err(std::io::Error::other("the console socket carried no descriptor"))
}

/// The container's terminal as drun holds it while the container runs.
pub struct Terminal {
    /// drun's own terminal in raw mode, when its stdin is one (restored first on drop).
    _raw: Option<RawMode>,
    /// The pty master: what the container writes to its terminal is read here, drun's input written here.
    pub master: OwnedFd,
}

impl Terminal {
    /// Receives the container's terminal over the console socket (libcontainer sends it once the container has
    /// started) and, when drun's stdin is a terminal, gives the container its size and puts drun's in raw mode.
    pub fn attach(console: &UnixListener) -> std::io::Result<Terminal> {
        let master = receive_master(console, Duration::from_secs(10))?;
        let raw = std::io::IsTerminal::is_terminal(&std::io::stdin()).then(|| {
            copy_window_size(master.as_fd());
            RawMode::enter()
        });
        Ok(Terminal { _raw: raw, master })
    }
}

/// drun's terminal in raw mode for as long as this lives.
pub struct RawMode {
    saved: Option<Termios>,
}

impl RawMode {
    pub fn enter() -> RawMode {
        let stdin = std::io::stdin();
        let saved = tcgetattr(stdin.as_fd()).ok();
        if let Some(t) = &saved {
            let mut raw = t.clone();
            cfmakeraw(&mut raw);
            let _ = tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw);
        }
        RawMode { saved }
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Some(t) = &self.saved {
            let _ = tcsetattr(std::io::stdin().as_fd(), SetArg::TCSANOW, t);
        }
    }
}

/// Copies drun's window size to the container's terminal.
pub fn copy_window_size(master: BorrowedFd<'_>) {
    // SAFETY: winsize is plain data; TIOCGWINSZ fills it from our stdin (or fails, leaving it zeroed) and
    // TIOCSWINSZ reads it for the master, which is a valid descriptor for the duration of the call.
    unsafe {
        let mut ws: libc::winsize = std::mem::zeroed();
        if libc::ioctl(libc::STDIN_FILENO, libc::TIOCGWINSZ, &mut ws) == 0 {
            libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws);
        }
    }
}

/// Moves what is readable from `from` to `to`; returns false at end of input.
pub fn pump(from: &mut dyn Read, to: &mut dyn Write) -> bool {
    let mut buf = [0u8; 8192];
    match from.read(&mut buf) {
        Ok(0) => false,
        Ok(n) => {
            let _ = to.write_all(&buf[..n]);
            let _ = to.flush();
            true
        }
        Err(e) if e.kind() == std::io::ErrorKind::Interrupted || e.kind() == std::io::ErrorKind::WouldBlock => true,
        // EIO: the container side of the terminal closed.
        Err(_) => false,
    }
}

/// A console socket that libcontainer sends the container's pty master over, in a directory of its own (removed
/// with it). Not in the run directory: socket paths are limited to 107 bytes, and a run directory below a deep
/// `--state` exceeds that. In the temporary directory, under a random name made private (mode 0700) at once, so
/// that another user can neither take the socket's name first nor connect to it.
pub struct ConsoleSocket {
    pub path: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl ConsoleSocket {
    /// The socket, and the listener that the pty master arrives on.
    pub fn bind() -> std::io::Result<(ConsoleSocket, std::os::unix::net::UnixListener)> {
        let dir = tempfile::Builder::new()
            .prefix("drun-console-")
            .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .tempdir()?;
        let path = dir.path().join("console.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path)?;
        Ok((ConsoleSocket { path, _dir: dir }, listener))
    }
}
