//! Column mappings: which source column feeds which events column (`event_name=behavior`),
//! and constants for columns the source lacks (`platform=web`).

use serde::{Deserialize, Serialize};

use crate::error::{EngineError, Result};
use crate::schema::{is_core_column, ANONYMOUS_ID, EVENT_NAME, EVENT_TIME, USER_ID};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ColumnMapping {
    /// (target column, source column)
    pub columns: Vec<(String, String)>,
    /// (target column, constant value)
    pub constants: Vec<(String, String)>,
}

/// Where an events column's values come from.
#[derive(Debug, Clone, PartialEq)]
pub enum ColumnSource<'a> {
    Column(&'a str),
    Constant(&'a str),
    Missing,
}

impl ColumnMapping {
    /// Parse `target=source` pairs and `target=value` constants.
    pub fn parse(columns: &[String], constants: &[String]) -> Result<Self> {
        let split = |spec: &String, what: &str| {
            spec.split_once('=')
                .map(|(t, s)| (t.trim().to_string(), s.trim().to_string()))
                .filter(|(t, s)| !t.is_empty() && (what == "constant" || !s.is_empty()))
                .ok_or_else(|| {
                    EngineError::invalid(format!(
                        "bad {what} '{spec}': expected TARGET={}",
                        if what == "constant" {
                            "VALUE"
                        } else {
                            "SOURCE"
                        }
                    ))
                })
        };
        let columns = columns
            .iter()
            .map(|c| split(c, "mapping"))
            .collect::<Result<Vec<_>>>()?;
        let constants = constants
            .iter()
            .map(|c| split(c, "constant"))
            .collect::<Result<Vec<_>>>()?;
        let mapping = ColumnMapping { columns, constants };
        let mut seen = std::collections::HashSet::new();
        for target in mapping.targets() {
            if !seen.insert(target) {
                return Err(EngineError::invalid(format!(
                    "column '{target}' is mapped more than once"
                )));
            }
        }
        for (target, _) in &mapping.constants {
            if !is_core_column(target) {
                return Err(EngineError::invalid(format!(
                    "a constant can only fill an events column, and '{target}' is not one"
                )));
            }
        }
        Ok(mapping)
    }

    fn targets(&self) -> impl Iterator<Item = &str> {
        self.columns
            .iter()
            .chain(&self.constants)
            .map(|(t, _)| t.as_str())
    }

    /// Where `target` comes from, given the source's column names: an explicit mapping,
    /// a constant, a source column of the same name, or (for anonymous_id) the user id.
    pub fn source_of<'a>(
        &'a self,
        target: &'a str,
        source_columns: &[&'a str],
    ) -> ColumnSource<'a> {
        if let Some((_, s)) = self.columns.iter().find(|(t, _)| t == target) {
            return ColumnSource::Column(s);
        }
        if let Some((_, v)) = self.constants.iter().find(|(t, _)| t == target) {
            return ColumnSource::Constant(v);
        }
        let consumed = self.columns.iter().any(|(_, s)| s == target);
        if !consumed && source_columns.contains(&target) {
            return ColumnSource::Column(target);
        }
        // A person known only by a user id uses it as their device id too.
        if target == ANONYMOUS_ID {
            return self.source_of(USER_ID, source_columns);
        }
        ColumnSource::Missing
    }

    /// Check that the source has every column the mapping names and what the table needs.
    pub fn validate(&self, source_columns: &[&str], source_name: &str) -> Result<()> {
        for (target, source) in &self.columns {
            if !source_columns.contains(&source.as_str()) {
                return Err(EngineError::invalid(format!(
                    "{source_name}: mapping {target}={source} names a column the source \
                     does not have (it has: {})",
                    source_columns.join(", ")
                )));
            }
        }
        for required in [EVENT_TIME, EVENT_NAME, ANONYMOUS_ID] {
            if self.source_of(required, source_columns) == ColumnSource::Missing {
                let hint = if required == ANONYMOUS_ID {
                    " or user_id"
                } else {
                    ""
                };
                return Err(EngineError::invalid(format!(
                    "{source_name}: no column for '{required}'{hint}; map one with \
                     --map {required}=SOURCE_COLUMN (the source has: {})",
                    source_columns.join(", ")
                )));
            }
        }
        Ok(())
    }

    /// Source columns that no events column takes: they become extra columns.
    pub fn unmapped<'a>(&self, source_columns: &[&'a str]) -> Vec<&'a str> {
        source_columns
            .iter()
            .copied()
            .filter(|c| !is_core_column(c) && !self.columns.iter().any(|(_, s)| s == c))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn explicit_same_name_and_user_id_fallback() {
        let m = ColumnMapping::parse(
            &strings(&["event_name=behavior", "event_time=timestamp", "user_id=uid"]),
            &strings(&["platform=app"]),
        )
        .unwrap();
        let cols = ["uid", "item", "behavior", "timestamp", "channel"];
        assert_eq!(
            m.source_of("event_name", &cols),
            ColumnSource::Column("behavior")
        );
        assert_eq!(
            m.source_of("channel", &cols),
            ColumnSource::Column("channel")
        );
        assert_eq!(
            m.source_of("anonymous_id", &cols),
            ColumnSource::Column("uid")
        );
        assert_eq!(
            m.source_of("platform", &cols),
            ColumnSource::Constant("app")
        );
        assert_eq!(m.source_of("campaign", &cols), ColumnSource::Missing);
        assert_eq!(m.unmapped(&cols), vec!["item"]);
        m.validate(&cols, "f.csv").unwrap();
    }

    #[test]
    fn missing_and_bad_mappings_are_named() {
        let m = ColumnMapping::parse(&strings(&["event_name=nope"]), &[]).unwrap();
        let err = m.validate(&["a", "b"], "f.csv").unwrap_err().to_string();
        assert!(
            err.contains("event_name=nope names a column the source does not have"),
            "{err}"
        );
        let m = ColumnMapping::parse(&[], &[]).unwrap();
        let err = m
            .validate(&["event_name", "event_time"], "f.csv")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("no column for 'anonymous_id' or user_id"),
            "{err}"
        );
        let err = ColumnMapping::parse(&strings(&["x"]), &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("expected TARGET=SOURCE"), "{err}");
        let err = ColumnMapping::parse(&strings(&["a=b", "a=c"]), &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("mapped more than once"), "{err}");
    }
}
