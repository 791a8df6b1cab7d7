//! The events of the decoding tests, shared by `tests/fuzz.rs` (property tests) and the
//! coverage-guided target `fuzz/fuzz_targets/event_decode.rs` (both include this file by path):
//! `fuzz.Paid` at schema version 3 with an alias, a JSON upcast from 1 to 2 and a `via` upcast
//! from 2 to 3 that can refuse; `fuzz.Noted` with no upcasts.

use eventsource::DomainEvent;
use serde::{Deserialize, Serialize};

/// Version 1 to 2 at the JSON level: whole euros, stored as a string by an older release,
/// become cents; what does not parse is refused (a typed upcast error).
pub(crate) fn v1_to_v2(v: serde_json::Value) -> Result<serde_json::Value, String> {
    let euros = v.get("euros").and_then(|e| e.as_str()).ok_or("no euros")?;
    let euros: i64 = euros.trim().parse().map_err(|e| format!("euros: {e}"))?;
    let cents = euros.checked_mul(100).ok_or("euros out of range")?;
    Ok(serde_json::json!({ "cents": cents }))
}

/// Version 2: cents, no currency.
#[derive(Deserialize)]
pub(crate) struct PaidV2 {
    pub(crate) cents: i64,
}

/// Why version 2 does not become version 3.
#[derive(Debug)]
pub(crate) struct Negative;

impl std::fmt::Display for Negative {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a negative payment")
    }
}

impl std::error::Error for Negative {}

/// Version 2 to 3: refuses negative amounts.
impl TryFrom<PaidV2> for Paid {
    type Error = Negative;
    fn try_from(v2: PaidV2) -> Result<Self, Negative> {
        if v2.cents < 0 {
            return Err(Negative);
        }
        Ok(Paid {
            amount: Amount {
                cents: v2.cents,
                currency: "EUR".into(),
            },
        })
    }
}

#[derive(DomainEvent, Serialize, Deserialize, Debug, PartialEq)]
#[event(
    name = "fuzz.Paid",
    version = 3,
    alias = "fuzz.OldPaid",
    upcast(from_version = 1, json = v1_to_v2),
    upcast(from_version = 2, via = PaidV2)
)]
pub(crate) struct Paid {
    pub(crate) amount: Amount,
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
pub(crate) struct Amount {
    pub(crate) cents: i64,
    pub(crate) currency: String,
}

#[derive(DomainEvent, Serialize, Deserialize, Debug, PartialEq)]
#[event(name = "fuzz.Noted")]
pub(crate) struct Noted {
    pub(crate) text: String,
    pub(crate) tags: Vec<String>,
}
