//! The level one group reached, from its events sorted by (ts, step, row).
//!
//! This follows ClickHouse's windowFunnel step by step, so that the answers agree on
//! every edge case: a step-1 event (re)starts the chain from its own time; a row that
//! matches several conditions yields one event per condition, ordered by condition at
//! equal times; the window is inclusive and measured from the chain's first event.

use super::options::FunnelOptions;

/// One (row, condition) pair: its time, and in one word its step (the 1-based
/// condition, or 0 for a row that matches none, kept only in strict_order mode, where
/// such a row breaks the chain) above the input row it came from (strict_once: a row
/// counts once per chain). Sixteen bytes, and it sorts by (ts, step, row): millions of
/// them are buffered, and the buffer is sorted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Event {
    pub ts: i64,
    step_row: u64,
}

// Buffered with its group in 20 bytes (see [`crate::grouped::Entry`]).
const _: () = assert!(std::mem::size_of::<crate::grouped::Entry<Event>>() == 20);

/// Row ids below this (2^56) fit beside the step.
const ROW_LIMIT: u64 = 1 << 56;

impl Event {
    pub fn new(ts: i64, step: u8, row: u64) -> Self {
        debug_assert!(row < ROW_LIMIT);
        Event {
            ts,
            step_row: (step as u64) << 56 | (row & (ROW_LIMIT - 1)),
        }
    }

    pub fn step(&self) -> u8 {
        (self.step_row >> 56) as u8
    }

    pub fn row(&self) -> u64 {
        self.step_row & (ROW_LIMIT - 1)
    }
}

/// The level reached by a group whose events are `events`, sorted by (ts, step, row).
pub fn funnel_level(events: &[Event], options: &FunnelOptions) -> u8 {
    if events.is_empty() {
        return 0;
    }
    if !options.mode.strict_order && options.steps == 1 {
        return 1;
    }
    if options.mode.strict_once {
        level_counting_rows_once(events, options)
    } else {
        level(events, options)
    }
}

fn highest(reached: impl DoubleEndedIterator<Item = bool> + ExactSizeIterator) -> u8 {
    let n = reached.len();
    reached
        .rev()
        .position(|r| r)
        .map(|p| (n - p) as u8)
        .unwrap_or(0)
}

fn first_missing(reached: impl Iterator<Item = bool>) -> Option<u8> {
    reached.enumerate().find(|(_, r)| !r).map(|(i, _)| i as u8)
}

/// For each step, the (chain start, time of this step) of the chain that reached it last.
fn level(events: &[Event], o: &FunnelOptions) -> u8 {
    let mode = o.mode;
    let mut reached: Vec<Option<(i64, i64)>> = vec![None; o.steps];
    let mut started = false;
    for e in events {
        let ts = e.ts;
        if e.step() == 0 {
            // strict_order: a row matching no step ends the search once a chain started.
            if started {
                break;
            }
            continue;
        }
        let idx = e.step() as usize - 1;
        if idx == 0 {
            reached[0] = Some((ts, ts));
            started = true;
        } else if mode.strict_deduplication && reached[idx].is_some() {
            return highest(reached.iter().map(Option::is_some));
        } else if mode.strict_order && started && reached[idx - 1].is_none() {
            if mode.allow_reentry {
                continue;
            }
            return first_missing(reached.iter().map(Option::is_some)).unwrap_or(o.steps as u8);
        } else if let Some((first, last)) = reached[idx - 1] {
            let in_window = ts <= first.saturating_add(o.window);
            if in_window && (!mode.strict_increase || last < ts) {
                reached[idx] = Some((first, ts));
                if idx + 1 == o.steps {
                    return o.steps as u8;
                }
            }
        }
    }
    highest(reached.iter().map(Option::is_some))
}

/// A partial chain in strict_once mode: its start, its last step's time, and the rows
/// it used.
#[derive(Debug, Clone)]
struct Chain {
    first: i64,
    last: i64,
    rows: Vec<u64>,
}

/// strict_once: every partial chain is kept per step, because one row can match several
/// conditions and we cannot know yet which chain it should serve.
fn level_counting_rows_once(events: &[Event], o: &FunnelOptions) -> u8 {
    let mode = o.mode;
    let mut chains: Vec<Vec<Chain>> = vec![vec![]; o.steps];
    let mut started = false;
    for e in events {
        if e.step() == 0 {
            if started {
                break;
            }
            continue;
        }
        let idx = e.step() as usize - 1;
        if idx == 0 {
            chains[0].push(Chain {
                first: e.ts,
                last: e.ts,
                rows: vec![e.row()],
            });
            started = true;
        } else if mode.strict_deduplication && !chains[idx].is_empty() {
            return highest(chains.iter().map(|c| !c.is_empty()));
        } else if mode.strict_order && started && chains[idx - 1].is_empty() {
            if mode.allow_reentry {
                continue;
            }
            return first_missing(chains.iter().map(|c| !c.is_empty())).unwrap_or(o.steps as u8);
        } else if !chains[idx - 1].is_empty() {
            let (before, after) = chains.split_at_mut(idx);
            let previous = &mut before[idx - 1];
            let next = &mut after[0];
            let mut i = 0;
            while i < previous.len() {
                let chain = &previous[i];
                let in_window = e.ts <= chain.first.saturating_add(o.window);
                if !in_window && previous.len() > 1 {
                    // Too old for this and every later event; keep at least one.
                    previous.remove(i);
                    continue;
                }
                let fits = in_window
                    && !chain.rows.contains(&e.row())
                    && (!mode.strict_increase || chain.last < e.ts);
                if fits {
                    let mut rows = chain.rows.clone();
                    rows.push(e.row());
                    next.push(Chain {
                        first: chain.first,
                        last: e.ts,
                        rows,
                    });
                    if idx + 1 == o.steps {
                        return o.steps as u8;
                    }
                }
                i += 1;
            }
        }
    }
    highest(chains.iter().map(|c| !c.is_empty()))
}
