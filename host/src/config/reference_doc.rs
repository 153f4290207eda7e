//! The configuration reference (`docs/src/reference/configuration.md`) must name every key
//! the parser accepts, and nothing it refuses.
//!
//! The keys are not listed by hand here (that list would drift like the page): they are
//! found by asking [`parse`] itself. Every section is a `deny_unknown_fields` struct, so a
//! probe key at some path makes serde answer "unknown field `…`, expected one of `a`, `b`",
//! which names every field accepted there; each field is then probed as a table, an array
//! of tables and a map of tables to find the sections below it. Sections added later (and
//! fields added to existing ones) are found without touching this file.

use std::collections::BTreeSet;

use super::parse;

const PROBE: &str = "switchyard_reference_probe";

/// One step of a key path.
#[derive(Clone, Debug)]
enum Step {
    /// A named field: `server`, `listen`.
    Field(String),
    /// An element of an array of tables: `routes[]`.
    Element,
    /// A value of a map of tables, under a name the user picks: `overrides.<name>`.
    Named,
}

/// The TOML text that puts `inner` (an inline-table body) at `path`.
fn nest(path: &[Step], inner: String) -> String {
    let Some((last, outer)) = path.split_last() else {
        return inner;
    };
    let wrapped = match last {
        Step::Field(name) => format!("{name} = {{ {inner} }}"),
        Step::Element => format!("[{{ {inner} }}]"),
        Step::Named => format!("probe_name = {{ {inner} }}"),
    };
    // An element's `[...]` is the value of the field before it, not a key of its own.
    match last {
        Step::Element => match outer.split_last() {
            Some((Step::Field(name), rest)) => nest(rest, format!("{name} = {wrapped}")),
            _ => unreachable!("an element always follows a field"),
        },
        _ => nest(outer, wrapped),
    }
}

/// The fields a table at `path` accepts, or `None` when no struct is there.
fn fields_at(path: &[Step]) -> Option<Vec<String>> {
    let text = nest(path, format!("{PROBE} = 1"));
    let problem = parse(&text).err()?;
    let message = problem.message;
    let (_, list) = message.split_once(&format!("unknown field `{PROBE}`, "))?;
    if list.starts_with("there are no fields") {
        return Some(Vec::new());
    }
    let list = list
        .strip_prefix("expected one of ")
        .or_else(|| list.strip_prefix("expected "))?;
    Some(
        // serde writes one field as "`a`", two as "`a` or `b`", more as "`a`, `b`, `c`".
        list.split(", ")
            .flat_map(|f| f.split(" or "))
            .map(|f| f.trim().trim_matches('`').to_string())
            .filter(|f| !f.is_empty())
            .collect(),
    )
}

fn render(path: &[Step]) -> String {
    let mut out = String::new();
    for step in path {
        match step {
            Step::Field(name) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(name);
            }
            Step::Element => out.push_str("[]"),
            Step::Named => out.push_str(".<name>"),
        }
    }
    out
}

/// What the parser accepts, as key paths: `server.listen`, `routes[].targets[].weight`,
/// `plugins.overrides.<name>.timeout_ms`.
#[derive(Default)]
struct Accepted {
    /// Keys that hold a value (a number, a string, a list of them, a free-form table).
    values: BTreeSet<String>,
    /// Keys that hold a section of their own (`server`, `routes[].rollout`,
    /// `plugins.overrides.<name>`): documented by their keys, a row of their own optional.
    sections: BTreeSet<String>,
}

fn accepted_keys() -> Accepted {
    let mut out = Accepted::default();
    let mut todo: Vec<Vec<Step>> = vec![Vec::new()];
    while let Some(table) = todo.pop() {
        assert!(table.len() < 12, "config nesting too deep at {table:?}");
        let fields = fields_at(&table)
            .unwrap_or_else(|| panic!("the parser did not name the fields of {}", render(&table)));
        for f in fields {
            let mut field = table.clone();
            field.push(Step::Field(f));
            let section = [Vec::new(), vec![Step::Element], vec![Step::Named]]
                .into_iter()
                .map(|shape| {
                    let mut below = field.clone();
                    below.extend(shape);
                    below
                })
                .find(|below| fields_at(below).is_some());
            match section {
                Some(below) => {
                    out.sections.insert(render(&field));
                    out.sections.insert(render(&below));
                    todo.push(below);
                }
                None => {
                    out.values.insert(render(&field));
                }
            }
        }
    }
    out
}

/// The first backticked cell of each table row of the page: the keys it documents.
fn documented_keys(page: &str) -> BTreeSet<String> {
    page.lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split_once('`'))
        .map(|(key, _)| key.to_string())
        .collect()
}

#[test]
fn the_configuration_reference_names_every_accepted_key() {
    let page_path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/src/reference/configuration.md"
    );
    let page = std::fs::read_to_string(page_path).expect("the configuration reference");
    let accepted = accepted_keys();
    // A sanity floor: the probe found the sections it must find.
    for known in [
        "server.listen",
        "backends[].pool.max_in_flight",
        "routes[].rollout.guard.max_error_rate",
        "plugins.overrides.<name>.timeout_ms",
        "teams[].budget_daily",
        "plugins.config",
    ] {
        assert!(
            accepted.values.contains(known),
            "probe missed {known}: {:?}",
            accepted.values
        );
    }
    let documented = documented_keys(&page);
    let missing: Vec<_> = accepted.values.difference(&documented).collect();
    let unknown: Vec<_> = documented
        .iter()
        .filter(|k| !accepted.values.contains(*k) && !accepted.sections.contains(*k))
        .collect();
    assert!(
        missing.is_empty() && unknown.is_empty(),
        "docs/src/reference/configuration.md is out of date with the config schema.\n\
         Keys the gateway accepts but the reference has no row for (add a row `| `key` | \
         default | meaning |`):\n  {}\n\
         Rows for keys the gateway refuses (remove or rename them):\n  {}",
        missing
            .iter()
            .map(|k| k.as_str())
            .collect::<Vec<_>>()
            .join("\n  "),
        unknown
            .iter()
            .map(|k| k.as_str())
            .collect::<Vec<_>>()
            .join("\n  ")
    );
}
