//! `vmimg bundle export|import` and `vmimg image new` as a user meets them.

use serde_json::Value;
use std::io::Read;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::process::{Command, Output};

fn vmimg(store: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vmimg")).arg("--store").arg(store).args(args).output().unwrap()
}

fn ok(store: &Path, args: &[&str]) -> String {
    let out = vmimg(store, args);
    assert!(out.status.success(), "vmimg {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn fails(store: &Path, args: &[&str]) -> String {
    let out = vmimg(store, args);
    assert_eq!(out.status.code(), Some(1), "vmimg {args:?} should fail");
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.starts_with("vmimg: error: ") && stderr.lines().count() == 1, "{stderr}");
    stderr
}

/// A raw disk with random data around holes.
fn noisy_disk(path: &Path) -> Vec<u8> {
    let mut noise = vec![0u8; 3 << 20];
    std::fs::File::open("/dev/urandom").unwrap().read_exact(&mut noise).unwrap();
    let file = std::fs::File::create(path).unwrap();
    file.set_len(32 << 20).unwrap();
    file.write_all_at(&noise[..2 << 20], 0).unwrap();
    file.write_all_at(&noise[2 << 20..], 20 << 20).unwrap();
    std::fs::read(path).unwrap()
}

fn images(store: &Path) -> Vec<Value> {
    serde_json::from_str::<Value>(&ok(store, &["images", "--json"])).unwrap().as_array().unwrap().clone()
}

fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8(out.stdout).unwrap().split_whitespace().next().unwrap().to_owned()
}

#[test]
fn export_then_import_gives_the_same_disk_and_machine() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let original = noisy_disk(&dir.path().join("disk.img"));
    ok(&store, &["pull", dir.path().join("disk.img").to_str().unwrap()]);
    let name = images(&store)[0]["name"].as_str().unwrap().to_owned();

    let bundle = dir.path().join("out.tar.zst");
    assert_eq!(ok(&store, &["bundle", "export", &name, bundle.to_str().unwrap()]), bundle.to_str().unwrap());
    assert!(std::fs::metadata(&bundle).unwrap().len() < 4 << 20);
    let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().map(|e| e.file_name()).collect();
    assert_eq!(leftovers.len(), 3, "a temporary file was left beside the bundle: {leftovers:?}");

    let disk = ok(&store, &["bundle", "import", bundle.to_str().unwrap(), "--name", "copy"]);
    assert!(std::fs::read(&disk).unwrap() == original);
    let copy = images(&store).into_iter().find(|i| i["name"] == "local-copy").expect("the name the user gave lives under local-");
    assert_eq!(copy["source"]["kind"], "bundle");
    assert_eq!(copy["source_format"], "bundle");
    assert_eq!(copy["digest"], format!("sha256:{}", sha256(&bundle)));
    // The machine made at export travels with the bundle.
    let exported_again = dir.path().join("again.tar.zst");
    ok(&store, &["bundle", "export", "copy", exported_again.to_str().unwrap()]);
    let machine = |bundle: &Path| {
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!("zstd -dc {} | tar -xOf - machine.json", bundle.display()))
            .output()
            .unwrap();
        serde_json::from_slice::<Value>(&out.stdout).unwrap()
    };
    assert_eq!(machine(&bundle), machine(&exported_again));

    // Without --name the image is named after the file; a second import of it is refused.
    ok(&store, &["bundle", "import", bundle.to_str().unwrap()]);
    assert!(images(&store).iter().any(|i| i["name"] == "out"));
    let error = fails(&store, &["bundle", "import", bundle.to_str().unwrap()]);
    assert!(error.contains("an image named out exists"), "{error}");
    let error = fails(&store, &["bundle", "export", "missing", bundle.to_str().unwrap()]);
    assert!(error.contains("no image named"), "{error}");
    assert_eq!(std::fs::read(&bundle).unwrap().len() as u64, std::fs::metadata(&bundle).unwrap().len());
}

#[test]
fn a_hostile_bundle_leaves_nothing_in_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    std::fs::write(dir.path().join("disk.img"), vec![1u8; 1 << 20]).unwrap();
    std::fs::write(dir.path().join("machine.json"), b"{\"version\": 1}").unwrap();
    let made = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-u", "-b", "/etc/hostname", "-F", "raw"])
        .arg(dir.path().join("layer.qcow2"))
        .arg("1M")
        .status()
        .unwrap();
    assert!(made.success());
    let bundle = dir.path().join("evil.tar.zst");
    let packed = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "tar -cf - -C {} disk.img layer.qcow2 machine.json | zstd -q -o {}",
            dir.path().display(),
            bundle.display()
        ))
        .status()
        .unwrap();
    assert!(packed.success());
    let error = fails(&store, &["bundle", "import", bundle.to_str().unwrap()]);
    assert!(error.contains("evil.tar.zst") && error.contains("/etc/hostname"), "{error}");
    assert!(images(&store).is_empty());
    assert_eq!(std::fs::read_dir(store.join("tmp")).unwrap().count(), 0, "work was left in tmp/");
}

#[test]
fn a_blank_mutable_image_is_refused_for_export_and_rm_while_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let disk = ok(&store, &["image", "new", "builder", "--size", "1G"]);
    let meta = std::fs::metadata(&disk).unwrap();
    assert_eq!(meta.len(), 1 << 30);
    assert_eq!(meta.blocks(), 0, "a blank disk allocates nothing");
    let machine: Value =
        serde_json::from_slice(&std::fs::read(Path::new(&disk).with_file_name("machine.json")).unwrap()).unwrap();
    let mac = machine["mac"].as_str().unwrap();
    let first = u8::from_str_radix(&mac[..2], 16).unwrap();
    assert_eq!(first & 0b11, 0b10, "{mac} is not a locally administered unicast address");

    // The owner writes the disk in place.
    std::fs::OpenOptions::new().write(true).open(&disk).unwrap().write_all_at(b"installed", 1 << 20).unwrap();
    ok(&store, &["instance", "create", "builder", "--name", "vm1"]);
    let bundle = dir.path().join("builder.tar.zst");
    let error = fails(&store, &["bundle", "export", "builder", bundle.to_str().unwrap()]);
    assert!(error.contains("mutable and in use by instances (vm1)"), "{error}");
    assert!(!bundle.exists());
    let error = fails(&store, &["rm", "builder"]);
    assert!(error.contains("has instances (vm1)"), "{error}");

    ok(&store, &["instance", "rm", "vm1"]);
    ok(&store, &["bundle", "export", "builder", bundle.to_str().unwrap()]);
    let imported = ok(&store, &["bundle", "import", bundle.to_str().unwrap(), "--name", "built"]);
    assert!(std::fs::read(&imported).unwrap() == std::fs::read(&disk).unwrap());
    assert!(std::fs::metadata(&imported).unwrap().blocks() * 512 <= 64 << 10);

    let error = fails(&store, &["image", "new", "builder", "--size", "1G"]);
    assert!(error.contains("an image named builder exists"), "{error}");
    let error = fails(&store, &["image", "new", "../x", "--size", "1G"]);
    assert!(error.contains("not 1 to 64"), "{error}");
    std::fs::write(dir.path().join("bad.json"), b"{\"version\": 1, \"memory\": 0}").unwrap();
    let error = fails(
        &store,
        &["image", "new", "other", "--size", "1G", "--machine", dir.path().join("bad.json").to_str().unwrap()],
    );
    assert!(error.contains("memory"), "{error}");
}
