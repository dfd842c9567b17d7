//! The cargo-fuzz targets on the stable toolchain: every committed corpus input
//! (`fuzz/corpus/<target>/*`, including reproducers of past crashes) is replayed through
//! the same entry functions the fuzzers call, then a short seeded mutation run explores
//! around them. A panic anywhere fails the test and names the input.

#[path = "../../fuzz/src/lib.rs"]
#[allow(dead_code)]
mod entry;

use std::path::{Path, PathBuf};

use rand::{Rng, SeedableRng};

fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| {
            let path = e.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            (path, data)
        })
        .collect();
    files.sort();
    assert!(files.len() >= 10, "{target}: the corpus is not empty");
    files
}

fn replay(target: &str, run: fn(&[u8])) {
    for (path, data) in corpus(target) {
        let outcome = std::panic::catch_unwind(|| run(&data));
        assert!(outcome.is_ok(), "{target} panicked on {}", path.display());
    }
}

/// Byte-level mutations of corpus inputs (flip, insert, delete, splice, duplicate), seeded
/// so a failure reproduces; a failing input is written next to the corpus for triage.
fn mutate_around(target: &str, run: fn(&[u8]), iterations: usize) {
    let inputs: Vec<Vec<u8>> = corpus(target).into_iter().map(|(_, d)| d).collect();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0x5EED_0FF0);
    for i in 0..iterations {
        let mut data = inputs[rng.random_range(0..inputs.len())].clone();
        for _ in 0..rng.random_range(1..6) {
            let len = data.len();
            match rng.random_range(0..6) {
                0 if len > 0 => {
                    let at = rng.random_range(0..len);
                    data[at] ^= 1 << rng.random_range(0..8);
                }
                1 => {
                    let at = rng.random_range(0..=len);
                    let byte = *b"'\"{}[]:,-\n &*!#%\\@0"
                        .get(rng.random_range(0..19))
                        .unwrap();
                    data.insert(at, byte);
                }
                2 if len > 1 => {
                    let a = rng.random_range(0..len);
                    let b = rng.random_range(a..len.min(a + 16) + 1).min(len);
                    data.drain(a..b);
                }
                3 if len > 0 => {
                    let other = &inputs[rng.random_range(0..inputs.len())];
                    let cut = rng.random_range(0..=len);
                    let from = rng.random_range(0..=other.len());
                    data.truncate(cut);
                    data.extend_from_slice(&other[from..]);
                }
                4 if len > 0 && len < 8192 => {
                    let a = rng.random_range(0..len);
                    let b = rng.random_range(a..len) + 1;
                    let chunk = data[a..b].to_vec();
                    data.splice(a..a, chunk);
                }
                _ => {
                    if let Some(first) = data.first_mut() {
                        *first = rng.random();
                    }
                }
            }
        }
        if std::panic::catch_unwind(|| run(&data)).is_err() {
            let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{target}-crash-{i}"));
            std::fs::write(&out, &data).unwrap();
            panic!(
                "{target} panicked on mutation {i}; input saved to {}",
                out.display()
            );
        }
    }
}

#[test]
fn declarations_corpus_replays_without_panic() {
    replay("declarations", entry::declarations);
}

#[test]
fn graph_json_corpus_replays_without_panic() {
    replay("graph_json", entry::graph_json);
}

#[test]
fn declarations_survive_seeded_mutations() {
    mutate_around("declarations", entry::declarations, 3000);
}

#[test]
fn graph_json_survives_seeded_mutations() {
    mutate_around("graph_json", entry::graph_json, 20000);
}
