//! What kind of failure an error is: what a frontend maps to an exit code
//! or an HTTP status without reading the error's text.
//!
//! [`ErrorKind`] names the kinds; [`Error::kind`] gives the store error's,
//! through one mapping function per lower crate (`of_io`, `of_fetch`,
//! `of_oci`, `of_disk`, `of_qcow2`, `of_bundle`, `of_machine`, `of_layer`).
//! Each matches its crate's error enum variant by variant, with no
//! catch-all, so that a new variant does not build until someone says what
//! kind it is. An error that wraps an `io::Error` takes that error's kind
//! (`of_io`), so a full disk is [`ErrorKind::OutOfSpace`] wherever it
//! struck.

use crate::error::Error;
use std::fmt;
use std::io;
use vmimg_bundle::bundle::Error as BundleError;
use vmimg_bundle::machine::MachineError;
use vmimg_fetch::Error as FetchError;
use vmimg_oci::Error as OciError;
use vmimg_oci::artifact::ArtifactError;
use vmimg_rootfs::apply::ApplyError;

/// What kind of failure an error is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// No such image, alias, file, tag, blob or build.
    NotFound,
    /// It exists already, or the object is in a state that forbids the
    /// operation.
    Conflict,
    /// Instances, or work in flight, hold it.
    InUse,
    /// A malformed reference, digest, size, name, URL or config, or a bad
    /// option value.
    InvalidInput,
    /// The input was read and refused as hostile or unverifiable: a digest
    /// mismatch, a backing file, an external data file, an unsupported or
    /// foreign format, an image header inside a raw disk, a hostile tar or
    /// manifest, a tree too deep.
    Refused,
    /// The network or a server failed: DNS, timeouts, refused connections,
    /// 5xx and 429 answers, a transfer too slow. Trying again later may
    /// help.
    Unavailable,
    /// Authentication or permission was refused: 401 or 403 answers, a TLS
    /// certificate that does not verify, EACCES or EPERM.
    Denied,
    /// The disk is full (ENOSPC), a quota is reached (EDQUOT), or a file
    /// would be too large (EFBIG).
    OutOfSpace,
    /// Anything else: a bug, or a broken store.
    Internal,
}

impl ErrorKind {
    /// Every kind, in declaration order.
    pub const ALL: [ErrorKind; 9] = [
        ErrorKind::NotFound,
        ErrorKind::Conflict,
        ErrorKind::InUse,
        ErrorKind::InvalidInput,
        ErrorKind::Refused,
        ErrorKind::Unavailable,
        ErrorKind::Denied,
        ErrorKind::OutOfSpace,
        ErrorKind::Internal,
    ];

    /// The kind's snake_case name, as serialized.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::NotFound => "not_found",
            ErrorKind::Conflict => "conflict",
            ErrorKind::InUse => "in_use",
            ErrorKind::InvalidInput => "invalid_input",
            ErrorKind::Refused => "refused",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Denied => "denied",
            ErrorKind::OutOfSpace => "out_of_space",
            ErrorKind::Internal => "internal",
        }
    }

    /// The kind of `error` if it is one of the library's errors (the
    /// store's, or a lower crate's used directly): what a frontend finds
    /// walking an error's chain of causes.
    pub fn of(error: &(dyn std::error::Error + 'static)) -> Option<ErrorKind> {
        if let Some(e) = error.downcast_ref::<Error>() {
            return Some(e.kind());
        }
        let kinds: [fn(&(dyn std::error::Error + 'static)) -> Option<ErrorKind>; 8] = [
            |e| e.downcast_ref().map(of_disk),
            |e| e.downcast_ref().map(of_qcow2),
            |e| e.downcast_ref().map(of_oci),
            |e| e.downcast_ref().map(of_fetch),
            |e| e.downcast_ref().map(of_bundle),
            |e| e.downcast_ref().map(of_machine),
            |e| e.downcast_ref().map(of_layer),
            |e| e.downcast_ref().map(of_io),
        ];
        kinds.iter().find_map(|kind| kind(error))
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Error {
    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Invalid(_)
            | Error::InvalidName { .. }
            | Error::Config { .. }
            | Error::NoHostArch { .. }
            | Error::Catalog { .. } => ErrorKind::InvalidInput,
            Error::Conflict(_) | Error::Exists { .. } | Error::NotADisk { .. } => ErrorKind::Conflict,
            Error::BuildFailed { kind, .. } => *kind,
            Error::Internal(_) => ErrorKind::Internal,
            Error::PartialsKept { source, .. } => source.kind(),
            Error::Io { source, .. } => of_io(source),
            Error::UnknownAlias { .. }
            | Error::NoArch { .. }
            | Error::NotFound { .. }
            | Error::UnknownImage { .. }
            | Error::NoStore { .. } => ErrorKind::NotFound,
            Error::DigestMismatch { .. } | Error::BundleMismatch { .. } | Error::PartMismatch { .. } => {
                ErrorKind::Refused
            }
            Error::InUse { .. } => ErrorKind::InUse,
            Error::Qcow2 { source, .. } => of_qcow2(source),
            Error::Record { .. } => ErrorKind::Internal,
            Error::Bundle { source, .. } => of_bundle(source),
            Error::Layer { source, .. } => of_layer(source),
            Error::Oci(e) => of_oci(e),
            Error::Fetch(e) => of_fetch(e),
            Error::Disk(e) => of_disk(e),
        }
    }
}

/// An I/O error's kind, from the kind the standard library gives its errno.
/// Data found malformed while read (`InvalidData`, an early end) is
/// refused input; a panicked blocking task (`Other`) is internal.
pub(crate) fn of_io(error: &io::Error) -> ErrorKind {
    use io::ErrorKind as Io;
    match error.kind() {
        Io::NotFound => ErrorKind::NotFound,
        Io::AlreadyExists | Io::DirectoryNotEmpty => ErrorKind::Conflict,
        Io::ResourceBusy | Io::ExecutableFileBusy => ErrorKind::InUse,
        Io::InvalidInput | Io::InvalidFilename | Io::IsADirectory | Io::NotADirectory => ErrorKind::InvalidInput,
        Io::InvalidData | Io::UnexpectedEof => ErrorKind::Refused,
        Io::TimedOut
        | Io::ConnectionRefused
        | Io::ConnectionReset
        | Io::ConnectionAborted
        | Io::NotConnected
        | Io::HostUnreachable
        | Io::NetworkUnreachable
        | Io::NetworkDown
        | Io::AddrNotAvailable
        | Io::BrokenPipe
        | Io::StaleNetworkFileHandle
        | Io::WouldBlock
        | Io::Interrupted => ErrorKind::Unavailable,
        Io::PermissionDenied | Io::ReadOnlyFilesystem => ErrorKind::Denied,
        Io::StorageFull | Io::QuotaExceeded | Io::FileTooLarge => ErrorKind::OutOfSpace,
        // io::ErrorKind is not exhaustive: what is left is a bug or the host's trouble.
        _ => ErrorKind::Internal,
    }
}

/// The kind of an HTTP status that failed a request: 404 and 410 are
/// missing, 401 and 403 denied, 408, 429 and 5xx passing trouble, any
/// other 4xx a bad request; anything else is no answer a request of ours
/// asks for, the server's trouble.
fn of_status(status: u16) -> ErrorKind {
    match status {
        404 | 410 => ErrorKind::NotFound,
        401 | 403 => ErrorKind::Denied,
        408 | 429 | 500..=599 => ErrorKind::Unavailable,
        400..=499 => ErrorKind::InvalidInput,
        _ => ErrorKind::Unavailable,
    }
}

pub(crate) fn of_fetch(error: &FetchError) -> ErrorKind {
    match error {
        FetchError::Io { source, .. } => of_io(source),
        FetchError::Url { .. } => ErrorKind::InvalidInput,
        FetchError::Status { status, .. } => of_status(*status),
        FetchError::Transfer { .. } | FetchError::TooSlow { .. } | FetchError::Unresolved { .. } => {
            ErrorKind::Unavailable
        }
        FetchError::TooLarge { .. } => ErrorKind::Refused,
        // A certificate that does not verify, or one the server wanted.
        FetchError::Tls { .. } => ErrorKind::Denied,
        FetchError::GaveUp { last, .. } => of_fetch(last),
    }
}

pub(crate) fn of_oci(error: &OciError) -> ErrorKind {
    match error {
        OciError::Http { .. } | OciError::Unresolved { .. } => ErrorKind::Unavailable,
        OciError::Status { status, .. } => of_status(*status),
        OciError::Unauthorized { .. } | OciError::Tls { .. } => ErrorKind::Denied,
        OciError::NotFound { .. } => ErrorKind::NotFound,
        OciError::TooLarge { .. }
        | OciError::ManifestDigest { .. }
        | OciError::BlobSize { .. }
        | OciError::BlobDigest { .. } => ErrorKind::Refused,
        // Docker's config.json does not parse.
        OciError::Config(_) => ErrorKind::InvalidInput,
        OciError::Helper(e) => of_helper(e),
        OciError::IdentityTokenForBasic { .. } => ErrorKind::Denied,
        OciError::Artifact(e) => of_artifact(e),
        // Holds only the text of the I/O error it was.
        OciError::Output(_) => ErrorKind::Internal,
        OciError::Fetch(e) => of_fetch(e),
        OciError::Io { source, .. } => of_io(source),
        OciError::InvalidInput { .. } => ErrorKind::InvalidInput,
        OciError::Layout(e) => of_layout(e),
        // A hosts file that does not read, or that leaves no host to ask.
        OciError::Hosts(_) | OciError::NoHost { .. } => ErrorKind::InvalidInput,
        OciError::HostFailed { source, .. } => of_oci(source),
        // Unsigned, or signed by another key or for another image.
        OciError::Unsigned { .. } => ErrorKind::Refused,
        OciError::Sign(e) => of_sign(e),
    }
}

/// A key that does not read is the caller's to fix; a payload that is not
/// cosign's is refused.
fn of_sign(error: &vmimg_oci::sign::SignError) -> ErrorKind {
    use vmimg_oci::sign::SignError as S;
    match error {
        S::Read { source, .. } => of_io(source),
        S::Key { .. } => ErrorKind::InvalidInput,
        S::Payload(_) => ErrorKind::Refused,
    }
}

/// A helper name that is no plain name is the config's to fix; a helper
/// not on PATH is missing; a helper that failed gave no credentials.
fn of_helper(error: &vmimg_oci::HelperError) -> ErrorKind {
    use vmimg_oci::HelperError as H;
    match error {
        H::BadName { .. } => ErrorKind::InvalidInput,
        H::Missing { .. } => ErrorKind::NotFound,
        H::Failed { .. } => ErrorKind::Denied,
    }
}

/// A layout reference that does not parse or picks no one image is the
/// caller's to fix; a name it lacks is not found; a layout that breaks the
/// format is refused.
fn of_layout(error: &vmimg_oci::LayoutError) -> ErrorKind {
    use vmimg_oci::LayoutError as L;
    match error {
        L::Reference { .. } | L::NoTag { .. } => ErrorKind::InvalidInput,
        L::UnknownTag { .. } => ErrorKind::NotFound,
        L::NotLayout { .. }
        | L::DuplicateTag { .. }
        | L::MissingBlob { .. }
        | L::NotAFile { .. }
        | L::Archive { .. } => ErrorKind::Refused,
    }
}

/// A manifest that is no image vmimg takes is refused; an index without
/// the host's platform has no such image.
fn of_artifact(error: &ArtifactError) -> ErrorKind {
    match error {
        ArtifactError::Json(_)
        | ArtifactError::ContainerImage(_)
        | ArtifactError::NotCloudImage { .. }
        | ArtifactError::NoDisk(_)
        | ArtifactError::MixedFormats(_)
        | ArtifactError::TooManyLayers(_)
        | ArtifactError::NotContainerImage { .. }
        | ArtifactError::UnknownLayer { .. }
        | ArtifactError::TooLarge(_) => ErrorKind::Refused,
        ArtifactError::NoPlatform { .. } => ErrorKind::NotFound,
    }
}

pub(crate) fn of_disk(error: &vmimg_disk::Error) -> ErrorKind {
    use vmimg_disk::Error as D;
    match error {
        D::Qcow2 { source, .. } => of_qcow2(source),
        D::Io { source, .. } => of_io(source),
        // What the input is, or what it starts with.
        D::Unsupported { .. } | D::HeaderInRaw { .. } | D::HeaderInDisk { .. } | D::CopyOfQcow2 { .. } => {
            ErrorKind::Refused
        }
        // The backing files it names.
        D::BackingLoop { .. } | D::ChainTooDeep { .. } | D::ChainToQcow2 { .. } => ErrorKind::Refused,
        D::UnknownFormat(_) | D::Shrink { .. } | D::SameFile { .. } | D::InvalidSize { .. } => ErrorKind::InvalidInput,
        // Where the output was to go.
        D::DestinationIsDirectory { .. } | D::DestinationNotAFile { .. } | D::DestinationDirNotADir { .. } => {
            ErrorKind::InvalidInput
        }
        D::DestinationDirMissing { .. } => ErrorKind::NotFound,
    }
}

pub(crate) fn of_qcow2(error: &vmimg_qcow2::Error) -> ErrorKind {
    use vmimg_qcow2::Error as Qcow2;
    match error {
        Qcow2::Io { source, .. } | Qcow2::Write { source, .. } => of_io(source),
        Qcow2::NotQcow2
        | Qcow2::UnsupportedVersion(_)
        | Qcow2::Invalid(_)
        | Qcow2::Unsupported(_)
        | Qcow2::BackingFileRefused { .. }
        | Qcow2::DataFileRefused { .. }
        | Qcow2::Encrypted(_)
        | Qcow2::Decompress { .. } => ErrorKind::Refused,
        // Options out of range: cluster size, level, virtual size.
        Qcow2::Create(_) => ErrorKind::InvalidInput,
    }
}

pub(crate) fn of_bundle(error: &BundleError) -> ErrorKind {
    match error {
        BundleError::Refused(_)
        | BundleError::NotABundle { .. }
        | BundleError::OverLimit { .. }
        | BundleError::UncheckedFrame(_) => ErrorKind::Refused,
        BundleError::Layer(e) => of_qcow2(e),
        BundleError::Machine(e) => of_machine(e),
        BundleError::Io { source, .. } => of_io(source),
        BundleError::Read(e) | BundleError::Write(e) | BundleError::Disk(e) => of_io(e),
    }
}

/// A machine.json that does not validate is invalid input.
pub(crate) fn of_machine(error: &MachineError) -> ErrorKind {
    use MachineError as M;
    match error {
        M::Io(e) => of_io(e),
        M::Migrating { source, .. } => of_machine(source),
        // Not one JSON object of a readable size and version.
        M::TooLarge { .. } | M::Json(_) | M::NotAnObject { .. } | M::UnsupportedVersion { .. } => {
            ErrorKind::InvalidInput
        }
        // Fields the schema does not know, or lacks.
        M::UnknownField { .. } | M::MissingField { .. } => ErrorKind::InvalidInput,
        // Values the schema does not allow.
        M::WrongType { .. } | M::OutOfRange { .. } | M::NotAllowed { .. } | M::FlagNotAllowed { .. } => {
            ErrorKind::InvalidInput
        }
        M::BadUuid { .. } | M::BadMac { .. } => ErrorKind::InvalidInput,
    }
}

/// A container image layer's hostile entries, and layers over a limit, are
/// refused.
pub(crate) fn of_layer(error: &ApplyError) -> ErrorKind {
    match error {
        ApplyError::Refused { .. } | ApplyError::TooDeep(_) | ApplyError::Limit(_) => ErrorKind::Refused,
        ApplyError::Io { source, .. } => of_io(source),
        ApplyError::Tar(e) => of_io(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ErrorKind::*;
    use std::path::PathBuf;
    use vmimg_fetch::Digest;
    use vmimg_oci::HelperError;

    /// Each error in `cases` has the kind beside it.
    fn check<E: fmt::Display>(of: impl Fn(&E) -> ErrorKind, cases: Vec<(E, ErrorKind)>) {
        for (error, kind) in cases {
            assert_eq!(of(&error), kind, "{error}");
        }
    }

    fn os(errno: i32) -> io::Error {
        io::Error::from_raw_os_error(errno)
    }

    fn path() -> PathBuf {
        PathBuf::from("/x")
    }

    fn digest(byte: char) -> Digest {
        format!("sha256:{}", byte.to_string().repeat(64)).parse().unwrap()
    }

    #[test]
    fn kinds_have_their_serialized_names() {
        for kind in ErrorKind::ALL {
            assert_eq!(serde_json::to_value(kind).unwrap(), kind.as_str());
            assert_eq!(kind.to_string(), kind.as_str());
        }
    }

    #[test]
    fn io_errors_by_errno() {
        // Linux's numbers: ENOSPC, EDQUOT, EFBIG, EACCES, EPERM, EROFS, ENOENT,
        // EEXIST, ENOTEMPTY, EBUSY, ETIMEDOUT, ECONNREFUSED, ECONNRESET,
        // EHOSTUNREACH, EPIPE, EINVAL, EISDIR, EIO.
        let cases = [
            (28, OutOfSpace),
            (122, OutOfSpace),
            (27, OutOfSpace),
            (13, Denied),
            (1, Denied),
            (30, Denied),
            (2, NotFound),
            (17, Conflict),
            (39, Conflict),
            (16, InUse),
            (110, Unavailable),
            (111, Unavailable),
            (104, Unavailable),
            (113, Unavailable),
            (32, Unavailable),
            (22, InvalidInput),
            (21, InvalidInput),
            (5, Internal),
        ];
        check(of_io, cases.into_iter().map(|(errno, kind)| (os(errno), kind)).collect());
        let made = [
            (io::ErrorKind::InvalidData, Refused),
            (io::ErrorKind::UnexpectedEof, Refused),
            (io::ErrorKind::Other, Internal),
        ];
        check(of_io, made.into_iter().map(|(k, kind)| (io::Error::new(k, "made"), kind)).collect());
    }

    #[test]
    fn fetch_errors() {
        let url = || "https://h/x".to_owned();
        let status = |status| FetchError::Status { url: url(), status, retry_after: None };
        let too_slow = || FetchError::TooSlow { url: url(), speed: 1, window: Default::default(), min_speed: 2 };
        check(
            of_fetch,
            vec![
                (FetchError::Io { action: "write", path: path(), source: os(28) }, OutOfSpace),
                (FetchError::Url { url: url(), reason: "no".into() }, InvalidInput),
                (status(404), NotFound),
                (status(410), NotFound),
                (status(401), Denied),
                (status(403), Denied),
                (status(408), Unavailable),
                (status(429), Unavailable),
                (status(500), Unavailable),
                (status(503), Unavailable),
                (status(400), InvalidInput),
                (status(416), InvalidInput),
                (status(304), Unavailable),
                (FetchError::Transfer { url: url(), message: "reset".into() }, Unavailable),
                (FetchError::Unresolved { url: url(), host: "h".into(), reason: "no".into() }, Unavailable),
                (FetchError::TooLarge { url: url(), limit: 1 }, Refused),
                (too_slow(), Unavailable),
                (FetchError::GaveUp { attempts: 8, last: Box::new(status(502)) }, Unavailable),
                (FetchError::GaveUp { attempts: 1, last: Box::new(status(404)) }, NotFound),
            ],
        );
    }

    #[test]
    fn oci_errors() {
        let (url, reference) = (|| "https://r/v2/x".to_owned(), || "r/x:1".to_owned());
        let status = |status| OciError::Status { url: url(), status, detail: None };
        let artifact = |e: ArtifactError| OciError::Artifact(e);
        check(
            of_oci,
            vec![
                (OciError::Http { url: url(), message: "reset".into() }, Unavailable),
                (OciError::Unresolved { url: url(), host: "r".into(), reason: "no".into() }, Unavailable),
                (status(404), NotFound),
                (status(403), Denied),
                (status(429), Unavailable),
                (status(400), InvalidInput),
                (OciError::Unauthorized { registry: "r".into(), repository: "x".into() }, Denied),
                (OciError::NotFound { reference: reference() }, NotFound),
                (OciError::TooLarge { what: "manifest", url: url(), limit: 1 }, Refused),
                (
                    OciError::ManifestDigest { reference: reference(), expected: digest('a'), actual: digest('b') },
                    Refused,
                ),
                (OciError::Config("bad".into()), InvalidInput),
                (OciError::Helper(HelperError::BadName { name: "../x".into() }), InvalidInput),
                (OciError::Helper(HelperError::Missing { name: "x".into(), server: "r".into() }), NotFound),
                (
                    OciError::Helper(HelperError::Failed { name: "x".into(), server: "r".into(), problem: "?".into() }),
                    Denied,
                ),
                (OciError::IdentityTokenForBasic { registry: "r".into() }, Denied),
                (artifact(ArtifactError::Json("x".into())), Refused),
                (
                    artifact(ArtifactError::NoPlatform {
                        reference: reference(),
                        os: "l".into(),
                        architecture: "a".into(),
                    }),
                    NotFound,
                ),
                (OciError::BlobSize { digest: digest('a'), expected: 1, actual: 2 }, Refused),
                (OciError::BlobDigest { expected: digest('a'), actual: digest('b') }, Refused),
                (OciError::Output("broken pipe".into()), Internal),
                (OciError::Fetch(FetchError::Transfer { url: url(), message: "cut".into() }), Unavailable),
                (OciError::Io { path: path(), source: os(13) }, Denied),
            ],
        );
        let found = || "application/x".to_owned();
        check(
            of_artifact,
            vec![
                (ArtifactError::Json("x".into()), Refused),
                (ArtifactError::ContainerImage(reference()), Refused),
                (ArtifactError::NotCloudImage { reference: reference(), found: found() }, Refused),
                (ArtifactError::NoDisk(reference()), Refused),
                (ArtifactError::MixedFormats(reference()), Refused),
                (ArtifactError::TooManyLayers(reference()), Refused),
                (ArtifactError::NotContainerImage { reference: reference(), found: found() }, Refused),
                (ArtifactError::UnknownLayer { reference: reference(), media_type: found() }, Refused),
                (
                    ArtifactError::NoPlatform { reference: reference(), os: "l".into(), architecture: "a".into() },
                    NotFound,
                ),
            ],
        );
    }

    #[test]
    fn disk_errors() {
        use vmimg_disk::{Content, Error as Disk, Foreign};
        let header = |found| (path(), found, String::new());
        let (p, q, detail) = header(Content::Qcow2);
        let (p2, q2, detail2) = header(Content::Foreign(Foreign::Vmdk));
        check(
            of_disk,
            vec![
                (Disk::Qcow2 { path: path(), source: vmimg_qcow2::Error::NotQcow2 }, Refused),
                (Disk::Io { what: "write", path: path(), source: os(122) }, OutOfSpace),
                (Disk::Unsupported { path: path(), content: Content::Foreign(Foreign::Vdi) }, Refused),
                (Disk::HeaderInRaw { path: p, found: q, detail }, Refused),
                (Disk::HeaderInDisk { path: p2, found: q2, detail: detail2 }, Refused),
                (Disk::UnknownFormat("vdi".into()), InvalidInput),
                (Disk::CopyOfQcow2 { path: path() }, Refused),
                (Disk::Shrink { path: path(), size: 2, requested: 1 }, InvalidInput),
                (Disk::SameFile { verb: "copying", src: path(), dst: path() }, InvalidInput),
                (Disk::DestinationIsDirectory { path: path(), example: None }, InvalidInput),
                (Disk::DestinationNotAFile { path: path(), what: "a FIFO" }, InvalidInput),
                (Disk::DestinationDirNotADir { path: path(), dir: path() }, InvalidInput),
                (Disk::DestinationDirMissing { path: path(), dir: path() }, NotFound),
                (Disk::InvalidSize { input: "1X".into(), problem: "unit" }, InvalidInput),
                (Disk::BackingLoop { path: path(), backing: path() }, Refused),
                (Disk::ChainTooDeep { path: path(), max: 16 }, Refused),
                (Disk::ChainToQcow2 { path: path() }, Refused),
            ],
        );
    }

    #[test]
    fn qcow2_errors() {
        use vmimg_qcow2::Error as Qcow2;
        check(
            of_qcow2,
            vec![
                (Qcow2::Io { what: "the header", source: os(5) }, Internal),
                (Qcow2::NotQcow2, Refused),
                (Qcow2::UnsupportedVersion(4), Refused),
                (Qcow2::Invalid("l1".into()), Refused),
                (Qcow2::Unsupported("extended l2".into()), Refused),
                (Qcow2::BackingFileRefused { path: "/etc/shadow".into() }, Refused),
                (Qcow2::DataFileRefused { path: "/dev/sda".into() }, Refused),
                (Qcow2::Encrypted("aes"), Refused),
                (Qcow2::Decompress { host_offset: 0, reason: "zlib".into() }, Refused),
                (Qcow2::Create("cluster_bits is 30".into()), InvalidInput),
                (Qcow2::Write { what: "a cluster", source: os(28) }, OutOfSpace),
            ],
        );
    }

    #[test]
    fn bundle_and_machine_errors() {
        use vmimg_bundle::bundle::UncheckedFrame;
        use vmimg_bundle::machine::MacError;
        check(
            of_bundle,
            vec![
                (BundleError::Refused("a link".into()), Refused),
                (BundleError::NotABundle { problem: "text".into() }, Refused),
                (BundleError::OverLimit { what: "disk.img".into(), size: 2, limit: 1 }, Refused),
                (BundleError::UncheckedFrame(UncheckedFrame { frame: 1 }), Refused),
                (BundleError::Layer(vmimg_qcow2::Error::BackingFileRefused { path: "x".into() }), Refused),
                (BundleError::Machine(MachineError::MissingField { field: "uuid" }), InvalidInput),
                (BundleError::Io { action: "create", path: path(), source: os(13) }, Denied),
                (BundleError::Read(io::Error::new(io::ErrorKind::InvalidData, "not zstd")), Refused),
                (BundleError::Write(os(28)), OutOfSpace),
                (BundleError::Disk(os(2)), NotFound),
            ],
        );
        let json = serde_json::from_str::<serde_json::Value>("{").unwrap_err();
        let value = || "x".to_owned();
        let missing = || Box::new(MachineError::MissingField { field: "uuid" });
        check(
            of_machine,
            vec![
                (MachineError::TooLarge { limit: 1 }, InvalidInput),
                (MachineError::Io(os(13)), Denied),
                (MachineError::Json(json), InvalidInput),
                (MachineError::NotAnObject { found: value() }, InvalidInput),
                (MachineError::UnsupportedVersion { found: value() }, InvalidInput),
                (MachineError::UnknownField { field: value() }, InvalidInput),
                (MachineError::MissingField { field: "uuid" }, InvalidInput),
                (MachineError::WrongType { field: "memory", found: value(), expected: "a number" }, InvalidInput),
                (MachineError::OutOfRange { field: "memory", value: value(), min: 1, max: 2 }, InvalidInput),
                (MachineError::NotAllowed { field: "chipset", value: value(), allowed: &["pc"] }, InvalidInput),
                (MachineError::FlagNotAllowed { value: value() }, InvalidInput),
                (MachineError::BadUuid { value: value() }, InvalidInput),
                (MachineError::BadMac { value: value(), problem: MacError::Multicast }, InvalidInput),
                (MachineError::Migrating { from: 0, source: missing() }, InvalidInput),
                (MachineError::Migrating { from: 0, source: Box::new(MachineError::Io(os(5))) }, Internal),
            ],
        );
    }

    #[test]
    fn layer_errors() {
        let entry = || "etc/x".to_owned();
        let deep = vmimg_rootfs::depth::TooDeep { path: entry(), depth: 5000 };
        check(
            of_layer,
            vec![
                (ApplyError::Refused { path: entry(), reason: "escapes the root".into() }, Refused),
                (ApplyError::Io { path: entry(), source: os(28) }, OutOfSpace),
                (ApplyError::TooDeep(deep), Refused),
                (ApplyError::Tar(io::Error::new(io::ErrorKind::InvalidData, "bad header")), Refused),
                (ApplyError::Limit("too many entries".into()), Refused),
            ],
        );
    }

    #[test]
    fn store_errors() {
        let text = || "x".to_owned();
        let fetch = FetchError::Status { url: text(), status: 404, retry_after: None };
        let layer = ApplyError::Refused { path: text(), reason: text() };
        check(
            Error::kind,
            vec![
                (Error::Invalid(text()), InvalidInput),
                (Error::InvalidName { what: "image", name: text() }, InvalidInput),
                (Error::Config { path: path(), message: text() }, InvalidInput),
                (Error::NoHostArch { host: "riscv64" }, InvalidInput),
                (Error::Conflict(text()), Conflict),
                (Error::Exists { what: "image", name: text() }, Conflict),
                (Error::NotADisk { image: text(), format: text() }, Conflict),
                (Error::BuildFailed { reference: text(), message: text(), kind: Refused }, Refused),
                (Error::Internal(text()), Internal),
                (Error::Io { action: "create", path: path(), source: os(28) }, OutOfSpace),
                (Error::Catalog { origin: text(), message: text() }, InvalidInput),
                (Error::UnknownAlias { alias: text(), suggestion: Default::default() }, NotFound),
                (Error::UnknownImage { name: text(), suggestion: Default::default() }, NotFound),
                (Error::NoStore { root: "/x".into() }, NotFound),
                (Error::NoArch { alias: text(), arch: text(), available: text() }, NotFound),
                (Error::DigestMismatch { source_name: text(), expected: digest('a'), actual: digest('b') }, Refused),
                (Error::InUse { image: text(), instances: text() }, InUse),
                (Error::NotFound { what: "image", name: text() }, NotFound),
                (Error::Qcow2 { path: path(), source: vmimg_qcow2::Error::NotQcow2 }, Refused),
                (Error::Record { path: path(), message: text() }, Internal),
                (Error::Bundle { path: path(), source: BundleError::Write(os(122)) }, OutOfSpace),
                (Error::BundleMismatch { path: path(), expected: digest('a'), actual: digest('b') }, Refused),
                (Error::PartMismatch { expected: digest('a'), size: 1, actual: digest('b'), actual_size: 2 }, Refused),
                (Error::Layer { path: path(), source: layer }, Refused),
                (Error::Oci(OciError::Unauthorized { registry: text(), repository: text() }), Denied),
                (Error::Fetch(fetch), NotFound),
                (Error::Disk(vmimg_disk::Error::UnknownFormat(text())), InvalidInput),
            ],
        );
    }

    #[tokio::test]
    async fn a_panicked_blocking_task_is_an_internal_error() {
        let error = crate::fsutil::blocking("the test", || -> crate::Result<()> { panic!("boom") }).await.unwrap_err();
        assert_eq!(error.kind(), Internal);
        assert!(error.to_string().contains("the test did not complete: "), "{error}");
    }
}
