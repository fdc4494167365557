//! vmimg's image store: where disks live on the host and how they get there.
//!
//! - [`Catalog`]: aliases pinned to dated upstream snapshots and digests;
//! - [`Store`]: the on-disk layout, cache keys, per-key locks (in-process and
//!   across processes), and [`Store::pull`], which fetches, verifies,
//!   converts and atomically publishes an image (see the `store` module for
//!   the life of an image);
//! - [`Store::import_bundle`], [`Store::export_bundle`] and
//!   [`Store::new_image`]: image bundles and blank mutable images (the
//!   `bundle` module);
//! - [`Store::build_container`]: container images made into ext4, erofs or
//!   cpio disks, their layers cached by digest (the `container` module);
//!   [`Manager`] queues such builds, a few at a time, keeps their status,
//!   recovers those a crash interrupted, and counts them (the `builds`
//!   module);
//! - [`Store::refresh_catalog`]: moves a catalog file's aliases to their
//!   publishers' newest snapshots (the `refresh` module);
//! - [`Error::kind`]: what kind of failure an error is ([`ErrorKind`]), which
//!   a frontend maps to an exit code or an HTTP status without reading its
//!   text (the `kind` module).
//!
//! The store never prints and never parses command lines: the CLI does.

mod builds;
mod bundle;
mod catalog;
mod container;
mod error;
mod fsutil;
mod growing;
mod instance;
mod kind;
mod manage;
mod oci;
mod pull;
mod record;
mod refresh;
mod source;
mod store;
mod unpack;

pub use builds::{Build, BuildStatus, Histogram, Manager, ManagerOptions, Metrics, Totals, build_id};
pub use bundle::ExportedBundle;
pub use catalog::{Arch, Artifact, Catalog, EMBEDDED, Entry, MAX_CATALOG_BYTES, Mirrors};
pub use container::{BuildObserver, ContainerInfo, RootfsFormat};
pub use error::{Error, Result};
pub use instance::{Instance, InstanceFormat, InstanceRecord, InstanceRequest};
pub use kind::ErrorKind;
pub use manage::{GcReport, ImageSummary, Usage};
pub use oci::OciSource;
pub use pull::Pulled;
pub use record::{ImageRecord, Status};
pub use refresh::{Change, MAX_UPSTREAM_TEXT, RefreshError, Refreshed};
pub use source::{Location, Resolved, SourceInfo};
pub use store::{Store, StoreOptions, default_root};
pub use vmimg_bundle::bundle::{ExportOptions, Limits as BundleLimits};
pub use vmimg_bundle::machine::Machine;
