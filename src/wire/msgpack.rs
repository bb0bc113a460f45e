//! The few MessagePack primitives the codec needs, and the LEB128 varints
//! of the protocol messages, read with bounds checks.
//!
//! The reader never trusts a length prefix beyond the bytes that remain, so
//! a hostile count cannot make the decoder allocate more than the input
//! justifies.

use rmp::Marker;

use super::WireError;

/// How deeply a meta value may nest; deeper input is refused rather than
/// walked recursively.
const MAX_DEPTH: usize = 64;

pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, pos: 0 }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    pub(crate) fn position(&self) -> usize {
        self.pos
    }

    pub(crate) fn slice(&self, from: usize) -> &'a [u8] {
        &self.bytes[from..self.pos]
    }

    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if self.remaining() < n {
            return Err(WireError::Truncated);
        }
        let out = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    pub(crate) fn byte(&mut self) -> Result<u8, WireError> {
        Ok(self.take(1)?[0])
    }

    /// An unsigned LEB128 varint of at most ten bytes.
    pub(crate) fn varint(&mut self) -> Result<u64, WireError> {
        let mut value = 0u64;
        for shift in (0..70).step_by(7) {
            let byte = self.byte()?;
            let bits = u64::from(byte & 0x7f);
            if shift == 63 && bits > 1 {
                return Err(WireError::Malformed("varint overflows"));
            }
            value |= bits << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(WireError::Malformed("varint overflows"))
    }

    /// The bytes not read yet, consuming them.
    pub(crate) fn rest(&mut self) -> &'a [u8] {
        let out = &self.bytes[self.pos..];
        self.pos = self.bytes.len();
        out
    }

    fn be(&mut self, n: usize) -> Result<u64, WireError> {
        Ok(self
            .take(n)?
            .iter()
            .fold(0u64, |acc, &b| (acc << 8) | u64::from(b)))
    }

    fn marker(&mut self) -> Result<Marker, WireError> {
        Ok(Marker::from_u8(self.byte()?))
    }

    pub(crate) fn peek_byte(&self) -> Result<u8, WireError> {
        self.bytes
            .get(self.pos)
            .copied()
            .ok_or(WireError::Truncated)
    }

    pub(crate) fn peek_marker(&self) -> Result<Marker, WireError> {
        self.bytes
            .get(self.pos)
            .map(|&b| Marker::from_u8(b))
            .ok_or(WireError::Truncated)
    }

    pub(crate) fn uint(&mut self) -> Result<u64, WireError> {
        match self.marker()? {
            Marker::FixPos(n) => Ok(u64::from(n)),
            Marker::U8 => self.be(1),
            Marker::U16 => self.be(2),
            Marker::U32 => self.be(4),
            Marker::U64 => self.be(8),
            _ => Err(WireError::Malformed("expected an unsigned integer")),
        }
    }

    pub(crate) fn u32(&mut self) -> Result<u32, WireError> {
        u32::try_from(self.uint()?).map_err(|_| WireError::Malformed("integer out of range"))
    }

    /// An array header; the count is checked against the bytes left, as
    /// every element takes at least `min_element_bytes`.
    pub(crate) fn array(&mut self, min_element_bytes: usize) -> Result<usize, WireError> {
        let len = match self.marker()? {
            Marker::FixArray(n) => usize::from(n),
            Marker::Array16 => self.be(2)? as usize,
            Marker::Array32 => self.be(4)? as usize,
            _ => return Err(WireError::Malformed("expected an array")),
        };
        if len.saturating_mul(min_element_bytes.max(1)) > self.remaining() {
            return Err(WireError::Truncated);
        }
        Ok(len)
    }

    pub(crate) fn str(&mut self) -> Result<&'a str, WireError> {
        let marker = self.marker()?;
        self.str_body(marker)
    }

    pub(crate) fn str_body(&mut self, marker: Marker) -> Result<&'a str, WireError> {
        let len = match marker {
            Marker::FixStr(n) => usize::from(n),
            Marker::Str8 => self.be(1)? as usize,
            Marker::Str16 => self.be(2)? as usize,
            Marker::Str32 => self.be(4)? as usize,
            _ => return Err(WireError::Malformed("expected a string")),
        };
        std::str::from_utf8(self.take(len)?)
            .map_err(|_| WireError::Malformed("string is not UTF-8"))
    }

    /// Steps over one value of any type, checking its structure.
    pub(crate) fn skip_value(&mut self) -> Result<(), WireError> {
        // Values still to skip; arrays and maps add their elements, so
        // nesting costs no recursion.
        let mut pending: u64 = 1;
        let mut depth_stack: Vec<u64> = Vec::new();
        while pending > 0 || !depth_stack.is_empty() {
            if pending == 0 {
                pending = depth_stack.pop().unwrap_or(0);
                continue;
            }
            pending -= 1;
            let marker = self.marker()?;
            let (skip, children) = match marker {
                Marker::Null
                | Marker::True
                | Marker::False
                | Marker::FixPos(_)
                | Marker::FixNeg(_) => (0, 0),
                Marker::U8 | Marker::I8 => (1, 0),
                Marker::U16 | Marker::I16 => (2, 0),
                Marker::U32 | Marker::I32 | Marker::F32 => (4, 0),
                Marker::U64 | Marker::I64 | Marker::F64 => (8, 0),
                Marker::FixStr(n) => (usize::from(n), 0),
                Marker::Str8 | Marker::Bin8 => (self.be(1)? as usize, 0),
                Marker::Str16 | Marker::Bin16 => (self.be(2)? as usize, 0),
                Marker::Str32 | Marker::Bin32 => (self.be(4)? as usize, 0),
                Marker::FixArray(n) => (0, u64::from(n)),
                Marker::Array16 => (0, self.be(2)?),
                Marker::Array32 => (0, self.be(4)?),
                Marker::FixMap(n) => (0, 2 * u64::from(n)),
                Marker::Map16 => (0, 2 * self.be(2)?),
                Marker::Map32 => (0, 2 * self.be(4)?),
                Marker::FixExt1 => (2, 0),
                Marker::FixExt2 => (3, 0),
                Marker::FixExt4 => (5, 0),
                Marker::FixExt8 => (9, 0),
                Marker::FixExt16 => (17, 0),
                Marker::Ext8 => (self.be(1)? as usize + 1, 0),
                Marker::Ext16 => (self.be(2)? as usize + 1, 0),
                Marker::Ext32 => (self.be(4)? as usize + 1, 0),
                Marker::Reserved => {
                    return Err(WireError::Malformed("reserved MessagePack marker"));
                }
            };
            self.take(skip)?;
            if children > 0 {
                if children > self.remaining() as u64 {
                    return Err(WireError::Truncated);
                }
                if depth_stack.len() >= MAX_DEPTH {
                    return Err(WireError::Malformed("value nests too deeply"));
                }
                depth_stack.push(pending);
                pending = children;
            }
        }
        Ok(())
    }
}

pub(crate) fn write_varint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

pub(crate) fn write_uint(out: &mut Vec<u8>, n: u64) {
    rmp::encode::write_uint(out, n).expect("writing to a Vec cannot fail");
}

pub(crate) fn write_array(out: &mut Vec<u8>, len: usize) -> Result<(), WireError> {
    let len = u32::try_from(len).map_err(|_| WireError::TooLarge)?;
    rmp::encode::write_array_len(out, len).expect("writing to a Vec cannot fail");
    Ok(())
}

pub(crate) fn write_str(out: &mut Vec<u8>, s: &str) -> Result<(), WireError> {
    if u32::try_from(s.len()).is_err() {
        return Err(WireError::TooLarge);
    }
    rmp::encode::write_str(out, s).expect("writing to a Vec cannot fail");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skip_value_steps_over_nested_values_exactly() {
        let value = (1u8, "two", vec![3u64, u64::MAX], (Some(-5i32), [0.5f64]));
        let mut bytes = rmp_serde::to_vec(&value).unwrap();
        let end = bytes.len();
        bytes.push(0xc0);
        let mut reader = Reader::new(&bytes);
        reader.skip_value().unwrap();
        assert_eq!(reader.position(), end);
    }

    #[test]
    fn skip_value_refuses_truncated_and_deep_input() {
        let bytes = rmp_serde::to_vec(&vec!["abc"; 3]).unwrap();
        for cut in 0..bytes.len() {
            assert!(Reader::new(&bytes[..cut]).skip_value().is_err());
        }
        let deep = vec![0x91u8; 10_000];
        assert!(Reader::new(&deep).skip_value().is_err());
    }

    #[test]
    fn varints_round_trip_and_refuse_overflow() {
        for n in [0, 1, 127, 128, 300, u64::from(u32::MAX), u64::MAX] {
            let mut out = Vec::new();
            write_varint(&mut out, n);
            let mut reader = Reader::new(&out);
            assert_eq!(reader.varint(), Ok(n));
            assert_eq!(reader.remaining(), 0);
        }
        let mut reader = Reader::new(&[0xff; 10]);
        assert!(reader.varint().is_err());
        let mut reader = Reader::new(&[0x80, 0x80]);
        assert_eq!(reader.varint(), Err(WireError::Truncated));
    }

    #[test]
    fn array_counts_beyond_the_input_are_refused() {
        let bytes = [0xdd, 0xff, 0xff, 0xff, 0xff, 0x01];
        assert_eq!(Reader::new(&bytes).array(1), Err(WireError::Truncated));
    }
}
