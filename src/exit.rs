//! Exit statuses of the `drun` process, in one place. As `docker run`: drun's own errors exit 125, a command that
//! cannot be executed 126, a command that is not found 127; otherwise the container's own status, 128+N when it
//! was killed by signal N.

/// drun itself failed (a bad command line or input, image not found, the runtime could not start the container …).
pub const DRUN_ERROR: i32 = 125;
/// The command was found but cannot be executed (not executable, a directory, bad interpreter …).
pub const CANNOT_EXECUTE: i32 = 126;
/// The command (or a program the run requires) is not in the image.
pub const NOT_FOUND: i32 = 127;

/// The status of a process killed by signal `signal` (as a shell reports it).
pub fn from_signal(signal: i32) -> i32 {
    128 + signal
}

#[cfg(test)]
mod tests {
    #[test]
    fn signal_statuses_follow_the_shell() {
        assert_eq!(super::from_signal(9), 137);
        assert_eq!(super::from_signal(15), 143);
    }
}
