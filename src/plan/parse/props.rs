//! Property tests of the flag and key parsers: whatever the text, a value or a [`ParseError`] that names it, never
//! a panic; what is accepted means what it says.

use proptest::prelude::*;

use super::*;

proptest! {
    #![proptest_config(crate::props::config())]

    #[test]
    fn any_text_is_a_value_or_an_error_naming_it(text in "\\PC{0,40}") {
        let lookup = |_: &str| None;
        for e in [
            size(&text).err(),
            cpus(&text).err(),
            ulimit(&text).err(),
            volume(&text).err(),
            tmpfs(&text).err(),
            mount(&text).err(),
            cpuset(&text).err(),
            signal(&text).err(),
            env_item(&text, &lookup).err(),
        ]
        .into_iter()
        .flatten()
        {
            prop_assert_eq!(&e.value, &text);
            prop_assert!(!e.to_string().is_empty());
        }
    }

    #[test]
    fn sizes_mean_their_units(n in 0u64..(1 << 30), unit in prop::sample::select(vec![
        ("", 1u64), ("b", 1), ("k", 1 << 10), ("kb", 1 << 10), ("KiB", 1 << 10), ("m", 1 << 20), ("MB", 1 << 20),
        ("g", 1 << 30), ("GiB", 1 << 30),
    ])) {
        prop_assert_eq!(size(&format!("{n}{}", unit.0)).map(|s| s.0), Ok(n * unit.1));
    }

    #[test]
    fn ulimits_keep_their_numbers(soft in 0u64..1 << 40, extra in 0u64..1 << 20) {
        let hard = soft + extra;
        let u = ulimit(&format!("nofile={soft}:{hard}")).unwrap();
        prop_assert_eq!((u.soft, u.hard), (soft, hard));
    }

    #[test]
    fn volumes_keep_absolute_destinations(
        src in "/[a-z0-9_]{1,12}(/[a-z0-9_]{1,12}){0,3}",
        dst in "/[a-z0-9_]{1,12}(/[a-z0-9_]{1,12}){0,3}",
        ro in any::<bool>(),
    ) {
        let text = format!("{src}:{dst}{}", if ro { ":ro" } else { "" });
        match volume(&text) {
            Ok(MountRequest::Bind { source, destination, read_only }) => {
                prop_assert_eq!(source, std::path::PathBuf::from(&src));
                prop_assert_eq!(destination, dst);
                prop_assert_eq!(read_only, ro);
            }
            other => prop_assert!(false, "{text:?} gave {other:?}"),
        }
    }

    #[test]
    fn relative_destinations_are_refused(dst in "[a-z0-9_.][a-z0-9_./]{0,20}") {
        let text = format!("/src:{dst}");
        let e = volume(&text).unwrap_err();
        prop_assert_eq!(e.problem, Problem::RelativeDestination(dst.clone()));
        prop_assert!(tmpfs(&dst).is_err());
    }

    #[test]
    fn env_files_keep_every_setting(
        vars in prop::collection::vec(("[A-Z_][A-Z0-9_]{0,10}", "[ -~]{0,20}"), 0..8),
        noise in prop::collection::vec(prop::sample::select(vec!["", "# a comment", "   "]), 0..4),
    ) {
        let mut text = String::new();
        for (i, (k, v)) in vars.iter().enumerate() {
            if let Some(n) = noise.get(i) {
                text.push_str(n);
                text.push('\n');
            }
            text.push_str(&format!("{k}={v}\n"));
        }
        let lookup = |_: &str| None;
        let parsed: Vec<(String, String)> = env_file_lines(&text)
            .filter_map(|(_, line)| env_item(line, &lookup).ok().flatten())
            .collect();
        let expected: Vec<(String, String)> = vars.iter().map(|(k, v)| (k.clone(), v.trim_end().to_string())).collect();
        prop_assert_eq!(parsed, expected);
    }
}
