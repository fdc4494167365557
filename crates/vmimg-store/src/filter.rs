//! Which images a listing shows: `KEY=VALUE` conditions, every one of
//! which an image must meet, as `podman images --filter` takes them.
//!
//! The keys ([`ImageFilter::KEYS`]): `kind` (the source's kind), `source`
//! (a piece of the source as written or of where its bytes came from),
//! `format`, `verified`, `in-use` (it has instances), `before`/`since`
//! (created before or after another image, named as [`Store::find`] takes
//! it) and `unused-for` (not used for a duration: `30d`, `12h`). An unknown
//! key or a malformed value is refused with what is accepted.

use crate::error::{Error, Result};
use crate::manage::ImageSummary;
use crate::record::{ImageFormat, SourceInfo, Timestamp};
use crate::store::Store;
use std::time::{Duration, SystemTime};

/// One condition an image must meet to be listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageFilter {
    /// Its source is of this kind (one of [`SourceInfo::KINDS`]).
    Kind(&'static str),
    /// The source as written, or where its bytes came from, contains this.
    Source(String),
    Format(ImageFormat),
    Verified(bool),
    /// Whether it has instances.
    InUse(bool),
    /// Made before the image this names.
    Before(String),
    /// Made after the image this names.
    Since(String),
    /// Not used (pulled again, or an instance made) for this long.
    UnusedFor(Duration),
}

impl ImageFilter {
    /// Every key, as written before the `=`.
    pub const KEYS: [&'static str; 8] =
        ["kind", "source", "format", "verified", "in-use", "before", "since", "unused-for"];

    /// Whether `image` meets the condition; `anchor` is the creation time
    /// of the image `before` or `since` names.
    fn matches(&self, image: &ImageSummary, anchor: Option<Timestamp>, now: SystemTime) -> bool {
        let record = &image.record;
        match self {
            ImageFilter::Kind(kind) => record.source.kind() == *kind,
            ImageFilter::Source(text) => {
                record.source.display_name().contains(text.as_str())
                    || record.source.origin().is_some_and(|origin| origin.contains(text.as_str()))
            }
            ImageFilter::Format(format) => record.format == *format,
            ImageFilter::Verified(verified) => record.verified == *verified,
            ImageFilter::InUse(in_use) => (image.instances > 0) == *in_use,
            ImageFilter::Before(_) => anchor.is_some_and(|time| record.created_at < time),
            ImageFilter::Since(_) => anchor.is_some_and(|time| record.created_at > time),
            ImageFilter::UnusedFor(idle) => {
                now.duration_since(image.last_used_at.system_time()).is_ok_and(|since| since >= *idle)
            }
        }
    }
}

impl std::str::FromStr for ImageFilter {
    type Err = Error;

    /// `KEY=VALUE`, KEY one of [`ImageFilter::KEYS`].
    fn from_str(text: &str) -> Result<ImageFilter> {
        let keys = ImageFilter::KEYS.join(", ");
        let (key, value) =
            text.split_once('=').ok_or_else(|| Error::Invalid(format!("filter {text:?} is not KEY=VALUE ({keys})")))?;
        let invalid = |accepted: &str| Error::Invalid(format!("filter {text:?}: {key} takes {accepted}"));
        let boolean = || value.parse::<bool>().map_err(|_| invalid("true or false"));
        Ok(match key {
            "kind" => ImageFilter::Kind(
                SourceInfo::KINDS
                    .into_iter()
                    .find(|kind| *kind == value)
                    .ok_or_else(|| invalid(&SourceInfo::KINDS.join(", ")))?,
            ),
            "source" => ImageFilter::Source(value.to_owned()),
            "format" => ImageFilter::Format(
                serde_json::from_value(value.into()).map_err(|_| invalid("raw, ext4, erofs or cpio"))?,
            ),
            "verified" => ImageFilter::Verified(boolean()?),
            "in-use" => ImageFilter::InUse(boolean()?),
            "before" => ImageFilter::Before(value.to_owned()),
            "since" => ImageFilter::Since(value.to_owned()),
            "unused-for" => ImageFilter::UnusedFor(
                humantime::parse_duration(value).map_err(|_| invalid("a duration: 30d, 12h, 1w"))?,
            ),
            _ => return Err(Error::Invalid(format!("unknown filter {key:?}: the filters are {keys}"))),
        })
    }
}

impl Store {
    /// The images that meet every filter, in [`Store::images`]' order.
    pub async fn images_matching(&self, filters: &[ImageFilter]) -> Result<Vec<ImageSummary>> {
        let mut anchors = Vec::with_capacity(filters.len());
        for filter in filters {
            anchors.push(match filter {
                ImageFilter::Before(name) | ImageFilter::Since(name) => Some(self.find(name).await?.created_at),
                _ => None,
            });
        }
        let now = SystemTime::now();
        let meets_all = |image: &ImageSummary| {
            filters.iter().zip(&anchors).all(|(filter, anchor)| filter.matches(image, *anchor, now))
        };
        Ok(self.images()?.into_iter().filter(meets_all).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_parse_and_refuse_what_they_do_not_know() {
        let parse = |text: &str| text.parse::<ImageFilter>();
        assert_eq!(parse("kind=oci").unwrap(), ImageFilter::Kind("oci"));
        assert_eq!(parse("source=debian=12").unwrap(), ImageFilter::Source("debian=12".into()));
        assert_eq!(parse("format=erofs").unwrap(), ImageFilter::Format(ImageFormat::Erofs));
        assert_eq!(parse("in-use=false").unwrap(), ImageFilter::InUse(false));
        assert_eq!(parse("unused-for=2d").unwrap(), ImageFilter::UnusedFor(Duration::from_secs(2 * 86400)));
        for (text, says) in [
            ("color=red", "unknown filter \"color\": the filters are kind, source,"),
            ("kind", "is not KEY=VALUE (kind, source,"),
            ("kind=docker", "kind takes alias, url, file, bundle, blank, oci, layout"),
            ("format=qcow2", "format takes raw, ext4, erofs or cpio"),
            ("verified=yes", "verified takes true or false"),
            ("unused-for=soon", "unused-for takes a duration"),
        ] {
            let error = parse(text).unwrap_err();
            assert!(error.to_string().contains(says), "{text}: {error}");
            assert_eq!(error.kind(), crate::ErrorKind::InvalidInput);
        }
    }
}
