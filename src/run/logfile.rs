//! The log of a detached container (`drun run -d`): its stdout and stderr, in the order written, in
//! `container.log` in its run directory, rotated by size (`--log-opt max-size=…,max-file=…`) so that it never
//! holds more than `max-size × max-file` bytes; and the reading side of `drun logs` (`--tail`, following a file
//! that rotates).

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::units::ByteSize;

/// The current log file; rotated ones are `container.log.1` (the newest) … `container.log.<max-file − 1>`.
pub const LOG_FILE: &str = "container.log";
/// What the monitor itself reports once the container has started (drun's own warnings and errors).
pub const MONITOR_LOG: &str = "monitor.log";
/// Default `max-size`: 10 MiB.
pub const DEFAULT_MAX_SIZE: u64 = 10 << 20;
/// Default `max-file`: the current file and one rotated file, at most 20 MiB per container.
pub const DEFAULT_MAX_FILES: u32 = 2;
/// More rotated files than anyone needs; also bounds what `drun logs` looks for.
const MOST_FILES: u32 = 100;

/// How large a detached container's log may grow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LogOptions {
    /// Bytes per file.
    pub max_size: u64,
    /// Files, the current one included.
    pub max_files: u32,
}

impl Default for LogOptions {
    fn default() -> LogOptions {
        LogOptions {
            max_size: DEFAULT_MAX_SIZE,
            max_files: DEFAULT_MAX_FILES,
        }
    }
}

/// A `--log-opt` setting that is not one of ours.
#[derive(Debug, thiserror::Error)]
#[error("invalid --log-opt {0:?}: expected max-size=SIZE (e.g. 10m, more than 0) or max-file=N (1 to 100)")]
pub struct InvalidLogOpt(pub String);

impl LogOptions {
    /// Docker's `--log-opt` settings for its `json-file` and `local` drivers that apply here: `max-size=SIZE`
    /// and `max-file=N`, each given alone or comma-separated.
    pub fn parse(items: &[String]) -> Result<LogOptions, InvalidLogOpt> {
        let mut opts = LogOptions::default();
        for item in items.iter().flat_map(|i| i.split(',')) {
            let bad = || InvalidLogOpt(item.to_string());
            match item.split_once('=') {
                Some(("max-size", v)) => {
                    opts.max_size = crate::plan::parse::size(v).map_err(|_| bad())?.0;
                    if opts.max_size == 0 {
                        return Err(bad());
                    }
                }
                Some(("max-file", v)) => {
                    opts.max_files = v
                        .parse()
                        .ok()
                        .filter(|n| (1..=MOST_FILES).contains(n))
                        .ok_or_else(bad)?;
                }
                _ => return Err(bad()),
            }
        }
        Ok(opts)
    }
}

impl std::fmt::Display for LogOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} × {} files", ByteSize(self.max_size), self.max_files)
    }
}

fn rotated(dir: &Path, n: u32) -> PathBuf {
    dir.join(format!("{LOG_FILE}.{n}"))
}

/// Whether `name` is one of a run directory's log files.
pub fn is_log_file(name: &str) -> bool {
    name == LOG_FILE
        || name
            .strip_prefix(LOG_FILE)
            .and_then(|n| n.strip_prefix('.'))
            .is_some_and(|n| n.parse::<u32>().is_ok())
}

/// The log being written: the run directory is private to its owner (see `state::ensure_private`), so the files
/// are created there with plain no-follow opens.
pub struct RotatingLog {
    dir: PathBuf,
    file: File,
    size: u64,
    opts: LogOptions,
}

impl RotatingLog {
    /// Starts `container.log` in the run directory `dir`.
    pub fn create(dir: &Path, opts: LogOptions) -> io::Result<RotatingLog> {
        Ok(RotatingLog {
            dir: dir.to_path_buf(),
            file: crate::sys::safe_fs::create_new(&dir.join(LOG_FILE), 0o600)?,
            size: 0,
            opts,
        })
    }

    /// Appends `buf`, rotating whenever the current file is full: no file ever exceeds `max_size`.
    pub fn append(&mut self, mut buf: &[u8]) -> io::Result<()> {
        while !buf.is_empty() {
            if self.size >= self.opts.max_size {
                self.rotate()?;
            }
            let room = usize::try_from(self.opts.max_size - self.size).unwrap_or(usize::MAX);
            let (now, later) = buf.split_at(room.min(buf.len()));
            self.file.write_all(now)?;
            self.size += now.len() as u64;
            buf = later;
        }
        Ok(())
    }

    /// `container.log` becomes `container.log.1`, each older one moves up by one, the oldest beyond `max_files`
    /// goes. A reader keeps reading the file it has open (see [`Follower`]).
    fn rotate(&mut self) -> io::Result<()> {
        let keep = self.opts.max_files - 1;
        let current = self.dir.join(LOG_FILE);
        if keep == 0 {
            std::fs::remove_file(&current)?;
        } else {
            for n in (1..keep).rev() {
                match std::fs::rename(rotated(&self.dir, n), rotated(&self.dir, n + 1)) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
            }
            std::fs::rename(&current, rotated(&self.dir, 1))?;
        }
        self.file = crate::sys::safe_fs::create_new(&current, 0o600)?;
        self.size = 0;
        Ok(())
    }
}

/// The log files of run directory `dir` that exist, oldest first.
pub fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = (1..MOST_FILES)
        .rev()
        .map(|n| rotated(dir, n))
        .filter(|p| p.exists())
        .collect();
    let current = dir.join(LOG_FILE);
    if current.exists() {
        out.push(current);
    }
    out
}

fn open(path: &Path) -> io::Result<File> {
    crate::sys::safe_fs::open_regular(path, false)
}

/// Where the last `lines` lines of the log start: the index into `files` and the offset in that file. A final
/// line without a newline counts as a line.
pub fn tail_start(files: &[PathBuf], lines: u64) -> io::Result<(usize, u64)> {
    if lines == 0 {
        let last = files.len().saturating_sub(1);
        let len = files
            .get(last)
            .map_or(Ok(0), |p| Ok::<_, io::Error>(open(p)?.metadata()?.len()))?;
        return Ok((last, len));
    }
    let mut wanted = lines;
    // The newline that ends the whole log (its very last byte) ends the last line; it starts none.
    let mut last_byte = true;
    for (i, path) in files.iter().enumerate().rev() {
        let mut f = open(path)?;
        let mut end = f.metadata()?.len();
        let mut buf = vec![0u8; 64 << 10];
        while end > 0 {
            let start = end.saturating_sub(buf.len() as u64);
            let chunk = &mut buf[..usize::try_from(end - start).expect("at most 64 KiB")];
            f.seek(SeekFrom::Start(start))?;
            f.read_exact(chunk)?;
            for (k, b) in chunk.iter().enumerate().rev() {
                if *b == b'\n' && !last_byte {
                    wanted -= 1;
                    if wanted == 0 {
                        return Ok((i, start + k as u64 + 1));
                    }
                }
                last_byte = false;
            }
            end = start;
        }
    }
    Ok((0, 0))
}

/// Copies the log from (`index`, `offset`) of `files` to `out`.
pub fn copy_from(files: &[PathBuf], index: usize, offset: u64, out: &mut impl Write) -> io::Result<()> {
    for (i, path) in files.iter().enumerate().skip(index) {
        let mut f = open(path)?;
        if i == index {
            f.seek(SeekFrom::Start(offset))?;
        }
        io::copy(&mut f, out)?;
    }
    Ok(())
}

/// Follows `container.log` through rotations (`drun logs -f`): reads what was appended to the file it has
/// open and, when the name now belongs to a new file, finishes the old one and moves on.
pub struct Follower {
    dir: PathBuf,
    file: Option<File>,
}

impl Follower {
    /// Follows the current log from its end position `offset` (what was already shown).
    pub fn new(dir: &Path, offset: u64) -> io::Result<Follower> {
        let mut file = open(&dir.join(LOG_FILE)).ok();
        if let Some(f) = file.as_mut() {
            f.seek(SeekFrom::Start(offset))?;
        }
        Ok(Follower {
            dir: dir.to_path_buf(),
            file,
        })
    }

    /// Copies what is new to `out`; true if anything was.
    pub fn pump(&mut self, out: &mut impl Write) -> io::Result<bool> {
        let mut any = false;
        loop {
            if let Some(f) = self.file.as_mut() {
                any |= io::copy(f, out)? > 0;
            }
            // Rotated since it was opened: the name is another file now (or none, for a moment).
            let now = open(&self.dir.join(LOG_FILE)).ok();
            let same = match (&self.file, &now) {
                (Some(a), Some(b)) => same_file(a, b)?,
                (None, None) => true,
                _ => false,
            };
            if same || now.is_none() {
                return Ok(any);
            }
            self.file = now;
        }
    }
}

fn same_file(a: &File, b: &File) -> io::Result<bool> {
    let (a, b) = (a.metadata()?, b.metadata()?);
    Ok(a.dev() == b.dev() && a.ino() == b.ino())
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // the tests' own temporary directories
mod tests {
    use super::*;

    fn log_text(dir: &Path) -> String {
        let mut out = Vec::new();
        copy_from(&files(dir), 0, 0, &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn rotation_keeps_each_file_and_the_whole_within_bounds() {
        let t = tempfile::tempdir().unwrap();
        let opts = LogOptions {
            max_size: 10,
            max_files: 3,
        };
        let mut log = RotatingLog::create(t.path(), opts).unwrap();
        for i in 0..20 {
            log.append(format!("line {i:02}\n").as_bytes()).unwrap();
        }
        let names = files(t.path());
        assert_eq!(names.len(), 3, "{names:?}");
        for f in &names {
            assert!(std::fs::metadata(f).unwrap().len() <= 10);
        }
        // The newest 30 bytes survive, in order.
        let all: String = (0..20).map(|i| format!("line {i:02}\n")).collect();
        assert_eq!(log_text(t.path()), &all[all.len() - 30..]);
    }

    #[test]
    fn a_single_file_is_replaced_when_full() {
        let t = tempfile::tempdir().unwrap();
        let mut log = RotatingLog::create(
            t.path(),
            LogOptions {
                max_size: 4,
                max_files: 1,
            },
        )
        .unwrap();
        log.append(b"abcdefghij").unwrap();
        assert_eq!(log_text(t.path()), "ij");
    }

    #[test]
    fn tail_counts_lines_across_files() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("container.log.1"), "a\nb\nc").unwrap();
        std::fs::write(t.path().join("container.log"), "d\ne\n").unwrap();
        let fs = files(t.path());
        let tail = |n| {
            let (i, off) = tail_start(&fs, n).unwrap();
            let mut out = Vec::new();
            copy_from(&fs, i, off, &mut out).unwrap();
            String::from_utf8(out).unwrap()
        };
        // The files are one stream: "a\nb\ncd\ne\n".
        assert_eq!(tail(0), "");
        assert_eq!(tail(1), "e\n");
        assert_eq!(tail(2), "cd\ne\n");
        assert_eq!(tail(3), "b\ncd\ne\n");
        assert_eq!(tail(100), "a\nb\ncd\ne\n");
        std::fs::write(t.path().join("container.log"), "d\ne").unwrap();
        let (i, off) = tail_start(&fs, 1).unwrap();
        assert_eq!((i, off), (1, 2), "a last line without a newline");
    }

    #[test]
    fn log_options_parse_as_dockers() {
        let o = LogOptions::parse(&["max-size=1k".into(), "max-file=3".into()]).unwrap();
        assert_eq!((o.max_size, o.max_files), (1024, 3));
        let o = LogOptions::parse(&["max-size=2m,max-file=1".into()]).unwrap();
        assert_eq!((o.max_size, o.max_files), (2 << 20, 1));
        assert_eq!(LogOptions::parse(&[]).unwrap(), LogOptions::default());
        for bad in [
            "max-size=0",
            "max-file=0",
            "max-file=x",
            "mode=non-blocking",
            "max-size",
        ] {
            let e = LogOptions::parse(&[bad.into()]).unwrap_err();
            assert!(e.to_string().starts_with(&format!("invalid --log-opt {bad:?}")), "{e}");
        }
    }
}
