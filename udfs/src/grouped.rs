//! The state both funnel accumulators share: a flat buffer of (group, event) pairs for
//! every group of an aggregation, instead of a vector per group.

use datafusion::arrow::array::ArrayRef;
use datafusion::arrow::buffer::OffsetBuffer;
use datafusion::error::Result;
use datafusion::logical_expr::{Accumulator, EmitTo, GroupsAccumulator};
use datafusion::scalar::ScalarValue;

/// The compaction key of no event, or of one whose key does not fit in 32 bits (it is
/// then pushed: compaction is only ever an optimisation).
const NO_KEY: u32 = u32::MAX;
/// How many rows ahead a compacting push prefetches its group's last key.
const PREFETCH_ROWS: usize = 16;

/// The order of a group's events, as a type, so that a push compares keys without a
/// call through a pointer.
pub trait EventOrder<T> {
    type Key: Ord;
    fn key(e: &T) -> Self::Key;
}

/// The order [`FlatEvents::key`] gives.
#[derive(Debug)]
pub struct ByKey<S>(std::marker::PhantomData<S>);

impl<S: FlatEvents> EventOrder<S::Event> for ByKey<S> {
    type Key = S::Key;
    #[inline]
    fn key(e: &S::Event) -> S::Key {
        S::key(e)
    }
}

/// One buffered event with its group. Aligned to 4 bytes: a tuple `(u32, T)` is padded
/// to `T`'s alignment, 4 bytes of every 24 for an event that starts with an 8-byte
/// timestamp, and these buffers hold every matching row of a partition. Fields are read
/// by value (`e.event.ts`), never borrowed, as a packed struct requires.
#[derive(Clone, Copy)]
#[repr(C, packed(4))]
pub struct Entry<T> {
    pub group: u32,
    pub event: T,
}

// An event of an 8-byte time alone (`lifecycle`) takes 12 bytes with its group, not 16.
const _: () = assert!(std::mem::size_of::<Entry<i64>>() == 12);

impl<T: Copy> Entry<T> {
    #[inline]
    pub fn new(group: u32, event: T) -> Self {
        Entry { group, event }
    }
}

impl<T: Copy + std::fmt::Debug> std::fmt::Debug for Entry<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (group, event) = (self.group, self.event);
        f.debug_tuple("Entry").field(&group).field(&event).finish()
    }
}

/// Tests compare entries with (group, event) tuples.
#[cfg(test)]
impl<T: Copy + PartialEq> PartialEq<(u32, T)> for Entry<T> {
    fn eq(&self, other: &(u32, T)) -> bool {
        let (group, event) = (self.group, self.event);
        (group, event) == *other
    }
}

/// What an event buffer holds: plain values it can copy, print and hand between threads
/// (kept buffers go to the next aggregation, on any thread; see [`crate::spare_buffers`]).
pub trait EventData: Copy + std::fmt::Debug + Send + 'static {}
impl<T: Copy + std::fmt::Debug + Send + 'static> EventData for T {}

#[derive(Debug)]
pub struct GroupedEvents<T: EventData, O> {
    entries: Vec<Entry<T>>,
    /// Groups seen so far (the groups accumulator's `total_num_groups`).
    groups: usize,
    /// For [`GroupedEvents::push_compacting`]: per group, the compaction key of its last
    /// event ([`NO_KEY`]: none, or one without a key). Four bytes per group (keys of 32
    /// bits, as periods are) keep this in cache where the events themselves would not be.
    last: Vec<u32>,
    /// The entries are sorted by (group, key), so the next sort has nothing to do. Each
    /// push keeps this while it comes after the last entry, which is still in cache:
    /// on data sorted by person and time every push does, and a sort would otherwise
    /// pass twice over a buffer far larger than the cache.
    in_order: bool,
    order: std::marker::PhantomData<O>,
}

impl<T: EventData, O: EventOrder<T>> Default for GroupedEvents<T, O> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: EventData, O: EventOrder<T>> GroupedEvents<T, O> {
    pub fn new() -> Self {
        GroupedEvents {
            entries: vec![],
            groups: 0,
            last: vec![],
            in_order: true,
            order: std::marker::PhantomData,
        }
    }

    pub fn saw_groups(&mut self, total_num_groups: usize) {
        self.groups = self.groups.max(total_num_groups);
    }

    #[inline]
    pub fn push(&mut self, group: usize, event: T) {
        let group = u32::try_from(group).expect("funnel functions support up to 2^32 groups");
        if self.entries.len() == self.entries.capacity() {
            self.grow();
        }
        if self.in_order {
            if let Some(&Entry { group: g, event: e }) = self.entries.last() {
                self.in_order = g < group || (g == group && O::key(&e) <= O::key(&event));
            }
        }
        self.entries.push(Entry::new(group, event));
    }

    /// Double the buffer's room: past [`crate::spare_buffers`]' smallest size into a
    /// buffer an earlier aggregation left, when one has the room (on a repeated query,
    /// one of the size this one ends at, so it grows no more), rather than fresh pages.
    #[cold]
    fn grow(&mut self) {
        let room = (2 * self.entries.capacity()).max(64);
        if room * std::mem::size_of::<Entry<T>>() >= crate::spare_buffers::SMALLEST {
            if let Some(mut kept) = crate::spare_buffers::take_kept(room) {
                kept.extend_from_slice(&self.entries);
                self.entries = kept;
                return;
            }
        }
        self.entries.reserve_exact(room - self.entries.len());
    }

    /// Make room in `last` for every group seen so far (before a batch of
    /// [`GroupedEvents::push_compacting`], so that [`GroupedEvents::prefetch_last`] may
    /// look at any of them).
    pub fn reserve_last(&mut self) {
        if self.last.len() < self.groups {
            self.last.resize(self.groups, NO_KEY);
        }
    }

    /// Start loading `group`'s last compaction key: on data not sorted by person it is
    /// a cache miss per row, and the rows a few ahead are known.
    #[inline]
    pub fn prefetch_last(&self, group: usize) {
        if let Some(last) = self.last.get(group) {
            crate::key_map::prefetch(last);
        }
    }

    /// Push `event` unless the last event pushed for `group` had the same compaction
    /// `key` (`None`: push, and compare the next one with nothing).
    #[inline]
    pub fn push_compacting(&mut self, group: usize, event: T, key: Option<u64>) {
        if self.last.len() <= group {
            self.last.resize(self.groups.max(group + 1), NO_KEY);
        }
        let key = key.and_then(|k| u32::try_from(k).ok()).unwrap_or(NO_KEY);
        if key != NO_KEY && self.last[group] == key {
            return;
        }
        self.push(group, event);
        self.last[group] = key;
    }

    /// Sort by (group, key): a stable counting sort by group, then each group's run on
    /// its own. Runs are usually sorted already — within one person, rows arrive in time
    /// order in both time-ordered and person-sorted data — so this is close to linear
    /// where a comparison sort of the whole buffer would not be.
    pub fn sort(&mut self) {
        if std::mem::replace(&mut self.in_order, true) {
            return;
        }
        let key = O::key;
        let entries = &mut self.entries;
        // Groups already in order (data sorted by person, or a final phase whose rows
        // are new groups) need no counting sort, only their runs looked at.
        if entries.windows(2).all(|w| w[0].group <= w[1].group) {
            sort_runs(entries, key);
            return;
        }
        // Offsets of 32 bits where they do: half the cache lines for the scattered
        // increments below.
        let mut sorted = if entries.len() <= u32::MAX as usize {
            counting_sort::<T, u32>(entries, self.groups)
        } else {
            counting_sort::<T, usize>(entries, self.groups)
        };
        sort_runs(&mut sorted, key);
        crate::spare_buffers::give(std::mem::replace(entries, sorted));
    }

    /// The entries, in the order of the last sort.
    pub fn entries(&self) -> &[Entry<T>] {
        &self.entries
    }

    /// Remove and return the sorted entries of the groups `emit_to` names, with their
    /// count; the groups left are renumbered from 0.
    pub fn take(&mut self, emit_to: EmitTo) -> (Vec<Entry<T>>, usize) {
        self.sort();
        // The groups left are renumbered, their last events with them.
        let taken = match emit_to {
            EmitTo::All => self.last.len(),
            EmitTo::First(n) => n.min(self.last.len()),
        };
        self.last.drain(..taken);
        match emit_to {
            EmitTo::All => (
                std::mem::take(&mut self.entries),
                std::mem::take(&mut self.groups),
            ),
            EmitTo::First(n) => {
                let split = self.entries.partition_point(|e| (e.group as usize) < n);
                self.groups -= n;
                let n32 = n as u32;
                let taken = take_front(&mut self.entries, split, |e| e.group -= n32);
                (taken, n)
            }
        }
    }

    pub fn size(&self) -> usize {
        self.entries.capacity() * std::mem::size_of::<Entry<T>>()
            + self.last.capacity() * std::mem::size_of::<u32>()
    }
}

impl<T: EventData, O> Drop for GroupedEvents<T, O> {
    fn drop(&mut self) {
        crate::spare_buffers::give(std::mem::take(&mut self.entries));
    }
}

/// Remove and return `v[..split]`, applying `renumber` to each element left. The smaller
/// part is copied: when few are taken (at a partition's edge, the one person another
/// partition also holds) the rest moves down in place instead of into a new buffer
/// whose pages would all be faulted in again (4–5% of the CPU time of a funnel, a
/// retention matrix or an attribution on 10M person-sorted events).
pub fn take_front<T: Copy>(v: &mut Vec<T>, split: usize, renumber: impl Fn(&mut T)) -> Vec<T> {
    if split > v.len() - split {
        let mut rest = v.split_off(split);
        rest.iter_mut().for_each(renumber);
        return std::mem::replace(v, rest);
    }
    let taken = v[..split].to_vec();
    let rest = v.len() - split;
    for i in 0..rest {
        let mut e = v[split + i];
        renumber(&mut e);
        v[i] = e;
    }
    v.truncate(rest);
    taken
}

/// Sort each group's run of `entries` (already in group order) by `key`, where needed.
/// An offset into the sorted entries.
trait Offset: Copy {
    const ZERO: Self;
    fn index(self) -> usize;
    fn at(index: usize) -> Self;
}

impl Offset for u32 {
    const ZERO: Self = 0;
    fn index(self) -> usize {
        self as usize
    }
    fn at(index: usize) -> Self {
        index as u32
    }
}

impl Offset for usize {
    const ZERO: Self = 0;
    fn index(self) -> usize {
        self
    }
    fn at(index: usize) -> Self {
        index
    }
}

/// `entries` stably sorted by group (each below `groups`), `O` wide enough for their
/// number.
fn counting_sort<T: EventData, O: Offset>(entries: &[Entry<T>], groups: usize) -> Vec<Entry<T>> {
    let mut next = vec![O::ZERO; groups];
    for e in entries {
        let n = &mut next[e.group as usize];
        *n = O::at(n.index() + 1);
    }
    let mut start = 0;
    for n in next.iter_mut() {
        let count = n.index();
        *n = O::at(start);
        start += count;
    }
    let mut sorted = crate::spare_buffers::take(entries.len());
    let out = sorted.spare_capacity_mut();
    for e in entries {
        let n = &mut next[e.group as usize];
        out[n.index()].write(*e);
        *n = O::at(n.index() + 1);
    }
    // SAFETY: each group's counted positions, which together are 0..entries.len(), were
    // written once each above.
    unsafe { sorted.set_len(entries.len()) };
    sorted
}

fn sort_runs<T: Copy, K: Ord>(entries: &mut [Entry<T>], key: impl Fn(&T) -> K + Copy) {
    for run in entries.chunk_by_mut(|a, b| a.group == b.group) {
        if !run.is_sorted_by_key(|e| key(&{ e.event })) {
            run.sort_unstable_by_key(|e| key(&{ e.event }));
        }
    }
}

/// For each group 0..n of sorted `entries`, its run (empty for a group without events).
pub fn runs<T>(entries: &[Entry<T>], n: usize) -> impl Iterator<Item = &[Entry<T>]> {
    let mut at = 0;
    (0..n).map(move |g| {
        let start = at;
        while at < entries.len() && entries[at].group as usize == g {
            at += 1;
        }
        &entries[start..at]
    })
}

/// The state columns of sorted `entries` (one value per entry each) as list arrays with
/// one list per group 0..n: a flat aggregate's partial state.
pub fn group_lists<T>(entries: &[Entry<T>], n: usize, columns: Vec<ArrayRef>) -> Vec<ArrayRef> {
    use datafusion::arrow::array::ListArray;
    use datafusion::arrow::datatypes::Field;
    let offsets = list_offsets(entries, n);
    columns
        .into_iter()
        .map(|values| {
            let field =
                std::sync::Arc::new(Field::new_list_field(values.data_type().clone(), true));
            std::sync::Arc::new(ListArray::new(field, offsets.clone(), values, None)) as ArrayRef
        })
        .collect()
}

/// List offsets for groups 0..n of sorted `entries`.
pub fn list_offsets<T>(entries: &[Entry<T>], n: usize) -> OffsetBuffer<i32> {
    OffsetBuffer::from_lengths(runs(entries, n).map(|r| r.len()))
}

/// A groups accumulator that can also answer for group 0 without giving up its state,
/// as an aggregate without GROUP BY (or over a window frame) needs.
pub trait EvaluateInPlace: GroupsAccumulator {
    fn evaluate_kept(&mut self) -> Result<ScalarValue>;
    fn state_kept(&mut self) -> Result<Vec<ScalarValue>>;
}

/// A groups accumulator used as a plain accumulator: everything is group 0.
#[derive(Debug)]
pub struct SingleGroup<G>(pub G);

impl<G: EvaluateInPlace + std::fmt::Debug + Sync> Accumulator for SingleGroup<G> {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        let rows = values.first().map(|v| v.len()).unwrap_or(0);
        self.0.update_batch(values, &vec![0; rows], None, 1)
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        self.0.evaluate_kept()
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        self.0.state_kept()
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        let rows = states.first().map(|v| v.len()).unwrap_or(0);
        self.0.merge_batch(states, &vec![0; rows], 1)
    }

    fn size(&self) -> usize {
        self.0.size()
    }
}

/// What an aggregate whose state is a flat buffer of per-group events must say about
/// its events; [`FlatAggregate`] does the rest (update, emit, partial state, merge,
/// convert_to_state, and the single-group form).
pub trait FlatEvents: std::fmt::Debug + Send + Sync + Sized + 'static {
    type Event: Copy + std::fmt::Debug + Send + Sync + 'static;
    type Key: Ord;

    /// The order of a group's events.
    fn key(e: &Self::Event) -> Self::Key;

    /// A spec with the same options and no per-input state (for convert_to_state).
    fn fresh(&self) -> Self;

    /// Call `push(row, event)` for the events of the input rows the filter keeps
    /// (generic, not `dyn`, so that the push is inlined into the loop over the rows).
    fn add_rows(
        &mut self,
        values: &[ArrayRef],
        filter: Option<&datafusion::arrow::array::BooleanArray>,
        push: &mut impl FnMut(usize, Self::Event),
    ) -> Result<()>;

    /// The results of groups 0..n of sorted `entries`.
    fn results(&self, entries: &[Entry<Self::Event>], n: usize) -> Result<ArrayRef>;

    /// The partial state (lists) of groups 0..n of sorted `entries`.
    fn state_lists(&self, entries: &[Entry<Self::Event>], n: usize) -> Vec<ArrayRef>;

    /// Call `push(state_row, event)` for the events in partial states.
    fn merge_lists(
        &mut self,
        states: &[ArrayRef],
        push: &mut dyn FnMut(usize, Self::Event),
    ) -> Result<()>;

    /// Bytes held besides the event buffer.
    fn extra_size(&self) -> usize {
        0
    }

    /// Events of a group that follow one another with the same key are one as far as
    /// the result goes (say, both fall in the same calendar period and only the period
    /// matters): only the first is buffered. `None` (the default) keeps the event. Only
    /// ever an optimisation, and only when `compacts` (checked once per batch) says so.
    fn compacts(&self) -> bool {
        false
    }
    fn compact_key(_e: &Self::Event) -> Option<u64> {
        None
    }
}

/// A groups accumulator over a [`FlatEvents`] spec.
#[derive(Debug)]
pub struct FlatAggregate<S: FlatEvents> {
    pub spec: S,
    events: GroupedEvents<S::Event, ByKey<S>>,
}

impl<S: FlatEvents> FlatAggregate<S> {
    pub fn new(spec: S) -> Self {
        FlatAggregate {
            spec,
            events: GroupedEvents::new(),
        }
    }

    /// Events held (tests check that compaction keeps fewer).
    #[cfg(test)]
    pub fn buffered(&self) -> usize {
        self.events.entries.len()
    }
}

impl<S: FlatEvents> GroupsAccumulator for FlatAggregate<S> {
    fn update_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        opt_filter: Option<&datafusion::arrow::array::BooleanArray>,
        total_num_groups: usize,
    ) -> Result<()> {
        self.events.saw_groups(total_num_groups);
        let events = &mut self.events;
        if self.spec.compacts() {
            events.reserve_last();
            // Rows in group order (data sorted by person) find their group's key in
            // cache, and a prefetch per row would only cost there.
            let prefetch = !group_indices.is_sorted();
            return self.spec.add_rows(values, opt_filter, &mut |row, e| {
                if let (true, Some(&ahead)) = (prefetch, group_indices.get(row + PREFETCH_ROWS)) {
                    events.prefetch_last(ahead);
                }
                events.push_compacting(group_indices[row], e, S::compact_key(&e))
            });
        }
        self.spec.add_rows(values, opt_filter, &mut |row, e| {
            events.push(group_indices[row], e)
        })
    }

    fn evaluate(&mut self, emit_to: EmitTo) -> Result<ArrayRef> {
        let (entries, n) = self.events.take(emit_to);
        let results = self.spec.results(&entries, n);
        crate::spare_buffers::give(entries);
        results
    }

    fn state(&mut self, emit_to: EmitTo) -> Result<Vec<ArrayRef>> {
        let (entries, n) = self.events.take(emit_to);
        let lists = self.spec.state_lists(&entries, n);
        crate::spare_buffers::give(entries);
        Ok(lists)
    }

    fn merge_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        total_num_groups: usize,
    ) -> Result<()> {
        self.events.saw_groups(total_num_groups);
        let events = &mut self.events;
        if self.spec.compacts() {
            return self.spec.merge_lists(values, &mut |row, e| {
                events.push_compacting(group_indices[row], e, S::compact_key(&e))
            });
        }
        self.spec
            .merge_lists(values, &mut |row, e| events.push(group_indices[row], e))
    }

    fn convert_to_state(
        &self,
        values: &[ArrayRef],
        opt_filter: Option<&datafusion::arrow::array::BooleanArray>,
    ) -> Result<Vec<ArrayRef>> {
        // Each input row is a group of its own; its events come in row order.
        let rows = values.first().map(|v| v.len()).unwrap_or(0);
        let mut spec = self.spec.fresh();
        let mut events = GroupedEvents::<S::Event, ByKey<S>>::new();
        events.saw_groups(rows);
        spec.add_rows(values, opt_filter, &mut |row, e| events.push(row, e))?;
        Ok(spec.state_lists(events.entries(), rows))
    }

    fn size(&self) -> usize {
        self.events.size() + self.spec.extra_size() + std::mem::size_of::<Self>()
    }
}

impl<S: FlatEvents> EvaluateInPlace for FlatAggregate<S> {
    fn evaluate_kept(&mut self) -> Result<ScalarValue> {
        self.events.sort();
        ScalarValue::try_from_array(&self.spec.results(self.events.entries(), 1)?, 0)
    }

    fn state_kept(&mut self) -> Result<Vec<ScalarValue>> {
        self.events.sort();
        self.spec
            .state_lists(self.events.entries(), 1)
            .iter()
            .map(|a| ScalarValue::try_from_array(a, 0))
            .collect()
    }
}

/// `values` as a list array of one row (an aggregate's scalar state or result).
pub fn one_row_list(values: ArrayRef, nullable_items: bool) -> datafusion::arrow::array::ListArray {
    use datafusion::arrow::datatypes::Field;
    let field = std::sync::Arc::new(Field::new_list_field(
        values.data_type().clone(),
        nullable_items,
    ));
    datafusion::arrow::array::ListArray::new(
        field,
        OffsetBuffer::from_lengths([values.len()]),
        values,
        None,
    )
}

/// Call `f(row, j)` for every element j of every non-null list row of `list`.
pub fn for_each_element(
    list: &datafusion::arrow::array::ListArray,
    mut f: impl FnMut(usize, usize),
) {
    use datafusion::arrow::array::Array;
    let offsets = list.value_offsets();
    for row in 0..list.len() {
        if list.is_null(row) {
            continue;
        }
        for j in offsets[row] as usize..offsets[row + 1] as usize {
            f(row, j);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Test events are their own key.
    #[derive(Debug)]
    struct Itself;

    impl EventOrder<u64> for Itself {
        type Key = u64;
        fn key(e: &u64) -> u64 {
            *e
        }
    }

    #[test]
    fn sorts_by_group_then_key_and_takes_the_first_groups() {
        let mut g = GroupedEvents::<u64, Itself>::new();
        g.saw_groups(3);
        for (group, v) in [(2, 5), (0, 3), (2, 1), (1, 9), (0, 1), (2, 3)] {
            g.push(group, v);
        }
        g.sort();
        assert_eq!(
            g.entries(),
            &[(0, 1), (0, 3), (1, 9), (2, 1), (2, 3), (2, 5)]
        );
        let lengths: Vec<usize> = runs(g.entries(), 3).map(|r| r.len()).collect();
        assert_eq!(lengths, vec![2, 1, 3]);
        let (first, n) = g.take(EmitTo::First(2));
        assert_eq!(n, 2);
        assert_eq!(first, vec![(0, 1), (0, 3), (1, 9)]);
        let (rest, n) = g.take(EmitTo::All);
        assert_eq!(n, 1);
        assert_eq!(rest, vec![(0, 1), (0, 3), (0, 5)]);
    }

    #[test]
    fn take_front_removes_the_front_and_renumbers_the_rest_whichever_part_is_copied() {
        for split in 0..=7 {
            let mut v: Vec<u32> = (0..7).collect();
            let taken = take_front(&mut v, split, |e| *e += 100);
            assert_eq!(
                taken,
                (0..split as u32).collect::<Vec<_>>(),
                "split {split}"
            );
            assert_eq!(
                v,
                (split as u32..7).map(|e| e + 100).collect::<Vec<_>>(),
                "split {split}"
            );
        }
    }

    #[test]
    fn counting_sort_is_a_stable_sort_by_group_at_either_offset_width() {
        let mut rng = crate::test_random::Random(11);
        for groups in [1, 7, 300] {
            let entries: Vec<Entry<u64>> = (0..5000)
                .map(|i| Entry::new(rng.below(groups) as u32, i))
                .collect();
            let mut expected: Vec<(u32, u64)> =
                entries.iter().map(|e| (e.group, e.event)).collect();
            expected.sort_by_key(|e| e.0);
            assert_eq!(
                counting_sort::<u64, u32>(&entries, groups as usize),
                expected
            );
            assert_eq!(
                counting_sort::<u64, usize>(&entries, groups as usize),
                expected
            );
        }
    }

    #[test]
    fn groups_in_order_only_have_their_runs_sorted() {
        let mut g = GroupedEvents::<u64, Itself>::new();
        g.saw_groups(3);
        for (group, v) in [(0, 3), (0, 1), (1, 9), (2, 5), (2, 1), (2, 3)] {
            g.push(group, v);
        }
        g.sort();
        assert_eq!(
            g.entries(),
            &[(0, 1), (0, 3), (1, 9), (2, 1), (2, 3), (2, 5)]
        );
    }

    #[test]
    fn push_compacting_compares_with_the_groups_last_event() {
        let mut g = GroupedEvents::<u64, Itself>::new();
        g.saw_groups(2);
        for (group, v) in [(0, 1), (1, 1), (0, 1), (0, 2), (1, 1), (0, 1)] {
            g.push_compacting(group, v, Some(v));
        }
        // (0, 1) repeats its group's last event once; (0, 1) after (0, 2) does not.
        assert_eq!(g.entries(), &[(0, 1), (1, 1), (0, 2), (0, 1)]);
        g.sort();
        // Taking group 0 renumbers group 1 as 0, its last event with it.
        let (taken, _) = g.take(EmitTo::First(1));
        assert_eq!(taken, vec![(0, 1), (0, 1), (0, 2)]);
        g.push_compacting(0, 1, Some(1));
        g.push_compacting(0, 2, Some(2));
        // An event without a key is always kept, and the next is compared with nothing.
        g.push_compacting(0, 2, None);
        g.push_compacting(0, 2, Some(2));
        assert_eq!(g.entries(), &[(0, 1), (0, 2), (0, 2), (0, 2)]);
    }

    #[test]
    fn a_push_before_the_last_entry_is_sorted_after_pushes_in_order() {
        let mut g = GroupedEvents::<u64, Itself>::new();
        g.saw_groups(2);
        g.push(0, 1);
        g.push(1, 5);
        g.sort();
        assert_eq!(g.entries(), &[(0, 1), (1, 5)]);
        // Sorted, then an earlier group; then a later time in the last group but an
        // earlier one than its last event.
        g.push(0, 2);
        g.push(1, 7);
        g.push(1, 6);
        g.sort();
        assert_eq!(g.entries(), &[(0, 1), (0, 2), (1, 5), (1, 6), (1, 7)]);
        let (mut g, mut h) = (GroupedEvents::<u64, Itself>::new(), vec![]);
        g.saw_groups(1);
        for v in [3, 4, 4, 2] {
            g.push(0, v);
            h.push((0, v));
        }
        g.sort();
        h.sort();
        assert_eq!(g.entries(), &h[..]);
    }

    #[test]
    fn a_growing_buffer_continues_in_one_a_finished_aggregation_left() {
        // An event type of this test's own: no other test's buffers are kept for it.
        #[derive(Debug, Clone, Copy, PartialEq)]
        struct Tick(u64);
        struct ByTick;
        impl EventOrder<Tick> for ByTick {
            type Key = u64;
            fn key(e: &Tick) -> u64 {
                e.0
            }
        }
        let fill = |g: &mut GroupedEvents<Tick, ByTick>, n: u64| {
            g.saw_groups(3);
            for i in 0..n {
                g.push((i % 3) as usize, Tick(i));
            }
        };
        // Enough events to pass the smallest kept size, and a kept buffer of a room that
        // doubling never gives.
        let size = std::mem::size_of::<Entry<Tick>>();
        let n = (2 * crate::spare_buffers::SMALLEST / size) as u64;
        let room = 3 * crate::spare_buffers::SMALLEST / size + 7;
        crate::spare_buffers::give(Vec::<Entry<Tick>>::with_capacity(room));
        let mut first = GroupedEvents::<Tick, ByTick>::new();
        fill(&mut first, n);
        assert_eq!(first.size(), room * size);
        // Dropped, an aggregation's buffer is kept again.
        drop(first);
        let mut third = GroupedEvents::<Tick, ByTick>::new();
        fill(&mut third, n);
        assert_eq!(third.size(), room * size);
        third.sort();
        let got: Vec<(u32, u64)> = third
            .entries()
            .iter()
            .map(|e| (e.group, e.event.0))
            .collect();
        let mut want: Vec<(u32, u64)> = (0..n).map(|i| ((i % 3) as u32, i)).collect();
        want.sort();
        assert_eq!(got, want);
    }

    #[test]
    fn keys_past_32_bits_are_never_compacted() {
        let mut g = GroupedEvents::<u64, Itself>::new();
        g.saw_groups(1);
        // Equal keys past 32 bits are both kept; so is a 32-bit key after a longer one
        // with the same low bits.
        for key in [1u64 << 40 | 7, 1 << 40 | 7, 7, 7] {
            g.push_compacting(0, key, Some(key));
        }
        assert_eq!(g.entries(), &[(0, 1 << 40 | 7), (0, 1 << 40 | 7), (0, 7)]);
    }
}
