//! `prompt-adapter`: rewrite a request for the model that will answer it.
//!
//! Three rewrites, each only when it applies:
//! - **fold the system prompt** into the first user turn when the target model's family has
//!   no system role in its chat template (`no_system_role`, model-name substrings, default
//!   `["gemma"]`);
//! - **ask for JSON explicitly** when the client set `response_format` to JSON and the
//!   target is a local backend (`local_backends`, default `["local"]`): small local models
//!   follow an instruction in the prompt far better than an API flag they may ignore; the
//!   instruction is `json_instruction`, plus the schema when one was given;
//! - **trim boilerplate**: every string in `trim` is cut from message text.
//!
//! A request none of these apply to is left untouched (the stage returns `none`).

use switchyard_sdk::host::{config, config_list};
use switchyard_sdk::{Adapt, ContentPart, Message, Request, ResponseFormat, Role, Target, helpers};

pub struct PromptAdapter;

const DEFAULT_JSON_INSTRUCTION: &str =
    "Respond with a single valid JSON object and nothing else: no prose, no code fences.";

fn list_or(key: &str, default: &[&str]) -> Vec<String> {
    if config(key).is_some() {
        config_list(key)
    } else {
        default.iter().map(|s| s.to_string()).collect()
    }
}

/// Remove every boilerplate string from the message's text parts.
fn trim_boilerplate(req: &mut Request, trim: &[String]) -> bool {
    let mut changed = false;
    for m in &mut req.messages {
        for p in &mut m.content {
            if let ContentPart::Text(t) = p {
                for b in trim.iter().filter(|b| !b.is_empty()) {
                    if t.contains(b.as_str()) {
                        *t = t.replace(b.as_str(), "").trim().to_string();
                        changed = true;
                    }
                }
            }
        }
    }
    changed
}

/// Move system/developer messages into the first user turn.
fn fold_system(req: &mut Request) -> bool {
    let is_instruction = |m: &Message| matches!(m.role, Role::System | Role::Developer);
    if !req.messages.iter().any(is_instruction) {
        return false;
    }
    let system: Vec<String> = req
        .messages
        .iter()
        .filter(|m| is_instruction(m))
        .map(Message::text_content)
        .filter(|t| !t.is_empty())
        .collect();
    req.messages.retain(|m| !is_instruction(m));
    let preamble = system.join("\n\n");
    match req.messages.iter_mut().find(|m| m.role == Role::User) {
        Some(user) => match user.content.iter_mut().find_map(|p| match p {
            ContentPart::Text(t) => Some(t),
            _ => None,
        }) {
            Some(t) => *t = format!("{preamble}\n\n{t}"),
            None => user.content.insert(0, ContentPart::Text(preamble)),
        },
        None => req.messages.insert(0, Message::text(Role::User, &preamble)),
    }
    true
}

/// Append the JSON instruction to the last user turn.
fn add_json_instruction(req: &mut Request) {
    let mut instruction =
        config("json_instruction").unwrap_or_else(|| DEFAULT_JSON_INSTRUCTION.to_string());
    if let Some(ResponseFormat::JsonSchema(s)) = &req.response_format {
        instruction.push_str(&format!(
            " The object must match this JSON schema: {}",
            s.schema
        ));
    }
    match req.messages.iter_mut().rev().find(|m| m.role == Role::User) {
        Some(user) => user.content.push(ContentPart::Text(instruction)),
        None => req.messages.push(Message::text(Role::User, &instruction)),
    }
}

impl Adapt for PromptAdapter {
    fn adapt(mut req: Request, target: Target) -> Option<Request> {
        let mut changed = trim_boilerplate(&mut req, &config_list("trim"));
        let model = target.model.to_ascii_lowercase();
        if list_or("no_system_role", &["gemma"])
            .iter()
            .any(|f| !f.is_empty() && model.contains(&f.to_ascii_lowercase()))
        {
            changed |= fold_system(&mut req);
        }
        if helpers::wants_json(&req)
            && list_or("local_backends", &["local"]).contains(&target.backend)
        {
            add_json_instruction(&mut req);
            changed = true;
        }
        changed.then_some(req)
    }
}

switchyard_sdk::export_adapt!(PromptAdapter);

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_sdk::testing::*;

    fn target(backend: &str, model: &str) -> Target {
        Target {
            backend: backend.into(),
            model: model.into(),
        }
    }

    #[test]
    fn folds_system_for_gemma_only() {
        reset();
        let req = chat(&[(Role::System, "Be terse."), (Role::User, "Hi")]);
        let out = PromptAdapter::adapt(req.clone(), target("local", "gemma-2-9b")).unwrap();
        assert_eq!(out.messages.len(), 1);
        assert_eq!(out.messages[0].role, Role::User);
        assert_eq!(out.messages[0].text_content(), "Be terse.\n\nHi");
        assert!(PromptAdapter::adapt(req, target("local", "llama-3.1-8b")).is_none());
    }

    #[test]
    fn json_instruction_only_for_local_targets() {
        reset();
        let req = chat(&[(Role::User, "List three colours")]).with_json();
        let out = PromptAdapter::adapt(req.clone(), target("local", "llama")).unwrap();
        assert!(out.messages[0].text_content().contains("valid JSON object"));
        assert!(PromptAdapter::adapt(req, target("openai", "gpt-4o")).is_none());
    }

    #[test]
    fn trims_configured_boilerplate() {
        reset();
        set_config("trim", r#"["You are a helpful assistant."]"#);
        let req = chat(&[
            (
                Role::System,
                "You are a helpful assistant. Answer in French.",
            ),
            (Role::User, "Hi"),
        ]);
        let out = PromptAdapter::adapt(req, target("openai", "gpt-4o")).unwrap();
        assert_eq!(out.messages[0].text_content(), "Answer in French.");
    }
}
