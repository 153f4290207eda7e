//! Tool calling: which syntax the model writes calls in, the request's tools and
//! `tool_choice`, the conversation's earlier calls put back into the prompt, and the grammar
//! that forces a call (`tool_choice` `required` or a named function).
//!
//! Formats, after the families' own chat templates:
//!
//! | format    | model writes                                                      | families        |
//! |-----------|-------------------------------------------------------------------|-----------------|
//! | `llama3`  | `<|python_tag|>{"name": ..., "parameters": {...}}` or plain JSON  | Llama 3.1/3.2   |
//! | `mistral` | `[TOOL_CALLS][{"name": ..., "arguments": {...}}, ...]`            | Mistral         |
//! | `hermes`  | `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` ...    | Hermes, Qwen    |
//!
//! A template that does not know about tools (SmolLM2's ChatML) gets Hermes: the tool list
//! goes into a system message with the instructions Hermes models are trained on.

pub mod parse;

use std::str::FromStr;
use std::sync::Arc;

use serde_json::{Value, json};

use crate::grammar::{Grammar, Node, SchemaError};

/// How the model writes tool calls (`--tool-call-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Llama3,
    Mistral,
    Hermes,
}

impl FromStr for Format {
    type Err = String;

    fn from_str(s: &str) -> Result<Format, String> {
        match s {
            "llama3" => Ok(Format::Llama3),
            "mistral" => Ok(Format::Mistral),
            "hermes" => Ok(Format::Hermes),
            _ => Err(format!(
                "`{s}`: expected `auto`, `llama3`, `mistral` or `hermes`"
            )),
        }
    }
}

impl Format {
    /// The format a chat template's own tool-call syntax shows.
    pub fn detect(template: &str) -> Format {
        if template.contains("[TOOL_CALLS]") {
            Format::Mistral
        } else if template.contains("<|python_tag|>") || template.contains("ipython") {
            Format::Llama3
        } else {
            Format::Hermes
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Format::Llama3 => "llama3",
            Format::Mistral => "mistral",
            Format::Hermes => "hermes",
        }
    }
}

/// `tool_choice`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Choice {
    None,
    Auto,
    Required,
    Named(String),
}

/// A tool the request offers.
#[derive(Debug, Clone)]
pub struct Tool {
    pub name: String,
    /// The `parameters` schema (an empty object schema when absent).
    pub parameters: Value,
}

/// How the prompt shows the tools and earlier calls, per template.
pub struct Prompting {
    pub format: Format,
    /// The template renders `tools` itself.
    pub template_has_tools: bool,
    /// The template renders assistant `tool_calls` itself.
    pub template_has_calls: bool,
}

impl Prompting {
    pub fn new(template: &str, format: Option<Format>) -> Prompting {
        Prompting {
            format: format.unwrap_or_else(|| Format::detect(template)),
            template_has_tools: template.contains("tools"),
            template_has_calls: template.contains("tool_calls"),
        }
    }

    /// Adapts OpenAI messages for the template: earlier calls' `arguments` become objects (as
    /// templates index them), and for templates that know nothing of tools, the tool list
    /// becomes a system message and earlier calls the text the model would have written.
    pub fn messages(&self, msgs: Vec<Value>, tools: Option<&Value>) -> Vec<Value> {
        let mut out: Vec<Value> = msgs
            .into_iter()
            .map(|mut m| {
                if let Some(calls) = m.get_mut("tool_calls").and_then(Value::as_array_mut) {
                    for c in calls.iter_mut() {
                        if let Some(f) = c.get_mut("function")
                            && let Some(a) = f.get("arguments").and_then(Value::as_str)
                            && let Ok(obj) = serde_json::from_str::<Value>(a)
                        {
                            f["arguments"] = obj;
                        }
                    }
                }
                m
            })
            .collect();
        if !self.template_has_calls {
            for m in &mut out {
                let Some(calls) = m.get("tool_calls").and_then(Value::as_array).cloned() else {
                    continue;
                };
                let mut text = m
                    .get("content")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string();
                for c in &calls {
                    let f = c.get("function").cloned().unwrap_or(Value::Null);
                    let call = json!({"name": f.get("name"), "arguments": f.get("arguments")});
                    text.push_str(&self.call_text(&call));
                }
                m["content"] = Value::String(text);
            }
        }
        if !self.template_has_tools
            && let Some(tools) = tools.and_then(Value::as_array)
            && !tools.is_empty()
        {
            let sys = hermes_system(tools);
            match out.first_mut() {
                Some(first) if first.get("role").and_then(Value::as_str) == Some("system") => {
                    let old = first
                        .get("content")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string();
                    first["content"] = Value::String(format!("{old}\n\n{sys}"));
                }
                _ => out.insert(0, json!({"role": "system", "content": sys})),
            }
        }
        out
    }

    /// One call as this format writes it.
    fn call_text(&self, call: &Value) -> String {
        match self.format {
            Format::Hermes => format!("<tool_call>\n{call}\n</tool_call>"),
            Format::Mistral => format!("[TOOL_CALLS][{call}]"),
            Format::Llama3 => {
                let v = json!({"name": call.get("name"), "parameters": call.get("arguments")});
                v.to_string()
            }
        }
    }

    /// The grammar of one call to one of `tools` in this format (for `required` / a named
    /// function); the arguments follow the tool's schema.
    pub fn call_grammar(&self, tools: &[&Tool]) -> Result<Grammar, (usize, SchemaError)> {
        let mut g = Grammar::any();
        let mut alts = Vec::new();
        let args_key = if self.format == Format::Llama3 {
            "parameters"
        } else {
            "arguments"
        };
        for (i, t) in tools.iter().enumerate() {
            let schema = Grammar::from_schema(&t.parameters).map_err(|e| (i, e))?;
            let args = g.embed(&schema);
            let name = g.literal(&serde_json::to_string(&t.name).unwrap_or_default());
            alts.push(g.ordered_object(&[("name", name), (args_key, args)]));
        }
        let call = if alts.len() == 1 {
            alts[0]
        } else {
            g.push(Node::AnyOf(alts))
        };
        let parts = match self.format {
            Format::Hermes => vec![
                g.literal("<tool_call>\n"),
                call,
                g.literal("\n</tool_call>"),
            ],
            Format::Mistral => vec![g.literal("[TOOL_CALLS]["), call, g.literal("]")],
            Format::Llama3 => vec![call],
        };
        g.root = g.push(Node::Seq(parts));
        Ok(g)
    }
}

/// The system prompt Hermes-format models are trained on, with the tools' signatures.
fn hermes_system(tools: &[Value]) -> String {
    let list: Vec<String> = tools.iter().map(Value::to_string).collect();
    format!(
        "You are a function calling AI model. You are provided with function signatures within <tools></tools> XML tags. You may call one or more functions to assist with the user query. Don't make assumptions about what values to plug into functions. Here are the available tools: <tools>{}</tools> For each function call return a json object with function name and arguments within <tool_call></tool_call> XML tags as follows:\n<tool_call>\n{{\"name\": <function-name>, \"arguments\": <args-dict>}}\n</tool_call>",
        list.join(" ")
    )
}

/// The tools and choice of a request, validated.
#[derive(Debug, Clone)]
pub struct ToolRequest {
    pub tools: Vec<Tool>,
    pub choice: Choice,
}

impl ToolRequest {
    /// The tools a forced call may use (`None`: calls are not forced).
    pub fn forced(&self) -> Option<Vec<&Tool>> {
        match &self.choice {
            Choice::Required => Some(self.tools.iter().collect()),
            Choice::Named(n) => Some(self.tools.iter().filter(|t| &t.name == n).collect()),
            _ => None,
        }
    }
}

/// A shared grammar handle.
pub type SharedGrammar = Arc<Grammar>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_are_detected_from_templates() {
        assert_eq!(
            Format::detect("{{ '[TOOL_CALLS]' + tool_calls|tojson }}"),
            Format::Mistral
        );
        assert_eq!(Format::detect("<|python_tag|>{{ x }}"), Format::Llama3);
        assert_eq!(Format::detect("<tool_call>"), Format::Hermes);
        assert_eq!(Format::detect("<|im_start|>"), Format::Hermes);
    }
}
