//! [`PatternIndex`]: a trie over pattern words, per exchange.
//!
//! Matching walks the trie along the routing key's words, so its cost grows
//! with the number of patterns that share prefixes with the key, not with the
//! number of subscriptions. `#` nodes are visited with memoisation on
//! (node, position) so that patterns such as `#.#.#` cannot blow up.

use crate::pattern::{split_words, Pattern, Word};
use std::collections::{HashMap, HashSet};
use std::hash::Hash;

#[derive(Debug)]
struct Node<T> {
    children: HashMap<Box<str>, Node<T>>,
    star: Option<Box<Node<T>>>,
    hash: Option<Box<Node<T>>>,
    values: Vec<T>,
}

impl<T> Default for Node<T> {
    fn default() -> Self {
        Node { children: HashMap::new(), star: None, hash: None, values: Vec::new() }
    }
}

impl<T> Node<T> {
    fn is_empty(&self) -> bool {
        self.values.is_empty() && self.children.is_empty() && self.star.is_none() && self.hash.is_none()
    }
}

/// An index from `(exchange, pattern)` to values, queried with `(exchange, routing key)`.
#[derive(Debug)]
pub struct PatternIndex<T> {
    exchanges: HashMap<String, Node<T>>,
    len: usize,
}

impl<T> Default for PatternIndex<T> {
    fn default() -> Self {
        PatternIndex { exchanges: HashMap::new(), len: 0 }
    }
}

impl<T: Clone + Eq + Hash> PatternIndex<T> {
    /// An empty index.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of (binding, value) entries.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the index is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Add `value` under `(exchange, pattern)`.
    pub fn insert(&mut self, exchange: &str, pattern: &Pattern, value: T) {
        let mut node = self.exchanges.entry(exchange.to_string()).or_default();
        for word in pattern.words() {
            node = match word {
                Word::Lit(w) => node.children.entry(w.as_str().into()).or_default(),
                Word::Star => node.star.get_or_insert_with(Default::default),
                Word::Hash => node.hash.get_or_insert_with(Default::default),
            };
        }
        node.values.push(value);
        self.len += 1;
    }

    /// Remove one occurrence of `value` under `(exchange, pattern)`; returns whether it was there.
    pub fn remove(&mut self, exchange: &str, pattern: &Pattern, value: &T) -> bool {
        let Some(root) = self.exchanges.get_mut(exchange) else {
            return false;
        };
        let removed = remove_at(root, pattern.words(), value);
        if removed {
            self.len -= 1;
            if root.is_empty() {
                self.exchanges.remove(exchange);
            }
        }
        removed
    }

    /// Call `f` once for every distinct value whose binding matches.
    pub fn for_each_match(&self, exchange: &str, routing_key: &str, mut f: impl FnMut(&T)) {
        let Some(root) = self.exchanges.get(exchange) else {
            return;
        };
        let words = split_words(routing_key);
        let mut out: Vec<&T> = Vec::new();
        let mut visited: HashSet<(usize, usize)> = HashSet::new();
        walk(root, &words, 0, &mut out, &mut visited);
        if out.len() > 1 {
            // The same value may be reached through several bindings or paths.
            let mut seen: HashSet<&T> = HashSet::with_capacity(out.len());
            out.retain(|v| seen.insert(*v));
        }
        for v in out {
            f(v);
        }
    }

    /// Collect matching values (convenience for tests).
    pub fn matches(&self, exchange: &str, routing_key: &str) -> Vec<T> {
        let mut v = Vec::new();
        self.for_each_match(exchange, routing_key, |x| v.push(x.clone()));
        v
    }
}

fn remove_at<T: Eq>(node: &mut Node<T>, words: &[Word], value: &T) -> bool {
    let Some((first, rest)) = words.split_first() else {
        let Some(pos) = node.values.iter().position(|v| v == value) else {
            return false;
        };
        node.values.swap_remove(pos);
        return true;
    };
    match first {
        Word::Lit(w) => {
            let Some(child) = node.children.get_mut(w.as_str()) else {
                return false;
            };
            let removed = remove_at(child, rest, value);
            if removed && child.is_empty() {
                node.children.remove(w.as_str());
            }
            removed
        }
        Word::Star | Word::Hash => {
            let slot = if matches!(first, Word::Star) { &mut node.star } else { &mut node.hash };
            let Some(child) = slot.as_deref_mut() else {
                return false;
            };
            let removed = remove_at(child, rest, value);
            if removed && child.is_empty() {
                *slot = None;
            }
            removed
        }
    }
}

fn walk<'a, T>(
    node: &'a Node<T>,
    words: &[&str],
    i: usize,
    out: &mut Vec<&'a T>,
    visited: &mut HashSet<(usize, usize)>,
) {
    if let Some(hash) = node.hash.as_deref() {
        // `#` may swallow words i..j for any j >= i; visit each (node, j) once.
        for j in i..=words.len() {
            if visited.insert((hash as *const Node<T> as usize, j)) {
                walk(hash, words, j, out, visited);
            }
        }
    }
    if i == words.len() {
        out.extend(node.values.iter());
        return;
    }
    if let Some(child) = node.children.get(words[i]) {
        walk(child, words, i + 1, out, visited);
    }
    if let Some(star) = node.star.as_deref() {
        walk(star, words, i + 1, out, visited);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn p(s: &str) -> Pattern {
        Pattern::parse(s).expect("pattern")
    }

    #[test]
    fn basic() {
        let mut idx = PatternIndex::new();
        idx.insert("x", &p("a.*"), 1);
        idx.insert("x", &p("a.#"), 2);
        idx.insert("x", &p("#"), 3);
        idx.insert("y", &p("#"), 4);
        let mut m = idx.matches("x", "a.b");
        m.sort();
        assert_eq!(m, vec![1, 2, 3]);
        let mut m = idx.matches("x", "a");
        m.sort();
        assert_eq!(m, vec![2, 3]);
        assert!(idx.remove("x", &p("a.#"), &2));
        assert!(!idx.remove("x", &p("a.#"), &2));
        let mut m = idx.matches("x", "a.b");
        m.sort();
        assert_eq!(m, vec![1, 3]);
        assert_eq!(idx.len(), 3);
    }

    #[test]
    fn dedups_values_reached_twice() {
        let mut idx = PatternIndex::new();
        idx.insert("x", &p("#.#"), 1);
        idx.insert("x", &p("a.#"), 1);
        assert_eq!(idx.matches("x", "a.b.c"), vec![1]);
    }

    fn word() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("a".to_string()),
            Just("b".to_string()),
            Just(String::new()),
            Just("*".to_string()),
            Just("#".to_string())
        ]
    }

    fn key_word() -> impl Strategy<Value = String> {
        prop_oneof![Just("a".to_string()), Just("b".to_string()), Just(String::new())]
    }

    proptest! {
        // The index agrees with the reference matcher for every pattern set and key.
        #[test]
        fn index_agrees_with_reference(
            patterns in proptest::collection::vec(proptest::collection::vec(word(), 0..5), 1..8),
            keys in proptest::collection::vec(proptest::collection::vec(key_word(), 0..5), 1..8),
        ) {
            let patterns: Vec<Pattern> = patterns.iter().map(|w| p(&w.join("."))).collect();
            let mut idx = PatternIndex::new();
            for (i, pat) in patterns.iter().enumerate() {
                idx.insert("x", pat, i);
            }
            for key in keys {
                let key = key.join(".");
                let mut got = idx.matches("x", &key);
                got.sort();
                let want: Vec<usize> = patterns.iter().enumerate().filter(|(_, pat)| pat.matches(&key)).map(|(i, _)| i).collect();
                prop_assert_eq!(got, want, "key {:?}", key);
            }
        }
    }
}
