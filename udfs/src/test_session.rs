//! The session the optimizer-rule tests run in: tidepool's settings, every function of
//! this crate, and the rules the test adds.

use std::sync::Arc;

use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::{SessionConfig, SessionContext};

use crate::settings::TidepoolOptions;

/// A session with `config` (tidepool's settings added, then changed by `set`) whose
/// state `rules` finishes, e.g. by adding the rule under test.
pub fn session(
    config: SessionConfig,
    set: impl FnOnce(&mut TidepoolOptions),
    rules: impl FnOnce(SessionStateBuilder) -> SessionStateBuilder,
) -> SessionContext {
    let mut config = config.with_option_extension(TidepoolOptions::default());
    set(config
        .options_mut()
        .extensions
        .get_mut::<TidepoolOptions>()
        .unwrap());
    let builder = SessionStateBuilder::new()
        .with_config(config)
        .with_default_features();
    let mut state = rules(builder).build();
    crate::register_all(&mut state).unwrap();
    SessionContext::new_with_state(state)
}

/// The physical plan of `sql` in `ctx` (panics on an error, as a test should).
pub async fn physical_plan(ctx: &SessionContext, sql: &str) -> Arc<dyn ExecutionPlan> {
    ctx.sql(sql)
        .await
        .unwrap()
        .create_physical_plan()
        .await
        .unwrap()
}
