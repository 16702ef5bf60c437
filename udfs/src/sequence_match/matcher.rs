//! Matching a [`Pattern`] against one group's events, with ClickHouse's answers in time
//! linear in the number of events.
//!
//! ClickHouse's `sequenceMatch` runs patterns without time conditions as an automaton
//! (a match anywhere in the events); we do the same with a bit-parallel automaton.
//!
//! Patterns with time conditions, and `sequenceCount` always, are a depth-first search in
//! ClickHouse: `.*` and time conditions are choice points tried lazily (as few rows as
//! possible first), and the search gives up as soon as one path runs out of events
//! with an action still needing a row (even if another choice would have matched). Its
//! answer is the outcome of the first path, in that order, that ends. We get the same
//! outcome without the search: the outcome of entering action `a` at event `e` depends
//! only on `(a, e)` (the "base" row a time condition measures from is fixed by how the
//! previous action was entered), and each choice point's outcome is the first ending
//! outcome over a range of events of the next action. So a table of outcomes, filled
//! from the last action back with "next ending event" indexes, answers in O(actions ×
//! events), with no iteration limit.

use super::pattern::{Action, Pattern, TimeOp};

/// No path from here ends: the search goes back to an earlier choice.
const EXHAUSTED: u32 = u32::MAX;
/// A path from here ran out of events with actions left: the search stops, unmatched.
const FAILED: u32 = u32::MAX - 1;
// Any other outcome: a path matched, and the next search starts at that event.

/// The most rows a pattern may take (`(?N)` and `.`), so that the automaton fits a u64.
pub const MAX_ROW_ACTIONS: usize = 63;

#[derive(Debug, Clone)]
pub struct Matcher {
    actions: Vec<Action>,
    /// Whether actions `a..` may all be left unmatched at the end of the events.
    can_end_from: Vec<bool>,
    /// For a time condition: whether it measures from the row before (it follows `(?N)`
    /// or `.`) rather than from the row it stands at (it follows `.*`).
    measures_from_previous: Vec<bool>,
    /// Pattern time units in `ts` units (1_000_000 for seconds in a µs timestamp).
    scale: i64,
    has_time: bool,
    automaton: Automaton,
}

/// Scratch space reused between groups.
#[derive(Debug, Default)]
pub struct Scratch {
    next: Vec<u32>,
    current: Vec<u32>,
    next_ending: Vec<u32>,
}

impl Matcher {
    pub fn new(pattern: &Pattern, scale: i64) -> Result<Self, String> {
        let actions = pattern.actions.clone();
        let mut can_end_from = vec![true; actions.len() + 1];
        for a in (0..actions.len()).rev() {
            can_end_from[a] = can_end_from[a + 1] && actions[a].can_end_unmatched();
        }
        let measures_from_previous = (0..actions.len())
            .map(|a| a > 0 && actions[a - 1].consumes())
            .collect();
        Ok(Matcher {
            automaton: Automaton::new(&actions)?,
            actions,
            can_end_from,
            measures_from_previous,
            scale,
            has_time: pattern.has_time,
        })
    }

    /// `sequence_match`: whether the events (sorted) match.
    pub fn matches(&self, ts: &[i64], masks: &[u64], scratch: &mut Scratch) -> bool {
        if !self.has_time {
            return self.automaton.matches(masks);
        }
        let first = self.outcomes(ts, masks, scratch);
        self.search_from(first, 0, ts.len()) != FAILED
    }

    /// `sequence_count`: how many times the events match, each search starting where
    /// the last match ended.
    pub fn count(&self, ts: &[i64], masks: &[u64], scratch: &mut Scratch) -> u64 {
        let n = ts.len();
        let first = self.outcomes(ts, masks, scratch);
        let (mut start, mut count) = (0, 0);
        while start < n {
            let end = self.search_from(first, start, n);
            if end == FAILED {
                break;
            }
            count += 1;
            // A match that took no rows moves on by one.
            start = (end as usize).max(start + 1);
        }
        count
    }

    /// The outcome of a search started at `start`: FAILED or where the match ended.
    fn search_from(&self, first: &[u32], start: usize, n: usize) -> u32 {
        match first[start] {
            // Every choice failed: ClickHouse then checks whether the whole pattern may
            // go unmatched.
            EXHAUSTED if self.can_end_from[0] => n as u32,
            EXHAUSTED => FAILED,
            outcome => outcome,
        }
    }

    /// The outcome of entering action 0 at each event 0..=n.
    fn outcomes<'s>(&self, ts: &[i64], masks: &[u64], s: &'s mut Scratch) -> &'s [u32] {
        let n = ts.len();
        assert!(n < FAILED as usize, "too many events in one group");
        // Past the last action: matched, ending at the event reached.
        s.next.clear();
        s.next.extend(0..=n as u32);
        s.current.resize(n + 1, 0);
        s.next_ending.resize(n + 1, 0);
        for a in (0..self.actions.len()).rev() {
            // next_ending[e]: the first event ≥ e where entering action a + 1 ends.
            s.next_ending[n] = n as u32;
            for e in (0..n).rev() {
                s.next_ending[e] = if s.next[e] != EXHAUSTED {
                    e as u32
                } else {
                    s.next_ending[e + 1]
                };
            }
            // Out of events: ClickHouse ends unmatched unless the rest may go unmatched.
            s.current[n] = if self.can_end_from[a] {
                n as u32
            } else {
                FAILED
            };
            for e in 0..n {
                s.current[e] = self.outcome(a, e, ts, masks, &s.next, &s.next_ending);
            }
            std::mem::swap(&mut s.current, &mut s.next);
        }
        &s.next
    }

    /// The outcome of entering action `a` at event `e` (< n), given the outcomes of
    /// action a + 1 (`next`) and their next-ending indexes.
    fn outcome(
        &self,
        a: usize,
        e: usize,
        ts: &[i64],
        masks: &[u64],
        next: &[u32],
        next_ending: &[u32],
    ) -> u32 {
        let n = ts.len();
        // The first ending outcome of action a + 1 over events lo..hi.
        let first_ending = |lo: usize, hi: usize| {
            if lo >= hi {
                return EXHAUSTED;
            }
            let e = next_ending[lo] as usize;
            if e < hi {
                next[e]
            } else {
                EXHAUSTED
            }
        };
        match self.actions[a] {
            Action::Event(k) if masks[e] & (1 << k) != 0 => next[e + 1],
            Action::Event(_) => EXHAUSTED,
            Action::Any => next[e + 1],
            Action::Star => first_ending(e, n),
            Action::Time(op, amount) => {
                let base = if self.measures_from_previous[a] {
                    match e.checked_sub(1) {
                        Some(b) => b,
                        // Never entered at event 0 after a row.
                        None => return EXHAUSTED,
                    }
                } else {
                    e
                };
                let limit = ts[base].saturating_add((amount as i64).saturating_mul(self.scale));
                let upto = |inclusive: bool| {
                    ts.partition_point(|t| if inclusive { *t <= limit } else { *t < limit })
                };
                // The events where the condition holds, from e on (ts is sorted).
                let (lo, hi) = match op {
                    TimeOp::Less => (e, upto(false)),
                    TimeOp::LessOrEqual => (e, upto(true)),
                    TimeOp::Greater => (e.max(upto(true)), n),
                    TimeOp::GreaterOrEqual => (e.max(upto(false)), n),
                    TimeOp::Equal => (e.max(upto(false)), upto(true)),
                };
                first_ending(lo, hi)
            }
        }
    }
}

/// The automaton ClickHouse uses for patterns without time conditions: state i means
/// "the first i row actions matched"; `.*` lets a state stay.
#[derive(Debug, Clone, Default)]
struct Automaton {
    /// For each condition, the states whose next row action is `(?condition)`.
    on_condition: Vec<u64>,
    /// States whose next row action is `.`.
    on_any: u64,
    /// States a `.*` lets stay.
    stay: u64,
    /// The state after every row action.
    last: u32,
}

impl Automaton {
    fn new(actions: &[Action]) -> Result<Self, String> {
        let rows = actions.iter().filter(|a| a.consumes()).count();
        if rows > MAX_ROW_ACTIONS {
            return Err(format!(
                "the pattern takes {rows} rows ((?N) and .); at most {MAX_ROW_ACTIONS} are supported"
            ));
        }
        let mut automaton = Automaton::default();
        let mut state = 0u32;
        for action in actions {
            match action {
                Action::Event(k) => {
                    let k = *k as usize;
                    if automaton.on_condition.len() <= k {
                        automaton.on_condition.resize(k + 1, 0);
                    }
                    automaton.on_condition[k] |= 1 << state;
                    state += 1;
                }
                Action::Any => {
                    automaton.on_any |= 1 << state;
                    state += 1;
                }
                Action::Star => automaton.stay |= 1 << state,
                Action::Time(..) => {}
            }
        }
        automaton.last = state;
        Ok(automaton)
    }

    fn matches(&self, masks: &[u64]) -> bool {
        let done = 1u64 << self.last;
        let mut active = 1u64;
        for &mask in masks {
            if active & done != 0 || active == 0 {
                break;
            }
            let mut advance = self.on_any;
            let mut conditions = mask;
            while conditions != 0 {
                let k = conditions.trailing_zeros() as usize;
                conditions &= conditions - 1;
                if let Some(states) = self.on_condition.get(k) {
                    advance |= states;
                }
            }
            active = ((active & advance) << 1) | (active & self.stay);
        }
        active & done != 0
    }
}
