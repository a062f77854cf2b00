//! Little-endian fields: the writer and the bounds-checked reader every frame is made of.

use super::{FrameType, ProtocolError};

/// Fills in the length prefix of the frame that starts at `start` and runs to the end.
pub(super) fn set_frame_length(out: &mut [u8], start: usize) {
    let length = u32::try_from(out.len() - start - 4).expect("frame fits u32");
    out[start..start + 4].copy_from_slice(&length.to_le_bytes());
}

pub(super) struct Writer<'a>(pub(super) &'a mut Vec<u8>);

impl Writer<'_> {
    pub(super) fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    pub(super) fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    pub(super) fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    pub(super) fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    pub(super) fn f32(&mut self, v: f32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    pub(super) fn bytes(&mut self, b: &[u8]) {
        self.0.extend_from_slice(b);
    }
    /// A run of floats, written in one pass the compiler can vectorise: embeddings are most
    /// of an Observe frame's bytes.
    pub(super) fn f32s(&mut self, values: &[f32]) {
        let start = self.0.len();
        self.0.resize(start + 4 * values.len(), 0);
        for (out, v) in self.0[start..].chunks_exact_mut(4).zip(values) {
            out.copy_from_slice(&v.to_le_bytes());
        }
    }
    /// An Observe frame's fields, in wire order (docs/protocol.md).
    pub(super) fn observe(&mut self, seq: u64, o: &crate::observation::Observation) {
        self.u64(seq);
        self.str8(&o.space);
        self.str16(&o.id);
        self.u64(o.when_unix_ns as u64);
        self.f32(o.confidence);
        self.str32(&o.what);
        self.u32(u32::try_from(o.embedding.len()).expect("dimension fits u32"));
        self.f32s(&o.embedding);
    }
    pub(super) fn str8(&mut self, s: &str) {
        self.u8(u8::try_from(s.len()).expect("str8 holds at most 255 bytes"));
        self.bytes(s.as_bytes());
    }
    pub(super) fn str16(&mut self, s: &str) {
        self.u16(u16::try_from(s.len()).expect("str16 holds at most 65535 bytes"));
        self.bytes(s.as_bytes());
    }
    pub(super) fn str32(&mut self, s: &str) {
        self.u32(u32::try_from(s.len()).expect("str32 fits u32"));
        self.bytes(s.as_bytes());
    }
}

pub(super) struct Reader<'a> {
    pub(super) frame: FrameType,
    pub(super) rest: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(super) fn take(
        &mut self,
        n: usize,
        field: &'static str,
    ) -> Result<&'a [u8], ProtocolError> {
        if self.rest.len() < n {
            return Err(ProtocolError::Truncated {
                frame: self.frame,
                field,
            });
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }
    /// Fails unless at least `n` bytes are left, without consuming them.
    pub(super) fn expect_at_least(
        &self,
        n: usize,
        field: &'static str,
    ) -> Result<(), ProtocolError> {
        if self.rest.len() < n {
            return Err(ProtocolError::Truncated {
                frame: self.frame,
                field,
            });
        }
        Ok(())
    }
    pub(super) fn array<const N: usize>(
        &mut self,
        field: &'static str,
    ) -> Result<[u8; N], ProtocolError> {
        Ok(self.take(N, field)?.try_into().expect("N bytes"))
    }
    pub(super) fn u8(&mut self, field: &'static str) -> Result<u8, ProtocolError> {
        Ok(self.take(1, field)?[0])
    }
    pub(super) fn u16(&mut self, field: &'static str) -> Result<u16, ProtocolError> {
        Ok(u16::from_le_bytes(self.array(field)?))
    }
    pub(super) fn u32(&mut self, field: &'static str) -> Result<u32, ProtocolError> {
        Ok(u32::from_le_bytes(self.array(field)?))
    }
    pub(super) fn u64(&mut self, field: &'static str) -> Result<u64, ProtocolError> {
        Ok(u64::from_le_bytes(self.array(field)?))
    }
    pub(super) fn f32(&mut self, field: &'static str) -> Result<f32, ProtocolError> {
        Ok(f32::from_le_bytes(self.array(field)?))
    }
    pub(super) fn f32s(
        &mut self,
        n: usize,
        field: &'static str,
    ) -> Result<Vec<f32>, ProtocolError> {
        let bytes = self.take(n.saturating_mul(4), field)?;
        Ok(bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes")))
            .collect())
    }
    pub(super) fn string(
        &mut self,
        n: usize,
        field: &'static str,
    ) -> Result<String, ProtocolError> {
        let bytes = self.take(n, field)?;
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|_| ProtocolError::InvalidUtf8 { field })
    }
    pub(super) fn str8(&mut self, field: &'static str) -> Result<String, ProtocolError> {
        let n = self.u8(field)? as usize;
        self.string(n, field)
    }
    pub(super) fn str16(&mut self, field: &'static str) -> Result<String, ProtocolError> {
        let n = self.u16(field)? as usize;
        self.string(n, field)
    }
    pub(super) fn str32(&mut self, field: &'static str) -> Result<String, ProtocolError> {
        // The frame length already bounds this: `take` fails before anything is allocated.
        let n = self.u32(field)? as usize;
        self.string(n, field)
    }
}
