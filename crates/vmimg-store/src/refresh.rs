//! `vmimg catalog refresh`: the only writer of catalog snapshots and digests.
//!
//! For each alias it reads what the publisher lists, finds the newest dated
//! snapshot, and pins, per architecture, that snapshot's URL and the digest
//! the publisher's own checksum file gives for it. The layout is chosen by
//! the entry's `distro`:
//!
//! | distro | the newest snapshot is                          | its digest comes from                              |
//! |--------|-------------------------------------------------|----------------------------------------------------|
//! | debian | the greatest `YYYYMMDD-NNNN/` beside the pinned | `SHA512SUMS` in it: `<hex>  <name>`                |
//! | ubuntu | the greatest `release-YYYYMMDD[.N]/`            | `SHA256SUMS` in it: `<hex> *<name>`                |
//! | fedora | the greatest `43-X.Y` among the image's siblings | `Fedora-Cloud-43-X.Y-<arch>-CHECKSUM`: `SHA256 (<name>) = <hex>` |
//! | rocky  | the greatest `YYYYMMDD.N` among the siblings    | `<name>.CHECKSUM`, the same BSD style              |
//! | alpine | the greatest `3.22.P-rR` among the siblings     | `<name>.sha512`: `<hex>  <name>`                   |
//!
//! No pattern is written down per distribution: the pinned URL's dated
//! component (the directory for Debian and Ubuntu, the file name for the
//! others) becomes a [`Template`] whose slots are the snapshot's
//! `-`-separated parts, each of the same shape (digit runs of any length, the
//! same separators; a trailing `.N` respin counter may come or go). Listed
//! names that fit are compared by their numbers, component by component,
//! never as strings. Every architecture moves to the newest snapshot listed
//! for all of them, and a pin never moves back (that is a stale mirror).
//!
//! It never invents a digest: the digest is all that makes a pull verified,
//! so each is copied from the line of the publisher's checksum file that
//! names the exact file, with the algorithm the publisher used. A missing or
//! contradictory line fails the alias; nothing is ever computed from
//! downloaded image bytes, which would pin whatever a mirror or an attacker
//! served. (The checksum files' own signatures are not checked yet: trust
//! comes from fetching them from the publisher over HTTPS.)
//!
//! What it reads is hostile: listings and checksum files are bounded
//! ([`MAX_UPSTREAM_TEXT`]); links that are not plain names (sort links,
//! parents, absolute links, anything with `/` or `..`) are ignored; numbers
//! too large to compare are skipped; every new entry passes
//! [`Catalog::parse`] before it replaces the old one. Mirrors rewrite the URLs
//! fetched, while the catalog keeps the upstream ones. The file is rewritten
//! atomically, with the aliases that refreshed; one failing alias stops no
//! other.

use crate::catalog::{Arch, Artifact, Catalog, Entry, Mirrors};
use crate::error::{Error, Result};
use crate::store::Store;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use vmimg_fetch::{Algorithm, Digest, Fetcher, Progress};

/// Listings and checksum files larger than this are refused.
pub const MAX_UPSTREAM_TEXT: usize = 4 << 20;

/// What `catalog refresh` did to one alias.
#[derive(Debug)]
pub struct Refreshed {
    pub alias: String,
    pub outcome: std::result::Result<Change, RefreshError>,
}

/// How a refreshed alias changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Already at the newest snapshot, with the publisher's digests.
    Unchanged { snapshot: String },
    /// Moved to a newer snapshot.
    Bumped { from: String, to: String },
    /// The same snapshot, but the publisher now lists other digests.
    Republished { snapshot: String },
}

/// Why one alias could not be refreshed.
#[derive(Debug, thiserror::Error)]
pub enum RefreshError {
    #[error("no alias {0:?} in this catalog (`vmimg catalog list --catalog FILE` shows them)")]
    NotInCatalog(String),
    #[error("distribution {0:?} has no refresher (debian, ubuntu, fedora, rocky and alpine have)")]
    NoRefresher(String),
    #[error("{arch} URL {url} does not carry the snapshot {snapshot} where the {distro} layout has it")]
    Unfit { arch: Arch, url: String, snapshot: String, distro: String },
    #[error("{url}: {message}")]
    Upstream { url: String, message: String },
    #[error(transparent)]
    Fetch(#[from] vmimg_fetch::Error),
    #[error(transparent)]
    Catalog(#[from] Error),
}

type Refreshing<T> = std::result::Result<T, RefreshError>;

impl Store {
    /// Moves `aliases` (all when empty) of the catalog file `file` (the
    /// embedded catalog when it does not exist) to their publishers' newest
    /// snapshots, and rewrites the file atomically with every alias that
    /// refreshed (an absent file is written once any alias refreshed, even
    /// unchanged). Fails only when `file` cannot be read or written; each
    /// alias's own failure is in its [`Refreshed`]. `progress` hears every
    /// retry of a request upstream.
    pub async fn refresh_catalog(
        &self,
        file: &Path,
        aliases: &[String],
        progress: &dyn Progress,
    ) -> Result<Vec<Refreshed>> {
        let file = std::path::absolute(file).map_err(Error::io("resolve", file))?;
        let existed = file.try_exists().map_err(Error::io("stat", &file))?;
        let mut catalog = if existed { Catalog::load(&file)? } else { Catalog::embedded() };
        let aliases = match aliases {
            [] => catalog.entries().map(|(alias, _)| alias.to_owned()).collect(),
            named => named.to_vec(),
        };
        let mut upstream =
            Upstream { fetcher: self.fetcher()?, mirrors: self.mirrors(), progress, texts: HashMap::new() };
        let mut report = Vec::new();
        let mut changed = false;
        for alias in aliases {
            let outcome = upstream.refresh_alias(&catalog, &alias).await.map(|(change, updated)| {
                if !matches!(change, Change::Unchanged { .. }) {
                    catalog.overlay(updated);
                    changed = true;
                }
                change
            });
            report.push(Refreshed { alias, outcome });
        }
        if changed || (!existed && report.iter().any(|r| r.outcome.is_ok())) {
            let text = catalog.to_json();
            Catalog::parse(&text, &file.display().to_string())?;
            crate::fsutil::write_atomic(&file, text.as_bytes())?;
        }
        Ok(report)
    }
}

/// The publishers' documents, read through the mirrors, each once per refresh.
struct Upstream<'a> {
    fetcher: &'a Fetcher,
    mirrors: &'a Mirrors,
    /// Hears every retry.
    progress: &'a dyn Progress,
    /// By upstream URL.
    texts: HashMap<String, String>,
}

impl Upstream<'_> {
    /// The change to `alias`, and the refreshed entry (checked) as a catalog of one.
    async fn refresh_alias(&mut self, catalog: &Catalog, alias: &str) -> Refreshing<(Change, Catalog)> {
        let entry = catalog.get(alias).ok_or_else(|| RefreshError::NotInCatalog(alias.to_owned()))?;
        let updated = self.refresh_entry(entry).await?;
        let change = Change::between(entry, &updated);
        let json = serde_json::to_string(&BTreeMap::from([(alias, &updated)])).expect("an entry serializes");
        Ok((change, Catalog::parse(&json, &format!("refreshed alias {alias:?}"))?))
    }

    async fn refresh_entry(&mut self, entry: &Entry) -> Refreshing<Entry> {
        let layout = Layout::of(&entry.distro).ok_or_else(|| RefreshError::NoRefresher(entry.distro.clone()))?;
        let pins = entry
            .arch
            .iter()
            .map(|(arch, artifact)| Pin::new(layout, *arch, &artifact.url, entry))
            .collect::<Refreshing<Vec<_>>>()?;
        let pinned = &pins[0].pinned;
        let newest = self.newest(&pins).await?;
        if newest.key < pinned.key {
            let message = format!(
                "the newest snapshot listed, {}, is older than the pinned {} (a stale mirror?)",
                newest.snapshot(),
                entry.snapshot
            );
            return Err(self.upstream_error(&pins[0].listing, message));
        }
        let snapshot = newest.snapshot();
        let mut arch = BTreeMap::new();
        for pin in &pins {
            let url = pin.url(&newest, &entry.snapshot);
            let digest = self.listed_digest(layout, pin.arch, &url, &snapshot).await?;
            arch.insert(pin.arch, Artifact { url, digest });
        }
        let bumped_at = if snapshot == entry.snapshot {
            entry.bumped_at.clone()
        } else {
            Some(humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string())
        };
        let version = pinned.follow(&entry.version, &newest);
        Ok(Entry { version, snapshot, bumped_at, arch, ..entry.clone() })
    }

    /// The newest snapshot listed for every pinned architecture.
    async fn newest(&mut self, pins: &[Pin]) -> Refreshing<Candidate> {
        let mut common: Option<BTreeMap<String, Candidate>> = None;
        for pin in pins {
            let listed = self.candidates(pin).await?;
            common = Some(match common {
                None => listed,
                Some(mut common) => {
                    common.retain(|snapshot, _| listed.contains_key(snapshot));
                    common
                }
            });
        }
        let newest = common.into_iter().flat_map(BTreeMap::into_values).max_by(|a, b| a.key.cmp(&b.key));
        newest.ok_or_else(|| {
            let arches: Vec<_> = pins.iter().map(|p| p.arch.name()).collect();
            self.upstream_error(&pins[0].listing, format!("no snapshot is listed for all of {}", arches.join(", ")))
        })
    }

    /// The snapshots `pin`'s listing offers, by name.
    async fn candidates(&mut self, pin: &Pin) -> Refreshing<BTreeMap<String, Candidate>> {
        let html = self.text(&pin.listing).await?;
        let found: BTreeMap<_, _> = hrefs(html)
            .filter_map(listed_name)
            .filter(|(_, is_dir)| *is_dir == (pin.dated == Dated::Dir))
            .filter_map(|(name, _)| pin.template.matches(name))
            .filter_map(Candidate::new)
            .map(|candidate| (candidate.snapshot(), candidate))
            .collect();
        if found.is_empty() {
            let slash = if pin.dated == Dated::Dir { "/" } else { "" };
            let message = format!("lists nothing like {}{slash}", pin.template.render(&pin.pinned.parts));
            return Err(self.upstream_error(&pin.listing, message));
        }
        Ok(found)
    }

    /// The digest the publisher lists for the image at `url`.
    async fn listed_digest(&mut self, layout: Layout, arch: Arch, url: &str, snapshot: &str) -> Refreshing<Digest> {
        let (dir, name) = url.rsplit_once('/').expect("a pinned URL has a path");
        let sums = format!("{dir}/{}", layout.checksum.name(name, snapshot, arch));
        let found = layout.format.find(self.text(&sums).await?, name);
        found.map_err(|message| self.upstream_error(&sums, message))
    }

    /// The text at upstream `url`, read (through the mirrors) once.
    async fn text(&mut self, url: &str) -> Refreshing<&str> {
        if !self.texts.contains_key(url) {
            let text = self.fetcher.get_text(&self.mirrors.rewrite(url), MAX_UPSTREAM_TEXT, self.progress).await?;
            self.texts.insert(url.to_owned(), text);
        }
        Ok(&self.texts[url])
    }

    /// An error about the document at upstream `url`, named as it was fetched.
    fn upstream_error(&self, url: &str, message: String) -> RefreshError {
        RefreshError::Upstream { url: self.mirrors.rewrite(url), message }
    }
}

impl Change {
    fn between(old: &Entry, new: &Entry) -> Change {
        if old.snapshot != new.snapshot {
            Change::Bumped { from: old.snapshot.clone(), to: new.snapshot.clone() }
        } else if old != new {
            Change::Republished { snapshot: new.snapshot.clone() }
        } else {
            Change::Unchanged { snapshot: new.snapshot.clone() }
        }
    }
}

/// Where a distribution puts its snapshots and their digests.
#[derive(Debug, Clone, Copy)]
struct Layout {
    dated: Dated,
    checksum: ChecksumFile,
    format: SumFormat,
}

impl Layout {
    fn of(distro: &str) -> Option<Layout> {
        let (dated, checksum, format) = match distro {
            "debian" => (Dated::Dir, ChecksumFile::Named("SHA512SUMS"), SumFormat::Gnu(Algorithm::Sha512)),
            "ubuntu" => (Dated::Dir, ChecksumFile::Named("SHA256SUMS"), SumFormat::Gnu(Algorithm::Sha256)),
            "fedora" => (Dated::File, ChecksumFile::Fedora, SumFormat::Bsd),
            "rocky" => (Dated::File, ChecksumFile::Suffix(".CHECKSUM"), SumFormat::Bsd),
            "alpine" => (Dated::File, ChecksumFile::Suffix(".sha512"), SumFormat::Gnu(Algorithm::Sha512)),
            _ => return None,
        };
        Some(Layout { dated, checksum, format })
    }
}

/// Which component of an image's URL carries the snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dated {
    /// `<base>/<dated directory>/<file>`: the snapshots are directories.
    Dir,
    /// `<dir>/<dated file>`: the snapshots are the image's siblings.
    File,
}

/// The checksum file beside an image.
#[derive(Debug, Clone, Copy)]
enum ChecksumFile {
    /// One file for the directory.
    Named(&'static str),
    /// `Fedora-Cloud-<snapshot>-<x86_64|aarch64>-CHECKSUM`.
    Fedora,
    /// The image's name and this suffix.
    Suffix(&'static str),
}

impl ChecksumFile {
    fn name(self, image: &str, snapshot: &str, arch: Arch) -> String {
        match self {
            ChecksumFile::Named(name) => name.to_owned(),
            ChecksumFile::Fedora => {
                let arch = match arch {
                    Arch::Amd64 => "x86_64",
                    Arch::Arm64 => "aarch64",
                };
                format!("Fedora-Cloud-{snapshot}-{arch}-CHECKSUM")
            }
            ChecksumFile::Suffix(suffix) => format!("{image}{suffix}"),
        }
    }
}

/// How a checksum file's lines read.
#[derive(Debug, Clone, Copy)]
enum SumFormat {
    /// coreutils: `<hex>  <name>` or `<hex> *<name>`, the algorithm given by the file.
    Gnu(Algorithm),
    /// BSD: `SHA256 (<name>) = <hex>`, the algorithm named on each line.
    Bsd,
}

impl SumFormat {
    /// The file, algorithm and hex a line lists, if it is such a line.
    fn line(self, line: &str) -> Option<(&str, Algorithm, &str)> {
        match self {
            SumFormat::Gnu(algorithm) => {
                let (hex, file) = line.trim().split_once(' ')?;
                Some((file.strip_prefix([' ', '*'])?, algorithm, hex))
            }
            SumFormat::Bsd => {
                let (tag, rest) = line.trim().split_once(" (")?;
                let (file, hex) = rest.rsplit_once(") = ")?;
                let algorithm = match tag {
                    "SHA256" => Algorithm::Sha256,
                    "SHA512" => Algorithm::Sha512,
                    _ => return None,
                };
                Some((file, algorithm, hex))
            }
        }
    }

    /// The one digest `text` lists for `name`.
    fn find(self, text: &str, name: &str) -> std::result::Result<Digest, String> {
        let mut digests =
            text.lines().filter_map(|line| self.line(line)).filter(|(file, _, _)| *file == name).map(
                |(_, algorithm, hex)| format!("{}:{}", algorithm.name(), hex.to_ascii_lowercase()).parse::<Digest>(),
            );
        let first = digests.next().ok_or_else(|| format!("no checksum line for {name}"))?;
        let first = first.map_err(|e| format!("the line for {name}: {e}"))?;
        match digests.all(|other| other.is_ok_and(|d| d == first)) {
            true => Ok(first),
            false => Err(format!("lists {name} more than once, with different digests")),
        }
    }
}

/// One architecture's pin, taken apart so that its snapshot can move.
#[derive(Debug)]
struct Pin {
    arch: Arch,
    dated: Dated,
    /// The upstream directory whose listing offers the snapshots (ends with `/`).
    listing: String,
    /// The listing's entry that carries the snapshot: the dated directory or file.
    template: Template,
    /// The pinned snapshot, as the template sees it.
    pinned: Candidate,
    /// What follows that entry in the URL: `/<file>` under a dated directory.
    tail: String,
}

impl Pin {
    fn new(layout: Layout, arch: Arch, url: &str, entry: &Entry) -> Refreshing<Pin> {
        let unfit = || RefreshError::Unfit {
            arch,
            url: url.to_owned(),
            snapshot: entry.snapshot.clone(),
            distro: entry.distro.clone(),
        };
        let (head, file) = url.rsplit_once('/').ok_or_else(unfit)?;
        let (listing, dated_name, tail) = match layout.dated {
            Dated::File => (head, file, String::new()),
            Dated::Dir => {
                let (base, dir) = head.rsplit_once('/').ok_or_else(unfit)?;
                (base, dir, format!("/{file}"))
            }
        };
        let template = Template::new(dated_name, &entry.snapshot).ok_or_else(unfit)?;
        let pinned = template.matches(dated_name).and_then(Candidate::new).ok_or_else(unfit)?;
        Ok(Pin { arch, dated: layout.dated, listing: format!("{listing}/"), template, pinned, tail })
    }

    /// The upstream URL of this architecture's image in snapshot `newest`.
    fn url(&self, newest: &Candidate, pinned: &str) -> String {
        let tail = self.tail.replace(pinned, &newest.snapshot());
        format!("{}{}{tail}", self.listing, self.template.render(&newest.parts))
    }
}

/// A name with the snapshot's parts as slots:
/// `Fedora-Cloud-Base-Generic-{43}-{1.6}.x86_64.qcow2`.
#[derive(Debug)]
struct Template {
    /// The fixed text around the slots: one more than there are slots.
    literals: Vec<String>,
    slots: Vec<Shape>,
}

impl Template {
    /// Finds the `-`-separated parts of `snapshot`, in order, in `name`, each
    /// as a whole word or number.
    fn new(name: &str, snapshot: &str) -> Option<Template> {
        let (mut literals, mut slots, mut from) = (Vec::new(), Vec::new(), 0);
        for part in snapshot.split('-') {
            let at = find_word(name, from, part)?;
            literals.push(name[from..at].to_owned());
            slots.push(Shape::of(part)?);
            from = at + part.len();
        }
        literals.push(name[from..].to_owned());
        Some(Template { literals, slots })
    }

    /// The slots' values, if `name` fits.
    fn matches(&self, name: &str) -> Option<Vec<String>> {
        let mut rest = name.strip_prefix(self.literals[0].as_str())?;
        let mut parts = Vec::new();
        for (shape, literal) in self.slots.iter().zip(&self.literals[1..]) {
            let len = shape.fit(rest)?;
            parts.push(rest[..len].to_owned());
            rest = rest[len..].strip_prefix(literal.as_str())?;
        }
        rest.is_empty().then_some(parts)
    }

    fn render(&self, parts: &[String]) -> String {
        let mut name = self.literals[0].clone();
        for (part, literal) in parts.iter().zip(&self.literals[1..]) {
            name.push_str(part);
            name.push_str(literal);
        }
        name
    }
}

/// Where `word` first occurs in `name` at or after `from`, not inside a
/// longer word or number.
fn find_word(name: &str, from: usize, word: &str) -> Option<usize> {
    let alnum = |i: usize| name.as_bytes().get(i).is_some_and(u8::is_ascii_alphanumeric);
    let bounded = |at: usize| (at == 0 || !alnum(at - 1)) && !alnum(at + word.len());
    let mut found = name[from..].match_indices(word).map(|(i, _)| from + i);
    found.find(|&at| !word.is_empty() && bounded(at))
}

/// What a snapshot part looks like: its characters, with each digit run
/// standing for any digit run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token {
    Digits,
    Byte(u8),
}

#[derive(Debug)]
struct Shape(Vec<Token>);

impl Shape {
    /// The shape of `part` without a trailing `.N` (which [`Shape::fit`]
    /// allows anyway); None if `part` has no number to compare.
    fn of(part: &str) -> Option<Shape> {
        let mut tokens = Vec::new();
        for byte in part.bytes() {
            let token = if byte.is_ascii_digit() { Token::Digits } else { Token::Byte(byte) };
            if token != Token::Digits || tokens.last() != Some(&Token::Digits) {
                tokens.push(token);
            }
        }
        if tokens.len() > 2 && tokens.ends_with(&[Token::Byte(b'.'), Token::Digits]) {
            tokens.truncate(tokens.len() - 2);
        }
        tokens.contains(&Token::Digits).then_some(Shape(tokens))
    }

    /// How many bytes at the start of `text` fit, with a `.N` respin counter
    /// if one follows.
    fn fit(&self, text: &str) -> Option<usize> {
        let bytes = text.as_bytes();
        let mut at = 0;
        for token in &self.0 {
            at += match token {
                Token::Digits => Some(digit_run(&bytes[at..])).filter(|&n| n > 0)?,
                Token::Byte(byte) => (bytes.get(at) == Some(byte)).then_some(1)?,
            };
        }
        let respin = bytes.get(at + 1..).map_or(0, digit_run);
        if bytes.get(at) == Some(&b'.') && respin > 0 {
            at += 1 + respin;
        }
        Some(at)
    }
}

fn digit_run(bytes: &[u8]) -> usize {
    bytes.iter().take_while(|b| b.is_ascii_digit()).count()
}

/// A snapshot a listing offers: its parts, and their numbers in order (what
/// snapshots are compared by).
#[derive(Debug, Clone)]
struct Candidate {
    parts: Vec<String>,
    key: Vec<u64>,
}

impl Candidate {
    /// None when a number does not fit in 64 bits.
    fn new(parts: Vec<String>) -> Option<Candidate> {
        let numbers = parts.iter().flat_map(|part| part.split(|c: char| !c.is_ascii_digit()));
        let key = numbers.filter(|n| !n.is_empty()).map(|n| n.parse().ok()).collect::<Option<_>>()?;
        Some(Candidate { parts, key })
    }

    fn snapshot(&self) -> String {
        self.parts.join("-")
    }

    /// An entry's version follows the snapshot when it is one of its parts
    /// (Alpine's `3.22.4` in `3.22.4-r0`); any other stays.
    fn follow(&self, version: &str, newest: &Candidate) -> String {
        let moved = self.parts.iter().position(|part| part == version).and_then(|i| newest.parts.get(i));
        moved.map_or(version, String::as_str).to_owned()
    }
}

/// The `href="…"` values of an HTML listing.
fn hrefs(html: &str) -> impl Iterator<Item = &str> {
    html.split("href=\"").skip(1).filter_map(|rest| rest.split_once('"').map(|(href, _)| href))
}

/// The entry a listing's link names, and whether it is a directory; None
/// for query strings, parents, absolute links and anything else that is
/// not a plain name.
fn listed_name(href: &str) -> Option<(&str, bool)> {
    let href = href.split(['?', '#']).next().unwrap_or_default();
    let (name, is_dir) = href.strip_suffix('/').map_or((href, false), |name| (name, true));
    let plain = (1..=255).contains(&name.len())
        && !name.starts_with('.')
        && !name.contains("..")
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'+' | b'~'));
    plain.then_some((name, is_dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template(name: &str, snapshot: &str) -> Template {
        Template::new(name, snapshot).unwrap_or_else(|| panic!("{name} carries {snapshot}"))
    }

    #[test]
    fn every_embedded_pin_fits_its_layout() {
        for (alias, entry) in Catalog::embedded().entries() {
            let layout = Layout::of(&entry.distro).unwrap();
            for (arch, artifact) in &entry.arch {
                let pin = Pin::new(layout, *arch, &artifact.url, entry).unwrap();
                assert_eq!(pin.pinned.snapshot(), entry.snapshot, "{alias}");
                assert_eq!(pin.url(&pin.pinned, &entry.snapshot), artifact.url, "{alias}");
            }
        }
    }

    #[test]
    fn templates_vary_only_the_snapshot() {
        let fedora = template("Fedora-Cloud-Base-Generic-43-1.6.x86_64.qcow2", "43-1.6");
        assert_eq!(fedora.matches("Fedora-Cloud-Base-Generic-43-1.10.x86_64.qcow2").unwrap(), ["43", "1.10"]);
        for decoy in ["Fedora-Cloud-Base-Generic-43-1.6.x86_64.raw.xz", "Fedora-Cloud-Base-Generic-43-x.x86_64.qcow2"] {
            assert_eq!(fedora.matches(decoy), None, "{decoy}");
        }
        let alpine = template("nocloud_alpine-3.22.4-x86_64-uefi-cloudinit-r0.qcow2", "3.22.4-r0");
        assert_eq!(alpine.matches("nocloud_alpine-3.22.10-x86_64-uefi-cloudinit-r2.qcow2").unwrap(), ["3.22.10", "r2"]);
        let ubuntu = template("release-20250430", "20250430");
        assert_eq!(ubuntu.matches("release-20250501.1").unwrap(), ["20250501.1"]);
        assert_eq!(ubuntu.matches("release"), None);
        let debian = template("20260923-2610", "20260923-2610");
        assert_eq!(debian.matches("20261101-2700").unwrap(), ["20261101", "2700"]);
        assert_eq!(debian.matches("latest"), None);
        assert!(Template::new("debian-12-generic-amd64-daily.qcow2", "latest").is_none());
        assert!(Template::new("x-120260923.qcow2", "20260923").is_none(), "inside a longer number");
    }

    #[test]
    fn snapshots_compare_by_their_numbers() {
        let key = |s: &str| Candidate::new(s.split('-').map(str::to_owned).collect()).unwrap().key;
        assert!(key("43-1.10") > key("43-1.9"));
        assert!(key("20250501.1") > key("20250501"));
        assert!(key("3.22.10-r0") > key("3.22.9-r7"));
        assert!(key("20261101-999") > key("20260923-2610"));
        assert!(Candidate::new(vec!["99999999999999999999999".into()]).is_none());
    }

    #[test]
    fn listings_yield_plain_names_only() {
        let html = r#"<a href="?C=N;O=D">Name</a><a href="../">Parent</a><a href="/etc/">x</a>
            <a href="https://evil/20991231-1/">x</a><a href="a/../b/">x</a><a href="..">x</a>
            <a href="20261101-2700/">ok</a><a href="disk.qcow2?x=1">ok</a><a href="unterminated"#;
        let names: Vec<_> = hrefs(html).filter_map(listed_name).collect();
        assert_eq!(names, [("20261101-2700", true), ("disk.qcow2", false)]);
    }

    #[test]
    fn checksum_lines_in_both_styles() {
        let (a, b) = ("a".repeat(64), "B".repeat(64));
        let gnu = format!("{b}  other.qcow2\n{a} *disk.qcow2\n");
        let found = SumFormat::Gnu(Algorithm::Sha256).find(&gnu, "disk.qcow2").unwrap();
        assert_eq!(found.to_string(), format!("sha256:{a}"));
        let bsd = format!("# disk.qcow2: 10 bytes\nSHA256 (disk.qcow2) = {b}\r\nSHA256 (disk.qcow2.raw) = {a}\n");
        assert_eq!(SumFormat::Bsd.find(&bsd, "disk.qcow2").unwrap().hex(), b.to_lowercase());
        let twice = format!("{gnu}{b}  disk.qcow2\n");
        assert!(SumFormat::Gnu(Algorithm::Sha256).find(&twice, "disk.qcow2").unwrap_err().contains("more than once"));
        assert!(SumFormat::Gnu(Algorithm::Sha512).find(&gnu, "disk.qcow2").unwrap_err().contains("wrong length"));
        assert!(SumFormat::Bsd.find(&bsd, "none.qcow2").unwrap_err().contains("no checksum line"));
    }
}
