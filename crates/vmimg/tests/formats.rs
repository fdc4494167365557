//! What goes into the store is what the user meant: compressed streams are
//! decoded while they stream (from a file or a URL, digests taken on the
//! bytes as published), other image formats and files that are no disk are
//! refused by name (and `info` names the formats as qemu-img does), and a
//! disk that would carry an image header is never published as raw. Every
//! refusal leaves the store as it was.

mod common;

use common::{error_line, vmimg};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use vmimg_testserver::TestServer;

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn ok(command: &mut Command) {
    let out = command.output().unwrap();
    assert!(out.status.success(), "{command:?}: {}", text(&out.stderr));
}

/// A 24 MiB raw disk holding 4 MiB of noise after a boot-sector-like start,
/// and a compressed qcow2 image of it made by qemu-img.
fn disks(dir: &Path) -> (PathBuf, PathBuf) {
    let raw = dir.join("disk.raw");
    let file = std::fs::File::create(&raw).unwrap();
    file.set_len(24 << 20).unwrap();
    let mut noise = vec![0u8; 4 << 20];
    std::fs::File::open("/dev/urandom").unwrap().read_exact(&mut noise).unwrap();
    file.write_all_at(b"\xeb\x63\x90vmimg-test", 0).unwrap();
    file.write_all_at(&noise, 5 << 20).unwrap();
    let qcow2 = dir.join("disk.qcow2");
    ok(Command::new("qemu-img").args(["convert", "-c", "-f", "raw", "-O", "qcow2"]).arg(&raw).arg(&qcow2));
    (raw, qcow2)
}

/// `tool` (gzip, xz, zstd, bzip2) compresses `src` into `src.EXT`, keeping `src`.
fn compress(tool: &str, ext: &str, src: &Path) -> PathBuf {
    let out = PathBuf::from(format!("{}.{ext}", src.display()));
    let file = std::fs::File::create(&out).unwrap();
    let status = Command::new(tool).arg("-c").arg(src).stdout(file).status().unwrap();
    assert!(status.success(), "{tool}");
    out
}

fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    format!("sha256:{}", text(&out.stdout).split_whitespace().next().unwrap())
}

fn pulled_disk(out: &Output) -> PathBuf {
    assert!(out.status.success(), "{}", text(&out.stderr));
    PathBuf::from(text(&out.stdout).lines().last().unwrap())
}

fn record_of(disk: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(disk.with_file_name("image.json")).unwrap()).unwrap()
}

/// Nothing in images/, blobs/ or tmp/: the refusal kept nothing.
fn assert_store_empty(store: &Path) {
    for dir in ["images", "tmp"] {
        let left: Vec<_> =
            std::fs::read_dir(store.join(dir)).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default();
        assert!(left.is_empty(), "{dir}/ holds {left:?}");
    }
    let blobs: Vec<_> = walk(&store.join("blobs"));
    assert!(blobs.is_empty(), "blobs/ holds {blobs:?}");
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    entries.flatten().flat_map(|e| if e.path().is_dir() { walk(&e.path()) } else { vec![e.path()] }).collect()
}

#[test]
fn compressed_files_and_urls_are_decoded_while_they_stream() {
    let dir = tempfile::tempdir().unwrap();
    let (raw, qcow2) = disks(dir.path());
    let expected = std::fs::read(&raw).unwrap();
    let server = TestServer::start();
    let store = dir.path().join("store");
    let streams = [("gzip", "gz"), ("xz", "xz"), ("zstd", "zst"), ("bzip2", "bz2")];
    for (tool, ext) in streams {
        for (inner, format) in [(&raw, "raw"), (&qcow2, "qcow2")] {
            let packed = compress(tool, ext, inner);
            let digest = sha256(&packed);
            let name = packed.file_name().unwrap().to_string_lossy().into_owned();
            server.add(&format!("/{name}"), std::fs::read(&packed).unwrap());
            for source in [server.url(&format!("/{name}")), packed.display().to_string()] {
                let disk = pulled_disk(&vmimg(&store, &["-q", "pull", &source, "--digest", &digest]));
                assert!(std::fs::read(&disk).unwrap() == expected, "{source}: the disk differs");
                let record = record_of(&disk);
                assert_eq!(record["source_format"], format, "{source}");
                assert_eq!(record["source_compression"], tool, "{source}");
                assert_eq!(record["digest"], digest.as_str(), "the digest is the published file's");
                assert!(!disk.with_file_name("source.qcow2").exists(), "the scratch file is gone");
                assert_eq!(vmimg(&store, &["-q", "rm", record["name"].as_str().unwrap()]).status.code(), Some(0));
            }
        }
    }
}

#[test]
fn a_corrupt_compressed_stream_is_refused_and_kept_nowhere() {
    let dir = tempfile::tempdir().unwrap();
    let (raw, _) = disks(dir.path());
    let packed = compress("xz", "xz", &raw);
    let mut bytes = std::fs::read(&packed).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x10;
    let server = TestServer::start();
    server.add("/disk.raw.xz", bytes);
    let store = dir.path().join("store");
    let out = vmimg(&store, &["pull", &server.url("/disk.raw.xz")]);
    assert_eq!(out.status.code(), Some(6), "refused");
    let stderr = text(&out.stderr);
    assert!(stderr.contains("cannot decompress") && stderr.contains("xz stream"), "{stderr}");
    assert_store_empty(&store);
}

#[test]
fn other_image_formats_are_refused_by_name_and_info_names_them() {
    let dir = tempfile::tempdir().unwrap();
    let (raw, _) = disks(dir.path());
    let store = dir.path().join("store");
    let server = TestServer::start();
    let formats = [
        ("vmdk", "VMDK"),
        ("vpc", "VHD"),
        ("vhdx", "VHDX"),
        ("vdi", "VDI"),
        ("qed", "QED"),
        ("parallels", "Parallels"),
    ];
    for (format, named) in formats {
        let image = dir.path().join(format!("disk.{format}"));
        ok(Command::new("qemu-img").args(["convert", "-f", "raw", "-O", format]).arg(&raw).arg(&image));
        server.add(&format!("/disk.{format}"), std::fs::read(&image).unwrap());
        for source in [image.display().to_string(), server.url(&format!("/disk.{format}"))] {
            let out = vmimg(&store, &["pull", &source]);
            assert_eq!(out.status.code(), Some(6), "{source} refused");
            let stderr = text(&out.stderr);
            assert!(stderr.contains(named) && stderr.contains(&format!("qemu-img convert -f {format}")), "{stderr}");
            assert_eq!(stderr.lines().filter(|l| l.starts_with("vmimg: error:")).count(), 1, "{stderr}");
            assert_store_empty(&store);
        }
        let out = vmimg(&store, &["info", image.to_str().unwrap(), "--json"]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let qemu = Command::new("qemu-img").args(["info", "--output=json"]).arg(&image).output().unwrap();
        let qemu: serde_json::Value = serde_json::from_slice(&qemu.stdout).unwrap();
        assert_eq!(info["format"], qemu["format"], "{format}");
        let out = vmimg(&store, &["convert", image.to_str().unwrap(), dir.path().join("out.raw").to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(6), "convert {format} refused");
        assert!(!dir.path().join("out.raw").exists());
    }
}

#[test]
fn files_that_are_no_disk_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let server = TestServer::start();
    let page = b"<!DOCTYPE html>\n<html><body>Sign in to download</body></html>\n".repeat(100);
    let tarball = dir.path().join("x.tar");
    std::fs::write(dir.path().join("member"), vec![7u8; 10_000]).unwrap();
    ok(Command::new("tar").arg("-cf").arg(&tarball).arg("-C").arg(dir.path()).arg("member"));
    let cases: [(&str, Vec<u8>, &str); 3] = [
        ("/download", page, "HTML page"),
        ("/x.tar", std::fs::read(&tarball).unwrap(), "tar archive"),
        ("/notes.txt", b"just text\n".to_vec(), "shorter than one 512-byte sector"),
    ];
    for (path, body, named) in cases {
        let file = dir.path().join(path.trim_start_matches('/'));
        std::fs::write(&file, &body).unwrap();
        server.add(path, body);
        for source in [server.url(path), file.display().to_string()] {
            let out = vmimg(&store, &["pull", &source]);
            assert_eq!(out.status.code(), Some(6), "{source} refused");
            assert!(text(&out.stderr).contains(named), "{source}: {}", text(&out.stderr));
            assert_store_empty(&store);
        }
    }
}

/// Where probing finds no header, a file is a raw disk only if it could be
/// one: text (a README, a server's plain-text answer) and a length that is
/// not a whole number of 512-byte sectors are refused by name, pulled from
/// a file, a URL or inside a compressed stream, and converted; nothing is
/// kept. `convert -f raw` takes such a file as raw, padded to a whole
/// sector as qemu-img pads it, and `info` describes it as qemu-img does,
/// with a warning.
#[test]
fn text_and_partial_sectors_are_no_raw_disks() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let server = TestServer::start();
    let notes = "# Notes\n\nThe disk is at https://example.com/disk.qcow2 (not here).\n".repeat(80);
    let mut odd = vec![0u8; 1_000_000];
    std::fs::File::open("/dev/urandom").unwrap().read_exact(&mut odd).unwrap();
    let cases: [(&str, Vec<u8>, &str); 2] = [
        ("notes.txt", notes.into_bytes(), " is text, not a disk image"),
        ("odd.img", odd, " is 1000000 bytes, not a whole number of 512-byte sectors: not a raw disk image"),
    ];
    for (name, body, named) in cases {
        let file = dir.path().join(name);
        std::fs::write(&file, &body).unwrap();
        server.add(&format!("/{name}"), body);
        let gz = compress("gzip", "gz", &file);
        let sources = [file.display().to_string(), server.url(&format!("/{name}")), gz.display().to_string()];
        for source in sources {
            let (code, line) = error_line(&vmimg(&store, &["pull", &source]));
            assert_eq!(code, 6, "{source}: {line}");
            assert!(line.contains(named) && line.contains(name), "{source}: {line}");
            assert_store_empty(&store);
        }
        let out = dir.path().join(format!("{name}.raw"));
        let (code, line) = error_line(&vmimg(&store, &["convert", file.to_str().unwrap(), out.to_str().unwrap()]));
        assert_eq!(code, 6, "{line}");
        assert!(line.contains(named) && line.contains("`-f raw` reads it as raw"), "{line}");
        assert!(!out.exists());

        // Declared raw, it is read as qemu-img reads it.
        let ours = vmimg(&store, &["-q", "convert", "-f", "raw", file.to_str().unwrap(), out.to_str().unwrap()]);
        assert!(ours.status.success(), "{}", text(&ours.stderr));
        let theirs = dir.path().join(format!("{name}.qemu.raw"));
        ok(Command::new("qemu-img").args(["convert", "-f", "raw", "-O", "raw"]).arg(&file).arg(&theirs));
        assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&theirs).unwrap(), "{name}: as qemu-img pads it");
        assert_eq!(std::fs::metadata(&out).unwrap().len() % 512, 0);

        let info = vmimg(&store, &["info", "--json", file.to_str().unwrap()]);
        assert!(info.status.success(), "{}", text(&info.stderr));
        let ours: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
        let qemu = Command::new("qemu-img").args(["info", "--output=json"]).arg(&file).output().unwrap();
        let qemu: serde_json::Value = serde_json::from_slice(&qemu.stdout).unwrap();
        assert_eq!((&ours["format"], &ours["virtual-size"]), (&qemu["format"], &qemu["virtual-size"]), "{name}");
        let warning = text(&info.stderr);
        assert!(warning.starts_with("vmimg: warning: ") && warning.lines().count() == 1, "{warning}");
        assert!(warning.contains("`vmimg pull` and `vmimg convert` refuse it"), "{warning}");
    }
}

#[test]
fn a_raw_disk_carrying_an_image_header_is_never_published() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    // A qcow2 image naming a host file as its backing file, inside a qcow2
    // image: converted, the disk would start with that header.
    let evil = dir.path().join("evil.qcow2");
    ok(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b", "/etc/passwd"])
        .arg(&evil)
        .arg("1M"));
    let outer = dir.path().join("outer.qcow2");
    ok(Command::new("qemu-img").args(["convert", "-f", "raw", "-O", "qcow2"]).arg(&evil).arg(&outer));
    let out = vmimg(&store, &["pull", outer.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(6), "refused");
    assert!(text(&out.stderr).contains("/etc/passwd"), "{}", text(&out.stderr));
    assert_store_empty(&store);
    // Given as raw to convert, the header is refused too.
    let out =
        vmimg(&store, &["convert", "-f", "raw", evil.to_str().unwrap(), dir.path().join("o.raw").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(6), "refused");
    assert!(text(&out.stderr).contains("declared a raw disk but starts with a qcow2 image header naming backing file"));
}

#[test]
fn a_raw_source_blob_stays_sparse() {
    let dir = tempfile::tempdir().unwrap();
    let (raw, _) = disks(dir.path());
    let server = TestServer::start();
    server.add("/disk.raw", std::fs::read(&raw).unwrap());
    let store = dir.path().join("store");
    let disk = pulled_disk(&vmimg(&store, &["-q", "pull", &server.url("/disk.raw")]));
    let record = record_of(&disk);
    let blob = store.join(record["blob"].as_str().unwrap());
    use std::os::unix::fs::MetadataExt;
    let allocated = std::fs::metadata(&blob).unwrap().blocks() * 512;
    assert!(allocated < 6 << 20, "the 24 MiB blob holding 4 MiB of data allocates {allocated} bytes");
    assert_eq!(sha256(&blob), record["digest"].as_str().unwrap(), "punching holes kept the bytes");
}
