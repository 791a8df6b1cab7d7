//! Personal data on every backend: fields declared `#[personal]` are encrypted in the store
//! (checked in the raw rows), read back on every path, erased by `forget` (load, read-all, a
//! projection rebuild and a snapshot load all see `Personal::Forgotten`), and tampering or a
//! wrong master key are typed errors.

use eventsource::prelude::*;
use eventsource::projection::SqliteTx;
use eventsource::protection::{Erasure, KeyStore, MasterKey, SqliteKeyStore};
use eventsource::subscription::Subscriptions;
use eventsource::tenant::Tenancy;
use eventsource::{
    CheckpointStore, InMemoryKeyStore, NewEvent, Personal, ProtectedStore, Snapshot, SnapshotStore,
};
use eventsource::{ExpectedVersion, Position, ReadAll, RecordedEvent, StreamId, StreamQuery};
use eventsource_tests::databases;
use futures::TryStreamExt;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

#[derive(DomainEvent, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[event(name = "prot.CustomerRegistered", aggregate = "Customer")]
struct CustomerRegistered {
    customer_id: String,
    #[personal(subject = customer_id)]
    name: Personal<String>,
    #[personal(subject = customer_id)]
    email: Personal<String>,
    plan: String,
}

/// Version 1 stored the email in plain; version 2 made it personal.
#[derive(Serialize, Deserialize)]
struct EmailChangedV1 {
    customer_id: String,
    email: String,
}

#[derive(DomainEvent, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[event(
    name = "prot.EmailChanged",
    aggregate = "Customer",
    version = 2,
    upcast(from_version = 1, via = EmailChangedV1)
)]
struct EmailChanged {
    customer_id: String,
    #[personal(subject = customer_id)]
    email: Personal<String>,
}

impl From<EmailChangedV1> for EmailChanged {
    fn from(v1: EmailChangedV1) -> Self {
        EmailChanged {
            customer_id: v1.customer_id,
            email: Personal::Known(v1.email),
        }
    }
}

#[derive(Default, Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Customer {
    name: Personal<String>,
    email: Personal<String>,
}

#[aggregate(name = "Customer", id = String)]
impl Customer {
    #[handles]
    fn registered(&mut self, event: &CustomerRegistered) {
        self.name = event.name.clone();
        self.email = event.email.clone();
    }

    #[handles]
    fn email_changed(&mut self, event: &EmailChanged) {
        self.email = event.email.clone();
    }
}

/// A read model of emails by customer.
#[derive(Default)]
struct Emails {
    by_customer: std::collections::BTreeMap<String, Personal<String>>,
}

#[projection(name = "prot.emails")]
impl Emails {
    #[handles]
    fn registered(&mut self, event: &CustomerRegistered) {
        self.by_customer
            .insert(event.customer_id.clone(), event.email.clone());
    }

    #[handles]
    fn changed(&mut self, event: &EmailChanged) {
        self.by_customer
            .insert(event.customer_id.clone(), event.email.clone());
    }
}

const EMAIL: &str = "ada@example.org";
const NAME: &str = "Ada Lovelace";

fn registered(id: &str) -> CustomerRegistered {
    CustomerRegistered {
        customer_id: id.to_owned(),
        name: Personal::Known(format!("{NAME} {id}")),
        email: Personal::Known(format!("{id}.{EMAIL}")),
        plan: "gold".to_owned(),
    }
}

fn stream(id: &str) -> StreamId {
    StreamId::new("Customer", id).unwrap()
}

async fn register<S: EventStore>(store: &S, id: &str) {
    store
        .append(
            &stream(id),
            ExpectedVersion::NoStream,
            vec![NewEvent::new(&registered(id)).unwrap()],
        )
        .await
        .unwrap();
}

/// The payloads as stored, below the wrapper.
async fn raw_payloads<S: EventStore>(inner: &S) -> Vec<String> {
    settle(inner).await;
    inner
        .read_all(ReadAll::from_start())
        .map_ok(|e| e.payload)
        .try_collect()
        .await
        .unwrap()
}

/// Waits until every committed event is readable by `read_all` (PostgreSQL).
async fn settle<S: EventStore>(store: &S) {
    let head = store.log_head().await.unwrap();
    store
        .wait_for(head.last, Duration::from_secs(10))
        .await
        .unwrap();
}

async fn decoded<S: EventStore>(store: &S) -> Vec<CustomerRegistered> {
    settle(store).await;
    let events: Vec<RecordedEvent> = store
        .read_all(ReadAll::from_start().event_types(["prot.CustomerRegistered"]))
        .try_collect()
        .await
        .unwrap();
    events.iter().map(|e| e.decode().unwrap()).collect()
}

/// Append, then read back on every path; the stored payload holds no plain value.
async fn round_trip<S, K>(store: &ProtectedStore<S, K>)
where
    S: EventStore + SnapshotStore + CheckpointStore + Clone + 'static,
    K: KeyStore + 'static,
{
    register(store, "c1").await;
    let events = decoded(store).await;
    assert_eq!(events, vec![registered("c1")]);
    let customers = Customer::repository(store.clone());
    let customer = customers.load("c1".to_owned()).await.unwrap();
    assert_eq!(
        customer.state().email.known().unwrap(),
        &format!("c1.{EMAIL}")
    );

    for payload in raw_payloads(store.inner()).await {
        assert!(!payload.contains(EMAIL), "plain email stored: {payload}");
        assert!(!payload.contains(NAME), "plain name stored: {payload}");
        assert!(payload.contains("\"$enc\""), "{payload}");
        assert!(
            payload.contains("gold"),
            "other fields stay plain: {payload}"
        );
    }
}

/// After `forget`: the events stay, personal fields read as forgotten on every path, the
/// snapshot is gone, hooks ran, and the other subject is untouched.
async fn forget_erases_everywhere<S, K>(store: &ProtectedStore<S, K>)
where
    S: EventStore + SnapshotStore + CheckpointStore + Clone + 'static,
    K: KeyStore + 'static,
{
    register(store, "c1").await;
    register(store, "c2").await;
    let customers = Customer::repository(store.clone()).with_snapshots();
    customers.snapshot("c1".to_owned()).await.unwrap();
    assert!(store.load_snapshot(&stream("c1")).await.unwrap().is_some());

    let mut subscriptions = Subscriptions::new(store.clone());
    let emails = subscriptions.add(Emails::default());
    let running = subscriptions.start();
    let head = store.log_head().await.unwrap().last;
    running
        .wait_until(head, Duration::from_secs(10))
        .await
        .unwrap();
    assert!(emails.read().by_customer["c1"].known().is_some());

    let erasure = store.forget("c1").await.unwrap();
    assert_eq!(erasure.subject, "c1");
    assert_eq!(erasure.keys_destroyed, 1);
    assert_eq!(erasure.streams, vec![stream("c1")]);

    // The snapshot held the plain state: deleted.
    assert!(store.load_snapshot(&stream("c1")).await.unwrap().is_none());
    // Load (with snapshots), read-all, the projection rebuilt: forgotten, not an error.
    let customer = customers.load("c1".to_owned()).await.unwrap();
    assert_eq!(
        customer.state(),
        &Customer {
            name: Personal::Forgotten,
            email: Personal::Forgotten
        }
    );
    let events = decoded(store).await;
    assert_eq!(events.len(), 2, "the events stay");
    assert_eq!(events[0].email, Personal::Forgotten);
    assert_eq!(events[0].name, Personal::Forgotten);
    assert_eq!(events[0].plan, "gold", "other fields stay readable");
    assert_eq!(events[1], registered("c2"), "another subject is untouched");
    running.rebuild("prot.emails").await.unwrap();
    assert_eq!(emails.read().by_customer["c1"], Personal::Forgotten);
    assert!(emails.read().by_customer["c2"].known().is_some());
    running.shutdown().await;

    // The JSON a tool or a bus sees: the documented marker.
    let json: Vec<RecordedEvent> = store
        .read_stream(&stream("c1"), StreamQuery::all())
        .await
        .unwrap();
    let payload: serde_json::Value = serde_json::from_str(&json[0].payload).unwrap();
    assert_eq!(
        payload["email"],
        serde_json::json!({"$forgotten": true}),
        "{}",
        json[0].payload
    );

    // A new snapshot of the forgotten state holds nothing personal; forgetting again is harmless.
    customers.snapshot("c1".to_owned()).await.unwrap();
    let again = store.forget("c1").await.unwrap();
    assert_eq!(again.keys_destroyed, 0);
    assert!(store.load_snapshot(&stream("c1")).await.unwrap().is_none());
}

/// A field that became personal in version 2: the plain version-1 payload still loads, and the
/// version-2 one is encrypted.
async fn upcast_plain_to_personal<S, K>(store: &ProtectedStore<S, K>)
where
    S: EventStore + SnapshotStore + CheckpointStore + Clone + 'static,
    K: KeyStore + 'static,
{
    register(store, "c1").await;
    let v1 = NewEvent::from_json(
        "prot.EmailChanged",
        1,
        r#"{"customer_id":"c1","email":"old@example.org"}"#,
    );
    store
        .append(&stream("c1"), ExpectedVersion::Exact(1), vec![v1])
        .await
        .unwrap();
    let customers = Customer::repository(store.clone());
    let customer = customers.load("c1".to_owned()).await.unwrap();
    assert_eq!(customer.state().email.known().unwrap(), "old@example.org");

    let v2 = EmailChanged {
        customer_id: "c1".to_owned(),
        email: Personal::Known("new@example.org".to_owned()),
    };
    store
        .append(
            &stream("c1"),
            ExpectedVersion::Exact(2),
            vec![NewEvent::new(&v2).unwrap()],
        )
        .await
        .unwrap();
    let customer = customers.load("c1".to_owned()).await.unwrap();
    assert_eq!(customer.state().email.known().unwrap(), "new@example.org");
    let raw = raw_payloads(store.inner()).await;
    assert!(!raw[2].contains("new@example.org"), "{}", raw[2]);

    // After erasure, the old plain payload is still plain: it was never encrypted. What the
    // framework encrypts is what it can erase (see the README).
    store.forget("c1").await.unwrap();
    let customer = customers.load("c1".to_owned()).await.unwrap();
    assert_eq!(customer.state().email, Personal::Forgotten);
}

/// A rotated key encrypts new events; the old ones still decrypt; `forget` destroys both.
async fn rotation<S, K>(store: &ProtectedStore<S, K>)
where
    S: EventStore + SnapshotStore + CheckpointStore + Clone + 'static,
    K: KeyStore + 'static,
{
    register(store, "c1").await;
    let old = store.keys().get_or_create(None, "c1").await.unwrap();
    let new = store.rotate("c1").await.unwrap();
    assert_ne!(old.id(), new.id());
    let change = EmailChanged {
        customer_id: "c1".to_owned(),
        email: Personal::Known("rotated@example.org".to_owned()),
    };
    store
        .append(
            &stream("c1"),
            ExpectedVersion::Exact(1),
            vec![NewEvent::new(&change).unwrap()],
        )
        .await
        .unwrap();
    let raw = raw_payloads(store.inner()).await;
    assert!(raw[0].contains(&old.id().to_string()), "{}", raw[0]);
    assert!(raw[1].contains(&new.id().to_string()), "{}", raw[1]);
    let events = store
        .read_stream(&stream("c1"), StreamQuery::all())
        .await
        .unwrap();
    assert_eq!(
        events[0].decode::<CustomerRegistered>().unwrap(),
        registered("c1")
    );
    assert_eq!(events[1].decode::<EmailChanged>().unwrap(), change);
    assert_eq!(store.forget("c1").await.unwrap().keys_destroyed, 2);
    let events = store
        .read_stream(&stream("c1"), StreamQuery::all())
        .await
        .unwrap();
    assert!(
        events[0]
            .decode::<CustomerRegistered>()
            .unwrap()
            .email
            .is_forgotten()
    );
    assert!(
        events[1]
            .decode::<EmailChanged>()
            .unwrap()
            .email
            .is_forgotten()
    );
}

/// Erasure hooks run with the erased subject and streams.
async fn hooks_run<S: EventStore + SnapshotStore + Clone + 'static>(inner: S) {
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&calls);
    let store = ProtectedStore::new(inner, InMemoryKeyStore::new()).with_erasure_hook(
        move |erasure: Erasure| {
            let seen = Arc::clone(&seen);
            async move {
                assert_eq!(erasure.subject, "c1");
                assert_eq!(erasure.streams, vec![stream("c1")]);
                seen.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }
        },
    );
    register(&store, "c1").await;
    store.forget("c1").await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

macro_rules! backend_tests {
    ($backend:ident, $keys:ident: $($case:ident),* $(,)?) => {
        mod $backend {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let Some(db) = databases::$backend().await else { return };
                    // Shared, as the wrappers of several tenants share one key store.
                    let keys = Arc::new($keys(db.store()).await);
                    super::$case(&ProtectedStore::new(db.store().clone(), keys)).await;
                }
            )*
        }
    };
}

async fn memory_keys(_: &InMemoryEventStore) -> InMemoryKeyStore {
    InMemoryKeyStore::new()
}

async fn sqlite_keys(store: &SqliteEventStore) -> SqliteKeyStore {
    SqliteKeyStore::new(store.writer_pool().clone(), master())
        .await
        .unwrap()
}

async fn postgres_keys(store: &PostgresEventStore) -> eventsource::protection::PostgresKeyStore {
    eventsource::protection::PostgresKeyStore::new(store.pool().clone(), master())
        .await
        .unwrap()
}

fn master() -> MasterKey {
    MasterKey::from_bytes([7; 32])
}

macro_rules! every_backend {
    ($($case:ident),* $(,)?) => {
        backend_tests!(memory, memory_keys: $($case),*);
        backend_tests!(sqlite, sqlite_keys: $($case),*);
        backend_tests!(postgres, postgres_keys: $($case),*);
    };
}

every_backend!(
    round_trip,
    forget_erases_everywhere,
    upcast_plain_to_personal,
    rotation,
    envelopes_cannot_be_forged,
    tenants_keep_their_keys
);

#[tokio::test]
async fn hooks_run_on_memory() {
    hooks_run(InMemoryEventStore::new()).await;
}

/// SQL: the payload column holds no plain value; an altered ciphertext is a typed error for its
/// row (not garbage, not a panic), and the rows around it still read.
#[tokio::test]
async fn sqlite_raw_rows_and_tampering() {
    let db = databases::sqlite().await.unwrap();
    let store = ProtectedStore::new(db.store().clone(), sqlite_keys(db.store()).await);
    register(&store, "c1").await;
    register(&store, "c2").await;
    let pool = db.store().writer_pool();
    let payloads: Vec<(String,)> = sqlx::query_as("SELECT payload FROM events ORDER BY position")
        .fetch_all(pool)
        .await
        .unwrap();
    assert_eq!(payloads.len(), 2);
    for (payload,) in &payloads {
        assert!(
            !payload.contains(EMAIL) && !payload.contains(NAME),
            "{payload}"
        );
    }
    let wrapped: Vec<(Vec<u8>,)> =
        sqlx::query_as("SELECT wrapped_key FROM eventsource_subject_keys")
            .fetch_all(pool)
            .await
            .unwrap();
    assert_eq!(wrapped.len(), 2);
    assert!(
        wrapped.iter().all(|(w,)| w.len() == 12 + 32 + 16),
        "nonce, key, tag"
    );

    // Flip one base64 character of c1's email ciphertext.
    let tampered = tamper(&payloads[0].0);
    sqlx::query("UPDATE events SET payload = ? WHERE aggregate_id = 'c1'")
        .bind(&tampered)
        .execute(pool)
        .await
        .unwrap();
    let fresh = ProtectedStore::new(db.store().clone(), sqlite_keys(db.store()).await);
    check_tampered(&fresh).await;
}

#[tokio::test]
async fn postgres_raw_rows_and_tampering() {
    let Some(db) = databases::postgres().await else {
        return;
    };
    let store = ProtectedStore::new(db.store().clone(), postgres_keys(db.store()).await);
    register(&store, "c1").await;
    register(&store, "c2").await;
    let pool = db.store().pool();
    let payloads: Vec<(String,)> =
        sqlx::query_as("SELECT payload::text FROM events ORDER BY position")
            .fetch_all(pool)
            .await
            .unwrap();
    assert_eq!(payloads.len(), 2);
    for (payload,) in &payloads {
        assert!(
            !payload.contains(EMAIL) && !payload.contains(NAME),
            "{payload}"
        );
    }
    let tampered = tamper(&payloads[0].0);
    sqlx::query("UPDATE events SET payload = $1::jsonb WHERE aggregate_id = 'c1'")
        .bind(&tampered)
        .execute(pool)
        .await
        .unwrap();
    let fresh = ProtectedStore::new(db.store().clone(), postgres_keys(db.store()).await);
    check_tampered(&fresh).await;
}

/// Changes one character inside the first ciphertext of `payload`.
fn tamper(payload: &str) -> String {
    let mut json: serde_json::Value = serde_json::from_str(payload).unwrap();
    let c = json["email"]["c"].as_str().unwrap().to_owned();
    let mut chars: Vec<char> = c.chars().collect();
    chars[0] = if chars[0] == 'A' { 'B' } else { 'A' };
    json["email"]["c"] = serde_json::Value::String(chars.into_iter().collect());
    json.to_string()
}

async fn check_tampered<S: EventStore, K: KeyStore>(store: &ProtectedStore<S, K>) {
    let read = store.read_stream(&stream("c1"), StreamQuery::all()).await;
    match read {
        Err(Error::Corrupt { reason, .. }) => {
            assert!(reason.contains("does not authenticate"), "{reason}")
        }
        other => panic!("expected a typed error, got {other:?}"),
    }
    let all: Vec<Result<RecordedEvent, Error>> =
        futures::StreamExt::collect(store.read_all(ReadAll::from_start())).await;
    assert_eq!(all.len(), 2);
    assert!(
        matches!(&all[0], Err(e) if e.position().is_some()),
        "{:?}",
        all[0]
    );
    assert_eq!(
        all[1]
            .as_ref()
            .unwrap()
            .decode::<CustomerRegistered>()
            .unwrap(),
        registered("c2"),
        "the next row still reads"
    );
}

/// A wrong master key is a typed error when the key store opens, never garbage: a check value
/// wrapped by the first master key is kept beside the keys.
#[tokio::test]
async fn wrong_master_key_is_a_typed_error() {
    let db = databases::sqlite().await.unwrap();
    let store = ProtectedStore::new(db.store().clone(), sqlite_keys(db.store()).await);
    register(&store, "c1").await;
    let wrong = SqliteKeyStore::new(
        db.store().writer_pool().clone(),
        MasterKey::from_bytes([8; 32]),
    )
    .await;
    assert!(
        matches!(wrong, Err(Error::MasterKey { .. })),
        "expected Error::MasterKey, got {wrong:?}"
    );
    // A keys table of the first release (no check value yet): its newest key is the check.
    sqlx::query("DELETE FROM eventsource_master_key_check")
        .execute(db.store().writer_pool())
        .await
        .unwrap();
    let wrong = SqliteKeyStore::new(
        db.store().writer_pool().clone(),
        MasterKey::from_bytes([8; 32]),
    )
    .await;
    assert!(matches!(wrong, Err(Error::MasterKey { .. })), "{wrong:?}");
    sqlite_keys(db.store()).await;
}

/// The master key from its base64 text; never printed.
#[test]
fn master_key_config() {
    let (key, text) = MasterKey::generate();
    assert_eq!(format!("{key:?}"), "MasterKey(..)");
    assert!(MasterKey::from_base64(&text).is_ok());
    assert!(matches!(
        MasterKey::from_base64("c2hvcnQ="),
        Err(Error::InvalidConfig(_))
    ));
    let data_key = eventsource::protection::DataKey::generate(None, "c1");
    assert!(!format!("{data_key:?}").contains("bytes"));
}

/// Without the wrapper nothing is encrypted, and `Personal` reads plain values: a store can be
/// protected later, its old events stay readable.
#[tokio::test]
async fn plain_store_then_protected() {
    let inner = InMemoryEventStore::new();
    register(&inner, "c1").await;
    assert!(raw_payloads(&inner).await[0].contains(EMAIL));
    let store = ProtectedStore::new(inner, InMemoryKeyStore::new());
    assert_eq!(decoded(&store).await, vec![registered("c1")]);
    register(&store, "c2").await;
    assert!(!raw_payloads(store.inner()).await[1].contains(EMAIL));
    assert_eq!(decoded(&store).await.len(), 2);
}

/// A read model in the database (a SQL projection over the protected store): it receives the
/// decrypted values, and an erasure hook deletes the subject's row.
struct MailingList;

#[projection(name = "prot.mailing_list", reset = clear)]
impl MailingList {
    #[handles]
    async fn registered(
        &mut self,
        e: &CustomerRegistered,
        _: &EventContext<'_>,
        tx: &mut SqliteTx,
    ) -> Result<(), sqlx::Error> {
        if let Personal::Known(email) = &e.email {
            sqlx::query("INSERT INTO mailing_list (customer_id, email) VALUES (?, ?)")
                .bind(&e.customer_id)
                .bind(email)
                .execute(&mut **tx)
                .await?;
        }
        Ok(())
    }

    async fn clear(&mut self, tx: &mut SqliteTx) -> Result<(), sqlx::Error> {
        sqlx::query("DELETE FROM mailing_list")
            .execute(&mut **tx)
            .await?;
        Ok(())
    }
}

#[tokio::test]
async fn sql_read_model_and_erasure_hook() {
    let db = databases::sqlite().await.unwrap();
    let pool = db.store().writer_pool().clone();
    sqlx::query("CREATE TABLE mailing_list (customer_id TEXT PRIMARY KEY, email TEXT NOT NULL)")
        .execute(&pool)
        .await
        .unwrap();
    let hook_pool = pool.clone();
    let store = ProtectedStore::new(db.store().clone(), sqlite_keys(db.store()).await)
        .with_erasure_hook(move |erasure: Erasure| {
            let pool = hook_pool.clone();
            async move {
                sqlx::query("DELETE FROM mailing_list WHERE customer_id = ?")
                    .bind(&erasure.subject)
                    .execute(&pool)
                    .await
                    .map_err(|e| Error::InvalidConfig(e.to_string()))?;
                Ok(())
            }
        });
    register(&store, "c1").await;
    register(&store, "c2").await;
    let mut subscriptions = Subscriptions::new(store.clone());
    subscriptions.add_sql(MailingList);
    let running = subscriptions.start();
    let head = store.log_head().await.unwrap().last;
    running
        .wait_until(head, Duration::from_secs(10))
        .await
        .unwrap();
    let rows: Vec<(String, String)> =
        sqlx::query_as("SELECT customer_id, email FROM mailing_list ORDER BY customer_id")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(rows[0], ("c1".to_owned(), format!("c1.{EMAIL}")));

    store.forget("c1").await.unwrap();
    let count = |id: &'static str| {
        let pool = pool.clone();
        async move {
            let (n,): (i64,) =
                sqlx::query_as("SELECT count(*) FROM mailing_list WHERE customer_id = ?")
                    .bind(id)
                    .fetch_one(&pool)
                    .await
                    .unwrap();
            n
        }
    };
    assert_eq!(count("c1").await, 0, "the hook deleted the row");
    assert_eq!(count("c2").await, 1);
    // A rebuild does not bring the value back: the event now reads as forgotten.
    running.rebuild("prot.mailing_list").await.unwrap();
    assert_eq!(count("c1").await, 0);
    assert_eq!(count("c2").await, 1);
    running.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Erasure leaves no plaintext; envelopes cannot be forged; tenants keep their keys apart; one
// damaged key row is one damaged row.
// ---------------------------------------------------------------------------------------------

/// Every file of a SQLite database (the file, its `-wal` and `-shm`), read whole.
fn database_bytes(path: &std::path::Path) -> Vec<u8> {
    let mut bytes = Vec::new();
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        if let Ok(content) = std::fs::read(std::path::PathBuf::from(name)) {
            bytes.extend_from_slice(&content);
        }
    }
    bytes
}

fn holds(haystack: &[u8], needle: impl AsRef<[u8]>) -> bool {
    let needle = needle.as_ref();
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

/// The words of a subject that must never reach a file in plain.
const SECRET_NAME: &str = "Zenobia Plaintext-Name";
const SECRET_EMAIL: &str = "zenobia.secret@example.org";

fn secret(id: &str) -> CustomerRegistered {
    CustomerRegistered {
        customer_id: id.to_owned(),
        name: Personal::Known(SECRET_NAME.to_owned()),
        email: Personal::Known(SECRET_EMAIL.to_owned()),
        plan: "gold".to_owned(),
    }
}

/// Saves a subject with personal fields through the repository, snapshots it, forgets it and
/// closes: no byte of the name or the email is in any file the framework wrote, and the
/// aggregate loads with its personal fields forgotten.
async fn no_plaintext_after_forget(keys_apart: bool) {
    let dir = tempfile::tempdir().unwrap();
    let events_path = dir.path().join("events.db");
    let keys_path = dir.path().join("keys.db");
    let events = SqliteEventStore::open(events_path.to_str().unwrap())
        .await
        .unwrap();
    let keys_store = if keys_apart {
        Some(
            SqliteEventStore::open(keys_path.to_str().unwrap())
                .await
                .unwrap(),
        )
    } else {
        None
    };
    let key_pool = keys_store
        .as_ref()
        .map_or(events.writer_pool(), |k| k.writer_pool())
        .clone();
    let keys = SqliteKeyStore::new(key_pool.clone(), master())
        .await
        .unwrap();
    let store = ProtectedStore::new(events.clone(), keys);
    let customers = Customer::repository(store.clone()).with_snapshots();
    let mut root = eventsource::Root::<Customer>::new("z-1".to_owned());
    root.record(secret("z-1"));
    customers.save(&mut root).await.unwrap();
    customers.snapshot(&"z-1".to_owned()).await.unwrap();
    let snapshot = events.load_snapshot(&stream("z-1")).await.unwrap().unwrap();
    assert!(
        !snapshot.state().contains(SECRET_NAME) && !snapshot.state().contains(SECRET_EMAIL),
        "the snapshot is sealed: {}",
        snapshot.state()
    );
    // A snapshot opens through the wrapper while the subject is known.
    let loaded = customers.load("z-1".to_owned()).await.unwrap();
    assert_eq!(loaded.state().name, Personal::Known(SECRET_NAME.to_owned()));

    // The subject's wrapped key, as stored: after `forget` its bytes must be gone too (a
    // wrapped key and the master key together still read the data).
    let (wrapped,): (Vec<u8>,) =
        sqlx::query_as("SELECT wrapped_key FROM eventsource_subject_keys WHERE subject = 'z-1'")
            .fetch_one(&key_pool)
            .await
            .unwrap();
    assert!(
        wrapped.len() >= 32,
        "a wrapped key: {} bytes",
        wrapped.len()
    );
    let keys_file = if keys_apart { &keys_path } else { &events_path };
    assert!(
        holds(&database_bytes(keys_file), &wrapped),
        "the wrapped key is found in the keys file before forget, so the search below can fail"
    );

    store.forget("z-1").await.unwrap();
    let loaded = customers.load("z-1".to_owned()).await.unwrap();
    assert!(loaded.state().name.is_forgotten() && loaded.state().email.is_forgotten());

    // Live and dead rows, free pages and the write-ahead log, before and after closing.
    for path in [&events_path, &keys_path] {
        let bytes = database_bytes(path);
        assert!(!holds(&bytes, SECRET_NAME), "name in {path:?} after forget");
        assert!(
            !holds(&bytes, SECRET_EMAIL),
            "email in {path:?} after forget"
        );
        assert!(
            !holds(&bytes, &wrapped),
            "wrapped key in {path:?} after forget"
        );
    }
    drop((customers, store, loaded));
    events.writer_pool().close().await;
    events.pool().close().await;
    if let Some(keys_store) = &keys_store {
        keys_store.writer_pool().close().await;
        keys_store.pool().close().await;
    }
    for path in [&events_path, &keys_path] {
        let bytes = database_bytes(path);
        assert!(!holds(&bytes, SECRET_NAME), "name in {path:?} after close");
        assert!(
            !holds(&bytes, SECRET_EMAIL),
            "email in {path:?} after close"
        );
        assert!(
            !holds(&bytes, &wrapped),
            "wrapped key in {path:?} after close"
        );
    }
}

/// A state read before `forget` and snapshotted after it is not written: not sealed under the
/// forgotten subject's (destroyed) key, and not in plain either.
#[tokio::test]
async fn no_snapshot_is_written_while_a_subject_is_forgotten() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    let events = SqliteEventStore::open(path.to_str().unwrap())
        .await
        .unwrap();
    let keys = SqliteKeyStore::new(events.writer_pool().clone(), master())
        .await
        .unwrap();
    let store = ProtectedStore::new(events.clone(), keys);
    let customers = Customer::repository(store.clone());
    let mut root = eventsource::Root::<Customer>::new("z-2".to_owned());
    root.record(secret("z-2"));
    customers.save(&mut root).await.unwrap();
    let state = format!(r#"{{"name":"{SECRET_NAME}","email":"{SECRET_EMAIL}"}}"#);
    let before = Snapshot::new(stream("z-2"), 1, 1, state);

    store.forget("z-2").await.unwrap();
    store.save_snapshot(&before).await.unwrap();
    assert!(
        events
            .load_snapshot(&stream("z-2"))
            .await
            .unwrap()
            .is_none(),
        "no snapshot row for a stream whose subject is forgotten"
    );
    assert!(store.load_snapshot(&stream("z-2")).await.unwrap().is_none());
    let bytes = database_bytes(&path);
    assert!(!holds(&bytes, SECRET_NAME) && !holds(&bytes, SECRET_EMAIL));
}

#[tokio::test]
async fn sqlite_forget_leaves_no_plaintext_keys_apart() {
    no_plaintext_after_forget(true).await;
}

#[tokio::test]
async fn sqlite_forget_leaves_no_plaintext_keys_in_the_events_file() {
    no_plaintext_after_forget(false).await;
}

/// PostgreSQL: the snapshot row never holds the plain state (so no dead tuple can), and it no
/// longer opens once a subject of the stream is forgotten, in this process or another.
#[tokio::test]
async fn postgres_snapshots_are_sealed() {
    let Some(db) = databases::postgres().await else {
        return;
    };
    let store = ProtectedStore::new(db.store().clone(), postgres_keys(db.store()).await);
    let customers = Customer::repository(store.clone()).with_snapshots();
    let mut root = eventsource::Root::<Customer>::new("z-1".to_owned());
    root.record(secret("z-1"));
    customers.save(&mut root).await.unwrap();
    customers.snapshot(&"z-1".to_owned()).await.unwrap();
    let states: Vec<(String,)> = sqlx::query_as("SELECT state::text FROM snapshots")
        .fetch_all(db.store().pool())
        .await
        .unwrap();
    assert_eq!(states.len(), 1);
    assert!(!states[0].0.contains(SECRET_NAME), "{}", states[0].0);
    let loaded = customers.load("z-1".to_owned()).await.unwrap();
    assert_eq!(
        loaded.state().email,
        Personal::Known(SECRET_EMAIL.to_owned())
    );

    // Another process (another wrapper, its own cache) with the same key store.
    let other = ProtectedStore::new(db.store().clone(), postgres_keys(db.store()).await);
    let snapshot = other.load_snapshot(&stream("z-1")).await.unwrap();
    assert!(snapshot.is_some_and(|s| s.state().contains(SECRET_NAME)));
    store.forget("z-1").await.unwrap();
    let other = ProtectedStore::new(db.store().clone(), postgres_keys(db.store()).await);
    assert!(
        other.load_snapshot(&stream("z-1")).await.unwrap().is_none(),
        "a sealed snapshot of a forgotten subject does not open"
    );
}

#[derive(DomainEvent, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[event(name = "prot.Preferences", aggregate = "Customer")]
struct PreferencesSet {
    customer_id: String,
    #[personal(subject = customer_id)]
    answers: Personal<std::collections::BTreeMap<String, String>>,
}

#[derive(DomainEvent, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[event(name = "prot.Note", aggregate = "Customer")]
struct NoteAdded {
    customer_id: String,
    body: serde_json::Value,
}

/// A personal map whose keys look like an envelope's is encrypted like any other value, reads
/// back as written and is erased by `forget`; an envelope-shaped value in a field that is not
/// personal is the application's data.
async fn envelopes_cannot_be_forged<S, K>(store: &ProtectedStore<S, K>)
where
    S: EventStore + SnapshotStore + CheckpointStore + Clone + 'static,
    K: KeyStore + 'static,
{
    let answers: std::collections::BTreeMap<String, String> = [
        ("$enc".to_owned(), "v1".to_owned()),
        ("kid".to_owned(), "forged-plaintext-kid".to_owned()),
        ("n".to_owned(), "forged-plaintext-n".to_owned()),
        ("c".to_owned(), "forged-plaintext-c".to_owned()),
    ]
    .into();
    let forged = PreferencesSet {
        customer_id: "f-1".to_owned(),
        answers: Personal::Known(answers.clone()),
    };
    store
        .append(
            &stream("f-1"),
            ExpectedVersion::NoStream,
            vec![NewEvent::new(&forged).unwrap()],
        )
        .await
        .unwrap();
    for payload in raw_payloads(store.inner()).await {
        assert!(
            !payload.contains("forged-plaintext"),
            "stored in plain: {payload}"
        );
    }
    let read = store
        .read_stream(&stream("f-1"), StreamQuery::all())
        .await
        .unwrap();
    assert_eq!(read[0].decode::<PreferencesSet>().unwrap(), forged);
    store.forget("f-1").await.unwrap();
    let read = store
        .read_stream(&stream("f-1"), StreamQuery::all())
        .await
        .unwrap();
    assert!(
        read[0]
            .decode::<PreferencesSet>()
            .unwrap()
            .answers
            .is_forgotten()
    );

    // Not personal: stored, read and loaded as written.
    let note = NoteAdded {
        customer_id: "n-1".to_owned(),
        body: serde_json::json!({"$enc": "hello"}),
    };
    store
        .append(
            &stream("n-1"),
            ExpectedVersion::NoStream,
            vec![NewEvent::new(&note).unwrap()],
        )
        .await
        .unwrap();
    let read = store
        .read_stream(&stream("n-1"), StreamQuery::all())
        .await
        .unwrap();
    assert_eq!(read[0].decode::<NoteAdded>().unwrap(), note);
    settle(store).await;
    let all: Vec<RecordedEvent> = store
        .read_all(ReadAll::from_start().event_types(["prot.Note"]))
        .try_collect()
        .await
        .unwrap();
    assert_eq!(all.len(), 1);
}

#[derive(Default, Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Noted {
    notes: usize,
}

#[aggregate(name = "Noted", id = String)]
impl Noted {
    #[handles]
    fn noted(&mut self, _event: &NotedEvent) {
        self.notes += 1;
    }
}

#[derive(DomainEvent, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[event(name = "prot.Noted", aggregate = "Noted")]
struct NotedEvent {
    body: serde_json::Value,
}

/// An aggregate whose events carry envelope-shaped values in fields that are not personal
/// loads.
#[tokio::test]
async fn non_personal_envelope_shapes_load() {
    let store = ProtectedStore::new(InMemoryEventStore::new(), InMemoryKeyStore::new());
    let repository = Noted::repository(store.clone());
    let mut root = eventsource::Root::<Noted>::new("n".to_owned());
    root.record(NotedEvent {
        body: serde_json::json!({"$enc": "hello"}),
    });
    root.record(NotedEvent {
        body: serde_json::json!({"$enc": "v1", "kid": "x", "n": "y", "c": "z"}),
    });
    repository.save(&mut root).await.unwrap();
    assert_eq!(
        repository.load("n".to_owned()).await.unwrap().state().notes,
        2
    );
}

/// Two tenants with a subject of one id: two keys; one tenant's `forget` leaves the other's
/// subject readable.
async fn tenants_keep_their_keys<S, K>(store: &ProtectedStore<S, K>)
where
    S: EventStore + SnapshotStore + CheckpointStore + Tenancy + Clone + 'static,
    K: KeyStore + Clone + 'static,
{
    let keys = store.keys().clone();
    let acme = ProtectedStore::new(store.inner().for_tenant("acme").unwrap(), keys.clone());
    let globex = ProtectedStore::new(store.inner().for_tenant("globex").unwrap(), keys.clone());
    register(&acme, "u-1").await;
    // Stream ids are one namespace across tenants: globex's subject u-1 lives in another stream.
    globex
        .append(
            &StreamId::new("Customer", "g-u-1").unwrap(),
            ExpectedVersion::NoStream,
            vec![NewEvent::new(&registered("u-1")).unwrap()],
        )
        .await
        .unwrap();
    let acme_ids = keys.key_ids(Some("acme"), "u-1").await.unwrap();
    let globex_ids = keys.key_ids(Some("globex"), "u-1").await.unwrap();
    assert_eq!((acme_ids.len(), globex_ids.len()), (1, 1));
    assert_ne!(acme_ids, globex_ids);
    assert!(keys.key_ids(None, "u-1").await.unwrap().is_empty());

    let erasure = acme.forget("u-1").await.unwrap();
    assert_eq!(erasure.keys_destroyed, 1);
    assert_eq!(erasure.streams, vec![stream("u-1")]);
    let read = acme
        .read_stream(&stream("u-1"), StreamQuery::all())
        .await
        .unwrap();
    assert!(
        read[0]
            .decode::<CustomerRegistered>()
            .unwrap()
            .email
            .is_forgotten()
    );
    let read = globex
        .read_stream(
            &StreamId::new("Customer", "g-u-1").unwrap(),
            StreamQuery::all(),
        )
        .await
        .unwrap();
    assert_eq!(
        read[0].decode::<CustomerRegistered>().unwrap(),
        registered("u-1"),
        "globex's subject u-1 is another subject"
    );
    // Scoped the other way round (the tenant view outside): the same keys.
    let scoped = ProtectedStore::new(store.inner().clone(), keys.clone())
        .for_tenant("globex")
        .unwrap();
    let read = scoped
        .read_stream(
            &StreamId::new("Customer", "g-u-1").unwrap(),
            StreamQuery::all(),
        )
        .await
        .unwrap();
    assert_eq!(
        read[0].decode::<CustomerRegistered>().unwrap(),
        registered("u-1")
    );
    scoped.forget("u-1").await.unwrap();
    let read = scoped
        .read_stream(
            &StreamId::new("Customer", "g-u-1").unwrap(),
            StreamQuery::all(),
        )
        .await
        .unwrap();
    assert!(
        read[0]
            .decode::<CustomerRegistered>()
            .unwrap()
            .email
            .is_forgotten()
    );
    // A store scoped to one tenant does not forget another's subjects.
    assert!(acme.forget_in(Some("globex"), "u-1").await.is_err());
}

/// A key row that does not unwrap (altered, or wrapped by another master key after a partial
/// restore) is a damaged row for the events it encrypted: `Corrupt` with their position, and
/// the reads go on after it.
#[tokio::test]
async fn one_bad_key_row_is_one_bad_row() {
    let db = databases::sqlite().await.unwrap();
    let store = ProtectedStore::new(db.store().clone(), sqlite_keys(db.store()).await);
    register(&store, "c1").await;
    register(&store, "c2").await;
    // c1's key, wrapped by another master key.
    let other = MasterKey::from_bytes([9; 32]);
    let (foreign,): (Vec<u8>,) = {
        let dir = tempfile::tempdir().unwrap();
        let elsewhere = SqliteEventStore::open(dir.path().join("k.db").to_str().unwrap())
            .await
            .unwrap();
        let keys = SqliteKeyStore::new(elsewhere.writer_pool().clone(), other)
            .await
            .unwrap();
        keys.get_or_create(None, "c1").await.unwrap();
        sqlx::query_as("SELECT wrapped_key FROM eventsource_subject_keys")
            .fetch_one(elsewhere.writer_pool())
            .await
            .unwrap()
    };
    sqlx::query("UPDATE eventsource_subject_keys SET wrapped_key = ? WHERE subject = 'c1'")
        .bind(foreign)
        .execute(db.store().writer_pool())
        .await
        .unwrap();
    let fresh = ProtectedStore::new(db.store().clone(), sqlite_keys(db.store()).await);
    let items: Vec<Result<RecordedEvent, Error>> =
        futures::StreamExt::collect(fresh.read_all(ReadAll::from_start())).await;
    assert_eq!(items.len(), 2, "{items:?}");
    match &items[0] {
        Err(error @ Error::Corrupt { .. }) => {
            assert_eq!(error.position(), Some(Position::new(1)), "{error}");
        }
        other => panic!("expected Corrupt at position 1, got {other:?}"),
    }
    assert_eq!(
        items[1]
            .as_ref()
            .unwrap()
            .decode::<CustomerRegistered>()
            .unwrap(),
        registered("c2")
    );
}

/// The key cache: bounded in age, so that a subject forgotten by another process stops
/// decrypting here once the cached key expires; a cache of 0 asks the key store every time.
#[tokio::test]
async fn cached_keys_expire() {
    let db = databases::sqlite().await.unwrap();
    let writer = ProtectedStore::new(db.store().clone(), sqlite_keys(db.store()).await);
    register(&writer, "c1").await;
    let reader = ProtectedStore::new(db.store().clone(), sqlite_keys(db.store()).await)
        .with_key_cache(100, Duration::from_millis(200));
    let uncached = ProtectedStore::new(db.store().clone(), sqlite_keys(db.store()).await)
        .with_key_cache(0, Duration::ZERO);
    let email =
        |events: Vec<RecordedEvent>| events[0].decode::<CustomerRegistered>().unwrap().email;
    let read = reader
        .read_stream(&stream("c1"), StreamQuery::all())
        .await
        .unwrap();
    assert!(!email(read).is_forgotten());
    writer.forget("c1").await.unwrap();
    let read = uncached
        .read_stream(&stream("c1"), StreamQuery::all())
        .await
        .unwrap();
    assert!(email(read).is_forgotten(), "no cache: forgotten at once");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let read = reader
        .read_stream(&stream("c1"), StreamQuery::all())
        .await
        .unwrap();
    assert!(
        email(read).is_forgotten(),
        "forgotten once the cached key expired"
    );
}

/// The keys table is under row-level security like the events: the application's role, scoped
/// to one tenant, reads and writes that tenant's keys only, and nothing unscoped; the protected
/// store works through it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_keys_under_row_level_security() {
    use sqlx::ConnectOptions;
    use sqlx::postgres::PgPoolOptions;

    let Some((options, schema)) = databases::postgres_schema().await else {
        return;
    };
    let owner = PostgresEventStore::connect_with(options.clone())
        .await
        .unwrap();
    // The owner creates the keys tables.
    eventsource::protection::PostgresKeyStore::new(owner.pool().clone(), master())
        .await
        .unwrap();
    let role = eventsource_tests::databases::TestRole {
        options: options.clone(),
        name: format!("es_keys_{}", uuid::Uuid::now_v7().simple()),
    };
    let name = &role.name;
    let mut admin = options.connect().await.unwrap();
    sqlx::raw_sql(&format!(
        "CREATE ROLE {name} LOGIN NOSUPERUSER NOBYPASSRLS; \
         GRANT USAGE ON SCHEMA {schema} TO {name}; \
         GRANT SELECT, INSERT ON events TO {name}; \
         GRANT SELECT, INSERT, UPDATE, DELETE ON snapshots TO {name}; \
         GRANT SELECT, INSERT, UPDATE ON eventsource_subject_keys TO {name}; \
         GRANT SELECT ON eventsource_master_key_check TO {name};",
        schema = schema.name()
    ))
    .execute(&mut admin)
    .await
    .unwrap();
    let app_options = options.clone().username(name);
    let app_pool = PgPoolOptions::new()
        .max_connections(4)
        .connect_with(app_options.clone())
        .await
        .unwrap();
    let app = PostgresEventStore::from_pool(app_pool.clone());
    let keys = Arc::new(
        eventsource::protection::PostgresKeyStore::new(app_pool.clone(), master())
            .await
            .unwrap(),
    );
    let acme = ProtectedStore::new(app.clone(), keys.clone())
        .for_tenant("acme")
        .unwrap();
    let globex = ProtectedStore::new(app.clone(), keys.clone())
        .for_tenant("globex")
        .unwrap();
    register(&acme, "u-1").await;
    globex
        .append(
            &stream("g-1"),
            ExpectedVersion::NoStream,
            vec![NewEvent::new(&registered("u-1")).unwrap()],
        )
        .await
        .unwrap();
    let read = acme
        .read_stream(&stream("u-1"), StreamQuery::all())
        .await
        .unwrap();
    assert_eq!(
        read[0].decode::<CustomerRegistered>().unwrap(),
        registered("u-1")
    );

    // Raw SQL through the role.
    let mut raw = app_options.connect().await.unwrap();
    for (setting, expected) in [
        (Some("acme"), Some("acme")),
        (Some("globex"), Some("globex")),
        (Some("initech"), None),
        (None, None),
    ] {
        let mut tx = sqlx::Connection::begin(&mut raw).await.unwrap();
        if let Some(tenant) = setting {
            sqlx::query("SELECT set_config('eventsource.tenant', $1, true)")
                .bind(tenant)
                .execute(&mut *tx)
                .await
                .unwrap();
        }
        let seen: Option<String> = sqlx::query_scalar(
            "SELECT string_agg(tenant_id || ':' || subject, ',') FROM eventsource_subject_keys",
        )
        .fetch_one(&mut *tx)
        .await
        .unwrap();
        assert_eq!(
            seen.as_deref(),
            expected.map(|t| format!("{t}:u-1")).as_deref(),
            "setting {setting:?}"
        );
        // Another tenant's keys cannot be destroyed or rewritten.
        let touched = sqlx::query(
            "UPDATE eventsource_subject_keys SET wrapped_key = NULL WHERE tenant_id = 'globex'",
        )
        .execute(&mut *tx)
        .await
        .unwrap()
        .rows_affected();
        assert_eq!(touched, u64::from(setting == Some("globex")));
        tx.rollback().await.unwrap();
    }
    // Keys of another tenant cannot be inserted under this one's setting.
    let mut tx = sqlx::Connection::begin(&mut raw).await.unwrap();
    sqlx::query("SELECT set_config('eventsource.tenant', 'acme', true)")
        .execute(&mut *tx)
        .await
        .unwrap();
    let refused = sqlx::query(
        "INSERT INTO eventsource_subject_keys (key_id, tenant_id, subject) \
         VALUES (gen_random_uuid(), 'globex', 'x')",
    )
    .execute(&mut *tx)
    .await;
    assert!(refused.is_err());
    drop(tx);
    drop(raw);
    app_pool.close().await;
}

/// A load folds the stream lean with the cached keys and, from the first event whose key is
/// not cached, reads the rest whole: the state is the same either way.
#[tokio::test]
async fn loads_fall_back_from_the_first_uncached_key() {
    let db = databases::sqlite().await.unwrap();
    let keys = Arc::new(sqlite_keys(db.store()).await);
    let writer = ProtectedStore::new(db.store().clone(), keys.clone());
    let reader = ProtectedStore::new(db.store().clone(), keys.clone());
    let writes = Customer::repository(writer.clone());
    let reads = Customer::repository(reader.clone());
    let id = "l-1".to_owned();
    let mut root = writes.create(id.clone());
    root.record(registered("l-1"));
    for n in 0..5 {
        root.record(EmailChanged {
            customer_id: "l-1".to_owned(),
            email: Personal::Known(format!("{n}@example.org")),
        });
    }
    writes.save(&mut root).await.unwrap();
    // Nothing cached in the reader: read whole from the first event.
    let loaded = reads.load(id.clone()).await.unwrap();
    assert_eq!(loaded.email, Personal::Known("4@example.org".to_owned()));
    assert_eq!(loaded.name, Personal::Known(format!("{NAME} l-1")));
    // A new key the reader has not seen, for the last event only.
    writer.rotate("l-1").await.unwrap();
    writes
        .update(id.clone(), |customer| {
            customer.record(EmailChanged {
                customer_id: "l-1".to_owned(),
                email: Personal::Known("rotated@example.org".to_owned()),
            });
            Ok(())
        })
        .await
        .unwrap();
    let loaded = reads.load(id.clone()).await.unwrap();
    assert_eq!(
        loaded.email,
        Personal::Known("rotated@example.org".to_owned())
    );
    assert_eq!(loaded.version(), 7);
    // Forgotten: every key known destroyed, lean.
    writer.forget("l-1").await.unwrap();
    let fresh = Customer::repository(ProtectedStore::new(db.store().clone(), keys));
    let loaded = fresh.load(id).await.unwrap();
    assert!(loaded.email.is_forgotten() && loaded.name.is_forgotten());
}
