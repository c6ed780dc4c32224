//! Cluster-wide presence: this hub's members, written to Redis under its epoch, and presence queries that
//! keep only the members of live hubs (see the module docs).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Instant;

use redis_protocol::resp2::types::OwnedFrame;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::RedisLink;
use super::conn::Expect;
use super::lease::parse_lease;
use super::resp::{ProtocolError, bulk};

/// The answer to [`RedisLink::request_presence`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PresenceAnswer {
    /// The token given with the request.
    pub token: u64,
    /// `(member id, info JSON)` of every live member, sorted by member id.
    pub members: Vec<(String, Option<String>)>,
    /// False when Redis could not be asked: `members` then holds this hub's own members only.
    pub complete: bool,
}

/// A member of this hub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Member {
    pub(super) info: Option<String>,
    /// Whether Redis may hold it, so a leave needs an `HDEL`.
    pub(super) written: bool,
}

/// A presence request waiting for the leases of the hubs it names.
#[derive(Debug)]
pub(super) struct PresenceQuery {
    pub(super) token: u64,
    pub(super) channel: String,
    /// Entries known to be live (this hub's, in its current epoch).
    live: Vec<Stored>,
    /// Entries of other hubs, live if their hub's lease carries their epoch.
    pending: Vec<Stored>,
    /// The distinct hubs of `pending`, in the order their leases were asked for.
    hubs: Vec<String>,
}

/// A presence entry read from Redis.
#[derive(Debug)]
struct Stored {
    field: Vec<u8>,
    hub: String,
    epoch: u64,
    member: String,
    info: Option<String>,
}

/// A presence value as written.
#[derive(Serialize)]
struct PresenceValueOut<'a> {
    hub: &'a str,
    epoch: u64,
    member: &'a str,
    info: Option<&'a RawValue>,
}

/// A presence value as read; any hub may have written it.
#[derive(Deserialize)]
struct PresenceValueIn {
    hub: String,
    epoch: u64,
    member: String,
    #[serde(default)]
    info: Option<Box<RawValue>>,
}

impl RedisLink {
    /// The Redis hash holding `channel`'s members.
    pub(super) fn presence_key(&self, channel: &str) -> String {
        self.channel_scoped("presence", channel)
    }

    /// `member`'s field in a presence hash, unique to this hub.
    pub(super) fn field(&self, member: &str) -> String {
        format!("{}:{member}", self.hub_id)
    }

    /// Writes every local member again: Redis may have lost them.
    pub(super) fn write_all_presence(&mut self, now: Instant) {
        let channels: Vec<String> = self.members.keys().cloned().collect();
        for channel in channels {
            let members: Vec<String> = self.members.get(&channel).into_iter().flat_map(|m| m.keys().cloned()).collect();
            let members: Vec<&str> = members.iter().map(String::as_str).collect();
            self.write_presence(now, &channel, &members);
        }
    }

    /// One `HSET` for `members` of `channel`, marking them written.
    pub(super) fn write_presence(&mut self, now: Instant, channel: &str, members: &[&str]) {
        let Some(epoch) = self.epoch else { return };
        let mut pairs: Vec<(String, String)> = Vec::with_capacity(members.len());
        for &member in members {
            let Some(local) = self.members.get_mut(channel).and_then(|m| m.get_mut(member)) else { continue };
            local.written = true;
            let info = local.info.as_deref().and_then(|text| serde_json::from_str::<&RawValue>(text).ok());
            let value = PresenceValueOut { hub: &self.hub_id, epoch, member, info };
            let Ok(value) = serde_json::to_string(&value) else { continue };
            pairs.push((format!("{}:{member}", self.hub_id), value));
        }
        if pairs.is_empty() {
            return;
        }
        let key = self.presence_key(channel);
        let mut args: Vec<&[u8]> = vec![b"HSET", key.as_bytes()];
        for (field, value) in &pairs {
            args.extend([field.as_bytes(), value.as_bytes()]);
        }
        self.cmd.send(now, &args, Expect::Ack);
    }

    /// Answers, from local knowledge, the presence requests whose replies will never come.
    pub(super) fn abandon(&mut self, owed: VecDeque<(Instant, Expect)>) {
        for (_, expect) in owed {
            match expect {
                Expect::PresenceAll { token, channel }
                | Expect::PresenceLeases(PresenceQuery { token, channel, .. }) => {
                    self.answer_locally(token, &channel);
                }
                Expect::History { token, .. } => {
                    self.history_answers.push_back(super::HistoryAnswer { token, read: None });
                }
                _ => {}
            }
        }
    }

    /// Answers with this hub's own members only, marked incomplete.
    pub(super) fn answer_locally(&mut self, token: u64, channel: &str) {
        let members = self
            .members
            .get(channel)
            .into_iter()
            .flatten()
            .map(|(member, local)| (member.clone(), local.info.clone()))
            .collect();
        self.answers.push_back(PresenceAnswer { token, members, complete: false });
    }

    /// The `HGETALL` of `channel`'s hash: our live entries, our dead ones (pruned), and the other hubs'
    /// entries, whose leases are asked for next.
    pub(super) fn on_presence_hash(
        &mut self,
        now: Instant,
        token: u64,
        channel: String,
        items: Vec<OwnedFrame>,
    ) -> Result<(), ProtocolError> {
        let mut live = Vec::new();
        let mut pending = Vec::new();
        let mut dead = Vec::new();
        for pair in items.chunks(2) {
            let [OwnedFrame::BulkString(field), OwnedFrame::BulkString(value)] = pair else {
                return Err(ProtocolError);
            };
            // Someone else's junk in our hash is not our protocol error; leave it alone.
            let Ok(stored) = serde_json::from_slice::<PresenceValueIn>(value) else { continue };
            let entry = Stored {
                field: field.clone(),
                hub: stored.hub,
                epoch: stored.epoch,
                member: stored.member,
                info: stored.info.map(|raw| raw.get().to_owned()),
            };
            if entry.hub != self.hub_id {
                pending.push(entry);
            } else if Some(entry.epoch) == self.epoch {
                live.push(entry);
            } else {
                dead.push(entry);
            }
        }
        self.prune(now, &channel, &dead);
        let hubs: Vec<String> = pending.iter().map(|e| e.hub.clone()).collect::<BTreeSet<_>>().into_iter().collect();
        if hubs.is_empty() {
            self.answer(token, live);
            return Ok(());
        }
        let keys: Vec<String> = hubs.iter().map(|hub| self.lease_key_of(hub)).collect();
        let mut args: Vec<&[u8]> = vec![b"MGET"];
        args.extend(keys.iter().map(|k| k.as_bytes()));
        self.cmd.send(now, &args, Expect::PresenceLeases(PresenceQuery { token, channel, live, pending, hubs }));
        Ok(())
    }

    /// The leases of the hubs a presence hash named: their entries in the epoch of their lease are live.
    pub(super) fn on_presence_leases(
        &mut self,
        now: Instant,
        query: PresenceQuery,
        leases: &[OwnedFrame],
    ) -> Result<(), ProtocolError> {
        let PresenceQuery { token, channel, mut live, pending, hubs } = query;
        if leases.len() != hubs.len() {
            return Err(ProtocolError);
        }
        let epochs: BTreeMap<&str, u64> = hubs
            .iter()
            .zip(leases)
            .filter_map(|(hub, lease)| Some((hub.as_str(), parse_lease(bulk(lease)?)?.0)))
            .collect();
        let (alive, dead): (Vec<Stored>, Vec<Stored>) =
            pending.into_iter().partition(|e| epochs.get(e.hub.as_str()) == Some(&e.epoch));
        live.extend(alive);
        self.prune(now, &channel, &dead);
        self.answer(token, live);
        Ok(())
    }

    /// `HDEL`s the entries of dead hubs, so the hash does not grow with every node that ever lived.
    fn prune(&mut self, now: Instant, channel: &str, dead: &[Stored]) {
        if dead.is_empty() {
            return;
        }
        let key = self.presence_key(channel);
        let mut args: Vec<&[u8]> = vec![b"HDEL", key.as_bytes()];
        args.extend(dead.iter().map(|e| e.field.as_slice()));
        self.cmd.send(now, &args, Expect::Ack);
    }

    /// Answers with the live entries found in Redis.
    fn answer(&mut self, token: u64, live: Vec<Stored>) {
        let mut members: Vec<(String, Option<String>)> = live.into_iter().map(|e| (e.member, e.info)).collect();
        members.sort();
        self.answers.push_back(PresenceAnswer { token, members, complete: true });
    }
}
