//! One of the link's two connections: where it is in its life, the bytes it owes Redis, and the replies
//! Redis owes it.

use std::collections::VecDeque;
use std::time::Instant;

use bytes::BytesMut;

use super::REPLY_TIMEOUT;
use super::presence::PresenceQuery;
use super::resp::write_command;
use crate::time::later;

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) enum Phase {
    /// No socket and none wanted (breaker open, or the subscriber while half-open).
    #[default]
    Idle,
    /// No socket; ask for one at this instant.
    Backoff(Instant),
    /// A socket is wanted; `asked` once `poll_connect` handed it out. The deadline is unset
    /// until the link first hears the time (a link is built before any input).
    Connecting {
        deadline: Option<Instant>,
        asked: bool,
    },
    Ready,
}

/// One connection's state; the socket itself belongs to the shell.
#[derive(Debug, Default)]
pub(super) struct Conn {
    pub(super) phase: Phase,
    /// Consecutive failed attempts, the backoff exponent.
    pub(super) attempt: u32,
    pub(super) out: BytesMut,
    pub(super) inbuf: BytesMut,
    /// Replies owed by Redis, oldest first, each with its deadline.
    pub(super) expect: VecDeque<(Instant, Expect)>,
}

/// A reply Redis owes us, and what to do with it.
#[derive(Debug)]
pub(super) enum Expect {
    /// Any non-error reply will do (PUBLISH, HSET, HDEL, the first lease SET).
    Ack,
    /// `SELECT db`: an error leaves the connection on the wrong database.
    Select,
    /// `INCR {prefix}:epoch`.
    Epoch,
    /// The half-open `PING`.
    Probe,
    /// A lease refresh with `GET`: nil means the lease had lapsed.
    LeaseRefresh,
    /// `HGETALL` of a presence hash.
    PresenceAll { token: u64, channel: String },
    /// `MGET` of the leases of the hubs named in a presence hash.
    PresenceLeases(PresenceQuery),
    /// `KEYS {prefix}:lease:*`.
    StatsKeys,
    /// `MGET` of every lease.
    StatsValues,
    /// A subscribe/unsubscribe confirmation or a pong on the subscriber connection.
    SubAck,
    /// The history publish script: an error reply may mean Redis lost the script.
    HistoryPublish,
    /// `SCRIPT LOAD` of the history publish script: its SHA1 (an error leaves `EVAL` in use).
    ScriptLoad,
    /// The history read script, for the hub's read `token` of publications after `after`.
    History { token: u64, after: u64 },
    /// `CLUSTER SLOTS`, on the map reader's connection.
    Slots,
}

impl Conn {
    /// Encodes one command and records the reply it is owed.
    pub(super) fn send(&mut self, now: Instant, args: &[&[u8]], expect: Expect) {
        if write_command(&mut self.out, args) {
            self.expect.push_back((later(now, REPLY_TIMEOUT), expect));
        }
    }

    /// One (UN)SUBSCRIBE for all `keys`: Redis confirms each key separately.
    pub(super) fn subscribe(&mut self, now: Instant, verb: &'static [u8], keys: &[String]) {
        if keys.is_empty() {
            return;
        }
        let mut args: Vec<&[u8]> = vec![verb];
        args.extend(keys.iter().map(|k| k.as_bytes()));
        if write_command(&mut self.out, &args) {
            let deadline = later(now, REPLY_TIMEOUT);
            self.expect.extend(keys.iter().map(|_| (deadline, Expect::SubAck)));
        }
    }

    /// Forgets the socket and its buffers; returns the replies that will now never come.
    pub(super) fn reset(&mut self) -> VecDeque<(Instant, Expect)> {
        self.phase = Phase::Idle;
        self.out.clear();
        self.inbuf.clear();
        std::mem::take(&mut self.expect)
    }

    /// Holds a socket, or one the shell is opening.
    pub(super) fn is_live(&self) -> bool {
        matches!(self.phase, Phase::Ready | Phase::Connecting { asked: true, .. })
    }

    /// When this connection next needs `handle_timeout`: a reconnect, a connect or reply deadline.
    pub(super) fn wake_at(&self) -> Option<Instant> {
        match self.phase {
            Phase::Idle => None,
            Phase::Backoff(at) => Some(at),
            Phase::Connecting { deadline, .. } => deadline,
            Phase::Ready => self.expect.front().map(|(deadline, _)| *deadline),
        }
    }
}
