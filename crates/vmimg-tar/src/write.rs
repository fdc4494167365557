//! The streaming tar writer.
//!
//! Entries are ustar; a name over 100 bytes or a size over 8 GiB goes into
//! a PAX extended header in front. Sparse files are PAX 1.0: the header
//! names `GNUSparseFile.0/<name>` (what an old reader extracts, map and
//! all), the PAX records carry the real name and size, and the data starts
//! with the map as decimal lines, padded to a block.

use crate::header::{BLOCK, Fields, Header, MAX_OCTAL_ID, MAX_OCTAL_SIZE, padding};
use crate::{Entry, Kind, Segment};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;

/// Takes a file's content as pieces at their offsets.
pub type Sink<'a> = dyn FnMut(u64, &[u8]) -> io::Result<()> + 'a;

/// Writes entries to a stream; [`Writer::finish`] ends the archive.
pub struct Writer<W: Write> {
    out: W,
    buf: Vec<u8>,
}

const COPY_CHUNK: usize = 1 << 20;

impl<W: Write> Writer<W> {
    pub fn new(out: W) -> Self {
        Writer { out, buf: Vec::new() }
    }

    /// A regular file holding `data`.
    pub fn append_bytes(&mut self, name: &str, mode: u32, mtime: u64, data: &[u8]) -> io::Result<()> {
        self.header(name, b'0', data.len() as u64, mode, mtime, &[])?;
        self.out.write_all(data)?;
        self.pad(data.len() as u64)
    }

    /// A regular file holding the segments of `file` (its holes stored as
    /// holes) for a file of `size` bytes. Like GNU tar, the map ends with an
    /// empty segment at `size` when the file ends in a hole, so that
    /// extractors extend the file to its size. Segments are widened to
    /// 512-byte blocks (clamped to `size`): GNU tar starts each segment's
    /// data on a block.
    pub fn append_sparse(
        &mut self,
        name: &str,
        mode: u32,
        mtime: u64,
        file: &File,
        size: u64,
        segments: &[Segment],
    ) -> io::Result<()> {
        let mut segments = block_aligned(segments, size);
        let end = segments.last().map_or(0, |s| s.offset + s.len);
        if end < size {
            segments.push(Segment { offset: size, len: 0 });
        }
        let mut map = format!("{}\n", segments.len());
        for s in &segments {
            map.push_str(&format!("{}\n{}\n", s.offset, s.len));
        }
        let map_len = map.len() as u64 + padding(map.len() as u64);
        let data: u64 = segments.iter().map(|s| s.len).sum();
        let sparse_records = [
            ("GNU.sparse.major", "1".to_owned()),
            ("GNU.sparse.minor", "0".to_owned()),
            ("GNU.sparse.name", name.to_owned()),
            ("GNU.sparse.realsize", size.to_string()),
        ];
        let stored = map_len + data;
        self.header(&format!("GNUSparseFile.0/{name}"), b'0', stored, mode, mtime, &sparse_records)?;
        self.out.write_all(map.as_bytes())?;
        self.pad(map.len() as u64)?;
        for segment in &segments {
            self.copy_range(file, segment)?;
        }
        self.pad(stored)
    }

    /// Any entry, as `entry` describes it (its segments and sparseness
    /// aside: a file's `entry.size` bytes are read from `content` and
    /// stored whole). Owners, device numbers, links and xattrs
    /// (`SCHILY.xattr.*`) are kept; a hard link's header carries its own
    /// metadata, as GNU tar writes it.
    pub fn append(&mut self, entry: &Entry, content: &mut dyn Read) -> io::Result<()> {
        let mut read = 0u64;
        self.append_pieces(entry, &mut |sink| {
            let mut buf = vec![0; COPY_CHUNK];
            let mut reader = content.take(entry.size);
            loop {
                let n = reader.read(&mut buf)?;
                if n == 0 {
                    return Ok(());
                }
                sink(read, &buf[..n])?;
                read += n as u64;
            }
        })?;
        if entry.kind == Kind::File && read != entry.size {
            let message = format!("{}: {read} of {} bytes to archive", entry.path_lossy(), entry.size);
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, message));
        }
        Ok(())
    }

    /// [`Writer::append`] with a file's content given as pieces at their
    /// offsets, in order (as [`Reader::read_data`](crate::Reader::read_data)
    /// gives them): what lies between them and after the last is stored as
    /// zeros (a hole).
    pub fn append_pieces(
        &mut self,
        entry: &Entry,
        pieces: &mut dyn FnMut(&mut Sink) -> io::Result<()>,
    ) -> io::Result<()> {
        let size = if entry.kind == Kind::File { entry.size } else { 0 };
        let fields = Fields {
            name: &entry.path,
            kind: kind_flag(entry.kind),
            size,
            mode: entry.mode,
            uid: entry.uid,
            gid: entry.gid,
            mtime: entry.mtime,
            link_name: &entry.link_name,
            device: entry.device,
        };
        let mut records: Vec<(String, Vec<u8>)> = Vec::new();
        if entry.link_name.len() > 100 {
            records.push(("linkpath".into(), entry.link_name.clone()));
        }
        for (id, value) in [("uid", entry.uid), ("gid", entry.gid)] {
            if value > MAX_OCTAL_ID {
                records.push((id.into(), value.to_string().into_bytes()));
            }
        }
        for (name, value) in &entry.xattrs {
            records.push((format!("SCHILY.xattr.{name}"), value.clone()));
        }
        if std::str::from_utf8(&entry.path).is_err() || std::str::from_utf8(&entry.link_name).is_err() {
            records.push(("hdrcharset".into(), b"BINARY".to_vec()));
        }
        self.write_header(&fields, records)?;
        let mut written = 0u64;
        let out = &mut self.out;
        pieces(&mut |offset, piece| {
            let end = offset.checked_add(piece.len() as u64).filter(|&end| offset >= written && end <= size);
            let end = end.ok_or_else(|| io::Error::other(format!("{}: a piece out of order", entry.path_lossy())))?;
            write_zeros(out, offset - written)?;
            out.write_all(piece)?;
            written = end;
            Ok(())
        })?;
        write_zeros(&mut self.out, size - written)?;
        self.pad(size)
    }

    /// Ends the archive (two zero blocks) and returns the stream.
    pub fn finish(mut self) -> io::Result<W> {
        self.out.write_all(&[0u8; 2 * BLOCK])?;
        self.out.flush()?;
        Ok(self.out)
    }

    /// The header of an entry, behind a PAX header when `records` or a long
    /// name or size need one.
    fn header(
        &mut self,
        name: &str,
        kind: u8,
        size: u64,
        mode: u32,
        mtime: u64,
        records: &[(&str, String)],
    ) -> io::Result<()> {
        let fields = Fields { name: name.as_bytes(), kind, size, mode, mtime, ..Fields::default() };
        self.write_header(&fields, records.iter().map(|(k, v)| ((*k).to_owned(), v.clone().into_bytes())).collect())
    }

    /// `fields`' header, behind a PAX header holding `records` and what
    /// does not fit the header (a long name, a large size).
    fn write_header(&mut self, fields: &Fields, mut records: Vec<(String, Vec<u8>)>) -> io::Result<()> {
        if fields.name.len() > 100 {
            records.push(("path".into(), fields.name.to_vec()));
        }
        if fields.size > MAX_OCTAL_SIZE {
            records.push(("size".into(), fields.size.to_string().into_bytes()));
        }
        if !records.is_empty() {
            let body: Vec<u8> = records.iter().flat_map(|(k, v)| pax_record(k, v)).collect();
            let leaf = fields.name.rsplit(|&b| b == b'/').next().unwrap_or(fields.name);
            let pax_name = [b"PaxHeaders/".as_slice(), leaf].concat();
            self.out.write_all(&Header::ustar(&pax_name, b'x', body.len() as u64, 0o644, fields.mtime).0)?;
            self.out.write_all(&body)?;
            self.pad(body.len() as u64)?;
        }
        self.out.write_all(&Header::of(fields).0)
    }

    fn copy_range(&mut self, file: &File, segment: &Segment) -> io::Result<()> {
        if self.buf.len() < COPY_CHUNK {
            self.buf.resize(COPY_CHUNK, 0);
        }
        let mut done = 0;
        while done < segment.len {
            let n = (segment.len - done).min(COPY_CHUNK as u64) as usize;
            file.read_exact_at(&mut self.buf[..n], segment.offset + done)?;
            self.out.write_all(&self.buf[..n])?;
            done += n as u64;
        }
        Ok(())
    }

    fn pad(&mut self, len: u64) -> io::Result<()> {
        self.out.write_all(&[0u8; BLOCK][..padding(len) as usize])
    }
}

/// `len` zero bytes.
fn write_zeros(out: &mut impl Write, mut len: u64) -> io::Result<()> {
    static ZEROS: [u8; 64 << 10] = [0; 64 << 10];
    while len > 0 {
        let n = len.min(ZEROS.len() as u64) as usize;
        out.write_all(&ZEROS[..n])?;
        len -= n as u64;
    }
    Ok(())
}

/// The segments widened to whole 512-byte blocks (the last one may end at
/// `size`), merged where they then touch.
fn block_aligned(segments: &[Segment], size: u64) -> Vec<Segment> {
    let mut aligned: Vec<Segment> = Vec::with_capacity(segments.len());
    for s in segments.iter().filter(|s| s.len > 0) {
        let start = s.offset / BLOCK as u64 * BLOCK as u64;
        let end = (s.offset + s.len).next_multiple_of(BLOCK as u64).min(size);
        match aligned.last_mut() {
            Some(last) if last.offset + last.len >= start => last.len = end.max(last.offset + last.len) - last.offset,
            _ => aligned.push(Segment { offset: start, len: end - start }),
        }
    }
    aligned
}

/// `LEN key=value\n`, where LEN counts the whole record, its own digits too
/// (the value may be any bytes: the length delimits it).
fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    let body = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut len = body + body.to_string().len();
    if len.to_string().len() + body != len {
        len += 1;
    }
    [format!("{len} {key}=").as_bytes(), value, b"\n"].concat()
}

/// The type flag of `kind`.
fn kind_flag(kind: Kind) -> u8 {
    match kind {
        Kind::File => b'0',
        Kind::HardLink => b'1',
        Kind::Symlink => b'2',
        Kind::CharDevice => b'3',
        Kind::BlockDevice => b'4',
        Kind::Directory => b'5',
        Kind::Fifo => b'6',
        Kind::Other(flag) => flag,
    }
}
