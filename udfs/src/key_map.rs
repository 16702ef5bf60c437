//! Group indices for one string key column, for [`crate::string_key_aggregate`].
//!
//! Person keys are short (device ids, user ids: 9 to 15 bytes is typical). DataFusion's
//! general map for string views compares every key longer than 12 bytes with a `memcmp`
//! into a separate buffer, and its table keeps control bytes apart from the entries:
//! with hundreds of thousands of people each lookup costs two or three cache misses.
//! Here a key of at most 15 bytes is packed with its length into one `u128` that is the
//! table slot itself (open addressing, linear probing, at most half full), so a lookup
//! is usually one cache line. A batch is first cut into runs of rows with equal keys
//! (one person's rows, on data sorted by person), each looked up once, and the lines
//! for the runs a few ahead are prefetched while the current one is looked up. Longer
//! keys keep their bytes in a buffer and compare them there.

use datafusion::arrow::array::builder::make_view;
use datafusion::arrow::array::{
    Array, ArrayRef, Decimal128Array, GenericStringArray, LargeStringArray, OffsetSizeTrait,
    StringArray, StringViewArray,
};
use datafusion::arrow::buffer::{Buffer, NullBuffer, OffsetBuffer, ScalarBuffer};
use datafusion::arrow::datatypes::DataType;
use datafusion::common::{exec_err, internal_err, Result};
use std::hint::select_unpredictable;
use std::sync::Arc;

/// The longest key packed into a slot; the top byte of the `u128` holds the length.
pub(crate) const MAX_PACKED: usize = 15;
/// Top byte of a long key's slot key (a packed key's top byte is its length, <= 15).
const LONG_MARK: u128 = 0xFF << 120;
/// No key packs to this value (a long key's bits 64..120 are zero), so it marks an
/// empty slot, and "no previous row".
const NO_KEY: u128 = u128::MAX;
/// How many runs of equal keys ahead the table lines are prefetched (a line comes from
/// the shared cache or memory in about as long as the loop takes for a few dozen runs;
/// 48 took 2–4% less CPU than 16 on time-ordered data).
const PREFETCH_AHEAD: usize = 48;

/// One table slot: a whole cache line holds two, and none straddles two lines.
#[derive(Clone, Copy)]
#[repr(C, align(32))]
struct Slot {
    /// The packed key, `LONG_MARK | hash` for a key longer than `MAX_PACKED`, or
    /// `NO_KEY` when empty.
    key: u128,
    group: u32,
}

const EMPTY: Slot = Slot {
    key: NO_KEY,
    group: 0,
};

/// Assigns each distinct key (and NULL) a dense group index, 0, 1, 2, ... in order of
/// first appearance, and gives the keys back as an array in that order.
pub struct StringKeyMap {
    slots: Vec<Slot>,
    /// Slots in use.
    used: usize,
    /// Every group's key bytes, one after another; `ends[g]` is where group g's end.
    bytes: Vec<u8>,
    ends: Vec<usize>,
    null_group: Option<usize>,
    seeds: [u64; 2],
    /// The current batch's runs (kept to reuse the allocation).
    scratch: Vec<Run>,
    /// Groups this map is expected to end with (0: unknown), see [`Self::expecting`].
    expected: usize,
}

/// Rows of a batch in a row with the same key, up to row `end` (exclusive).
struct Run {
    key: u128,
    hash: u64,
    end: u32,
}

impl Default for StringKeyMap {
    fn default() -> Self {
        Self::new()
    }
}

#[inline]
fn fold_mul(a: u64, b: u64) -> u64 {
    let full = (a as u128) * (b as u128);
    (full as u64) ^ ((full >> 64) as u64)
}

/// Two odd random words to seed [`hash_packed`] and [`hash_long`] with.
pub(crate) fn random_seeds() -> [u64; 2] {
    use std::hash::{BuildHasher, Hasher};
    let state = std::collections::hash_map::RandomState::new();
    let word = |n: u64| {
        let mut h = state.build_hasher();
        h.write_u64(n);
        h.finish() | 1
    };
    [word(1), word(2)]
}

/// The hash of a [`pack`]ed key under `seeds`.
#[inline]
pub(crate) fn hash_packed(key: u128, seeds: [u64; 2]) -> u64 {
    fold_mul((key as u64) ^ seeds[0], ((key >> 64) as u64) ^ seeds[1])
}

/// The hash of a key too long to pack under `seeds`.
pub(crate) fn hash_long(bytes: &[u8], seeds: [u64; 2]) -> u64 {
    let mut h = seeds[0] ^ bytes.len() as u64;
    let mut chunks = bytes.chunks_exact(8);
    for c in &mut chunks {
        h = fold_mul(h ^ u64::from_le_bytes(c.try_into().unwrap()), seeds[1]);
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let mut buf = [0u8; 8];
        buf[..rest.len()].copy_from_slice(rest);
        h = fold_mul(h ^ u64::from_le_bytes(buf), seeds[1]);
    }
    fold_mul(h, seeds[0])
}

/// Row `i`'s key of `keys` (whose view is `view`) packed, or [`LONG_MARK`].
#[inline(always)]
fn pack_view(keys: &StringViewArray, i: usize, view: u128) -> u128 {
    let len = view as u32 as usize;
    if len <= 12 {
        // The view holds the bytes itself, after the 4-byte length; mask off anything
        // past the key so that equal keys pack equally.
        let data = (view >> 32) & ((1u128 << (len * 8)) - 1);
        data | ((len as u128) << 120)
    } else if len <= MAX_PACKED {
        pack_9_to_15(keys.value(i).as_bytes())
    } else {
        LONG_MARK
    }
}

/// `keys` (string views) packed as [`pack`] does, one 16-byte integer per row (NULLs
/// kept), when every key has at most [`MAX_PACKED`] bytes; else None. A clustered
/// aggregation hands rows to another partition's map with their keys so (see
/// [`crate::clustered_aggregate`]): packed by the sender, which has just read them,
/// they spare the map a load per row from the string buffers another core wrote (the
/// largest stall of its lookups on time-ordered data, after the table's own).
pub(crate) fn packed_keys(keys: &dyn Array) -> Option<ArrayRef> {
    let keys = keys.as_any().downcast_ref::<StringViewArray>()?;
    if let Some(nulls) = keys.logical_nulls() {
        // A NULL's view may hold anything, so each row is looked at first.
        let mut packed = Vec::with_capacity(keys.len());
        for (i, &view) in keys.views().iter().enumerate() {
            packed.push(match nulls.is_valid(i) {
                true => match pack_view(keys, i, view) {
                    LONG_MARK => return None,
                    key => key as i128,
                },
                false => 0,
            });
        }
        return Some(Arc::new(Decimal128Array::new(
            ScalarBuffer::from(packed),
            Some(nulls),
        )));
    }
    // (One pointer at least, so that an inline view can look one up, unused, without
    // a branch.)
    let buffers: Vec<*const u8> = keys
        .data_buffers()
        .iter()
        .map(|b| b.as_ptr())
        .chain([std::ptr::null()])
        .collect();
    // (A vectorised pass of its own: tracked in the loop below, it was a store per row.)
    if keys
        .views()
        .iter()
        .any(|&view| view as u32 as usize > MAX_PACKED)
    {
        return None;
    }
    // One way for every row, inline or not, with no branch between them: on person keys
    // of 9 and 13 bytes in random order (user and device ids), that branch missed so
    // often that it cost more than the rest.
    let packed: Vec<i128> = keys
        .views()
        .iter()
        .map(|view| {
            let len = *view as u32 as usize;
            let inline = len <= 12;
            let (buffer, offset) = ((view >> 64) as u32 as usize, (view >> 96) as u32 as usize);
            // Where the key's bytes start: after the view's length, or in its buffer.
            let in_buffer = buffers[select_unpredictable(inline, 0, buffer)].wrapping_add(offset);
            let in_view = (view as *const u128).cast::<u8>().wrapping_add(4);
            let at = select_unpredictable(inline, in_view, in_buffer);
            // `pack_9_to_15`'s two loads, of 9 bytes or more even from a shorter key,
            // whose extra bytes are masked off below.
            let n = len.clamp(9, MAX_PACKED);
            // SAFETY: an inline key reads n <= 12 bytes of its 12 after the length; an
            // out-of-line key reads n <= len of its bytes, which lie in its buffer from
            // its offset (the array's invariant).
            let (lo, tail) = unsafe {
                (
                    std::ptr::read_unaligned(at.cast::<u64>()),
                    std::ptr::read_unaligned(at.add(n - 8).cast::<u64>()),
                )
            };
            let bytes = (lo as u128 | ((tail >> (8 * (16 - n))) as u128) << 64)
                & ((1u128 << (8 * len.min(MAX_PACKED))) - 1);
            (bytes | (len as u128) << 120) as i128
        })
        .collect();
    Some(Arc::new(Decimal128Array::new(
        ScalarBuffer::from(packed),
        None,
    )))
}

/// A key of at most 15 bytes as one integer: the bytes, then the length in the top byte.
#[inline]
pub(crate) fn pack(bytes: &[u8]) -> u128 {
    let mut buf = [0u8; 16];
    buf[..bytes.len()].copy_from_slice(bytes);
    buf[15] = bytes.len() as u8;
    u128::from_le_bytes(buf)
}

/// [`pack`] for 9 to 15 bytes with two overlapping 8-byte loads (no byte copies, which
/// stall the load that reads them back).
#[inline]
pub(crate) fn pack_9_to_15(bytes: &[u8]) -> u128 {
    let len = bytes.len();
    debug_assert!((9..=MAX_PACKED).contains(&len));
    let lo = u64::from_le_bytes(bytes[..8].try_into().unwrap());
    // The last 8 bytes; the ones past byte 8 are its top len - 8 bytes.
    let tail = u64::from_le_bytes(bytes[len - 8..].try_into().unwrap());
    let hi = tail >> (8 * (16 - len));
    lo as u128 | (hi as u128) << 64 | (len as u128) << 120
}

/// Ask for the cache line of `value` ahead of its use (a hint; nothing on other CPUs).
#[inline]
pub(crate) fn prefetch<T>(value: &T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is only a hint; the pointer is to a live value.
    unsafe {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        _mm_prefetch::<_MM_HINT_T0>((value as *const T).cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = value;
}

/// Tables of at least this many bytes get huge pages and are kept for reuse.
const LARGE_TABLE: usize = 4 << 20;
/// The most bytes of freed tables kept for the next ones (see [`SPARE_TABLES`]).
const SPARE_TABLES_BYTES: usize = 128 << 20;

/// Large tables freed by finished maps, kept for the next maps of their size. A fresh
/// table's pages come from the kernel, which zeroes them on first touch; in a virtual
/// machine that also makes the host back them again, and on 10M time-ordered events
/// that was 5% of a funnel's CPU time, paid again by every query. Refilling a kept
/// table with `EMPTY` costs a fraction of that. Bounded by [`SPARE_TABLES_BYTES`].
static SPARE_TABLES: std::sync::Mutex<Vec<Vec<Slot>>> = std::sync::Mutex::new(Vec::new());

fn table_bytes(table: &Vec<Slot>) -> usize {
    table.capacity() * std::mem::size_of::<Slot>()
}

/// A kept table of exactly `n` slots, if there is one.
fn spare_table(n: usize) -> Option<Vec<Slot>> {
    let mut spare = SPARE_TABLES.lock().unwrap_or_else(|e| e.into_inner());
    let i = spare.iter().position(|t| t.capacity() == n)?;
    Some(spare.swap_remove(i))
}

/// Keep a large table that is no longer used, dropping the smallest kept ones (or this
/// one) to stay within the bound.
fn keep_table(mut table: Vec<Slot>) {
    if table_bytes(&table) < LARGE_TABLE || table_bytes(&table) > SPARE_TABLES_BYTES {
        return;
    }
    table.clear();
    let mut spare = SPARE_TABLES.lock().unwrap_or_else(|e| e.into_inner());
    spare.push(table);
    spare.sort_unstable_by_key(|t| std::cmp::Reverse(t.capacity()));
    let mut kept = 0;
    spare.retain(|t| {
        kept += table_bytes(t);
        kept <= SPARE_TABLES_BYTES
    });
}

/// An empty vector with room for exactly `n` slots. A large one is a kept table when
/// there is one; a new one asks for huge pages: its lookups land anywhere in it, and
/// with 4 KiB pages nearly every one would also miss the TLB.
fn unfilled_table(n: usize) -> Vec<Slot> {
    if n * std::mem::size_of::<Slot>() >= LARGE_TABLE {
        if let Some(slots) = spare_table(n) {
            return slots;
        }
    }
    let slots = Vec::with_capacity(n);
    #[cfg(target_os = "linux")]
    if n * std::mem::size_of::<Slot>() >= LARGE_TABLE {
        const HUGE: usize = 2 << 20;
        let start = slots.as_ptr() as usize;
        let end = start + n * std::mem::size_of::<Slot>();
        let (first, last) = (start.next_multiple_of(HUGE), end / HUGE * HUGE);
        if last > first {
            // SAFETY: advice on pages of this vector's own allocation, not yet touched;
            // failure only means ordinary pages.
            unsafe {
                libc::madvise(
                    first as *mut libc::c_void,
                    last - first,
                    libc::MADV_HUGEPAGE,
                );
            }
        }
    }
    slots
}

/// Slots of the table being built by [`StringKeyMap::grow`], emptied just before first
/// use: each of its two halves is written from its start up to `ready[half]`.
struct Doubling<'a> {
    slots: &'a mut [std::mem::MaybeUninit<Slot>],
    half: usize,
    ready: [usize; 2],
}

impl Doubling<'_> {
    /// Slot `i`, emptying it and a few after it when it was not written yet.
    #[inline]
    fn slot(&mut self, i: usize) -> &mut Slot {
        let h = i / self.half;
        if i >= self.ready[h] {
            let end = (i + 64).min((h + 1) * self.half);
            for s in &mut self.slots[self.ready[h]..end] {
                s.write(EMPTY);
            }
            self.ready[h] = end;
        }
        // SAFETY: every slot below `ready[h]` of half h was written.
        unsafe { self.slots[i].assume_init_mut() }
    }
}

impl Drop for StringKeyMap {
    fn drop(&mut self) {
        keep_table(std::mem::take(&mut self.slots));
    }
}

impl StringKeyMap {
    pub fn new() -> Self {
        Self {
            slots: vec![EMPTY; 1024],
            used: 0,
            bytes: Vec::new(),
            ends: Vec::new(),
            null_group: None,
            // Per-map seeds, so that keys chosen to collide in one process do not in
            // another.
            seeds: random_seeds(),
            scratch: Vec::new(),
            expected: 0,
        }
    }

    /// This map will likely end with `groups` groups (the last aggregation of the same
    /// plan did): the first key looked up in the table makes it that size at once,
    /// instead of doubling it about twenty times and placing every key again each time
    /// (2–3% of an aggregation over 10M time-ordered events). Keys pushed in order
    /// ([`Self::push_sorted`]) need no table, and do not make one.
    pub fn expecting(mut self, groups: usize) -> Self {
        self.expected = groups;
        self
    }

    /// The table sized for [`Self::expecting`]'s groups, once, before its first use.
    #[inline]
    fn presize(&mut self) {
        if self.expected > 0 {
            self.presize_now();
        }
    }

    #[cold]
    fn presize_now(&mut self) {
        // At most half full, as grow keeps it; past 2^26 slots (2 GiB) growing is cheap
        // next to the rest.
        let expected = std::mem::take(&mut self.expected);
        // Room for the keys' bytes too (a packed key's 16 are written whole).
        self.ends.reserve(expected.saturating_sub(self.ends.len()));
        self.bytes
            .reserve((16 * expected).saturating_sub(self.bytes.len()));
        let n = (2 * expected + 1).next_power_of_two().min(1 << 26);
        if n <= self.slots.len() {
            return;
        }
        let mut table = unfilled_table(n);
        table.resize(n, EMPTY);
        for slot in self.slots.iter().filter(|s| s.key != NO_KEY) {
            let mut i = self.slot_hash(slot.key) as usize & (n - 1);
            while table[i].key != NO_KEY {
                i = (i + 1) & (n - 1);
            }
            table[i] = *slot;
        }
        keep_table(std::mem::replace(&mut self.slots, table));
    }

    /// The number of groups so far.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Bytes held, for memory accounting.
    pub fn size(&self) -> usize {
        self.slots.capacity() * std::mem::size_of::<Slot>()
            + self.bytes.capacity()
            + self.ends.capacity() * std::mem::size_of::<usize>()
            + self.scratch.capacity() * std::mem::size_of::<Run>()
    }

    #[inline]
    fn hash_packed(&self, key: u128) -> u64 {
        hash_packed(key, self.seeds)
    }

    fn hash_long(&self, bytes: &[u8]) -> u64 {
        hash_long(bytes, self.seeds)
    }

    /// The hash a slot's key was placed by (a long key carries its own).
    #[inline]
    fn slot_hash(&self, key: u128) -> u64 {
        if key >> 120 == 0xFF {
            key as u64
        } else {
            self.hash_packed(key)
        }
    }

    #[inline]
    fn home(&self, hash: u64) -> usize {
        hash as usize & (self.slots.len() - 1)
    }

    /// Group `group`'s key bytes (empty for the NULL group).
    pub fn key(&self, group: usize) -> &[u8] {
        self.key_bytes(group)
    }

    fn key_bytes(&self, group: usize) -> &[u8] {
        let start = if group == 0 { 0 } else { self.ends[group - 1] };
        &self.bytes[start..self.ends[group]]
    }

    /// The number the next new group gets.
    fn next_group(&self) -> Result<u32> {
        let group = self.ends.len();
        if group >= u32::MAX as usize {
            return exec_err!("more than {} groups in one aggregation", u32::MAX);
        }
        Ok(group as u32)
    }

    fn new_group(&mut self, bytes: &[u8]) -> Result<u32> {
        let group = self.next_group()?;
        self.bytes.extend_from_slice(bytes);
        self.ends.push(self.bytes.len());
        Ok(group)
    }

    /// [`Self::new_group`] for a [`pack`]ed key: all 16 bytes are stored at once and cut
    /// to its length (a call to copy 9 to 15 bytes cost more than the copy, 1% of an
    /// attribution over 10M time-ordered events).
    fn new_packed_group(&mut self, key: u128) -> Result<u32> {
        let group = self.next_group()?;
        let end = self.bytes.len() + (key >> 120) as usize;
        self.bytes.extend_from_slice(&key.to_le_bytes());
        self.bytes.truncate(end);
        self.ends.push(end);
        Ok(group)
    }

    fn null(&mut self) -> Result<usize> {
        match self.null_group {
            Some(g) => Ok(g),
            None => {
                let g = self.new_group(&[])? as usize;
                self.null_group = Some(g);
                Ok(g)
            }
        }
    }

    /// Double the table, placing every key again. A key moves from its home h to h or
    /// h + n, so placing them in the old table's order walks both halves of the new
    /// one from their starts: each half is emptied just ahead of the keys placed in it,
    /// while its lines are in cache, instead of in a pass of its own beforehand.
    fn grow(&mut self) {
        let half = self.slots.len();
        let mut doubled = unfilled_table(2 * half);
        let mut new = Doubling {
            slots: &mut doubled.spare_capacity_mut()[..2 * half],
            half,
            ready: [0, half],
        };
        let mask = 2 * half - 1;
        for slot in self.slots.iter().filter(|s| s.key != NO_KEY) {
            let mut i = self.slot_hash(slot.key) as usize & mask;
            loop {
                let at = new.slot(i);
                if at.key == NO_KEY {
                    *at = *slot;
                    break;
                }
                i = (i + 1) & mask;
            }
        }
        new.slot(half - 1);
        new.slot(2 * half - 1);
        // SAFETY: both halves were written to their ends just above.
        unsafe { doubled.set_len(2 * half) };
        keep_table(std::mem::replace(&mut self.slots, doubled));
    }

    /// Put a new key in the empty slot `i` found by a probe (`bytes`: a long key's; a
    /// packed key holds its own).
    #[inline(never)]
    fn insert_at(&mut self, i: usize, key: u128, bytes: Option<&[u8]>) -> Result<usize> {
        let group = match bytes {
            Some(bytes) => self.new_group(bytes)?,
            None => self.new_packed_group(key)?,
        };
        self.slots[i] = Slot { key, group };
        self.used += 1;
        if self.used * 2 > self.slots.len() {
            self.grow();
        }
        Ok(group as usize)
    }

    #[inline]
    fn intern_packed(&mut self, key: u128, hash: u64) -> Result<usize> {
        let mask = self.slots.len() - 1;
        let mut i = self.home(hash);
        loop {
            let slot = self.slots[i];
            if slot.key == key {
                return Ok(slot.group as usize);
            }
            if slot.key == NO_KEY {
                return self.insert_at(i, key, None);
            }
            i = (i + 1) & mask;
        }
    }

    fn intern_long(&mut self, bytes: &[u8]) -> Result<usize> {
        let hash = self.hash_long(bytes);
        let key = LONG_MARK | hash as u128;
        let mask = self.slots.len() - 1;
        let mut i = self.home(hash);
        loop {
            let slot = self.slots[i];
            if slot.key == key && self.key_bytes(slot.group as usize) == bytes {
                return Ok(slot.group as usize);
            }
            if slot.key == NO_KEY {
                return self.insert_at(i, key, Some(bytes));
            }
            i = (i + 1) & mask;
        }
    }

    /// Append the group of each row of `keys` (a string array) to `groups`.
    pub fn intern(&mut self, keys: &dyn Array, groups: &mut Vec<usize>) -> Result<()> {
        self.presize();
        groups.reserve(keys.len());
        match keys.data_type() {
            DataType::Utf8View => self.intern_views(
                keys.as_any().downcast_ref::<StringViewArray>().unwrap(),
                groups,
            ),
            DataType::Utf8 => {
                self.intern_offsets(keys.as_any().downcast_ref::<StringArray>().unwrap(), groups)
            }
            DataType::LargeUtf8 => self.intern_offsets(
                keys.as_any().downcast_ref::<LargeStringArray>().unwrap(),
                groups,
            ),
            DataType::Decimal128(..) => {
                let keys = keys.as_any().downcast_ref::<Decimal128Array>().unwrap();
                self.runs_of_packed(keys);
                // (No key of a packed column is long.)
                self.intern_runs(groups, |_| &[])
            }
            other => internal_err!("string key map given a {other} key"),
        }
    }

    /// Append the group of each row of `keys`, assuming the keys arrive in ascending
    /// order (data sorted by person): a row equal to the last group's key joins it, a
    /// greater one starts a new group, and nothing is hashed. Returns false, with the
    /// map and `groups` as they were, at the first NULL or key below the last one; the
    /// caller then calls [`Self::index_all`] and [`Self::intern`].
    pub fn push_sorted(&mut self, keys: &dyn Array, groups: &mut Vec<usize>) -> Result<bool> {
        // Packed keys ([`packed_keys`]) come only from partitions not sorted by key.
        if keys.null_count() > 0 || matches!(keys.data_type(), DataType::Decimal128(..)) {
            return Ok(false);
        }
        match keys.data_type() {
            DataType::Utf8View => {
                let keys = keys.as_any().downcast_ref::<StringViewArray>().unwrap();
                // A row whose view equals the previous row's has its key: the same inline
                // bytes, or the same bytes in the same buffer. One person's rows often do
                // (short keys, or keys read from a dictionary page), and then there is no
                // byte comparison.
                let views = keys.views();
                self.push_sorted_rows(
                    keys.len(),
                    |i| keys.value(i).as_bytes(),
                    |i| i > 0 && views[i] == views[i - 1],
                    groups,
                )
            }
            DataType::Utf8 => {
                let keys = keys.as_any().downcast_ref::<StringArray>().unwrap();
                self.push_sorted_rows(keys.len(), |i| keys.value(i).as_bytes(), |_| false, groups)
            }
            DataType::LargeUtf8 => {
                let keys = keys.as_any().downcast_ref::<LargeStringArray>().unwrap();
                self.push_sorted_rows(keys.len(), |i| keys.value(i).as_bytes(), |_| false, groups)
            }
            other => internal_err!("string key map given a {other} key"),
        }
    }

    fn push_sorted_rows<'a>(
        &mut self,
        rows: usize,
        value: impl Fn(usize) -> &'a [u8],
        same_as_previous_row: impl Fn(usize) -> bool,
        groups: &mut Vec<usize>,
    ) -> Result<bool> {
        let (groups_before, bytes_before, rows_before) =
            (self.ends.len(), self.bytes.len(), groups.len());
        groups.reserve(rows);
        for i in 0..rows {
            if same_as_previous_row(i) {
                // (Row i - 1 of this batch was pushed last.)
                let previous = groups[groups.len() - 1];
                groups.push(previous);
                continue;
            }
            let key = value(i);
            let group = match self.ends.len().checked_sub(1) {
                Some(last) => match key.cmp(self.key_bytes(last)) {
                    std::cmp::Ordering::Equal => last,
                    std::cmp::Ordering::Greater => self.new_group(key)? as usize,
                    std::cmp::Ordering::Less => {
                        self.ends.truncate(groups_before);
                        self.bytes.truncate(bytes_before);
                        groups.truncate(rows_before);
                        return Ok(false);
                    }
                },
                None => self.new_group(key)? as usize,
            };
            groups.push(group);
        }
        Ok(true)
    }

    /// Place every group added by [`Self::push_sorted`] in the table, so that
    /// [`Self::intern`] finds them.
    pub fn index_all(&mut self) {
        self.presize();
        let indexed = self.used + usize::from(self.null_group.is_some());
        for group in indexed..self.ends.len() {
            let bytes = self.key_bytes(group);
            let (key, hash) = if bytes.len() <= MAX_PACKED {
                let key = pack(bytes);
                (key, self.hash_packed(key))
            } else {
                let hash = self.hash_long(bytes);
                (LONG_MARK | hash as u128, hash)
            };
            let mask = self.slots.len() - 1;
            let mut i = self.home(hash);
            while self.slots[i].key != NO_KEY {
                i = (i + 1) & mask;
            }
            self.slots[i] = Slot {
                key,
                group: group as u32,
            };
            self.used += 1;
            if self.used * 2 > self.slots.len() {
                self.grow();
            }
        }
    }

    /// Pass 1: the batch as runs of equal keys, each with its packed key (`NO_KEY` for
    /// NULL, `LONG_MARK` for a long key, which is a run of its own), its hash and the row
    /// after it, so that pass 2 can prefetch the slots of the runs ahead.
    fn pack_views(&mut self, keys: &StringViewArray) {
        let nulls = keys.logical_nulls();
        self.find_runs(keys.views().iter().enumerate().map(|(i, &view)| {
            if nulls.as_ref().is_some_and(|n| n.is_null(i)) {
                NO_KEY
            } else {
                pack_view(keys, i, view)
            }
        }));
    }

    /// [`Self::pack_views`] for keys packed already ([`packed_keys`]).
    fn runs_of_packed(&mut self, keys: &Decimal128Array) {
        let nulls = keys.logical_nulls();
        if nulls.is_none() {
            return self.find_runs(keys.values().iter().map(|&key| key as u128));
        }
        self.find_runs(keys.values().iter().enumerate().map(|(i, &key)| {
            if nulls.as_ref().is_some_and(|n| n.is_null(i)) {
                NO_KEY
            } else {
                key as u128
            }
        }));
    }

    #[inline(always)]
    fn find_runs(&mut self, keys: impl Iterator<Item = u128>) {
        let mut runs = std::mem::take(&mut self.scratch);
        runs.clear();
        for (i, key) in keys.enumerate() {
            match runs.last_mut() {
                Some(run) if run.key == key && key != LONG_MARK => run.end = i as u32 + 1,
                _ => {
                    let hash = if key == NO_KEY || key == LONG_MARK {
                        0
                    } else {
                        self.hash_packed(key)
                    };
                    runs.push(Run {
                        key,
                        hash,
                        end: i as u32 + 1,
                    });
                }
            }
        }
        self.scratch = runs;
    }

    fn intern_views(&mut self, keys: &StringViewArray, groups: &mut Vec<usize>) -> Result<()> {
        self.pack_views(keys);
        self.intern_runs(groups, |row| keys.value(row).as_bytes())
    }

    /// Pass 2: each run of [`Self::find_runs`] looked up (a long key's bytes are
    /// `long_key(its row)`), its group given to its rows.
    #[inline(always)]
    fn intern_runs<'a>(
        &mut self,
        groups: &mut Vec<usize>,
        long_key: impl Fn(usize) -> &'a [u8],
    ) -> Result<()> {
        let runs = std::mem::take(&mut self.scratch);
        // The first runs' lines too, which the loop below would not prefetch.
        for run in runs.iter().take(PREFETCH_AHEAD) {
            prefetch(&self.slots[self.home(run.hash)]);
        }
        // Every row's slot written in place (a run is mostly one row on time-ordered data,
        // where an `extend` per run cost more than the store).
        let first = groups.len();
        groups.resize(first + runs.last().map_or(0, |run| run.end as usize), 0);
        let out = &mut groups[first..];
        let mut start = 0;
        for (r, run) in runs.iter().enumerate() {
            // Runs, not rows, ahead: on data sorted by person a run is one person's rows,
            // and a few rows ahead would still be the current person.
            if let Some(ahead) = runs.get(r + PREFETCH_AHEAD) {
                prefetch(&self.slots[self.home(ahead.hash)]);
            }
            // (A packed key's top byte is its length; NULL's and a long key's are 0xFF.)
            let group = if run.key >> 120 <= MAX_PACKED as u128 {
                self.intern_packed(run.key, run.hash)?
            } else if run.key == NO_KEY {
                self.null()?
            } else {
                self.intern_long(long_key(start))?
            };
            let end = run.end as usize;
            out[start] = group;
            if end - start > 1 {
                out[start + 1..end].fill(group);
            }
            start = end;
        }
        self.scratch = runs;
        Ok(())
    }

    fn intern_offsets<O: OffsetSizeTrait>(
        &mut self,
        keys: &GenericStringArray<O>,
        groups: &mut Vec<usize>,
    ) -> Result<()> {
        let mut last: Option<(&[u8], usize)> = None;
        for i in 0..keys.len() {
            if keys.is_null(i) {
                groups.push(self.null()?);
                continue;
            }
            let bytes = keys.value(i).as_bytes();
            let group = match last {
                Some((b, g)) if b == bytes => g,
                _ if bytes.len() <= MAX_PACKED => {
                    let key = if bytes.len() > 8 {
                        pack_9_to_15(bytes)
                    } else {
                        pack(bytes)
                    };
                    self.intern_packed(key, self.hash_packed(key))?
                }
                _ => self.intern_long(bytes)?,
            };
            last = Some((bytes, group));
            groups.push(group);
        }
        Ok(())
    }

    /// Every group's key in group order as an array of `data_type`, and an empty map.
    pub fn take_keys(&mut self, data_type: &DataType) -> Result<ArrayRef> {
        let mut map = std::mem::take(self);
        let nulls = map.null_group.map(|g| {
            let mut valid = vec![true; map.ends.len()];
            valid[g] = false;
            NullBuffer::from(valid)
        });
        let values = Buffer::from_vec(std::mem::take(&mut map.bytes));
        // SAFETY (all three): every key is the whole of a string of a string array (or
        // packed from one), so valid UTF-8, and the keys lie back to back in `values`.
        let keys = match data_type {
            DataType::LargeUtf8 => Arc::new(unsafe {
                LargeStringArray::new_unchecked(offsets::<i64>(&map.ends)?, values, nulls)
            }) as ArrayRef,
            DataType::Utf8 => Arc::new(unsafe {
                StringArray::new_unchecked(offsets::<i32>(&map.ends)?, values, nulls)
            }) as ArrayRef,
            // Views into the key bytes as they are: no copy and no check of the bytes,
            // which together were 2% of a retention matrix over 10M time-ordered events.
            DataType::Utf8View if values.len() <= u32::MAX as usize => {
                let mut start = 0;
                let views: Vec<u128> = (map.ends.iter())
                    .map(|&end| {
                        let view = make_view(&values[start..end], 0, start as u32);
                        start = end;
                        view
                    })
                    .collect();
                Arc::new(unsafe {
                    StringViewArray::new_unchecked(ScalarBuffer::from(views), vec![values], nulls)
                }) as ArrayRef
            }
            // (Views address their bytes with 32-bit offsets into one buffer here.)
            DataType::Utf8View => {
                return exec_err!("group keys exceed {} bytes", u32::MAX);
            }
            other => return internal_err!("string key map asked for {other} keys"),
        };
        Ok(keys)
    }
}

fn offsets<O: OffsetSizeTrait>(ends: &[usize]) -> Result<OffsetBuffer<O>> {
    let mut out = Vec::with_capacity(ends.len() + 1);
    out.push(O::usize_as(0));
    for &end in ends {
        match O::from_usize(end) {
            Some(o) => out.push(o),
            None => return exec_err!("group keys exceed {} bytes", O::MAX_OFFSET),
        }
    }
    Ok(OffsetBuffer::new(ScalarBuffer::from(out)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_random::Random;
    use datafusion::arrow::array::{AsArray, StringViewBuilder};
    use std::collections::HashMap;

    /// Keys around every length boundary (12 inline in a view, 15 packed), the empty
    /// key, and keys that differ only in their last byte or in trailing zero bytes.
    fn random_keys(rng: &mut Random, n: usize) -> Vec<Option<String>> {
        let lengths = [0usize, 1, 5, 11, 12, 13, 14, 15, 16, 17, 31, 40];
        // More keys than the first table holds, so that it grows (and places keys again).
        let pool: Vec<String> = (0..3000)
            .map(|i| {
                let len = lengths[i % lengths.len()];
                let mut s: String = (0..len)
                    .map(|_| (b'a' + rng.below(4) as u8) as char)
                    .collect();
                if i % 7 == 0 && len > 0 {
                    s.pop();
                    s.push('\0');
                }
                s
            })
            .collect();
        (0..n)
            .map(|i| {
                if rng.below(40) == 0 {
                    None
                } else if i > 0 && rng.below(3) == 0 {
                    // Runs of one key, as on person-sorted data.
                    Some(pool[(i - 1) % pool.len()].clone())
                } else {
                    Some(pool[rng.below(pool.len() as u64) as usize].clone())
                }
            })
            .collect()
    }

    fn check(keys: &[Option<String>], arrays: &[ArrayRef], out_type: &DataType) {
        let mut map = StringKeyMap::new();
        let mut groups = Vec::new();
        for a in arrays {
            map.intern(a.as_ref(), &mut groups).unwrap();
        }
        assert_eq!(groups.len(), keys.len());
        // Same key, same group; different keys, different groups; dense in first-seen order.
        let mut first: HashMap<&Option<String>, usize> = HashMap::new();
        let mut next = 0;
        for (k, &g) in keys.iter().zip(&groups) {
            let expected = *first.entry(k).or_insert_with(|| {
                next += 1;
                next - 1
            });
            assert_eq!(g, expected, "key {k:?}");
        }
        assert_eq!(map.len(), first.len());
        let back = map.take_keys(out_type).unwrap();
        assert_eq!(back.data_type(), out_type);
        assert!(map.is_empty());
        let back = datafusion::arrow::compute::cast(&back, &DataType::Utf8).unwrap();
        let back = back.as_string::<i32>();
        for (k, &g) in first.iter() {
            let got = back.is_valid(g).then(|| back.value(g).to_string());
            assert_eq!(&got, *k);
        }
    }

    #[test]
    fn same_key_same_group_in_every_string_type() {
        let mut rng = Random(7);
        for _ in 0..6 {
            let keys = random_keys(&mut rng, 8000);
            // Split into batches, so runs and groups continue across batches.
            let parts: Vec<&[Option<String>]> = keys.chunks(333).collect();
            let views: Vec<ArrayRef> = parts
                .iter()
                .map(|p| Arc::new(StringViewArray::from_iter(p.iter().cloned())) as ArrayRef)
                .collect();
            let utf8: Vec<ArrayRef> = parts
                .iter()
                .map(|p| Arc::new(StringArray::from_iter(p.iter().cloned())) as ArrayRef)
                .collect();
            let large: Vec<ArrayRef> = parts
                .iter()
                .map(|p| Arc::new(LargeStringArray::from_iter(p.iter().cloned())) as ArrayRef)
                .collect();
            check(&keys, &views, &DataType::Utf8View);
            check(&keys, &utf8, &DataType::Utf8);
            check(&keys, &large, &DataType::LargeUtf8);
        }
    }

    #[test]
    fn packed_keys_find_the_groups_of_their_strings() {
        let mut rng = Random(5);
        let short: Vec<Option<String>> = random_keys(&mut rng, 2000)
            .into_iter()
            .map(|k| k.filter(|k| k.len() <= MAX_PACKED))
            .collect();
        // With NULLs, and without (each runs its own way through the map).
        let no_nulls: Vec<Option<String>> = short
            .iter()
            .map(|k| Some(k.clone().unwrap_or_else(|| "was null".into())))
            .collect();
        for short in [short, no_nulls] {
            packed_and_string_keys_share_groups(short);
        }
        // A key too long to pack: the column is left as it is.
        let long = StringViewArray::from_iter_values(["short", "sixteen bytes!!!"]);
        assert!(packed_keys(&long).is_none());
    }

    fn packed_and_string_keys_share_groups(short: Vec<Option<String>>) {
        let views = StringViewArray::from_iter(short.iter().cloned());
        let packed = packed_keys(&views).expect("no key is longer than 15 bytes");
        assert_eq!(packed.logical_nulls(), views.logical_nulls());
        // Halves as strings and as packed keys, in either order, into one map: each
        // key's group is the one its string alone gets.
        let (mut by_string, mut want) = (StringKeyMap::new(), Vec::new());
        by_string.intern(&views, &mut want).unwrap();
        for packed_first in [false, true] {
            let mut map = StringKeyMap::new();
            let mut got = Vec::new();
            let (a, b) = (views.slice(0, 1000), packed.slice(1000, 1000));
            if packed_first {
                map.intern(b.as_ref(), &mut got).unwrap();
                map.intern(&a, &mut got).unwrap();
                got.rotate_left(1000);
            } else {
                map.intern(&a, &mut got).unwrap();
                map.intern(b.as_ref(), &mut got).unwrap();
            }
            for (row, (&g, &w)) in got.iter().zip(&want).enumerate() {
                for (other, (&g2, &w2)) in got.iter().zip(&want).enumerate().skip(row + 1).take(50)
                {
                    assert_eq!(g == g2, w == w2, "rows {row} and {other}");
                }
            }
            assert_eq!(map.len(), by_string.len());
            let keys = map.take_keys(&DataType::Utf8).unwrap();
            let keys = keys.as_string::<i32>();
            for (row, &g) in got.iter().enumerate() {
                let key = keys.is_valid(g).then(|| keys.value(g).to_string());
                assert_eq!(key, short[row], "row {row}");
            }
        }
    }

    #[test]
    fn packed_keys_are_their_bytes_packed_from_any_buffer() {
        // Keys of every packable length, inline and out of line, in many small buffers
        // (a buffer index per view), sliced; with NULLs and without (two ways of packing).
        let mut rng = Random(11);
        for with_nulls in [false, true] {
            let mut builder = StringViewBuilder::new().with_fixed_block_size(64);
            let mut want = vec![];
            for _ in 0..3000 {
                let len = rng.below(MAX_PACKED as u64 + 1) as usize;
                let key: String = (0..len)
                    .map(|_| (b' ' + rng.below(95) as u8) as char)
                    .collect();
                if with_nulls && rng.below(20) == 0 {
                    builder.append_null();
                    want.push(None);
                } else {
                    builder.append_value(&key);
                    want.push(Some(pack(key.as_bytes())));
                }
            }
            let views = builder.finish();
            assert!(views.data_buffers().len() > 10);
            let views = views.slice(7, 2900);
            assert_eq!(views.null_count() > 0, with_nulls);
            let packed = packed_keys(&views).expect("no key is longer than 15 bytes");
            let packed = packed.as_any().downcast_ref::<Decimal128Array>().unwrap();
            for (row, want) in want[7..7 + 2900].iter().enumerate() {
                let got = packed.is_valid(row).then(|| packed.value(row) as u128);
                assert_eq!(got, *want, "row {row}");
            }
        }
    }

    #[test]
    fn both_ways_of_packing_agree() {
        for len in 9..=MAX_PACKED {
            let bytes: Vec<u8> = (0..len as u8).map(|b| b.wrapping_mul(37) ^ 0xA5).collect();
            assert_eq!(pack_9_to_15(&bytes), pack(&bytes), "{len} bytes");
        }
    }

    #[test]
    fn bytes_past_a_short_view_do_not_split_a_key() {
        // A sliced view array of keys <= 12 bytes: the padding after each key is zero by
        // the spec, but the map masks it anyway; equal keys must share a group.
        let a = StringViewArray::from_iter_values(["abc", "abcdefghijkl", "abc", "abcdefghijkl"]);
        let mut map = StringKeyMap::new();
        let mut groups = Vec::new();
        map.intern(&a.slice(1, 3), &mut groups).unwrap();
        assert_eq!(groups, vec![0, 1, 0]);
    }

    #[test]
    fn a_map_on_a_kept_table_finds_none_of_the_last_maps_keys() {
        // Enough keys for a table of LARGE_TABLE bytes or more, which is kept when the
        // map is dropped and taken again by the next map that grows to its size.
        let n = LARGE_TABLE / std::mem::size_of::<Slot>();
        let keys = |prefix: &str| -> ArrayRef {
            Arc::new(StringViewArray::from_iter_values(
                (0..n).map(|i| format!("{prefix}{i:011}")),
            ))
        };
        let (first, second) = (keys("a"), keys("b"));
        let mut map = StringKeyMap::new();
        let mut groups = Vec::new();
        map.intern(first.as_ref(), &mut groups).unwrap();
        drop(map);
        // A table not emptied before reuse would give the second map's first keys the
        // first map's groups.
        let mut map = StringKeyMap::new();
        groups.clear();
        map.intern(second.as_ref(), &mut groups).unwrap();
        map.intern(first.as_ref(), &mut groups).unwrap();
        assert!(groups.iter().copied().eq(0..2 * n));
    }

    #[test]
    fn a_map_expecting_its_groups_sizes_its_table_once() {
        let keys: Vec<String> = (0..3000)
            .map(|i| format!("person-{:05}", (i * 7919) % 3000))
            .collect();
        let array = |range: std::ops::Range<usize>| -> ArrayRef {
            Arc::new(StringViewArray::from_iter_values(keys[range].iter()))
        };
        let mut plain = StringKeyMap::new();
        let mut expecting = StringKeyMap::new().expecting(keys.len());
        // Keys in order need no table: none is made.
        let sorted: ArrayRef = Arc::new(StringViewArray::from_iter_values(["a", "b", "c"]));
        let (mut want, mut got) = (Vec::new(), Vec::new());
        assert!(plain.push_sorted(sorted.as_ref(), &mut want).unwrap());
        assert!(expecting.push_sorted(sorted.as_ref(), &mut got).unwrap());
        assert_eq!(expecting.slots.len(), 1024);
        plain.index_all();
        expecting.index_all();
        // The first lookup makes the table big enough for 3000 groups at most half full;
        // it never grows again, and every key gets the group it would have anyway.
        let sizes: Vec<usize> = [0..10, 10..1500, 1500..3000]
            .into_iter()
            .map(|range| {
                plain
                    .intern(array(range.clone()).as_ref(), &mut want)
                    .unwrap();
                expecting.intern(array(range).as_ref(), &mut got).unwrap();
                expecting.slots.len()
            })
            .collect();
        assert_eq!(sizes, [8192; 3]);
        assert_eq!(got, want);
        assert_eq!(expecting.len(), 3003);
    }

    #[test]
    fn kept_tables_are_reused_and_bounded() {
        // A capacity no map asks for (tables are powers of two), so that tests running
        // at the same time neither take this table nor give one of its size.
        let slots = LARGE_TABLE / std::mem::size_of::<Slot>() + 3;
        let table: Vec<Slot> = Vec::with_capacity(slots);
        let at = table.as_ptr();
        keep_table(table);
        let again = spare_table(slots).expect("the table is kept");
        assert_eq!(again.as_ptr(), at);
        assert!(again.is_empty());
        assert!(spare_table(slots).is_none());
        // Neither small tables nor one larger than the bound are kept.
        keep_table(Vec::with_capacity(slots / 2 + 1));
        assert!(spare_table(slots / 2 + 1).is_none());
        let huge = SPARE_TABLES_BYTES / std::mem::size_of::<Slot>() + 1;
        keep_table(Vec::with_capacity(huge));
        assert!(spare_table(huge).is_none());
        let kept: usize = SPARE_TABLES.lock().unwrap().iter().map(table_bytes).sum();
        assert!(kept <= SPARE_TABLES_BYTES);
    }
}
