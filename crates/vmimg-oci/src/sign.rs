//! Image signatures in cosign's key-based format (sigstore's
//! `specs/SIGNATURE_SPEC.md`): the signature of the image whose manifest
//! has digest `sha256:HEX` lives in the same repository under the tag
//! `sha256-HEX.sig`, an OCI image manifest whose every layer is a
//! simple-signing payload (`application/vnd.dev.cosign.simplesigning.v1+json`,
//! a JSON document naming the image's reference and manifest digest) with
//! the ECDSA P-256 / SHA-256 signature of that payload, DER-encoded and
//! base64'd, in the layer's `dev.cosignproject.cosign/signature`
//! annotation. Keys are PEM: a public key as SPKI (`PUBLIC KEY`, what
//! `cosign public-key` and `openssl ec -pubout` write), a private key as
//! PKCS#8 (`PRIVATE KEY`) or SEC1 (`EC PRIVATE KEY`), unencrypted, as
//! `openssl` writes them. The cryptography is RustCrypto's `p256`.
//!
//! What is checked of a signature, before any byte of the image is used:
//! the payload is at most 64 KiB and of the declared digest (the blob
//! read is bounded and hashed), its signature verifies under one of the
//! keys, its `type` is cosign's, and the manifest digest it names is the
//! one pulled. An image with no such layer is refused, whatever else its
//! signature manifest holds.

use base64::Engine;
use p256::ecdsa::signature::{Signer, Verifier};
use p256::ecdsa::{Signature, SigningKey, VerifyingKey};
use p256::pkcs8::{DecodePrivateKey, DecodePublicKey};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use vmimg_fetch::Digest;

/// The media type of a signature layer.
pub const SIMPLE_SIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
/// The layer annotation holding the base64 signature.
pub const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
/// The payload's `critical.type`.
pub const SIGNATURE_TYPE: &str = "cosign container image signature";
/// A payload larger than this is not read.
pub const MAX_PAYLOAD_BYTES: u64 = 64 << 10;
/// A key file larger than this is not read.
const MAX_KEY_BYTES: u64 = 64 << 10;

#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error("cannot read the key {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{}: {message}", path.display())]
    Key { path: PathBuf, message: String },
    #[error("a signature payload: {0}")]
    Payload(String),
}

/// The tag the signature of the image with manifest `digest` lives under.
pub fn signature_tag(digest: &Digest) -> String {
    format!("{}-{}.sig", digest.algorithm().name(), digest.hex())
}

/// The simple-signing payload cosign signs for the image `docker_reference`
/// (`registry/repository`) whose manifest has `digest`.
pub fn payload(docker_reference: &str, digest: &Digest) -> Vec<u8> {
    let document = json!({
        "critical": {
            "identity": { "docker-reference": docker_reference },
            "image": { "docker-manifest-digest": digest.to_string() },
            "type": SIGNATURE_TYPE,
        },
        "optional": null,
    });
    serde_json::to_vec(&document).expect("a payload serializes")
}

/// The manifest digest a payload signs, if it is cosign's: its
/// `critical.type` and `critical.image.docker-manifest-digest`.
pub fn signed_digest(payload: &[u8]) -> Result<Digest, SignError> {
    let document: Value = serde_json::from_slice(payload).map_err(|e| SignError::Payload(e.to_string()))?;
    let critical = &document["critical"];
    if critical["type"] != SIGNATURE_TYPE {
        return Err(SignError::Payload(format!("its type is {}, not {SIGNATURE_TYPE:?}", critical["type"])));
    }
    let digest = critical["image"]["docker-manifest-digest"]
        .as_str()
        .ok_or_else(|| SignError::Payload("no critical.image.docker-manifest-digest".into()))?;
    digest.parse().map_err(|e| SignError::Payload(format!("docker-manifest-digest: {e}")))
}

/// A private key to sign with.
pub struct SignKey(SigningKey);

impl SignKey {
    /// The key in PEM file `path`: PKCS#8 or SEC1, unencrypted, P-256.
    pub fn from_file(path: &Path) -> Result<SignKey, SignError> {
        let text = read_key(path)?;
        let key = SigningKey::from_pkcs8_pem(&text)
            .ok()
            .or_else(|| p256::SecretKey::from_sec1_pem(&text).ok().map(SigningKey::from))
            .ok_or_else(|| SignError::Key {
                path: path.to_owned(),
                message: "not an unencrypted ECDSA P-256 private key in PEM (PKCS#8 `PRIVATE KEY` or SEC1 \
                          `EC PRIVATE KEY`; `openssl ecparam -name prime256v1 -genkey` makes one)"
                    .into(),
            })?;
        Ok(SignKey(key))
    }

    /// The base64 DER signature of `payload` (ECDSA P-256 over its SHA-256).
    pub fn sign(&self, payload: &[u8]) -> String {
        let signature: Signature = self.0.sign(payload);
        base64::engine::general_purpose::STANDARD.encode(signature.to_der().as_bytes())
    }

    /// Its public half.
    pub fn public(&self) -> VerifyKey {
        VerifyKey(*self.0.verifying_key())
    }
}

/// A public key signatures are checked with.
#[derive(Clone, Debug)]
pub struct VerifyKey(VerifyingKey);

impl VerifyKey {
    /// The key in PEM file `path`: SPKI `PUBLIC KEY`, P-256.
    pub fn from_file(path: &Path) -> Result<VerifyKey, SignError> {
        let text = read_key(path)?;
        VerifyingKey::from_public_key_pem(&text).map(VerifyKey).map_err(|e| SignError::Key {
            path: path.to_owned(),
            message: format!("not an ECDSA P-256 public key in PEM (`PUBLIC KEY`): {e}"),
        })
    }

    /// Whether `signature` (base64 DER, as the annotation holds it) signs
    /// `payload` under this key.
    pub fn verifies(&self, payload: &[u8], signature: &str) -> bool {
        let Ok(der) = base64::engine::general_purpose::STANDARD.decode(signature.trim()) else { return false };
        let Ok(signature) = Signature::from_der(&der) else { return false };
        self.0.verify(payload, &signature).is_ok()
    }
}

/// Which keys must have signed the images of which repositories: rules
/// by scope, a registry (`registry.example:5000`) or a repository prefix
/// (`registry.example:5000/vm`), or `""` for every registry. The rule with
/// the longest scope that covers an image applies; with none, any image
/// is taken.
#[derive(Clone, Debug, Default)]
pub struct Policy {
    rules: Vec<(String, Vec<VerifyKey>)>,
}

impl Policy {
    /// Images under `scope` must be signed by one of `keys`.
    pub fn require(&mut self, scope: &str, keys: Vec<VerifyKey>) {
        let scope = canonical(scope.trim_end_matches('/'));
        match self.rules.iter_mut().find(|(s, _)| *s == scope) {
            Some((_, held)) => held.extend(keys),
            None => self.rules.push((scope, keys)),
        }
    }

    /// Adds `other`'s rules to these.
    pub fn extend(&mut self, other: Policy) {
        for (scope, keys) in other.rules {
            self.require(&scope, keys);
        }
    }

    /// The keys one of which must have signed the image in `repository`
    /// (`registry/repository`), if a rule covers it.
    pub fn keys_for(&self, repository: &str) -> Option<&[VerifyKey]> {
        let repository = canonical(repository);
        let repository = repository.as_str();
        let covers = |scope: &str| {
            scope.is_empty()
                || repository == scope
                || repository.strip_prefix(scope).is_some_and(|rest| rest.starts_with('/'))
        };
        let rule = self.rules.iter().filter(|(scope, _)| covers(scope)).max_by_key(|(scope, _)| scope.len())?;
        Some(&rule.1)
    }
}

/// `registry/repository` as rules compare it: the registry in lower case,
/// HTTPS's default port dropped (`R.example:443/vm` is `r.example/vm`).
fn canonical(scoped: &str) -> String {
    let (registry, rest) = scoped.split_once('/').map_or((scoped, None), |(r, rest)| (r, Some(rest)));
    let registry = registry.to_ascii_lowercase();
    let registry = registry.strip_suffix(":443").unwrap_or(&registry);
    match rest {
        Some(rest) => format!("{registry}/{rest}"),
        None => registry.to_owned(),
    }
}

fn read_key(path: &Path) -> Result<String, SignError> {
    let read = |source| SignError::Read { path: path.to_owned(), source };
    let meta = std::fs::metadata(path).map_err(read)?;
    if meta.len() > MAX_KEY_BYTES {
        return Err(SignError::Key { path: path.to_owned(), message: format!("{} bytes: not a key", meta.len()) });
    }
    std::fs::read_to_string(path).map_err(read)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(hex: char) -> Digest {
        format!("sha256:{}", hex.to_string().repeat(64)).parse().unwrap()
    }

    #[test]
    fn a_payload_names_what_it_signs_and_others_are_refused() {
        let payload = payload("127.0.0.1:5000/vm/disk", &digest('a'));
        assert_eq!(signed_digest(&payload).unwrap(), digest('a'));
        let text = String::from_utf8(payload).unwrap();
        assert!(text.contains("\"docker-reference\":\"127.0.0.1:5000/vm/disk\""), "{text}");
        for (bad, says) in [
            (&b"not json"[..], "expected"),
            (br#"{"critical":{"type":"other","image":{"docker-manifest-digest":"sha256:00"}}}"#, "its type"),
            (br#"{"critical":{"type":"cosign container image signature"}}"#, "no critical.image"),
        ] {
            let error = signed_digest(bad).unwrap_err().to_string();
            assert!(error.contains(says), "{error}");
        }
        assert_eq!(signature_tag(&digest('b')), format!("sha256-{}.sig", "b".repeat(64)));
    }

    #[test]
    fn what_one_key_signs_another_does_not_verify() {
        let dir = tempfile::tempdir().unwrap();
        let one = SignKey(SigningKey::from_bytes(&[1u8; 32].into()).unwrap());
        let other = SignKey(SigningKey::from_bytes(&[2u8; 32].into()).unwrap());
        let signature = one.sign(b"payload");
        assert!(one.public().verifies(b"payload", &signature));
        assert!(!one.public().verifies(b"payloaD", &signature));
        assert!(!other.public().verifies(b"payload", &signature));
        assert!(!one.public().verifies(b"payload", "not base64!"));
        std::fs::write(dir.path().join("junk.pem"), "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")
            .unwrap();
        let error = VerifyKey::from_file(&dir.path().join("junk.pem")).unwrap_err().to_string();
        assert!(error.contains("junk.pem") && error.contains("P-256"), "{error}");
    }

    #[test]
    fn the_longest_scope_that_covers_an_image_applies() {
        let key = |n: u8| SignKey(SigningKey::from_bytes(&[n; 32].into()).unwrap()).public();
        let mut policy = Policy::default();
        assert!(policy.keys_for("r.example/vm/disk").is_none(), "no rule: any image");
        policy.require("r.example", vec![key(1)]);
        policy.require("r.example/vm/", vec![key(2), key(3)]);
        assert_eq!(policy.keys_for("r.example/vm/disk").unwrap().len(), 2);
        assert_eq!(policy.keys_for("r.example/vmx/disk").unwrap().len(), 1, "a prefix ends at a slash");
        assert_eq!(policy.keys_for("R.Example:443/vm/disk").unwrap().len(), 2, "one registry however written");
        assert!(policy.keys_for("other.example/vm/disk").is_none());
        policy.require("", vec![key(4)]);
        assert_eq!(policy.keys_for("other.example/vm/disk").unwrap().len(), 1);
    }
}
