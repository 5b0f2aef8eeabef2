//! [`PatternIndex`]: a trie over pattern words, per exchange.
//!
//! Matching walks the trie along the routing key's words, so its cost grows
//! with the number of patterns that share prefixes with the key, not with the
//! number of subscriptions. `#` nodes are visited with memoisation on
//! (node, position) so that patterns such as `#.#.#` cannot blow up.
//!
//! Chains of literal words that no other pattern shares are kept in one node
//! (its `tail`, the words joined with `.`), so a long pattern costs one node
//! and one string rather than one node per word: a browser may bind 255-byte
//! patterns of 128 words, and this is what keeps that cheap. Inserting a
//! pattern that diverges inside a tail splits it; removing one merges a node
//! left with a single literal child back into it.

use crate::pattern::{split_words, Pattern, Word};
use std::collections::{HashMap, HashSet};
use std::hash::Hash;

/// Most children kept in a plain vector (searched linearly); more go into
/// a hash map. Most trie nodes have one or two children, and a hash map
/// costs a table of several slots even for one.
const FEW: usize = 8;

/// A node's children by literal word.
#[derive(Debug)]
enum Children<T> {
    Few(Vec<(Box<str>, Node<T>)>),
    Many(HashMap<Box<str>, Node<T>>),
}

impl<T> Default for Children<T> {
    fn default() -> Self {
        Children::Few(Vec::new())
    }
}

impl<T> Children<T> {
    fn len(&self) -> usize {
        match self {
            Children::Few(v) => v.len(),
            Children::Many(m) => m.len(),
        }
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn get(&self, word: &str) -> Option<&Node<T>> {
        match self {
            Children::Few(v) => v.iter().find(|(w, _)| &**w == word).map(|(_, n)| n),
            Children::Many(m) => m.get(word),
        }
    }

    fn get_mut(&mut self, word: &str) -> Option<&mut Node<T>> {
        match self {
            Children::Few(v) => v.iter_mut().find(|(w, _)| &**w == word).map(|(_, n)| n),
            Children::Many(m) => m.get_mut(word),
        }
    }

    fn get_or_insert_with(&mut self, word: &str, make: impl FnOnce() -> Node<T>) -> &mut Node<T> {
        if let Children::Few(v) = self {
            if v.len() >= FEW && !v.iter().any(|(w, _)| &**w == word) {
                *self = Children::Many(std::mem::take(v).into_iter().collect());
            }
        }
        match self {
            Children::Few(v) => {
                let i = match v.iter().position(|(w, _)| &**w == word) {
                    Some(i) => i,
                    None => {
                        v.push((word.into(), make()));
                        v.len() - 1
                    }
                };
                &mut v[i].1
            }
            Children::Many(m) => m.entry(word.into()).or_insert_with(make),
        }
    }

    fn remove(&mut self, word: &str) {
        match self {
            Children::Few(v) => {
                if let Some(i) = v.iter().position(|(w, _)| &**w == word) {
                    v.swap_remove(i);
                    v.shrink_to_fit();
                }
            }
            Children::Many(m) => {
                m.remove(word);
                if m.len() <= FEW / 2 {
                    *self = Children::Few(std::mem::take(m).into_iter().collect());
                }
            }
        }
    }

    /// The only child, taken out (when there is exactly one).
    fn take_only(&mut self) -> Option<(Box<str>, Node<T>)> {
        if self.len() != 1 {
            return None;
        }
        match std::mem::take(self) {
            Children::Few(mut v) => v.pop(),
            Children::Many(m) => m.into_iter().next(),
        }
    }

    fn nodes(&self) -> Box<dyn Iterator<Item = &Node<T>> + '_> {
        match self {
            Children::Few(v) => Box::new(v.iter().map(|(_, n)| n)),
            Children::Many(m) => Box::new(m.values()),
        }
    }
}

#[derive(Debug)]
struct Node<T> {
    /// Literal words that follow the word leading to this node, joined with
    /// `.` (`Some("")` is one empty word). Only nodes reached through a
    /// literal word have one; the root and `*`/`#` nodes never do.
    tail: Option<Box<str>>,
    children: Children<T>,
    star: Option<Box<Node<T>>>,
    hash: Option<Box<Node<T>>>,
    values: Vec<T>,
}

impl<T> Default for Node<T> {
    fn default() -> Self {
        Node { tail: None, children: Children::default(), star: None, hash: None, values: Vec::new() }
    }
}

/// The literal words of `words` joined into a tail (`None` for none).
fn tail_of(words: &[Word<'_>]) -> Option<Box<str>> {
    if words.is_empty() {
        return None;
    }
    let lits: Vec<&str> = words.iter().filter_map(|w| if let Word::Lit(l) = w { Some(*l) } else { None }).collect();
    Some(lits.join(".").into())
}

impl<T> Node<T> {
    fn is_empty(&self) -> bool {
        self.values.is_empty() && self.children.is_empty() && self.star.is_none() && self.hash.is_none()
    }

    fn tail_words(&self) -> impl Iterator<Item = &str> {
        self.tail.as_deref().into_iter().flat_map(|t| t.split('.'))
    }

    /// Where matching continues after this node's tail, entered at key word
    /// `i`; `None` if the key does not carry the tail's words there.
    fn match_tail(&self, key: &[&str], mut i: usize) -> Option<usize> {
        for w in self.tail_words() {
            if key.get(i) != Some(&w) {
                return None;
            }
            i += 1;
        }
        Some(i)
    }

    /// How many leading words of the tail equal the leading literal `words`.
    fn common_tail(&self, words: &[Word<'_>]) -> usize {
        self.tail_words().zip(words).take_while(|(t, w)| **w == Word::Lit(t)).count()
    }

    /// Cut the tail after `k` words: this node keeps the first `k`, and a
    /// new child (under the word at `k`) takes the rest and everything
    /// this node held.
    fn split_tail(&mut self, k: usize) {
        let Some(tail) = self.tail.take() else { return };
        let words: Vec<&str> = tail.split('.').collect();
        let Some(at) = words.get(k) else {
            self.tail = Some(tail);
            return;
        };
        let lower = Node {
            tail: (words.len() > k + 1).then(|| words[k + 1..].join(".").into()),
            children: std::mem::take(&mut self.children),
            star: self.star.take(),
            hash: self.hash.take(),
            values: std::mem::take(&mut self.values),
        };
        self.children = Children::Few(vec![((*at).into(), lower)]);
        self.tail = (k > 0).then(|| words[..k].join(".").into());
    }

    /// Merge a node left with nothing but one literal child into it (only
    /// for nodes reached through a literal word, which may carry a tail).
    fn compact(&mut self) {
        if !self.values.is_empty() || self.star.is_some() || self.hash.is_some() || self.children.len() != 1 {
            return;
        }
        let Some((word, child)) = self.children.take_only() else { return };
        let mut words: Vec<&str> = self.tail_words().collect();
        words.push(&word);
        words.extend(child.tail_words());
        let tail: Box<str> = words.join(".").into();
        *self = Node { tail: Some(tail), ..child };
    }
}

/// An index from `(exchange, pattern)` to values, queried with `(exchange, routing key)`.
#[derive(Debug)]
pub struct PatternIndex<T> {
    exchanges: HashMap<Box<str>, Node<T>>,
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
        let words: Vec<Word<'_>> = pattern.words().collect();
        let root = match self.exchanges.get_mut(exchange) {
            Some(root) => root,
            None => self.exchanges.entry(exchange.into()).or_default(),
        };
        insert_at(root, &words, value);
        self.len += 1;
    }

    /// Remove one occurrence of `value` under `(exchange, pattern)`; returns whether it was there.
    pub fn remove(&mut self, exchange: &str, pattern: &Pattern, value: &T) -> bool {
        let Some(root) = self.exchanges.get_mut(exchange) else {
            return false;
        };
        let words: Vec<Word<'_>> = pattern.words().collect();
        let removed = remove_at(root, &words, value);
        if removed {
            self.len -= 1;
            if root.is_empty() {
                self.exchanges.remove(exchange);
            }
        }
        removed
    }

    /// Call `f` once for every distinct value whose binding matches.
    pub fn for_each_match<'a>(&'a self, exchange: &str, routing_key: &str, mut f: impl FnMut(&'a T)) {
        let mut out: Vec<&T> = Vec::new();
        self.for_each_binding_match(exchange, routing_key, |v| out.push(v));
        if out.len() > 1 {
            // The same value may be reached through several bindings or paths.
            let mut seen: HashSet<&T> = HashSet::with_capacity(out.len());
            out.retain(|v| seen.insert(*v));
        }
        for v in out {
            f(v);
        }
    }

    /// Call `f` once for every matching *binding*: a value inserted under
    /// several bindings that match the key is passed once for each of them.
    /// For a caller that knows which values hold more than one binding (the
    /// fan-out does) and dedups only those: the hash set
    /// [`PatternIndex::for_each_match`] builds costs more per event than
    /// the walk itself when a thousand subscriptions match.
    pub fn for_each_binding_match<'a>(&'a self, exchange: &str, routing_key: &str, mut f: impl FnMut(&'a T)) {
        let Some(root) = self.exchanges.get(exchange) else {
            return;
        };
        let words = split_words(routing_key);
        // Each node's values are reached at most once (a `#` node is
        // visited once per position, and every other node has one path
        // from the root), so repeats come only from several bindings.
        let mut visited: HashSet<(usize, usize)> = HashSet::new();
        walk(root, &words, 0, &mut |values: &'a [T]| values.iter().for_each(&mut f), &mut visited);
    }

    /// Collect matching values (convenience for tests).
    pub fn matches(&self, exchange: &str, routing_key: &str) -> Vec<T> {
        let mut v = Vec::new();
        self.for_each_match(exchange, routing_key, |x| v.push(x.clone()));
        v
    }

    /// Number of trie nodes (for tests and memory figures).
    pub fn nodes(&self) -> usize {
        fn count<T>(n: &Node<T>) -> usize {
            1 + n.children.nodes().map(count).sum::<usize>()
                + n.star.as_deref().map_or(0, count)
                + n.hash.as_deref().map_or(0, count)
        }
        self.exchanges.values().map(count).sum()
    }
}

fn insert_at<T>(mut node: &mut Node<T>, mut words: &[Word<'_>], value: T) {
    loop {
        let Some((first, rest)) = words.split_first() else {
            node.values.push(value);
            return;
        };
        match *first {
            Word::Star => {
                node = node.star.get_or_insert_with(Default::default);
                words = rest;
            }
            Word::Hash => {
                node = node.hash.get_or_insert_with(Default::default);
                words = rest;
            }
            Word::Lit(w) => {
                // The literal words right after `w` can share one node.
                let run = rest.iter().take_while(|x| matches!(x, Word::Lit(_))).count();
                let child =
                    node.children.get_or_insert_with(w, || Node { tail: tail_of(&rest[..run]), ..Default::default() });
                let common = child.common_tail(&rest[..run]);
                if child.tail_words().count() > common {
                    child.split_tail(common);
                }
                node = child;
                words = &rest[common..];
            }
        }
    }
}

fn remove_at<T: Eq>(node: &mut Node<T>, words: &[Word<'_>], value: &T) -> bool {
    let Some((first, rest)) = words.split_first() else {
        let Some(pos) = node.values.iter().position(|v| v == value) else {
            return false;
        };
        node.values.swap_remove(pos);
        return true;
    };
    match *first {
        Word::Lit(w) => {
            let Some(child) = node.children.get_mut(w) else {
                return false;
            };
            let n = child.tail_words().count();
            if child.common_tail(rest) != n {
                return false;
            }
            let removed = remove_at(child, &rest[n..], value);
            if removed {
                if child.is_empty() {
                    node.children.remove(w);
                } else {
                    child.compact();
                }
            }
            removed
        }
        Word::Star | Word::Hash => {
            let slot = if *first == Word::Star { &mut node.star } else { &mut node.hash };
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
    out: &mut impl FnMut(&'a [T]),
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
        if !node.values.is_empty() {
            out(&node.values);
        }
        return;
    }
    if let Some(child) = node.children.get(words[i]) {
        if let Some(j) = child.match_tail(words, i + 1) {
            walk(child, words, j, out, visited);
        }
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

    #[test]
    fn binding_matches_repeat_a_value_once_per_matching_binding() {
        let mut idx = PatternIndex::new();
        idx.insert("x", &p("#.#"), 1);
        idx.insert("x", &p("a.#"), 1);
        idx.insert("x", &p("a.b.c"), 2);
        idx.insert("x", &p("z.#"), 3);
        let mut seen = Vec::new();
        idx.for_each_binding_match("x", "a.b.c", |v| seen.push(*v));
        seen.sort();
        assert_eq!(seen, vec![1, 1, 2], "once per binding, `#.#` itself once");
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

        // After removing some bindings (which merges nodes back), the index
        // still agrees with the reference, and removing the rest empties it.
        #[test]
        fn removal_keeps_the_index_exact(
            patterns in proptest::collection::vec(proptest::collection::vec(word(), 0..6), 1..10),
            gone in proptest::collection::vec(any::<bool>(), 10),
            keys in proptest::collection::vec(proptest::collection::vec(key_word(), 0..6), 1..8),
        ) {
            let patterns: Vec<Pattern> = patterns.iter().map(|w| p(&w.join("."))).collect();
            let mut idx = PatternIndex::new();
            for (i, pat) in patterns.iter().enumerate() {
                idx.insert("x", pat, i);
            }
            for (i, pat) in patterns.iter().enumerate() {
                if gone[i] {
                    prop_assert!(idx.remove("x", pat, &i));
                }
            }
            for key in keys {
                let key = key.join(".");
                let mut got = idx.matches("x", &key);
                got.sort();
                let want: Vec<usize> = patterns.iter().enumerate()
                    .filter(|(i, pat)| !gone[*i] && pat.matches(&key)).map(|(i, _)| i).collect();
                prop_assert_eq!(got, want, "key {:?}", key);
            }
            for (i, pat) in patterns.iter().enumerate() {
                if !gone[i] {
                    prop_assert!(idx.remove("x", pat, &i));
                }
            }
            prop_assert!(idx.is_empty());
            prop_assert_eq!(idx.nodes(), 0);
        }
    }

    #[test]
    fn many_children_move_to_a_map_and_back() {
        let mut idx = PatternIndex::new();
        for i in 0..50 {
            idx.insert("x", &p(&format!("a.w{i}.*")), i);
        }
        for i in 0..50 {
            assert_eq!(idx.matches("x", &format!("a.w{i}.z")), vec![i]);
        }
        for i in 0..48 {
            assert!(idx.remove("x", &p(&format!("a.w{i}.*")), &i));
        }
        assert_eq!(idx.matches("x", "a.w49.z"), vec![49]);
        assert_eq!(idx.matches("x", "a.w48.z"), vec![48]);
        assert!(idx.matches("x", "a.w1.z").is_empty());
    }

    #[test]
    fn a_long_pattern_is_one_node_and_splits_where_another_diverges() {
        let long: Vec<String> = (0..60).map(|i| format!("w{i}")).collect();
        let mut idx = PatternIndex::new();
        idx.insert("x", &p(&long.join(".")), 1);
        assert_eq!(idx.nodes(), 2, "root and one node for 60 literal words");
        let mut other = long.clone();
        other[30] = "z".into();
        idx.insert("x", &p(&other.join(".")), 2);
        assert_eq!(idx.nodes(), 4, "split at word 30 into a shared prefix and two tails");
        assert_eq!(idx.matches("x", &long.join(".")), vec![1]);
        assert_eq!(idx.matches("x", &other.join(".")), vec![2]);
        assert!(idx.matches("x", &long[..59].join(".")).is_empty());
        assert!(idx.remove("x", &p(&other.join(".")), &2));
        assert_eq!(idx.nodes(), 2, "merged back into one node");
        assert_eq!(idx.matches("x", &long.join(".")), vec![1]);
    }
}
