//! AMQP topic patterns, with RabbitMQ's exact semantics.
//!
//! A routing key and a pattern are split on `.` into words; words may be
//! empty (`a..b` has three words) and the empty string has no words at all.
//! In a pattern, a word that is exactly `*` matches one word and a word that
//! is exactly `#` matches zero or more words; `*` or `#` inside a longer word
//! is literal. These rules are checked against the RabbitMQ server in the
//! integration tests.

use crate::event::MAX_NAME_BYTES;

/// One word of a pattern.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Word {
    /// A literal word.
    Lit(String),
    /// `*`: exactly one word.
    Star,
    /// `#`: zero or more words.
    Hash,
}

/// A parsed topic pattern.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Pattern {
    words: Vec<Word>,
}

/// Why a pattern was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    /// Longer than 255 bytes.
    #[error("pattern is longer than 255 bytes")]
    TooLong,
}

/// Split a routing key (or pattern) into words, RabbitMQ style.
pub fn split_words(s: &str) -> Vec<&str> {
    if s.is_empty() {
        Vec::new()
    } else {
        s.split('.').collect()
    }
}

impl Pattern {
    /// Parse a pattern.
    pub fn parse(s: &str) -> Result<Pattern, PatternError> {
        if s.len() > MAX_NAME_BYTES {
            return Err(PatternError::TooLong);
        }
        let words = split_words(s)
            .into_iter()
            .map(|w| match w {
                "*" => Word::Star,
                "#" => Word::Hash,
                lit => Word::Lit(lit.to_string()),
            })
            .collect();
        Ok(Pattern { words })
    }

    /// The words of the pattern.
    pub fn words(&self) -> &[Word] {
        &self.words
    }

    /// Whether `key` matches. This is the reference implementation the
    /// [`crate::PatternIndex`] is tested against: dynamic programming over
    /// (pattern word, key word), linear in their product.
    pub fn matches(&self, key: &str) -> bool {
        let key = split_words(key);
        let (p, k) = (self.words.len(), key.len());
        // can[i][j]: pattern words i.. match key words j..
        let mut can = vec![vec![false; k + 1]; p + 1];
        can[p][k] = true;
        for i in (0..p).rev() {
            for j in (0..=k).rev() {
                can[i][j] = match &self.words[i] {
                    Word::Hash => can[i + 1][j] || (j < k && can[i][j + 1]),
                    Word::Star => j < k && can[i + 1][j + 1],
                    Word::Lit(w) => j < k && key[j] == w && can[i + 1][j + 1],
                };
            }
        }
        can[0][0]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(p: &str, k: &str) -> bool {
        Pattern::parse(p).expect("pattern").matches(k)
    }

    #[test]
    fn rabbitmq_rules() {
        assert!(m("#", ""));
        assert!(m("#", "a.b.c"));
        assert!(m("a.#", "a"));
        assert!(m("a.#", "a.b.c"));
        assert!(!m("a.*", "a"));
        assert!(m("a.*", "a.b"));
        assert!(!m("a.*", "a.b.c"));
        assert!(!m("*", ""));
        assert!(m("*.*", "."));
        assert!(m("a.*.b", "a..b"));
        assert!(m("a*", "a*"));
        assert!(!m("a*", "ab"));
        assert!(m("#.#", "a"));
        assert!(m("", ""));
        assert!(!m("", "a"));
    }
}
