//! vmimg's OCI transport.
//!
//! - [`Reference`]: `alpine`, `ghcr.io/o/r:tag`, `localhost:5000/x@sha256:…`
//!   parsed and normalized as Docker does (`docker.io/library/alpine:latest`);
//! - [`Registry`]: the distribution API (manifests, blobs, uploads) with
//!   anonymous, Basic and bearer-token auth (`auth`: Docker's config.json,
//!   explicit credentials, challenges; `helper`: Docker's credential
//!   helpers, run bounded);
//! - cloud images in a registry ([`Registry::cloud_image`],
//!   [`Registry::stream_disk`], [`Registry::push_disk`]);
//! - [`hosts`]: registry hosts (mirrors, pull-through caches, TLS) as
//!   containerd's `hosts.toml` files configure them;
//! - [`container`]: container images' manifests (layers and their
//!   compression) and run configs, for building disks from them;
//! - [`artifact`]: cloud-image artifacts as cocoonstack publishes them
//!   (which layers are disk parts, in which order), read and written;
//! - [`layout`]: images in local OCI layouts (`oci:DIR[:NAME]`) and
//!   archives of them (`oci-archive:FILE[:NAME]`), classified as the
//!   registry's are; [`ImageSource`] takes either a registry or a layout;
//! - [`Pinned`]: a reference that always names its manifest's digest, as
//!   [`Registry::image`] returns it.
//!
//! Like `vmimg-fetch`, this crate moves bytes and knows nothing of the
//! store or of disk formats.

pub mod artifact;
mod auth;
mod cloud;
pub mod container;
mod copy;
mod endpoint;
mod helper;
pub mod hosts;
pub mod layout;
mod reference;
mod registry;
pub mod sign;
mod signed;
mod source;
mod upload;

pub use auth::{Challenge, CredentialSource, Credentials, DockerConfig};
pub use cloud::{OciImage, Push, Pushed};
pub use copy::Copied;
pub use helper::HelperError;
pub use layout::{BlobReader, Layout, LayoutError, LayoutKind, LayoutRef};
pub use reference::{DEFAULT_TAG, DOCKER_HUB, Pinned, Reference, ReferenceError};
pub use registry::{Access, Error, MANIFEST_TYPES, MAX_MANIFEST_BYTES, Manifest, Registry, RegistryOptions, Result};
pub use source::ImageSource;
