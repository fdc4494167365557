//! Gets a frontend has accepted and not finished, kept on disk so that a
//! restart carries them on.
//!
//! A daemon answers "202, being made" before the work is done; if it is
//! killed before the image is ready, its clients still wait for it. So the
//! request is written (`accepted/<key>.json`, atomically) before the answer,
//! and removed once the image is ready or has failed; at its next start the
//! daemon gets every request still there, and their partial downloads
//! resume where they stopped.

use crate::catalog::Arch;
use crate::error::{Error, Result};
use crate::fsutil::blocking;
use crate::get::GetOptions;
use crate::record::{RootfsFormat, Timestamp, load_json, save_json};
use crate::store::Store;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use vmimg_fetch::Digest;

/// One accepted get: the source as the client wrote it and its options.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Accepted {
    /// The key of the image the get makes (see [`crate::Plan::key`]).
    pub key: String,
    pub source: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<Digest>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arch: Option<Arch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<RootfsFormat>,
    pub accepted_at: Timestamp,
}

impl Accepted {
    /// The get of `source` with `options`, making image `key`.
    pub fn new(key: &str, source: &str, options: &GetOptions) -> Accepted {
        Accepted {
            key: key.to_owned(),
            source: source.to_owned(),
            digest: options.digest.clone(),
            arch: options.arch,
            format: options.format,
            accepted_at: Timestamp::now(),
        }
    }

    /// The options to get it again with (no observer, no build queue).
    pub fn options(&self) -> GetOptions {
        GetOptions { digest: self.digest.clone(), arch: self.arch, format: self.format, ..GetOptions::default() }
    }
}

impl Store {
    fn accepted_dir(&self) -> PathBuf {
        self.root().join("accepted")
    }

    /// Keeps `accepted` until [`Store::settle`] (replacing one of the same key).
    pub async fn accept(&self, accepted: &Accepted) -> Result<()> {
        let dir = self.accepted_dir();
        let path = dir.join(format!("{}.json", accepted.key));
        let accepted = accepted.clone();
        blocking("accept a request", move || {
            std::fs::create_dir_all(&dir).map_err(Error::io("create", &dir))?;
            save_json(&path, &accepted)
        })
        .await
    }

    /// Forgets the accepted get of image `key` (ready or failed).
    pub async fn settle(&self, key: &str) -> Result<()> {
        let path = self.accepted_dir().join(format!("{key}.json"));
        blocking("settle a request", move || crate::fsutil::remove_file(&path)).await
    }

    /// Every accepted get not yet settled, oldest first. A record that does
    /// not read is skipped with its error, so one bad file stops nothing.
    pub async fn accepted(&self) -> Result<Vec<std::result::Result<Accepted, Error>>> {
        let dir = self.accepted_dir();
        blocking("list accepted requests", move || {
            let entries = match std::fs::read_dir(&dir) {
                Ok(entries) => entries,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
                Err(e) => return Err(Error::io("read", &dir)(e)),
            };
            let mut all: Vec<_> = entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "json"))
                .map(|path| load_json::<Accepted>(&path))
                .collect();
            all.sort_by_key(|a| a.as_ref().map(|a| a.accepted_at).ok());
            Ok(all)
        })
        .await
    }
}
