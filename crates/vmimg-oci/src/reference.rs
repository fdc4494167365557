//! Image references, normalized as Docker normalizes them.
//!
//! `[REGISTRY/]REPOSITORY[:TAG][@DIGEST]`. The first component is a registry
//! when it contains a `.` or a `:` or is `localhost` (so `localhost:5000/x`
//! and `127.0.0.1:5000/x` name local registries); otherwise the reference is
//! on Docker Hub, where a one-component repository lives under `library/`.
//! Without a tag or a digest the tag is `latest`. Repository components are
//! lowercase `[a-z0-9]` runs joined by `.`, `_`, `__` or `-`s; tags are
//! `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`; digests are `sha256:`/`sha512:` with
//! the right number of lowercase hex digits. Anything else is refused with
//! an error that says which part is wrong. Written here because the rules
//! are short, and a reference is untrusted input that also names paths.

use std::fmt;
use vmimg_fetch::Digest;

/// Docker Hub's name in references.
pub const DOCKER_HUB: &str = "docker.io";
/// Where Docker Hub's API answers.
pub(crate) const DOCKER_HUB_API: &str = "registry-1.docker.io";
/// The tag of a reference that names none.
pub const DEFAULT_TAG: &str = "latest";
/// The longest repository name accepted (as Distribution does).
const MAX_NAME: usize = 255;

/// A normalized image reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    registry: String,
    repository: String,
    tag: Option<String>,
    digest: Option<Digest>,
}

/// Why a reference was refused.
#[derive(Debug, thiserror::Error)]
#[error("invalid image reference {text:?}: {reason}")]
pub struct ReferenceError {
    text: String,
    reason: String,
}

impl Reference {
    /// Parses and normalizes `text`.
    pub fn parse(text: &str) -> Result<Reference, ReferenceError> {
        let refuse =
            |reason: &str| ReferenceError { text: text.chars().take(300).collect(), reason: reason.to_owned() };
        if text.is_empty() || text.len() > 2 * MAX_NAME || text.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(refuse("empty, too long, or holds spaces"));
        }
        let (rest, digest) = match text.split_once('@') {
            Some((rest, digest)) => (rest, Some(digest.parse::<Digest>().map_err(|e| refuse(&e.to_string()))?)),
            None => (text, None),
        };
        let (registry, path) = split_registry(rest);
        let (path, tag) = split_tag(path);
        check_registry(registry).map_err(|r| refuse(&r))?;
        let registry = normalize_registry(registry);
        let repository = match (&*registry, path.contains('/')) {
            (DOCKER_HUB, false) => format!("library/{path}"),
            _ => path.to_owned(),
        };
        check_repository(&repository).map_err(|r| refuse(&r))?;
        if let Some(tag) = tag {
            check_tag(tag).map_err(|r| refuse(&r))?;
        }
        let tag = tag.map(str::to_owned).or_else(|| digest.is_none().then(|| DEFAULT_TAG.to_owned()));
        Ok(Reference { registry, repository, tag, digest })
    }

    /// `docker.io`, `ghcr.io`, `localhost:5000`, `[::1]:5000`.
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// `library/alpine`, `o/r`.
    pub fn repository(&self) -> &str {
        &self.repository
    }

    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    pub fn digest(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }

    /// What to ask the registry's manifest endpoint for: the digest if
    /// there is one, else the tag.
    pub fn manifest_reference(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(digest), _) => digest.to_string(),
            (None, Some(tag)) => tag.clone(),
            (None, None) => DEFAULT_TAG.to_owned(),
        }
    }

    /// The same repository at `digest` (a manifest an index points to).
    pub fn at_digest(&self, digest: Digest) -> Reference {
        Reference { digest: Some(digest), ..self.clone() }
    }

    /// The same repository under `tag`.
    pub fn with_tag(&self, tag: &str) -> Reference {
        Reference { tag: Some(tag.to_owned()), digest: None, ..self.clone() }
    }

    /// The host the registry API answers on (Docker Hub's is not docker.io).
    pub fn api_host(&self) -> &str {
        match self.registry.as_str() {
            DOCKER_HUB => DOCKER_HUB_API,
            other => other,
        }
    }

    /// Whether the registry is on this machine (plain HTTP is then allowed).
    pub fn is_loopback(&self) -> bool {
        let host = host_of(&self.registry);
        host == "localhost"
            || host == "::1"
            || host.split('.').next() == Some("127") && host.parse::<std::net::Ipv4Addr>().is_ok()
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for Reference {
    type Err = ReferenceError;
    fn from_str(s: &str) -> Result<Reference, ReferenceError> {
        Reference::parse(s)
    }
}

/// A reference pinned to a manifest digest: unlike a [`Reference`], it
/// always has one, so what it names cannot move. Registries hand these out
/// ([`Registry::image`](crate::Registry::image)) for the manifest they
/// read; written and read (`Display`, `FromStr`, serde) as the reference
/// string, `REGISTRY/REPOSITORY[:TAG]@sha256:…`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Pinned {
    /// Always has a digest.
    reference: Reference,
}

impl Pinned {
    /// `reference` (its tag kept, for messages) at `digest`.
    pub fn new(reference: &Reference, digest: Digest) -> Pinned {
        Pinned { reference: reference.at_digest(digest) }
    }

    /// The manifest's digest.
    pub fn digest(&self) -> &Digest {
        self.reference.digest.as_ref().expect("a pinned reference has a digest")
    }

    pub fn reference(&self) -> &Reference {
        &self.reference
    }

    pub fn into_reference(self) -> Reference {
        self.reference
    }
}

impl TryFrom<Reference> for Pinned {
    type Error = ReferenceError;
    /// Fails for a reference without a digest.
    fn try_from(reference: Reference) -> Result<Pinned, ReferenceError> {
        match reference.digest {
            Some(_) => Ok(Pinned { reference }),
            None => Err(ReferenceError {
                text: reference.to_string(),
                reason: "not pinned: it names no digest (@sha256:…)".to_owned(),
            }),
        }
    }
}

impl fmt::Display for Pinned {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.reference.fmt(f)
    }
}

impl std::str::FromStr for Pinned {
    type Err = ReferenceError;
    fn from_str(s: &str) -> Result<Pinned, ReferenceError> {
        Reference::parse(s)?.try_into()
    }
}

impl TryFrom<String> for Pinned {
    type Error = ReferenceError;
    fn try_from(text: String) -> Result<Pinned, ReferenceError> {
        text.parse()
    }
}

impl From<Pinned> for String {
    fn from(pinned: Pinned) -> String {
        pinned.to_string()
    }
}

/// `host[:port]/path` → (Some(host[:port]), path) when the first component
/// names a registry.
fn split_registry(text: &str) -> (Option<&str>, &str) {
    match text.split_once('/') {
        Some((first, rest)) if first.contains(['.', ':']) || first == "localhost" => (Some(first), rest),
        _ => (None, text),
    }
}

/// `path[:tag]` (a colon after the last slash starts the tag).
fn split_tag(path: &str) -> (&str, Option<&str>) {
    let last = path.rfind('/').map_or(0, |i| i + 1);
    match path[last..].find(':') {
        Some(i) => (&path[..last + i], Some(&path[last + i + 1..])),
        None => (path, None),
    }
}

/// Host names are case-insensitive: a registry is named in lower case, so
/// that `R.example` and `r.example` are one registry to every lookup (its
/// hosts file, credentials, the signature policy).
fn normalize_registry(registry: Option<&str>) -> String {
    let registry = registry.map(str::to_ascii_lowercase);
    match registry.as_deref() {
        None | Some("index.docker.io") | Some("registry-1.docker.io") => DOCKER_HUB.to_owned(),
        Some(host) => host.to_owned(),
    }
}

/// The host of `host[:port]` or `[v6]:port`.
fn host_of(registry: &str) -> &str {
    if let Some(v6) = registry.strip_prefix('[') {
        return v6.split(']').next().unwrap_or(v6);
    }
    registry.rsplit_once(':').map_or(registry, |(host, _)| host)
}

fn check_registry(registry: Option<&str>) -> Result<(), String> {
    let Some(registry) = registry else { return Ok(()) };
    let (host, port) = match registry.strip_prefix('[') {
        Some(v6) => {
            let (addr, rest) = v6.split_once(']').ok_or("unclosed [ in the registry")?;
            addr.parse::<std::net::Ipv6Addr>().map_err(|_| format!("{addr:?} is not an IPv6 address"))?;
            (None, rest.strip_prefix(':'))
        }
        None => match registry.rsplit_once(':') {
            Some((host, port)) => (Some(host), Some(port)),
            None => (Some(registry), None),
        },
    };
    if let Some(host) = host {
        let label_ok = |l: &str| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if host.is_empty() || !host.split('.').all(label_ok) {
            return Err(format!("registry host {host:?} is not a host name"));
        }
    }
    if let Some(port) = port {
        port.parse::<u16>().map_err(|_| format!("registry port {port:?} is not a port number"))?;
    }
    Ok(())
}

fn check_repository(repository: &str) -> Result<(), String> {
    if repository.is_empty() || repository.len() > MAX_NAME {
        return Err(format!("a repository name is 1 to {MAX_NAME} characters"));
    }
    for component in repository.split('/') {
        if !is_path_component(component) {
            return Err(format!(
                "repository component {component:?} must be lowercase letters and digits, joined by '.', '_', '__' or '-'"
            ));
        }
    }
    Ok(())
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`
fn is_path_component(component: &str) -> bool {
    let bytes = component.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if !bytes.first().is_some_and(|&b| alnum(b)) || !bytes.last().is_some_and(|&b| alnum(b)) {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        if alnum(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !alnum(bytes[i]) {
            i += 1;
        }
        let separator = &component[start..i];
        let ok = matches!(separator, "." | "_" | "__") || separator.bytes().all(|b| b == b'-');
        if !ok {
            return false;
        }
    }
    true
}

fn check_tag(tag: &str) -> Result<(), String> {
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let bytes = tag.as_bytes();
    let ok =
        (1..=128).contains(&bytes.len()) && word(bytes[0]) && bytes.iter().all(|&b| word(b) || b == b'.' || b == b'-');
    if ok { Ok(()) } else { Err(format!("tag {tag:?} is not [A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}}")) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_as_docker_does() {
        let hex = "a".repeat(64);
        let table = [
            ("alpine", "docker.io/library/alpine:latest"),
            ("alpine:3.18", "docker.io/library/alpine:3.18"),
            ("library/alpine", "docker.io/library/alpine:latest"),
            ("docker.io/alpine", "docker.io/library/alpine:latest"),
            ("index.docker.io/library/alpine:edge", "docker.io/library/alpine:edge"),
            ("user/app:v1", "docker.io/user/app:v1"),
            ("ghcr.io/o/r:tag", "ghcr.io/o/r:tag"),
            ("ghcr.io/o/r/deeper/still", "ghcr.io/o/r/deeper/still:latest"),
            ("localhost/x", "localhost/x:latest"),
            ("localhost:5000/x:1", "localhost:5000/x:1"),
            ("127.0.0.1:5000/vm/debian:12", "127.0.0.1:5000/vm/debian:12"),
            ("[::1]:5000/x", "[::1]:5000/x:latest"),
            (
                "my-registry.example.com:443/a_b__c/d-e--f.g:T_1.0-rc",
                "my-registry.example.com:443/a_b__c/d-e--f.g:T_1.0-rc",
            ),
        ];
        for (input, expected) in table {
            assert_eq!(Reference::parse(input).unwrap().to_string(), expected, "{input}");
        }
        let pinned = Reference::parse(&format!("ghcr.io/o/r@sha256:{hex}")).unwrap();
        assert_eq!((pinned.tag(), pinned.manifest_reference()), (None, format!("sha256:{hex}")));
        let both = Reference::parse(&format!("alpine:3.18@sha256:{hex}")).unwrap();
        assert_eq!(both.to_string(), format!("docker.io/library/alpine:3.18@sha256:{hex}"));
        assert_eq!(both.manifest_reference(), format!("sha256:{hex}"), "the digest wins");
    }

    #[test]
    fn a_pinned_reference_always_has_its_digest() {
        let hex = "b".repeat(64);
        let digest: Digest = format!("sha256:{hex}").parse().unwrap();
        let tagged = Reference::parse("localhost:5000/vm/disk:v1").unwrap();
        let pinned = Pinned::new(&tagged, digest.clone());
        assert_eq!(pinned.digest(), &digest);
        let text = format!("localhost:5000/vm/disk:v1@sha256:{hex}");
        assert_eq!(pinned.to_string(), text);
        assert_eq!(text.parse::<Pinned>().unwrap(), pinned);
        let json = serde_json::to_string(&pinned).unwrap();
        assert_eq!(json, format!("\"{text}\""));
        assert_eq!(serde_json::from_str::<Pinned>(&json).unwrap(), pinned);
        let error = "localhost:5000/vm/disk:v1".parse::<Pinned>().unwrap_err().to_string();
        assert!(error.contains("not pinned"), "{error}");
        assert!(Pinned::try_from(tagged).is_err());
        assert!(serde_json::from_str::<Pinned>("\"alpine\"").is_err());
    }

    #[test]
    fn hosts_and_loopback() {
        let hub = Reference::parse("alpine").unwrap();
        assert_eq!((hub.api_host(), hub.is_loopback()), ("registry-1.docker.io", false));
        for local in ["localhost:5000/x", "127.0.0.1:5000/x", "127.9.9.9/x", "[::1]:5000/x", "localhost/x"] {
            assert!(Reference::parse(local).unwrap().is_loopback(), "{local}");
        }
        for remote in ["ghcr.io/x", "127.example.com/x", "10.0.0.1:5000/x"] {
            assert!(!Reference::parse(remote).unwrap().is_loopback(), "{remote}");
        }
    }

    #[test]
    fn refuses_bad_references_saying_why() {
        let table = [
            ("", "empty"),
            ("Alpine", "lowercase"),
            ("alpine:", "tag"),
            ("alpine:-x", "tag"),
            (&*format!("alpine:{}", "t".repeat(129)), "tag"),
            ("alpine@sha256:abc", "digest"),
            ("alpine@md5:abc", "digest"),
            ("a//b", "component"),
            ("a/../b", "component"),
            ("a/-b", "component"),
            ("a/b.", "component"),
            ("a___b", "component"),
            ("host:99999/x", "port"),
            ("host:port/x", "port"),
            ("bad_host.com/x", "host name"),
            ("[::g]:5000/x", "IPv6"),
            ("al pine", "spaces"),
            ("localhost:5000/", "repository"),
        ];
        for (input, why) in table {
            let err = Reference::parse(input).unwrap_err().to_string();
            assert!(err.contains(why), "{input:?}: {err}");
        }
    }
}
