//! The global registry of event types, filled by `#[derive(DomainEvent)]` at link time.
//!
//! Tools and projections that do not know an event's Rust type ask the registry to decode it:
//! every registered type decodes through its own [`DomainEvent::decode`], so the upcasters run
//! on this path too.

use crate::error::{DecodeError, Error, Result};
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
///
/// A stored name (or alias) that several types claim, say `Deposited` of two aggregates, is
/// ambiguous: the registry decodes no event of that name ([`get`](Self::get) is `None`,
/// [`decode_json`](Self::decode_json) fails with [`Error::AmbiguousEventType`]), logs the clash
/// once at first use, and [`check`](Self::check) reports it, for a test or a startup check.
#[derive(Debug)]
pub struct EventRegistry {
    /// Every registered type, sorted by name, then Rust type.
    all: Vec<&'static EventType>,
    /// Names (and aliases) that exactly one type claims.
    by_name: BTreeMap<&'static str, &'static EventType>,
    /// Names (and aliases) that several types claim, with those types.
    ambiguous: BTreeMap<&'static str, Vec<&'static EventType>>,
    conflicts: Vec<(&'static EventType, &'static EventType)>,
}

impl EventRegistry {
    /// The registry of every `#[derive(DomainEvent)]` type linked into the program.
    pub fn global() -> &'static EventRegistry {
        static REGISTRY: OnceLock<EventRegistry> = OnceLock::new();
        REGISTRY.get_or_init(|| {
            let registry = Self::new(inventory::iter::<EventType>.into_iter().collect());
            for (name, types) in &registry.ambiguous {
                tracing::error!(
                    event_type = %name,
                    rust_types = ?rust_types(types),
                    "several event types share the stored name `{name}`: events of this name will \
                     not decode through the EventRegistry; give one of them #[event(name = \"...\")]"
                );
            }
            registry
        })
    }

    fn new(mut all: Vec<&'static EventType>) -> Self {
        // Link order is not stable; sort so that listings and "first" in a conflict are
        // deterministic.
        all.sort_by_key(|t| (t.name, t.rust_type()));
        let mut claims: BTreeMap<&'static str, Vec<&'static EventType>> = BTreeMap::new();
        for &event_type in &all {
            for name in std::iter::once(&event_type.name).chain(event_type.aliases) {
                let claimants = claims.entry(name).or_default();
                // An alias equal to the type's own name is one claim, not a clash.
                if !claimants.iter().any(|t| std::ptr::eq(*t, event_type)) {
                    claimants.push(event_type);
                }
            }
        }
        let mut by_name = BTreeMap::new();
        let mut ambiguous = BTreeMap::new();
        let mut conflicts = Vec::new();
        for (name, claimants) in claims {
            if let [only] = claimants[..] {
                by_name.insert(name, only);
            } else {
                conflicts.extend(claimants[1..].iter().map(|other| (claimants[0], *other)));
                ambiguous.insert(name, claimants);
            }
        }
        EventRegistry {
            all,
            by_name,
            ambiguous,
            conflicts,
        }
    }

    /// The type stored under `name`, or under `name` as an alias. `None` for a name no type
    /// claims and for an ambiguous one (claimed by several types, see [`check`](Self::check)).
    pub fn get(&self, name: &str) -> Option<&'static EventType> {
        self.by_name.get(name).copied()
    }

    /// Every registered type, sorted by name.
    pub fn iter(&self) -> impl Iterator<Item = &'static EventType> + '_ {
        self.all.iter().copied()
    }

    /// How many event types are registered.
    pub fn len(&self) -> usize {
        self.all.len()
    }

    /// Whether no event type is registered.
    pub fn is_empty(&self) -> bool {
        self.all.is_empty()
    }

    /// Pairs of distinct Rust types registered under the same name (or alias). Within one
    /// aggregate this is a compile error; across aggregates it is reported here and by
    /// [`check`](Self::check).
    pub fn conflicts(&self) -> &[(&'static EventType, &'static EventType)] {
        &self.conflicts
    }

    /// `Ok` if every stored name (and alias) decodes to exactly one Rust type; otherwise
    /// [`Error::AmbiguousEventType`] listing every clash. One line for a test suite:
    ///
    // Standalone: merged doctests link the events of every doctest, several named `Deposited`.
    /// ```standalone_crate
    /// # fn main() -> eventsource::Result<()> {
    /// eventsource::EventRegistry::global().check()?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn check(&self) -> Result<()> {
        let mut clashes = self.ambiguous.iter();
        let Some((name, types)) = clashes.next() else {
            return Ok(());
        };
        Err(Error::AmbiguousEventType {
            event_type: (*name).to_owned(),
            rust_types: rust_types(types),
            other_clashes: clashes
                .map(|(name, types)| ((*name).to_owned(), rust_types(types)))
                .collect(),
        })
    }

    /// Decodes any recorded event into its current schema as JSON, without knowing its Rust
    /// type. Unknown names, ambiguous names ([`Error::AmbiguousEventType`]) and undecodable
    /// payloads are typed errors; the first and last name the stream.
    pub fn decode_json(&self, event: &RecordedEvent) -> Result<serde_json::Value> {
        if let Some(types) = self.ambiguous.get(event.event_type.as_str()) {
            return Err(Error::AmbiguousEventType {
                event_type: event.event_type.clone(),
                rust_types: rust_types(types),
                other_clashes: Vec::new(),
            });
        }
        let event_type = self
            .get(&event.event_type)
            .ok_or_else(|| event.unknown_type())?;
        event_type
            .decode_json(event.schema_version, &event.payload)
            .map_err(|source| event.decode_error(source))
    }
}

fn rust_types(types: &[&'static EventType]) -> Vec<&'static str> {
    types.iter().map(|t| t.rust_type()).collect()
}
