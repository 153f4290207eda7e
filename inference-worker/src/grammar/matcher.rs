//! The grammar's automaton over bytes: a stack of small `Copy` frames per live parse (more
//! than one only while an `anyOf` is undecided).
//!
//! Each frame is a place inside a value: before it (with the whitespace seen), inside a
//! literal set (a byte range of candidates sorted bytewise narrows as bytes come, so an `enum`
//! of any size is two indices), a string, a number, an object or an array. A byte a frame
//! cannot take may end it when it is complete (a number, a literal that is a prefix of a
//! longer one), and then goes to the frame below.

use std::sync::Arc;

use super::{
    ANY_ARRAY, ANY_LITERAL, ANY_NUMBER, ANY_OBJECT, ANY_STRING, Grammar, NUM_MAX, Node, NodeId,
    WS_MAX,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Frame {
    /// Before a value of `node`, `ws` whitespace bytes in; `close`: an array's first item,
    /// which `]` may replace (the array is empty).
    Value { node: NodeId, ws: u8, close: bool },
    /// Inside one of `node`'s literals: candidates `lo..hi`, `pos` bytes matched.
    Lit {
        node: NodeId,
        lo: u32,
        hi: u32,
        pos: u32,
    },
    /// Inside a string: `len` characters so far; `esc`: 1 after `\`, 2..=5 hex digits of
    /// `\u` still due (minus one); `cont`: UTF-8 continuation bytes still due.
    Str {
        node: NodeId,
        len: u32,
        esc: u8,
        cont: u8,
    },
    /// Inside a number: its state (see `num_step`) and length.
    Num { integer: bool, st: u8, len: u8 },
    /// Inside an object: `st` 0 after `{`, 1 after `,`, 2 before `:`, 3 after a value;
    /// `seen`: properties given; `cur`: the property whose value comes next.
    Obj {
        node: NodeId,
        seen: u64,
        st: u8,
        ws: u8,
        cur: u16,
    },
    /// Inside a key of a fixed-property object (the `Obj` frame is below it).
    Key {
        node: NodeId,
        lo: u32,
        hi: u32,
        pos: u32,
    },
    /// Inside an array after `count` items (the first counted as soon as `[` is read; its
    /// `Value` frame may still turn out to be `]`).
    Arr { node: NodeId, count: u32, ws: u8 },
    /// The value is complete.
    Done,
}

/// What one byte did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    More,
    /// The value is complete (nothing may follow).
    Complete,
    Reject,
}

/// The automaton's state over one grammar.
#[derive(Debug, Clone)]
pub struct Matcher {
    g: Arc<Grammar>,
    stacks: Vec<Vec<Frame>>,
}

/// A frame's answer to a byte.
enum Act {
    /// Replace the frame with these (last on top) and take the byte.
    Become(Frame, Option<Frame>),
    /// The frame is complete: pop it and offer the byte to the one below.
    PopRetry,
    /// Take the byte, pop the frame.
    PopTake,
    /// Take the byte, pop the frame and the one below.
    PopTwoTake,
    No,
}

fn is_ws(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | b'\r')
}

impl Matcher {
    pub fn new(g: Arc<Grammar>) -> Matcher {
        let root = g.root;
        let mut m = Matcher {
            g,
            stacks: vec![vec![
                Frame::Done,
                Frame::Value {
                    node: root,
                    ws: 0,
                    close: false,
                },
            ]],
        };
        m.expand();
        m
    }

    /// Clones `other` into `self`, reusing allocations.
    pub fn copy_from(&mut self, other: &Matcher) {
        self.stacks.clone_from(&other.stacks);
    }

    /// Feeds one byte; false (state unchanged in meaning: dead) when it cannot come next.
    pub fn advance(&mut self, c: u8) -> bool {
        if self.stacks.len() == 1 {
            let mut s = std::mem::take(&mut self.stacks[0]);
            let ok = self.step(&mut s, c);
            self.stacks[0] = s;
            if !ok {
                return false;
            }
        } else {
            let mut all = std::mem::take(&mut self.stacks);
            all.retain_mut(|s| self.step(s, c));
            if all.is_empty() {
                return false;
            }
            let mut uniq: Vec<Vec<Frame>> = Vec::with_capacity(all.len());
            for s in all {
                if !uniq.contains(&s) {
                    uniq.push(s);
                }
            }
            let all = uniq;
            self.stacks = all;
        }
        self.expand();
        true
    }

    /// Feeds bytes; false when one cannot come (the matcher is then dead: discard it).
    pub fn advance_all(&mut self, bytes: &[u8]) -> bool {
        bytes.iter().all(|&c| self.advance(c))
    }

    /// Whether the text so far is a complete value (generation may end here).
    pub fn can_finish(&self) -> bool {
        self.stacks.iter().any(|s| {
            s.iter()
                .rev()
                .find(|f| !self.can_end(f))
                .is_some_and(|f| *f == Frame::Done)
        })
    }

    /// Whether nothing more may follow (every parse has closed its value).
    pub fn is_done(&self) -> bool {
        self.stacks.iter().all(|s| s.last() == Some(&Frame::Done))
    }

    /// Whether the top frame is inside an unconstrained string where any byte but `"`, `\`,
    /// and controls continues it the same way (the mask's fast path).
    pub(super) fn in_plain_string(&self) -> bool {
        self.stacks.len() == 1
            && matches!(self.stacks[0].last(), Some(Frame::Str { node, esc: 0, cont: 0, .. }) if *node == ANY_STRING)
    }

    /// The bytes of a shortest way to finish the value from here (empty when it may end
    /// now): what decoding is steered to when the token budget runs out.
    pub fn closing(&self) -> Vec<u8> {
        let mut m = self.clone();
        let mut out = Vec::new();
        while !m.can_finish() && out.len() < 4096 {
            let Some(b) = m.close_byte() else {
                break;
            };
            if !m.advance(b) {
                break;
            }
            out.push(b);
        }
        out
    }

    /// The next byte towards the shortest finish (first parse; frames that may end are
    /// passed over, the byte ends them).
    fn close_byte(&self) -> Option<u8> {
        let s = self.stacks.first()?;
        let i = s.iter().rposition(|f| !self.can_end(f))?;
        let below = i.checked_sub(1).map(|j| s[j]);
        Some(match s[i] {
            Frame::Done => return None,
            Frame::Value { node, close, .. } => {
                if close
                    && let Some(Frame::Arr { node: arr, .. }) = below
                    && matches!(self.g.nodes[arr as usize], Node::Array { min: 0, .. })
                {
                    b']'
                } else {
                    self.first_byte(node, 0)?
                }
            }
            Frame::Lit { node, lo, hi, pos } => {
                let l = self.lits(node)[lo as usize..hi as usize]
                    .iter()
                    .filter(|l| l.len() > pos as usize)
                    .min_by_key(|l| l.len())?;
                l[pos as usize]
            }
            Frame::Str {
                node,
                len,
                esc,
                cont,
            } => {
                let min = match self.g.nodes[node as usize] {
                    Node::String { min, .. } => min,
                    _ => 0,
                };
                match (cont, esc) {
                    (1.., _) => 0xA0,
                    (_, 1) => b'n',
                    (_, 2..) => b'0',
                    _ if len < min => b'a',
                    _ => b'"',
                }
            }
            Frame::Num { .. } => b'0',
            Frame::Obj { node, seen, st, .. } => {
                let Node::Object(o) = &self.g.nodes[node as usize] else {
                    return None;
                };
                let missing = o.required & !seen != 0;
                match st {
                    0 if missing => b'"',
                    3 if missing => b',',
                    0 | 3 => b'}',
                    1 => b'"',
                    _ => b':',
                }
            }
            Frame::Key { node, lo, hi, pos } => {
                let Node::Object(o) = &self.g.nodes[node as usize] else {
                    return None;
                };
                let seen = match below {
                    Some(Frame::Obj { seen, .. }) => seen,
                    _ => 0,
                };
                let allowed = self.allowed_props(o, seen);
                let ok = |k: &u32| allowed & (1 << o.prop[*k as usize]) != 0;
                let req = |k: &u32| o.required & (1 << o.prop[*k as usize]) != 0;
                let k = (lo..hi)
                    .filter(|k| ok(k) && req(k))
                    .chain((lo..hi).filter(ok))
                    .next()?;
                o.keys[k as usize][pos as usize]
            }
            Frame::Arr { node, count, .. } => match self.g.nodes[node as usize] {
                Node::Array { min, .. } if count < min => b',',
                _ => b']',
            },
        })
    }

    /// The first byte of a shortest value of `node`.
    fn first_byte(&self, node: NodeId, depth: usize) -> Option<u8> {
        if depth > 64 {
            return None;
        }
        Some(match &self.g.nodes[node as usize] {
            Node::Any | Node::Number { .. } => b'0',
            Node::Object(_) => b'{',
            Node::Array { .. } => b'[',
            Node::String { .. } => b'"',
            Node::Lits(l) => *l.iter().min_by_key(|l| l.len())?.first()?,
            Node::AnyOf(a) => self.first_byte(*a.first()?, depth + 1)?,
            Node::Seq(p) => self.first_byte(*p.first()?, depth + 1)?,
            Node::Pending => return None,
        })
    }

    fn can_end(&self, f: &Frame) -> bool {
        match *f {
            Frame::Num { st, .. } => num_accepts(st),
            Frame::Lit { node, lo, pos, .. } => self.lits(node)[lo as usize].len() == pos as usize,
            _ => false,
        }
    }

    fn lits(&self, node: NodeId) -> &[Vec<u8>] {
        match &self.g.nodes[node as usize] {
            Node::Lits(l) => l,
            _ => &[],
        }
    }

    /// Replaces undecided `anyOf`/sequence frames on top with their alternatives / parts.
    fn expand(&mut self) {
        let g = self.g.clone();
        let needs = |s: &Vec<Frame>| {
            matches!(s.last(), Some(Frame::Value { node, .. })
                if matches!(g.nodes[*node as usize], Node::AnyOf(_) | Node::Seq(_)))
        };
        if !self.stacks.iter().any(needs) {
            return;
        }
        let mut out: Vec<Vec<Frame>> = Vec::new();
        let mut work: Vec<Vec<Frame>> = std::mem::take(&mut self.stacks);
        let mut guard = 0;
        while let Some(mut s) = work.pop() {
            guard += 1;
            if guard > 4096 {
                break;
            }
            match s.last().copied() {
                Some(Frame::Value { node, ws, close }) => match &g.nodes[node as usize] {
                    Node::AnyOf(alts) => {
                        s.pop();
                        for &a in alts {
                            let mut t = s.clone();
                            t.push(Frame::Value { node: a, ws, close });
                            work.push(t);
                        }
                    }
                    Node::Seq(parts) => {
                        s.pop();
                        for (i, &p) in parts.iter().enumerate().rev() {
                            s.push(Frame::Value {
                                node: p,
                                ws: if i == 0 { ws } else { WS_MAX },
                                close: false,
                            });
                        }
                        work.push(s);
                    }
                    _ => {
                        if !out.contains(&s) {
                            out.push(s);
                        }
                    }
                },
                _ => {
                    if !out.contains(&s) {
                        out.push(s);
                    }
                }
            }
        }
        self.stacks = out;
    }

    /// One byte through one parse.
    fn step(&self, s: &mut Vec<Frame>, c: u8) -> bool {
        loop {
            let Some(&top) = s.last() else {
                return false;
            };
            let below = s.len().checked_sub(2).map(|i| s[i]);
            match self.act(top, below, c) {
                Act::Become(a, b) => {
                    s.pop();
                    s.push(a);
                    if let Some(b) = b {
                        s.push(b);
                    }
                }
                Act::PopTake => {
                    s.pop();
                }
                Act::PopTwoTake => {
                    s.pop();
                    s.pop();
                }
                Act::PopRetry => {
                    s.pop();
                    continue;
                }
                Act::No => return false,
            }
            match s.last().copied() {
                // A literal with nothing left to match ends now.
                Some(Frame::Lit { node, lo, hi, pos })
                    if hi == lo + 1 && self.lits(node)[lo as usize].len() == pos as usize =>
                {
                    s.pop();
                }
                // A key ends at its closing quote: the object records which property it is.
                Some(Frame::Key { node, lo, hi, pos }) if hi == lo + 1 => {
                    if let Node::Object(o) = &self.g.nodes[node as usize]
                        && o.keys[lo as usize].len() == pos as usize
                    {
                        s.pop();
                        let prop = o.prop[lo as usize];
                        if let Some(Frame::Obj { seen, cur, .. }) = s.last_mut() {
                            *seen |= 1 << prop;
                            *cur = prop;
                        }
                    }
                }
                _ => {}
            }
            return true;
        }
    }

    /// What frame `f` (over `below`) does with byte `c`.
    fn act(&self, f: Frame, below: Option<Frame>, c: u8) -> Act {
        match f {
            Frame::Done => Act::No,
            Frame::Value { node, ws, close } => {
                // A literal may itself start with whitespace (a tool call's wrapper).
                if is_ws(c)
                    && matches!(self.g.nodes[node as usize], Node::Lits(_))
                    && let act @ Act::Become(..) = self.start_value(node, c)
                {
                    return act;
                }
                if is_ws(c) {
                    return if ws < WS_MAX {
                        Act::Become(
                            Frame::Value {
                                node,
                                ws: ws + 1,
                                close,
                            },
                            None,
                        )
                    } else {
                        Act::No
                    };
                }
                if close
                    && c == b']'
                    && let Some(Frame::Arr { node: arr, .. }) = below
                    && matches!(self.g.nodes[arr as usize], Node::Array { min: 0, .. })
                {
                    return Act::PopTwoTake;
                }
                self.start_value(node, c)
            }
            Frame::Lit { node, lo, hi, pos } => {
                let lits = self.lits(node);
                match narrow(lits, lo, hi, pos, c) {
                    Some((l, h)) => Act::Become(
                        Frame::Lit {
                            node,
                            lo: l,
                            hi: h,
                            pos: pos + 1,
                        },
                        None,
                    ),
                    None if lits[lo as usize].len() == pos as usize => Act::PopRetry,
                    None => Act::No,
                }
            }
            Frame::Str {
                node,
                len,
                esc,
                cont,
            } => self.string_byte(node, len, esc, cont, c),
            Frame::Num { integer, st, len } => match num_step(st, c, integer) {
                Some(n) if len < NUM_MAX => Act::Become(
                    Frame::Num {
                        integer,
                        st: n,
                        len: len + 1,
                    },
                    None,
                ),
                _ if num_accepts(st) => Act::PopRetry,
                _ => Act::No,
            },
            Frame::Obj {
                node,
                seen,
                st,
                ws,
                cur,
            } => self.object_byte(node, seen, st, ws, cur, c),
            Frame::Key { node, lo, hi, pos } => {
                let seen = match below {
                    Some(Frame::Obj { seen, .. }) => seen,
                    _ => 0,
                };
                self.key_byte(node, seen, lo, hi, pos, c)
            }
            Frame::Arr { node, count, ws } => self.array_byte(node, count, ws, c),
        }
    }

    fn start_value(&self, node: NodeId, c: u8) -> Act {
        let g = &self.g;
        match &g.nodes[node as usize] {
            Node::Any => match c {
                b'{' => self.start_value(ANY_OBJECT, c),
                b'[' => self.start_value(ANY_ARRAY, c),
                b'"' => self.start_value(ANY_STRING, c),
                b'-' | b'0'..=b'9' => self.start_value(ANY_NUMBER, c),
                _ => self.start_value(ANY_LITERAL, c),
            },
            Node::Object(_) if c == b'{' => Act::Become(
                Frame::Obj {
                    node,
                    seen: 0,
                    st: 0,
                    ws: 0,
                    cur: 0,
                },
                None,
            ),
            Node::Array { items, max, .. } if c == b'[' => {
                if *max == 0 {
                    Act::Become(
                        Frame::Arr {
                            node,
                            count: 0,
                            ws: 0,
                        },
                        None,
                    )
                } else {
                    Act::Become(
                        Frame::Arr {
                            node,
                            count: 1,
                            ws: 0,
                        },
                        Some(Frame::Value {
                            node: *items,
                            ws: 0,
                            close: true,
                        }),
                    )
                }
            }
            Node::String { .. } if c == b'"' => Act::Become(
                Frame::Str {
                    node,
                    len: 0,
                    esc: 0,
                    cont: 0,
                },
                None,
            ),
            Node::Number { integer } => match num_step(0, c, *integer) {
                Some(st) => Act::Become(
                    Frame::Num {
                        integer: *integer,
                        st,
                        len: 1,
                    },
                    None,
                ),
                None => Act::No,
            },
            Node::Lits(l) => match narrow(l, 0, l.len() as u32, 0, c) {
                Some((lo, hi)) => Act::Become(
                    Frame::Lit {
                        node,
                        lo,
                        hi,
                        pos: 1,
                    },
                    None,
                ),
                None => Act::No,
            },
            _ => Act::No,
        }
    }

    fn string_byte(&self, node: NodeId, len: u32, esc: u8, cont: u8, c: u8) -> Act {
        let (min, max) = match self.g.nodes[node as usize] {
            Node::String { min, max } => (min, max),
            _ => (0, u32::MAX),
        };
        let st = |len, esc, cont| {
            Act::Become(
                Frame::Str {
                    node,
                    len,
                    esc,
                    cont,
                },
                None,
            )
        };
        if cont > 0 {
            return if (0x80..=0xBF).contains(&c) {
                st(len, 0, cont - 1)
            } else {
                Act::No
            };
        }
        match esc {
            1 => match c {
                b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => st(len, 0, 0),
                b'u' => st(len, 5, 0),
                _ => Act::No,
            },
            2..=5 if c.is_ascii_hexdigit() => st(len, if esc == 2 { 0 } else { esc - 1 }, 0),
            2..=5 => Act::No,
            _ => {
                let room = len < max;
                match c {
                    b'"' if len >= min => Act::PopTake,
                    b'\\' if room => st(len + 1, 1, 0),
                    0x20..=0x7F if c != b'"' && c != b'\\' && room => st(len + 1, 0, 0),
                    0xC2..=0xDF if room => st(len + 1, 0, 1),
                    0xE0..=0xEF if room => st(len + 1, 0, 2),
                    0xF0..=0xF4 if room => st(len + 1, 0, 3),
                    _ => Act::No,
                }
            }
        }
    }

    fn object_byte(&self, node: NodeId, seen: u64, st: u8, ws: u8, cur: u16, c: u8) -> Act {
        let Node::Object(o) = &self.g.nodes[node as usize] else {
            return Act::No;
        };
        let obj = |seen, st, ws, cur| Frame::Obj {
            node,
            seen,
            st,
            ws,
            cur,
        };
        if is_ws(c) {
            return if ws < WS_MAX {
                Act::Become(obj(seen, st, ws + 1, cur), None)
            } else {
                Act::No
            };
        }
        let complete = seen & o.required == o.required;
        let more = o.any_keys || self.allowed_props(o, seen) != 0;
        match (st, c) {
            (0 | 3, b'}') if complete => Act::PopTake,
            (0 | 1, b'"') if more => {
                let key = if o.any_keys {
                    Frame::Str {
                        node: ANY_STRING,
                        len: 0,
                        esc: 0,
                        cont: 0,
                    }
                } else {
                    Frame::Key {
                        node,
                        lo: 0,
                        hi: o.keys.len() as u32,
                        pos: 0,
                    }
                };
                Act::Become(obj(seen, 2, 0, cur), Some(key))
            }
            (2, b':') => {
                let value = if o.any_keys {
                    super::ANY
                } else {
                    o.values[cur as usize]
                };
                Act::Become(
                    obj(seen, 3, 0, cur),
                    Some(Frame::Value {
                        node: value,
                        ws: 0,
                        close: false,
                    }),
                )
            }
            (3, b',') if more => Act::Become(obj(seen, 1, 0, cur), None),
            _ => Act::No,
        }
    }

    /// Properties that may be given next (bits by property index).
    fn allowed_props(&self, o: &super::Object, seen: u64) -> u64 {
        let n = o.values.len();
        let all = if n == 64 { u64::MAX } else { (1u64 << n) - 1 };
        let free = all & !seen;
        if o.ordered {
            free & free.wrapping_neg()
        } else {
            free
        }
    }

    fn key_byte(&self, node: NodeId, seen: u64, lo: u32, hi: u32, pos: u32, c: u8) -> Act {
        let Node::Object(o) = &self.g.nodes[node as usize] else {
            return Act::No;
        };
        let Some((l, h)) = narrow(&o.keys, lo, hi, pos, c) else {
            return Act::No;
        };
        let allowed = self.allowed_props(o, seen);
        if !(l..h).any(|k| allowed & (1 << o.prop[k as usize]) != 0) {
            return Act::No;
        }
        Act::Become(
            Frame::Key {
                node,
                lo: l,
                hi: h,
                pos: pos + 1,
            },
            None,
        )
    }

    fn array_byte(&self, node: NodeId, count: u32, ws: u8, c: u8) -> Act {
        let Node::Array { items, min, max } = self.g.nodes[node as usize] else {
            return Act::No;
        };
        if is_ws(c) {
            return if ws < WS_MAX {
                Act::Become(
                    Frame::Arr {
                        node,
                        count,
                        ws: ws + 1,
                    },
                    None,
                )
            } else {
                Act::No
            };
        }
        match c {
            b']' if count >= min => Act::PopTake,
            b',' if count < max => Act::Become(
                Frame::Arr {
                    node,
                    count: count + 1,
                    ws: 0,
                },
                Some(Frame::Value {
                    node: items,
                    ws: 0,
                    close: false,
                }),
            ),
            _ => Act::No,
        }
    }
}

/// Narrows candidates `lo..hi` (sorted, sharing their first `pos` bytes) to those whose byte
/// `pos` is `c`: a contiguous sub-range.
fn narrow(lits: &[Vec<u8>], lo: u32, hi: u32, pos: u32, c: u8) -> Option<(u32, u32)> {
    let p = pos as usize;
    let r = &lits[lo as usize..hi as usize];
    let start = r.partition_point(|l| l.get(p).is_none_or(|&b| b < c));
    let end = r.partition_point(|l| l.get(p).is_none_or(|&b| b <= c));
    (start < end).then(|| (lo + start as u32, lo + end as u32))
}

/// JSON number states: 0 start, 1 after `-`, 2 after a leading `0`, 3 integer digits, 4 after
/// `.`, 5 fraction digits, 6 after `e`, 7 after the exponent's sign, 8 exponent digits.
fn num_step(st: u8, c: u8, integer: bool) -> Option<u8> {
    match (st, c) {
        (0, b'-') => Some(1),
        (0 | 1, b'0') => Some(2),
        (0 | 1, b'1'..=b'9') => Some(3),
        (3, b'0'..=b'9') => Some(3),
        (2 | 3, b'.') if !integer => Some(4),
        (4 | 5, b'0'..=b'9') => Some(5),
        (2 | 3 | 5, b'e' | b'E') if !integer => Some(6),
        (6, b'+' | b'-') => Some(7),
        (6..=8, b'0'..=b'9') => Some(8),
        _ => None,
    }
}

fn num_accepts(st: u8) -> bool {
    matches!(st, 2 | 3 | 5 | 8)
}

/// Checks that bytes form one JSON value, as they come (the tool-call parser's scanner).
pub struct Validator {
    m: Matcher,
    /// Whether the bytes before the last one pushed formed a whole value.
    before: bool,
}

impl Default for Validator {
    fn default() -> Self {
        Validator::new()
    }
}

impl Validator {
    pub fn new() -> Validator {
        static ANY: std::sync::OnceLock<Arc<Grammar>> = std::sync::OnceLock::new();
        Validator {
            m: Matcher::new(ANY.get_or_init(|| Arc::new(Grammar::any())).clone()),
            before: false,
        }
    }

    pub fn push(&mut self, c: u8) -> Step {
        self.before = self.m.can_finish();
        if !self.m.advance(c) {
            Step::Reject
        } else if self.m.is_done() {
            Step::Complete
        } else {
            Step::More
        }
    }

    /// After a rejected byte: whether the bytes before it formed a whole value (a number or
    /// literal ends where the next byte is not part of it).
    pub fn ended_before(&self) -> bool {
        self.before
    }
}
