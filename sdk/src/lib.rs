//! The plugin author's crate.
