//! Parsing of `#[event(...)]`, `#[aggregate(...)]` and `#[projection(...)]` arguments.
//!
//! Unknown keys and duplicates are recorded in the [`Ctxt`] and parsing goes on, so that every
//! mistake of one attribute is reported in the same compiler run.

use super::Ctxt;
use super::symbol::{
    AGGREGATE, ALIAS, CRATE, ERROR, EVENT, FROM, FROM_VERSION, ID, JSON, NAME, PERSONAL,
    PROJECTION, RESET, RETIRED, SNAPSHOT_EVERY, STATE_VERSION, SUBJECT, Symbol, UNKNOWN_EVENTS,
    UPCAST, VERSION, VIA,
};
use proc_macro2::{Span, TokenStream};
use quote::ToTokens;
use syn::meta::ParseNestedMeta;
use syn::parse::Parser;
use syn::{Attribute, Expr, Lit, LitInt, LitStr, Token};

/// One attribute key: remembers its value and reports a second occurrence.
struct Attr<'c, T> {
    cx: &'c Ctxt,
    attribute: Symbol,
    key: Symbol,
    value: Option<T>,
}

impl<'c, T> Attr<'c, T> {
    fn none(cx: &'c Ctxt, attribute: Symbol, key: Symbol) -> Self {
        Attr {
            cx,
            attribute,
            key,
            value: None,
        }
    }

    fn set<A: ToTokens>(&mut self, key_tokens: A, value: T) {
        if self.value.is_some() {
            self.cx.error_spanned_by(
                key_tokens,
                format!(
                    "duplicate `{}` in {}: each key may be given once",
                    self.key,
                    in_attribute(self.attribute)
                ),
            );
        } else {
            self.value = Some(value);
        }
    }

    fn get(self) -> Option<T> {
        self.value
    }
}

/// A schema version (`version = N`), at least 1, with the span of its literal.
#[derive(Clone, Copy)]
pub(crate) struct Version {
    pub(crate) value: u32,
    pub(crate) span: Span,
}

/// How payloads stored at an older schema version reach the next version.
pub(crate) enum UpcastStep {
    /// `via = Type`: the payload decodes as `Type`, converted to the next version's type with
    /// `TryFrom` (or `From`).
    Typed(syn::Type),
    /// `json = function`: the payload's JSON is rewritten by `function` into the next version's.
    Json(syn::Path),
}

/// One `upcast(...)` of `#[event(...)]`.
pub(crate) struct Upcast {
    pub(crate) keyword: syn::Path,
    /// `from_version = N`: the schema version the payloads were stored at.
    pub(crate) from_version: Version,
    pub(crate) step: UpcastStep,
}

/// The arguments of `#[event(...)]` on a `#[derive(DomainEvent)]` type.
pub(crate) struct EventAttrs {
    pub(crate) name: Option<LitStr>,
    pub(crate) version: Option<Version>,
    pub(crate) aggregate: Option<LitStr>,
    pub(crate) krate: Option<syn::Path>,
    pub(crate) upcasts: Vec<Upcast>,
    pub(crate) aliases: Vec<LitStr>,
}

impl EventAttrs {
    pub(crate) fn from_attrs(cx: &Ctxt, attrs: &[Attribute]) -> Self {
        let mut name = Attr::none(cx, EVENT, NAME);
        let mut version = Attr::none(cx, EVENT, VERSION);
        let mut aggregate = Attr::none(cx, EVENT, AGGREGATE);
        let mut krate = Attr::none(cx, EVENT, CRATE);
        let mut upcasts = Vec::new();
        let mut aliases = Vec::new();

        for attr in attrs.iter().filter(|attr| attr.path() == EVENT) {
            if let syn::Meta::Path(path) = &attr.meta {
                cx.error_spanned_by(
                    path,
                    "expected arguments: #[event(name = \"...\", version = N, aggregate = \"...\")]",
                );
                continue;
            }
            let result = attr.parse_nested_meta(|meta| {
                if meta.path == NAME {
                    if let Some(lit) = parse_non_empty_str(cx, &meta, NAME)? {
                        name.set(&meta.path, lit);
                    }
                } else if meta.path == VERSION {
                    if let Some(v) = parse_version(cx, &meta, VERSION)? {
                        version.set(&meta.path, v);
                    }
                } else if meta.path == AGGREGATE {
                    if let Some(lit) = parse_non_empty_str(cx, &meta, AGGREGATE)? {
                        aggregate.set(&meta.path, lit);
                    }
                } else if meta.path == CRATE {
                    if let Some(path) = parse_crate_path(cx, &meta)? {
                        krate.set(&meta.path, path);
                    }
                } else if meta.path == UPCAST {
                    upcasts.extend(parse_upcast(cx, &meta)?);
                } else if meta.path == ALIAS {
                    aliases.extend(parse_non_empty_str(cx, &meta, ALIAS)?);
                } else {
                    unknown_key(
                        cx,
                        &meta,
                        EVENT,
                        &[NAME, VERSION, AGGREGATE, UPCAST, ALIAS, CRATE],
                    )?;
                }
                Ok(())
            });
            if let Err(err) = result {
                cx.syn_error(err);
            }
        }

        EventAttrs {
            name: name.get(),
            version: version.get(),
            aggregate: aggregate.get(),
            krate: krate.get(),
            upcasts,
            aliases,
        }
    }
}

/// `upcast(from_version = N, via = Type)` or `upcast(from_version = N, json = function)`.
fn parse_upcast(cx: &Ctxt, meta: &ParseNestedMeta) -> syn::Result<Option<Upcast>> {
    let mut via = Attr::none(cx, UPCAST, VIA);
    let mut json = Attr::none(cx, UPCAST, JSON);
    let mut from_version = Attr::none(cx, UPCAST, FROM_VERSION);
    // An old key is reported and its value still used, so that the rest of the chain is checked.
    meta.parse_nested_meta(|inner| {
        if inner.path == VIA || inner.path == FROM {
            if inner.path == FROM {
                cx.error_spanned_by(
                    &inner.path,
                    "`from` in `upcast(...)` is now `via`: the type the stored payloads decode as (`upcast(from_version = 1, via = DepositedV1)`)",
                );
            }
            let ty: syn::Type = inner.value()?.parse()?;
            via.set(&inner.path, ty);
        } else if inner.path == JSON {
            let function: syn::Path = inner.value()?.parse()?;
            json.set(&inner.path, function);
        } else if inner.path == FROM_VERSION || inner.path == VERSION {
            if inner.path == VERSION {
                cx.error_spanned_by(
                    &inner.path,
                    "`version` in `upcast(...)` is now `from_version`: the schema version the payloads were stored at (`upcast(from_version = 1, ...)`)",
                );
            }
            if let Some(v) = parse_version(cx, &inner, FROM_VERSION)? {
                from_version.set(&inner.path, v);
            }
        } else {
            unknown_key(cx, &inner, UPCAST, &[FROM_VERSION, VIA, JSON])?;
        }
        Ok(())
    })?;
    let step = match (via.get(), json.get()) {
        (Some(ty), None) => UpcastStep::Typed(ty),
        (None, Some(function)) => UpcastStep::Json(function),
        (Some(_), Some(_)) => {
            cx.error_spanned_by(
                &meta.path,
                "an upcast takes either `via = OldType` or `json = function`, not both",
            );
            return Ok(None);
        }
        (None, None) => {
            cx.error_spanned_by(
                &meta.path,
                "an upcast needs `via = OldType` (a typed conversion) or `json = function` (a JSON rewrite)",
            );
            return Ok(None);
        }
    };
    let Some(from_version) = from_version.get() else {
        cx.error_spanned_by(
            &meta.path,
            "an upcast needs the schema version its payloads were stored at: `upcast(from_version = 1, via = OldType)`",
        );
        return Ok(None);
    };
    Ok(Some(Upcast {
        keyword: meta.path.clone(),
        from_version,
        step,
    }))
}

/// What a stored event of a type the aggregate does not handle does on load.
#[derive(Clone, Copy)]
pub(crate) enum UnknownEvents {
    Error,
    Warn,
    Ignore,
}

/// The arguments of `#[aggregate(...)]`.
pub(crate) struct AggregateAttrs {
    pub(crate) name: Option<LitStr>,
    pub(crate) id: Option<syn::Type>,
    /// `error = Type`: the domain error of the aggregate's commands.
    pub(crate) error: Option<syn::Type>,
    pub(crate) unknown_events: UnknownEvents,
    pub(crate) retired: Vec<LitStr>,
    /// `snapshot_every = N`: the default snapshot interval of repositories with a snapshot store.
    pub(crate) snapshot_every: Option<u64>,
    /// `state_version = N`: the schema version of the state that snapshots hold.
    pub(crate) state_version: Option<u32>,
    pub(crate) krate: Option<syn::Path>,
}

impl AggregateAttrs {
    pub(crate) fn from_args(cx: &Ctxt, args: TokenStream) -> Self {
        let mut name = Attr::none(cx, AGGREGATE, NAME);
        let mut id = Attr::none(cx, AGGREGATE, ID);
        let mut error = Attr::none(cx, AGGREGATE, ERROR);
        let mut unknown_events = Attr::none(cx, AGGREGATE, UNKNOWN_EVENTS);
        let mut krate = Attr::none(cx, AGGREGATE, CRATE);
        let mut retired = Vec::new();
        let mut snapshot_every = Attr::none(cx, AGGREGATE, SNAPSHOT_EVERY);
        let mut state_version = Attr::none(cx, AGGREGATE, STATE_VERSION);

        let parser = syn::meta::parser(|meta| {
            if meta.path == NAME {
                if let Some(lit) = parse_non_empty_str(cx, &meta, NAME)? {
                    name.set(&meta.path, lit);
                }
            } else if meta.path == ID {
                let ty: syn::Type = meta.value()?.parse()?;
                id.set(&meta.path, ty);
            } else if meta.path == ERROR {
                let ty: syn::Type = meta.value()?.parse()?;
                error.set(&meta.path, ty);
            } else if meta.path == UNKNOWN_EVENTS {
                let lit = parse_str(cx, &meta, UNKNOWN_EVENTS)?;
                let policy = lit.as_ref().and_then(|lit| match lit.value().as_str() {
                    "error" => Some(UnknownEvents::Error),
                    "warn" => Some(UnknownEvents::Warn),
                    "ignore" => Some(UnknownEvents::Ignore),
                    _ => {
                        cx.error_spanned_by(
                            lit,
                            "unknown policy: expected `\"error\"`, `\"warn\"` or `\"ignore\"`",
                        );
                        None
                    }
                });
                if let Some(policy) = policy {
                    unknown_events.set(&meta.path, policy);
                }
            } else if meta.path == CRATE {
                if let Some(path) = parse_crate_path(cx, &meta)? {
                    krate.set(&meta.path, path);
                }
            } else if meta.path == SNAPSHOT_EVERY {
                if let Some(n) = parse_positive(
                    cx,
                    &meta,
                    i64::MAX as u64,
                    "`snapshot_every = N` takes a number of events from 1 (`snapshot_every = 100`)",
                )? {
                    snapshot_every.set(&meta.path, n);
                }
            } else if meta.path == STATE_VERSION {
                if let Some(n) = parse_positive(
                    cx,
                    &meta,
                    i32::MAX as u64,
                    "a state schema version is a number from 1 to 2147483647 (`state_version = 2`)",
                )? {
                    state_version.set(&meta.path, n as u32);
                }
            } else if meta.path == RETIRED {
                // retired = ["OldEvent", "OtherOldEvent"]
                let list: syn::ExprArray = meta.value()?.parse()?;
                for element in list.elems {
                    match element {
                        Expr::Lit(syn::ExprLit {
                            lit: Lit::Str(lit), ..
                        }) => {
                            if check_stored_name(cx, &lit, RETIRED) {
                                retired.push(lit);
                            }
                        }
                        other => cx.error_spanned_by(
                            other,
                            "expected the stored name of a retired event: `retired = [\"OldEvent\"]`",
                        ),
                    }
                }
            } else {
                unknown_key(
                    cx,
                    &meta,
                    AGGREGATE,
                    &[
                        NAME,
                        ID,
                        ERROR,
                        UNKNOWN_EVENTS,
                        RETIRED,
                        SNAPSHOT_EVERY,
                        STATE_VERSION,
                        CRATE,
                    ],
                )?;
            }
            Ok(())
        });
        if let Err(err) = parser.parse2(args) {
            cx.syn_error(err);
        }

        AggregateAttrs {
            name: name.get(),
            id: id.get(),
            error: error.get(),
            unknown_events: unknown_events.get().unwrap_or(UnknownEvents::Error),
            retired,
            snapshot_every: snapshot_every.get(),
            state_version: state_version.get(),
            krate: krate.get(),
        }
    }
}

/// The arguments of `#[projection(...)]`.
pub(crate) struct ProjectionAttrs {
    pub(crate) name: Option<LitStr>,
    /// `reset = method`: the method that empties the read model before a rebuild.
    pub(crate) reset: Option<syn::Ident>,
    pub(crate) krate: Option<syn::Path>,
}

impl ProjectionAttrs {
    pub(crate) fn from_args(cx: &Ctxt, args: TokenStream) -> Self {
        let mut name = Attr::none(cx, PROJECTION, NAME);
        let mut reset = Attr::none(cx, PROJECTION, RESET);
        let mut krate = Attr::none(cx, PROJECTION, CRATE);

        let parser = syn::meta::parser(|meta| {
            if meta.path == NAME {
                if let Some(lit) = parse_non_empty_str(cx, &meta, NAME)? {
                    name.set(&meta.path, lit);
                }
            } else if meta.path == RESET {
                let expr: Expr = meta.value()?.parse()?;
                match &expr {
                    Expr::Path(path) if path.qself.is_none() && path.path.get_ident().is_some() => {
                        let method = path.path.get_ident().cloned().expect("checked above");
                        reset.set(&meta.path, method);
                    }
                    other => cx.error_spanned_by(
                        other,
                        "expected the name of a method of this impl block: `reset = clear`",
                    ),
                }
            } else if meta.path == CRATE {
                if let Some(path) = parse_crate_path(cx, &meta)? {
                    krate.set(&meta.path, path);
                }
            } else {
                unknown_key(cx, &meta, PROJECTION, &[NAME, RESET, CRATE])?;
            }
            Ok(())
        });
        if let Err(err) = parser.parse2(args) {
            cx.syn_error(err);
        }

        ProjectionAttrs {
            name: name.get(),
            reset: reset.get(),
            krate: krate.get(),
        }
    }
}

/// `#[personal(subject = field)]` on one field of an event.
pub(crate) struct PersonalAttr {
    /// The attribute's path, where errors about the attribute as a whole point.
    pub(crate) keyword: syn::Path,
    /// The field named by `subject = ...`, if it was given.
    pub(crate) subject: Option<syn::Ident>,
}

impl PersonalAttr {
    /// The `#[personal(...)]` of a field, if any. A second one is reported and ignored.
    pub(crate) fn from_attrs(cx: &Ctxt, attrs: &[Attribute]) -> Option<Self> {
        let mut found: Option<PersonalAttr> = None;
        for attr in attrs.iter().filter(|attr| attr.path() == PERSONAL) {
            if found.is_some() {
                cx.error_spanned_by(
                    attr.path(),
                    "duplicate `#[personal]` on this field: give it once, with its `subject`",
                );
                continue;
            }
            let mut subject = Attr::none(cx, PERSONAL, SUBJECT);
            if let syn::Meta::List(_) = &attr.meta {
                let result = attr.parse_nested_meta(|meta| {
                    if meta.path == SUBJECT {
                        let ident: syn::Ident = meta.value()?.parse()?;
                        subject.set(&meta.path, ident);
                    } else {
                        unknown_key(cx, &meta, PERSONAL, &[SUBJECT])?;
                    }
                    Ok(())
                });
                if let Err(err) = result {
                    cx.syn_error(err);
                }
            }
            found = Some(PersonalAttr {
                keyword: attr.path().clone(),
                subject: subject.get(),
            });
        }
        found
    }
}

/// Where a key was written, for messages: `#[event(...)]`, or `upcast(...)`, which is nested.
fn in_attribute(attribute: Symbol) -> String {
    if attribute.as_str() == UPCAST.as_str() {
        format!("`{UPCAST}(...)`")
    } else {
        format!("#[{attribute}(...)]")
    }
}

/// Reports an unknown key and skips its value, so that the keys after it are still checked.
fn unknown_key(
    cx: &Ctxt,
    meta: &ParseNestedMeta,
    attribute: Symbol,
    expected: &[Symbol],
) -> syn::Result<()> {
    let expected: Vec<String> = expected
        .iter()
        .map(|s| format!("`{}`", s.as_str()))
        .collect();
    let key = meta.path.to_token_stream().to_string().replace(' ', "");
    cx.error_spanned_by(
        &meta.path,
        format!(
            "unknown key `{key}` in {}; expected one of: {}",
            in_attribute(attribute),
            expected.join(", ")
        ),
    );
    if meta.input.peek(Token![=]) {
        meta.value()?.parse::<Expr>()?;
    } else if meta.input.peek(syn::token::Paren) {
        let content;
        syn::parenthesized!(content in meta.input);
        content.parse::<TokenStream>()?;
    }
    Ok(())
}

fn parse_str(cx: &Ctxt, meta: &ParseNestedMeta, key: Symbol) -> syn::Result<Option<LitStr>> {
    let expr: Expr = meta.value()?.parse()?;
    match expr {
        Expr::Lit(syn::ExprLit {
            lit: Lit::Str(lit), ..
        }) => Ok(Some(lit)),
        other => {
            cx.error_spanned_by(
                other,
                format!("expected a string literal: `{key} = \"...\"`"),
            );
            Ok(None)
        }
    }
}

/// A stored name (`name`, `alias`, `retired`): a string literal that every store accepts.
fn parse_non_empty_str(
    cx: &Ctxt,
    meta: &ParseNestedMeta,
    key: Symbol,
) -> syn::Result<Option<LitStr>> {
    let lit = parse_str(cx, meta, key)?;
    Ok(lit.filter(|lit| check_stored_name(cx, lit, key)))
}

/// The longest stored name, in bytes: what every store's column takes.
const MAX_NAME_BYTES: usize = 255;

/// Reports what makes `lit` a name no store accepts (each rule once, on the literal). Returns
/// whether the name is valid.
fn check_stored_name(cx: &Ctxt, lit: &LitStr, key: Symbol) -> bool {
    let value = lit.value();
    if value.trim().is_empty() {
        cx.error_spanned_by(lit, format!("`{key}` cannot be empty"));
        return false;
    }
    let mut ok = true;
    if value.len() > MAX_NAME_BYTES {
        ok = false;
        cx.error_spanned_by(
            lit,
            format!(
                "`{key}` is {} bytes long: a stored name is at most {MAX_NAME_BYTES} bytes",
                value.len()
            ),
        );
    }
    let control = value.chars().find(|c| c.is_control());
    if let Some(c) = control {
        ok = false;
        let found = if c == '\0' {
            "a NUL byte".to_string()
        } else {
            format!("the control character {}", c.escape_default())
        };
        cx.error_spanned_by(
            lit,
            format!(
                "`{key}` contains {found}: a stored name cannot hold NUL or other control characters"
            ),
        );
    }
    // A trailing `\n` is reported once, as a control character.
    if control.is_none() && value.trim() != value {
        ok = false;
        cx.error_spanned_by(
            lit,
            format!(
                "`{key}` starts or ends with whitespace: stored names are compared byte for byte, write `\"{}\"`",
                value.trim()
            ),
        );
    }
    ok
}

fn parse_version(cx: &Ctxt, meta: &ParseNestedMeta, key: Symbol) -> syn::Result<Option<Version>> {
    let expr: Expr = meta.value()?.parse()?;
    let lit: LitInt = match expr {
        Expr::Lit(syn::ExprLit {
            lit: Lit::Int(lit), ..
        }) => lit,
        other => {
            cx.error_spanned_by(other, format!("expected an integer literal: `{key} = 2`"));
            return Ok(None);
        }
    };
    // Stored as a 32-bit signed integer (PostgreSQL `INTEGER`).
    match lit
        .base10_parse::<u32>()
        .ok()
        .filter(|v| *v <= i32::MAX as u32)
        .ok_or(())
    {
        Ok(0) => {
            cx.error_spanned_by(
                &lit,
                format!("schema versions start at 1: `{key} = 0` is not a valid version"),
            );
            Ok(None)
        }
        Ok(value) => Ok(Some(Version {
            value,
            span: lit.span(),
        })),
        Err(_) => {
            cx.error_spanned_by(&lit, "a schema version is a number from 1 to 2147483647");
            Ok(None)
        }
    }
}

/// An integer literal from 1 to `max` (`key = N`); anything else is reported with `message`.
fn parse_positive(
    cx: &Ctxt,
    meta: &ParseNestedMeta,
    max: u64,
    message: &str,
) -> syn::Result<Option<u64>> {
    let expr: Expr = meta.value()?.parse()?;
    match &expr {
        Expr::Lit(syn::ExprLit {
            lit: Lit::Int(lit), ..
        }) => match lit.base10_parse::<u64>() {
            Ok(n) if (1..=max).contains(&n) => Ok(Some(n)),
            _ => {
                cx.error_spanned_by(lit, message);
                Ok(None)
            }
        },
        other => {
            cx.error_spanned_by(other, message);
            Ok(None)
        }
    }
}

fn parse_crate_path(cx: &Ctxt, meta: &ParseNestedMeta) -> syn::Result<Option<syn::Path>> {
    let Some(lit) = parse_str(cx, meta, CRATE)? else {
        return Ok(None);
    };
    match lit.parse::<syn::Path>() {
        Ok(path) => Ok(Some(path)),
        Err(_) => {
            cx.error_spanned_by(
                &lit,
                "expected a path to the eventsource crate, such as `\"::my_app::eventsource\"`",
            );
            Ok(None)
        }
    }
}
