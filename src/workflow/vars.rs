//! Workflow-file variables (runflow's `--var NAME=VALUE` and `--var-file`): reading them, and the `${var.NAME}`
//! (`${var.NAME:-default}`) references they fill in one string of the file. Which string gets which treatment is
//! [`super::substitute`]'s business; this file never sees YAML text, only parsed values, so a value cannot add keys.

use std::collections::BTreeMap;
use std::path::Path;

use serde_saphyr::Spanned;

use super::error::{whole_file, Locator, WorkflowError};
use super::schema::Scalar;

/// A var-file is the caller's input, but may be anything they point at: read at most this much.
const MAX_VAR_FILE_SIZE: u64 = 1 << 20;

/// The variables of one run: `--var-file`s in the order given, then `--var`s; a later value wins.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Variables(BTreeMap<String, String>);

/// A `--var` that is not `NAME=VALUE`.
#[derive(Debug, thiserror::Error)]
#[error("invalid variable {0:?}: expected NAME=VALUE, NAME made of letters, digits, `_` and `-`")]
pub struct VarError(String);

impl Variables {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    pub fn set(&mut self, name: String, value: String) {
        self.0.insert(name, value);
    }

    /// Adds `--var NAME=VALUE`.
    pub fn add_arg(&mut self, arg: &str) -> Result<(), VarError> {
        match arg.split_once('=') {
            Some((name, value)) if valid_name(name) => {
                self.set(name.to_string(), value.to_string());
                Ok(())
            }
            _ => Err(VarError(arg.to_string())),
        }
    }

    /// Adds the variables of a `--var-file`: a YAML map of names to single values (text, numbers, booleans).
    pub fn add_file(&mut self, path: &Path) -> Result<(), WorkflowError> {
        let text = crate::sys::safe_fs::read_user_file(path, MAX_VAR_FILE_SIZE)
            .and_then(|b| String::from_utf8(b).map_err(|_| std::io::Error::other("it is not UTF-8 text")))
            .map_err(|e| whole_file(path, format!("cannot read the variable file: {e}")))?;
        let locator = Locator {
            file: path,
            text: &text,
        };
        if text.trim().is_empty() {
            return Ok(());
        }
        let file: VarFile = serde_saphyr::from_str(&text).map_err(|e| locator.yaml_error(&e))?;
        for (name, value) in file.0 {
            if !valid_name(&name.value.0) {
                return Err(locator.at(
                    &name.referenced,
                    format!(
                        "invalid variable name {:?}: expected letters, digits, `_` and `-`",
                        name.value.0
                    ),
                ));
            }
            self.set(name.value.0, value.0);
        }
        Ok(())
    }
}

/// A var-file: `NAME: VALUE` lines (a map whose keys keep their places, for errors).
struct VarFile(Vec<(Spanned<Scalar>, Scalar)>);

impl<'de> serde::Deserialize<'de> for VarFile {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Vis;
        impl<'de> serde::de::Visitor<'de> for Vis {
            type Value = VarFile;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a map of variable names to values (`name: value` lines)")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<VarFile, A::Error> {
                let mut out = Vec::new();
                while let Some(k) = map.next_key()? {
                    out.push((k, map.next_value()?));
                }
                Ok(VarFile(out))
            }
        }
        d.deserialize_map(Vis)
    }
}

/// Letters, digits, `_` and `-` (runflow's and Terraform's identifiers), not starting with a digit or `-`.
pub fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// What a later stage does with `$` in the string being substituted: the escapes this stage must leave to it,
/// and how inserted text is protected from it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Nothing reads the string after this: `$${var.` and `$${deps.` are unescaped here; a `${deps.…}` reference
    /// is refused (by the caller, who knows the key).
    Final,
    /// `commands`, `command`, `before_run`: `${deps.NAME.stdout}` and its escape `$${deps.` are filled in just
    /// before the job starts ([`super::outputs`]); every other `$` is the shell's.
    Command,
    /// `environment` values: `${VAR}` from the host follows, which reads `$$` as `$` ([`super::interpolate`]).
    Environment,
}

/// Why a string could not be substituted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubstError {
    #[error("unclosed `${{var.` in {0:?}")]
    Unclosed(String),
    #[error("invalid variable reference `${{var.{0}}}`: expected ${{var.NAME}} or ${{var.NAME:-default}}")]
    BadReference(String),
    #[error(
        "variable {0:?} is not set (give it with --var {0}=VALUE or in a --var-file, or write ${{var.{0}:-default}})"
    )]
    Unset(String),
    /// A `${deps.…}` reference where the stage does not allow one (the caller says where it is allowed).
    #[error("`{0}` is a dependency's output")]
    Output(String),
}

pub const VAR_PREFIX: &str = "${var.";
pub const DEPS_PREFIX: &str = "${deps.";

/// Fills in the `${var.…}` references of `s` for `stage`. Inserted values (and defaults) are literal text: they
/// are escaped for the later stage, so a value holding `$`, `${VAR}` or `${deps.…}` stays as written.
pub fn substitute(s: &str, stage: Stage, vars: &Variables) -> Result<String, SubstError> {
    if !s.contains('$') {
        return Ok(s.to_string());
    }
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while let Some(off) = s[i..].find('$') {
        let at = i + off;
        out.push_str(&s[i..at]);
        let rest = &s[at..];
        if stage == Stage::Environment && rest.starts_with("$$") {
            // The host stage reads every `$$` as an escaped `$`: pass the pair on untouched.
            out.push_str("$$");
            i = at + 2;
        } else if let Some(r) = rest.strip_prefix('$').filter(|r| r.starts_with(VAR_PREFIX)) {
            // `$${var.` is the literal `${var.`.
            out.push_str(VAR_PREFIX);
            i = s.len() - r.len() + VAR_PREFIX.len();
        } else if let Some(r) = rest.strip_prefix('$').filter(|r| r.starts_with(DEPS_PREFIX)) {
            // `$${deps.`: the literal `${deps.`, unescaped by the stage that reads references.
            out.push_str(if stage == Stage::Final { DEPS_PREFIX } else { "$${deps." });
            i = s.len() - r.len() + DEPS_PREFIX.len();
        } else if let Some(body) = rest.strip_prefix(VAR_PREFIX) {
            let end = body.find('}').ok_or_else(|| SubstError::Unclosed(s.to_string()))?;
            let expr = &body[..end];
            let (name, default) = match expr.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (expr, None),
            };
            if !valid_name(name) {
                return Err(SubstError::BadReference(expr.to_string()));
            }
            let value = match (vars.get(name).filter(|v| !(v.is_empty() && default.is_some())), default) {
                (Some(v), _) => v,
                (None, Some(d)) => d,
                (None, None) => return Err(SubstError::Unset(name.to_string())),
            };
            out.push_str(&escape(value, stage));
            i = at + VAR_PREFIX.len() + end + 1;
        } else if rest.starts_with(DEPS_PREFIX) {
            if stage == Stage::Final {
                let end = rest.find('}').map_or(rest.len(), |e| e + 1);
                return Err(SubstError::Output(rest[..end].to_string()));
            }
            // Left for the stage that fills in outputs (which also checks its form).
            out.push_str(DEPS_PREFIX);
            i = at + DEPS_PREFIX.len();
        } else {
            out.push('$');
            i = at + 1;
        }
    }
    out.push_str(&s[i..]);
    Ok(out)
}

/// `text` made literal for the stage that reads the string next.
fn escape(text: &str, stage: Stage) -> String {
    match stage {
        Stage::Final => text.to_string(),
        Stage::Command => text.replace(DEPS_PREFIX, "$${deps."),
        Stage::Environment => text.replace('$', "$$"),
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // fixtures in the tests' own temporary directories
mod tests {
    use super::*;

    fn vars() -> Variables {
        let mut v = Variables::default();
        for a in [
            "out=/tmp/out.txt",
            "EMPTY=",
            "dollar=a$b ${HOME} ${deps.x.stdout}",
            "my-name=n",
        ] {
            v.add_arg(a).unwrap();
        }
        v
    }

    #[test]
    fn references_are_filled_in_for_each_stage() {
        let v = vars();
        let f = |s: &str, stage| substitute(s, stage, &v);
        assert_eq!(f("${var.out}", Stage::Final).unwrap(), "/tmp/out.txt");
        assert_eq!(f("x${var.my-name}y", Stage::Final).unwrap(), "xny");
        assert_eq!(f("${var.nope:-dflt}", Stage::Final).unwrap(), "dflt");
        assert_eq!(f("${var.EMPTY:-dflt}", Stage::Final).unwrap(), "dflt");
        assert_eq!(f("${var.EMPTY}", Stage::Final).unwrap(), "");
        assert_eq!(
            f("$${var.out} $$ $HOME ${HOME}", Stage::Final).unwrap(),
            "${var.out} $$ $HOME ${HOME}"
        );
        // Inserted text is literal for whatever reads the string next.
        assert_eq!(
            f("${var.dollar}", Stage::Final).unwrap(),
            "a$b ${HOME} ${deps.x.stdout}"
        );
        assert_eq!(
            f("${var.dollar}", Stage::Command).unwrap(),
            "a$b ${HOME} $${deps.x.stdout}"
        );
        assert_eq!(
            f("${var.dollar}", Stage::Environment).unwrap(),
            "a$$b $${HOME} $${deps.x.stdout}"
        );
        // References to outputs are left where they are allowed, escapes kept for their stage.
        assert_eq!(
            f("echo ${deps.a.stdout} $${deps.a.stdout} $$", Stage::Command).unwrap(),
            "echo ${deps.a.stdout} $${deps.a.stdout} $$"
        );
        assert_eq!(
            f("$$${var.out} ${HOST}", Stage::Environment).unwrap(),
            "$$/tmp/out.txt ${HOST}"
        );
        assert_eq!(f("$${deps.a.stdout}", Stage::Final).unwrap(), "${deps.a.stdout}");
        assert_eq!(
            f("x ${deps.a.stdout} y", Stage::Final),
            Err(SubstError::Output("${deps.a.stdout}".into()))
        );
        assert_eq!(f("${var.nope}", Stage::Final), Err(SubstError::Unset("nope".into())));
        assert!(f("${var.nope}", Stage::Final)
            .unwrap_err()
            .to_string()
            .contains("--var nope=VALUE"));
        assert_eq!(
            f("${var.out", Stage::Final),
            Err(SubstError::Unclosed("${var.out".into()))
        );
        assert_eq!(
            f("${var.a b}", Stage::Final),
            Err(SubstError::BadReference("a b".into()))
        );
        assert_eq!(f("${var.}", Stage::Final), Err(SubstError::BadReference("".into())));
    }

    #[test]
    fn command_line_variables() {
        let mut v = Variables::default();
        v.add_arg("a=b=c").unwrap();
        assert_eq!(v.get("a"), Some("b=c"));
        for bad in ["novalue", "=x", "1a=x", "a b=x", "-a=x"] {
            assert!(
                v.add_arg(bad).unwrap_err().to_string().contains("expected NAME=VALUE"),
                "{bad}"
            );
        }
    }

    #[test]
    fn var_files_are_read_bounded_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &[u8]| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).unwrap();
            p
        };
        let mut v = Variables::default();
        v.add_file(&write(
            "ok.yaml",
            b"out: /tmp/x\ncount: 3\nflag: true\nmulti: \"a\\nb: c\"\n",
        ))
        .unwrap();
        assert_eq!(
            (v.get("out"), v.get("count"), v.get("flag"), v.get("multi")),
            (Some("/tmp/x"), Some("3"), Some("true"), Some("a\nb: c"))
        );
        v.add_file(&write("empty.yaml", b"")).unwrap();
        let error = |name: &str, text: &[u8]| {
            Variables::default()
                .add_file(&write(name, text))
                .unwrap_err()
                .to_string()
        };
        let e = error("list.yaml", b"- a\n- b\n");
        assert!(e.contains("list.yaml:1:1: expected a map here"), "{e}");
        let e = error("nested.yaml", b"a:\n  b: c\n");
        assert!(e.contains("nested.yaml:2:3: ") && e.contains("a single value"), "{e}");
        let e = error("name.yaml", b"ok: 1\n\"bad name\": 2\n");
        assert!(e.contains("name.yaml:2:1: invalid variable name \"bad name\""), "{e}");
        let e = error("binary.yaml", b"a: \xff\n");
        assert!(
            e.contains("binary.yaml: cannot read the variable file: it is not UTF-8 text"),
            "{e}"
        );
        let big = vec![b'#'; usize::try_from(MAX_VAR_FILE_SIZE).unwrap() + 1];
        let e = error("big.yaml", &big);
        assert!(e.contains("big.yaml: cannot read the variable file"), "{e}");
        let e = Variables::default().add_file(dir.path()).unwrap_err().to_string();
        assert!(e.contains("is a directory"), "{e}");
    }
}
