//! The leaf of the gateway: what every other part speaks and nothing else.
//!
//! The one error type and its mapping to the wire (`error`), the OpenAI wire format the
//! gateway reads (`openai`, with the tolerant readers of answers in `loose`) and the event
//! streams it scans (`sse`), the endpoints it serves (`endpoint`), the response body type
//! and the helpers that build responses (`body`, `respond`), which serving thread runs the
//! caller (`shard`), and two small utilities (`clock`, `digest`). Nothing here imports from
//! the rest of the crate.

pub mod body;
pub mod clock;
pub mod digest;
pub mod endpoint;
pub mod error;
pub mod loose;
pub mod openai;
pub mod protocols;
pub mod respond;
pub mod shard;
pub mod sse;

/// The concurrent map of the per-request counters (metrics, attempts, plugin stats). Their
/// keys are names from the config (routes, backends, models, plugins), never text a
/// caller chose, so a fast seeded hash is safe, and SipHash cost about a tenth of a plain
/// request's CPU on the dozen lookups each request makes.
pub type CounterMap<K, V> = dashmap::DashMap<K, V, foldhash::fast::RandomState>;

pub use endpoint::Endpoint;
pub use error::GatewayError;
