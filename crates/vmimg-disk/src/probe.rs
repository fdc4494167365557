//! What a file is, from its first (and last) bytes: a disk vmimg reads (raw,
//! qcow2), a compressed stream to unpack first, an image format vmimg does
//! not read, or something that is no disk at all.
//!
//! Every input is probed, whatever its name or media type says, because a
//! misnamed file converted as raw is a silent wrong result: `disk.vmdk`
//! pulled as raw gives a few-KiB "disk", an HTML error page a 19-byte one.
//! The magic numbers are those QEMU's own probes (and the compressors'
//! formats) use; each foreign format is named as `qemu-img` names it.
//!
//! The other direction matters as much: a file declared raw (`-f raw`, an
//! OCI layer typed `…disk.raw`, a bundle's `disk.img`) that starts with an
//! image header is refused by [`ensure_plain_raw`]. Published as a raw disk,
//! it would be read by any VMM that probes formats as that image, and a
//! qcow2 header naming `/etc/passwd` as its backing file would hand the
//! guest a host file (the format-probing advisories of QEMU and OpenStack).
//!
//! Where no header is found the file is raw only if it could be a disk: a
//! whole number of 512-byte sectors (a file's length, when known), and not
//! text (a disk starts with a boot sector, a partition table or a
//! filesystem's superblock, all binary; a text file pulled by mistake, a
//! README or a server's plain-text error, would become a tiny "disk").
//! Callers that were told the format (`-f raw`) do not probe, and take such
//! a file as raw, as qemu-img does.
//!
//! Probing needs no library: each check is a fixed byte string at a fixed
//! offset, a few lines each.

use crate::error::{Error, Result};
use std::fmt;
use std::fs::File;
use std::io;
use std::path::Path;
use vmimg_qcow2::ReadAt;

/// How many leading bytes [`probe`] looks at (fewer only in shorter files).
pub const PROBE_BYTES: usize = 4096;
/// How many trailing bytes [`probe_tail`] looks at.
pub const TAIL_BYTES: usize = 512;
/// The smallest file taken for a disk: one sector.
pub const MIN_DISK_BYTES: u64 = 512;
/// The sector size: a raw disk's length is a whole number of them.
pub const SECTOR: u64 = 512;

/// What a file's bytes say it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Content {
    /// No known header: raw disk bytes.
    Raw,
    Qcow2,
    /// A compressed stream, to be decompressed and probed again.
    Compressed(Stream),
    /// A disk image format vmimg does not read.
    Foreign(Foreign),
    /// Not a disk image at all.
    NotADisk(NotADisk),
}

/// Compressed streams that distributions publish disks in, which vmimg
/// decompresses while streaming.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Gzip,
    Xz,
    Zstd,
    Bzip2,
}

/// Disk image formats vmimg refuses, named as `qemu-img` names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Foreign {
    Vmdk,
    /// VHD (Virtual PC), dynamic (header at the start) or fixed (footer at the end).
    Vpc,
    Vhdx,
    Vdi,
    Qed,
    Luks,
    Parallels,
    Dmg,
    Bochs,
    Cloop,
}

/// Files that are no disk image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotADisk {
    Tar,
    Zip,
    SevenZip,
    Lz4,
    Html,
    /// Shorter than one sector: its length.
    TooSmall(u64),
    /// Not a whole number of sectors: its length.
    PartialSector(u64),
    /// Text: UTF-8 without control characters but white space.
    Text,
}

/// Probes a file from `head`, its first [`PROBE_BYTES`] (or all of it when
/// shorter), and `len`, its length when known (a stream's is not).
pub fn probe(head: &[u8], len: Option<u64>) -> Content {
    let at = |offset, magic| magic_at(head, offset, magic);
    if at(0, &vmimg_qcow2::MAGIC) {
        return Content::Qcow2;
    }
    if let Some(stream) = compressed(head) {
        return Content::Compressed(stream);
    }
    if let Some(foreign) = foreign(head) {
        return Content::Foreign(foreign);
    }
    // A head shorter than asked for is the whole file.
    let short = (head.len() < PROBE_BYTES).then_some(head.len() as u64);
    let len = short.or(len).unwrap_or(u64::MAX);
    let not_a_disk = if at(257, b"ustar") {
        Some(NotADisk::Tar)
    } else if at(0, b"PK\x03\x04") {
        Some(NotADisk::Zip)
    } else if at(0, b"7z\xbc\xaf\x27\x1c") {
        Some(NotADisk::SevenZip)
    } else if at(0, b"\x04\x22\x4d\x18") {
        Some(NotADisk::Lz4)
    } else if looks_like_html(head) {
        Some(NotADisk::Html)
    } else if len < MIN_DISK_BYTES {
        Some(NotADisk::TooSmall(len))
    } else if looks_like_text(head) {
        Some(NotADisk::Text)
    } else if len != u64::MAX && !len.is_multiple_of(SECTOR) {
        Some(NotADisk::PartialSector(len))
    } else {
        None
    };
    not_a_disk.map_or(Content::Raw, Content::NotADisk)
}

/// Formats known by a trailer, from a file's last [`TAIL_BYTES`]: a fixed
/// VHD's footer, a DMG's `koly` block.
pub fn probe_tail(tail: &[u8]) -> Option<Foreign> {
    let start = tail.len().checked_sub(TAIL_BYTES)?;
    let tail = &tail[start..];
    if tail.starts_with(b"conectix") {
        Some(Foreign::Vpc)
    } else if tail.starts_with(b"koly") {
        Some(Foreign::Dmg)
    } else {
        None
    }
}

/// Probes an open file (a regular file or a block device) from its head and
/// its tail.
pub fn probe_file(file: &File) -> io::Result<Content> {
    // Seeking to the end also sizes a block device, whose metadata says 0;
    // the file's offset is put back for readers that read it in turn.
    use rustix::fs::{SeekFrom, seek};
    let pos = seek(file, SeekFrom::Current(0))?;
    let len = seek(file, SeekFrom::End(0))?;
    seek(file, SeekFrom::Start(pos))?;
    let mut head = vec![0u8; PROBE_BYTES.min(len as usize)];
    file.read_exact_or_zero_at(&mut head, 0)?;
    let content = probe(&head, Some(len));
    if content != Content::Raw || len < (TAIL_BYTES + PROBE_BYTES) as u64 {
        return Ok(content);
    }
    let mut tail = [0u8; TAIL_BYTES];
    file.read_exact_or_zero_at(&mut tail, len - TAIL_BYTES as u64)?;
    Ok(probe_tail(&tail).map_or(content, Content::Foreign))
}

/// Probes `file` at `path` for a caller that reads raw and qcow2 only.
pub(crate) fn detect(file: &File, path: &Path) -> Result<crate::Format> {
    match probe_file(file).map_err(Error::io("cannot read", path))? {
        Content::Raw => Ok(crate::Format::Raw),
        Content::Qcow2 => Ok(crate::Format::Qcow2),
        content => Err(Error::Unsupported { path: path.to_owned(), content }),
    }
}

/// Whether `head` holds `magic` at `offset`.
fn magic_at(head: &[u8], offset: usize, magic: &[u8]) -> bool {
    head.get(offset..offset + magic.len()) == Some(magic)
}

fn compressed(head: &[u8]) -> Option<Stream> {
    if head.starts_with(b"\x1f\x8b") {
        Some(Stream::Gzip)
    } else if head.starts_with(b"\xfd7zXZ\x00") {
        Some(Stream::Xz)
    } else if head.starts_with(b"\x28\xb5\x2f\xfd") {
        Some(Stream::Zstd)
    } else if head.starts_with(b"BZh") && head.get(3).is_some_and(|b| (b'1'..=b'9').contains(b)) {
        Some(Stream::Bzip2)
    } else {
        None
    }
}

fn foreign(head: &[u8]) -> Option<Foreign> {
    let at = |offset, magic| magic_at(head, offset, magic);
    let found = [
        (at(0, b"KDMV") || at(0, b"COWD") || at(0, b"# Disk DescriptorFile"), Foreign::Vmdk),
        (at(0, b"conectix"), Foreign::Vpc),
        (at(0, b"vhdxfile"), Foreign::Vhdx),
        // VDI: its signature 0xbeda107f, little-endian, at offset 64.
        (at(64, b"\x7f\x10\xda\xbe"), Foreign::Vdi),
        (at(0, b"QED\x00"), Foreign::Qed),
        (at(0, b"LUKS\xba\xbe"), Foreign::Luks),
        (at(0, b"WithoutFreeSpace") || at(0, b"WithouFreSpacExt"), Foreign::Parallels),
        (at(0, b"Bochs Virtual HD Image"), Foreign::Bochs),
        (at(0, b"#!/bin/sh\n#V2.0 Format\n"), Foreign::Cloop),
    ];
    found.into_iter().find_map(|(hit, format)| hit.then_some(format))
}

/// Leading white space, then `<!DOCTYPE html`, `<html` or `<head`, in any case.
fn looks_like_html(head: &[u8]) -> bool {
    let text = head.iter().skip_while(|b| b.is_ascii_whitespace()).take(14).copied().collect::<Vec<u8>>();
    let text = text.to_ascii_lowercase();
    [&b"<!doctype html"[..], b"<html", b"<head"].iter().any(|tag| text.starts_with(tag))
}

/// Whether `head`, a file's first bytes, reads as text: UTF-8 (a character
/// cut by the head's end aside) holding no control character but tab, line
/// feed, form feed, carriage return and escape. No disk starts so: sector 0
/// holds boot code and a partition table or a superblock, with zeros in it.
pub fn looks_like_text(head: &[u8]) -> bool {
    let text = match std::str::from_utf8(head) {
        Ok(text) => text,
        Err(e) if e.error_len().is_none() => std::str::from_utf8(&head[..e.valid_up_to()]).unwrap_or_default(),
        Err(_) => return false,
    };
    !text.is_empty() && text.chars().all(|c| !c.is_control() || matches!(c, '\t' | '\n' | '\x0c' | '\r' | '\x1b'))
}

/// Refuses `head`, the first bytes of what was declared a raw disk, when they
/// carry an image header: published as raw, a VMM that probes formats would
/// open it as that image (a qcow2 one reading its backing file from the host).
pub fn ensure_plain_raw(head: &[u8], path: &Path) -> Result<()> {
    match image_header(head) {
        None => Ok(()),
        Some((found, detail)) => Err(Error::HeaderInRaw { path: path.to_owned(), found, detail }),
    }
}

/// The image header `head` starts with, if any, and what it names outside
/// itself.
pub(crate) fn image_header(head: &[u8]) -> Option<(Content, String)> {
    match probe(head, None) {
        found @ (Content::Qcow2 | Content::Foreign(_)) => Some((found, header_detail(head).unwrap_or_default())),
        _ => None,
    }
}

/// What a qcow2 header in `head` points at outside itself.
fn header_detail(head: &[u8]) -> Option<String> {
    // The tables lie past the head: only the header's own fields are read.
    let header = vmimg_qcow2::Header::parse(head, 1 << 62).ok()?;
    let backing = header.backing_file.map(|file| format!(" naming backing file {file:?}"));
    let data = header.data_file.map(|file| format!(" naming data file {file:?}"));
    let named: String = backing.into_iter().chain(data).collect();
    (!named.is_empty()).then_some(named)
}

impl Content {
    /// The format name `qemu-img info` prints, for disk formats.
    pub fn qemu_name(self) -> Option<&'static str> {
        match self {
            Content::Raw => Some("raw"),
            Content::Qcow2 => Some("qcow2"),
            Content::Foreign(foreign) => Some(foreign.qemu_name()),
            Content::Compressed(_) | Content::NotADisk(_) => None,
        }
    }

    /// What the file is, in a few words and nothing more: `a qcow2 image`,
    /// `a gzip-compressed stream`, `a tar archive`, `text`, `19 bytes`.
    pub fn noun(self) -> String {
        match self {
            Content::NotADisk(NotADisk::Tar) => "a tar archive".to_owned(),
            Content::NotADisk(NotADisk::Zip) => "a zip archive".to_owned(),
            Content::NotADisk(NotADisk::SevenZip) => "a 7-Zip archive".to_owned(),
            Content::NotADisk(NotADisk::Lz4) => "an lz4-compressed stream".to_owned(),
            Content::NotADisk(NotADisk::Html) => "an HTML page".to_owned(),
            Content::NotADisk(NotADisk::Text) => "text".to_owned(),
            Content::NotADisk(NotADisk::TooSmall(0)) => "nothing (it is empty)".to_owned(),
            Content::NotADisk(NotADisk::TooSmall(len) | NotADisk::PartialSector(len)) => format!("{len} bytes"),
            other => other.to_string(),
        }
    }

    /// What to do with such a file instead.
    pub fn advice(self) -> String {
        match self {
            Content::Raw | Content::Qcow2 => String::new(),
            Content::Compressed(stream) => {
                format!("a pull decompresses it while it streams; or unpack it first ({})", stream.tool())
            }
            Content::Foreign(foreign) => format!(
                "vmimg reads raw and qcow2 disks: convert it first with `qemu-img convert -f {} -O qcow2 FILE \
                 disk.qcow2`",
                foreign.qemu_name()
            ),
            Content::NotADisk(NotADisk::Html) => {
                "check the URL: servers send such pages for errors and logins".to_owned()
            }
            Content::NotADisk(NotADisk::TooSmall(_) | NotADisk::PartialSector(_)) => {
                "check that the file is whole (not a download cut short) and that it is a disk".to_owned()
            }
            Content::NotADisk(NotADisk::Text) => {
                "a disk starts with a boot sector, a partition table or a filesystem: check that the path or URL \
                 names the disk image"
                    .to_owned()
            }
            Content::NotADisk(_) => "unpack the disk image from it first".to_owned(),
        }
    }
}

impl fmt::Display for Content {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Content::Raw => f.write_str("a raw disk"),
            Content::Qcow2 => f.write_str("a qcow2 image"),
            Content::Compressed(stream) => write!(f, "a {}-compressed stream", stream.name()),
            Content::Foreign(foreign) => write!(f, "{} image", foreign.description()),
            Content::NotADisk(NotADisk::TooSmall(0)) => f.write_str("empty: not a raw disk image"),
            Content::NotADisk(NotADisk::TooSmall(len)) => {
                write!(f, "{len} bytes, shorter than one 512-byte sector: not a raw disk image")
            }
            Content::NotADisk(NotADisk::PartialSector(len)) => {
                write!(f, "{len} bytes, not a whole number of 512-byte sectors: not a raw disk image")
            }
            Content::NotADisk(other) => f.write_str(other.description()),
        }
    }
}

impl Stream {
    pub fn name(self) -> &'static str {
        match self {
            Stream::Gzip => "gzip",
            Stream::Xz => "xz",
            Stream::Zstd => "zstd",
            Stream::Bzip2 => "bzip2",
        }
    }

    fn tool(self) -> &'static str {
        match self {
            Stream::Gzip => "gunzip",
            Stream::Xz => "unxz",
            Stream::Zstd => "unzstd",
            Stream::Bzip2 => "bunzip2",
        }
    }
}

impl Foreign {
    /// The name `qemu-img` gives the format (`-f`, and `info`'s "file format").
    pub fn qemu_name(self) -> &'static str {
        match self {
            Foreign::Vmdk => "vmdk",
            Foreign::Vpc => "vpc",
            Foreign::Vhdx => "vhdx",
            Foreign::Vdi => "vdi",
            Foreign::Qed => "qed",
            Foreign::Luks => "luks",
            Foreign::Parallels => "parallels",
            Foreign::Dmg => "dmg",
            Foreign::Bochs => "bochs",
            Foreign::Cloop => "cloop",
        }
    }

    fn description(self) -> &'static str {
        match self {
            Foreign::Vmdk => "a VMDK (VMware)",
            Foreign::Vpc => "a VHD (Virtual PC, Hyper-V)",
            Foreign::Vhdx => "a VHDX (Hyper-V)",
            Foreign::Vdi => "a VDI (VirtualBox)",
            Foreign::Qed => "a QED",
            Foreign::Luks => "a LUKS-encrypted",
            Foreign::Parallels => "a Parallels",
            Foreign::Dmg => "a DMG (Apple disk)",
            Foreign::Bochs => "a Bochs",
            Foreign::Cloop => "a cloop (compressed loop)",
        }
    }
}

impl NotADisk {
    fn description(self) -> &'static str {
        match self {
            NotADisk::Tar => "a tar archive, not a disk image",
            NotADisk::Zip => "a zip archive, not a disk image",
            NotADisk::SevenZip => "a 7-Zip archive, not a disk image",
            NotADisk::Lz4 => "an lz4-compressed stream (vmimg decompresses gzip, xz, zstd and bzip2)",
            NotADisk::Html => "an HTML page, not a disk image",
            NotADisk::TooSmall(_) => "too small to be a disk",
            NotADisk::PartialSector(_) => "not a whole number of sectors",
            NotADisk::Text => "text, not a disk image",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn padded(prefix: &[u8], offset: usize) -> Vec<u8> {
        let mut head = vec![0xaau8; PROBE_BYTES];
        head[offset..offset + prefix.len()].copy_from_slice(prefix);
        head
    }

    #[test]
    fn every_magic_is_named() {
        let cases: &[(&[u8], usize, Content)] = &[
            (b"QFI\xfb", 0, Content::Qcow2),
            (b"\x1f\x8b\x08", 0, Content::Compressed(Stream::Gzip)),
            (b"\xfd7zXZ\x00", 0, Content::Compressed(Stream::Xz)),
            (b"\x28\xb5\x2f\xfd", 0, Content::Compressed(Stream::Zstd)),
            (b"BZh9", 0, Content::Compressed(Stream::Bzip2)),
            (b"KDMV", 0, Content::Foreign(Foreign::Vmdk)),
            (b"# Disk DescriptorFile\n", 0, Content::Foreign(Foreign::Vmdk)),
            (b"conectix", 0, Content::Foreign(Foreign::Vpc)),
            (b"vhdxfile", 0, Content::Foreign(Foreign::Vhdx)),
            (b"\x7f\x10\xda\xbe", 64, Content::Foreign(Foreign::Vdi)),
            (b"QED\x00", 0, Content::Foreign(Foreign::Qed)),
            (b"LUKS\xba\xbe", 0, Content::Foreign(Foreign::Luks)),
            (b"WithoutFreeSpace", 0, Content::Foreign(Foreign::Parallels)),
            (b"ustar", 257, Content::NotADisk(NotADisk::Tar)),
            (b"PK\x03\x04", 0, Content::NotADisk(NotADisk::Zip)),
            (b"  \n<!DOCTYPE HTML>", 0, Content::NotADisk(NotADisk::Html)),
            (b"<html><body>", 0, Content::NotADisk(NotADisk::Html)),
            (b"\x04\x22\x4d\x18", 0, Content::NotADisk(NotADisk::Lz4)),
            (b"\xeb\x63\x90", 0, Content::Raw),
        ];
        for (magic, offset, expected) in cases {
            assert_eq!(probe(&padded(magic, *offset), Some(1 << 30)), *expected, "{magic:?}");
        }
    }

    #[test]
    fn short_files_are_no_disks_and_bzip2_needs_its_level() {
        assert_eq!(probe(b"hello\n", Some(6)), Content::NotADisk(NotADisk::TooSmall(6)));
        assert_eq!(probe(&[0; 511], None), Content::NotADisk(NotADisk::TooSmall(511)));
        assert_eq!(probe(&[0; 512], None), Content::Raw);
        assert_eq!(probe(&padded(b"BZhx", 0), Some(1 << 20)), Content::Raw);
    }

    #[test]
    fn partial_sectors_and_text_are_no_raw_disks() {
        let binary = padded(b"\xeb\x63\x90", 0);
        assert_eq!(probe(&binary, Some(1_000_000)), Content::NotADisk(NotADisk::PartialSector(1_000_000)));
        assert_eq!(probe(&binary, Some(1 << 20)), Content::Raw);
        // A stream's length is unknown: only a short head tells it.
        assert_eq!(probe(&binary, None), Content::Raw);
        assert_eq!(probe(&binary[..1000], None), Content::NotADisk(NotADisk::PartialSector(1000)));
        let text = "# Notes\n\tlíne ünïcode\r\n".repeat(300);
        assert_eq!(probe(&text.as_bytes()[..PROBE_BYTES], Some(1 << 20)), Content::NotADisk(NotADisk::Text));
        assert_eq!(probe(text.as_bytes(), None), Content::NotADisk(NotADisk::Text));
        // A multi-byte character cut by the head's end is still text.
        let cut = "é".repeat(PROBE_BYTES);
        assert!(looks_like_text(&cut.as_bytes()[..PROBE_BYTES - 1]));
        // One NUL, or bytes that are not UTF-8, make it binary.
        let mut nul = text.clone().into_bytes();
        nul[100] = 0;
        assert!(!looks_like_text(&nul) && !looks_like_text(&[0xaa; 600]) && !looks_like_text(b""));
        let described = Content::NotADisk(NotADisk::PartialSector(1000)).to_string();
        assert!(described.contains("not a whole number of 512-byte sectors"), "{described}");
    }

    #[test]
    fn trailers_name_fixed_vhd_and_dmg() {
        let mut tail = vec![0u8; 1024];
        tail[512..520].copy_from_slice(b"conectix");
        assert_eq!(probe_tail(&tail), Some(Foreign::Vpc));
        tail[512..516].copy_from_slice(b"koly");
        assert_eq!(probe_tail(&tail), Some(Foreign::Dmg));
        assert_eq!(probe_tail(&tail[..100]), None);
    }

    #[test]
    fn a_raw_disk_with_an_image_header_is_refused() {
        assert!(ensure_plain_raw(&padded(b"\xeb\x63\x90", 0), Path::new("d")).is_ok());
        assert!(ensure_plain_raw(&padded(b"\x1f\x8b", 0), Path::new("d")).is_ok());
        let err = ensure_plain_raw(&padded(b"vhdxfile", 0), Path::new("d")).unwrap_err();
        assert!(err.to_string().contains("VHDX"), "{err}");
    }
}
