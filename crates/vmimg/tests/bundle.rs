//! `vmimg bundle export|import` and `vmimg image new` as a user meets them.

mod common;

use serde_json::Value;
use std::io::Read;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::process::{Command, Output};

fn vmimg(store: &Path, args: &[&str]) -> Output {
    common::vmimg(store, args)
}

fn ok(store: &Path, args: &[&str]) -> String {
    let out = vmimg(store, args);
    assert!(out.status.success(), "vmimg {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn fails(store: &Path, args: &[&str]) -> String {
    let out = vmimg(store, args);
    assert!(matches!(out.status.code(), Some(1..=9)), "vmimg {args:?} should fail: {:?}", out.status);
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
    let copy = images(&store)
        .into_iter()
        .find(|i| i["name"] == "local-copy")
        .expect("the name the user gave lives under local-");
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
    assert!(images(&store).iter().any(|i| i["name"] == "local-out"));
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
    assert!(error.contains("has instances (vm1)") && error.contains("--force"), "{error}");
    assert_eq!(vmimg(&store, &["rm", "builder"]).status.code(), Some(5), "in use");
    assert_eq!(vmimg(&store, &["bundle", "export", "builder", "x.tar.zst"]).status.code(), Some(4), "a conflict");

    ok(&store, &["instance", "rm", "vm1"]);
    ok(&store, &["bundle", "export", "builder", bundle.to_str().unwrap()]);
    let imported = ok(&store, &["bundle", "import", bundle.to_str().unwrap(), "--name", "built"]);
    assert!(std::fs::read(&imported).unwrap() == std::fs::read(&disk).unwrap());
    assert!(std::fs::metadata(&imported).unwrap().blocks() * 512 <= 64 << 10);

    let error = fails(&store, &["image", "new", "builder", "--size", "1G"]);
    assert!(error.contains("an image named builder exists"), "{error}");
    assert_eq!(vmimg(&store, &["image", "new", "builder", "--size", "1G"]).status.code(), Some(4), "exists");
    let error = fails(&store, &["image", "new", "../x", "--size", "1G"]);
    assert!(error.contains("not 1 to 64"), "{error}");
    assert_eq!(vmimg(&store, &["image", "new", "../x", "--size", "1G"]).status.code(), Some(2), "invalid");
    std::fs::write(dir.path().join("bad.json"), b"{\"version\": 1, \"memory\": 0}").unwrap();
    let error = fails(
        &store,
        &["image", "new", "other", "--size", "1G", "--machine", dir.path().join("bad.json").to_str().unwrap()],
    );
    assert!(error.contains("memory"), "{error}");
    let error = fails(&store, &["image", "new", "other", "--size", "1G", "--machine", "/dev/zero"]);
    assert!(error.contains("larger than"), "an endless machine.json is refused, not read whole: {error}");
}

/// splitmix64: reproducible numbers from a seed.
fn next(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A 16 MiB raw disk from `seed`: 512 KiB of noise (stored in raw zstd
/// blocks) and 1 MiB of words (compressed blocks) around holes.
fn seeded_disk(path: &Path, seed: u64) -> Vec<u8> {
    let mut state = seed;
    let noise: Vec<u8> = (0..512 << 10).map(|_| next(&mut state) as u8).collect();
    let words = ["disk ", "image ", "bundle ", "frame ", "sector ", "vmimg ", "0123 ", "\n"];
    let mut text = Vec::new();
    while text.len() < 1 << 20 {
        text.extend_from_slice(words[(next(&mut state) % 8) as usize].as_bytes());
    }
    let file = std::fs::File::create(path).unwrap();
    file.set_len(16 << 20).unwrap();
    file.write_all_at(&noise, 1 << 20).unwrap();
    file.write_all_at(&text, 8 << 20).unwrap();
    std::fs::read(path).unwrap()
}

/// What the store holds: the entries of images/ and of tmp/.
fn contents(store: &Path) -> (Vec<String>, Vec<String>) {
    let list = |dir: &str| {
        let mut names: Vec<String> = std::fs::read_dir(store.join(dir))
            .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        names.sort();
        names
    };
    (list("images"), list("tmp"))
}

/// A bundle made as GNU tar and zstd make one, `dir/NAME`: `make_disk`
/// writes `disk.img` into the directory it is given, which holds a
/// `machine.json`; a qcow2 layer backed by the disk goes in too.
fn gnu_tar_bundle(dir: &Path, name: &str, make_disk: impl FnOnce(&Path)) -> std::path::PathBuf {
    let src = dir.join("src");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("machine.json"), b"{\"version\": 1}").unwrap();
    make_disk(&src);
    let script = format!(
        "cd {} && qemu-img create -q -f qcow2 -b disk.img -F raw layer.qcow2 && \
         tar -S -cf - disk.img layer.qcow2 machine.json | zstd -q -o ../{name}",
        src.display()
    );
    assert!(Command::new("sh").arg("-c").arg(&script).status().unwrap().success());
    dir.join(name)
}

/// Imports `bundle`, which must be refused and leave the store as it was.
fn refused(store: &Path, bundle: &Path, extra: &[&str]) -> String {
    let before = contents(store);
    let error = fails(store, &[&["bundle", "import", bundle.to_str().unwrap(), "--name", "bad"], extra].concat());
    let after = contents(store);
    assert_eq!(after, before, "a refused import changed the store: {error}");
    assert!(after.1.is_empty(), "work was left in tmp/: {:?}", after.1);
    error
}

/// Pulls a seeded disk `dir/disk.img` into the store; its image's name.
fn pull_seeded(dir: &Path, store: &Path, seed: u64) -> String {
    seeded_disk(&dir.join("disk.img"), seed);
    ok(store, &["pull", dir.join("disk.img").to_str().unwrap()]);
    images(store)[0]["name"].as_str().unwrap().to_owned()
}

/// A store holding one pulled image, exported as `out.tar.zst`; its bytes.
fn exported(dir: &Path, store: &Path) -> (std::path::PathBuf, Vec<u8>) {
    let name = pull_seeded(dir, store, 7);
    let bundle = dir.join("out.tar.zst");
    ok(store, &["--quiet", "bundle", "export", &name, bundle.to_str().unwrap()]);
    let bytes = std::fs::read(&bundle).unwrap();
    (bundle, bytes)
}

#[test]
fn export_prints_the_bundles_sha256() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let name = pull_seeded(dir.path(), &store, 1);
    let bundle = dir.path().join("b.tar.zst");
    let out = vmimg(&store, &["bundle", "export", &name, bundle.to_str().unwrap()]);
    assert!(out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.lines().any(|l| l == format!("sha256:{}", sha256(&bundle))), "{stderr}");
    let json: Value =
        serde_json::from_str(&ok(&store, &["bundle", "export", &name, bundle.to_str().unwrap(), "--json"])).unwrap();
    assert_eq!(json["digest"], format!("sha256:{}", sha256(&bundle)));
    assert_eq!(json["size"], std::fs::metadata(&bundle).unwrap().len());
    assert_eq!(json["path"], bundle.to_str().unwrap());
}

#[test]
fn corrupt_or_truncated_bundles_never_import() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let (_, bytes) = exported(dir.path(), &store);
    let bad = dir.path().join("bad.tar.zst");
    // Twenty seeded flips anywhere in the file. Only two header bytes can
    // change without changing what is imported (the window size, byte 5,
    // and an unused bit of byte 4: see vmimg-bundle's tests); this seed
    // lands on neither, so every flip must be refused.
    let mut state = 0x5eed;
    for _ in 0..20 {
        let offset = (next(&mut state) % bytes.len() as u64) as usize;
        let mask = (next(&mut state) % 255) as u8 + 1;
        assert!(offset > 5, "the seed now flips a header byte that no checksum covers");
        let mut flipped = bytes.clone();
        flipped[offset] ^= mask;
        std::fs::write(&bad, flipped).unwrap();
        refused(&store, &bad, &[]);
    }
    // Cut anywhere, the last frame's checksum included.
    for cut in [0, 4, 6, 1000, bytes.len() / 3, bytes.len() / 2, bytes.len() - 4, bytes.len() - 1] {
        std::fs::write(&bad, &bytes[..cut]).unwrap();
        refused(&store, &bad, &[]);
    }
    // Trailing garbage.
    std::fs::write(&bad, [&bytes[..], b"garbage"].concat()).unwrap();
    let error = refused(&store, &bad, &[]);
    assert!(error.contains("bytes after its last zstd frame"), "{error}");
}

#[test]
fn a_gnu_tar_bundle_with_a_byte_flipped_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let bundle = gnu_tar_bundle(dir.path(), "gnu.tar.zst", |src| drop(seeded_disk(&src.join("disk.img"), 3)));
    let mut bytes = std::fs::read(&bundle).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(dir.path().join("flipped.tar.zst"), &bytes).unwrap();
    let error = refused(&store, &dir.path().join("flipped.tar.zst"), &[]);
    assert!(error.contains("checksum"), "{error}");
    ok(&store, &["bundle", "import", bundle.to_str().unwrap()]);
}

#[test]
fn digest_checks_the_whole_file_and_lets_in_unchecked_frames() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let (bundle, _) = exported(dir.path(), &store);
    let right = format!("sha256:{}", sha256(&bundle));
    let wrong = format!("sha256:{}", "0".repeat(64));
    let error = refused(&store, &bundle, &["--digest", &wrong]);
    assert!(error.contains(&wrong) && error.contains(&right) && error.contains("nothing was kept"), "{error}");
    ok(&store, &["bundle", "import", bundle.to_str().unwrap(), "--name", "good", "--digest", &right]);
    ok(&store, &["bundle", "import", bundle.to_str().unwrap(), "--name", "plain"]);
    let verified_against = |name: &str| {
        let inspected: Value = serde_json::from_str(&ok(&store, &["inspect", name, "--json"])).unwrap();
        (inspected["verified"].clone(), inspected["verified_against"].clone())
    };
    assert_eq!(verified_against("good"), (true.into(), "digest".into()), "the digest is recorded as checked");
    assert_eq!(verified_against("plain"), (false.into(), Value::Null));

    // Frames without a checksum: refused unless the digest vouches.
    let unchecked = dir.path().join("unchecked.tar.zst");
    let script = format!("zstd -dc {} | zstd -q --no-check -o {}", bundle.display(), unchecked.display());
    assert!(Command::new("sh").arg("-c").arg(&script).status().unwrap().success());
    let error = refused(&store, &unchecked, &[]);
    assert!(error.contains("carries no content checksum") && error.contains("the bundle's digest"), "{error}");
    let digest = format!("sha256:{}", sha256(&unchecked));
    let disk = ok(&store, &["bundle", "import", unchecked.to_str().unwrap(), "--digest", &digest]);
    assert!(std::fs::read(disk).unwrap() == std::fs::read(dir.path().join("disk.img")).unwrap());
    // And a flip in it is then caught by the digest.
    let mut bytes = std::fs::read(&unchecked).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x80;
    std::fs::write(&unchecked, bytes).unwrap();
    let error = refused(&store, &unchecked, &["--digest", &digest]);
    assert!(error.contains("its digest is sha256:") && error.contains(&digest), "{error}");
}

/// A bundle whose disk.img is an image: a qcow2 one is refused by the
/// bundle reader, any other (here VMDK) by its header, which a probing VMM
/// would follow.
#[test]
fn a_bundle_disk_carrying_an_image_header_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let bundle = gnu_tar_bundle(dir.path(), "evil.tar.zst", |src| {
        let made =
            Command::new("qemu-img").args(["create", "-q", "-f", "vmdk"]).arg(src.join("disk.img")).arg("1M").status();
        assert!(made.unwrap().success());
    });
    let error = refused(&store, &bundle, &[]);
    assert!(error.contains("starts with a VMDK (VMware) image header"), "{error}");
}

/// What is not a bundle is refused saying what it is and what a bundle is,
/// in one line, with nothing kept; an export to a directory is refused
/// before the work, with a file name to use in it.
#[test]
fn what_is_not_a_bundle_is_named_and_a_directory_is_no_destination() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let d = dir.path();
    std::fs::write(d.join("notes.txt"), "Download failed: 404 Not Found\n").unwrap();
    noisy_disk(&d.join("disk.img"));
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!("cd {} && tar -cf image.tar notes.txt && gzip -k image.tar && zstd -q disk.img", d.display()))
        .status()
        .unwrap();
    assert!(status.success());
    let cases = [
        ("notes.txt", "it does not start with a zstd frame (found text: \"Download failed: 404 Not Found\")"),
        ("image.tar", "it does not start with a zstd frame (found a tar archive)"),
        ("image.tar.gz", "it does not start with a zstd frame (found a gzip-compressed stream)"),
        ("disk.img.zst", "it is zstd-compressed, but holds bytes "),
    ];
    for (name, expected) in cases {
        let file = d.join(name);
        let before = contents(&store);
        let (code, line) = common::fails_in_one_line(&store, &["bundle", "import", file.to_str().unwrap()]);
        assert_eq!(code, 6, "{line}");
        let what = format!("{} is not a bundle: {expected}", file.display());
        assert!(line.contains(&what) && line.contains("a bundle is an image.tar.zst"), "{line}");
        assert!(!line.contains("Unknown frame descriptor"), "{line}");
        assert_eq!(contents(&store), before, "{name}: the store changed");
    }
    let (code, line) = common::fails_in_one_line(&store, &["bundle", "import", d.to_str().unwrap(), "--name", "x"]);
    assert_eq!(code, 2, "{line}");
    assert!(line.contains("is a directory: give the bundle's file"), "{line}");

    ok(&store, &["pull", d.join("disk.img").to_str().unwrap()]);
    let name = images(&store)[0]["name"].as_str().unwrap().to_owned();
    let out = d.join("bundles");
    std::fs::create_dir(&out).unwrap();
    let (code, line) = common::fails_in_one_line(&store, &["bundle", "export", &name, out.to_str().unwrap()]);
    assert_eq!(code, 2, "{line}");
    let example = out.join(format!("{name}.tar.zst"));
    assert!(line.contains(&format!("is a directory: give the path of the file to write, e.g. {}", example.display())));
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), 0, "the export wrote into the directory");
    let beside: Vec<_> = std::fs::read_dir(d).unwrap().flatten().map(|e| e.file_name()).collect();
    assert!(!beside.iter().any(|n| n.to_string_lossy().ends_with(".tmp")), "a temporary was left: {beside:?}");
}
