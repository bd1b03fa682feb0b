//! Dependency order: which jobs a run needs (the named ones and everything they depend on) and in what order, and
//! the cycle check [`super::load`] makes before any job exists.

use std::path::PathBuf;

use serde_saphyr::Location;

use super::schema;
use super::suggest::did_you_mean;
use super::{WorkflowJob, WorkflowSet};

/// A workflow name on the command line that the file does not define.
#[derive(Debug, thiserror::Error)]
#[error("{}: no workflow named {name:?}{hint} (workflows: {})", file.display(), known.join(", "))]
pub struct UnknownWorkflow {
    pub file: PathBuf,
    pub name: String,
    /// " (did you mean `x`?)" or nothing.
    hint: String,
    known: Vec<String>,
}

impl WorkflowSet {
    /// The jobs to run for `names` (all when empty) with their dependencies, dependencies first, otherwise in
    /// file order.
    pub fn order(&self, names: &[String]) -> Result<Vec<&WorkflowJob>, UnknownWorkflow> {
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
                    return Err(UnknownWorkflow {
                        file: self.file.clone(),
                        name: n.clone(),
                        hint: did_you_mean(n, &known),
                        known: known.iter().map(|k| k.to_string()).collect(),
                    });
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

/// The first dependency cycle among the entries (names, first one repeated at the end) and where it closes.
pub(super) fn find_cycle(ws: &[schema::Workflow]) -> Option<(Vec<String>, Location)> {
    #[derive(Clone, Copy, PartialEq)]
    enum Visit {
        NotYet,
        OnPath,
        Done,
    }
    fn visit(
        i: usize,
        ws: &[schema::Workflow],
        index: &dyn Fn(&str) -> Option<usize>,
        state: &mut [Visit],
        path: &mut Vec<usize>,
    ) -> Option<(Vec<String>, Location)> {
        state[i] = Visit::OnPath;
        path.push(i);
        for d in &ws[i].deps {
            let Some(j) = index(&d.value) else { continue };
            if state[j] == Visit::OnPath {
                let start = path.iter().position(|&p| p == j).expect("on the path");
                let mut names: Vec<String> = path[start..].iter().map(|&p| ws[p].name.value.clone()).collect();
                names.push(ws[j].name.value.clone());
                return Some((names, d.referenced));
            }
            if state[j] == Visit::NotYet {
                if let Some(c) = visit(j, ws, index, state, path) {
                    return Some(c);
                }
            }
        }
        path.pop();
        state[i] = Visit::Done;
        None
    }
    let index = |n: &str| ws.iter().position(|w| w.name.value == n);
    let mut state = vec![Visit::NotYet; ws.len()];
    (0..ws.len()).find_map(|i| {
        if state[i] == Visit::NotYet {
            visit(i, ws, &index, &mut state, &mut Vec::new())
        } else {
            None
        }
    })
}
