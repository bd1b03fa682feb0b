//! `${VAR}` references in a workflow's environment values, expanded from the host's environment the way Docker
//! Compose does: `${VAR}`, `${VAR:-default}`, `$$` for a literal `$`. `${deps.NAME.stdout}` (a dependency's
//! output) is kept in the [`Template`], filled in when the job starts.

use super::outputs::{self, ReferenceError, Template};

/// Why a value could not be expanded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InterpolateError {
    #[error("unclosed `${{` in {0:?}")]
    Unclosed(String),
    #[error("invalid variable reference `${{{0}}}`")]
    BadReference(String),
    #[error("environment variable {0} is not set on the host (use ${{{0}:-default}} for a default)")]
    Unset(String),
    #[error(transparent)]
    Output(#[from] ReferenceError),
}

/// Expands `${VAR}` and `${VAR:-default}` (and `$$` → `$`) from `lookup`; a `$` before anything else stays.
pub fn interpolate(s: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<Template, InterpolateError> {
    let mut out = Template::default();
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_text(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(r) = after.strip_prefix('$') {
            out.push_text("$");
            rest = r;
        } else if let Some(body) = after.strip_prefix("{deps.") {
            let (name, r) = outputs::reference(body, s)?;
            out.push_output(name);
            rest = r;
        } else if let Some(body) = after.strip_prefix('{') {
            let end = body
                .find('}')
                .ok_or_else(|| InterpolateError::Unclosed(s.to_string()))?;
            let expr = &body[..end];
            let (name, default) = match expr.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (expr, None),
            };
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(InterpolateError::BadReference(expr.to_string()));
            }
            match (lookup(name).filter(|v| !(v.is_empty() && default.is_some())), default) {
                (Some(v), _) => out.push_text(&v),
                (None, Some(d)) => out.push_text(d),
                (None, None) => return Err(InterpolateError::Unset(name.to_string())),
            }
            rest = &body[end + 1..];
        } else {
            out.push_text("$");
            rest = after;
        }
    }
    out.push_text(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(k: &str) -> Option<String> {
        match k {
            "HOME_DIR" => Some("/home/me".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    fn interpolate(s: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, InterpolateError> {
        super::interpolate(s, lookup).map(|t| t.written())
    }

    #[test]
    fn outputs_are_kept_for_later() {
        let t = super::interpolate("${HOME_DIR}:${deps.a.stdout}:$${deps.b.stdout}", &env).unwrap();
        assert_eq!(t.outputs().collect::<Vec<_>>(), ["a"]);
        assert_eq!(t.written(), "/home/me:${deps.a.stdout}:${deps.b.stdout}");
        assert_eq!(
            interpolate("${deps.a}", &env),
            Err(InterpolateError::Output(ReferenceError::Invalid("a".into())))
        );
    }

    #[test]
    fn interpolation() {
        assert_eq!(interpolate("${HOME_DIR}/x", &env).unwrap(), "/home/me/x");
        assert_eq!(interpolate("${NOPE:-dflt}", &env).unwrap(), "dflt");
        assert_eq!(interpolate("${EMPTY:-dflt}", &env).unwrap(), "dflt");
        assert_eq!(interpolate("${EMPTY}", &env).unwrap(), "");
        assert_eq!(interpolate("$$HOME and $PATH", &env).unwrap(), "$HOME and $PATH");
        assert!(interpolate("${NOPE}", &env)
            .unwrap_err()
            .to_string()
            .contains("NOPE is not set"));
        assert_eq!(
            interpolate("${OPEN", &env),
            Err(InterpolateError::Unclosed("${OPEN".into()))
        );
        assert_eq!(
            interpolate("${A B}", &env),
            Err(InterpolateError::BadReference("A B".into()))
        );
    }
}
