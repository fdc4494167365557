//! Crash safety: `vmimg` killed with SIGKILL at many points of a pull leaves
//! the store holding only whole images, loses nothing that was there, and
//! the next commands clean up and finish the job.

use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;
use vmimg_testserver::{Fault, TestServer};

fn vmimg(store: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_vmimg"));
    command.arg("--store").arg(store).args(["-q", "--retry-delay", "10"]).args(args);
    command.stdout(Stdio::piped()).stderr(Stdio::piped());
    command
}

fn ok(mut command: Command) -> String {
    let out = command.output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// A raw disk with `mib` MiB of incompressible data after 1 MiB of hole.
fn noisy_disk(path: &Path, mib: usize) -> Vec<u8> {
    let mut noise = vec![0u8; mib << 20];
    std::fs::File::open("/dev/urandom").unwrap().read_exact(&mut noise).unwrap();
    let file = std::fs::File::create(path).unwrap();
    file.set_len(((mib + 2) << 20) as u64).unwrap();
    file.write_all_at(&noise, 1 << 20).unwrap();
    std::fs::read(path).unwrap()
}

/// Every image directory holds a parseable record and a disk.
fn assert_only_whole_images(store: &Path) -> Vec<PathBuf> {
    let images: Vec<_> = std::fs::read_dir(store.join("images")).unwrap().flatten().map(|e| e.path()).collect();
    for image in &images {
        let record: serde_json::Value =
            serde_json::from_slice(&std::fs::read(image.join("image.json")).unwrap()).unwrap();
        let disk = std::fs::metadata(image.join("disk.raw")).unwrap();
        assert_eq!(disk.len(), record["virtual_size"].as_u64().unwrap(), "{}", image.display());
    }
    images
}

#[test]
fn sigkill_at_any_point_of_a_pull_leaves_old_or_new() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let kept = noisy_disk(&dir.path().join("kept.img"), 2);
    let kept_disk = ok(vmimg(&store, &["pull", dir.path().join("kept.img").to_str().unwrap()]));

    let qcow2 = dir.path().join("new.qcow2");
    let new_raw = noisy_disk(&dir.path().join("new.raw"), 6);
    let converted = Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "qcow2", "-c"])
        .arg(dir.path().join("new.raw"))
        .arg(&qcow2)
        .status()
        .unwrap();
    assert!(converted.success());
    let body = std::fs::read(&qcow2).unwrap();
    let server = TestServer::start();
    // Every request trickles: a whole download takes about a second.
    server.fault("/new.qcow2", Fault::SlowBody { bytes_per_sec: body.len() as u64 }, usize::MAX);
    server.add("/new.qcow2", body);
    let url = server.url("/new.qcow2");

    for delay_ms in [0, 5, 20, 60, 150, 300, 500, 750, 900, 1000, 1100, 1300] {
        let mut child = vmimg(&store, &["pull", &url]).spawn().unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = child.kill(); // SIGKILL; the pull may have finished already
        child.wait().unwrap();
        assert_only_whole_images(&store);
        assert!(std::fs::read(&kept_disk).unwrap() == kept, "an existing image changed (killed at {delay_ms} ms)");
        if let Ok(record) = std::fs::read_dir(store.join("images"))
            && record.count() == 2
        {
            break; // the pull won the race: the new image is whole (checked above)
        }
    }
    let new_disk = ok(vmimg(&store, &["pull", &url]));
    assert!(std::fs::read(&new_disk).unwrap() == new_raw);
    ok(vmimg(&store, &["gc"]));
    let leftovers: Vec<_> = std::fs::read_dir(store.join("tmp")).unwrap().flatten().map(|e| e.file_name()).collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    assert_eq!(assert_only_whole_images(&store).len(), 2);
}

/// Runs `args` once to time it, then again and again, killed (SIGKILL) at
/// fractions of that time; `check` runs after each kill with the delay.
fn kill_at_many_points(store: &Path, args: &[&str], mut check: impl FnMut(u64)) {
    let started = std::time::Instant::now();
    ok(vmimg(store, args));
    let full = started.elapsed().as_millis() as u64;
    check(u64::MAX);
    for percent in [0, 2, 5, 10, 20, 35, 50, 65, 80, 90, 95, 99, 110, 150, 300] {
        let delay_ms = full * percent / 100;
        let mut child = vmimg(store, args).spawn().unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = child.kill();
        child.wait().unwrap();
        check(delay_ms);
    }
}

#[test]
fn sigkill_at_any_point_of_an_export_leaves_the_old_bundle_or_a_whole_new_one() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let source = noisy_disk(&dir.path().join("disk.img"), 96);
    let disk = ok(vmimg(&store, &["pull", dir.path().join("disk.img").to_str().unwrap()]));
    let key = Path::new(&disk).parent().unwrap().file_name().unwrap().to_str().unwrap().to_owned();
    let out_dir = dir.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let bundle = out_dir.join("image.tar.zst");
    let old = b"the bundle that was there before".to_vec();
    std::fs::write(&bundle, &old).unwrap();
    let scratch = dir.path().join("scratch");
    let args = ["bundle", "export", &key, bundle.to_str().unwrap(), "--level", "6"];
    let mut checked_new = 0;
    kill_at_many_points(&store, &args, |delay_ms| {
        let names: Vec<_> = std::fs::read_dir(&out_dir).unwrap().flatten().map(|e| e.file_name()).collect();
        assert_eq!(names, ["image.tar.zst"], "killed at {delay_ms} ms: leftovers beside the bundle");
        let now = std::fs::read(&bundle).unwrap();
        if now != old {
            // A new bundle: it must be whole.
            let _ = std::fs::remove_dir_all(&scratch);
            let imported = ok(vmimg(&scratch, &["bundle", "import", bundle.to_str().unwrap()]));
            assert!(std::fs::read(imported).unwrap() == source, "killed at {delay_ms} ms: the bundle is not whole");
            checked_new += 1;
            std::fs::write(&bundle, &old).unwrap();
        }
        assert!(std::fs::read(&disk).unwrap() == source, "killed at {delay_ms} ms: the image changed");
    });
    assert!(checked_new >= 2, "no kill came after the rename: only {checked_new} new bundles seen");
}

#[test]
fn sigkill_at_any_point_of_an_import_leaves_no_image_or_a_whole_one() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let kept = noisy_disk(&dir.path().join("kept.img"), 2);
    let kept_disk = ok(vmimg(&store, &["pull", dir.path().join("kept.img").to_str().unwrap()]));
    let source = noisy_disk(&dir.path().join("disk.img"), 96);
    let maker = dir.path().join("maker");
    let disk = ok(vmimg(&maker, &["pull", dir.path().join("disk.img").to_str().unwrap()]));
    let key = Path::new(&disk).parent().unwrap().file_name().unwrap().to_str().unwrap().to_owned();
    let bundle = dir.path().join("image.tar.zst");
    ok(vmimg(&maker, &["bundle", "export", &key, bundle.to_str().unwrap(), "--level", "1"]));

    let args = ["bundle", "import", bundle.to_str().unwrap(), "--name", "imported"];
    kill_at_many_points(&store, &args, |delay_ms| {
        for image in assert_only_whole_images(&store) {
            if image.ends_with("imported") {
                assert!(std::fs::read(image.join("disk.raw")).unwrap() == source, "killed at {delay_ms} ms");
            }
        }
        assert!(std::fs::read(&kept_disk).unwrap() == kept, "killed at {delay_ms} ms: an existing image changed");
        // Start over each time: the import either happened or left nothing that counts.
        let _ = vmimg(&store, &["rm", "imported"]).output().unwrap();
    });
    ok(vmimg(&store, &args));
    ok(vmimg(&store, &["gc"]));
    let leftovers: Vec<_> = std::fs::read_dir(store.join("tmp")).unwrap().flatten().map(|e| e.file_name()).collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    assert_eq!(assert_only_whole_images(&store).len(), 2);
}

#[test]
fn sigkill_at_any_point_of_a_build_leaves_no_image_or_a_whole_one_and_recover_finishes_it() {
    let registry = vmimg_testserver::RegistryServer::start();
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let (lower, upper) = (dir.path().join("lower"), dir.path().join("upper"));
    std::fs::create_dir_all(lower.join("data")).unwrap();
    std::fs::create_dir_all(upper.join("etc")).unwrap();
    let big = noisy_disk(&lower.join("data/big"), 40);
    std::fs::write(upper.join("etc/marker"), "upper layer").unwrap();
    vmimg_testserver::oci_image::ImageSpec::new()
        .dir_layer(&lower)
        .dir_layer(&upper)
        .push(&registry.host(), "test/crash", "1")
        .unwrap();
    let source = format!("oci://{}/test/crash:1", registry.host());
    let args = ["build", &source];
    let mut interrupted = 0;
    kill_at_many_points(&store, &args, |delay_ms| {
        assert_only_whole_images(&store);
        let builds: serde_json::Value =
            serde_json::from_str(&ok(vmimg(&store, &["builds", "list", "--json"]))).unwrap();
        let Some(build) = builds.as_array().unwrap().first() else {
            return; // killed before the build had a record: nothing was made
        };
        if build["status"] != "ready" {
            interrupted += 1;
            assert!(
                ["pending", "pulling", "converting"].contains(&build["status"].as_str().unwrap()),
                "killed at {delay_ms} ms: {build}"
            );
            ok(vmimg(&store, &["builds", "recover"]));
        }
        let disk = ok(vmimg(&store, &args));
        let dump = dir.path().join("big");
        let _ = std::fs::remove_file(&dump);
        let dumped =
            Command::new("debugfs").arg("-R").arg(format!("dump /data/big {}", dump.display())).arg(&disk).output();
        assert!(dumped.unwrap().status.success());
        assert!(std::fs::read(&dump).unwrap() == big, "killed at {delay_ms} ms: the disk is not whole");
        assert!(Command::new("e2fsck").arg("-fn").arg(&disk).output().unwrap().status.success());
        // Start over, downloads included.
        let id = build["id"].as_str().unwrap();
        ok(vmimg(&store, &["builds", "rm", id]));
        ok(vmimg(&store, &["gc"]));
    });
    assert!(interrupted >= 3, "only {interrupted} kills came before the build ended");
    let leftovers: Vec<_> = std::fs::read_dir(store.join("tmp")).unwrap().flatten().map(|e| e.file_name()).collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    assert!(std::fs::read_dir(store.join("layers/sha256")).unwrap().next().is_none(), "gc keeps no layer");
}
