//! Chat templates: the model's own `tokenizer.chat_template` (Jinja) rendered with minijinja.
//!
//! Templates written for Hugging Face use Python string methods (`.strip()`, `.startswith()`),
//! which `minijinja-contrib`'s pycompat layer provides, plus `raise_exception` and
//! `strftime_now`. Messages and tool definitions are passed as they arrived in the request, so
//! templates that understand `tools` (Llama 3.1) get them. A template that fails to render is a
//! `ChatError` naming the reason; the server turns it into a 400.

use minijinja::{Environment, Error, ErrorKind, Value as JValue};

/// A template that could not be compiled or rendered.
#[derive(Debug, thiserror::Error)]
#[error("chat template: {0}")]
pub struct ChatError(pub String);

pub struct ChatTemplate {
    env: Environment<'static>,
    bos: String,
    eos: String,
    /// How tools and tool calls go through this template, and the model's call syntax.
    pub tools: crate::tools::Prompting,
}

fn raise_exception(msg: String) -> Result<JValue, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, msg))
}

fn strftime_now(fmt: String) -> String {
    // Templates use this for "today's date" lines; a fixed UTC clock keeps it simple.
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let days = (secs / 86400) as i64;
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    let month = MONTHS[(m - 1) as usize];
    fmt.replace("%d", &format!("{d:02}"))
        .replace("%m", &format!("{m:02}"))
        .replace("%Y", &y.to_string())
        .replace("%b", &month[..3])
        .replace("%B", month)
}

impl ChatTemplate {
    /// Compiles `source` (the GGUF's `tokenizer.chat_template`).
    pub fn new(source: &str, bos: &str, eos: &str) -> Result<ChatTemplate, ChatError> {
        let mut env = Environment::new();
        minijinja_contrib::add_to_environment(&mut env);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        // HF renders with trim_blocks/lstrip_blocks on.
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.add_template_owned("chat", source.to_string())
            .map_err(|e| ChatError(format!("cannot compile: {e}")))?;
        Ok(ChatTemplate {
            env,
            bos: bos.to_string(),
            eos: eos.to_string(),
            tools: crate::tools::Prompting::new(source, None),
        })
    }

    /// Overrides the tool-call syntax found in the template (`--tool-call-format`).
    pub fn set_tool_format(&mut self, format: crate::tools::Format) {
        self.tools.format = format;
    }

    /// Renders the conversation, ending with the assistant prompt when `add_generation_prompt`.
    pub fn render(
        &self,
        messages: &serde_json::Value,
        tools: Option<&serde_json::Value>,
        add_generation_prompt: bool,
    ) -> Result<String, ChatError> {
        let t = self
            .env
            .get_template("chat")
            .map_err(|e| ChatError(e.to_string()))?;
        let ctx = minijinja::context! {
            messages => JValue::from_serialize(messages),
            tools => tools.map(JValue::from_serialize),
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos.clone(),
            eos_token => self.eos.clone(),
        };
        t.render(ctx).map_err(|e| {
            let mut msg = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                msg.push_str(&format!(": {s}"));
                src = s.source();
            }
            ChatError(format!("cannot render: {msg}"))
        })
    }
}

/// ChatML, for models that ship without a template.
pub const CHATML: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn python_string_methods_and_tools_work() {
        let src = "{% for m in messages %}{{ m.role.upper() }}:{{ m.content.strip() }}|{% endfor %}{% if tools %}T={{ tools|length }}{% endif %}";
        let t = ChatTemplate::new(src, "<s>", "</s>").unwrap();
        let out = t
            .render(
                &json!([{"role": "user", "content": "  hi  "}]),
                Some(&json!([{"type": "function"}])),
                true,
            )
            .unwrap();
        assert_eq!(out, "USER:hi|T=1");
    }

    #[test]
    fn raise_exception_is_a_clear_error() {
        let t = ChatTemplate::new("{{ raise_exception('roles must alternate') }}", "", "").unwrap();
        let e = t.render(&json!([]), None, true).unwrap_err().to_string();
        assert!(e.contains("roles must alternate"), "{e}");
    }
}
