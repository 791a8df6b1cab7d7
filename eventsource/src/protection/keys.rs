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

/// The keys tables' statements, written once over the SQL dialect (`store::sql::dialect`):
/// each backend gives the connection a tenant's statements run on, what forgetting does
/// besides the statement, and its own schema.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
mod sql {
    use super::{DataKey, KeyState, MasterKey};
    use crate::error::{Error, Result};
    use crate::store::sql::dialect::{Dialect, Value, fetch_optional, text};
    use futures::future::BoxFuture;
    use uuid::Uuid;

    /// The id and subject under which the master-key check is wrapped.
    const CHECK_ID: Uuid = Uuid::nil();
    const CHECK_SUBJECT: &str = "eventsource master key check";

    /// The connection a tenant's key statements run on: one of the pool, or (PostgreSQL, under
    /// row-level security) a transaction that has named the tenant.
    pub(super) enum Scope<D: sqlx::Database> {
        Pool(sqlx::pool::PoolConnection<D>),
        #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
        Tenant(sqlx::Transaction<'static, D>),
    }

    impl<D: sqlx::Database> Scope<D> {
        fn conn(&mut self) -> &mut D::Connection {
            match self {
                Scope::Pool(conn) => conn,
                Scope::Tenant(tx) => tx,
            }
        }

        /// Ends the operation: commits a tenant's transaction.
        async fn end(self) -> sqlx::Result<()> {
            match self {
                Scope::Pool(_) => Ok(()),
                Scope::Tenant(tx) => tx.commit().await,
            }
        }
    }

    /// What a backend's key store does its own way.
    pub(super) trait KeysDialect: Dialect {
        /// Statements run before and after the one that destroys keys, on its connection.
        const AROUND_FORGET: (&'static [&'static str], &'static [&'static str]) = (&[], &[]);

        /// The connection for `tenant`'s key statements.
        fn scope<'a>(
            pool: &'a sqlx::Pool<Self>,
            tenant: Option<&'a str>,
        ) -> BoxFuture<'a, sqlx::Result<Scope<Self>>>;
    }

    #[cfg(feature = "sqlite")]
    impl KeysDialect for sqlx::Sqlite {
        /// The old page, wrapped key and all, is overwritten (`secure_delete`), and it is still a
        /// frame of the write-ahead log until a checkpoint copies the new one over it and the
        /// log is cut.
        const AROUND_FORGET: (&'static [&'static str], &'static [&'static str]) = (
            &["PRAGMA secure_delete = ON"],
            &["PRAGMA wal_checkpoint(TRUNCATE)"],
        );

        fn scope<'a>(
            pool: &'a sqlx::Pool<Self>,
            _tenant: Option<&'a str>,
        ) -> BoxFuture<'a, sqlx::Result<Scope<Self>>> {
            Box::pin(async move { Ok(Scope::Pool(pool.acquire().await?)) })
        }
    }

    #[cfg(feature = "postgres")]
    impl KeysDialect for sqlx::Postgres {
        fn scope<'a>(
            pool: &'a sqlx::Pool<Self>,
            tenant: Option<&'a str>,
        ) -> BoxFuture<'a, sqlx::Result<Scope<Self>>> {
            Box::pin(async move {
                let Some(tenant) = tenant else {
                    return Ok(Scope::Pool(pool.acquire().await?));
                };
                let mut tx = pool.begin().await?;
                sqlx::query("SELECT set_config('eventsource.tenant', $1, true)")
                    .bind(tenant)
                    .execute(&mut *tx)
                    .await?;
                Ok(Scope::Tenant(tx))
            })
        }
    }

    /// The tenant column's value for `tenant`: `''` stands for "no tenant" (a tenant id is
    /// never empty), so that the column is `NOT NULL` and one index serves every lookup.
    fn tenant_column(tenant: Option<&str>) -> &str {
        tenant.unwrap_or("")
    }

    fn tenant_of(column: &str) -> Option<&str> {
        (!column.is_empty()).then_some(column)
    }

    fn rand_bytes() -> [u8; 32] {
        use aes_gcm::aead::{KeyInit, OsRng};
        aes_gcm::Aes256Gcm::generate_key(&mut OsRng).into()
    }

    /// Column `index` as non-NULL bytes.
    fn bytes<D: Dialect>(row: &D::Row, index: usize) -> sqlx::Result<Vec<u8>> {
        Ok(D::bytes(row, index)?.unwrap_or_default())
    }

    /// The keys of one database, wrapped by one master key.
    #[derive(Debug)]
    pub(super) struct SqlKeys<D: sqlx::Database> {
        pub(super) pool: sqlx::Pool<D>,
        pub(super) master: MasterKey,
    }

    impl<D: KeysDialect> SqlKeys<D> {
        /// Runs `statement` with `values` on `tenant`'s connection, and returns its rows.
        async fn rows(
            &self,
            tenant: Option<&str>,
            operation: &'static str,
            statement: &str,
            values: Vec<Value<'_>>,
        ) -> Result<Vec<D::Row>> {
            let failed = || Error::database(operation);
            let mut scope = D::scope(&self.pool, tenant).await.map_err(failed())?;
            let rows = D::fetch_all(scope.conn(), statement, values)
                .await
                .map_err(failed())?;
            scope.end().await.map_err(failed())?;
            Ok(rows)
        }

        /// Checks the master key against the stored check value (made at the first opening), so
        /// that a wrong master key is refused when the key store opens, not at the first row it
        /// reads.
        pub(super) async fn check_master(&self) -> Result<()> {
            let read = || Error::database("check the master key");
            let mut conn = self.pool.acquire().await.map_err(read())?;
            let check = "SELECT wrapped FROM eventsource_master_key_check WHERE id = 1";
            if let Some(row) = fetch_optional::<D>(&mut conn, check, Vec::new())
                .await
                .map_err(read())?
            {
                return self.verify(&bytes::<D>(&row, 0).map_err(read())?);
            }
            // A keys table from before the check: the newest live key must unwrap.
            let newest = "SELECT key_id, tenant_id, subject, wrapped_key \
                 FROM eventsource_subject_keys WHERE wrapped_key IS NOT NULL \
                 ORDER BY key_id DESC LIMIT 1";
            if let Some(row) = fetch_optional::<D>(&mut conn, newest, Vec::new())
                .await
                .map_err(read())?
            {
                let tenant = text::<D>(&row, 1).map_err(read())?;
                let subject = text::<D>(&row, 2).map_err(read())?;
                let wrapped = bytes::<D>(&row, 3).map_err(read())?;
                self.master
                    .unwrap(D::key_id(&row, 0)?, tenant_of(&tenant), &subject, &wrapped)?;
            }
            let wrapped =
                self.master
                    .wrap(&DataKey::new(CHECK_ID, None, CHECK_SUBJECT, rand_bytes()));
            let insert = "INSERT INTO eventsource_master_key_check (id, wrapped) VALUES (1, $1) \
                 ON CONFLICT (id) DO NOTHING";
            D::execute(&mut conn, insert, vec![Value::Bytes(Some(&wrapped))])
                .await
                .map_err(read())?;
            let row = fetch_optional::<D>(&mut conn, check, Vec::new())
                .await
                .map_err(read())?
                .ok_or_else(|| read()(sqlx::Error::RowNotFound))?;
            self.verify(&bytes::<D>(&row, 0).map_err(read())?)
        }

        fn verify(&self, wrapped: &[u8]) -> Result<()> {
            self.master
                .unwrap(CHECK_ID, None, CHECK_SUBJECT, wrapped)
                .map(drop)
        }

        async fn insert(&self, tenant: Option<&str>, subject: &str) -> Result<DataKey> {
            let key = DataKey::generate(tenant, subject);
            let wrapped = self.master.wrap(&key);
            let values = vec![
                Value::KeyId(key.id()),
                tenant_column(tenant).into(),
                subject.into(),
                Value::Bytes(Some(&wrapped)),
                Value::Stamp(crate::event::now()),
            ];
            let insert = "INSERT INTO eventsource_subject_keys \
                 (key_id, tenant_id, subject, wrapped_key, created_at) VALUES ($1, $2, $3, $4, $5)";
            self.rows(tenant, "create a subject key", insert, values)
                .await?;
            Ok(key)
        }
    }

    impl<D: KeysDialect> super::KeyStore for SqlKeys<D> {
        async fn get_or_create(&self, tenant: Option<&str>, subject: &str) -> Result<DataKey> {
            let select = "SELECT key_id, wrapped_key FROM eventsource_subject_keys \
                 WHERE tenant_id = $1 AND subject = $2 AND wrapped_key IS NOT NULL \
                 ORDER BY key_id DESC LIMIT 1";
            let values = vec![tenant_column(tenant).into(), subject.into()];
            let rows = self
                .rows(tenant, "read a subject key", select, values)
                .await?;
            match rows.first() {
                Some(row) => {
                    let wrapped =
                        bytes::<D>(row, 1).map_err(Error::database("read a subject key"))?;
                    self.master
                        .unwrap(D::key_id(row, 0)?, tenant, subject, &wrapped)
                }
                None => self.insert(tenant, subject).await,
            }
        }

        async fn get(&self, tenant: Option<&str>, key_id: Uuid) -> Result<KeyState> {
            let select = "SELECT subject, wrapped_key FROM eventsource_subject_keys \
                 WHERE key_id = $1 AND tenant_id = $2";
            let values = vec![Value::KeyId(key_id), tenant_column(tenant).into()];
            let rows = self
                .rows(tenant, "read a subject key", select, values)
                .await?;
            let Some(row) = rows.first() else {
                return Ok(KeyState::Unknown);
            };
            let read = || Error::database("read a subject key");
            let subject = text::<D>(row, 0).map_err(read())?;
            Ok(match D::bytes(row, 1).map_err(read())? {
                Some(wrapped) => {
                    KeyState::Live(self.master.unwrap(key_id, tenant, &subject, &wrapped)?)
                }
                None => KeyState::Destroyed,
            })
        }

        async fn key_ids(&self, tenant: Option<&str>, subject: &str) -> Result<Vec<Uuid>> {
            let select = "SELECT key_id FROM eventsource_subject_keys \
                 WHERE tenant_id = $1 AND subject = $2 ORDER BY key_id";
            let values = vec![tenant_column(tenant).into(), subject.into()];
            let rows = self
                .rows(tenant, "read subject keys", select, values)
                .await?;
            rows.iter().map(|row| D::key_id(row, 0)).collect()
        }

        async fn forget(&self, tenant: Option<&str>, subject: &str) -> Result<u64> {
            let failed = || Error::database("forget a subject");
            let mut scope = D::scope(&self.pool, tenant).await.map_err(failed())?;
            let (before, after) = D::AROUND_FORGET;
            for statement in before {
                D::execute(scope.conn(), statement, Vec::new())
                    .await
                    .map_err(failed())?;
            }
            let update = "UPDATE eventsource_subject_keys SET wrapped_key = NULL, \
                 destroyed_at = $1 WHERE tenant_id = $2 AND subject = $3 \
                 AND wrapped_key IS NOT NULL";
            let values = vec![
                Value::Stamp(crate::event::now()),
                tenant_column(tenant).into(),
                subject.into(),
            ];
            let destroyed = D::execute(scope.conn(), update, values)
                .await
                .map_err(failed())?;
            for statement in after {
                D::execute(scope.conn(), statement, Vec::new())
                    .await
                    .map_err(failed())?;
            }
            scope.end().await.map_err(failed())?;
            Ok(destroyed)
        }

        async fn rotate(&self, tenant: Option<&str>, subject: &str) -> Result<DataKey> {
            self.insert(tenant, subject).await
        }
    }
}

/// [`KeyStore`] for a wrapper of [`sql::SqlKeys`] (field `keys`).
#[cfg(any(feature = "sqlite", feature = "postgres"))]
macro_rules! forward_key_store {
    ($store:ty) => {
        impl KeyStore for $store {
            fn get_or_create(
                &self,
                tenant: Option<&str>,
                subject: &str,
            ) -> impl Future<Output = Result<DataKey>> + Send {
                self.keys.get_or_create(tenant, subject)
            }

            fn get(
                &self,
                tenant: Option<&str>,
                key_id: Uuid,
            ) -> impl Future<Output = Result<KeyState>> + Send {
                self.keys.get(tenant, key_id)
            }

            fn key_ids(
                &self,
                tenant: Option<&str>,
                subject: &str,
            ) -> impl Future<Output = Result<Vec<Uuid>>> + Send {
                self.keys.key_ids(tenant, subject)
            }

            fn forget(
                &self,
                tenant: Option<&str>,
                subject: &str,
            ) -> impl Future<Output = Result<u64>> + Send {
                self.keys.forget(tenant, subject)
            }

            fn rotate(
                &self,
                tenant: Option<&str>,
                subject: &str,
            ) -> impl Future<Output = Result<DataKey>> + Send {
                self.keys.rotate(tenant, subject)
            }
        }
    };
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
    keys: sql::SqlKeys<sqlx::Sqlite>,
}

#[cfg(feature = "sqlite")]
impl SqliteKeyStore {
    /// A key store in `pool`'s database, creating its tables if needed: the event store's
    /// writer pool ([`SqliteEventStore::writer_pool`](crate::SqliteEventStore::writer_pool), so
    /// that its writes queue with the appends), or another database's (keys kept apart from
    /// the events, and from their backups). Fails with [`Error::MasterKey`](crate::Error::MasterKey)
    /// if `master` is not the key this database's keys were wrapped with.
    pub async fn new(pool: sqlx::SqlitePool, master: MasterKey) -> Result<Self> {
        let schema = || crate::Error::database("create the keys table");
        sqlx::raw_sql(SQLITE_SCHEMA)
            .execute(&pool)
            .await
            .map_err(schema())?;
        let columns: Vec<(String,)> =
            sqlx::query_as("SELECT name FROM pragma_table_info('eventsource_subject_keys')")
                .fetch_all(&pool)
                .await
                .map_err(schema())?;
        if !columns.iter().any(|(name,)| name == "tenant_id") {
            // Keys of the first release belong to no tenant.
            sqlx::query(
                "ALTER TABLE eventsource_subject_keys ADD COLUMN tenant_id TEXT NOT NULL DEFAULT ''",
            )
            .execute(&pool)
            .await
            .map_err(schema())?;
        }
        sqlx::raw_sql(SQLITE_INDEX)
            .execute(&pool)
            .await
            .map_err(schema())?;
        let keys = sql::SqlKeys { pool, master };
        keys.check_master().await?;
        Ok(SqliteKeyStore { keys })
    }
}

#[cfg(feature = "sqlite")]
forward_key_store!(SqliteKeyStore);

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
    keys: sql::SqlKeys<sqlx::Postgres>,
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
        let keys = sql::SqlKeys { pool, master };
        keys.check_master().await?;
        Ok(PostgresKeyStore { keys })
    }
}

#[cfg(feature = "postgres")]
forward_key_store!(PostgresKeyStore);
