//! Reading a file while a download is still writing it: what lets the
//! converter run beside the download instead of after it.
//!
//! [`Watermark`] watches the download (it is the download's
//! [`Progress`]): how many leading bytes of the partial file are final, how
//! long the file will be, whether the download ended. [`GrowingFile`] is a
//! positioned reader of the partial file whose reads wait until the bytes
//! they ask for are final. If the download starts over (the server changed
//! the file or ignored a range), every reader opened before fails, so no
//! conversion ever mixes bytes of two versions; the caller converts again
//! from the finished file.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;
use vmimg_fetch::Progress;
use vmimg_qcow2::ReadAt;

#[derive(Debug, Default)]
struct State {
    written: u64,
    total: Option<u64>,
    /// Bumped each time the download starts over from byte 0.
    generation: u32,
    ended: Option<bool>,
}

/// How far a download has got; readers wait on it.
#[derive(Default)]
pub struct Watermark {
    state: Mutex<State>,
    changed: Condvar,
    /// Told of every event too (the user's progress bar).
    next: Option<Arc<dyn Progress>>,
}

impl Watermark {
    pub fn new(next: Option<Arc<dyn Progress>>) -> Arc<Watermark> {
        Arc::new(Watermark { next, ..Watermark::default() })
    }

    /// The download is over: `ok` when all its bytes are in the file. The
    /// first call counts.
    pub fn end(&self, ok: bool) {
        self.update(|s| {
            s.ended.get_or_insert(ok);
        });
    }

    /// Whether the download started over from an earlier byte at some
    /// point (another host, or a server that ignored `Range`): a reader
    /// may then have read bytes that are not the ones the file ended with.
    pub fn restarted(&self) -> bool {
        self.state.lock().expect("watermark lock").generation > 0
    }

    fn update(&self, change: impl FnOnce(&mut State)) {
        change(&mut self.state.lock().expect("watermark lock"));
        self.changed.notify_all();
    }

    /// Waits until `ready` holds, then returns what `read` makes of the state.
    fn wait_for<T>(&self, ready: impl Fn(&State) -> bool, read: impl FnOnce(&State) -> T) -> T {
        let mut state = self.state.lock().expect("watermark lock");
        while !ready(&state) {
            state = self.changed.wait(state).expect("watermark lock");
        }
        read(&state)
    }
}

impl Progress for Watermark {
    fn started(&self, offset: u64, total: Option<u64>) {
        self.update(|s| {
            if offset < s.written {
                s.generation += 1;
            }
            s.written = offset;
            s.total = total;
        });
        if let Some(next) = &self.next {
            next.started(offset, total);
        }
    }

    fn advanced(&self, written: u64) {
        self.update(|s| s.written = written);
        if let Some(next) = &self.next {
            next.advanced(written);
        }
    }

    fn retrying(&self, error: &(dyn std::error::Error + 'static), delay: Duration) {
        if let Some(next) = &self.next {
            next.retrying(error, delay);
        }
    }

    fn served_by(&self, host: &str) {
        if let Some(next) = &self.next {
            next.served_by(host);
        }
    }
}

/// Ends the watermark as failed when dropped, unless it ended before: a
/// pull dropped midway (cancelled) so releases its converter.
pub struct EndOnDrop(pub Arc<Watermark>);

impl Drop for EndOnDrop {
    fn drop(&mut self) {
        self.0.end(false);
    }
}

/// The partial file, read as the download fills it.
pub struct GrowingFile {
    file: File,
    watermark: Arc<Watermark>,
    generation: u32,
}

impl GrowingFile {
    pub fn new(file: File, watermark: Arc<Watermark>) -> GrowingFile {
        let generation = watermark.wait_for(|_| true, |s| s.generation);
        GrowingFile { file, watermark, generation }
    }

    /// Waits until `end` bytes are final (or the file ends before them).
    fn wait_until(&self, end: u64) -> io::Result<()> {
        let ready = |s: &State| {
            s.generation != self.generation
                || s.ended.is_some()
                || s.written >= end
                || s.total.is_some_and(|t| s.written >= t)
        };
        self.watermark.wait_for(ready, |s| self.check(s))
    }

    fn check(&self, s: &State) -> io::Result<()> {
        if s.generation != self.generation {
            return Err(io::Error::other("the download started over"));
        }
        if s.ended == Some(false) {
            return Err(io::Error::other("the download failed"));
        }
        Ok(())
    }
}

impl ReadAt for GrowingFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.wait_until(offset.saturating_add(buf.len() as u64))?;
        FileExt::read_at(&self.file, buf, offset)
    }

    /// The length the server announced, else (no Content-Length) the
    /// length once the download ends.
    fn size(&self) -> io::Result<u64> {
        let known = |s: &State| s.generation != self.generation || s.ended.is_some() || s.total.is_some();
        self.watermark.wait_for(known, |s| self.check(s).map(|()| s.total.unwrap_or(s.written)))
    }
}

/// A positioned reader read front to back (`Read`), as a decoder reads.
pub struct Sequential<R> {
    inner: R,
    pos: u64,
}

impl<R: ReadAt> Sequential<R> {
    pub fn new(inner: R) -> Sequential<R> {
        Sequential { inner, pos: 0 }
    }
}

impl<R: ReadAt> io::Read for Sequential<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn reads_wait_for_the_bytes_they_need() {
        let mut file = tempfile::tempfile().unwrap();
        let watermark = Watermark::new(None);
        let reader = GrowingFile::new(file.try_clone().unwrap(), watermark.clone());
        watermark.started(0, Some(8));
        let waiter = std::thread::spawn(move || {
            let mut buf = [0u8; 4];
            reader.read_exact_or_zero_at(&mut buf, 4).map(|()| buf)
        });
        file.write_all(b"abcd").unwrap();
        watermark.advanced(4);
        std::thread::sleep(Duration::from_millis(50));
        assert!(!waiter.is_finished());
        file.write_all(b"efgh").unwrap();
        watermark.advanced(8);
        assert_eq!(&waiter.join().unwrap().unwrap(), b"efgh");
    }

    #[test]
    fn a_restart_or_a_failure_fails_the_readers() {
        let file = tempfile::tempfile().unwrap();
        let watermark = Watermark::new(None);
        watermark.started(0, Some(100));
        watermark.advanced(10);
        let reader = GrowingFile::new(file.try_clone().unwrap(), watermark.clone());
        watermark.started(0, Some(100));
        assert!(reader.read_at(&mut [0u8; 4], 0).unwrap_err().to_string().contains("started over"));
        let reader = GrowingFile::new(file, watermark.clone());
        watermark.end(false);
        assert!(reader.read_at(&mut [0u8; 4], 50).unwrap_err().to_string().contains("failed"));
    }
}
