//! Trusted backing chains: a qcow2 overlay read as the whole disk it stands
//! for, its unallocated ranges read from its backing file, and so on down.
//!
//! Only for images the store made itself. [`DiskImage::open_chain`] follows
//! backing file names (relative ones against the naming image's directory;
//! absolute ones too, as this is local data the store wrote), in the format
//! the backing format extension names or, without one, as probed; it refuses
//! a chain that loops (the same file twice, also through a hard link) or runs
//! deeper than [`MAX_CHAIN_DEPTH`]. Images from outside go through
//! [`DiskImage::open`], which refuses every backing file.
//!
//! The chain's allocation map ([`chain_extents`]) is the top's, with each
//! unallocated run replaced by what the backing image holds in that range:
//! zero runs of the top stay zeros, and past the end of a shorter backing
//! image the run stays unallocated (zeros). Each extent names the image
//! ("layer") its bytes come from, so the converter batches and reads it as it
//! reads a single image. Each map is walked once, in order, however many
//! runs the overlay leaves unallocated.

use crate::error::{Error, Result};
use crate::image::{DiskImage, Format, Kind, Qcow2Source};
use crate::raw::RawExtents;
use std::fs::File;
use std::iter::Fuse;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use vmimg_qcow2::{Allocation, Extent, Header, OpenOptions, Qcow2};

/// The most backing files [`DiskImage::open_chain`] follows below the top.
pub const MAX_CHAIN_DEPTH: usize = 16;

impl DiskImage {
    /// Opens `path`, a disk the store made, with its backing chain of at most
    /// `max_depth` backing files (never more than [`MAX_CHAIN_DEPTH`]).
    /// Converting the result yields the merged disk.
    ///
    /// Never use this for images from outside: it reads whatever files
    /// their headers name.
    pub fn open_chain(path: &Path, max_depth: usize) -> Result<DiskImage> {
        let file = File::open(path).map_err(Error::io("cannot open", path))?;
        let mut opener = Opener { top: path.to_owned(), max_depth: max_depth.min(MAX_CHAIN_DEPTH), seen: Vec::new() };
        opener.first_visit(&file, path)?;
        opener.open(path, file, None, 0)
    }
}

/// Opens the images of one chain, remembering the files already in it.
struct Opener {
    top: PathBuf,
    max_depth: usize,
    /// (device, inode) of every file opened so far.
    seen: Vec<(u64, u64)>,
}

impl Opener {
    /// Opens `file` (at `path`, `depth` files below the top) as `format`, or
    /// as probed, with its backing files.
    fn open(&mut self, path: &Path, file: File, format: Option<Format>, depth: usize) -> Result<DiskImage> {
        let format = match format {
            Some(f) => f,
            None => Format::by_magic(&file).map_err(Error::io("cannot read", path))?,
        };
        if format == Format::Raw {
            return Ok(DiskImage::from_parts(path, Kind::Raw(file), None));
        }
        let source: Qcow2Source = Box::new(file);
        let qcow2 = Qcow2::open_with(source, OpenOptions { allow_backing_file: true }).map_err(Error::qcow2(path))?;
        let backing = self.open_backing(path, qcow2.header(), depth)?;
        Ok(DiskImage::from_parts(path, Kind::Qcow2(Box::new(qcow2)), backing))
    }

    /// Opens the backing file `header` names, if any, for the image at `path`.
    fn open_backing(&mut self, path: &Path, header: &Header, depth: usize) -> Result<Option<Box<DiskImage>>> {
        let Some(name) = &header.backing_file else { return Ok(None) };
        if depth >= self.max_depth {
            return Err(Error::ChainTooDeep { path: self.top.clone(), max: self.max_depth });
        }
        let backing = path.parent().unwrap_or(Path::new("")).join(name);
        let file = File::open(&backing).map_err(Error::io("cannot open the backing file", &backing))?;
        if !self.first_visit(&file, &backing)? {
            return Err(Error::BackingLoop { path: path.to_owned(), backing });
        }
        let format = header.backing_format.as_deref().map(str::parse).transpose()?;
        Ok(Some(Box::new(self.open(&backing, file, format, depth + 1)?)))
    }

    /// Records `file` as part of the chain; false if it already was.
    fn first_visit(&mut self, file: &File, path: &Path) -> Result<bool> {
        let meta = file.metadata().map_err(Error::io("cannot stat", path))?;
        let id = (meta.dev(), meta.ino());
        let first = !self.seen.contains(&id);
        self.seen.push(id);
        Ok(first)
    }
}

/// An extent of the disk and the layer of the chain whose file holds its
/// bytes (0: the image itself, 1: its backing file, and so on).
#[derive(Debug, Clone, Copy)]
pub(crate) struct LayerExtent {
    pub(crate) layer: usize,
    pub(crate) extent: Extent,
}

impl LayerExtent {
    /// The part of this extent within `start..end`, which must overlap it.
    fn clip(self, start: u64, end: u64) -> LayerExtent {
        let e = self.extent;
        let (from, to) = (start.max(e.start), end.min(e.end()));
        let allocation = match e.allocation {
            Allocation::Data { host_offset } => Allocation::Data { host_offset: host_offset + (from - e.start) },
            other => other,
        };
        LayerExtent { layer: self.layer, extent: Extent { start: from, len: to - from, allocation } }
    }
}

pub(crate) type LayerExtents<'a> = Box<dyn Iterator<Item = Result<LayerExtent>> + Send + 'a>;

/// The allocation map of `image` with its backing chain merged in.
pub(crate) fn chain_extents(image: &DiskImage) -> Result<LayerExtents<'_>> {
    layer_extents(image, 0)
}

fn layer_extents(image: &DiskImage, layer: usize) -> Result<LayerExtents<'_>> {
    let own = own_extents(image)?.map(move |r| r.map(|extent| LayerExtent { layer, extent }));
    Ok(match image.backing() {
        None => Box::new(own),
        Some(backing) => Box::new(Overlaid {
            top: Box::new(own),
            backing: layer_extents(backing, layer + 1)?.fuse(),
            below: None,
            gap: None,
        }),
    })
}

/// The allocation map of `image` alone.
fn own_extents(image: &DiskImage) -> Result<Box<dyn Iterator<Item = Result<Extent>> + Send + '_>> {
    let path = image.path().to_owned();
    Ok(match image.kind() {
        Kind::Raw(file) => {
            let len = image.virtual_size()?;
            Box::new(RawExtents::new(file, len).map(move |r| r.map_err(Error::io("cannot map", &path))))
        }
        Kind::Qcow2(img) => Box::new(img.extents(0).map(move |r| r.map_err(Error::qcow2(&path)))),
    })
}

/// An overlay's extents with each unallocated run filled from its backing
/// image's extents in that range. Both maps run in order and cover their
/// disks without gaps, so each is walked once.
struct Overlaid<'a> {
    top: LayerExtents<'a>,
    backing: Fuse<LayerExtents<'a>>,
    /// The backing extent reached last (parts of it may lie ahead).
    below: Option<LayerExtent>,
    /// What is left of the top's current unallocated run.
    gap: Option<LayerExtent>,
}

impl Overlaid<'_> {
    /// The first piece of `gap`: the backing extent at its start, cut to the
    /// gap, or the whole gap past the backing image's end. The rest of the
    /// gap waits for the next call.
    fn fill(&mut self, gap: LayerExtent) -> Result<LayerExtent> {
        let (start, end) = (gap.extent.start, gap.extent.end());
        let piece = match self.backing_at(start)? {
            Some(below) => below.clip(start, end),
            None => gap,
        };
        let piece_end = piece.extent.end();
        self.gap = (piece_end < end).then(|| gap.clip(piece_end, end));
        Ok(piece)
    }

    /// The backing extent that holds `offset`, or None past the backing
    /// image's end.
    fn backing_at(&mut self, offset: u64) -> Result<Option<LayerExtent>> {
        loop {
            if let Some(below) = self.below
                && below.extent.end() > offset
            {
                return Ok(Some(below));
            }
            match self.backing.next() {
                None => return Ok(None),
                Some(next) => self.below = Some(next?),
            }
        }
    }
}

impl Iterator for Overlaid<'_> {
    type Item = Result<LayerExtent>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(gap) = self.gap.take() {
            return Some(self.fill(gap));
        }
        match self.top.next()? {
            Ok(e) if e.extent.allocation == Allocation::Unallocated => Some(self.fill(e)),
            other => Some(other),
        }
    }
}
