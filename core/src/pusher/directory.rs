//! The Pusher directory: every hub's share of every channel's subscriptions and presence
//! members, so that any hub can answer for the whole cluster (counts, member lists) and tell
//! a user's first connection anywhere from a second one.
//!
//! Each hub owns its own entries and announces them to the others as absolute figures ("hub
//! H holds 3 subscriptions of app A's channel C", "2 connections of user U"), never as
//! increments: an update heard twice, or a snapshot after updates, leaves the same state.
//! Every hub applies every update in its origin's order (the broker keeps it), so the union
//! over hubs is the same everywhere once the updates have arrived; what changes with an update
//! (a user's first or last connection, a new total) comes back as [`Effects`] for the hub to
//! tell its own subscribers. A hub that dies without a word is dropped when its lease is gone
//! ([`Directory::prune`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::http_api::ChannelCounts;
use super::protocol::{PresenceMember, UserId};

/// What a hub tells the others: its entries, or all of them (`snapshot`), and whether it wants
/// theirs (`sync`).
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct Update {
    /// The sender asks every hub for a snapshot.
    #[serde(default, skip_serializing_if = "is_false")]
    pub(crate) sync: bool,
    /// These are all of the sender's entries: any other it had is gone.
    #[serde(default, skip_serializing_if = "is_false")]
    pub(crate) snapshot: bool,
    /// `(app id, channel, subscriptions on the sender)`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) subs: Vec<(String, String, u64)>,
    /// Presence members on the sender.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) members: Vec<MemberEntry>,
    /// Cache channels' last events: `(app id, channel, published at in Unix ms, frame)`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) cache: Vec<(String, String, u64, String)>,
}

impl Update {
    /// True when there is nothing to send.
    pub(crate) fn is_empty(&self) -> bool {
        !self.sync && !self.snapshot && self.subs.is_empty() && self.members.is_empty() && self.cache.is_empty()
    }
}

fn is_false(value: &bool) -> bool {
    !value
}

/// One user's connections to a presence channel on the sender:
/// `(app id, channel, user id, id is numeric, user_info, connections)`.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct MemberEntry(String, String, String, bool, Option<Box<RawValue>>, u32);

impl MemberEntry {
    fn member(&self) -> Option<PresenceMember> {
        let Self(_, _, id, numeric, info, _) = self;
        let user_id = if *numeric { UserId::number(id.parse().ok()?) } else { UserId::string(id) };
        Some(PresenceMember { user_id, user_info: info.clone() })
    }
}

/// A presence change the hub must tell its subscribers of the channel.
#[derive(Debug, Clone)]
pub(crate) enum MemberChange {
    /// The user's first connection in the cluster.
    Added(PresenceMember),
    /// The user's last connection in the cluster left.
    Removed(UserId),
}

/// What an update changed, for the hub to announce.
#[derive(Debug, Default)]
pub(crate) struct Effects {
    /// `(app id, channel, change)`.
    pub(crate) members: Vec<(String, String, MemberChange)>,
    /// `(app id, channel, new subscription total)`.
    pub(crate) counts: Vec<(String, String, u64)>,
    /// `(app id, channel, occupied)`: the channel got its first subscriber in the cluster, or
    /// lost its last.
    pub(crate) occupancy: Vec<(String, String, bool)>,
}

impl Effects {
    /// True when nothing changed.
    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.members.is_empty() && self.counts.is_empty() && self.occupancy.is_empty()
    }
}

#[derive(Debug, Default)]
struct ChannelEntry {
    /// Subscriptions per hub.
    subs: BTreeMap<String, u64>,
    /// Members by user id (as a string).
    users: BTreeMap<String, UserEntry>,
}

impl ChannelEntry {
    fn total(&self) -> u64 {
        self.subs.values().sum()
    }
}

#[derive(Debug)]
struct UserEntry {
    /// As the first connection that is still here presented it.
    member: PresenceMember,
    /// Connections per hub.
    hubs: BTreeMap<String, u32>,
}

/// The cluster's channels as this hub knows them; see the module docs.
#[derive(Debug, Default)]
pub(crate) struct Directory {
    /// By `(app id, channel)`: ordered, so an app's channels are one range.
    channels: BTreeMap<(String, String), ChannelEntry>,
    /// When each other hub was last heard from.
    heard: HashMap<String, Instant>,
}

impl Directory {
    /// Sets `hub`'s subscription count of a channel.
    pub(crate) fn set_subscriptions(&mut self, hub: &str, app: &str, channel: &str, count: u64, effects: &mut Effects) {
        let key = (app.to_owned(), channel.to_owned());
        let entry = self.channels.entry(key).or_default();
        let before = entry.total();
        if count == 0 {
            entry.subs.remove(hub);
        } else {
            entry.subs.insert(hub.to_owned(), count);
        }
        let after = entry.total();
        if before != after {
            effects.counts.push((app.to_owned(), channel.to_owned(), after));
        }
        if (before == 0) != (after == 0) {
            effects.occupancy.push((app.to_owned(), channel.to_owned(), after > 0));
        }
        self.forget_if_empty(app, channel);
    }

    /// Sets how many connections `hub` has of `member`'s user on a presence channel.
    pub(crate) fn set_member(
        &mut self,
        hub: &str,
        app: &str,
        channel: &str,
        member: &PresenceMember,
        count: u32,
        effects: &mut Effects,
    ) {
        let key = (app.to_owned(), channel.to_owned());
        let uid = member.user_id.as_str();
        let entry = self.channels.entry(key).or_default();
        match entry.users.get_mut(uid) {
            Some(user) if count == 0 => {
                user.hubs.remove(hub);
                if user.hubs.is_empty() {
                    entry.users.remove(uid);
                    let removed = MemberChange::Removed(member.user_id.clone());
                    effects.members.push((app.to_owned(), channel.to_owned(), removed));
                }
            }
            Some(user) => {
                user.hubs.insert(hub.to_owned(), count);
            }
            None if count == 0 => {}
            None => {
                let hubs = BTreeMap::from([(hub.to_owned(), count)]);
                entry.users.insert(uid.to_owned(), UserEntry { member: member.clone(), hubs });
                effects.members.push((app.to_owned(), channel.to_owned(), MemberChange::Added(member.clone())));
            }
        }
        self.forget_if_empty(app, channel);
    }

    /// How many connections `hub` has of user `uid` on a channel.
    pub(crate) fn member_connections(&self, hub: &str, app: &str, channel: &str, uid: &str) -> u32 {
        self.entry(app, channel)
            .and_then(|entry| entry.users.get(uid))
            .and_then(|user| user.hubs.get(hub).copied())
            .unwrap_or(0)
    }

    /// Applies what `hub` sent; returns whether it asks for snapshots.
    pub(crate) fn apply(&mut self, hub: &str, update: &Update, now: Instant, effects: &mut Effects) -> bool {
        self.heard.insert(hub.to_owned(), now);
        if update.snapshot {
            // Whatever the snapshot no longer lists is gone; what it lists is set below.
            let listed_subs: BTreeSet<(&str, &str)> =
                update.subs.iter().map(|(app, channel, _)| (app.as_str(), channel.as_str())).collect();
            let listed_members: BTreeSet<(&str, &str, &str)> = update
                .members
                .iter()
                .map(|MemberEntry(app, channel, id, ..)| (app.as_str(), channel.as_str(), id.as_str()))
                .collect();
            let (stale_subs, stale_members) = self.entries_of(hub);
            for (app, channel) in stale_subs {
                if !listed_subs.contains(&(app.as_str(), channel.as_str())) {
                    self.set_subscriptions(hub, &app, &channel, 0, effects);
                }
            }
            for (app, channel, member) in stale_members {
                if !listed_members.contains(&(app.as_str(), channel.as_str(), member.user_id.as_str())) {
                    self.set_member(hub, &app, &channel, &member, 0, effects);
                }
            }
        }
        for (app, channel, count) in &update.subs {
            self.set_subscriptions(hub, app, channel, *count, effects);
        }
        for entry in &update.members {
            let Some(member) = entry.member() else { continue };
            self.set_member(hub, &entry.0, &entry.1, &member, entry.5, effects);
        }
        update.sync
    }

    /// Everything `hub` holds, as a snapshot update.
    pub(crate) fn snapshot_of(&self, hub: &str) -> Update {
        let mut update = Update { snapshot: true, ..Update::default() };
        for ((app, channel), entry) in &self.channels {
            if let Some(&count) = entry.subs.get(hub) {
                update.subs.push((app.clone(), channel.clone(), count));
            }
            for user in entry.users.values() {
                if let Some(&count) = user.hubs.get(hub) {
                    update.members.push(member_entry(app, channel, &user.member, count));
                }
            }
        }
        update
    }

    /// Drops the hubs that are not in `live` (the hubs holding a lease) and have not been
    /// heard from for `grace` (so one whose lease is newer than the list is kept); `own` is
    /// never dropped.
    pub(crate) fn prune(
        &mut self,
        live: &BTreeSet<String>,
        own: &str,
        now: Instant,
        grace: Duration,
        effects: &mut Effects,
    ) {
        let dead: Vec<String> = self
            .hubs()
            .into_iter()
            .filter(|hub| hub != own && !live.contains(hub))
            .filter(|hub| self.heard.get(hub).is_none_or(|at| now.saturating_duration_since(*at) >= grace))
            .collect();
        for hub in dead {
            self.drop_hub(&hub, effects);
        }
    }

    /// Forgets every entry of `hub`.
    pub(crate) fn drop_hub(&mut self, hub: &str, effects: &mut Effects) {
        let (subs, members) = self.entries_of(hub);
        for (app, channel) in subs {
            self.set_subscriptions(hub, &app, &channel, 0, effects);
        }
        for (app, channel, member) in members {
            self.set_member(hub, &app, &channel, &member, 0, effects);
        }
        self.heard.remove(hub);
    }

    /// A channel's counts over the cluster.
    pub(crate) fn counts(&self, app: &str, channel: &str) -> ChannelCounts {
        self.entry(app, channel).map_or_else(ChannelCounts::default, |entry| ChannelCounts {
            subscription_count: entry.total(),
            user_count: entry.users.len() as u64,
        })
    }

    /// Whether user `uid` is a member of a channel anywhere.
    pub(crate) fn has_user(&self, app: &str, channel: &str, uid: &str) -> bool {
        self.entry(app, channel).is_some_and(|entry| entry.users.contains_key(uid))
    }

    /// A presence channel's members, each user once, ordered by id.
    pub(crate) fn members(&self, app: &str, channel: &str) -> Vec<&PresenceMember> {
        self.entry(app, channel).map_or_else(Vec::new, |entry| entry.users.values().map(|u| &u.member).collect())
    }

    /// An app's channels with their counts, ordered by name.
    pub(crate) fn channels<'a>(&'a self, app: &'a str) -> impl Iterator<Item = (&'a str, ChannelCounts)> + 'a {
        let start = (app.to_owned(), String::new());
        self.channels.range(start..).take_while(move |((owner, _), _)| owner == app).map(|((_, channel), entry)| {
            let counts = ChannelCounts { subscription_count: entry.total(), user_count: entry.users.len() as u64 };
            (channel.as_str(), counts)
        })
    }

    /// Channels known.
    pub(crate) fn len(&self) -> usize {
        self.channels.len()
    }

    fn entry(&self, app: &str, channel: &str) -> Option<&ChannelEntry> {
        self.channels.get(&(app.to_owned(), channel.to_owned()))
    }

    fn forget_if_empty(&mut self, app: &str, channel: &str) {
        let key = (app.to_owned(), channel.to_owned());
        if self.channels.get(&key).is_some_and(|e| e.subs.is_empty() && e.users.is_empty()) {
            self.channels.remove(&key);
        }
    }

    /// Every hub with an entry, and every hub heard from.
    fn hubs(&self) -> BTreeSet<String> {
        let mut hubs: BTreeSet<String> = self.heard.keys().cloned().collect();
        for entry in self.channels.values() {
            hubs.extend(entry.subs.keys().cloned());
            for user in entry.users.values() {
                hubs.extend(user.hubs.keys().cloned());
            }
        }
        hubs
    }

    /// `hub`'s channels with subscriptions, and its members.
    #[allow(clippy::type_complexity)]
    fn entries_of(&self, hub: &str) -> (Vec<(String, String)>, Vec<(String, String, PresenceMember)>) {
        let mut subs = Vec::new();
        let mut members = Vec::new();
        for ((app, channel), entry) in &self.channels {
            if entry.subs.contains_key(hub) {
                subs.push((app.clone(), channel.clone()));
            }
            for user in entry.users.values().filter(|u| u.hubs.contains_key(hub)) {
                members.push((app.clone(), channel.clone(), user.member.clone()));
            }
        }
        (subs, members)
    }
}

/// The wire entry for `count` connections of `member` on a channel.
pub(crate) fn member_entry(app: &str, channel: &str, member: &PresenceMember, count: u32) -> MemberEntry {
    let id = &member.user_id;
    MemberEntry(
        app.to_owned(),
        channel.to_owned(),
        id.as_str().to_owned(),
        id.is_numeric(),
        member.user_info.clone(),
        count,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: &str) -> PresenceMember {
        let info = RawValue::from_string(format!("{{\"name\":\"{id}\"}}")).ok();
        PresenceMember { user_id: UserId::string(id), user_info: info }
    }

    fn added(effects: &Effects) -> Vec<&str> {
        effects
            .members
            .iter()
            .filter_map(|(_, _, change)| match change {
                MemberChange::Added(m) => Some(m.user_id.as_str()),
                MemberChange::Removed(_) => None,
            })
            .collect()
    }

    fn removed(effects: &Effects) -> Vec<&str> {
        effects
            .members
            .iter()
            .filter_map(|(_, _, change)| match change {
                MemberChange::Removed(id) => Some(id.as_str()),
                MemberChange::Added(_) => None,
            })
            .collect()
    }

    #[test]
    fn a_user_is_added_on_the_first_connection_anywhere_and_removed_on_the_last() {
        let mut dir = Directory::default();
        let mut fx = Effects::default();
        dir.set_member("a:0", "1", "presence-x", &member("u"), 1, &mut fx);
        assert_eq!(added(&fx), ["u"]);
        let mut fx = Effects::default();
        dir.set_member("b:0", "1", "presence-x", &member("u"), 2, &mut fx);
        dir.set_member("a:0", "1", "presence-x", &member("u"), 0, &mut fx);
        assert!(fx.is_empty(), "the user is still on b: {fx:?}");
        assert_eq!(dir.counts("1", "presence-x").user_count, 1);
        let mut fx = Effects::default();
        dir.set_member("b:0", "1", "presence-x", &member("u"), 0, &mut fx);
        assert_eq!(removed(&fx), ["u"]);
        assert_eq!(dir.len(), 0, "an empty channel is forgotten");
    }

    #[test]
    fn user_ids_compare_as_strings_and_keep_their_type() {
        let mut dir = Directory::default();
        let mut fx = Effects::default();
        let numeric = PresenceMember { user_id: UserId::number(7), user_info: None };
        dir.set_member("a:0", "1", "presence-x", &numeric, 1, &mut fx);
        dir.set_member("b:0", "1", "presence-x", &member("7"), 1, &mut fx);
        assert_eq!(fx.members.len(), 1, "\"7\" and 7 are one user");
        let snapshot = dir.snapshot_of("a:0");
        let json = serde_json::to_string(&snapshot).expect("serializes");
        let back: Update = serde_json::from_str(&json).expect("parses");
        let mut other = Directory::default();
        other.apply("a:0", &back, switchboard_testkit::origin(), &mut Effects::default());
        assert!(other.members("1", "presence-x")[0].user_id.is_numeric(), "{json}");
    }

    #[test]
    fn counts_add_up_over_hubs_and_totals_are_reported_when_they_change() {
        let mut dir = Directory::default();
        let mut fx = Effects::default();
        dir.set_subscriptions("a:0", "1", "news", 2, &mut fx);
        dir.set_subscriptions("b:1", "1", "news", 3, &mut fx);
        dir.set_subscriptions("b:1", "1", "news", 3, &mut fx);
        dir.set_subscriptions("a:0", "2", "news", 9, &mut fx);
        assert_eq!(
            fx.counts,
            [("1".into(), "news".into(), 2), ("1".into(), "news".into(), 5), ("2".into(), "news".into(), 9)]
        );
        assert_eq!(dir.counts("1", "news").subscription_count, 5);
        let listed: Vec<(&str, u64)> = dir.channels("1").map(|(c, n)| (c, n.subscription_count)).collect();
        assert_eq!(listed, [("news", 5)], "app 2's channel is not app 1's");
    }

    #[test]
    fn a_snapshot_replaces_what_its_hub_had_without_touching_what_stays() {
        let mut dir = Directory::default();
        let now = switchboard_testkit::origin();
        let mut first = Update { snapshot: true, ..Update::default() };
        first.subs.push(("1".into(), "presence-x".into(), 2));
        first.members.push(member_entry("1", "presence-x", &member("u"), 1));
        first.members.push(member_entry("1", "presence-x", &member("v"), 1));
        let mut fx = Effects::default();
        dir.apply("a:0", &first, now, &mut fx);
        assert_eq!(added(&fx), ["u", "v"]);
        let mut second = Update { snapshot: true, ..Update::default() };
        second.subs.push(("1".into(), "presence-x".into(), 1));
        second.members.push(member_entry("1", "presence-x", &member("u"), 1));
        let mut fx = Effects::default();
        dir.apply("a:0", &second, now, &mut fx);
        assert_eq!(removed(&fx), ["v"]);
        assert!(added(&fx).is_empty(), "u stayed, so no second member_added");
    }

    #[test]
    fn a_dead_hub_is_pruned_once_its_lease_is_gone_and_it_is_silent() {
        let mut dir = Directory::default();
        let t0 = switchboard_testkit::origin();
        let mut update = Update::default();
        update.members.push(member_entry("1", "presence-x", &member("u"), 1));
        dir.apply("b:0", &update, t0, &mut Effects::default());
        dir.set_member("a:0", "1", "presence-x", &member("w"), 1, &mut Effects::default());
        let grace = Duration::from_secs(2);
        let live = BTreeSet::from(["a:0".to_owned()]);
        let mut fx = Effects::default();
        dir.prune(&live, "a:0", t0 + Duration::from_secs(1), grace, &mut fx);
        assert!(fx.is_empty(), "heard from within the grace: its lease may just be newer than the list");
        dir.prune(&BTreeSet::new(), "a:0", t0 + Duration::from_secs(3), grace, &mut fx);
        assert_eq!(removed(&fx), ["u"], "our own hub is never pruned");
        assert!(dir.has_user("1", "presence-x", "w"));
    }

    #[test]
    fn a_bad_numeric_id_on_the_wire_is_skipped() {
        let mut update = Update::default();
        update.members.push(MemberEntry("1".into(), "presence-x".into(), "x".into(), true, None, 1));
        let mut dir = Directory::default();
        dir.apply("b:0", &update, switchboard_testkit::origin(), &mut Effects::default());
        assert_eq!(dir.len(), 0);
    }
}
