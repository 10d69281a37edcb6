//! Reading the store's binary records (a job's header, a log record): fixed-width little-endian
//! integers and length-prefixed byte strings, each read checked against what is left.

/// What is left of a record; every read returns `None` instead of reading past the end.
pub(crate) struct Cursor<'a> {
    pub(crate) rest: &'a [u8],
}

impl<'a> Cursor<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Self { rest: bytes }
    }

    pub(crate) fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.rest.len() < n {
            return None;
        }
        let (head, rest) = self.rest.split_at(n);
        self.rest = rest;
        Some(head)
    }

    pub(crate) fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }

    pub(crate) fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }

    pub(crate) fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }

    /// A byte string written as its `u32` length, then the bytes.
    pub(crate) fn sized(&mut self) -> Option<&'a [u8]> {
        let len = self.u32()? as usize;
        self.take(len)
    }
}

/// Appends `bytes` as [`Cursor::sized`] reads them.
pub(crate) fn put_sized(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_was_written_and_nothing_past_the_end() {
        let mut out = vec![7];
        out.extend_from_slice(&0x0102_0304u32.to_le_bytes());
        out.extend_from_slice(&u64::MAX.to_le_bytes());
        put_sized(&mut out, b"abc");
        let mut c = Cursor::new(&out);
        assert_eq!(c.u8(), Some(7));
        assert_eq!(c.u32(), Some(0x0102_0304));
        assert_eq!(c.u64(), Some(u64::MAX));
        assert_eq!(c.sized(), Some(&b"abc"[..]));
        assert_eq!(c.u8(), None);
        // A length that claims more than is left is refused, and the cursor stays usable.
        let mut c = Cursor::new(&[5, 0, 0, 0, b'a']);
        assert_eq!(c.sized(), None);
        assert_eq!(c.take(1), Some(&b"a"[..]));
    }
}
