//! Who vmimg is to a registry: credentials and the challenges that ask
//! for them.
//!
//! Credentials come, first found first, from the caller
//! ([`RegistryOptions::credentials`](crate::RegistryOptions::credentials)),
//! then from Docker's `config.json` (`$DOCKER_CONFIG/config.json`, else
//! `~/.docker/config.json`): its `auths` entries, keyed by registry host
//! (Docker Hub's as `https://index.docker.io/v1/`), with `auth` (base64
//! `user:password`) or `username` and `password`. Credential helpers
//! (`credsStore`, `credHelpers`) are not run: vmimg executes nothing a
//! config file names. Without credentials, requests are anonymous.
//!
//! A `401` carries `WWW-Authenticate`: `Bearer realm=…,service=…` sends
//! vmimg to the realm for a token scoped to one repository (Distribution's
//! token auth), with the credentials as Basic when it has them; `Basic`
//! asks for the credentials on every request.

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

/// Credentials by registry host, from Docker's config.json.
#[derive(Debug, Default, Clone)]
pub struct DockerConfig {
    auths: HashMap<String, Credentials>,
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
        struct File {
            #[serde(default)]
            auths: HashMap<String, Entry>,
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
        Ok(DockerConfig { auths })
    }

    /// The credentials for `registry` (a host, with its port if any).
    pub fn get(&self, registry: &str) -> Option<&Credentials> {
        self.auths.get(registry)
    }
}

/// `user:password`, base64-encoded.
fn decode_basic(auth: &str) -> Result<Credentials, String> {
    let bytes = base64::engine::general_purpose::STANDARD.decode(auth.trim()).map_err(|e| e.to_string())?;
    let text = String::from_utf8(bytes).map_err(|_| "auth is not UTF-8".to_owned())?;
    let (username, password) = text.split_once(':').ok_or("auth is not user:password")?;
    Ok(Credentials { username: username.to_owned(), password: password.to_owned() })
}

/// The registry host a config key names: `https://index.docker.io/v1/` is
/// Docker Hub (`docker.io`); a URL's scheme and path are dropped.
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
            }, "credsStore": "desktop"}"#,
        )
        .unwrap();
        let hub = config.get("docker.io").unwrap();
        assert_eq!((hub.username.as_str(), hub.password.as_str()), ("user", "pass:word"));
        assert_eq!(config.get("127.0.0.1:5000").unwrap().username, "u");
        assert!(config.get("ghcr.io").is_none());
        assert!(DockerConfig::parse(r#"{"auths": {"x": {"auth": "!!!"}}}"#).is_err());
        assert!(
            DockerConfig::parse(r#"{"auths": {"x": {"auth": "bm9jb2xvbg=="}}}"#).unwrap_err().contains("user:password")
        );
        assert!(!format!("{hub:?}").contains("pass:word"), "passwords never reach Debug output");
    }
}
