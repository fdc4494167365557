//! The tar reader and writer against GNU tar, in both directions, for every
//! sparse format it writes; and hostile archives.

use std::fs::File;
use std::io::{Cursor, Read};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::process::Command;
use vmimg_tar::{Kind, Limits, Reader, Segment, Writer};

/// A sparse file: data at the start, a small run, a large random run, a
/// few bytes mid-disk, and a hole at the end.
fn sparse_file(path: &Path) -> Vec<u8> {
    let file = File::create(path).unwrap();
    file.set_len(64 << 20).unwrap();
    let mut noise = vec![0u8; 300_000];
    File::open("/dev/urandom").unwrap().read_exact(&mut noise).unwrap();
    file.write_all_at(b"boot sector", 0).unwrap();
    file.write_all_at(&[7u8; 4096], 1 << 20).unwrap();
    file.write_all_at(&noise, 5 << 20).unwrap();
    file.write_all_at(b"mid", 33 << 20).unwrap();
    std::fs::read(path).unwrap()
}

fn run(command: &mut Command) {
    let out = command.output().unwrap();
    assert!(out.status.success(), "{command:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// Every entry of an archive as (name, kind, content rebuilt from its
/// segments, segments).
fn read_all(archive: &[u8]) -> Vec<(String, Kind, Vec<u8>, Vec<Segment>)> {
    let mut reader = Reader::new(Cursor::new(archive), Limits::default());
    let mut entries = Vec::new();
    while let Some(entry) = reader.next_entry().unwrap() {
        let mut content = vec![0u8; entry.size as usize];
        reader
            .read_data(&mut |offset, piece| {
                content[offset as usize..offset as usize + piece.len()].copy_from_slice(piece);
                Ok(())
            })
            .unwrap();
        entries.push((entry.path_lossy(), entry.kind, content, entry.segments));
    }
    entries
}

fn data_bytes(segments: &[Segment]) -> u64 {
    segments.iter().map(|s| s.len).sum()
}

#[test]
fn reads_every_format_gnu_tar_writes() {
    let dir = tempfile::tempdir().unwrap();
    let expected = sparse_file(&dir.path().join("disk.img"));
    std::fs::write(dir.path().join("machine.json"), b"{\"version\": 1}\n").unwrap();
    std::os::unix::fs::symlink("disk.img", dir.path().join("link")).unwrap();
    let long_name = "d".repeat(150);
    std::fs::write(dir.path().join(&long_name), b"long").unwrap();
    let formats: &[(&str, &[&str], bool)] = &[
        ("gnu-sparse", &["--format=gnu", "-S"], true),
        ("pax-0.0", &["--format=posix", "--sparse-version=0.0", "-S"], true),
        ("pax-0.1", &["--format=posix", "--sparse-version=0.1", "-S"], true),
        ("pax-1.0", &["--format=posix", "--sparse-version=1.0", "-S"], true),
        ("gnu-plain", &["--format=gnu"], false),
        ("pax-plain", &["--format=posix"], false),
    ];
    for (label, flags, sparse) in formats {
        let archive = dir.path().join(format!("{label}.tar"));
        run(Command::new("tar").args(*flags).arg("-cf").arg(&archive).arg("-C").arg(dir.path()).args([
            "disk.img",
            "machine.json",
            "link",
            &long_name,
        ]));
        let entries = read_all(&std::fs::read(&archive).unwrap());
        let names: Vec<_> = entries.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(names, ["disk.img", "machine.json", "link", long_name.as_str()], "{label}");
        let (_, kind, content, segments) = &entries[0];
        assert_eq!(*kind, Kind::File);
        assert!(content == &expected, "{label}: disk.img differs");
        if *sparse {
            assert!(data_bytes(segments) < 1 << 20, "{label}: holes were stored as data");
        }
        assert_eq!(entries[1].2, b"{\"version\": 1}\n");
        assert_eq!(entries[2].1, Kind::Symlink);
        assert_eq!(entries[3].2, b"long");
    }
}

#[test]
fn gnu_tar_extracts_what_the_writer_writes() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("disk.img");
    let expected = sparse_file(&source);
    let file = File::open(&source).unwrap();
    let segments = [
        Segment { offset: 0, len: 4096 },
        Segment { offset: 1 << 20, len: 4096 },
        Segment { offset: 5 << 20, len: 300_000 },
        Segment { offset: 33 << 20, len: 4096 },
    ];
    let long_name = "n".repeat(120);
    let mut writer = Writer::new(Vec::new());
    writer.append_sparse("disk.img", 0o644, 1_700_000_000, &file, 64 << 20, &segments).unwrap();
    writer.append_bytes("machine.json", 0o644, 1_700_000_000, b"{}\n").unwrap();
    writer.append_bytes(&long_name, 0o600, 1_700_000_000, b"long").unwrap();
    let archive = writer.finish().unwrap();
    assert!(archive.len() < 1 << 20, "the archive stored holes: {} bytes", archive.len());
    let tar = dir.path().join("out.tar");
    std::fs::write(&tar, &archive).unwrap();

    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    run(Command::new("tar").arg("-xf").arg(&tar).arg("-C").arg(&out));
    let extracted = out.join("disk.img");
    assert!(std::fs::read(&extracted).unwrap() == expected);
    assert!(std::fs::metadata(&extracted).unwrap().blocks() * 512 < 1 << 20, "GNU tar did not extract it sparse");
    assert_eq!(std::fs::read(out.join("machine.json")).unwrap(), b"{}\n");
    assert_eq!(std::fs::read(out.join(&long_name)).unwrap(), b"long");
    let listing = Command::new("tar").arg("-tvf").arg(&tar).output().unwrap();
    assert!(String::from_utf8_lossy(&listing.stdout).contains("67108864"), "GNU tar lists the real size");

    // And our own reader reads it back.
    let entries = read_all(&archive);
    assert!(entries[0].2 == expected);
    // GNU tar's own writer ends a map with an empty segment at the file's
    // size so that extraction extends the file over a trailing hole.
    // Segments are padded to 512-byte blocks (GNU tar starts each segment's
    // data on a block).
    let mut stored = segments.to_vec();
    stored[2].len = 300_032;
    stored.push(Segment { offset: 64 << 20, len: 0 });
    assert_eq!(entries[0].3, stored);
}

/// A minimal valid archive built by our writer, for corrupting.
fn small_archive() -> Vec<u8> {
    let mut writer = Writer::new(Vec::new());
    writer.append_bytes("machine.json", 0o644, 0, b"{}\n").unwrap();
    writer.finish().unwrap()
}

fn read_error(archive: &[u8], limits: Limits) -> String {
    let mut reader = Reader::new(Cursor::new(archive), limits);
    loop {
        match reader.next_entry() {
            Ok(Some(_)) => {
                if let Err(e) = reader.read_data(&mut |_, _| Ok(())) {
                    return e.to_string();
                }
            }
            Ok(None) => panic!("the hostile archive was read without error"),
            Err(e) => return e.to_string(),
        }
    }
}

/// A header block with `kind`, `size` and `name`, checksum fixed.
fn header(name: &str, kind: u8, size_field: &[u8]) -> [u8; 512] {
    let mut block = [0u8; 512];
    block[..name.len()].copy_from_slice(name.as_bytes());
    block[100..107].copy_from_slice(b"0000644");
    block[124..124 + size_field.len()].copy_from_slice(size_field);
    block[156] = kind;
    block[257..265].copy_from_slice(b"ustar\x0000");
    fix_checksum(&mut block);
    block
}

fn fix_checksum(block: &mut [u8; 512]) {
    block[148..156].fill(b' ');
    let sum: u32 = block.iter().map(|&b| u32::from(b)).sum();
    block[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
}

fn pax(records: &[(&str, &str)]) -> Vec<u8> {
    let body: String = records
        .iter()
        .map(|(k, v)| {
            let n = k.len() + v.len() + 3;
            let len = n + (n + n.to_string().len()).to_string().len();
            format!("{len} {k}={v}\n")
        })
        .collect();
    let mut out = header("PaxHeaders/x", b'x', format!("{:011o}", body.len()).as_bytes()).to_vec();
    out.extend_from_slice(body.as_bytes());
    out.resize(out.len().div_ceil(512) * 512, 0);
    out
}

fn with_end(mut archive: Vec<u8>) -> Vec<u8> {
    archive.extend_from_slice(&[0u8; 1024]);
    archive
}

#[test]
fn hostile_archives_are_refused() {
    let valid = small_archive();
    let mut bad_sum = valid.clone();
    bad_sum[0] = b'X';
    assert!(read_error(&bad_sum, Limits::default()).contains("checksum"));

    let truncated = &valid[..512 + 2];
    assert!(read_error(truncated, Limits::default()).contains("ends in the middle"));
    assert!(read_error(&valid[..512 + 512], Limits::default()).contains("truncated"), "no end blocks");

    let negative = header("f", b'0', &[0xff; 12]);
    assert!(read_error(&with_end(negative.to_vec()), Limits::default()).contains("size"));

    let huge_pax = header("PaxHeaders/x", b'x', b"77777777777");
    assert!(read_error(&with_end(huge_pax.to_vec()), Limits::default()).contains("over the limit"));

    // Metadata headers one after another, each under the limit, together over it.
    let long_name = |len: usize| {
        let mut entry = header("././@LongLink", b'L', format!("{len:011o}").as_bytes()).to_vec();
        entry.extend(std::iter::repeat_n(b'n', len.div_ceil(512) * 512));
        entry
    };
    let small = Limits { max_meta_bytes: 4096, ..Limits::default() };
    let mut piled = pax(&[("comment", &"c".repeat(1000))]);
    (0..3).for_each(|_| piled.extend(long_name(1100)));
    piled.extend_from_slice(&header("f", b'0', b"00000000000"));
    assert!(read_error(&with_end(piled.clone()), small).contains("in front of one entry"));
    let mut spaced = long_name(3000);
    spaced.extend_from_slice(&header("f", b'0', b"00000000000"));
    spaced.extend(long_name(3000));
    spaced.extend_from_slice(&header("g", b'0', b"00000000000"));
    assert_eq!(
        Reader::new(Cursor::new(with_end(spaced)), small).next_entry().unwrap().unwrap().size,
        0,
        "each entry's own metadata counts"
    );

    let mut bad_record = header("PaxHeaders/x", b'x', b"00000000020").to_vec();
    bad_record.extend_from_slice(b"99 path=x\n\0\0\0\0\0\0");
    bad_record.resize(1024, 0);
    assert!(read_error(&with_end(bad_record), Limits::default()).contains("PAX"));

    // Sparse maps that overlap, run past the file, or disagree with the data.
    let sparse = |map: &str, size: &str, stored: usize| {
        let mut archive = pax(&[("GNU.sparse.size", size), ("GNU.sparse.map", map), ("GNU.sparse.name", "d")]);
        archive.extend_from_slice(&header("d", b'0', format!("{stored:011o}").as_bytes()));
        archive.extend(std::iter::repeat_n(1u8, stored.div_ceil(512) * 512));
        with_end(archive)
    };
    assert!(read_error(&sparse("0,512,256,512", "4096", 1024), Limits::default()).contains("overlaps"));
    assert!(read_error(&sparse("0,512,4000,512", "4096", 1024), Limits::default()).contains("past"));
    assert!(read_error(&sparse("0,512", "4096", 1024), Limits::default()).contains("stores"));
    assert!(read_error(&sparse("0,512,", "4096", 512), Limits::default()).contains("number"));
    assert!(read_error(&sparse("0,18446744073709551615", "4096", 512), Limits::default()).contains("past"));
    let few = Limits { max_segments: 2, ..Limits::default() };
    assert!(read_error(&sparse("0,1,2,1,4,1", "4096", 3), few).contains("more than 2"));

    // PAX 1.0 maps: a count beyond the limit, garbage instead of digits.
    let map_1_0 = |map: &[u8]| {
        let mut archive = pax(&[
            ("GNU.sparse.major", "1"),
            ("GNU.sparse.minor", "0"),
            ("GNU.sparse.realsize", "4096"),
            ("GNU.sparse.name", "d"),
        ]);
        archive.extend_from_slice(&header("d", b'0', b"00000001000"));
        let mut block = map.to_vec();
        block.resize(512, 0);
        archive.extend_from_slice(&block);
        with_end(archive)
    };
    assert!(read_error(&map_1_0(b"99999999\n"), Limits::default()).contains("segments"));
    assert!(read_error(&map_1_0(b"1\n0\nxyz\n"), Limits::default()).contains("map"));
    assert!(read_error(&map_1_0(&[b'1'; 512]), Limits::default()).contains("map"));
}

#[test]
fn old_gnu_sparse_extension_blocks() {
    // GNU tar writes more than four segments through extension blocks.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("many");
    let file = File::create(&path).unwrap();
    file.set_len(8 << 20).unwrap();
    for i in 0..40u64 {
        file.write_all_at(&[i as u8 + 1; 100], i * 200_000).unwrap();
    }
    let expected = std::fs::read(&path).unwrap();
    let archive = dir.path().join("many.tar");
    run(Command::new("tar").args(["--format=gnu", "-Scf"]).arg(&archive).arg("-C").arg(dir.path()).arg("many"));
    let entries = read_all(&std::fs::read(&archive).unwrap());
    assert!(entries[0].2 == expected);
    assert!(entries[0].3.len() >= 40);
    let few = Limits { max_segments: 8, ..Limits::default() };
    assert!(read_error(&std::fs::read(&archive).unwrap(), few).contains("more than 8"));
}

/// Owners, device numbers, xattrs and link names as GNU tar stores them
/// (ustar fields, and PAX records for xattrs).
#[test]
fn reads_owners_devices_and_xattrs() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    std::fs::create_dir(&tree).unwrap();
    std::fs::write(tree.join("file"), b"hello").unwrap();
    std::os::unix::fs::symlink("file", tree.join("link")).unwrap();
    run(Command::new("setfattr").args(["-n", "user.vmimg", "-v", "yes"]).arg(tree.join("file")));
    let archive = dir.path().join("a.tar");
    run(Command::new("tar")
        .args(["--format=posix", "--xattrs", "--xattrs-include=*", "--owner=1234", "--group=5678", "--numeric-owner"])
        .arg("-C")
        .arg(&tree)
        .arg("-cf")
        .arg(&archive)
        .args(["file", "link"]));
    let mut bytes = std::fs::read(&archive).unwrap();
    // A character device, written by hand: GNU tar needs root to read one.
    let end = bytes.iter().rposition(|&b| b != 0).unwrap().div_ceil(512) * 512;
    let mut device = header("null", b'3', b"00000000000\0");
    device[329..337].copy_from_slice(b"0000001\0");
    device[337..345].copy_from_slice(b"0000003\0");
    fix_checksum(&mut device);
    bytes.splice(end..end, device);
    let mut reader = Reader::new(Cursor::new(bytes), Limits::default());
    let file = reader.next_entry().unwrap().unwrap();
    assert_eq!((file.uid, file.gid, file.kind), (1234, 5678, Kind::File));
    assert_eq!(file.xattrs, vec![("user.vmimg".to_owned(), b"yes".to_vec())]);
    let link = reader.next_entry().unwrap().unwrap();
    assert_eq!((link.kind, link.link_name.as_slice()), (Kind::Symlink, &b"file"[..]));
    let null = reader.next_entry().unwrap().unwrap();
    assert_eq!((null.kind, null.device), (Kind::CharDevice, (1, 3)));
    assert!(reader.next_entry().unwrap().is_none());
}

#[test]
fn every_kind_written_reads_back_and_gnu_tar_lists_it() {
    let long = format!("deep/{}/file", "d".repeat(120));
    let entry = |path: &[u8], kind: Kind, size: u64, link: &[u8]| vmimg_tar::Entry {
        path: path.to_vec(),
        kind,
        size,
        mode: 0o4755,
        uid: 3_000_000,
        gid: 42,
        mtime: 1_700_000_000,
        device: if kind == Kind::CharDevice { (1, 3) } else { (0, 0) },
        xattrs: vec![("user.bin".into(), vec![0, 1, b'\n', 255]), ("security.capability".into(), vec![1, 0, 0, 2])],
        link_name: link.to_vec(),
        segments: Vec::new(),
        sparse: false,
    };
    let entries = [
        entry(b"dir", Kind::Directory, 0, b""),
        entry(long.as_bytes(), Kind::File, 5, b""),
        entry(b"hard", Kind::HardLink, 0, long.as_bytes()),
        entry(b"sym", Kind::Symlink, 0, "x".repeat(150).as_bytes()),
        entry(b"null", Kind::CharDevice, 0, b""),
        entry(b"fifo", Kind::Fifo, 0, b""),
        entry(b"caf\xe9", Kind::File, 0, b""),
    ];
    let mut writer = Writer::new(Vec::new());
    for e in &entries {
        writer.append(e, &mut &b"hello"[..]).unwrap();
    }
    let archive = writer.finish().unwrap();

    let mut reader = Reader::new(Cursor::new(&archive), Limits::default());
    for written in &entries {
        let read = reader.next_entry().unwrap().unwrap();
        let got = (&read.path, read.kind, read.mode, read.uid, read.gid, read.mtime, read.device, &read.link_name);
        let want =
            (&written.path, written.kind, 0o4755, 3_000_000, 42, 1_700_000_000, written.device, &written.link_name);
        assert_eq!(got, want);
        assert_eq!(read.xattrs, written.xattrs);
        let mut content = Vec::new();
        reader
            .read_data(&mut |_, piece| {
                content.extend_from_slice(piece);
                Ok(())
            })
            .unwrap();
        assert_eq!(content, if written.kind == Kind::File && written.size == 5 { &b"hello"[..] } else { b"" });
    }
    assert!(reader.next_entry().unwrap().is_none());

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.tar"), &archive).unwrap();
    let out = Command::new("tar").args(["--numeric-owner", "-tvf"]).arg(dir.path().join("a.tar")).output().unwrap();
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(listing.contains("-rwsr-xr-x 3000000/42") && listing.contains(&long), "{listing}");
    assert!(listing.contains(&format!("hard link to {long}")) && listing.contains("crwsr-xr-x"), "{listing}");
}

#[test]
fn a_short_content_is_an_error() {
    let mut entry_file = Writer::new(Vec::new());
    let entry = vmimg_tar::Entry::file(b"f", 10);
    let error = entry_file.append(&entry, &mut &b"short"[..]).unwrap_err();
    assert!(error.to_string().contains("5 of 10 bytes"), "{error}");
}
