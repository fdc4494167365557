//! Content: blobs and layers by digest (`blobs/<algorithm>/<hex>`,
//! `layers/<algorithm>/<hex>`), immutable once in.
//!
//! Content is written as a partial under `tmp/` (by a download, resumable
//! by its name, or a copy), verified against the digest and size it must
//! have, and only then committed: renamed into place and flushed. Nothing
//! else writes under `blobs/` or `layers/`, so what is there is always
//! whole and verified. gc deletes what no image record names, while no
//! pull or build holds the store's lease.

use crate::error::{Error, Result};
use crate::fsutil::blocking;
use crate::store::Store;
use std::path::{Path, PathBuf};
use vmimg_fetch::{Digest, remove_partial};
use vmimg_oci::artifact::Descriptor;

impl Store {
    /// Where blob `digest` is.
    pub(crate) fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root().join(by_digest("blobs", digest))
    }

    /// Moves a verified partial into `blobs/` and returns its store-relative path.
    pub(crate) async fn keep_blob(&self, partial: &Path, digest: &Digest) -> Result<String> {
        let (root, partial, digest) = (self.root().to_owned(), partial.to_owned(), digest.clone());
        blocking("keeping a blob", move || commit(&root, &partial, "blobs", &digest)).await
    }

    /// [`keep_verified_in`] this store. It blocks (renames, fsyncs): an
    /// async caller runs it through `fsutil::blocking`.
    pub(crate) fn keep_verified(&self, partial: &Path, kind: &str, digest: &Digest) -> Result<String> {
        commit(self.root(), partial, kind, digest)
    }
}

/// Where content of `kind` (`blobs`, `layers`) with `digest` lives, relative to the store root.
pub(crate) fn by_digest(kind: &str, digest: &Digest) -> String {
    format!("{kind}/{}/{}", digest.algorithm().name(), digest.hex())
}

/// Commits a verified partial under `root`: moves it to `<kind>/<algorithm>/<hex>`
/// (`blobs`, or `layers`), durably, and returns that store-relative path.
pub(crate) fn commit(root: &Path, partial: &Path, kind: &str, digest: &Digest) -> Result<String> {
    let relative = by_digest(kind, digest);
    let blob = root.join(&relative);
    let dir = blob.parent().expect("<kind>/<algorithm>");
    std::fs::create_dir_all(dir).map_err(Error::io("create", dir))?;
    std::fs::rename(partial, &blob).map_err(Error::io("rename into", &blob))?;
    crate::fsutil::sync_dir(dir)?;
    remove_partial(partial).map_err(Error::io("remove", partial))?;
    Ok(relative)
}

/// Removes partial downloads (and their sidecars), on a blocking thread.
pub(crate) async fn remove_partials(partials: Vec<PathBuf>) -> Result<()> {
    blocking("removing partial downloads", move || {
        partials.iter().try_for_each(|partial| remove_partial(partial).map_err(Error::io("remove", partial)))
    })
    .await
}

/// Fails unless a downloaded blob has the size and digest its descriptor says.
pub(crate) fn check_blob(descriptor: &Descriptor, digest: &Digest, size: u64) -> Result<()> {
    if size != descriptor.size || *digest != descriptor.digest {
        return Err(Error::PartMismatch {
            expected: descriptor.digest.clone(),
            size: descriptor.size,
            actual: digest.clone(),
            actual_size: size,
        });
    }
    Ok(())
}
