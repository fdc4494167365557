//! Local OCI image layouts, and tar archives of them: images built on this
//! host and never pushed, named as skopeo names them.
//!
//! - `oci:DIR[:NAME]`: an OCI image layout directory (`oci-layout` saying
//!   `imageLayoutVersion` 1.0.0, `index.json`, `blobs/<alg>/<hex>`), as
//!   `skopeo copy … oci:DIR:NAME` and `umoci` write it;
//! - `oci-archive:FILE[:NAME]`: a tar of such a directory, as `skopeo copy
//!   … oci-archive:FILE:NAME` writes it. It is never extracted: its headers
//!   are read once when it is opened (`archive`), and blobs are read where
//!   they lie, with positioned reads.
//!
//! NAME picks the `index.json` entry whose [`REF_NAME`] annotation equals
//! it; without NAME the index must hold exactly one entry. That entry may
//! be an image index, resolved to linux/ARCH as a registry's index is: the
//! image is then classified by the code the registry uses (`cloud::classify`),
//! as a cloud image or a container image.
//!
//! Parsing `oci:…` follows skopeo (containers/image) on Linux: the path
//! ends at the first colon, so a path with a colon cannot be named (skopeo
//! refuses those too), and the rest is the name, checked against the OCI
//! `ref.name` grammar: components of ASCII letters and digits joined by one
//! of `-._:@+` or by `--`, separated by `/` (`localhost/app:v1` is a name).
//! An empty name is no name. skopeo's `@N` (an index position) is refused.
//!
//! Refused, naming what was found: a directory without `oci-layout` of
//! version 1.0.0 or without `index.json`; an `index.json` or manifest over
//! [`MAX_MANIFEST_BYTES`], a config over [`MAX_CONFIG_BYTES`]; a blob whose
//! size or digest is not what its descriptor says (every blob is hashed as
//! it is read, and a [`BlobReader`] fails at its end rather than end
//! cleanly); a missing blob; in a directory, a file that is a symbolic link
//! or lies behind one, or is not a regular file (every path component is
//! opened with `O_NOFOLLOW`, below a descriptor of DIR: nothing outside
//! DIR is read); in an archive, what `archive` refuses (links, `..`,
//! duplicates, members past the end of the file, …).
//!
//! Why not `vmimg-tar`'s reader for archives: it streams, skipping a
//! member's data by reading it, and does not say where the data lies; an
//! archive of a 10 GiB disk would be read whole to find its index.
//!
//! Reads are blocking file I/O: the async methods run them on tokio's
//! blocking threads; [`Layout::open_blob`] is for code already off them.

mod archive;

pub use archive::{MAX_HEADERS as MAX_ARCHIVE_HEADERS, MAX_META_BYTES as MAX_ARCHIVE_META_BYTES};

use crate::artifact::{Descriptor, ImageIndex};
use crate::cloud::{OciImage, classify};
use crate::container::{self, ContainerImage, MAX_CONFIG_BYTES, RunConfig};
use crate::registry::{Error, MAX_MANIFEST_BYTES, Manifest, Result};
use archive::Member;
use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;
use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use vmimg_fetch::{Digest, Fetched, Hasher, Progress};

/// The annotation that tags an `index.json` entry.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";
/// The only `imageLayoutVersion` read.
pub const LAYOUT_VERSION: &str = "1.0.0";
/// The largest `oci-layout` file read.
const MAX_OCI_LAYOUT_BYTES: u64 = 64 << 10;
/// Bytes copied between two progress reports in [`Layout::fetch_blob`].
const COPY_CHUNK: usize = 4 << 20;

/// Why a layout, or a reference to one, was refused.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error("invalid OCI layout reference {text:?}: {reason}")]
    Reference { text: String, reason: String },
    #[error("{layout} is not an OCI image layout: {reason}")]
    NotLayout { layout: String, reason: String },
    #[error("{layout} has no image named {tag:?} (its names: {})", names(tags))]
    UnknownTag { layout: String, tag: String, tags: Vec<String> },
    #[error("{layout} has {count} images named {tag:?}")]
    DuplicateTag { layout: String, tag: String, count: usize },
    #[error("{layout} holds {count} images, not one: name one (its names: {})", names(tags))]
    NoTag { layout: String, count: usize, tags: Vec<String> },
    #[error("{layout} lacks {name} (a blob its manifests name)")]
    MissingBlob { layout: String, name: String },
    #[error("{layout}: {name} is a symbolic link, lies behind one, or is not a regular file; refused")]
    NotAFile { layout: String, name: String },
    #[error("{layout}: refused as an OCI archive: {reason}")]
    Archive { layout: String, reason: String },
}

fn names(tags: &[String]) -> String {
    if tags.is_empty() { "none".to_owned() } else { tags.join(", ") }
}

/// A layout directory or an archive of one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LayoutKind {
    /// `oci:`
    Dir,
    /// `oci-archive:`
    Archive,
}

impl LayoutKind {
    /// `oci` or `oci-archive`, the transport's name.
    pub fn transport(self) -> &'static str {
        match self {
            LayoutKind::Dir => "oci",
            LayoutKind::Archive => "oci-archive",
        }
    }
}

/// `oci:PATH[:NAME]` or `oci-archive:PATH[:NAME]`, parsed as skopeo parses
/// them (see the module's docs).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LayoutRef {
    kind: LayoutKind,
    path: PathBuf,
    tag: Option<String>,
}

impl LayoutRef {
    /// The layout `kind` at `path`, its image named `tag`: `path` must be
    /// non-empty UTF-8 without a colon, `tag` a valid name.
    pub fn new(kind: LayoutKind, path: impl Into<PathBuf>, tag: Option<&str>) -> Result<LayoutRef, LayoutError> {
        let path = path.into();
        let shown = format!("{}:{}", kind.transport(), path.display());
        let refuse = |reason: &str| LayoutError::Reference { text: shown.clone(), reason: reason.to_owned() };
        match path.to_str() {
            None => return Err(refuse("the path is not UTF-8")),
            Some("") => return Err(refuse("no path")),
            Some(text) if text.contains(':') => return Err(refuse("the path holds a colon, which starts the name")),
            Some(_) => {}
        }
        let tag = tag.filter(|t| !t.is_empty());
        if let Some(tag) = tag
            && !is_ref_name(tag)
        {
            return Err(refuse(&format!(
                "{tag:?} is not an image name (letters and digits joined by one of -._:@+ or --, in components joined by /)"
            )));
        }
        Ok(LayoutRef { kind, path, tag: tag.map(str::to_owned) })
    }

    pub fn kind(&self) -> LayoutKind {
        self.kind
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The image's name in the layout, if one was given.
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }
}

impl std::str::FromStr for LayoutRef {
    type Err = LayoutError;

    /// `oci:PATH[:NAME]` or `oci-archive:PATH[:NAME]`: the path ends at the
    /// first colon after the transport.
    fn from_str(text: &str) -> Result<LayoutRef, LayoutError> {
        let (kind, rest) = match text.split_once(':') {
            Some(("oci", rest)) => (LayoutKind::Dir, rest),
            Some(("oci-archive", rest)) => (LayoutKind::Archive, rest),
            _ => {
                return Err(LayoutError::Reference {
                    text: text.chars().take(300).collect(),
                    reason: "expected oci:PATH[:NAME] or oci-archive:PATH[:NAME]".to_owned(),
                });
            }
        };
        let (path, tag) = match rest.split_once(':') {
            Some((path, tag)) => (path, Some(tag)),
            None => (rest, None),
        };
        LayoutRef::new(kind, path, tag)
    }
}

impl fmt::Display for LayoutRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind.transport(), self.path.display())?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        Ok(())
    }
}

/// Whether `name` is an OCI `ref.name`: `/`-separated components, each
/// ASCII letters and digits joined by single separators of `-._:@+` or
/// by `--`.
fn is_ref_name(name: &str) -> bool {
    let alnum = |c: char| c.is_ascii_alphanumeric();
    let component = |c: &str| {
        c.starts_with(alnum)
            && c.ends_with(alnum)
            && c.split(alnum).all(|sep| matches!(sep, "" | "-" | "." | "_" | ":" | "@" | "+" | "--"))
    };
    name.split('/').all(component)
}

/// An open layout: its `index.json` read, and, for an archive, where each
/// member lies. Cheap to clone (the clones share it).
#[derive(Clone)]
pub struct Layout(Arc<Inner>);

struct Inner {
    /// `oci:PATH` or `oci-archive:PATH`, for messages.
    name: String,
    kind: LayoutKind,
    path: PathBuf,
    files: Files,
    /// The entries of `index.json`.
    index: Vec<Descriptor>,
}

enum Files {
    /// The layout directory, opened once.
    Dir(OwnedFd),
    Archive {
        file: Arc<File>,
        members: HashMap<String, Member>,
    },
}

/// A file's bytes: `size` bytes of `file` from `offset`.
struct Extent {
    file: Arc<File>,
    offset: u64,
    size: u64,
}

impl Layout {
    /// Opens the layout `reference` names (its name is for [`Layout::image`]):
    /// reads `oci-layout` and `index.json`, and an archive's headers.
    pub async fn open(reference: &LayoutRef) -> Result<Layout> {
        let (kind, path) = (reference.kind, reference.path.clone());
        let inner = tokio::task::spawn_blocking(move || Inner::open(kind, path)).await.expect("layout opener")?;
        Ok(Layout(Arc::new(inner)))
    }

    pub fn kind(&self) -> LayoutKind {
        self.0.kind
    }

    pub fn path(&self) -> &Path {
        &self.0.path
    }

    /// The names of the images in `index.json`, in its order.
    pub fn tags(&self) -> Vec<String> {
        self.0.index.iter().filter_map(|d| d.annotations.get(REF_NAME).cloned()).collect()
    }

    /// The image named `tag` (without one, the only image) and its
    /// manifest's digest; through an index, the manifest for
    /// linux/`architecture`. A cloud image, or else a container image, as
    /// [`Registry::image`](crate::Registry::image) finds them.
    pub async fn image(&self, tag: Option<&str>, architecture: &str) -> Result<(Digest, OciImage)> {
        let entry = self.0.select(tag)?.clone();
        let name = format!("{}{}", self.0.name, tag.map(|t| format!(":{t}")).unwrap_or_default());
        let manifest = self.manifest(entry.digest, Some(entry.size), entry.media_type).await?;
        classify(manifest, &name, architecture, |digest| self.manifest(digest, None, String::new())).await
    }

    /// A container image's run settings, from its config blob (bounded and checked).
    pub async fn run_config(&self, image: &ContainerImage) -> Result<RunConfig> {
        let config = image.config.clone();
        let bytes = self
            .blocking(move |inner| inner.read_blob(&config.digest, Some(config.size), MAX_CONFIG_BYTES, "config blob"))
            .await?;
        Ok(container::parse_config(&bytes)?)
    }

    /// Copies blob `digest` of `size` bytes into `partial` (truncated and
    /// written from its start, in place), hashing it on the way, as
    /// [`Registry::fetch_blob`](crate::Registry::fetch_blob) downloads one;
    /// unlike a download it is checked here: a size or digest other than
    /// the descriptor's is an error, and the partial is removed.
    pub async fn fetch_blob(
        &self,
        digest: &Digest,
        size: u64,
        partial: &Path,
        progress: &dyn Progress,
    ) -> Result<Fetched> {
        let copied = self.copy_blob(digest, size, partial, progress).await;
        if copied.is_err() {
            let _ = vmimg_fetch::remove_partial(partial);
        }
        copied
    }

    async fn copy_blob(&self, digest: &Digest, size: u64, partial: &Path, progress: &dyn Progress) -> Result<Fetched> {
        let (wanted, path) = (digest.clone(), partial.to_owned());
        let mut copy = self
            .blocking(move |inner| {
                let reader = inner.blob_reader(&wanted, Some(size))?;
                // The copy starts over, in the same file: a reader may already
                // hold it open, waiting for its bytes (a conversion that runs
                // while the parts arrive).
                let out = File::create(&path).map_err(|e| output_error(&path, e))?;
                Ok(BlobCopy { reader, out, path, buf: vec![0; COPY_CHUNK] })
            })
            .await?;
        progress.started(0, Some(size));
        let mut written = 0;
        loop {
            let n;
            (copy, n) = blocking(move || copy.chunk().map(|n| (copy, n))).await?;
            if n == 0 {
                break;
            }
            written += n;
            progress.advanced(written);
        }
        blocking(move || copy.out.sync_all().map_err(|e| output_error(&copy.path, e))).await?;
        Ok(Fetched { digest: digest.clone(), size: written, validators: Default::default() })
    }

    /// A reader of blob `digest` of `size` bytes that fails (`InvalidData`)
    /// rather than end if the bytes are not that blob. Blocking: call it
    /// off async threads, and read it there.
    pub fn open_blob(&self, digest: &Digest, size: u64) -> Result<BlobReader> {
        self.0.blob_reader(digest, Some(size))
    }

    /// A manifest, bounded and checked against `digest` (and `size` if known).
    async fn manifest(&self, digest: Digest, size: Option<u64>, media_type: String) -> Result<Manifest> {
        let wanted = digest.clone();
        let limit = MAX_MANIFEST_BYTES as u64;
        let bytes = self.blocking(move |inner| inner.read_blob(&wanted, size, limit, "manifest")).await?;
        Ok(Manifest { bytes, media_type, digest })
    }

    /// Runs `work` on the layout on a blocking thread.
    async fn blocking<T: Send + 'static>(&self, work: impl FnOnce(&Inner) -> Result<T> + Send + 'static) -> Result<T> {
        let inner = self.0.clone();
        blocking(move || work(&inner)).await
    }
}

async fn blocking<T: Send + 'static>(work: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(work).await.expect("a layout reader")
}

fn output_error(path: &Path, e: std::io::Error) -> Error {
    Error::Output(format!("{}: {e}", path.display()))
}

impl fmt::Debug for Layout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Layout").field("name", &self.0.name).field("images", &self.0.index.len()).finish()
    }
}

/// A blob copy in progress: moved to a blocking thread for each chunk.
struct BlobCopy {
    reader: BlobReader,
    out: File,
    path: PathBuf,
    buf: Vec<u8>,
}

impl BlobCopy {
    /// Copies up to a buffer's worth; 0 at the end (the digest checked).
    fn chunk(&mut self) -> Result<u64> {
        let mut filled = 0;
        loop {
            let n = self.reader.fill(&mut self.buf[filled..])?;
            filled += n;
            if n == 0 || filled == self.buf.len() {
                break;
            }
        }
        self.out.write_all(&self.buf[..filled]).map_err(|e| output_error(&self.path, e))?;
        Ok(filled as u64)
    }
}

impl Inner {
    fn open(kind: LayoutKind, path: PathBuf) -> Result<Inner> {
        let name = format!("{}:{}", kind.transport(), path.display());
        let not_layout = |reason: String| LayoutError::NotLayout { layout: name.clone(), reason };
        let files = match kind {
            LayoutKind::Dir => {
                let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
                Files::Dir(rustix::fs::open(&path, flags, Mode::empty()).map_err(|e| match e {
                    Errno::NOTDIR => not_layout("not a directory (an archive is oci-archive:PATH)".into()),
                    e => not_layout(std::io::Error::from(e).to_string()),
                })?)
            }
            LayoutKind::Archive => {
                let file = File::open(&path).map_err(|e| not_layout(e.to_string()))?;
                let members = archive::scan(&file).map_err(|e| match e.kind() {
                    std::io::ErrorKind::InvalidData => {
                        Error::from(LayoutError::Archive { layout: name.clone(), reason: e.to_string() })
                    }
                    _ => Error::Io { path: path.clone(), source: e },
                })?;
                Files::Archive { file: Arc::new(file), members }
            }
        };
        let mut inner = Inner { name, kind, path, files, index: Vec::new() };
        inner.check_version()?;
        let bytes = inner.read_file("index.json", MAX_MANIFEST_BYTES as u64)?;
        let index: ImageIndex = serde_json::from_slice(&bytes)
            .map_err(|e| LayoutError::NotLayout { layout: inner.name.clone(), reason: format!("index.json: {e}") })?;
        inner.index = index.manifests;
        Ok(inner)
    }

    /// Fails unless `oci-layout` says version 1.0.0.
    fn check_version(&self) -> Result<()> {
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct OciLayout {
            image_layout_version: String,
        }
        let bytes = self.read_file("oci-layout", MAX_OCI_LAYOUT_BYTES)?;
        match serde_json::from_slice::<OciLayout>(&bytes) {
            Ok(found) if found.image_layout_version == LAYOUT_VERSION => Ok(()),
            Ok(found) => Err(self
                .not_layout(format!("oci-layout says version {:?}, not {LAYOUT_VERSION}", found.image_layout_version))),
            Err(e) => Err(self.not_layout(format!("oci-layout: {e}"))),
        }
    }

    fn not_layout(&self, reason: String) -> Error {
        LayoutError::NotLayout { layout: self.name.clone(), reason }.into()
    }

    /// A file of the layout that no digest names (`oci-layout`,
    /// `index.json`), whole, at most `limit` bytes.
    fn read_file(&self, name: &'static str, limit: u64) -> Result<Vec<u8>> {
        let extent = self.extent(name)?.ok_or_else(|| self.not_layout(format!("it has no {name}")))?;
        if extent.size > limit {
            return Err(Error::TooLarge { what: name, url: self.file_name(name), limit: limit as usize });
        }
        let mut bytes = vec![0u8; extent.size as usize];
        extent.file.read_exact_at(&mut bytes, extent.offset).map_err(|source| self.io(name, source))?;
        Ok(bytes)
    }

    /// A blob, whole, checked, at most `limit` bytes.
    fn read_blob(&self, digest: &Digest, size: Option<u64>, limit: u64, what: &'static str) -> Result<Vec<u8>> {
        let mut reader = self.blob_reader(digest, size)?;
        if reader.size() > limit {
            return Err(Error::TooLarge { what, url: self.file_name(&blob_name(digest)), limit: limit as usize });
        }
        let mut bytes = vec![0u8; reader.size() as usize];
        let mut filled = 0;
        loop {
            match reader.fill(&mut bytes[filled..])? {
                0 => return Ok(bytes),
                n => filled += n,
            }
        }
    }

    /// A reader of blob `digest`, which must be `size` bytes if given.
    fn blob_reader(&self, digest: &Digest, size: Option<u64>) -> Result<BlobReader> {
        let name = blob_name(digest);
        let Some(extent) = self.extent(&name)? else {
            return Err(LayoutError::MissingBlob { layout: self.name.clone(), name }.into());
        };
        if let Some(size) = size
            && size != extent.size
        {
            return Err(Error::BlobSize { digest: digest.clone(), expected: size, actual: extent.size });
        }
        Ok(BlobReader {
            hasher: Some(Hasher::new(digest.algorithm())),
            digest: digest.clone(),
            pos: extent.offset,
            start: extent.offset,
            end: extent.offset + extent.size,
            file: extent.file,
            name: self.file_name(&name),
        })
    }

    /// Where the file `name` (a path inside the layout) lies; None if missing.
    fn extent(&self, name: &str) -> Result<Option<Extent>> {
        match &self.files {
            Files::Archive { file, members } => {
                Ok(members.get(name).map(|m| Extent { file: file.clone(), offset: m.offset, size: m.size }))
            }
            Files::Dir(dir) => {
                let Some(file) = self.open_beneath(dir, name)? else { return Ok(None) };
                let meta = file.metadata().map_err(|source| self.io(name, source))?;
                if !meta.is_file() {
                    return Err(LayoutError::NotAFile { layout: self.name.clone(), name: name.to_owned() }.into());
                }
                Ok(Some(Extent { file: Arc::new(file), offset: 0, size: meta.len() }))
            }
        }
    }

    /// Opens `name` below `dir` one component at a time, following no
    /// symbolic link; None if a component is missing.
    fn open_beneath(&self, dir: &OwnedFd, name: &str) -> Result<Option<File>> {
        let components: Vec<&str> = name.split('/').collect();
        let mut at: Option<OwnedFd> = None;
        for (i, component) in components.iter().enumerate() {
            let last = i + 1 == components.len();
            // NONBLOCK: opening a FIFO must not wait for a writer (it is then refused).
            let kind = if last { OFlags::NONBLOCK } else { OFlags::DIRECTORY };
            let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | kind;
            let parent = at.as_ref().map_or(dir.as_fd(), |fd| fd.as_fd());
            at = Some(match rustix::fs::openat(parent, *component, flags, Mode::empty()) {
                Ok(fd) => fd,
                Err(Errno::NOENT) => return Ok(None),
                Err(Errno::LOOP | Errno::NOTDIR | Errno::NXIO) => {
                    return Err(LayoutError::NotAFile { layout: self.name.clone(), name: name.to_owned() }.into());
                }
                Err(e) => return Err(self.io(name, e.into())),
            });
        }
        Ok(at.map(File::from))
    }

    /// The `index.json` entry named `tag`, or the only one.
    fn select(&self, tag: Option<&str>) -> Result<&Descriptor, LayoutError> {
        let layout = self.name.clone();
        let tags = || self.index.iter().filter_map(|d| d.annotations.get(REF_NAME).cloned()).collect();
        let Some(tag) = tag else {
            return match self.index.as_slice() {
                [only] => Ok(only),
                all => Err(LayoutError::NoTag { layout, count: all.len(), tags: tags() }),
            };
        };
        let named: Vec<_> =
            self.index.iter().filter(|d| d.annotations.get(REF_NAME).is_some_and(|t| t == tag)).collect();
        match named.as_slice() {
            [only] => Ok(only),
            [] => Err(LayoutError::UnknownTag { layout, tag: tag.to_owned(), tags: tags() }),
            all => Err(LayoutError::DuplicateTag { layout, tag: tag.to_owned(), count: all.len() }),
        }
    }

    /// `name` inside the layout, for messages: `DIR/name` or `FILE:name`.
    fn file_name(&self, name: &str) -> String {
        match self.kind {
            LayoutKind::Dir => self.path.join(name).display().to_string(),
            LayoutKind::Archive => format!("{}:{name}", self.path.display()),
        }
    }

    fn io(&self, name: &str, source: std::io::Error) -> Error {
        Error::Io { path: PathBuf::from(self.file_name(name)), source }
    }
}

/// `blobs/<algorithm>/<hex>`
fn blob_name(digest: &Digest) -> String {
    format!("blobs/{}/{}", digest.algorithm().name(), digest.hex())
}

/// A blob of a layout, read in place and hashed as it is read: at its end
/// a digest other than the one asked for is an error (`InvalidData` from
/// [`std::io::Read`]), never a clean end. Blocking.
pub struct BlobReader {
    file: Arc<File>,
    start: u64,
    pos: u64,
    end: u64,
    /// None once the digest has been checked.
    hasher: Option<Hasher>,
    digest: Digest,
    /// Where the blob is, for messages.
    name: String,
}

impl BlobReader {
    /// The blob's size.
    pub fn size(&self) -> u64 {
        self.end - self.start
    }

    /// Reads into `buf`; at the end (0) the digest has been checked.
    fn fill(&mut self, buf: &mut [u8]) -> Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let want = (self.end - self.pos).min(buf.len() as u64) as usize;
        if want == 0 {
            if let Some(hasher) = self.hasher.take() {
                let actual = hasher.finish();
                if actual != self.digest {
                    return Err(Error::BlobDigest { expected: self.digest.clone(), actual });
                }
            }
            return Ok(0);
        }
        let n = self
            .file
            .read_at(&mut buf[..want], self.pos)
            .map_err(|source| Error::Io { path: PathBuf::from(&self.name), source })?;
        if n == 0 {
            // The file shrank under us.
            let actual = self.pos - self.start;
            return Err(Error::BlobSize { digest: self.digest.clone(), expected: self.size(), actual });
        }
        self.hasher.as_mut().expect("hashing until the end").update(&buf[..n]);
        self.pos += n as u64;
        Ok(n)
    }
}

impl std::io::Read for BlobReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.fill(buf).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_parse_as_skopeo_parses_them() {
        let table = [
            ("oci:/tmp/layout", LayoutKind::Dir, "/tmp/layout", None),
            ("oci:/tmp/layout:v1", LayoutKind::Dir, "/tmp/layout", Some("v1")),
            ("oci:layout:", LayoutKind::Dir, "layout", None),
            ("oci-archive:img.tar:v1.0", LayoutKind::Archive, "img.tar", Some("v1.0")),
            ("oci:/l:localhost/app:v1", LayoutKind::Dir, "/l", Some("localhost/app:v1")),
            ("oci:/l:a--b_c.d@e+f", LayoutKind::Dir, "/l", Some("a--b_c.d@e+f")),
        ];
        for (text, kind, path, tag) in table {
            let parsed: LayoutRef = text.parse().unwrap();
            assert_eq!((parsed.kind(), parsed.path(), parsed.tag()), (kind, Path::new(path), tag), "{text}");
            let shown = parsed.to_string();
            assert_eq!(shown.parse::<LayoutRef>().unwrap(), parsed, "{text} shows as {shown}");
        }
        assert_eq!("oci:layout:".parse::<LayoutRef>().unwrap().to_string(), "oci:layout");
        let refused = [
            ("docker://alpine", "expected oci:PATH"),
            ("oci", "expected oci:PATH"),
            ("oci:", "no path"),
            ("oci::v1", "no path"),
            ("oci:/l:-v1", "not an image name"),
            ("oci:/l:@0", "not an image name"),
            ("oci:/l:a---b", "not an image name"),
            ("oci:/l:a//b", "not an image name"),
            ("oci:/l:a b", "not an image name"),
            ("oci:/l:v1/", "not an image name"),
        ];
        for (text, why) in refused {
            let error = text.parse::<LayoutRef>().unwrap_err().to_string();
            assert!(error.contains(why), "{text}: {error}");
        }
        let error = LayoutRef::new(LayoutKind::Dir, "/a:b", None).unwrap_err().to_string();
        assert!(error.contains("colon"), "{error}");
    }
}
