//! The allocation map of a raw file, from SEEK_DATA/SEEK_HOLE.
//!
//! Holes become unallocated extents; everything else is data (still scanned
//! for zeros by the converter). On filesystems without SEEK_DATA the whole
//! file is one data extent.

use rustix::fs::{SeekFrom, seek};
use rustix::io::Errno;
use std::fs::File;
use std::io;
use vmimg_qcow2::{Allocation, Extent};

/// The data and hole runs of a raw file of `len` bytes: holes as
/// [`Allocation::Unallocated`], data as [`Allocation::Data`].
pub fn raw_extents(file: &File, len: u64) -> RawExtents<'_> {
    RawExtents::new(file, len)
}

/// Iterates the data and hole runs of a raw file of `len` bytes.
pub struct RawExtents<'a> {
    file: &'a File,
    len: u64,
    pos: u64,
}

impl<'a> RawExtents<'a> {
    pub(crate) fn new(file: &'a File, len: u64) -> Self {
        RawExtents { file, len, pos: 0 }
    }

    /// The start of the next data run at or after `self.pos`, or `len`.
    fn next_data(&self) -> io::Result<u64> {
        match seek(self.file, SeekFrom::Data(self.pos)) {
            Ok(off) => Ok(off.min(self.len)),
            Err(Errno::NXIO) => Ok(self.len),
            // No SEEK_DATA here: treat everything as data.
            Err(Errno::INVAL | Errno::OPNOTSUPP) => Ok(self.pos),
            Err(e) => Err(e.into()),
        }
    }

    fn next_hole(&self, from: u64) -> io::Result<u64> {
        match seek(self.file, SeekFrom::Hole(from)) {
            Ok(off) => Ok(off.min(self.len)),
            Err(Errno::NXIO | Errno::INVAL | Errno::OPNOTSUPP) => Ok(self.len),
            Err(e) => Err(e.into()),
        }
    }
}

impl Iterator for RawExtents<'_> {
    type Item = io::Result<Extent>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.pos >= self.len {
            return None;
        }
        let step = self.next_data().and_then(|data| {
            if data > self.pos {
                return Ok(Extent { start: self.pos, len: data - self.pos, allocation: Allocation::Unallocated });
            }
            let hole = self.next_hole(data)?.max(data + 1).min(self.len);
            Ok(Extent { start: data, len: hole - data, allocation: Allocation::Data { host_offset: data } })
        });
        match step {
            Ok(extent) => {
                self.pos = extent.end();
                Some(Ok(extent))
            }
            Err(e) => {
                self.pos = self.len;
                Some(Err(e))
            }
        }
    }
}
