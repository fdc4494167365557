//! Container images to bootable disks, end to end: images made by umoci and
//! pushed by skopeo to a real registry (Debian's docker-registry on
//! 127.0.0.1), built by `vmimg build`/`pull` into ext4, erofs and cpio,
//! checked file by file with e2fsprogs' debugfs and GNU cpio, and booted
//! under QEMU with a Debian kernel.

mod common;

use common::{ok, vmimg};
use serde_json::Value;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use vmimg_testserver::RegistryServer;
use vmimg_testserver::guest::{self, BootSpec};
use vmimg_testserver::oci_image::{self, ImageSpec};

const MARKER: &str = "VMIMG-CONTAINER-BOOTED";

fn run(command: &mut Command) -> String {
    let out = command.output().unwrap();
    assert!(out.status.success(), "{command:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Every file of an ext4 image, copied out by debugfs (no mount needed).
fn ext4_tree(image: &Path, out: &Path) -> PathBuf {
    fs::create_dir_all(out).unwrap();
    run(Command::new("debugfs").arg("-R").arg(format!("rdump / {}", out.display())).arg(image));
    out.to_owned()
}

/// Every file of a cpio archive, extracted by GNU cpio.
fn cpio_tree(archive: &Path, out: &Path) -> PathBuf {
    fs::create_dir_all(out).unwrap();
    let file = fs::File::open(archive).unwrap();
    run(Command::new("cpio").args(["-idm", "--quiet", "--no-absolute-filenames"]).current_dir(out).stdin(file));
    out.to_owned()
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn busybox_image_boots_from_cpio_ext4_and_erofs() {
    let registry = RegistryServer::start();
    let tmp = tempfile::tempdir().unwrap();
    fs::set_permissions(tmp.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let (root, store) = (tmp.path().join("root"), tmp.path().join("store"));
    guest::busybox_rootfs(&root, MARKER, &["cat /etc/greeting"]).unwrap();
    fs::write(root.join("etc/greeting"), "hello from the container image\n").unwrap();
    let image = ImageSpec::new()
        .dir_layer(&root)
        .entrypoint(&["/sbin/init"])
        .env("GREETING=hello")
        .workdir("/")
        .push(&registry.host(), "test/busybox", "1")
        .unwrap();
    let source = format!("oci://{}/test/busybox:1", registry.host());

    // Both disks booted are built without root (the same as root's: see
    // an_unprivileged_build_makes_the_disk_a_root_build_makes).
    let initrd = build_as_user(tmp.path(), &source, &["--format", "cpio"]);
    assert!(initrd.ends_with("initrd.cpio"), "{}", initrd.display());
    let console = guest::boot(&BootSpec::new().initrd(&initrd).marker(MARKER)).unwrap();
    assert!(console.contains("hello from the container image"), "{console}");

    let record: Value = serde_json::from_str(&ok(&store, &["build", &source, "--json"])).unwrap();
    assert_eq!(record["format"], "ext4");
    assert_eq!(record["digest"], image.digest.as_str());
    assert_eq!(record["container"]["run"]["entrypoint"], serde_json::json!(["/sbin/init"]));
    assert_eq!(record["container"]["run"]["env"][0], "GREETING=hello");
    assert_eq!(record["container"]["systemd"], true, "/sbin/init is an init, as systemd's images have it");
    let disk = store.join("images").join(record["name"].as_str().unwrap()).join("disk.raw");
    run(Command::new("e2fsck").arg("-fn").arg(&disk));
    let disk = build_as_user(tmp.path(), &source, &[]);
    run(Command::new("e2fsck").arg("-fn").arg(&disk));
    let boot_initrd = tmp.path().join("boot-initrd.cpio");
    guest::disk_boot_initrd(&boot_initrd).unwrap();
    let spec = BootSpec::new().initrd(&boot_initrd).disk(&disk).append("root=/dev/vda rootfstype=ext4").marker(MARKER);
    let console = guest::boot(&spec).unwrap();
    assert!(console.contains("hello from the container image"), "{console}");
    let erofs = build_as_user(tmp.path(), &source, &["--format", "erofs"]);
    run(Command::new("fsck.erofs").arg(&erofs));
    let spec =
        BootSpec::new().initrd(&boot_initrd).disk(&erofs).append("root=/dev/vda rootfstype=erofs").marker(MARKER);
    let console = guest::boot(&spec).unwrap();
    assert!(console.contains("hello from the container image"), "{console}");
}

/// A base layer, and a second one that deletes a file, makes a directory
/// opaque and changes what was there.
fn two_layer_image(registry: &RegistryServer, tmp: &Path) -> String {
    let base = tmp.join("base");
    for (path, content) in [
        ("etc/motd", "old motd"),
        ("etc/keep", "kept"),
        ("var/lib/app/a", "a"),
        ("var/lib/app/sub/b", "b"),
        ("usr/bin/tool", "#!/bin/sh\necho tool\n"),
    ] {
        fs::create_dir_all(base.join(path).parent().unwrap()).unwrap();
        fs::write(base.join(path), content).unwrap();
    }
    fs::set_permissions(base.join("usr/bin/tool"), std::os::unix::fs::PermissionsExt::from_mode(0o4755)).unwrap();
    std::os::unix::fs::symlink("tool", base.join("usr/bin/alias")).unwrap();
    fs::hard_link(base.join("etc/keep"), base.join("etc/keep-link")).unwrap();
    std::os::unix::fs::chown(base.join("etc/keep"), Some(1000), Some(1001)).unwrap();

    let upper = tmp.join("upper");
    fs::create_dir_all(upper.join("var/lib/app")).unwrap();
    fs::write(upper.join("var/lib/app/c"), "c from the top layer").unwrap();
    fs::create_dir_all(upper.join("etc")).unwrap();
    fs::write(upper.join("etc/new"), "new").unwrap();
    oci_image::whiteout(&upper, "etc/motd").unwrap();
    oci_image::opaque(&upper, "var/lib/app").unwrap();
    let upper_tar = tmp.join("upper.tar");
    oci_image::layer_tar(&upper, &upper_tar).unwrap();
    ImageSpec::new()
        .dir_layer(&base)
        .tar_layer(&upper_tar)
        .cmd(&["/usr/bin/tool"])
        .user("1000:1001")
        .workdir("/var/lib/app")
        .push(&registry.host(), "test/layers", "v1")
        .unwrap();
    format!("oci://{}/test/layers:v1", registry.host())
}

/// The tree the two layers make, checked file by file; `mode_of` gives a
/// file's permission bits as the image has them (debugfs' rdump drops
/// setuid bits when it copies files out).
fn check_two_layer_tree(root: &Path, mode_of: impl Fn(&str) -> u32) {
    assert!(!root.join("etc/motd").exists(), "the whiteout removed etc/motd");
    assert_eq!(read(&root.join("etc/keep")), "kept");
    assert_eq!(read(&root.join("etc/new")), "new");
    let mut app: Vec<_> = fs::read_dir(root.join("var/lib/app")).unwrap().map(|e| e.unwrap().file_name()).collect();
    app.sort();
    assert_eq!(app, ["c"], "the opaque directory keeps only the top layer's entries");
    assert_eq!(read(&root.join("var/lib/app/c")), "c from the top layer");
    assert_eq!(fs::read_link(root.join("usr/bin/alias")).unwrap(), Path::new("tool"));
    assert_eq!(mode_of("usr/bin/tool"), 0o4755);
    let keep = fs::metadata(root.join("etc/keep")).unwrap();
    assert_eq!((keep.uid(), keep.gid()), (1000, 1001));
}

#[test]
fn two_layers_with_whiteouts_in_every_format() {
    let registry = RegistryServer::start();
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let source = two_layer_image(&registry, tmp.path());

    fs::set_permissions(tmp.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let stat =
        |image: &Path, path: &str| run(Command::new("debugfs").arg("-R").arg(format!("stat /{path}")).arg(image));
    let check_ext4 = |image: &Path, out: &str| {
        let mode = |path: &str| {
            let stat = stat(image, path);
            let mode = stat.split("Mode:").nth(1).and_then(|m| m.split_whitespace().next()).unwrap();
            u32::from_str_radix(mode, 8).unwrap()
        };
        check_two_layer_tree(&ext4_tree(image, &tmp.path().join(out)), mode);
        // Hard links stay one inode in the image.
        assert!(stat(image, "etc/keep").contains("Links: 2"), "{}", stat(image, "etc/keep"));
    };
    let check_cpio = |archive: &Path, out: &str| {
        let extracted = cpio_tree(archive, &tmp.path().join(out));
        check_two_layer_tree(&extracted, |path| fs::metadata(extracted.join(path)).unwrap().mode() & 0o7777);
    };
    let ext4 = PathBuf::from(ok(&store, &["build", &source]));
    check_ext4(&ext4, "ext4");
    let cpio = PathBuf::from(ok(&store, &["build", &source, "--format", "cpio"]));
    check_cpio(&cpio, "cpio");
    // Without root, the layers give the same trees.
    check_ext4(&build_as_user(tmp.path(), &source, &[]), "user-ext4");
    check_cpio(&build_as_user(tmp.path(), &source, &["--format", "cpio"]), "user-cpio");

    // An ext4 image takes instances like any disk; an initramfs is no disk.
    let key = |path: &Path| path.parent().unwrap().file_name().unwrap().to_str().unwrap().to_owned();
    let instance = PathBuf::from(ok(&store, &["instance", "create", &key(&ext4)]));
    run(Command::new("qemu-img").arg("check").arg(&instance));
    let refused = vmimg(&store, &["instance", "create", &key(&cpio)]);
    assert!(String::from_utf8_lossy(&refused.stderr).contains("initramfs, not a disk"), "{refused:?}");

    let erofs = PathBuf::from(ok(&store, &["build", &source, "--format", "erofs"]));
    run(Command::new("fsck.erofs").arg(&erofs));
    let user_erofs = build_as_user(tmp.path(), &source, &["--format", "erofs"]);
    assert!(fs::read(&erofs).unwrap() == fs::read(&user_erofs).unwrap(), "root's erofs and the user's differ");

    // The layers were downloaded once, for the first build.
    let builds: Value = serde_json::from_str(&ok(&store, &["builds", "list", "--json"])).unwrap();
    let pulled: Vec<u64> = builds.as_array().unwrap().iter().map(|b| b["bytes_pulled"].as_u64().unwrap()).collect();
    assert_eq!(pulled.iter().filter(|&&n| n > 0).count(), 1, "{builds:#}");
    let usage: Value = serde_json::from_str(&ok(&store, &["du", "--json"])).unwrap();
    assert!(usage["layers"].as_u64().unwrap() > 0 && usage["images"].as_u64().unwrap() > 0, "{usage}");

    let record: Value = serde_json::from_str(&ok(&store, &["build", &source, "--json"])).unwrap();
    let run_config = &record["container"]["run"];
    assert_eq!(
        (run_config["user"].as_str(), run_config["working_dir"].as_str()),
        (Some("1000:1001"), Some("/var/lib/app"))
    );
    assert_eq!(record["container"]["systemd"], false);
    assert_eq!(record["container"]["layers"].as_array().unwrap().len(), 2);
}

/// A container image in a local OCI layout, and in a tar of it, built here
/// and never pushed, becomes a disk as one from a registry does.
#[test]
fn container_images_in_local_layouts_and_archives_become_disks() {
    let tmp = tempfile::tempdir().unwrap();
    let layer = tmp.path().join("layer");
    fs::create_dir_all(layer.join("etc")).unwrap();
    fs::write(layer.join("etc/hello"), "from a layout\n").unwrap();
    let layout = tmp.path().join("layout");
    ImageSpec::new().dir_layer(&layer).cmd(&["/bin/sh"]).build_layout(&layout, "v1").unwrap();
    let archive = tmp.path().join("layout.tar");
    run(Command::new("tar").arg("-cf").arg(&archive).arg("-C").arg(&layout).arg("."));
    let store = tmp.path().join("store");

    let disk = ok(&store, &["pull", &format!("oci:{}:v1", layout.display())]);
    run(Command::new("e2fsck").arg("-fn").arg(disk.trim()));
    assert_eq!(read(&ext4_tree(Path::new(disk.trim()), &tmp.path().join("ext4")).join("etc/hello")), "from a layout\n");
    let initrd = ok(&store, &["build", "--format", "cpio", &format!("oci-archive:{}:v1", archive.display())]);
    assert_eq!(
        read(&cpio_tree(Path::new(initrd.trim()), &tmp.path().join("cpio")).join("etc/hello")),
        "from a layout\n"
    );
    let images: Value = serde_json::from_str(&ok(&store, &["images", "--json"])).unwrap();
    let kinds: Vec<_> = images.as_array().unwrap().iter().map(|i| i["source"]["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["layout", "layout"]);

    // --json says where the disk is and whether it was built just now, as a cloud image's pull does.
    let erofs_source = ["build", "--format", "erofs", &format!("oci:{}:v1", layout.display()), "--json"];
    let (built, again) = (ok(&store, &erofs_source), ok(&store, &erofs_source));
    let (built, again): (Value, Value) = (serde_json::from_str(&built).unwrap(), serde_json::from_str(&again).unwrap());
    assert_eq!((built["cached"].as_bool(), again["cached"].as_bool()), (Some(false), Some(true)), "{again:#}");
    assert!(Path::new(built["path"].as_str().unwrap()).is_file(), "{built:#}");
    assert_eq!(built["path"], again["path"]);
    let pulled: Value =
        serde_json::from_str(&ok(&store, &["pull", &format!("oci:{}:v1", layout.display()), "--json"])).unwrap();
    assert_eq!((pulled["cached"].as_bool(), pulled["path"].as_str()), (Some(true), Some(disk.trim())), "{pulled:#}");
    let builds: Value = serde_json::from_str(&ok(&store, &["builds", "list", "--json"])).unwrap();
    assert!(builds[0]["reference"].as_str().unwrap().starts_with("oci"), "{builds:#}");
}

#[test]
fn an_empty_ext4_disk() {
    let tmp = tempfile::tempdir().unwrap();
    let disk = tmp.path().join("volume.ext4");
    let printed = ok(&tmp.path().join("store"), &["disk", "new-ext4", disk.to_str().unwrap(), "--size", "256M"]);
    assert_eq!(printed, disk.to_str().unwrap());
    let meta = fs::metadata(&disk).unwrap();
    assert_eq!(meta.len(), 256 << 20);
    assert!(meta.blocks() * 512 < 32 << 20, "sparse: {} bytes allocated", meta.blocks() * 512);
    run(Command::new("e2fsck").arg("-fn").arg(&disk));
    let out = vmimg(&tmp.path().join("store"), &["disk", "new-ext4", disk.to_str().unwrap(), "--size", "256M"]);
    assert!(!out.status.success(), "an existing disk is not overwritten");
}

#[test]
fn a_missing_image_fails_before_any_build_is_queued() {
    let registry = RegistryServer::start();
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let out = vmimg(&store, &["build", &format!("oci://{}/test/none:v1", registry.host())]);
    assert_eq!(out.status.code(), Some(3), "not found");
    let error = String::from_utf8_lossy(&out.stderr);
    assert!(error.contains("not found"), "{error}");
    let builds: Value = serde_json::from_str(&ok(&store, &["builds", "list", "--json"])).unwrap();
    assert_eq!(builds, serde_json::json!([]), "a reference that names nothing queues no build");
}

#[test]
fn a_terminal_shows_the_build_stage() {
    let registry = RegistryServer::start();
    let tmp = tempfile::tempdir().unwrap();
    let layer = tmp.path().join("layer");
    fs::create_dir_all(layer.join("data")).unwrap();
    let mut noise = vec![0u8; 16 << 20];
    std::io::Read::read_exact(&mut fs::File::open("/dev/urandom").unwrap(), &mut noise).unwrap();
    fs::write(layer.join("data/noise"), noise).unwrap();
    ImageSpec::new().dir_layer(&layer).push(&registry.host(), "test/tty", "1").unwrap();
    let command = format!(
        "{} --store {} build oci://{}/test/tty:1",
        env!("CARGO_BIN_EXE_vmimg"),
        tmp.path().join("store").display(),
        registry.host()
    );
    // script(1) runs the command on a pseudo-terminal and copies what it draws.
    let out = Command::new("script").args(["-qec", &command, "/dev/null"]).output().unwrap();
    let screen = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{screen}");
    assert!(screen.contains("test/tty:1: ext4 disk ready"), "no status line: {screen}");
    assert!(screen.contains("test/tty:1 pulling") || screen.contains("test/tty:1 converting"), "no stage: {screen}");
}

/// A layer deeper than vmimg-rootfs' depth bound fails the build with the
/// entry, its depth and the bound, before any disk tool runs; no image is
/// made and the build's work is gone.
#[test]
fn a_layer_too_deep_fails_the_build_and_leaves_nothing() {
    use vmimg_rootfs::depth::MAX_DEPTH;
    let registry = RegistryServer::start();
    let tmp = tempfile::tempdir().unwrap();
    let layer = tmp.path().join("layer");
    let deepest = "d/".repeat(MAX_DEPTH) + "f";
    fs::create_dir_all(layer.join(&deepest).parent().unwrap()).unwrap();
    fs::write(layer.join(&deepest), "one level too deep").unwrap();
    ImageSpec::new().dir_layer(&layer).push(&registry.host(), "test/deep", "1").unwrap();
    let store = tmp.path().join("store");
    let out = vmimg(&store, &["build", &format!("oci://{}/test/deep:1", registry.host())]);
    assert_eq!(out.status.code(), Some(6), "refused");
    let error = String::from_utf8_lossy(&out.stderr);
    let said = format!("{deepest}: {} levels below the root, deeper than the {MAX_DEPTH}", MAX_DEPTH + 1);
    assert!(error.contains(&said), "{error}");
    let builds: Value = serde_json::from_str(&ok(&store, &["builds", "list", "--json"])).unwrap();
    assert_eq!(builds[0]["status"], "failed");
    assert!(builds[0]["error"].as_str().unwrap().contains(&said), "{builds:#}");
    for dir in ["images", "tmp"] {
        let left: Vec<_> = fs::read_dir(store.join(dir)).unwrap().flatten().map(|e| e.file_name()).collect();
        assert!(left.is_empty(), "{dir}: {left:?}");
    }
}

/// A tree with what only root can make or read back: owners, setuid and
/// sticky modes, device nodes, a FIFO, hard links, symlinks, xattrs
/// (`user.*` and a file capability), set mtimes.
fn privileged_tree(root: &Path) {
    let p = |rel: &str| root.join(rel);
    for dir in ["bin", "dev", "etc", "home/app", "tmp"] {
        fs::create_dir_all(p(dir)).unwrap();
    }
    fs::write(p("bin/su"), "#!/bin/sh\n").unwrap();
    fs::set_permissions(p("bin/su"), std::os::unix::fs::PermissionsExt::from_mode(0o4755)).unwrap();
    fs::hard_link(p("bin/su"), p("bin/su-again")).unwrap();
    std::os::unix::fs::symlink("su", p("bin/sh")).unwrap();
    fs::write(p("bin/ping"), "ping").unwrap();
    fs::write(p("etc/shadow"), "root:*:19000::::::\n").unwrap();
    fs::set_permissions(p("etc/shadow"), std::os::unix::fs::PermissionsExt::from_mode(0o640)).unwrap();
    std::os::unix::fs::chown(p("etc/shadow"), Some(0), Some(42)).unwrap();
    fs::write(p("home/app/data"), "the app's").unwrap();
    std::os::unix::fs::chown(p("home/app/data"), Some(1000), Some(1000)).unwrap();
    std::os::unix::fs::chown(p("home/app"), Some(1000), Some(1000)).unwrap();
    fs::set_permissions(p("tmp"), std::os::unix::fs::PermissionsExt::from_mode(0o1777)).unwrap();
    run(Command::new("mknod").args(["-m", "666"]).arg(p("dev/null")).args(["c", "1", "3"]));
    run(Command::new("mknod").args(["-m", "660"]).arg(p("dev/vda")).args(["b", "254", "0"]));
    run(Command::new("mkfifo").args(["-m", "600"]).arg(p("dev/initctl")));
    run(Command::new("setfattr").args(["-n", "user.origin", "-v", "layer"]).arg(p("home/app/data")));
    // cap_net_raw+ep, as the kernel stores it (VFS_CAP_REVISION_2).
    let capability = "0x0100000200200000000000000000000000000000";
    run(Command::new("setfattr").args(["-n", "security.capability", "-v", capability]).arg(p("bin/ping")));
    run(Command::new("touch").args(["-h", "-d", "2024-01-02 03:04:05"]).arg(p("bin/sh")).arg(p("etc/shadow")));
}

/// A user id and group id the test makes up: no account has them (neither
/// is in /etc/passwd or /etc/group), so the build gets no name, no home
/// and no group of any account.
fn unknown_user() -> u32 {
    let taken = |file: &str| -> Vec<u32> {
        let text = fs::read_to_string(file).unwrap_or_default();
        text.lines().filter_map(|line| line.split(':').nth(2)?.parse().ok()).collect()
    };
    let (users, groups) = (taken("/etc/passwd"), taken("/etc/group"));
    (40_000 + std::process::id() % 10_000..).find(|id| !users.contains(id) && !groups.contains(id)).unwrap()
}

/// `vmimg build SOURCE ARGS` as a user no account names ([`unknown_user`]),
/// with no groups and a store of its own under `tmp`, vmimg copied where
/// it may run it; the image's path, checked to be the user's, with no
/// warning.
fn build_as_user(tmp: &Path, source: &str, args: &[&str]) -> PathBuf {
    let (user_store, binary) = (tmp.join("user-store"), tmp.join("vmimg"));
    let user = unknown_user();
    if !binary.exists() {
        fs::create_dir(&user_store).unwrap();
        fs::copy(env!("CARGO_BIN_EXE_vmimg"), &binary).unwrap();
    }
    std::os::unix::fs::chown(&user_store, Some(user), Some(user)).unwrap();
    let out = Command::new("setpriv")
        .args([format!("--reuid={user}"), format!("--regid={user}"), "--clear-groups".into(), "--".into()])
        .arg(&binary)
        .arg("--store")
        .arg(&user_store)
        .args(["build", source])
        .args(args)
        .env("DOCKER_CONFIG", "/nonexistent/vmimg-test")
        .env("HOME", &user_store)
        .output()
        .expect("setpriv (util-linux)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "as uid {user}: {stderr}");
    assert!(!stderr.contains("warning"), "no warning on the unprivileged path: {stderr}");
    let image = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    assert_eq!(fs::metadata(&image).unwrap().uid(), user);
    image
}

/// Where the dynamic loader finds `library` (`ldconfig -p`).
fn library_path(library: &str) -> String {
    let cache = run(Command::new("ldconfig").arg("-p"));
    let line = cache.lines().find(|l| l.trim_start().starts_with(&format!("{library} "))).expect(library);
    line.rsplit(" => ").next().unwrap().trim().to_owned()
}

/// A host whose mke2fs cannot read a tar (libarchive.so.13, which mke2fs
/// loads for `-d -`, hidden by /dev/null in a mount namespace of its own):
/// root's build goes through a directory and is exact; a user's is
/// refused with what to install, rather than made with the user's owners.
#[test]
fn without_a_tar_reading_mke2fs_only_root_builds_ext4() {
    let registry = RegistryServer::start();
    let tmp = tempfile::tempdir().unwrap();
    fs::set_permissions(tmp.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let source = two_layer_image(&registry, tmp.path());
    let hidden = format!("mount --bind /dev/null {}", library_path("libarchive.so.13"));
    let (binary, user) = (tmp.path().join("vmimg"), unknown_user());
    fs::copy(env!("CARGO_BIN_EXE_vmimg"), &binary).unwrap();
    let (store, user_store) = (tmp.path().join("store"), tmp.path().join("user-store"));
    fs::create_dir(&user_store).unwrap();
    std::os::unix::fs::chown(&user_store, Some(user), Some(user)).unwrap();
    let in_namespace = |command: String| {
        let script = format!("{hidden} && DOCKER_CONFIG=/nonexistent/vmimg-test exec {command}");
        Command::new("unshare").args(["-m", "--propagation", "private", "sh", "-c", &script]).output().unwrap()
    };
    let as_root = in_namespace(format!("{} --store {} build {source}", binary.display(), store.display()));
    assert!(as_root.status.success(), "{}", String::from_utf8_lossy(&as_root.stderr));
    let disk = PathBuf::from(String::from_utf8_lossy(&as_root.stdout).trim());
    run(Command::new("e2fsck").arg("-fn").arg(&disk));
    let mode = |path: &str| {
        let stat = run(Command::new("debugfs").arg("-R").arg(format!("stat /{path}")).arg(&disk));
        let mode = stat.split("Mode:").nth(1).and_then(|m| m.split_whitespace().next()).unwrap();
        u32::from_str_radix(mode, 8).unwrap()
    };
    check_two_layer_tree(&ext4_tree(&disk, &tmp.path().join("root-tree")), mode);

    let as_user = in_namespace(format!(
        "setpriv --reuid={user} --regid={user} --clear-groups -- {} --store {} build {source}",
        binary.display(),
        user_store.display()
    ));
    let stderr = String::from_utf8_lossy(&as_user.stderr);
    assert_eq!(as_user.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("cannot build an ext4 disk without root") && stderr.contains("libarchive13"), "{stderr}");
    assert!(!stderr.contains("warning"), "{stderr}");
    let images: Vec<_> = fs::read_dir(user_store.join("images")).unwrap().collect();
    assert!(images.is_empty(), "no disk made: {images:?}");
}

#[test]
fn an_unprivileged_build_makes_the_disk_a_root_build_makes() {
    use vmimg_testserver::mounts::{Mount, skip_missing};
    let registry = RegistryServer::start();
    let tmp = tempfile::tempdir().unwrap();
    fs::set_permissions(tmp.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let tree = tmp.path().join("tree");
    privileged_tree(&tree);
    ImageSpec::new().dir_layer(&tree).push(&registry.host(), "test/exact", "1").unwrap();
    let source = format!("oci://{}/test/exact:1", registry.host());
    let root_store = tmp.path().join("root-store");

    // cpio: both archives extracted by GNU cpio (as root), which keeps no xattrs.
    let as_root = ok(&root_store, &["-q", "build", &source, "--format", "cpio"]);
    let as_user = build_as_user(tmp.path(), &source, &["--format", "cpio"]);
    let describe = |archive: &Path, dir: &str| {
        vmimg_testserver::trees::describe_cpio_extracted(&cpio_tree(archive, &tmp.path().join(dir)))
    };
    let want = describe(Path::new(as_root.trim()), "root-cpio");
    assert_eq!(describe(&as_user, "user-cpio"), want, "the same archive whoever builds it");
    assert_privileged_tree(&want, false);

    // erofs: the same bytes, and exact.
    let as_root = PathBuf::from(ok(&root_store, &["-q", "build", &source, "--format", "erofs"]));
    let as_user = build_as_user(tmp.path(), &source, &["--format", "erofs"]);
    assert!(fs::read(&as_root).unwrap() == fs::read(&as_user).unwrap(), "the same erofs image whoever builds it");
    run(Command::new("fsck.erofs").arg(&as_user));
    let erofs = match Mount::image_read_only(&as_user, "erofs") {
        Ok(mounted) => vmimg_testserver::trees::describe(mounted.path()),
        Err(e) => return skip_missing(format!("mounting an erofs image: {e}")),
    };

    let as_root = PathBuf::from(ok(&root_store, &["-q", "build", &source]));
    let as_user = build_as_user(tmp.path(), &source, &[]);
    run(Command::new("e2fsck").arg("-fn").arg(&as_user));
    let (want, got) = match (Mount::image_read_only(&as_root, "ext4"), Mount::image_read_only(&as_user, "ext4")) {
        (Ok(root), Ok(user)) => {
            (vmimg_testserver::trees::describe(root.path()), vmimg_testserver::trees::describe(user.path()))
        }
        (Err(e), _) | (_, Err(e)) => return skip_missing(format!("mounting an ext4 image: {e}")),
    };
    assert_eq!(got, want, "the same tree whoever builds it");
    assert_privileged_tree(&want, true);
    assert_privileged_tree(&erofs, true);
}

/// `tree` (as `describe` gives it) holds what `privileged_tree` made, its
/// xattrs too when `xattrs`.
fn assert_privileged_tree(tree: &[String], xattrs: bool) {
    let entry = |path: &str| tree.iter().find(|e| e.starts_with(&format!("{path} "))).unwrap().clone();
    assert!(entry("bin/su").starts_with("bin/su 104755 0:0") && entry("bin/su").contains(" 2 "), "{tree:#?}");
    assert!(entry("bin/su-again").starts_with("bin/su-again 104755 0:0"), "{tree:#?}");
    assert!(entry("dev/null").starts_with("dev/null 20666 0:0 0 [] None 259 1 "), "{tree:#?}");
    assert!(entry("dev/vda").starts_with("dev/vda 60660 0:0 0 [] None 65024 1 "), "{tree:#?}");
    assert!(entry("dev/initctl").starts_with("dev/initctl 10600 0:0"), "{tree:#?}");
    assert!(entry("etc/shadow").starts_with("etc/shadow 100640 0:42") && entry("etc/shadow").contains(" 1704164645 "));
    assert!(entry("tmp").starts_with("tmp 41777 0:0"), "{tree:#?}");
    assert!(entry("home/app").starts_with("home/app 40755 1000:1000"), "{tree:#?}");
    assert!(entry("home/app/data").starts_with("home/app/data 100644 1000:1000"), "{tree:#?}");
    assert_eq!(entry("home/app/data").contains("user.origin"), xattrs, "{tree:#?}");
    assert_eq!(entry("bin/ping").contains("security.capability"), xattrs, "{tree:#?}");
}

/// A build that fills its disk while it downloads a layer fails in one
/// line (exit 9) that says what the partial layer keeps, where, and how to
/// resume or drop it; `gc --partials` frees it. Needs root (a 16 MiB tmpfs
/// holds the store).
#[test]
fn a_full_disk_says_what_the_partial_layer_keeps() {
    use std::io::Read;
    let mount = match vmimg_testserver::mounts::Mount::tmpfs_of(16 << 20) {
        Ok(mount) => mount,
        Err(why) => return vmimg_testserver::mounts::skip_missing(format!("a small tmpfs (root): {why}")),
    };
    let registry = RegistryServer::start();
    let tmp = tempfile::tempdir().unwrap();
    let tree = tmp.path().join("tree");
    fs::create_dir(&tree).unwrap();
    let mut noise = vec![0u8; 32 << 20];
    fs::File::open("/dev/urandom").unwrap().read_exact(&mut noise).unwrap();
    fs::write(tree.join("noise"), noise).unwrap();
    ImageSpec::new().dir_layer(&tree).push(&registry.host(), "test/big", "1").unwrap();
    let store = mount.path().join("store");

    let out = vmimg(&store, &["-q", "build", &format!("oci://{}/test/big:1", registry.host())]);
    let (code, line) = common::error_line(&out);
    assert_eq!(code, 9, "{line}");
    let partials: Vec<PathBuf> = fs::read_dir(store.join("tmp"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "part"))
        .collect();
    let [partial] = &partials[..] else { panic!("one partial layer: {partials:?}") };
    let kept = fs::metadata(partial).unwrap().blocks() * 512;
    let expected = format!(
        "the partial download keeps {} in {}; free space and build again to resume, or drop it with `vmimg gc \
         --partials`",
        vmimg_disk::format_size(kept),
        partial.display()
    );
    assert!(line.contains("No space left on device") && line.contains(&expected), "{line}");
    ok(&store, &["gc", "--partials"]);
    assert!(!partial.exists(), "gc --partials drops the partial layer");
}
