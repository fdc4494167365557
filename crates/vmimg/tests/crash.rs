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
