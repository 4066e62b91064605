//! The fuzz targets' corpora as regression tests, on stable Rust: every input in
//! `bridge/fuzz/corpus/<target>/` (kept by `cargo fuzz cmin` after the fuzzing runs) goes
//! through the same harness the fuzzer runs, so a decoder change that panics on any of
//! them fails here, without nightly or libFuzzer.

#[path = "../fuzz/harness.rs"]
mod harness;

fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| {
            let path = entry.expect("entry").path();
            let bytes = std::fs::read(&path).expect("read");
            (path.display().to_string(), bytes)
        })
        .collect();
    out.sort();
    assert!(out.len() >= 100, "the {target} corpus is nearly empty");
    out
}

fn run_all(target: &str, harness: fn(&[u8])) {
    for (name, input) in corpus(target) {
        if std::panic::catch_unwind(|| harness(&input)).is_err() {
            panic!("{target}: {name} panics");
        }
    }
}

#[test]
fn electrum_lines_corpus() {
    run_all("electrum_lines", harness::electrum_lines);
}

#[test]
fn nostr_message_corpus() {
    run_all("nostr_message", harness::nostr_message);
}
