//! Tokenizers built from GGUF metadata, reproducing llama.cpp's token ids.
//!
//! Two families: SentencePiece-style (`tokenizer.ggml.model = "llama"`: Llama 2, Mistral), a
//! score-driven bigram merge over UTF-8 characters with `<0xNN>` byte fallback; and byte-level
//! BPE (`"gpt2"`: Llama 3, SmolLM2), a rank-driven merge over GPT-2 byte-encoded pieces after a
//! pre-tokenizer regex chosen by `tokenizer.ggml.pre`. Special tokens are cut out of the text
//! first (user-defined always, control tokens only when the caller asks, as for chat prompts).
//! `StreamDecoder` turns generated ids into text without ever emitting half a UTF-8 character.

use std::collections::{BinaryHeap, HashMap};

use crate::gguf::{Gguf, GgufError, Value};

pub type TokenId = u32;

const TT_NORMAL: i32 = 1;
const TT_UNKNOWN: i32 = 2;
const TT_CONTROL: i32 = 3;
const TT_USER_DEFINED: i32 = 4;
const TT_BYTE: i32 = 6;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Spm,
    Bpe,
}

pub struct Tokenizer {
    pub kind: Kind,
    tokens: Vec<String>,
    scores: Vec<f32>,
    types: Vec<i32>,
    by_text: HashMap<String, TokenId>,
    ranks: HashMap<String, u32>,
    /// Special tokens to cut out of text, longest first: (text, id, is_control).
    specials: Vec<(String, TokenId, bool)>,
    regexes: Vec<fancy_regex::Regex>,
    ignore_merges: bool,
    byte_to_char: [char; 256],
    char_to_byte: HashMap<char, u8>,
    pub bos: Option<TokenId>,
    pub eos: Option<TokenId>,
    pub add_bos: bool,
    pub add_space_prefix: bool,
    /// Tokens that end generation (eos, eot, and the end-of-turn markers templates use).
    pub eog: Vec<TokenId>,
}

fn gpt2_byte_table() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut n = 0u32;
    for b in 0..256u32 {
        let printable =
            (0x21..=0x7E).contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b);
        table[b as usize] = if printable {
            char::from_u32(b).unwrap_or('?')
        } else {
            let c = char::from_u32(256 + n).unwrap_or('?');
            n += 1;
            c
        };
    }
    table
}

/// Pre-tokenizer regexes per `tokenizer.ggml.pre`, as llama.cpp applies them (in sequence;
/// text between matches is kept as its own piece).
fn pre_regexes(pre: &str) -> Result<(Vec<&'static str>, bool), String> {
    const GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";
    const LLAMA3: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    Ok(match pre {
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "pixtral" => (vec![LLAMA3], true),
        "smollm" | "codeshell" | "exaone" | "minerva" => (vec![r"\p{N}", GPT2], false),
        "gpt-2" | "gpt2" | "default" | "" => (vec![GPT2], false),
        other => {
            return Err(format!(
                "unsupported pre-tokenizer `{other}` (supported: llama-bpe/llama3, smollm, gpt-2)"
            ));
        }
    })
}

impl Tokenizer {
    pub fn from_gguf(g: &Gguf) -> Result<Tokenizer, GgufError> {
        let bad = |m: String| GgufError::Bad(m);
        let model = g.get_str("tokenizer.ggml.model").unwrap_or("llama");
        let kind = match model {
            "llama" => Kind::Spm,
            "gpt2" => Kind::Bpe,
            other => {
                return Err(bad(format!(
                    "unsupported tokenizer model `{other}` (supported: llama, gpt2)"
                )));
            }
        };
        let tokens: Vec<String> = g
            .req("tokenizer.ggml.tokens")?
            .as_array()
            .ok_or_else(|| bad("tokenizer.ggml.tokens is not an array".into()))?
            .iter()
            .map(|v| v.as_str().unwrap_or("").to_string())
            .collect();
        let n = tokens.len();
        let scores: Vec<f32> = g
            .get("tokenizer.ggml.scores")
            .and_then(Value::as_array)
            .map(|a| a.iter().map(|v| v.as_f32().unwrap_or(0.0)).collect())
            .unwrap_or_else(|| vec![0.0; n]);
        let types: Vec<i32> = g
            .get("tokenizer.ggml.token_type")
            .and_then(Value::as_array)
            .map(|a| a.iter().map(|v| v.as_i64().unwrap_or(1) as i32).collect())
            .unwrap_or_else(|| vec![TT_NORMAL; n]);
        let mut by_text = HashMap::with_capacity(n);
        for (i, t) in tokens.iter().enumerate() {
            by_text.entry(t.clone()).or_insert(i as TokenId);
        }
        let mut ranks = HashMap::new();
        if let Some(m) = g.get("tokenizer.ggml.merges").and_then(Value::as_array) {
            for (i, v) in m.iter().enumerate() {
                if let Some(s) = v.as_str() {
                    ranks.entry(s.to_string()).or_insert(i as u32);
                }
            }
        }
        let mut specials: Vec<(String, TokenId, bool)> = types
            .iter()
            .enumerate()
            .filter(|(_, t)| matches!(**t, TT_CONTROL | TT_USER_DEFINED | TT_UNKNOWN))
            .filter(|(i, _)| !tokens[*i].is_empty())
            .map(|(i, t)| (tokens[i].clone(), i as TokenId, *t != TT_USER_DEFINED))
            .collect();
        specials.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.1.cmp(&b.1)));
        let id = |k: &str| {
            g.get_u64(k)
                .filter(|&v| (v as usize) < n)
                .map(|v| v as TokenId)
        };
        let pre = g.get_str("tokenizer.ggml.pre").unwrap_or("default");
        let (regexes, ignore_merges) = if kind == Kind::Bpe {
            let (r, im) = pre_regexes(pre).map_err(bad)?;
            let r = r
                .into_iter()
                .map(fancy_regex::Regex::new)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| bad(format!("pre-tokenizer regex: {e}")))?;
            (r, im)
        } else {
            (Vec::new(), false)
        };
        let byte_to_char = gpt2_byte_table();
        let char_to_byte = byte_to_char
            .iter()
            .enumerate()
            .map(|(b, c)| (*c, b as u8))
            .collect();
        let bos = id("tokenizer.ggml.bos_token_id");
        let eos = id("tokenizer.ggml.eos_token_id");
        let add_bos = g
            .get("tokenizer.ggml.add_bos_token")
            .and_then(Value::as_bool)
            .unwrap_or(kind == Kind::Spm || matches!(pre, "llama3" | "llama-v3" | "llama-bpe"));
        let add_space_prefix = g
            .get("tokenizer.ggml.add_space_prefix")
            .and_then(Value::as_bool)
            .unwrap_or(kind == Kind::Spm);
        let mut eog: Vec<TokenId> = eos.into_iter().collect();
        eog.extend(id("tokenizer.ggml.eot_token_id"));
        eog.extend(id("tokenizer.ggml.eom_token_id"));
        for name in [
            "<|eot_id|>",
            "<|im_end|>",
            "<|end|>",
            "<end_of_turn>",
            "<|endoftext|>",
            "<|eom_id|>",
            "</s>",
        ] {
            if let Some(&i) = by_text.get(name)
                && types
                    .get(i as usize)
                    .is_some_and(|t| *t == TT_CONTROL || *t == TT_USER_DEFINED)
            {
                eog.push(i);
            }
        }
        eog.sort_unstable();
        eog.dedup();
        Ok(Tokenizer {
            kind,
            tokens,
            scores,
            types,
            by_text,
            ranks,
            specials,
            regexes,
            ignore_merges,
            byte_to_char,
            char_to_byte,
            bos,
            eos,
            add_bos,
            add_space_prefix,
            eog,
        })
    }

    pub fn vocab_size(&self) -> usize {
        self.tokens.len()
    }

    pub fn token_text(&self, id: TokenId) -> Option<&str> {
        self.tokens.get(id as usize).map(String::as_str)
    }

    pub fn token_id(&self, text: &str) -> Option<TokenId> {
        self.by_text.get(text).copied()
    }

    pub fn is_eog(&self, id: TokenId) -> bool {
        self.eog.binary_search(&id).is_ok()
    }

    /// Tokenizes `text`. `add_special` prepends BOS when the model wants it; `parse_special`
    /// turns control-token texts (e.g. `<|im_start|>`) into their ids, as chat prompts need.
    pub fn encode(&self, text: &str, add_special: bool, parse_special: bool) -> Vec<TokenId> {
        let mut out = Vec::new();
        if add_special && self.add_bos {
            out.extend(self.bos);
        }
        let mut prev_special = true;
        for frag in self.partition(text, parse_special) {
            match frag {
                Frag::Special(id) => {
                    out.push(id);
                    prev_special = true;
                }
                Frag::Text(t) => {
                    match self.kind {
                        Kind::Spm => {
                            let mut s = String::with_capacity(t.len() + 3);
                            if self.add_space_prefix && prev_special {
                                s.push(' ');
                            }
                            s.push_str(t);
                            self.spm(&s.replace(' ', "\u{2581}"), &mut out);
                        }
                        Kind::Bpe => self.bpe(t, &mut out),
                    }
                    prev_special = false;
                }
            }
        }
        out
    }

    fn partition<'a>(&self, text: &'a str, parse_special: bool) -> Vec<Frag<'a>> {
        if text.is_empty() {
            return Vec::new();
        }
        let mut frags = vec![Frag::Text(text)];
        for (st, id, control) in &self.specials {
            if *control && !parse_special {
                continue;
            }
            let mut next = Vec::with_capacity(frags.len());
            for f in frags {
                match f {
                    Frag::Text(t) if t.contains(st.as_str()) => {
                        let mut rest = t;
                        while let Some(p) = rest.find(st.as_str()) {
                            if p > 0 {
                                next.push(Frag::Text(&rest[..p]));
                            }
                            next.push(Frag::Special(*id));
                            rest = &rest[p + st.len()..];
                        }
                        if !rest.is_empty() {
                            next.push(Frag::Text(rest));
                        }
                    }
                    other => next.push(other),
                }
            }
            frags = next;
        }
        frags
    }

    fn byte_token(&self, b: u8) -> Option<TokenId> {
        match self.kind {
            Kind::Spm => self.token_id(&format!("<0x{b:02X}>")),
            Kind::Bpe => {
                let mut s = String::new();
                s.push(self.byte_to_char[b as usize]);
                self.token_id(&s)
            }
        }
    }

    /// SentencePiece bigram merging by score (ties: leftmost first), as llama.cpp does.
    fn spm(&self, text: &str, out: &mut Vec<TokenId>) {
        if text.is_empty() {
            return;
        }
        // Symbols are byte ranges of `text` in a doubly linked list.
        let mut start: Vec<usize> = Vec::new();
        let mut len: Vec<usize> = Vec::new();
        for (i, c) in text.char_indices() {
            start.push(i);
            len.push(c.len_utf8());
        }
        let n = start.len();
        let mut prev: Vec<isize> = (0..n as isize).map(|i| i - 1).collect();
        let mut next: Vec<isize> = (1..=n as isize)
            .map(|i| if i == n as isize { -1 } else { i })
            .collect();
        let mut heap = BinaryHeap::new();
        let mut rev: HashMap<&str, (usize, usize)> = HashMap::new();
        for i in 1..n {
            try_add(
                self,
                text,
                i as isize - 1,
                i as isize,
                &start,
                &len,
                &mut heap,
                &mut rev,
            );
        }
        while let Some(b) = heap.pop() {
            if len[b.left] == 0 || len[b.right] == 0 || len[b.left] + len[b.right] != b.size {
                continue;
            }
            len[b.left] += len[b.right];
            len[b.right] = 0;
            next[b.left] = next[b.right];
            if next[b.right] >= 0 {
                prev[next[b.right] as usize] = b.left as isize;
            }
            try_add(
                self,
                text,
                prev[b.left],
                b.left as isize,
                &start,
                &len,
                &mut heap,
                &mut rev,
            );
            try_add(
                self,
                text,
                b.left as isize,
                next[b.left],
                &start,
                &len,
                &mut heap,
                &mut rev,
            );
        }
        // Resegment: a symbol that is not a token splits back along the merge that made it
        // (recorded in `rev`), down to byte tokens.
        fn reseg(
            t: &Tokenizer,
            text: &str,
            s: &str,
            rev: &HashMap<&str, (usize, usize)>,
            start: &[usize],
            out: &mut Vec<TokenId>,
            depth: u32,
        ) {
            if let Some(&id) = t.by_text.get(s) {
                out.push(id);
                return;
            }
            if depth < 64
                && let Some(&(l, r)) = rev.get(s)
            {
                let ls = &text[start[l]..start[r]];
                let rs = &text[start[r]..start[l] + s.len()];
                reseg(t, text, ls, rev, start, out, depth + 1);
                reseg(t, text, rs, rev, start, out, depth + 1);
                return;
            }
            for b in s.bytes() {
                out.extend(t.byte_token(b));
            }
        }
        let mut i: isize = 0;
        while i >= 0 {
            let u = i as usize;
            let s = &text[start[u]..start[u] + len[u]];
            reseg(self, text, s, &rev, &start, out, 0);
            i = next[u];
        }
    }

    fn pre_split<'a>(&self, text: &'a str) -> Vec<&'a str> {
        let mut pieces = vec![text];
        for re in &self.regexes {
            let mut next = Vec::with_capacity(pieces.len() * 2);
            for p in pieces {
                let mut last = 0;
                for m in re.find_iter(p) {
                    let Ok(m) = m else { break };
                    if m.start() > last {
                        next.push(&p[last..m.start()]);
                    }
                    if m.end() > m.start() {
                        next.push(m.as_str());
                    }
                    last = m.end();
                }
                if last < p.len() {
                    next.push(&p[last..]);
                }
            }
            pieces = next;
        }
        pieces
    }

    /// Byte-level BPE: pre-split, byte-encode, merge by rank (ties: leftmost first).
    fn bpe(&self, text: &str, out: &mut Vec<TokenId>) {
        for word in self.pre_split(text) {
            let enc: String = word
                .bytes()
                .map(|b| self.byte_to_char[b as usize])
                .collect();
            if self.ignore_merges
                && let Some(&id) = self.by_text.get(&enc)
            {
                out.push(id);
                continue;
            }
            let mut syms: Vec<String> = enc.chars().map(String::from).collect();
            // Small words dominate; a quadratic "find the best pair" loop beats a heap here and
            // gives the same result (lowest rank, leftmost on ties).
            loop {
                let mut best: Option<(u32, usize)> = None;
                for i in 0..syms.len().saturating_sub(1) {
                    let key = format!("{} {}", syms[i], syms[i + 1]);
                    if let Some(&r) = self.ranks.get(&key)
                        && best.is_none_or(|(br, _)| r < br)
                    {
                        best = Some((r, i));
                    }
                }
                let Some((_, i)) = best else { break };
                let right = syms.remove(i + 1);
                syms[i].push_str(&right);
            }
            for s in syms {
                match self.by_text.get(&s) {
                    Some(&id) => out.push(id),
                    None => {
                        for c in s.chars() {
                            if let Some(&b) = self.char_to_byte.get(&c) {
                                out.extend(self.byte_token(b));
                            }
                        }
                    }
                }
            }
        }
    }

    /// The bytes a token stands for. Control tokens render as nothing unless `special`.
    pub fn token_bytes(&self, id: TokenId, special: bool) -> Vec<u8> {
        let Some(text) = self.tokens.get(id as usize) else {
            return Vec::new();
        };
        let ty = self.types.get(id as usize).copied().unwrap_or(TT_NORMAL);
        match ty {
            TT_CONTROL | TT_UNKNOWN if !special => return Vec::new(),
            TT_CONTROL | TT_USER_DEFINED => return text.as_bytes().to_vec(),
            TT_BYTE if self.kind == Kind::Spm => {
                if let Some(b) = text
                    .strip_prefix("<0x")
                    .and_then(|h| h.strip_suffix('>'))
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    return vec![b];
                }
            }
            _ => {}
        }
        match self.kind {
            Kind::Spm => text.replace('\u{2581}', " ").into_bytes(),
            Kind::Bpe => text
                .chars()
                .flat_map(|c| {
                    self.char_to_byte
                        .get(&c)
                        .copied()
                        .map_or_else(|| c.to_string().into_bytes(), |b| vec![b])
                })
                .collect(),
        }
    }

    /// Decodes ids to text (lossy for invalid UTF-8), without special tokens.
    pub fn decode(&self, ids: &[TokenId]) -> String {
        let bytes: Vec<u8> = ids
            .iter()
            .flat_map(|&i| self.token_bytes(i, false))
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

#[derive(PartialEq)]
struct Big {
    score: f32,
    left: usize,
    right: usize,
    size: usize,
}
impl Eq for Big {}
impl Ord for Big {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        self.score
            .total_cmp(&o.score)
            .then_with(|| o.left.cmp(&self.left))
    }
}
impl PartialOrd for Big {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}

/// Queues the merge of symbols `l` and `r` if their concatenation is a token.
#[allow(clippy::too_many_arguments)]
fn try_add<'t>(
    tok: &Tokenizer,
    text: &'t str,
    l: isize,
    r: isize,
    start: &[usize],
    len: &[usize],
    heap: &mut BinaryHeap<Big>,
    rev: &mut HashMap<&'t str, (usize, usize)>,
) {
    if l < 0 || r < 0 {
        return;
    }
    let (l, r) = (l as usize, r as usize);
    let s = &text[start[l]..start[l] + len[l] + len[r]];
    if let Some(&id) = tok.by_text.get(s) {
        heap.push(Big {
            score: tok.scores.get(id as usize).copied().unwrap_or(0.0),
            left: l,
            right: r,
            size: s.len(),
        });
        rev.insert(s, (l, r));
    }
}

enum Frag<'a> {
    Text(&'a str),
    Special(TokenId),
}

/// Incremental detokenizer: feed ids, get only complete UTF-8 text out.
#[derive(Default)]
pub struct StreamDecoder {
    pending: Vec<u8>,
}

impl StreamDecoder {
    /// Adds a token's bytes and returns the text that is now complete.
    pub fn push(&mut self, tok: &Tokenizer, id: TokenId) -> String {
        self.push_bytes(&tok.token_bytes(id, false))
    }

    pub fn push_bytes(&mut self, b: &[u8]) -> String {
        self.pending.extend_from_slice(b);
        let mut out = String::new();
        loop {
            match std::str::from_utf8(&self.pending) {
                Ok(s) => {
                    out.push_str(s);
                    self.pending.clear();
                    return out;
                }
                Err(e) => {
                    let good = e.valid_up_to();
                    out.push_str(&String::from_utf8_lossy(&self.pending[..good]));
                    match e.error_len() {
                        // Incomplete character at the end: wait for more bytes.
                        None => {
                            self.pending.drain(..good);
                            return out;
                        }
                        // Invalid bytes can never complete: replace them and go on.
                        Some(n) => {
                            out.push('\u{FFFD}');
                            self.pending.drain(..good + n);
                        }
                    }
                }
            }
        }
    }

    /// Whatever is left at the end (an unfinished character becomes U+FFFD).
    pub fn finish(&mut self) -> String {
        let s = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_decoder_holds_partial_characters() {
        let mut d = StreamDecoder::default();
        let bytes = "h€!".as_bytes();
        assert_eq!(d.push_bytes(&bytes[..2]), "h");
        assert_eq!(d.push_bytes(&bytes[2..3]), "");
        assert_eq!(d.push_bytes(&bytes[3..]), "€!");
        assert_eq!(d.push_bytes(&[0xFF, b'a']), "\u{FFFD}a");
        assert_eq!(d.push_bytes(&[0xE2]), "");
        assert_eq!(d.finish(), "\u{FFFD}");
    }

    #[test]
    fn gpt2_byte_table_is_a_bijection() {
        let t = gpt2_byte_table();
        let set: std::collections::HashSet<char> = t.iter().copied().collect();
        assert_eq!(set.len(), 256);
        assert_eq!(t[b' ' as usize], 'Ġ');
        assert_eq!(t[b'\n' as usize], 'Ċ');
    }
}
