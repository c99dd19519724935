//! Direct I/O for the bookie's two write streams (journal and entry logs).
//!
//! Both streams write each byte once and read it back rarely, so the page cache only costs
//! here: every buffered write is a kernel copy into freshly dirtied pages (measured: half of
//! the bookie's CPU at full load), and the kernel's writeback of those pages queues large
//! writes in front of the journal's latency-critical syncs. With `O_DIRECT` the device reads
//! straight from our buffer, and a write returns when the device has it, so a writer that
//! goes in slices keeps at most one slice queued ahead of a journal sync.
//!
//! `O_DIRECT` wants the buffer address, the file offset and the length aligned to the
//! device's block; [`AlignedBuf`] gives 4 KiB-aligned buffers in safe Rust (an over-allocated
//! `Vec`, used from its first aligned byte). Filesystems without direct I/O (tmpfs) refuse
//! the flag at open; the file is then opened buffered and everything else stays the same.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use rustix::io::Errno;

/// Alignment of every direct write: offset, length and buffer address.
pub const BLOCK: usize = 4096;

/// Rounds `n` up to a multiple of [`BLOCK`].
pub fn align_up(n: u64) -> u64 {
    n.div_ceil(BLOCK as u64) * BLOCK as u64
}

/// Rounds `n` down to a multiple of [`BLOCK`].
pub fn align_down(n: u64) -> u64 {
    n - n % BLOCK as u64
}

/// A growable byte buffer whose contents start at a [`BLOCK`]-aligned address.
pub struct AlignedBuf {
    raw: Vec<u8>,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    pub fn with_capacity(capacity: usize) -> AlignedBuf {
        let raw = vec![0u8; capacity + BLOCK];
        let start = (BLOCK - raw.as_ptr() as usize % BLOCK) % BLOCK;
        AlignedBuf { raw, start, len: 0 }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn capacity(&self) -> usize {
        self.raw.len() - self.start
    }

    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Makes room for `more` bytes past the end, moving to a larger buffer if needed.
    fn reserve(&mut self, more: usize) {
        let need = self.len + more;
        if need <= self.capacity() {
            return;
        }
        let mut bigger = AlignedBuf::with_capacity(need.max(self.capacity() * 2));
        bigger.raw[bigger.start..bigger.start + self.len].copy_from_slice(self.as_slice());
        bigger.len = self.len;
        *self = bigger;
    }

    pub fn extend_from_slice(&mut self, data: &[u8]) {
        self.reserve(data.len());
        let at = self.start + self.len;
        self.raw[at..at + data.len()].copy_from_slice(data);
        self.len += data.len();
    }

    /// Appends zeros up to the next multiple of [`BLOCK`].
    pub fn pad_to_block(&mut self) {
        let padded = align_up(self.len as u64) as usize;
        self.reserve(padded - self.len);
        let at = self.start + self.len;
        self.raw[at..self.start + padded].fill(0);
        self.len = padded;
    }

    /// Keeps the first `n` bytes.
    pub fn truncate(&mut self, n: usize) {
        self.len = self.len.min(n);
    }

    /// Drops the first `n` bytes, keeping the rest at the aligned start.
    pub fn drain_front(&mut self, n: usize) {
        let n = n.min(self.len);
        self.raw
            .copy_within(self.start + n..self.start + self.len, self.start);
        self.len -= n;
    }

    pub fn as_slice(&self) -> &[u8] {
        &self.raw[self.start..self.start + self.len]
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.raw[self.start..self.start + self.len]
    }
}

impl Default for AlignedBuf {
    /// An empty buffer that allocates on first use.
    fn default() -> AlignedBuf {
        AlignedBuf {
            raw: Vec::new(),
            start: 0,
            len: 0,
        }
    }
}

impl std::fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlignedBuf")
            .field("len", &self.len)
            .finish()
    }
}

/// A file written with direct I/O where the filesystem allows it. Reads should go through a
/// separately opened, buffered handle (direct reads would need aligned buffers too).
#[derive(Debug)]
pub struct DirectFile {
    file: File,
    path: PathBuf,
    direct: bool,
}

impl DirectFile {
    /// Creates `path` (it must not exist yet).
    pub fn create(path: &Path) -> std::io::Result<DirectFile> {
        let (file, direct) = open_for_writes(path, true)?;
        Ok(DirectFile {
            file,
            path: path.to_path_buf(),
            direct,
        })
    }

    pub fn file(&self) -> &File {
        &self.file
    }

    pub fn is_direct(&self) -> bool {
        self.direct
    }

    /// Writes `data` at `offset` through `write` (the plain `write_all_at`, or a test's
    /// fault-injecting one). Direct writes want `data` from an [`AlignedBuf`], at an aligned
    /// offset, a whole number of blocks long. A filesystem that still refuses (its block is
    /// larger than ours) gets the file reopened buffered and the write tried again.
    pub fn write_with(
        &mut self,
        data: &[u8],
        offset: u64,
        write: impl Fn(&File, &[u8], u64) -> std::io::Result<()>,
    ) -> std::io::Result<()> {
        let res = write(&self.file, data, offset);
        match res {
            Err(e) if self.direct && e.raw_os_error() == Some(Errno::INVAL.raw_os_error()) => {
                tracing::warn!(file = %self.path.display(), "direct write refused; going on buffered");
                self.file = OpenOptions::new().read(true).write(true).open(&self.path)?;
                self.direct = false;
                write(&self.file, data, offset)
            }
            other => other,
        }
    }
}

/// Opens `path` for direct writes (creating it if `create_new`, else it must exist), falling
/// back to buffered I/O where the filesystem has none. Returns the file and whether it is
/// direct.
fn open_for_writes(path: &Path, create_new: bool) -> std::io::Result<(File, bool)> {
    use std::os::unix::fs::OpenOptionsExt;
    let open = |direct: bool| {
        let mut o = OpenOptions::new();
        o.read(true).write(true);
        if create_new {
            o.create_new(true);
        }
        if direct {
            o.custom_flags(rustix::fs::OFlags::DIRECT.bits() as i32);
        }
        o.open(path)
    };
    match open(true) {
        Ok(f) => Ok((f, true)),
        // EINVAL: this filesystem has no direct I/O. The failed open created nothing when
        // it failed on the flag, but be sure before retrying a create_new.
        Err(e) if e.raw_os_error() == Some(Errno::INVAL.raw_os_error()) => {
            if create_new && path.exists() {
                let f = OpenOptions::new().read(true).write(true).open(path)?;
                return Ok((f, false));
            }
            open(false).map(|f| (f, false))
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_stay_aligned_as_they_grow() {
        let mut b = AlignedBuf::with_capacity(10);
        assert_eq!(b.as_slice().as_ptr() as usize % BLOCK, 0);
        for i in 0..10_000u32 {
            b.extend_from_slice(&i.to_le_bytes());
        }
        assert_eq!(b.len(), 40_000);
        assert_eq!(b.as_slice().as_ptr() as usize % BLOCK, 0);
        assert_eq!(&b.as_slice()[39_996..], &9_999u32.to_le_bytes());
        b.pad_to_block();
        assert_eq!(b.len(), 40_960);
        assert!(b.as_slice()[40_000..].iter().all(|&x| x == 0));
        b.drain_front(36_864);
        assert_eq!(b.len(), 4_096);
        assert_eq!(&b.as_slice()[..4], &(36_864u32 / 4).to_le_bytes());
        b.clear();
        assert!(b.is_empty());
        b.pad_to_block();
        assert!(b.is_empty());
    }

    #[test]
    fn rounding() {
        assert_eq!(align_up(0), 0);
        assert_eq!(align_up(1), 4096);
        assert_eq!(align_up(4096), 4096);
        assert_eq!(align_down(8191), 4096);
    }

    #[test]
    fn direct_files_take_aligned_writes() {
        use std::os::unix::fs::FileExt;
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("f");
        let mut f = DirectFile::create(&path).expect("open");
        let mut b = AlignedBuf::with_capacity(BLOCK);
        b.extend_from_slice(b"hello");
        b.pad_to_block();
        f.write_with(b.as_slice(), 4096, |f, b, o| f.write_all_at(b, o))
            .expect("aligned write");
        f.file().sync_data().expect("sync");
        let back = std::fs::read(&path).expect("read back");
        assert_eq!(back.len(), 8192);
        assert_eq!(&back[4096..4101], b"hello");
        assert!(
            DirectFile::create(&path).is_err(),
            "create on an existing file"
        );
    }
}
