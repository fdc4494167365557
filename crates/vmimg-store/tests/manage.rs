//! Instances, listing, removal, accounting and garbage collection.

use std::path::{Path, PathBuf};
use vmimg_store::{Error, GcOptions, InstanceFormat, InstanceRequest, Store, StoreOptions};

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
    store(root.path()).create_instance(&request(&image, Some("vm"), InstanceFormat::Qcow2)).await.unwrap();
    // A new Store (a restart) still sees the reference.
    let store = store(root.path());
    assert_eq!(store.images().unwrap()[0].instances, 1);
    let err = store.remove_image(&image, false).await.unwrap_err();
    assert!(matches!(err, Error::InUse { .. }) && err.to_string().contains("vm"), "{err}");
    assert!(
        store.gc(&GcOptions { keep_under: Some(0), ..GcOptions::default() }).await.unwrap().images.is_empty(),
        "gc never takes an image in use"
    );
    store.remove_instance("vm").await.unwrap();
    store.remove_image(&image, false).await.unwrap();
    assert!(store.images().unwrap().is_empty());
    assert!(matches!(store.remove_image(&image, false).await, Err(Error::NotFound { .. })));
}

#[tokio::test]
async fn force_removes_the_qcow2_instances_and_never_the_raw_copies() {
    let (src, root) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let store = store(root.path());
    let image = pulled(&store, &raw_disk(src.path(), "a.img", 8, 3)).await;
    store.create_instance(&request(&image, Some("overlay"), InstanceFormat::Qcow2)).await.unwrap();
    let copy = store.create_instance(&request(&image, Some("copy"), InstanceFormat::Raw)).await.unwrap();
    let removed = store.remove_image(&image, true).await.unwrap();
    assert_eq!(removed, ["overlay"], "only what depends on the image goes, and is named");
    assert!(store.images().unwrap().is_empty());
    let left: Vec<_> = store.instances().unwrap().into_iter().map(|i| i.record.name).collect();
    assert_eq!(left, ["copy"]);
    assert!(std::fs::read(&copy.path).unwrap()[1 << 20..2 << 20].iter().all(|&b| b == 3));
}

#[tokio::test]
async fn a_raw_instance_does_not_hold_its_image() {
    let (src, root) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let store = store(root.path());
    let image = pulled(&store, &raw_disk(src.path(), "a.img", 8, 3)).await;
    store.create_instance(&request(&image, Some("copy"), InstanceFormat::Raw)).await.unwrap();
    assert!(store.remove_image(&image, false).await.unwrap().is_empty());
    assert_eq!(store.instances().unwrap().len(), 1);
}

#[tokio::test]
async fn gc_never_evicts_what_the_user_made_and_a_dry_run_removes_nothing() {
    let (src, root) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let store = store(root.path());
    let blank = store.new_image("scratch", 8 << 20, None).await.unwrap().record.name;
    let cache = pulled(&store, &raw_disk(src.path(), "a.img", 8, 7)).await;
    let gone = pulled(&store, &raw_disk(src.path(), "gone.img", 8, 8)).await;
    std::fs::remove_file(src.path().join("gone.img")).unwrap();
    let dry = store.gc(&GcOptions { keep_under: Some(0), dry_run: true, ..GcOptions::default() }).await.unwrap();
    assert!(dry.dry_run && dry.images == [cache.clone()], "{dry:?}");
    assert!(dry.bytes_freed >= 1 << 20, "{dry:?}");
    assert_eq!(store.images().unwrap().len(), 3, "a dry run removes nothing");
    let report = store.gc(&GcOptions { keep_under: Some(0), ..GcOptions::default() }).await.unwrap();
    assert_eq!(report.images, [cache]);
    let left: Vec<_> = store.images().unwrap().into_iter().map(|i| i.record.name).collect();
    assert!(left.contains(&blank) && left.contains(&gone), "{left:?}");
}

#[tokio::test]
async fn a_name_the_user_gives_never_stands_in_for_a_pinned_source() {
    let root = tempfile::tempdir().unwrap();
    let store = store(root.path());
    let alias = store.resolve("debian-12", None).unwrap();
    let made = store.new_image(&alias.key, 1 << 20, None).await.unwrap();
    assert_ne!(made.record.name, alias.key);
    assert!(store.lookup(&alias.key).unwrap().is_none(), "the alias's key is still a miss");
    assert_eq!(store.find_image(&alias.key).unwrap().unwrap().name, made.record.name, "found by its name");
}

#[tokio::test]
async fn ready_disks_are_read_only_and_mutable_ones_writable() {
    use std::os::unix::fs::PermissionsExt;
    let (src, root) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let store = store(root.path());
    let resolved = store.resolve(raw_disk(src.path(), "a.img", 8, 9).to_str().unwrap(), None).unwrap();
    let pulled = store.pull(&resolved, None).await.unwrap();
    assert_eq!(std::fs::metadata(&pulled.path).unwrap().permissions().mode() & 0o777, 0o444);
    let blank = store.new_image("mine", 1 << 20, None).await.unwrap();
    assert_eq!(std::fs::metadata(&blank.path).unwrap().permissions().mode() & 0o222, 0o200);
}

#[tokio::test]
async fn removing_a_built_image_forgets_its_build_and_no_lock_file_is_left() {
    let (src, root) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let store = store(root.path());
    let image = pulled(&store, &raw_disk(src.path(), "a.img", 8, 1)).await;
    let builds = root.path().join("builds");
    std::fs::create_dir_all(&builds).unwrap();
    let build = serde_json::json!({ "id": "b1", "status": "ready", "image": image });
    std::fs::write(builds.join("b1.json"), build.to_string()).unwrap();
    std::fs::write(builds.join("b2.json"), r#"{"id": "b2", "status": "ready", "image": "other"}"#).unwrap();
    store.remove_image(&image, false).await.unwrap();
    assert!(!builds.join("b1.json").exists() && builds.join("b2.json").exists());
    let locks: Vec<_> =
        std::fs::read_dir(root.path().join("locks")).unwrap().flatten().map(|e| e.file_name()).collect();
    assert!(locks.iter().all(|l| l == ".lease.lock"), "{locks:?}");
    // A lock file a killed process left is collected.
    std::fs::write(root.path().join("locks/some-key.lock"), b"").unwrap();
    assert_eq!(store.gc(&GcOptions::default()).await.unwrap().locks, 1);
    assert!(!root.path().join("locks/some-key.lock").exists());
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
    let budget = usage.total - (1 << 20);
    let report = store.gc(&GcOptions { keep_under: Some(budget), ..GcOptions::default() }).await.unwrap();
    assert_eq!(report.images, std::slice::from_ref(&old));
    assert_eq!((report.blobs, report.tmp_entries), (1, 1));
    let left: Vec<_> = store.images().unwrap().into_iter().map(|i| i.record.name).collect();
    assert!(left.contains(&recent) && left.contains(&used) && !left.contains(&old));
    assert!(store.usage().total <= budget);
}

#[tokio::test]
async fn a_partial_download_is_kept_while_fresh() {
    let root = tempfile::tempdir().unwrap();
    let store = store(root.path());
    let partial = root.path().join("tmp/url-abc.part");
    std::fs::write(&partial, b"half").unwrap();
    store.gc(&GcOptions::default()).await.unwrap();
    assert!(partial.exists(), "a fresh partial is resumable, not garbage");
    std::fs::File::options().append(true).open(&partial).unwrap().set_modified(std::time::UNIX_EPOCH).unwrap();
    assert_eq!(store.gc(&GcOptions::default()).await.unwrap().tmp_entries, 1);
    assert!(!partial.exists());
}

/// `partials` takes every partial download, however fresh, but never one a
/// pull holds (its key's lock, taken here as another process takes it);
/// its dry run says what its run frees.
#[tokio::test]
async fn gc_partials_takes_fresh_partials_but_never_one_in_use() {
    let root = tempfile::tempdir().unwrap();
    let store = store(root.path());
    let (idle, busy) = (root.path().join("tmp/url-idle.part"), root.path().join("tmp/url-busy.part"));
    for partial in [&idle, &busy] {
        std::fs::write(partial, vec![1u8; 300_000]).unwrap();
    }
    std::fs::create_dir_all(root.path().join("locks")).unwrap();
    let pulling = std::fs::File::create(root.path().join("locks/url-busy.lock")).unwrap();
    pulling.lock().unwrap();
    let partials = GcOptions { partials: true, ..GcOptions::default() };
    let dry = store.gc(&GcOptions { dry_run: true, ..partials }).await.unwrap();
    assert_eq!(dry.tmp_entries, 1, "{dry:?}");
    assert!(dry.bytes_freed >= 300_000 && idle.exists(), "{dry:?}");
    let report = store.gc(&partials).await.unwrap();
    assert_eq!((report.tmp_entries, report.bytes_freed), (dry.tmp_entries, dry.bytes_freed));
    assert!(!idle.exists(), "a fresh partial nobody holds goes with --partials");
    assert!(busy.exists(), "a partial a pull holds is never collected");
    drop(pulling);
    assert_eq!(store.gc(&partials).await.unwrap().tmp_entries, 1);
    assert!(!busy.exists());
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

/// gc run over and over (with and without `partials`), from another store
/// handle (as another process would), while several pulls download and
/// convert: every pull ends with its image whole, its blob kept, and its
/// disk byte for byte the source.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_in_a_loop_never_takes_what_pulls_in_flight_will_name() {
    let (src, root) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let server = vmimg_testserver::TestServer::start();
    let mut sources = Vec::new();
    for i in 0..4u8 {
        let disk = raw_disk(src.path(), &format!("d{i}.img"), 4, 10 + i);
        let bytes = std::fs::read(&disk).unwrap();
        let path = format!("/d{i}.img");
        server.fault(&path, vmimg_testserver::Fault::SlowBody { bytes_per_sec: 8 << 20 }, usize::MAX);
        server.add(&path, bytes.clone());
        sources.push((server.url(&path), bytes));
    }
    let store = std::sync::Arc::new(store(root.path()));
    let pulls: Vec<_> = sources
        .iter()
        .map(|(url, _)| {
            let (store, url) = (store.clone(), url.clone());
            tokio::spawn(async move {
                let resolved = store.resolve(&url, None).unwrap();
                store.pull(&resolved, None).await.unwrap()
            })
        })
        .collect();
    let collector = self::store(root.path());
    let mut rounds = 0;
    while !pulls.iter().all(|p| p.is_finished()) {
        // Every other round takes every partial download nobody holds.
        collector.gc(&GcOptions { partials: rounds % 2 == 1, ..GcOptions::default() }).await.unwrap();
        rounds += 1;
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert!(rounds > 5, "gc ran {rounds} times");
    for (pull, (_, bytes)) in pulls.into_iter().zip(&sources) {
        let pulled = pull.await.unwrap();
        assert!(std::fs::read(&pulled.path).unwrap() == *bytes);
        assert!(root.path().join(pulled.record.blob.unwrap()).exists(), "the blob was collected");
    }
    collector.gc(&GcOptions::default()).await.unwrap();
    assert_eq!(store.images().unwrap().len(), 4);
}

/// What `du` counts as partial downloads and work is what `gc` frees when it
/// collects them, byte for byte (the `tmp/` directory's own block aside).
#[tokio::test]
async fn du_and_gc_agree_on_what_partials_take() {
    let root = tempfile::tempdir().unwrap();
    let store = store(root.path());
    let tmp = root.path().join("tmp");
    let empty_tmp = store.usage().partial;
    let stale = tmp.join("url-stale.part");
    std::fs::write(&stale, vec![1u8; 300_000]).unwrap();
    std::fs::File::options().append(true).open(&stale).unwrap().set_modified(std::time::UNIX_EPOCH).unwrap();
    std::fs::write(tmp.join("url-empty.part"), b"").unwrap();
    std::fs::create_dir(tmp.join("k.work-1")).unwrap();
    std::fs::write(tmp.join("k.work-1/disk.raw"), vec![2u8; 100_000]).unwrap();
    let before = store.usage().partial;
    let dry = store.gc(&GcOptions { dry_run: true, ..GcOptions::default() }).await.unwrap();
    assert_eq!((dry.tmp_entries, dry.bytes_freed), (3, before - empty_tmp), "{dry:?}");
    let report = store.gc(&GcOptions::default()).await.unwrap();
    assert_eq!(report.bytes_freed, dry.bytes_freed, "the dry run said what the run frees");
    assert_eq!(store.usage().partial, empty_tmp);
}
