//! The four payload codecs of the Pulsar protocol, in the forms the official clients use:
//! LZ4 raw blocks, zlib streams, zstd frames and raw (unframed) Snappy. The uncompressed size
//! travels in the metadata, so decoding checks the output against it.

use std::io::{Read, Write};
use std::str::FromStr;

use crate::proto::CompressionType;

/// Largest payload we agree to inflate: a bound against decompression bombs.
pub const MAX_UNCOMPRESSED: usize = 512 << 20;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Compression {
    #[default]
    None,
    Lz4,
    Zlib,
    Zstd,
    Snappy,
}

impl Compression {
    pub fn proto(self) -> CompressionType {
        match self {
            Compression::None => CompressionType::None,
            Compression::Lz4 => CompressionType::Lz4,
            Compression::Zlib => CompressionType::Zlib,
            Compression::Zstd => CompressionType::Zstd,
            Compression::Snappy => CompressionType::Snappy,
        }
    }

    pub fn from_proto(code: i32) -> Option<Compression> {
        Some(match CompressionType::try_from(code).ok()? {
            CompressionType::None => Compression::None,
            CompressionType::Lz4 => Compression::Lz4,
            CompressionType::Zlib => Compression::Zlib,
            CompressionType::Zstd => Compression::Zstd,
            CompressionType::Snappy => Compression::Snappy,
        })
    }

    /// Compresses `data`; `None` returns it unchanged.
    pub fn compress(self, data: &[u8]) -> Result<Vec<u8>, String> {
        match self {
            Compression::None => Ok(data.to_vec()),
            Compression::Lz4 => lz4::block::compress(data, None, false).map_err(|e| e.to_string()),
            Compression::Zlib => {
                let mut enc = flate2::write::ZlibEncoder::new(
                    Vec::with_capacity(data.len() / 2),
                    flate2::Compression::default(),
                );
                enc.write_all(data).map_err(|e| e.to_string())?;
                enc.finish().map_err(|e| e.to_string())
            }
            Compression::Zstd => zstd::bulk::compress(data, 3).map_err(|e| e.to_string()),
            Compression::Snappy => snap::raw::Encoder::new()
                .compress_vec(data)
                .map_err(|e| e.to_string()),
        }
    }

    /// Inflates `data` that the metadata says was `size` bytes before compression.
    pub fn decompress(self, data: &[u8], size: usize) -> Result<Vec<u8>, String> {
        if size > MAX_UNCOMPRESSED {
            return Err(format!(
                "uncompressed size {size} exceeds the limit of {MAX_UNCOMPRESSED}"
            ));
        }
        let out = match self {
            Compression::None => data.to_vec(),
            Compression::Lz4 => {
                let n = i32::try_from(size).map_err(|_| "size out of range".to_string())?;
                lz4::block::decompress(data, Some(n)).map_err(|e| format!("lz4: {e}"))?
            }
            Compression::Zlib => {
                let mut out = Vec::with_capacity(size);
                flate2::read::ZlibDecoder::new(data)
                    .take(size as u64 + 1)
                    .read_to_end(&mut out)
                    .map_err(|e| format!("zlib: {e}"))?;
                out
            }
            Compression::Zstd => {
                zstd::bulk::decompress(data, size).map_err(|e| format!("zstd: {e}"))?
            }
            Compression::Snappy => {
                let n = snap::raw::decompress_len(data).map_err(|e| format!("snappy: {e}"))?;
                if n != size {
                    return Err(format!("snappy: {n} bytes inside, metadata says {size}"));
                }
                snap::raw::Decoder::new()
                    .decompress_vec(data)
                    .map_err(|e| format!("snappy: {e}"))?
            }
        };
        if out.len() != size {
            return Err(format!(
                "{self:?}: inflated to {} bytes, metadata says {size}",
                out.len()
            ));
        }
        Ok(out)
    }
}

impl FromStr for Compression {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "none" => Compression::None,
            "lz4" => Compression::Lz4,
            "zlib" => Compression::Zlib,
            "zstd" => Compression::Zstd,
            "snappy" => Compression::Snappy,
            _ => {
                return Err(format!(
                    "unknown compression {s:?} (none, lz4, zlib, zstd, snappy)"
                ));
            }
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    const ALL: [Compression; 5] = [
        Compression::None,
        Compression::Lz4,
        Compression::Zlib,
        Compression::Zstd,
        Compression::Snappy,
    ];

    #[test]
    fn each_codec_round_trips_and_checks_the_size() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        for c in ALL {
            let z = c.compress(&data).unwrap();
            if c != Compression::None {
                assert!(z.len() < data.len() / 4, "{c:?} did not compress");
            }
            assert_eq!(c.decompress(&z, data.len()).unwrap(), data);
            assert!(
                c.decompress(&z, data.len() + 1).is_err(),
                "{c:?} wrong size"
            );
            assert!(c.decompress(&z, MAX_UNCOMPRESSED + 1).is_err());
        }
    }

    proptest! {
        #[test]
        fn garbage_never_panics(data in proptest::collection::vec(any::<u8>(), 0..512), size in 0usize..4096) {
            for c in ALL {
                let _ = c.decompress(&data, size);
            }
        }
    }
}
