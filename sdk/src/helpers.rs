//! Reads most policies need, written once: the last user message, a token estimate, whether
//! tools or code are involved, how deep the conversation is, whether JSON was asked for.

use crate::{ContentPart, Request, ResponseFormat, Role};

/// The text of the last user message (text parts joined), if any.
pub fn last_user_message(req: &Request) -> Option<String> {
    req.messages
        .iter()
        .rev()
        .find(|m| m.role == Role::User)
        .map(|m| m.text_content())
        .or_else(|| req.prompt.clone())
}

/// A rough token count of everything the model reads: ~4 characters per token plus a few
/// tokens of framing per message; tool schemas count too. Good for thresholds, not billing.
pub fn estimate_tokens(req: &Request) -> u32 {
    let mut chars = 0usize;
    let mut framing = 0usize;
    for m in &req.messages {
        framing += 4;
        for p in &m.content {
            chars += match p {
                ContentPart::Text(t) => t.len(),
                // An image costs a model far more than its URL's length; count a flat amount.
                ContentPart::ImageUrl(_) => 340 * 4,
                ContentPart::Other(raw) => raw.len(),
            };
        }
        for c in &m.tool_calls {
            chars += c.name.len() + c.arguments.len();
        }
    }
    if let Some(p) = &req.prompt {
        chars += p.len();
    }
    for t in &req.tools {
        chars += t.name.len()
            + t.description.as_ref().map_or(0, String::len)
            + t.parameters.as_ref().map_or(0, String::len);
    }
    (chars.div_ceil(4) + framing).min(u32::MAX as usize) as u32
}

/// The client offered tools, or the conversation already used them.
pub fn has_tools(req: &Request) -> bool {
    !req.tools.is_empty()
        || req
            .messages
            .iter()
            .any(|m| !m.tool_calls.is_empty() || m.role == Role::Tool)
}

/// Images or other non-text parts in any message.
pub fn has_media(req: &Request) -> bool {
    req.messages
        .iter()
        .flat_map(|m| &m.content)
        .any(|p| !matches!(p, ContentPart::Text(_)))
}

/// The text looks like it contains code: a fenced block, or several lines that read like a
/// program.
pub fn looks_like_code(text: &str) -> bool {
    if text.contains("```") {
        return true;
    }
    const MARKERS: [&str; 12] = [
        "fn ",
        "def ",
        "class ",
        "import ",
        "#include",
        "function ",
        "=> {",
        "};",
        "return ",
        "SELECT ",
        "public static",
        "console.log",
    ];
    let hits = MARKERS.iter().filter(|m| text.contains(*m)).count();
    let braces = text.matches('{').count() + text.matches(';').count();
    hits >= 2 || (hits >= 1 && braces >= 3)
}

/// Any message (system or user) contains code.
pub fn has_code(req: &Request) -> bool {
    req.messages
        .iter()
        .any(|m| looks_like_code(&m.text_content()))
        || req.prompt.as_deref().is_some_and(looks_like_code)
}

/// Number of user turns so far.
pub fn user_turns(req: &Request) -> usize {
    req.messages.iter().filter(|m| m.role == Role::User).count()
}

/// The client asked for a JSON answer (`json_object` or `json_schema`).
pub fn wants_json(req: &Request) -> bool {
    matches!(
        req.response_format,
        Some(ResponseFormat::JsonObject) | Some(ResponseFormat::JsonSchema(_))
    )
}

/// The strings in the inside of a JSON array of strings (`"a","b"`), without a JSON
/// library: enough for config lists.
pub fn json_strings(inner: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c != '"' {
            continue;
        }
        let mut s = String::new();
        let mut escaped = false;
        for c in chars.by_ref() {
            if escaped {
                s.push(match c {
                    'n' => '\n',
                    't' => '\t',
                    other => other,
                });
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                break;
            } else {
                s.push(c);
            }
        }
        out.push(s);
    }
    out
}

/// `s` as a JSON string literal (quotes included).
pub fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
