//! Reading and writing engram/1 frames on a byte stream: a QUIC stream, or the in-memory
//! pipe behind a WebSocket session.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::protocol::{Frame, ProtocolError};

const READ_CHUNK_BYTES: usize = 64 << 10;

#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("reading the stream: {0}")]
    Read(#[source] std::io::Error),
    #[error("writing the stream: {0}")]
    Write(#[source] std::io::Error),
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    #[error("the stream ended inside a frame")]
    EndedInsideFrame,
}

/// Frames from a receive stream, buffered: at most one frame plus one read chunk is held.
pub struct FrameReader<R> {
    recv: R,
    /// `buf[start..end]` is read and not yet decoded; the rest is room for the next read.
    buf: Vec<u8>,
    start: usize,
    end: usize,
    frame_bytes_max: u32,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub fn new(recv: R, frame_bytes_max: u32) -> FrameReader<R> {
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
            match self
                .recv
                .read(&mut self.buf[self.end..])
                .await
                .map_err(StreamError::Read)?
            {
                n @ 1.. => self.end += n,
                0 => {
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

pub async fn write_frames<W: AsyncWrite + Unpin>(
    send: &mut W,
    frames: &[Frame],
) -> Result<(), StreamError> {
    let mut out = Vec::new();
    for frame in frames {
        frame.encode(&mut out);
    }
    send.write_all(&out).await.map_err(StreamError::Write)?;
    Ok(())
}
