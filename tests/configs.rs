//! Every example config in configs/ parses and validates.

use gradcamd::config::Config;

#[test]
fn every_example_config_parses() {
    let dir = crate::util::root().join("configs");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).expect("configs/") {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "toml") {
            let c = Config::load(&p).unwrap_or_else(|e| panic!("{}: {e:#}", p.display()));
            assert!(!c.source.is_empty(), "{} has no [[source]]", p.display());
            n += 1;
        }
    }
    // demo, review-file, two-clips, cam-method, factory, webcam: each one parsed.
    assert_eq!(n, 6, "the example configs in {}", dir.display());
}
