//! `POST /v1/feedback`: a caller rates one of its own answers.
//!
//! ```text
//! {"request_id": "req_…", "score": 0.0..1.0 | "thumbs": "up" | "down", "comment": "…"}
//! ```
//! Authenticated like `/v1/*` (the virtual key, when client auth is on). The id is the
//! `x-switchyard-request-id` of the answer; feedback on a request that is not the caller's,
//! or that does not exist, is the same 404 (OpenAI's error shape), so ids cannot be probed.
//! The row is joined to the request's ledger row (route, backend, model), which is what
//! `switchyard spend --by target` and the rollout guard `min_feedback` average.

use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::{Value, json};

use crate::base::GatewayError;
use crate::base::body::GatewayBody;
use crate::base::respond;
use crate::request::parse::read_body;
use crate::services::Services;
use crate::services::governance::feedback::{self, Feedback, Rated};
use crate::services::governance::store::Write;

/// Largest feedback body accepted.
const MAX_BODY: usize = 64 * 1024;
/// Longest comment kept, in bytes.
const MAX_COMMENT: usize = 8 * 1024;
/// How long a feedback waits for its request's ledger row to be written (rows are
/// committed in batches a few milliseconds after the answer).
const ROW_WAIT: Duration = Duration::from_secs(2);

/// What a valid feedback body says.
#[derive(Debug, PartialEq)]
struct Parsed {
    request_id: String,
    score: f64,
    comment: Option<String>,
}

fn parse(body: &[u8]) -> Result<Parsed, GatewayError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| GatewayError::BadJson {
        detail: e.to_string(),
        line: e.line(),
        column: e.column(),
    })?;
    let Some(obj) = v.as_object() else {
        return Err(GatewayError::NotAnObject);
    };
    for k in obj.keys() {
        if !matches!(k.as_str(), "request_id" | "score" | "thumbs" | "comment") {
            return Err(GatewayError::InvalidValue {
                param: "body",
                reason: format!(
                    "unknown member \"{k}\" (feedback takes request_id, score or thumbs, and comment)"
                ),
            });
        }
    }
    let request_id = match obj.get("request_id") {
        None | Some(Value::Null) => {
            return Err(GatewayError::MissingParam {
                param: "request_id",
            });
        }
        Some(Value::String(s)) => s.clone(),
        Some(_) => {
            return Err(GatewayError::InvalidParam {
                param: "request_id",
                expected: "a string (the x-switchyard-request-id of your request)",
            });
        }
    };
    let score = match (obj.get("score"), obj.get("thumbs")) {
        (Some(_), Some(_)) => {
            return Err(GatewayError::InvalidValue {
                param: "score",
                reason: "send either score or thumbs, not both".into(),
            });
        }
        (Some(s), None) => match s.as_f64() {
            Some(x) if (0.0..=1.0).contains(&x) => x,
            Some(x) => {
                return Err(GatewayError::InvalidValue {
                    param: "score",
                    reason: format!("must be between 0 and 1, got {x}"),
                });
            }
            None => {
                return Err(GatewayError::InvalidParam {
                    param: "score",
                    expected: "a number between 0 and 1",
                });
            }
        },
        (None, Some(t)) => match t.as_str() {
            Some("up") => 1.0,
            Some("down") => 0.0,
            _ => {
                return Err(GatewayError::InvalidValue {
                    param: "thumbs",
                    reason: "must be \"up\" or \"down\"".into(),
                });
            }
        },
        (None, None) => return Err(GatewayError::MissingParam { param: "score" }),
    };
    let comment = match obj.get("comment") {
        None | Some(Value::Null) => None,
        Some(Value::String(c)) if c.len() <= MAX_COMMENT => Some(c.clone()),
        Some(Value::String(_)) => {
            return Err(GatewayError::ParamTooLong {
                param: "comment",
                max: MAX_COMMENT,
            });
        }
        Some(_) => {
            return Err(GatewayError::InvalidParam {
                param: "comment",
                expected: "a string",
            });
        }
    };
    Ok(Parsed {
        request_id,
        score,
        comment,
    })
}

/// Answer one `POST /v1/feedback`.
pub async fn handle(services: &Arc<Services>, req: Request<Incoming>) -> Response<GatewayBody> {
    match accept(services, req).await {
        Ok(v) => respond::json(StatusCode::OK, v.to_string()),
        Err(e) => {
            tracing::info!(kind = e.kind(), error = %e, "feedback refused");
            e.to_response()
        }
    }
}

async fn accept(services: &Arc<Services>, req: Request<Incoming>) -> Result<Value, GatewayError> {
    let Some(gov) = services.governance.clone() else {
        return Err(GatewayError::Internal(
            "feedback needs the state store, and this gateway runs without one".into(),
        ));
    };
    let snapshot = services.snapshot();
    let (parts, body) = req.into_parts();
    let key = gov.authenticate(&parts.headers, &snapshot.config.governance)?;
    let bytes = read_body(
        body,
        &parts.headers,
        MAX_BODY,
        snapshot.config.server.body_read_timeout,
    )
    .await?;
    let p = parse(&bytes)?;
    let caller = key.as_ref().map(|k| k.id.clone());
    let store = gov.store.clone();
    let id = p.request_id.clone();
    // Store reads block: off the async workers.
    let rated: Option<Rated> = tokio::task::spawn_blocking(move || {
        let mut conn = store.conn().ok()?;
        let found = feedback::find_in(&mut conn, &id).ok().flatten();
        if found.is_some() || feedback::request_time(&id).is_none() {
            return found;
        }
        // The row may still be queued for the writer.
        store.flush(ROW_WAIT);
        feedback::find_in(&mut conn, &id).ok().flatten()
    })
    .await
    .map_err(|e| GatewayError::Internal(format!("feedback lookup failed: {e}")))?;
    let rated = match rated {
        Some(r) if r.key_id == caller => r,
        _ => return Err(GatewayError::UnknownRequestId(p.request_id)),
    };
    let answer = json!({
        "object": "feedback",
        "request_id": p.request_id,
        "score": p.score,
        "route": rated.route,
        "backend": rated.backend,
        "model": rated.model,
    });
    let row = Feedback {
        request_id: p.request_id,
        rated,
        score: p.score,
        comment: p.comment,
    };
    let write = if gov.store.is_postgres() {
        Write::Pg(Box::new(move |tx| feedback::insert_pg(tx, &row)))
    } else {
        Write::Other(Box::new(move |c| feedback::insert(c, &row)))
    };
    if !gov.store.submit(write) {
        return Err(GatewayError::Internal(
            "the state store's queue is full: feedback not recorded, try again".into(),
        ));
    }
    Ok(answer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feedback_bodies_are_checked() {
        let ok = parse(br#"{"request_id":"req_1","thumbs":"down","comment":"wrong"}"#).unwrap();
        assert_eq!(
            ok,
            Parsed {
                request_id: "req_1".into(),
                score: 0.0,
                comment: Some("wrong".into())
            }
        );
        assert_eq!(
            parse(br#"{"request_id":"r","score":0.25}"#).unwrap().score,
            0.25
        );
        for (body, param) in [
            (r#"{"score":1}"#, "request_id"),
            (r#"{"request_id":"r"}"#, "score"),
            (r#"{"request_id":"r","score":2}"#, "score"),
            (r#"{"request_id":"r","thumbs":"sideways"}"#, "thumbs"),
            (r#"{"request_id":"r","score":1,"thumbs":"up"}"#, "score"),
            (r#"{"request_id":"r","score":1,"stars":5}"#, "body"),
        ] {
            let e = parse(body.as_bytes()).unwrap_err();
            assert_eq!(e.status(), StatusCode::BAD_REQUEST, "{body}");
            assert!(
                String::from_utf8_lossy(&e.to_body()).contains(param),
                "{body}: {e}"
            );
        }
    }
}
