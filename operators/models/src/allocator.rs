//! The memory allocator of the binaries that run models (the `unoflow` CLI, the model
//! benchmarks): declare [`Allocator`] as the `#[global_allocator]` and call
//! [`keep_freed_memory`] first thing in `main`.
//!
//! The models allocate a tensor per op and free it moments later. glibc's malloc maps each large
//! buffer from the OS and unmaps it when freed, so the next op faulted its pages in again: on
//! two cores a FLUX forward spent a fifth of its time there and a LoRA training step half
//! (BENCHMARKS.md, "Models on the CPU: the allocator"). mimalloc keeps freed memory for reuse;
//! with purging off (by default it gives memory back a second after it is freed, which a
//! training step outlasts) a process keeps the peak it reached, which a worker needs again
//! at its next unit anyway.
//!
//! This is the workspace's only `unsafe` code: setting an option of a C library is a foreign
//! call. The test below checks that no other file allows unsafe code.

/// The global allocator to declare: `#[global_allocator] static A: Allocator = Allocator;`.
pub use mimalloc::MiMalloc as Allocator;

/// mimalloc's `mi_option_purge_delay`, by its number in the mimalloc v3 sources that
/// `libmimalloc-sys` 0.1.49 builds (the crate names no constant for it; the version is pinned
/// and the test checks the number against the option's default).
const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Tells the allocator never to give freed memory back to the OS (no effect unless
/// [`Allocator`] is the global allocator).
pub fn keep_freed_memory() {
    set_purge_delay_ms(-1);
}

#[allow(unsafe_code)]
fn set_purge_delay_ms(ms: i64) {
    // SAFETY: `mi_option_set` stores a value in mimalloc's option table; it takes no pointers
    // and may be called at any time, from any thread.
    unsafe { libmimalloc_sys::mi_option_set(PURGE_DELAY, ms as _) }
}

#[cfg(test)]
#[allow(unsafe_code)]
fn purge_delay_ms() -> i64 {
    // SAFETY: as above; `mi_option_get` reads the option table.
    unsafe { libmimalloc_sys::mi_option_get(PURGE_DELAY) as i64 }
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::*;

    #[test]
    fn the_option_set_is_the_purge_delay() {
        // Option 15 has the purge delay's default (1,000 ms in mimalloc v3; no other option
        // has it), unless the environment set it.
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
            assert_eq!(purge_delay_ms(), 1_000, "mimalloc's option {PURGE_DELAY} is not the purge delay in this version");
        }
        keep_freed_memory();
        assert_eq!(purge_delay_ms(), -1);
    }

    fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let path = entry.path();
            let name = entry.file_name();
            if path.is_dir() && name != "target" && !name.to_string_lossy().starts_with('.') {
                rust_files(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }

    #[test]
    fn no_other_file_of_the_workspace_allows_unsafe_code() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let mut files = Vec::new();
        for dir in ["src", "engine", "operators", "tests", "benches", "examples", "tools"] {
            if root.join(dir).is_dir() {
                rust_files(&root.join(dir), &mut files);
            }
        }
        assert!(files.len() > 50, "the workspace's sources were not found from {}", root.display());
        let allow = ["allow(", "unsafe_code)"].concat();
        let allowing: Vec<PathBuf> = files
            .into_iter()
            .filter(|f| std::fs::read_to_string(f).is_ok_and(|text| text.contains(&allow)))
            .filter(|f| !f.ends_with("operators/models/src/allocator.rs"))
            .collect();
        assert!(allowing.is_empty(), "unsafe code is allowed outside the allocator module: {allowing:?}");
    }
}
