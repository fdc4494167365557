//! Imports arbitrary bytes as a bundle (`image.tar.zst`): the zstd
//! decoder with its window bound, the tar reader, the entry policy,
//! machine.json, and, for bytes that get that far, the layer's checks and
//! its commit onto the disk.
//!
//! Each input gets a fresh temporary directory (in /dev/shm when there is
//! one). Any error is fine; a panic, an abort, a hang or a huge allocation
//! is a bug, as is a scratch layer left behind or an imported disk whose
//! size is not the one reported.
//!
//! The limits are small (1 MiB compressed, 8 MiB per file), and the
//! process may not write a file over [`MAX_WRITTEN`] (RLIMIT_FSIZE, with
//! SIGXFSZ ignored, so such a write fails with EFBIG instead of killing
//! the fuzzer). No file of an import within these limits needs more; an
//! import that fails with EFBIG tried to make a file far over the limit,
//! which is reported as a bug, and the machine's memory (/dev/shm) is kept
//! safe from it.
//!
//! A layer whose virtual size was over `max_file` failed this way (found
//! by reading bundle.rs, fixed in ef3a748; see `fuzz/README.md`).
//!
//! zstd may allocate its whole window, which import allows up to 128 MiB:
//! run this target with `-malloc_limit_mb=160`, not 64.

#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::PathBuf;
use std::sync::LazyLock;
use vmimg_bundle::bundle::{self, Integrity, Limits};

const LIMITS: Limits = Limits { max_archive: 1 << 20, max_file: 8 << 20 };

/// The largest file this process may write.
const MAX_WRITTEN: u64 = 2 * (8 << 20);

/// Where the temporary directories go; set up once.
static BASE: LazyLock<PathBuf> = LazyLock::new(|| {
    // SAFETY: plain libc calls with valid arguments, before any file is written.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
        let limit = libc::rlimit { rlim_cur: MAX_WRITTEN, rlim_max: MAX_WRITTEN };
        assert_eq!(libc::setrlimit(libc::RLIMIT_FSIZE, &limit), 0, "cannot set RLIMIT_FSIZE");
    }
    let shm = PathBuf::from("/dev/shm");
    if shm.is_dir() { shm } else { std::env::temp_dir() }
});

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::Builder::new().prefix("vmimg-fuzz-").tempdir_in(&*BASE).expect("a temporary directory");
    let disk = dir.path().join("disk.raw");
    let scratch = dir.path().join("layer.tmp");
    // Frames without a checksum are let in, as when the caller checks a
    // digest: the fuzzer cannot forge XXH64 checksums, and would otherwise
    // never get past the first frame header.
    let result = bundle::import(data, &disk, &scratch, &LIMITS, Integrity::CallerDigest);
    assert!(!scratch.exists(), "the scratch layer was left behind");
    match result {
        Ok(imported) => {
            let len = std::fs::metadata(&disk).expect("the imported disk").len();
            assert_eq!(len, imported.virtual_size, "the disk's size is not the virtual size reported");
        }
        Err(e) => {
            let efbig = std::iter::successors(Some(&e as &dyn std::error::Error), |e| e.source())
                .filter_map(|e| e.downcast_ref::<std::io::Error>())
                .any(|e| e.raw_os_error() == Some(libc::EFBIG));
            assert!(!efbig, "the import tried to write a file over {MAX_WRITTEN} bytes (limits {LIMITS:?}): {e}");
        }
    }
});
