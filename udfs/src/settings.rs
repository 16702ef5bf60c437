//! tidepool's own session settings, `SET tidepool.NAME = VALUE`.

use datafusion::common::config::{ConfigExtension, ConfigOptions};
use datafusion::common::extensions_options;

extensions_options! {
    /// tidepool's own session settings (`SET tidepool.NAME = VALUE`).
    pub struct TidepoolOptions {
        /// Run aggregations made only of tidepool's per-person aggregates in one phase
        /// (`crate::single_phase`). Off, they
        /// run in DataFusion's two phases (tests use this to cover the partial states).
        pub single_phase_event_aggregates: bool, default = true
        /// Drop the rows where no condition holds before grouping when only groups
        /// with a match pass the filter above, or the totals above ignore the others
        /// (`crate::prefilter`).
        pub prefilter_condition_rows: bool, default = true
        /// Group by one string key with tidepool's key map instead of DataFusion's
        /// general one (`crate::string_key_aggregate`).
        pub string_key_aggregation: bool, default = true
        /// Finish each person where their rows were read when every input partition
        /// holds people sorted by key, merging only people split between partitions
        /// (`crate::clustered_aggregate`). Needs `string_key_aggregation`.
        pub clustered_aggregation: bool, default = true
        /// Unnest one list column by handing on a slice of its values where the lists
        /// lie in place, instead of DataFusion's copy of every item
        /// (`crate::list_unnest`).
        pub list_unnest: bool, default = true
    }
}

impl ConfigExtension for TidepoolOptions {
    const PREFIX: &'static str = "tidepool";
}

impl TidepoolOptions {
    /// The session's settings (the defaults where none were registered).
    pub fn of(config: &ConfigOptions) -> Self {
        config.extensions.get::<Self>().cloned().unwrap_or_default()
    }
}
