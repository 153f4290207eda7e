//! Constrained decoding: a JSON schema compiled to a byte-level pushdown automaton, and the
//! token masks it puts on the sampler.
//!
//! `compile` turns a schema (objects, arrays, enums and consts, required/optional properties,
//! strings, numbers, integers, booleans, null, `anyOf`/`oneOf`, type lists, `$defs` refs) into
//! [`Grammar`] nodes; a keyword it cannot enforce is an error naming it and where it is, so a
//! request never gets output that silently ignores part of its schema. `matcher` runs the
//! automaton over bytes; `mask` walks the vocabulary's byte trie with it to find the tokens
//! that may come next.
//!
//! Object properties may come in any order, each at most once; the object closes once every
//! required one is there. Whitespace between tokens of JSON is allowed up to `WS_MAX` bytes
//! per gap, so a model cannot pad forever; numbers are at most `NUM_MAX` bytes.

pub mod mask;
pub mod matcher;

pub use mask::{Constraint, TokenTrie};
pub use matcher::{Matcher, Step, Validator};

use serde_json::{Map, Value};

/// Whitespace bytes allowed in one gap between JSON tokens.
pub const WS_MAX: u8 = 24;
/// Bytes a number may take.
pub const NUM_MAX: u8 = 24;

/// Index of a node in a grammar.
pub type NodeId = u32;

/// What a value must look like.
#[derive(Debug, Clone)]
pub enum Node {
    /// Any JSON value.
    Any,
    Object(Object),
    Array {
        items: NodeId,
        min: u32,
        max: u32,
    },
    String {
        min: u32,
        max: u32,
    },
    Number {
        integer: bool,
    },
    /// One of these exact texts (JSON `enum`/`const`, `true`, `null`, ...), sorted bytewise.
    Lits(Vec<Vec<u8>>),
    AnyOf(Vec<NodeId>),
    /// These in order (literal text around a value: a tool call's wrapper).
    Seq(Vec<NodeId>),
    /// A `$ref` not yet resolved while compiling (never left in a finished grammar).
    Pending,
}

/// An object's properties.
#[derive(Debug, Clone)]
pub struct Object {
    /// Any keys, values of `Any` (a schema-less object).
    pub any_keys: bool,
    /// Property keys as their JSON string bodies followed by the closing quote, sorted
    /// bytewise; `prop[k]` is the property index of `keys[k]`.
    pub keys: Vec<Vec<u8>>,
    pub prop: Vec<u16>,
    /// Value node per property index.
    pub values: Vec<NodeId>,
    /// Bit per property index.
    pub required: u64,
    /// Properties come in index order (a tool call's `name` before its `arguments`).
    pub ordered: bool,
}

/// A compiled grammar: nodes, the first few fixed (see the `ANY*` ids), and the root.
#[derive(Debug, Clone)]
pub struct Grammar {
    pub nodes: Vec<Node>,
    pub root: NodeId,
}

pub const ANY: NodeId = 0;
pub const ANY_OBJECT: NodeId = 1;
pub const ANY_ARRAY: NodeId = 2;
pub const ANY_STRING: NodeId = 3;
pub const ANY_NUMBER: NodeId = 4;
pub const ANY_LITERAL: NodeId = 5;

/// A schema the grammar cannot enforce, or a malformed one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} (at {path})")]
pub struct SchemaError {
    /// JSON pointer of the offending part within the schema.
    pub path: String,
    pub message: String,
}

/// Keywords that only describe (nothing to enforce).
const ANNOTATIONS: &[&str] = &[
    "title",
    "description",
    "default",
    "examples",
    "$schema",
    "$id",
    "$comment",
    "deprecated",
    "readOnly",
    "writeOnly",
    // Generating no other properties satisfies any `additionalProperties`.
    "additionalProperties",
    "strict",
];

impl Grammar {
    fn base() -> Grammar {
        Grammar {
            nodes: vec![
                Node::Any,
                Node::Object(Object {
                    any_keys: true,
                    keys: Vec::new(),
                    prop: Vec::new(),
                    values: Vec::new(),
                    required: 0,
                    ordered: false,
                }),
                Node::Array {
                    items: ANY,
                    min: 0,
                    max: u32::MAX,
                },
                Node::String {
                    min: 0,
                    max: u32::MAX,
                },
                Node::Number { integer: false },
                Node::Lits(sorted(vec![
                    b"true".to_vec(),
                    b"false".to_vec(),
                    b"null".to_vec(),
                ])),
            ],
            root: ANY,
        }
    }

    /// Any JSON value.
    pub fn any() -> Grammar {
        Grammar::base()
    }

    /// Any JSON object (`response_format: json_object`).
    pub fn any_object() -> Grammar {
        let mut g = Grammar::base();
        g.root = ANY_OBJECT;
        g
    }

    /// Values valid under `schema`.
    pub fn from_schema(schema: &Value) -> Result<Grammar, SchemaError> {
        let mut g = Grammar::base();
        let mut c = Compiler {
            g: &mut g,
            root: schema,
            refs: Vec::new(),
        };
        let root = c.node(schema, "#")?;
        g.root = root;
        Ok(g)
    }

    pub fn push(&mut self, n: Node) -> NodeId {
        self.nodes.push(n);
        (self.nodes.len() - 1) as NodeId
    }

    /// A literal text node.
    pub fn literal(&mut self, text: &str) -> NodeId {
        self.push(Node::Lits(vec![text.as_bytes().to_vec()]))
    }

    /// A fixed-order object of these (key, value node) properties, all required.
    pub fn ordered_object(&mut self, props: &[(&str, NodeId)]) -> NodeId {
        let entries: Vec<(String, NodeId)> =
            props.iter().map(|(k, v)| (k.to_string(), *v)).collect();
        let mut o = object_of(&entries);
        o.required = (1u64 << props.len()) - 1;
        o.ordered = true;
        self.push(Node::Object(o))
    }

    /// Copies `other`'s nodes in, returning where its root went (to nest a schema's grammar
    /// in a wrapper).
    pub fn embed(&mut self, other: &Grammar) -> NodeId {
        let base = self.nodes.len() as NodeId;
        let shift = |id: NodeId| if id < 6 { id } else { id - 6 + base };
        for n in other.nodes.iter().skip(6) {
            let m = match n {
                Node::Object(o) => {
                    let mut o = o.clone();
                    o.values = o.values.iter().map(|&v| shift(v)).collect();
                    Node::Object(o)
                }
                Node::Array { items, min, max } => Node::Array {
                    items: shift(*items),
                    min: *min,
                    max: *max,
                },
                Node::AnyOf(v) => Node::AnyOf(v.iter().map(|&x| shift(x)).collect()),
                Node::Seq(v) => Node::Seq(v.iter().map(|&x| shift(x)).collect()),
                other => other.clone(),
            };
            self.nodes.push(m);
        }
        shift(other.root)
    }
}

fn sorted(mut v: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    v.sort();
    v.dedup();
    v
}

/// An object node's key tables for `entries` (key, value node) in property order.
fn object_of(entries: &[(String, NodeId)]) -> Object {
    let mut order: Vec<u16> = (0..entries.len() as u16).collect();
    let body = |k: &str| {
        let mut s = serde_json::to_string(k).unwrap_or_default().into_bytes();
        s.remove(0);
        s
    };
    order.sort_by_key(|&i| body(&entries[i as usize].0));
    Object {
        any_keys: false,
        keys: order
            .iter()
            .map(|&i| body(&entries[i as usize].0))
            .collect(),
        prop: order,
        values: entries.iter().map(|e| e.1).collect(),
        required: 0,
        ordered: false,
    }
}

struct Compiler<'a> {
    g: &'a mut Grammar,
    root: &'a Value,
    /// `$ref` targets compiled or being compiled, so recursive schemas terminate.
    refs: Vec<(String, NodeId)>,
}

impl Compiler<'_> {
    fn err(path: &str, message: impl Into<String>) -> SchemaError {
        SchemaError {
            path: path.to_string(),
            message: message.into(),
        }
    }

    fn node(&mut self, s: &Value, path: &str) -> Result<NodeId, SchemaError> {
        let o = match s {
            Value::Bool(true) => return Ok(ANY),
            Value::Object(o) => o,
            _ => return Err(Self::err(path, "a schema must be an object")),
        };
        if let Some(r) = o.get("$ref") {
            return self.reference(r, path);
        }
        if let Some(c) = o.get("const") {
            return Ok(self.g.push(Node::Lits(vec![literal_bytes(c)])));
        }
        if let Some(e) = o.get("enum") {
            let vals = e.as_array().filter(|a| !a.is_empty()).ok_or_else(|| {
                Self::err(&format!("{path}/enum"), "`enum` must be a non-empty array")
            })?;
            return Ok(self
                .g
                .push(Node::Lits(sorted(vals.iter().map(literal_bytes).collect()))));
        }
        for key in ["anyOf", "oneOf"] {
            if let Some(alts) = o.get(key) {
                let alts = alts.as_array().filter(|a| !a.is_empty()).ok_or_else(|| {
                    Self::err(
                        &format!("{path}/{key}"),
                        format!("`{key}` must be a non-empty array"),
                    )
                })?;
                let mut ids = Vec::new();
                for (i, a) in alts.iter().enumerate() {
                    ids.push(self.node(a, &format!("{path}/{key}/{i}"))?);
                }
                return Ok(self.g.push(Node::AnyOf(ids)));
            }
        }
        self.check_keywords(o, path)?;
        match o.get("type") {
            None => {
                if o.contains_key("properties") {
                    self.object(o, path)
                } else if o.contains_key("items") {
                    self.array(o, path)
                } else {
                    Ok(ANY)
                }
            }
            Some(Value::String(t)) => self.typed(t, o, path),
            Some(Value::Array(ts)) => {
                let mut ids = Vec::new();
                for t in ts {
                    let t = t.as_str().ok_or_else(|| {
                        Self::err(&format!("{path}/type"), "`type` entries must be strings")
                    })?;
                    ids.push(self.typed(t, o, path)?);
                }
                Ok(self.g.push(Node::AnyOf(ids)))
            }
            Some(_) => Err(Self::err(
                &format!("{path}/type"),
                "`type` must be a string or an array of strings",
            )),
        }
    }

    fn check_keywords(&self, o: &Map<String, Value>, path: &str) -> Result<(), SchemaError> {
        const KNOWN: &[&str] = &[
            "type",
            "properties",
            "required",
            "items",
            "minItems",
            "maxItems",
            "minLength",
            "maxLength",
            "$defs",
            "definitions",
        ];
        for k in o.keys() {
            if !KNOWN.contains(&k.as_str()) && !ANNOTATIONS.contains(&k.as_str()) {
                return Err(Self::err(
                    &format!("{path}/{k}"),
                    format!("unsupported JSON schema keyword `{k}`"),
                ));
            }
        }
        Ok(())
    }

    fn typed(
        &mut self,
        t: &str,
        o: &Map<String, Value>,
        path: &str,
    ) -> Result<NodeId, SchemaError> {
        Ok(match t {
            "object" => self.object(o, path)?,
            "array" => self.array(o, path)?,
            "string" => {
                let min = count(o, "minLength", path)?.unwrap_or(0);
                let max = count(o, "maxLength", path)?.unwrap_or(u32::MAX);
                if min > max {
                    return Err(Self::err(path, "`minLength` is above `maxLength`"));
                }
                if min == 0 && max == u32::MAX {
                    ANY_STRING
                } else {
                    self.g.push(Node::String { min, max })
                }
            }
            "number" => ANY_NUMBER,
            "integer" => self.g.push(Node::Number { integer: true }),
            "boolean" => self.g.push(Node::Lits(sorted(vec![
                b"true".to_vec(),
                b"false".to_vec(),
            ]))),
            "null" => self.g.push(Node::Lits(vec![b"null".to_vec()])),
            other => {
                return Err(Self::err(
                    &format!("{path}/type"),
                    format!("unknown type `{other}`"),
                ));
            }
        })
    }

    fn object(&mut self, o: &Map<String, Value>, path: &str) -> Result<NodeId, SchemaError> {
        let Some(props) = o.get("properties") else {
            return Ok(ANY_OBJECT);
        };
        let props = props.as_object().ok_or_else(|| {
            Self::err(
                &format!("{path}/properties"),
                "`properties` must be an object",
            )
        })?;
        if props.len() > 64 {
            return Err(Self::err(
                &format!("{path}/properties"),
                "at most 64 properties per object are supported",
            ));
        }
        let mut entries = Vec::new();
        for (k, v) in props {
            let id = self.node(v, &format!("{path}/properties/{k}"))?;
            entries.push((k.clone(), id));
        }
        let mut obj = object_of(&entries);
        if let Some(req) = o.get("required") {
            let req = req.as_array().ok_or_else(|| {
                Self::err(&format!("{path}/required"), "`required` must be an array")
            })?;
            for r in req {
                let name = r.as_str().unwrap_or_default();
                let i = entries.iter().position(|e| e.0 == name).ok_or_else(|| {
                    Self::err(
                        &format!("{path}/required"),
                        format!("required property `{name}` is not in `properties`"),
                    )
                })?;
                obj.required |= 1 << i;
            }
        }
        Ok(self.g.push(Node::Object(obj)))
    }

    fn array(&mut self, o: &Map<String, Value>, path: &str) -> Result<NodeId, SchemaError> {
        let items = match o.get("items") {
            None => ANY,
            Some(s) => self.node(s, &format!("{path}/items"))?,
        };
        let min = count(o, "minItems", path)?.unwrap_or(0);
        let max = count(o, "maxItems", path)?.unwrap_or(u32::MAX);
        if min > max {
            return Err(Self::err(path, "`minItems` is above `maxItems`"));
        }
        Ok(self.g.push(Node::Array { items, min, max }))
    }

    fn reference(&mut self, r: &Value, path: &str) -> Result<NodeId, SchemaError> {
        let r = r
            .as_str()
            .ok_or_else(|| Self::err(&format!("{path}/$ref"), "`$ref` must be a string"))?;
        if let Some((_, id)) = self.refs.iter().find(|(k, _)| k == r) {
            return Ok(*id);
        }
        let target = r
            .strip_prefix('#')
            .and_then(|p| self.root.pointer(p))
            .ok_or_else(|| {
                Self::err(
                    &format!("{path}/$ref"),
                    format!(
                        "`$ref` `{r}` does not point into this schema (only local `#/...` refs)"
                    ),
                )
            })?;
        // A placeholder first, so a schema that refers to itself compiles to a cycle.
        let slot = self.g.push(Node::Pending);
        self.refs.push((r.to_string(), slot));
        let id = self.node(target, r)?;
        self.g.nodes[slot as usize] = Node::AnyOf(vec![id]);
        Ok(slot)
    }
}

fn count(o: &Map<String, Value>, key: &str, path: &str) -> Result<Option<u32>, SchemaError> {
    match o.get(key) {
        None => Ok(None),
        Some(v) => v
            .as_u64()
            .map(|n| Some(n.min(u64::from(u32::MAX)) as u32))
            .ok_or_else(|| {
                Compiler::err(
                    &format!("{path}/{key}"),
                    format!("`{key}` must be a non-negative integer"),
                )
            }),
    }
}

/// A JSON value as the exact text the model must write (compact).
fn literal_bytes(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn unsupported_keywords_are_named_with_their_place() {
        let e = Grammar::from_schema(&json!({
            "type": "object",
            "properties": {"zip": {"type": "string", "pattern": "^[0-9]{5}$"}}
        }))
        .unwrap_err();
        assert_eq!(e.path, "#/properties/zip/pattern");
        assert!(e.message.contains("`pattern`"), "{e}");
    }

    #[test]
    fn bad_refs_and_required_are_errors() {
        let e = Grammar::from_schema(&json!({"$ref": "#/$defs/missing"})).unwrap_err();
        assert!(e.message.contains("#/$defs/missing"), "{e}");
        let e =
            Grammar::from_schema(&json!({"type": "object", "properties": {}, "required": ["a"]}))
                .unwrap_err();
        assert!(e.message.contains("`a`"), "{e}");
    }
}
