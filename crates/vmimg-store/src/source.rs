//! What the user asked for, resolved to where its bytes are, the digest they
//! must have, and the cache key of the image made from them.
//!
//! Cache keys are file names inside the store. An alias's key carries its
//! snapshot and architecture (`debian-12_20260923-2610_amd64`), so a
//! catalog bump is a miss, never a stale hit. A URL or file with a digest is
//! keyed by the digest; a literal URL without one by the URL; a local file
//! without one by its path, size, modification time and inode, so an edited
//! file is a miss.
//!
//! Images the user makes and names (a bundle import, a blank image) are
//! keyed `local-<name>` ([`local_key`]); no derived key starts so (a catalog
//! alias may not), so no name can stand in for a pinned source.

use crate::catalog::{Arch, Catalog, Mirrors};
use crate::error::{Error, Result};
use crate::record::SourceInfo;
use crate::store::Store;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use vmimg_fetch::{Algorithm, Digest, Hasher};
use vmimg_oci::{ImageSource, Layout, LayoutError, LayoutRef, Pinned, Reference};

/// A source as a user writes it.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// A catalog alias: `debian-12`.
    Alias(String),
    /// `http://…` or `https://…`.
    Url(String),
    /// A local file: a disk image, possibly in a compressed stream.
    File(PathBuf),
    /// `oci://REF` or `docker://REF`: a cloud image or a container image
    /// in a registry.
    Registry(Reference),
    /// `oci:DIR[:NAME]` or `oci-archive:FILE[:NAME]`: a cloud image or a
    /// container image in a local OCI layout (built here, never pushed).
    Layout(LayoutRef),
}

impl Source {
    /// Parses `text` against a catalog: `http(s)://` is a URL, `oci://`
    /// and `docker://` a registry reference; a catalog alias is an alias;
    /// anything with a slash, or naming an existing file, is a file.
    pub fn parse(text: &str, catalog: &Catalog) -> Result<Source> {
        if let Some(reference) = text.strip_prefix("oci://").or_else(|| text.strip_prefix("docker://")) {
            return registry_reference(reference).map(Source::Registry);
        }
        if let Some(layout) = layout_ref(text) {
            let missing = layout.as_ref().map_or(true, |layout| !layout.path().exists());
            if let Some(rest) = text.strip_prefix("oci:").filter(|rest| missing && looks_like_registry_image(rest)) {
                return Err(Error::Invalid(format!(
                    "{text} names no local layout; a registry image is written oci://{rest}"
                )));
            }
            return layout.map(Source::Layout);
        }
        if text.starts_with("http://") || text.starts_with("https://") {
            return Ok(Source::Url(text.to_owned()));
        }
        if !text.contains('/') && catalog.get(text).is_some() {
            return Ok(Source::Alias(text.to_owned()));
        }
        let path = Path::new(text);
        if path.exists() {
            return Ok(Source::File(path.to_owned()));
        }
        if looks_like_registry_image(text) {
            return Err(Error::Invalid(format!(
                "{text} is no file here; a registry image is written oci://{text} (or docker://{text})"
            )));
        }
        if text.contains('/') {
            return Ok(Source::File(path.to_owned()));
        }
        Err(Error::UnknownAlias { alias: text.to_owned(), suggestion: catalog.closest_alias(text) })
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Alias(alias) => f.write_str(alias),
            Source::Url(url) => f.write_str(url),
            Source::File(path) => write!(f, "{}", path.display()),
            Source::Registry(reference) => write!(f, "oci://{reference}"),
            Source::Layout(reference) => reference.fmt(f),
        }
    }
}

/// `oci:DIR[:NAME]` or `oci-archive:FILE[:NAME]` parsed; None for other text
/// (`oci://` is a registry's).
fn layout_ref(text: &str) -> Option<Result<LayoutRef>> {
    let is_layout = (text.starts_with("oci:") && !text.starts_with("oci://")) || text.starts_with("oci-archive:");
    is_layout.then(|| text.parse().map_err(|e: LayoutError| Error::Invalid(e.to_string())))
}

/// Whether `text` reads as `host[:port]/repository[:tag|@digest]`: its
/// first component a host name with a dot or a port, or `localhost`.
fn looks_like_registry_image(text: &str) -> bool {
    let Some((host, rest)) = text.split_once('/') else { return false };
    let is_host = host.contains(['.', ':']) && !host.starts_with('.') || host == "localhost";
    is_host && !rest.is_empty() && Reference::parse(text).is_ok()
}

/// A registry reference as written after `oci://`, refused when it names a
/// registry but no repository (`127.0.0.1:5000` would otherwise mean
/// `docker.io/library/127.0.0.1:5000`).
pub fn registry_reference(text: &str) -> Result<Reference> {
    let first = text.split(['/', '@']).next().unwrap_or_default();
    let looks_like_host = first.contains(['.', ':']) || first == "localhost";
    if looks_like_host && !text.contains('/') {
        return Err(Error::Invalid(format!(
            "{text:?} names a registry but no repository: write REGISTRY/REPOSITORY[:TAG|@DIGEST]"
        )));
    }
    Reference::parse(text).map_err(|e| Error::Invalid(e.to_string()))
}

/// The key of an image the user made and named (a bundle import, a blank
/// image): `local-<name>`. Keys vmimg derives from sources never start so
/// (aliases may not), so no name can stand in for a pinned source.
pub(crate) fn local_key(name: &str) -> String {
    format!("{LOCAL_PREFIX}{name}")
}

/// What starts the key of every image the user named.
pub(crate) const LOCAL_PREFIX: &str = "local-";

/// Where the bytes are.
#[derive(Debug, Clone)]
pub enum Location {
    Url(String),
    File(PathBuf),
    /// An OCI image, pinned to its manifest's digest.
    Oci(OciOrigin),
}

/// An OCI image as a build names it: a reference in a registry, or an
/// image in a local layout. Written as the reference (`registry/repo:tag`)
/// or as `oci:DIR[:NAME]` / `oci-archive:FILE[:NAME]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum OciRef {
    Registry(Reference),
    Layout(LayoutRef),
}

impl From<&Reference> for OciRef {
    fn from(reference: &Reference) -> OciRef {
        OciRef::Registry(reference.clone())
    }
}

impl From<OciRef> for Source {
    fn from(reference: OciRef) -> Source {
        match reference {
            OciRef::Registry(reference) => Source::Registry(reference),
            OciRef::Layout(layout) => Source::Layout(layout),
        }
    }
}

impl std::fmt::Display for OciRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OciRef::Registry(reference) => reference.fmt(f),
            OciRef::Layout(layout) => layout.fmt(f),
        }
    }
}

impl std::str::FromStr for OciRef {
    type Err = Error;
    fn from_str(text: &str) -> Result<OciRef> {
        if let Some(layout) = layout_ref(text) {
            return layout.map(OciRef::Layout);
        }
        Reference::parse(text).map(OciRef::Registry).map_err(|e| Error::Invalid(e.to_string()))
    }
}

/// Where an OCI image is: a registry reference pinned to its manifest's
/// digest, or the image a name picked in a local layout (with the digest of
/// its manifest then).
#[derive(Debug, Clone)]
pub enum OciOrigin {
    Registry(Pinned),
    Layout { layout: Layout, reference: LayoutRef, digest: Digest },
}

impl OciOrigin {
    /// The digest of the image's manifest.
    pub fn digest(&self) -> &Digest {
        match self {
            OciOrigin::Registry(pinned) => pinned.digest(),
            OciOrigin::Layout { digest, .. } => digest,
        }
    }

    /// The image as a build names it, pinned: a registry reference at its
    /// digest, or the layout and the name that picked it.
    pub(crate) fn pinned_ref(&self) -> OciRef {
        match self {
            OciOrigin::Registry(pinned) => OciRef::Registry(pinned.reference().clone()),
            OciOrigin::Layout { reference, .. } => OciRef::Layout(reference.clone()),
        }
    }

    /// What a record keeps of where the image came from.
    pub(crate) fn info(&self) -> SourceInfo {
        let digest = self.digest().clone();
        match self {
            OciOrigin::Registry(pinned) => SourceInfo::Oci { reference: pinned.reference().clone(), digest },
            OciOrigin::Layout { reference, .. } => SourceInfo::Layout { layout: reference.clone(), digest },
        }
    }

    /// The image's blobs and config, read through the store's registry
    /// client or from the layout.
    pub(crate) fn image_source<'a>(&self, store: &'a Store) -> Result<ImageSource<'a>> {
        Ok(match self {
            OciOrigin::Registry(pinned) => {
                ImageSource::Registry { registry: store.registry()?, reference: pinned.reference().clone() }
            }
            OciOrigin::Layout { layout, reference, .. } => {
                ImageSource::Layout { layout: layout.clone(), reference: reference.clone() }
            }
        })
    }
}

impl std::fmt::Display for OciOrigin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OciOrigin::Registry(pinned) => write!(f, "oci://{pinned}"),
            OciOrigin::Layout { reference, digest, .. } => write!(f, "{reference}@{digest}"),
        }
    }
}

/// A source ready to pull.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub key: String,
    pub info: SourceInfo,
    pub location: Location,
    /// None for a literal URL or file given without `--digest`: unverified.
    pub expected: Option<Digest>,
}

impl Resolved {
    /// How errors and messages name the source.
    pub fn display_name(&self) -> String {
        match &self.location {
            Location::Url(url) => url.clone(),
            Location::File(path) => path.display().to_string(),
            Location::Oci(origin) => origin.to_string(),
        }
    }
}

impl Store {
    /// What `source` (an alias, URL or file path) names, with the digest it
    /// must have; a registry reference is refused (its registry says what
    /// it is: see [`Store::get`]).
    pub fn resolve(&self, source: &str, digest: Option<Digest>) -> Result<Resolved> {
        self.resolver(self.arch()).resolve(&Source::parse(source, self.catalog())?, digest)
    }

    /// Resolves disk sources for `arch`.
    pub(crate) fn resolver(&self, arch: Arch) -> Resolver<'_> {
        Resolver { catalog: self.catalog(), mirrors: self.mirrors(), arch }
    }
}

/// What to resolve against.
pub struct Resolver<'a> {
    pub catalog: &'a Catalog,
    pub mirrors: &'a Mirrors,
    pub arch: Arch,
}

impl Resolver<'_> {
    /// Where a disk `source`'s bytes are, the digest they must have, and
    /// its key; a registry reference is the caller's to ask its registry.
    pub fn resolve(&self, source: &Source, digest: Option<Digest>) -> Result<Resolved> {
        match source {
            Source::Url(url) => {
                crate::catalog::check_url(url).map_err(Error::Invalid)?;
                Ok(self.url(url, digest))
            }
            Source::Alias(alias) => {
                if digest.is_some() {
                    return Err(Error::Invalid(format!(
                        "{alias} is a catalog alias: its digest comes from the catalog"
                    )));
                }
                let entry = self.catalog.get(alias).ok_or_else(|| Error::UnknownAlias {
                    alias: alias.clone(),
                    suggestion: self.catalog.closest_alias(alias),
                })?;
                self.alias(alias, entry)
            }
            Source::File(path) => file(path, digest),
            Source::Registry(_) | Source::Layout(_) => {
                Err(Error::Invalid(format!("{source} names an OCI image: its manifest says what it is")))
            }
        }
    }

    fn alias(&self, alias: &str, entry: &crate::catalog::Entry) -> Result<Resolved> {
        let artifact = entry.arch.get(&self.arch).ok_or_else(|| Error::NoArch {
            alias: alias.to_owned(),
            arch: self.arch.to_string(),
            available: entry.arch.keys().map(|a| a.name()).collect::<Vec<_>>().join(", "),
        })?;
        let url = self.mirrors.rewrite(&artifact.url);
        Ok(Resolved {
            key: format!("{alias}_{}_{}", entry.snapshot, self.arch),
            info: SourceInfo::Alias {
                alias: alias.to_owned(),
                snapshot: entry.snapshot.clone(),
                arch: self.arch,
                url: url.clone(),
            },
            location: Location::Url(url),
            expected: Some(artifact.digest.clone()),
        })
    }

    fn url(&self, url: &str, digest: Option<Digest>) -> Resolved {
        let url = self.mirrors.rewrite(url);
        let key = match &digest {
            Some(d) => digest_key(d),
            None => format!("url-{}", short_hash(url.as_bytes())),
        };
        let info = SourceInfo::Url { url: url.clone(), validators: Default::default() };
        Resolved { key, info, location: Location::Url(url), expected: digest }
    }
}

fn file(path: &Path, digest: Option<Digest>) -> Result<Resolved> {
    let path = std::fs::canonicalize(path).map_err(Error::io("open", path))?;
    let meta = std::fs::metadata(&path).map_err(Error::io("stat", &path))?;
    if !meta.is_file() {
        return Err(Error::Invalid(format!("{} is not a regular file", path.display())));
    }
    let key = match &digest {
        Some(d) => digest_key(d),
        None => {
            let identity =
                format!("{}\0{}\0{}\0{}\0{}", path.display(), meta.len(), meta.mtime(), meta.mtime_nsec(), meta.ino());
            format!("file-{}", short_hash(identity.as_bytes()))
        }
    };
    Ok(Resolved {
        key,
        info: SourceInfo::File { path: path.clone() },
        location: Location::File(path),
        expected: digest,
    })
}

fn digest_key(digest: &Digest) -> String {
    format!("{}-{}", digest.algorithm().name(), &digest.hex()[..32])
}

/// 128 bits of SHA-256, in hex: enough to name a cache entry.
pub(crate) fn short_hash(bytes: &[u8]) -> String {
    let mut hasher = Hasher::new(Algorithm::Sha256);
    hasher.update(bytes);
    hasher.finish().hex()[..32].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(catalog: &Catalog, text: &str, digest: Option<Digest>) -> Result<Resolved> {
        resolver(catalog).resolve(&Source::parse(text, catalog)?, digest)
    }

    fn resolver(catalog: &Catalog) -> Resolver<'_> {
        static NO_MIRRORS: std::sync::LazyLock<Mirrors> = std::sync::LazyLock::new(Mirrors::default);
        Resolver { catalog, mirrors: &NO_MIRRORS, arch: Arch::Arm64 }
    }

    #[test]
    fn alias_keys_carry_snapshot_and_arch() {
        let catalog = Catalog::embedded();
        let r = resolve(&catalog, "debian-12", None).unwrap();
        let snapshot = &catalog.get("debian-12").unwrap().snapshot;
        assert_eq!(r.key, format!("debian-12_{snapshot}_arm64"));
        assert!(r.expected.is_some());
        assert!(matches!(r.location, Location::Url(ref u) if u.contains("arm64")));
    }

    #[test]
    fn urls_files_and_unknown_names() {
        let catalog = Catalog::embedded();
        let a = resolve(&catalog, "http://127.0.0.1/a.qcow2", None).unwrap();
        assert!(a.key.starts_with("url-") && a.expected.is_none());
        let d: Digest = format!("sha256:{}", "ab".repeat(32)).parse().unwrap();
        assert_eq!(
            resolve(&catalog, "http://127.0.0.1/a.qcow2", Some(d)).unwrap().key,
            format!("sha256-{}", "ab".repeat(16))
        );
        assert!(matches!(resolve(&catalog, "no-such-alias", None), Err(Error::UnknownAlias { .. })));
        assert!(matches!(resolve(&catalog, "./no-such-file", None), Err(Error::Io { .. })));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.img");
        std::fs::write(&path, b"x").unwrap();
        let f = resolve(&catalog, path.to_str().unwrap(), None).unwrap();
        std::fs::write(&path, b"xy").unwrap();
        assert_ne!(f.key, resolve(&catalog, path.to_str().unwrap(), None).unwrap().key, "an edited file is a miss");
    }
}
