//! The parsed model of the macros' input, attribute parsing, cross-attribute checks and the
//! error context. Expansion lives in `event.rs` and `aggregate.rs`.

pub(crate) mod ast;
pub(crate) mod attr;
pub(crate) mod check;
pub(crate) mod ctxt;
pub(crate) mod symbol;

pub(crate) use ctxt::Ctxt;
