//! The drun binary: parse, set up logging, enter the user namespace, dispatch, map errors to exit codes
//! (`drun::exit`). Prints only the final error; everything else is the library's or the commands'.
#![allow(clippy::print_stderr, reason = "main prints the error drun exits with")]

use drun::exit;

fn main() {
    // Before anything is created: what drun makes without an explicit mode is private to its owner.
    drun::sys::safe_fs::set_private_umask();
    let cli = match drun::cli::parse_from(std::env::args_os()) {
        Ok(cli) => cli,
        // --help and --version print to stdout and exit 0, as clap does.
        Err(e) if !e.use_stderr() => e.exit(),
        // A bad command line is drun's own error, as for docker run.
        Err(e) => {
            let _ = e.print();
            std::process::exit(exit::DRUN_ERROR);
        }
    };
    let filter = cli
        .global
        .log_level
        .clone()
        .or_else(|| std::env::var("DRUN_LOG").ok())
        // libcgroups warns about every v1 controller a host lacks (hugetlb, net_cls …): noise for users.
        .unwrap_or_else(|| "warn,libcgroups=error".to_string());
    // Colour only for a person at a terminal: escapes in a pipe or a file fill CI logs. NO_COLOR
    // (https://no-color.org) set to anything but the empty string turns it off everywhere.
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&filter).unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .with_ansi(colour)
        .with_target(false)
        .init();
    // An ordinary user's drun works in a user namespace of its own, entered now: only a single-threaded process
    // can, and everything after this (pull threads, the container) runs inside it.
    // A drun that a rootless drun started in its namespace (a health probe, a workflow's service) is already there.
    let adopted = nix::unistd::geteuid().is_root() && drun::sys::userns::adopt().is_some();
    if let Some(mode) = cli.command.userns().filter(|_| !adopted) {
        if !nix::unistd::geteuid().is_root() {
            if let Err(e) = drun::sys::userns::enter(mode) {
                eprintln!("error: {e}");
                std::process::exit(exit::DRUN_ERROR);
            }
        } else if mode == drun::sys::userns::UsernsMode::KeepId {
            eprintln!("error: --userns keep-id is for rootless drun; as root, choose the container's user with -u");
            std::process::exit(exit::DRUN_ERROR);
        }
    }
    let code = match drun::commands::dispatch(&cli.global, cli.command) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err}");
            let mut causes = err.chain().skip(1).peekable();
            if causes.peek().is_some() {
                eprintln!("\nCaused by:");
                for (i, c) in causes.enumerate() {
                    eprintln!("  {i}: {c}");
                }
            }
            exit::DRUN_ERROR
        }
    };
    std::process::exit(code);
}
