//! `json-validator`: when the client asked for JSON, make sure the answer is JSON.
//!
//! For `response_format = {"type": "json_object"}` the first choice's content must parse as
//! a JSON object. For `json_schema` it must also match the schema's structure: the
//! `required` properties present and every property of the declared `type` (recursively
//! through nested objects and array items; `enum` values checked). Anything else is
//! rejected with the reason, so the route's fallback answers instead. Answers to requests
//! that did not ask for JSON, and tool-call answers, are accepted untouched; so give it
//! `validate_when = ["json"]` in `[plugins.overrides.json-validator]`, and those answers
//! are served without calling it.

use serde_json::Value;
use switchyard_sdk::{Request, Response, ResponseFormat, Validate, Verdict};

pub struct JsonValidator;

/// The first way `v` does not match `schema`, as a path and a reason.
pub fn mismatch(v: &Value, schema: &Value, path: &str) -> Option<String> {
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
        && !allowed.contains(v)
    {
        return Some(format!("{path}: {v} is not one of the allowed values"));
    }
    let types: Vec<&str> = match schema.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    if !types.is_empty() && !types.iter().any(|t| is_type(v, t)) {
        return Some(format!(
            "{path}: expected {}, got {}",
            types.join(" or "),
            kind(v)
        ));
    }
    if let Value::Object(obj) = v {
        for r in schema
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            if !obj.contains_key(r) {
                return Some(format!("{path}: missing required property \"{r}\""));
            }
        }
        if let Some(Value::Object(props)) = schema.get("properties") {
            for (k, sub) in props {
                if let Some(child) = obj.get(k)
                    && let Some(m) = mismatch(child, sub, &format!("{path}.{k}"))
                {
                    return Some(m);
                }
            }
        }
    }
    if let (Value::Array(items), Some(item_schema)) = (v, schema.get("items")) {
        for (i, item) in items.iter().enumerate() {
            if let Some(m) = mismatch(item, item_schema, &format!("{path}[{i}]")) {
                return Some(m);
            }
        }
    }
    None
}

fn is_type(v: &Value, t: &str) -> bool {
    match t {
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string(),
        "number" => v.is_number(),
        "integer" => v.is_i64() || v.is_u64(),
        "boolean" => v.is_boolean(),
        "null" => v.is_null(),
        _ => true,
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// The verdict on `content` for what the client asked.
pub fn check(format: &ResponseFormat, content: &str) -> Result<(), String> {
    let v: Value = serde_json::from_str(content.trim())
        .map_err(|e| format!("the answer is not valid JSON ({e})"))?;
    match format {
        ResponseFormat::Text => Ok(()),
        ResponseFormat::JsonObject => {
            if v.is_object() {
                Ok(())
            } else {
                Err(format!(
                    "the answer is JSON but not an object (got {})",
                    kind(&v)
                ))
            }
        }
        ResponseFormat::JsonSchema(s) => {
            let schema: Value = serde_json::from_str(&s.schema).unwrap_or(Value::Null);
            match mismatch(&v, &schema, "$") {
                None => Ok(()),
                Some(m) => Err(format!(
                    "the answer does not match schema \"{}\": {m}",
                    s.name
                )),
            }
        }
    }
}

impl Validate for JsonValidator {
    fn validate(req: Request, resp: Response) -> Verdict {
        let Some(format) = &req.response_format else {
            return Verdict::Accept;
        };
        if matches!(format, ResponseFormat::Text) || !resp.tool_calls.is_empty() {
            return Verdict::Accept;
        }
        let Some(content) = &resp.content else {
            switchyard_sdk::host::counter_add("rejected", 1);
            return Verdict::Reject("the answer has no content".into());
        };
        match check(format, content) {
            Ok(()) => {
                switchyard_sdk::host::counter_add("accepted", 1);
                Verdict::Accept
            }
            Err(why) => {
                switchyard_sdk::host::counter_add("rejected", 1);
                Verdict::Reject(why)
            }
        }
    }
}

switchyard_sdk::export_validate!(JsonValidator);

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_sdk::Role;
    use switchyard_sdk::testing::*;

    const SCHEMA: &str = r#"{"type":"object","required":["name","age"],"properties":{"name":{"type":"string"},"age":{"type":"integer"},"tags":{"type":"array","items":{"type":"string"}}}}"#;

    fn verdict(req: Request, content: &str) -> Verdict {
        reset();
        JsonValidator::validate(req, answer(content))
    }

    #[test]
    fn plain_requests_are_not_checked() {
        let req = chat(&[(Role::User, "hi")]);
        assert!(matches!(verdict(req, "not json"), Verdict::Accept));
    }

    #[test]
    fn json_object_must_parse_as_an_object() {
        let req = chat(&[(Role::User, "hi")]).with_json();
        assert!(matches!(
            verdict(req.clone(), r#"{"a":1}"#),
            Verdict::Accept
        ));
        assert!(matches!(
            verdict(req.clone(), "Sure! {\"a\":1}"),
            Verdict::Reject(_)
        ));
        assert!(matches!(verdict(req, "[1,2]"), Verdict::Reject(r) if r.contains("not an object")));
    }

    #[test]
    fn schema_required_fields_and_types() {
        let req = chat(&[(Role::User, "hi")]).with_schema(SCHEMA);
        assert!(matches!(
            verdict(req.clone(), r#"{"name":"Ada","age":36,"tags":["x"]}"#),
            Verdict::Accept
        ));
        assert!(
            matches!(verdict(req.clone(), r#"{"name":"Ada"}"#), Verdict::Reject(r) if r.contains("\"age\""))
        );
        assert!(
            matches!(verdict(req.clone(), r#"{"name":"Ada","age":"36"}"#), Verdict::Reject(r) if r.contains("$.age"))
        );
        assert!(
            matches!(verdict(req, r#"{"name":"Ada","age":3,"tags":[1]}"#), Verdict::Reject(r) if r.contains("$.tags[0]"))
        );
    }
}
