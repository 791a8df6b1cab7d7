//! Sealed snapshots: a snapshot of a stream holding personal data, encrypted so that forgetting
//! any one of the stream's subjects makes it unreadable.
//!
//! A snapshot is the aggregate's state, plain values of every subject whose events the stream
//! holds. It is encrypted with a fresh random key; that key is split into one share per data
//! key of the stream (XOR of random shares: every share is needed), and each share is sealed
//! under its data key. Destroying any of those keys destroys a share, hence the snapshot key:
//! the snapshot can no longer be opened, by this process or by anyone with a copy of the
//! database, and the repository replays the events instead (where the forgotten fields read as
//! `Personal::Forgotten`).
//!
//! Stored as the snapshot's state, a JSON object (PostgreSQL keeps states as `jsonb`):
//! `{"$sealed": "v1", "keys": [{"t": tenant or null, "kid": key id, "s": sealed share}], "c":
//! sealed state}`, base64. A state of that shape that does not open reads as no snapshot: a
//! snapshot is only ever a shortcut, never the data itself.

use super::cipher::{DataKey, open, seal};
use crate::stream::StreamId;
use aes_gcm::aead::{KeyInit, OsRng};
use aes_gcm::{Aes256Gcm, Key};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use uuid::Uuid;
use zeroize::{Zeroize, Zeroizing};

const SEALED_TAG: &str = "$sealed";
const SEALED_V1: &str = "v1";

/// One data key a sealed snapshot needs, as the snapshot names it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct KeyRef {
    pub(crate) tenant: Option<String>,
    pub(crate) key_id: Uuid,
}

/// A sealed snapshot as stored, before it is opened.
#[derive(Debug)]
pub(crate) struct Sealed {
    /// The keys whose shares it holds, with each sealed share.
    pub(crate) shares: Vec<(KeyRef, Vec<u8>)>,
    state: Vec<u8>,
}

fn share_aad(key_id: Uuid, stream: &StreamId, version: u64) -> Vec<u8> {
    let mut aad = b"eventsource snapshot share\0".to_vec();
    aad.extend_from_slice(key_id.as_bytes());
    stream_aad(&mut aad, stream, version);
    aad
}

fn state_aad(stream: &StreamId, version: u64, state_version: u32) -> Vec<u8> {
    let mut aad = b"eventsource snapshot\0".to_vec();
    stream_aad(&mut aad, stream, version);
    aad.extend_from_slice(&state_version.to_be_bytes());
    aad
}

fn stream_aad(aad: &mut Vec<u8>, stream: &StreamId, version: u64) {
    for part in [stream.aggregate_type(), stream.aggregate_id()] {
        aad.extend_from_slice(&(part.len() as u64).to_be_bytes());
        aad.extend_from_slice(part.as_bytes());
    }
    aad.extend_from_slice(&version.to_be_bytes());
}

/// Seals `state` (the snapshot of `stream` at `version`) so that it opens only with every one
/// of `keys` (at least one).
pub(crate) fn seal_state(
    keys: &[DataKey],
    stream: &StreamId,
    version: u64,
    state_version: u32,
    state: &str,
) -> String {
    debug_assert!(!keys.is_empty());
    let snapshot_key = Aes256Gcm::generate_key(&mut OsRng);
    let mut last = Zeroizing::new(<[u8; 32]>::from(snapshot_key));
    let mut shares = Vec::with_capacity(keys.len());
    for (i, key) in keys.iter().enumerate() {
        let share = if i + 1 == keys.len() {
            last.clone()
        } else {
            let mut random = Aes256Gcm::generate_key(&mut OsRng);
            let share = Zeroizing::new(<[u8; 32]>::from(random));
            random.as_mut_slice().zeroize();
            for (l, s) in last.iter_mut().zip(share.iter()) {
                *l ^= s;
            }
            share
        };
        let sealed = key.seal(&*share, &share_aad(key.id(), stream, version));
        shares.push(serde_json::json!({
            "t": key.tenant(),
            "kid": key.id().to_string(),
            "s": BASE64.encode(sealed),
        }));
    }
    let sealed_state = seal(
        &snapshot_key,
        state.as_bytes(),
        &state_aad(stream, version, state_version),
    );
    serde_json::json!({
        SEALED_TAG: SEALED_V1,
        "keys": shares,
        "c": BASE64.encode(sealed_state),
    })
    .to_string()
}

/// The sealed snapshot in `state`, if `state` is one (a cheap test first: most states are not).
pub(crate) fn parse(state: &str) -> Option<Sealed> {
    if !state.contains("\"$sealed\"") {
        return None;
    }
    let value: serde_json::Value = serde_json::from_str(state).ok()?;
    let object = value.as_object()?;
    if object.len() != 3 || object.get(SEALED_TAG)?.as_str()? != SEALED_V1 {
        return None;
    }
    let state = BASE64.decode(object.get("c")?.as_str()?).ok()?;
    let mut shares = Vec::new();
    for entry in object.get("keys")?.as_array()? {
        let entry = entry.as_object()?;
        let tenant = match entry.get("t")? {
            serde_json::Value::Null => None,
            serde_json::Value::String(tenant) => Some(tenant.clone()),
            _ => return None,
        };
        let key_id = entry.get("kid")?.as_str()?.parse().ok()?;
        let share = BASE64.decode(entry.get("s")?.as_str()?).ok()?;
        shares.push((KeyRef { tenant, key_id }, share));
    }
    if shares.is_empty() {
        return None;
    }
    Some(Sealed { shares, state })
}

impl Sealed {
    /// The plain state, given the live key of every share (in the order of `shares`); `None`
    /// if anything does not authenticate.
    pub(crate) fn open(
        &self,
        keys: &[DataKey],
        stream: &StreamId,
        version: u64,
        state_version: u32,
    ) -> Option<String> {
        if keys.len() != self.shares.len() {
            return None;
        }
        let mut snapshot_key = Zeroizing::new([0u8; 32]);
        for (key, (reference, sealed)) in keys.iter().zip(&self.shares) {
            if key.id() != reference.key_id {
                return None;
            }
            let share = Zeroizing::new(key.open(sealed, &share_aad(key.id(), stream, version))?);
            if share.len() != 32 {
                return None;
            }
            for (k, s) in snapshot_key.iter_mut().zip(share.iter()) {
                *k ^= s;
            }
        }
        let key = Key::<Aes256Gcm>::from(*snapshot_key);
        let plain = open(
            &key,
            &self.state,
            &state_aad(stream, version, state_version),
        )?;
        String::from_utf8(plain).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_with_every_key_and_only_then() {
        let stream = StreamId::new("Customer", "c-1").unwrap();
        let a = DataKey::generate(Some("t"), "a");
        let b = DataKey::generate(None, "b");
        let text = seal_state(&[a.clone(), b.clone()], &stream, 3, 1, r#"{"name":"Ada"}"#);
        assert!(!text.contains("Ada"));
        let sealed = parse(&text).expect("a sealed snapshot");
        assert_eq!(sealed.shares.len(), 2);
        let open = sealed.open(&[a.clone(), b.clone()], &stream, 3, 1);
        assert_eq!(open.as_deref(), Some(r#"{"name":"Ada"}"#));
        // Another version, another stream, a missing or replaced key: nothing.
        assert!(
            sealed
                .open(&[a.clone(), b.clone()], &stream, 4, 1)
                .is_none()
        );
        assert!(
            sealed
                .open(std::slice::from_ref(&a), &stream, 3, 1)
                .is_none()
        );
        let other = DataKey::generate(None, "b");
        assert!(sealed.open(&[a, other], &stream, 3, 1).is_none());
        assert!(parse(r#"{"$sealed":"v1","keys":[],"c":""}"#).is_none());
        assert!(parse(r#"{"name":"$sealed"}"#).is_none());
    }
}
