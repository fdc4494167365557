//! Instances, listing, removal, accounting and garbage collection.

use std::path::{Path, PathBuf};
use vmimg_store::{Error, InstanceFormat, InstanceRequest, Store, StoreOptions};

fn store(root: &Path) -> Store {
    Store::open(StoreOptions { root: Some(root.to_owned()), ..StoreOptions::default() }).unwrap()
}

/// A raw disk of `mib` MiB with 1 MiB of data at 1 MiB, in `dir`.
fn raw_disk(dir: &Path, name: &str, mib: u64, pattern: u8) -> PathBuf {
    let path = dir.join(name);
    let file = std::fs::File::create(&path).unwrap();
    file.set_len(mib << 20).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&file, &vec![pattern; 1 << 20], 1 << 20).unwrap();
    path
}

async fn pulled(store: &Store, file: &Path) -> String {
    let resolved = store.resolve(file.to_str().unwrap(), None).unwrap();
    store.pull(&resolved, None).await.unwrap().record.name
}

fn request(image: &str, name: Option<&str>, format: InstanceFormat) -> InstanceRequest {
    InstanceRequest { image: image.to_owned(), name: name.map(str::to_owned), size: None, format }
}

#[tokio::test]
async fn raw_instances_are_sparse_copies_that_can_grow() {
    let (src, root) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let store = store(root.path());
    let image = pulled(&store, &raw_disk(src.path(), "a.img", 16, 1)).await;
    let grown = InstanceRequest { size: Some(64 << 20), ..request(&image, Some("vm1"), InstanceFormat::Raw) };
    let instance = store.create_instance(&grown).await.unwrap();
    let bytes = std::fs::read(&instance.path).unwrap();
    assert_eq!(bytes.len(), 64 << 20);
    assert!(bytes[1 << 20..2 << 20].iter().all(|&b| b == 1) && bytes[2 << 20..].iter().all(|&b| b == 0));
    assert!(
        std::fs::metadata(&instance.path).map(|m| std::os::unix::fs::MetadataExt::blocks(&m) * 512).unwrap() <= 2 << 20
    );
    let smaller = InstanceRequest { size: Some(1 << 20), ..request(&image, None, InstanceFormat::Raw) };
    assert!(store.create_instance(&smaller).await.unwrap_err().to_string().contains("smaller"));
    let taken = store.create_instance(&request(&image, Some("vm1"), InstanceFormat::Raw)).await.unwrap_err();
    assert!(taken.to_string().contains("exists"), "{taken}");
    let bad = store.create_instance(&request(&image, Some("../x"), InstanceFormat::Raw)).await.unwrap_err();
    assert!(bad.to_string().contains("not 1 to 64"), "{bad}");
    let second = store.create_instance(&request(&image, None, InstanceFormat::Raw)).await.unwrap();
    assert_eq!(second.record.name, format!("{image}-1"));
    let names: Vec<_> = store.instances().unwrap().into_iter().map(|i| i.record.name).collect();
    assert_eq!(names, [format!("{image}-1"), "vm1".to_owned()]);
}

#[tokio::test]
async fn an_image_with_instances_is_kept_until_they_are_gone() {
    let (src, root) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let image = pulled(&store(root.path()), &raw_disk(src.path(), "a.img", 8, 2)).await;
    store(root.path()).create_instance(&request(&image, Some("vm"), InstanceFormat::Raw)).await.unwrap();
    // A new Store (a restart) still sees the reference.
    let store = store(root.path());
    assert_eq!(store.images().unwrap()[0].instances, 1);
    let err = store.remove_image(&image, false).await.unwrap_err();
    assert!(matches!(err, Error::InUse { .. }) && err.to_string().contains("vm"), "{err}");
    assert!(store.gc(Some(0)).await.unwrap().images.is_empty(), "gc never takes an image in use");
    store.remove_instance("vm").await.unwrap();
    store.remove_image(&image, false).await.unwrap();
    assert!(store.images().unwrap().is_empty());
    assert!(matches!(store.remove_image(&image, false).await, Err(Error::NotFound { .. })));
}

#[tokio::test]
async fn force_removes_the_instances_too() {
    let (src, root) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let store = store(root.path());
    let image = pulled(&store, &raw_disk(src.path(), "a.img", 8, 3)).await;
    store.create_instance(&request(&image, Some("vm"), InstanceFormat::Raw)).await.unwrap();
    store.remove_image(&image, true).await.unwrap();
    assert!(store.instances().unwrap().is_empty() && store.images().unwrap().is_empty());
}

#[tokio::test]
async fn usage_and_gc_within_a_budget_take_the_least_recently_used() {
    let (src, root) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let store = store(root.path());
    let old = pulled(&store, &raw_disk(src.path(), "old.img", 8, 4)).await;
    let recent = pulled(&store, &raw_disk(src.path(), "recent.img", 8, 5)).await;
    let used = pulled(&store, &raw_disk(src.path(), "used.img", 8, 6)).await;
    store.create_instance(&request(&used, Some("vm"), InstanceFormat::Raw)).await.unwrap();
    // Make `old` the least recently used, then use `recent` again.
    let json = root.path().join("images").join(&old).join("image.json");
    std::fs::File::options().append(true).open(&json).unwrap().set_modified(std::time::UNIX_EPOCH).unwrap();
    pulled(&store, &src.path().join("recent.img")).await;
    let usage = store.usage();
    assert!(usage.images >= 3 << 20 && usage.instances >= 1 << 20, "{usage:?}");

    // Leftovers: abandoned work and a stray blob.
    std::fs::create_dir(root.path().join("tmp").join("x.work-123")).unwrap();
    std::fs::create_dir_all(root.path().join("blobs/sha256")).unwrap();
    std::fs::write(root.path().join("blobs/sha256").join("0".repeat(64)), b"orphan").unwrap();
    let budget = usage.total() - (1 << 20);
    let report = store.gc(Some(budget)).await.unwrap();
    assert_eq!(report.images, std::slice::from_ref(&old));
    assert_eq!((report.blobs, report.tmp_entries), (1, 1));
    let left: Vec<_> = store.images().unwrap().into_iter().map(|i| i.record.name).collect();
    assert!(left.contains(&recent) && left.contains(&used) && !left.contains(&old));
    assert!(store.usage().total() <= budget);
}

#[tokio::test]
async fn a_partial_download_is_kept_while_fresh() {
    let root = tempfile::tempdir().unwrap();
    let store = store(root.path());
    let partial = root.path().join("tmp/url-abc.part");
    std::fs::write(&partial, b"half").unwrap();
    store.gc(None).await.unwrap();
    assert!(partial.exists(), "a fresh partial is resumable, not garbage");
    std::fs::File::options().append(true).open(&partial).unwrap().set_modified(std::time::UNIX_EPOCH).unwrap();
    assert_eq!(store.gc(None).await.unwrap().tmp_entries, 1);
    assert!(!partial.exists());
}

fn qemu_img(args: &[&str]) -> std::process::Output {
    let out = std::process::Command::new("qemu-img").args(args).output().unwrap();
    assert!(out.status.success(), "qemu-img {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    out
}

#[tokio::test]
async fn qcow2_instances_are_overlays_qemu_reads_and_checks() {
    let (src, root) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let store = store(root.path());
    let base = raw_disk(src.path(), "a.img", 32, 7);
    let image = pulled(&store, &base).await;
    let grown = InstanceRequest { size: Some(1 << 40), ..request(&image, Some("big"), InstanceFormat::Qcow2) };
    let instance = store.create_instance(&grown).await.unwrap();
    let path = instance.path.to_str().unwrap();
    assert!(path.ends_with("instances/big/disk.qcow2"));
    assert!(std::fs::metadata(path).unwrap().len() < 1 << 20, "a 1 TiB overlay is metadata only");
    qemu_img(&["check", path]);
    let info: serde_json::Value = serde_json::from_slice(&qemu_img(&["info", "--output=json", path]).stdout).unwrap();
    assert_eq!(info["virtual-size"], 1u64 << 40);
    assert_eq!(info["backing-filename"], format!("../../images/{image}/disk.raw"));
    assert_eq!(info["backing-filename-format"], "raw");

    let same = store.create_instance(&request(&image, Some("same"), InstanceFormat::Qcow2)).await.unwrap();
    let out = src.path().join("out.raw");
    qemu_img(&["convert", "-O", "raw", same.path.to_str().unwrap(), out.to_str().unwrap()]);
    assert!(std::fs::read(&out).unwrap() == std::fs::read(&base).unwrap(), "a fresh overlay reads as its base");
    // The store can move: the backing file is named relative to the overlay.
    let moved =
        root.path().parent().unwrap().join(format!("{}-moved", root.path().file_name().unwrap().to_string_lossy()));
    std::fs::rename(root.path(), &moved).unwrap();
    qemu_img(&["check", moved.join("instances/same/disk.qcow2").to_str().unwrap()]);
    std::fs::rename(&moved, root.path()).unwrap();
}
