//! Timers: per-connection deadlines on a lazy-deletion heap, heartbeats, and the drain.

use std::cmp::Reverse;
use std::time::{Duration, Instant};

use tungstenite::protocol::frame::coding::{Control, OpCode};

use super::{ConnId, Hub, Phase, Timer};
use crate::frame;
use crate::handshake::HttpResponse;
use crate::time::later;

impl Hub {
    pub(super) fn run_drain(&mut self, now: Instant) {
        let epoch = self.epoch(now);
        let Some(drain) = &mut self.drain else { return };
        if now >= drain.deadline {
            let ids: Vec<ConnId> = self.live_ids().collect();
            for id in ids {
                self.finish(id);
            }
            if let Some(drain) = &mut self.drain {
                drain.pending.clear();
                drain.next_batch = later(drain.deadline, Duration::from_secs(3600));
                drain.deadline = drain.next_batch;
            }
            return;
        }
        if now < drain.next_batch {
            return;
        }
        let batch = self.config.drain.batch.max(1);
        let take = batch.min(drain.pending.len());
        let ids: Vec<ConnId> = drain.pending.drain(..take).collect();
        let deadline = drain.deadline;
        drain.next_batch = if drain.pending.is_empty() { deadline } else { later(now, self.config.drain.interval) };
        for id in ids {
            match self.conn(id).map(|c| c.phase) {
                // pusher-js reconnects at once on 4200 (to another node, behind a balancer).
                Some(Phase::Open) if self.conn(id).is_some_and(|c| c.pusher.is_some()) => {
                    self.close(now, id, crate::pusher::protocol::close_code::RECONNECT, "server shutting down")
                }
                Some(Phase::Open) => self.close(now, id, 1001, "server shutting down"),
                Some(Phase::Handshake) => self
                    .respond_http(id, &HttpResponse::error(503, "server is draining").with_header("Retry-After", "5")),
                _ => {}
            }
            if let Some(conn) = self.conn_mut(id) {
                conn.timers.cap(Timer::GiveUp, epoch, deadline);
            }
            self.rearm(id);
        }
    }

    pub(super) fn run_timers(&mut self, now: Instant, id: ConnId) {
        let epoch = self.epoch(now);
        let heartbeat = self.config.heartbeat.clone();
        let idle_timeout = heartbeat.idle_timeout;
        let activity_timeout = self.config.pusher.activity_timeout;
        let Some(conn) = self.conn_mut(id) else { return };
        if conn.timers.expired(Timer::GiveUp, epoch, now) {
            // The peer never answered our close, or never read our last bytes: give up on it.
            return self.finish(id);
        }
        if conn.timers.expired(Timer::Handshake, epoch, now) {
            conn.timers.stop(Timer::Handshake);
            match conn.phase {
                // Idle between two requests: closed quietly, as HTTP servers do.
                Phase::Handshake if conn.kept_alive && conn.head.is_empty() => self.finish(id),
                Phase::Handshake if conn.proxy_pending => {
                    // No PROXY header: not from the balancer, so nothing HTTP is answered.
                    self.metrics.handshake_timeouts += 1;
                    self.metrics.proxy_header_errors += 1;
                    self.finish(id);
                }
                Phase::Handshake => {
                    self.metrics.handshake_timeouts += 1;
                    self.respond_http(id, &HttpResponse::error(408, "handshake not completed in time"));
                }
                Phase::Responding => {
                    self.respond_http(id, &HttpResponse::error(504, "no answer from the cluster in time"))
                }
                // On an open connection the timer is the Pusher sign-in deadline, or the native
                // token's (its expiry, or the connect op's deadline).
                Phase::Open if conn.pusher.is_some() => self.pusher_sign_in_due(now, id),
                Phase::Open => self.native_deadline(now, id),
                // The timer is stopped on leaving these phases.
                Phase::Closing | Phase::Answered => {}
            }
            return;
        }
        if conn.phase != Phase::Open {
            return;
        }
        let pusher = conn.pusher.is_some();
        if conn.timers.expired(Timer::Pong, epoch, now) {
            conn.timers.stop(Timer::Pong);
            conn.timers.stop(Timer::Ping);
            self.metrics.pong_timeouts += 1;
            if pusher {
                return self.pusher_pong_timeout(now, id);
            }
            return self.close(now, id, 1008, "pong timeout");
        }
        if !idle_timeout.is_zero() && later(conn.last_active, idle_timeout) <= now {
            self.metrics.idle_timeouts += 1;
            return self.close(now, id, 1008, "idle timeout");
        }
        if conn.timers.expired(Timer::Ping, epoch, now) {
            // A Pusher client answers `pusher:ping` (a browser cannot see WebSocket pings).
            let every = if pusher { activity_timeout } else { heartbeat.ping_interval };
            conn.timers.set(Timer::Ping, epoch, later(now, every));
            if conn.timers.get(Timer::Pong, epoch).is_none() {
                conn.timers.set(Timer::Pong, epoch, later(now, heartbeat.pong_timeout));
            }
            if pusher {
                self.pusher_ping(id);
            } else {
                self.enqueue(id, frame::encode(OpCode::Control(Control::Ping), false, &[]));
            }
        }
    }

    /// Makes sure the heap holds a wake-up no later than the connection's next deadline.
    pub(super) fn rearm(&mut self, id: ConnId) {
        // Every input sets the epoch before it can arm a timer.
        let Some(epoch) = self.started else { return };
        let idle_timeout = self.config.heartbeat.idle_timeout;
        let Some(conn) = self.conn_mut(id) else { return };
        let Some(next) = conn.next_deadline(idle_timeout, epoch) else { return };
        if conn.wake_at.is_none_or(|w| next < w) {
            conn.wake_at = Some(next);
            self.timers.push(Reverse((next, id)));
        }
    }
}
