//! Where the data subjects' keys live: [`KeyStore`], in memory, SQLite or PostgreSQL.
//!
//! A subject is named within its tenant: every method takes the tenant (`None` for events with
//! no tenant) beside the subject, and two tenants' subjects of one id have two keys, forgotten
//! apart.

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
    /// No key of this id (and tenant) was ever in this store (another key store, another
    /// tenant's key, or a lost keys table).
    Unknown,
}

/// The keys of the data subjects, one or more per (tenant, subject) (after a rotation), each
/// with an id.
///
/// Implementations: [`InMemoryKeyStore`] for tests, `SqliteKeyStore` and `PostgresKeyStore`
/// (a table `eventsource_subject_keys` with each key wrapped by a [`MasterKey`]).
pub trait KeyStore: Send + Sync {
    /// The subject's current key (the newest live one), created on first use.
    fn get_or_create(
        &self,
        tenant: Option<&str>,
        subject: &str,
    ) -> impl Future<Output = Result<DataKey>> + Send;

    /// The key of this id, to decrypt what it encrypted: [`KeyState::Unknown`] if the key
    /// belongs to another tenant. A key whose stored form is damaged (it does not unwrap) is
    /// [`Error::MasterKey`](crate::Error::MasterKey).
    fn get(
        &self,
        tenant: Option<&str>,
        key_id: Uuid,
    ) -> impl Future<Output = Result<KeyState>> + Send;

    /// The ids of every key the subject ever had, destroyed ones included.
    fn key_ids(
        &self,
        tenant: Option<&str>,
        subject: &str,
    ) -> impl Future<Output = Result<Vec<Uuid>>> + Send;

    /// Destroys every key of the subject in this tenant. Returns how many live keys were
    /// destroyed (0 for a subject already forgotten or never seen). Keys created afterwards
    /// for the same subject (new events about them) are new keys.
    fn forget(
        &self,
        tenant: Option<&str>,
        subject: &str,
    ) -> impl Future<Output = Result<u64>> + Send;

    /// Creates a new current key for the subject: new events use it, the older keys still
    /// decrypt the events they encrypted.
    fn rotate(
        &self,
        tenant: Option<&str>,
        subject: &str,
    ) -> impl Future<Output = Result<DataKey>> + Send;
}

/// A shared key store: the wrappers of several tenants (or a writer and a reader) over one
/// keys table.
impl<K: KeyStore + ?Sized> KeyStore for std::sync::Arc<K> {
    fn get_or_create(
        &self,
        tenant: Option<&str>,
        subject: &str,
    ) -> impl Future<Output = Result<DataKey>> + Send {
        (**self).get_or_create(tenant, subject)
    }

    fn get(
        &self,
        tenant: Option<&str>,
        key_id: Uuid,
    ) -> impl Future<Output = Result<KeyState>> + Send {
        (**self).get(tenant, key_id)
    }

    fn key_ids(
        &self,
        tenant: Option<&str>,
        subject: &str,
    ) -> impl Future<Output = Result<Vec<Uuid>>> + Send {
        (**self).key_ids(tenant, subject)
    }

    fn forget(
        &self,
        tenant: Option<&str>,
        subject: &str,
    ) -> impl Future<Output = Result<u64>> + Send {
        (**self).forget(tenant, subject)
    }

    fn rotate(
        &self,
        tenant: Option<&str>,
        subject: &str,
    ) -> impl Future<Output = Result<DataKey>> + Send {
        (**self).rotate(tenant, subject)
    }
}

/// Keys in process memory, unwrapped: for tests and examples (they die with the process).
#[derive(Debug, Default)]
pub struct InMemoryKeyStore {
    /// By key id: the owner (tenant, subject) and the key (`None`: destroyed).
    keys: Mutex<HashMap<Uuid, (Owner, Option<DataKey>)>>,
}

type Owner = (Option<String>, String);

fn owned_by(owner: &Owner, tenant: Option<&str>, subject: &str) -> bool {
    owner.0.as_deref() == tenant && owner.1 == subject
}

impl InMemoryKeyStore {
    /// An empty key store.
    pub fn new() -> Self {
        Self::default()
    }

    fn insert(&self, tenant: Option<&str>, subject: &str) -> DataKey {
        let key = DataKey::generate(tenant, subject);
        let mut keys = self.keys.lock().expect("key store lock");
        keys.insert(
            key.id(),
            (
                (tenant.map(str::to_owned), subject.to_owned()),
                Some(key.clone()),
            ),
        );
        key
    }
}

impl KeyStore for InMemoryKeyStore {
    async fn get_or_create(&self, tenant: Option<&str>, subject: &str) -> Result<DataKey> {
        let current = {
            let keys = self.keys.lock().expect("key store lock");
            keys.values()
                .filter(|(owner, _)| owned_by(owner, tenant, subject))
                .filter_map(|(_, key)| key.clone())
                .max_by_key(DataKey::id)
        };
        Ok(current.unwrap_or_else(|| self.insert(tenant, subject)))
    }

    async fn get(&self, tenant: Option<&str>, key_id: Uuid) -> Result<KeyState> {
        let keys = self.keys.lock().expect("key store lock");
        Ok(match keys.get(&key_id) {
            Some((owner, _)) if owner.0.as_deref() != tenant => KeyState::Unknown,
            Some((_, Some(key))) => KeyState::Live(key.clone()),
            Some((_, None)) => KeyState::Destroyed,
            None => KeyState::Unknown,
        })
    }

    async fn key_ids(&self, tenant: Option<&str>, subject: &str) -> Result<Vec<Uuid>> {
        let keys = self.keys.lock().expect("key store lock");
        let mut ids: Vec<Uuid> = keys
            .iter()
            .filter(|(_, (owner, _))| owned_by(owner, tenant, subject))
            .map(|(id, _)| *id)
            .collect();
        ids.sort();
        Ok(ids)
    }

    async fn forget(&self, tenant: Option<&str>, subject: &str) -> Result<u64> {
        let mut keys = self.keys.lock().expect("key store lock");
        let mut destroyed = 0;
        for (owner, key) in keys.values_mut() {
            if owned_by(owner, tenant, subject) && key.take().is_some() {
                destroyed += 1;
            }
        }
        Ok(destroyed)
    }

    async fn rotate(&self, tenant: Option<&str>, subject: &str) -> Result<DataKey> {
        Ok(self.insert(tenant, subject))
    }
}

/// The tenant column's value for `tenant`: `''` stands for "no tenant" (a tenant id is never
/// empty), so that the column is `NOT NULL` and one index serves every lookup.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
fn tenant_column(tenant: Option<&str>) -> &str {
    tenant.unwrap_or("")
}

#[cfg(any(feature = "sqlite", feature = "postgres"))]
fn tenant_of(column: &str) -> Option<&str> {
    (!column.is_empty()).then_some(column)
}

/// The id and subject under which the master-key check is wrapped.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
const CHECK_ID: Uuid = Uuid::nil();
#[cfg(any(feature = "sqlite", feature = "postgres"))]
const CHECK_SUBJECT: &str = "eventsource master key check";

/// A fresh check value: a random key wrapped by `master`, stored once per keys database so that
/// a wrong master key is refused when the key store opens, not at the first row it reads.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
fn new_check(master: &MasterKey) -> Vec<u8> {
    master.wrap(&DataKey::new(CHECK_ID, None, CHECK_SUBJECT, rand_bytes()))
}

#[cfg(any(feature = "sqlite", feature = "postgres"))]
fn rand_bytes() -> [u8; 32] {
    use aes_gcm::aead::{KeyInit, OsRng};
    aes_gcm::Aes256Gcm::generate_key(&mut OsRng).into()
}

/// Checks `master` against the stored check value.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
fn verify_check(master: &MasterKey, wrapped: &[u8]) -> Result<()> {
    master
        .unwrap(CHECK_ID, None, CHECK_SUBJECT, wrapped)
        .map(drop)
}

/// The keys tables, created by the key store itself (they are not part of the event store's
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
CREATE TABLE IF NOT EXISTS eventsource_master_key_check (
    id      INTEGER PRIMARY KEY CHECK (id = 1),
    wrapped BLOB NOT NULL
);
";

#[cfg(feature = "sqlite")]
const SQLITE_INDEX: &str = "
DROP INDEX IF EXISTS eventsource_subject_keys_by_subject;
CREATE INDEX IF NOT EXISTS eventsource_subject_keys_by_tenant_subject
    ON eventsource_subject_keys (tenant_id, subject, key_id);
";

/// Keys in a SQLite table `eventsource_subject_keys`, each wrapped (AES-256-GCM) by the
/// [`MasterKey`]. Forgetting a subject overwrites its wrapped keys with NULL under
/// `PRAGMA secure_delete`, then checkpoints the write-ahead log and truncates it, so the bytes
/// linger neither in free pages of the file nor in the `-wal` file.
#[cfg(feature = "sqlite")]
#[cfg_attr(docsrs, doc(cfg(all(feature = "encryption", feature = "sqlite"))))]
#[derive(Debug)]
pub struct SqliteKeyStore {
    pool: sqlx::SqlitePool,
    master: MasterKey,
}

#[cfg(feature = "sqlite")]
impl SqliteKeyStore {
    /// A key store in `pool`'s database, creating its tables if needed: the event store's
    /// writer pool ([`SqliteEventStore::writer_pool`](crate::SqliteEventStore::writer_pool), so
    /// that its writes queue with the appends), or another database's (keys kept apart from
    /// the events, and from their backups). Fails with [`Error::MasterKey`](crate::Error::MasterKey)
    /// if `master` is not the key this database's keys were wrapped with.
    pub async fn new(pool: sqlx::SqlitePool, master: MasterKey) -> Result<Self> {
        let schema = crate::Error::database("create the keys table");
        sqlx::raw_sql(SQLITE_SCHEMA)
            .execute(&pool)
            .await
            .map_err(schema)?;
        let columns: Vec<(String,)> =
            sqlx::query_as("SELECT name FROM pragma_table_info('eventsource_subject_keys')")
                .fetch_all(&pool)
                .await
                .map_err(crate::Error::database("create the keys table"))?;
        if !columns.iter().any(|(name,)| name == "tenant_id") {
            // Keys of the first release belong to no tenant.
            sqlx::query(
                "ALTER TABLE eventsource_subject_keys ADD COLUMN tenant_id TEXT NOT NULL DEFAULT ''",
            )
            .execute(&pool)
            .await
            .map_err(crate::Error::database("create the keys table"))?;
        }
        sqlx::raw_sql(SQLITE_INDEX)
            .execute(&pool)
            .await
            .map_err(crate::Error::database("create the keys table"))?;
        let store = SqliteKeyStore { pool, master };
        store.check_master().await?;
        Ok(store)
    }

    async fn check_master(&self) -> Result<()> {
        let read = crate::Error::database("check the master key");
        let stored: Option<(Vec<u8>,)> =
            sqlx::query_as("SELECT wrapped FROM eventsource_master_key_check WHERE id = 1")
                .fetch_optional(&self.pool)
                .await
                .map_err(read)?;
        if let Some((wrapped,)) = stored {
            return verify_check(&self.master, &wrapped);
        }
        // A keys table from before the check: the newest live key must unwrap.
        let newest: Option<(String, String, String, Vec<u8>)> = sqlx::query_as(
            "SELECT key_id, tenant_id, subject, wrapped_key FROM eventsource_subject_keys \
             WHERE wrapped_key IS NOT NULL ORDER BY key_id DESC LIMIT 1",
        )
        .fetch_optional(&self.pool)
        .await
        .map_err(crate::Error::database("check the master key"))?;
        if let Some((id, tenant, subject, wrapped)) = newest {
            self.master
                .unwrap(parse_id(&id)?, tenant_of(&tenant), &subject, &wrapped)?;
        }
        sqlx::query(
            "INSERT OR IGNORE INTO eventsource_master_key_check (id, wrapped) VALUES (1, ?)",
        )
        .bind(new_check(&self.master))
        .execute(&self.pool)
        .await
        .map_err(crate::Error::database("check the master key"))?;
        let (wrapped,): (Vec<u8>,) =
            sqlx::query_as("SELECT wrapped FROM eventsource_master_key_check WHERE id = 1")
                .fetch_one(&self.pool)
                .await
                .map_err(crate::Error::database("check the master key"))?;
        verify_check(&self.master, &wrapped)
    }

    async fn insert(&self, tenant: Option<&str>, subject: &str) -> Result<DataKey> {
        let key = DataKey::generate(tenant, subject);
        sqlx::query(
            "INSERT INTO eventsource_subject_keys \
             (key_id, tenant_id, subject, wrapped_key, created_at) VALUES (?, ?, ?, ?, ?)",
        )
        .bind(key.id().to_string())
        .bind(tenant_column(tenant))
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
    async fn get_or_create(&self, tenant: Option<&str>, subject: &str) -> Result<DataKey> {
        let row: Option<(String, Vec<u8>)> = sqlx::query_as(
            "SELECT key_id, wrapped_key FROM eventsource_subject_keys \
             WHERE tenant_id = ? AND subject = ? AND wrapped_key IS NOT NULL \
             ORDER BY key_id DESC LIMIT 1",
        )
        .bind(tenant_column(tenant))
        .bind(subject)
        .fetch_optional(&self.pool)
        .await
        .map_err(crate::Error::database("read a subject key"))?;
        match row {
            Some((id, wrapped)) => self
                .master
                .unwrap(parse_id(&id)?, tenant, subject, &wrapped),
            None => self.insert(tenant, subject).await,
        }
    }

    async fn get(&self, tenant: Option<&str>, key_id: Uuid) -> Result<KeyState> {
        let row: Option<(String, Option<Vec<u8>>)> = sqlx::query_as(
            "SELECT subject, wrapped_key FROM eventsource_subject_keys \
             WHERE key_id = ? AND tenant_id = ?",
        )
        .bind(key_id.to_string())
        .bind(tenant_column(tenant))
        .fetch_optional(&self.pool)
        .await
        .map_err(crate::Error::database("read a subject key"))?;
        key_state(&self.master, tenant, key_id, row)
    }

    async fn key_ids(&self, tenant: Option<&str>, subject: &str) -> Result<Vec<Uuid>> {
        let ids: Vec<(String,)> = sqlx::query_as(
            "SELECT key_id FROM eventsource_subject_keys \
             WHERE tenant_id = ? AND subject = ? ORDER BY key_id",
        )
        .bind(tenant_column(tenant))
        .bind(subject)
        .fetch_all(&self.pool)
        .await
        .map_err(crate::Error::database("read subject keys"))?;
        ids.iter().map(|(id,)| parse_id(id)).collect()
    }

    async fn forget(&self, tenant: Option<&str>, subject: &str) -> Result<u64> {
        let failed = || crate::Error::database("forget a subject");
        let mut conn = self.pool.acquire().await.map_err(failed())?;
        sqlx::query("PRAGMA secure_delete = ON")
            .execute(&mut *conn)
            .await
            .map_err(failed())?;
        let done = sqlx::query(
            "UPDATE eventsource_subject_keys SET wrapped_key = NULL, destroyed_at = ? \
             WHERE tenant_id = ? AND subject = ? AND wrapped_key IS NOT NULL",
        )
        .bind(crate::event::now().to_rfc3339())
        .bind(tenant_column(tenant))
        .bind(subject)
        .execute(&mut *conn)
        .await
        .map_err(failed())?;
        // The old page, wrapped key and all, is still a frame of the write-ahead log until a
        // checkpoint copies the new one over it and the log is cut.
        sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
            .execute(&mut *conn)
            .await
            .map_err(failed())?;
        Ok(done.rows_affected())
    }

    async fn rotate(&self, tenant: Option<&str>, subject: &str) -> Result<DataKey> {
        self.insert(tenant, subject).await
    }
}

/// A key's state from its row in the keys table (subject, wrapped key), if it has one.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
fn key_state(
    master: &MasterKey,
    tenant: Option<&str>,
    key_id: Uuid,
    row: Option<(String, Option<Vec<u8>>)>,
) -> Result<KeyState> {
    Ok(match row {
        Some((subject, Some(wrapped))) => {
            KeyState::Live(master.unwrap(key_id, tenant, &subject, &wrapped)?)
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

/// The keys tables of [`PostgresKeyStore`], created by the key store itself; every statement
/// checks first, so that a role that does not own the tables (the application's, under
/// row-level security) opens the key store once its owner created them.
#[cfg(feature = "postgres")]
const POSTGRES_SCHEMA: &str = "
DO $$
BEGIN
    IF to_regclass('eventsource_subject_keys') IS NULL THEN
        CREATE TABLE eventsource_subject_keys (
            key_id       UUID PRIMARY KEY,
            subject      TEXT NOT NULL,
            wrapped_key  BYTEA,
            created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
            destroyed_at TIMESTAMPTZ
        );
    END IF;
    IF NOT EXISTS (SELECT 1 FROM information_schema.columns
                   WHERE table_schema = current_schema()
                     AND table_name = 'eventsource_subject_keys' AND column_name = 'tenant_id') THEN
        -- Keys of the first release belong to no tenant ('').
        ALTER TABLE eventsource_subject_keys ADD COLUMN tenant_id TEXT NOT NULL DEFAULT '';
        DROP INDEX IF EXISTS eventsource_subject_keys_by_subject;
        CREATE INDEX eventsource_subject_keys_by_tenant_subject
            ON eventsource_subject_keys (tenant_id, subject, key_id);
        -- Row-level security, as on the events: a role that does not own the table sees and
        -- writes only the keys of the tenant its transaction names.
        ALTER TABLE eventsource_subject_keys ENABLE ROW LEVEL SECURITY;
        DROP POLICY IF EXISTS eventsource_subject_keys_tenant ON eventsource_subject_keys;
        CREATE POLICY eventsource_subject_keys_tenant ON eventsource_subject_keys
            USING (tenant_id = NULLIF(current_setting('eventsource.tenant', true), ''))
            WITH CHECK (tenant_id = NULLIF(current_setting('eventsource.tenant', true), ''));
    END IF;
    IF to_regclass('eventsource_master_key_check') IS NULL THEN
        CREATE TABLE eventsource_master_key_check (
            id      INTEGER PRIMARY KEY CHECK (id = 1),
            wrapped BYTEA NOT NULL
        );
    END IF;
END
$$;
";

/// Keys in a PostgreSQL table `eventsource_subject_keys`, each wrapped (AES-256-GCM) by the
/// [`MasterKey`], under row-level security by tenant. Forgetting sets the wrapped keys to NULL;
/// the old row versions stay in the table's pages until `VACUUM` reclaims them (autovacuum
/// does, in time).
///
/// Operations for a tenant run in a transaction that sets `eventsource.tenant`, as the events'
/// do, so that the key store works for a role that does not own the table.
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(all(feature = "encryption", feature = "postgres"))))]
#[derive(Debug)]
pub struct PostgresKeyStore {
    pool: sqlx::PgPool,
    master: MasterKey,
}

#[cfg(feature = "postgres")]
impl PostgresKeyStore {
    /// A key store in `pool`'s database, creating its tables if needed. Fails with
    /// [`Error::MasterKey`](crate::Error::MasterKey) if `master` is not the key this database's
    /// keys were wrapped with.
    pub async fn new(pool: sqlx::PgPool, master: MasterKey) -> Result<Self> {
        sqlx::raw_sql(POSTGRES_SCHEMA)
            .execute(&pool)
            .await
            .map_err(crate::Error::database("create the keys table"))?;
        let store = PostgresKeyStore { pool, master };
        store.check_master().await?;
        Ok(store)
    }

    async fn check_master(&self) -> Result<()> {
        let read = || crate::Error::database("check the master key");
        let stored: Option<(Vec<u8>,)> =
            sqlx::query_as("SELECT wrapped FROM eventsource_master_key_check WHERE id = 1")
                .fetch_optional(&self.pool)
                .await
                .map_err(read())?;
        if let Some((wrapped,)) = stored {
            return verify_check(&self.master, &wrapped);
        }
        let newest: Option<(Uuid, String, String, Vec<u8>)> = sqlx::query_as(
            "SELECT key_id, tenant_id, subject, wrapped_key FROM eventsource_subject_keys \
             WHERE wrapped_key IS NOT NULL ORDER BY key_id DESC LIMIT 1",
        )
        .fetch_optional(&self.pool)
        .await
        .map_err(read())?;
        if let Some((id, tenant, subject, wrapped)) = newest {
            self.master
                .unwrap(id, tenant_of(&tenant), &subject, &wrapped)?;
        }
        sqlx::query(
            "INSERT INTO eventsource_master_key_check (id, wrapped) VALUES (1, $1) \
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(new_check(&self.master))
        .execute(&self.pool)
        .await
        .map_err(read())?;
        let (wrapped,): (Vec<u8>,) =
            sqlx::query_as("SELECT wrapped FROM eventsource_master_key_check WHERE id = 1")
                .fetch_one(&self.pool)
                .await
                .map_err(read())?;
        verify_check(&self.master, &wrapped)
    }

    /// Runs `statement` in a transaction scoped to `tenant` (row-level security), or on the pool
    /// for keys of no tenant.
    async fn scoped<T, F>(
        &self,
        tenant: Option<&str>,
        operation: &'static str,
        statement: F,
    ) -> Result<T>
    where
        F: for<'c> FnOnce(
            &'c mut sqlx::PgConnection,
        )
            -> futures::future::BoxFuture<'c, std::result::Result<T, sqlx::Error>>,
    {
        let failed = || crate::Error::database(operation);
        let Some(tenant) = tenant else {
            let mut conn = self.pool.acquire().await.map_err(failed())?;
            return statement(&mut conn).await.map_err(failed());
        };
        let mut tx = self.pool.begin().await.map_err(failed())?;
        sqlx::query("SELECT set_config('eventsource.tenant', $1, true)")
            .bind(tenant)
            .execute(&mut *tx)
            .await
            .map_err(failed())?;
        let value = statement(&mut tx).await.map_err(failed())?;
        tx.commit().await.map_err(failed())?;
        Ok(value)
    }

    async fn insert(&self, tenant: Option<&str>, subject: &str) -> Result<DataKey> {
        let key = DataKey::generate(tenant, subject);
        let wrapped = self.master.wrap(&key);
        let (id, tenant_id, subject) = (
            key.id(),
            tenant_column(tenant).to_owned(),
            subject.to_owned(),
        );
        self.scoped(tenant, "create a subject key", move |conn| {
            Box::pin(async move {
                sqlx::query(
                    "INSERT INTO eventsource_subject_keys (key_id, tenant_id, subject, wrapped_key) \
                     VALUES ($1, $2, $3, $4)",
                )
                .bind(id)
                .bind(tenant_id)
                .bind(subject)
                .bind(wrapped)
                .execute(conn)
                .await
                .map(drop)
            })
        })
        .await?;
        Ok(key)
    }
}

#[cfg(feature = "postgres")]
impl KeyStore for PostgresKeyStore {
    async fn get_or_create(&self, tenant: Option<&str>, subject: &str) -> Result<DataKey> {
        let (tenant_id, owned_subject) = (tenant_column(tenant).to_owned(), subject.to_owned());
        let row: Option<(Uuid, Vec<u8>)> = self
            .scoped(tenant, "read a subject key", move |conn| {
                Box::pin(async move {
                    sqlx::query_as(
                        "SELECT key_id, wrapped_key FROM eventsource_subject_keys \
                         WHERE tenant_id = $1 AND subject = $2 AND wrapped_key IS NOT NULL \
                         ORDER BY key_id DESC LIMIT 1",
                    )
                    .bind(tenant_id)
                    .bind(owned_subject)
                    .fetch_optional(conn)
                    .await
                })
            })
            .await?;
        match row {
            Some((id, wrapped)) => self.master.unwrap(id, tenant, subject, &wrapped),
            None => self.insert(tenant, subject).await,
        }
    }

    async fn get(&self, tenant: Option<&str>, key_id: Uuid) -> Result<KeyState> {
        let tenant_id = tenant_column(tenant).to_owned();
        let row: Option<(String, Option<Vec<u8>>)> = self
            .scoped(tenant, "read a subject key", move |conn| {
                Box::pin(async move {
                    sqlx::query_as(
                        "SELECT subject, wrapped_key FROM eventsource_subject_keys \
                         WHERE key_id = $1 AND tenant_id = $2",
                    )
                    .bind(key_id)
                    .bind(tenant_id)
                    .fetch_optional(conn)
                    .await
                })
            })
            .await?;
        key_state(&self.master, tenant, key_id, row)
    }

    async fn key_ids(&self, tenant: Option<&str>, subject: &str) -> Result<Vec<Uuid>> {
        let (tenant_id, subject) = (tenant_column(tenant).to_owned(), subject.to_owned());
        let ids: Vec<(Uuid,)> = self
            .scoped(tenant, "read subject keys", move |conn| {
                Box::pin(async move {
                    sqlx::query_as(
                        "SELECT key_id FROM eventsource_subject_keys \
                         WHERE tenant_id = $1 AND subject = $2 ORDER BY key_id",
                    )
                    .bind(tenant_id)
                    .bind(subject)
                    .fetch_all(conn)
                    .await
                })
            })
            .await?;
        Ok(ids.into_iter().map(|(id,)| id).collect())
    }

    async fn forget(&self, tenant: Option<&str>, subject: &str) -> Result<u64> {
        let (tenant_id, subject) = (tenant_column(tenant).to_owned(), subject.to_owned());
        self.scoped(tenant, "forget a subject", move |conn| {
            Box::pin(async move {
                sqlx::query(
                    "UPDATE eventsource_subject_keys SET wrapped_key = NULL, destroyed_at = now() \
                     WHERE tenant_id = $1 AND subject = $2 AND wrapped_key IS NOT NULL",
                )
                .bind(tenant_id)
                .bind(subject)
                .execute(conn)
                .await
                .map(|done| done.rows_affected())
            })
        })
        .await
    }

    async fn rotate(&self, tenant: Option<&str>, subject: &str) -> Result<DataKey> {
        self.insert(tenant, subject).await
    }
}
