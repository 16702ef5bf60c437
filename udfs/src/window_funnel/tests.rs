use super::level::{funnel_level, Event};
use super::options::{window_in_ts_units, FunnelMode, FunnelOptions};
use datafusion::arrow::datatypes::{DataType, TimeUnit};
use datafusion::scalar::ScalarValue;

/// Events from (ts, steps matched) rows, one row id per row, sorted like the
/// accumulator sorts them.
fn events(rows: &[(i64, &[u8])], strict_order: bool) -> Vec<Event> {
    let mut out = vec![];
    for (row, (ts, steps)) in rows.iter().enumerate() {
        for s in *steps {
            out.push(Event::new(*ts, *s, row as u64));
        }
        if steps.is_empty() && strict_order {
            out.push(Event::new(*ts, 0, row as u64));
        }
    }
    out.sort();
    out
}

fn level(window: i64, mode: &str, steps: usize, rows: &[(i64, &[u8])]) -> u8 {
    let mode = FunnelMode::parse(mode).unwrap();
    let options = FunnelOptions {
        window,
        mode,
        steps,
    };
    funnel_level(&events(rows, mode.strict_order), &options)
}

#[test]
fn default_mode_follows_the_chain_within_the_window() {
    // A(1) B(2) C(3) within 10: level 3.
    assert_eq!(level(10, "", 3, &[(1, &[1]), (2, &[2]), (3, &[3])]), 3);
    // Nothing matching step 1: level 0, whatever else happened.
    assert_eq!(level(10, "", 3, &[(1, &[2]), (2, &[3])]), 0);
    // Other events in between do not matter in the default mode.
    assert_eq!(
        level(
            10,
            "",
            3,
            &[(1, &[1]), (2, &[]), (3, &[3]), (4, &[2]), (5, &[3])]
        ),
        3
    );
}

#[test]
fn the_window_is_inclusive_and_measured_from_the_first_step() {
    assert_eq!(level(10, "", 2, &[(0, &[1]), (10, &[2])]), 2);
    assert_eq!(level(10, "", 2, &[(0, &[1]), (11, &[2])]), 1);
    // Step 3 is 10 after step 1 but 2 after step 2: still measured from step 1.
    assert_eq!(level(10, "", 3, &[(0, &[1]), (8, &[2]), (11, &[3])]), 2);
}

#[test]
fn the_latest_step_one_restarts_the_chain() {
    // A at 0, A at 20, B at 25: the chain restarted at 20 reaches B within 10.
    assert_eq!(level(10, "", 2, &[(0, &[1]), (20, &[1]), (25, &[2])]), 2);
    // A at 0, B at 5, A at 20: the later A restarts step 1 only; step 2 stays reached.
    assert_eq!(
        level(10, "", 3, &[(0, &[1]), (5, &[2]), (20, &[1]), (29, &[3])]),
        2
    );
}

#[test]
fn one_row_may_satisfy_several_steps_in_the_default_mode() {
    // A row matching steps 1 and 2 completes a two-step funnel alone.
    assert_eq!(level(10, "", 2, &[(0, &[1, 2])]), 2);
    // strict_once: the same row cannot serve two steps of one chain.
    assert_eq!(level(10, "strict_once", 2, &[(0, &[1, 2])]), 1);
    assert_eq!(level(10, "strict_once", 2, &[(0, &[1, 2]), (1, &[2])]), 2);
}

#[test]
fn equal_timestamps_advance_except_in_strict_increase() {
    assert_eq!(level(10, "", 2, &[(5, &[1]), (5, &[2])]), 2);
    assert_eq!(level(10, "strict_increase", 2, &[(5, &[1]), (5, &[2])]), 1);
    assert_eq!(
        level(10, "strict_increase", 2, &[(5, &[1]), (5, &[2]), (6, &[2])]),
        2
    );
    // At equal times events sort by step: B then A at the same instant is A then B.
    assert_eq!(level(10, "", 2, &[(5, &[2]), (5, &[1])]), 2);
}

#[test]
fn strict_deduplication_stops_at_a_repeated_step() {
    // A B C B D: B repeats before D, so the level is what was reached then: 3.
    let rows: &[(i64, &[u8])] = &[(1, &[1]), (2, &[2]), (3, &[3]), (4, &[2]), (5, &[4])];
    assert_eq!(level(10, "strict_deduplication", 4, rows), 3);
    assert_eq!(level(10, "", 4, rows), 4);
    // A repeated step 1 is a restart, not a duplicate.
    assert_eq!(
        level(
            10,
            "strict_deduplication",
            2,
            &[(1, &[1]), (2, &[1]), (3, &[2])]
        ),
        2
    );
}

#[test]
fn strict_order_stops_at_an_event_out_of_order() {
    // A B D C: D comes before C, so the chain stops at B.
    let rows: &[(i64, &[u8])] = &[(1, &[1]), (2, &[2]), (3, &[4]), (4, &[3])];
    assert_eq!(level(10, "strict_order", 4, rows), 2);
    // The default mode goes on to C, but D came before it.
    assert_eq!(level(10, "", 4, rows), 3);
    // A row matching no step also stops it.
    assert_eq!(
        level(10, "strict_order", 3, &[(1, &[1]), (2, &[]), (3, &[2])]),
        1
    );
    // Rows before the first step 1 do not matter.
    assert_eq!(
        level(
            10,
            "strict_order",
            2,
            &[(0, &[]), (0, &[2]), (1, &[1]), (2, &[2])]
        ),
        2
    );
    // allow_reentry: the early D is skipped instead, and the chain goes on to C; no D
    // comes after it.
    assert_eq!(level(10, "strict_order,allow_reentry", 4, rows), 3);
    let later_d: &[(i64, &[u8])] = &[(1, &[1]), (2, &[2]), (3, &[4]), (4, &[3]), (5, &[4])];
    assert_eq!(level(10, "strict_order,allow_reentry", 4, later_d), 4);
}

#[test]
fn mode_errors_name_the_problem() {
    let err = FunnelMode::parse("strict_order, bogus")
        .unwrap_err()
        .to_string();
    assert!(err.contains("unknown mode 'bogus' in argument 2"), "{err}");
    let err = FunnelMode::parse("allow_reentry").unwrap_err().to_string();
    assert!(err.contains("allow_reentry needs strict_order"), "{err}");
    let err = FunnelMode::parse("strict").unwrap_err().to_string();
    assert!(err.contains("renamed strict_deduplication"), "{err}");
    let all = FunnelMode::parse(" strict_once,strict_increase ,strict_deduplication").unwrap();
    assert!(
        all.strict_once && all.strict_increase && all.strict_deduplication && !all.strict_order
    );
}

#[test]
fn windows_in_the_units_of_ts() {
    let us = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
    let day = ScalarValue::new_interval_mdn(0, 1, 0);
    assert_eq!(window_in_ts_units(&day, &us).unwrap(), 86_400_000_000);
    assert_eq!(
        window_in_ts_units(&ScalarValue::Int64(Some(60)), &us).unwrap(),
        60_000_000
    );
    let s = DataType::Timestamp(TimeUnit::Second, None);
    assert_eq!(
        window_in_ts_units(&ScalarValue::Int32(Some(60)), &s).unwrap(),
        60
    );
    assert_eq!(
        window_in_ts_units(&ScalarValue::Int64(Some(60)), &DataType::UInt32).unwrap(),
        60
    );
    let err = window_in_ts_units(&day, &DataType::Int64)
        .unwrap_err()
        .to_string();
    assert!(err.contains("INTERVAL but ts is an integer"), "{err}");
    let month = ScalarValue::new_interval_mdn(1, 0, 0);
    assert!(window_in_ts_units(&month, &us)
        .unwrap_err()
        .to_string()
        .contains("months"));
    let neg = window_in_ts_units(&ScalarValue::Int64(Some(-1)), &us)
        .unwrap_err()
        .to_string();
    assert!(neg.contains("must not be negative"), "{neg}");
}
