//! Errors in a workflow file, each at `file:line:col` with the offending line quoted, and the translation of the
//! YAML parser's messages into a workflow author's words. Never prints.

use std::fmt;
use std::path::{Path, PathBuf};

use serde_saphyr::Location;

use super::suggest::did_you_mean;

/// A problem in a workflow file, at a place in it (line 0: the file as a whole).
#[derive(Debug)]
pub struct WorkflowError {
    pub file: PathBuf,
    pub line: u64,
    pub column: u64,
    pub message: String,
    /// The offending line with a caret under the column.
    pub snippet: Option<String>,
}

impl fmt::Display for WorkflowError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line > 0 {
            write!(
                f,
                "{}:{}:{}: {}",
                self.file.display(),
                self.line,
                self.column,
                self.message
            )?;
        } else {
            write!(f, "{}: {}", self.file.display(), self.message)?;
        }
        if let Some(s) = &self.snippet {
            write!(f, "\n{s}")?;
        }
        Ok(())
    }
}

impl std::error::Error for WorkflowError {}

/// An error's message followed by its causes, `: `-separated: for a message that must fit on one line before a
/// quoted snippet, or in a log.
pub fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

/// Makes [`WorkflowError`]s for one file: knows its name and text, to quote the offending line.
pub struct Locator<'a> {
    pub file: &'a Path,
    pub text: &'a str,
}

impl Locator<'_> {
    /// An error about the whole file (no line).
    pub fn whole_file(&self, message: String) -> WorkflowError {
        whole_file(self.file, message)
    }

    /// An error at `loc`, with that line quoted.
    pub fn at(&self, loc: &Location, message: String) -> WorkflowError {
        let (line, column) = (loc.line(), loc.column());
        let snippet = usize::try_from(line)
            .ok()
            .and_then(|l| l.checked_sub(1))
            .and_then(|index| self.text.lines().nth(index))
            .map(|l| {
                let indent = usize::try_from(column.saturating_sub(1)).unwrap_or(usize::MAX);
                let pad: String = l
                    .chars()
                    .take(indent)
                    .map(|c| if c == '\t' { '\t' } else { ' ' })
                    .collect();
                format!("{line:>4} | {l}\n     | {pad}^")
            });
        WorkflowError {
            file: self.file.to_path_buf(),
            line,
            column,
            message,
            snippet,
        }
    }

    /// The YAML parser's error in a workflow author's words, at its place.
    pub fn yaml_error(&self, e: &serde_saphyr::Error) -> WorkflowError {
        let message = author_words(e.without_snippet().to_string());
        match e.location() {
            Some(loc) => self.at(&loc, message),
            None => self.whole_file(message),
        }
    }
}

/// An error about the whole file `file` (it may not even have been read).
pub fn whole_file(file: &Path, message: String) -> WorkflowError {
    WorkflowError {
        file: file.to_path_buf(),
        line: 0,
        column: 0,
        message,
        snippet: None,
    }
}

fn author_words(mut message: String) -> String {
    // The crate appends " at line L, column C"; the location is printed in front instead.
    if let Some(i) = message.rfind(" at line ") {
        message.truncate(i);
    }
    // The YAML parser's words for a node of the wrong kind.
    for (from, to) in [
        ("expected sequence start", "expected a list here (items written `- …`)"),
        ("expected mapping start", "expected a map here (`key: value` lines)"),
        (
            "expected string scalar",
            "expected text here (quote it if it contains `: ` or starts with a YAML character such as `{`, `[`, `*`, `&`, `!`, `|`, `>`)",
        ),
    ] {
        if message == from {
            message = to.to_string();
        }
    }
    if let Some(rest) = message.strip_prefix("missing field ") {
        message = format!("missing key {rest}");
    }
    // serde's "unknown field `x`, expected one of a, b" / "expected `a` or `b`": suggest the closest key.
    if let Some(rest) = message.strip_prefix("unknown field `") {
        if let Some((word, expected)) = rest.split_once('`') {
            let list = expected
                .trim_start_matches(", expected one of ")
                .trim_start_matches(", expected ");
            let keys: Vec<&str> = list
                .split([',', ' '])
                .map(|k| k.trim().trim_matches('`'))
                .filter(|k| !k.is_empty() && *k != "or")
                .collect();
            let hint = did_you_mean(word, &keys);
            message = if hint.is_empty() {
                format!("unknown key `{word}`; expected one of: {}", keys.join(", "))
            } else {
                format!("unknown key `{word}`{hint}; expected one of: {}", keys.join(", "))
            };
        }
    }
    message
}
