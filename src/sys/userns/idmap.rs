//! ID mappings: the lines of a `uid_map`/`gid_map`, how a mapping is built from the caller's id and its
//! subordinate ranges, and what an id outside a mapping becomes. Pure arithmetic: no system calls.

/// One line of a uid_map or gid_map: `count` ids from `inside` in the namespace are `outside` on the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdMap {
    pub inside: u32,
    pub outside: u32,
    pub count: u32,
}

/// The id inside the namespace of the host id `outside`, if `maps` has it.
pub(super) fn inside_id(maps: &[IdMap], outside: u32) -> Option<u32> {
    maps.iter()
        .find(|m| outside >= m.outside && outside - m.outside < m.count)
        .map(|m| m.inside + (outside - m.outside))
}

/// Whether the namespace id `inside` exists in `maps`.
pub(super) fn is_mapped(maps: &[IdMap], inside: u32) -> bool {
    maps.iter().any(|m| inside >= m.inside && inside - m.inside < m.count)
}

/// `id` if `maps` has it, else 65534 (nobody/nogroup) if mapped, else `own` (the caller's id inside).
pub(super) fn squash_id(maps: &[IdMap], id: u32, own: u32) -> u32 {
    if is_mapped(maps, id) {
        id
    } else if is_mapped(maps, 65534) {
        65534
    } else {
        own
    }
}

/// The mapping for one kind of id: the caller's own id at `own_inside`, subordinate ranges filling the other
/// inside ids from 0 up. Ranges that contain the caller's own id are left out (newuidmap refuses overlaps).
pub fn build_map(own: u32, own_inside: u32, ranges: &[(u32, u32)]) -> Vec<IdMap> {
    let mut maps = vec![IdMap {
        inside: own_inside,
        outside: own,
        count: 1,
    }];
    let mut next = 0u32;
    for &(start, count) in ranges {
        if own >= start && own - start < count {
            continue;
        }
        let mut start = start;
        let mut left = count;
        while left > 0 {
            if next == own_inside {
                next += 1;
            }
            // A run up to the caller's own inside id (or the whole rest).
            let room = if next < own_inside {
                own_inside - next
            } else {
                u32::MAX - next
            };
            let n = left.min(room);
            if n == 0 {
                break;
            }
            maps.push(IdMap {
                inside: next,
                outside: start,
                count: n,
            });
            next += n;
            start += n;
            left -= n;
        }
    }
    maps.sort_by_key(|m| m.inside);
    maps
}

/// The mapping that holds only the caller's own id (`own` on the host, `own_inside` in the namespace).
pub(super) fn single_id_map(own: u32, own_inside: u32) -> Vec<IdMap> {
    vec![IdMap {
        inside: own_inside,
        outside: own,
        count: 1,
    }]
}

/// `maps` as the kernel reads them from `/proc/<pid>/uid_map`: one `inside outside count` line each.
pub(super) fn proc_map_text(maps: &[IdMap]) -> String {
    maps.iter()
        .map(|m| format!("{} {} {}\n", m.inside, m.outside, m.count))
        .collect()
}

/// `maps` as newuidmap/newgidmap take them after the pid: `inside outside count` triples.
pub(super) fn helper_args(maps: &[IdMap]) -> Vec<String> {
    maps.iter()
        .flat_map(|m| [m.inside.to_string(), m.outside.to_string(), m.count.to_string()])
        .collect()
}

/// `maps` in one line, `inside:outside:count` joined with commas (for logs and errors).
pub(super) fn show(maps: &[IdMap]) -> String {
    maps.iter()
        .map(|m| format!("{}:{}:{}", m.inside, m.outside, m.count))
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_fill_around_the_caller() {
        let m = build_map(1000, 0, &[(100000, 65536)]);
        assert_eq!(
            m,
            vec![
                IdMap {
                    inside: 0,
                    outside: 1000,
                    count: 1
                },
                IdMap {
                    inside: 1,
                    outside: 100000,
                    count: 65536
                }
            ]
        );
        let k = build_map(1000, 1000, &[(100000, 65536)]);
        assert_eq!(
            k,
            vec![
                IdMap {
                    inside: 0,
                    outside: 100000,
                    count: 1000
                },
                IdMap {
                    inside: 1000,
                    outside: 1000,
                    count: 1
                },
                IdMap {
                    inside: 1001,
                    outside: 101000,
                    count: 64536
                }
            ]
        );
        // A range holding the caller's own id is left out.
        assert_eq!(build_map(1000, 0, &[(900, 200)]).len(), 1);
    }

    #[test]
    fn maps_as_the_kernel_and_the_helpers_read_them() {
        let m = build_map(1000, 0, &[(100000, 10)]);
        assert_eq!(proc_map_text(&m), "0 1000 1\n1 100000 10\n");
        assert_eq!(helper_args(&m), ["0", "1000", "1", "1", "100000", "10"]);
        assert_eq!(show(&m), "0:1000:1,1:100000:10");
        assert_eq!(inside_id(&m, 100003), Some(4));
        assert_eq!(inside_id(&m, 99), None);
    }
}
