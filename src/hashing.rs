//! BLAKE3 over many short fields: gathered, then hashed in few updates.
//!
//! Artifact keys and the offline model's random streams are hashed from dozens of short fields
//! (tags, lengths, labels, numbers). BLAKE3's `update` has a fixed cost per call that a field of
//! two bytes pays in full, and `new_derive_key` hashes its context string every time; in a cold
//! offline build the two came to about a tenth of the CPU. [`Gathered`] copies short writes into a
//! buffer and hands BLAKE3 one slice per buffer-full, and [`DeriveKey`] builds a context's hasher
//! once and clones it. The input bytes are the same, in the same order, so every hash is the same
//! as before: BLAKE3 hashes a byte stream, however it is cut into updates.

use std::sync::LazyLock;

/// A BLAKE3 derive-key hasher for one context, made once (a `static`) and cloned for each hash.
pub(crate) struct DeriveKey(LazyLock<blake3::Hasher>);

impl DeriveKey {
    pub(crate) const fn new(make: fn() -> blake3::Hasher) -> DeriveKey {
        DeriveKey(LazyLock::new(make))
    }

    /// A fresh hasher for this context, as `blake3::Hasher::new_derive_key` gives it.
    pub(crate) fn hasher(&self) -> blake3::Hasher {
        self.0.clone()
    }

    /// A fresh hasher for this context that gathers writes of up to `N` bytes.
    pub(crate) fn gathered<const N: usize>(&self) -> Gathered<N> {
        Gathered::new(self.hasher())
    }
}

/// A hasher that gathers writes in a buffer of `N` bytes on the stack: a write that fits is
/// copied; one that does not sends the buffer on first, and a write as large as the buffer goes to
/// BLAKE3 directly.
pub(crate) struct Gathered<const N: usize> {
    hasher: blake3::Hasher,
    buffer: [u8; N],
    len: usize,
}

impl<const N: usize> Gathered<N> {
    pub(crate) fn new(hasher: blake3::Hasher) -> Gathered<N> {
        Gathered {
            hasher,
            buffer: [0; N],
            len: 0,
        }
    }

    pub(crate) fn update(&mut self, bytes: &[u8]) {
        if self.len + bytes.len() > N {
            self.send();
            if bytes.len() >= N {
                self.hasher.update(bytes);
                return;
            }
        }
        self.buffer[self.len..self.len + bytes.len()].copy_from_slice(bytes);
        self.len += bytes.len();
    }

    fn send(&mut self) {
        if self.len > 0 {
            self.hasher.update(&self.buffer[..self.len]);
            self.len = 0;
        }
    }

    pub(crate) fn finalize(mut self) -> blake3::Hash {
        self.send();
        self.hasher.finalize()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static CONTEXT: DeriveKey =
        DeriveKey::new(|| blake3::Hasher::new_derive_key("ticketbuild hashing test"));

    /// However writes are cut and whatever the buffer's size, the hash is that of the bytes.
    #[test]
    fn gathered_writes_hash_as_one_stream() {
        let pieces: Vec<Vec<u8>> = (0..200u32)
            .map(|i| vec![(i % 251) as u8; (i as usize * 37) % 300])
            .collect();
        let mut whole = blake3::Hasher::new_derive_key("ticketbuild hashing test");
        for piece in &pieces {
            whole.update(piece);
        }
        let expected = whole.finalize();
        let mut small = CONTEXT.gathered::<16>();
        let mut large = CONTEXT.gathered::<1024>();
        for piece in &pieces {
            small.update(piece);
            large.update(piece);
        }
        assert_eq!(small.finalize(), expected);
        assert_eq!(large.finalize(), expected);
        assert_eq!(
            CONTEXT.gathered::<64>().finalize(),
            blake3::Hasher::new_derive_key("ticketbuild hashing test").finalize()
        );
    }
}
