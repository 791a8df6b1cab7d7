//! The global registry of event types, filled by `#[derive(DomainEvent)]` at link time.
//!
//! Tools and projections that do not know an event's Rust type ask the registry to decode it:
//! every registered type decodes through its own [`DomainEvent::decode`], so the upcasters run
//! on this path too.

use crate::error::{DecodeError, Result};
use crate::event::{DomainEvent, RecordedEvent};
use std::collections::BTreeMap;
use std::fmt;
use std::sync::OnceLock;

/// One registered event type: its stored name and version, and how to decode it.
pub struct EventType {
    name: &'static str,
    schema_version: u32,
    aggregate: Option<&'static str>,
    aliases: &'static [&'static str],
    versions: &'static [u32],
    rust_type: fn() -> &'static str,
    to_json: fn(u32, &str) -> std::result::Result<serde_json::Value, DecodeError>,
}

impl EventType {
    /// The registration of `E`, as the derive submits it.
    pub const fn of<E: DomainEvent>() -> Self {
        EventType {
            name: E::EVENT_TYPE,
            schema_version: E::SCHEMA_VERSION,
            aggregate: E::AGGREGATE_TYPE,
            aliases: E::ALIASES,
            versions: E::DECODABLE_VERSIONS,
            rust_type: std::any::type_name::<E>,
            to_json: decode_to_json::<E>,
        }
    }

    /// The stored name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The current schema version.
    pub fn schema_version(&self) -> u32 {
        self.schema_version
    }

    /// The aggregate the event declares, if any.
    pub fn aggregate(&self) -> Option<&'static str> {
        self.aggregate
    }

    /// Older names stored events of this type may carry.
    pub fn aliases(&self) -> &'static [&'static str] {
        self.aliases
    }

    /// Every schema version this type decodes (the current one and those with upcasters),
    /// ascending.
    pub fn versions(&self) -> &'static [u32] {
        self.versions
    }

    /// The Rust type's path, as `std::any::type_name` gives it.
    pub fn rust_type(&self) -> &'static str {
        (self.rust_type)()
    }

    /// Decodes a payload of `schema_version` into the current schema, as JSON.
    pub fn decode_json(
        &self,
        schema_version: u32,
        payload: &str,
    ) -> std::result::Result<serde_json::Value, DecodeError> {
        (self.to_json)(schema_version, payload)
    }
}

impl fmt::Debug for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventType")
            .field("name", &self.name)
            .field("schema_version", &self.schema_version)
            .field("aggregate", &self.aggregate)
            .field("aliases", &self.aliases)
            .field("versions", &self.versions)
            .field("rust_type", &self.rust_type())
            .finish()
    }
}

fn decode_to_json<E: DomainEvent>(
    schema_version: u32,
    payload: &str,
) -> std::result::Result<serde_json::Value, DecodeError> {
    let event = E::decode(schema_version, payload)?;
    serde_json::to_value(&event).map_err(DecodeError::Payload)
}

inventory::collect!(EventType);

/// All event types of the program, by stored name.
#[derive(Debug)]
pub struct EventRegistry {
    by_name: BTreeMap<&'static str, &'static EventType>,
    by_alias: BTreeMap<&'static str, &'static EventType>,
    conflicts: Vec<(&'static EventType, &'static EventType)>,
}

impl EventRegistry {
    /// The registry of every `#[derive(DomainEvent)]` type linked into the program.
    pub fn global() -> &'static EventRegistry {
        static REGISTRY: OnceLock<EventRegistry> = OnceLock::new();
        REGISTRY.get_or_init(|| {
            let mut by_name: BTreeMap<&'static str, &'static EventType> = BTreeMap::new();
            let mut conflicts = Vec::new();
            let mut all: Vec<&'static EventType> =
                inventory::iter::<EventType>.into_iter().collect();
            // Link order is not stable; sort so that "first" in a conflict is deterministic.
            all.sort_by_key(|t| (t.name, t.rust_type()));
            for event_type in all {
                if let Some(first) = by_name.get(event_type.name) {
                    conflicts.push((*first, event_type));
                } else {
                    by_name.insert(event_type.name, event_type);
                }
            }
            let mut by_alias = BTreeMap::new();
            for event_type in by_name.values().copied() {
                for alias in event_type.aliases {
                    if let Some(other) = by_name.get(alias).or(by_alias.get(alias)) {
                        conflicts.push((*other, event_type));
                    } else {
                        by_alias.insert(*alias, event_type);
                    }
                }
            }
            EventRegistry {
                by_name,
                by_alias,
                conflicts,
            }
        })
    }

    /// The type stored under `name`, or under `name` as an alias.
    pub fn get(&self, name: &str) -> Option<&'static EventType> {
        self.by_name.get(name).or(self.by_alias.get(name)).copied()
    }

    /// Every registered type, sorted by name.
    pub fn iter(&self) -> impl Iterator<Item = &'static EventType> + '_ {
        self.by_name.values().copied()
    }

    /// How many names are registered.
    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    /// Whether no event type is registered.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// Pairs of distinct Rust types registered under the same name (or alias). Within one
    /// aggregate this is a compile error; across aggregates it is reported here (check it in a
    /// test or at startup).
    pub fn conflicts(&self) -> &[(&'static EventType, &'static EventType)] {
        &self.conflicts
    }

    /// Decodes any recorded event into its current schema as JSON, without knowing its Rust
    /// type. Unknown names and undecodable payloads are typed errors naming the stream.
    pub fn decode_json(&self, event: &RecordedEvent) -> Result<serde_json::Value> {
        let event_type = self
            .get(&event.event_type)
            .ok_or_else(|| event.unknown_type())?;
        event_type
            .decode_json(event.schema_version, &event.payload)
            .map_err(|source| event.decode_error(source))
    }
}
