//! Presence on a node without Redis: who is on each native channel, shared by the node's
//! hubs (the shells lend every hub the same table behind a lock, as with admission), so a
//! `presence` answer lists the members on every worker.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

/// A node's presence, as its hubs share it.
pub trait PresenceStore: Send + fmt::Debug {
    /// `member` (with its presence info, raw JSON) is on `channel`.
    fn join(&mut self, channel: &str, member: &str, info: Option<&str>);
    /// `member` left `channel`.
    fn leave(&mut self, channel: &str, member: &str);
    /// The members of `channel` with their info, by member name.
    fn members(&self, channel: &str) -> Vec<(String, Option<String>)>;
}

/// Members by channel; a channel's entry goes with its last member.
#[derive(Debug, Default)]
pub struct PresenceTable {
    channels: HashMap<String, BTreeMap<String, Option<Box<str>>>>,
}

impl PresenceTable {
    /// Channels with members (for tests and footprints).
    pub fn len(&self) -> usize {
        self.channels.len()
    }

    /// True when no channel has a member.
    pub fn is_empty(&self) -> bool {
        self.channels.is_empty()
    }
}

impl PresenceStore for PresenceTable {
    fn join(&mut self, channel: &str, member: &str, info: Option<&str>) {
        self.channels.entry(channel.to_owned()).or_default().insert(member.to_owned(), info.map(Box::from));
    }

    fn leave(&mut self, channel: &str, member: &str) {
        if let Some(members) = self.channels.get_mut(channel) {
            members.remove(member);
            if members.is_empty() {
                self.channels.remove(channel);
            }
        }
    }

    fn members(&self, channel: &str) -> Vec<(String, Option<String>)> {
        self.channels
            .get(channel)
            .into_iter()
            .flatten()
            .map(|(member, info)| (member.clone(), info.as_deref().map(str::to_owned)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_come_and_go_and_empty_channels_are_dropped() {
        let mut table = PresenceTable::default();
        table.join("c", "a", Some("{\"n\":1}"));
        table.join("c", "b", None);
        assert_eq!(table.members("c"), [("a".to_owned(), Some("{\"n\":1}".to_owned())), ("b".to_owned(), None)]);
        table.leave("c", "a");
        table.leave("c", "b");
        assert!(table.members("c").is_empty() && table.is_empty());
    }
}
