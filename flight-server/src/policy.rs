//! What each role may see and run. Every plan is checked before it executes, on the
//! plan as written (views not yet inlined, subqueries included).

use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::TableReference;
use datafusion::logical_expr::dml::InsertOp;
use datafusion::logical_expr::{LogicalPlan, WriteOp};
use tidepool_engine::session::{CATALOG, SCHEMA};
use tonic::Status;

use crate::users::Role;

pub const INFORMATION_SCHEMA: &str = "information_schema";
pub const EVENTS_TABLE: &str = tidepool_engine::warehouse::EVENTS_TABLE;

/// Whether `role` may see (list and read) `catalog.schema`.
pub fn can_see_schema(role: Role, catalog: &str, schema: &str) -> bool {
    match role {
        Role::Admin => true,
        Role::Viewer => catalog == CATALOG && schema == SCHEMA,
        Role::Analyst | Role::Writer => {
            catalog == CATALOG && (schema == SCHEMA || schema == INFORMATION_SCHEMA)
        }
    }
}

fn resolve(name: &TableReference) -> (String, String, String) {
    let r = name.clone().resolve(CATALOG, SCHEMA);
    (
        r.catalog.to_string(),
        r.schema.to_string(),
        r.table.to_string(),
    )
}

fn denied(role: Role, what: &str) -> Status {
    Status::permission_denied(format!("{what} is not allowed for role {role}"))
}

/// Refuse `plan` unless `role` may run all of it.
pub fn check_plan(role: Role, plan: &LogicalPlan) -> Result<(), Status> {
    if role == Role::Admin {
        return Ok(());
    }
    let mut refusal: Option<Status> = None;
    let walk = plan.apply_with_subqueries(|node| {
        let problem = match node {
            LogicalPlan::Ddl(ddl) => Some(denied(role, &format!("DDL ({})", ddl.name()))),
            LogicalPlan::Copy(_) => Some(denied(role, "COPY (writing files)")),
            LogicalPlan::Statement(s) => Some(denied(role, &format!("the statement {}", s.name()))),
            LogicalPlan::Extension(e) => Some(denied(role, &format!("the plan node {}", e.node.name()))),
            LogicalPlan::Dml(dml) => {
                let (catalog, schema, table) = resolve(&dml.table_name);
                let appends_events = matches!(dml.op, WriteOp::Insert(InsertOp::Append))
                    && catalog == CATALOG
                    && schema == SCHEMA
                    && table == EVENTS_TABLE;
                if !role.can_write() {
                    Some(denied(role, &format!("{} (writing)", dml.op)))
                } else if !appends_events {
                    Some(denied(
                        role,
                        &format!("{} on {catalog}.{schema}.{table} (writers may only INSERT INTO events)", dml.op),
                    ))
                } else {
                    None
                }
            }
            LogicalPlan::TableScan(scan) => {
                let (catalog, schema, table) = resolve(&scan.table_name);
                (!can_see_schema(role, &catalog, &schema))
                    .then(|| denied(role, &format!("reading {catalog}.{schema}.{table}")))
            }
            _ => None,
        };
        if let Some(p) = problem {
            refusal = Some(p);
            return Ok(TreeNodeRecursion::Stop);
        }
        Ok(TreeNodeRecursion::Continue)
    });
    if let Err(e) = walk {
        return Err(Status::internal(format!("checking the plan failed: {e}")));
    }
    match refusal {
        Some(status) => Err(status),
        None => Ok(()),
    }
}
