//! Key groups: the unit in which keyed state is divided between workers.
//!
//! Every key belongs to one of [`KEY_GROUPS`] groups, by a hash that is part of the
//! checkpoint format (CRC-32C of the key bytes, stable across builds and platforms). A run
//! on `n` workers gives worker `w` the contiguous range [`worker_groups`]`(w, n)`, so a key's
//! state lives on exactly one worker. State files keep raw keys, so a checkpoint taken with
//! any number of workers restores onto any other: each worker reads the files and keeps the
//! keys of its own groups ([`super::StateStore::restore_groups`]), as Flink rescales by key
//! group.
//!
//! ```
//! use keel::state::key_group::{key_group, worker_groups, worker_of, KEY_GROUPS};
//! let g = key_group(b"customer-42");
//! assert!(g < KEY_GROUPS);
//! assert!(worker_groups(worker_of(g, 3), 3).contains(&g));
//! ```

use std::ops::Range;

/// The number of key groups: the most workers a keyed pipeline can use, and the granularity
/// of rescaling. Fixed: changing it would move keys between groups in existing checkpoints.
pub const KEY_GROUPS: u16 = 128;

/// The key group of `key`.
#[inline]
pub fn key_group(key: &[u8]) -> u16 {
    (crc32c::crc32c(key) % u32::from(KEY_GROUPS)) as u16
}

/// The key groups of worker `worker` of `workers` (a contiguous range; every group belongs to
/// exactly one worker; ranges differ in size by at most one). `workers` is clamped to
/// `1..=KEY_GROUPS`; a worker beyond that gets an empty range.
pub fn worker_groups(worker: usize, workers: usize) -> Range<u16> {
    let n = workers.clamp(1, usize::from(KEY_GROUPS));
    let g = usize::from(KEY_GROUPS);
    if worker >= n {
        return KEY_GROUPS..KEY_GROUPS;
    }
    ((worker * g / n) as u16)..(((worker + 1) * g / n) as u16)
}

/// The worker of `workers` that owns `group` (the inverse of [`worker_groups`]).
pub fn worker_of(group: u16, workers: usize) -> usize {
    let n = workers.clamp(1, usize::from(KEY_GROUPS));
    // the largest w whose range starts at or before the group: floor(w * G / n) <= group
    // exactly when w < (group + 1) * n / G
    ((usize::from(group) + 1) * n - 1) / usize::from(KEY_GROUPS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_cover_every_group_once_and_agree_with_worker_of() {
        for workers in [1, 2, 3, 4, 5, 7, 8, 16, 100, 128] {
            let mut next = 0;
            for w in 0..workers {
                let r = worker_groups(w, workers);
                assert_eq!(
                    r.start,
                    next,
                    "{workers} workers: worker {w} starts where {} ends",
                    w.max(1) - 1
                );
                assert!(!r.is_empty(), "{workers} workers: worker {w} has no group");
                for g in r.clone() {
                    assert_eq!(worker_of(g, workers), w, "{workers} workers: group {g}");
                }
                next = r.end;
            }
            assert_eq!(next, KEY_GROUPS, "{workers} workers cover every group");
        }
        assert!(worker_groups(200, 200).is_empty());
    }

    #[test]
    fn keys_spread_over_groups() {
        let mut counts = [0u32; KEY_GROUPS as usize];
        for i in 0..128_000u32 {
            counts[usize::from(key_group(format!("customer-{i}").as_bytes()))] += 1;
        }
        let (min, max) = (counts.iter().min().copied(), counts.iter().max().copied());
        assert!(min > Some(800) && max < Some(1200), "uneven groups: {min:?}..{max:?}");
        // the hash is part of the checkpoint format
        assert_eq!(key_group(b""), 0);
        assert_eq!(key_group(b"customer-42"), (crc32c::crc32c(b"customer-42") % 128) as u16);
    }
}
