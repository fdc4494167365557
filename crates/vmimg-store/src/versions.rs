//! Versions of one source: a local file edited or touched since it was
//! pulled, a URL whose server now serves another file.
//!
//! A file or URL given without a digest names whatever it holds when it
//! is read, so its images are versions of it. A file's key carries its
//! identity (path, size, modification time, inode), so pulling it again
//! after a change makes a new image. A URL's first image is keyed by the
//! URL alone and keeps the validators its server gave (ETag,
//! Last-Modified); a pull returns the newest version in the store, and
//! only `--refresh` asks the server, with a conditional request, whether it
//! still serves that version: if not, the version it serves is pulled
//! under a key of its own (`<url key>-<hash of its validators>`).
//!
//! Once a newer version is in, it replaces the older ones
//! ([`Store::retire_older_versions`]): their names move to it, and each is
//! removed unless a qcow2 instance still stands on it (it goes with `gc`
//! once nothing does). A source given with a digest is pinned to one
//! version and never replaced.

use crate::error::Result;
use crate::record::{ImageRecord, SourceInfo};
use crate::source::{Location, Resolved};
use crate::store::Store;
use vmimg_fetch::{Freshness, Progress, Validators};

impl Store {
    /// Points `resolved`, a URL given without a digest, at the version to
    /// get: the newest in the store; with `refresh`, that one only if its
    /// server still serves it, else the version it serves now. Other
    /// sources are left alone.
    pub(crate) async fn pick_version(
        &self,
        resolved: &mut Resolved,
        refresh: bool,
        progress: &dyn Progress,
    ) -> Result<()> {
        let Location::Url(url) = &resolved.location else { return Ok(()) };
        if resolved.expected.is_some() {
            return Ok(());
        }
        let Some(current) = self.newest_version(&resolved.info)? else { return Ok(()) };
        if refresh {
            let held = match &current.source {
                SourceInfo::Url { validators, .. } => validators.clone(),
                _ => Validators::default(),
            };
            if let Freshness::Changed(served) = self.fetcher()?.changed(url, &held, progress).await? {
                tracing::info!(%url, image = %current.name, "the server serves another version");
                resolved.key = version_key(&resolved.key, &served);
                return Ok(());
            }
        }
        resolved.key = current.name;
        Ok(())
    }

    /// The unverified images made from `source` (a file or URL), newest
    /// first.
    fn versions(&self, source: &SourceInfo) -> Result<Vec<ImageRecord>> {
        let mut versions: Vec<ImageRecord> =
            self.records()?.into_iter().filter(|r| !r.verified && same_source(&r.source, source)).collect();
        versions.sort_by(|a, b| b.created_at.cmp(&a.created_at).then_with(|| b.name.cmp(&a.name)));
        Ok(versions)
    }

    pub(crate) fn newest_version(&self, source: &SourceInfo) -> Result<Option<ImageRecord>> {
        Ok(self.versions(source)?.into_iter().next())
    }

    /// After `newest` was made from a file or URL without a digest: the
    /// older images of that source give it their names and are removed,
    /// unless a qcow2 instance stands on one. Returns the keys removed. A
    /// failure to remove one is logged: the pull that made `newest` stands.
    pub(crate) async fn retire_older_versions(&self, newest: &ImageRecord) -> Result<Vec<String>> {
        if newest.verified || !matches!(newest.source, SourceInfo::Url { .. } | SourceInfo::File { .. }) {
            return Ok(Vec::new());
        }
        let mut removed = Vec::new();
        for older in self.versions(&newest.source)?.into_iter().filter(|r| r.name != newest.name) {
            self.move_names(&older.name, &newest.name)?;
            match self.remove_image(&older.name, false).await {
                Ok(_) => removed.push(older.name),
                Err(error) => tracing::info!(image = %older.name, %error, "an older version is kept"),
            }
        }
        Ok(removed)
    }
}

/// Whether two records' sources are one file or one URL.
fn same_source(a: &SourceInfo, b: &SourceInfo) -> bool {
    match (a, b) {
        (SourceInfo::Url { url: a, .. }, SourceInfo::Url { url: b, .. }) => a == b,
        (SourceInfo::File { path: a }, SourceInfo::File { path: b }) => a == b,
        _ => false,
    }
}

/// The key of the version of a URL that `served` names: the URL's key and
/// a hash of the validators, or of the time when the server gives none.
fn version_key(url_key: &str, served: &Validators) -> String {
    let seed = match served.is_empty() {
        false => format!("{:?}\0{:?}", served.etag, served.last_modified),
        true => format!("{:?}", std::time::SystemTime::now()),
    };
    format!("{url_key}-{}", &crate::source::short_hash(seed.as_bytes())[..12])
}
