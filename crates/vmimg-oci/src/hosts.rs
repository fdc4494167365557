//! Registry hosts as containerd configures them (`docs/hosts.md` of
//! containerd): a directory `DIR` holds `DIR/<host[:port]>/hosts.toml`
//! for each registry that needs one, and `DIR/_default/hosts.toml` for the
//! others. A file names the registry's own `server` and, as `[host."URL"]`
//! tables, the hosts to try before it (mirrors, pull-through caches), in
//! the order the file gives, each with what it may do (`capabilities`:
//! `pull`, `resolve`, `push`; all by default), the CAs it is trusted
//! through (`ca`), client certificates (`client`: a file holding both
//! certificate and key, or `[certificate, key]` pairs), `skip_verify`,
//! extra request headers (`[header]`), `override_path` (the URL's path is
//! the API root, not `<path>/v2`) and `dial_timeout`. The top level takes
//! the same keys for the server. A registry directory without
//! `hosts.toml` is read as Docker's `certs.d`: its `*.crt` files are CAs,
//! its `*.cert` files client certificates with the `*.key` of the same
//! name.
//!
//! [`HostsDir::hosts`] reads what applies to one registry, strictly: an
//! unknown key, a value of the wrong type, a URL that is not http or
//! https, or a capability vmimg does not know is an error naming the file,
//! as a mistyped key silently ignored would send a fleet's pulls to the
//! wrong place. Relative certificate paths are relative to the file's
//! directory.

use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::{Table, Value};

/// The directory hosts files are read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostsDir(pub PathBuf);

/// What a host may be asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// Blobs, and manifests by digest.
    pub pull: bool,
    /// Tags to manifests.
    pub resolve: bool,
    pub push: bool,
}

impl Capabilities {
    pub const ALL: Capabilities = Capabilities { pull: true, resolve: true, push: true };
}

/// One host to send a registry's requests to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    /// The API root: scheme, authority and path, `/v2` included
    /// (`https://mirror.example:5000/v2`).
    pub api: String,
    pub capabilities: Capabilities,
    /// CA certificates (PEM files) the host's certificate may chain to,
    /// besides the system's.
    pub ca: Vec<PathBuf>,
    /// Client certificates: a PEM file, and the key's file when the
    /// certificate's does not hold it.
    pub client: Vec<(PathBuf, Option<PathBuf>)>,
    pub skip_verify: bool,
    /// Headers sent with every request, in order.
    pub headers: Vec<(String, String)>,
    pub dial_timeout: Option<Duration>,
    /// Whether it is the registry's own server rather than a mirror.
    pub is_server: bool,
}

/// The hosts of one registry, in the order to try them: mirrors first,
/// the server last.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hosts {
    pub hosts: Vec<Host>,
    /// The file they were read from, if any.
    pub file: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
#[error("{}: {message}", path.display())]
pub struct HostsError {
    pub path: PathBuf,
    pub message: String,
}

/// The largest hosts file read.
const MAX_FILE_BYTES: u64 = 1 << 20;

impl HostsDir {
    /// The hosts of `registry` (`docker.io`, `127.0.0.1:5000`), whose
    /// server is `server` (`https://registry-1.docker.io`) unless its file
    /// says otherwise.
    pub fn hosts(&self, registry: &str, server: &str) -> Result<Hosts, HostsError> {
        let own = self.0.join(registry);
        for dir in [&own, &self.0.join("_default")] {
            let file = dir.join("hosts.toml");
            if file.exists() {
                let text = read_bounded(&file)?;
                let hosts = parse(&text, server, dir).map_err(|message| HostsError { path: file.clone(), message })?;
                return Ok(Hosts { hosts, file: Some(file) });
            }
        }
        let mut hosts = Hosts::server_only(server)?;
        if own.is_dir() {
            docker_certs(&own, &mut hosts.hosts[0])?;
        }
        Ok(hosts)
    }
}

impl Hosts {
    /// The registry's own server at `server` alone, with no settings.
    pub fn server_only(server: &str) -> Result<Hosts, HostsError> {
        let api = api_root(server, false).map_err(|message| HostsError { path: PathBuf::from(server), message })?;
        Ok(Hosts { hosts: vec![plain_host(api, true)], file: None })
    }
}

fn plain_host(api: String, is_server: bool) -> Host {
    Host {
        api,
        capabilities: Capabilities::ALL,
        ca: Vec::new(),
        client: Vec::new(),
        skip_verify: false,
        headers: Vec::new(),
        dial_timeout: None,
        is_server,
    }
}

fn read_bounded(path: &Path) -> Result<String, HostsError> {
    let error = |message: String| HostsError { path: path.to_owned(), message };
    let meta = std::fs::metadata(path).map_err(|e| error(e.to_string()))?;
    if meta.len() > MAX_FILE_BYTES {
        return Err(error(format!("{} bytes, more than a hosts file of {MAX_FILE_BYTES}", meta.len())));
    }
    std::fs::read_to_string(path).map_err(|e| error(e.to_string()))
}

/// The keys a host table (or the top level, for the server) may hold.
const HOST_KEYS: [&str; 7] = ["capabilities", "ca", "client", "skip_verify", "header", "override_path", "dial_timeout"];

/// The hosts a file says, mirrors in order, the server last.
fn parse(text: &str, default_server: &str, dir: &Path) -> Result<Vec<Host>, String> {
    let table: Table = text.parse().map_err(|e: toml::de::Error| e.to_string())?;
    for key in table.keys() {
        if key != "server" && key != "host" && !HOST_KEYS.contains(&key.as_str()) {
            return Err(format!("unknown key `{key}`"));
        }
    }
    let server = match table.get("server") {
        None => default_server.to_owned(),
        Some(Value::String(url)) => url.clone(),
        Some(_) => return Err("`server` must be a URL string".into()),
    };
    let mut hosts = Vec::new();
    if let Some(entries) = table.get("host") {
        let entries = entries.as_table().ok_or("`host` must be tables: [host.\"URL\"]")?;
        for (url, entry) in entries {
            let entry = entry.as_table().ok_or_else(|| format!("host {url}: must be a table"))?;
            hosts.push(host(url, entry, dir, false).map_err(|e| format!("host {url}: {e}"))?);
        }
    }
    let mut top = table.clone();
    top.retain(|key, _| HOST_KEYS.contains(&key));
    hosts.push(host(&server, &top, dir, true).map_err(|e| format!("server {server}: {e}"))?);
    Ok(hosts)
}

fn host(url: &str, entry: &Table, dir: &Path, is_server: bool) -> Result<Host, String> {
    if let Some(key) = entry.keys().find(|key| !HOST_KEYS.contains(&key.as_str())) {
        return Err(format!("unknown key `{key}`"));
    }
    let flag = |key: &str| match entry.get(key) {
        None => Ok(false),
        Some(Value::Boolean(value)) => Ok(*value),
        Some(_) => Err(format!("`{key}` must be true or false")),
    };
    let mut host = plain_host(api_root(url, flag("override_path")?)?, is_server);
    host.skip_verify = flag("skip_verify")?;
    if let Some(capabilities) = entry.get("capabilities") {
        host.capabilities = parse_capabilities(capabilities)?;
    }
    if let Some(ca) = entry.get("ca") {
        host.ca = strings(ca, "ca")?.into_iter().map(|path| dir.join(path)).collect();
    }
    if let Some(client) = entry.get("client") {
        host.client = client_pairs(client)?
            .into_iter()
            .map(|(cert, key)| (dir.join(cert), key.map(|key| dir.join(key))))
            .collect();
    }
    if let Some(header) = entry.get("header") {
        let header = header.as_table().ok_or("`header` must be a table of names and values")?;
        for (name, values) in header {
            for value in strings(values, "a header's value")? {
                host.headers.push((name.clone(), value));
            }
        }
    }
    if let Some(timeout) = entry.get("dial_timeout") {
        let text = timeout.as_str().ok_or("`dial_timeout` must be a duration such as \"5s\"")?;
        host.dial_timeout = Some(humantime::parse_duration(text).map_err(|e| format!("`dial_timeout`: {e}"))?);
    }
    Ok(host)
}

/// The API root of a host URL: `https://` when no scheme is given, and
/// `/v2` after its path unless the path is the root (`override_path`).
fn api_root(url: &str, override_path: bool) -> Result<String, String> {
    let with_scheme = match url.split_once("://") {
        Some(("http" | "https", _)) => url.to_owned(),
        Some((scheme, _)) => return Err(format!("the scheme {scheme}: only http and https")),
        None => format!("https://{url}"),
    };
    let (scheme, rest) = with_scheme.split_once("://").expect("a scheme");
    let (authority, path) = rest.split_once('/').map_or((rest, ""), |(a, p)| (a, p));
    if authority.is_empty() || authority.contains(['?', '#', '@', ' ']) {
        return Err(format!("{url}: not a host URL"));
    }
    let path = path.trim_end_matches('/');
    let path = match (override_path, path.is_empty()) {
        (true, _) => format!("/{path}"),
        (false, true) => "/v2".to_owned(),
        (false, false) if path == "v2" || path.ends_with("/v2") => format!("/{path}"),
        (false, false) => format!("/{path}/v2"),
    };
    Ok(format!("{scheme}://{authority}{}", path.trim_end_matches('/')))
}

fn parse_capabilities(value: &Value) -> Result<Capabilities, String> {
    let mut capabilities = Capabilities { pull: false, resolve: false, push: false };
    for name in strings(value, "capabilities")? {
        match name.as_str() {
            "pull" => capabilities.pull = true,
            "resolve" => capabilities.resolve = true,
            "push" => capabilities.push = true,
            other => return Err(format!("the capability `{other}`: pull, resolve or push")),
        }
    }
    Ok(capabilities)
}

/// A string, or an array of strings.
fn strings(value: &Value, what: &str) -> Result<Vec<String>, String> {
    let one = |value: &Value| value.as_str().map(str::to_owned).ok_or_else(|| format!("{what} must be strings"));
    match value {
        Value::Array(values) => values.iter().map(one).collect(),
        value => Ok(vec![one(value)?]),
    }
}

/// `client`: a file, files, or `[certificate, key]` pairs (as containerd
/// reads it: an array's strings are files that hold both).
fn client_pairs(value: &Value) -> Result<Vec<(String, Option<String>)>, String> {
    const WHAT: &str = "`client` must be a file, files, or [certificate, key] pairs";
    let values = match value {
        Value::Array(values) => values.clone(),
        value => vec![value.clone()],
    };
    values
        .iter()
        .map(|value| match value {
            Value::String(file) => Ok((file.clone(), None)),
            Value::Array(pair) => match &pair[..] {
                [Value::String(cert), Value::String(key)] => Ok((cert.clone(), Some(key.clone()))),
                [Value::String(cert)] => Ok((cert.clone(), None)),
                _ => Err(WHAT.to_owned()),
            },
            _ => Err(WHAT.to_owned()),
        })
        .collect()
}

/// Docker's `certs.d` layout: `*.crt` CAs, `*.cert` with their `*.key`.
fn docker_certs(dir: &Path, host: &mut Host) -> Result<(), HostsError> {
    let error = |message: String| HostsError { path: dir.to_owned(), message };
    let mut names: Vec<PathBuf> =
        std::fs::read_dir(dir).map_err(|e| error(e.to_string()))?.flatten().map(|e| e.path()).collect();
    names.sort();
    for path in names {
        match path.extension().and_then(|e| e.to_str()) {
            Some("crt") => host.ca.push(path),
            Some("cert") => {
                let key = path.with_extension("key");
                if !key.exists() {
                    return Err(error(format!("{}: no {} beside it", path.display(), key.display())));
                }
                host.client.push((path, Some(key)));
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir_with(registry: &str, text: &str) -> (tempfile::TempDir, HostsDir) {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tmp.path().join(registry)).unwrap();
        std::fs::write(tmp.path().join(registry).join("hosts.toml"), text).unwrap();
        let dir = HostsDir(tmp.path().to_owned());
        (tmp, dir)
    }

    #[test]
    fn mirrors_come_in_file_order_before_the_server() {
        let text = r#"
server = "https://registry.example"

[host."https://mirror-b.example:5000"]
  capabilities = ["pull", "resolve"]
  ca = "ca.pem"
  client = [["client.pem", "client.key"]]
  [host."https://mirror-b.example:5000".header]
    x-fleet = ["a", "b"]

[host."http://127.0.0.2:5000"]
  capabilities = ["pull"]
  skip_verify = true

[host."https://cache.example/registry"]
  override_path = true
  dial_timeout = "500ms"
"#;
        let (tmp, dir) = dir_with("registry.example", text);
        let hosts = dir.hosts("registry.example", "https://registry.example").unwrap();
        let apis: Vec<&str> = hosts.hosts.iter().map(|h| h.api.as_str()).collect();
        assert_eq!(
            apis,
            [
                "https://mirror-b.example:5000/v2",
                "http://127.0.0.2:5000/v2",
                "https://cache.example/registry",
                "https://registry.example/v2"
            ]
        );
        let first = &hosts.hosts[0];
        assert_eq!(first.capabilities, Capabilities { pull: true, resolve: true, push: false });
        let base = tmp.path().join("registry.example");
        assert_eq!(first.ca, [base.join("ca.pem")]);
        assert_eq!(first.client, [(base.join("client.pem"), Some(base.join("client.key")))]);
        assert_eq!(first.headers, [("x-fleet".into(), "a".into()), ("x-fleet".into(), "b".into())]);
        assert!(hosts.hosts[1].skip_verify && !hosts.hosts[1].capabilities.resolve);
        assert_eq!(hosts.hosts[2].dial_timeout, Some(Duration::from_millis(500)));
        assert!(hosts.hosts[3].is_server && hosts.hosts[3].capabilities == Capabilities::ALL);
        assert!(!hosts.hosts[..3].iter().any(|h| h.is_server));
    }

    #[test]
    fn the_default_file_serves_registries_without_their_own() {
        let (_tmp, dir) = dir_with("_default", "[host.\"mirror.example\"]\n");
        let hosts = dir.hosts("docker.io", "https://registry-1.docker.io").unwrap();
        let apis: Vec<&str> = hosts.hosts.iter().map(|h| h.api.as_str()).collect();
        assert_eq!(apis, ["https://mirror.example/v2", "https://registry-1.docker.io/v2"]);
        let none =
            HostsDir(PathBuf::from("/nonexistent/vmimg")).hosts("127.0.0.1:5000", "http://127.0.0.1:5000").unwrap();
        assert_eq!(none.hosts.len(), 1);
        assert_eq!(none.hosts[0].api, "http://127.0.0.1:5000/v2");
        assert!(none.file.is_none());
    }

    #[test]
    fn dockers_certs_d_layout_is_read_without_a_hosts_file() {
        let tmp = tempfile::tempdir().unwrap();
        let own = tmp.path().join("registry.example:443");
        std::fs::create_dir_all(&own).unwrap();
        for name in ["ca.crt", "client.cert", "client.key", "notes.txt"] {
            std::fs::write(own.join(name), "x").unwrap();
        }
        let hosts =
            HostsDir(tmp.path().to_owned()).hosts("registry.example:443", "https://registry.example:443").unwrap();
        assert_eq!(hosts.hosts[0].ca, [own.join("ca.crt")]);
        assert_eq!(hosts.hosts[0].client, [(own.join("client.cert"), Some(own.join("client.key")))]);
        std::fs::remove_file(own.join("client.key")).unwrap();
        let error =
            HostsDir(tmp.path().to_owned()).hosts("registry.example:443", "https://registry.example:443").unwrap_err();
        assert!(error.to_string().contains("client.key"), "{error}");
    }

    #[test]
    fn mistakes_are_refused_with_the_file_named() {
        for (text, says) in [
            ("servr = \"https://x\"", "unknown key `servr`"),
            ("[host.\"https://m\"]\ncapabilites = [\"pull\"]", "unknown key `capabilites`"),
            ("[host.\"https://m\"]\ncapabilities = [\"fetch\"]", "the capability `fetch`"),
            ("[host.\"ftp://m\"]", "the scheme ftp"),
            ("[host.\"https://m\"]\nskip_verify = \"yes\"", "`skip_verify` must be true or false"),
            ("[host.\"https://m\"]\nclient = [[\"a\", \"b\", \"c\"]]", "`client` must be"),
            ("server = 5", "`server` must be a URL string"),
            ("[host.\"https://m\"]\ndial_timeout = \"soon\"", "`dial_timeout`"),
            ("not toml at all [", "expected"),
        ] {
            let (_tmp, dir) = dir_with("r.example", text);
            let error = dir.hosts("r.example", "https://r.example").unwrap_err();
            assert!(error.to_string().contains("hosts.toml") && error.to_string().contains(says), "{text}: {error}");
        }
    }

    #[test]
    fn api_roots_follow_containerds_rules() {
        assert_eq!(api_root("mirror:5000", false).unwrap(), "https://mirror:5000/v2");
        assert_eq!(api_root("http://m/", false).unwrap(), "http://m/v2");
        assert_eq!(api_root("https://m/v2", false).unwrap(), "https://m/v2");
        assert_eq!(api_root("https://m/prefix", false).unwrap(), "https://m/prefix/v2");
        assert_eq!(api_root("https://m/foov2", false).unwrap(), "https://m/foov2/v2");
        assert_eq!(api_root("https://m/prefix/", true).unwrap(), "https://m/prefix");
        assert!(api_root("https://user@m", false).is_err());
    }
}
