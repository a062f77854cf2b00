//! Frames on their way out: the session encodes each frame straight into a shared buffer,
//! and a writer task hands everything queued to QUIC in one write.
//!
//! A QUIC write per frame costs a connection lock and a wake-up of its driver; a queue of
//! one allocation per frame, freed on another thread, showed in profiles too. Instead the
//! writer takes the whole queue, leaves a fresh one in its place, and hands what it took
//! to QUIC as one chunk, which QUIC keeps without copying it.

use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use crate::transport::framed::StreamError;

/// Bytes queued at most; past them `push` waits for the writer.
pub const OUTBOX_BYTES_MAX: usize = 1 << 20;

/// The writer stopped (a write failed); its task says why.
#[derive(Debug)]
pub struct WriterGone;

#[derive(Default)]
struct State {
    queued: Vec<u8>,
    closed: bool,
    writer_gone: bool,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    /// Something was queued, or the outbox closed.
    queued: Notify,
    /// The writer took the queue (or stopped): there is room again.
    room: Notify,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("outbox lock")
    }
}

pub struct Outbox {
    shared: Arc<Shared>,
}

impl Outbox {
    /// An outbox and the task that writes it to `send`. The task returns the stream once
    /// the outbox is closed and drained, so that the session can finish it.
    pub fn new(
        send: quinn::SendStream,
    ) -> (
        Outbox,
        impl std::future::Future<Output = Result<quinn::SendStream, StreamError>>,
    ) {
        let shared = Arc::new(Shared::default());
        (
            Outbox {
                shared: shared.clone(),
            },
            write_out(send, shared),
        )
    }

    /// Queues one frame, encoded by `encode` in place; waits while the queue is full.
    pub async fn push(&self, encode: impl FnOnce(&mut Vec<u8>)) -> Result<(), WriterGone> {
        let mut encode = Some(encode);
        loop {
            let room = self.shared.room.notified();
            tokio::pin!(room);
            // Registered before the check, so a drain between the two is not missed.
            room.as_mut().enable();
            {
                let mut state = self.shared.lock();
                if state.writer_gone {
                    return Err(WriterGone);
                }
                if state.queued.len() < OUTBOX_BYTES_MAX {
                    (encode.take().expect("encoded once"))(&mut state.queued);
                    drop(state);
                    self.shared.queued.notify_one();
                    return Ok(());
                }
            }
            room.await;
        }
    }

    /// Nothing more will be queued: the writer drains the queue and returns the stream.
    pub fn close(&self) {
        self.shared.lock().closed = true;
        self.shared.queued.notify_one();
    }
}

/// A session dropped without a goodbye (a lost connection, an abort) still lets its
/// writer drain and end, instead of leaving it parked with its stream and buffers.
impl Drop for Outbox {
    fn drop(&mut self) {
        self.close();
    }
}

async fn write_out(
    mut send: quinn::SendStream,
    shared: Arc<Shared>,
) -> Result<quinn::SendStream, StreamError> {
    loop {
        let queued = shared.queued.notified();
        tokio::pin!(queued);
        queued.as_mut().enable();
        let (writing, closed) = {
            let mut state = shared.lock();
            // The fresh queue gets room for twice what this one held (at most twice the
            // bound): a busy session rarely outgrows it, a quiet one is not given a
            // megabyte per frame.
            let room = (2 * state.queued.len()).min(2 * OUTBOX_BYTES_MAX);
            let writing = std::mem::replace(&mut state.queued, Vec::with_capacity(room));
            (writing, state.closed)
        };
        if !writing.is_empty() {
            shared.room.notify_waiters();
            // Handed over whole: quinn keeps the chunk instead of copying it.
            let written = send.write_chunk(bytes::Bytes::from(writing)).await;
            if let Err(e) = written {
                shared.lock().writer_gone = true;
                shared.room.notify_waiters();
                return Err(StreamError::Write(e.into()));
            }
            continue;
        }
        if closed {
            return Ok(send);
        }
        queued.await;
    }
}
