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

impl Pattern {
    /// Whether some routing key matches both patterns.
    ///
    /// Used to decide whether a subscription binding falls (at least partly)
    /// within a grant. Dynamic programming over positions in both patterns.
    pub fn overlaps(&self, other: &Pattern) -> bool {
        let (p, q) = (&self.words, &other.words);
        let (n, m) = (p.len(), q.len());
        // can[i][j]: the suffixes p[i..] and q[j..] share a matching key.
        let mut can = vec![vec![false; m + 1]; n + 1];
        can[n][m] = true;
        for i in (0..=n).rev() {
            for j in (0..=m).rev() {
                if i == n && j == m {
                    continue;
                }
                let pi = p.get(i);
                let qj = q.get(j);
                let mut ok = false;
                if let Some(Word::Hash) = pi {
                    // `#` produces no word, or one concrete word that q[j] also produces.
                    ok |= can[i + 1][j];
                    ok |= matches!(qj, Some(Word::Lit(_) | Word::Star)) && can[i][j + 1];
                }
                if let Some(Word::Hash) = qj {
                    ok |= can[i][j + 1];
                    ok |= matches!(pi, Some(Word::Lit(_) | Word::Star)) && can[i + 1][j];
                }
                if let (Some(a), Some(b)) = (pi, qj) {
                    let same_word = match (a, b) {
                        (Word::Lit(x), Word::Lit(y)) => x == y,
                        (Word::Star, Word::Lit(_) | Word::Star) | (Word::Lit(_), Word::Star) => true,
                        _ => false,
                    };
                    ok |= same_word && can[i + 1][j + 1];
                }
                can[i][j] = ok;
            }
        }
        can[0][0]
    }

    /// Whether the pattern is exactly `#` (matches every key).
    pub fn is_match_all(&self) -> bool {
        matches!(self.words.as_slice(), [Word::Hash])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn word() -> impl Strategy<Value = &'static str> {
        prop_oneof![Just("a"), Just("b"), Just(""), Just("*"), Just("#")]
    }

    /// Every key over the words a, b, c, "" with at most `len` words.
    fn keys(len: usize) -> Vec<String> {
        let mut out = vec![String::new()];
        let mut frontier = vec![Vec::<&str>::new()];
        for _ in 0..len {
            let mut next = Vec::new();
            for k in &frontier {
                for w in ["a", "b", "c", ""] {
                    let mut k2 = k.clone();
                    k2.push(w);
                    out.push(k2.join("."));
                    next.push(k2);
                }
            }
            frontier = next;
        }
        out
    }

    proptest! {
        // Overlap agrees with a brute-force search for a common key.
        #[test]
        fn overlap_agrees_with_brute_force(a in proptest::collection::vec(word(), 0..4), b in proptest::collection::vec(word(), 0..4)) {
            let (pa, pb) = (Pattern::parse(&a.join(".")).expect("a"), Pattern::parse(&b.join(".")).expect("b"));
            let brute = keys(a.len() + b.len()).iter().any(|k| pa.matches(k) && pb.matches(k));
            prop_assert_eq!(pa.overlaps(&pb), brute, "{:?} {:?}", a.join("."), b.join("."));
            prop_assert_eq!(pb.overlaps(&pa), brute);
        }
    }

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
