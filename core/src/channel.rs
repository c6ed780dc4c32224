//! Channels and their subscribers. A broadcast route is a channel too (named after the route),
//! so one fan-out path serves both.

use std::collections::HashMap;

use crate::hub::ConnId;

/// Index of a live channel in the table.
pub(crate) type ChannelId = u32;

/// One channel: who is subscribed here, and the local sequence counter.
#[derive(Debug)]
pub(crate) struct Channel {
    /// The channel's name (a route's room is named `route:<path>`).
    pub name: String,
    /// Subscribers, in no particular order; a subscriber knows its position.
    pub subscribers: Vec<ConnId>,
    /// Sequence number of the last message delivered on this hub (on a channel with history,
    /// the stream's offset).
    pub seq: u64,
    /// The stream's epoch, on a channel with history once this hub knows it.
    pub epoch: Option<Box<str>>,
}

/// What `Channels::unsubscribe` changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Removal {
    /// The subscriber moved into the freed position, whose stored position must be updated.
    pub moved: Option<ConnId>,
    /// True when the channel lost its last subscriber and was dropped.
    pub emptied: bool,
}

/// Every channel with at least one local subscriber.
#[derive(Debug, Default)]
pub(crate) struct Channels {
    by_name: HashMap<String, ChannelId>,
    slots: Vec<Option<Channel>>,
    free: Vec<ChannelId>,
}

impl Channels {
    /// The live channel called `name`.
    pub(crate) fn find(&self, name: &str) -> Option<ChannelId> {
        self.by_name.get(name).copied()
    }

    /// Every live channel's name and id.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&str, ChannelId)> {
        self.by_name.iter().map(|(name, &id)| (name.as_str(), id))
    }

    /// A live channel.
    pub(crate) fn get(&self, id: ChannelId) -> Option<&Channel> {
        self.slots.get(id as usize)?.as_ref()
    }

    /// A live channel, mutably.
    pub(crate) fn get_mut(&mut self, id: ChannelId) -> Option<&mut Channel> {
        self.slots.get_mut(id as usize)?.as_mut()
    }

    /// Adds `conn` to `name` (creating the channel); returns the channel, the subscriber's
    /// position and whether the channel is new.
    pub(crate) fn subscribe(&mut self, name: &str, conn: ConnId) -> (ChannelId, u32, bool) {
        let (id, created) = match self.by_name.get(name) {
            Some(id) => (*id, false),
            None => {
                let channel = Channel { name: name.to_owned(), subscribers: Vec::new(), seq: 0, epoch: None };
                let id = match self.free.pop() {
                    Some(id) => {
                        self.slots[id as usize] = Some(channel);
                        id
                    }
                    None => {
                        self.slots.push(Some(channel));
                        (self.slots.len() - 1) as ChannelId
                    }
                };
                self.by_name.insert(name.to_owned(), id);
                (id, true)
            }
        };
        let Some(channel) = self.get_mut(id) else { return (id, 0, created) };
        channel.subscribers.push(conn);
        (id, (channel.subscribers.len() - 1) as u32, created)
    }

    /// Removes the subscriber at `position` of channel `id`.
    pub(crate) fn unsubscribe(&mut self, id: ChannelId, position: u32) -> Removal {
        let Some(channel) = self.get_mut(id) else { return Removal { moved: None, emptied: false } };
        let position = position as usize;
        if position >= channel.subscribers.len() {
            return Removal { moved: None, emptied: false };
        }
        channel.subscribers.swap_remove(position);
        let moved = channel.subscribers.get(position).copied();
        if !channel.subscribers.is_empty() {
            return Removal { moved, emptied: false };
        }
        if let Some(channel) = self.slots[id as usize].take() {
            self.by_name.remove(&channel.name);
        }
        self.free.push(id);
        Removal { moved: None, emptied: true }
    }

    /// Number of live channels.
    pub(crate) fn len(&self) -> usize {
        self.by_name.len()
    }
}
