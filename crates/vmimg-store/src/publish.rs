//! Ingest and publish: every image and instance is made in a work
//! directory under `tmp/` (`<key>.work-*`), invisible, and made visible by
//! one rename into `images/` or `instances/`, flushed; removals go the
//! other way (one rename into `tmp/`, then deletion). A crash leaves the
//! old state or the new one; work directories a crash abandoned are
//! removed by the next holder of the key's lock, or by gc.

use crate::error::{Error, Result};
use crate::fsutil::blocking;
use crate::record::{ImageRecord, Pulled};
use crate::store::Store;
use std::path::{Path, PathBuf};

impl Store {
    /// Publishes the work directory as image `record.name` (see
    /// [`publish_dir`]) on a blocking thread.
    pub(crate) async fn publish_image(&self, work: tempfile::TempDir, record: ImageRecord) -> Result<Pulled> {
        let target = self.image_dir(&record.name);
        let record = blocking("publishing the image", move || publish_dir(work, &target, &record).map(|()| record));
        Ok(self.published(record.await?))
    }

    /// [`publish_dir`] into this store. It blocks (fsyncs): an async caller
    /// uses [`Store::publish_image`].
    pub(crate) fn publish_work(&self, work: tempfile::TempDir, record: ImageRecord) -> Result<Pulled> {
        publish_dir(work, &self.image_dir(&record.name), &record)?;
        Ok(self.published(record))
    }

    fn published(&self, record: ImageRecord) -> Pulled {
        Pulled { path: self.image_file(&record), record, cached: false, replaced: Vec::new(), names: Vec::new() }
    }
}

/// Writes the record into the work directory and renames it to `target`
/// (`images/<name>`), flushed: the image appears whole, in one step.
fn publish_dir(work: tempfile::TempDir, target: &Path, record: &ImageRecord) -> Result<()> {
    record.save(&work.path().join("image.json"))?;
    if !record.mutable {
        // A ready image never changes: its file is read-only (instances
        // are the writable copies), so a VM booted on it by mistake
        // cannot change the base under every instance.
        let file = work.path().join(record.file_name());
        let read_only = std::os::unix::fs::PermissionsExt::from_mode(0o444);
        std::fs::set_permissions(&file, read_only).map_err(Error::io("make read-only", &file))?;
    }
    let work = work.keep();
    std::fs::rename(&work, target).map_err(Error::io("rename into", target))?;
    crate::fsutil::sync_dir(target.parent().expect("images/"))
}

/// Removes a work directory (it may hold a whole disk) on a blocking thread.
pub(crate) async fn discard(work: tempfile::TempDir) {
    let _ = blocking("removing a work directory", move || {
        drop(work);
        Ok(())
    })
    .await;
}

/// Renames `dir` into `tmp/` (one atomic step: it is gone from view), then
/// deletes it there, on a blocking thread.
pub(crate) async fn remove_dir_atomically(dir: PathBuf, tmp: PathBuf) -> Result<()> {
    blocking("a removal", move || remove_dir_now(&dir, &tmp)).await
}

fn remove_dir_now(dir: &Path, tmp: &Path) -> Result<()> {
    let name = dir.file_name().expect("a named directory").to_string_lossy();
    let doomed = tempfile::Builder::new()
        .prefix(&format!("{name}.removing-"))
        .tempdir_in(tmp)
        .map_err(Error::io("create in", tmp))?;
    let target = doomed.path().join("x");
    std::fs::rename(dir, &target).map_err(Error::io("move", dir))?;
    crate::fsutil::sync_dir(dir.parent().expect("a parent"))?;
    drop(doomed);
    Ok(())
}
