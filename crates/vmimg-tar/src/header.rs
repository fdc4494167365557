//! One 512-byte tar header block: its fields, numbers and checksum.
//!
//! Numbers are octal ASCII (ustar) or, when the first byte has its high bit
//! set, big-endian base-256 (the GNU extension for values that do not fit);
//! negative base-256 values are refused. The checksum is checked as POSIX
//! says (unsigned sum, with the historic signed sum also accepted).

use std::io;

pub(crate) const BLOCK: usize = 512;

/// Byte ranges of the fields vmimg reads or writes.
pub(crate) mod field {
    use std::ops::Range;
    pub const NAME: Range<usize> = 0..100;
    pub const MODE: Range<usize> = 100..108;
    pub const UID: Range<usize> = 108..116;
    pub const GID: Range<usize> = 116..124;
    pub const SIZE: Range<usize> = 124..136;
    pub const MTIME: Range<usize> = 136..148;
    pub const CHECKSUM: Range<usize> = 148..156;
    pub const TYPE: usize = 156;
    pub const LINK_NAME: Range<usize> = 157..257;
    pub const MAGIC: Range<usize> = 257..265;
    pub const DEV_MAJOR: Range<usize> = 329..337;
    pub const DEV_MINOR: Range<usize> = 337..345;
    pub const PREFIX: Range<usize> = 345..500;
    /// Old GNU sparse: four (offset, length) pairs of 12 bytes each.
    pub const GNU_SPARSE: Range<usize> = 386..482;
    pub const GNU_IS_EXTENDED: usize = 482;
    pub const GNU_REAL_SIZE: Range<usize> = 483..495;
}

pub(crate) const USTAR_MAGIC: &[u8; 8] = b"ustar\x0000";
pub(crate) const GNU_MAGIC: &[u8; 8] = b"ustar  \x00";

/// A header block.
pub(crate) struct Header(pub(crate) [u8; BLOCK]);

impl Header {
    pub(crate) fn is_zero(&self) -> bool {
        self.0.iter().all(|&b| b == 0)
    }

    pub(crate) fn kind(&self) -> u8 {
        self.0[field::TYPE]
    }

    pub(crate) fn is_gnu(&self) -> bool {
        &self.0[field::MAGIC] == GNU_MAGIC
    }

    pub(crate) fn is_ustar(&self) -> bool {
        self.0[field::MAGIC][..6] == USTAR_MAGIC[..6]
    }

    /// The name, with the ustar prefix joined in front when there is one.
    pub(crate) fn name(&self) -> Vec<u8> {
        let name = text(&self.0[field::NAME]);
        let prefix = if self.is_ustar() && !self.is_gnu() { text(&self.0[field::PREFIX]) } else { &[] };
        if prefix.is_empty() { name.to_vec() } else { [prefix, b"/", name].concat() }
    }

    pub(crate) fn link_name(&self) -> Vec<u8> {
        text(&self.0[field::LINK_NAME]).to_vec()
    }

    pub(crate) fn number(&self, range: std::ops::Range<usize>, what: &str) -> io::Result<u64> {
        parse_number(&self.0[range]).ok_or_else(|| invalid(format!("tar header: bad {what} field")))
    }

    /// Fails unless the stored checksum matches the block.
    pub(crate) fn check(&self) -> io::Result<()> {
        let stored = self.number(field::CHECKSUM, "checksum")?;
        let (unsigned, signed) = checksums(&self.0);
        if stored == unsigned || stored as i64 == signed {
            Ok(())
        } else {
            Err(invalid(format!(
                "tar header checksum mismatch (stored {stored}, computed {unsigned}): not a tar archive, or a corrupt one"
            )))
        }
    }

    /// A fresh ustar header: `name` must fit 100 bytes, `size` 11 octal
    /// digits (the caller puts larger values in a PAX header).
    pub(crate) fn ustar(name: &[u8], kind: u8, size: u64, mode: u32, mtime: u64) -> Header {
        Header::of(&Fields { name, kind, size, mode, mtime, ..Fields::default() })
    }

    /// A fresh ustar header of `fields`; what does not fit its field (a
    /// name or link over 100 bytes, numbers over 7 or 11 octal digits) is
    /// cut or capped: the caller puts it in a PAX header.
    pub(crate) fn of(fields: &Fields) -> Header {
        let mut block = [0u8; BLOCK];
        let put_text = |block: &mut [u8; BLOCK], range: std::ops::Range<usize>, text: &[u8]| {
            let text = &text[..text.len().min(range.len())];
            block[range.start..range.start + text.len()].copy_from_slice(text);
        };
        put_text(&mut block, field::NAME, fields.name);
        put_text(&mut block, field::LINK_NAME, fields.link_name);
        put_octal(&mut block[field::MODE], u64::from(fields.mode & 0o7777));
        put_octal(&mut block[field::UID], fields.uid.min(MAX_OCTAL_ID));
        put_octal(&mut block[field::GID], fields.gid.min(MAX_OCTAL_ID));
        put_octal(&mut block[field::SIZE], fields.size.min(MAX_OCTAL_SIZE));
        put_octal(&mut block[field::MTIME], fields.mtime.min(MAX_OCTAL_SIZE));
        put_octal(&mut block[field::DEV_MAJOR], u64::from(fields.device.0).min(MAX_OCTAL_ID));
        put_octal(&mut block[field::DEV_MINOR], u64::from(fields.device.1).min(MAX_OCTAL_ID));
        block[field::TYPE] = fields.kind;
        block[field::MAGIC].copy_from_slice(USTAR_MAGIC);
        let (sum, _) = checksums(&block);
        put_octal(&mut block[field::CHECKSUM][..7], sum);
        block[field::CHECKSUM.end - 1] = b' ';
        Header(block)
    }
}

/// The largest value an 11-digit octal field holds (8 GiB - 1).
pub(crate) const MAX_OCTAL_SIZE: u64 = 0o77777777777;

/// The largest value a 7-digit octal field (ids, device numbers) holds.
pub(crate) const MAX_OCTAL_ID: u64 = 0o7777777;

/// What a written header says.
#[derive(Default)]
pub(crate) struct Fields<'a> {
    pub(crate) name: &'a [u8],
    pub(crate) kind: u8,
    pub(crate) size: u64,
    pub(crate) mode: u32,
    pub(crate) uid: u64,
    pub(crate) gid: u64,
    pub(crate) mtime: u64,
    pub(crate) link_name: &'a [u8],
    pub(crate) device: (u32, u32),
}

/// The field's bytes up to the first NUL.
fn text(field: &[u8]) -> &[u8] {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    &field[..end]
}

/// Octal ASCII (leading spaces, trailing spaces or NULs) or positive base-256.
pub(crate) fn parse_number(field: &[u8]) -> Option<u64> {
    if field.first().is_some_and(|&b| b & 0x80 != 0) {
        if field[0] != 0x80 {
            return None; // negative (0xff) or a value wider than 64 bits
        }
        let digits = &field[1..];
        let significant = digits.iter().position(|&b| b != 0).unwrap_or(digits.len());
        if digits.len() - significant > 8 {
            return None;
        }
        return Some(digits.iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b)));
    }
    let digits = field.iter().skip_while(|&&b| b == b' ');
    let digits: Vec<u8> = digits.take_while(|&&b| b != 0 && b != b' ').copied().collect();
    let rest_is_padding = field.iter().skip_while(|&&b| b == b' ').skip(digits.len()).all(|&b| b == 0 || b == b' ');
    if !rest_is_padding {
        return None;
    }
    if digits.is_empty() {
        return Some(0);
    }
    let digits = std::str::from_utf8(&digits).ok()?;
    u64::from_str_radix(digits, 8).ok()
}

fn put_octal(field: &mut [u8], value: u64) {
    let digits = format!("{value:0width$o}", width = field.len() - 1);
    field[..digits.len()].copy_from_slice(digits.as_bytes());
    field[digits.len()..].fill(0);
}

/// The unsigned and signed sums of the block with the checksum field as spaces.
fn checksums(block: &[u8; BLOCK]) -> (u64, i64) {
    let mut unsigned = 0u64;
    let mut signed = 0i64;
    for (i, &b) in block.iter().enumerate() {
        let b = if field::CHECKSUM.contains(&i) { b' ' } else { b };
        unsigned += u64::from(b);
        signed += i64::from(b as i8);
    }
    (unsigned, signed)
}

pub(crate) fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

/// Bytes of padding after `len` bytes of data, to the next block.
pub(crate) fn padding(len: u64) -> u64 {
    (BLOCK as u64 - len % BLOCK as u64) % BLOCK as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers() {
        assert_eq!(parse_number(b"0000644\0"), Some(0o644));
        assert_eq!(parse_number(b"   644 \0"), Some(0o644));
        assert_eq!(parse_number(b"\0\0\0\0"), Some(0));
        assert_eq!(parse_number(&[0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0]), Some(512));
        assert_eq!(parse_number(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfe]), None);
        assert_eq!(parse_number(&[0x80, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]), None, "wider than 64 bits");
        assert_eq!(parse_number(b"64x\0"), None);
        assert_eq!(parse_number(b"9\0"), None);
        assert_eq!(parse_number(b"1 2\0"), None);
    }

    #[test]
    fn a_written_header_checks() {
        let header = Header::ustar(b"disk.img", b'0', 12345, 0o644, 1_700_000_000);
        header.check().unwrap();
        assert_eq!(header.name(), b"disk.img");
        assert_eq!(header.number(field::SIZE, "size").unwrap(), 12345);
        let mut broken = Header(header.0);
        broken.0[0] = b'x';
        assert!(broken.check().is_err());
    }
}
