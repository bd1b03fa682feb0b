//! A workflow's output: its stdout, which dependents use as `${deps.NAME.stdout}` in their commands and
//! environment. Here: the references kept as [`Template`]s until the dependency has run, the captured stdout
//! ([`Capture`], bounded in memory, whole in `artifacts/NAME.stdout`), and the filling in. It is a container's
//! output, so nothing here ever puts it in a host path (the parser refuses the reference there:
//! [`super::substitute`]).

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;

use super::vars::DEPS_PREFIX;

/// The most of a workflow's stdout a dependent can use (it is held in memory until then).
pub const MAX_OUTPUT: usize = 1 << 20;

/// One piece of a string with references.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Piece {
    Text(String),
    /// The stdout of the workflow so named.
    Output(String),
}

/// A string that may use dependencies' outputs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Template(Vec<Piece>);

/// A `${deps.…}` reference that is not `${deps.NAME.stdout}`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    #[error("unclosed `${{deps.` in {0:?}")]
    Unclosed(String),
    #[error("invalid output reference `${{deps.{0}}}`: expected ${{deps.NAME.stdout}}")]
    Invalid(String),
}

/// Why an output cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OutputError {
    #[error("cannot use the output of workflow {0:?}: it has not run")]
    NotRun(String),
    #[error(
        "cannot use the output of workflow {name:?}: its stdout is larger than {} MiB (it is saved whole in \
         {name}.stdout beside its log; pass large results as artifacts)",
        MAX_OUTPUT >> 20
    )]
    TooLarge { name: String },
    #[error("cannot use the output of workflow {0:?}: its stdout is not UTF-8 text")]
    NotText(String),
    #[error("cannot use the output of workflow {0:?}: its stdout holds a NUL byte, which no argument or variable can")]
    Nul(String),
}

impl Template {
    /// A string without references.
    pub fn text(s: &str) -> Template {
        let mut t = Template::default();
        t.push_text(s);
        t
    }

    /// Reads a command's references: `${deps.NAME.stdout}`, and `$${deps.` for a literal `${deps.`; every other
    /// `$` is left for the shell.
    pub fn parse_command(s: &str) -> Result<Template, ReferenceError> {
        let mut t = Template::default();
        let mut rest = s;
        while let Some(i) = rest.find("${deps.") {
            if i > 0 && rest.as_bytes()[i - 1] == b'$' {
                t.push_text(&rest[..i - 1]);
                t.push_text(DEPS_PREFIX);
                rest = &rest[i + DEPS_PREFIX.len()..];
                continue;
            }
            t.push_text(&rest[..i]);
            let (name, after) = reference(&rest[i + DEPS_PREFIX.len()..], s)?;
            t.push_output(name);
            rest = after;
        }
        t.push_text(rest);
        Ok(t)
    }

    pub fn push_text(&mut self, s: &str) {
        if s.is_empty() {
            return;
        }
        match self.0.last_mut() {
            Some(Piece::Text(t)) => t.push_str(s),
            _ => self.0.push(Piece::Text(s.to_string())),
        }
    }

    pub fn push_output(&mut self, workflow: &str) {
        self.0.push(Piece::Output(workflow.to_string()));
    }

    /// `templates` one after the other, `separator` between them.
    pub fn join(templates: &[Template], separator: &str) -> Template {
        let mut t = Template::default();
        for (i, part) in templates.iter().enumerate() {
            if i > 0 {
                t.push_text(separator);
            }
            for p in &part.0 {
                match p {
                    Piece::Text(s) => t.push_text(s),
                    Piece::Output(n) => t.push_output(n),
                }
            }
        }
        t
    }

    /// The workflows whose outputs it uses.
    pub fn outputs(&self) -> impl Iterator<Item = &str> {
        self.0.iter().filter_map(|p| match p {
            Piece::Output(n) => Some(n.as_str()),
            Piece::Text(_) => None,
        })
    }

    /// As it reads before the outputs are known (references written `${deps.NAME.stdout}`): what `--dry-run`
    /// shows, and the plan's value until the job starts.
    pub fn written(&self) -> String {
        self.0
            .iter()
            .map(|p| match p {
                Piece::Text(s) => s.clone(),
                Piece::Output(n) => format!("{DEPS_PREFIX}{n}.stdout}}"),
            })
            .collect()
    }

    /// With the outputs filled in.
    pub fn fill(&self, outputs: &Outputs) -> Result<String, OutputError> {
        let mut out = String::new();
        for p in &self.0 {
            match p {
                Piece::Text(s) => out.push_str(s),
                Piece::Output(n) => out.push_str(outputs.text(n)?),
            }
        }
        Ok(out)
    }
}

/// Where a job uses dependencies' outputs: the parts of its plan filled in when it starts.
#[derive(Clone, Debug, Default)]
pub struct OutputUses {
    /// The container's command, when it uses outputs.
    pub command: Option<Vec<Template>>,
    /// Environment values that use outputs, by their index in the plan's environment.
    pub env: Vec<(usize, Template)>,
}

impl OutputUses {
    /// The workflows whose outputs are used.
    pub fn workflows(&self) -> impl Iterator<Item = &str> {
        self.command
            .iter()
            .flatten()
            .chain(self.env.iter().map(|(_, t)| t))
            .flat_map(Template::outputs)
    }

    /// Fills the outputs into `plan` (whose command and environment hold the templates as written).
    pub fn fill(&self, plan: &mut crate::plan::RunPlan, outputs: &Outputs) -> Result<(), OutputError> {
        if let Some(command) = &self.command {
            plan.command = Some(command.iter().map(|t| t.fill(outputs)).collect::<Result<_, _>>()?);
        }
        for (i, t) in &self.env {
            if let Some((_, value)) = plan.env.get_mut(*i) {
                *value = t.fill(outputs)?;
            }
        }
        Ok(())
    }
}

/// `NAME.stdout}…` (after `${deps.`): the workflow's name and what follows the reference. `whole` is for errors.
pub fn reference<'a>(body: &'a str, whole: &str) -> Result<(&'a str, &'a str), ReferenceError> {
    let end = body
        .find('}')
        .ok_or_else(|| ReferenceError::Unclosed(whole.to_string()))?;
    let expr = &body[..end];
    match expr.rsplit_once('.') {
        Some((name, "stdout")) if !name.is_empty() => Ok((name, &body[end + 1..])),
        _ => Err(ReferenceError::Invalid(expr.to_string())),
    }
}

/// What a workflow wrote to its stdout, as dependents see it.
#[derive(Debug, Default)]
pub struct Captured {
    kept: Vec<u8>,
    /// It wrote more than [`MAX_OUTPUT`]: what is kept is not all of it.
    overflow: bool,
}

#[cfg(test)]
impl Captured {
    /// What a workflow that wrote `bytes` left.
    pub fn of(bytes: &[u8]) -> Captured {
        Captured {
            kept: bytes.to_vec(),
            overflow: false,
        }
    }
}

/// The outputs of the workflows that have run, by name.
#[derive(Debug, Default)]
pub struct Outputs(HashMap<String, Captured>);

impl Outputs {
    pub fn insert(&mut self, workflow: &str, captured: Captured) {
        self.0.insert(workflow.to_string(), captured);
    }

    /// The output of `workflow` as text, trailing newlines trimmed as a shell's `$(…)` does.
    fn text(&self, workflow: &str) -> Result<&str, OutputError> {
        let name = || workflow.to_string();
        let c = self.0.get(workflow).ok_or_else(|| OutputError::NotRun(name()))?;
        if c.overflow {
            return Err(OutputError::TooLarge { name: name() });
        }
        let text = std::str::from_utf8(&c.kept).map_err(|_| OutputError::NotText(name()))?;
        if text.contains('\0') {
            return Err(OutputError::Nul(name()));
        }
        Ok(text.trim_end_matches('\n'))
    }
}

/// Where a job's stdout is copied while it runs: all of it to `artifacts/NAME.stdout`, and up to [`MAX_OUTPUT`]
/// kept in memory when a dependent uses it.
pub struct Capture {
    file: File,
    keep: bool,
    captured: Captured,
    /// The first error writing the file (the run goes on; the caller reports it).
    pub file_error: Option<std::io::Error>,
}

impl Capture {
    pub fn new(file: File, keep: bool) -> Capture {
        Capture {
            file,
            keep,
            captured: Captured::default(),
            file_error: None,
        }
    }

    pub fn into_captured(self) -> Captured {
        self.captured
    }
}

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.file_error.is_none() {
            if let Err(e) = self.file.write_all(buf) {
                self.file_error = Some(e);
            }
        }
        if self.keep && !self.captured.overflow {
            let room = MAX_OUTPUT - self.captured.kept.len();
            if buf.len() > room {
                // Not kept at all: a truncated output must never pass for the whole one.
                self.captured.overflow = true;
                self.captured.kept = Vec::new();
            } else {
                self.captured.kept.extend_from_slice(buf);
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outputs(pairs: &[(&str, &[u8])]) -> Outputs {
        let mut o = Outputs::default();
        for (name, bytes) in pairs {
            o.insert(
                name,
                Captured {
                    kept: bytes.to_vec(),
                    overflow: false,
                },
            );
        }
        o
    }

    #[test]
    fn commands_keep_references_until_the_outputs_are_known() {
        let t = Template::parse_command("echo '${deps.echo.stdout}' $$ $HOME $${deps.x.stdout} ${deps.a.b.stdout}")
            .unwrap();
        assert_eq!(t.outputs().collect::<Vec<_>>(), ["echo", "a.b"]);
        assert_eq!(
            t.written(),
            "echo '${deps.echo.stdout}' $$ $HOME ${deps.x.stdout} ${deps.a.b.stdout}"
        );
        let o = outputs(&[("echo", b"hello world\n\n"), ("a.b", b"x")]);
        assert_eq!(t.fill(&o).unwrap(), "echo 'hello world' $$ $HOME ${deps.x.stdout} x");
        assert_eq!(
            Template::parse_command("${deps.a.stderr}"),
            Err(ReferenceError::Invalid("a.stderr".into()))
        );
        assert_eq!(
            Template::parse_command("${deps..stdout}"),
            Err(ReferenceError::Invalid(".stdout".into()))
        );
        assert_eq!(
            Template::parse_command("x ${deps.a.stdout"),
            Err(ReferenceError::Unclosed("x ${deps.a.stdout".into()))
        );
        let joined = Template::join(&[Template::text("a"), t.clone()], "\n");
        assert_eq!(joined.written(), format!("a\n{}", t.written()));
    }

    #[test]
    fn outputs_that_cannot_be_used_are_refused() {
        let t = Template::parse_command("${deps.a.stdout}").unwrap();
        let e = |o: &Outputs| t.fill(o).unwrap_err();
        assert_eq!(e(&Outputs::default()), OutputError::NotRun("a".into()));
        assert_eq!(e(&outputs(&[("a", b"\xff")])), OutputError::NotText("a".into()));
        assert_eq!(e(&outputs(&[("a", b"x\0y")])), OutputError::Nul("a".into()));
        let mut big = Outputs::default();
        big.insert(
            "a",
            Captured {
                kept: Vec::new(),
                overflow: true,
            },
        );
        assert!(e(&big).to_string().contains("its stdout is larger than 1 MiB"));
    }

    #[test]
    fn a_capture_keeps_at_most_its_bound_and_the_file_gets_everything() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.stdout");
        #[allow(clippy::disallowed_methods)] // the test's own directory
        let file = File::create(&path).unwrap();
        let mut c = Capture::new(file, true);
        c.write_all(&vec![b'x'; MAX_OUTPUT - 1]).unwrap();
        c.write_all(b"y").unwrap();
        assert!(!c.captured.overflow && c.captured.kept.len() == MAX_OUTPUT);
        c.write_all(b"z").unwrap();
        let captured = c.into_captured();
        assert!(captured.overflow && captured.kept.is_empty());
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            u64::try_from(MAX_OUTPUT + 1).unwrap()
        );
    }
}
