//! vmimg's OCI transport.
//!
//! - [`Reference`]: `alpine`, `ghcr.io/o/r:tag`, `localhost:5000/x@sha256:…`
//!   parsed and normalized as Docker does (`docker.io/library/alpine:latest`).
//!
//! Like `vmimg-fetch`, this crate moves bytes and knows nothing of images or
//! of the store.

mod reference;

pub use reference::{DEFAULT_TAG, DOCKER_HUB, Reference, ReferenceError};
