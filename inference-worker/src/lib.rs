//! The Switchyard inference worker: one GGUF model behind the OpenAI API.

pub mod hub;
