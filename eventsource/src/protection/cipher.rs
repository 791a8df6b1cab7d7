//! The cryptography, all of it from RustCrypto's `aes-gcm`: AES-256-GCM with a random 96-bit
//! nonce per encryption, for the personal fields (under a subject's data key) and for the data
//! keys themselves (wrapped under the master key).

use crate::error::{Error, Result};
use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use std::fmt;
use uuid::Uuid;
use zeroize::{Zeroize, Zeroizing};

const NONCE_LEN: usize = 12;

/// The key that wraps (encrypts) every data key a SQL key store keeps: 32 bytes, from
/// configuration or the environment (`EVENTSOURCE_MASTER_KEY`, base64). Never printed: its
/// `Debug` shows nothing of it.
#[derive(Clone)]
// Only the SQL key stores wrap keys.
#[cfg_attr(not(any(feature = "sqlite", feature = "postgres")), allow(dead_code))]
pub struct MasterKey(Key<Aes256Gcm>);

#[cfg_attr(not(any(feature = "sqlite", feature = "postgres")), allow(dead_code))]
impl MasterKey {
    /// The environment variable [`from_env`](Self::from_env) reads.
    pub const ENV: &'static str = "EVENTSOURCE_MASTER_KEY";

    /// A master key of these 32 bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        MasterKey(bytes.into())
    }

    /// A master key from its base64 text (standard alphabet, 32 bytes once decoded).
    pub fn from_base64(text: &str) -> Result<Self> {
        let bytes = BASE64.decode(text.trim()).map_err(|_| {
            Error::InvalidConfig("the master key is not base64 (standard alphabet)".to_owned())
        })?;
        let bytes: [u8; 32] = bytes.try_into().map_err(|_| {
            Error::InvalidConfig("the master key must be 32 bytes once base64-decoded".to_owned())
        })?;
        Ok(Self::from_bytes(bytes))
    }

    /// The master key in `EVENTSOURCE_MASTER_KEY` (base64 of 32 bytes).
    pub fn from_env() -> Result<Self> {
        let text = std::env::var(Self::ENV)
            .map_err(|_| Error::InvalidConfig(format!("{} is not set", Self::ENV)))?;
        Self::from_base64(&text)
    }

    /// A fresh random master key, and its base64 text to keep in configuration.
    pub fn generate() -> (Self, String) {
        let key = Aes256Gcm::generate_key(&mut OsRng);
        (MasterKey(key), BASE64.encode(key))
    }

    /// Wraps a data key: nonce followed by the ciphertext and tag, bound to its id, tenant and
    /// subject.
    pub(crate) fn wrap(&self, key: &DataKey) -> Vec<u8> {
        let aad = wrap_aad(key.id, key.tenant(), key.subject());
        seal(&self.0, &*key.material.bytes, &aad)
    }

    /// Unwraps what [`wrap`](Self::wrap) made; a wrong master key (or altered bytes, or a row
    /// moved to another tenant or subject) fails the tag check: [`Error::MasterKey`].
    pub(crate) fn unwrap(
        &self,
        id: Uuid,
        tenant: Option<&str>,
        subject: &str,
        wrapped: &[u8],
    ) -> Result<DataKey> {
        let bytes = Zeroizing::new(
            open(&self.0, wrapped, &wrap_aad(id, tenant, subject))
                .ok_or(Error::MasterKey { key_id: id })?,
        );
        let bytes: [u8; 32] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| Error::MasterKey { key_id: id })?;
        Ok(DataKey::new(id, tenant, subject, bytes))
    }
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey(..)")
    }
}

/// The associated data of a wrapped key: its id, its tenant (length-prefixed, so that no
/// (tenant, subject) pair reads as another) and its subject. A key of no tenant keeps the
/// layout of the first release (id and subject), so that its rows still unwrap.
fn wrap_aad(id: Uuid, tenant: Option<&str>, subject: &str) -> Vec<u8> {
    let mut aad = id.as_bytes().to_vec();
    if let Some(tenant) = tenant {
        aad.extend_from_slice(b"\0tenant");
        aad.extend_from_slice(&(tenant.len() as u64).to_be_bytes());
        aad.extend_from_slice(tenant.as_bytes());
    }
    aad.extend_from_slice(subject.as_bytes());
    aad
}

/// One data subject's key: what encrypts that subject's personal fields. A subject is named
/// within its tenant: tenants `a` and `b` each with a subject `u-1` have two keys. Its `Debug`
/// shows the id, the tenant and the subject, never the key; its bytes are zeroed when it is
/// dropped.
#[derive(Clone)]
pub struct DataKey {
    id: Uuid,
    /// Shared by the clones (a cache hands out clones on every read): zeroed when the last
    /// one is dropped.
    material: std::sync::Arc<KeyMaterial>,
}

struct KeyMaterial {
    tenant: Option<String>,
    subject: String,
    bytes: Zeroizing<[u8; 32]>,
    /// The cipher, its key schedule computed once (a key decrypts many fields while cached);
    /// zeroed when dropped (the `zeroize` features of `aes` and `ghash`).
    cipher: Aes256Gcm,
}

impl DataKey {
    /// A fresh random key for `subject` of `tenant` (`None`: events with no tenant), with a
    /// new id (UUID v7: ids sort by creation).
    pub fn generate(tenant: Option<&str>, subject: &str) -> Self {
        let mut key = Aes256Gcm::generate_key(&mut OsRng);
        let data_key = DataKey::new(Uuid::now_v7(), tenant, subject, key.into());
        key.as_mut_slice().zeroize();
        data_key
    }

    pub(crate) fn new(id: Uuid, tenant: Option<&str>, subject: &str, bytes: [u8; 32]) -> Self {
        DataKey {
            id,
            material: std::sync::Arc::new(KeyMaterial {
                tenant: tenant.map(str::to_owned),
                subject: subject.to_owned(),
                cipher: Aes256Gcm::new(&bytes.into()),
                bytes: Zeroizing::new(bytes),
            }),
        }
    }

    /// The key's id, stored in each envelope it encrypted.
    pub fn id(&self) -> Uuid {
        self.id
    }

    /// The tenant of the subject (`None` for events with no tenant).
    pub fn tenant(&self) -> Option<&str> {
        self.material.tenant.as_deref()
    }

    /// The data subject whose key this is.
    pub fn subject(&self) -> &str {
        &self.material.subject
    }

    /// Encrypts the JSON text of field `field` into its envelope.
    pub(crate) fn encrypt(&self, field: &str, plain: &[u8]) -> serde_json::Value {
        let sealed = seal_with(&self.material.cipher, plain, &field_aad(self.id, field));
        let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
        serde_json::json!({
            ENVELOPE_TAG: ENVELOPE_V1,
            "kid": self.id.to_string(),
            "n": BASE64.encode(nonce),
            "c": BASE64.encode(ciphertext),
        })
    }

    /// Decrypts an envelope's nonce and ciphertext; `None` if they do not authenticate.
    pub(crate) fn decrypt(&self, field: &str, envelope: &Envelope) -> Option<Vec<u8>> {
        self.material
            .cipher
            .decrypt(
                Nonce::from_slice(&envelope.nonce),
                Payload {
                    msg: &envelope.ciphertext,
                    aad: &field_aad(self.id, field),
                },
            )
            .ok()
    }

    /// Seals `plain` (a snapshot's share) under this key, bound to `aad`: nonce, ciphertext
    /// and tag.
    pub(crate) fn seal(&self, plain: &[u8], aad: &[u8]) -> Vec<u8> {
        seal_with(&self.material.cipher, plain, aad)
    }

    /// Opens what [`seal`](Self::seal) made; `None` if it does not authenticate.
    pub(crate) fn open(&self, sealed: &[u8], aad: &[u8]) -> Option<Vec<u8>> {
        open_with(&self.material.cipher, sealed, aad)
    }
}

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DataKey")
            .field("id", &self.id)
            .field("tenant", &self.material.tenant)
            .field("subject", &self.material.subject)
            .finish_non_exhaustive()
    }
}

/// The envelope's marker key, and its one version.
pub(crate) const ENVELOPE_TAG: &str = "$enc";
const ENVELOPE_V1: &str = "v1";

/// A field bound to its key and its name: an envelope moved to another field does not open.
fn field_aad(id: Uuid, field: &str) -> Vec<u8> {
    let mut aad = id.as_bytes().to_vec();
    aad.extend_from_slice(field.as_bytes());
    aad
}

/// An encrypted field as stored: `{"$enc": "v1", "kid": key id, "n": nonce, "c": ciphertext}`,
/// nonce and ciphertext (with its tag) in base64.
#[derive(Debug)]
pub(crate) struct Envelope {
    pub(crate) key_id: Uuid,
    nonce: Vec<u8>,
    ciphertext: Vec<u8>,
}

impl Envelope {
    /// Whether `value` claims to be an envelope (of any version): in a declared personal field,
    /// where only this store writes envelopes, it must then open.
    pub(crate) fn is_envelope(value: &serde_json::Value) -> bool {
        value
            .as_object()
            .is_some_and(|object| object.contains_key(ENVELOPE_TAG))
    }

    /// The envelope in a field's raw JSON text: `None` if the text is not one (no `"$enc"`
    /// key), else the envelope or the reason it is malformed. The exact shape this store
    /// writes is read without building a JSON value.
    pub(crate) fn parse_text(text: &str) -> Option<std::result::Result<Self, String>> {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Written<'a> {
            #[serde(rename = "$enc")]
            version: &'a str,
            kid: &'a str,
            n: &'a str,
            c: &'a str,
        }
        if let Ok(written) = serde_json::from_str::<Written<'_>>(text) {
            return Some(Self::from_parts(
                written.version,
                written.kid,
                written.n,
                written.c,
            ));
        }
        let value: serde_json::Value = serde_json::from_str(text).ok()?;
        Self::is_envelope(&value).then(|| Self::parse(&value))
    }

    /// Reads an envelope; the reason it is malformed otherwise.
    pub(crate) fn parse(value: &serde_json::Value) -> std::result::Result<Self, String> {
        let object = value.as_object().ok_or("not an object")?;
        let text = |key: &str| {
            object
                .get(key)
                .and_then(|v| v.as_str())
                .ok_or_else(|| format!("the envelope has no text `{key}`"))
        };
        Self::from_parts(text(ENVELOPE_TAG)?, text("kid")?, text("n")?, text("c")?)
    }

    fn from_parts(
        version: &str,
        kid: &str,
        nonce: &str,
        ciphertext: &str,
    ) -> std::result::Result<Self, String> {
        if version != ENVELOPE_V1 {
            return Err(format!("unknown envelope version `{version}`"));
        }
        let key_id = kid
            .parse()
            .map_err(|_| "the envelope's key id is not a UUID".to_owned())?;
        let nonce = BASE64
            .decode(nonce)
            .ok()
            .filter(|n| n.len() == NONCE_LEN)
            .ok_or("the envelope's nonce is not 12 bytes of base64")?;
        let ciphertext = BASE64
            .decode(ciphertext)
            .map_err(|_| "the envelope's ciphertext is not base64".to_owned())?;
        Ok(Envelope {
            key_id,
            nonce,
            ciphertext,
        })
    }
}

pub(crate) fn seal(key: &Key<Aes256Gcm>, plain: &[u8], aad: &[u8]) -> Vec<u8> {
    seal_with(&Aes256Gcm::new(key), plain, aad)
}

fn seal_with(cipher: &Aes256Gcm, plain: &[u8], aad: &[u8]) -> Vec<u8> {
    let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
    let ciphertext = cipher
        .encrypt(&nonce, Payload { msg: plain, aad })
        .expect("AES-GCM encrypts any message shorter than 64 GiB");
    let mut sealed = nonce.to_vec();
    sealed.extend_from_slice(&ciphertext);
    sealed
}

pub(crate) fn open(key: &Key<Aes256Gcm>, sealed: &[u8], aad: &[u8]) -> Option<Vec<u8>> {
    open_with(&Aes256Gcm::new(key), sealed, aad)
}

fn open_with(cipher: &Aes256Gcm, sealed: &[u8], aad: &[u8]) -> Option<Vec<u8>> {
    if sealed.len() < NONCE_LEN {
        return None;
    }
    let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
    cipher
        .decrypt(
            Nonce::from_slice(nonce),
            Payload {
                msg: ciphertext,
                aad,
            },
        )
        .ok()
}
