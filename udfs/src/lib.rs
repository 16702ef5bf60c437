//! tidepool's analytics functions for DataFusion: funnels, retention, paths and
//! attribution. One module per function, each with its docs, tests and examples beside
//! it. This crate knows nothing of storage; the engine's session factory calls
//! [`register_all`] so that every session has every function.

mod args;
pub mod attribution;
pub mod clustered_aggregate;
pub mod cohort_retention;
pub mod fast_exprs;
mod first_non_null;
pub mod funnel;
mod grouped;
mod intern;
mod key_map;
mod key_routing;
pub mod lifecycle;
pub mod list_unnest;
pub mod local_period;
pub mod markov_attribution;
mod packed_booleans;
pub mod path_edges;
pub mod periods;
mod plan_rewrite;
pub mod prefilter;
pub mod retention;
pub mod sequence_match;
pub mod sequence_next_node;
pub mod sessionize;
pub mod settings;
pub mod shapley_attribution;
pub mod single_phase;
mod spare_buffers;
pub mod string_key_aggregate;
#[cfg(test)]
mod test_random;
#[cfg(test)]
mod test_session;
mod true_rows;
mod view_eq;
pub mod window_funnel;

use datafusion::error::Result;
use datafusion::execution::FunctionRegistry;
use datafusion::logical_expr::{AggregateUDF, ScalarUDF, WindowUDF};
use std::sync::Arc;

/// Every scalar function of this crate.
pub fn scalar_functions() -> Vec<Arc<ScalarUDF>> {
    vec![local_period::local_period_udf()]
}

/// Every aggregate function of this crate.
pub fn aggregate_functions() -> Vec<Arc<AggregateUDF>> {
    vec![
        window_funnel::window_funnel_udaf(),
        funnel::funnel_udaf(),
        retention::retention_udaf(),
        cohort_retention::cohort_retention_udaf(),
        lifecycle::lifecycle_udaf(),
        attribution::attribution_udaf(),
        markov_attribution::markov_attribution_udaf(),
        shapley_attribution::shapley_attribution_udaf(),
        sequence_match::sequence_match_udaf(),
        sequence_match::sequence_count_udaf(),
        sequence_next_node::sequence_next_node_udaf(),
        path_edges::path_edges_udaf(),
    ]
}

/// Every window function of this crate.
pub fn window_functions() -> Vec<Arc<WindowUDF>> {
    vec![sessionize::sessionize_udwf()]
}

/// Register every function of this crate.
pub fn register_all(registry: &mut dyn FunctionRegistry) -> Result<()> {
    for f in scalar_functions() {
        registry.register_udf(f)?;
    }
    for f in aggregate_functions() {
        registry.register_udaf(f)?;
    }
    for f in window_functions() {
        registry.register_udwf(f)?;
    }
    Ok(())
}
