//! The one error type of the qcow2 reader and overlay writer.
//!
//! Every refusal names the field or structure that was wrong and the value it
//! held, so a user can tell a damaged download from a hostile one.

use std::io;

/// Why an image could not be opened or read.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("I/O error while reading {what}: {source}")]
    Io {
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("not a qcow2 image: the file does not start with the qcow2 magic")]
    NotQcow2,
    #[error("unsupported qcow2 version {0} (only versions 2 and 3 exist)")]
    UnsupportedVersion(u32),
    #[error("invalid qcow2 image: {0}")]
    Invalid(String),
    #[error("unsupported qcow2 feature: {0}")]
    Unsupported(String),
    #[error(
        "refused: the image names a backing file {path:?}; images from outside may not refer to \
         other files (flatten it first, e.g. `qemu-img convert` on a trusted host)"
    )]
    BackingFileRefused { path: String },
    #[error(
        "refused: the image keeps its data in an external data file {path:?}; images from \
         outside may not refer to other files"
    )]
    DataFileRefused { path: String },
    #[error("refused: the image is encrypted ({0}); vmimg does not handle encrypted images")]
    Encrypted(&'static str),
    #[error("corrupt compressed cluster at host offset {host_offset:#x}: {reason}")]
    Decompress { host_offset: u64, reason: String },
    #[error("cannot create the qcow2 image: {0}")]
    Create(String),
    #[error("I/O error while writing {what}: {source}")]
    Write {
        what: &'static str,
        #[source]
        source: io::Error,
    },
}

impl Error {
    pub(crate) fn io(what: &'static str) -> impl FnOnce(io::Error) -> Error {
        move |source| Error::Io { what, source }
    }

    pub(crate) fn write(what: &'static str) -> impl FnOnce(io::Error) -> Error {
        move |source| Error::Write { what, source }
    }
}

/// Shorthand for building [`Error::Invalid`] with a formatted message.
macro_rules! invalid {
    ($($arg:tt)*) => { $crate::Error::Invalid(format!($($arg)*)) };
}
pub(crate) use invalid;

pub type Result<T, E = Error> = std::result::Result<T, E>;
