//! The absorbing Markov chain of channel paths and its exact solution.
//!
//! States: `start`, one state per observed tuple of the last `order` channels (shorter
//! tuples at the start of a path), and the absorbing `conversion` and `null`. Each
//! path walks start → its states → conversion (if it converted) or null. Transition
//! probabilities are the observed transition counts normalised per state. The
//! probability of conversion from `start` solves (I − Q) x = r, where Q holds the
//! transient-to-transient probabilities and r the transient-to-conversion ones.
//! Removing a channel turns every state containing it into `null`.

use std::collections::HashMap;

/// A transient state: `START` or a tuple of channel ids.
type StateId = usize;
const START: StateId = 0;

/// Where a transition goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Target {
    State(StateId),
    Conversion,
    Null,
}

#[derive(Debug, Default)]
pub struct Chain {
    /// The channels of each transient state (empty for start).
    states: Vec<Vec<u32>>,
    state_ids: HashMap<Vec<u32>, StateId>,
    /// Observed transition weights out of each transient state.
    out: Vec<HashMap<Target, f64>>,
}

impl Chain {
    /// The chain of `paths`: (channel ids in order, whether it converted, weight).
    pub fn build<'a>(paths: impl Iterator<Item = (&'a [u32], bool, f64)>, order: usize) -> Chain {
        let mut chain = Chain::default();
        chain.state(vec![]);
        for (path, converted, weight) in paths {
            let mut from = START;
            for i in 0..path.len() {
                let lo = (i + 1).saturating_sub(order);
                let to = chain.state(path[lo..=i].to_vec());
                *chain.out[from].entry(Target::State(to)).or_default() += weight;
                from = to;
            }
            let end = if converted {
                Target::Conversion
            } else {
                Target::Null
            };
            *chain.out[from].entry(end).or_default() += weight;
        }
        chain
    }

    fn state(&mut self, channels: Vec<u32>) -> StateId {
        if let Some(id) = self.state_ids.get(&channels) {
            return *id;
        }
        let id = self.states.len();
        self.states.push(channels.clone());
        self.state_ids.insert(channels, id);
        self.out.push(HashMap::new());
        id
    }

    pub fn transient_states(&self) -> usize {
        self.states.len()
    }

    /// The probability of reaching conversion from start, with `removed` (if any)
    /// taken out of every path: its states lead to null.
    pub fn conversion_probability(&self, removed: Option<u32>) -> f64 {
        let n = self.states.len();
        let gone: Vec<bool> = self
            .states
            .iter()
            .map(|s| removed.is_some_and(|c| s.contains(&c)))
            .collect();
        // Row i: x_i − Σ_j P(i→j) x_j = P(i→conversion); a removed state has x_i = 0.
        let mut a = vec![0.0; n * n];
        let mut b = vec![0.0; n];
        for i in 0..n {
            a[i * n + i] = 1.0;
            if gone[i] {
                continue;
            }
            let total: f64 = self.out[i].values().sum();
            if total == 0.0 {
                continue;
            }
            for (target, w) in &self.out[i] {
                let p = w / total;
                match target {
                    Target::State(j) if !gone[*j] => a[i * n + j] -= p,
                    Target::State(_) | Target::Null => {}
                    Target::Conversion => b[i] += p,
                }
            }
        }
        solve(&mut a, &mut b, n);
        b[START].clamp(0.0, 1.0)
    }
}

/// Solve a·x = b in place (b becomes x) by Gaussian elimination with partial pivoting.
/// The systems here are I − Q for a substochastic Q whose states all reach an absorbing
/// state, which are non-singular.
pub fn solve(a: &mut [f64], b: &mut [f64], n: usize) {
    for col in 0..n {
        let pivot = (col..n)
            .max_by(|&i, &j| a[i * n + col].abs().total_cmp(&a[j * n + col].abs()))
            .expect("a non-empty column");
        if pivot != col {
            for k in 0..n {
                a.swap(col * n + k, pivot * n + k);
            }
            b.swap(col, pivot);
        }
        let d = a[col * n + col];
        if d.abs() < 1e-300 {
            continue;
        }
        for row in col + 1..n {
            let f = a[row * n + col] / d;
            if f == 0.0 {
                continue;
            }
            for k in col..n {
                a[row * n + k] -= f * a[col * n + k];
            }
            b[row] -= f * b[col];
        }
    }
    for col in (0..n).rev() {
        let d = a[col * n + col];
        let mut v = b[col];
        for k in col + 1..n {
            v -= a[col * n + k] * b[k];
        }
        b[col] = if d.abs() < 1e-300 { 0.0 } else { v / d };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hand_solved_first_order_chain() {
        // Channels 1 = A, 2 = B. Paths: A→conv, A B→null, B→conv, B→null.
        // start: A 1/2, B 1/2; A: conv 1/2, B 1/2; B: conv 1/3, null 2/3.
        // x_B = 1/3; x_A = 1/2 + 1/2·1/3 = 2/3; x_start = 1/2·2/3 + 1/2·1/3 = 1/2.
        let paths: Vec<(Vec<u32>, bool)> = vec![
            (vec![1], true),
            (vec![1, 2], false),
            (vec![2], true),
            (vec![2], false),
        ];
        let chain = Chain::build(paths.iter().map(|(p, c)| (p.as_slice(), *c, 1.0)), 1);
        assert!((chain.conversion_probability(None) - 0.5).abs() < 1e-12);
        // Without A: start→A goes to null; x_start = 1/2·x_B = 1/6.
        assert!((chain.conversion_probability(Some(1)) - 1.0 / 6.0).abs() < 1e-12);
        // Without B: x_A = 1/2, x_start = 1/4.
        assert!((chain.conversion_probability(Some(2)) - 0.25).abs() < 1e-12);
    }

    #[test]
    fn self_loops_and_higher_orders_solve() {
        // A A A→conv and A→null: first order, A loops to itself.
        let paths: Vec<(Vec<u32>, bool)> = vec![(vec![1, 1, 1], true), (vec![1], false)];
        let chain = Chain::build(paths.iter().map(|(p, c)| (p.as_slice(), *c, 1.0)), 1);
        // A: to A 2/4, conv 1/4, null 1/4: x = 1/4 / (1 − 1/2) = 1/2.
        assert!((chain.conversion_probability(None) - 0.5).abs() < 1e-12);
        // Second order: states (A), (A,A); (A): to (A,A) 1/2, null 1/2; (A,A): to (A,A) 1/2, conv 1/2.
        let chain2 = Chain::build(paths.iter().map(|(p, c)| (p.as_slice(), *c, 1.0)), 2);
        assert_eq!(chain2.transient_states(), 3);
        assert!((chain2.conversion_probability(None) - 0.5).abs() < 1e-12);
    }
}
