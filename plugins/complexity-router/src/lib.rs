//! `complexity-router`: send simple requests to the local model and the rest to the premium
//! one.
//!
//! A request is *simple* when it is short (estimated tokens ≤ `max_tokens`), offers or uses
//! no tools, contains no code, and the conversation is shallow (user turns ≤ `max_turns`).
//! Simple requests go to `local_backend`/`local_model`; everything else, and every request
//! while the local backend is unhealthy, goes to `premium_backend`/`premium_model`. Each
//! decision is tagged `complexity:simple` or `complexity:complex` and explains itself.
//!
//! Config (`[plugins.config.complexity-router]`): `local_backend` (default `"local"`),
//! `local_model` (default: the client's model), `premium_backend` (default `"openai"`),
//! `premium_model` (default: the client's model), `max_tokens` (default 400), `max_turns`
//! (default 4), `routes` (optional list of client model names the policy applies to;
//! default: all).

use switchyard_sdk::host::{config, config_list, config_or};
use switchyard_sdk::{BackendStatus, Caller, Classify, Decision, Health, Request, helpers};

pub struct ComplexityRouter;

/// Why a request is not simple, or `None` when it is.
pub fn complexity(req: &Request, max_tokens: u32, max_turns: usize) -> Option<&'static str> {
    if helpers::has_tools(req) {
        Some("uses tools")
    } else if helpers::has_code(req) {
        Some("contains code")
    } else if helpers::user_turns(req) > max_turns {
        Some("deep conversation")
    } else if helpers::estimate_tokens(req) > max_tokens {
        Some("long prompt")
    } else if helpers::has_media(req) {
        Some("has images or other media")
    } else {
        None
    }
}

impl Classify for ComplexityRouter {
    fn classify(req: Request, _who: Caller, backends: Vec<BackendStatus>) -> Decision {
        let routes = config_list("routes");
        if !routes.is_empty() && !routes.contains(&req.model) {
            return Decision::none();
        }
        let local = config("local_backend").unwrap_or_else(|| "local".into());
        let premium = config("premium_backend").unwrap_or_else(|| "openai".into());
        let local_model = config("local_model").unwrap_or_else(|| req.model.clone());
        let premium_model = config("premium_model").unwrap_or_else(|| req.model.clone());
        let max_tokens = config_or("max_tokens", 400u32);
        let max_turns = config_or("max_turns", 4usize);

        match complexity(&req, max_tokens, max_turns) {
            Some(why) => {
                switchyard_sdk::host::counter_add("complex", 1);
                Decision::to(&premium, &premium_model)
                    .tag("complexity:complex")
                    .because(why)
            }
            None => {
                let local_down = backends
                    .iter()
                    .any(|b| b.name == local && b.health == Health::Unhealthy);
                if local_down {
                    switchyard_sdk::host::counter_add("local_unhealthy", 1);
                    Decision::to(&premium, &premium_model)
                        .tag("complexity:simple")
                        .because("simple, but the local backend is unhealthy")
                } else {
                    switchyard_sdk::host::counter_add("simple", 1);
                    Decision::to(&local, &local_model)
                        .tag("complexity:simple")
                        .because("simple")
                }
            }
        }
    }
}

switchyard_sdk::export_classify!(ComplexityRouter);

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_sdk::Role;
    use switchyard_sdk::testing::*;

    fn decide(req: Request, local: Health) -> Decision {
        reset();
        set_config("local_model", "llama-3.1-8b");
        set_config("premium_model", "gpt-4o");
        ComplexityRouter::classify(
            req,
            caller(),
            vec![backend("local", local), backend("openai", Health::Healthy)],
        )
    }

    fn target(d: &Decision) -> (String, String) {
        let t = d.target.clone().expect("a target");
        (t.backend, t.model)
    }

    #[test]
    fn short_question_goes_local() {
        let d = decide(
            chat(&[(Role::User, "What is the capital of France?")]),
            Health::Healthy,
        );
        assert_eq!(target(&d), ("local".into(), "llama-3.1-8b".into()));
        assert_eq!(d.tags, vec!["complexity:simple"]);
        assert_eq!(counter("simple"), 1);
    }

    #[test]
    fn tools_code_length_and_depth_go_premium() {
        let tools = chat(&[(Role::User, "weather?")]).with_tool("get_weather");
        let code = chat(&[(Role::User, "fix this:\n```rust\nfn main() {}\n```")]);
        let long = chat(&[(Role::User, &"word ".repeat(1000))]);
        let turns: Vec<(Role, &str)> = (0..6)
            .flat_map(|_| [(Role::User, "hi"), (Role::Assistant, "hello")])
            .collect();
        let deep = chat(&turns);
        for (req, why) in [
            (tools, "uses tools"),
            (code, "contains code"),
            (long, "long prompt"),
            (deep, "deep conversation"),
        ] {
            let d = decide(req, Health::Healthy);
            assert_eq!(target(&d), ("openai".into(), "gpt-4o".into()), "{why}");
            assert_eq!(d.reason.as_deref(), Some(why));
        }
    }

    #[test]
    fn unhealthy_local_sends_simple_requests_to_premium() {
        let d = decide(chat(&[(Role::User, "hi")]), Health::Unhealthy);
        assert_eq!(target(&d).0, "openai");
        assert_eq!(counter("local_unhealthy"), 1);
    }
}
