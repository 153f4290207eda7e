//! Tool calls out of the model's text, complete or as it streams.
//!
//! The parser reads text chunks as the engine produces them and answers [`Delta`]s: plain
//! content, the start of a call (its index, id and function name) and pieces of the call's
//! `arguments`. Content is passed on at once except a tail that could still grow into the
//! format's opening marker. After the marker the call text is buffered and scanned: its
//! top-level object must be `{"name": string, "arguments"|"parameters": value, ...}`.
//!
//! Malformed model output is never a broken call: when the text after a marker stops being a
//! call (bad JSON, no name, wrong separators) or ends unfinished, everything from the marker on
//! is returned as content instead. That is why, by default, a call is announced only once its
//! text is complete. When decoding is constrained by the call's grammar the text cannot go
//! wrong, and with `incremental` the name is announced as soon as it is read and the arguments
//! stream as they arrive.

use super::Format;

/// One piece of the parsed answer, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delta {
    Content(String),
    /// A new call: `index` counts calls from 0.
    Start {
        index: usize,
        id: String,
        name: String,
    },
    /// More of call `index`'s arguments (a JSON text once all pieces are joined).
    Args {
        index: usize,
        text: String,
    },
}

/// A whole parsed tool call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    /// The arguments as JSON text.
    pub arguments: String,
}

/// Where the parser is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Plain text, watching for the opening marker.
    Content,
    /// Inside the call section (after the marker), buffering.
    Calls,
    /// A call section failed to parse: the rest is content.
    Text,
}

/// The streaming parser; see the module docs.
pub struct Parser {
    format: Format,
    incremental: bool,
    id_prefix: String,
    mode: Mode,
    /// Content held back: it may be the start of the opening marker.
    held: String,
    /// Whether any non-whitespace content went out (Llama's plain JSON call must open the
    /// message).
    content_seen: bool,
    /// The call section's text from its marker on.
    section: String,
    /// Calls completed and announced.
    calls: Vec<ToolCall>,
    /// Section text up to the end of the last announced call.
    consumed: usize,
    /// For incremental output: the call being streamed (index), and how much of its
    /// arguments text went out.
    streaming: Option<(usize, usize)>,
}

/// What scanning one call object found so far.
#[derive(Debug, PartialEq, Eq)]
enum Scan {
    /// Not a call.
    Invalid,
    /// The text ended inside the object: the name (when read) and the arguments' start and
    /// how far they go so far (when begun).
    Partial {
        name: Option<String>,
        args: Option<(usize, usize)>,
        /// Whether the arguments value is complete.
        args_done: bool,
    },
    /// The object ends at `end` (exclusive).
    Done {
        end: usize,
        name: String,
        args: (usize, usize),
    },
}

impl Parser {
    /// A parser for `format`; calls get ids `{id_prefix}{index}`.
    pub fn new(format: Format, incremental: bool, id_prefix: &str) -> Parser {
        Parser {
            format,
            incremental,
            id_prefix: id_prefix.to_string(),
            mode: Mode::Content,
            held: String::new(),
            content_seen: false,
            section: String::new(),
            calls: Vec::new(),
            consumed: 0,
            streaming: None,
        }
    }

    /// The calls completed so far.
    pub fn calls(&self) -> &[ToolCall] {
        &self.calls
    }

    /// Feeds the next chunk of model text.
    pub fn push(&mut self, text: &str) -> Vec<Delta> {
        let mut out = Vec::new();
        match self.mode {
            Mode::Text => push_content(&mut out, text),
            Mode::Content => {
                self.held.push_str(text);
                self.scan_content(&mut out);
            }
            Mode::Calls => {
                self.section.push_str(text);
                self.scan_section(&mut out, false);
            }
        }
        out
    }

    /// The text has ended: whatever is held goes out; an unfinished call section is content.
    pub fn finish(&mut self) -> Vec<Delta> {
        let mut out = Vec::new();
        match self.mode {
            Mode::Content => {
                let h = std::mem::take(&mut self.held);
                push_content(&mut out, &h);
            }
            Mode::Calls => self.scan_section(&mut out, true),
            Mode::Text => {}
        }
        out
    }

    /// Content mode: pass text on up to a marker (then switch to the call section), holding
    /// back a tail that could be the start of one.
    fn scan_content(&mut self, out: &mut Vec<Delta>) {
        let markers = self.format.markers();
        let found = markers
            .iter()
            .filter_map(|m| self.held.find(m))
            .min()
            .map(|p| (p, false));
        // Llama's plain JSON call: a message that opens with `{`.
        let plain = (self.format == Format::Llama3 && !self.content_seen)
            .then(|| {
                let t = self.held.trim_start();
                t.starts_with('{').then(|| self.held.len() - t.len())
            })
            .flatten()
            .map(|p| (p, true));
        if let Some((pos, _)) = plain.or(found) {
            let before = self.held[..pos].to_string();
            push_content(out, &before);
            self.section = self.held[pos..].to_string();
            self.held.clear();
            self.mode = Mode::Calls;
            self.scan_section(out, false);
            return;
        }
        let mut keep = markers
            .iter()
            .map(|m| partial_suffix(&self.held, m))
            .max()
            .unwrap_or(0);
        if self.format == Format::Llama3 && !self.content_seen && self.held.trim().is_empty() {
            keep = self.held.len();
        }
        let cut = self.held.len() - keep;
        let text: String = self.held.drain(..cut).collect();
        if !text.trim().is_empty() {
            self.content_seen = true;
        }
        push_content(out, &text);
    }

    /// Call-section mode: announce what is complete (or, incrementally, what is known);
    /// `at_end`: no more text will come.
    fn scan_section(&mut self, out: &mut Vec<Delta>, at_end: bool) {
        let parsed = self.format.scan_section(&self.section);
        match parsed {
            Section::Invalid(done) => {
                self.announce_all(out, &done);
                self.fail(out);
            }
            Section::Calls {
                done,
                partial,
                pending,
                end,
            } => {
                self.announce_all(out, &done);
                if let Some(end) = end {
                    // The section closed; what follows is content again (no new section).
                    let rest = self.section[end..].to_string();
                    self.mode = Mode::Text;
                    push_content(out, &rest);
                    return;
                }
                if at_end {
                    if !pending && !self.calls.is_empty() && self.format.may_end_open() {
                        let rest = self.section[self.consumed..].to_string();
                        push_content(out, &rest);
                        return;
                    }
                    return self.fail(out);
                }
                if self.incremental
                    && let Some((name, args)) = partial
                {
                    let index = done.len();
                    let sent = match self.streaming {
                        Some((i, s)) if i == index => s,
                        _ => {
                            out.push(Delta::Start {
                                index,
                                id: format!("{}{index}", self.id_prefix),
                                name,
                            });
                            0
                        }
                    };
                    let mut now = sent;
                    if let Some((a, b)) = args
                        && b - a > sent
                    {
                        out.push(Delta::Args {
                            index,
                            text: self.section[a + sent..b].to_string(),
                        });
                        now = b - a;
                    }
                    self.streaming = Some((index, now));
                }
            }
        }
    }

    /// Announces the complete calls not announced yet.
    fn announce_all(&mut self, out: &mut Vec<Delta>, done: &[Done]) {
        for (i, c) in done.iter().enumerate().skip(self.calls.len()) {
            let call = ToolCall {
                id: format!("{}{i}", self.id_prefix),
                name: c.0.clone(),
                arguments: self.section[c.1.0..c.1.1].to_string(),
            };
            self.announce_done(out, i, &call);
            self.calls.push(call);
            self.consumed = c.2;
        }
    }

    /// Outputs a completed call (the rest of it when it was being streamed).
    fn announce_done(&mut self, out: &mut Vec<Delta>, index: usize, call: &ToolCall) {
        let sent = match self.streaming {
            Some((i, s)) if i == index => s,
            _ => {
                out.push(Delta::Start {
                    index,
                    id: call.id.clone(),
                    name: call.name.clone(),
                });
                0
            }
        };
        if call.arguments.len() > sent {
            out.push(Delta::Args {
                index,
                text: call.arguments[sent..].to_string(),
            });
        }
        self.streaming = Some((index, call.arguments.len()));
    }

    /// The section is not a call: it goes out as content (nothing of it was announced unless
    /// decoding was constrained, which cannot fail this way before the end of the text).
    fn fail(&mut self, out: &mut Vec<Delta>) {
        let s = std::mem::take(&mut self.section);
        self.mode = Mode::Text;
        // Calls already announced stand; the text after them is what failed.
        let streamed_partial = self.streaming.is_some_and(|(i, _)| i >= self.calls.len());
        if !streamed_partial {
            push_content(out, &s[self.consumed..]);
        }
    }
}

fn push_content(out: &mut Vec<Delta>, s: &str) {
    if s.is_empty() {
        return;
    }
    if let Some(Delta::Content(c)) = out.last_mut() {
        c.push_str(s);
    } else {
        out.push(Delta::Content(s.to_string()));
    }
}

/// The longest tail of `s` that is a proper prefix of `marker`.
fn partial_suffix(s: &str, marker: &str) -> usize {
    (1..marker.len().min(s.len() + 1))
        .rev()
        .find(|&k| s.is_char_boundary(s.len() - k) && marker.starts_with(&s[s.len() - k..]))
        .unwrap_or(0)
}

/// A complete call in a section: name, arguments span, end of its text.
type Done = (String, (usize, usize), usize);

/// A parsed call section.
#[derive(Debug)]
enum Section {
    /// Not (or no longer) a call section; the calls complete before the bad part.
    Invalid(Vec<Done>),
    Calls {
        /// Complete calls: name, the arguments' byte span and where the call's text ends.
        done: Vec<Done>,
        /// The call being read: its name (once read) and the arguments so far.
        partial: Option<(String, Option<(usize, usize)>)>,
        /// A call (or its opening syntax) has begun and is not complete.
        pending: bool,
        /// Where the section ended, when its closing syntax was seen.
        end: Option<usize>,
    },
}

impl Format {
    /// The texts that open a call section.
    fn markers(self) -> &'static [&'static str] {
        match self {
            Format::Hermes => &["<tool_call>"],
            Format::Mistral => &["[TOOL_CALLS]"],
            Format::Llama3 => &["<|python_tag|>"],
        }
    }

    /// Whether a section may end without closing syntax (Llama's calls run to the end of the
    /// message; Hermes' last `</tool_call>` closes its call, after which the text may end).
    fn may_end_open(self) -> bool {
        matches!(self, Format::Llama3 | Format::Hermes)
    }

    /// Scans a call section: `<tool_call>{..}</tool_call>` repeated (Hermes),
    /// `[TOOL_CALLS][{..}, ..]` (Mistral), `<|python_tag|>{..}; {..}` or plain `{..}` (Llama).
    fn scan_section(self, s: &str) -> Section {
        let b = s.as_bytes();
        let mut done: Vec<Done> = Vec::new();
        let mut pos;
        let partial_of = |scan: Scan, done: Vec<Done>| match scan {
            Scan::Invalid => Section::Invalid(done),
            Scan::Partial { name, args, .. } => Section::Calls {
                done,
                partial: name.map(|n| (n, args)),
                pending: true,
                end: None,
            },
            Scan::Done { .. } => Section::Invalid(done),
        };
        let open = |done: Vec<Done>, pending: bool| Section::Calls {
            done,
            partial: None,
            pending,
            end: None,
        };
        let closed = |done: Vec<Done>, end: usize| Section::Calls {
            done,
            partial: None,
            pending: false,
            end: Some(end),
        };
        match self {
            Format::Hermes => {
                pos = 0;
                loop {
                    let open_tag = "<tool_call>";
                    let gap = pos;
                    pos = skip_ws(b, pos);
                    if pos == b.len() {
                        return open(done, false);
                    }
                    if !starts_with_partial(&b[pos..], open_tag.as_bytes()) {
                        // Text after the last call (with the space before it): the section
                        // ends here.
                        return if done.is_empty() {
                            Section::Invalid(done)
                        } else {
                            closed(done, gap)
                        };
                    }
                    if b.len() - pos < open_tag.len() {
                        return open(done, true);
                    }
                    pos = skip_ws(b, pos + open_tag.len());
                    match scan_call(b, pos) {
                        Scan::Done { end, name, args } => {
                            let close = "</tool_call>";
                            let p = skip_ws(b, end);
                            if !starts_with_partial(&b[p..], close.as_bytes()) {
                                return Section::Invalid(done);
                            }
                            if b.len() - p < close.len() {
                                return open(done, true);
                            }
                            pos = p + close.len();
                            done.push((name, args, pos));
                        }
                        other => return partial_of(other, done),
                    }
                }
            }
            Format::Mistral => {
                pos = skip_ws(b, "[TOOL_CALLS]".len());
                if pos == b.len() {
                    return open(done, true);
                }
                // A bare object is one call; an array holds several.
                let array = b[pos] == b'[';
                if array {
                    pos += 1;
                }
                loop {
                    pos = skip_ws(b, pos);
                    if pos == b.len() {
                        return open(done, true);
                    }
                    match scan_call(b, pos) {
                        Scan::Done { end, name, args } => {
                            done.push((name, args, end));
                            if !array {
                                return closed(done, end);
                            }
                            let p = skip_ws(b, end);
                            match b.get(p) {
                                None => return open(done, true),
                                Some(b',') => pos = p + 1,
                                Some(b']') => return closed(done, p + 1),
                                Some(_) => return Section::Invalid(done),
                            }
                        }
                        other => return partial_of(other, done),
                    }
                }
            }
            Format::Llama3 => {
                pos = if s.starts_with("<|python_tag|>") {
                    "<|python_tag|>".len()
                } else {
                    0
                };
                let mut after_sep = true;
                loop {
                    pos = skip_ws(b, pos);
                    if pos == b.len() {
                        return open(done, after_sep);
                    }
                    match scan_call(b, pos) {
                        Scan::Done { end, name, args } => {
                            done.push((name, args, end));
                            let p = skip_ws(b, end);
                            match b.get(p) {
                                None => return open(done, false),
                                Some(b';') => {
                                    pos = p + 1;
                                    after_sep = true;
                                }
                                Some(_) => return Section::Invalid(done),
                            }
                        }
                        other => return partial_of(other, done),
                    }
                }
            }
        }
    }
}

fn skip_ws(b: &[u8], mut p: usize) -> usize {
    while p < b.len() && b[p].is_ascii_whitespace() {
        p += 1;
    }
    p
}

/// Whether `b` starts with `pat`, or is a prefix of it.
fn starts_with_partial(b: &[u8], pat: &[u8]) -> bool {
    let n = b.len().min(pat.len());
    b[..n] == pat[..n]
}

/// Scans one call object starting at `p`: `{"name": "...", "arguments": {...}}` with keys in
/// any order (`parameters` is Llama's name for `arguments`; other keys are ignored).
fn scan_call(b: &[u8], start: usize) -> Scan {
    let mut name: Option<String> = None;
    let mut args: Option<(usize, usize)> = None;
    let partial = |name: Option<String>, args: Option<(usize, usize)>, args_done: bool| {
        // A name is only reported once the arguments can follow it (order of keys aside).
        Scan::Partial {
            name,
            args,
            args_done,
        }
    };
    if b.get(start) != Some(&b'{') {
        return if start == b.len() {
            partial(None, None, false)
        } else {
            Scan::Invalid
        };
    }
    let mut p = start + 1;
    let mut first = true;
    loop {
        p = skip_ws(b, p);
        let Some(&c) = b.get(p) else {
            return partial(name, args, args.is_some());
        };
        if c == b'}' {
            return match (name, args) {
                (Some(name), Some(args)) => Scan::Done {
                    end: p + 1,
                    name,
                    args,
                },
                _ => Scan::Invalid,
            };
        }
        if !first {
            if c != b',' {
                return Scan::Invalid;
            }
            p = skip_ws(b, p + 1);
        }
        first = false;
        let Some(&c) = b.get(p) else {
            return partial(name, args, args.is_some());
        };
        if c != b'"' {
            return Scan::Invalid;
        }
        let key_end = match value_end(b, p) {
            End::At(e) => e,
            End::Open => return partial(name, args, args.is_some()),
            End::Bad => return Scan::Invalid,
        };
        let Ok(key) = serde_json::from_slice::<String>(&b[p..key_end]) else {
            return Scan::Invalid;
        };
        p = skip_ws(b, key_end);
        match b.get(p) {
            None => return partial(name, args, args.is_some()),
            Some(b':') => p = skip_ws(b, p + 1),
            Some(_) => return Scan::Invalid,
        }
        if p == b.len() {
            return partial(name, args, args.is_some());
        }
        let is_args = matches!(key.as_str(), "arguments" | "parameters");
        match value_end(b, p) {
            End::At(e) => {
                if key == "name" {
                    match serde_json::from_slice::<String>(&b[p..e]) {
                        Ok(n) if !n.is_empty() => name = Some(n),
                        _ => return Scan::Invalid,
                    }
                } else if is_args {
                    if args.is_some()
                        || serde_json::from_slice::<serde_json::Value>(&b[p..e])
                            .map_or(true, |v| !v.is_object())
                    {
                        return Scan::Invalid;
                    }
                    args = Some((p, e));
                }
                p = e;
            }
            End::Open => {
                // The arguments so far, only while they remain a valid JSON prefix and the
                // name is known (a call is announced by its name first).
                let streamable = is_args && name.is_some() && b[p] == b'{';
                return if streamable {
                    partial(name, Some((p, b.len())), false)
                } else {
                    partial(name, args, false)
                };
            }
            End::Bad => return Scan::Invalid,
        }
    }
}

/// Where a JSON value starting at `p` ends.
enum End {
    At(usize),
    /// The text ends inside it (and is a valid prefix so far).
    Open,
    Bad,
}

/// The end of the JSON value at `p`, checking it is well-formed (strings, nesting, literals,
/// numbers) without building it.
fn value_end(b: &[u8], p: usize) -> End {
    let mut v = crate::grammar::Validator::new();
    for (i, &c) in b[p..].iter().enumerate() {
        match v.push(c) {
            crate::grammar::Step::More => {}
            crate::grammar::Step::Complete => return End::At(p + i + 1),
            crate::grammar::Step::Reject => {
                // A number or literal ends where the next byte is not part of it.
                return if i > 0 && v.ended_before() {
                    End::At(p + i)
                } else {
                    End::Bad
                };
            }
        }
    }
    End::Open
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_marker_is_held_then_released() {
        let mut p = Parser::new(Format::Hermes, false, "c");
        assert_eq!(p.push("hi <tool"), vec![Delta::Content("hi ".into())]);
        assert_eq!(p.push("box"), vec![Delta::Content("<toolbox".into())]);
    }
}
