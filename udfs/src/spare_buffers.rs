//! Large event buffers of finished aggregations, kept for the next ones.
//!
//! A flat aggregate's buffer ([`crate::grouped::Entry`]s) holds every matching row of a
//! partition: tens of MB on 10M events. A fresh buffer's pages come from the kernel,
//! which zeroes each on first touch, and in a virtual machine the host backs it again;
//! the buffer also grows by doubling, and the counting sort writes a second one. On 10M
//! person-sorted events that was about 23k page faults per `attribution` query, paid
//! again by every query. As with the key map's tables ([`crate::key_map`]), buffers of
//! at least [`SMALLEST`] bytes are kept when freed, up to [`MOST`] bytes in all, by
//! element type. A buffer of that type growing past [`SMALLEST`] continues in the
//! smallest kept one with room ([`crate::grouped::GroupedEvents`]), and the counting
//! sort writes into one: on a repeated query, buffers of the sizes they end at. Only
//! kept buffers are taken while growing, so a first query grows by `realloc` as before
//! and holds no more memory at its peak. The kept memory stays with the process between
//! queries, outside any query's memory limit (docs/functions/README.md).

use std::any::{Any, TypeId};
use std::sync::Mutex;

/// Smaller buffers are not kept: their pages are few, and malloc reuses them anyway.
pub const SMALLEST: usize = 1 << 20;
/// The most bytes kept in all (the largest buffers first). An attribution over 10M
/// time-ordered events ends with four buffers of about 48 MB (two partitions, each with
/// its events and their sorted copy); with 64 MiB most of them were faulted in again by
/// every query (256 MiB: 2–4% less CPU, the same peak RSS).
const MOST: usize = 256 << 20;

struct Spare {
    element: TypeId,
    bytes: usize,
    /// A `Vec<T>` of the element type, empty.
    buffer: Box<dyn Any + Send>,
}

static SPARE: Mutex<Vec<Spare>> = Mutex::new(Vec::new());

fn bytes_of<T>(v: &Vec<T>) -> usize {
    v.capacity() * std::mem::size_of::<T>()
}

/// Keep `v`'s memory for a later [`take`], if it is large enough and the bound allows.
pub fn give<T: Send + 'static>(mut v: Vec<T>) {
    let bytes = bytes_of(&v);
    if !(SMALLEST..=MOST).contains(&bytes) {
        return;
    }
    v.clear();
    let mut spare = SPARE.lock().unwrap_or_else(|e| e.into_inner());
    spare.push(Spare {
        element: TypeId::of::<T>(),
        bytes,
        buffer: Box::new(v),
    });
    spare.sort_unstable_by_key(|s| std::cmp::Reverse(s.bytes));
    let mut kept = 0;
    spare.retain(|s| {
        kept += s.bytes;
        kept <= MOST
    });
}

/// An empty vector with room for `at_least` elements: the smallest kept one of this
/// element type that has the room (with `at_least` 0, the largest kept one), or a new one
/// of exactly that room.
pub fn take<T: Send + 'static>(at_least: usize) -> Vec<T> {
    take_kept(at_least).unwrap_or_else(|| Vec::with_capacity(at_least))
}

/// As [`take`], but only a kept vector.
pub fn take_kept<T: Send + 'static>(at_least: usize) -> Option<Vec<T>> {
    let mut spare = SPARE.lock().unwrap_or_else(|e| e.into_inner());
    let element = TypeId::of::<T>();
    let fits = |s: &Spare| {
        s.element == element && s.bytes >= at_least.saturating_mul(std::mem::size_of::<T>())
    };
    // Kept largest first: the last that fits is the smallest that does.
    let chosen = if at_least == 0 {
        spare.iter().position(fits)
    } else {
        spare.iter().rposition(fits)
    };
    let kept = spare.remove(chosen?);
    drop(spare);
    kept.buffer.downcast::<Vec<T>>().ok().map(|v| *v)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Element types of their own, so that tests running at once do not share buffers.
    #[derive(Clone, Copy)]
    struct A(#[allow(dead_code)] u64);
    #[derive(Clone, Copy)]
    struct B(#[allow(dead_code)] u32);

    #[test]
    fn a_kept_buffer_goes_to_the_next_of_its_type_with_room_for_what_it_needs() {
        let big = Vec::<A>::with_capacity(SMALLEST / 8 * 4);
        let small = Vec::<A>::with_capacity(SMALLEST / 8);
        let (big_at, small_at) = (big.as_ptr(), small.as_ptr());
        give(big);
        give(small);
        // Another element type gets neither.
        assert_eq!(take::<B>(0).capacity(), 0);
        // The smallest that has room; then, for a buffer to fill, the largest left.
        let v = take::<A>(10);
        assert_eq!(v.as_ptr(), small_at);
        assert!(v.is_empty());
        give(v);
        let v = take::<A>(0);
        assert_eq!(v.as_ptr(), big_at);
        // Nothing kept has room for more: a new one.
        give(v);
        let v = take::<A>(SMALLEST);
        assert!(v.capacity() >= SMALLEST);
        assert!(v.as_ptr() != big_at && v.as_ptr() != small_at);
        let (first, second) = (take::<A>(0), take::<A>(0));
        assert_eq!((first.as_ptr(), second.as_ptr()), (big_at, small_at));
    }

    #[test]
    fn small_buffers_are_not_kept() {
        #[derive(Clone, Copy)]
        struct C(#[allow(dead_code)] u8);
        give(Vec::<C>::with_capacity(SMALLEST - 1));
        assert_eq!(take::<C>(0).capacity(), 0);
    }
}
