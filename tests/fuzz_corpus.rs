//! Replays every input kept under `fuzz/corpus/<target>/` through the harness its fuzz target
//! runs (`vidgate::fuzzing`), on stable and without fuzzing: an input that once crashed, or
//! that reached new code, keeps being checked by the normal test suite.

use std::path::{Path, PathBuf};

use vidgate::fuzzing::{TARGETS, run};

fn corpus_files(target: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let entries = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus of fuzz target {target} at {}: {e}", dir.display()));
    let mut files: Vec<PathBuf> = entries
        .map(|entry| entry.expect("a corpus entry").path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    assert!(
        !files.is_empty(),
        "the corpus of fuzz target {target} at {} is empty",
        dir.display()
    );
    files
}

fn replay(target: &str) {
    for path in corpus_files(target) {
        let data = std::fs::read(&path).expect("a readable corpus file");
        let outcome = std::panic::catch_unwind(|| run(target, &data));
        assert!(
            outcome.is_ok(),
            "fuzz target {target} panics on corpus input {}",
            path.display()
        );
    }
}

#[test]
fn every_target_has_a_corpus_directory() {
    for target in TARGETS {
        assert!(!corpus_files(target).is_empty());
    }
}

#[test]
fn amqp_body_corpus_replays_without_panic() {
    replay("amqp_body");
}

#[test]
fn create_request_corpus_replays_without_panic() {
    replay("create_request");
}

#[test]
fn page_token_corpus_replays_without_panic() {
    replay("page_token");
}

#[test]
fn upstream_json_corpus_replays_without_panic() {
    replay("upstream_json");
}

#[test]
fn mp4_probe_corpus_replays_without_panic() {
    replay("mp4_probe");
}

#[test]
fn last_frame_corpus_replays_without_panic() {
    replay("last_frame");
}

/// Writes the seed inputs (`vidgate::fuzzing::seeds`) into the corpus directories, named
/// `seed-<n>`; run once before fuzzing a new target.
#[test]
#[ignore = "writes the seed corpus; run on purpose"]
fn write_seed_corpus() {
    for target in TARGETS {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz/corpus")
            .join(target);
        std::fs::create_dir_all(&dir).expect("the corpus directory");
        for (n, seed) in vidgate::fuzzing::seeds(target).iter().enumerate() {
            std::fs::write(dir.join(format!("seed-{n}")), seed).expect("a seed written");
        }
    }
}
