//! The drun binary: parse, set up logging, dispatch, map errors to exit codes.

use clap::Parser;
use drun::cli::Cli;

fn main() {
    // Before anything is created: what drun makes without an explicit mode is private to its owner.
    drun::safe_fs::set_private_umask();
    let cli = Cli::parse();
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
    if let Some(mode) = cli.command.userns() {
        if !nix::unistd::geteuid().is_root() {
            if let Err(e) = drun::sys::userns::enter(mode) {
                eprintln!("error: {e}");
                std::process::exit(drun::exit::DRUN_ERROR);
            }
        } else if mode == drun::sys::userns::UsernsMode::KeepId {
            eprintln!("error: --userns keep-id is for rootless drun; as root, choose the container's user with -u");
            std::process::exit(drun::exit::DRUN_ERROR);
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
            drun::exit::DRUN_ERROR
        }
    };
    std::process::exit(code);
}
