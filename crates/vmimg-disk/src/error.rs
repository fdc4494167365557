//! Errors of the disk layer: a qcow2 refusal, an I/O failure with its path,
//! a refused copy, a destination that cannot be written, a size that does not parse, a backing chain that loops
//! or runs too deep, one asked to become a compressed qcow2 image, a file
//! that is no raw or qcow2 disk, or a raw disk carrying an image header.

use std::io;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Qcow2 {
        path: PathBuf,
        #[source]
        source: vmimg_qcow2::Error,
    },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is {content}: {}", content.advice())]
    Unsupported { path: PathBuf, content: crate::probe::Content },
    #[error(
        "{path} was declared a raw disk but starts with {found} header{detail}: a VMM that probes formats would \
         open it as that image, so it is refused; if it is such an image, declare it as one (its own format or \
         media type, not raw)"
    )]
    HeaderInRaw { path: PathBuf, found: crate::probe::Content, detail: String },
    #[error(
        "the disk inside {path} starts with {found} header{detail}: as a raw disk, a VMM that probes formats would \
         open it as that image, so it is refused"
    )]
    HeaderInDisk { path: PathBuf, found: crate::probe::Content, detail: String },
    #[error("unknown image format {0:?}: vmimg reads raw and qcow2")]
    UnknownFormat(String),
    #[error("{path} is a qcow2 image, and a copy copies raw disks only: convert it to raw instead")]
    CopyOfQcow2 { path: PathBuf },
    #[error("shrinking is refused: {path} is {size} bytes, more than the requested size of {requested} bytes")]
    Shrink { path: PathBuf, size: u64, requested: u64 },
    #[error("{verb} a file onto itself is refused: {src} and {dst} are the same file: give another destination")]
    SameFile { verb: &'static str, src: PathBuf, dst: PathBuf },
    #[error("{path} is a directory: give the path of the file to write{}", example_in(path, example))]
    DestinationIsDirectory { path: PathBuf, example: Option<String> },
    #[error(
        "{path} is {what}: the output is a new file renamed over the destination, which would replace it, not \
         write into it: give the path of a regular file (to fill a device, write a file, then copy it with dd)"
    )]
    DestinationNotAFile { path: PathBuf, what: &'static str },
    #[error("cannot write {path}: its directory {dir} does not exist: create it first")]
    DestinationDirMissing { path: PathBuf, dir: PathBuf },
    #[error("cannot write {path}: {dir} is not a directory")]
    DestinationDirNotADir { path: PathBuf, dir: PathBuf },
    #[error("invalid size {input:?}: {problem}")]
    InvalidSize { input: String, problem: &'static str },
    #[error("{path}: the backing chain loops: {backing} is already in it")]
    BackingLoop { path: PathBuf, backing: PathBuf },
    #[error("{path}: the backing chain is deeper than {max} backing files")]
    ChainTooDeep { path: PathBuf, max: usize },
    #[error(
        "{path} has a backing chain, which cannot be written as a compressed qcow2 image directly: convert it to \
         raw first"
    )]
    ChainToQcow2 { path: PathBuf },
}

impl Error {
    pub(crate) fn io(what: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { what, path, source }
    }

    pub(crate) fn qcow2(path: impl Into<PathBuf>) -> impl FnOnce(vmimg_qcow2::Error) -> Error {
        let path = path.into();
        move |source| Error::Qcow2 { path, source }
    }
}

/// For callers whose errors are `io::Error`s: an I/O failure keeps its
/// kind, anything else is `Other`; the message (which names the path) is
/// this error's, which travels inside (`get_ref` downcasts to it).
impl From<Error> for io::Error {
    fn from(err: Error) -> Self {
        let kind = match &err {
            Error::Io { source, .. } => source.kind(),
            _ => io::ErrorKind::Other,
        };
        io::Error::new(kind, err)
    }
}

/// `, e.g. DIR/NAME` for a destination that is a directory.
fn example_in(dir: &std::path::Path, example: &Option<String>) -> String {
    example.as_ref().map_or_else(String::new, |name| format!(", e.g. {}", dir.join(name).display()))
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
