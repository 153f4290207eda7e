//! Which tokens may come next under a grammar, cheaply.
//!
//! Two things keep the cost small, after llguidance and XGrammar. First, the vocabulary is a
//! byte trie (built once per tokenizer), so a mask is one walk with the automaton where a
//! byte that cannot come prunes every token under it: in JSON's structure only a handful of
//! bytes can come next. Second, inside a free string (where nearly every token fits) the
//! tokens that stay plain string content are known in advance: each trie node records
//! whether every token below it is such content, and such a subtree is taken whole without
//! walking it. On top, the sampler asks for a mask only when the token it drew does not fit
//! (one automaton run over that token's bytes); drawing again from the masked distribution
//! then gives exactly the masked distribution's odds.
//!
//! A [`Constraint`] is one request's automaton: it also steers to a close when the token
//! budget is about to run out, so a constrained answer ends as complete JSON.

use std::sync::Arc;

use super::{Grammar, Matcher};
use crate::tokenizer::{TokenId, Tokenizer};

/// The vocabulary as a byte trie, nodes in depth-first order.
pub struct TokenTrie {
    /// Per node: the byte on the edge into it (root: unused).
    byte: Vec<u8>,
    /// Per node: one past its last descendant.
    end: Vec<u32>,
    /// Per node: its tokens (`order` range); those spelled exactly by its path come first.
    range: Vec<(u32, u32)>,
    exact: Vec<u32>,
    /// Per node: every token below (and at) it is plain string content.
    plain: Vec<bool>,
    /// Token ids sorted by their bytes.
    order: Vec<TokenId>,
    /// Bytes per token id (empty: never produced as text, e.g. control tokens).
    bytes: Vec<Box<[u8]>>,
    eog: Vec<TokenId>,
    n_vocab: usize,
}

/// Whether `b` after a string state `cont` (UTF-8 continuation bytes due) keeps a JSON string
/// plain (no quote, backslash or control), and the state after it.
fn plain_step(cont: u8, b: u8) -> Option<u8> {
    if cont > 0 {
        return (0x80..=0xBF).contains(&b).then(|| cont - 1);
    }
    match b {
        b'"' | b'\\' => None,
        0x20..=0x7F => Some(0),
        0xC2..=0xDF => Some(1),
        0xE0..=0xEF => Some(2),
        0xF0..=0xF4 => Some(3),
        _ => None,
    }
}

impl TokenTrie {
    pub fn new(tok: &Tokenizer) -> TokenTrie {
        let n_vocab = tok.vocab_size();
        let eog: Vec<TokenId> = (0..n_vocab as TokenId).filter(|&t| tok.is_eog(t)).collect();
        let bytes: Vec<Box<[u8]>> = (0..n_vocab as TokenId)
            .map(|t| {
                if tok.is_eog(t) {
                    Box::default()
                } else {
                    tok.token_bytes(t, false).into_boxed_slice()
                }
            })
            .collect();
        let mut order: Vec<TokenId> = (0..n_vocab as TokenId)
            .filter(|&t| !bytes[t as usize].is_empty())
            .collect();
        order.sort_by(|a, b| bytes[*a as usize].cmp(&bytes[*b as usize]));
        let mut t = TokenTrie {
            byte: vec![0],
            end: vec![0],
            range: vec![(0, order.len() as u32)],
            exact: vec![0],
            plain: vec![true],
            order,
            bytes,
            eog,
            n_vocab,
        };
        // Per node on the current path: (node, UTF-8 state, still plain).
        let mut path: Vec<(usize, u8, bool)> = vec![(0, 0, true)];
        for (k, &id) in t.order.clone().iter().enumerate() {
            let b = &t.bytes[id as usize];
            // Close the nodes of the path that this token does not share.
            let mut common = 0;
            while common + 1 < path.len()
                && common < b.len()
                && t.byte[path[common + 1].0] == b[common]
            {
                common += 1;
            }
            while path.len() > common + 1 {
                let (n, ..) = path.pop().unwrap_or_default();
                t.range[n].1 = k as u32;
                t.end[n] = t.byte.len() as u32;
            }
            for &c in &b[common..] {
                let (_, cont, ok) = path[path.len() - 1];
                let next = if ok { plain_step(cont, c) } else { None };
                t.byte.push(c);
                t.end.push(0);
                t.range.push((k as u32, 0));
                t.exact.push(k as u32);
                t.plain.push(next.is_some());
                path.push((t.byte.len() - 1, next.unwrap_or(0), next.is_some()));
            }
            // Tokens spelled exactly by this node's path.
            let last = path[path.len() - 1].0;
            t.exact[last] = k as u32 + 1;
        }
        while let Some((n, ..)) = path.pop() {
            t.range[n].1 = t.order.len() as u32;
            t.end[n] = t.byte.len() as u32;
        }
        // A node is plain when its path is and every child is.
        for n in (1..t.byte.len()).rev() {
            if !t.plain[n] {
                continue;
            }
            let mut c = n + 1;
            while c < t.end[n] as usize {
                if !t.plain[c] {
                    t.plain[n] = false;
                    break;
                }
                c = t.end[c] as usize;
            }
        }
        t
    }

    /// The bytes of token `id` (empty for tokens that are no text).
    pub fn token_bytes(&self, id: TokenId) -> &[u8] {
        self.bytes.get(id as usize).map_or(&[], |b| b)
    }

    pub fn is_eog(&self, id: TokenId) -> bool {
        self.eog.contains(&id)
    }

    /// The allowed tokens after `m`'s text, as a bitset over ids (`scratch`: reused states).
    fn mask(&self, m: &Matcher, scratch: &mut Vec<Matcher>) -> Vec<u64> {
        let mut bits = vec![0u64; self.n_vocab.div_ceil(64)];
        let mut set = |id: TokenId| bits[id as usize / 64] |= 1 << (id % 64);
        if m.can_finish() {
            for &e in &self.eog {
                set(e);
            }
        }
        if scratch.is_empty() {
            scratch.push(m.clone());
        } else {
            scratch[0].copy_from(m);
        }
        // Depth-first: (node, depth of its state in `scratch`), children pushed in reverse.
        let mut todo: Vec<(usize, usize)> = Vec::new();
        self.push_children(0, 0, &mut todo);
        while let Some((n, d)) = todo.pop() {
            // scratch[d] is the state before node n's byte.
            if scratch[d].in_plain_string() && self.plain[n] {
                let (lo, hi) = self.range[n];
                for &id in &self.order[lo as usize..hi as usize] {
                    set(id);
                }
                continue;
            }
            if scratch.len() <= d + 1 {
                let s = scratch[d].clone();
                scratch.push(s);
            } else {
                let (a, b) = scratch.split_at_mut(d + 1);
                b[0].copy_from(&a[d]);
            }
            if !scratch[d + 1].advance(self.byte[n]) {
                continue;
            }
            let (lo, _) = self.range[n];
            for &id in &self.order[lo as usize..self.exact[n] as usize] {
                set(id);
            }
            self.push_children(n, d + 1, &mut todo);
        }
        bits
    }

    fn push_children(&self, n: usize, d: usize, todo: &mut Vec<(usize, usize)>) {
        let start = todo.len();
        let mut c = n + 1;
        while c < self.end[n] as usize {
            todo.push((c, d));
            c = self.end[c] as usize;
        }
        todo[start..].reverse();
    }

    /// The longest token spelling a prefix of `text`.
    fn longest_prefix(&self, text: &[u8]) -> Option<TokenId> {
        let mut n = 0;
        let mut best = None;
        for &b in text {
            let mut c = n + 1;
            let mut found = None;
            while c < self.end[n] as usize {
                if self.byte[c] == b {
                    found = Some(c);
                    break;
                }
                c = self.end[c] as usize;
            }
            let Some(c) = found else {
                break;
            };
            n = c;
            let (lo, _) = self.range[n];
            if self.exact[n] > lo {
                best = Some(self.order[lo as usize]);
            }
        }
        best
    }
}

/// One request's grammar state; see the module docs.
pub struct Constraint {
    m: Matcher,
    trie: Arc<TokenTrie>,
    scratch: Vec<Matcher>,
    probe: Matcher,
}

impl Constraint {
    pub fn new(g: Arc<Grammar>, trie: Arc<TokenTrie>) -> Constraint {
        let m = Matcher::new(g);
        Constraint {
            probe: m.clone(),
            m,
            trie,
            scratch: Vec::new(),
        }
    }

    /// Whether `id` may come next, with `budget` tokens left after it to finish the value.
    pub fn allows(&mut self, id: TokenId, budget: usize) -> bool {
        if self.trie.is_eog(id) {
            return self.m.can_finish();
        }
        let b = self.trie.token_bytes(id);
        if b.is_empty() {
            return false;
        }
        self.probe.copy_from(&self.m);
        self.probe.advance_all(b) && self.probe.closing().len() <= budget
    }

    /// The tokens that may come next (bitset over ids).
    pub fn mask(&mut self) -> Vec<u64> {
        self.trie.mask(&self.m, &mut self.scratch)
    }

    /// When `budget` tokens (this one included) are only just enough to finish the value:
    /// the token that goes the shortest way there.
    pub fn forced(&self, budget: usize) -> Option<TokenId> {
        let close = self.m.closing();
        if close.is_empty() || close.len() < budget {
            return None;
        }
        self.trie.longest_prefix(&close)
    }

    /// Takes the chosen token; false if it does not fit (the constraint is then broken).
    pub fn accept(&mut self, id: TokenId) -> bool {
        if self.trie.is_eog(id) {
            return self.m.can_finish();
        }
        self.m.advance_all(self.trie.token_bytes(id))
    }

    /// Takes text that was not sampled under the constraint (a forced prefix); false if it
    /// does not fit.
    pub fn advance_text(&mut self, bytes: &[u8]) -> bool {
        self.m.advance_all(bytes)
    }

    /// The value is complete and nothing may follow.
    pub fn is_done(&self) -> bool {
        self.m.is_done()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_step_tracks_utf8() {
        assert_eq!(plain_step(0, b'a'), Some(0));
        assert_eq!(plain_step(0, b'"'), None);
        assert_eq!(plain_step(0, 0xC3), Some(1));
        assert_eq!(plain_step(1, 0xA9), Some(0));
        assert_eq!(plain_step(0, 0xA9), None);
    }
}
