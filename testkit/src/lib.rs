//! What the core's tests take from the outside world, kept out of `core/` so that the core
//! crate, its tests included, never reads a clock or a file: simulated time needs one real
//! instant as its origin, and the fuzz corpora replayed by `cargo test` live on disk.

use std::path::{Path, PathBuf};
use std::time::Instant;

/// One real instant to start simulated time from; nothing waits on the clock after it.
pub fn origin() -> Instant {
    Instant::now()
}

/// The `fuzz/` folder of the workspace.
pub fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

/// The files directly in `dir`, sorted; none when it does not exist.
pub fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut files: Vec<PathBuf> = entries.flatten().map(|e| e.path()).filter(|p| p.is_file()).collect();
    files.sort();
    files
}

/// The names of the folders directly in `dir`, sorted; none when it does not exist.
pub fn folders(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut names: Vec<String> =
        entries.flatten().filter(|e| e.path().is_dir()).map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}

/// A file's bytes; a test input that cannot be read fails the test that wanted it.
pub fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}
