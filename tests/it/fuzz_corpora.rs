//! The fuzz targets' committed corpora (`tests/fuzz/corpus/<target>/`) and the inputs of the
//! crashes they found (`tests/fuzz/regressions/<target>/`), replayed through the entry
//! functions the fuzz targets call, on stable Rust: none may panic, and the codec's errors
//! must be 400s (asserted in `maas_tests::fuzz`).

use maas_tests::repo_root;

#[test]
fn fuzz_corpora_and_found_crashes_replay_without_a_panic() {
    let fuzz = repo_root().join("tests/fuzz");
    let mut failures = Vec::new();
    for (target, entry) in maas_tests::fuzz::TARGETS {
        let mut replayed = 0;
        for folder in ["corpus", "regressions"] {
            let Ok(entries) = std::fs::read_dir(fuzz.join(folder).join(target)) else { continue };
            for path in entries.map(|e| e.unwrap().path()) {
                let bytes = std::fs::read(&path).unwrap();
                if std::panic::catch_unwind(|| entry(&bytes)).is_err() {
                    failures.push(path.display().to_string());
                }
                replayed += 1;
            }
        }
        assert!(replayed >= 10, "{target}: only {replayed} inputs; is the corpus committed?");
    }
    assert!(failures.is_empty(), "inputs that panic:\n{}", failures.join("\n"));
}
