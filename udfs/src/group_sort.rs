//! Sorting the flat per-group buffers of the funnel accumulators.

/// Sort `entries` by (group, then `key`): a stable counting sort by group, then each
/// group's run on its own. Runs are usually sorted already — within one person, rows
/// arrive in time order in both time-ordered and person-sorted data — so this is close
/// to linear where a comparison sort of the whole buffer would not be.
pub fn sort_by_group<T: Copy, K: Ord>(
    entries: &mut Vec<T>,
    groups: usize,
    group: impl Fn(&T) -> u32,
    key: impl Fn(&T) -> K + Copy,
) {
    let in_order = entries.windows(2).all(|w| (group(&w[0]), key(&w[0])) <= (group(&w[1]), key(&w[1])));
    if in_order || entries.is_empty() {
        return;
    }
    let mut starts = vec![0usize; groups + 1];
    for e in entries.iter() {
        starts[group(e) as usize + 1] += 1;
    }
    for g in 0..groups {
        starts[g + 1] += starts[g];
    }
    let mut sorted = vec![entries[0]; entries.len()];
    let mut next = starts.clone();
    for e in entries.iter() {
        let g = group(e) as usize;
        sorted[next[g]] = *e;
        next[g] += 1;
    }
    for g in 0..groups {
        let run = &mut sorted[starts[g]..starts[g + 1]];
        if !run.is_sorted_by_key(key) {
            run.sort_unstable_by_key(key);
        }
    }
    *entries = sorted;
}

#[cfg(test)]
mod tests {
    use super::sort_by_group;

    #[test]
    fn sorts_by_group_then_key() {
        let mut v = vec![(2u32, 5), (0, 3), (2, 1), (1, 9), (0, 1), (2, 3)];
        sort_by_group(&mut v, 3, |e| e.0, |e| e.1);
        assert_eq!(v, vec![(0, 1), (0, 3), (1, 9), (2, 1), (2, 3), (2, 5)]);
        let mut empty: Vec<(u32, i32)> = vec![];
        sort_by_group(&mut empty, 0, |e| e.0, |e| e.1);
        assert!(empty.is_empty());
    }
}
