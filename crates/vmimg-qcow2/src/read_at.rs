//! Positioned reads: the only way this crate touches its input.
//!
//! The reader never seeks a shared cursor, so one image can be read from many
//! threads at once. Files and in-memory buffers (tests, fuzzing) both qualify.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// A byte source that supports reads at an absolute offset from any thread.
pub trait ReadAt: Sync {
    /// Reads up to `buf.len()` bytes at `offset`; returns 0 only at end of input.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;

    /// The current length of the input in bytes.
    fn size(&self) -> io::Result<u64>;

    /// Fills `buf` from `offset`. Bytes past the end of the input read as zero,
    /// as they do in QEMU's block layer; callers check offsets against
    /// [`ReadAt::size`] before relying on that.
    fn read_exact_or_zero_at(&self, mut buf: &mut [u8], mut offset: u64) -> io::Result<()> {
        while !buf.is_empty() {
            match self.read_at(buf, offset) {
                Ok(0) => {
                    buf.fill(0);
                    break;
                }
                Ok(n) => {
                    buf = &mut buf[n..];
                    offset += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

impl ReadAt for File {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        FileExt::read_at(self, buf, offset)
    }

    fn size(&self) -> io::Result<u64> {
        Ok(self.metadata()?.len())
    }
}

impl ReadAt for [u8] {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let start = usize::try_from(offset).unwrap_or(usize::MAX).min(self.len());
        let n = buf.len().min(self.len() - start);
        buf[..n].copy_from_slice(&self[start..start + n]);
        Ok(n)
    }

    fn size(&self) -> io::Result<u64> {
        Ok(self.len() as u64)
    }
}

impl ReadAt for Vec<u8> {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.as_slice().read_at(buf, offset)
    }

    fn size(&self) -> io::Result<u64> {
        Ok(self.len() as u64)
    }
}

impl<T: ReadAt + ?Sized> ReadAt for Box<T> {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        (**self).read_at(buf, offset)
    }

    fn size(&self) -> io::Result<u64> {
        (**self).size()
    }
}

impl<T: ReadAt + ?Sized> ReadAt for &T {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        (**self).read_at(buf, offset)
    }

    fn size(&self) -> io::Result<u64> {
        (**self).size()
    }
}
