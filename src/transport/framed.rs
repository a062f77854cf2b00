//! Reading and writing engram/1 frames on a QUIC stream.

use quinn::{RecvStream, SendStream};

use super::protocol::{Frame, ProtocolError};

const READ_CHUNK_BYTES: usize = 64 << 10;

#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("reading the stream: {0}")]
    Read(#[from] quinn::ReadError),
    #[error("writing the stream: {0}")]
    Write(#[from] quinn::WriteError),
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    #[error("the stream ended inside a frame")]
    EndedInsideFrame,
}

/// Frames from a receive stream, buffered: at most one frame plus one read chunk is held.
pub struct FrameReader {
    recv: RecvStream,
    /// `buf[start..end]` is read and not yet decoded; the rest is room for the next read.
    buf: Vec<u8>,
    start: usize,
    end: usize,
    frame_bytes_max: u32,
}

impl FrameReader {
    pub fn new(recv: RecvStream, frame_bytes_max: u32) -> FrameReader {
        FrameReader {
            recv,
            buf: Vec::new(),
            start: 0,
            end: 0,
            frame_bytes_max,
        }
    }

    /// The next frame already in the buffer, without reading.
    pub fn buffered(&mut self) -> Result<Option<Frame>, ProtocolError> {
        match Frame::decode(&self.buf[self.start..self.end], self.frame_bytes_max)? {
            Some((frame, used)) => {
                self.start += used;
                Ok(Some(frame))
            }
            None => Ok(None),
        }
    }

    /// The next frame, reading as needed; `None` when the peer finished the stream cleanly.
    pub async fn next(&mut self) -> Result<Option<Frame>, StreamError> {
        loop {
            if let Some(frame) = self.buffered()? {
                return Ok(Some(frame));
            }
            self.make_room();
            match self.recv.read(&mut self.buf[self.end..]).await? {
                Some(n) => self.end += n,
                None => {
                    return if self.start == self.end {
                        Ok(None)
                    } else {
                        Err(StreamError::EndedInsideFrame)
                    };
                }
            }
        }
    }

    /// Moves the undecoded bytes to the front and makes sure a read chunk fits after them.
    /// The buffer is zeroed only when it grows, never per read: reads are often one packet.
    fn make_room(&mut self) {
        self.buf.copy_within(self.start..self.end, 0);
        self.end -= self.start;
        self.start = 0;
        if self.buf.len() < self.end + READ_CHUNK_BYTES {
            self.buf.resize(self.end + READ_CHUNK_BYTES, 0);
        }
    }
}

pub async fn write_frames(send: &mut SendStream, frames: &[Frame]) -> Result<(), StreamError> {
    let mut out = Vec::new();
    for frame in frames {
        frame.encode(&mut out);
    }
    send.write_all(&out).await?;
    Ok(())
}
