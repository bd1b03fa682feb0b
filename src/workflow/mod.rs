//! `drun run workflow.yaml`: dstack-style workflow files.
//!
//! [`load`] parses and validates a whole file before anything runs (every error carries `file:line:col`), and
//! turns each entry into a [`Job`]: the same `RunPlan` as `drun run IMAGE` flags give, plus what only workflows
//! have (the project directory, artifacts, dependencies). [`runner`] runs them in dependency order.

pub mod copy_out;
pub mod runner;
pub mod schema;

use std::collections::HashMap;
use std::fmt;
use std::path::{Component, Path, PathBuf};

use serde_saphyr::Location;

use crate::plan::{MountSpec, NetworkMode, RunPlan, Ulimit};
use crate::units::ByteSize;
use schema::{Environment, Gpu, Labels, Scalar, StringOrList, Tmpfs, UlimitEntry, Volumes, S};

/// Where the project directory appears in the container unless `working_dir` says otherwise.
pub const DEFAULT_WORKING_DIR: &str = "/workflow";
/// Where a `requirements` file is mounted in the container.
pub const REQUIREMENTS_PATH: &str = "/run/drun/requirements.txt";

/// A problem in a workflow file, at a place in it.
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

/// One artifact: a path relative to the working directory (normalised, never escaping it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArtifactSpec {
    pub path: String,
    pub mount: bool,
}

/// One validated workflow entry.
#[derive(Clone, Debug)]
pub struct Job {
    pub name: String,
    /// Image, arguments, environment, volumes, limits … (project, artifact and dependency mounts are added by the
    /// runner, which knows the artifacts directory).
    pub plan: RunPlan,
    /// Absolute path in the container the commands run in.
    pub working_dir: String,
    /// Where the project directory (the one holding the workflow file) appears, copy-on-write.
    pub project_mount: String,
    pub artifacts: Vec<ArtifactSpec>,
    pub deps: Vec<String>,
    /// Host path of the requirements file, if any.
    pub requirements: Option<PathBuf>,
    /// Notes for keys a local run accepts but ignores.
    pub notes: Vec<String>,
}

/// A loaded workflow file.
#[derive(Debug)]
pub struct WorkflowSet {
    pub file: PathBuf,
    /// The directory holding the file: the project.
    pub dir: PathBuf,
    pub jobs: Vec<Job>,
}

impl WorkflowSet {
    pub fn job(&self, name: &str) -> Option<&Job> {
        self.jobs.iter().find(|j| j.name == name)
    }

    /// The jobs to run for `names` (all when empty) with their dependencies, dependencies first, otherwise in
    /// file order.
    pub fn order(&self, names: &[String]) -> Result<Vec<&Job>, String> {
        let mut wanted = vec![false; self.jobs.len()];
        let index = |n: &str| self.jobs.iter().position(|j| j.name == n);
        let mut stack: Vec<usize> = Vec::new();
        if names.is_empty() {
            stack.extend(0..self.jobs.len());
        }
        for n in names {
            match index(n) {
                Some(i) => stack.push(i),
                None => {
                    let known: Vec<&str> = self.jobs.iter().map(|j| j.name.as_str()).collect();
                    return Err(format!(
                        "{}: no workflow named {n:?}{} (workflows: {})",
                        self.file.display(),
                        did_you_mean(n, &known),
                        known.join(", ")
                    ));
                }
            }
        }
        while let Some(i) = stack.pop() {
            if !std::mem::replace(&mut wanted[i], true) {
                stack.extend(self.jobs[i].deps.iter().filter_map(|d| index(d)));
            }
        }
        // Kahn's algorithm, always taking the earliest ready job in file order (deps are acyclic: checked at load).
        let mut done = vec![false; self.jobs.len()];
        let mut out = Vec::new();
        while out.len() < wanted.iter().filter(|w| **w).count() {
            let next = (0..self.jobs.len())
                .find(|&i| wanted[i] && !done[i] && self.jobs[i].deps.iter().all(|d| index(d).is_some_and(|j| done[j])))
                .expect("dependencies are acyclic");
            done[next] = true;
            out.push(&self.jobs[next]);
        }
        Ok(out)
    }
}

/// Reads and validates `path`; `${VAR}` references take values from `lookup` (the host environment).
pub fn load(path: &Path, lookup: &dyn Fn(&str) -> Option<String>) -> Result<WorkflowSet, WorkflowError> {
    let plain = |message: String| WorkflowError {
        file: path.to_path_buf(),
        line: 0,
        column: 0,
        message,
        snippet: None,
    };
    // Workflow files are hostile input too: a regular file of at most 16 MiB (a FIFO or /dev/zero named as one
    // would hang drun or fill its memory).
    let text = crate::safe_fs::read_user_file(path, 16 << 20)
        .and_then(|b| String::from_utf8(b).map_err(|_| std::io::Error::other("it is not UTF-8 text")))
        .map_err(|e| plain(format!("cannot read the workflow file: {e}")))?;
    let abs = std::path::absolute(path).map_err(|e| plain(e.to_string()))?;
    let dir = abs
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("/"));
    let cx = Cx {
        file: path,
        text: &text,
        dir: &dir,
    };
    let file: schema::WorkflowFile = serde_saphyr::from_str(&text).map_err(|e| cx.yaml_error(&e))?;
    if file.workflows.is_empty() {
        return Err(plain(
            "the file defines no workflows (expected a `workflows:` list with at least one entry)".into(),
        ));
    }
    // Names: unique; deps: known, and no cycles.
    let mut seen: HashMap<&str, &S<String>> = HashMap::new();
    for w in &file.workflows {
        if w.name.value.trim().is_empty() {
            return Err(cx.at(&w.name.referenced, "a workflow name must not be empty".into()));
        }
        // The name names the job's artifact directory and log: never a path out of `artifacts/`.
        if w.name.value.contains('/') || w.name.value == "." || w.name.value == ".." || w.name.value.contains('\0') {
            return Err(cx.at(
                &w.name.referenced,
                format!(
                    "a workflow name must not contain `/` or be `.` or `..` (got {:?})",
                    w.name.value
                ),
            ));
        }
        if let Some(first) = seen.insert(&w.name.value, &w.name) {
            return Err(cx.at(
                &w.name.referenced,
                format!(
                    "duplicate workflow name {:?} (first defined at line {})",
                    w.name.value,
                    first.referenced.line()
                ),
            ));
        }
    }
    let names: Vec<&str> = file.workflows.iter().map(|w| w.name.value.as_str()).collect();
    for w in &file.workflows {
        for d in &w.deps {
            if !names.contains(&d.value.as_str()) {
                return Err(cx.at(
                    &d.referenced,
                    format!("unknown dependency {:?}{}", d.value, did_you_mean(&d.value, &names)),
                ));
            }
            if d.value == w.name.value {
                return Err(cx.at(&d.referenced, format!("workflow {:?} depends on itself", d.value)));
            }
        }
    }
    if let Some((cycle, loc)) = find_cycle(&file.workflows) {
        return Err(cx.at(&loc, format!("dependency cycle: {}", cycle.join(" -> "))));
    }
    let jobs = file
        .workflows
        .iter()
        .map(|w| cx.job(w, lookup))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(WorkflowSet {
        file: path.to_path_buf(),
        dir,
        jobs,
    })
}

fn find_cycle(ws: &[schema::Workflow]) -> Option<(Vec<String>, Location)> {
    let index = |n: &str| ws.iter().position(|w| w.name.value == n);
    // 0 = unvisited, 1 = on the current path, 2 = done.
    let mut state = vec![0u8; ws.len()];
    fn visit(
        i: usize,
        ws: &[schema::Workflow],
        index: &dyn Fn(&str) -> Option<usize>,
        state: &mut [u8],
        path: &mut Vec<usize>,
    ) -> Option<(Vec<String>, Location)> {
        state[i] = 1;
        path.push(i);
        for d in &ws[i].deps {
            let Some(j) = index(&d.value) else { continue };
            if state[j] == 1 {
                let start = path.iter().position(|&p| p == j).expect("on the path");
                let mut names: Vec<String> = path[start..].iter().map(|&p| ws[p].name.value.clone()).collect();
                names.push(ws[j].name.value.clone());
                return Some((names, d.referenced));
            }
            if state[j] == 0 {
                if let Some(c) = visit(j, ws, index, state, path) {
                    return Some(c);
                }
            }
        }
        path.pop();
        state[i] = 2;
        None
    }
    (0..ws.len()).find_map(|i| {
        if state[i] == 0 {
            visit(i, ws, &index, &mut state, &mut Vec::new())
        } else {
            None
        }
    })
}

/// " (did you mean `x`?)" when one candidate is close to `word`.
pub fn did_you_mean(word: &str, candidates: &[&str]) -> String {
    let best = candidates
        .iter()
        .map(|c| (edit_distance(word, c), *c))
        .filter(|(d, c)| *d <= (c.len().max(word.len()) / 3).max(1))
        .min_by_key(|(d, _)| *d);
    match best {
        Some((_, c)) => format!(" (did you mean `{c}`?)"),
        None => String::new(),
    }
}

/// Edit distance counting a swap of two neighbouring characters as one edit (the commonest typo).
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut v = (d[i - 1][j] + 1).min(d[i][j - 1] + 1).min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                v = v.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = v;
        }
    }
    d[a.len()][b.len()]
}

/// Expands `${VAR}` and `${VAR:-default}` (and `$$` → `$`) from `lookup`; Err names an unset variable.
pub fn interpolate(s: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(r) = after.strip_prefix('$') {
            out.push('$');
            rest = r;
        } else if let Some(body) = after.strip_prefix('{') {
            let end = body.find('}').ok_or_else(|| format!("unclosed `${{` in {s:?}"))?;
            let expr = &body[..end];
            let (name, default) = match expr.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (expr, None),
            };
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!("invalid variable reference `${{{expr}}}`"));
            }
            match (lookup(name).filter(|v| !(v.is_empty() && default.is_some())), default) {
                (Some(v), _) => out.push_str(&v),
                (None, Some(d)) => out.push_str(d),
                (None, None) => {
                    return Err(format!(
                        "environment variable {name} is not set on the host (use ${{{name}:-default}} for a default)"
                    ))
                }
            }
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// Normalises a relative path lexically; None if it is absolute or leaves its base with `..`.
fn contained(rel: &str) -> Option<String> {
    let mut parts: Vec<&str> = Vec::new();
    for c in Path::new(rel).components() {
        match c {
            Component::Normal(p) => parts.push(p.to_str()?),
            Component::CurDir => {}
            Component::ParentDir => {
                parts.pop()?;
            }
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(parts.join("/"))
}

struct Cx<'a> {
    file: &'a Path,
    text: &'a str,
    dir: &'a Path,
}

impl Cx<'_> {
    fn at(&self, loc: &Location, message: String) -> WorkflowError {
        let (line, column) = (loc.line(), loc.column());
        let snippet = (line > 0)
            .then(|| self.text.lines().nth(line as usize - 1))
            .flatten()
            .map(|l| {
                let pad: String = l
                    .chars()
                    .take(column.saturating_sub(1) as usize)
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

    fn yaml_error(&self, e: &serde_saphyr::Error) -> WorkflowError {
        let mut message = e.without_snippet().to_string();
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
        match e.location() {
            Some(loc) => self.at(&loc, message),
            None => WorkflowError {
                file: self.file.to_path_buf(),
                line: 0,
                column: 0,
                message,
                snippet: None,
            },
        }
    }

    fn size(&self, v: &S<Scalar>, key: &str) -> Result<ByteSize, WorkflowError> {
        v.value.0.parse::<ByteSize>().map_err(|_| {
            self.at(
                &v.referenced,
                format!(
                    "invalid {key} {:?}: expected a size such as \"16GB\", \"512MiB\" or a number of bytes",
                    v.value.0
                ),
            )
        })
    }

    fn job(&self, w: &schema::Workflow, lookup: &dyn Fn(&str) -> Option<String>) -> Result<Job, WorkflowError> {
        let name = w.name.value.clone();
        let mut notes = Vec::new();
        if let Some(p) = &w.provider {
            if p.value != "docker" {
                return Err(self.at(
                    &p.referenced,
                    format!(
                        "provider {:?} is not supported: drun runs workflows of the `docker` provider (provider: docker)",
                        p.value
                    ),
                ));
            }
        }
        if w.image.value.trim().is_empty() {
            return Err(self.at(&w.image.referenced, "image must not be empty".into()));
        }
        if let Some(v) = &w.version {
            notes.push(format!(
                "`version: {}` is ignored: the docker provider uses the image's own Python",
                v.value.0
            ));
        }

        // Working directory and where the project appears.
        let (working_dir, project_mount) = match &w.working_dir {
            None => (DEFAULT_WORKING_DIR.to_string(), DEFAULT_WORKING_DIR.to_string()),
            Some(wd) if wd.value.starts_with('/') => {
                let norm = format!("/{}", contained(wd.value.trim_start_matches('/')).unwrap_or_default());
                if norm == "/" {
                    return Err(self.at(
                        &wd.referenced,
                        "working_dir must not be `/`: the project directory would hide the image's file system".into(),
                    ));
                }
                (norm.clone(), norm)
            }
            // dstack's working_dir was relative to the repository: the same here, below /workflow.
            Some(wd) => match contained(&wd.value) {
                Some(rel) if !rel.is_empty() => {
                    (format!("{DEFAULT_WORKING_DIR}/{rel}"), DEFAULT_WORKING_DIR.to_string())
                }
                Some(_) => (DEFAULT_WORKING_DIR.to_string(), DEFAULT_WORKING_DIR.to_string()),
                None => {
                    return Err(self.at(
                        &wd.referenced,
                        format!("working_dir {:?} leaves the project directory", wd.value),
                    ))
                }
            },
        };

        // The script.
        if let (Some(_), Some(c)) = (&w.commands, &w.command) {
            return Err(self.at(
                &c.referenced,
                "`command` and `commands` are both set: use `commands` (a list of shell commands) or `command` (the image's Cmd replaced), not both".into(),
            ));
        }
        let requirements = match &w.requirements {
            None => None,
            Some(r) => {
                let p = self.dir.join(&r.value);
                if !p.is_file() {
                    return Err(self.at(
                        &r.referenced,
                        format!("requirements file {} does not exist", p.display()),
                    ));
                }
                Some(p)
            }
        };
        let mut script: Vec<String> = Vec::new();
        script.extend(w.before_run.iter().flatten().cloned());
        if requirements.is_some() {
            script.push(format!(
                "if command -v pip >/dev/null 2>&1; then pip install -r {REQUIREMENTS_PATH}; else pip3 install -r {REQUIREMENTS_PATH}; fi"
            ));
        }
        script.extend(w.commands.iter().flatten().cloned());
        let entrypoint = match &w.entrypoint {
            None => None,
            Some(e) => Some(match &e.value {
                StringOrList::List(l) => l.clone(),
                StringOrList::String(s) => shlex::split(s)
                    .ok_or_else(|| self.at(&e.referenced, format!("entrypoint {s:?} has unbalanced quotes")))?,
            }),
        };
        let has_script = w.commands.is_some() || w.before_run.is_some() || requirements.is_some();
        let (entrypoint, command) = if has_script {
            let text = format!("set -e\n{}\n", script.join("\n"));
            let ep = entrypoint.unwrap_or_else(|| vec!["/bin/sh".into(), "-c".into()]);
            (Some(ep), Some(vec![text]))
        } else {
            let command = w.command.as_ref().map(|c| match &c.value {
                StringOrList::List(l) => Ok(l.clone()),
                StringOrList::String(s) => shlex::split(s)
                    .ok_or_else(|| self.at(&c.referenced, format!("command {s:?} has unbalanced quotes"))),
            });
            (entrypoint, command.transpose()?)
        };

        // Environment.
        let mut env = Vec::new();
        let put = |k: String, raw: &str, loc: &Location| -> Result<(String, String), WorkflowError> {
            if k.is_empty() || k.contains('=') {
                return Err(self.at(loc, format!("invalid environment variable name {k:?}")));
            }
            let v = interpolate(raw, lookup).map_err(|m| self.at(loc, m))?;
            Ok((k, v))
        };
        match &w.environment {
            None => {}
            Some(Environment::Map(m)) => {
                for (k, v) in m {
                    env.push(put(k.clone(), &v.value.0, &v.referenced)?);
                }
            }
            Some(Environment::List(l)) => {
                for item in l {
                    match item.value.split_once('=') {
                        Some((k, v)) => env.push(put(k.to_string(), v, &item.referenced)?),
                        // `- KEY` passes the host's value, as `docker run -e KEY` does.
                        None => {
                            if let Some(v) = lookup(&item.value) {
                                env.push((item.value.clone(), v));
                            }
                        }
                    }
                }
            }
        }

        // Resources.
        let res = w.resources.as_ref();
        let cpus = match res.and_then(|r| r.cpu.as_ref()) {
            None => None,
            Some(c) => match c.value.0.parse::<f64>() {
                Ok(n) if n > 0.0 && n.is_finite() => Some(n),
                _ => {
                    return Err(self.at(
                        &c.referenced,
                        format!(
                            "invalid cpu {:?}: expected a positive number of CPUs, e.g. 2 or 0.5",
                            c.value.0
                        ),
                    ))
                }
            },
        };
        let memory = match (res.and_then(|r| r.memory.as_ref()), &w.mem_limit) {
            (Some(_), Some(m)) => {
                return Err(self.at(
                    &m.referenced,
                    "mem_limit and resources.memory are both set: use one".into(),
                ))
            }
            (Some(m), None) => Some(self.size(m, "memory")?),
            (None, Some(m)) => Some(self.size(m, "mem_limit")?),
            (None, None) => None,
        };
        let shm_size = match (res.and_then(|r| r.shm_size.as_ref()), &w.shm_size) {
            (Some(_), Some(s)) => {
                return Err(self.at(
                    &s.referenced,
                    "shm_size and resources.shm_size are both set: use one".into(),
                ))
            }
            (Some(s), None) | (None, Some(s)) => Some(self.size(s, "shm_size")?),
            (None, None) => None,
        };
        let gpus = match res.and_then(|r| r.gpu.as_ref()) {
            None => None,
            Some(g) => {
                use crate::gpu::select::{GpuRequest, Selector};
                Some(match &g.value {
                    Gpu::Count(n) => GpuRequest {
                        selector: Selector::Count(*n),
                        name: None,
                        memory_mib: None,
                    },
                    Gpu::Spec(s) => GpuRequest {
                        selector: Selector::Count(s.count.unwrap_or(1)),
                        name: s.name.clone(),
                        memory_mib: match &s.memory {
                            None => None,
                            Some(m) => Some(self.size(m, "gpu memory")?.0 >> 20),
                        },
                    },
                })
            }
        };
        for (key, v) in [
            ("interruptible", res.and_then(|r| r.interruptible.as_ref())),
            ("local", res.and_then(|r| r.local.as_ref())),
        ] {
            if let Some(v) = v {
                notes.push(format!(
                    "`resources.{key}: {}` is ignored: it is a cloud setting and drun always runs locally",
                    v.value
                ));
            }
        }

        // Docker-run options.
        let mut mounts = Vec::new();
        let bind = |src: &str, dst: &str, mode: Option<&str>, loc: &Location| -> Result<MountSpec, WorkflowError> {
            if !dst.starts_with('/') {
                return Err(self.at(loc, format!("volume destination {dst:?} must be an absolute path")));
            }
            let read_only = match mode {
                None | Some("rw") => false,
                Some("ro") => true,
                Some(m) => return Err(self.at(loc, format!("invalid volume mode {m:?}: expected ro or rw"))),
            };
            let source = std::fs::canonicalize(self.dir.join(src))
                .map_err(|e| self.at(loc, format!("volume source {src} (relative to the workflow file): {e}")))?;
            Ok(MountSpec::Bind {
                source,
                destination: dst.to_string(),
                read_only,
            })
        };
        match &w.volumes {
            None => {}
            Some(Volumes::List(l)) => {
                for v in l {
                    let parts: Vec<&str> = v.value.split(':').collect();
                    let m = match parts.as_slice() {
                        [s, d] => bind(s, d, None, &v.referenced)?,
                        [s, d, m] => bind(s, d, Some(m), &v.referenced)?,
                        _ => {
                            return Err(self.at(
                                &v.referenced,
                                format!("invalid volume {:?}: expected SRC:DST[:ro|rw]", v.value),
                            ))
                        }
                    };
                    mounts.push(m);
                }
            }
            Some(Volumes::Map(m)) => {
                for (src, b) in m {
                    mounts.push(bind(src, &b.value.bind, b.value.mode.as_deref(), &b.referenced)?);
                }
            }
        }
        match &w.tmpfs {
            None => {}
            Some(Tmpfs::List(l)) => {
                for t in l {
                    let (dst, opts) = t.value.split_once(':').unwrap_or((&t.value, ""));
                    if !dst.starts_with('/') {
                        return Err(self.at(&t.referenced, format!("tmpfs path {dst:?} must be absolute")));
                    }
                    mounts.push(MountSpec::Tmpfs {
                        destination: dst.to_string(),
                        options: opts.split(',').filter(|o| !o.is_empty()).map(String::from).collect(),
                    });
                }
            }
            Some(Tmpfs::Map(m)) => {
                for (dst, opts) in m {
                    mounts.push(MountSpec::Tmpfs {
                        destination: dst.clone(),
                        options: opts.0.split(',').filter(|o| !o.is_empty()).map(String::from).collect(),
                    });
                }
            }
        }
        let mut ulimits = Vec::new();
        for u in &w.ulimits {
            let parsed = match &u.value {
                UlimitEntry::Text(t) => crate::commands::run::parse_ulimit(t).map_err(|e| format!("{e:#}")),
                UlimitEntry::Map(m) => {
                    let n = |v: i64| if v < 0 { u64::MAX } else { v as u64 };
                    let (soft, hard) = (n(m.soft), n(m.hard.unwrap_or(m.soft)));
                    if soft > hard {
                        Err(format!("ulimit {}: soft limit above hard limit", m.name))
                    } else {
                        Ok(Ulimit {
                            name: m.name.clone(),
                            soft,
                            hard,
                        })
                    }
                }
            };
            ulimits.push(parsed.map_err(|m| self.at(&u.referenced, m))?);
        }
        let network = match &w.network_mode {
            None => NetworkMode::Host,
            Some(n) => match n.value.as_str() {
                "host" => NetworkMode::Host,
                "none" => NetworkMode::None,
                other => {
                    return Err(self.at(
                        &n.referenced,
                        format!("unsupported network_mode {other:?}: drun supports host (the default) and none"),
                    ))
                }
            },
        };
        let labels = match &w.labels {
            None => vec![],
            Some(Labels::Map(m)) => m.iter().map(|(k, v)| (k.clone(), v.0.clone())).collect(),
            Some(Labels::List(l)) => l
                .iter()
                .map(|kv| {
                    let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                    (k.to_string(), v.to_string())
                })
                .collect(),
        };

        // Artifacts: relative to the working directory, never leaving it.
        let mut artifacts: Vec<ArtifactSpec> = Vec::new();
        for a in &w.artifacts {
            let path = match contained(&a.value.path) {
                Some(p) if !p.is_empty() => p,
                _ => {
                    return Err(self.at(
                        &a.referenced,
                        format!(
                            "artifact path {:?} must be a relative path inside the working directory {working_dir}",
                            a.value.path
                        ),
                    ))
                }
            };
            let nested = |x: &str, y: &str| x == y || x.strip_prefix(y).is_some_and(|r| r.starts_with('/'));
            if let Some(o) = artifacts
                .iter()
                .find(|o| nested(&o.path, &path) || nested(&path, &o.path))
            {
                return Err(self.at(
                    &a.referenced,
                    format!(
                        "artifact {path:?} overlaps artifact {:?}: list each directory once",
                        o.path
                    ),
                ));
            }
            artifacts.push(ArtifactSpec {
                path,
                mount: a.value.mount,
            });
        }

        let plan = RunPlan {
            image: w.image.value.trim().to_string(),
            entrypoint,
            command,
            env,
            mounts,
            workdir: Some(working_dir.clone()),
            user: w.user.as_ref().map(|u| u.value.0.clone()),
            memory,
            cpus,
            shm_size,
            network,
            hostname: w.hostname.as_ref().map(|h| h.value.clone()),
            read_only: w.read_only,
            cap_add: w.cap_add.iter().map(|c| c.value.clone()).collect(),
            cap_drop: w.cap_drop.iter().map(|c| c.value.clone()).collect(),
            privileged: w.privileged,
            no_new_privileges: true,
            ulimits,
            labels,
            gpus,
            ..Default::default()
        };
        Ok(Job {
            name,
            plan,
            working_dir,
            project_mount,
            artifacts,
            deps: w.deps.iter().map(|d| d.value.clone()).collect(),
            requirements,
            notes,
        })
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // fixtures in the tests' own temporary directories
mod tests {
    use super::*;

    fn env(k: &str) -> Option<String> {
        match k {
            "HOME_DIR" => Some("/home/me".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn interpolation() {
        assert_eq!(interpolate("${HOME_DIR}/x", &env).unwrap(), "/home/me/x");
        assert_eq!(interpolate("${NOPE:-dflt}", &env).unwrap(), "dflt");
        assert_eq!(interpolate("${EMPTY:-dflt}", &env).unwrap(), "dflt");
        assert_eq!(interpolate("$$HOME and $PATH", &env).unwrap(), "$HOME and $PATH");
        assert!(interpolate("${NOPE}", &env).unwrap_err().contains("NOPE is not set"));
        assert!(interpolate("${OPEN", &env).is_err());
    }

    #[test]
    fn suggestions() {
        assert_eq!(
            did_you_mean("comands", &["command", "commands", "image"]),
            " (did you mean `commands`?)"
        );
        assert_eq!(
            did_you_mean("artefacts", &["artifacts", "image"]),
            " (did you mean `artifacts`?)"
        );
        assert_eq!(did_you_mean("zzz", &["artifacts", "image"]), "");
        assert_eq!(did_you_mean("trian", &["a", "train"]), " (did you mean `train`?)");
    }

    #[test]
    fn containment() {
        assert_eq!(contained("./output").as_deref(), Some("output"));
        assert_eq!(contained("a/../b/").as_deref(), Some("b"));
        assert_eq!(contained("../x"), None);
        assert_eq!(contained("/etc"), None);
        assert_eq!(contained("a/../../x"), None);
    }
}
