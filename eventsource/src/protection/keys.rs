//! Where the data subjects' keys live: [`KeyStore`], in memory, SQLite or PostgreSQL.

use super::cipher::DataKey;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
use super::cipher::MasterKey;
use crate::error::Result;
use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;
use uuid::Uuid;

/// What a key store knows of one key id.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum KeyState {
    /// The key, usable.
    Live(DataKey),
    /// The key existed and was destroyed by [`KeyStore::forget`]: what it encrypted is erased.
    Destroyed,
    /// No key of this id was ever in this store (another key store, or a lost keys table).
    Unknown,
}

/// The keys of the data subjects, one or more per subject (after a rotation), each with an id.
///
/// Implementations: [`InMemoryKeyStore`] for tests, `SqliteKeyStore` and `PostgresKeyStore`
/// (a table `eventsource_subject_keys` with each key wrapped by a [`MasterKey`]).
pub trait KeyStore: Send + Sync {
    /// The subject's current key (the newest live one), created on first use.
    fn get_or_create(&self, subject: &str) -> impl Future<Output = Result<DataKey>> + Send;

    /// The key of this id, to decrypt what it encrypted.
    fn get(&self, key_id: Uuid) -> impl Future<Output = Result<KeyState>> + Send;

    /// The ids of every key the subject ever had, destroyed ones included.
    fn key_ids(&self, subject: &str) -> impl Future<Output = Result<Vec<Uuid>>> + Send;

    /// Destroys every key of the subject. Returns how many live keys were destroyed (0 for a
    /// subject already forgotten or never seen). Keys created afterwards for the same subject
    /// (new events about them) are new keys.
    fn forget(&self, subject: &str) -> impl Future<Output = Result<u64>> + Send;

    /// Creates a new current key for the subject: new events use it, the older keys still
    /// decrypt the events they encrypted.
    fn rotate(&self, subject: &str) -> impl Future<Output = Result<DataKey>> + Send;
}

/// Keys in process memory, unwrapped: for tests and examples (they die with the process).
#[derive(Debug, Default)]
pub struct InMemoryKeyStore {
    keys: Mutex<HashMap<Uuid, (String, Option<DataKey>)>>,
}

impl InMemoryKeyStore {
    /// An empty key store.
    pub fn new() -> Self {
        Self::default()
    }

    fn insert(&self, subject: &str) -> DataKey {
        let key = DataKey::generate(subject);
        let mut keys = self.keys.lock().expect("key store lock");
        keys.insert(key.id(), (subject.to_owned(), Some(key.clone())));
        key
    }
}

impl KeyStore for InMemoryKeyStore {
    async fn get_or_create(&self, subject: &str) -> Result<DataKey> {
        let current = {
            let keys = self.keys.lock().expect("key store lock");
            keys.values()
                .filter(|(s, _)| s == subject)
                .filter_map(|(_, key)| key.clone())
                .max_by_key(DataKey::id)
        };
        Ok(current.unwrap_or_else(|| self.insert(subject)))
    }

    async fn get(&self, key_id: Uuid) -> Result<KeyState> {
        let keys = self.keys.lock().expect("key store lock");
        Ok(match keys.get(&key_id) {
            Some((_, Some(key))) => KeyState::Live(key.clone()),
            Some((_, None)) => KeyState::Destroyed,
            None => KeyState::Unknown,
        })
    }

    async fn key_ids(&self, subject: &str) -> Result<Vec<Uuid>> {
        let keys = self.keys.lock().expect("key store lock");
        let mut ids: Vec<Uuid> = keys
            .iter()
            .filter(|(_, (s, _))| s == subject)
            .map(|(id, _)| *id)
            .collect();
        ids.sort();
        Ok(ids)
    }

    async fn forget(&self, subject: &str) -> Result<u64> {
        let mut keys = self.keys.lock().expect("key store lock");
        let mut destroyed = 0;
        for (s, key) in keys.values_mut() {
            if s == subject && key.take().is_some() {
                destroyed += 1;
            }
        }
        Ok(destroyed)
    }

    async fn rotate(&self, subject: &str) -> Result<DataKey> {
        Ok(self.insert(subject))
    }
}

/// The keys table, created by the key store itself (it is not part of the event store's
/// migrations: keys may live in another database than the events, and should be backed up
/// apart from them).
#[cfg(feature = "sqlite")]
const SQLITE_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS eventsource_subject_keys (
    key_id       TEXT PRIMARY KEY NOT NULL,
    subject      TEXT NOT NULL,
    wrapped_key  BLOB,
    created_at   TEXT NOT NULL,
    destroyed_at TEXT
);
CREATE INDEX IF NOT EXISTS eventsource_subject_keys_by_subject
    ON eventsource_subject_keys (subject, key_id);
";

/// Keys in a SQLite table `eventsource_subject_keys`, each wrapped (AES-256-GCM) by the
/// [`MasterKey`]. Forgetting a subject overwrites its wrapped keys with NULL under
/// `PRAGMA secure_delete`, so the bytes do not linger in free pages of the file.
#[cfg(feature = "sqlite")]
#[cfg_attr(docsrs, doc(cfg(all(feature = "encryption", feature = "sqlite"))))]
#[derive(Debug)]
pub struct SqliteKeyStore {
    pool: sqlx::SqlitePool,
    master: MasterKey,
}

#[cfg(feature = "sqlite")]
impl SqliteKeyStore {
    /// A key store in `pool`'s database, creating its table if needed: the event store's
    /// writer pool ([`SqliteEventStore::writer_pool`](crate::SqliteEventStore::writer_pool), so
    /// that its writes queue with the appends), or another database's (keys kept apart from
    /// the events, and from their backups).
    pub async fn new(pool: sqlx::SqlitePool, master: MasterKey) -> Result<Self> {
        sqlx::raw_sql(SQLITE_SCHEMA)
            .execute(&pool)
            .await
            .map_err(crate::Error::database("create the keys table"))?;
        Ok(SqliteKeyStore { pool, master })
    }

    async fn insert(&self, subject: &str) -> Result<DataKey> {
        let key = DataKey::generate(subject);
        sqlx::query(
            "INSERT INTO eventsource_subject_keys (key_id, subject, wrapped_key, created_at) \
             VALUES (?, ?, ?, ?)",
        )
        .bind(key.id().to_string())
        .bind(subject)
        .bind(self.master.wrap(&key))
        .bind(crate::event::now().to_rfc3339())
        .execute(&self.pool)
        .await
        .map_err(crate::Error::database("create a subject key"))?;
        Ok(key)
    }
}

#[cfg(feature = "sqlite")]
impl KeyStore for SqliteKeyStore {
    async fn get_or_create(&self, subject: &str) -> Result<DataKey> {
        let row: Option<(String, Vec<u8>)> = sqlx::query_as(
            "SELECT key_id, wrapped_key FROM eventsource_subject_keys \
             WHERE subject = ? AND wrapped_key IS NOT NULL ORDER BY key_id DESC LIMIT 1",
        )
        .bind(subject)
        .fetch_optional(&self.pool)
        .await
        .map_err(crate::Error::database("read a subject key"))?;
        match row {
            Some((id, wrapped)) => self.master.unwrap(parse_id(&id)?, subject, &wrapped),
            None => self.insert(subject).await,
        }
    }

    async fn get(&self, key_id: Uuid) -> Result<KeyState> {
        let row: Option<(String, Option<Vec<u8>>)> = sqlx::query_as(
            "SELECT subject, wrapped_key FROM eventsource_subject_keys WHERE key_id = ?",
        )
        .bind(key_id.to_string())
        .fetch_optional(&self.pool)
        .await
        .map_err(crate::Error::database("read a subject key"))?;
        key_state(&self.master, key_id, row)
    }

    async fn key_ids(&self, subject: &str) -> Result<Vec<Uuid>> {
        let ids: Vec<(String,)> = sqlx::query_as(
            "SELECT key_id FROM eventsource_subject_keys WHERE subject = ? ORDER BY key_id",
        )
        .bind(subject)
        .fetch_all(&self.pool)
        .await
        .map_err(crate::Error::database("read subject keys"))?;
        ids.iter().map(|(id,)| parse_id(id)).collect()
    }

    async fn forget(&self, subject: &str) -> Result<u64> {
        let mut conn = self
            .pool
            .acquire()
            .await
            .map_err(crate::Error::database("forget a subject"))?;
        sqlx::query("PRAGMA secure_delete = ON")
            .execute(&mut *conn)
            .await
            .map_err(crate::Error::database("forget a subject"))?;
        let done = sqlx::query(
            "UPDATE eventsource_subject_keys SET wrapped_key = NULL, destroyed_at = ? \
             WHERE subject = ? AND wrapped_key IS NOT NULL",
        )
        .bind(crate::event::now().to_rfc3339())
        .bind(subject)
        .execute(&mut *conn)
        .await
        .map_err(crate::Error::database("forget a subject"))?;
        Ok(done.rows_affected())
    }

    async fn rotate(&self, subject: &str) -> Result<DataKey> {
        self.insert(subject).await
    }
}

/// A key's state from its row in the keys table (subject, wrapped key), if it has one.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
fn key_state(
    master: &MasterKey,
    key_id: Uuid,
    row: Option<(String, Option<Vec<u8>>)>,
) -> Result<KeyState> {
    Ok(match row {
        Some((subject, Some(wrapped))) => {
            KeyState::Live(master.unwrap(key_id, &subject, &wrapped)?)
        }
        Some((_, None)) => KeyState::Destroyed,
        None => KeyState::Unknown,
    })
}

#[cfg(feature = "sqlite")]
fn parse_id(id: &str) -> Result<Uuid> {
    id.parse().map_err(|_| {
        crate::Error::InvalidConfig(format!(
            "the keys table holds a key id that is not a UUID: `{id}`"
        ))
    })
}

/// The keys table of [`PostgresKeyStore`], created by the key store itself.
#[cfg(feature = "postgres")]
const POSTGRES_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS eventsource_subject_keys (
    key_id       UUID PRIMARY KEY,
    subject      TEXT NOT NULL,
    wrapped_key  BYTEA,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    destroyed_at TIMESTAMPTZ
);
CREATE INDEX IF NOT EXISTS eventsource_subject_keys_by_subject
    ON eventsource_subject_keys (subject, key_id);
";

/// Keys in a PostgreSQL table `eventsource_subject_keys`, each wrapped (AES-256-GCM) by the
/// [`MasterKey`]. Forgetting sets the wrapped keys to NULL; the old row versions stay in the
/// table's pages until `VACUUM` reclaims them (autovacuum does, in time).
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(all(feature = "encryption", feature = "postgres"))))]
#[derive(Debug)]
pub struct PostgresKeyStore {
    pool: sqlx::PgPool,
    master: MasterKey,
}

#[cfg(feature = "postgres")]
impl PostgresKeyStore {
    /// A key store in `pool`'s database, creating its table if needed.
    pub async fn new(pool: sqlx::PgPool, master: MasterKey) -> Result<Self> {
        sqlx::raw_sql(POSTGRES_SCHEMA)
            .execute(&pool)
            .await
            .map_err(crate::Error::database("create the keys table"))?;
        Ok(PostgresKeyStore { pool, master })
    }

    async fn insert(&self, subject: &str) -> Result<DataKey> {
        let key = DataKey::generate(subject);
        sqlx::query(
            "INSERT INTO eventsource_subject_keys (key_id, subject, wrapped_key) VALUES ($1, $2, $3)",
        )
        .bind(key.id())
        .bind(subject)
        .bind(self.master.wrap(&key))
        .execute(&self.pool)
        .await
        .map_err(crate::Error::database("create a subject key"))?;
        Ok(key)
    }
}

#[cfg(feature = "postgres")]
impl KeyStore for PostgresKeyStore {
    async fn get_or_create(&self, subject: &str) -> Result<DataKey> {
        let row: Option<(Uuid, Vec<u8>)> = sqlx::query_as(
            "SELECT key_id, wrapped_key FROM eventsource_subject_keys \
             WHERE subject = $1 AND wrapped_key IS NOT NULL ORDER BY key_id DESC LIMIT 1",
        )
        .bind(subject)
        .fetch_optional(&self.pool)
        .await
        .map_err(crate::Error::database("read a subject key"))?;
        match row {
            Some((id, wrapped)) => self.master.unwrap(id, subject, &wrapped),
            None => self.insert(subject).await,
        }
    }

    async fn get(&self, key_id: Uuid) -> Result<KeyState> {
        let row: Option<(String, Option<Vec<u8>>)> = sqlx::query_as(
            "SELECT subject, wrapped_key FROM eventsource_subject_keys WHERE key_id = $1",
        )
        .bind(key_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(crate::Error::database("read a subject key"))?;
        key_state(&self.master, key_id, row)
    }

    async fn key_ids(&self, subject: &str) -> Result<Vec<Uuid>> {
        let ids: Vec<(Uuid,)> = sqlx::query_as(
            "SELECT key_id FROM eventsource_subject_keys WHERE subject = $1 ORDER BY key_id",
        )
        .bind(subject)
        .fetch_all(&self.pool)
        .await
        .map_err(crate::Error::database("read subject keys"))?;
        Ok(ids.into_iter().map(|(id,)| id).collect())
    }

    async fn forget(&self, subject: &str) -> Result<u64> {
        let done = sqlx::query(
            "UPDATE eventsource_subject_keys SET wrapped_key = NULL, destroyed_at = now() \
             WHERE subject = $1 AND wrapped_key IS NOT NULL",
        )
        .bind(subject)
        .execute(&self.pool)
        .await
        .map_err(crate::Error::database("forget a subject"))?;
        Ok(done.rows_affected())
    }

    async fn rotate(&self, subject: &str) -> Result<DataKey> {
        self.insert(subject).await
    }
}
