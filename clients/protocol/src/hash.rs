//! Murmur3 (32-bit, x86 variant), which Pulsar uses for Key_Shared routing and for its
//! Murmur3 partition routing: the same key lands in the same hash slot on every broker and client.

/// Key_Shared hash slots: routing keys hash into `0..KEY_SHARED_SLOTS`.
pub const KEY_SHARED_SLOTS: u32 = 65_536;

/// The key Pulsar routes messages without an ordering or partition key by.
pub const NONE_KEY: &[u8] = b"NONE_KEY";

/// Murmur3 x86 32-bit of `data` with `seed`.
pub fn murmur3_32(data: &[u8], seed: u32) -> u32 {
    const C1: u32 = 0xcc9e_2d51;
    const C2: u32 = 0x1b87_3593;
    let mut h = seed;
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(C1).rotate_left(15).wrapping_mul(C2);
        h ^= k;
        h = h.rotate_left(13).wrapping_mul(5).wrapping_add(0xe654_6b64);
    }
    let tail = chunks.remainder();
    if !tail.is_empty() {
        let mut k = 0u32;
        for (i, b) in tail.iter().enumerate() {
            k |= (*b as u32) << (8 * i);
        }
        h ^= k.wrapping_mul(C1).rotate_left(15).wrapping_mul(C2);
    }
    h ^= data.len() as u32;
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// The Key_Shared slot of a routing key (Pulsar: `(murmur3 & i32::MAX) % 65536`).
pub fn key_slot(key: &[u8]) -> u32 {
    (murmur3_32(key, 0) & 0x7fff_ffff) % KEY_SHARED_SLOTS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_vectors() {
        assert_eq!(murmur3_32(b"", 0), 0);
        assert_eq!(murmur3_32(b"", 1), 0x514e_28b7);
        assert_eq!(murmur3_32(b"hello", 0), 0x248b_fa47);
        assert_eq!(murmur3_32(b"Hello, world!", 1234), 0xfaf6_cdb3);
        assert_eq!(
            murmur3_32(b"The quick brown fox jumps over the lazy dog", 0),
            0x2e4f_f723
        );
    }

    #[test]
    fn slots_are_in_range() {
        for k in [&b""[..], b"a", b"key-1", NONE_KEY] {
            assert!(key_slot(k) < KEY_SHARED_SLOTS);
        }
    }
}
