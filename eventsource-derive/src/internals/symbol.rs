use std::fmt::{self, Display};
use syn::{Ident, Path};

/// An attribute keyword, named once here so that parsing and messages cannot drift apart.
#[derive(Copy, Clone)]
pub(crate) struct Symbol(&'static str);

pub(crate) const EVENT: Symbol = Symbol("event");
pub(crate) const HANDLES: Symbol = Symbol("handles");
pub(crate) const PROJECTION: Symbol = Symbol("projection");
/// `#[personal(subject = field)]` on a field of a `#[derive(DomainEvent)]` struct.
pub(crate) const PERSONAL: Symbol = Symbol("personal");
/// `subject = field` in `#[personal(...)]`: the field holding the data subject's id.
pub(crate) const SUBJECT: Symbol = Symbol("subject");

pub(crate) const NAME: Symbol = Symbol("name");
pub(crate) const VERSION: Symbol = Symbol("version");
pub(crate) const AGGREGATE: Symbol = Symbol("aggregate");
pub(crate) const CRATE: Symbol = Symbol("crate");
pub(crate) const ID: Symbol = Symbol("id");
pub(crate) const ERROR: Symbol = Symbol("error");
pub(crate) const UNKNOWN_EVENTS: Symbol = Symbol("unknown_events");
pub(crate) const UPCAST: Symbol = Symbol("upcast");
/// `from_version = N` in `upcast(...)`: the schema version the payloads were stored at.
pub(crate) const FROM_VERSION: Symbol = Symbol("from_version");
/// `via = Type` in `upcast(...)`: the type payloads of that version decode as.
pub(crate) const VIA: Symbol = Symbol("via");
/// The old spelling of `via` in `upcast(...)`, recognised only to point to the new one.
pub(crate) const FROM: Symbol = Symbol("from");
pub(crate) const JSON: Symbol = Symbol("json");
pub(crate) const ALIAS: Symbol = Symbol("alias");
pub(crate) const RETIRED: Symbol = Symbol("retired");
pub(crate) const SNAPSHOT_EVERY: Symbol = Symbol("snapshot_every");
pub(crate) const STATE_VERSION: Symbol = Symbol("state_version");
/// `reset = method` in `#[projection(...)]`: the method that empties the read model.
pub(crate) const RESET: Symbol = Symbol("reset");

impl Symbol {
    pub(crate) fn as_str(self) -> &'static str {
        self.0
    }
}

impl PartialEq<Symbol> for Ident {
    fn eq(&self, word: &Symbol) -> bool {
        self == word.0
    }
}

impl PartialEq<Symbol> for &Ident {
    fn eq(&self, word: &Symbol) -> bool {
        *self == word.0
    }
}

impl PartialEq<Symbol> for Path {
    fn eq(&self, word: &Symbol) -> bool {
        self.is_ident(word.0)
    }
}

impl PartialEq<Symbol> for &Path {
    fn eq(&self, word: &Symbol) -> bool {
        self.is_ident(word.0)
    }
}

impl Display for Symbol {
    fn fmt(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str(self.0)
    }
}
