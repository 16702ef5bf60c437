//! Which output partition a clustered aggregation sends each person's rows and states
//! to, when nothing above it relies on DataFusion's hash partitioning (values in place,
//! see [`crate::clustered_aggregate`]).
//!
//! Rows handed on unaggregated carry their keys packed into 16-byte integers
//! ([`crate::key_map::packed_keys`]); split by those, a row costs one multiplication,
//! where DataFusion's partitioner hashes each key's string again and then walks the
//! hashes a second time to build each partition's indices (5–6% of a retention matrix
//! over 10M time-ordered events). Only where a person goes matters, not which hash:
//! every batch of one execution, of rows (packed or not) or of states, is split by the
//! same function of the key's bytes under the same [`Seeds`], so a person's rows and
//! states meet in one partition.

use datafusion::arrow::array::{
    Array, ArrayAccessor, AsArray, Decimal128Array, RecordBatch, StringViewArray, UInt32Array,
};
use datafusion::arrow::compute::take_record_batch;
use datafusion::arrow::datatypes::DataType;
use datafusion::common::{internal_err, Result};

use crate::key_map::{hash_long, hash_packed, pack, pack_9_to_15, random_seeds, MAX_PACKED};

/// Per-execution seeds: keys chosen to pile into one partition in one query do not in
/// the next (a bad split only costs balance, never answers).
#[derive(Clone, Copy, Debug)]
pub struct Seeds([u64; 2]);

impl Seeds {
    pub fn random() -> Self {
        Seeds(random_seeds())
    }
}

/// The hash of a key's bytes (the same bytes give the same hash from any string array):
/// keys of up to 15 bytes packed into one integer as the key map packs them.
#[inline]
fn hash_bytes(bytes: &[u8], seeds: Seeds) -> u64 {
    match bytes.len() {
        0..=8 => hash_packed(pack(bytes), seeds.0),
        9..=MAX_PACKED => hash_packed(pack_9_to_15(bytes), seeds.0),
        _ => hash_long(bytes, seeds.0),
    }
}

/// Splits batches among `partitions` output partitions by a string key column.
#[derive(Debug)]
pub struct KeySplitter {
    seeds: Seeds,
    /// Each partition's row indices for the batch being split (kept for their room).
    indices: Vec<Vec<u32>>,
}

impl KeySplitter {
    pub fn new(partitions: usize, seeds: Seeds) -> Self {
        KeySplitter {
            seeds,
            indices: vec![Vec::new(); partitions],
        }
    }

    /// The partition of each row's key, in `indices` (NULL keys all go to partition 0).
    fn assign(&mut self, keys: &dyn Array) -> Result<()> {
        match keys.data_type() {
            DataType::Utf8View => {
                self.assign_strings(keys.as_any().downcast_ref::<StringViewArray>().unwrap())
            }
            DataType::Utf8 => self.assign_strings(keys.as_string::<i32>()),
            DataType::LargeUtf8 => self.assign_strings(keys.as_string::<i64>()),
            DataType::Decimal128(..) => {
                // Keys packed already: what [`hash_bytes`] would make of their bytes.
                let keys = keys.as_any().downcast_ref::<Decimal128Array>().unwrap();
                let (values, seeds) = (keys.values(), self.seeds);
                self.assign_rows(keys.len(), keys.logical_nulls(), |i| {
                    hash_packed(values[i] as u128, seeds.0)
                });
            }
            other => return internal_err!("a clustered aggregation split by a {other} key"),
        }
        Ok(())
    }

    /// [`Self::assign_rows`] by the hash of each string's bytes.
    fn assign_strings<'a>(&mut self, keys: impl ArrayAccessor<Item = &'a str>) {
        let seeds = self.seeds;
        self.assign_rows(keys.len(), keys.logical_nulls(), |i| {
            hash_bytes(keys.value(i).as_bytes(), seeds)
        });
    }

    /// Put each of `rows` in its partition's indices, by `hash(row)`.
    #[inline(always)]
    fn assign_rows(
        &mut self,
        rows: usize,
        nulls: Option<datafusion::arrow::buffer::NullBuffer>,
        hash: impl Fn(usize) -> u64,
    ) {
        let n = self.indices.len() as u64;
        for v in &mut self.indices {
            v.clear();
            v.reserve(rows);
        }
        // A row's partition: its hash's top 32 bits (the key map places keys by the
        // bottom ones) scaled to 0..n; NULL keys all go to partition 0.
        if let [a, b] = &mut self.indices[..] {
            // Two partitions (two cores): the row is written to both and only the
            // chosen one's end moves, so that nothing waits on a branch or on the
            // length just stored, as a push would when rows alternate at random.
            let (to_a, to_b) = (a.spare_capacity_mut(), b.spare_capacity_mut());
            let (mut in_a, mut in_b) = (0, 0);
            for i in 0..rows {
                let p = match &nulls {
                    Some(nulls) if nulls.is_null(i) => 0,
                    // (h >> 32) * 2 >> 32: the top bit.
                    _ => (hash(i) >> 63) as usize,
                };
                to_a[in_a].write(i as u32);
                to_b[in_b].write(i as u32);
                in_a += 1 - p;
                in_b += p;
            }
            // SAFETY: each vector had room for every row, and its first `in_*` slots
            // were written (a slot is only passed by once it holds its row).
            unsafe {
                a.set_len(in_a);
                b.set_len(in_b);
            }
        } else {
            for i in 0..rows {
                let p = match &nulls {
                    Some(nulls) if nulls.is_null(i) => 0,
                    _ => (((hash(i) >> 32) * n) >> 32) as usize,
                };
                self.indices[p].push(i as u32);
            }
        }
    }

    /// Call `send(partition, rows)` with the rows of `batch` of each partition that has
    /// some, `keys` being their key column.
    pub fn split(
        &mut self,
        batch: RecordBatch,
        keys: &dyn Array,
        mut send: impl FnMut(usize, RecordBatch) -> Result<()>,
    ) -> Result<()> {
        if self.indices.len() <= 1 {
            return send(0, batch);
        }
        self.assign(keys)?;
        for p in 0..self.indices.len() {
            let rows = &self.indices[p];
            if rows.is_empty() {
                continue;
            }
            if rows.len() == batch.num_rows() {
                return send(p, batch);
            }
            let indices = UInt32Array::from(std::mem::take(&mut self.indices[p]));
            let part = take_record_batch(&batch, &indices)?;
            self.indices[p] = indices
                .into_parts()
                .1
                .into_inner()
                .into_vec()
                .unwrap_or_default();
            send(p, part)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_random::Random;
    use datafusion::arrow::array::{ArrayRef, LargeStringArray, StringArray};
    use datafusion::arrow::datatypes::{Field, Schema};
    use std::collections::HashMap;
    use std::sync::Arc;

    fn random_keys(rng: &mut Random, n: usize) -> Vec<Option<String>> {
        (0..n)
            .map(|_| {
                if rng.below(20) == 0 {
                    return None;
                }
                // Every length from 0 to 40 bytes, from a small alphabet so that keys
                // repeat.
                let len = rng.below(41) as usize;
                Some(
                    (0..len)
                        .map(|_| (b'a' + rng.below(3) as u8) as char)
                        .collect(),
                )
            })
            .collect()
    }

    /// Split `keys` (with their row numbers as a second column) as every string type,
    /// and give each key's partition, checking that every row arrives exactly once and
    /// with its own key.
    fn partitions_of(keys: &[Option<String>], seeds: Seeds, parts: usize) -> Vec<usize> {
        let arrays: Vec<ArrayRef> = vec![
            Arc::new(StringViewArray::from_iter(keys.iter().cloned())),
            Arc::new(StringArray::from_iter(keys.iter().cloned())),
            Arc::new(LargeStringArray::from_iter(keys.iter().cloned())),
        ];
        let mut answers: Vec<Vec<usize>> = vec![];
        for keys_array in arrays {
            let rows = Arc::new(UInt32Array::from_iter_values(0..keys.len() as u32));
            let schema = Arc::new(Schema::new(vec![
                Field::new("k", keys_array.data_type().clone(), true),
                Field::new("row", DataType::UInt32, false),
            ]));
            let batch = RecordBatch::try_new(schema, vec![Arc::clone(&keys_array), rows]).unwrap();
            let mut splitter = KeySplitter::new(parts, seeds);
            let mut partition = vec![usize::MAX; keys.len()];
            // Twice, so that the kept index vectors are reused.
            for _ in 0..2 {
                partition.fill(usize::MAX);
                splitter
                    .split(batch.clone(), keys_array.as_ref(), |p, part| {
                        let rows = part.column(1).as_any().downcast_ref::<UInt32Array>();
                        let part_keys =
                            datafusion::arrow::compute::cast(part.column(0), &DataType::Utf8)?;
                        let part_keys = part_keys.as_any().downcast_ref::<StringArray>();
                        for (j, row) in rows.unwrap().values().iter().enumerate() {
                            let row = *row as usize;
                            assert_eq!(partition[row], usize::MAX, "row {row} sent twice");
                            partition[row] = p;
                            let key = part_keys.unwrap();
                            let got = key.is_valid(j).then(|| key.value(j).to_string());
                            assert_eq!(got, keys[row], "row {row} lost its key");
                        }
                        Ok(())
                    })
                    .unwrap();
                assert!(partition.iter().all(|&p| p < parts), "a row was not sent");
            }
            answers.push(partition);
        }
        assert!(
            answers.windows(2).all(|w| w[0] == w[1]),
            "string types split differently"
        );
        answers.swap_remove(0)
    }

    #[test]
    fn equal_keys_meet_in_one_partition_whatever_their_string_type() {
        let mut rng = Random(7);
        let keys = random_keys(&mut rng, 3000);
        let seeds = Seeds::random();
        for parts in [1, 2, 3, 8] {
            let partition = partitions_of(&keys, seeds, parts);
            let mut of_key: HashMap<&Option<String>, usize> = HashMap::new();
            for (key, &p) in keys.iter().zip(&partition) {
                assert_eq!(*of_key.entry(key).or_insert(p), p, "{key:?} split");
            }
            // A batch split in two again (another input task, another batch) sends
            // the same keys the same way.
            let (a, b) = keys.split_at(1234);
            let again = [
                partitions_of(a, seeds, parts),
                partitions_of(b, seeds, parts),
            ]
            .concat();
            assert_eq!(again, partition);
        }
    }

    #[test]
    fn packed_keys_go_where_their_strings_go() {
        let mut rng = Random(9);
        let keys: Vec<Option<String>> = random_keys(&mut rng, 3000)
            .into_iter()
            .map(|k| k.filter(|k| k.len() <= MAX_PACKED))
            .collect();
        let seeds = Seeds::random();
        let views = StringViewArray::from_iter(keys.iter().cloned());
        let packed = crate::key_map::packed_keys(&views).unwrap();
        for parts in [2, 3] {
            let partition_of = |keys: &dyn Array| {
                let mut splitter = KeySplitter::new(parts, seeds);
                let rows = Arc::new(UInt32Array::from_iter_values(0..keys.len() as u32));
                let schema = Arc::new(Schema::new(vec![Field::new(
                    "row",
                    DataType::UInt32,
                    false,
                )]));
                let batch = RecordBatch::try_new(schema, vec![rows]).unwrap();
                let mut partition = vec![usize::MAX; keys.len()];
                splitter
                    .split(batch, keys, |p, part| {
                        let rows = part.column(0).as_any().downcast_ref::<UInt32Array>();
                        rows.unwrap()
                            .values()
                            .iter()
                            .for_each(|&r| partition[r as usize] = p);
                        Ok(())
                    })
                    .unwrap();
                partition
            };
            assert_eq!(partition_of(packed.as_ref()), partition_of(&views));
        }
    }

    #[test]
    fn distinct_keys_spread_over_every_partition() {
        let keys: Vec<Option<String>> = (0..4000).map(|i| Some(format!("user-{i:08}"))).collect();
        let partition = partitions_of(&keys, Seeds::random(), 4);
        for p in 0..4 {
            let n = partition.iter().filter(|&&q| q == p).count();
            // 1000 expected; 800 is more than six standard deviations below.
            assert!(n > 800, "partition {p} got {n} of 4000 keys");
        }
    }
}
