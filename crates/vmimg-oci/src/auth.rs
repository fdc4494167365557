//! Who vmimg is to a registry: credentials and the challenges that ask
//! for them.
//!
//! Credentials come from the caller
//! ([`RegistryOptions::credentials`](crate::RegistryOptions::credentials))
//! when it gives them, else from Docker's `config.json`
//! (`$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`) in docker's
//! order: the credential helper `credHelpers` names for the registry host,
//! else the default helper `credsStore`, else the `auths` entry, with
//! `auth` (base64 `user:password`) or `username` and `password`. Keys name
//! registry hosts (Docker Hub's `https://index.docker.io/v1/`). A helper
//! (see `helper`) is asked once per registry, only when the registry asks
//! for credentials; when it has none, requests stay anonymous, as they do
//! without credentials.
//!
//! A `401` carries `WWW-Authenticate`: `Bearer realm=…,service=…` sends
//! vmimg to the realm for a token scoped to one repository (Distribution's
//! token auth), with the credentials as Basic when it has them, or, for a
//! helper's identity token, as an OAuth2 refresh-token grant (a form
//! `POST`, as docker sends it); `Basic` asks for the credentials on every
//! request (an identity token cannot answer it).

use base64::Engine;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// A user name and password (or token) for a registry.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials {{ username: {:?}, password: <hidden> }}", self.username)
    }
}

/// What vmimg proves itself with to a registry.
#[derive(Clone)]
pub(crate) enum Login {
    Password(Credentials),
    /// An identity token (a credential helper's user `<token>`), which the
    /// token realm exchanges for access tokens.
    IdentityToken(String),
}

impl std::fmt::Debug for Login {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Login::Password(credentials) => credentials.fmt(f),
            Login::IdentityToken(_) => f.write_str("IdentityToken(<hidden>)"),
        }
    }
}

/// Docker Hub's key in Docker's config.json, and the server URL its
/// credential helpers are asked for.
const DOCKER_HUB_SERVER: &str = "https://index.docker.io/v1/";

/// The server URL a credential helper is asked for `registry`'s credentials.
pub(crate) fn helper_server(registry: &str) -> &str {
    if registry == crate::DOCKER_HUB { DOCKER_HUB_SERVER } else { registry }
}

/// Where Docker's config.json says a registry's credentials are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialSource<'a> {
    /// The credential helper `docker-credential-NAME` keeps them.
    Helper(&'a str),
    /// The `auths` entry, if there is one.
    File(Option<&'a Credentials>),
}

/// Credentials and credential helpers by registry host, from Docker's
/// config.json.
#[derive(Debug, Default, Clone)]
pub struct DockerConfig {
    auths: HashMap<String, Credentials>,
    creds_store: Option<String>,
    cred_helpers: HashMap<String, String>,
}

/// Docker's config.json larger than this is refused.
const MAX_CONFIG_BYTES: u64 = 1 << 20;

impl DockerConfig {
    /// `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`.
    pub fn default_path() -> Option<PathBuf> {
        let env = |name| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
        env("DOCKER_CONFIG").or_else(|| env("HOME").map(|h| h.join(".docker"))).map(|d| d.join("config.json"))
    }

    /// Reads the file at `path`; a missing file is an empty config.
    pub fn load(path: &Path) -> Result<DockerConfig, String> {
        let text = match std::fs::metadata(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(DockerConfig::default()),
            Err(e) => return Err(format!("{}: {e}", path.display())),
            Ok(meta) if meta.len() > MAX_CONFIG_BYTES => {
                return Err(format!("{}: larger than {MAX_CONFIG_BYTES} bytes", path.display()));
            }
            Ok(_) => std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?,
        };
        Self::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn parse(text: &str) -> Result<DockerConfig, String> {
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct File {
            #[serde(default)]
            auths: HashMap<String, Entry>,
            creds_store: Option<String>,
            #[serde(default)]
            cred_helpers: HashMap<String, String>,
        }
        #[derive(serde::Deserialize)]
        struct Entry {
            auth: Option<String>,
            username: Option<String>,
            password: Option<String>,
        }
        let file: File = serde_json::from_str(text).map_err(|e| e.to_string())?;
        let mut auths = HashMap::new();
        for (key, entry) in file.auths {
            let credentials = match (entry.auth, entry.username, entry.password) {
                (Some(auth), _, _) if !auth.is_empty() => decode_basic(&auth).map_err(|e| format!("{key}: {e}"))?,
                (_, Some(username), Some(password)) => Credentials { username, password },
                _ => continue,
            };
            auths.insert(registry_host(&key), credentials);
        }
        let cred_helpers = file.cred_helpers.into_iter().map(|(key, name)| (registry_host(&key), name)).collect();
        Ok(DockerConfig { auths, creds_store: file.creds_store, cred_helpers })
    }

    /// Where the credentials for `registry` (a host, with its port if any)
    /// are, as docker decides: `credHelpers`' helper for it, else
    /// `credsStore`, else `auths`. A helper named `""` is none.
    pub fn source(&self, registry: &str) -> CredentialSource<'_> {
        let helper = self.cred_helpers.get(registry).or(self.creds_store.as_ref());
        match helper.filter(|name| !name.is_empty()) {
            Some(name) => CredentialSource::Helper(name),
            None => CredentialSource::File(self.auths.get(registry)),
        }
    }
}

/// `user:password`, base64-encoded.
fn decode_basic(auth: &str) -> Result<Credentials, String> {
    let bytes = base64::engine::general_purpose::STANDARD.decode(auth.trim()).map_err(|e| e.to_string())?;
    let text = String::from_utf8(bytes).map_err(|_| "auth is not UTF-8".to_owned())?;
    let (username, password) = text.split_once(':').ok_or("auth is not user:password")?;
    Ok(Credentials { username: username.to_owned(), password: password.to_owned() })
}

/// The registry host a config key names: `https://index.docker.io/v1/` (or
/// `index.docker.io`) is Docker Hub (`docker.io`); a URL's scheme and path
/// are dropped.
fn registry_host(key: &str) -> String {
    let host = key.split_once("://").map_or(key, |(_, rest)| rest);
    let host = host.split('/').next().unwrap_or(host);
    match host {
        "index.docker.io" | "registry-1.docker.io" => crate::DOCKER_HUB.to_owned(),
        other => other.to_owned(),
    }
}

/// What a `401` asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    Basic,
    Bearer { realm: String, service: Option<String> },
}

impl Challenge {
    /// Parses a `WWW-Authenticate` value; None for schemes vmimg does not speak.
    pub fn parse(header: &str) -> Option<Challenge> {
        let (scheme, params) = header.trim().split_once(' ').unwrap_or((header.trim(), ""));
        if scheme.eq_ignore_ascii_case("basic") {
            return Some(Challenge::Basic);
        }
        if !scheme.eq_ignore_ascii_case("bearer") {
            return None;
        }
        let params = parse_params(params);
        let realm = params.get("realm")?.clone();
        Some(Challenge::Bearer { realm, service: params.get("service").cloned() })
    }
}

/// `key="value", key=value` pairs (quoted values may hold commas).
fn parse_params(text: &str) -> HashMap<String, String> {
    let mut params = HashMap::new();
    let mut rest = text.trim();
    while !rest.is_empty() {
        let Some((key, after)) = rest.split_once('=') else { break };
        let key = key.trim().trim_start_matches(',').trim().to_ascii_lowercase();
        let (value, after) = if let Some(quoted) = after.strip_prefix('"') {
            match quoted.split_once('"') {
                Some((value, after)) => (value.to_owned(), after),
                None => (quoted.to_owned(), ""),
            }
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (after[..end].trim().to_owned(), &after[end..])
        };
        params.insert(key, value);
        rest = after.trim_start().trim_start_matches(',').trim_start();
    }
    params
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges() {
        assert_eq!(
            Challenge::parse(
                r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull""#
            ),
            Some(Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into())
            })
        );
        assert_eq!(
            Challenge::parse(r#"bearer realm="http://127.0.0.1:1/t,x", service=reg"#),
            Some(Challenge::Bearer { realm: "http://127.0.0.1:1/t,x".into(), service: Some("reg".into()) })
        );
        assert_eq!(Challenge::parse(r#"Basic realm="registry""#), Some(Challenge::Basic));
        assert_eq!(Challenge::parse("Bearer service=x"), None, "no realm");
        assert_eq!(Challenge::parse("Negotiate abc"), None);
    }

    #[test]
    fn docker_config() {
        let config = DockerConfig::parse(
            r#"{"auths": {
                "https://index.docker.io/v1/": {"auth": "dXNlcjpwYXNzOndvcmQ="},
                "127.0.0.1:5000": {"username": "u", "password": "p"},
                "ghcr.io": {}
            }}"#,
        )
        .unwrap();
        let stored = |registry| match config.source(registry) {
            CredentialSource::File(found) => found.cloned(),
            helper => panic!("{registry}: the file, not {helper:?}"),
        };
        let hub = stored("docker.io").unwrap();
        assert_eq!((hub.username.as_str(), hub.password.as_str()), ("user", "pass:word"));
        assert_eq!(stored("127.0.0.1:5000").unwrap().username, "u");
        assert!(stored("ghcr.io").is_none());
        assert!(DockerConfig::parse(r#"{"auths": {"x": {"auth": "!!!"}}}"#).is_err());
        assert!(
            DockerConfig::parse(r#"{"auths": {"x": {"auth": "bm9jb2xvbg=="}}}"#).unwrap_err().contains("user:password")
        );
        assert!(!format!("{hub:?}").contains("pass:word"), "passwords never reach Debug output");
    }

    #[test]
    fn helpers_come_first_as_docker_orders_them() {
        let config = DockerConfig::parse(
            r#"{"auths": {"127.0.0.1:5000": {"auth": "dTpw"}, "ghcr.io": {"auth": "dTpw"}},
                "credsStore": "desktop",
                "credHelpers": {"127.0.0.1:5000": "pass", "https://index.docker.io/v1/": "hub", "ghcr.io": ""}}"#,
        )
        .unwrap();
        assert_eq!(config.source("127.0.0.1:5000"), CredentialSource::Helper("pass"), "credHelpers first");
        assert_eq!(config.source("docker.io"), CredentialSource::Helper("hub"), "Docker Hub's key");
        assert_eq!(config.source("quay.io"), CredentialSource::Helper("desktop"), "then credsStore");
        assert!(matches!(config.source("ghcr.io"), CredentialSource::File(Some(_))), "an empty helper is none");
        let plain = DockerConfig::parse(r#"{"auths": {}, "credsStore": ""}"#).unwrap();
        assert_eq!(plain.source("quay.io"), CredentialSource::File(None));
        assert_eq!(helper_server("docker.io"), "https://index.docker.io/v1/");
        assert_eq!(helper_server("127.0.0.1:5000"), "127.0.0.1:5000");
    }
}
