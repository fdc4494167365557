//! Errors of the disk layer: a qcow2 refusal, or an I/O failure with its path.

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
    #[error("unknown image format {0:?}: vmimg reads raw and qcow2")]
    UnknownFormat(String),
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

pub type Result<T, E = Error> = std::result::Result<T, E>;
