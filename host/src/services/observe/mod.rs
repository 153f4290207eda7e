//! Observability: Prometheus metrics (`metrics`) and OpenTelemetry traces with the access
//! log (`telemetry`).

pub mod metrics;
pub mod telemetry;
