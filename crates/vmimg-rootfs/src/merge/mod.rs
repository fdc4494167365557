//! OCI image layers merged in memory into the tree they stand for, and
//! written out as one tar stream: a root filesystem with exact owners,
//! modes, device nodes and xattrs, made by any user, with no tree on the
//! host's disk.
//!
//! [`Merged::add_layer`] reads a layer's headers (bottom layer first) and
//! applies them to a tree of inodes held in memory, by the rules
//! [`crate::apply`] follows on a real directory: names cleaned and refused
//! when absolute or climbing with `..`; parents resolved as if the root
//! were `/` (a symlink on the way, even `../../..` or `/etc`, resolves
//! inside the tree, as `openat2(RESOLVE_IN_ROOT)` does), missing parents
//! made (0755, root) but never through a symlink's target; the last
//! component never followed; hard links resolved the same way, never to a
//! directory; OCI whiteouts (`.wh.NAME`, and `.wh..wh..opq` hiding the
//! lower content of a directory) never removing an entry of their own
//! layer; the same depth bound ([`crate::depth`]) and content limits. A
//! regular file's content stays in its layer: the tree notes which layer
//! and which entry hold it.
//!
//! [`Merged::write_tar`] then writes the tree as one tar, parents before
//! children, in the order `mke2fs -d -` (e2fsprogs 1.47.1 and later)
//! needs: every directory first (so each entry's directory exists when it
//! comes), then symlinks, devices and FIFOs, then regular files, read once
//! more from the layers in order (each layer is decompressed a second
//! time: the price of keeping no copy of the tree), each inode's further
//! names as hard links right after it, with its full metadata (a hard
//! link's header sets the inode's metadata in `mke2fs`). Nothing needs
//! root: owners, modes and device numbers are numbers in headers.
//!
//! Why in memory: a tree on the host needs root for owners and devices,
//! and costs writing and reading every byte once more; umoci's rootless
//! unpack records owners in xattrs that `mke2fs` does not read.

use crate::apply::{
    ApplyError, LAYER_LIMITS, LayerSummary, RelPath, Result, Touched, Whiteout, clean_name, entry_name, io_error, join,
    lossy, refused, split_last,
};
use crate::depth::{self, MAX_DEPTH};

mod ahead;
mod contents;

pub use ahead::{Entries, read_ahead};
pub use contents::LayerTar;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{self, Read, Write};
use vmimg_tar::{Entry, Kind, Reader, Sink, Writer};

/// What merging may take.
#[derive(Debug, Clone)]
pub struct MergeOptions {
    /// The most bytes of file content (holes included) all layers may add.
    pub max_bytes: u64,
    /// The most entries one layer may have.
    pub max_entries: u64,
    /// The most inodes the tree may hold at once (each costs memory).
    pub max_inodes: usize,
}

impl Default for MergeOptions {
    /// 256 GiB, 10 million entries a layer, 4 million inodes.
    fn default() -> Self {
        MergeOptions { max_bytes: 256 << 30, max_entries: 10_000_000, max_inodes: 4_000_000 }
    }
}

/// Where a regular file's content is: the entry `ordinal` (counting every
/// entry from 0) of layer `layer` (counting from 0, bottom first).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Source {
    pub layer: usize,
    pub ordinal: u64,
}

type Ino = usize;
const ROOT: Ino = 0;
/// Symlinks followed while resolving one name, as Linux's limit.
const MAX_HOPS: usize = 40;

/// Extended attributes: names and values, in the order the layer gave.
pub type Xattrs = Vec<(String, Vec<u8>)>;

#[derive(Debug, Clone, Default)]
struct Meta {
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: u64,
    xattrs: Xattrs,
}

impl Meta {
    fn of(entry: &Entry) -> Meta {
        Meta { mode: entry.mode, uid: entry.uid, gid: entry.gid, mtime: entry.mtime, xattrs: entry.xattrs.clone() }
    }
}

#[derive(Debug)]
enum Body {
    Dir(BTreeMap<Vec<u8>, Ino>),
    File {
        size: u64,
        source: Source,
    },
    Symlink(Vec<u8>),
    /// A character or block device, or a FIFO.
    Node {
        kind: Kind,
        device: (u32, u32),
    },
}

#[derive(Debug)]
struct Inode {
    meta: Meta,
    body: Body,
}

/// The tree a stack of layers makes.
pub struct Merged {
    inodes: Vec<Inode>,
    options: MergeOptions,
    layers: usize,
    bytes: u64,
}

/// A name's component, and whether it came from a symlink's target (no
/// directory is made for those).
type Component = (Vec<u8>, bool);

/// What [`Merged::write_tar`] wrote.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Written {
    /// Entries in the tar.
    pub entries: u64,
    /// Bytes of file content.
    pub bytes: u64,
    /// Paths (relative to the root) and the xattrs they carry.
    pub xattrs: Vec<(RelPath, Xattrs)>,
}

impl Written {
    /// Counts `entry`, written.
    fn note(&mut self, entry: &Entry) {
        self.entries += 1;
        self.bytes += entry.size;
        if !entry.xattrs.is_empty() && entry.kind != Kind::HardLink {
            self.xattrs.push((entry.path.clone(), entry.xattrs.clone()));
        }
    }
}

impl Merged {
    pub fn new(options: MergeOptions) -> Merged {
        let root = Inode { meta: Meta { mode: 0o755, ..Meta::default() }, body: Body::Dir(BTreeMap::new()) };
        Merged { inodes: vec![root], options, layers: 0, bytes: 0 }
    }

    /// Applies the next layer's tar stream (already decompressed), reading
    /// it to its end so a digest over it covers every byte.
    pub fn add_layer(&mut self, tar: impl Read) -> Result<LayerSummary> {
        let mut reader = Reader::new(tar, LAYER_LIMITS);
        let summary = self.add_entries(std::iter::from_fn(|| reader.next_entry().transpose()))?;
        io::copy(&mut reader.into_inner(), &mut io::sink()).map_err(ApplyError::Tar)?;
        Ok(summary)
    }

    /// Applies the next layer, given as its entries in order (as
    /// [`read_ahead`] gives them).
    pub fn add_entries(&mut self, entries: impl IntoIterator<Item = io::Result<Entry>>) -> Result<LayerSummary> {
        let layer = self.layers;
        self.layers += 1;
        let (mut touched, mut summary) = (Touched::default(), LayerSummary::default());
        for entry in entries {
            let entry = entry.map_err(ApplyError::Tar)?;
            // Entries count from 1; a file's ordinal counts them from 0.
            summary.entries += 1;
            match entry_name(&entry, summary.entries, self.options.max_entries)? {
                (_, Some(whiteout)) => {
                    self.apply_whiteout(whiteout, &touched).map_err(|e| io_error(&entry.path, e))?;
                    summary.whiteouts += 1;
                }
                (name, None) => {
                    touched.touch(&name);
                    let source = Source { layer, ordinal: summary.entries - 1 };
                    self.apply_entry(&entry, &name, source, &mut summary)?;
                }
            }
        }
        Ok(summary)
    }

    fn apply_entry(&mut self, entry: &Entry, name: &[u8], source: Source, summary: &mut LayerSummary) -> Result<()> {
        if name.is_empty() {
            if entry.kind != Kind::Directory {
                return Err(refused(&entry.path, "the root is not a directory in this layer".into()));
            }
            self.inodes[ROOT].meta = Meta::of(entry);
            return Ok(());
        }
        let (parent_path, leaf) = split_last(name);
        let (parent, depth) = self.resolve_dir(parent_path, true).map_err(|e| io_error(&entry.path, e))?;
        depth::check(depth + 1, || lossy(&entry.path)).map_err(ApplyError::TooDeep)?;
        let body = match entry.kind {
            Kind::File => {
                self.bytes = self.bytes.saturating_add(entry.size);
                if self.bytes > self.options.max_bytes {
                    let limit = self.options.max_bytes;
                    return Err(ApplyError::Limit(format!("the layers hold over {limit} bytes of files, the limit")));
                }
                summary.bytes += entry.size;
                Body::File { size: entry.size, source }
            }
            Kind::Directory => {
                if let Some(existing) = self.child(parent, leaf).filter(|&ino| self.is_dir(ino)) {
                    self.inodes[existing].meta = Meta::of(entry);
                    return Ok(());
                }
                Body::Dir(BTreeMap::new())
            }
            Kind::Symlink => Body::Symlink(entry.link_name.clone()),
            Kind::CharDevice | Kind::BlockDevice | Kind::Fifo => Body::Node { kind: entry.kind, device: entry.device },
            Kind::HardLink => return self.hard_link(entry, parent, leaf),
            Kind::Other(_) => {
                summary.skipped_other += 1;
                return Ok(());
            }
        };
        let ino = self.new_inode(Inode { meta: Meta::of(entry), body }).map_err(|e| io_error(&entry.path, e))?;
        self.dir_mut(parent).insert(leaf.to_vec(), ino);
        Ok(())
    }

    /// A hard link to an earlier entry, resolved inside the tree.
    fn hard_link(&mut self, entry: &Entry, parent: Ino, leaf: &[u8]) -> Result<()> {
        let target = clean_name(&entry.link_name)?;
        if target.is_empty() {
            return Err(refused(&entry.path, "a hard link to the root directory".into()));
        }
        let (target_dir, target_leaf) = split_last(&target);
        let found = self.resolve_dir(target_dir, false).ok().and_then(|(dir, _)| self.child(dir, target_leaf));
        let Some(ino) = found else {
            return Err(io_error(&entry.path, io::Error::new(io::ErrorKind::NotFound, "no such link target")));
        };
        if self.is_dir(ino) {
            return Err(io_error(&entry.path, io::Error::other("a hard link to a directory")));
        }
        self.dir_mut(parent).insert(leaf.to_vec(), ino);
        Ok(())
    }

    fn apply_whiteout(&mut self, whiteout: Whiteout, touched: &Touched) -> io::Result<()> {
        match whiteout {
            Whiteout::Remove(path) if !touched.contains(&path) => {
                let (dir, leaf) = split_last(&path);
                match self.resolve_dir(dir, false) {
                    Ok((parent, _)) => {
                        self.dir_mut(parent).remove(leaf);
                        Ok(())
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                    Err(e) => Err(e),
                }
            }
            Whiteout::Remove(_) | Whiteout::Ignore => Ok(()),
            Whiteout::Opaque(dir) => {
                let (ino, _) = self.resolve_dir(&dir, true)?;
                self.hide_lower(ino, &dir, touched);
                Ok(())
            }
        }
    }

    /// Removes, under an opaque directory, what the layer did not put there.
    fn hide_lower(&mut self, dir: Ino, path: &[u8], touched: &Touched) {
        let children: Vec<(Vec<u8>, Ino)> = self.dir(dir).iter().map(|(n, &i)| (n.clone(), i)).collect();
        for (name, ino) in children {
            let child_path = join(path, &name);
            if !touched.contains(&child_path) {
                self.dir_mut(dir).remove(&name);
            } else if self.is_dir(ino) {
                self.hide_lower(ino, &child_path, touched);
            }
        }
    }

    /// The directory `path` names and its depth below the root, resolving
    /// symlinks as if the root were `/`; with `create`, missing directories
    /// of the name itself are made (not those a symlink's target names).
    fn resolve_dir(&mut self, path: &[u8], create: bool) -> io::Result<(Ino, usize)> {
        let mut stack: Vec<Ino> = vec![ROOT];
        let mut pending: Vec<Component> = components(path, false);
        pending.reverse();
        let mut hops = 0;
        while let Some((name, from_link)) = pending.pop() {
            let here = *stack.last().expect("the root");
            if name == b".." {
                if stack.len() > 1 {
                    stack.pop();
                }
                continue;
            }
            let ino = match self.child(here, &name) {
                Some(ino) => ino,
                None if create && !from_link => {
                    depth::check(stack.len(), || lossy(path))?;
                    let dir = Inode { meta: Meta { mode: 0o755, ..Meta::default() }, body: Body::Dir(BTreeMap::new()) };
                    let ino = self.new_inode(dir)?;
                    self.dir_mut(here).insert(name, ino);
                    ino
                }
                None => return Err(io::Error::new(io::ErrorKind::NotFound, "no such directory")),
            };
            match &self.inodes[ino].body {
                Body::Dir(_) => stack.push(ino),
                Body::Symlink(target) => {
                    hops += 1;
                    if hops > MAX_HOPS {
                        return Err(io::Error::other("too many levels of symbolic links"));
                    }
                    if target.starts_with(b"/") {
                        stack.truncate(1);
                    }
                    pending.extend(components(target, true).into_iter().rev());
                }
                _ => return Err(io::Error::other("not a directory")),
            }
            if stack.len() > MAX_DEPTH + 1 {
                return Err(depth::TooDeep { path: lossy(path), depth: stack.len() - 1 }.into());
            }
        }
        Ok((*stack.last().expect("the root"), stack.len() - 1))
    }

    fn new_inode(&mut self, inode: Inode) -> io::Result<Ino> {
        if self.inodes.len() >= self.options.max_inodes {
            return Err(io::Error::other(format!("the tree holds over {} inodes, the limit", self.options.max_inodes)));
        }
        self.inodes.push(inode);
        Ok(self.inodes.len() - 1)
    }

    fn child(&self, dir: Ino, name: &[u8]) -> Option<Ino> {
        self.dir(dir).get(name).copied()
    }

    fn is_dir(&self, ino: Ino) -> bool {
        matches!(self.inodes[ino].body, Body::Dir(_))
    }

    fn dir(&self, ino: Ino) -> &BTreeMap<Vec<u8>, Ino> {
        match &self.inodes[ino].body {
            Body::Dir(children) => children,
            _ => unreachable!("resolved as a directory"),
        }
    }

    fn dir_mut(&mut self, ino: Ino) -> &mut BTreeMap<Vec<u8>, Ino> {
        match &mut self.inodes[ino].body {
            Body::Dir(children) => children,
            _ => unreachable!("resolved as a directory"),
        }
    }
}

/// The components of a name, `.` and empty ones dropped.
fn components(path: &[u8], from_link: bool) -> Vec<Component> {
    path.split(|&b| b == b'/').filter(|c| !c.is_empty() && *c != b".").map(|c| (c.to_vec(), from_link)).collect()
}

/// One inode of the tree, as [`Merged::emit`] hands it on.
#[derive(Debug)]
pub struct Node<'a> {
    /// Its entry under its first name, with its metadata.
    pub entry: Entry,
    /// All its names, relative to the root (`.` for the root).
    pub paths: &'a [RelPath],
    /// Its link count: its names, or for a directory 2 and one for each
    /// directory in it.
    pub nlink: u64,
}

/// A regular file's content: writes its bytes to a sink as pieces at
/// increasing offsets (holes, and any tail of zeros, left out).
pub type Content<'a> = dyn FnMut(&mut Sink) -> io::Result<()> + 'a;

/// What takes the tree from [`Merged::emit`], inode by inode.
pub trait Emit {
    /// A directory, symlink, device node or FIFO.
    fn node(&mut self, node: &Node<'_>) -> io::Result<()>;
    /// A regular file and its content.
    fn file(&mut self, node: &Node<'_>, content: &mut Content<'_>) -> io::Result<()>;
}

impl Merged {
    /// Hands the tree to `out` in the order of the module's doc: every
    /// directory (parents first), then symlinks, devices and FIFOs, then
    /// regular files with their content, read from the layers
    /// `open_layer` gives again (decompressed, the same bytes
    /// [`Merged::add_layer`] read).
    pub fn emit(
        &self,
        out: &mut dyn Emit,
        mut open_layer: impl FnMut(usize) -> io::Result<LayerTar>,
    ) -> io::Result<()> {
        let names = self.names();
        for named in names.iter().filter(|(ino, _)| self.is_dir(*ino)) {
            out.node(&self.node(named))?;
        }
        let is_special = |ino: Ino| matches!(self.inodes[ino].body, Body::Symlink(_) | Body::Node { .. });
        for named in names.iter().filter(|(ino, _)| is_special(*ino)) {
            out.node(&self.node(named))?;
        }
        let by_source: HashMap<Source, &(Ino, Vec<RelPath>)> = names
            .iter()
            .filter_map(|named| match self.inodes[named.0].body {
                Body::File { source, .. } => Some((source, named)),
                _ => None,
            })
            .collect();
        let mut layers: Vec<(usize, HashSet<u64>)> = (0..self.layers).map(|layer| (layer, HashSet::new())).collect();
        for source in by_source.keys() {
            layers[source.layer].1.insert(source.ordinal);
        }
        layers.retain(|(_, keep)| !keep.is_empty());
        contents::for_each_file(layers, &mut open_layer, &mut |source, content| {
            out.file(&self.node(by_source[&source]), content)
        })
    }

    /// Writes the tree as one tar to `out` (see the module's doc): each
    /// inode's further names as hard links right after it, with its full
    /// metadata (a hard link's header sets the inode's metadata in `mke2fs`).
    pub fn write_tar<W: Write>(
        &self,
        out: W,
        open_layer: impl FnMut(usize) -> io::Result<LayerTar>,
    ) -> io::Result<(W, Written)> {
        let mut tar = TarOut { tar: Writer::new(out), written: Written::default() };
        self.emit(&mut tar, open_layer)?;
        Ok((tar.tar.finish()?, tar.written))
    }

    fn node<'a>(&self, (ino, paths): &'a (Ino, Vec<RelPath>)) -> Node<'a> {
        Node { entry: self.entry(*ino, &paths[0]), paths, nlink: self.nlink(*ino, paths.len()) }
    }

    fn nlink(&self, ino: Ino, names: usize) -> u64 {
        match &self.inodes[ino].body {
            Body::Dir(children) => 2 + children.values().filter(|&&child| self.is_dir(child)).count() as u64,
            _ => names as u64,
        }
    }

    /// Every inode reachable from the root and its names, in the order a
    /// depth-first walk first meets them (parents before children); the
    /// root is named `.`.
    fn names(&self) -> Vec<(Ino, Vec<RelPath>)> {
        let mut names: Vec<(Ino, Vec<RelPath>)> = Vec::new();
        let mut index: HashMap<Ino, usize> = HashMap::new();
        let mut stack: Vec<(Ino, RelPath)> = vec![(ROOT, b".".to_vec())];
        while let Some((ino, path)) = stack.pop() {
            if let Body::Dir(children) = &self.inodes[ino].body {
                for (name, &child) in children.iter().rev() {
                    let child_path = if ino == ROOT { name.clone() } else { join(&path, name) };
                    stack.push((child, child_path));
                }
            }
            match index.get(&ino) {
                Some(&at) => names[at].1.push(path),
                None => {
                    index.insert(ino, names.len());
                    names.push((ino, vec![path]));
                }
            }
        }
        names
    }

    /// The tar entry of inode `ino` under `path`.
    fn entry(&self, ino: Ino, path: &[u8]) -> Entry {
        let inode = &self.inodes[ino];
        let (kind, size, link_name, device) = match &inode.body {
            Body::Dir(_) => (Kind::Directory, 0, Vec::new(), (0, 0)),
            Body::File { size, .. } => (Kind::File, *size, Vec::new(), (0, 0)),
            Body::Symlink(target) => (Kind::Symlink, 0, target.clone(), (0, 0)),
            Body::Node { kind, device } => (*kind, 0, Vec::new(), *device),
        };
        let meta = &inode.meta;
        Entry {
            path: path.to_vec(),
            kind,
            size,
            // Linux gives every symlink 0777, whatever a layer says.
            mode: if kind == Kind::Symlink { 0o777 } else { meta.mode },
            uid: meta.uid,
            gid: meta.gid,
            mtime: meta.mtime,
            device,
            xattrs: meta.xattrs.clone(),
            link_name,
            segments: Vec::new(),
            sparse: false,
        }
    }
}

/// An inode of the tree, as [`Merged::inodes`] shows it.
#[derive(Debug)]
pub struct InodeView<'a> {
    /// Its names, relative to the root (`.` for the root), the first as
    /// [`Merged::write_tar`] writes it.
    pub paths: Vec<RelPath>,
    pub kind: Kind,
    /// A regular file's size (holes included).
    pub size: u64,
    /// A symlink's target.
    pub link_name: &'a [u8],
    pub xattrs: &'a Xattrs,
    /// A directory's entries' names.
    pub children: Vec<&'a [u8]>,
}

impl Merged {
    /// Every inode reachable from the root, once, parents first: what a
    /// filesystem made of the tree must hold.
    pub fn inodes(&self) -> Vec<InodeView<'_>> {
        self.names()
            .into_iter()
            .map(|(ino, paths)| {
                let inode = &self.inodes[ino];
                let (kind, size, link_name, children): (Kind, u64, &[u8], Vec<&[u8]>) = match &inode.body {
                    Body::Dir(children) => (Kind::Directory, 0, &[], children.keys().map(Vec::as_slice).collect()),
                    Body::File { size, .. } => (Kind::File, *size, &[], Vec::new()),
                    Body::Symlink(target) => (Kind::Symlink, 0, target, Vec::new()),
                    Body::Node { kind, .. } => (*kind, 0, &[], Vec::new()),
                };
                InodeView { paths, kind, size, link_name, xattrs: &inode.meta.xattrs, children }
            })
            .collect()
    }
}

/// [`Merged::write_tar`]'s output.
struct TarOut<W: Write> {
    tar: Writer<W>,
    written: Written,
}

impl<W: Write> TarOut<W> {
    /// The further names of `node`, as hard links to its first.
    fn links(&mut self, node: &Node<'_>) -> io::Result<()> {
        for path in &node.paths[1..] {
            let link = hard_link(&Entry { path: path.clone(), ..node.entry.clone() }, &node.paths[0]);
            self.written.note(&link);
            self.tar.append(&link, &mut io::empty())?;
        }
        Ok(())
    }
}

impl<W: Write> Emit for TarOut<W> {
    fn node(&mut self, node: &Node<'_>) -> io::Result<()> {
        self.written.note(&node.entry);
        self.tar.append(&node.entry, &mut io::empty())?;
        self.links(node)
    }

    fn file(&mut self, node: &Node<'_>, content: &mut Content<'_>) -> io::Result<()> {
        self.written.note(&node.entry);
        self.tar.append_pieces(&node.entry, content)?;
        self.links(node)
    }
}

/// The `st_mode` of an entry of `kind` with permission bits `mode`.
pub(crate) fn st_mode(kind: Kind, mode: u32) -> u32 {
    let kind = match kind {
        Kind::Directory => 0o040000,
        Kind::Symlink => 0o120000,
        Kind::CharDevice => 0o020000,
        Kind::BlockDevice => 0o060000,
        Kind::Fifo => 0o010000,
        _ => 0o100000,
    };
    kind | (mode & 0o7777)
}

/// `entry` as a hard link to `target`, keeping its metadata.
fn hard_link(entry: &Entry, target: &[u8]) -> Entry {
    Entry { kind: Kind::HardLink, size: 0, link_name: target.to_vec(), ..entry.clone() }
}

#[cfg(test)]
pub(crate) mod tests {
    use vmimg_tar::{Entry, Writer};

    /// A tar of files named `0`, `1`, … of the given sizes, each byte its
    /// file's number plus its offset.
    pub(crate) fn layer(sizes: &[usize]) -> Vec<u8> {
        let mut tar = Writer::new(Vec::new());
        for (n, &size) in sizes.iter().enumerate() {
            let entry = Entry::file(n.to_string().as_bytes(), size as u64);
            tar.append(&entry, &mut content(n, size).as_slice()).unwrap();
        }
        tar.finish().unwrap()
    }

    pub(crate) fn content(n: usize, size: usize) -> Vec<u8> {
        (0..size).map(|i| (n + i) as u8).collect()
    }
}
