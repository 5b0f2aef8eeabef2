//! AMQP topic patterns, with RabbitMQ's exact semantics.
//!
//! A routing key and a pattern are split on `.` into words; words may be
//! empty (`a..b` has three words) and the empty string has no words at all.
//! In a pattern, a word that is exactly `*` matches one word and a word that
//! is exactly `#` matches zero or more words; `*` or `#` inside a longer word
//! is literal. These rules are checked against the RabbitMQ server in the
//! integration tests.

use crate::event::MAX_NAME_BYTES;

/// One word of a pattern, borrowed from the pattern's text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Word<'a> {
    /// A literal word.
    Lit(&'a str),
    /// `*`: exactly one word.
    Star,
    /// `#`: zero or more words.
    Hash,
}

impl<'a> Word<'a> {
    fn of(w: &'a str) -> Word<'a> {
        match w {
            "*" => Word::Star,
            "#" => Word::Hash,
            lit => Word::Lit(lit),
        }
    }
}

/// A parsed topic pattern.
///
/// It keeps only its source text, in one allocation: words are borrowed
/// from it when needed (a subscription of 32 long bindings costs 32 small
/// allocations, not one per word).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Pattern {
    text: Box<str>,
    has_hash: bool,
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
        let has_hash = !s.is_empty() && s.split('.').any(|w| w == "#");
        Ok(Pattern { text: s.into(), has_hash })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The words of the pattern.
    pub fn words(&self) -> impl Iterator<Item = Word<'_>> + Clone {
        let text: &str = &self.text;
        // "" has no words; otherwise every `.` separates two (possibly empty) words.
        text.split('.').filter(move |_| !text.is_empty()).map(Word::of)
    }

    /// Number of words.
    pub fn word_count(&self) -> usize {
        if self.text.is_empty() {
            0
        } else {
            self.text.split('.').count()
        }
    }

    /// Whether `key` matches.
    ///
    /// Patterns without `#` compare word by word without allocating; `#`
    /// alone matches everything; others use dynamic programming over
    /// (pattern word, key word), linear in their product. The
    /// [`crate::PatternIndex`] is tested against this.
    pub fn matches(&self, key: &str) -> bool {
        if !self.has_hash {
            let mut words = self.words();
            if !key.is_empty() {
                for k in key.split('.') {
                    match words.next() {
                        Some(Word::Star) => {}
                        Some(Word::Lit(w)) if w == k => {}
                        _ => return false,
                    }
                }
            }
            return words.next().is_none();
        }
        if self.is_match_all() {
            return true;
        }
        let words: Vec<Word<'_>> = self.words().collect();
        let key = split_words(key);
        let (p, k) = (words.len(), key.len());
        // can[i][j]: pattern words i.. match key words j..
        let mut can = vec![vec![false; k + 1]; p + 1];
        can[p][k] = true;
        for i in (0..p).rev() {
            for j in (0..=k).rev() {
                can[i][j] = match words[i] {
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
    /// within a grant. A search over (position in each pattern, words of the
    /// key produced so far: none, one empty, one non-empty, two or more); the
    /// word count matters because no routing key consists of exactly one
    /// empty word (`""` has no words at all).
    pub fn overlaps(&self, other: &Pattern) -> bool {
        // Every pattern matches some key, so `#` overlaps all of them (the
        // common grant, checked for every binding of every subscribe).
        if self.is_match_all() || other.is_match_all() || self == other {
            return true;
        }
        let (p, q): (Vec<Word<'_>>, Vec<Word<'_>>) = (self.words().collect(), other.words().collect());
        let mut memo = std::collections::HashMap::new();
        overlap_from(&p, &q, 0, 0, Produced::None, &mut memo)
    }

    /// Whether the pattern is exactly `#` (matches every key).
    pub fn is_match_all(&self) -> bool {
        &*self.text == "#"
    }
}

/// How much of the common key has been produced (see [`Pattern::overlaps`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Produced {
    None,
    OneEmpty,
    OneWord,
    Many,
}

impl Produced {
    fn then(self, empty: bool) -> Produced {
        match self {
            Produced::None if empty => Produced::OneEmpty,
            Produced::None => Produced::OneWord,
            _ => Produced::Many,
        }
    }
}

fn overlap_from(
    p: &[Word<'_>],
    q: &[Word<'_>],
    i: usize,
    j: usize,
    k: Produced,
    memo: &mut std::collections::HashMap<(usize, usize, Produced), bool>,
) -> bool {
    if let Some(&v) = memo.get(&(i, j, k)) {
        return v;
    }
    // Guard against revisiting this state through the `#`/`#` self-step.
    memo.insert((i, j, k), false);
    let (pi, qj) = (p.get(i), q.get(j));
    let empty = |w: &Word<'_>| matches!(w, Word::Lit(x) if x.is_empty());
    let mut ok = i == p.len() && j == q.len() && k != Produced::OneEmpty;
    if !ok && matches!(pi, Some(Word::Hash)) {
        ok = overlap_from(p, q, i + 1, j, k, memo);
    }
    if !ok && matches!(qj, Some(Word::Hash)) {
        ok = overlap_from(p, q, i, j + 1, k, memo);
    }
    if !ok {
        ok = match (pi, qj) {
            (Some(a @ (Word::Lit(_) | Word::Star)), Some(b @ (Word::Lit(_) | Word::Star))) => {
                let same = match (a, b) {
                    (Word::Lit(x), Word::Lit(y)) => x == y,
                    _ => true,
                };
                same && overlap_from(p, q, i + 1, j + 1, k.then(empty(a) || empty(b)), memo)
            }
            (Some(Word::Hash), Some(b @ (Word::Lit(_) | Word::Star))) => {
                overlap_from(p, q, i, j + 1, k.then(empty(b)), memo)
            }
            (Some(a @ (Word::Lit(_) | Word::Star)), Some(Word::Hash)) => {
                overlap_from(p, q, i + 1, j, k.then(empty(a)), memo)
            }
            (Some(Word::Hash), Some(Word::Hash)) if k != Produced::Many => {
                // Both swallow one more (non-empty) word.
                overlap_from(p, q, i, j, k.then(false), memo)
            }
            _ => false,
        };
    }
    memo.insert((i, j, k), ok);
    ok
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

    #[test]
    fn no_key_is_a_single_empty_word() {
        let (a, b) = (Pattern::parse("#.").expect("a"), Pattern::parse("*").expect("b"));
        assert!(!a.overlaps(&b));
        assert!(a.overlaps(&Pattern::parse("*.*").expect("c")));
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]
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
