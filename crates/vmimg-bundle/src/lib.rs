//! Image bundles: `image.tar.zst`, a zstd-compressed tar of a sparse raw
//! `disk.img`, a `layer.qcow2` backed by it and the VM's `machine.json`.
//!
//! - [`machine`]: the machine definition (taskcluster-worker's qemu engine
//!   schema): bounded parsing, migration of older versions, validation,
//!   defaults, random MAC addresses;
//! - [`bundle`]: [`bundle::export`] and [`bundle::import`], which treats
//!   the bundle as hostile and commits its layer onto one sparse raw disk
//!   (its tar is `vmimg-tar`'s, which keeps holes);
//! - `frames`: the zstd frame layout an import insists on (every frame
//!   checksummed, whole frames only), followed as the bytes pass.
//!
//! This crate knows files and streams only: no network, no store.

pub mod bundle;
mod frames;
pub mod machine;
