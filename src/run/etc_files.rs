//! The files Docker provides in /etc (`hosts`, `hostname`, `resolv.conf`): written into the run directory and
//! bind-mounted over the image's, so the image's own are never changed. `--add-host` lines go into `hosts`;
//! `--dns`, `--dns-search` and `--dns-option` replace the host's lines of their kind in `resolv.conf`.

use std::path::{Path, PathBuf};

use crate::plan::NameResolution;
use crate::run::{io_error, RunError};

/// Writes the files into `run_dir` and returns each with the container path it is mounted at.
pub fn write(run_dir: &Path, hostname: &str, dns: &NameResolution) -> Result<Vec<(PathBuf, &'static str)>, RunError> {
    let resolv = crate::sys::safe_fs::read_system("/etc/resolv.conf").unwrap_or_default();
    let files = [
        ("hosts", hosts(hostname, dns), "/etc/hosts"),
        ("hostname", format!("{hostname}\n"), "/etc/hostname"),
        ("resolv.conf", resolv_conf(&resolv, dns), "/etc/resolv.conf"),
    ];
    let mut out = Vec::new();
    for (name, content, dst) in files {
        let p = run_dir.join(name);
        // Bind-mounted into the container, where any of its users reads them; the run directory keeps them from
        // the host's other users.
        crate::sys::safe_fs::write_new(&p, content.as_bytes(), 0o644)
            .map_err(|e| io_error(format!("write {p:?}"))(e))?;
        out.push((p, dst));
    }
    Ok(out)
}

fn hosts(hostname: &str, dns: &NameResolution) -> String {
    let mut text = format!(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nff00::0\tip6-mcastprefix\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n127.0.1.1\t{hostname}\n"
    );
    for (name, ip) in &dns.extra_hosts {
        text.push_str(&format!("{ip}\t{name}\n"));
    }
    text
}

/// The host's resolv.conf with the given servers, search domains and options in place of its own (a search list
/// of `.` alone means none, as in Docker).
fn resolv_conf(host: &str, dns: &NameResolution) -> String {
    let replaced = |line: &str| {
        let word = line.split_whitespace().next().unwrap_or("");
        (word == "nameserver" && !dns.servers.is_empty())
            || ((word == "search" || word == "domain") && !dns.search.is_empty())
            || (word == "options" && !dns.options.is_empty())
    };
    let mut text: String = host
        .lines()
        .filter(|l| !replaced(l))
        .map(|l| format!("{l}\n"))
        .collect();
    for server in &dns.servers {
        text.push_str(&format!("nameserver {server}\n"));
    }
    let search: Vec<&str> = dns.search.iter().map(String::as_str).filter(|s| *s != ".").collect();
    if !search.is_empty() {
        text.push_str(&format!("search {}\n", search.join(" ")));
    }
    if !dns.options.is_empty() {
        text.push_str(&format!("options {}\n", dns.options.join(" ")));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn given_settings_replace_the_hosts_lines_of_their_kind() {
        let host = "# generated\nnameserver 10.0.0.1\nsearch lan\noptions edns0\n";
        assert_eq!(resolv_conf(host, &NameResolution::default()), host);
        let dns = NameResolution {
            servers: vec!["1.1.1.1".parse().unwrap()],
            search: vec!["corp.example".into()],
            options: vec!["ndots:2".into()],
            extra_hosts: vec![("db".into(), "10.1.2.3".parse().unwrap())],
        };
        assert_eq!(
            resolv_conf(host, &dns),
            "# generated\nnameserver 1.1.1.1\nsearch corp.example\noptions ndots:2\n"
        );
        let only_search = NameResolution {
            search: vec![".".into()],
            ..Default::default()
        };
        assert_eq!(
            resolv_conf(host, &only_search),
            "# generated\nnameserver 10.0.0.1\noptions edns0\n"
        );
        assert!(hosts("box", &dns).ends_with("127.0.1.1\tbox\n10.1.2.3\tdb\n"));
    }
}
