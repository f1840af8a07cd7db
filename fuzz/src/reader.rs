//! A tiny byte cursor for the structured fuzz inputs. Reading past the end yields zeros
//! (and empty byte strings), so every byte string is a valid input and truncation only
//! shortens a scenario. The seed generator (`fuzz/seed-corpus.py`) writes the same format.

/// Cursor over the fuzzer's bytes.
#[derive(Clone, Debug)]
pub struct Reader<'a> {
    data: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(data: &'a [u8]) -> Reader<'a> {
        Reader { data }
    }

    /// Whether every byte has been read.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// One byte (0 at the end).
    pub fn u8(&mut self) -> u8 {
        match self.data.split_first() {
            Some((b, rest)) => {
                self.data = rest;
                *b
            }
            None => 0,
        }
    }

    /// Little-endian u16.
    pub fn u16(&mut self) -> u16 {
        u16::from(self.u8()) | (u16::from(self.u8()) << 8)
    }

    /// Little-endian u32.
    pub fn u32(&mut self) -> u32 {
        u32::from(self.u16()) | (u32::from(self.u16()) << 16)
    }

    /// Little-endian u64.
    pub fn u64(&mut self) -> u64 {
        u64::from(self.u32()) | (u64::from(self.u32()) << 32)
    }

    /// LEB128 unsigned varint (at most 10 bytes; extra high bits are dropped).
    pub fn varint(&mut self) -> u64 {
        let mut v: u64 = 0;
        for i in 0..10 {
            let b = self.u8();
            v |= u64::from(b & 0x7f).checked_shl(7 * i).unwrap_or(0);
            if b & 0x80 == 0 || self.data.is_empty() {
                break;
            }
        }
        v
    }

    /// A varint length, then that many bytes (fewer when the input ends first).
    pub fn bytes(&mut self) -> &'a [u8] {
        let len = usize::try_from(self.varint()).unwrap_or(usize::MAX);
        let n = len.min(self.data.len());
        let (head, rest) = self.data.split_at(n);
        self.data = rest;
        head
    }

    /// [`Reader::bytes`] as text (invalid UTF-8 replaced, as a text frame never is).
    pub fn string(&mut self) -> String {
        String::from_utf8_lossy(self.bytes()).into_owned()
    }
}

/// Appends a LEB128 varint (used by tests; the Python generator has its own copy).
pub fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_and_strings_round_trip() {
        let mut buf = Vec::new();
        for v in [0u64, 1, 127, 128, 300, u32::MAX as u64, u64::MAX] {
            put_varint(&mut buf, v);
        }
        put_varint(&mut buf, 3);
        buf.extend_from_slice(b"abc");
        let mut r = Reader::new(&buf);
        for v in [0u64, 1, 127, 128, 300, u32::MAX as u64, u64::MAX] {
            assert_eq!(r.varint(), v);
        }
        assert_eq!(r.string(), "abc");
        assert!(r.is_empty());
        assert_eq!(r.u64(), 0);
        assert_eq!(r.bytes(), b"");
    }
}
