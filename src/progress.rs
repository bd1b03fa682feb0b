//! Progress display: a bar per layer on a terminal, nothing while working otherwise (the caller prints a
//! one-line summary), and nothing at all with `--quiet`.

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;

#[derive(Clone)]
pub struct Progress {
    multi: Option<MultiProgress>,
}

impl Progress {
    pub fn new(quiet: bool) -> Progress {
        let tty = std::io::stderr().is_terminal();
        Progress {
            multi: (!quiet && tty).then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr())),
        }
    }

    pub fn hidden() -> Progress {
        Progress { multi: None }
    }

    /// A bar for one blob of `len` bytes, labelled with a short digest.
    pub fn bar(&self, label: &str, len: u64) -> ProgressBar {
        match &self.multi {
            None => ProgressBar::hidden(),
            Some(m) => {
                let pb = m.add(ProgressBar::new(len));
                pb.set_style(
                    ProgressStyle::with_template("{prefix:.bold} [{bar:30}] {bytes:>10}/{total_bytes:<10} {msg}")
                        .expect("progress template is valid")
                        .progress_chars("=> "),
                );
                pb.set_prefix(label.to_string());
                pb
            }
        }
    }
}
