//! The second reading of the layers: the content of every file the merged
//! tree keeps, decompressed on several threads at once and handed on in an
//! order the layers alone fix.
//!
//! [`DECODERS`] layers are decoded at once, each on a thread of its
//! own that skips what the tree does not keep and sends the rest, in
//! messages of at most [`PIECE`] bytes, through a channel where at most
//! [`QUEUED`] messages wait (4 MiB a layer). The caller's thread takes
//! the files in the order of a clock that counts tar bytes: each file is
//! stamped with where its header stands in its layer's tar stream
//! (512 bytes a header, sizes rounded up to 512), plus the clock's reading
//! when its layer began to be decoded: 0 for the first layers; a layer
//! that starts when another ends starts at that one's end. The smallest
//! stamp goes next, the lower layer on a tie. Stamps depend on the layers'
//! bytes alone, so the order, and the disk, is the same on every run and
//! every machine; and as the decoders run at about the same speed in
//! bytes, each seldom waits for another.
//!
//! Why: a second single-threaded pass over every layer was most of a
//! build's time, with the other cores idle.

use std::collections::HashSet;
use std::io::{self, Read};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::Scope;

use vmimg_tar::Reader;

use super::{Content, Source};
use crate::apply::LAYER_LIMITS;

/// A layer's decompressed tar stream, readable on another thread.
pub type LayerTar = Box<dyn Read + Send>;

/// The most bytes of content one message carries.
const PIECE: usize = 256 << 10;
/// Messages that may wait in one layer's channel: 4 MiB of content at most.
const QUEUED: usize = 16;
/// Layers decoded at once. A constant, not the host's core count: which
/// layers start together is part of the order, which must not depend on
/// the machine (four threads on one core cost nothing much).
const DECODERS: usize = 4;

type Pieces = Vec<(u64, Vec<u8>)>;

/// What a layer's decoder sends.
enum Message {
    /// A kept file begins: its entry's ordinal, its stamp in the layer, and
    /// its first pieces (offset in the file, bytes); `last` when they are
    /// all of it.
    File { ordinal: u64, stamp: u64, pieces: Pieces, last: bool },
    /// More of the file before.
    More { pieces: Pieces, last: bool },
    /// The layer's end, at this stamp.
    End { stamp: u64 },
}

/// Hands `take` the content of each kept file of `layers` (each a layer's
/// number and the ordinals of its entries to keep, lowest layer first),
/// reading them from `open_layer`, in the order the module's doc gives.
pub(super) fn for_each_file(
    layers: Vec<(usize, HashSet<u64>)>,
    open_layer: &mut dyn FnMut(usize) -> io::Result<LayerTar>,
    take: &mut dyn FnMut(Source, &mut Content<'_>) -> io::Result<()>,
) -> io::Result<()> {
    // Set when the caller's side fails: the decoders stop at their next
    // entry rather than read their layers to the end.
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let handed = hand_on(scope, &stop, layers, open_layer, take);
        if handed.is_err() {
            stop.store(true, Ordering::Relaxed);
        }
        handed
    })
}

/// [`for_each_file`]'s work, its decoders spawned in `scope`.
fn hand_on<'scope>(
    scope: &'scope Scope<'scope, '_>,
    stop: &'scope AtomicBool,
    layers: Vec<(usize, HashSet<u64>)>,
    open_layer: &mut dyn FnMut(usize) -> io::Result<LayerTar>,
    take: &mut dyn FnMut(Source, &mut Content<'_>) -> io::Result<()>,
) -> io::Result<()> {
    let mut waiting = layers.into_iter();
    let mut active: Vec<Decoding> = Vec::new();
    for (layer, keep) in waiting.by_ref().take(DECODERS) {
        active.push(Decoding::start(scope, stop, layer, keep, 0, open_layer)?);
    }
    loop {
        // Every decoding layer shows its next file, or ends and makes
        // room for the next layer, which starts at its end.
        let mut i = 0;
        while i < active.len() {
            if active[i].head.is_some() {
                i += 1;
                continue;
            }
            if let Some(end) = active[i].next_head()? {
                active.remove(i);
                if let Some((layer, keep)) = waiting.next() {
                    active.push(Decoding::start(scope, stop, layer, keep, end, open_layer)?);
                }
            }
        }
        let Some(next) = active.iter_mut().min_by_key(|d| (d.base + d.head.as_ref().map_or(0, |h| h.1), d.layer))
        else {
            return Ok(());
        };
        let (ordinal, _, mut pieces, mut last) = next.head.take().expect("every decoding layer has a head");
        let (layer, rx) = (next.layer, &next.rx);
        take(Source { layer, ordinal }, &mut |sink| {
            loop {
                for (offset, bytes) in pieces.drain(..) {
                    sink(offset, &bytes)?;
                }
                if last {
                    return Ok(());
                }
                match receive(rx)? {
                    Message::More { pieces: more, last: more_last } => (pieces, last) = (more, more_last),
                    _ => return Err(io::Error::other("a layer's decoder sent a file before the last ended")),
                }
            }
        })?;
    }
}

/// A layer being decoded, and its next kept file once it has come.
struct Decoding {
    layer: usize,
    /// The clock's reading when the layer began.
    base: u64,
    rx: Receiver<io::Result<Message>>,
    head: Option<(u64, u64, Pieces, bool)>,
}

impl Decoding {
    fn start<'scope>(
        scope: &'scope Scope<'scope, '_>,
        stop: &'scope AtomicBool,
        layer: usize,
        keep: HashSet<u64>,
        base: u64,
        open_layer: &mut dyn FnMut(usize) -> io::Result<LayerTar>,
    ) -> io::Result<Decoding> {
        let tar = open_layer(layer)?;
        let (tx, rx) = sync_channel(QUEUED);
        std::thread::Builder::new().name("vmimg-decode".into()).spawn_scoped(scope, move || {
            if let Err(error) = decode(tar, &keep, stop, &tx) {
                // Nobody listens once the caller has stopped.
                let _ = tx.send(Err(error));
            }
        })?;
        Ok(Decoding { layer, base, rx, head: None })
    }

    /// Waits for the layer's next file; at the layer's end, returns the
    /// clock's reading there.
    fn next_head(&mut self) -> io::Result<Option<u64>> {
        match receive(&self.rx)? {
            Message::File { ordinal, stamp, pieces, last } => {
                self.head = Some((ordinal, stamp, pieces, last));
                Ok(None)
            }
            Message::End { stamp } => Ok(Some(self.base + stamp)),
            Message::More { .. } => Err(io::Error::other("a layer's decoder sent more of no file")),
        }
    }
}

fn receive(rx: &Receiver<io::Result<Message>>) -> io::Result<Message> {
    rx.recv().map_err(|_| io::Error::other("a layer's decoder stopped without a word"))?
}

/// Reads the tar stream `tar` to its end, sending the kept entries' content.
fn decode(
    tar: LayerTar,
    keep: &HashSet<u64>,
    stop: &AtomicBool,
    tx: &SyncSender<io::Result<Message>>,
) -> io::Result<()> {
    let stopped = || io::Error::other("the build stopped");
    let send = |message| tx.send(Ok(message)).map_err(|_| stopped());
    let mut reader = Reader::new(tar, LAYER_LIMITS);
    let (mut ordinal, mut stamp) = (0u64, 0u64);
    while let Some(entry) = reader.next_entry()? {
        if stop.load(Ordering::Relaxed) {
            return Err(stopped());
        }
        if keep.contains(&ordinal) {
            let (mut pieces, mut bytes, mut first) = (Pieces::new(), 0usize, true);
            let flush = |pieces: &mut Pieces, last: bool, first: &mut bool| {
                let pieces = std::mem::take(pieces);
                let message = match std::mem::replace(first, false) {
                    true => Message::File { ordinal, stamp, pieces, last },
                    false => Message::More { pieces, last },
                };
                send(message)
            };
            reader.read_data(&mut |offset, data| {
                for (n, chunk) in data.chunks(PIECE).enumerate() {
                    pieces.push((offset + (n * PIECE) as u64, chunk.to_vec()));
                    bytes += chunk.len();
                    if bytes >= PIECE {
                        bytes = 0;
                        flush(&mut pieces, false, &mut first)?;
                    }
                }
                Ok(())
            })?;
            flush(&mut pieces, true, &mut first)?;
        }
        ordinal += 1;
        stamp += 512 + entry.size.next_multiple_of(512);
    }
    io::copy(&mut reader.into_inner(), &mut io::sink())?;
    send(Message::End { stamp })
}

#[cfg(test)]
mod tests {
    use super::super::tests::{content, layer};
    use super::*;

    /// The files `for_each_file` hands on, in order, with their contents.
    fn taken(layers: &[Vec<u8>], keep: Vec<(usize, HashSet<u64>)>) -> io::Result<Vec<(Source, Vec<u8>)>> {
        let mut open = |n: usize| Ok(Box::new(io::Cursor::new(layers[n].clone())) as LayerTar);
        let mut got = Vec::new();
        for_each_file(keep, &mut open, &mut |source, content| {
            let mut bytes = Vec::new();
            content(&mut |offset, data| {
                assert_eq!(offset, bytes.len() as u64, "pieces in order");
                bytes.extend_from_slice(data);
                Ok(())
            })?;
            got.push((source, bytes));
            Ok(())
        })?;
        Ok(got)
    }

    #[test]
    fn files_come_whole_in_the_order_of_their_stamps() {
        let sizes = [vec![10, 3 * PIECE + 7, 0, 5000], vec![1, 2, 3], vec![PIECE, 100], vec![700; 6]];
        let layers: Vec<Vec<u8>> = sizes.iter().map(|s| layer(s)).collect();
        let keep: Vec<(usize, HashSet<u64>)> = vec![
            (0, HashSet::from([0, 1, 2, 3])),
            (1, HashSet::from([2])),
            (2, HashSet::from([0, 1])),
            (3, (0..6).collect()),
        ];
        let got = taken(&layers, keep.clone()).unwrap();
        for (source, bytes) in &got {
            let size = sizes[source.layer][source.ordinal as usize];
            assert_eq!(*bytes, content(source.ordinal as usize, size), "{source:?}");
        }
        assert_eq!(got.len(), 4 + 1 + 2 + 6);
        // The same order every time, whatever the threads did.
        for _ in 0..20 {
            let again: Vec<Source> = taken(&layers, keep.clone()).unwrap().into_iter().map(|(s, _)| s).collect();
            assert_eq!(again, got.iter().map(|(s, _)| *s).collect::<Vec<_>>());
        }
        // Each layer's files in its own order.
        for layer in 0..4 {
            let ordinals: Vec<u64> = got.iter().filter(|(s, _)| s.layer == layer).map(|(s, _)| s.ordinal).collect();
            assert!(ordinals.is_sorted(), "{ordinals:?}");
        }
    }

    #[test]
    fn a_failure_on_either_side_stops_every_thread() {
        let layers: Vec<Vec<u8>> = (0..6).map(|_| layer(&[4 * PIECE; 20])).collect();
        let keep: Vec<(usize, HashSet<u64>)> = (0..6).map(|n| (n, (0..20).collect())).collect();
        let mut open = |n: usize| Ok(Box::new(io::Cursor::new(layers[n].clone())) as LayerTar);
        let mut files = 0;
        let error = for_each_file(keep.clone(), &mut open, &mut |_, content| {
            files += 1;
            if files == 3 {
                return Err(io::Error::other("the disk is full"));
            }
            content(&mut |_, _| Ok(()))
        })
        .unwrap_err();
        assert_eq!(error.to_string(), "the disk is full");

        let mut broken = layers.clone();
        broken[1].truncate(PIECE);
        let error = taken(&broken, keep).unwrap_err();
        assert!(error.to_string().contains("ends in the middle"), "{error}");
    }
}
