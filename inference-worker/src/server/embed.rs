//! `POST /v1/embeddings`: inputs tokenized, run through the engine between generation
//! steps, each pooled into one L2-normalised vector (see `engine::Pooling`).

use std::sync::Arc;

use base64::Engine as _;
use http::{Response, StatusCode};
use serde_json::{Value, json};
use tokio::sync::mpsc::unbounded_channel;

use super::{ApiError, AppState, Body, json_response};
use crate::engine::EmbedRequest;

/// Inputs one request may carry.
const MAX_INPUTS: usize = 2048;

/// Answers one embeddings request.
pub(super) async fn embeddings(
    body: &[u8],
    st: &Arc<AppState>,
) -> Result<Response<Body>, ApiError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad("body", format!("request body is not valid JSON: {e}")))?;
    if !v.is_object() {
        return Err(ApiError::bad("body", "request body must be a JSON object"));
    }
    let inputs = inputs(&v, st)?;
    let base64 = match v.get("encoding_format") {
        None | Some(Value::Null) => false,
        Some(Value::String(f)) if f == "float" => false,
        Some(Value::String(f)) if f == "base64" => true,
        Some(_) => {
            return Err(ApiError::bad(
                "encoding_format",
                "`encoding_format` must be `float` or `base64`",
            ));
        }
    };
    if v.get("dimensions").is_some_and(|d| !d.is_null()) {
        return Err(ApiError::bad(
            "dimensions",
            "`dimensions` is not supported: the model's embedding size is fixed",
        ));
    }
    let n_tokens: usize = inputs.iter().map(Vec::len).sum();
    let (tx, mut rx) = unbounded_channel();
    let unavailable = |m: String| ApiError {
        status: StatusCode::SERVICE_UNAVAILABLE,
        message: m,
        kind: "server_error",
        param: None,
        code: None,
    };
    if !st.engine.embed(EmbedRequest { inputs, reply: tx }) {
        return Err(unavailable("the engine has stopped".into()));
    }
    let vectors = match rx.recv().await {
        Some(Ok(v)) => v,
        Some(Err(e)) => return Err(unavailable(format!("cannot embed now: {e}"))),
        None => return Err(unavailable("the engine has stopped".into())),
    };
    let data: Vec<Value> = vectors
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let embedding = if base64 {
                let bytes: Vec<u8> = e.iter().flat_map(|x| x.to_le_bytes()).collect();
                Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(e)
            };
            json!({"object": "embedding", "index": i, "embedding": embedding})
        })
        .collect();
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "object": "list", "data": data, "model": st.model_name,
            "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens},
        }),
    ))
}

/// `input`: a string, strings, token ids, or lists of token ids; each fits the context.
fn inputs(v: &Value, st: &AppState) -> Result<Vec<Vec<u32>>, ApiError> {
    let tok = &st.engine.tokenizer;
    let bad = |m: &str| ApiError::bad("input", m);
    let one = |x: &Value| -> Result<Vec<u32>, ApiError> {
        match x {
            Value::String(s) => Ok(tok.encode(s, true, false)),
            Value::Array(ids) if ids.iter().all(Value::is_u64) => {
                let ids: Vec<u32> = ids
                    .iter()
                    .filter_map(Value::as_u64)
                    .map(|i| i as u32)
                    .collect();
                if ids.iter().any(|&i| i as usize >= tok.vocab_size()) {
                    return Err(bad("token id out of range"));
                }
                Ok(ids)
            }
            _ => Err(bad(
                "`input` must be a string, an array of strings, an array of token ids, or an array of such arrays",
            )),
        }
    };
    let list: Vec<Vec<u32>> = match v.get("input") {
        None | Some(Value::Null) => return Err(bad("`input` is required")),
        Some(s @ Value::String(_)) => vec![one(s)?],
        Some(Value::Array(a)) if !a.is_empty() && a.iter().all(Value::is_u64) => {
            vec![one(&Value::Array(a.clone()))?]
        }
        Some(Value::Array(a)) => a.iter().map(one).collect::<Result<_, _>>()?,
        Some(_) => return Err(bad("`input` must be a string or an array")),
    };
    if list.is_empty() || list.len() > MAX_INPUTS {
        return Err(bad(&format!("`input` must hold 1 to {MAX_INPUTS} inputs")));
    }
    for (i, t) in list.iter().enumerate() {
        if t.is_empty() {
            return Err(ApiError::bad(
                &format!("input[{i}]"),
                "an input must not be empty",
            ));
        }
        if t.len() > st.engine.n_ctx {
            return Err(ApiError {
                status: StatusCode::BAD_REQUEST,
                message: format!(
                    "input[{i}] has {} tokens; this model's maximum context length is {} tokens",
                    t.len(),
                    st.engine.n_ctx
                ),
                kind: "invalid_request_error",
                param: Some(format!("input[{i}]")),
                code: Some("context_length_exceeded"),
            });
        }
    }
    Ok(list)
}
