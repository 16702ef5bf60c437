//! What tidepool's physical optimizer rules share.

use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::Result;
use datafusion::physical_plan::ExecutionPlan;
use std::sync::Arc;

/// `plan` with each node of type `E`, from the leaves up, replaced by what `replace`
/// makes of it (None: kept as it is).
pub(crate) fn replace_each<E: ExecutionPlan + 'static>(
    plan: Arc<dyn ExecutionPlan>,
    replace: impl Fn(&E) -> Result<Option<Arc<dyn ExecutionPlan>>>,
) -> Result<Arc<dyn ExecutionPlan>> {
    Ok(plan
        .transform_up(|node| {
            let Some(found) = node.downcast_ref::<E>() else {
                return Ok(Transformed::no(node));
            };
            Ok(match replace(found)? {
                Some(new) => Transformed::yes(new),
                None => Transformed::no(node),
            })
        })?
        .data)
}
