//! A channel bounded in bytes, for the server's streams: what one stream may hold for a client
//! that reads slowly or not at all is its byte budget, whatever the size of its messages (a
//! count of messages bounds nothing when one message is 40 KB and another 200 bytes).
//!
//! - [`Sender::try_send`] refuses an item that would take the queue past the budget (live
//!   events: the subscriber is lagging, and is ended with a resume point);
//! - [`Sender::send`] waits for room (a log catch-up or a download: the source can wait);
//! - [`Sender::end`] queues one last item (the error that ends the stream) past the budget, after
//!   what is queued (which the client may still read: the error's resume point counts it), and
//!   closes the channel;
//! - one item is always accepted into an empty queue, so an item larger than the budget still
//!   goes through (alone).
//!
//! Dropping the [`Receiver`] (the client went away) closes the channel for the sender.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use tokio::sync::Notify;

struct State<T> {
    queue: VecDeque<(T, usize)>,
    bytes: usize,
    /// The sender is gone or has ended the stream: nothing more comes after the queue.
    sender_done: bool,
    /// The receiver is gone: nothing sent is read.
    receiver_gone: bool,
    waker: Option<Waker>,
}

struct Shared<T> {
    state: Mutex<State<T>>,
    budget: usize,
    /// Woken when the receiver takes an item or goes away.
    room: Notify,
}

impl<T> Shared<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Why an item was not queued; the item comes back.
#[derive(Debug, PartialEq, Eq)]
pub enum SendError<T> {
    /// Queuing it would exceed the budget.
    Full(T),
    /// The receiver is gone.
    Closed(T),
}

/// The sending half (one per stream).
pub struct Sender<T> {
    shared: Arc<Shared<T>>,
}

/// The receiving half: a [`futures::Stream`] of the items.
pub struct Receiver<T> {
    shared: Arc<Shared<T>>,
}

/// A channel that holds at most `budget` bytes (as the sender counts them).
pub fn channel<T>(budget: usize) -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            queue: VecDeque::new(),
            bytes: 0,
            sender_done: false,
            receiver_gone: false,
            waker: None,
        }),
        budget,
        room: Notify::new(),
    });
    (
        Sender {
            shared: Arc::clone(&shared),
        },
        Receiver { shared },
    )
}

impl<T> Sender<T> {
    /// Queues `item` (counted as `bytes`) if it fits the budget, or if the queue is empty.
    pub fn try_send(&self, item: T, bytes: usize) -> Result<(), SendError<T>> {
        self.try_send_within(item, bytes, self.shared.budget)
    }

    /// Queues `item` if the queue stays within `limit` bytes (at most the budget), or if the
    /// queue is empty.
    fn try_send_within(&self, item: T, bytes: usize, limit: usize) -> Result<(), SendError<T>> {
        let limit = limit.min(self.shared.budget);
        let waker = {
            let mut state = self.shared.lock();
            if state.receiver_gone {
                return Err(SendError::Closed(item));
            }
            if !state.queue.is_empty() && state.bytes.saturating_add(bytes) > limit {
                return Err(SendError::Full(item));
            }
            state.bytes += bytes;
            state.queue.push_back((item, bytes));
            state.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
        Ok(())
    }

    /// Queues `item`, waiting until it fits. `Err` gives it back when the receiver is gone.
    pub async fn send(&self, item: T, bytes: usize) -> Result<(), T> {
        self.send_within(item, bytes, self.shared.budget).await
    }

    /// Queues `item`, waiting until the queue holds at most `limit` bytes with it (or is
    /// empty). A source that can wait (stored content) keeps to a part of the budget, so the
    /// rest stays free for live events, which cannot wait.
    pub async fn send_within(&self, item: T, bytes: usize, limit: usize) -> Result<(), T> {
        let mut item = item;
        loop {
            let room = self.shared.room.notified();
            tokio::pin!(room);
            // Registered before the check, so a take between the check and the wait is seen.
            room.as_mut().enable();
            match self.try_send_within(item, bytes, limit) {
                Ok(()) => return Ok(()),
                Err(SendError::Closed(back)) => return Err(back),
                Err(SendError::Full(back)) => item = back,
            }
            room.await;
        }
    }

    /// Ends the stream: `last` is queued after what is there (whatever the budget) and nothing
    /// follows it.
    pub fn end(self, last: T) {
        let waker = {
            let mut state = self.shared.lock();
            if !state.receiver_gone {
                state.queue.push_back((last, 0));
            }
            state.sender_done = true;
            state.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Resolves when the receiver is gone (the client left).
    pub async fn closed(&self) {
        loop {
            let room = self.shared.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            if self.shared.lock().receiver_gone {
                return;
            }
            room.await;
        }
    }

    /// Whether the receiver is gone.
    pub fn is_closed(&self) -> bool {
        self.shared.lock().receiver_gone
    }

    /// Bytes queued now.
    pub fn queued_bytes(&self) -> usize {
        self.shared.lock().bytes
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        let waker = {
            let mut state = self.shared.lock();
            state.sender_done = true;
            state.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

impl<T> futures::Stream for Receiver<T> {
    type Item = T;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        let mut state = self.shared.lock();
        if let Some((item, bytes)) = state.queue.pop_front() {
            state.bytes -= bytes;
            drop(state);
            self.shared.room.notify_waiters();
            return Poll::Ready(Some(item));
        }
        if state.sender_done {
            return Poll::Ready(None);
        }
        state.waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        let dropped = {
            let mut state = self.shared.lock();
            state.receiver_gone = true;
            state.bytes = 0;
            std::mem::take(&mut state.queue)
        };
        drop(dropped);
        self.shared.room.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use std::time::Duration;

    #[tokio::test]
    async fn the_budget_bounds_bytes_not_items_and_an_empty_queue_takes_anything() {
        let (tx, mut rx) = channel::<&str>(100);
        assert_eq!(tx.try_send("a", 60), Ok(()));
        assert_eq!(tx.try_send("b", 40), Ok(()));
        assert_eq!(tx.try_send("c", 1), Err(SendError::Full("c")));
        assert_eq!(tx.queued_bytes(), 100);
        assert_eq!(rx.next().await, Some("a"));
        assert_eq!(tx.try_send("c", 50), Ok(()));
        assert_eq!(rx.next().await, Some("b"));
        assert_eq!(rx.next().await, Some("c"));
        // Larger than the budget, into an empty queue: it goes, alone.
        assert_eq!(tx.try_send("big", 1_000), Ok(()));
        assert_eq!(tx.try_send("x", 1), Err(SendError::Full("x")));
        assert_eq!(rx.next().await, Some("big"));
        drop(tx);
        assert_eq!(rx.next().await, None);
    }

    #[tokio::test]
    async fn a_source_sending_within_a_window_leaves_the_rest_of_the_budget_to_live_items() {
        let (tx, mut rx) = channel::<&str>(100);
        tx.send_within("chunk 1", 20, 40).await.unwrap();
        tx.send_within("chunk 2", 20, 40).await.unwrap();
        // The window is full: the next chunk waits...
        let waiting =
            tokio::time::timeout(Duration::from_millis(50), tx.send_within("chunk 3", 20, 40))
                .await;
        assert!(waiting.is_err(), "the window is full: send_within waits");
        // ...while a live item still finds the rest of the budget.
        assert_eq!(tx.try_send("event", 60), Ok(()));
        assert_eq!(rx.next().await, Some("chunk 1"));
        assert_eq!(rx.next().await, Some("chunk 2"));
        // With the window free again (the event still queued, 60 bytes), a chunk would take
        // the queue past 40: it waits for the event to be read too.
        let waiting =
            tokio::time::timeout(Duration::from_millis(50), tx.send_within("chunk 3", 20, 40))
                .await;
        assert!(waiting.is_err());
        assert_eq!(rx.next().await, Some("event"));
        tx.send_within("chunk 3", 20, 40).await.unwrap();
        assert_eq!(rx.next().await, Some("chunk 3"));
    }

    #[tokio::test]
    async fn send_waits_for_room_and_end_leaves_the_last_word_after_the_queue() {
        let (tx, mut rx) = channel::<u32>(10);
        tx.try_send(1, 10).unwrap();
        let waiting = tokio::time::timeout(Duration::from_millis(50), tx.send(2, 10)).await;
        assert!(waiting.is_err(), "no room: send waits");
        let tx = Arc::new(tx);
        let sender = Arc::clone(&tx);
        let sent = tokio::spawn(async move { sender.send(2, 10).await });
        assert_eq!(rx.next().await, Some(1));
        assert_eq!(sent.await.unwrap(), Ok(()));
        tx.try_send(3, 0).unwrap();
        let tx = Arc::into_inner(tx).unwrap();
        assert_eq!(tx.queued_bytes(), 10);
        tx.end(99);
        assert_eq!(rx.next().await, Some(2));
        assert_eq!(rx.next().await, Some(3));
        assert_eq!(rx.next().await, Some(99));
        assert_eq!(rx.next().await, None);
    }

    #[tokio::test]
    async fn a_gone_receiver_closes_the_sender_and_wakes_a_waiting_send() {
        let (tx, rx) = channel::<u32>(1);
        tx.try_send(1, 1).unwrap();
        let tx = Arc::new(tx);
        let sender = Arc::clone(&tx);
        let waiting = tokio::spawn(async move { sender.send(2, 1).await });
        tokio::time::sleep(Duration::from_millis(10)).await;
        drop(rx);
        assert_eq!(waiting.await.unwrap(), Err(2));
        assert!(tx.is_closed());
        assert_eq!(tx.try_send(3, 1), Err(SendError::Closed(3)));
        tokio::time::timeout(Duration::from_secs(1), tx.closed())
            .await
            .expect("closed resolves");
    }
}
