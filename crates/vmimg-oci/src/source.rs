//! Either source of an image, for code that takes both: a registry or a
//! local layout.
//!
//! [`ImageSource`] answers what the store asks a registry (`image`,
//! `run_config`, `fetch_blob`) by asking the one it holds, so a pull or a
//! build reads a layout as it reads a registry. Blobs are named by digest
//! alone in both, so what the image is (its manifest digest) is the
//! caller's key either way.

use crate::cloud::OciImage;
use crate::container::{ContainerImage, RunConfig};
use crate::layout::{Layout, LayoutRef};
use crate::reference::Reference;
use crate::registry::{Registry, Result};
use std::fmt;
use std::path::Path;
use vmimg_fetch::{Digest, Fetched, Progress};

/// Where an image is: a reference in a registry (through a client), or an
/// image in a layout (open, and the reference it was opened from, whose
/// name picks the image).
#[derive(Clone)]
pub enum ImageSource<'a> {
    Registry { registry: &'a Registry, reference: Reference },
    Layout { layout: Layout, reference: LayoutRef },
}

impl ImageSource<'_> {
    /// The image and its manifest's digest (through an index, the manifest
    /// for linux/`architecture`): [`Registry::image`] or [`Layout::image`].
    /// A registry's image is then at [`Pinned::new`](crate::Pinned::new)`(reference, digest)`.
    /// `progress` hears a registry's retries.
    pub async fn image(&self, architecture: &str, progress: &dyn Progress) -> Result<(Digest, OciImage)> {
        match self {
            ImageSource::Registry { registry, reference } => {
                let (pinned, image) = registry.image(reference, architecture, progress).await?;
                Ok((pinned.digest().clone(), image))
            }
            ImageSource::Layout { layout, reference } => layout.image(reference.tag(), architecture).await,
        }
    }

    /// A container image's run settings, from its config blob; `progress`
    /// hears a registry's retries.
    pub async fn run_config(&self, image: &ContainerImage, progress: &dyn Progress) -> Result<RunConfig> {
        match self {
            ImageSource::Registry { registry, reference } => registry.run_config(reference, image, progress).await,
            ImageSource::Layout { layout, .. } => layout.run_config(image).await,
        }
    }

    /// Blob `digest` of `size` bytes into `partial`, hashed on the way. A
    /// registry's download resumes what `partial` holds and leaves the
    /// digest for the caller to compare; a layout's copy starts over and
    /// checks size and digest itself. Either way the caller may compare
    /// [`Fetched`] with the descriptor.
    pub async fn fetch_blob(
        &self,
        digest: &Digest,
        size: u64,
        partial: &Path,
        progress: &dyn Progress,
    ) -> Result<Fetched> {
        match self {
            ImageSource::Registry { registry, reference } => {
                registry.fetch_blob(reference, digest, size, partial, progress).await
            }
            ImageSource::Layout { layout, .. } => layout.fetch_blob(digest, size, partial, progress).await,
        }
    }
}

/// The registry reference, or `oci:PATH[:NAME]` / `oci-archive:PATH[:NAME]`.
impl fmt::Display for ImageSource<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageSource::Registry { reference, .. } => reference.fmt(f),
            ImageSource::Layout { reference, .. } => reference.fmt(f),
        }
    }
}
