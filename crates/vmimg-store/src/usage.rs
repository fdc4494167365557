//! Accounting: the bytes the store's parts occupy on disk (allocated
//! blocks, so sparse disks count what they hold).

use serde::Serialize;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Bytes on disk, by kind.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Usage {
    pub images: u64,
    pub blobs: u64,
    /// The layer cache: container image layers, shared between images.
    pub layers: u64,
    /// Partial downloads and other work in `tmp/`.
    pub partial: u64,
    pub instances: u64,
    /// All of the above.
    pub total: u64,
}

impl Usage {
    /// Bytes on disk of the store at `root`, by part.
    pub(crate) fn of(root: &Path) -> Usage {
        let of = |dir: &str| allocated(&root.join(dir));
        let (images, blobs, layers, partial, instances) =
            (of("images"), of("blobs"), of("layers"), of("tmp"), of("instances"));
        Usage { images, blobs, layers, partial, instances, total: images + blobs + layers + partial + instances }
    }
}

impl Usage {
    /// The bytes of each part, named as `vmimg_store_bytes` labels them.
    pub fn by_part(&self) -> [(&'static str, u64); 5] {
        [
            ("images", self.images),
            ("blobs", self.blobs),
            ("layers", self.layers),
            ("partial", self.partial),
            ("instances", self.instances),
        ]
    }
}

/// Bytes allocated to `path` and everything under it.
pub(crate) fn allocated(path: &Path) -> u64 {
    let Ok(meta) = std::fs::symlink_metadata(path) else { return 0 };
    let own = meta.blocks() * 512;
    if !meta.is_dir() {
        return own;
    }
    let children = std::fs::read_dir(path).into_iter().flatten().flatten();
    own + children.map(|e| allocated(&e.path())).sum::<u64>()
}
