//! A layer's entries read ahead on a thread of their own, so that while one
//! layer is merged the next one decompresses on another core.
//!
//! The thread reads the layer's tar stream to its end (content skipped,
//! every byte still read) and hands on the headers in batches of at most
//! [`BATCH`] entries or [`BATCH_BYTES`] of names, link targets, xattrs and
//! sparse maps, [`QUEUED`] batches at most ahead of the merge: a few MiB
//! for any real layer, and under 64 MiB for a hostile one (one entry's
//! metadata is bounded by the tar reader's limits). Dropping [`Entries`]
//! stops the thread at its next batch.

use std::io;
use std::sync::mpsc::{Receiver, sync_channel};

use vmimg_tar::{Entry, Reader};

use super::LayerTar;
use crate::apply::LAYER_LIMITS;

/// The most entries in one message.
const BATCH: usize = 256;
/// A message is sent once its entries' metadata reaches this.
const BATCH_BYTES: usize = 1 << 20;
/// Messages that may wait for the merge.
const QUEUED: usize = 16;

/// A batch of entries, or the layer's end.
type Message = io::Result<Option<Vec<Entry>>>;

/// The entries of a layer being read ahead, in order.
pub struct Entries {
    rx: Receiver<Message>,
    batch: std::vec::IntoIter<Entry>,
    ended: bool,
}

/// Starts reading the layer `tar` on a new thread.
pub fn read_ahead(tar: LayerTar) -> io::Result<Entries> {
    let (tx, rx) = sync_channel::<Message>(QUEUED);
    std::thread::Builder::new().name("vmimg-layer".into()).spawn(move || {
        let send = |message: Option<Vec<Entry>>| tx.send(Ok(message)).map_err(|_| io::Error::other("stopped"));
        let read = || {
            let mut reader = Reader::new(tar, LAYER_LIMITS);
            let (mut batch, mut bytes) = (Vec::with_capacity(BATCH), 0);
            while let Some(entry) = reader.next_entry()? {
                bytes += metadata_bytes(&entry);
                batch.push(entry);
                if batch.len() == BATCH || bytes >= BATCH_BYTES {
                    send(Some(std::mem::replace(&mut batch, Vec::with_capacity(BATCH))))?;
                    bytes = 0;
                }
            }
            io::copy(&mut reader.into_inner(), &mut io::sink())?;
            send(Some(batch))?;
            send(None)
        };
        if let Err(error) = read() {
            let _ = tx.send(Err(error));
        }
    })?;
    Ok(Entries { rx, batch: Vec::new().into_iter(), ended: false })
}

/// What an entry holds on the heap, about.
fn metadata_bytes(entry: &Entry) -> usize {
    let xattrs: usize = entry.xattrs.iter().map(|(name, value)| name.len() + value.len()).sum();
    entry.path.len() + entry.link_name.len() + xattrs + entry.segments.len() * 16 + 128
}

impl Iterator for Entries {
    type Item = io::Result<Entry>;

    fn next(&mut self) -> Option<io::Result<Entry>> {
        loop {
            if let Some(entry) = self.batch.next() {
                return Some(Ok(entry));
            }
            if self.ended {
                return None;
            }
            match self.rx.recv() {
                Ok(Ok(Some(batch))) => self.batch = batch.into_iter(),
                Ok(Ok(None)) => self.ended = true,
                Ok(Err(error)) => {
                    self.ended = true;
                    return Some(Err(error));
                }
                Err(_) => {
                    self.ended = true;
                    return Some(Err(io::Error::other("the layer's reader stopped without a word")));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::layer;
    use super::*;

    fn open(tar: Vec<u8>) -> LayerTar {
        Box::new(io::Cursor::new(tar))
    }

    #[test]
    fn every_entry_comes_in_order_then_the_end() {
        let tar = layer(&[100; 1000]);
        let names: Vec<Vec<u8>> = read_ahead(open(tar)).unwrap().map(|e| e.unwrap().path).collect();
        assert_eq!(names, (0..1000).map(|n| n.to_string().into_bytes()).collect::<Vec<_>>());
    }

    #[test]
    fn a_broken_layer_ends_with_its_error() {
        let mut tar = layer(&[100; 10]);
        tar.truncate(5 * 1024 + 100);
        let entries: Vec<io::Result<Entry>> = read_ahead(open(tar)).unwrap().collect();
        let error = entries.last().unwrap().as_ref().unwrap_err();
        assert!(error.to_string().contains("ends in the middle"), "{error}");
        assert!(entries[..entries.len() - 1].iter().all(Result::is_ok));
    }

    #[test]
    fn dropping_the_entries_stops_the_reader() {
        let tar = layer(&[0; 3 * QUEUED * BATCH]);
        let mut entries = read_ahead(open(tar)).unwrap();
        assert!(entries.next().unwrap().is_ok());
        drop(entries); // the thread, blocked on a full channel, ends
    }
}
