//! Bundles against GNU tar, zstd and qemu-img: what vmimg exports they
//! read, what they make vmimg imports, and every refusal.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use vmimg_bundle::bundle::{self, ExportOptions, Integrity, Limits};
use vmimg_bundle::machine::Machine;
use vmimg_tar::Writer;

const FRAMES: Integrity = Integrity::FrameChecksums;

/// A zstd encoder that ends each frame with its content checksum.
fn checksummed<W: std::io::Write>(out: W, level: i32) -> zstd::Encoder<'static, W> {
    let mut encoder = zstd::Encoder::new(out, level).unwrap();
    encoder.include_checksum(true).unwrap();
    encoder
}

fn run(command: &mut Command) -> String {
    let out = command.output().unwrap();
    assert!(out.status.success(), "{command:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A 64 MiB raw disk with 2 MiB of random data in a few places.
fn sparse_disk(path: &Path) -> Vec<u8> {
    let file = File::create(path).unwrap();
    file.set_len(64 << 20).unwrap();
    let mut noise = vec![0u8; 2 << 20];
    File::open("/dev/urandom").unwrap().read_exact(&mut noise).unwrap();
    file.write_all_at(&noise[..1 << 20], 0).unwrap();
    file.write_all_at(&noise[1 << 20..], 40 << 20).unwrap();
    file.write_all_at(b"tail", (64 << 20) - 4).unwrap();
    std::fs::read(path).unwrap()
}

fn import(bundle: &Path, out: &Path) -> Result<bundle::Imported, String> {
    import_as(bundle, out, FRAMES)
}

fn import_as(bundle: &Path, out: &Path, integrity: Integrity) -> Result<bundle::Imported, String> {
    import_with(bundle, out, integrity, Limits::default()).map_err(|e| e.to_string())
}

fn import_with(bundle: &Path, out: &Path, integrity: Integrity, limits: Limits) -> bundle::Result<bundle::Imported> {
    let disk = out.join("disk.raw");
    let _ = std::fs::remove_file(&disk);
    let result = bundle::import(File::open(bundle).unwrap(), &disk, &out.join("layer.tmp"), &limits, integrity);
    assert!(!out.join("layer.tmp").exists(), "the scratch layer was left behind");
    result
}

fn allocated(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().blocks() * 512
}

#[test]
fn export_then_gnu_tar_and_qemu_img_read_it_and_import_gives_the_disk_back() {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk.raw");
    let expected = sparse_disk(&disk);
    let machine = Machine::generate();
    let bundle_path = dir.path().join("image.tar.zst");
    let exported = bundle::export(
        &File::open(&disk).unwrap(),
        &machine,
        File::create(&bundle_path).unwrap(),
        &ExportOptions::default(),
    )
    .unwrap();
    assert!(exported.data_bytes < 3 << 20, "holes were exported as data: {}", exported.data_bytes);
    assert!(std::fs::metadata(&bundle_path).unwrap().len() < 3 << 20);

    // GNU tar and zstd unpack it: a sparse disk.img, a layer qemu-img accepts, machine.json.
    let unpacked = dir.path().join("unpacked");
    std::fs::create_dir(&unpacked).unwrap();
    run(Command::new("sh").arg("-c").arg(format!(
        "zstd -dc {} | tar -xf - -C {}",
        bundle_path.display(),
        unpacked.display()
    )));
    assert!(std::fs::read(unpacked.join("disk.img")).unwrap() == expected);
    assert!(allocated(&unpacked.join("disk.img")) < 4 << 20, "GNU tar did not extract disk.img sparse");
    run(Command::new("qemu-img").arg("check").arg(unpacked.join("layer.qcow2")));
    let info = run(Command::new("qemu-img").args(["info", "--output=json"]).arg(unpacked.join("layer.qcow2")));
    let info: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert_eq!(info["backing-filename"], "disk.img");
    assert_eq!(info["backing-filename-format"], "raw");
    assert_eq!(info["virtual-size"], 64 << 20);
    run(Command::new("qemu-img")
        .args(["convert", "-O", "raw"])
        .arg(unpacked.join("layer.qcow2"))
        .arg(dir.path().join("flat.raw")));
    assert!(std::fs::read(dir.path().join("flat.raw")).unwrap() == expected);
    assert_eq!(Machine::parse(&std::fs::read(unpacked.join("machine.json")).unwrap()).unwrap(), machine);

    // And vmimg imports it back.
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let imported = import(&bundle_path, &out).unwrap();
    assert_eq!(imported.machine, machine);
    assert_eq!(imported.virtual_size, 64 << 20);
    assert_eq!(imported.layer_bytes, 0);
    assert!(std::fs::read(out.join("disk.raw")).unwrap() == expected);
    assert!(allocated(&out.join("disk.raw")) <= allocated(&disk));
}

/// A bundle packed by GNU tar (with `flags`) and zstd from `dir`'s files.
fn pack(dir: &Path, flags: &str, names: &[&str]) -> PathBuf {
    let name = dir.file_name().unwrap().to_string_lossy();
    let bundle = dir.with_file_name(format!("{name}{}.tar.zst", flags.replace([' ', '='], "")));
    run(Command::new("sh").arg("-c").arg(format!(
        "tar {flags} -cf - -C {} {} | zstd -q -f -T0 -o {}",
        dir.display(),
        names.join(" "),
        bundle.display()
    )));
    bundle
}

fn write_machine(dir: &Path) {
    std::fs::write(dir.join("machine.json"), Machine::generate().to_json()).unwrap();
}

#[test]
fn imports_what_gnu_tar_packs_and_commits_a_written_layer() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir(&src).unwrap();
    sparse_disk(&src.join("disk.img"));
    write_machine(&src);
    // The layer grows the disk to 80 MiB, writes data over data, over a
    // hole and past the old end, and zeroes part of the disk's data.
    run(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-b", "disk.img", "-F", "raw"])
        .arg(src.join("layer.qcow2"))
        .arg("80M"));
    for io in [
        "write -P 0x5a 4096 8192",
        "write -P 0x11 20M 1M",
        "write -z 40M 512K",
        "write -P 0x22 70M 64K",
        "write -P 0 100k 4k",
    ] {
        run(Command::new("qemu-io").args(["-f", "qcow2", "-c", io]).arg(src.join("layer.qcow2")));
    }
    let flat = dir.path().join("flat.raw");
    run(Command::new("qemu-img").args(["convert", "-O", "raw"]).arg(src.join("layer.qcow2")).arg(&flat));
    let expected = std::fs::read(&flat).unwrap();

    for flags in [
        "-S --format=gnu",
        "-S --format=posix --sparse-version=0.0",
        "-S --format=posix --sparse-version=0.1",
        "-S --format=posix --sparse-version=1.0",
        "--format=ustar",
    ] {
        let bundle = pack(&src, flags, &["disk.img", "layer.qcow2", "machine.json"]);
        let out = dir.path().join("out");
        let _ = std::fs::create_dir(&out);
        let imported = import(&bundle, &out).unwrap_or_else(|e| panic!("{flags}: {e}"));
        assert_eq!(imported.virtual_size, 80 << 20);
        assert!(imported.layer_bytes > 0);
        assert!(std::fs::read(out.join("disk.raw")).unwrap() == expected, "{flags}: the committed disk differs");
        assert!(allocated(&out.join("disk.raw")) < 8 << 20, "{flags}: the import is not sparse");
    }
    // `tar -C dir .` adds the directory itself: that is fine.
    let bundle = pack(&src, "-S", &["."]);
    let out = dir.path().join("out");
    import(&bundle, &out).unwrap();
    assert!(std::fs::read(out.join("disk.raw")).unwrap() == expected);
}

/// A file in a hand-made bundle: its name in the archive and its bytes.
type Entry<'a> = (&'a str, &'a [u8]);

/// A bundle written entry by entry with our own tar writer.
fn bundle_of(path: &Path, entries: &[(&str, &[u8])]) {
    let mut writer = Writer::new(checksummed(File::create(path).unwrap(), 3));
    for (name, data) in entries {
        writer.append_bytes(name, 0o644, 0, data).unwrap();
    }
    writer.finish().unwrap().finish().unwrap();
}

struct Parts {
    disk: Vec<u8>,
    layer: Vec<u8>,
    machine: Vec<u8>,
}

fn parts(dir: &Path) -> Parts {
    let disk = vec![1u8; 1 << 20];
    std::fs::write(dir.join("disk.img"), &disk).unwrap();
    run(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-b", "disk.img", "-F", "raw"])
        .arg(dir.join("layer.qcow2")));
    Parts { disk, layer: std::fs::read(dir.join("layer.qcow2")).unwrap(), machine: Machine::generate().to_json() }
}

fn refused(dir: &Path, entries: &[(&str, &[u8])]) -> String {
    let bundle = dir.join("hostile.tar.zst");
    bundle_of(&bundle, entries);
    let out = dir.join("hostile-out");
    let _ = std::fs::create_dir(&out);
    import(&bundle, &out).expect_err("a hostile bundle was imported")
}

/// A layer over `disk.img` made by qemu-img with extra `options`, backing `backing`.
fn layer_with(dir: &Path, backing: &str, format: &str, options: &str) -> Vec<u8> {
    let path = dir.join("other.qcow2");
    let _ = std::fs::remove_file(&path);
    run(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-u", "-b", backing, "-F", format, "-o", options])
        .arg(&path)
        .arg("1M"));
    std::fs::read(path).unwrap()
}

#[test]
fn hostile_bundles_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = parts(dir.path());
    let (d, l, m) = (p.disk.as_slice(), p.layer.as_slice(), p.machine.as_slice());
    let good = [("disk.img", d), ("layer.qcow2", l), ("machine.json", m)];
    let out = dir.path().join("good");
    std::fs::create_dir(&out).unwrap();
    bundle_of(&dir.path().join("good.tar.zst"), &good);
    import(&dir.path().join("good.tar.zst"), &out).unwrap();

    let cases: Vec<(&str, Vec<Entry>)> = vec![
        ("unexpected entry \"/etc/passwd\"", vec![good[0], good[1], good[2], ("/etc/passwd", b"x")]),
        ("unexpected entry \"../disk.img\"", vec![("../disk.img", d), good[1], good[2]]),
        ("unexpected entry \"sub/disk.img\"", vec![("sub/disk.img", d), good[1], good[2]]),
        ("unexpected entry \"notes.txt\"", vec![good[0], good[1], good[2], ("notes.txt", b"x")]),
        ("holds disk.img twice", vec![good[0], good[0], good[1], good[2]]),
        ("has no layer.qcow2", vec![good[0], good[2]]),
        ("has no disk.img, no machine.json", vec![good[1]]),
        ("disk.img is a qcow2 image", vec![("disk.img", l), good[1], good[2]]),
        ("machine.json", vec![good[0], good[1], ("machine.json", b"{\"version\": 1, \"threads\": 0}")]),
        ("machine.json", vec![good[0], good[1], ("machine.json", &[b'['; 100])]),
        ("layer.qcow2", vec![good[0], ("layer.qcow2", b"not a qcow2 image at all"), good[2]]),
    ];
    for (expected, entries) in &cases {
        let error = refused(dir.path(), entries);
        assert!(error.contains(expected), "expected {expected:?} in: {error}");
    }

    let other_backing = layer_with(dir.path(), "/etc/shadow", "raw", "cluster_size=65536");
    let error = refused(dir.path(), &[good[0], ("layer.qcow2", &other_backing), good[2]]);
    assert!(error.contains("must have disk.img as its backing file") && error.contains("/etc/shadow"), "{error}");
    let qcow2_backing = layer_with(dir.path(), "disk.img", "qcow2", "cluster_size=65536");
    let error = refused(dir.path(), &[good[0], ("layer.qcow2", &qcow2_backing), good[2]]);
    assert!(error.contains("backing file is qcow2"), "{error}");
    let data_file = layer_with(dir.path(), "disk.img", "raw", "data_file=/etc/hostname");
    let error = refused(dir.path(), &[good[0], ("layer.qcow2", &data_file), good[2]]);
    assert!(error.contains("data file"), "{error}");

    // Links, directories and special files under the expected names.
    let links = dir.path().join("links");
    std::fs::create_dir(&links).unwrap();
    std::fs::write(links.join("layer.qcow2"), l).unwrap();
    std::fs::write(links.join("machine.json"), m).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", links.join("disk.img")).unwrap();
    let error = import(&pack(&links, "", &["disk.img", "layer.qcow2", "machine.json"]), &out).unwrap_err();
    assert!(error.contains("disk.img in the bundle is a Symlink"), "{error}");
    std::fs::remove_file(links.join("disk.img")).unwrap();
    run(Command::new("mkfifo").arg(links.join("disk.img")));
    let error = import(&pack(&links, "", &["disk.img", "layer.qcow2", "machine.json"]), &out).unwrap_err();
    assert!(error.contains("disk.img in the bundle is a Fifo"), "{error}");
    std::fs::remove_file(links.join("disk.img")).unwrap();
    std::fs::write(links.join("x"), d).unwrap();
    std::fs::hard_link(links.join("x"), links.join("disk.img")).unwrap();
    let error = import(&pack(&links, "", &["x", "disk.img", "layer.qcow2", "machine.json"]), &out).unwrap_err();
    assert!(error.contains("unexpected entry \"x\""), "{error}");
    let error = import(&pack(&links, "--hard-dereference", &["disk.img", "layer.qcow2", "machine.json"]), &out);
    error.unwrap();
}

#[test]
fn size_limits_and_decompression_bombs() {
    let dir = tempfile::tempdir().unwrap();
    let p = parts(dir.path());
    let bundle = dir.path().join("b.tar.zst");
    bundle_of(&bundle, &[("disk.img", &p.disk), ("layer.qcow2", &p.layer), ("machine.json", &p.machine)]);
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let try_with = |limits: Limits| import_with(&bundle, &out, FRAMES, limits).unwrap_err();
    let error = try_with(Limits { max_archive: 100, ..Limits::default() }).to_string();
    assert!(error.contains("compressed bundle is over its limit of 100 bytes"), "{error}");
    // The limit is the library's: the message names no option of a frontend.
    let error = try_with(Limits { max_file: 1000, ..Limits::default() });
    assert!(matches!(&error, bundle::Error::OverLimit { limit: 1000, .. }), "{error:?}");
    let error = error.to_string();
    assert!(error.contains("over the limit of 1000") && error.contains("raise the file size limit"), "{error}");
    assert!(!error.contains("--"), "{error}");

    // A zstd bomb: 1 GiB of zeros in a few KiB, stored as a non-sparse disk.img.
    let bomb = dir.path().join("bomb.tar.zst");
    let mut writer = Writer::new(checksummed(File::create(&bomb).unwrap(), 19));
    let zeros = dir.path().join("zeros");
    File::create(&zeros).unwrap().set_len(1 << 30).unwrap();
    writer
        .append_sparse(
            "disk.img",
            0o644,
            0,
            &File::open(&zeros).unwrap(),
            1 << 30,
            &[vmimg_tar::Segment { offset: 0, len: 1 << 30 }],
        )
        .unwrap();
    writer.finish().unwrap().finish().unwrap();
    assert!(std::fs::metadata(&bomb).unwrap().len() < 1 << 20);
    let small = Limits { max_file: 64 << 20, ..Limits::default() };
    let started = std::time::Instant::now();
    let error = {
        let _ = std::fs::remove_file(out.join("disk.raw"));
        bundle::import(File::open(&bomb).unwrap(), &out.join("disk.raw"), &out.join("l"), &small, FRAMES)
            .unwrap_err()
            .to_string()
    };
    assert!(error.contains("over the limit"), "{error}");
    assert!(started.elapsed().as_secs() < 30);

    // A frame that asks for a 2 GiB window.
    let wide = dir.path().join("wide.zst");
    run(Command::new("sh")
        .arg("-c")
        .arg(format!("head -c 4096 /dev/urandom | zstd -q --long=31 -o {}", wide.display())));
    let error = {
        let _ = std::fs::remove_file(out.join("disk.raw"));
        bundle::import(File::open(&wide).unwrap(), &out.join("disk.raw"), &out.join("l"), &Limits::default(), FRAMES)
            .unwrap_err()
            .to_string()
    };
    assert!(error.to_lowercase().contains("window") || error.contains("Frame requires too much memory"), "{error}");

    // Not zstd at all, and a truncated bundle.
    std::fs::write(dir.path().join("plain.tar"), b"plain text").unwrap();
    let error = import(&dir.path().join("plain.tar"), &out).unwrap_err();
    assert!(error.contains("does not start with a zstd frame (found text: \"plain text\")"), "{error}");
    let whole = std::fs::read(&bundle).unwrap();
    std::fs::write(dir.path().join("cut.tar.zst"), &whole[..whole.len() / 2]).unwrap();
    import(&dir.path().join("cut.tar.zst"), &out).unwrap_err();
}

/// `bytes` with byte `offset` xor-ed with `mask`, written to `path`.
fn write_flipped(path: &Path, bytes: &[u8], offset: usize, mask: u8) -> PathBuf {
    let mut bytes = bytes.to_vec();
    bytes[offset] ^= mask;
    std::fs::write(path, bytes).unwrap();
    path.to_owned()
}

#[test]
fn the_compressed_stream_is_read_to_its_end_and_every_frame_checked() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir(&src).unwrap();
    let expected = sparse_disk(&src.join("disk.img"));
    write_machine(&src);
    run(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-b", "disk.img", "-F", "raw"])
        .arg(src.join("layer.qcow2")));
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let file = |name: &str| dir.path().join(name);

    // GNU tar's stream in two zstd frames (with checksums, zstd's default),
    // a skippable frame between them: it imports.
    run(Command::new("sh").arg("-c").arg(format!(
        "cd {} && tar -S -cf {} disk.img layer.qcow2 machine.json && head -c 1500000 {1} | zstd -q > {2} \
         && tail -c +1500001 {1} | zstd -q > {3}",
        src.display(),
        file("b.tar").display(),
        file("one.zst").display(),
        file("two.zst").display()
    )));
    let (one, two) = (std::fs::read(file("one.zst")).unwrap(), std::fs::read(file("two.zst")).unwrap());
    let skippable = [&0x184D_2A53u32.to_le_bytes()[..], &4u32.to_le_bytes(), b"note"].concat();
    let whole = [&one[..], &skippable, &two].concat();
    std::fs::write(file("two-frames.tar.zst"), &whole).unwrap();
    import(&file("two-frames.tar.zst"), &out).unwrap();
    assert!(std::fs::read(out.join("disk.raw")).unwrap() == expected);

    // A flip in the first frame's data (random disk data, stored raw) is
    // caught by that frame's checksum, read only past the tar's end.
    let error = import(&write_flipped(&file("flip.tar.zst"), &whole, one.len() / 2, 0x10), &out).unwrap_err();
    assert!(error.contains("checksum"), "{error}");
    // So is one in the checksum of the last frame, the file's last byte.
    let error = import(&write_flipped(&file("flip.tar.zst"), &whole, whole.len() - 1, 1), &out).unwrap_err();
    assert!(error.contains("checksum"), "{error}");
    // Clearing the first frame's checksum flag: refused at once, and where
    // a digest vouches, its checksum becomes bytes that start no frame.
    let cleared = write_flipped(&file("flip.tar.zst"), &whole, 4, 0b100);
    let error = import(&cleared, &out).unwrap_err();
    assert!(error.contains("frame 1 carries no content checksum"), "{error}");
    let error = import_as(&cleared, &out, Integrity::CallerDigest).unwrap_err();
    assert!(error.contains("bytes after its last zstd frame (frame 1)"), "{error}");

    // Bytes after the last frame, a frame of data after the tar's end.
    std::fs::write(file("garbage.tar.zst"), [&whole[..], b"garbage"].concat()).unwrap();
    let error = import(&file("garbage.tar.zst"), &out).unwrap_err();
    assert!(error.contains("bytes after its last zstd frame (frame 2) that start no frame"), "{error}");
    let frame_of = |bytes: &[u8]| {
        let mut encoder = checksummed(Vec::new(), 3);
        std::io::Write::write_all(&mut encoder, bytes).unwrap();
        encoder.finish().unwrap()
    };
    let data_frame = frame_of(&[7u8; 512]);
    std::fs::write(file("extra.tar.zst"), [&whole[..], &data_frame].concat()).unwrap();
    let error = import(&file("extra.tar.zst"), &out).unwrap_err();
    assert!(error.contains("data after its tar archive's end"), "{error}");
    // Zeros after the archive's end are tar's padding: fine.
    let zeros_frame = frame_of(&[0u8; 10240]);
    std::fs::write(file("padded.tar.zst"), [&whole[..], &zeros_frame].concat()).unwrap();
    import(&file("padded.tar.zst"), &out).unwrap();

    // Truncated anywhere, at a frame's end included, or empty.
    for cut in [0, 3, 5, 100, one.len() - 4, one.len(), whole.len() / 2, whole.len() - 4, whole.len() - 1] {
        std::fs::write(file("cut.tar.zst"), &whole[..cut]).unwrap();
        let error = import(&file("cut.tar.zst"), &out).expect_err(&format!("cut at {cut} was imported"));
        let why = ["truncated", "no zstd frame", "tar archive ends in the middle"];
        assert!(why.iter().any(|w| error.contains(w)), "cut at {cut}: {error}");
    }

    // Frames without a checksum: only when the caller checks a digest.
    run(Command::new("sh").arg("-c").arg(format!(
        "zstd -q --no-check -c {} > {}",
        file("b.tar").display(),
        file("unchecked.tar.zst").display()
    )));
    let error = import_with(&file("unchecked.tar.zst"), &out, FRAMES, Limits::default()).unwrap_err();
    assert!(matches!(error, bundle::Error::UncheckedFrame(bundle::UncheckedFrame { frame: 1 })), "{error:?}");
    let error = error.to_string();
    assert!(error.contains("frame 1 carries no content checksum") && error.contains("the bundle's digest"), "{error}");
    assert!(!error.contains("--"), "{error}");
    import_as(&file("unchecked.tar.zst"), &out, Integrity::CallerDigest).unwrap();
    assert!(std::fs::read(out.join("disk.raw")).unwrap() == expected);
}

/// Two bytes of a zstd frame header describe how to decode but no content:
/// the window size (byte 5 here, the frame being streamed without a
/// content size; 2 MiB at level 3, exponent 11 in bits 3-7, mantissa 0 in
/// bits 0-2) and the descriptor's unused bit (bit 4 of byte 4). No checksum
/// covers them, and a change that still decodes (a larger window under
/// import's 128 MiB bound) imports the very same disk; only the whole
/// file's digest (`--digest`) notices it.
#[test]
fn header_bytes_that_no_checksum_covers_cannot_change_what_is_imported() {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk.raw");
    let expected = sparse_disk(&disk);
    let mut bytes = Vec::new();
    bundle::export(&File::open(&disk).unwrap(), &Machine::generate(), &mut bytes, &ExportOptions::default()).unwrap();
    assert_eq!(bytes[4], 0b100, "a frame with a checksum, a window descriptor, no content size");
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    assert_eq!(bytes[5], 11 << 3, "a 2 MiB window");
    // The unused bit; a 2.25 MiB window; a 32 MiB one (exponent 15).
    for (offset, mask) in [(4, 0b1_0000), (5, 0b1), (5, 0b10_0000)] {
        let flipped = write_flipped(&dir.path().join("b.tar.zst"), &bytes, offset, mask);
        import(&flipped, &out).unwrap_or_else(|e| panic!("byte {offset} ^ {mask:#x}: {e}"));
        assert!(std::fs::read(out.join("disk.raw")).unwrap() == expected);
    }
    // A window over the bound (exponent 27), or too small for the 128 KiB
    // blocks (exponent 3: 8 KiB), is refused.
    for mask in [0b1000_0000, 0b100_0000] {
        let flipped = write_flipped(&dir.path().join("b.tar.zst"), &bytes, 5, mask);
        import(&flipped, &out).expect_err(&format!("byte 5 ^ {mask:#x} was imported"));
    }
}

/// What is no bundle is named for what it is, before anything is written:
/// not zstd (a tar, a gzip stream, text), or zstd around no tar (a disk,
/// text). The file the import cannot create is named once ("cannot
/// create", never "cannot cannot create").
#[test]
fn what_is_no_bundle_says_what_it_is() {
    let dir = tempfile::tempdir().unwrap();
    let p = parts(dir.path());
    let file = |name: &str| dir.path().join(name);
    let out = file("out");
    std::fs::create_dir(&out).unwrap();
    run(Command::new("sh").arg("-c").arg(format!(
        "cd {} && tar -cf b.tar disk.img layer.qcow2 && gzip -k b.tar && printf 'not found\\n' > notes.txt \
         && zstd -q notes.txt && zstd -q disk.img && zstd -q layer.qcow2",
        dir.path().display()
    )));
    let cases = [
        ("b.tar", "it does not start with a zstd frame (found a tar archive)"),
        ("b.tar.gz", "it does not start with a zstd frame (found a gzip-compressed stream)"),
        ("notes.txt", "it does not start with a zstd frame (found text: \"not found\")"),
        ("notes.txt.zst", "it is zstd-compressed, but holds text: \"not found\", not a tar archive"),
        ("disk.img.zst", "it is zstd-compressed, but holds bytes 01 01 01 01 01 01 01 01 in no format vmimg knows"),
        (
            "layer.qcow2.zst",
            "it is zstd-compressed, but holds a qcow2 image, not a tar archive (a compressed disk is pulled",
        ),
    ];
    for (name, expected) in cases {
        let error = import_with(&file(name), &out, FRAMES, Limits::default()).unwrap_err();
        assert!(matches!(error, bundle::Error::NotABundle { .. }), "{name}: {error:?}");
        let error = error.to_string();
        assert!(error.contains(expected) && error.contains("a bundle is an image.tar.zst"), "{name}: {error}");
        assert_eq!(std::fs::read_dir(&out).unwrap().count(), 0, "{name}: something was written");
    }
    let (d, l, m) = (p.disk.as_slice(), p.layer.as_slice(), p.machine.as_slice());
    bundle_of(&file("good.tar.zst"), &[("disk.img", d), ("layer.qcow2", l), ("machine.json", m)]);
    let missing = file("missing/disk.raw");
    let source = File::open(file("good.tar.zst")).unwrap();
    let error = bundle::import(source, &missing, &file("l"), &Limits::default(), FRAMES).unwrap_err().to_string();
    assert!(error.starts_with(&format!("cannot create {}: ", missing.display())), "{error}");
}
