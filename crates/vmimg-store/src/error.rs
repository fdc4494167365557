use std::path::{Path, PathBuf};
use vmimg_fetch::Digest;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a store operation failed; each message says what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Input that is malformed or out of range: a URL, rule, size, option.
    #[error("{0}")]
    Invalid(String),
    /// What was asked conflicts with the state things are in.
    #[error("{0}")]
    Conflict(String),
    #[error("{what} name {name:?} is not 1 to 64 of [A-Za-z0-9._-]")]
    InvalidName { what: &'static str, name: String },
    #[error("an {what} named {name} exists: remove it, or choose another name")]
    Exists { what: &'static str, name: String },
    #[error("{}: {message}", path.display())]
    Config { path: PathBuf, message: String },
    #[error(
        "this host's architecture ({host}) has no catalog images: choose an architecture (amd64 or arm64) to resolve \
         aliases for"
    )]
    NoHostArch { host: &'static str },
    #[error(
        "image {image} is a {format} initramfs, not a disk: give it to the VM as its initrd, or build a disk \
         (ext4 or erofs)"
    )]
    NotADisk { image: String, format: String },
    #[error("cannot {action} {}: {source}", path.display())]
    Io { action: &'static str, path: PathBuf, source: std::io::Error },
    #[error("catalog {origin}: {message}")]
    Catalog { origin: String, message: String },
    #[error("unknown alias {alias:?}{suggestion}: the catalog lists the aliases")]
    UnknownAlias { alias: String, suggestion: crate::suggest::Suggestion },
    #[error("alias {alias:?} has no {arch} image (it has: {available})")]
    NoArch { alias: String, arch: String, available: String },
    #[error(
        "digest mismatch for {source_name}: expected {expected}, got {actual}; nothing was kept \
         (if upstream replaced a catalog image, refreshing the catalog updates its pin)"
    )]
    DigestMismatch { source_name: String, expected: Digest, actual: Digest },
    #[error("image {image} has instances ({instances}): remove them first, or force the removal to remove them too")]
    InUse { image: String, instances: String },
    #[error("no {what} named {name:?} in the store")]
    NotFound { what: &'static str, name: String },
    #[error("no store at {}: nothing was ever stored there (a mistyped store directory?)", root.display())]
    NoStore { root: PathBuf },
    #[error("no image named {name:?} in the store{suggestion}, and no source pulled before names one")]
    UnknownImage { name: String, suggestion: crate::suggest::Suggestion },
    #[error("{}: {source}", path.display())]
    Qcow2 { path: PathBuf, source: vmimg_qcow2::Error },
    #[error("image record {}: {message}", path.display())]
    Record { path: PathBuf, message: String },
    #[error("{}", bundle_message(path, source))]
    Bundle { path: PathBuf, source: vmimg_bundle::bundle::Error },
    #[error("bundle {}: its digest is {actual}, not the expected {expected}; nothing was kept", path.display())]
    BundleMismatch { path: PathBuf, expected: Digest, actual: Digest },
    #[error(
        "a blob of the image (a disk part or a layer) has digest {actual} and {actual_size} bytes, where its manifest says {expected} and \
         {size} bytes; nothing was kept"
    )]
    PartMismatch { expected: Digest, size: u64, actual: Digest, actual_size: u64 },
    /// A container image's build failed (its record keeps the error).
    #[error("building {reference}: {message}")]
    BuildFailed { reference: String, message: String, kind: crate::ErrorKind },
    #[error("layer {}: {source}", path.display())]
    Layer { path: PathBuf, source: vmimg_rootfs::apply::ApplyError },
    /// A pull or build ran out of space (or quota) and kept its partial
    /// downloads to resume from.
    #[error("{source}: {kept}")]
    PartialsKept { source: Box<Error>, kept: Kept },
    /// A bug, or a store in a state it should never be in.
    #[error("internal error: {0}")]
    Internal(String),
    #[error(transparent)]
    Oci(#[from] vmimg_oci::Error),
    #[error(transparent)]
    Fetch(#[from] vmimg_fetch::Error),
    #[error(transparent)]
    Disk(#[from] vmimg_disk::Error),
}

/// What a pull that failed for want of space kept: its partial downloads,
/// `at` one file or a pattern naming them all.
#[derive(Debug)]
pub struct Kept {
    pub at: PathBuf,
    pub files: usize,
    pub bytes: u64,
    /// The command that resumes them (`pull`, `build`).
    pub command: &'static str,
}

impl std::fmt::Display for Kept {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (what, them) = match self.files {
            1 => ("the partial download keeps".to_owned(), "it"),
            n => (format!("the {n} partial downloads keep"), "them"),
        };
        let (size, at) = (vmimg_disk::format_size(self.bytes), self.at.display());
        write!(
            f,
            "{what} {size} in {at}; free space and {} again to resume, or drop {them} with `vmimg gc --partials`",
            self.command
        )
    }
}

/// `FILE is not a bundle: …`, or `bundle FILE: …` for what went wrong
/// inside one.
fn bundle_message(path: &Path, source: &vmimg_bundle::bundle::Error) -> String {
    match source {
        vmimg_bundle::bundle::Error::NotABundle { .. } => format!("{} is not a bundle: {source}", path.display()),
        _ => format!("bundle {}: {source}", path.display()),
    }
}

impl Error {
    pub(crate) fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.to_owned();
        move |source| Error::Io { action, path, source }
    }
}
