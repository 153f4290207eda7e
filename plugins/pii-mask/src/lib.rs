//! `pii-mask` (stages `adapt` + `validate`): personal data never reaches an external
//! provider, and the caller still gets an answer that reads as if it had.
//!
//! `adapt`, for a request going to a backend in `external_backends`, replaces every e-mail
//! address, phone number (E.164 and common national formats), payment card number
//! (Luhn-checked), IBAN (mod-97 checked), US social security number, IPv4/IPv6 address and
//! custom pattern in the messages (text, tool-call arguments) and the prompt with a
//! placeholder: `<EMAIL_1>`, `<PHONE_2>`, ... The same value gets the same placeholder
//! throughout the request. `validate` puts the originals back wherever the answer repeats a
//! placeholder (content, tool-call arguments, any string of the answer), unless `restore =
//! false`.
//!
//! The mapping lives only for the request: nothing is stored. `validate` receives the
//! client's original request and masks it again to rebuild the mapping (the masking is
//! deterministic), so no state is shared between the stages or kept after the answer.
//!
//! Streamed answers are restored as they are relayed, chunk by chunk (the `chunks` stage,
//! contract `0.2`): `adapt` keeps the request's mapping in the request's plugin state, and
//! each piece of text goes to the client with its placeholders restored. Only a possible
//! start of a placeholder at a piece's end (`<EMA`) is held back, until the next piece shows
//! whether it is one; a placeholder split across chunks is thus restored whole, and the
//! stream is never buffered. (With `validate_streams = "buffer"` in
//! `[plugins.overrides.pii-mask]` the gateway instead holds the stream until complete and
//! `validate` restores it whole.)
//!
//! Config keys (`[plugins.config.pii-mask]`):
//!
//! | key | default | meaning |
//! | --- | --- | --- |
//! | `external_backends` | `[]` | backends (`[[backends]] name`) whose requests are masked; others go unmasked |
//! | `entities` | all | which built-in detectors run: `"email"`, `"phone"`, `"card"`, `"iban"`, `"ssn"`, `"ip"` |
//! | `custom` | `{}` | more entities: `NAME = "regex"`, each match masked as `<NAME_n>` (names of letters, digits and `_`; checked before the built-ins) |
//! | `restore` | `true` | put the originals back in the answer |
//!
//! Metrics (`switchyard_plugin_counter_total{plugin="pii-mask"}`): `masked_<entity>` (values
//! masked, per entity: `masked_email`, `masked_card`, ..., `masked_<name>` for custom ones)
//! and `restored` (placeholders put back).

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::rc::Rc;

use regex::Regex;
use serde_json::Value;
use switchyard_sdk::host::{
    Level, config, config_list, config_or, counter_add, log, request_get, request_set,
};
use switchyard_sdk::{Adapt, Chunks, ContentPart, Request, Response, Target, Validate, Verdict};

pub struct PiiMask;

/// The extra check a candidate match must pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    None,
    Luhn,
    Iban,
    Ssn,
    Ipv4,
    Ipv6,
    Phone,
}

struct Detector {
    /// The placeholder's label (`EMAIL`), and lower-cased, the metric's suffix.
    label: String,
    re: Regex,
    check: Check,
}

struct Settings {
    external: Vec<String>,
    restore: bool,
    detectors: Vec<Detector>,
}

const BUILTIN: &[(&str, &str, &str, Check)] = &[
    (
        "email",
        "EMAIL",
        r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}",
        Check::None,
    ),
    (
        "iban",
        "IBAN",
        r"\b[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]){11,30}\b",
        Check::Iban,
    ),
    (
        "card",
        "CARD",
        r"\b(?:[0-9][ -]?){12,18}[0-9]\b",
        Check::Luhn,
    ),
    ("ssn", "SSN", r"\b[0-9]{3}-[0-9]{2}-[0-9]{4}\b", Check::Ssn),
    (
        "ip",
        "IP",
        r"(?i)(?:[0-9a-f]{0,4}:){2,7}[0-9a-f]{0,4}",
        Check::Ipv6,
    ),
    (
        "ip",
        "IP",
        r"\b(?:[0-9]{1,3}\.){3}[0-9]{1,3}\b",
        Check::Ipv4,
    ),
    (
        "phone",
        "PHONE",
        // E.164 and international (+CC with spaces, dots, dashes, brackets); North American
        // (555) 123-4567 / 555-123-4567; UK/DE/FR-style national numbers with a trunk 0.
        r"\+[1-9][0-9]{0,3}(?:[ .-]?\(?[0-9]{1,4}\)?){2,5}|(?:\([2-9][0-9]{2}\) ?|\b[2-9][0-9]{2}[ .-])[0-9]{3}[ .-][0-9]{4}\b|\b0[1-9](?:[ .][0-9]{2}){4}\b|\b0[0-9]{2,4}[ /-]?[0-9]{3,4}[ -]?[0-9]{3,4}\b",
        Check::Phone,
    ),
];

fn load() -> Result<Settings, String> {
    let external = config_list("external_backends");
    let restore = config_or("restore", true);
    let entities = if config("entities").is_some() {
        config_list("entities")
    } else {
        BUILTIN.iter().map(|b| b.0.to_string()).collect()
    };
    for e in &entities {
        if !BUILTIN.iter().any(|b| b.0 == e) {
            return Err(format!(
                "`entities`: unknown entity {e:?} (email, phone, card, iban, ssn, ip)"
            ));
        }
    }
    let mut detectors = Vec::new();
    if let Some(text) = config("custom") {
        let table: serde_json::Map<String, Value> = serde_json::from_str(&text)
            .map_err(|_| "`custom` must be a table of NAME = \"regex\"".to_string())?;
        for (name, pattern) in table {
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!(
                    "`custom.{name}`: a name is letters, digits and `_`"
                ));
            }
            let pattern = pattern
                .as_str()
                .ok_or(format!("`custom.{name}` must be a regex (a string)"))?;
            let re = Regex::new(pattern).map_err(|e| format!("`custom.{name}`: {e}"))?;
            detectors.push(Detector {
                label: name.to_ascii_uppercase(),
                re,
                check: Check::None,
            });
        }
    }
    for (key, label, pattern, check) in BUILTIN {
        if entities.iter().any(|e| e == key) {
            detectors.push(Detector {
                label: label.to_string(),
                re: Regex::new(pattern).map_err(|e| format!("built-in {key}: {e}"))?,
                check: *check,
            });
        }
    }
    Ok(Settings {
        external,
        restore,
        detectors,
    })
}

thread_local! {
    static SETTINGS: RefCell<Option<Rc<Settings>>> = const { RefCell::new(None) };
}

/// This instance's settings and compiled detectors, built on first use. A broken config
/// traps the call after logging why (the gateway counts it and applies `on_error`: give the
/// plugin `on_error = "reject"` so an unmasked request never leaves).
fn settings() -> Rc<Settings> {
    SETTINGS.with(|s| {
        if let Some(s) = s.borrow().as_ref() {
            return s.clone();
        }
        let loaded = match load() {
            Ok(l) => Rc::new(l),
            Err(e) => {
                log(Level::Error, &e);
                panic!("{e}");
            }
        };
        *s.borrow_mut() = Some(loaded.clone());
        loaded
    })
}

fn digits(s: &str) -> Vec<u8> {
    s.bytes()
        .filter(u8::is_ascii_digit)
        .map(|b| b - b'0')
        .collect()
}

fn luhn(s: &str) -> bool {
    let d = digits(s);
    if !(13..=19).contains(&d.len()) {
        return false;
    }
    let sum: u32 = d
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &x)| {
            let x = u32::from(x);
            if i % 2 == 1 {
                let y = x * 2;
                if y > 9 { y - 9 } else { y }
            } else {
                x
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// The number has the prefix and length of a card network (Visa, Mastercard, Amex,
/// Discover, JCB, Diners): a Luhn check alone passes one random number in ten.
fn network(s: &str) -> bool {
    let d = digits(s);
    let prefix = |n: usize| d[..n].iter().fold(0u32, |a, &x| a * 10 + u32::from(x));
    let len = d.len();
    match d[0] {
        4 => matches!(len, 13 | 16 | 19),
        5 => (51..=55).contains(&prefix(2)) && len == 16,
        2 => (2221..=2720).contains(&prefix(4)) && len == 16,
        3 => match prefix(2) {
            34 | 37 => len == 15,
            35 => (16..=19).contains(&len),
            30 | 36 | 38 | 39 => (14..=19).contains(&len),
            _ => false,
        },
        6 => {
            (prefix(4) == 6011 || prefix(2) == 65 || (644..=649).contains(&prefix(3)))
                && (16..=19).contains(&len)
        }
        _ => false,
    }
}

fn iban(s: &str) -> bool {
    let compact: Vec<u8> = s.bytes().filter(|b| *b != b' ').collect();
    if !(15..=34).contains(&compact.len()) {
        return false;
    }
    let (head, tail) = compact.split_at(4);
    let mut rem: u32 = 0;
    for &b in tail.iter().chain(head) {
        let v = match b {
            b'0'..=b'9' => u32::from(b - b'0'),
            b'A'..=b'Z' => u32::from(b - b'A') + 10,
            _ => return false,
        };
        rem = if v >= 10 {
            (rem * 100 + v) % 97
        } else {
            (rem * 10 + v) % 97
        };
    }
    rem == 1
}

fn ssn(s: &str) -> bool {
    let d = digits(s);
    let num = |r: std::ops::Range<usize>| d[r].iter().fold(0u32, |a, &x| a * 10 + u32::from(x));
    let (area, group, serial) = (num(0..3), num(3..5), num(5..9));
    area != 0 && area != 666 && area < 900 && group != 0 && serial != 0
}

/// The byte before `start` and the one at `end`, for boundary checks.
fn around(text: &str, start: usize, end: usize) -> (Option<u8>, Option<u8>) {
    let b = text.as_bytes();
    (start.checked_sub(1).map(|i| b[i]), b.get(end).copied())
}

/// Does this candidate pass its detector's check? `text[start..end]` is the match.
fn passes(check: Check, text: &str, start: usize, end: usize) -> bool {
    let m = &text[start..end];
    let (before, after) = around(text, start, end);
    match check {
        Check::None => true,
        Check::Luhn => luhn(m) && network(m),
        Check::Iban => iban(m),
        Check::Ssn => ssn(m),
        Check::Ipv4 => {
            // Not a piece of a longer dotted number (a version such as v1.2.3.4 or 1.2.3.4.5).
            let dotted_on = after == Some(b'.')
                && text[end + 1..]
                    .bytes()
                    .next()
                    .is_some_and(|c| c.is_ascii_digit());
            let version = matches!(before, Some(b'v' | b'V' | b'.'));
            !dotted_on && !version && m.parse::<Ipv4Addr>().is_ok()
        }
        Check::Ipv6 => {
            let edge = |c: Option<u8>| c.is_some_and(|c| c.is_ascii_alphanumeric() || c == b':');
            !edge(before)
                && !edge(after)
                && m.bytes().any(|c| c.is_ascii_hexdigit())
                && (m.contains("::") || m.bytes().filter(|c| *c == b':').count() == 7)
                && m.parse::<Ipv6Addr>().is_ok()
        }
        Check::Phone => {
            let n = digits(m).len();
            let glued = |c: Option<u8>| c.is_some_and(|c| c.is_ascii_alphanumeric());
            // Not a group out of a longer run of digit groups (an account number, an IBAN
            // that failed its check): a digit one separator away on either side.
            let b = text.as_bytes();
            let sep = |c: u8| matches!(c, b' ' | b'.' | b'-' | b'/');
            let digit_at =
                |i: Option<usize>| i.and_then(|i| b.get(i)).is_some_and(u8::is_ascii_digit);
            let near_before = before.is_some_and(sep) && digit_at(start.checked_sub(2));
            let near_after = after.is_some_and(sep) && digit_at(Some(end + 1));
            (9..=15).contains(&n) && !glued(before) && !glued(after) && !near_before && !near_after
        }
    }
}

/// One request's placeholders, in order of first appearance.
#[derive(Default)]
struct Mapping {
    /// (placeholder, original)
    entries: Vec<(String, String)>,
    /// Per label: how many distinct values so far.
    next: HashMap<String, usize>,
    /// Per label: values masked (occurrences).
    masked: HashMap<String, u64>,
}

impl Mapping {
    fn placeholder(&mut self, label: &str, original: &str) -> String {
        *self.masked.entry(label.to_string()).or_default() += 1;
        let prefix = format!("<{label}_");
        if let Some((p, _)) = self
            .entries
            .iter()
            .find(|(p, o)| o == original && p.starts_with(&prefix))
        {
            return p.clone();
        }
        let n = self.next.entry(label.to_string()).or_default();
        *n += 1;
        let p = format!("<{label}_{n}>");
        self.entries.push((p.clone(), original.to_string()));
        p
    }
}

/// `text` with every detected value replaced, or `None` if nothing was found.
fn mask_text(s: &Settings, text: &str, map: &mut Mapping) -> Option<String> {
    let mut spans: Vec<(usize, usize, usize)> = Vec::new();
    for (i, d) in s.detectors.iter().enumerate() {
        for m in d.re.find_iter(text) {
            let (start, end) = (m.start(), m.end());
            if start == end
                || spans.iter().any(|&(a, b, _)| start < b && a < end)
                || !passes(d.check, text, start, end)
            {
                continue;
            }
            spans.push((start, end, i));
        }
    }
    if spans.is_empty() {
        return None;
    }
    spans.sort_unstable();
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for (start, end, i) in spans {
        out.push_str(&text[at..start]);
        out.push_str(&map.placeholder(&s.detectors[i].label, &text[start..end]));
        at = end;
    }
    out.push_str(&text[at..]);
    Some(out)
}

/// Mask the request in place; the mapping it used.
fn mask_request(s: &Settings, req: &mut Request) -> Mapping {
    let mut map = Mapping::default();
    let mut one = |t: &mut String| {
        if let Some(masked) = mask_text(s, t, &mut map) {
            *t = masked;
        }
    };
    for m in &mut req.messages {
        for p in &mut m.content {
            if let ContentPart::Text(t) = p {
                one(t);
            }
        }
        for c in &mut m.tool_calls {
            one(&mut c.arguments);
        }
    }
    if let Some(p) = &mut req.prompt {
        one(p);
    }
    map
}

/// Put the originals back in every string of `v`; how many placeholders were replaced.
fn restore_value(v: &mut Value, originals: &HashMap<&str, &str>) -> u64 {
    match v {
        Value::String(s) => {
            if !s.contains('<') {
                return 0;
            }
            let mut n = 0;
            let mut out = String::with_capacity(s.len());
            let mut rest = s.as_str();
            while let Some(open) = rest.find('<') {
                out.push_str(&rest[..open]);
                let tail = &rest[open..];
                match tail
                    .find('>')
                    .and_then(|close| originals.get(&tail[..=close]).map(|o| (close, o)))
                {
                    Some((close, original)) => {
                        out.push_str(original);
                        n += 1;
                        rest = &tail[close + 1..];
                    }
                    None => {
                        out.push('<');
                        rest = &tail[1..];
                    }
                }
            }
            out.push_str(rest);
            if n > 0 {
                *s = out;
            }
            n
        }
        Value::Array(a) => a.iter_mut().map(|x| restore_value(x, originals)).sum(),
        Value::Object(o) => o.values_mut().map(|x| restore_value(x, originals)).sum(),
        _ => 0,
    }
}

/// Where `adapt` keeps the request's mapping for `chunks`: JSON `[[placeholder, original]]`.
const MAPPING: &str = "mapping";

/// The request state key of the text held back for choice `choice`.
fn held_key(choice: u32) -> String {
    format!("held_{choice}")
}

impl Adapt for PiiMask {
    fn adapt(mut req: Request, target: Target) -> Option<Request> {
        let s = settings();
        // Each attempt adapts afresh: an attempt to a backend that is not external (a
        // fallback) sends the originals, and its answer has no placeholders to restore.
        request_set(MAPPING, b"");
        if !s.external.contains(&target.backend) {
            return None;
        }
        let map = mask_request(&s, &mut req);
        if map.entries.is_empty() {
            return None;
        }
        for (label, n) in &map.masked {
            counter_add(&format!("masked_{}", label.to_ascii_lowercase()), *n);
        }
        if s.restore {
            let json = serde_json::to_vec(&map.entries).unwrap_or_default();
            request_set(MAPPING, &json);
        }
        Some(req)
    }
}

/// Restore the placeholders in `text`, the next piece of a streamed answer, joined to what
/// was held back before it. Returns what can go to the client now and what to hold: a
/// tail that is the start of a placeholder (`<EMAIL_`) waits for the next piece, unless
/// this is the last.
fn restore_piece(
    entries: &[(String, String)],
    held: &str,
    text: &str,
    last: bool,
) -> (String, String, u64) {
    let mut buf = String::with_capacity(held.len() + text.len());
    buf.push_str(held);
    buf.push_str(text);
    // A placeholder has one `<`, its first character: only a tail from the last `<` can be
    // an unfinished one.
    let cut = match buf.rfind('<') {
        Some(at) if !last => {
            let tail = &buf[at..];
            let unfinished = entries
                .iter()
                .any(|(p, _)| p.len() > tail.len() && p.starts_with(tail));
            if unfinished { at } else { buf.len() }
        }
        _ => buf.len(),
    };
    let keep = buf.split_off(cut);
    let originals: HashMap<&str, &str> = entries
        .iter()
        .map(|(p, o)| (p.as_str(), o.as_str()))
        .collect();
    let mut v = Value::String(buf);
    let n = restore_value(&mut v, &originals);
    let Value::String(out) = v else {
        unreachable!("restore_value keeps a string a string")
    };
    (out, keep, n)
}

impl Chunks for PiiMask {
    fn on_chunk(choice: u32, text: String, last: bool) -> String {
        let Some(raw) = request_get(MAPPING).filter(|m| !m.is_empty()) else {
            return text;
        };
        let Ok(entries) = serde_json::from_slice::<Vec<(String, String)>>(&raw) else {
            return text;
        };
        let key = held_key(choice);
        let held = request_get(&key).unwrap_or_default();
        let held = String::from_utf8_lossy(&held);
        let (out, keep, n) = restore_piece(&entries, &held, &text, last);
        if !(keep.is_empty() && held.is_empty()) {
            request_set(&key, keep.as_bytes());
        }
        if n > 0 {
            counter_add("restored", n);
        }
        out
    }
}

impl Validate for PiiMask {
    fn validate(req: Request, resp: Response) -> Verdict {
        let s = settings();
        if !s.restore || !s.external.contains(&resp.backend) || !resp.body.contains('<') {
            return Verdict::Accept;
        }
        // The client's request, masked again: the same placeholders adapt sent.
        let mut copy = req;
        let map = mask_request(&s, &mut copy);
        if map.entries.is_empty() {
            return Verdict::Accept;
        }
        let originals: HashMap<&str, &str> = map
            .entries
            .iter()
            .map(|(p, o)| (p.as_str(), o.as_str()))
            .collect();
        let Ok(mut body) = serde_json::from_str::<Value>(&resp.body) else {
            return Verdict::Accept;
        };
        let n = restore_value(&mut body, &originals);
        if n == 0 {
            return Verdict::Accept;
        }
        counter_add("restored", n);
        Verdict::Replace(body.to_string())
    }
}

switchyard_sdk::export_adapt!(PiiMask);
switchyard_sdk::export_validate!(PiiMask);
switchyard_sdk::export_chunks!(PiiMask);

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_sdk::Role;
    use switchyard_sdk::testing::*;

    fn masked(text: &str) -> String {
        let s = load().unwrap();
        let mut map = Mapping::default();
        mask_text(&s, text, &mut map).unwrap_or_else(|| text.to_string())
    }

    #[test]
    fn each_entity_is_masked_and_checksums_decide() {
        reset();
        let cases = [
            ("mail ann.lee+x@example.co.uk now", "mail <EMAIL_1> now"),
            ("call +44 20 7946 0958 today", "call <PHONE_1> today"),
            ("call +14155552671.", "call <PHONE_1>."),
            (
                "call (415) 555-2671 or 415-555-2672",
                "call <PHONE_1> or <PHONE_2>",
            ),
            ("ring 020 7946 0958", "ring <PHONE_1>"),
            ("appelez 01 23 45 67 89", "appelez <PHONE_1>"),
            ("card 4111 1111 1111 1111 ok", "card <CARD_1> ok"),
            (
                "card 4111 1111 1111 1112 bad",
                "card 4111 1111 1111 1112 bad",
            ),
            ("iban DE89 3704 0044 0532 0130 00.", "iban <IBAN_1>."),
            (
                "iban DE89 3704 0044 0532 0130 01.",
                "iban DE89 3704 0044 0532 0130 01.",
            ),
            ("ssn 123-45-6789", "ssn <SSN_1>"),
            ("ssn 000-45-6789", "ssn 000-45-6789"),
            (
                "host 192.168.1.20 and 2001:db8::8a2e:370:7334",
                "host <IP_1> and <IP_2>",
            ),
            (
                "version v1.2.3.4 and 10.0.19041.1 at 10:30:00",
                "version v1.2.3.4 and 10.0.19041.1 at 10:30:00",
            ),
            (
                "on 2024-01-15, order 12345, ratio 3.14",
                "on 2024-01-15, order 12345, ratio 3.14",
            ),
        ];
        for (input, want) in cases {
            assert_eq!(masked(input), want, "{input}");
        }
    }

    #[test]
    fn the_same_value_keeps_its_placeholder_and_the_answer_gets_it_back() {
        reset();
        set_config("external_backends", r#"["openai"]"#);
        let req = chat(&[
            (Role::User, "I am bob@example.com, card 4111111111111111"),
            (Role::User, "again: bob@example.com, alt jo@example.org"),
        ]);
        let target = Target {
            backend: "openai".into(),
            model: "gpt-4o".into(),
        };
        let out = PiiMask::adapt(req.clone(), target.clone()).unwrap();
        assert_eq!(
            out.messages[0].text_content(),
            "I am <EMAIL_1>, card <CARD_1>"
        );
        assert_eq!(
            out.messages[1].text_content(),
            "again: <EMAIL_1>, alt <EMAIL_2>"
        );
        assert_eq!(counter("masked_email"), 3);
        let body = serde_json::json!({"choices": [{"message": {"content": "Hi <EMAIL_1>, <EMAIL_2> and <CARD_1>; <UNKNOWN_1> stays"}}]});
        let resp = Response {
            backend: "openai".into(),
            model: "gpt-4o".into(),
            content: None,
            finish_reason: None,
            tool_calls: Vec::new(),
            body: body.to_string(),
        };
        let Verdict::Replace(new) = PiiMask::validate(req.clone(), resp.clone()) else {
            panic!("not replaced");
        };
        let v: Value = serde_json::from_str(&new).unwrap();
        assert_eq!(
            v["choices"][0]["message"]["content"],
            "Hi bob@example.com, jo@example.org and 4111111111111111; <UNKNOWN_1> stays"
        );
        // Local backends are neither masked nor restored.
        let local = Target {
            backend: "local".into(),
            model: "llama".into(),
        };
        assert!(PiiMask::adapt(req.clone(), local).is_none());
        reset();
        set_config("external_backends", r#"["openai"]"#);
        set_config("restore", "false");
        SETTINGS.with(|s| s.borrow_mut().take());
        assert!(matches!(PiiMask::validate(req, resp), Verdict::Accept));
    }

    /// Every way of cutting an answer into two or three streamed pieces gives the client
    /// the restored answer, and nothing but a placeholder's possible start is ever held.
    #[test]
    fn streamed_pieces_are_restored_whatever_the_cuts() {
        reset();
        set_config("external_backends", r#"["openai"]"#);
        SETTINGS.with(|s| s.borrow_mut().take());
        let req = chat(&[(Role::User, "mail bob@example.com or call +14155550123")]);
        let target = Target {
            backend: "openai".into(),
            model: "gpt-4o".into(),
        };
        let answer = "Sure <EMAIL_1>, I will call <PHONE_1>. a<b, 1 < 2 and <EMAIL_9> stay.";
        let want = "Sure bob@example.com, I will call +14155550123. a<b, 1 < 2 and <EMAIL_9> stay.";
        let cuts: Vec<usize> = (0..=answer.len()).collect();
        for &i in &cuts {
            for &j in &cuts[i..] {
                new_request();
                PiiMask::adapt(req.clone(), target.clone()).unwrap();
                let pieces = [&answer[..i], &answer[i..j], &answer[j..]];
                let mut got = String::new();
                for (n, p) in pieces.iter().enumerate() {
                    let out = PiiMask::on_chunk(0, p.to_string(), n == 2);
                    // Held text is at most a placeholder's start, never a whole one.
                    let held = request_get(&held_key(0)).unwrap_or_default();
                    assert!(held.len() < "<PHONE_1>".len(), "held {held:?} at {i},{j}");
                    got.push_str(&out);
                }
                assert_eq!(got, want, "cut at {i} and {j}");
            }
        }
        // A request that went out unmasked (a local fallback) streams back untouched.
        new_request();
        let local = Target {
            backend: "local".into(),
            model: "llama".into(),
        };
        assert!(PiiMask::adapt(req, local).is_none());
        assert_eq!(PiiMask::on_chunk(0, "<EMAIL_1".into(), false), "<EMAIL_1");
    }

    /// The end-to-end fixture, natively: every planted value masked, clean text untouched.
    #[test]
    fn the_fixture_masks_every_planted_value_and_nothing_in_clean_text() {
        reset();
        let fixture: Value =
            serde_json::from_str(include_str!("../../../tests/fixtures/pii/messages.json"))
                .unwrap();
        let s = load().unwrap();
        for m in fixture["seeded"].as_array().unwrap() {
            let text = m["text"].as_str().unwrap();
            let mut map = Mapping::default();
            let out = mask_text(&s, text, &mut map).unwrap();
            for v in m["values"].as_array().unwrap() {
                let v = v.as_str().unwrap();
                assert!(!out.contains(v), "{v} left in {out}");
                assert!(
                    map.entries.iter().any(|(_, o)| o == v),
                    "{v} not mapped in {out}"
                );
            }
        }
        for m in fixture["clean"].as_array().unwrap() {
            let text = m.as_str().unwrap();
            assert_eq!(masked(text), text);
        }
    }

    #[test]
    fn custom_patterns_and_bad_config() {
        reset();
        set_config("custom", r#"{"employee": "EMP-[0-9]{6}"}"#);
        set_config("entities", r#"["email"]"#);
        assert_eq!(
            masked("EMP-123456 at a@b.io, +14155552671"),
            "<EMPLOYEE_1> at <EMAIL_1>, +14155552671"
        );
        reset();
        set_config("custom", r#"{"x": "("}"#);
        assert!(load().err().unwrap().contains("custom.x"));
        reset();
        set_config("entities", r#"["passport"]"#);
        assert!(load().err().unwrap().contains("passport"));
    }
}
