//! Registering a metric where it is made, so a worker's metrics are one struct literal: each
//! field names its metric, its help and its initial value once.

use prometheus_client::registry::{Metric, Registry, Unit};

/// Registers `metric` as `name` and returns it (a handle on the same series).
pub fn registered<M: Metric + Clone>(registry: &mut Registry, name: &str, help: &str, metric: M) -> M {
    registry.register(name, help, metric.clone());
    metric
}

/// [`registered`], in seconds (`<name>_seconds`).
pub fn seconds<M: Metric + Clone>(registry: &mut Registry, name: &str, help: &str, metric: M) -> M {
    registry.register_with_unit(name, help, Unit::Seconds, metric.clone());
    metric
}
