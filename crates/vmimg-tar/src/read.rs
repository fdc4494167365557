//! The streaming tar reader.
//!
//! It yields each entry's metadata with the data segments of the file it
//! stores: one segment covering the file for an ordinary entry, the
//! segments of the sparse map for a sparse one, whatever way the map was
//! written (old GNU `S` entries with their extension blocks, PAX 0.0 key
//! pairs, PAX 0.1 `GNU.sparse.map`, PAX 1.0 maps in front of the data).
//! The caller then streams the data with [`Reader::read_data`], which hands
//! out each piece with its offset in the file, so holes are never
//! materialised.
//!
//! Everything read from the archive is bounded: PAX headers and GNU long
//! names by [`Limits::max_meta_bytes`], sparse maps by
//! [`Limits::max_segments`]; a map whose segments overlap, go backwards,
//! run past the file's size or disagree with the stored size is refused.
//! The reader does not judge names: the caller decides what may be
//! extracted where.

use crate::header::{BLOCK, Header, field, invalid, padding};
use crate::{Entry, Kind, Segment};
use std::io::{self, Read};

/// What an archive may make the reader hold in memory.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// The most metadata (PAX extended headers, GNU long names) in front
    /// of one entry, all of it together.
    pub max_meta_bytes: u64,
    /// The most segments one sparse map may have.
    pub max_segments: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_meta_bytes: 1 << 20, max_segments: 1 << 20 }
    }
}

/// Reads entries one after the other from a stream.
pub struct Reader<R> {
    src: R,
    limits: Limits,
    /// The data of the entry last returned that has not been read yet.
    current: Option<Current>,
    ended: bool,
    buf: Vec<u8>,
}

struct Current {
    segments: Vec<Segment>,
    /// Stored data bytes not yet consumed, and the padding after them.
    stored_left: u64,
    padding: u64,
}

/// Extended attributes from a PAX header, in order.
type Pax = Vec<(String, Vec<u8>)>;

/// A sparse file as its PAX records describe it.
struct PaxSparse {
    /// The file's real size.
    size: u64,
    map: Vec<Segment>,
    /// Bytes of map stored in front of the data (format 1.0).
    map_bytes: u64,
    name: Option<Vec<u8>>,
}

/// Metadata that precedes an entry: PAX records and GNU long names.
#[derive(Default)]
struct Pending {
    pax: Pax,
    long_name: Option<Vec<u8>>,
    long_link: Option<Vec<u8>>,
}

const DATA_CHUNK: usize = 1 << 20;

impl<R: Read> Reader<R> {
    pub fn new(src: R, limits: Limits) -> Self {
        Reader { src, limits, current: None, ended: false, buf: Vec::new() }
    }

    /// The next entry, skipping whatever of the previous one's data was not
    /// read; None at the end of the archive.
    pub fn next_entry(&mut self) -> io::Result<Option<Entry>> {
        self.skip_current()?;
        if self.ended {
            return Ok(None);
        }
        let mut pending = Pending::default();
        let mut meta_bytes = 0;
        loop {
            let header = self.read_header()?;
            if header.is_zero() {
                self.ended = true;
                return Ok(None);
            }
            header.check()?;
            let stored = header.number(field::SIZE, "size")?;
            let kind = header.kind();
            if !matches!(kind, b'x' | b'g' | b'L' | b'K') {
                return self.entry(&header, pending, stored).map(Some);
            }
            meta_bytes += stored;
            let data = self.read_meta(meta_bytes, stored)?;
            match kind {
                b'x' => pending.pax.extend(parse_pax(&data)?),
                b'L' => pending.long_name = Some(trim_nul(data)),
                b'K' => pending.long_link = Some(trim_nul(data)),
                _ => {} // a global PAX header: nothing in it applies to vmimg
            }
        }
    }

    /// Streams the data of the entry last returned, each piece with its
    /// offset in the file. Holes are not passed: the caller's file reads
    /// as zeros there once its size is set to [`Entry::size`].
    pub fn read_data(&mut self, sink: &mut dyn FnMut(u64, &[u8]) -> io::Result<()>) -> io::Result<()> {
        let current = self.current.take().ok_or_else(|| io::Error::other("no entry data left to read"))?;
        if self.buf.len() < DATA_CHUNK {
            self.buf.resize(DATA_CHUNK, 0);
        }
        let mut left = current.stored_left;
        for segment in &current.segments {
            left -= segment.len;
            let mut done = 0;
            while done < segment.len {
                let n = (segment.len - done).min(DATA_CHUNK as u64) as usize;
                read_full(&mut self.src, &mut self.buf[..n], "entry data")?;
                sink(segment.offset + done, &self.buf[..n])?;
                done += n as u64;
            }
        }
        skip(&mut self.src, left + current.padding)
    }

    /// The data of the entry last returned, whole, refusing more than `limit` bytes.
    pub fn read_small(&mut self, entry: &Entry, limit: u64) -> io::Result<Vec<u8>> {
        if entry.size > limit {
            return Err(invalid(format!("{} is {} bytes, over the limit of {limit}", entry.path_lossy(), entry.size)));
        }
        let mut data = vec![0u8; entry.size as usize];
        self.read_data(&mut |offset, piece| {
            data[offset as usize..offset as usize + piece.len()].copy_from_slice(piece);
            Ok(())
        })?;
        Ok(data)
    }

    pub fn into_inner(self) -> R {
        self.src
    }

    fn skip_current(&mut self) -> io::Result<()> {
        if let Some(current) = self.current.take() {
            skip(&mut self.src, current.stored_left + current.padding)?;
        }
        Ok(())
    }

    fn read_header(&mut self) -> io::Result<Header> {
        let mut block = [0u8; BLOCK];
        read_full(&mut self.src, &mut block, "a header (the archive is truncated)")?;
        Ok(Header(block))
    }

    /// The data of a metadata entry (PAX header, long name), refused when
    /// the metadata in front of one entry, `total` bytes with this one, is
    /// over the limit.
    fn read_meta(&mut self, total: u64, size: u64) -> io::Result<Vec<u8>> {
        if total > self.limits.max_meta_bytes {
            return Err(invalid(format!(
                "tar metadata in front of one entry is {total} bytes or more, over the limit of {}",
                self.limits.max_meta_bytes
            )));
        }
        let mut data = vec![0u8; size as usize];
        read_full(&mut self.src, &mut data, "a metadata entry")?;
        skip(&mut self.src, padding(size))?;
        Ok(data)
    }

    fn entry(&mut self, header: &Header, pending: Pending, header_size: u64) -> io::Result<Entry> {
        let pax = &pending.pax;
        let stored = pax_number(pax, "size")?.unwrap_or(header_size);
        let kind = Kind::from_flag(header.kind());
        let mut path = pending.long_name.unwrap_or_else(|| header.name());
        if let Some(p) = pax_value(pax, "path") {
            path = p.to_vec();
        }
        let mut link_name = pending.long_link.unwrap_or_else(|| header.link_name());
        if let Some(l) = pax_value(pax, "linkpath") {
            link_name = l.to_vec();
        }
        let mtime = match pax_value(pax, "mtime") {
            Some(v) if v.starts_with(b"-") => 0,
            Some(v) => decimal(v.split(|&b| b == b'.').next().unwrap_or_default(), "mtime")?,
            None => header.number(field::MTIME, "mtime")?,
        };
        let mode = header.number(field::MODE, "mode")? as u32 & 0o7777;
        let uid = pax_number(pax, "uid")?.map_or_else(|| header.number(field::UID, "uid"), Ok)?;
        let gid = pax_number(pax, "gid")?.map_or_else(|| header.number(field::GID, "gid"), Ok)?;
        let device = match kind {
            Kind::CharDevice | Kind::BlockDevice => (
                device_number(header.number(field::DEV_MAJOR, "device major")?)?,
                device_number(header.number(field::DEV_MINOR, "device minor")?)?,
            ),
            _ => (0, 0),
        };
        let xattrs = pax
            .iter()
            .filter_map(|(key, value)| Some((key.strip_prefix("SCHILY.xattr.")?.to_owned(), value.clone())))
            .collect();
        let (size, segments, map_bytes, sparse) = if !kind.has_data() {
            if pax.iter().any(|(key, _)| key.starts_with("GNU.sparse.")) {
                return Err(invalid(format!(
                    "a sparse map on {:?}, which is not a regular file",
                    String::from_utf8_lossy(&path)
                )));
            }
            (0, Vec::new(), 0, false)
        } else if header.kind() == b'S' && header.is_gnu() {
            (header.number(field::GNU_REAL_SIZE, "real size")?, self.old_gnu_map(header)?, 0, true)
        } else if let Some(sparse) = self.pax_sparse(pax)? {
            if let Some(name) = sparse.name {
                path = name;
            }
            (sparse.size, sparse.map, sparse.map_bytes, true)
        } else {
            (stored, vec![Segment { offset: 0, len: stored }], 0, false)
        };
        let stored_data =
            stored.checked_sub(map_bytes).ok_or_else(|| invalid("sparse map longer than its entry".into()))?;
        if kind.has_data() {
            check_map(&segments, size, stored_data)?;
        }
        self.current = Some(Current { segments: segments.clone(), stored_left: stored_data, padding: padding(stored) });
        Ok(Entry { path, kind, size, mode, uid, gid, mtime, device, xattrs, link_name, segments, sparse })
    }

    /// The map of an old GNU sparse entry: four pairs in the header, then
    /// extension blocks of 21 pairs while the "extended" flag is set.
    fn old_gnu_map(&mut self, header: &Header) -> io::Result<Vec<Segment>> {
        let mut map = Vec::new();
        push_pairs(&mut map, &header.0[field::GNU_SPARSE])?;
        let mut extended = header.0[field::GNU_IS_EXTENDED] != 0;
        while extended {
            if map.len() > self.limits.max_segments {
                return Err(too_many(self.limits.max_segments));
            }
            let block = self.read_header()?;
            push_pairs(&mut map, &block.0[..21 * 24])?;
            extended = block.0[504] != 0;
        }
        if map.len() > self.limits.max_segments {
            return Err(too_many(self.limits.max_segments));
        }
        Ok(map)
    }

    /// The sparse map a PAX header describes; None if the entry is not sparse.
    fn pax_sparse(&mut self, pax: &Pax) -> io::Result<Option<PaxSparse>> {
        let name = pax_value(pax, "GNU.sparse.name").map(<[u8]>::to_vec);
        if pax_value(pax, "GNU.sparse.major").is_some() {
            let (major, minor) = (pax_number(pax, "GNU.sparse.major")?, pax_number(pax, "GNU.sparse.minor")?);
            if (major, minor) != (Some(1), Some(0)) {
                return Err(invalid(format!("unknown PAX sparse format {major:?}.{minor:?}")));
            }
            let real = pax_number(pax, "GNU.sparse.realsize")?
                .ok_or_else(|| invalid("PAX sparse 1.0 entry without GNU.sparse.realsize".into()))?;
            let (map, map_bytes) = self.read_map_1_0()?;
            return Ok(Some(PaxSparse { size: real, map, map_bytes, name }));
        }
        let Some(real) = pax_number(pax, "GNU.sparse.size")? else { return Ok(None) };
        let numbers: Vec<u64> = if let Some(map) = pax_value(pax, "GNU.sparse.map") {
            if map.is_empty() {
                Vec::new()
            } else {
                map.split(|&b| b == b',').map(|n| decimal(n, "sparse map")).collect::<io::Result<_>>()?
            }
        } else {
            let pairs = pax.iter().filter(|(k, _)| k == "GNU.sparse.offset" || k == "GNU.sparse.numbytes");
            let mut expect_offset = true;
            let mut numbers = Vec::new();
            for (key, value) in pairs {
                if (key == "GNU.sparse.offset") != expect_offset {
                    return Err(invalid("PAX sparse 0.0 offsets and sizes out of turn".into()));
                }
                expect_offset = !expect_offset;
                numbers.push(decimal(value, key)?);
            }
            numbers
        };
        if !numbers.len().is_multiple_of(2) {
            return Err(invalid("PAX sparse map with an odd count of numbers".into()));
        }
        if numbers.len() / 2 > self.limits.max_segments {
            return Err(too_many(self.limits.max_segments));
        }
        let map = numbers.chunks_exact(2).map(|p| Segment { offset: p[0], len: p[1] }).collect();
        Ok(Some(PaxSparse { size: real, map, map_bytes: 0, name }))
    }

    /// The decimal lines in front of a PAX 1.0 sparse entry's data: the
    /// count, then offset and size of each segment; padded to a block.
    fn read_map_1_0(&mut self) -> io::Result<(Vec<Segment>, u64)> {
        let mut lines = MapLines { reader: self, block: Vec::new(), pos: 0, consumed: 0 };
        let count = lines.next_number()?;
        if count > lines.reader.limits.max_segments as u64 {
            return Err(too_many(lines.reader.limits.max_segments));
        }
        let mut map = Vec::with_capacity(count as usize);
        for _ in 0..count {
            map.push(Segment { offset: lines.next_number()?, len: lines.next_number()? });
        }
        Ok((map, lines.consumed))
    }
}

/// Reads the decimal lines of a PAX 1.0 map block by block.
struct MapLines<'a, R> {
    reader: &'a mut Reader<R>,
    block: Vec<u8>,
    pos: usize,
    consumed: u64,
}

impl<R: Read> MapLines<'_, R> {
    fn next_number(&mut self) -> io::Result<u64> {
        let mut digits = Vec::new();
        loop {
            if self.pos == self.block.len() {
                let mut block = [0u8; BLOCK];
                read_full(&mut self.reader.src, &mut block, "a sparse map")?;
                self.block = block.to_vec();
                self.pos = 0;
                self.consumed += BLOCK as u64;
            }
            let b = self.block[self.pos];
            self.pos += 1;
            match b {
                b'\n' => return decimal(&digits, "sparse map"),
                b'0'..=b'9' if digits.len() < 20 => digits.push(b),
                _ => return Err(invalid("bad PAX sparse 1.0 map".into())),
            }
        }
    }
}

impl Kind {
    fn from_flag(flag: u8) -> Kind {
        match flag {
            b'0' | b'\0' | b'7' | b'S' => Kind::File,
            b'1' => Kind::HardLink,
            b'2' => Kind::Symlink,
            b'3' => Kind::CharDevice,
            b'4' => Kind::BlockDevice,
            b'5' => Kind::Directory,
            b'6' => Kind::Fifo,
            other => Kind::Other(other),
        }
    }

    /// Whether the stored bytes are the entry's content.
    fn has_data(self) -> bool {
        matches!(self, Kind::File)
    }
}

/// Checks a map: in order, not overlapping, inside the file, and adding up
/// to the stored data.
fn check_map(map: &[Segment], size: u64, stored: u64) -> io::Result<()> {
    let mut end = 0u64;
    let mut total = 0u64;
    for segment in map {
        let segment_end = segment.offset.checked_add(segment.len).filter(|&e| e <= size);
        let Some(segment_end) = segment_end.filter(|_| segment.offset >= end) else {
            return Err(invalid(format!(
                "sparse map segment {}+{} overlaps, goes backwards or runs past the file's {size} bytes",
                segment.offset, segment.len
            )));
        };
        end = segment_end;
        total += segment.len;
    }
    if total != stored {
        return Err(invalid(format!("sparse map holds {total} bytes but the entry stores {stored}")));
    }
    Ok(())
}

/// Appends the used (offset, length) pairs of old GNU sparse slots.
fn push_pairs(map: &mut Vec<Segment>, slots: &[u8]) -> io::Result<()> {
    for slot in slots.chunks_exact(24) {
        if slot.iter().all(|&b| b == 0) {
            break;
        }
        let number = |range: std::ops::Range<usize>| {
            crate::header::parse_number(&slot[range]).ok_or_else(|| invalid("bad old GNU sparse map".into()))
        };
        map.push(Segment { offset: number(0..12)?, len: number(12..24)? });
    }
    Ok(())
}

/// The records of a PAX extended header: `LEN key=value\n`, LEN counting
/// the whole record.
fn parse_pax(data: &[u8]) -> io::Result<Pax> {
    let mut records = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        let space = rest.iter().position(|&b| b == b' ').ok_or_else(|| bad_pax("no length"))?;
        let len = decimal(&rest[..space], "PAX record length")? as usize;
        if len <= space + 1 || len > rest.len() || rest[len - 1] != b'\n' {
            return Err(bad_pax("a record length that does not fit"));
        }
        let record = &rest[space + 1..len - 1];
        let eq = record.iter().position(|&b| b == b'=').ok_or_else(|| bad_pax("no '='"))?;
        let key = std::str::from_utf8(&record[..eq]).map_err(|_| bad_pax("a key that is not UTF-8"))?;
        records.push((key.to_owned(), record[eq + 1..].to_vec()));
        rest = &rest[len..];
    }
    Ok(records)
}

fn bad_pax(what: &str) -> io::Error {
    invalid(format!("bad PAX extended header: {what}"))
}

/// The last value of `key` (later records override earlier ones).
fn pax_value<'a>(pax: &'a Pax, key: &str) -> Option<&'a [u8]> {
    pax.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v.as_slice())
}

fn pax_number(pax: &Pax, key: &str) -> io::Result<Option<u64>> {
    pax_value(pax, key).map(|v| decimal(v, key)).transpose()
}

fn decimal(digits: &[u8], what: &str) -> io::Result<u64> {
    std::str::from_utf8(digits)
        .ok()
        .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| invalid(format!("bad number in tar {what}: {:?}", String::from_utf8_lossy(digits))))
}

fn device_number(n: u64) -> io::Result<u32> {
    u32::try_from(n).map_err(|_| invalid(format!("tar device number {n} is too large")))
}

fn trim_nul(mut data: Vec<u8>) -> Vec<u8> {
    if let Some(end) = data.iter().position(|&b| b == 0) {
        data.truncate(end);
    }
    data
}

fn too_many(limit: usize) -> io::Error {
    invalid(format!("sparse map with more than {limit} segments"))
}

fn read_full(src: &mut impl Read, buf: &mut [u8], what: &str) -> io::Result<()> {
    src.read_exact(buf).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => invalid(format!("tar archive ends in the middle of {what}")),
        _ => e,
    })
}

fn skip(src: &mut impl Read, len: u64) -> io::Result<()> {
    let copied = io::copy(&mut src.take(len), &mut io::sink())?;
    if copied < len {
        return Err(invalid("tar archive ends in the middle of an entry".into()));
    }
    Ok(())
}
