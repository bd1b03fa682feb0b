//! Property tests of the workflow loader: the examples, mutated at random (characters deleted, inserted or
//! replaced, lines duplicated or swapped), load into a valid set or fail with an error that starts with the file's
//! path (`FILE:LINE:COL: …` or `FILE: …`), never a panic.
#![allow(
    clippy::disallowed_methods,
    reason = "fixtures written and read in the test's own temporary directory"
)]

use proptest::prelude::*;

use super::{load, RunWideOptions};

const EXAMPLES: &[&str] = &[
    include_str!("../../examples/hello/workflow.yaml"),
    include_str!("../../examples/pipeline/workflow.yaml"),
    include_str!("../../examples/runflow/workflow.yaml"),
];

#[derive(Debug, Clone)]
enum Mutation {
    Delete { at: usize, len: usize },
    Insert { at: usize, text: String },
    Replace { at: usize, with: char },
    DuplicateLine(usize),
    SwapLines(usize, usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 1usize..8).prop_map(|(at, len)| Mutation::Delete { at, len }),
        (any::<usize>(), "[-:{}\\[\\]\"'#&*!|>%@`$ \\n\\ta-z0-9]{1,6}")
            .prop_map(|(at, text)| Mutation::Insert { at, text }),
        (
            any::<usize>(),
            prop::sample::select(vec![':', '-', ' ', '\n', '"', '{', '[', '$', '\t', 'x'])
        )
            .prop_map(|(at, with)| Mutation::Replace { at, with }),
        any::<usize>().prop_map(Mutation::DuplicateLine),
        (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Mutation::SwapLines(a, b)),
    ]
}

fn apply(text: &str, m: &Mutation) -> String {
    let chars: Vec<char> = text.chars().collect();
    let n = chars.len().max(1);
    let mut lines: Vec<&str> = text.lines().collect();
    match m {
        Mutation::Delete { at, len } => {
            let at = at % n;
            chars[..at]
                .iter()
                .chain(chars[(at + len).min(chars.len())..].iter())
                .collect()
        }
        Mutation::Insert { at, text } => {
            let at = at % n;
            chars[..at].iter().collect::<String>() + text + &chars[at..].iter().collect::<String>()
        }
        Mutation::Replace { at, with } => {
            let mut c = chars.clone();
            if !c.is_empty() {
                let i = at % c.len();
                c[i] = *with;
            }
            c.into_iter().collect()
        }
        Mutation::DuplicateLine(i) if !lines.is_empty() => {
            let i = i % lines.len();
            lines.insert(i, lines[i]);
            lines.join("\n") + "\n"
        }
        Mutation::SwapLines(a, b) if !lines.is_empty() => {
            let (a, b) = (a % lines.len(), b % lines.len());
            lines.swap(a, b);
            lines.join("\n") + "\n"
        }
        _ => text.to_string(),
    }
}

proptest! {
    #![proptest_config(crate::props::config())]

    #[test]
    fn mutated_examples_load_or_fail_at_a_place(
        example in 0..EXAMPLES.len(),
        mutations in prop::collection::vec(mutation(), 1..4),
    ) {
        let text = mutations.iter().fold(EXAMPLES[example].to_string(), |t, m| apply(&t, m));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("workflow.yaml");
        std::fs::write(&path, &text).unwrap();
        let loaded = std::panic::catch_unwind(|| load(&path, &|_| None, &RunWideOptions::default()));
        prop_assert!(loaded.is_ok(), "the loader panicked on:\n{}", text);
        if let Err(e) = loaded.unwrap() {
            let message = e.to_string();
            prop_assert!(
                message.starts_with(&format!("{}:", path.display())),
                "an error without the file's place: {}\nfor:\n{}",
                message,
                text
            );
        }
    }
}
