//! Switchyard gateway library. See ARCHITECTURE.md for the request path.
