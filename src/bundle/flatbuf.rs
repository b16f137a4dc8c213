//! A bounds-checked reader of flatbuffer tables and vectors, in safe Rust.
//!
//! It knows the wire format only (tables through their vtables, offsets, vectors, strings),
//! nothing of any schema. Buffers are verified by the `flatbuffers` crate's verifier first;
//! every read here is checked all the same, so a gap between the two is an
//! [`Error::InvalidFormat`], never a panic.

use crate::{Error, Result};

/// What errors name; the caller replaces it with the file's name.
const WHAT: &str = "flatbuffer";

pub(super) fn corrupt(reason: impl Into<String>) -> Error {
    Error::format(WHAT, reason)
}

fn read_array<const N: usize>(buf: &[u8], pos: usize) -> Result<[u8; N]> {
    pos.checked_add(N)
        .and_then(|end| buf.get(pos..end))
        .and_then(|s| <[u8; N]>::try_from(s).ok())
        .ok_or_else(|| corrupt(format!("a {N}-byte read at offset {pos} is out of bounds")))
}

fn read_u16(buf: &[u8], pos: usize) -> Result<u16> {
    Ok(u16::from_le_bytes(read_array(buf, pos)?))
}

fn read_u32(buf: &[u8], pos: usize) -> Result<u32> {
    Ok(u32::from_le_bytes(read_array(buf, pos)?))
}

/// `pos + u32 at pos`: where an offset field points.
fn follow_offset(buf: &[u8], pos: usize) -> Result<usize> {
    let off = read_u32(buf, pos)? as usize;
    pos.checked_add(off)
        .filter(|&p| p < buf.len())
        .ok_or_else(|| corrupt(format!("the offset at {pos} points out of bounds")))
}

/// A table; fields are addressed by vtable offset (4 + 2 × field index in the schema).
#[derive(Clone, Copy)]
pub(super) struct Table<'a> {
    buf: &'a [u8],
    pos: usize,
    vtable: usize,
    vtable_len: usize,
}

impl<'a> Table<'a> {
    fn at(buf: &'a [u8], pos: usize) -> Result<Table<'a>> {
        let soff = i32::from_le_bytes(read_array(buf, pos)?);
        let vtable = i64::try_from(pos)
            .ok()
            .and_then(|p| p.checked_sub(i64::from(soff)))
            .and_then(|v| usize::try_from(v).ok())
            .ok_or_else(|| corrupt(format!("the vtable of the table at {pos} is out of bounds")))?;
        let vtable_len = read_u16(buf, vtable)? as usize;
        Ok(Table { buf, pos, vtable, vtable_len })
    }

    /// The buffer's root table.
    pub(super) fn root(buf: &'a [u8]) -> Result<Table<'a>> {
        Table::at(buf, follow_offset(buf, 0)?)
    }

    /// Where the field at vtable offset `voff` is, if present.
    pub(super) fn field(&self, voff: u16) -> Result<Option<usize>> {
        let voff = usize::from(voff);
        if voff + 2 > self.vtable_len {
            return Ok(None);
        }
        let off = read_u16(self.buf, self.vtable + voff)?;
        if off == 0 {
            return Ok(None);
        }
        self.pos.checked_add(usize::from(off)).map(Some).ok_or_else(|| corrupt("a field offset overflows"))
    }

    fn scalar<const N: usize>(&self, voff: u16) -> Result<Option<[u8; N]>> {
        match self.field(voff)? {
            Some(p) => Ok(Some(read_array::<N>(self.buf, p)?)),
            None => Ok(None),
        }
    }

    /// A scalar field; absent is 0, the schema default of every field read.
    pub(super) fn u8(&self, voff: u16) -> Result<u8> {
        Ok(self.scalar::<1>(voff)?.map_or(0, |b| b[0]))
    }

    pub(super) fn i8(&self, voff: u16) -> Result<i8> {
        Ok(self.scalar::<1>(voff)?.map_or(0, i8::from_le_bytes))
    }

    pub(super) fn u16(&self, voff: u16) -> Result<u16> {
        Ok(self.scalar::<2>(voff)?.map_or(0, u16::from_le_bytes))
    }

    pub(super) fn i16(&self, voff: u16) -> Result<i16> {
        Ok(self.scalar::<2>(voff)?.map_or(0, i16::from_le_bytes))
    }

    pub(super) fn u32(&self, voff: u16) -> Result<u32> {
        Ok(self.scalar::<4>(voff)?.map_or(0, u32::from_le_bytes))
    }

    fn indirect(&self, voff: u16) -> Result<Option<usize>> {
        match self.field(voff)? {
            Some(p) => Ok(Some(follow_offset(self.buf, p)?)),
            None => Ok(None),
        }
    }

    pub(super) fn table(&self, voff: u16) -> Result<Option<Table<'a>>> {
        match self.indirect(voff)? {
            Some(p) => Ok(Some(Table::at(self.buf, p)?)),
            None => Ok(None),
        }
    }

    pub(super) fn vector(&self, voff: u16) -> Result<Option<Vector<'a>>> {
        match self.indirect(voff)? {
            Some(p) => Ok(Some(Vector::at(self.buf, p)?)),
            None => Ok(None),
        }
    }

    /// A vector field, empty when absent.
    pub(super) fn vector_or_empty(&self, voff: u16) -> Result<Vector<'a>> {
        Ok(self.vector(voff)?.unwrap_or(Vector { buf: self.buf, start: 0, len: 0 }))
    }

    pub(super) fn string(&self, voff: u16) -> Result<Option<&'a str>> {
        match self.indirect(voff)? {
            Some(p) => Ok(Some(string_at(self.buf, p)?)),
            None => Ok(None),
        }
    }

    /// A vector of strings, empty when absent, copied out.
    pub(super) fn strings(&self, voff: u16) -> Result<Vec<String>> {
        Ok(self.vector_or_empty(voff)?.strings()?.into_iter().map(str::to_string).collect())
    }
}

fn string_at(buf: &[u8], pos: usize) -> Result<&str> {
    let v = Vector::at(buf, pos)?;
    std::str::from_utf8(v.bytes(1)?).map_err(|e| corrupt(format!("a string at {pos} is not UTF-8: {e}")))
}

/// A vector: its element count and where its first element is.
#[derive(Clone, Copy)]
pub(super) struct Vector<'a> {
    buf: &'a [u8],
    /// The first element (after the length).
    start: usize,
    len: usize,
}

impl<'a> Vector<'a> {
    fn at(buf: &'a [u8], pos: usize) -> Result<Vector<'a>> {
        let len = read_u32(buf, pos)? as usize;
        Ok(Vector { buf, start: pos + 4, len })
    }

    /// The elements' bytes, for elements of `elem_size` bytes.
    pub(super) fn bytes(&self, elem_size: usize) -> Result<&'a [u8]> {
        self.len
            .checked_mul(elem_size)
            .and_then(|n| self.start.checked_add(n))
            .and_then(|end| self.buf.get(self.start..end))
            .ok_or_else(|| corrupt(format!("a vector of {} elements at {} is out of bounds", self.len, self.start)))
    }

    pub(super) fn u16s(&self) -> Result<Vec<u16>> {
        Ok(self.bytes(2)?.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect())
    }

    pub(super) fn u32s(&self) -> Result<Vec<u32>> {
        Ok(self.bytes(4)?.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
    }

    fn offset_target(&self, i: usize) -> Result<usize> {
        if i >= self.len {
            return Err(corrupt(format!("index {i} is past a vector of {}", self.len)));
        }
        let pos = i
            .checked_mul(4)
            .and_then(|o| self.start.checked_add(o))
            .ok_or_else(|| corrupt("a vector index overflows"))?;
        follow_offset(self.buf, pos)
    }

    pub(super) fn tables(&self) -> Result<Vec<Table<'a>>> {
        self.bytes(4)?;
        (0..self.len).map(|i| Table::at(self.buf, self.offset_target(i)?)).collect()
    }

    pub(super) fn strings(&self) -> Result<Vec<&'a str>> {
        self.bytes(4)?;
        (0..self.len).map(|i| string_at(self.buf, self.offset_target(i)?)).collect()
    }
}
