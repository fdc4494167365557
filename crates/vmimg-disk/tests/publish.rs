//! `publish` and `publish_path`: the destination holds the old file or the
//! whole new one, a no-clobber publish never replaces anything, and nothing
//! but the destination is ever left in its directory, whether the writer
//! succeeds, fails or panics.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use vmimg_disk::{Error, Replace, publish, publish_path};

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> =
        fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}

fn scratch_with_old() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let dst = dir.path().join("disk.img");
    fs::write(&dst, b"old").unwrap();
    (dir, dst)
}

/// The writer gets an empty file of its own beside the destination, which
/// keeps its old bytes until the rename; a reader that opened the old file
/// keeps reading it whole.
#[test]
fn publish_path_replaces_atomically() {
    let (dir, dst) = scratch_with_old();
    let mut reader = File::open(&dst).unwrap();
    for sync in [true, false] {
        let before = fs::read(&dst).unwrap();
        let new = format!("new, sync {sync}");
        let seen = publish_path(&dst, Replace::Yes, sync, |temp| {
            assert_eq!(temp.parent(), Some(dir.path()));
            assert!(temp.file_name().unwrap().to_string_lossy().starts_with(".disk.img."), "{}", temp.display());
            assert_eq!(fs::metadata(temp).unwrap().len(), 0, "the temporary starts empty");
            fs::write(temp, &new).unwrap();
            assert_eq!(fs::read(&dst).unwrap(), before, "the destination changed before the rename");
            Ok::<_, Error>(fs::read(temp).unwrap())
        })
        .unwrap();
        assert_eq!(seen, new.as_bytes());
        assert_eq!(fs::read(&dst).unwrap(), new.as_bytes());
        assert_eq!(names(dir.path()), ["disk.img"]);
    }
    let mut old = Vec::new();
    reader.read_to_end(&mut old).unwrap();
    assert_eq!(old, b"old");
}

/// A writer that replaces the file by name (as a tool might) publishes
/// what it wrote last.
#[test]
fn publish_path_takes_the_file_the_writer_left() {
    let dir = tempfile::tempdir().unwrap();
    let dst = dir.path().join("out");
    publish_path(&dst, Replace::No, true, |temp| {
        fs::remove_file(temp)?;
        fs::write(temp, b"recreated")
    })
    .unwrap();
    assert_eq!(fs::read(&dst).unwrap(), b"recreated");
    assert_eq!(names(dir.path()), ["out"]);
}

#[test]
fn no_clobber_refuses_an_existing_destination_and_leaves_it_intact() {
    let (dir, dst) = scratch_with_old();
    let err = publish_path(&dst, Replace::No, true, |temp| fs::write(temp, b"new")).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::AlreadyExists, "{err}");
    assert!(matches!(err.get_ref().and_then(|e| e.downcast_ref()), Some(Error::Io { .. })), "{err:?}");
    assert!(err.to_string().contains(&dst.display().to_string()), "the message names the destination: {err}");
    assert_eq!(fs::read(&dst).unwrap(), b"old");
    assert_eq!(names(dir.path()), ["disk.img"]);

    // Also when the destination appears while the writer runs: the check
    // is the rename's.
    let late = dir.path().join("late");
    let err = publish_path(&late, Replace::No, false, |temp| {
        fs::write(&late, b"first")?;
        fs::write(temp, b"second")
    })
    .unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::AlreadyExists, "{err}");
    assert_eq!(fs::read(&late).unwrap(), b"first");
    assert_eq!(names(dir.path()), ["disk.img", "late"]);

    // And where nothing is there, it publishes.
    let fresh = dir.path().join("fresh");
    publish_path(&fresh, Replace::No, true, |temp| fs::write(temp, b"new")).unwrap();
    assert_eq!(fs::read(&fresh).unwrap(), b"new");
    assert_eq!(names(dir.path()), ["disk.img", "fresh", "late"]);
}

#[test]
fn a_failing_writer_leaves_no_temporary() {
    let (dir, dst) = scratch_with_old();
    let failed = |_: &Path| Err::<(), _>(io::Error::other("the tool failed"));
    for replace in [Replace::Yes, Replace::No] {
        let err = publish_path(&dst, replace, true, failed).unwrap_err();
        assert_eq!(err.to_string(), "the tool failed");
    }
    let err = publish(&dst, true, |mut file| {
        file.write_all(b"part")?;
        Err::<(), _>(io::Error::other("the writer failed"))
    })
    .unwrap_err();
    assert_eq!(err.to_string(), "the writer failed");
    assert_eq!(fs::read(&dst).unwrap(), b"old");
    assert_eq!(names(dir.path()), ["disk.img"]);
}

#[test]
fn a_panicking_writer_leaves_no_temporary() {
    let (dir, dst) = scratch_with_old();
    let by_path = catch_unwind(AssertUnwindSafe(|| {
        publish_path(&dst, Replace::Yes, true, |temp| {
            fs::write(temp, b"part").unwrap();
            panic!("the writer panicked");
            #[allow(unreachable_code)]
            Ok::<_, Error>(())
        })
    }));
    assert!(by_path.is_err());
    let by_file = catch_unwind(AssertUnwindSafe(|| {
        publish(&dst, true, |mut file| {
            file.write_all(b"part").unwrap();
            panic!("the writer panicked");
            #[allow(unreachable_code)]
            Ok::<_, Error>(())
        })
    }));
    assert!(by_file.is_err());
    assert_eq!(fs::read(&dst).unwrap(), b"old");
    assert_eq!(names(dir.path()), ["disk.img"]);
}

/// The store's durable write of a small file (write, flush, rename, flush
/// the directory) is one call, with `io::Error` as the error type.
#[test]
fn publish_writes_a_small_file_in_one_call() {
    let (dir, dst) = scratch_with_old();
    publish(&dst, true, |mut file| file.write_all(b"{\"name\":\"new\"}")).unwrap();
    assert_eq!(fs::read(&dst).unwrap(), b"{\"name\":\"new\"}");
    let fresh = dir.path().join("fresh");
    publish(&fresh, false, |mut file| file.write_all(b"x")).unwrap();
    assert_eq!(fs::read(&fresh).unwrap(), b"x");
    assert_eq!(names(dir.path()), ["disk.img", "fresh"]);
}

/// Writers publishing to one destination at once each get a temporary of
/// their own; the last rename wins and nothing is left behind.
#[test]
fn concurrent_publishes_leave_one_whole_file() {
    let dir = tempfile::tempdir().unwrap();
    let dst = dir.path().join("shared");
    std::thread::scope(|scope| {
        for i in 0..8u8 {
            let dst = &dst;
            scope.spawn(move || {
                let bytes = vec![i; 64 << 10];
                if i % 2 == 0 {
                    publish_path(dst, Replace::Yes, false, |temp| fs::write(temp, &bytes)).unwrap();
                } else {
                    publish(dst, false, |mut file| file.write_all(&bytes)).unwrap();
                }
            });
        }
    });
    let bytes = fs::read(&dst).unwrap();
    assert_eq!(bytes.len(), 64 << 10);
    assert!(bytes.iter().all(|&b| b == bytes[0]), "a mix of two writers");
    assert_eq!(names(dir.path()), ["shared"]);
}
