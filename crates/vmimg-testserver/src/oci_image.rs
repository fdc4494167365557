//! OCI container images for tests, built by independent tools (never
//! vmimg): `umoci` writes an OCI image layout, `skopeo` pushes it to a
//! registry (the test's [`RegistryServer`](crate::RegistryServer)).
//!
//! A layer is either a directory tree, which umoci diffs and packs itself
//! (`umoci unpack`, copy the tree into the bundle's rootfs, `umoci
//! repack`), or a ready tar added byte for byte (`umoci raw add-layer`),
//! so a test can put in exactly the entries it wants: OCI whiteouts
//! (`.wh.NAME`, see [`whiteout`]), opaque directories (`.wh..wh..opq`, see
//! [`opaque`]), odd owners, modes, xattrs. [`layer_tar`] writes such a tar
//! from a directory with GNU tar.
//!
//! ```no_run
//! use vmimg_testserver::{RegistryServer, oci_image::ImageSpec};
//! let registry = RegistryServer::start();
//! let image = ImageSpec::new()
//!     .dir_layer("/tmp/base")
//!     .tar_layer("/tmp/upper.tar")
//!     .entrypoint(&["/sbin/init"])
//!     .env("GREETING=hello")
//!     .push(&registry.host(), "test/busybox", "v1")
//!     .unwrap();
//! assert!(image.digest.starts_with("sha256:"));
//! ```

use crate::guest::{Scratch, run};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Where a layer's content comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum LayerSource {
    /// A directory tree, copied over the layers below and packed by `umoci repack`
    /// (which writes whiteouts for nothing: a directory layer only adds and changes).
    Dir(PathBuf),
    /// An uncompressed tar, added as it is (`umoci raw add-layer` gzips it).
    Tar(PathBuf),
}

/// An image to build: layers bottom first, and its run config.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ImageSpec {
    pub layers: Vec<LayerSource>,
    /// `None`: unset; `Some(empty)`: cleared.
    pub entrypoint: Option<Vec<String>>,
    /// `None`: unset; `Some(empty)`: cleared.
    pub cmd: Option<Vec<String>>,
    /// `KEY=VALUE` entries.
    pub env: Vec<String>,
    pub workdir: Option<String>,
    pub user: Option<String>,
    /// Push the layers zstd-compressed (skopeo recompresses umoci's gzip).
    pub zstd: bool,
    /// Push a Docker schema 2 manifest and config (skopeo converts) rather than OCI's.
    pub docker: bool,
}

/// An image in a registry.
#[derive(Debug, Clone, PartialEq)]
pub struct PushedImage {
    /// `HOST/NAME:TAG`
    pub reference: String,
    /// The manifest's digest, `sha256:…`.
    pub digest: String,
}

impl ImageSpec {
    pub fn new() -> ImageSpec {
        ImageSpec::default()
    }

    /// Layers pushed as `…tar+zstd` rather than `…tar+gzip`.
    pub fn zstd(mut self) -> ImageSpec {
        self.zstd = true;
        self
    }

    /// A Docker (schema 2) image rather than an OCI one.
    pub fn docker(mut self) -> ImageSpec {
        self.docker = true;
        self
    }

    pub fn dir_layer(mut self, dir: impl Into<PathBuf>) -> ImageSpec {
        self.layers.push(LayerSource::Dir(dir.into()));
        self
    }

    pub fn tar_layer(mut self, tar: impl Into<PathBuf>) -> ImageSpec {
        self.layers.push(LayerSource::Tar(tar.into()));
        self
    }

    pub fn entrypoint(mut self, args: &[&str]) -> ImageSpec {
        self.entrypoint = Some(args.iter().map(|a| a.to_string()).collect());
        self
    }

    pub fn cmd(mut self, args: &[&str]) -> ImageSpec {
        self.cmd = Some(args.iter().map(|a| a.to_string()).collect());
        self
    }

    /// Adds one `KEY=VALUE`.
    pub fn env(mut self, entry: &str) -> ImageSpec {
        self.env.push(entry.to_owned());
        self
    }

    pub fn workdir(mut self, dir: &str) -> ImageSpec {
        self.workdir = Some(dir.to_owned());
        self
    }

    pub fn user(mut self, user: &str) -> ImageSpec {
        self.user = Some(user.to_owned());
        self
    }

    /// Writes the image as the OCI layout `layout` (created), tagged `tag`.
    pub fn build_layout(&self, layout: &Path, tag: &str) -> Result<(), String> {
        let image = format!("{}:{tag}", layout.to_str().ok_or("layout path is not UTF-8")?);
        run(Command::new("umoci").args(["init", "--layout"]).arg(layout))?;
        run(Command::new("umoci").args(["new", "--image", &image]))?;
        let scratch = Scratch::new("umoci")?;
        for (i, layer) in self.layers.iter().enumerate() {
            match layer {
                LayerSource::Tar(tar) => {
                    run(Command::new("umoci").args(["raw", "add-layer", "--image", &image]).arg(tar))?;
                }
                LayerSource::Dir(dir) => {
                    let bundle = scratch.path().join(format!("bundle{i}"));
                    run(Command::new("umoci").args(["unpack", "--image", &image]).arg(&bundle))?;
                    // `DIR/.`: the tree's content, owners, modes, xattrs and links, merged into rootfs.
                    run(Command::new("cp").arg("-a").arg(dir.join(".")).arg(bundle.join("rootfs")))?;
                    run(Command::new("umoci").args(["repack", "--image", &image]).arg(&bundle))?;
                    let _ = fs::remove_dir_all(&bundle);
                }
            }
        }
        let config = self.config_args();
        if !config.is_empty() {
            run(Command::new("umoci").args(["config", "--image", &image]).args(config))?;
        }
        Ok(())
    }

    /// `umoci config` arguments for the run config.
    fn config_args(&self) -> Vec<String> {
        let mut args = Vec::new();
        for (key, value) in [("entrypoint", &self.entrypoint), ("cmd", &self.cmd)] {
            match value {
                None => {}
                Some(list) if list.is_empty() => args.push(format!("--clear=config.{key}")),
                Some(list) => args.extend(list.iter().map(|a| format!("--config.{key}={a}"))),
            }
        }
        args.extend(self.env.iter().map(|e| format!("--config.env={e}")));
        args.extend(self.workdir.iter().map(|w| format!("--config.workingdir={w}")));
        args.extend(self.user.iter().map(|u| format!("--config.user={u}")));
        args
    }

    /// Builds the image and pushes it with skopeo to `host` (a registry
    /// spoken to over plain HTTP, e.g. [`RegistryServer::host`](crate::RegistryServer::host)) as `name:tag`.
    pub fn push(&self, host: &str, name: &str, tag: &str) -> Result<PushedImage, String> {
        let scratch = Scratch::new("oci-layout")?;
        let layout = scratch.path().join("layout");
        self.build_layout(&layout, tag)?;
        let reference = format!("{host}/{name}:{tag}");
        let digest_file = scratch.path().join("digest");
        let mut skopeo = Command::new("skopeo");
        skopeo.args(["--insecure-policy", "copy", "--quiet", "--dest-tls-verify=false", "--digestfile"]);
        skopeo.arg(&digest_file);
        if self.zstd {
            skopeo.args(["--dest-compress", "--dest-compress-format", "zstd"]);
        }
        if self.docker {
            skopeo.args(["--format", "v2s2"]);
        }
        run(skopeo.arg(format!("oci:{}:{tag}", layout.display())).arg(format!("docker://{reference}")))?;
        let digest = fs::read_to_string(&digest_file).map_err(|e| format!("skopeo's digest file: {e}"))?;
        Ok(PushedImage { reference, digest: digest.trim().to_owned() })
    }
}

/// Writes `dir`'s content as an uncompressed layer tar at `out` with GNU
/// tar: entries named relative to `dir` (no `./`), sorted, numeric owners,
/// modes, mtimes and xattrs kept (PAX format), whiteout files as they are.
pub fn layer_tar(dir: &Path, out: &Path) -> Result<(), String> {
    let mut names: Vec<_> = fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    names.sort();
    let mut tar = Command::new("tar");
    tar.args(["--create", "--format=pax", "--pax-option=delete=atime,delete=ctime", "--sort=name"])
        .args(["--numeric-owner", "--xattrs", "--xattrs-include=*", "--file"])
        .arg(out)
        .arg("--directory")
        .arg(dir);
    if names.is_empty() {
        tar.args(["--files-from", "/dev/null"]);
    } else {
        tar.arg("--").args(names);
    }
    run(&mut tar).map(drop)
}

/// Marks `path` (relative to the layer directory `dir`) deleted: an empty
/// `.wh.NAME` beside where it was.
pub fn whiteout(dir: &Path, path: &str) -> Result<(), String> {
    let path = Path::new(path.trim_start_matches('/'));
    let name = path.file_name().ok_or_else(|| format!("whiteout of {path:?}: no file name"))?;
    let parent = dir.join(path.parent().unwrap_or(Path::new("")));
    fs::create_dir_all(&parent).map_err(|e| format!("{}: {e}", parent.display()))?;
    let marker = parent.join(format!(".wh.{}", name.to_string_lossy()));
    fs::write(&marker, b"").map_err(|e| format!("{}: {e}", marker.display()))
}

/// Marks the directory `path` (relative to the layer directory `dir`)
/// opaque: what lower layers hold in it is hidden (`.wh..wh..opq`).
pub fn opaque(dir: &Path, path: &str) -> Result<(), String> {
    let target = dir.join(path.trim_start_matches('/'));
    fs::create_dir_all(&target).map_err(|e| format!("{}: {e}", target.display()))?;
    let marker = target.join(".wh..wh..opq");
    fs::write(&marker, b"").map_err(|e| format!("{}: {e}", marker.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_arguments() {
        let spec = ImageSpec::new().entrypoint(&["/bin/sh", "-c"]).cmd(&[]).env("A=1").workdir("/w").user("1:2");
        assert_eq!(
            spec.config_args(),
            [
                "--config.entrypoint=/bin/sh",
                "--config.entrypoint=-c",
                "--clear=config.cmd",
                "--config.env=A=1",
                "--config.workingdir=/w",
                "--config.user=1:2"
            ]
        );
        assert!(ImageSpec::new().config_args().is_empty());
    }

    #[test]
    fn whiteouts_are_empty_marker_files() {
        let dir = Scratch::new("wh").unwrap();
        whiteout(dir.path(), "/etc/motd").unwrap();
        opaque(dir.path(), "var/cache").unwrap();
        assert_eq!(fs::read(dir.path().join("etc/.wh.motd")).unwrap(), b"");
        assert_eq!(fs::read(dir.path().join("var/cache/.wh..wh..opq")).unwrap(), b"");
    }
}
