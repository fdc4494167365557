//! The bundle itself: `image.tar.zst` written from a raw disk and read
//! back into one.
//!
//! A bundle holds exactly three files, in any order: `disk.img` (a raw
//! disk, stored sparse), `layer.qcow2` (a qcow2 whose backing file is
//! `disk.img` by that relative name, backing format raw) and `machine.json`.
//! [`export`] writes machine.json, an empty layer and the disk, in that
//! order so a reader can refuse a bad bundle before the big file, and
//! compressed with zstd's content checksum on every frame.
//!
//! [`import`] treats the bundle as hostile. It refuses, before or while
//! writing, and naming what was wrong: a compressed file or a decompressed
//! stream over its bound, a zstd frame that wants a window over 128 MiB,
//! any entry other than the three files (absolute paths, `..`, links,
//! devices, directories but the archive's own `./`, unknown names,
//! duplicates), a file over the size limit, a missing file, a `disk.img`
//! that is not raw (it starts with the qcow2 magic), a `layer.qcow2` that
//! names any other backing file, another backing format or an external
//! data file, or whose virtual size is over the file size limit, and a
//! `machine.json` that does not validate. It reads the compressed stream
//! to its very end, past the tar archive's end, so that zstd verifies every
//! frame's checksum, and refuses a checksum that does not match, a stream
//! that ends inside a frame or has bytes after its last one, anything but
//! zeros after the archive's end, and (with [`Integrity::FrameChecksums`])
//! a frame without a checksum (the `frames` module). The layer is
//! then committed onto the disk (its data written over the disk's, its
//! zero clusters punched out, the disk resized to the layer's size), so
//! what comes out is one sparse raw disk. The caller owns the output
//! paths: on error it removes them.

use crate::frames::Frames;
pub use crate::frames::{Integrity, UncheckedFrame};
use crate::machine::{MAX_MACHINE_BYTES, Machine, MachineError};
use rustix::fs::{FallocateFlags, fallocate};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use vmimg_qcow2::{Allocation, OpenOptions, Qcow2};
use vmimg_tar::{self as tar, Kind, Segment};

pub const DISK: &str = "disk.img";
pub const LAYER: &str = "layer.qcow2";
pub const MACHINE: &str = "machine.json";

/// Bounds an imported bundle must keep.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// The compressed bundle's size.
    pub max_archive: u64,
    /// Each file's size (holes included).
    pub max_file: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_archive: 50 << 30, max_file: 50 << 30 }
    }
}

/// How to compress.
#[derive(Debug, Clone, Copy)]
pub struct ExportOptions {
    /// zstd level (1 to 19; 3 is zstd's default).
    pub level: i32,
    /// Compression threads (0: one per core).
    pub threads: u32,
}

impl Default for ExportOptions {
    fn default() -> Self {
        ExportOptions { level: 3, threads: 0 }
    }
}

/// Why an export or import failed. Messages speak of the library's terms
/// (the file size limit, the bundle's digest); a frontend that names them
/// with its own options matches [`Error::OverLimit`] and
/// [`Error::UncheckedFrame`].
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Refused(String),
    /// The input is no bundle at all: not zstd-compressed, or not a tar
    /// archive inside. `problem` says what it is instead.
    #[error(
        "{problem}; a bundle is an image.tar.zst as vmimg's bundle export writes it: a zstd-compressed tar of \
         disk.img, layer.qcow2 and machine.json"
    )]
    NotABundle { problem: String },
    /// A file of the bundle (or the disk its layer makes) is over
    /// [`Limits::max_file`].
    #[error(
        "{what} is {size} bytes, over the limit of {limit} bytes a file may have (raise the file size limit to accept it)"
    )]
    OverLimit { what: String, size: u64, limit: u64 },
    /// A frame without a checksum, under [`Integrity::FrameChecksums`].
    #[error("the bundle: {0}")]
    UncheckedFrame(UncheckedFrame),
    #[error("{LAYER}: {0}")]
    Layer(#[source] vmimg_qcow2::Error),
    #[error(transparent)]
    Machine(#[from] MachineError),
    #[error("cannot {action} {}: {source}", path.display())]
    Io { action: &'static str, path: PathBuf, source: io::Error },
    #[error("the bundle: {0}")]
    Read(#[source] io::Error),
    #[error("cannot write the bundle: {0}")]
    Write(#[source] io::Error),
    #[error("cannot read the disk: {0}")]
    Disk(#[source] io::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An error reading the bundle: [`Error::UncheckedFrame`] for a frame the
/// `frames` module refused for want of a checksum, else [`Error::Read`].
fn read_error(error: io::Error) -> Error {
    match error.get_ref().and_then(|inner| inner.downcast_ref::<UncheckedFrame>()) {
        Some(unchecked) => Error::UncheckedFrame(*unchecked),
        None => Error::Read(error),
    }
}

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> Error {
    let path = path.to_owned();
    move |source| Error::Io { action, path, source }
}

/// What an export wrote.
#[derive(Debug, Clone, Copy)]
pub struct Exported {
    /// Bytes of disk data stored (holes excluded).
    pub data_bytes: u64,
}

/// Writes a bundle of the raw disk `disk` and `machine` to `out`.
pub fn export(disk: &File, machine: &Machine, out: impl Write, options: &ExportOptions) -> Result<Exported> {
    let size = disk.metadata().map_err(Error::Disk)?.len();
    let segments = data_segments(disk, size).map_err(Error::Disk)?;
    let layer = empty_layer(size)?;
    let layer_len = layer.metadata().map_err(Error::Write)?.len();
    let layer_segments = data_segments(&layer, layer_len).map_err(Error::Write)?;
    let mtime = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());

    let mut encoder = zstd::Encoder::new(out, options.level).map_err(Error::Write)?;
    let threads = match options.threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
        n => n,
    };
    encoder.multithread(threads).map_err(Error::Write)?;
    encoder.include_checksum(true).map_err(Error::Write)?;
    let mut tar = tar::Writer::new(encoder);
    tar.append_bytes(MACHINE, 0o644, mtime, &machine.to_json()).map_err(Error::Write)?;
    tar.append_sparse(LAYER, 0o644, mtime, &layer, layer_len, &layer_segments).map_err(Error::Write)?;
    tar.append_sparse(DISK, 0o644, mtime, disk, size, &segments).map_err(Error::Write)?;
    tar.finish().and_then(|encoder| encoder.finish()).map_err(Error::Write)?.flush().map_err(Error::Write)?;
    Ok(Exported { data_bytes: segments.iter().map(|s| s.len).sum() })
}

/// An empty qcow2 of `size` bytes over `disk.img` (raw), in an unnamed
/// temporary file.
fn empty_layer(size: u64) -> Result<File> {
    let file = tempfile::tempfile().map_err(Error::Write)?;
    let options = vmimg_qcow2::OverlayOptions::new(DISK.to_owned(), vmimg_qcow2::BackingFormat::Raw, size);
    vmimg_qcow2::create_overlay(&file, &options).map_err(Error::Layer)?;
    Ok(file)
}

/// The most segments an export writes; past it, nearby segments merge.
const MAX_SEGMENTS: usize = 1 << 19;

/// The data runs of a sparse file, from SEEK_DATA/SEEK_HOLE. Should a
/// fragmented file have more than [`MAX_SEGMENTS`], runs separated by
/// ever larger holes are merged (the holes then travel as zeros, which
/// compress to nearly nothing), so an importer's map limit always holds.
fn data_segments(file: &File, size: u64) -> io::Result<Vec<Segment>> {
    let mut gap = 0u64;
    loop {
        let mut segments: Vec<Segment> = Vec::new();
        for extent in vmimg_disk::raw_extents(file, size) {
            let extent = extent?;
            if !matches!(extent.allocation, Allocation::Data { .. }) {
                continue;
            }
            match segments.last_mut() {
                Some(last) if extent.start - (last.offset + last.len) <= gap => {
                    last.len = extent.end() - last.offset;
                }
                _ => segments.push(Segment { offset: extent.start, len: extent.len }),
            }
            if segments.len() > MAX_SEGMENTS {
                break;
            }
        }
        if segments.len() <= MAX_SEGMENTS {
            return Ok(segments);
        }
        gap = (gap * 2).max(64 << 10);
    }
}

/// What an import found.
#[derive(Debug, Clone)]
pub struct Imported {
    pub machine: Machine,
    /// The disk's size: the layer's virtual size.
    pub virtual_size: u64,
    /// Bytes of the layer's clusters committed onto the disk.
    pub layer_bytes: u64,
}

/// Reads the bundle from `src`, to its end, into the raw disk `disk`
/// (created; the layer is committed onto it). `scratch` names a file for
/// the layer, removed when done. On error the caller removes `disk`.
pub fn import(
    mut src: impl Read,
    disk: &Path,
    scratch: &Path,
    limits: &Limits,
    integrity: Integrity,
) -> Result<Imported> {
    // What is no zstd stream is said to be what it is, not a frame error.
    let head = vmimg_disk::read_head(&mut src, vmimg_disk::PROBE_BYTES).map_err(Error::Read)?;
    if !head.is_empty() && !crate::frames::starts_like_a_frame(&head) {
        let problem = format!("it does not start with a zstd frame (found {})", describe(&head));
        return Err(Error::NotABundle { problem });
    }
    let src = io::Cursor::new(head).chain(src);
    let compressed = Frames::new(Bounded::new(src, limits.max_archive, "compressed bundle"), integrity);
    let mut decoder = zstd::Decoder::new(compressed).map_err(read_error)?;
    decoder.window_log_max(27).map_err(read_error)?;
    // The tar stream holds at most three files plus headers.
    let expanded = Bounded::new(decoder, limits.max_file.saturating_mul(3).saturating_add(64 << 20), "bundle");
    let (expanded, seen) = Watched::new(expanded);
    let mut reader = tar::Reader::new(expanded, tar::Limits { max_meta_bytes: 64 << 10, ..tar::Limits::default() });
    let result = read_entries(&mut reader, disk, scratch, limits)
        .map_err(|e| if_not_a_tar(e, &seen))
        .and_then(|found| read_past_archive(reader.into_inner()).map(|()| found))
        .and_then(|(machine, disk_size)| {
            let layer = File::open(scratch).map_err(io_error("open", scratch))?;
            let out = File::options().write(true).open(disk).map_err(io_error("open", disk))?;
            let (virtual_size, layer_bytes) = commit_layer(&layer, &out, disk_size, limits.max_file)?;
            out.sync_all().map_err(io_error("flush", disk))?;
            Ok(Imported { machine, virtual_size, layer_bytes })
        });
    let _ = std::fs::remove_file(scratch);
    result
}

/// What `head`, the first bytes of what should have been a bundle or the
/// tar inside one, is: a format probing names, text (with its first line),
/// or its first bytes.
fn describe(head: &[u8]) -> String {
    use vmimg_disk::{Content, NotADisk};
    if head.is_empty() {
        return "nothing (it is empty)".to_owned();
    }
    match vmimg_disk::probe(head, None) {
        Content::Raw | Content::NotADisk(NotADisk::TooSmall(_) | NotADisk::PartialSector(_) | NotADisk::Text) => {
            if vmimg_disk::looks_like_text(head) {
                let text = String::from_utf8_lossy(head);
                let line: String = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("").chars().take(60).collect();
                format!("text: {:?}", line.trim())
            } else {
                let bytes: Vec<String> = head.iter().take(8).map(|b| format!("{b:02x}")).collect();
                format!("bytes {} in no format vmimg knows", bytes.join(" "))
            }
        }
        content => content.noun(),
    }
}

/// An error reading the entries, made [`Error::NotABundle`] when the
/// decompressed stream, read without error, starts with no tar header
/// (`ustar` at 257, what GNU tar and vmimg write): what zstd unpacked is
/// something else (a compressed disk, say). Past a tar header, or on an
/// error of the stream below (zstd's, the frames'), it stays as it is.
fn if_not_a_tar(error: Error, seen: &Mutex<Seen>) -> Error {
    let seen = seen.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let no_tar_header = seen.head.len() < 512 || &seen.head[257..262] != b"ustar";
    match error {
        Error::Read(_) if !seen.failed && no_tar_header => {
            let advice = match vmimg_disk::probe(&seen.head, None) {
                vmimg_disk::Content::Raw | vmimg_disk::Content::Qcow2 => " (a compressed disk is pulled, not imported)",
                _ => "",
            };
            let found = describe(&seen.head);
            Error::NotABundle {
                problem: format!("it is zstd-compressed, but holds {found}, not a tar archive{advice}"),
            }
        }
        error => error,
    }
}

/// What [`Watched`] saw of the decompressed stream.
#[derive(Default)]
struct Seen {
    /// Its first bytes, up to [`vmimg_disk::PROBE_BYTES`].
    head: Vec<u8>,
    /// Whether reading it failed (a zstd or frame error, not a tar one).
    failed: bool,
}

/// The decompressed stream on its way to the tar reader, watched so that a
/// failure to read the first entry can tell a tar header that is no tar
/// header from an error below.
struct Watched<R> {
    inner: R,
    seen: std::sync::Arc<Mutex<Seen>>,
}

impl<R> Watched<R> {
    fn new(inner: R) -> (Self, std::sync::Arc<Mutex<Seen>>) {
        let seen = std::sync::Arc::new(Mutex::new(Seen::default()));
        (Watched { inner, seen: seen.clone() }, seen)
    }
}

impl<R: Read> Read for Watched<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let read = self.inner.read(buf);
        let mut seen = self.seen.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        match &read {
            Ok(n) => {
                let room = vmimg_disk::PROBE_BYTES.saturating_sub(seen.head.len()).min(*n);
                seen.head.extend_from_slice(&buf[..room]);
            }
            Err(_) => seen.failed = true,
        }
        read
    }
}

/// Reads every entry; returns the machine and the disk's size.
fn read_entries<R: Read>(
    reader: &mut tar::Reader<R>,
    disk: &Path,
    scratch: &Path,
    limits: &Limits,
) -> Result<(Machine, u64)> {
    let (mut machine, mut disk_size, mut layer_seen) = (None, None, false);
    let mut entries = 0;
    while let Some(entry) = reader.next_entry().map_err(read_error)? {
        entries += 1;
        if entries > 8 {
            return Err(Error::Refused(
                "the bundle has more entries than disk.img, layer.qcow2 and machine.json".into(),
            ));
        }
        let name = entry_name(&entry)?;
        let Some(name) = name else { continue };
        let seen = match name {
            DISK => disk_size.is_some(),
            LAYER => layer_seen,
            _ => machine.is_some(),
        };
        if seen {
            return Err(Error::Refused(format!("the bundle holds {name} twice")));
        }
        if entry.size > limits.max_file {
            return Err(Error::OverLimit { what: name.to_owned(), size: entry.size, limit: limits.max_file });
        }
        match name {
            DISK => disk_size = Some(extract(reader, &entry, disk, true)?),
            LAYER => layer_seen = extract(reader, &entry, scratch, false).map(|_| true)?,
            _ => {
                let bytes = reader.read_small(&entry, MAX_MACHINE_BYTES as u64).map_err(read_error)?;
                machine = Some(Machine::parse(&bytes)?);
            }
        }
    }
    let missing: Vec<&str> = [(DISK, disk_size.is_none()), (LAYER, !layer_seen), (MACHINE, machine.is_none())]
        .into_iter()
        .filter_map(|(name, missing)| missing.then_some(name))
        .collect();
    match (machine, disk_size) {
        (Some(machine), Some(size)) if missing.is_empty() => Ok((machine, size)),
        _ => Err(Error::Refused(format!("the bundle has no {}", missing.join(", no ")))),
    }
}

/// Reads what follows the tar archive's end to the end of the decompressed
/// stream, so that the decoder reaches the end of every frame (where it
/// checks the frame's checksum) and the end of the file. Only zeros may
/// follow the archive's end (tar pads it to its record size).
fn read_past_archive(mut rest: impl Read) -> Result<()> {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        match rest.read(&mut buf).map_err(read_error)? {
            0 => return Ok(()),
            n if vmimg_disk::is_zero(&buf[..n]) => continue,
            _ => return Err(Error::Refused("the bundle has data after its tar archive's end".into())),
        }
    }
}

/// One of the three names, or None for the archive's own `./` directory;
/// anything else is refused.
fn entry_name(entry: &tar::Entry) -> Result<Option<&'static str>> {
    let path = entry.path_lossy();
    let plain = path.strip_prefix("./").unwrap_or(&path);
    if entry.kind == Kind::Directory && (plain.is_empty() || plain == "." || plain == "./") {
        return Ok(None);
    }
    let name = [DISK, LAYER, MACHINE].into_iter().find(|n| *n == plain);
    match (name, entry.kind) {
        (Some(name), Kind::File) => Ok(Some(name)),
        (Some(name), kind) => Err(Error::Refused(format!("{name} in the bundle is a {kind:?}, not a regular file"))),
        (None, _) => Err(Error::Refused(format!(
            "unexpected entry {path:?} in the bundle: it may hold only {DISK}, {LAYER} and {MACHINE}"
        ))),
    }
}

/// Writes the entry's data into a new file at `path`, sparse; returns its size.
fn extract<R: Read>(reader: &mut tar::Reader<R>, entry: &tar::Entry, path: &Path, raw: bool) -> Result<u64> {
    let file = File::options().write(true).create_new(true).open(path).map_err(io_error("create", path))?;
    file.set_len(entry.size).map_err(io_error("size", path))?;
    let mut is_qcow2 = false;
    let read = reader.read_data(&mut |offset, piece| {
        if raw && offset == 0 && piece.starts_with(&vmimg_qcow2::MAGIC) {
            is_qcow2 = true;
            return Err(io::Error::other("qcow2"));
        }
        vmimg_disk::write_skipping_zeros(&file, piece, offset).map(drop)
    });
    if is_qcow2 {
        return Err(Error::Refused(format!("{DISK} is a qcow2 image; a bundle's disk must be raw")));
    }
    read.map_err(read_error)?;
    Ok(entry.size)
}

/// Checks the layer and writes its clusters onto the disk; returns the
/// disk's new size and the bytes committed. The layer's virtual size is the
/// disk's new size, so it answers to the same limit as the files.
fn commit_layer(layer: &File, disk: &File, disk_size: u64, max_size: u64) -> Result<(u64, u64)> {
    let image = Qcow2::open_with(layer, OpenOptions { allow_backing_file: true }).map_err(Error::Layer)?;
    let header = image.header();
    if header.backing_file.as_deref() != Some(DISK) {
        return Err(Error::Refused(format!(
            "{LAYER} must have {DISK} as its backing file, but names {:?}",
            header.backing_file.as_deref().unwrap_or("none")
        )));
    }
    if let Some(format) = header.backing_format.as_deref().filter(|f| *f != "raw") {
        return Err(Error::Refused(format!("{LAYER} says its backing file is {format}; {DISK} must be raw")));
    }
    let size = image.virtual_size();
    if size > max_size {
        return Err(Error::OverLimit { what: format!("the disk {LAYER} makes"), size, limit: max_size });
    }
    let mut decoder = image.decoder().map_err(Error::Layer)?;
    let mut buf = Vec::new();
    let mut committed = 0;
    for extent in image.extents(0) {
        let extent = extent.map_err(Error::Layer)?;
        match extent.allocation {
            Allocation::Unallocated => continue,
            Allocation::Zero => punch(disk, extent.start, extent.len)?,
            Allocation::Data { .. } | Allocation::Compressed { .. } => {
                for start in (extent.start..extent.end()).step_by(1 << 20) {
                    let len = (extent.end() - start).min(1 << 20) as usize;
                    buf.resize(len, 0);
                    image.read_at(&mut buf, start, &mut decoder).map_err(Error::Layer)?;
                    overwrite(disk, &buf, start)?;
                }
            }
        }
        committed += extent.len;
    }
    if size != disk_size {
        disk.set_len(size).map_err(Error::Write)?;
    }
    Ok((size, committed))
}

/// Writes `buf` at `offset`, punching out its all-zero blocks (which must
/// read as zeros over whatever the disk held).
fn overwrite(disk: &File, buf: &[u8], offset: u64) -> Result<()> {
    const BLOCK: usize = vmimg_disk::BLOCK as usize;
    for (i, block) in buf.chunks(BLOCK).enumerate() {
        let at = offset + (i * BLOCK) as u64;
        if vmimg_disk::is_zero(block) {
            punch(disk, at, block.len() as u64)?;
        } else {
            disk.write_all_at(block, at).map_err(Error::Write)?;
        }
    }
    Ok(())
}

fn punch(disk: &File, offset: u64, len: u64) -> Result<()> {
    fallocate(disk, FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE, offset, len)
        .map_err(|e| Error::Write(e.into()))
}

/// A reader that fails once more than `limit` bytes came through it.
struct Bounded<R> {
    inner: R,
    left: u64,
    limit: u64,
    what: &'static str,
}

impl<R> Bounded<R> {
    fn new(inner: R, limit: u64, what: &'static str) -> Self {
        Bounded { inner, left: limit, limit, what }
    }
}

impl<R: Read> Read for Bounded<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.left = self.left.checked_sub(n as u64).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("the {} is over its limit of {} bytes", self.what, self.limit),
            )
        })?;
        Ok(n)
    }
}
