//! SplitMix64: the core's only source of "randomness", deterministic so equal inputs give equal runs.

use crate::broker::Origin;

/// One step of SplitMix64: a tiny deterministic generator (jitter here, seeded simulations in
/// the tests), so the core needs no randomness source.
pub(crate) fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// SplitMix64: a tiny deterministic generator, so equal inputs give equal runs; seeded from the origin so
/// the hubs of a cluster do not reconnect in lockstep.
#[derive(Debug, Clone)]
pub(super) struct SplitMix(u64);

impl SplitMix {
    pub(super) fn seeded(origin: &Origin) -> Self {
        // FNV-1a over the node id and worker.
        let mut hash = 0xcbf2_9ce4_8422_2325u64;
        for byte in origin.node.bytes().chain(origin.worker.to_be_bytes()) {
            hash = (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
        }
        Self(hash)
    }

    fn next(&mut self) -> u64 {
        splitmix64(&mut self.0)
    }

    /// Uniform in `[0, 1)`.
    pub(super) fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}
