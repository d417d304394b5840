//! The sensitive-word filter: Aho-Corasick over the configured word list, ASCII
//! case-insensitive, masking each matched character with `*` or rejecting.

use aho_corasick::{AhoCorasick, MatchKind};
use danmaku_core::config::{FilterPolicy, FilterSettings};
use danmaku_core::error::{ApiError, ErrorCode};

/// Why the word list could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    #[error("cannot read filter.words_file {0}: {1}")]
    Read(String, std::io::Error),
    #[error("cannot build the word matcher: {0}")]
    Build(String),
}

/// A compiled word list.
pub struct WordFilter {
    matcher: Option<AhoCorasick>,
    policy: FilterPolicy,
}

impl WordFilter {
    pub fn new(words: &[String], policy: FilterPolicy) -> Result<Self, FilterError> {
        let words: Vec<&str> = words
            .iter()
            .map(|w| w.trim())
            .filter(|w| !w.is_empty())
            .collect();
        let matcher = if words.is_empty() {
            None
        } else {
            Some(
                AhoCorasick::builder()
                    .ascii_case_insensitive(true)
                    .match_kind(MatchKind::LeftmostLongest)
                    .build(&words)
                    .map_err(|e| FilterError::Build(e.to_string()))?,
            )
        };
        Ok(Self { matcher, policy })
    }

    pub fn from_settings(s: &FilterSettings) -> Result<Self, FilterError> {
        let mut words = s.words.clone();
        if let Some(path) = &s.words_file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| FilterError::Read(path.display().to_string(), e))?;
            words.extend(text.lines().map(str::to_string));
        }
        Self::new(&words, s.policy)
    }

    /// The text to store, or `blocked_word`.
    pub fn apply(&self, text: &str) -> Result<String, ApiError> {
        let Some(m) = &self.matcher else {
            return Ok(text.to_string());
        };
        let mut found = m.find_iter(text).peekable();
        if found.peek().is_none() {
            return Ok(text.to_string());
        }
        if self.policy == FilterPolicy::Reject {
            return Err(ApiError::new(
                ErrorCode::BlockedWord,
                "the text contains a blocked word",
            ));
        }
        let mut out = String::with_capacity(text.len());
        let mut last = 0;
        for mat in found {
            out.push_str(&text[last..mat.start()]);
            out.extend(text[mat.start()..mat.end()].chars().map(|_| '*'));
            last = mat.end();
        }
        out.push_str(&text[last..]);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_per_character() {
        let f = WordFilter::new(&["bad".into(), "坏蛋".into()], FilterPolicy::Mask).unwrap();
        assert_eq!(f.apply("a BAD 坏蛋!").unwrap(), "a *** **!");
        assert_eq!(f.apply("fine").unwrap(), "fine");
    }

    #[test]
    fn rejects() {
        let f = WordFilter::new(&["bad".into()], FilterPolicy::Reject).unwrap();
        assert_eq!(f.apply("so bad").unwrap_err().code, ErrorCode::BlockedWord);
        assert!(f.apply("good").is_ok());
    }

    #[test]
    fn empty_list_passes_everything() {
        let f = WordFilter::new(&["  ".into()], FilterPolicy::Reject).unwrap();
        assert_eq!(f.apply("anything").unwrap(), "anything");
    }
}
