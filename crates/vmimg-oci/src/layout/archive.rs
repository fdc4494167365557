//! Where the members of an OCI archive lie: its tar headers, read once.
//!
//! An OCI archive (`skopeo copy … oci-archive:FILE`, or `tar -cf` of a
//! layout) needs a small part of tar: ustar and GNU headers, PAX `path`
//! and `size` records, GNU long names (`L`), base-256 sizes. Each header's
//! checksum is checked. Regular files are recorded with the offset and
//! size of their data; directories are passed. Everything else is refused,
//! naming the member: links (a blob behind a link could be anything),
//! devices and FIFOs, sparse members (old GNU `S`, PAX `GNU.sparse.*`),
//! absolute names and names with `..`, a name seen twice, data running past
//! the end of the file, more than [`MAX_HEADERS`] headers, PAX headers or
//! long names over [`MAX_META_BYTES`].
//!
//! Refusals are `io::Error`s of kind `InvalidData`; other kinds come from
//! reading the file.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// The most headers (members, PAX headers, long names) an archive may hold.
pub const MAX_HEADERS: usize = 1 << 16;
/// The largest PAX extended header or GNU long name.
pub const MAX_META_BYTES: u64 = 64 << 10;

const BLOCK: u64 = 512;

/// Where a regular file's data lies in the archive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Member {
    pub offset: u64,
    pub size: u64,
}

/// The regular files of the archive `file`, by name (normalized: no `./`,
/// no empty components, no trailing slash).
pub(crate) fn scan(file: &File) -> io::Result<HashMap<String, Member>> {
    let len = file.metadata()?.len();
    let mut members = HashMap::new();
    let mut names = HashSet::new();
    let mut pending = Pending::default();
    let mut pos = 0u64;
    for headers in 1.. {
        // Two zero blocks end an archive; an end without them is taken too.
        if pos == len {
            break;
        }
        let header = Header::read(file, pos, len)?;
        if header.is_zero() {
            break;
        }
        if headers > MAX_HEADERS {
            return Err(refused(format!("more than {MAX_HEADERS} tar headers")));
        }
        header.check(pos)?;
        let data = pos + BLOCK;
        let flag = header.0[156];
        let is_meta = matches!(flag, b'x' | b'g' | b'L');
        let size = match pending.size.take() {
            Some(size) if !is_meta => size,
            _ => header.size()?,
        };
        let end = data.checked_add(size).filter(|&end| end <= len).ok_or_else(|| {
            refused(format!("a member of {size} bytes at offset {data} runs past the end of the archive ({len} bytes)"))
        })?;
        match flag {
            b'x' => pending.add_pax(&read_meta(file, data, size)?)?,
            b'g' => {}
            b'L' => {
                let name = read_meta(file, data, size)?;
                pending.path = Some(name.split(|&b| b == 0).next().unwrap_or_default().to_vec());
            }
            _ => {
                let raw = pending.path.take().unwrap_or_else(|| header.name());
                let name = normalize(&raw)?;
                if !names.insert(name.clone()) {
                    return Err(refused(format!("member {name:?} appears twice")));
                }
                match flag {
                    b'0' | b'\0' | b'7' if name.is_empty() => return Err(refused("a file without a name".into())),
                    b'0' | b'\0' | b'7' => drop(members.insert(name, Member { offset: data, size })),
                    b'5' if size == 0 => {}
                    b'5' => return Err(refused(format!("directory {name:?} has {size} bytes of data"))),
                    b'1' | b'2' => return Err(refused(format!("member {name:?} is a link; links are refused"))),
                    other => {
                        return Err(refused(format!(
                            "member {name:?} has tar type {:?}: an OCI archive holds regular files and directories only",
                            other as char
                        )));
                    }
                }
            }
        }
        pos = end + padding(size);
    }
    Ok(members)
}

/// What PAX headers and long names say of the next member.
#[derive(Default)]
struct Pending {
    path: Option<Vec<u8>>,
    size: Option<u64>,
}

impl Pending {
    /// Takes the records of a PAX extended header: `LEN key=value\n`,
    /// LEN counting the whole record.
    fn add_pax(&mut self, mut records: &[u8]) -> io::Result<()> {
        let bad = |what: &str| refused(format!("bad PAX extended header: {what}"));
        while !records.is_empty() {
            let space = records.iter().position(|&b| b == b' ').ok_or_else(|| bad("a record without a length"))?;
            let len: usize =
                ascii(&records[..space]).and_then(|n| n.parse().ok()).ok_or_else(|| bad("a bad length"))?;
            if len <= space + 1 || len > records.len() || records[len - 1] != b'\n' {
                return Err(bad("a length that does not fit"));
            }
            let (record, rest) = records.split_at(len);
            records = rest;
            let body = &record[space + 1..len - 1];
            let eq = body.iter().position(|&b| b == b'=').ok_or_else(|| bad("a record without '='"))?;
            let (key, value) = (&body[..eq], &body[eq + 1..]);
            match key {
                b"path" => self.path = Some(value.to_vec()),
                b"size" => {
                    let size = ascii(value).filter(|v| v.bytes().all(|b| b.is_ascii_digit()));
                    self.size = Some(size.and_then(|v| v.parse().ok()).ok_or_else(|| bad("a bad size"))?);
                }
                key if key.starts_with(b"GNU.sparse.") => {
                    return Err(refused("a sparse member (PAX GNU.sparse records) is refused".into()));
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// One 512-byte header block.
struct Header([u8; BLOCK as usize]);

impl Header {
    fn read(file: &File, pos: u64, len: u64) -> io::Result<Header> {
        if len - pos < BLOCK {
            return Err(refused(format!("the archive ends inside a header, at offset {pos}")));
        }
        let mut block = [0u8; BLOCK as usize];
        file.read_exact_at(&mut block, pos)?;
        Ok(Header(block))
    }

    fn is_zero(&self) -> bool {
        self.0.iter().all(|&b| b == 0)
    }

    /// Fails unless the block has a ustar or GNU magic and its checksum
    /// (the unsigned sum, or the historic signed one) matches.
    fn check(&self, pos: u64) -> io::Result<()> {
        if &self.0[257..262] != b"ustar" {
            return Err(refused(format!("no tar header at offset {pos} (not a tar archive, or a corrupt one)")));
        }
        let stored = number(&self.0[148..156]);
        let (mut unsigned, mut signed) = (0u64, 0i64);
        for (i, &b) in self.0.iter().enumerate() {
            let b = if (148..156).contains(&i) { b' ' } else { b };
            unsigned += u64::from(b);
            signed += i64::from(b as i8);
        }
        if stored.is_some_and(|s| s == unsigned || s as i64 == signed) {
            Ok(())
        } else {
            Err(refused(format!("the tar header at offset {pos} has a wrong checksum")))
        }
    }

    fn size(&self) -> io::Result<u64> {
        number(&self.0[124..136]).ok_or_else(|| refused("a tar header with a bad size field".into()))
    }

    /// The name, behind its ustar prefix when it has one (GNU headers use
    /// that space for other things).
    fn name(&self) -> Vec<u8> {
        let text = |field: &[u8]| field.split(|&b| b == 0).next().unwrap_or_default().to_vec();
        let name = text(&self.0[0..100]);
        let posix = &self.0[257..263] == b"ustar\0";
        match text(&self.0[345..500]) {
            prefix if posix && !prefix.is_empty() => [prefix, b"/".to_vec(), name].concat(),
            _ => name,
        }
    }
}

/// A number field: octal text (padded with spaces or NULs), or base-256
/// when its first byte is 0x80 (GNU, for values that do not fit).
fn number(field: &[u8]) -> Option<u64> {
    match field.split_first()? {
        (0x80, digits) => digits.iter().try_fold(0u64, |n, &b| n.checked_mul(256)?.checked_add(u64::from(b))),
        (first, _) if first & 0x80 != 0 => None,
        _ => {
            let digits = ascii(field)?.trim_matches([' ', '\0']);
            if !digits.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
                return None;
            }
            if digits.is_empty() { Some(0) } else { u64::from_str_radix(digits, 8).ok() }
        }
    }
}

fn ascii(bytes: &[u8]) -> Option<&str> {
    std::str::from_utf8(bytes).ok().filter(|s| s.is_ascii())
}

/// The data of a PAX header or long name, bounded.
fn read_meta(file: &File, offset: u64, size: u64) -> io::Result<Vec<u8>> {
    if size > MAX_META_BYTES {
        return Err(refused(format!("a PAX header or long name of {size} bytes (the limit is {MAX_META_BYTES})")));
    }
    let mut data = vec![0u8; size as usize];
    file.read_exact_at(&mut data, offset)?;
    Ok(data)
}

/// `name` without `./`, empty components or a trailing slash; absolute
/// names, `..` and names that are not UTF-8 are refused.
fn normalize(raw: &[u8]) -> io::Result<String> {
    let shown = String::from_utf8_lossy(raw);
    let text = std::str::from_utf8(raw).map_err(|_| refused(format!("member {shown:?}: a name that is not UTF-8")))?;
    if text.starts_with('/') {
        return Err(refused(format!("member {shown:?}: an absolute name")));
    }
    let mut parts = Vec::new();
    for part in text.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err(refused(format!("member {shown:?}: a name with '..'"))),
            part => parts.push(part),
        }
    }
    Ok(parts.join("/"))
}

/// Bytes of padding after `len` bytes of data, to the next block.
fn padding(len: u64) -> u64 {
    (BLOCK - len % BLOCK) % BLOCK
}

fn refused(reason: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, reason)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_names() {
        let fields: [(&[u8], Option<u64>); 9] = [
            (b"0000644\0", Some(0o644)),
            (b"  644 \0", Some(0o644)),
            (b"\0\0\0", Some(0)),
            (&[0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0], Some(512)),
            (&[0xff, 0xff, 0xff], None),                      // negative
            (&[0x80, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], None), // over 64 bits
            (b"+17\0", None),
            (b"1 7\0", None),
            (b"9\0", None),
        ];
        for (field, value) in fields {
            assert_eq!(number(field), value, "{field:?}");
        }
        assert_eq!(normalize(b"./blobs//sha256/").unwrap(), "blobs/sha256");
        assert_eq!(normalize(b".").unwrap(), "");
        for bad in [&b"/etc/passwd"[..], b"blobs/../../x", b"..", b"\xff"] {
            assert_eq!(normalize(bad).unwrap_err().kind(), io::ErrorKind::InvalidData);
        }
    }
}
