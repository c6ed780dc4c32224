//! How a worker is woken: the reactor names the sockets that became ready, other threads post
//! messages, and one waiting loop takes both in a batch.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Wake, Waker};

use switchboard_core::{ConnId, LinkConn};
use switchboard_shell::Message;

/// A socket the reactor reported ready.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Ready {
    Listener,
    Conn(ConnId),
    Redis(LinkConn),
}

/// What piled up since the worker last looked.
#[derive(Debug, Default)]
pub(crate) struct Inbox {
    pub(crate) ready: Vec<Ready>,
    pub(crate) messages: Vec<Message>,
    waker: Option<Waker>,
}

/// The one place a worker waits on. The reactor thread and the other workers fill it.
#[derive(Debug, Default)]
pub(crate) struct Mailbox {
    inbox: Mutex<Inbox>,
}

impl Mailbox {
    pub(crate) fn post(&self, message: Message) {
        self.push(|inbox| inbox.messages.push(message));
    }

    /// Moves everything waiting into `into` (whose vectors must be empty), keeping the
    /// allocations of both sides in use.
    pub(crate) fn take(&self, into: &mut Inbox) {
        let mut inbox = self.lock();
        std::mem::swap(&mut inbox.ready, &mut into.ready);
        std::mem::swap(&mut inbox.messages, &mut into.messages);
    }

    /// Ready once something is waiting; otherwise the worker's task is woken when it arrives.
    pub(crate) fn poll_wait(&self, cx: &Context<'_>) -> Poll<()> {
        let mut inbox = self.lock();
        if inbox.ready.is_empty() && inbox.messages.is_empty() {
            inbox.waker = Some(cx.waker().clone());
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    }

    /// A waker for one socket's readiness, handed to `Async::poll_readable` and friends. The
    /// reactor keeps it only while an interest is armed.
    pub(crate) fn waker(self: &Arc<Self>, ready: Ready) -> Waker {
        Waker::from(Arc::new(SocketWaker { mailbox: Arc::clone(self), ready }))
    }

    fn push(&self, add: impl FnOnce(&mut Inbox)) {
        let waker = {
            let mut inbox = self.lock();
            add(&mut inbox);
            inbox.waker.take()
        };
        // Outside the lock: the woken thread takes it at once.
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inbox> {
        // Nothing panics while holding the lock, and the data stays valid if something did.
        self.inbox.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[derive(Debug)]
struct SocketWaker {
    mailbox: Arc<Mailbox>,
    ready: Ready,
}

impl Wake for SocketWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.mailbox.push(|inbox| inbox.ready.push(self.ready));
    }
}
