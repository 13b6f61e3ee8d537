//! The engine's state as compact binary records: one per customer (keyed by customer
//! id, for a compacted changelog topic) and one for the engine itself (population
//! baseline, value tiers, stream time). Every record starts with a version byte.
//! Numbers are little-endian and fixed-width: a customer is about 420 bytes.
//!
//! Encoding then decoding gives back the exact state: an engine rebuilt from its
//! records continues with exactly the alerts the original would have produced.

/// Version of the record layout.
pub const VERSION: u8 = 2;

/// A record that cannot be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// It ends early.
    #[error("state record truncated")]
    Truncated,
    /// It was written by another layout version.
    #[error("state record of version {0}; this build reads version {VERSION}")]
    Version(u8),
    /// A field holds what no engine writes.
    #[error("invalid state record: {0}")]
    Invalid(&'static str),
}

/// Appends fields to a record.
pub struct Writer<'a>(pub &'a mut Vec<u8>);

impl Writer<'_> {
    /// A new record: the version byte first.
    pub fn start(out: &mut Vec<u8>) -> Writer<'_> {
        out.push(VERSION);
        Writer(out)
    }
    pub(crate) fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    pub(crate) fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    pub(crate) fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    pub(crate) fn i32(&mut self, v: i32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    pub(crate) fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    pub(crate) fn i64(&mut self, v: i64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    pub(crate) fn f32(&mut self, v: f32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    pub(crate) fn f64(&mut self, v: f64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    pub(crate) fn str(&mut self, s: &str) {
        self.u32(s.len() as u32);
        self.0.extend_from_slice(s.as_bytes());
    }
}

/// Reads fields of a record.
pub struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    /// Checks the version byte.
    pub fn start(buf: &'a [u8]) -> Result<Reader<'a>, CodecError> {
        match buf.first() {
            None => Err(CodecError::Truncated),
            Some(&VERSION) => Ok(Reader { buf, at: 1 }),
            Some(&v) => Err(CodecError::Version(v)),
        }
    }

    fn take<const N: usize>(&mut self) -> Result<[u8; N], CodecError> {
        let end = self.at.checked_add(N).ok_or(CodecError::Truncated)?;
        let s = self.buf.get(self.at..end).ok_or(CodecError::Truncated)?;
        self.at = end;
        Ok(s.try_into().expect("length checked"))
    }
    pub(crate) fn u8(&mut self) -> Result<u8, CodecError> {
        Ok(self.take::<1>()?[0])
    }
    pub(crate) fn u16(&mut self) -> Result<u16, CodecError> {
        Ok(u16::from_le_bytes(self.take()?))
    }
    pub(crate) fn u32(&mut self) -> Result<u32, CodecError> {
        Ok(u32::from_le_bytes(self.take()?))
    }
    pub(crate) fn i32(&mut self) -> Result<i32, CodecError> {
        Ok(i32::from_le_bytes(self.take()?))
    }
    pub(crate) fn u64(&mut self) -> Result<u64, CodecError> {
        Ok(u64::from_le_bytes(self.take()?))
    }
    pub(crate) fn i64(&mut self) -> Result<i64, CodecError> {
        Ok(i64::from_le_bytes(self.take()?))
    }
    pub(crate) fn f32(&mut self) -> Result<f32, CodecError> {
        Ok(f32::from_le_bytes(self.take()?))
    }
    pub(crate) fn f64(&mut self) -> Result<f64, CodecError> {
        Ok(f64::from_le_bytes(self.take()?))
    }
    pub(crate) fn bool(&mut self) -> Result<bool, CodecError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(CodecError::Invalid("a flag that is neither 0 nor 1")),
        }
    }
    pub(crate) fn str(&mut self) -> Result<&'a str, CodecError> {
        let n = self.u32()? as usize;
        let end = self.at.checked_add(n).ok_or(CodecError::Truncated)?;
        let s = self.buf.get(self.at..end).ok_or(CodecError::Truncated)?;
        self.at = end;
        std::str::from_utf8(s).map_err(|_| CodecError::Invalid("a customer id that is not UTF-8"))
    }
    /// What is left unread (a record nested at the end of another).
    pub(crate) fn rest(&self) -> &'a [u8] {
        &self.buf[self.at..]
    }
    /// The whole record was read.
    pub(crate) fn end(&self) -> Result<(), CodecError> {
        if self.at == self.buf.len() {
            Ok(())
        } else {
            Err(CodecError::Invalid("bytes after the end of the record"))
        }
    }
}
