//! vmimg's image store: where VM disks live on the host and how they get there.
//!
//! # The front door
//!
//! Open a store, then make one call per job. [`Store::get`] takes any
//! source as a user writes it (a catalog alias, a URL, a local file, an
//! `oci://` or `docker://` cloud image or container image, or the name of
//! an image already in the store) and returns the ready image; the store
//! decides how to fetch, verify, convert or build it. The other verbs a
//! frontend serves are one call each too: [`Store::images`],
//! [`Store::find`], [`Store::remove`], [`Store::create_instance`],
//! [`Store::instances`], [`Store::remove_instance`], [`Store::push`],
//! [`Store::export_bundle`], [`Store::import_bundle`], [`Manager`] for
//! builds, [`Store::usage`] and [`Store::gc`]. Every error has a kind
//! ([`Error::kind`]) to map to an exit code or an HTTP status.
//!
//! ```
//! use vmimg_store::{GetOptions, InstanceFormat, InstanceRequest, Store, StoreOptions};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = tempfile::tempdir()?;
//! # let disk = dir.path().join("disk.img");
//! # std::fs::write(&disk, vec![0u8; 1 << 20])?;
//! # let root = Some(dir.path().join("store"));
//! let store = Store::open(StoreOptions { root, ..Default::default() })?;
//! tokio::runtime::Runtime::new()?.block_on(async {
//!     // Any source: "debian-12", "https://…/disk.qcow2", "oci://registry/vm/debian:12", or a file.
//!     let image = store.get(disk.to_str().unwrap(), &GetOptions::default()).await?;
//!     assert!(!image.cached && image.path.ends_with("disk.raw"));
//!     // The same source again is a hit; so is the image's name.
//!     assert!(store.get(disk.to_str().unwrap(), &GetOptions::default()).await?.cached);
//!     assert_eq!(store.find(&image.record.name).await?, image.record);
//!
//!     let request = InstanceRequest { image: image.record.name.clone(), name: Some("vm1".into()), size: Some(2 << 20), format: InstanceFormat::Qcow2 };
//!     let instance = store.create_instance(&request).await?;
//!     assert_eq!(store.instances()?.len(), 1);
//!     println!("boot {} ({} bytes on disk in all)", instance.path.display(), store.usage().total);
//!
//!     store.remove_instance("vm1").await?;
//!     store.remove(&image.record.name, false).await?;
//!     assert!(store.images()?.is_empty());
//!     Ok::<_, vmimg_store::Error>(())
//! })?;
//! # Ok(()) }
//! ```
//!
//! # What is inside
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
//!   follows and cancels them (also across processes), recovers those a
//!   crash interrupted, and counts them (the `builds` module);
//! - [`Store::metrics`]: builds, pulls and bytes on disk in a Prometheus
//!   registry a daemon serves (the `metrics` module);
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
mod get;
mod growing;
mod instance;
mod kind;
mod locks;
mod manage;
mod metrics;
mod oci;
mod pull;
mod record;
mod refresh;
mod source;
mod store;
mod unpack;

pub use builds::{Build, BuildStatus, Manager, ManagerOptions, Totals, build_id};
pub use bundle::ExportedBundle;
pub use catalog::{Arch, Artifact, Catalog, EMBEDDED, Entry, MAX_CATALOG_BYTES, Mirrors};
pub use container::BuildObserver;
pub use error::{Error, Result};
pub use get::{GetOptions, Observer, Stage};
pub use instance::{Instance, InstanceRequest};
pub use kind::ErrorKind;
pub use manage::{GcReport, ImageSummary, Usage};
pub use metrics::Metrics;
pub use oci::{OciSource, PushOptions};
/// The metrics library whose registry [`Metrics::registry`] gives, at the version the store uses.
pub use prometheus_client;
pub use record::{
    Compression, ContainerInfo, ImageFormat, ImageRecord, InstanceFormat, InstanceRecord, Pulled, RootfsFormat,
    SourceFormat, SourceInfo, Status, Timestamp,
};
pub use refresh::{Change, MAX_UPSTREAM_TEXT, RefreshError, Refreshed};
pub use source::{Location, OciOrigin, OciRef, Resolved, Source};
pub use store::{Store, StoreOptions, default_root};
pub use vmimg_bundle::bundle::{Error as BundleError, ExportOptions, Limits as BundleLimits};
pub use vmimg_bundle::machine::Machine;
