//! Validation: from the parsed file to the [`Runtime`] the rest of the gateway reads.
//!
//! Every check records a [`Problem`] with its key path and carries on, so one run of
//! `switchyard check` lists every mistake. What is derived here (resolved addresses, parsed
//! upstream URIs, API-key headers, TLS configs) is computed once per config version, never
//! per request. Each section's own checks sit beside its settings type (`server`,
//! `backend`, `route`, ...); this file runs them in order and assembles the result.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use super::admin::AdminSettings;
use super::backend::{Backend, validate_backend};
use super::governance;
use super::local_worker::LocalWorkerSettings;
use super::plugins::Settings as PluginSettings;
use super::route::validate_route;
use super::runtime::Runtime;
use super::schema::ConfigFile;
use super::server::validate_server;
use super::state::validate_state;
use super::telemetry::validate_telemetry;
use super::traffic::TrafficSettings;
use super::{ConfigSource, Problem};

pub fn validate(file: ConfigFile, source: ConfigSource) -> Result<Runtime, Vec<Problem>> {
    let mut problems = Vec::new();
    let server = validate_server(&file.server, &mut problems);

    let mut backends: Vec<Arc<Backend>> = Vec::new();
    let mut seen: HashSet<&str> = HashSet::new();
    for (i, b) in file.backends.iter().enumerate() {
        let path = format!("backends[{i}]");
        if let Some(name) = b.name.as_deref()
            && !seen.insert(name)
        {
            problems.push(Problem::new(
                format!("{path}.name"),
                format!("duplicate backend name \"{name}\""),
            ));
            continue;
        }
        if let Some(backend) = validate_backend(b, backends.len(), &path, &mut problems) {
            backends.push(Arc::new(backend));
        }
    }
    let declared: HashSet<&str> = file
        .backends
        .iter()
        .filter_map(|b| b.name.as_deref())
        .collect();

    let mut routes = Vec::new();
    let mut route_index = HashMap::new();
    let mut catch_all = None;
    if file.routes.is_empty() {
        problems.push(Problem::new(
            "routes",
            "no routes are defined: add at least one [[routes]] table",
        ));
    }
    for (i, r) in file.routes.iter().enumerate() {
        let path = format!("routes[{i}]");
        let Some(route) = validate_route(r, &path, &backends, &declared, &mut problems) else {
            continue;
        };
        if route_index.contains_key(&*route.name) || (&*route.name == "*" && catch_all.is_some()) {
            problems.push(Problem::new(
                format!("{path}.model"),
                format!("another route already serves model \"{}\"", route.name),
            ));
            continue;
        }
        let idx = routes.len();
        if &*route.name == "*" {
            catch_all = Some(idx);
        } else {
            route_index.insert(route.name.to_string(), idx);
        }
        routes.push(Arc::new(route));
    }

    let admin = AdminSettings::from_section(file.admin.as_ref(), &mut problems);
    let traffic = TrafficSettings::from_section(file.traffic.as_ref(), &mut problems);
    let local_worker = LocalWorkerSettings::from_section(file.local_worker.as_ref(), &mut problems);
    let telemetry = file
        .telemetry
        .as_ref()
        .map(|t| validate_telemetry(t, &mut problems));
    // Captured pairs hold prompts and answers: the same opt-in as content on spans.
    if !telemetry.as_ref().is_some_and(|t| t.capture_content) {
        for (i, r) in file.routes.iter().enumerate() {
            if r.capture.is_some() {
                problems.push(Problem::new(
                    format!("routes[{i}].capture"),
                    "stores prompts and answers: set [telemetry] capture_content = true to allow it",
                ));
            }
        }
    }
    let cache = file
        .cache
        .as_ref()
        .map(|c| super::cache::validate_cache(c, &mut problems))
        .unwrap_or_default();
    let state = file
        .state
        .as_ref()
        .map(|s| validate_state(s, &mut problems));
    let plugins_dir = file.plugins.as_ref().and_then(|p| {
        if let Some(d) = &p.dir
            && d.as_os_str().is_empty()
        {
            problems.push(Problem::new("plugins.dir", "must not be empty"));
        }
        p.dir.clone()
    });
    let plugins = file
        .plugins
        .as_ref()
        .and_then(|p| PluginSettings::validate(p, &mut problems))
        .map(Arc::new);

    let governance = governance::validate(&file, &mut problems);

    if !problems.is_empty() {
        return Err(problems);
    }
    let Some(server) = server else {
        return Err(vec![Problem::new("server", "invalid")]);
    };
    Ok(Runtime {
        source,
        server,
        backends,
        metric_models: super::runtime::metric_models(&routes, &governance),
        other_model: std::sync::Arc::from(super::runtime::OTHER_MODEL),
        routes,
        route_index,
        catch_all,
        plugins_dir,
        plugins,
        telemetry,
        state,
        admin,
        traffic,
        local_worker,
        governance,
        cache,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::base::Endpoint;
    use crate::config::{ConfigSource, load_str};

    fn problems(text: &str) -> Vec<Problem> {
        load_str(text, ConfigSource::Embedded).unwrap_err().problems
    }

    #[test]
    fn every_problem_is_reported_with_its_path() {
        let p = problems(
            r#"
[server]
listen = "nonsense"

[[backends]]
name = "local"
url = "ftp://x"

[[backends]]
name = "local"
url = "http://127.0.0.1:9001/v1"

[[routes]]
model = "gpt-4o"
targets = [{ backend = "lcoal" }, { backend = "local", weight = 0 }]
fallback = [{ backend = "nope" }]
shadow = { backend = "local", sample = 2.0 }
"#,
        );
        let paths: Vec<&str> = p.iter().map(|p| p.path.as_str()).collect();
        assert!(paths.contains(&"server.listen"), "{p:#?}");
        assert!(paths.contains(&"backends[0].url"), "{p:#?}");
        assert!(paths.contains(&"backends[1].name"), "{p:#?}");
        assert!(paths.contains(&"routes[0].targets[0].backend"), "{p:#?}");
        assert!(paths.contains(&"routes[0].fallback[0].backend"), "{p:#?}");
        assert!(paths.contains(&"routes[0].shadow.sample"), "{p:#?}");
        let lcoal = p
            .iter()
            .find(|p| p.path == "routes[0].targets[0].backend")
            .unwrap();
        assert!(lcoal.message.contains("\"lcoal\""));
    }

    #[test]
    fn missing_api_key_env_names_the_variable_not_a_value() {
        let p = problems(
            r#"
[[backends]]
name = "openai"
url = "https://api.openai.com/v1"
api_key_env = "SWITCHYARD_TEST_SURELY_UNSET_KEY"
[[routes]]
model = "*"
targets = [{ backend = "openai" }]
"#,
        );
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].path, "backends[0].api_key_env");
        assert!(p[0].message.contains("SWITCHYARD_TEST_SURELY_UNSET_KEY"));
    }

    #[test]
    fn routes_resolve_with_catch_all() {
        let rt = load_str(
            r#"
[[backends]]
name = "local"
urls = ["http://127.0.0.1:9001/v1/", "http://127.0.0.1:9002/v1"]
[[routes]]
model = "gpt-4o"
targets = [{ backend = "local", model = "llama", weight = 9 }, { backend = "local", weight = 1 }]
[[routes]]
model = "*"
targets = [{ backend = "local" }]
"#,
            ConfigSource::Embedded,
        )
        .unwrap();
        assert_eq!(rt.route_for("gpt-4o").unwrap().total_weight, 10);
        assert_eq!(&*rt.route_for("anything").unwrap().name, "*");
        assert_eq!(rt.model_names().collect::<Vec<_>>(), vec!["gpt-4o"]);
        let b = rt.backend("local").unwrap();
        assert_eq!(
            b.urls[0].uri(Endpoint::ChatCompletions).to_string(),
            "http://127.0.0.1:9001/v1/chat/completions"
        );
        assert_eq!(b.urls[1].authority, "127.0.0.1:9002");
    }

    #[test]
    fn metric_model_labels_are_names_the_config_gives() {
        let rt = load_str(
            r#"
[[backends]]
name = "local"
url = "http://127.0.0.1:9001/v1"
[[prices]]
backend = "local"
model = "priced"
input_per_1m = 1.0
output_per_1m = 1.0
[[routes]]
model = "gpt-4o"
targets = [{ backend = "local", model = "llama" }]
fallback = [{ backend = "local", model = "qwen" }]
[[routes]]
model = "*"
targets = [{ backend = "local" }]
"#,
            ConfigSource::Embedded,
        )
        .unwrap();
        for named in ["gpt-4o", "llama", "qwen", "priced"] {
            assert_eq!(&*rt.metric_model(named), named);
        }
        assert_eq!(&*rt.metric_model("whatever-a-client-sent"), "other");
        assert_eq!(&*rt.metric_model("*"), "other");
    }

    #[test]
    fn no_routes_is_a_problem() {
        let p = problems("[[backends]]\nname = \"a\"\nurl = \"http://x/v1\"\n");
        assert_eq!(p[0].path, "routes");
    }
}
