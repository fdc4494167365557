//! Crash safety: `vmimg` killed with SIGKILL at many points of a pull, a
//! bundle export or import and a container build leaves the store holding
//! only whole images, loses nothing that was there, and the next commands
//! clean up and finish the job.
//!
//! Each test proves its kills landed mid-work, not before the work began or
//! after it ended: most are aimed by watching the work (the bytes of the
//! files the process holds open, polled every millisecond), not by the
//! clock, so a loaded machine delays them without moving them out of the
//! work; after each, the test looks for what an interrupted run leaves (a
//! partial download, a work directory, the old bundle still in place) and
//! counts the kills that ended the process (SIGKILL, not a finished run)
//! and left it. At least three per test must have.

use std::io::Read;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use vmimg_testserver::{Fault, TestServer};

/// Kills that must land mid-work in each test.
const MID_WORK_KILLS: usize = 3;
/// SIGKILL's number on Linux.
const SIGKILL: i32 = 9;

fn vmimg(store: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_vmimg"));
    command.arg("--store").arg(store).env("VMIMG_RETRY_DELAY", "10").arg("-q").args(args);
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

/// Where a run is killed.
#[derive(Debug, Clone, Copy)]
enum At {
    /// So long after it starts.
    Time(Duration),
    /// Once its progress, as the test measures it, reaches so many bytes.
    Progress(u64),
}

/// Runs `vmimg args` and kills it (SIGKILL) at `at`, polling `progress`
/// (given the process id) every millisecond; true when the kill ended it,
/// false when it ended first.
fn run_killed_at(store: &Path, args: &[&str], at: At, progress: &mut dyn FnMut(u32) -> u64) -> bool {
    let mut child = vmimg(store, args).spawn().unwrap();
    let started = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        let due = match at {
            At::Time(delay) => started.elapsed() >= delay,
            At::Progress(mark) => progress(child.id()) >= mark,
        };
        if due {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "vmimg {args:?} still short of {at:?} after a minute");
        std::thread::sleep(Duration::from_millis(1));
    }
    let _ = child.kill();
    child.wait().unwrap().signal() == Some(SIGKILL)
}

/// Allocated bytes of the files under `dir` that process `pid` holds open
/// (an unnamed `O_TMPFILE` output among them): the work it is doing there.
fn open_bytes(pid: u32, dir: &Path) -> u64 {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { return 0 };
    fds.flatten()
        .filter(|fd| std::fs::read_link(fd.path()).is_ok_and(|target| target.starts_with(dir)))
        .filter_map(|fd| std::fs::metadata(fd.path()).ok())
        .filter(|meta| meta.is_file())
        .map(|meta| meta.blocks() * 512)
        .sum()
}

/// The names under `tmp` that an interrupted run leaves: partial downloads
/// (`.part`, `.partN`) with their size, and work directories.
fn work_left(tmp: &Path) -> Vec<(String, u64)> {
    let entries = std::fs::read_dir(tmp).unwrap().flatten();
    let left = entries.map(|e| (e.file_name().to_string_lossy().into_owned(), e.metadata().map_or(0, |m| m.len())));
    left.filter(|(name, _)| name.contains(".work-") || name.contains(".part") && !name.ends_with(".meta")).collect()
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
    let body_len = body.len() as u64;
    let server = TestServer::start();
    // Every request trickles: a whole download takes about a second.
    server.fault("/new.qcow2", Fault::SlowBody { bytes_per_sec: body.len() as u64 }, usize::MAX);
    server.add("/new.qcow2", body);
    let url = server.url("/new.qcow2");

    // Killed before it starts, then as the partial grows (each pull resumes
    // the last one's partial, so the marks climb; they lie over a MiB apart,
    // farther than the pull writes at once).
    let tmp = store.join("tmp");
    let times = [0, 20].map(|ms| At::Time(Duration::from_millis(ms)));
    let marks = [10, 30, 50, 70, 90].map(|percent| At::Progress(body_len * percent / 100));
    let mut mid_work = Vec::new();
    for at in times.into_iter().chain(marks) {
        let before = partial_len(&tmp);
        let landed = run_killed_at(&store, &["pull", &url], at, &mut |_| partial_len(&tmp));
        assert!(assert_only_whole_images(&store).len() <= 2);
        assert!(std::fs::read(&kept_disk).unwrap() == kept, "an existing image changed (killed at {at:?})");
        let after = partial_len(&tmp);
        if landed && after > before && after < body_len {
            mid_work.push((at, before, after));
        }
    }
    eprintln!("kills that left a partial download grown (mark, from, to): {mid_work:?}");
    assert!(mid_work.len() >= MID_WORK_KILLS, "only these kills left a partial download grown: {mid_work:?}");
    let new_disk = ok(vmimg(&store, &["pull", &url]));
    assert!(std::fs::read(&new_disk).unwrap() == new_raw);
    ok(vmimg(&store, &["gc"]));
    let leftovers: Vec<_> = std::fs::read_dir(store.join("tmp")).unwrap().flatten().map(|e| e.file_name()).collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    assert_eq!(assert_only_whole_images(&store).len(), 2);
}

/// The size of the partial download in `tmp`, 0 when there is none.
fn partial_len(tmp: &Path) -> u64 {
    work_left(tmp).iter().filter(|(name, _)| name.ends_with(".part")).map(|&(_, len)| len).max().unwrap_or(0)
}

/// Runs `args` once, uninterrupted, to learn its time and the most bytes
/// it holds open under `watched` at once; then again and again, killed
/// before it starts, at fractions of those bytes (mid-work) and past its
/// time (after it ended, or in its last steps). `check` runs after the
/// first run and after each kill, with where it was killed, and says
/// whether the store shows work the kill interrupted; at least
/// [`MID_WORK_KILLS`] kills aimed at the work must have ended the process
/// and left such work.
fn kill_at_many_points(store: &Path, args: &[&str], watched: &Path, mut check: impl FnMut(&str) -> bool) {
    let (full, peak) = watched_run(store, args, watched);
    check("not killed");
    let early = [0, 2].map(|percent| At::Time(full * percent / 100));
    let marks = [5, 20, 35, 50, 65, 80, 95].map(|percent| At::Progress(peak * percent / 100));
    let late = [110, 150, 300].map(|percent| At::Time(full * percent / 100));
    let mut mid_work = Vec::new();
    for at in early.into_iter().chain(marks).chain(late) {
        let landed = run_killed_at(store, args, at, &mut |pid| open_bytes(pid, watched));
        let interrupted = check(&format!("{at:?}"));
        if interrupted && landed && matches!(at, At::Progress(_)) {
            mid_work.push(at);
        }
    }
    eprintln!("kills that landed mid-work, of {peak} bytes at most: {mid_work:?}");
    let wanted = MID_WORK_KILLS;
    assert!(
        mid_work.len() >= wanted,
        "{wanted} kills of {peak} bytes of work should have landed mid-work: {mid_work:?}"
    );
}

/// Runs `args` to its end; its time and the most bytes it held open under
/// `watched` at once.
fn watched_run(store: &Path, args: &[&str], watched: &Path) -> (Duration, u64) {
    let mut child = vmimg(store, args).spawn().unwrap();
    let started = Instant::now();
    let mut peak = 0;
    while child.try_wait().unwrap().is_none() {
        peak = peak.max(open_bytes(child.id(), watched));
        std::thread::sleep(Duration::from_millis(1));
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(peak > 0, "vmimg {args:?} never held a file open under {}", watched.display());
    (started.elapsed(), peak)
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
    // The export writes an unnamed file in out/ and names it when whole.
    kill_at_many_points(&store, &args, &out_dir, |at| {
        let names: Vec<_> = std::fs::read_dir(&out_dir).unwrap().flatten().map(|e| e.file_name()).collect();
        assert_eq!(names, ["image.tar.zst"], "killed at {at}: leftovers beside the bundle");
        assert!(std::fs::read(&disk).unwrap() == source, "killed at {at}: the image changed");
        let now = std::fs::read(&bundle).unwrap();
        if now == old {
            return true; // the new bundle was not done
        }
        // A new bundle: it must be whole.
        let _ = std::fs::remove_dir_all(&scratch);
        let imported = ok(vmimg(&scratch, &["bundle", "import", bundle.to_str().unwrap()]));
        assert!(std::fs::read(imported).unwrap() == source, "killed at {at}: the bundle is not whole");
        checked_new += 1;
        std::fs::write(&bundle, &old).unwrap();
        false
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
    let tmp = store.join("tmp");
    kill_at_many_points(&store, &args, &tmp, |at| {
        for image in assert_only_whole_images(&store) {
            if image.ends_with("imported") {
                assert!(std::fs::read(image.join("disk.raw")).unwrap() == source, "killed at {at}");
            }
        }
        assert!(std::fs::read(&kept_disk).unwrap() == kept, "killed at {at}: an existing image changed");
        let interrupted = !work_left(&tmp).is_empty();
        // Start over each time: the import either happened or left nothing
        // that counts (the next import removes its work directory).
        let _ = vmimg(&store, &["rm", "imported"]).output().unwrap();
        interrupted
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
    let tmp = store.join("tmp");
    kill_at_many_points(&store, &args, &tmp, |at| {
        assert_only_whole_images(&store);
        let work = work_left(&tmp);
        let builds: serde_json::Value =
            serde_json::from_str(&ok(vmimg(&store, &["builds", "list", "--json"]))).unwrap();
        let Some(build) = builds.as_array().unwrap().first() else {
            return false; // killed before the build had a record: nothing was made
        };
        let interrupted = build["status"] != "ready";
        if interrupted {
            assert!(
                ["pending", "pulling", "converting"].contains(&build["status"].as_str().unwrap()),
                "killed at {at}: {build}"
            );
            ok(vmimg(&store, &["builds", "recover"]));
        }
        let disk = ok(vmimg(&store, &args));
        let dump = dir.path().join("big");
        let _ = std::fs::remove_file(&dump);
        let dumped =
            Command::new("debugfs").arg("-R").arg(format!("dump /data/big {}", dump.display())).arg(&disk).output();
        assert!(dumped.unwrap().status.success());
        assert!(std::fs::read(&dump).unwrap() == big, "killed at {at}: the disk is not whole");
        assert!(Command::new("e2fsck").arg("-fn").arg(&disk).output().unwrap().status.success());
        // Start over, downloads included.
        let id = build["id"].as_str().unwrap();
        ok(vmimg(&store, &["builds", "rm", id]));
        ok(vmimg(&store, &["gc"]));
        interrupted && !work.is_empty()
    });
    let leftovers: Vec<_> = std::fs::read_dir(store.join("tmp")).unwrap().flatten().map(|e| e.file_name()).collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    assert!(std::fs::read_dir(store.join("layers/sha256")).unwrap().next().is_none(), "gc keeps no layer");
}
