//! The linear matcher against a literal depth-first search with an explicit stack, the
//! way ClickHouse describes and runs `sequenceMatch`/`sequenceCount`, on random events
//! and patterns; and the automaton against a plain "is there a match anywhere" search.

use super::matcher::{Matcher, Scratch};
use super::pattern::{parse, Action, Pattern, TimeOp};
use crate::test_random::Random;

/// One search from `start`, ClickHouse-style: returns (matched, where the next search
/// starts).
fn search(actions: &[Action], ts: &[i64], masks: &[u64], start: usize) -> (bool, usize) {
    let n = ts.len();
    let (mut a, mut e, mut base) = (0usize, start, start);
    let mut stack: Vec<(usize, usize, usize)> = vec![];
    // Pop choice points until one has an event left to try; false when none has.
    let backtrack = |a: &mut usize, e: &mut usize, base: &mut usize, stack: &mut Vec<_>| {
        while let Some((sa, se, sb)) = stack.pop() {
            *a = sa;
            *e = se + 1;
            *base = sb;
            if *e != n {
                return true;
            }
        }
        false
    };
    while a < actions.len() && e < n {
        match actions[a] {
            Action::Event(k) => {
                if masks[e] & (1 << k) != 0 {
                    base = e;
                    a += 1;
                    e += 1;
                } else if !backtrack(&mut a, &mut e, &mut base, &mut stack) {
                    break;
                }
            }
            Action::Any => {
                base = e;
                a += 1;
                e += 1;
            }
            Action::Star => {
                stack.push((a, e, base));
                base = e;
                a += 1;
            }
            Action::Time(op, secs) => {
                let (t, limit) = (ts[e], ts[base] + secs as i64);
                let holds = match op {
                    TimeOp::Less => t < limit,
                    TimeOp::LessOrEqual => t <= limit,
                    TimeOp::Greater => t > limit,
                    TimeOp::GreaterOrEqual => t >= limit,
                    TimeOp::Equal => t == limit,
                };
                if holds {
                    stack.push((a, e, base));
                    base = e;
                    a += 1;
                } else if matches!(op, TimeOp::Less | TimeOp::LessOrEqual) {
                    if !backtrack(&mut a, &mut e, &mut base, &mut stack) {
                        break;
                    }
                } else {
                    e += 1;
                    if e == n && !backtrack(&mut a, &mut e, &mut base, &mut stack) {
                        break;
                    }
                }
            }
        }
    }
    while a < actions.len() && actions[a].can_end_unmatched() {
        a += 1;
    }
    let next = if e == start { e + 1 } else { e };
    (a == actions.len(), next)
}

fn reference_count(p: &Pattern, ts: &[i64], masks: &[u64]) -> u64 {
    let (mut start, mut count) = (0, 0);
    while start < ts.len() {
        let (matched, next) = search(&p.actions, ts, masks, start);
        if !matched {
            break;
        }
        count += 1;
        start = next;
    }
    count
}

/// Whether some run of events matches (only for patterns without time conditions).
fn matches_anywhere(actions: &[Action], masks: &[u64]) -> bool {
    fn from(actions: &[Action], masks: &[u64], e: usize) -> bool {
        match actions.first() {
            None => true,
            Some(Action::Star) => (e..=masks.len()).any(|e2| from(&actions[1..], masks, e2)),
            Some(Action::Any) => e < masks.len() && from(&actions[1..], masks, e + 1),
            Some(Action::Event(k)) => {
                e < masks.len() && masks[e] & (1 << k) != 0 && from(&actions[1..], masks, e + 1)
            }
            Some(Action::Time(..)) => unreachable!(),
        }
    }
    from(actions, masks, 0)
}

fn random_pattern(r: &mut Random, conditions: usize, with_time: bool) -> String {
    let mut text = String::new();
    let parts = 1 + r.below(5);
    let mut last_was_time = true;
    for _ in 0..parts {
        match r.below(if with_time { 6 } else { 4 }) {
            0 | 1 => text += &format!("(?{})", 1 + r.below(conditions as u64)),
            2 => text += ".",
            3 => text += ".*",
            _ if !last_was_time => {
                let op = ["<", "<=", ">", ">=", "=="][r.below(5) as usize];
                text += &format!("(?t{op}{})", r.below(4) * 5);
                last_was_time = true;
                continue;
            }
            _ => text += "(?1)",
        }
        last_was_time = false;
    }
    text
}

fn random_events(r: &mut Random, conditions: usize) -> (Vec<i64>, Vec<u64>) {
    let n = r.below(12) as usize;
    let mut t = 0;
    let (mut ts, mut masks) = (vec![], vec![]);
    for _ in 0..n {
        t += r.below(8) as i64;
        ts.push(t);
        masks.push(1 + r.below((1 << conditions) - 1));
    }
    (ts, masks)
}

#[test]
fn the_linear_matcher_agrees_with_the_depth_first_search() {
    let mut r = Random(7);
    let mut scratch = Scratch::default();
    let (mut matched, mut counted) = (0, 0);
    for _ in 0..20_000 {
        let conditions = 1 + r.below(3) as usize;
        let text = random_pattern(&mut r, conditions, true);
        let pattern = parse(&text, conditions).unwrap();
        let matcher = Matcher::new(&pattern, 1).unwrap();
        let (ts, masks) = random_events(&mut r, conditions);
        let count = reference_count(&pattern, &ts, &masks);
        assert_eq!(
            matcher.count(&ts, &masks, &mut scratch),
            count,
            "sequence_count of {text} over {ts:?} {masks:?}"
        );
        counted += (count > 0) as usize;
        if pattern.has_time {
            let expected = !ts.is_empty() && search(&pattern.actions, &ts, &masks, 0).0
                || ts.is_empty() && pattern.actions.iter().all(|a| a.can_end_unmatched());
            assert_eq!(
                matcher.matches(&ts, &masks, &mut scratch),
                expected,
                "sequence_match of {text} over {ts:?} {masks:?}"
            );
            matched += expected as usize;
        }
    }
    // The random cases exercise both outcomes.
    assert!(matched > 1000 && counted > 5000, "{matched} {counted}");
}

#[test]
fn the_automaton_finds_a_match_anywhere() {
    let mut r = Random(11);
    for _ in 0..20_000 {
        let conditions = 1 + r.below(3) as usize;
        let text = random_pattern(&mut r, conditions, false);
        let pattern = parse(&text, conditions).unwrap();
        let matcher = Matcher::new(&pattern, 1).unwrap();
        let (ts, masks) = random_events(&mut r, conditions);
        assert_eq!(
            matcher.matches(&ts, &masks, &mut Scratch::default()),
            matches_anywhere(&pattern.actions, &masks),
            "{text} over {masks:?}"
        );
    }
}

#[test]
fn long_histories_take_linear_time() {
    // A depth-first search retries the time condition at every later row for every
    // view: quadratic, and ClickHouse gives up after a million steps.
    let n = 300_000;
    let ts: Vec<i64> = (0..n as i64).collect();
    let mut masks = vec![0b01u64; n];
    masks[n - 1] = 0b10;
    let pattern = parse("(?1)(?t>=100000)(?2)", 2).unwrap();
    let matcher = Matcher::new(&pattern, 1).unwrap();
    let mut scratch = Scratch::default();
    assert!(matcher.matches(&ts, &masks, &mut scratch));
    assert_eq!(matcher.count(&ts, &masks, &mut scratch), 1);
}
