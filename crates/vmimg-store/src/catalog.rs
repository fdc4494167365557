//! The catalog: aliases (`debian-12`) pinned to a dated upstream snapshot
//! and, per architecture, a URL and the digest its publisher lists.
//!
//! One is embedded in the binary (`catalog.json` beside this crate's
//! Cargo.toml); a catalog file given by the user or kept in the store adds
//! or overrides aliases, with the same schema and the same checks. Every
//! field that reaches a file name (alias, snapshot) is restricted to
//! `[A-Za-z0-9._-]`, URLs must be http(s), digests must parse, unknown fields
//! are refused, so a catalog cannot smuggle a path or an unverified entry.
//! Only `vmimg catalog refresh` writes snapshots and digests.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use vmimg_fetch::Digest;

/// The catalog compiled into vmimg.
pub const EMBEDDED: &str = include_str!("../catalog.json");

/// A catalog file larger than this is refused.
pub const MAX_CATALOG_BYTES: u64 = 4 << 20;

/// A CPU architecture, named as Debian and OCI name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    Amd64,
    Arm64,
}

impl Arch {
    /// The architecture of this host (Linux x86_64 and aarch64, macOS on Apple Silicon).
    pub fn host() -> Option<Arch> {
        match std::env::consts::ARCH {
            "x86_64" => Some(Arch::Amd64),
            "aarch64" => Some(Arch::Arm64),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Arch::Amd64 => "amd64",
            Arch::Arm64 => "arm64",
        }
    }
}

impl std::str::FromStr for Arch {
    type Err = Error;
    fn from_str(s: &str) -> Result<Arch> {
        match s {
            "amd64" | "x86_64" => Ok(Arch::Amd64),
            "arm64" | "aarch64" => Ok(Arch::Arm64),
            _ => Err(Error::Invalid(format!("unknown architecture {s:?} (amd64 or arm64)"))),
        }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Where one architecture's image lives and what its bytes hash to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Artifact {
    pub url: String,
    pub digest: Digest,
}

/// One alias.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    pub distro: String,
    pub version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub codename: Option<String>,
    /// The upstream's dated build (`20260923-2610`): part of every cache name.
    pub snapshot: String,
    /// When `catalog refresh` last moved the snapshot (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bumped_at: Option<String>,
    pub arch: BTreeMap<Arch, Artifact>,
}

/// Aliases by name.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Catalog {
    entries: BTreeMap<String, Entry>,
}

impl Catalog {
    /// The catalog compiled into vmimg.
    pub fn embedded() -> Catalog {
        Catalog::parse(EMBEDDED, "the embedded catalog").expect("the embedded catalog is valid (tested)")
    }

    /// Parses and checks a catalog; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Catalog> {
        let invalid = |message: String| Error::Catalog { origin: origin.to_owned(), message };
        if text.len() as u64 > MAX_CATALOG_BYTES {
            return Err(invalid(format!("larger than {MAX_CATALOG_BYTES} bytes")));
        }
        let catalog: Catalog = serde_json::from_str(text).map_err(|e| invalid(e.to_string()))?;
        for (alias, entry) in &catalog.entries {
            check_entry(alias, entry).map_err(|m| invalid(format!("alias {alias:?}: {m}")))?;
        }
        Ok(catalog)
    }

    /// Reads a catalog file (at most [`MAX_CATALOG_BYTES`]).
    pub fn load(path: &Path) -> Result<Catalog> {
        let text = crate::fsutil::read_bounded(path, MAX_CATALOG_BYTES)?;
        Catalog::parse(&text, &path.display().to_string())
    }

    /// Adds `other`'s aliases, replacing entries of the same name.
    pub fn overlay(&mut self, other: Catalog) {
        self.entries.extend(other.entries);
    }

    pub fn get(&self, alias: &str) -> Option<&Entry> {
        self.entries.get(alias)
    }

    /// The alias closest to a mistyped one, if one is close.
    pub fn closest_alias(&self, typed: &str) -> crate::suggest::Suggestion {
        crate::suggest::Suggestion::closest(typed, self.entries().map(|(alias, _)| alias))
    }

    pub fn entries(&self) -> impl Iterator<Item = (&str, &Entry)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v))
    }

    pub fn entries_mut(&mut self) -> impl Iterator<Item = (&str, &mut Entry)> {
        self.entries.iter_mut().map(|(k, v)| (k.as_str(), v))
    }

    /// The catalog as pretty JSON with a final newline, as files keep it.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a catalog serializes") + "\n"
    }
}

/// Whether `s` may appear in a file name: 1 to 64 of `[A-Za-z0-9._-]`, not
/// starting with a dot or a dash.
pub(crate) fn is_name_safe(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && !s.starts_with(['.', '-'])
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn check_entry(alias: &str, entry: &Entry) -> std::result::Result<(), String> {
    if !is_name_safe(alias) {
        return Err("an alias is 1 to 64 of [A-Za-z0-9._-]".into());
    }
    if alias.starts_with(crate::source::LOCAL_PREFIX) {
        return Err(format!(
            "an alias may not start with {:?}: such names are images users made",
            crate::source::LOCAL_PREFIX
        ));
    }
    if !is_name_safe(&entry.snapshot) {
        return Err(format!("snapshot {:?} is not 1 to 64 of [A-Za-z0-9._-]", entry.snapshot));
    }
    for (field, value) in [("distro", &entry.distro), ("version", &entry.version)] {
        if value.is_empty() || value.len() > 64 {
            return Err(format!("{field} must be 1 to 64 characters"));
        }
    }
    if entry.arch.is_empty() {
        return Err("no architecture listed".into());
    }
    for (arch, artifact) in &entry.arch {
        check_url(&artifact.url).map_err(|m| format!("{arch}: {m}"))?;
    }
    Ok(())
}

pub(crate) fn check_url(url: &str) -> std::result::Result<(), String> {
    let rest = url.strip_prefix("https://").or_else(|| url.strip_prefix("http://"));
    match rest {
        Some(rest) if !rest.is_empty() && url.len() <= 2048 && !url.chars().any(char::is_whitespace) => Ok(()),
        _ => Err(format!("url {:?} is not an http(s) URL", url.chars().take(200).collect::<String>())),
    }
}

/// URL prefix rewrites for sites that reach upstream through a mirror.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Mirrors(BTreeMap<String, String>);

impl Mirrors {
    /// Adds `FROM=TO`.
    pub fn add_rule(&mut self, rule: &str) -> Result<()> {
        let (from, to) = rule
            .split_once('=')
            .ok_or_else(|| Error::Invalid(format!("mirror rule {rule:?} is not FROM=TO (URL prefixes)")))?;
        check_url(to).map_err(|m| Error::Invalid(format!("mirror rule {rule:?}: {m}")))?;
        self.0.insert(from.to_owned(), to.to_owned());
        Ok(())
    }

    pub fn extend(&mut self, other: Mirrors) {
        self.0.extend(other.0);
    }

    /// `url` with its longest matching prefix rewritten.
    pub fn rewrite(&self, url: &str) -> String {
        let best = self.0.iter().filter(|(from, _)| url.starts_with(from.as_str())).max_by_key(|(from, _)| from.len());
        match best {
            Some((from, to)) => format!("{to}{}", &url[from.len()..]),
            None => url.to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_catalog_is_valid_and_covers_both_arches() {
        let catalog = Catalog::embedded();
        let debian = catalog.get("debian-12").unwrap();
        assert_eq!(debian.arch[&Arch::Amd64].digest.algorithm(), vmimg_fetch::Algorithm::Sha512);
        for (alias, entry) in catalog.entries() {
            assert!(entry.arch.contains_key(&Arch::Amd64) && entry.arch.contains_key(&Arch::Arm64), "{alias}");
        }
        assert_eq!(Catalog::parse(&catalog.to_json(), "round trip").unwrap(), catalog);
    }

    fn one(alias: &str, snapshot: &str, url: &str, digest: &str) -> String {
        format!(
            r#"{{"{alias}": {{"distro": "d", "version": "1", "snapshot": "{snapshot}",
                "arch": {{"amd64": {{"url": "{url}", "digest": "{digest}"}}}}}}}}"#
        )
    }

    #[test]
    fn refuses_what_could_escape_or_go_unverified() {
        let digest = format!("sha256:{}", "0".repeat(64));
        let ok = one("x", "2026", "https://h/x.qcow2", &digest);
        Catalog::parse(&ok, "t").unwrap();
        for (bad, why) in [
            (one("../x", "2026", "https://h/x", &digest), "alias"),
            (one("x", "../../etc", "https://h/x", &digest), "snapshot"),
            (one("x", "2026", "file:///etc/passwd", &digest), "http(s)"),
            (one("x", "2026", "https://h/x", "sha256:abc"), "digest"),
            (one("x", "2026", "https://h/x", ""), "digest"),
            (ok.replace("\"distro\"", "\"surprise\": 1, \"distro\""), "unknown field"),
            ("[]".to_owned(), "invalid type"),
        ] {
            let err = Catalog::parse(&bad, "t").unwrap_err().to_string();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn mirrors_rewrite_the_longest_prefix() {
        let mut m = Mirrors::default();
        m.add_rule("https://cloud.debian.org/=http://mirror/debian-all/").unwrap();
        m.add_rule("https://cloud.debian.org/images/cloud/=http://mirror/debian/").unwrap();
        assert_eq!(m.rewrite("https://cloud.debian.org/images/cloud/a.qcow2"), "http://mirror/debian/a.qcow2");
        assert_eq!(m.rewrite("https://cloud.debian.org/x"), "http://mirror/debian-all/x");
        assert_eq!(m.rewrite("https://other/x"), "https://other/x");
        assert!(m.add_rule("nothing").is_err());
    }
}
