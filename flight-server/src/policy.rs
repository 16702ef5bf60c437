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

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use datafusion::datasource::MemTable;
    use datafusion::prelude::{SessionConfig, SessionContext};
    use std::sync::Arc;

    async fn session() -> SessionContext {
        let config = SessionConfig::new()
            .with_information_schema(true)
            .with_default_catalog_and_schema(CATALOG, SCHEMA);
        let ctx = SessionContext::new_with_config(config);
        let schema = Arc::new(Schema::new(vec![Field::new(
            "event_name",
            DataType::Utf8,
            true,
        )]));
        for name in [EVENTS_TABLE, "other"] {
            let table = MemTable::try_new(Arc::clone(&schema), vec![vec![]]).unwrap();
            ctx.register_table(name, Arc::new(table)).unwrap();
        }
        ctx
    }

    async fn allowed(role: Role, sql: &str) -> Result<(), String> {
        let ctx = session().await;
        let plan = crate::query::plan_sql(&ctx, sql)
            .await
            .map_err(|s| format!("planning: {}", s.message()))?;
        check_plan(role, &plan).map_err(|s| s.message().to_string())
    }

    #[tokio::test]
    async fn each_role_runs_what_it_may() {
        let read = "SELECT count(*) FROM events WHERE event_name IN (SELECT event_name FROM other)";
        let info = "SELECT * FROM information_schema.tables";
        let in_subquery = "SELECT 1 WHERE EXISTS (SELECT 1 FROM information_schema.columns)";
        let insert = "INSERT INTO events VALUES ('x')";
        let insert_other = "INSERT INTO other VALUES ('x')";
        let ddl = "CREATE VIEW v AS SELECT 1";
        let copy = "COPY (SELECT 1) TO '/tmp/x.csv'";
        let set = "SET datafusion.execution.batch_size = 1";

        for role in Role::ALL {
            assert!(allowed(role, read).await.is_ok(), "{role} reads public");
        }
        let viewer = allowed(Role::Viewer, info).await.unwrap_err();
        assert!(viewer.contains("information_schema.tables"), "{viewer}");
        assert!(allowed(Role::Viewer, in_subquery).await.is_err());
        assert!(allowed(Role::Analyst, info).await.is_ok());

        assert!(allowed(Role::Analyst, insert)
            .await
            .unwrap_err()
            .contains("writing"));
        assert!(allowed(Role::Writer, insert).await.is_ok());
        let other = allowed(Role::Writer, insert_other).await.unwrap_err();
        assert!(other.contains("only INSERT INTO events"), "{other}");

        for sql in [ddl, copy, set] {
            assert!(allowed(Role::Writer, sql).await.is_err(), "{sql}");
            assert!(allowed(Role::Admin, sql).await.is_ok(), "{sql}");
        }
        assert!(allowed(Role::Admin, insert_other).await.is_ok());
    }

    #[test]
    fn metadata_visibility_follows_the_roles() {
        assert!(can_see_schema(Role::Viewer, CATALOG, SCHEMA));
        assert!(!can_see_schema(Role::Viewer, CATALOG, INFORMATION_SCHEMA));
        assert!(can_see_schema(Role::Analyst, CATALOG, INFORMATION_SCHEMA));
        assert!(!can_see_schema(Role::Writer, "datafusion", "public"));
        assert!(can_see_schema(Role::Admin, "datafusion", "public"));
    }
}
