//! What an artifact looks like as an object in the remote cache, and where it is stored.
//!
//! An object is `MAGIC`, the artifact key (32 bytes), the BLAKE3 hash of the payload (32 bytes),
//! then the payload: the artifact encoded exactly as the local cache stores it, recorded request
//! included (so `explain` works on an answer a colleague paid for). Objects are named
//! `v1/<first two hex digits of the key>/<the key in hex>`: the fan-out spreads keys over
//! prefixes (S3 partitions request rates by prefix), and the version in front changes with the
//! format, as the local cache's schema does. The invariant: an object is used only when its
//! header names the key asked for, its payload hashes to the header's checksum and decodes to an
//! artifact of that key; anything else is corrupt, reported and never served.

use object_store::path::Path as ObjectPath;

use crate::cache::artifact::{self, Artifact};
use crate::cache::{Lookup, MissReason};
use crate::key::ArtifactKey;

/// The first bytes of every object; the digit is the format version (see [`FORMAT_PREFIX`]).
const MAGIC: &[u8; 8] = b"TKTBLD1\n";

/// The folder of this object format inside the remote prefix.
pub(crate) const FORMAT_PREFIX: &str = "v1";

const HEADER: usize = MAGIC.len() + 32 + 32;

/// Where the artifact of `key` is stored.
pub(crate) fn object_path(key: &ArtifactKey) -> ObjectPath {
    let hex = key.to_hex();
    ObjectPath::from(format!("{FORMAT_PREFIX}/{}/{hex}", &hex[..2]))
}

/// The object of `artifact`.
pub(crate) fn encode(artifact: &Artifact) -> Vec<u8> {
    encode_payload(&artifact.key, &artifact::encode(artifact))
}

/// The object of an artifact of `key` already encoded as the local cache stores it (`payload`).
pub(crate) fn encode_payload(key: &ArtifactKey, payload: &[u8]) -> Vec<u8> {
    let mut object = Vec::with_capacity(HEADER + payload.len());
    object.extend_from_slice(MAGIC);
    object.extend_from_slice(&key.0);
    object.extend_from_slice(blake3::hash(payload).as_bytes());
    object.extend_from_slice(payload);
    object
}

/// The artifact of `key` from `object`, or why the object cannot be used.
pub(crate) fn decode(key: &ArtifactKey, object: &[u8]) -> Result<Artifact, String> {
    if object.len() < HEADER || &object[..MAGIC.len()] != MAGIC {
        return Err("not a ticketbuild cache object (bad header)".into());
    }
    let (named, rest) = object[MAGIC.len()..].split_at(32);
    let (checksum, payload) = rest.split_at(32);
    if named != key.0 {
        return Err(format!(
            "the object names another key ({})",
            ArtifactKey(named.try_into().unwrap_or([0; 32])).short()
        ));
    }
    if blake3::hash(payload).as_bytes() != checksum {
        return Err("its checksum does not match its contents".into());
    }
    match artifact::decode::<Artifact>(key, payload) {
        Lookup::Hit(artifact) => Ok(*artifact),
        Lookup::Miss(MissReason::Corrupt(reason)) => Err(reason),
        Lookup::Miss(other) => Err(format!("{other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::artifact::test_artifact;

    #[test]
    fn an_object_round_trips_and_any_damage_is_caught() {
        let artifact = test_artifact(7);
        let object = encode(&artifact);
        assert_eq!(decode(&artifact.key, &object).unwrap(), artifact);
        // Another key asked for: refused.
        assert!(decode(&ArtifactKey([8; 32]), &object).is_err());
        // Every single flipped byte is caught.
        for i in 0..object.len() {
            let mut damaged = object.clone();
            damaged[i] ^= 0x40;
            assert!(decode(&artifact.key, &damaged).is_err(), "byte {i}");
        }
        // Truncated: refused.
        assert!(decode(&artifact.key, &object[..object.len() - 1]).is_err());
        assert_eq!(
            object_path(&artifact.key).as_ref(),
            format!("v1/07/{}", artifact.key.to_hex())
        );
    }
}
