//! The lease that tells the cluster this hub is alive, the periodic timer that refreshes it, and the cluster
//! connection count summed over every live lease (see the module docs).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use redis_protocol::resp2::types::OwnedFrame;

use super::RedisLink;
use super::conn::{Expect, Phase};
use super::resp::bulk;
use crate::time::later;

/// The lease and stats timer never spins faster than this, whatever `lease_ttl` says.
pub(super) const MIN_TICK: Duration = Duration::from_millis(100);

impl RedisLink {
    fn lease_value(&self, epoch: u64) -> String {
        format!("{epoch}:{}", self.local_connections)
    }

    /// Writes the lease, every local member and the pending leaves: Redis may have lost them while we were away.
    pub(super) fn register(&mut self, now: Instant) {
        let Some(epoch) = self.epoch.filter(|_| self.writable()) else { return };
        let (value, ttl) = (self.lease_value(epoch), self.lease_ttl_secs.to_string());
        let key = self.lease_key.clone();
        self.cmd.send(now, &[b"SET", key.as_bytes(), value.as_bytes(), b"EX", ttl.as_bytes()], Expect::Ack);
        self.write_all_presence(now);
        for (channel, left) in std::mem::take(&mut self.stale) {
            let key = self.presence_key(&channel);
            let fields: Vec<String> = left.iter().map(|m| self.field(m)).collect();
            let mut args: Vec<&[u8]> = vec![b"HDEL", key.as_bytes()];
            args.extend(fields.iter().map(|f| f.as_bytes()));
            self.cmd.send(now, &args, Expect::Ack);
        }
        self.refresh_stats(now);
        self.tick_at = Some(later(now, self.tick_every));
    }

    fn refresh_stats(&mut self, now: Instant) {
        let pattern = format!("{}*", glob_escape(&self.lease_prefix()));
        self.cmd.send(now, &[b"KEYS", pattern.as_bytes()], Expect::StatsKeys);
    }

    /// The periodic lease refresh, cluster stats and subscriber liveness ping.
    pub(super) fn tick(&mut self, now: Instant) {
        self.tick_at = Some(later(now, self.tick_every));
        if let Some(epoch) = self.epoch.filter(|_| self.writable()) {
            let (value, ttl) = (self.lease_value(epoch), self.lease_ttl_secs.to_string());
            let key = self.lease_key.clone();
            let args: [&[u8]; 6] = [b"SET", key.as_bytes(), value.as_bytes(), b"EX", ttl.as_bytes(), b"GET"];
            self.cmd.send(now, &args, Expect::LeaseRefresh);
            self.refresh_stats(now);
        }
        if self.sub.phase == Phase::Ready {
            self.sub.send(now, &[b"PING"], Expect::SubAck);
        }
    }

    /// The lease keys that exist: what we saw of hubs without one is forgotten, the others' leases are read.
    pub(super) fn on_stats_keys(&mut self, now: Instant, keys: &[OwnedFrame]) {
        // A hub whose lease is gone is dead to the cluster: forget what we saw of it,
        // so a churning cluster does not grow this map.
        let live: BTreeSet<&[u8]> = keys.iter().filter_map(bulk).collect();
        let lease_prefix = self.lease_prefix();
        self.live_hubs = Some(
            live.iter()
                .filter_map(|key| key.strip_prefix(lease_prefix.as_bytes()))
                .filter_map(|hub| std::str::from_utf8(hub).ok().map(str::to_owned))
                .collect(),
        );
        for (node, workers) in &mut self.last_seen {
            workers.retain(|worker, _| live.contains(format!("{lease_prefix}{node}:{worker}").as_bytes()));
        }
        self.last_seen.retain(|_, workers| !workers.is_empty());
        let mut args: Vec<&[u8]> = vec![b"MGET"];
        args.extend(keys.iter().filter_map(bulk));
        if args.len() == 1 {
            self.cluster_connections = Some(0);
        } else {
            self.cmd.send(now, &args, Expect::StatsValues);
        }
    }

    /// Every lease's value: the cluster's connection count is their sum.
    pub(super) fn on_stats_values(&mut self, values: &[OwnedFrame]) {
        let total = values.iter().filter_map(bulk).filter_map(|v| parse_lease(v).map(|(_, n)| n)).sum();
        self.cluster_connections = Some(total);
    }
}

/// `"{epoch}:{connections}"` → both numbers.
pub(super) fn parse_lease(value: &[u8]) -> Option<(u64, u64)> {
    let (epoch, count) = std::str::from_utf8(value).ok()?.split_once(':')?;
    Some((epoch.parse().ok()?, count.parse().ok()?))
}

/// `text` with the glob metacharacters escaped, so a `KEYS` pattern matches it literally.
fn glob_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}
