//! Property tests of the unpacker: random tar streams of files, directories, symlinks, hardlinks and whiteouts,
//! with names that climb (`..`), start at `/`, or pass through symlinks that point out of the layer. Whatever the
//! stream, the unpacker never writes outside its root and never panics; it either unpacks or says why, naming an
//! entry of the stream.
#![allow(
    clippy::disallowed_methods,
    reason = "fixtures written and read in the test's own temporary directory"
)]

use std::io::Cursor;
use std::path::Path;

use proptest::prelude::*;

use super::{unpack_layer, UnpackOptions};

#[derive(Debug, Clone)]
enum Kind {
    File(Vec<u8>),
    Dir,
    Symlink(String),
    Hardlink(String),
}

#[derive(Debug, Clone)]
struct Entry {
    path: String,
    kind: Kind,
}

fn component() -> impl Strategy<Value = String> {
    prop::sample::select(vec!["a", "b", "c", "..", ".", ".wh.a", ".wh..wh..opq", "out", "x y"]).prop_map(String::from)
}

fn path() -> impl Strategy<Value = String> {
    (any::<bool>(), prop::collection::vec(component(), 1..4)).prop_map(|(abs, parts)| {
        let p = parts.join("/");
        if abs {
            format!("/{p}")
        } else {
            p
        }
    })
}

fn target() -> impl Strategy<Value = String> {
    prop_oneof![
        path(),
        // `@OUT`: the absolute path of the directory beside the layer's root (see `tar_of`).
        prop::sample::select(vec!["/", "..", "../..", "../../out", "@OUT", "@OUT/sentinel"]).prop_map(String::from),
    ]
}

fn entry() -> impl Strategy<Value = Entry> {
    (
        path(),
        prop_oneof![
            prop::collection::vec(any::<u8>(), 0..64).prop_map(Kind::File),
            Just(Kind::Dir),
            target().prop_map(Kind::Symlink),
            target().prop_map(Kind::Hardlink),
        ],
    )
        .prop_map(|(path, kind)| Entry { path, kind })
}

/// A tar stream with the names exactly as given (the tar crate's own path setters refuse `..`); link targets
/// `@OUT…` point at `outside` by its absolute path.
fn tar_of(entries: &[Entry], outside: &Path) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        let name = e.path.as_bytes();
        let gnu = h.as_gnu_mut().unwrap();
        gnu.name[..name.len().min(100)].copy_from_slice(&name[..name.len().min(100)]);
        let data: &[u8] = match &e.kind {
            Kind::File(d) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(0o644);
                d
            }
            Kind::Dir => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                &[]
            }
            Kind::Symlink(t) | Kind::Hardlink(t) => {
                h.set_entry_type(if matches!(e.kind, Kind::Symlink(_)) {
                    tar::EntryType::Symlink
                } else {
                    tar::EntryType::Link
                });
                h.set_mode(0o777);
                let t = t.replace("@OUT", &outside.display().to_string());
                let t = t.as_bytes();
                h.as_gnu_mut().unwrap().linkname[..t.len().min(100)].copy_from_slice(&t[..t.len().min(100)]);
                &[]
            }
        };
        h.set_size(data.len() as u64);
        h.set_cksum();
        b.append(&h, data).unwrap();
    }
    b.into_inner().unwrap()
}

/// Every path below `dir`, sorted, with each regular file's content.
fn listing(dir: &Path) -> Vec<(String, Option<Vec<u8>>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let m = std::fs::symlink_metadata(e.path()).unwrap();
            let content = m.is_file().then(|| std::fs::read(e.path()).unwrap());
            out.push((e.path().display().to_string(), content));
            if m.is_dir() {
                stack.push(e.path());
            }
        }
    }
    out.sort();
    out
}

proptest! {
    #![proptest_config(crate::props::config())]

    #[test]
    fn hostile_streams_never_escape_the_layer(entries in prop::collection::vec(entry(), 1..12)) {
        let base = tempfile::tempdir().unwrap();
        // Beside the layer's root, where a climbing name or a symlink would land.
        let outside = base.path().join("out");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("sentinel"), b"untouched").unwrap();
        let root = base.path().join("root");
        std::fs::create_dir(&root).unwrap();
        let before = listing(&outside);
        let stream = tar_of(&entries, &outside);
        let result = std::panic::catch_unwind(|| unpack_layer(Cursor::new(stream), &root, UnpackOptions::for_process()));
        prop_assert!(result.is_ok(), "the unpacker panicked on {:?}", entries);
        if let Err(e) = result.unwrap() {
            let message = e.to_string();
            let names_one = entries.iter().any(|en| {
                let p = en.path.trim_start_matches('/');
                !p.is_empty() && message.contains(p)
            });
            prop_assert!(names_one, "an error that names no entry: {} for {:?}", message, entries);
        }
        prop_assert_eq!(listing(&outside), before, "written outside the layer by {:?}", entries);
        let names: Vec<String> = std::fs::read_dir(base.path()).unwrap().flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned()).collect();
        prop_assert_eq!(names.len(), 2, "{:?} for {:?}", names, entries);
    }
}
