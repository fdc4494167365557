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
use serde::{Deserialize, Serialize};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use vmimg_fetch::{Algorithm, Digest, Hasher};

/// Where an image comes from, as recorded in its image record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum SourceInfo {
    Alias {
        alias: String,
        snapshot: String,
        arch: Arch,
        url: String,
    },
    Url {
        url: String,
    },
    File {
        path: PathBuf,
    },
    /// Imported from an `image.tar.zst` bundle.
    Bundle {
        path: PathBuf,
    },
    /// Made blank by `image new`.
    Blank,
    /// A cloud image from an OCI registry: the reference asked for, and the
    /// digest of the manifest it named then.
    Oci {
        reference: String,
        digest: Digest,
    },
}

/// The key of an image the user made and named (a bundle import, a blank
/// image): `local-<name>`. Keys vmimg derives from sources never start so
/// (aliases may not), so no name can stand in for a pinned source.
pub(crate) fn local_key(name: &str) -> String {
    format!("{LOCAL_PREFIX}{name}")
}

/// What starts the key of every image the user named.
pub(crate) const LOCAL_PREFIX: &str = "local-";

impl SourceInfo {
    /// Whether the image can be made again from its source, so that `gc`
    /// may evict it: what the user made (a bundle import, a blank image) or
    /// a local file since gone cannot.
    pub fn can_pull_again(&self) -> bool {
        match self {
            SourceInfo::Alias { .. } | SourceInfo::Url { .. } | SourceInfo::Oci { .. } => true,
            SourceInfo::File { path } => path.is_file(),
            SourceInfo::Bundle { .. } | SourceInfo::Blank => false,
        }
    }
}

/// Where the bytes are.
#[derive(Debug, Clone, PartialEq)]
pub enum Location {
    Url(String),
    File(PathBuf),
    /// A registry reference pinned to its manifest's digest.
    Oci(vmimg_oci::Pinned),
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
            Location::Oci(reference) => format!("oci://{reference}"),
        }
    }
}

/// What to resolve against.
pub struct Resolver<'a> {
    pub catalog: &'a Catalog,
    pub mirrors: &'a Mirrors,
    pub arch: Arch,
}

impl Resolver<'_> {
    /// `http(s)://…` is a URL; anything with a slash, or naming an existing
    /// file and no alias, is a file; otherwise an alias.
    pub fn resolve(&self, source: &str, digest: Option<Digest>) -> Result<Resolved> {
        if source.starts_with("http://") || source.starts_with("https://") {
            crate::catalog::check_url(source).map_err(Error::Usage)?;
            return Ok(self.url(source, digest));
        }
        if let Some(entry) = self.catalog.get(source).filter(|_| !source.contains('/')) {
            if digest.is_some() {
                return Err(Error::Usage(format!("{source} is a catalog alias: its digest comes from the catalog")));
            }
            return self.alias(source, entry);
        }
        let path = Path::new(source);
        if source.contains('/') || path.exists() {
            return file(path, digest);
        }
        Err(Error::UnknownAlias { alias: source.to_owned() })
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
        Resolved { key, info: SourceInfo::Url { url: url.clone() }, location: Location::Url(url), expected: digest }
    }
}

fn file(path: &Path, digest: Option<Digest>) -> Result<Resolved> {
    let path = std::fs::canonicalize(path).map_err(Error::io("cannot open", path))?;
    let meta = std::fs::metadata(&path).map_err(Error::io("cannot stat", &path))?;
    if !meta.is_file() {
        return Err(Error::Usage(format!("{} is not a regular file", path.display())));
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
fn short_hash(bytes: &[u8]) -> String {
    let mut hasher = Hasher::new(Algorithm::Sha256);
    hasher.update(bytes);
    hasher.finish().hex()[..32].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolver(catalog: &Catalog) -> Resolver<'_> {
        static NO_MIRRORS: std::sync::LazyLock<Mirrors> = std::sync::LazyLock::new(Mirrors::default);
        Resolver { catalog, mirrors: &NO_MIRRORS, arch: Arch::Arm64 }
    }

    #[test]
    fn alias_keys_carry_snapshot_and_arch() {
        let catalog = Catalog::embedded();
        let r = resolver(&catalog).resolve("debian-12", None).unwrap();
        let snapshot = &catalog.get("debian-12").unwrap().snapshot;
        assert_eq!(r.key, format!("debian-12_{snapshot}_arm64"));
        assert!(r.expected.is_some());
        assert!(matches!(r.location, Location::Url(ref u) if u.contains("arm64")));
    }

    #[test]
    fn urls_files_and_unknown_names() {
        let catalog = Catalog::embedded();
        let r = resolver(&catalog);
        let a = r.resolve("http://127.0.0.1/a.qcow2", None).unwrap();
        assert!(a.key.starts_with("url-") && a.expected.is_none());
        let d: Digest = format!("sha256:{}", "ab".repeat(32)).parse().unwrap();
        assert_eq!(r.resolve("http://127.0.0.1/a.qcow2", Some(d)).unwrap().key, format!("sha256-{}", "ab".repeat(16)));
        assert!(matches!(r.resolve("no-such-alias", None), Err(Error::UnknownAlias { .. })));
        assert!(matches!(r.resolve("./no-such-file", None), Err(Error::Io { .. })));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.img");
        std::fs::write(&path, b"x").unwrap();
        let f = r.resolve(path.to_str().unwrap(), None).unwrap();
        std::fs::write(&path, b"xy").unwrap();
        assert_ne!(f.key, r.resolve(path.to_str().unwrap(), None).unwrap().key, "an edited file is a miss");
    }
}
