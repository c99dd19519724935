//! The offloaded form of a closed ledger: one data object of checksummed blocks and one index
//! object that says which block holds which entries. Both are immutable once written; a
//! reader fetches the index once and then only the blocks it needs (ranged reads), and every
//! byte it uses is covered by a CRC32C it checks, so a torn or corrupt object is reported,
//! never served.
//!
//! Data object: a header (`MAGIC`, format version, ledger id, block size target, CRC32C of
//! those), then blocks. A block is its body's length (u32), the body — the first entry id
//! (u64), the entry count (u32), then each entry as id (u64), length (u32) and bytes — and the
//! body's CRC32C (u32). All integers big-endian. Entries fill a block until it reaches the
//! block size target (an entry larger than the target gets a block of its own).
//!
//! Index object: `INDEX_MAGIC`, format version, ledger id, entry count, the last entry id,
//! the total data length, the number of blocks, then per block its first entry id, entry
//! count, offset and length in the data object; the whole followed by its CRC32C.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// First bytes of a data object.
pub const MAGIC: &[u8; 8] = b"MGNSEGD\x01";
/// First bytes of an index object.
pub const INDEX_MAGIC: &[u8; 8] = b"MGNSEGI\x01";
/// The format version this code writes and reads.
pub const VERSION: u16 = 1;
/// Header: magic, version, ledger id, block size, CRC.
pub const HEADER_LEN: usize = 8 + 2 + 8 + 4 + 4;

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum SegmentError {
    #[error("not a segment object (bad magic)")]
    Magic,
    #[error("segment format version {0} is not known to this build")]
    Version(u16),
    #[error("segment object is truncated: {0}")]
    Truncated(&'static str),
    #[error("checksum mismatch in {0}: the object is corrupt")]
    Checksum(&'static str),
    #[error("segment is inconsistent: {0}")]
    Inconsistent(String),
}

/// Where one block lies in the data object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockRef {
    pub first_entry: u64,
    pub entries: u32,
    pub offset: u64,
    pub len: u32,
}

impl BlockRef {
    pub fn last_entry(&self) -> u64 {
        self.first_entry + u64::from(self.entries) - 1
    }
}

/// What a reader needs before any block: the ledger, its entries' extent and the blocks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Index {
    pub ledger_id: u64,
    pub entries: u64,
    /// -1 for an empty ledger.
    pub last_entry: i64,
    pub data_len: u64,
    pub blocks: Vec<BlockRef>,
}

impl Index {
    /// The block holding `entry`, if the ledger has it.
    pub fn block_of(&self, entry: u64) -> Option<&BlockRef> {
        let i = self.blocks.partition_point(|b| b.last_entry() < entry);
        self.blocks
            .get(i)
            .filter(|b| b.first_entry <= entry && entry <= b.last_entry())
    }

    pub fn encode(&self) -> Bytes {
        let mut b = BytesMut::with_capacity(48 + self.blocks.len() * 24);
        b.put_slice(INDEX_MAGIC);
        b.put_u16(VERSION);
        b.put_u64(self.ledger_id);
        b.put_u64(self.entries);
        b.put_i64(self.last_entry);
        b.put_u64(self.data_len);
        b.put_u32(self.blocks.len() as u32);
        for r in &self.blocks {
            b.put_u64(r.first_entry);
            b.put_u32(r.entries);
            b.put_u64(r.offset);
            b.put_u32(r.len);
        }
        let crc = crc32c::crc32c(&b);
        b.put_u32(crc);
        b.freeze()
    }

    pub fn decode(raw: &[u8]) -> Result<Index, SegmentError> {
        if raw.len() < 8 + 2 + 8 * 4 + 4 + 4 {
            return Err(SegmentError::Truncated("index"));
        }
        if !raw.starts_with(INDEX_MAGIC) {
            return Err(SegmentError::Magic);
        }
        let body = checked(raw, "index")?;
        let mut b = &body[8..];
        let version = b.get_u16();
        if version != VERSION {
            return Err(SegmentError::Version(version));
        }
        let ledger_id = b.get_u64();
        let entries = b.get_u64();
        let last_entry = b.get_i64();
        let data_len = b.get_u64();
        let count = b.get_u32() as usize;
        if b.remaining() != count * 24 {
            return Err(SegmentError::Inconsistent(format!(
                "index says {count} blocks, has room for {}",
                b.remaining() / 24
            )));
        }
        let mut blocks = Vec::with_capacity(count);
        for _ in 0..count {
            blocks.push(BlockRef {
                first_entry: b.get_u64(),
                entries: b.get_u32(),
                offset: b.get_u64(),
                len: b.get_u32(),
            });
        }
        let index = Index {
            ledger_id,
            entries,
            last_entry,
            data_len,
            blocks,
        };
        index.check()?;
        Ok(index)
    }

    /// Blocks in order, contiguous in entries and in bytes, inside the data object.
    fn check(&self) -> Result<(), SegmentError> {
        let bad = |why: String| Err(SegmentError::Inconsistent(why));
        let mut next_entry = 0u64;
        let mut next_offset = HEADER_LEN as u64;
        let mut total = 0u64;
        for r in &self.blocks {
            if r.entries == 0 || r.first_entry != next_entry || r.offset != next_offset {
                return bad(format!("block at {} is out of place", r.offset));
            }
            // a crafted index must not overflow us into a panic
            let (Some(e), Some(o)) = (
                r.first_entry.checked_add(u64::from(r.entries)),
                r.offset.checked_add(u64::from(r.len)),
            ) else {
                return bad(format!(
                    "block at {} runs past the end of numbers",
                    r.offset
                ));
            };
            next_entry = e;
            next_offset = o;
            total += u64::from(r.entries);
        }
        if total != self.entries || self.last_entry != total as i64 - 1 {
            return bad(format!("{total} entries in blocks, {} said", self.entries));
        }
        if next_offset != self.data_len {
            return bad(format!(
                "blocks end at {next_offset}, data is {}",
                self.data_len
            ));
        }
        Ok(())
    }
}

/// Builds a data object from a ledger's entries, in order from entry 0.
pub struct SegmentWriter {
    ledger_id: u64,
    block_bytes: usize,
    /// Closed blocks not yet taken by [`SegmentWriter::take`].
    data: BytesMut,
    /// Bytes taken before `data`.
    taken: u64,
    block: BytesMut,
    block_first: u64,
    block_count: u32,
    next_entry: u64,
    blocks: Vec<BlockRef>,
}

impl SegmentWriter {
    /// A segment of ledger `ledger_id` whose blocks close once they hold `block_bytes`.
    pub fn new(ledger_id: u64, block_bytes: usize) -> SegmentWriter {
        let block_bytes = block_bytes.max(1024);
        let mut data = BytesMut::with_capacity(HEADER_LEN);
        data.put_slice(MAGIC);
        data.put_u16(VERSION);
        data.put_u64(ledger_id);
        data.put_u32(block_bytes.min(u32::MAX as usize) as u32);
        let crc = crc32c::crc32c(&data);
        data.put_u32(crc);
        SegmentWriter {
            ledger_id,
            block_bytes,
            data,
            taken: 0,
            block: BytesMut::new(),
            block_first: 0,
            block_count: 0,
            next_entry: 0,
            blocks: Vec::new(),
        }
    }

    /// Adds the next entry.
    pub fn add(&mut self, entry: &[u8]) -> Result<(), SegmentError> {
        let len = u32::try_from(entry.len())
            .map_err(|_| SegmentError::Inconsistent("an entry over 4 GiB".into()))?;
        if self.block_count == 0 {
            self.block_first = self.next_entry;
        }
        self.block.put_u64(self.next_entry);
        self.block.put_u32(len);
        self.block.put_slice(entry);
        self.block_count += 1;
        self.next_entry += 1;
        if self.block.len() >= self.block_bytes {
            self.close_block();
        }
        Ok(())
    }

    fn close_block(&mut self) {
        if self.block_count == 0 {
            return;
        }
        let mut body = BytesMut::with_capacity(12 + self.block.len());
        body.put_u64(self.block_first);
        body.put_u32(self.block_count);
        body.put_slice(&self.block);
        let offset = self.taken + self.data.len() as u64;
        self.data.put_u32(body.len() as u32);
        self.data.put_slice(&body);
        self.data.put_u32(crc32c::crc32c(&body));
        self.blocks.push(BlockRef {
            first_entry: self.block_first,
            entries: self.block_count,
            offset,
            len: (4 + body.len() + 4) as u32,
        });
        self.block.clear();
        self.block_count = 0;
    }

    /// Bytes of the data object ready to be written (the header and closed blocks), so a
    /// big ledger streams out in parts instead of being held whole.
    pub fn ready(&self) -> usize {
        self.data.len()
    }

    /// Takes what [`SegmentWriter::ready`] counts; the object is the concatenation of every
    /// take and what [`SegmentWriter::finish`] returns.
    pub fn take(&mut self) -> Bytes {
        let out = self.data.split().freeze();
        self.taken += out.len() as u64;
        out
    }

    /// The rest of the data object and the index of all of it.
    pub fn finish(mut self) -> (Bytes, Index) {
        self.close_block();
        let index = Index {
            ledger_id: self.ledger_id,
            entries: self.next_entry,
            last_entry: self.next_entry as i64 - 1,
            data_len: self.taken + self.data.len() as u64,
            blocks: self.blocks,
        };
        (self.data.freeze(), index)
    }
}

/// The bytes before a trailing CRC32C, if it matches them (`what`: for the error).
fn checked<'a>(raw: &'a [u8], what: &'static str) -> Result<&'a [u8], SegmentError> {
    let split = raw
        .len()
        .checked_sub(4)
        .ok_or(SegmentError::Truncated(what))?;
    let (body, crc) = raw.split_at(split);
    let stored = u32::from_be_bytes(crc.try_into().map_err(|_| SegmentError::Truncated(what))?);
    if crc32c::crc32c(body) != stored {
        return Err(SegmentError::Checksum(what));
    }
    Ok(body)
}

/// Checks a data object's header: its magic, version, checksum and ledger.
pub fn check_header(raw: &[u8], ledger_id: u64) -> Result<(), SegmentError> {
    let h = raw
        .get(..HEADER_LEN)
        .ok_or(SegmentError::Truncated("header"))?;
    if !h.starts_with(MAGIC) {
        return Err(SegmentError::Magic);
    }
    let body = checked(h, "header")?;
    let mut b = &body[8..];
    let version = b.get_u16();
    if version != VERSION {
        return Err(SegmentError::Version(version));
    }
    let id = b.get_u64();
    if id != ledger_id {
        return Err(SegmentError::Inconsistent(format!(
            "the object holds ledger {id}, not {ledger_id}"
        )));
    }
    Ok(())
}

/// The entries of one block, as fetched by its [`BlockRef`] (`raw` is exactly its bytes).
pub fn decode_block(raw: Bytes, r: &BlockRef) -> Result<Vec<(u64, Bytes)>, SegmentError> {
    if raw.len() != r.len as usize || raw.len() < 4 + 12 + 4 {
        return Err(SegmentError::Truncated("block"));
    }
    let body_len = u32::from_be_bytes([raw[0], raw[1], raw[2], raw[3]]) as usize;
    if body_len + 8 != raw.len() {
        return Err(SegmentError::Inconsistent("block length".into()));
    }
    checked(&raw[4..], "block")?;
    let mut b = raw.slice(4..4 + body_len);
    let first = b.get_u64();
    let count = b.get_u32();
    if first != r.first_entry || count != r.entries {
        return Err(SegmentError::Inconsistent(format!(
            "block holds {count} entries from {first}, the index says {} from {}",
            r.entries, r.first_entry
        )));
    }
    let mut out = Vec::with_capacity(count as usize);
    for i in 0..u64::from(count) {
        if b.remaining() < 12 {
            return Err(SegmentError::Truncated("entry header"));
        }
        let id = b.get_u64();
        let len = b.get_u32() as usize;
        if id != first + i || b.remaining() < len {
            return Err(SegmentError::Inconsistent(format!("entry {id} in block")));
        }
        out.push((id, b.split_to(len)));
    }
    if b.has_remaining() {
        return Err(SegmentError::Inconsistent(
            "bytes after the last entry".into(),
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn entry(i: u64) -> Vec<u8> {
        format!("entry-{i}-")
            .repeat((i % 7 + 1) as usize)
            .into_bytes()
    }

    fn build(n: u64, block: usize) -> (Bytes, Index) {
        let mut w = SegmentWriter::new(42, block);
        for i in 0..n {
            w.add(&entry(i)).unwrap();
        }
        w.finish()
    }

    fn block_bytes(data: &Bytes, r: &BlockRef) -> Bytes {
        data.slice(r.offset as usize..(r.offset + u64::from(r.len)) as usize)
    }

    #[test]
    fn every_entry_reads_back_through_the_index() {
        let (data, index) = build(1000, 4096);
        assert!(index.blocks.len() > 10, "{} blocks", index.blocks.len());
        assert_eq!(index.entries, 1000);
        assert_eq!(index.last_entry, 999);
        check_header(&data, 42).unwrap();
        let index = Index::decode(&index.encode()).unwrap();
        for i in [0u64, 1, 499, 998, 999] {
            let r = index.block_of(i).unwrap();
            let got = decode_block(block_bytes(&data, r), r).unwrap();
            let (_, e) = got.iter().find(|(id, _)| *id == i).unwrap();
            assert_eq!(e.as_ref(), entry(i).as_slice());
        }
        assert!(index.block_of(1000).is_none());
        // an empty ledger and an entry larger than a block
        let (_, empty) = build(0, 4096);
        assert_eq!((empty.entries, empty.last_entry), (0, -1));
        assert_eq!(Index::decode(&empty.encode()).unwrap(), empty);
        let mut w = SegmentWriter::new(7, 1024);
        w.add(&vec![9u8; 100_000]).unwrap();
        w.add(b"small").unwrap();
        let (data, index) = w.finish();
        assert_eq!(index.blocks.len(), 2);
        let r = index.block_of(0).unwrap();
        assert_eq!(
            decode_block(block_bytes(&data, r), r).unwrap()[0].1.len(),
            100_000
        );
    }

    #[test]
    fn corruption_and_truncation_are_reported_never_served() {
        let (data, index) = build(100, 2048);
        let r = index.blocks[1];
        // every single-bit flip in a block is caught
        let raw = block_bytes(&data, &r).to_vec();
        for at in 0..raw.len() {
            let mut bad = raw.clone();
            bad[at] ^= 0x10;
            assert!(decode_block(Bytes::from(bad), &r).is_err(), "flip at {at}");
        }
        assert!(decode_block(Bytes::from(raw[..raw.len() - 1].to_vec()), &r).is_err());
        // the index and the header likewise
        let enc = index.encode().to_vec();
        for at in [0, 9, 20, enc.len() / 2, enc.len() - 1] {
            let mut bad = enc.clone();
            bad[at] ^= 1;
            assert!(Index::decode(&bad).is_err(), "index flip at {at}");
        }
        assert!(Index::decode(&enc[..enc.len() - 5]).is_err());
        let mut header = data[..HEADER_LEN].to_vec();
        header[12] ^= 1;
        assert_eq!(
            check_header(&header, 42),
            Err(SegmentError::Checksum("header"))
        );
        assert!(check_header(&data, 43).is_err(), "another ledger's object");
        assert_eq!(
            check_header(b"short", 42),
            Err(SegmentError::Truncated("header"))
        );
        // a block handed the wrong reference is refused
        let other = index.blocks[2];
        assert!(decode_block(block_bytes(&data, &r), &other).is_err());
    }

    #[test]
    fn a_segment_taken_in_parts_is_the_segment_built_whole() {
        let (whole, whole_index) = build(500, 2048);
        let mut w = SegmentWriter::new(42, 2048);
        let mut parts = BytesMut::new();
        for i in 0..500 {
            w.add(&entry(i)).unwrap();
            if w.ready() > 5000 {
                parts.extend_from_slice(&w.take());
            }
        }
        let (rest, index) = w.finish();
        parts.extend_from_slice(&rest);
        assert_eq!(parts.freeze(), whole);
        assert_eq!(index, whole_index);
    }
}
