//! Names: tags a user gives images (`pull --name`, `vmimg tag`), as a
//! container engine tags images.
//!
//! A name is a file `names/<name>` holding the key of the image it names,
//! written atomically; one name names one image, an image has any number.
//! Naming an image again moves the name (as `docker tag` does). A name
//! follows its source: when a newer version of a file or URL replaces an
//! image (see `versions`), its names move to the new one. A named image is
//! the user's: `gc` never evicts it. Removing an image removes its names.
//!
//! A name is 1 to 64 of `[A-Za-z0-9._-]`, and may not be something else a
//! command would take it for: a catalog alias, or an image's key (or the
//! name of an image the user made, `local-<name>`). Names are looked up
//! after keys ([`Store::find_image`]). A name whose image is gone (a crash
//! between removing the image and its names) names nothing and is ignored.

use crate::catalog::is_name_safe;
use crate::error::{Error, Result};
use crate::store::Store;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// A name file is a key: far less than this.
const MAX_NAME_FILE: u64 = 4096;

impl Store {
    fn names_dir(&self) -> PathBuf {
        self.root().join("names")
    }

    /// Names the image `image` names (see [`Store::find`]) `name`, moving
    /// the name if it named another image; returns the image's key.
    pub async fn tag(&self, image: &str, name: &str) -> Result<String> {
        let key = self.find(image).await?.name;
        self.check_name(name, &key)?;
        let _lock = self.lock(&key).await?;
        if self.lookup(&key)?.is_none() {
            return Err(Error::NotFound { what: "image", name: image.to_owned() });
        }
        self.write_name(name, &key)?;
        Ok(key)
    }

    /// Removes the name `name`; returns the key it named.
    pub fn untag(&self, name: &str) -> Result<String> {
        let key = self.named(name)?.ok_or_else(|| Error::NotFound { what: "name", name: name.to_owned() })?;
        crate::fsutil::remove_file(&self.names_dir().join(name))?;
        Ok(key)
    }

    /// Every name of an image in the store, with the key it names.
    pub fn names(&self) -> Result<BTreeMap<String, String>> {
        let files = self.name_files()?;
        Ok(files.into_iter().filter(|(_, key)| self.image_dir(key).join("image.json").exists()).collect())
    }

    /// The names of image `key`, sorted.
    pub fn names_of(&self, key: &str) -> Result<Vec<String>> {
        Ok(self.names()?.into_iter().filter(|(_, named)| *named == key).map(|(name, _)| name).collect())
    }

    /// The key of the image `name` names, if it is a name and its image
    /// exists.
    pub(crate) fn named(&self, name: &str) -> Result<Option<String>> {
        let key = self.read_name(name)?;
        Ok(key.filter(|key| self.image_dir(key).join("image.json").exists()))
    }

    /// Moves every name of image `from` to image `to`.
    pub(crate) fn move_names(&self, from: &str, to: &str) -> Result<()> {
        self.names_of(from)?.iter().try_for_each(|name| self.write_name(name, to))
    }

    /// Removes every name of image `key` (which may be gone already).
    pub(crate) fn remove_names_of(&self, key: &str) -> Result<()> {
        let files = self.name_files()?;
        let names = files.iter().filter(|(_, named)| named.as_str() == key);
        names.into_iter().try_for_each(|(name, _)| crate::fsutil::remove_file(&self.names_dir().join(name)))
    }

    /// Every name file and the key it holds, whether its image exists or not.
    fn name_files(&self) -> Result<BTreeMap<String, String>> {
        let mut names = BTreeMap::new();
        let dir = self.names_dir();
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(names),
            Err(e) => return Err(Error::io("list", &dir)(e)),
        };
        for entry in entries {
            let name = entry.map_err(Error::io("list", &dir))?.file_name().to_string_lossy().into_owned();
            if let Some(key) = self.read_name(&name)? {
                names.insert(name, key);
            }
        }
        Ok(names)
    }

    /// The key name file `name` holds, if there is one and it holds a key
    /// (an atomic write's leftovers and foreign files are not names).
    fn read_name(&self, name: &str) -> Result<Option<String>> {
        if !is_name_safe(name) {
            return Ok(None);
        }
        let path = self.names_dir().join(name);
        let key = match crate::fsutil::read_bounded(&path, MAX_NAME_FILE) {
            Ok(key) => key,
            Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let key = key.trim();
        Ok(is_name_safe(key).then(|| key.to_owned()))
    }

    fn write_name(&self, name: &str, key: &str) -> Result<()> {
        let dir = self.names_dir();
        std::fs::create_dir_all(&dir).map_err(Error::io("create", &dir))?;
        crate::fsutil::write_atomic(&dir.join(name), key.as_bytes())
    }

    /// Refuses a name that is not one, or that a command would take for
    /// something else than the image `key`.
    pub(crate) fn check_name(&self, name: &str, key: &str) -> Result<()> {
        if !is_name_safe(name) {
            return Err(Error::InvalidName { what: "image", name: name.to_owned() });
        }
        if self.catalog().get(name).is_some() {
            return Err(Error::Invalid(format!("{name} is a catalog alias: give the image another name")));
        }
        let is_a_key = name == key || self.lookup(name)?.is_some();
        let is_made = self.lookup(&crate::source::local_key(name))?.is_some();
        if is_a_key || is_made {
            return Err(Error::Exists { what: "image", name: name.to_owned() });
        }
        Ok(())
    }
}
