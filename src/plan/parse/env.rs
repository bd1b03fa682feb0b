//! Environment settings: `-e KEY=VALUE` / `-e KEY`, the lines of an `--env-file`, a workflow's variable names.
//! Host values come through a lookup function, never from the process environment directly.

use super::{ParseError, Problem};

/// A variable name: not empty, no `=`.
pub fn env_name(name: &str) -> Result<(), ParseError> {
    if name.is_empty() || name.contains('=') {
        Err(ParseError::new(name, Problem::EnvName))
    } else {
        Ok(())
    }
}

/// `KEY=VALUE`, or `KEY` alone for the host's value (`lookup`; nothing when it is unset, as Docker does).
pub fn env_item(item: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<Option<(String, String)>, ParseError> {
    match item.split_once('=') {
        Some((name, value)) => {
            env_name(name).map_err(|_| ParseError::new(item, Problem::EnvName))?;
            Ok(Some((name.to_string(), value.to_string())))
        }
        None => Ok(lookup(item).map(|value| (item.to_string(), value))),
    }
}

/// The settings of an env file: each line trimmed, blank lines and `#` comments left out, with its line number
/// (from 1). Each item is an [`env_item`].
pub fn env_file_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines()
        .enumerate()
        .map(|(i, line)| (i + 1, line.trim()))
        .filter(|(_, line)| !line.is_empty() && !line.starts_with('#'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(name: &str) -> Option<String> {
        (name == "HOME_DIR").then(|| "/home/me".to_string())
    }

    fn pair(k: &str, v: &str) -> Option<(String, String)> {
        Some((k.into(), v.into()))
    }

    #[test]
    fn items() {
        assert_eq!(env_item("A=1", &host), Ok(pair("A", "1")));
        assert_eq!(env_item("A=", &host), Ok(pair("A", "")));
        assert_eq!(env_item("A=b=c", &host), Ok(pair("A", "b=c")));
        assert_eq!(env_item("HOME_DIR", &host), Ok(pair("HOME_DIR", "/home/me")));
        assert_eq!(env_item("UNSET", &host), Ok(None));
        let e = env_item("=x", &host).unwrap_err();
        assert_eq!((e.value.as_str(), e.problem), ("=x", Problem::EnvName));
    }

    #[test]
    fn names() {
        assert_eq!(env_name("PATH"), Ok(()));
        assert_eq!(env_name("").unwrap_err().problem, Problem::EnvName);
        assert_eq!(env_name("A=B").unwrap_err().problem, Problem::EnvName);
    }

    #[test]
    fn file_lines() {
        let text = "# comment\nA=1\n\n   B=2  \n#C=3\nHOME_DIR\n";
        assert_eq!(
            env_file_lines(text).collect::<Vec<_>>(),
            vec![(2, "A=1"), (4, "B=2"), (6, "HOME_DIR")]
        );
    }
}
