//! Running a host helper program (`scontrol`, …) with a deadline and a cap on what it may print: a hung server or
//! a chatty program cannot stall or bloat a container start. No thread: the one pipe is polled.

use std::io::{self, Read};
use std::os::fd::AsFd;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

/// Runs `cmd` (stdin and stderr to /dev/null) and returns its standard output when it exits with status 0 within
/// `timeout`, having printed at most `cap` bytes. A program still running at the deadline, or printing more, is
/// killed and reaped; both are errors (`TimedOut`, `InvalidData`), as is a non-zero status.
pub fn output_within(mut cmd: Command, timeout: Duration, cap: usize) -> io::Result<Vec<u8>> {
    let deadline = Instant::now() + timeout;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let out = read_until(&mut child, deadline, cap);
    let status = match &out {
        Ok(_) => wait_until(&mut child, deadline),
        Err(_) => Err(io::ErrorKind::TimedOut.into()),
    };
    match (out, status) {
        (Ok(out), Ok(status)) if status.success() => Ok(out),
        (Ok(_), Ok(status)) => Err(io::Error::other(format!("exited with {status}"))),
        (Err(e), _) | (_, Err(e)) => {
            let _ = child.kill();
            let _ = child.wait();
            Err(e)
        }
    }
}

/// Reads the child's stdout to its end, or fails at the deadline or past `cap` bytes.
fn read_until(child: &mut std::process::Child, deadline: Instant, cap: usize) -> io::Result<Vec<u8>> {
    let mut pipe = child.stdout.take().ok_or_else(|| io::Error::other("no stdout pipe"))?;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        let ms = u16::try_from(left.as_millis().max(1)).unwrap_or(u16::MAX);
        let mut fds = [PollFd::new(pipe.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(ms)) {
            Ok(0) => continue,
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
        // poll said readable (or hung up): this read does not block.
        let n = pipe.read(&mut buf)?;
        if n == 0 {
            return Ok(out);
        }
        if out.len() + n > cap {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "too much output"));
        }
        out.extend_from_slice(&buf[..n]);
    }
}

/// Waits for the child's exit until the deadline (it closed its stdout, so it is about to exit).
fn wait_until(child: &mut std::process::Child, deadline: Instant) -> io::Result<std::process::ExitStatus> {
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if Instant::now() >= deadline {
            return Err(io::ErrorKind::TimedOut.into());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Command {
        let mut c = Command::new("sh");
        c.args(["-c", script]);
        c
    }

    #[test]
    fn output_of_a_quick_program() {
        assert_eq!(
            output_within(sh("echo hi"), Duration::from_secs(5), 100).unwrap(),
            b"hi\n"
        );
    }

    #[test]
    fn a_failing_program_is_an_error() {
        assert!(output_within(sh("echo hi; exit 2"), Duration::from_secs(5), 100).is_err());
    }

    #[test]
    fn a_hung_program_is_killed_at_the_deadline() {
        let start = Instant::now();
        let e = output_within(sh("exec sleep 30"), Duration::from_millis(200), 100).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert!(start.elapsed() < Duration::from_secs(5));
        // One that closes its output but does not exit is killed too.
        let e = output_within(sh("exec >/dev/null; exec sleep 30"), Duration::from_millis(200), 100).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
    }

    #[test]
    fn too_much_output_is_refused() {
        let e = output_within(sh("yes"), Duration::from_secs(5), 1000).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
    }
}
