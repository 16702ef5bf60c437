use super::chain::{find_chain, FunnelEvent};
use super::options::{Entry, FunnelOptions, Ties};
use datafusion::arrow::datatypes::DataType;
use datafusion::scalar::ScalarValue;

fn ev(ts: i64, steps: &[usize], row: u64) -> FunnelEvent {
    let mask = steps.iter().fold(0u64, |m, s| m | 1 << (s - 1));
    FunnelEvent {
        ts,
        tiebreak: 0,
        row,
        mask,
        hold: 0,
        breakdown: 0,
    }
}

fn opts(window: i64, text: &str, conds: usize) -> FunnelOptions {
    FunnelOptions::parse(
        &ScalarValue::Int64(Some(window)),
        text,
        conds,
        &DataType::Int64,
    )
    .unwrap()
}

fn sorted(mut events: Vec<FunnelEvent>) -> Vec<FunnelEvent> {
    events.sort_by_key(|e| (e.ts, e.tiebreak, e.row));
    events
}

fn times(events: &[FunnelEvent], o: &FunnelOptions) -> (usize, Vec<Option<i64>>, bool) {
    let c = find_chain(events, o).unwrap();
    (
        c.level(),
        c.steps.iter().map(|s| s.map(|i| events[i].ts)).collect(),
        c.excluded,
    )
}

#[test]
fn entry_policies_pick_different_chains() {
    // A at 0 and 50, B at 55; window 100: both starts reach B.
    let e = sorted(vec![ev(0, &[1], 0), ev(50, &[1], 1), ev(55, &[2], 2)]);
    assert_eq!(
        times(&e, &opts(100, "entry=best", 2)).1,
        vec![Some(0), Some(55)]
    );
    assert_eq!(
        times(&e, &opts(100, "entry=latest", 2)).1,
        vec![Some(50), Some(55)]
    );
    assert_eq!(
        times(&e, &opts(100, "entry=first", 2)).1,
        vec![Some(0), Some(55)]
    );
    // With window 30 only the start at 50 reaches B: best finds it, first does not.
    assert_eq!(times(&e, &opts(30, "entry=best", 2)).0, 2);
    assert_eq!(times(&e, &opts(30, "entry=first", 2)).0, 1);
}

#[test]
fn ties_advance_or_not_and_tiebreak_orders_them() {
    let e = sorted(vec![ev(5, &[1], 0), ev(5, &[2], 1)]);
    assert_eq!(times(&e, &opts(10, "ties=advance", 2)).0, 2);
    assert_eq!(times(&e, &opts(10, "ties=strict", 2)).0, 1);
    // A tiebreak (e.g. a sequence number) decides: B before A means no advance.
    let mut b_first = vec![ev(5, &[1], 0), ev(5, &[2], 1)];
    b_first[0].tiebreak = 2;
    b_first[1].tiebreak = 1;
    let b_first = sorted(b_first);
    assert_eq!(times(&b_first, &opts(10, "ties=advance", 2)).0, 1);
    // One row never serves two steps.
    let one = sorted(vec![ev(5, &[1, 2], 0)]);
    assert_eq!(times(&one, &opts(10, "", 2)).0, 1);
}

#[test]
fn step_windows_need_more_than_a_greedy_scan() {
    // B at 0 and 20, C at 25; B→C at most 10: only the later B leads to C.
    let e = sorted(vec![
        ev(-5, &[1], 0),
        ev(0, &[2], 1),
        ev(20, &[2], 2),
        ev(25, &[3], 3),
    ]);
    let o = opts(100, "step_windows=-,10", 3);
    assert_eq!(
        times(&e, &o),
        (3, vec![Some(-5), Some(20), Some(25)], false)
    );
    // The chain reports the tightest predecessors: the latest B before C.
    let o = opts(100, "", 3);
    assert_eq!(times(&e, &o).1, vec![Some(-5), Some(20), Some(25)]);
}

#[test]
fn exclusions_between_steps() {
    // A, X, B: X (cond 3) between steps 1 and 2 excludes the chain.
    let e = sorted(vec![ev(0, &[1], 0), ev(1, &[3], 1), ev(2, &[2], 2)]);
    assert_eq!(times(&e, &opts(10, "steps=2; exclude=3:1-2", 3)).2, true);
    // X after B does not.
    let e = sorted(vec![ev(0, &[1], 0), ev(2, &[2], 1), ev(3, &[3], 2)]);
    assert_eq!(times(&e, &opts(10, "steps=2; exclude=3:1-2", 3)).2, false);
    // Step 2 never reached: X within the window after step 1 counts.
    let e = sorted(vec![ev(0, &[1], 0), ev(3, &[3], 1)]);
    assert_eq!(
        times(&e, &opts(10, "steps=2; exclude=3:1-2", 3)),
        (1, vec![Some(0), None], true)
    );
    // best prefers a clean chain of the same level.
    let e = sorted(vec![
        ev(0, &[1], 0),
        ev(1, &[3], 1),
        ev(2, &[1], 2),
        ev(3, &[2], 3),
    ]);
    let t = times(&e, &opts(10, "steps=2; exclude=3:1-2", 3));
    assert_eq!(t, (2, vec![Some(2), Some(3)], false));
}

#[test]
fn unordered_steps_count_distinct_steps_in_the_window() {
    let e = sorted(vec![
        ev(0, &[3], 0),
        ev(1, &[1], 1),
        ev(2, &[2], 2),
        ev(50, &[2], 3),
    ]);
    let t = times(&e, &opts(10, "order=unordered", 3));
    assert_eq!(t, (3, vec![Some(1), Some(2), Some(0)], false));
    assert_eq!(times(&e, &opts(1, "order=unordered", 3)).0, 2);
}

#[test]
fn hold_keeps_every_step_on_the_entrys_value() {
    let mut e = vec![ev(0, &[1], 0), ev(1, &[2], 1), ev(2, &[2], 2)];
    e[0].hold = 7;
    e[1].hold = 8;
    e[2].hold = 7;
    let mut o = opts(10, "", 2);
    o.hold = true;
    assert_eq!(times(&sorted(e), &o).1, vec![Some(0), Some(2)]);
}

#[test]
fn options_errors_name_the_problem() {
    let parse = |t: &str, conds| {
        FunnelOptions::parse(&ScalarValue::Int64(Some(1)), t, conds, &DataType::Int64)
            .unwrap_err()
            .to_string()
    };
    assert!(parse("entry=sometimes", 2)
        .contains("option entry=sometimes in argument 2: expected first, latest or best"));
    assert!(parse("colour=red", 2).contains("unknown option 'colour'"));
    assert!(parse("step_windows=1", 3)
        .contains("step_windows has 1 values but a 3-step funnel needs 2"));
    assert!(parse("steps=2; exclude=2:1-2", 3).contains("exclusion '2:1-2'"));
    assert!(parse("steps=2", 3).contains("conditions 3 to 3 are neither steps nor exclusions"));
    assert!(parse("step_windows=5m", 2).contains("has a unit but ts is an integer"));
    assert!(
        parse("order=unordered; step_windows=5", 2).contains("step_windows needs ordered steps")
    );
    let ok = FunnelOptions::parse(
        &ScalarValue::Int64(Some(60)),
        "step_windows=5m,-",
        3,
        &DataType::Timestamp(datafusion::arrow::datatypes::TimeUnit::Second, None),
    )
    .unwrap();
    assert_eq!(ok.step_windows, vec![None, Some(300), None]);
    assert_eq!(ok.entry, Entry::Best);
    assert_eq!(ok.ties, Ties::Advance);
}

/// The highest level any valid chain reaches, by trying every chain.
fn brute_force_level(events: &[FunnelEvent], o: &FunnelOptions) -> usize {
    fn extend(events: &[FunnelEvent], o: &FunnelOptions, chain: &mut Vec<usize>) -> usize {
        let k = chain.len();
        if k == o.steps {
            return k;
        }
        let entry = &events[chain[0]];
        let prev = &events[*chain.last().unwrap()];
        let mut best = k;
        for (x, e) in events.iter().enumerate() {
            let follows = match o.ties {
                Ties::Advance => {
                    e.row != prev.row && (e.ts, e.tiebreak) >= (prev.ts, prev.tiebreak)
                }
                Ties::Strict => (e.ts, e.tiebreak) > (prev.ts, prev.tiebreak),
            };
            let ok = e.mask & (1 << k) != 0
                && follows
                && e.ts <= entry.ts + o.window
                && o.step_windows[k].is_none_or(|w| e.ts - prev.ts <= w)
                && (!o.hold || (entry.hold != 0 && e.hold == entry.hold));
            if ok {
                chain.push(x);
                best = best.max(extend(events, o, chain));
                chain.pop();
            }
        }
        best
    }
    (0..events.len())
        .filter(|i| events[*i].mask & 1 != 0)
        .map(|i| extend(events, o, &mut vec![i]))
        .max()
        .unwrap_or(0)
}

#[test]
fn ordered_levels_equal_a_brute_force_search() {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = |n: u64| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % n
    };
    for case in 0..3000 {
        let n = 1 + next(9) as usize;
        let mut events = vec![];
        let mut ts = 0;
        for row in 0..n {
            ts += next(4) as i64;
            let mut e = ev(ts, &[1 + next(3) as usize], row as u64);
            if next(5) == 0 {
                e.mask |= 1 << next(3);
            }
            e.tiebreak = next(2) as i64;
            e.hold = 1 + next(2) as u32;
            events.push(e);
        }
        let events = sorted(events);
        let ties = if next(2) == 0 { "advance" } else { "strict" };
        let sw = match next(3) {
            0 => "-,-",
            1 => "2,-",
            _ => "-,3",
        };
        let mut o = opts(
            1 + next(8) as i64,
            &format!("ties={ties}; step_windows={sw}"),
            3,
        );
        o.hold = next(2) == 0;
        let ours = find_chain(&events, &o).map(|c| c.level()).unwrap_or(0);
        assert_eq!(
            ours,
            brute_force_level(&events, &o),
            "case {case}: {events:?} {o:?}"
        );
        // The reported chain is itself valid.
        if let Some(c) = find_chain(&events, &o) {
            let idx: Vec<usize> = c.steps.iter().flatten().copied().collect();
            for w in idx.windows(2) {
                let (a, b) = (&events[w[0]], &events[w[1]]);
                assert!(
                    (b.ts, b.tiebreak) >= (a.ts, a.tiebreak) && a.row != b.row,
                    "case {case}"
                );
            }
        }
    }
}
