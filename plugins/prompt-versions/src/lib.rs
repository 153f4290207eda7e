//! `prompt-versions` (stages `classify` + `adapt`): versioned system prompts, split by weight
//! across traffic, with each request's version on its ledger row.
//!
//! A request names its prompt in `metadata.prompt` (`"metadata": {"prompt": "support"}`) or
//! in the header `x-switchyard-prompt: support` (the operator lets plugins see it:
//! `[plugins] headers = ["x-switchyard-prompt"]`; `metadata.prompt` wins when both are
//! given). `classify` picks one of the prompt's versions by weight and tags the request
//! `prompt:<name>` and `prompt_version:<version>` (the ledger row carries them: `switchyard
//! spend --by tag` compares the versions); `adapt` puts that version's system prompt in the
//! request, its `{variables}` filled from the request's `metadata`. The pick travels from
//! `classify` to `adapt` in the request's plugin state (contract `0.2`), so both stages, and
//! every retry or fallback of the request, use the same version. Where no `classify` ran
//! (`switchyard eval` only adapts), `adapt` picks from the request itself: by
//! `metadata.prompt` and, for sticky prompts, `user` / `metadata.user`.
//!
//! The pick is a hash, not a coin, so it needs no state across requests: a retried request
//! gets the version it had. Without `sticky` the hash is of the request's content
//! (different requests split by weight); with `sticky` it is of the caller: the request's
//! `user` member, else `metadata.user`, else the virtual key the request came with. A
//! caller thus keeps its version across requests, and across gateway restarts and replicas.
//! A sticky prompt's request with no caller at all is split by content.
//!
//! Config keys (`[plugins.config.prompt-versions]`):
//!
//! | key | default | meaning |
//! | --- | --- | --- |
//! | `prompts.<name>.versions.<version>.system` | (required) | the version's system prompt; `{var}` is replaced by `metadata.var` (a string or number), unknown variables stay as written |
//! | `prompts.<name>.versions.<version>.weight` | `1` | its share of traffic (relative to the other versions; `0` takes it out) |
//! | `prompts.<name>.mode` | `"replace"` | `"replace"`: the client's system/developer messages are removed and the version's put first; `"inject"`: the version's is put before the client's |
//! | `prompts.<name>.sticky` | `sticky` | pick per caller instead of per request |
//! | `sticky` | `false` | the default of every prompt's `sticky` |
//! | `header` | `"x-switchyard-prompt"` | the request header that may name the prompt (lower case; it must also be in `[plugins] headers`) |
//!
//! `prompts` may also be `{ from_file = "prompts.json" }` (the same table as JSON). The
//! values change with a config reload. Metrics (`switchyard_plugin_counter_total{plugin=
//! "prompt-versions"}`): `picked_<name>_<version>`, `unknown_prompt`.

use std::cell::RefCell;
use std::rc::Rc;

use serde_json::{Map, Value};
use switchyard_sdk::host::{Level, config, counter_add, log, request_get, request_set};
use switchyard_sdk::{
    Adapt, BackendStatus, Caller, Classify, ContentPart, Decision, Message, Request, Role, Target,
};

pub struct PromptVersions;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Replace,
    Inject,
}

#[derive(Debug)]
struct Version {
    name: String,
    weight: f64,
    system: String,
}

#[derive(Debug)]
struct Prompt {
    mode: Mode,
    sticky: bool,
    versions: Vec<Version>,
    total: f64,
}

#[derive(Debug, Default)]
struct Prompts {
    prompts: Vec<(String, Prompt)>,
    /// The header that may name the prompt.
    header: String,
}

/// The header that names a prompt when `metadata.prompt` does not.
const DEFAULT_HEADER: &str = "x-switchyard-prompt";

/// Where `classify` leaves its pick for `adapt` (the request's plugin state).
const PICK: &str = "pick";

fn load() -> Result<Prompts, String> {
    let header = config("header")
        .map(|h| h.trim().to_ascii_lowercase())
        .unwrap_or_else(|| DEFAULT_HEADER.to_string());
    if header.is_empty() {
        return Err("`header` must name a header".into());
    }
    let prompts = load_prompts()?;
    Ok(Prompts { prompts, header })
}

fn load_prompts() -> Result<Vec<(String, Prompt)>, String> {
    let default_sticky = match config("sticky").as_deref() {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => return Err(format!("`sticky` must be true or false, got {other:?}")),
    };
    let Some(text) = config("prompts") else {
        return Ok(Vec::new());
    };
    let table: Map<String, Value> =
        serde_json::from_str(&text).map_err(|_| "`prompts` must be a table of prompts")?;
    let mut prompts = Vec::new();
    for (name, p) in table {
        let at = format!("prompts.{name}");
        let mode = match p.get("mode").map(|m| m.as_str()) {
            None | Some(Some("replace")) => Mode::Replace,
            Some(Some("inject")) => Mode::Inject,
            _ => return Err(format!("`{at}.mode` must be \"replace\" or \"inject\"")),
        };
        let sticky = match p.get("sticky") {
            None => default_sticky,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err(format!("`{at}.sticky` must be true or false")),
        };
        let versions_table = p
            .get("versions")
            .and_then(Value::as_object)
            .filter(|v| !v.is_empty())
            .ok_or(format!("`{at}.versions` must be a table of versions"))?;
        let mut versions = Vec::new();
        for (v, body) in versions_table {
            let system = body
                .get("system")
                .and_then(Value::as_str)
                .ok_or(format!("`{at}.versions.{v}.system` must be a string"))?;
            let weight = match body.get("weight") {
                None => 1.0,
                Some(w) => w
                    .as_f64()
                    .filter(|w| w.is_finite() && *w >= 0.0)
                    .ok_or(format!(
                        "`{at}.versions.{v}.weight` must be a number, 0 or more"
                    ))?,
            };
            versions.push(Version {
                name: v.clone(),
                weight,
                system: system.to_string(),
            });
        }
        let total: f64 = versions.iter().map(|v| v.weight).sum();
        if total <= 0.0 {
            return Err(format!("`{at}.versions`: every weight is 0"));
        }
        prompts.push((
            name,
            Prompt {
                mode,
                sticky,
                versions,
                total,
            },
        ));
    }
    Ok(prompts)
}

thread_local! {
    static PROMPTS: RefCell<Option<Rc<Prompts>>> = const { RefCell::new(None) };
}

/// This instance's prompts, read on first use. A broken table traps the call after logging
/// why, so the gateway counts the failure and applies `on_error`.
fn prompts() -> Rc<Prompts> {
    PROMPTS.with(|p| {
        if let Some(p) = p.borrow().as_ref() {
            return p.clone();
        }
        let loaded = match load() {
            Ok(l) => Rc::new(l),
            Err(e) => {
                log(Level::Error, &e);
                panic!("{e}");
            }
        };
        *p.borrow_mut() = Some(loaded.clone());
        loaded
    })
}

/// 64-bit FNV-1a, then a finaliser (splitmix64) so nearby inputs land far apart.
struct Hash(u64);

impl Hash {
    fn new() -> Hash {
        Hash(0xcbf2_9ce4_8422_2325)
    }
    fn add(&mut self, bytes: &[u8]) -> &mut Hash {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
        // A separator, so ("ab", "c") and ("a", "bc") differ.
        self.0 ^= 0xff;
        self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        self
    }
    fn finish(&self) -> u64 {
        let mut z = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// The request's top-level members other than the typed ones (`user`, `metadata`, ...).
fn extra(req: &Request) -> Map<String, Value> {
    serde_json::from_str(&req.extra).unwrap_or_default()
}

/// Who the caller is: `user`, else `metadata.user`, else the virtual key.
fn caller_id(extra: &Map<String, Value>, who: &Caller) -> Option<String> {
    let user = extra
        .get("user")
        .and_then(Value::as_str)
        .or_else(|| extra.get("metadata")?.get("user")?.as_str());
    match user {
        Some(u) => Some(format!("user:{u}")),
        None => who.key_id.as_ref().map(|k| format!("key:{k}")),
    }
}

/// The prompt the request names: `metadata.prompt`, else the prompt header.
fn prompt_name<'r>(
    extra: &'r Map<String, Value>,
    who: &'r Caller,
    header: &str,
) -> Option<&'r str> {
    if let Some(name) = extra
        .get("metadata")
        .and_then(|m| m.get("prompt"))
        .and_then(Value::as_str)
    {
        return Some(name);
    }
    who.headers
        .iter()
        .find(|(h, _)| h == header)
        .map(|(_, v)| v.trim())
}

/// What the unsticky pick hashes: the conversation and the other members.
fn fingerprint(req: &Request, h: &mut Hash) {
    for m in &req.messages {
        h.add(&[m.role as u8]);
        for p in &m.content {
            if let ContentPart::Text(t) = p {
                h.add(t.as_bytes());
            }
        }
    }
    if let Some(p) = &req.prompt {
        h.add(p.as_bytes());
    }
    h.add(req.extra.as_bytes());
}

/// The prompt the request names and the version it gets.
fn choose<'p>(
    prompts: &'p Prompts,
    req: &Request,
    who: &Caller,
    extra: &Map<String, Value>,
) -> Option<(&'p str, &'p Version)> {
    let name = prompt_name(extra, who, &prompts.header)?;
    let Some((name, prompt)) = prompts.prompts.iter().find(|(n, _)| n == name) else {
        counter_add("unknown_prompt", 1);
        return None;
    };
    let mut h = Hash::new();
    h.add(name.as_bytes());
    match caller_id(extra, who).filter(|_| prompt.sticky) {
        Some(id) => h.add(id.as_bytes()),
        None => {
            fingerprint(req, &mut h);
            &mut h
        }
    };
    // The top 53 bits as a uniform number in [0, 1).
    let u = (h.finish() >> 11) as f64 / (1u64 << 53) as f64;
    let mut at = u * prompt.total;
    let version = prompt
        .versions
        .iter()
        .find(|v| {
            if at < v.weight {
                return true;
            }
            at -= v.weight;
            false
        })
        .or_else(|| prompt.versions.iter().rev().find(|v| v.weight > 0.0))?;
    Some((name, version))
}

/// The pick `classify` left for this request: `None` when no `classify` ran, `Some(None)`
/// when it ran and picked nothing, else (prompt, version).
fn picked(prompts: &Prompts) -> Option<Option<(&Prompt, &Version)>> {
    let raw = request_get(PICK)?;
    Some(parse_pick(prompts, &raw))
}

fn parse_pick<'p>(prompts: &'p Prompts, raw: &[u8]) -> Option<(&'p Prompt, &'p Version)> {
    let text = std::str::from_utf8(raw).ok()?;
    let (name, version) = text.split_once('\n')?;
    let (_, prompt) = prompts.prompts.iter().find(|(n, _)| n == name)?;
    let v = prompt.versions.iter().find(|v| v.name == version)?;
    Some((prompt, v))
}

/// `{var}` replaced by `metadata.var` (strings and numbers); anything else stays.
fn render(template: &str, metadata: Option<&Value>) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let close = after.find('}');
        let var = close
            .map(|c| &after[..c])
            .filter(|v| !v.is_empty() && v.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
        let value = var.and_then(|v| match metadata?.get(v)? {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        });
        match (value, close) {
            (Some(value), Some(c)) => {
                out.push_str(&value);
                rest = &after[c + 1..];
            }
            _ => {
                out.push('{');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

impl Classify for PromptVersions {
    fn classify(req: Request, who: Caller, _backends: Vec<BackendStatus>) -> Decision {
        let prompts = prompts();
        let extra = extra(&req);
        // Left even when nothing is picked: `adapt` then knows `classify` ran.
        request_set(PICK, b"");
        let Some((name, version)) = choose(&prompts, &req, &who, &extra) else {
            return Decision::none();
        };
        request_set(PICK, format!("{name}\n{}", version.name).as_bytes());
        counter_add(&format!("picked_{name}_{}", version.name), 1);
        Decision::none()
            .tag(&format!("prompt:{name}"))
            .tag(&format!("prompt_version:{}", version.name))
            .because(&format!("prompt {name} version {}", version.name))
    }
}

impl Adapt for PromptVersions {
    fn adapt(mut req: Request, _target: Target) -> Option<Request> {
        let prompts = prompts();
        let extra = extra(&req);
        // No pick when `classify` did not run for this request (`switchyard eval` adapts
        // without classifying): the pick from the request alone, by `metadata.prompt`.
        let (prompt, version) = picked(&prompts).unwrap_or_else(|| {
            let anonymous = Caller {
                key_id: None,
                team: None,
                tags: Vec::new(),
                headers: Vec::new(),
            };
            let (name, version) = choose(&prompts, &req, &anonymous, &extra)?;
            let (_, prompt) = prompts.prompts.iter().find(|(n, _)| n == name)?;
            Some((prompt, version))
        })?;
        let system = render(&version.system, extra.get("metadata"));
        if prompt.mode == Mode::Replace {
            req.messages
                .retain(|m| !matches!(m.role, Role::System | Role::Developer));
        }
        req.messages.insert(0, Message::text(Role::System, &system));
        Some(req)
    }
}

switchyard_sdk::export_classify!(PromptVersions);
switchyard_sdk::export_adapt!(PromptVersions);

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_sdk::testing::*;

    const PROMPTS: &str = r#"{"support":{"versions":{
        "v1":{"weight":70,"system":"You help {customer} with Acme."},
        "v2":{"weight":30,"system":"Acme support. Customer: {customer}. Plan: {plan}."}}}}"#;

    fn request(text: &str, meta: Value) -> Request {
        let mut r = chat(&[(Role::System, "client system"), (Role::User, text)]);
        r.extra = serde_json::json!({ "metadata": meta }).to_string();
        r
    }

    fn target() -> Target {
        Target {
            backend: "openai".into(),
            model: "gpt-4o".into(),
        }
    }

    #[test]
    fn both_stages_agree_and_the_split_follows_the_weights() {
        reset();
        set_config("prompts", PROMPTS);
        let mut v1 = 0;
        for i in 0..2000 {
            let req = request(
                &format!("question {i}"),
                serde_json::json!({"prompt": "support", "customer": "Ann"}),
            );
            new_request();
            let d = PromptVersions::classify(req.clone(), caller(), vec![]);
            let version = d.tags[1]
                .strip_prefix("prompt_version:")
                .unwrap()
                .to_string();
            let out = PromptVersions::adapt(req, target()).unwrap();
            assert_eq!(out.messages[0].role, Role::System);
            assert_eq!(
                out.messages.len(),
                2,
                "the client's system prompt is replaced"
            );
            let system = out.messages[0].text_content();
            if version == "v1" {
                assert_eq!(system, "You help Ann with Acme.");
                v1 += 1;
            } else {
                assert_eq!(system, "Acme support. Customer: Ann. Plan: {plan}.");
            }
        }
        let share = v1 as f64 / 2000.0;
        assert!((share - 0.7).abs() < 0.03, "v1 share {share}");
    }

    #[test]
    fn sticky_callers_keep_their_version() {
        reset();
        set_config("prompts", PROMPTS);
        set_config("sticky", "true");
        for user in ["u1", "u2", "u3", "u4", "u5"] {
            let versions: std::collections::HashSet<String> = (0..20)
                .map(|i| {
                    let mut req =
                        request(&format!("q{i}"), serde_json::json!({"prompt": "support"}));
                    req.extra =
                        serde_json::json!({"user": user, "metadata": {"prompt": "support"}})
                            .to_string();
                    PromptVersions::classify(req, caller(), vec![]).tags[1].clone()
                })
                .collect();
            assert_eq!(versions.len(), 1, "{user}: {versions:?}");
        }
    }

    /// A request through both stages, as the gateway runs them: the version it got.
    fn through(req: Request, who: Caller) -> Option<Request> {
        new_request();
        PromptVersions::classify(req.clone(), who, vec![]);
        PromptVersions::adapt(req, target())
    }

    #[test]
    fn virtual_keys_are_sticky_callers_and_the_header_names_the_prompt() {
        reset();
        set_config("prompts", PROMPTS);
        set_config("sticky", "true");
        let mut seen = std::collections::HashSet::new();
        for key in 0..12 {
            let mut who = caller();
            who.key_id = Some(format!("key-{key}"));
            who.headers = vec![("x-switchyard-prompt".into(), "support".into())];
            let versions: std::collections::HashSet<String> = (0..10)
                .map(|i| {
                    let mut req = chat(&[(Role::User, &format!("question {i}"))]);
                    req.extra = r#"{"metadata":{"customer":"Ann","plan":"Pro"}}"#.into();
                    through(req, who.clone()).unwrap().messages[0].text_content()
                })
                .collect();
            assert_eq!(versions.len(), 1, "key-{key}: {versions:?}");
            seen.extend(versions);
        }
        assert_eq!(seen.len(), 2, "twelve keys all on one version: {seen:?}");
        // Without the header (or with another one) nothing names a prompt.
        let mut who = caller();
        who.headers = vec![("x-other".into(), "support".into())];
        assert!(through(chat(&[(Role::User, "hi")]), who).is_none());
    }

    #[test]
    fn adapt_applies_the_version_classify_picked() {
        reset();
        set_config("prompts", PROMPTS);
        let req = request(
            "hi",
            serde_json::json!({"prompt": "support", "customer": "Bo"}),
        );
        new_request();
        let d = PromptVersions::classify(req.clone(), caller(), vec![]);
        let out = PromptVersions::adapt(req.clone(), target()).unwrap();
        let want = if d.tags[1] == "prompt_version:v1" {
            "You help Bo with Acme."
        } else {
            "Acme support. Customer: Bo. Plan: {plan}."
        };
        assert_eq!(out.messages[0].text_content(), want);
        // Without a pick (no classify ran), adapt picks the same from the request itself.
        new_request();
        let out = PromptVersions::adapt(req, target()).unwrap();
        assert_eq!(out.messages[0].text_content(), want);
        // A pick from a header or a key is one adapt cannot make alone: classify's counts.
        let mut who = caller();
        who.headers = vec![("x-switchyard-prompt".into(), "support".into())];
        let plain = chat(&[(Role::User, "hi")]);
        new_request();
        assert!(PromptVersions::adapt(plain.clone(), target()).is_none());
        PromptVersions::classify(plain.clone(), who, vec![]);
        assert!(PromptVersions::adapt(plain, target()).is_some());
    }

    #[test]
    fn inject_keeps_the_clients_system_prompt_and_unknown_prompts_change_nothing() {
        reset();
        set_config(
            "prompts",
            r#"{"s":{"mode":"inject","versions":{"a":{"system":"first"}}}}"#,
        );
        let out = through(request("hi", serde_json::json!({"prompt": "s"})), caller()).unwrap();
        let texts: Vec<String> = out.messages.iter().map(Message::text_content).collect();
        assert_eq!(texts, ["first", "client system", "hi"]);
        let req = request("hi", serde_json::json!({"prompt": "other"}));
        assert!(through(req.clone(), caller()).is_none());
        assert!(
            PromptVersions::classify(req, caller(), vec![])
                .tags
                .is_empty()
        );
        assert_eq!(counter("unknown_prompt"), 2);
    }

    #[test]
    fn a_bad_table_names_the_key() {
        reset();
        set_config(
            "prompts",
            r#"{"s":{"versions":{"a":{"weight":-1,"system":"x"}}}}"#,
        );
        assert!(load().unwrap_err().contains("prompts.s.versions.a.weight"));
    }
}
