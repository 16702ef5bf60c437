//! Finding a person's funnel chain among their events.
//!
//! Events are sorted by (ts, tiebreak, row). For each candidate entry the chain is found
//! by dynamic programming over the steps: the events of step k that some reachable
//! step-(k-1) event can lead to. The reported chain ends at the earliest event of the
//! highest step reached and goes back through the latest events that lead there, so
//! that the times between steps are as short as the chain allows. Per-step windows are why this is not a greedy scan: the
//! earliest step-k event is not always the one from which step k+1 is reachable.

use super::options::{Entry, FunnelOptions, Ties};

/// One input row that matched at least one condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FunnelEvent {
    pub ts: i64,
    /// The secondary order key (0 when the call has none).
    pub tiebreak: i64,
    pub row: u64,
    /// Bit k: the row matched condition k+1.
    pub mask: u64,
    /// Interned value of the hold column (0: NULL).
    pub hold: u32,
    /// Interned value of the breakdown column (0: NULL).
    pub breakdown: u32,
}

impl FunnelEvent {
    fn key(&self) -> (i64, i64) {
        (self.ts, self.tiebreak)
    }

    fn matches(&self, cond: usize) -> bool {
        self.mask & (1u64 << cond) != 0
    }
}

/// The chain a person's funnel is reported by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    /// Index into the events of the event serving each step (None: not reached).
    pub steps: Vec<Option<usize>>,
    pub excluded: bool,
}

impl Chain {
    pub fn level(&self) -> usize {
        self.steps.iter().filter(|s| s.is_some()).count()
    }
}

/// Can `x` serve the step after the one `y` served?
fn follows(x: &FunnelEvent, y: &FunnelEvent, ties: Ties) -> bool {
    match ties {
        Ties::Advance => x.row != y.row && x.key() >= y.key(),
        Ties::Strict => x.key() > y.key(),
    }
}

/// The chain to report for one person, or None if no event matched step 1 (or, for an
/// unordered funnel, any step).
pub fn find_chain(events: &[FunnelEvent], o: &FunnelOptions) -> Option<Chain> {
    let entries = events.iter().enumerate().filter(|(_, e)| {
        if o.unordered {
            e.mask & step_mask(o.steps) != 0
        } else {
            e.matches(0)
        }
    });
    let mut best: Option<Chain> = None;
    for (i, _) in entries {
        let chain = if o.unordered {
            unordered_from(events, i, o)
        } else {
            ordered_from(events, i, o)
        };
        let better = match &best {
            None => true,
            Some(b) => {
                let rank = |c: &Chain| (c.level(), !c.excluded);
                match o.entry {
                    Entry::Latest => rank(&chain) >= rank(b),
                    _ => rank(&chain) > rank(b),
                }
            }
        };
        if better {
            best = Some(chain);
        }
        let done = best
            .as_ref()
            .is_some_and(|b| b.level() == o.steps && !b.excluded);
        if o.entry == Entry::First || (o.entry == Entry::Best && done) {
            break;
        }
    }
    best
}

fn step_mask(steps: usize) -> u64 {
    if steps == 64 {
        u64::MAX
    } else {
        (1u64 << steps) - 1
    }
}

/// The events inside the window of the entry at `entry`: indices `lo..hi`.
fn window_range(events: &[FunnelEvent], entry: usize, o: &FunnelOptions) -> (usize, usize) {
    let start = events[entry].ts;
    let end = start.saturating_add(o.window);
    let lo = events.partition_point(|e| e.ts < start);
    let hi = events.partition_point(|e| e.ts <= end);
    (lo, hi)
}

fn held(e: &FunnelEvent, entry: &FunnelEvent, hold: bool) -> bool {
    !hold || (entry.hold != 0 && e.hold == entry.hold)
}

fn ordered_from(events: &[FunnelEvent], entry: usize, o: &FunnelOptions) -> Chain {
    let (lo, hi) = window_range(events, entry, o);
    let e0 = &events[entry];
    let hold = o.hold;
    // reach[k]: the events that can serve step k+1 of a chain from this entry.
    let mut reach: Vec<Vec<usize>> = vec![vec![entry]];
    for k in 1..o.steps {
        let previous = &reach[k - 1];
        let mut next = vec![];
        for x in lo..hi {
            let ev = &events[x];
            if !ev.matches(k) || !held(ev, e0, hold) {
                continue;
            }
            let earliest = match o.step_windows[k] {
                Some(w) => ev.ts.saturating_sub(w),
                None => i64::MIN,
            };
            let from = previous.partition_point(|y| events[*y].ts < earliest);
            let reachable = previous[from..]
                .iter()
                .take_while(|y| events[**y].key() <= ev.key())
                .any(|y| follows(ev, &events[*y], o.ties));
            if reachable {
                next.push(x);
            }
        }
        if next.is_empty() {
            break;
        }
        reach.push(next);
    }
    // End at the earliest event of the highest step reached; going back, take the
    // latest event of each step that leads to it, so that step durations are tight.
    let mut steps = vec![None; o.steps];
    let last = reach.len() - 1;
    let mut x = reach[last][0];
    steps[last] = Some(x);
    for k in (0..last).rev() {
        let ev = &events[x];
        let earliest = o.step_windows[k + 1]
            .map(|w| ev.ts.saturating_sub(w))
            .unwrap_or(i64::MIN);
        let y = reach[k]
            .iter()
            .rev()
            .copied()
            .filter(|y| events[*y].key() <= ev.key())
            .take_while(|y| events[*y].ts >= earliest)
            .find(|y| follows(ev, &events[*y], o.ties))
            .expect("the predecessor found going forward qualifies");
        steps[k] = Some(y);
        x = y;
    }
    let excluded = excluded(events, &steps, entry, o);
    Chain { steps, excluded }
}

fn unordered_from(events: &[FunnelEvent], entry: usize, o: &FunnelOptions) -> Chain {
    let (lo, hi) = window_range(events, entry, o);
    let e0 = &events[entry];
    let mut steps: Vec<Option<usize>> = vec![None; o.steps];
    let assign = |x: usize, steps: &mut Vec<Option<usize>>| {
        if let Some(k) = (0..o.steps).find(|k| steps[*k].is_none() && events[x].matches(*k)) {
            steps[k] = Some(x);
        }
    };
    assign(entry, &mut steps);
    for x in lo..hi {
        let ev = &events[x];
        let after_entry = match o.ties {
            Ties::Advance => ev.key() >= e0.key(),
            Ties::Strict => ev.key() > e0.key(),
        };
        if x != entry && after_entry && held(ev, e0, o.hold) {
            assign(x, &mut steps);
        }
    }
    let excluded = excluded(events, &steps, entry, o);
    Chain { steps, excluded }
}

/// Whether an exclusion event lies strictly between the events of its two steps (or,
/// when the later step was not reached, after the earlier one and within the window).
fn excluded(
    events: &[FunnelEvent],
    steps: &[Option<usize>],
    entry: usize,
    o: &FunnelOptions,
) -> bool {
    let window_end = (events[entry].ts.saturating_add(o.window), i64::MAX);
    o.exclusions.iter().any(|x| {
        let Some(from) = steps[x.from - 1] else {
            return false;
        };
        let lo = events[from].key();
        let hi = steps[x.to - 1]
            .map(|to| events[to].key())
            .unwrap_or(window_end);
        events
            .iter()
            .any(|z| z.matches(x.cond) && z.key() > lo && z.key() < hi)
    })
}
