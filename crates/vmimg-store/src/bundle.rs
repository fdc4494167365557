//! Bundles in and out of the store, and blank (mutable) images.
//!
//! - [`Store::import_bundle`] reads an `image.tar.zst` (hostile: see
//!   `vmimg_bundle::bundle`) to its end into a work directory under `tmp/`,
//!   hashing it on the way, and publishes it like a pull: one rename, after
//!   the disk, `machine.json` and the record were flushed. Its integrity is
//!   vouched for by the checksum of every zstd frame, or, when the caller
//!   gives the file's digest, by that digest (then frames without a
//!   checksum are let in); a mismatch keeps nothing. A crash leaves no
//!   image or a whole one; the next holder of the key removes the abandoned
//!   work.
//! - [`Store::export_bundle`] packs an image's disk and `machine.json` (a
//!   fresh one, with a random MAC, when the image has none) into a file that
//!   appears whole or not at all (`vmimg_disk::publish`), and hashes the
//!   file as it is written.
//! - [`Store::new_image`] makes a blank sparse raw disk with a
//!   `machine.json`: a mutable image, whose owner writes the disk in place
//!   (installing a system, say) before exporting it. A mutable image with
//!   instances can be neither exported nor removed.
//!
//! Reading, writing, hashing and flushing run on blocking threads.

use crate::catalog::is_name_safe;
use crate::error::{Error, Result};
use crate::fsutil::blocking;
use crate::publish::discard;
use crate::record::{ImageRecord, Pulled, SourceFormat, SourceInfo};
use crate::source::local_key;
use crate::store::Store;
use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use vmimg_bundle::bundle::{self, ExportOptions, Integrity, Limits};
use vmimg_bundle::machine::{Machine, MachineError};
use vmimg_fetch::{Algorithm, Digest, Hasher};

const MACHINE: &str = "machine.json";

/// A bundle [`Store::export_bundle`] wrote.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ExportedBundle {
    pub path: PathBuf,
    /// The file's SHA-256.
    pub digest: Digest,
    /// The file's size.
    pub size: u64,
    /// Bytes of disk data stored (holes excluded).
    pub data_bytes: u64,
}

impl Store {
    /// The image's `machine.json`, if it has one.
    pub fn machine(&self, key: &str) -> Result<Option<Machine>> {
        let path = self.image_dir(key).join(MACHINE);
        match Machine::load(&path) {
            Ok(machine) => Ok(Some(machine)),
            Err(MachineError::Io(e)) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(MachineError::Io(source)) => Err(Error::Io { action: "read", path, source }),
            Err(e) => Err(Error::Record { path, message: e.to_string() }),
        }
    }

    /// Imports the bundle at `file` as image `name` (default: the file's
    /// name without `.tar.zst`). With `expected`, the file must have that
    /// digest, and its frames need not carry checksums.
    pub async fn import_bundle(
        &self,
        file: &Path,
        name: Option<&str>,
        limits: Limits,
        expected: Option<Digest>,
    ) -> Result<Pulled> {
        let name = match name {
            Some(name) => name.to_owned(),
            None => default_name(file)?,
        };
        let (key, _lock) = self.lock_new_image(&name).await?;
        let work = self.work_dir(&key)?;
        let (source, dir, verified) = (file.to_owned(), work.path().to_owned(), expected.is_some());
        let digest = match blocking("the import", move || import_into(&source, &dir, &limits, expected)).await {
            Ok(digest) => digest,
            Err(error) => {
                discard(work).await;
                return Err(error);
            }
        };
        let path = std::path::absolute(file).unwrap_or_else(|_| file.to_owned());
        let mut record =
            ImageRecord::for_work(&key, &work, SourceInfo::Bundle { path }, Some(digest), SourceFormat::Bundle)?;
        record.verified = verified;
        self.publish_image(work, record).await
    }

    /// Makes a blank mutable image of `size` bytes named `name`.
    pub async fn new_image(&self, name: &str, size: u64, machine: Option<Machine>) -> Result<Pulled> {
        let (key, _lock) = self.lock_new_image(name).await?;
        let work = self.work_dir(&key)?;
        let (disk, json) = (work.path().join("disk.raw"), work.path().join(MACHINE));
        let machine = machine.unwrap_or_else(Machine::generate);
        blocking("making the disk", move || {
            let file = File::create(&disk).map_err(Error::io("create", &disk))?;
            file.set_len(size).and_then(|()| file.sync_all()).map_err(Error::io("size", &disk))?;
            crate::fsutil::write_atomic(&json, &machine.to_json())
        })
        .await?;
        let mut record = ImageRecord::for_work(&key, &work, SourceInfo::Blank, None, SourceFormat::Blank)?;
        record.mutable = true;
        self.publish_image(work, record).await
    }

    /// Packs image `key` into a bundle at `dst`.
    pub async fn export_bundle(&self, key: &str, dst: &Path, options: ExportOptions) -> Result<ExportedBundle> {
        vmimg_disk::check_destination(dst, Some(&format!("{key}.tar.zst")))?;
        let lock = self.lock(key).await?;
        let record = self.lookup(key)?.ok_or_else(|| Error::NotFound { what: "image", name: key.to_owned() })?;
        let instances = self.instances_of(key)?;
        if record.mutable && !instances.is_empty() {
            let names: Vec<_> = instances.iter().map(|i| i.record.name.as_str()).collect();
            return Err(Error::Conflict(format!(
                "image {key} is mutable and in use by instances ({}): remove them before exporting it",
                names.join(", ")
            )));
        }
        let machine = self.machine(key)?.unwrap_or_else(Machine::generate);
        let disk_path = self.raw_disk(&record)?;
        let disk = File::open(&disk_path).map_err(Error::io("open", &disk_path))?;
        // An immutable image never changes, and the open file outlives a
        // removal: only a mutable one stays locked while it is read.
        let held = record.mutable.then_some(lock);
        let dst = dst.to_owned();
        let exported = blocking("the export", move || {
            vmimg_disk::publish(&dst, true, |out| {
                let mut hashing = Hashing::new(out, Algorithm::Sha256);
                let exported =
                    bundle::export(&disk, &machine, BufWriter::with_capacity(1 << 20, &mut hashing), &options)
                        .map_err(|e| Error::Bundle { path: dst.clone(), source: e })?;
                Ok::<_, Error>(ExportedBundle {
                    path: dst.clone(),
                    digest: hashing.hasher.finish(),
                    size: hashing.len,
                    data_bytes: exported.data_bytes,
                })
            })
        })
        .await?;
        drop(held);
        self.touch(key);
        Ok(exported)
    }

    /// Holds the key of a new image named `name` (see [`local_key`]):
    /// refused when the name is unsafe or taken.
    async fn lock_new_image(&self, name: &str) -> Result<(String, crate::locks::KeyLock)> {
        if !is_name_safe(name) {
            return Err(Error::InvalidName { what: "image", name: name.to_owned() });
        }
        let key = local_key(name);
        let lock = self.lock(&key).await?;
        if self.lookup(&key)?.is_some() {
            return Err(Error::Exists { what: "image", name: name.to_owned() });
        }
        self.remove_abandoned_work(&key)?;
        Ok((key, lock))
    }
}

/// Imports the bundle at `source` into the work directory `dir` (its disk
/// and machine.json, flushed); returns the bundle's digest, which must be
/// `expected` if given (then frames need not carry checksums).
fn import_into(source: &Path, dir: &Path, limits: &Limits, expected: Option<Digest>) -> Result<Digest> {
    let (integrity, algorithm) = match &expected {
        Some(digest) => (Integrity::CallerDigest, digest.algorithm()),
        None => (Integrity::FrameChecksums, Algorithm::Sha256),
    };
    let (disk, scratch) = (dir.join("disk.raw"), dir.join("layer.qcow2"));
    let file = File::open(source).map_err(Error::io("open", source))?;
    if file.metadata().is_ok_and(|meta| meta.is_dir()) {
        let path = source.display();
        return Err(Error::Invalid(format!("{path} is a directory: give the bundle's file (an image.tar.zst)")));
    }
    let mut hashing = Hashing::new(file, algorithm);
    // The import reads the file to its end: the digest covers it all.
    let imported = bundle::import(&mut hashing, &disk, &scratch, limits, integrity)
        .map_err(|e| Error::Bundle { path: source.to_owned(), source: e })?;
    let actual = hashing.hasher.finish();
    refuse_image_header(&disk, source)?;
    match expected {
        Some(expected) if expected != actual => {
            Err(Error::BundleMismatch { path: source.to_owned(), expected, actual })
        }
        _ => crate::fsutil::write_atomic(&dir.join(MACHINE), &imported.machine.to_json()).map(|()| actual),
    }
}

/// Refuses a bundle whose disk starts with an image header: published as
/// raw, a VMM that probes formats would misread it (see `vmimg_disk::probe`).
fn refuse_image_header(disk: &Path, bundle: &Path) -> Result<()> {
    let mut file = File::open(disk).map_err(Error::io("open", disk))?;
    let head = vmimg_disk::read_head(&mut file, vmimg_disk::PROBE_BYTES).map_err(Error::io("read", disk))?;
    let label = std::path::PathBuf::from(format!("{} (its disk)", bundle.display()));
    Ok(vmimg_disk::ensure_plain_raw(&head, &label)?)
}

/// `image` for `…/image.tar.zst` (also `.tzst`, `.tar`).
fn default_name(file: &Path) -> Result<String> {
    let name = file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let stem = [".tar.zst", ".tzst", ".tar"].iter().find_map(|ext| name.strip_suffix(ext)).unwrap_or(&name);
    if is_name_safe(stem) {
        Ok(stem.to_owned())
    } else {
        Err(Error::Invalid(format!("cannot name an image after the file {name:?}: give it a name")))
    }
}

/// Hashes and counts what is read or written through it.
struct Hashing<T> {
    inner: T,
    hasher: Hasher,
    len: u64,
}

impl<T> Hashing<T> {
    fn new(inner: T, algorithm: Algorithm) -> Self {
        Hashing { inner, hasher: Hasher::new(algorithm), len: 0 }
    }

    fn pass(&mut self, bytes: &[u8]) -> usize {
        self.hasher.update(bytes);
        self.len += bytes.len() as u64;
        bytes.len()
    }
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        Ok(self.pass(&buf[..n]))
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        Ok(self.pass(&buf[..n]))
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}
