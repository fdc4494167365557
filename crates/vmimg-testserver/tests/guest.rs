//! The boot harness works: a busybox guest boots from a GNU cpio
//! initramfs, from an ext4 and an erofs root disk through the disk initrd,
//! and umoci + skopeo push the images tests describe.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Instant;
use vmimg_testserver::RegistryServer;
use vmimg_testserver::guest::{self, BootSpec};
use vmimg_testserver::oci_image::{self, ImageSpec};

const MARKER: &str = "VMIMG-GUEST-OK";

/// A busybox root in `dir` whose init shows /etc/greeting and how / is mounted.
fn rootfs(dir: &Path) {
    guest::busybox_rootfs(dir, MARKER, &["cat /etc/greeting", "grep ' / ' /proc/mounts"]).unwrap();
    fs::write(dir.join("etc/greeting"), "hello from the guest\n").unwrap();
}

fn timed_boot(what: &str, spec: &BootSpec) -> String {
    let started = Instant::now();
    let console = guest::boot(spec).unwrap_or_else(|e| panic!("{what}: {e}"));
    eprintln!("{what}: booted in {:.1} s ({})", started.elapsed().as_secs_f64(), guest::accel());
    assert!(console.contains(MARKER), "{what}: {console}");
    assert!(console.contains("hello from the guest"), "{what}: {console}");
    console
}

#[test]
fn busybox_boots_from_a_cpio_initramfs() {
    let tmp = tempfile::tempdir().unwrap();
    rootfs(&tmp.path().join("root"));
    let initrd = tmp.path().join("initrd.cpio");
    guest::cpio_initramfs(&tmp.path().join("root"), &initrd).unwrap();
    timed_boot("initramfs", &BootSpec::new().initrd(&initrd).marker(MARKER));
}

#[test]
fn busybox_boots_from_an_ext4_root_disk() {
    let tmp = tempfile::tempdir().unwrap();
    rootfs(&tmp.path().join("root"));
    let disk = tmp.path().join("root.ext4");
    guest::ext4_image(&tmp.path().join("root"), &disk, 32).unwrap();
    let initrd = tmp.path().join("initrd.cpio");
    let modules = guest::disk_boot_initrd(&initrd).unwrap();
    for needed in ["virtio_pci", "virtio_blk", "crc32c_generic", "jbd2", "ext4"] {
        assert!(modules.iter().any(|m| m == needed), "{needed} not in {modules:?}");
    }
    let spec = BootSpec::new().initrd(&initrd).disk(&disk).append("root=/dev/vda rootfstype=ext4").marker(MARKER);
    let console = timed_boot("ext4 root", &spec);
    assert!(console.contains("/dev/vda / ext4 rw"), "{console}");
}

#[test]
fn busybox_boots_from_an_erofs_root_disk() {
    let tmp = tempfile::tempdir().unwrap();
    rootfs(&tmp.path().join("root"));
    let disk = tmp.path().join("root.erofs");
    guest::erofs_image(&tmp.path().join("root"), &disk).unwrap();
    let initrd = tmp.path().join("initrd.cpio");
    guest::disk_boot_initrd(&initrd).unwrap();
    let spec = BootSpec::new().initrd(&initrd).disk(&disk).append("root=/dev/vda rootfstype=erofs ro").marker(MARKER);
    let console = timed_boot("erofs root", &spec);
    assert!(console.contains("/dev/vda / erofs ro"), "{console}");
}

#[test]
fn a_missing_root_fails_with_the_initrd_message() {
    let tmp = tempfile::tempdir().unwrap();
    let initrd = tmp.path().join("initrd.cpio");
    guest::disk_boot_initrd(&initrd).unwrap();
    let err = guest::boot(&BootSpec::new().initrd(&initrd).marker(MARKER)).unwrap_err();
    assert!(err.contains("vmimg-initrd: no block device /dev/vda"), "{err}");
}

fn skopeo(args: &[&str]) -> String {
    let out = Command::new("skopeo").args(args).output().unwrap();
    assert!(out.status.success(), "skopeo {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn a_two_layer_image_is_pushed_with_its_config() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("base");
    fs::create_dir_all(base.join("etc")).unwrap();
    fs::write(base.join("etc/keep"), "kept\n").unwrap();
    fs::write(base.join("etc/gone"), "deleted above\n").unwrap();
    let upper = tmp.path().join("upper");
    fs::create_dir_all(upper.join("etc")).unwrap();
    fs::write(upper.join("etc/new"), "added\n").unwrap();
    oci_image::whiteout(&upper, "etc/gone").unwrap();
    let upper_tar = tmp.path().join("upper.tar");
    oci_image::layer_tar(&upper, &upper_tar).unwrap();

    let registry = RegistryServer::start();
    let image = ImageSpec::new()
        .dir_layer(&base)
        .tar_layer(&upper_tar)
        .entrypoint(&["/sbin/init", "--verbose"])
        .cmd(&["arg"])
        .env("GREETING=hello")
        .workdir("/srv")
        .user("1000:1000")
        .push(&registry.host(), "test/two-layers", "v1")
        .unwrap();
    assert_eq!(image.reference, format!("{}/test/two-layers:v1", registry.host()));
    assert!(image.digest.starts_with("sha256:") && image.digest.len() == 71, "{}", image.digest);

    let docker = format!("docker://{}", image.reference);
    let inspect = |what: &str| skopeo(&["inspect", "--tls-verify=false", "--format", what, &docker]);
    assert_eq!(inspect("{{len .Layers}}").trim(), "2");
    assert_eq!(inspect("{{.Digest}}").trim(), image.digest);
    let config: String = skopeo(&["inspect", "--tls-verify=false", "--config", &docker]).split_whitespace().collect();
    for expected in [
        r#""Entrypoint":["/sbin/init","--verbose"]"#,
        r#""Cmd":["arg"]"#,
        r#""WorkingDir":"/srv""#,
        r#""User":"1000:1000""#,
        r#""GREETING=hello""#,
    ] {
        assert!(config.contains(expected), "{expected} not in {config}");
    }

    // The tar layer went in as it was: its whiteout is an entry of the top layer.
    let pulled = tmp.path().join("pulled");
    skopeo(&["copy", "--quiet", "--src-tls-verify=false", &docker, &format!("dir:{}", pulled.display())]);
    let layer = inspect("{{index .Layers 1}}");
    let blob = pulled.join(layer.trim().trim_start_matches("sha256:"));
    let list = Command::new("tar").arg("-tzf").arg(&blob).output().unwrap();
    let list = String::from_utf8(list.stdout).unwrap();
    assert!(list.lines().any(|l| l == "etc/.wh.gone"), "{list}");
    assert!(list.lines().any(|l| l == "etc/new"), "{list}");
}
