//! Errors of this crate and the source positions they carry.
//!
//! Every problem with a user's input is an [`Error::At`]: it renders as `FILE:LINE:COLUMN: message`,
//! so editors and terminals can jump to it.

use serde::{Serialize, Serializer};
use std::fmt;
use std::sync::Arc;

/// A position in a YAML source (or in an image's label text).
///
/// Positions never affect equality: two configs are equal when they say the same thing.
#[derive(Debug, Clone)]
pub struct Loc {
    /// The source's name: a path, `-` for stdin, or `<image> label`.
    pub file: Arc<str>,
    /// 1-based line.
    pub line: usize,
    /// 1-based column (in characters).
    pub column: usize,
}

impl Loc {
    pub fn new(file: &Arc<str>, line: usize, column: usize) -> Self {
        Loc {
            file: file.clone(),
            line,
            column,
        }
    }

    /// A position for values that come from no file (defaults, tests).
    pub fn none() -> Self {
        Loc {
            file: Arc::from("<none>"),
            line: 0,
            column: 0,
        }
    }

    /// An error at this position.
    pub(crate) fn err(&self, message: impl Into<String>) -> Error {
        Error::At {
            loc: self.clone(),
            message: message.into(),
        }
    }
}

impl PartialEq for Loc {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for Loc {}

impl Default for Loc {
    fn default() -> Self {
        Loc::none()
    }
}

impl fmt::Display for Loc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file, self.line, self.column)
    }
}

/// A value and where it was written. Compares and serializes as the bare value.
#[derive(Debug, Clone)]
pub struct Spanned<T> {
    pub value: T,
    pub loc: Loc,
}

impl<T> Spanned<T> {
    pub fn new(value: T, loc: Loc) -> Self {
        Spanned { value, loc }
    }
}

impl<T: PartialEq> PartialEq for Spanned<T> {
    fn eq(&self, other: &Self) -> bool {
        self.value == other.value
    }
}

impl<T: Eq> Eq for Spanned<T> {}

impl<T> std::ops::Deref for Spanned<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.value
    }
}

impl<T: Serialize> Serialize for Spanned<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.value.serialize(s)
    }
}

/// Errors of `keel-config`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad input at a known position.
    #[error("{loc}: {message}")]
    At { loc: Loc, message: String },
    /// A generated document could not be serialized or did not fit the OCI types (a bug).
    #[error("cannot build {what}")]
    Json {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
}

impl Error {
    /// The position of the problem, when it has one.
    pub fn loc(&self) -> Option<&Loc> {
        match self {
            Error::At { loc, .. } => Some(loc),
            Error::Json { .. } => None,
        }
    }
}

/// Levenshtein distance, for "did you mean" hints.
pub(crate) fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// The closest candidate to `word`, if it is close enough to be a likely typo.
pub(crate) fn suggest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let lower = word.to_ascii_lowercase();
    candidates
        .iter()
        .map(|c| (distance(&lower, &c.to_ascii_lowercase()), *c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 4) && *d < c.len().max(word.len()))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// ` (did you mean X?)` or nothing.
pub(crate) fn hint(word: &str, candidates: &[&str]) -> String {
    suggest(word, candidates)
        .map(|s| format!(" (did you mean {s}?)"))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distance_counts_edits() {
        assert_eq!(distance("kitten", "sitting"), 3);
        assert_eq!(distance("", "abc"), 3);
        assert_eq!(distance("same", "same"), 0);
    }

    #[test]
    fn suggestions_are_close_only() {
        assert_eq!(suggest("imagee", &["name", "image"]), Some("image"));
        assert_eq!(suggest("zzzzzz", &["name", "image"]), None);
    }

    #[test]
    fn error_renders_position() {
        let f: Arc<str> = Arc::from("a.yml");
        let e = Loc::new(&f, 3, 7).err("bad");
        assert_eq!(e.to_string(), "a.yml:3:7: bad");
    }
}
