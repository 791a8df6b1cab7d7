//! Personal data: fields encrypted per data subject, and erasure by destroying the subject's key
//! ("crypto-shredding").
//!
//! An event declares its personal fields with the derive, each naming the field that holds the
//! data subject's id:
//!
//! ```ignore
//! #[derive(DomainEvent, Serialize, Deserialize)]
//! struct CustomerRegistered {
//!     customer_id: String,
//!     #[personal(subject = customer_id)]
//!     email: Personal<String>,
//! }
//! ```
//!
//! Those fields are encrypted only when the events go through a `ProtectedStore` (feature
//! `encryption`), a wrapper around any [`EventStore`](crate::EventStore): it encrypts them on
//! append with the subject's key from a `KeyStore`, and decrypts them on every read. After
//! `ProtectedStore::forget(subject)` the key is gone: the events stay, and their personal
//! fields read as [`Personal::Forgotten`]. Without the wrapper they are stored in plain.

use crate::event::DomainEvent;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[cfg(feature = "encryption")]
pub(crate) mod cipher;
#[cfg(feature = "encryption")]
mod keys;
#[cfg(feature = "encryption")]
pub(crate) mod sealed;
#[cfg(feature = "encryption")]
mod store;

#[cfg(feature = "encryption")]
pub use cipher::{DataKey, MasterKey};
#[cfg(all(feature = "encryption", feature = "postgres"))]
pub use keys::PostgresKeyStore;
#[cfg(all(feature = "encryption", feature = "sqlite"))]
pub use keys::SqliteKeyStore;
#[cfg(feature = "encryption")]
pub use keys::{InMemoryKeyStore, KeyState, KeyStore};
#[cfg(feature = "encryption")]
pub use store::{
    DEFAULT_KEY_CACHE, DEFAULT_KEY_TTL, EraseSnapshots, Erasure, ErasureHook, ProtectedStore,
};

/// The JSON that stands for an erased value: what [`Personal::Forgotten`] serializes to, and what
/// a reader of the decrypted JSON (the command line, a bus consumer) sees in place of a personal
/// field whose subject was forgotten.
pub const FORGOTTEN_MARKER: &str = "$forgotten";

/// The key that marks an encrypted field as stored (`{"$enc": "v1", "kid": ..., "n": ..., "c":
/// ...}`): what a reader without the keys (the command line, raw SQL) finds in its place.
pub const ENCRYPTED_MARKER: &str = "$enc";

/// One personal field of an event type, as `#[personal(subject = ...)]` declares it: the
/// top-level JSON field that is encrypted and the field that holds the data subject's id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PersonalField {
    field: &'static str,
    subject: &'static str,
}

impl PersonalField {
    /// A personal field `field` of the subject named in field `subject`.
    pub const fn new(field: &'static str, subject: &'static str) -> Self {
        PersonalField { field, subject }
    }

    /// The JSON field that is encrypted.
    pub fn field(&self) -> &'static str {
        self.field
    }

    /// The JSON field that holds the subject's id.
    pub fn subject(&self) -> &'static str {
        self.subject
    }
}

/// An event type with personal fields: what `#[derive(DomainEvent)]` implements, beside
/// [`DomainEvent`], for an event with a field marked `#[personal(subject = ...)]`. An event
/// without such a field does not implement it. Kept apart from the core event trait so that
/// events, stores and projections know nothing of personal data.
pub trait PersonalData: DomainEvent {
    /// The fields marked `#[personal(subject = ...)]` in the current schema version.
    const FIELDS: &'static [PersonalField];
}

/// The registry entry of an event type with personal fields, which the derive submits for each
/// [`PersonalData`] type: what a `ProtectedStore` encrypts, found by stored name (and alias).
#[derive(Clone, Copy, Debug)]
pub struct PersonalEventType {
    name: &'static str,
    aliases: &'static [&'static str],
    schema_version: u32,
    fields: &'static [PersonalField],
}

impl PersonalEventType {
    /// The entry of `E`, as the derive submits it.
    pub const fn of<E: PersonalData>() -> Self {
        PersonalEventType {
            name: E::EVENT_TYPE,
            aliases: E::ALIASES,
            schema_version: E::SCHEMA_VERSION,
            fields: E::FIELDS,
        }
    }

    /// The stored name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Older names stored events of this type may carry.
    pub fn aliases(&self) -> &'static [&'static str] {
        self.aliases
    }

    /// The current schema version.
    pub fn schema_version(&self) -> u32 {
        self.schema_version
    }

    /// The personal fields of the current schema version.
    pub fn fields(&self) -> &'static [PersonalField] {
        self.fields
    }

    /// Every event type of the program with personal fields.
    pub fn all() -> impl Iterator<Item = &'static PersonalEventType> {
        inventory::iter::<PersonalEventType>.into_iter()
    }
}

inventory::collect!(PersonalEventType);

/// The type of a `#[personal]` field: the value, or the fact that it was erased.
///
/// `Known(v)` serializes as `v` itself, so a field that became personal in a later schema
/// version still reads its old, plain payloads. `Forgotten` serializes as
/// `{"$forgotten": true}` ([`FORGOTTEN_MARKER`]): what a personal field of a forgotten subject
/// decodes to, on every read path, instead of a decode error or the old value. Handlers match:
///
/// ```
/// use eventsource::Personal;
///
/// fn greeting(name: &Personal<String>) -> String {
///     match name {
///         Personal::Known(name) => format!("Hello, {name}"),
///         Personal::Forgotten => "Hello".to_owned(),
///     }
/// }
/// assert_eq!(greeting(&Personal::Known("Ada".into())), "Hello, Ada");
/// assert_eq!(greeting(&Personal::Forgotten), "Hello");
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub enum Personal<T> {
    /// The value.
    Known(T),
    /// The value was erased: its subject was forgotten.
    #[default]
    Forgotten,
}

impl<T> Personal<T> {
    /// The value, if it is known.
    pub fn known(&self) -> Option<&T> {
        match self {
            Personal::Known(value) => Some(value),
            Personal::Forgotten => None,
        }
    }

    /// The value, if it is known.
    pub fn into_known(self) -> Option<T> {
        match self {
            Personal::Known(value) => Some(value),
            Personal::Forgotten => None,
        }
    }

    /// Whether the value was erased.
    pub fn is_forgotten(&self) -> bool {
        matches!(self, Personal::Forgotten)
    }
}

impl<T> From<T> for Personal<T> {
    fn from(value: T) -> Self {
        Personal::Known(value)
    }
}

/// The JSON object that stands for an erased value.
pub(crate) fn forgotten_value() -> serde_json::Value {
    serde_json::json!({ FORGOTTEN_MARKER: true })
}

/// Whether `value` has the shape of a stored envelope: exactly `{"$enc": "v1", "kid": text,
/// "n": text, "c": text}`. What the command line masks; only a `ProtectedStore` decides what
/// is encrypted (the declared personal fields of the event's type, every one of them).
pub fn is_envelope(value: &serde_json::Value) -> bool {
    value.as_object().is_some_and(|object| {
        object.len() == 4
            && object.get(ENCRYPTED_MARKER).and_then(|v| v.as_str()) == Some("v1")
            && ["kid", "n", "c"]
                .iter()
                .all(|key| object.get(*key).is_some_and(serde_json::Value::is_string))
    })
}

/// Whether `value` is [`forgotten_value`].
pub(crate) fn is_forgotten_value(value: &serde_json::Value) -> bool {
    value
        .as_object()
        .is_some_and(|object| object.len() == 1 && object.contains_key(FORGOTTEN_MARKER))
}

/// The key that wraps a known value which has the shape of a marker (`{"$forgotten": ...}` or
/// `{"$known": ...}`), so that the application's own data never reads as an erased value.
const KNOWN_MARKER: &str = "$known";

/// Whether `value` is an object of one key, and that key is a marker.
fn has_marker_shape(value: &serde_json::Value) -> bool {
    value.as_object().is_some_and(|object| {
        object.len() == 1
            && (object.contains_key(FORGOTTEN_MARKER) || object.contains_key(KNOWN_MARKER))
    })
}

impl<T: Serialize> Serialize for Personal<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Personal::Known(value) => {
                let value = serde_json::to_value(value).map_err(serde::ser::Error::custom)?;
                if has_marker_shape(&value) {
                    serde_json::json!({ KNOWN_MARKER: value }).serialize(serializer)
                } else {
                    value.serialize(serializer)
                }
            }
            Personal::Forgotten => forgotten_value().serialize(serializer),
        }
    }
}

impl<'de, T: serde::de::DeserializeOwned> Deserialize<'de> for Personal<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = serde_json::Value::deserialize(deserializer)?;
        if is_forgotten_value(&value) {
            return Ok(Personal::Forgotten);
        }
        let value = match value {
            serde_json::Value::Object(mut object)
                if object.len() == 1 && object.contains_key(KNOWN_MARKER) =>
            {
                object.remove(KNOWN_MARKER).unwrap_or_default()
            }
            value => value,
        };
        // An envelope handed to a plain read says so, unless the value really is the
        // application's own (a map that merely has the envelope's keys).
        let envelope = is_envelope(&value);
        T::deserialize(value).map(Personal::Known).map_err(|error| {
            if envelope {
                serde::de::Error::custom(
                    "an encrypted personal field: read the events through a ProtectedStore that \
                     has the key store",
                )
            } else {
                serde::de::Error::custom(error)
            }
        })
    }
}
