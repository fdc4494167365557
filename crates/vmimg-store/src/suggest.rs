//! "Did you mean": the closest of some names to a mistyped one.

use std::fmt;

/// The closest known name to a mistyped one, if one is close; displays as
/// `` (did you mean NAME?)`` or as nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Suggestion(pub Option<String>);

impl Suggestion {
    /// The name in `known` closest to `typed` by edit distance (case
    /// ignored), if it is within a third of the name's length (at least 2
    /// edits), and not `typed` itself.
    pub fn closest<'a>(typed: &str, known: impl IntoIterator<Item = &'a str>) -> Suggestion {
        let typed_lower = typed.to_lowercase();
        let bound = (typed.chars().count() / 3).max(2);
        let best = known
            .into_iter()
            .filter(|name| *name != typed)
            .map(|name| (strsim::damerau_levenshtein(&typed_lower, &name.to_lowercase()), name))
            .filter(|(distance, _)| *distance <= bound)
            .min();
        Suggestion(best.map(|(_, name)| name.to_owned()))
    }
}

impl fmt::Display for Suggestion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Some(name) => write!(f, " (did you mean {name}?)"),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_names_are_suggested_and_far_ones_are_not() {
        let aliases = ["debian-12", "debian-13", "ubuntu-24.04", "fedora-43"];
        assert_eq!(Suggestion::closest("debian12", aliases).0.as_deref(), Some("debian-12"));
        assert_eq!(Suggestion::closest("Ubuntu-24.4", aliases).0.as_deref(), Some("ubuntu-24.04"));
        assert_eq!(Suggestion::closest("fedroa-43", aliases).0.as_deref(), Some("fedora-43"));
        assert_eq!(Suggestion::closest("windows-11", aliases), Suggestion(None));
        assert_eq!(Suggestion::closest("x", aliases).to_string(), "");
        assert_eq!(Suggestion::closest("debian12", aliases).to_string(), " (did you mean debian-12?)");
    }
}
