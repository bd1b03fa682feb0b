//! What the property tests share: how many cases each runs (`PROPTEST_CASES`, 64 unless set: `make test` stays
//! quick, `make test-props` runs thousands), and no failure files written into the source tree.

pub fn config() -> proptest::test_runner::Config {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    proptest::test_runner::Config {
        cases,
        failure_persistence: None,
        ..proptest::test_runner::Config::default()
    }
}
