//! Checkpoints, dead letters and leases (`CheckpointStore`, `TransactionalStore`): the
//! statements of `store::sql::checkpoint`, writes on the one writer connection, reads on the
//! readers; leases lock a file beside the database.

use super::*;
use crate::store::sql::checkpoint as sql;

impl SqliteEventStore {
    /// A connection of `pool` for `operation`.
    async fn connection(
        pool: &SqlitePool,
        operation: &'static str,
    ) -> Result<sqlx::pool::PoolConnection<Sqlite>> {
        pool.acquire().await.map_err(Error::database(operation))
    }
}

/// Each operation is retried while the database is busy (see `retrying`): a statement that
/// failed so wrote nothing.
impl CheckpointStore for SqliteEventStore {
    async fn checkpoint(&self, projection: &str) -> Result<Option<Position>> {
        crate::checkpoint::check_projection_name(projection)?;
        self.retrying("load checkpoint", |_| async move {
            let mut conn = Self::connection(&self.reader, "load checkpoint").await?;
            sql::load_checkpoint::<Sqlite>(&mut conn, projection)
                .await
                .map_err(Error::database("load checkpoint"))
        })
        .await
    }

    async fn save_checkpoint(
        &self,
        projection: &str,
        previous: Option<Position>,
        position: Position,
    ) -> Result<()> {
        self.retrying("save checkpoint", |_| async move {
            let mut conn = Self::connection(&self.writer, "save checkpoint").await?;
            sql::save_checkpoint::<Sqlite>(&mut conn, projection, previous, position).await
        })
        .await
    }

    async fn delete_checkpoint(&self, projection: &str) -> Result<()> {
        crate::checkpoint::check_projection_name(projection)?;
        self.retrying("delete checkpoint", |_| async move {
            let mut conn = Self::connection(&self.writer, "delete checkpoint").await?;
            sql::delete_checkpoint::<Sqlite>(&mut conn, projection)
                .await
                .map_err(Error::database("delete checkpoint"))
        })
        .await
    }

    async fn add_dead_letter(&self, letter: &DeadLetter) -> Result<()> {
        self.retrying("add dead letter", |_| async move {
            let mut conn = Self::connection(&self.writer, "add dead letter").await?;
            sql::add_dead_letter::<Sqlite>(&mut conn, letter).await
        })
        .await
    }

    async fn dead_letters(&self, projection: &str) -> Result<Vec<DeadLetter>> {
        crate::checkpoint::check_projection_name(projection)?;
        self.retrying("dead letters", |_| async move {
            let mut conn = Self::connection(&self.reader, "dead letters").await?;
            sql::dead_letters::<Sqlite>(&mut conn, projection)
                .await
                .map_err(Error::database("dead letters"))
        })
        .await
    }

    async fn remove_dead_letter(&self, projection: &str, position: Position) -> Result<bool> {
        self.retrying("remove dead letter", |_| async move {
            let mut conn = Self::connection(&self.writer, "remove dead letter").await?;
            sql::remove_dead_letter::<Sqlite>(&mut conn, projection, position).await
        })
        .await
    }

    async fn lease(&self, projection: &str) -> Result<Option<crate::checkpoint::Lease>> {
        crate::checkpoint::check_projection_name(projection)?;
        match &self.file {
            Some(file) => crate::checkpoint::file_lease(file, projection),
            None => Ok(self.leases.try_take(projection)),
        }
    }
}

impl TransactionalStore for SqliteEventStore {
    type Database = Sqlite;

    async fn begin(&self) -> Result<sqlx::Transaction<'static, Sqlite>> {
        // BEGIN IMMEDIATE: take the write lock up front, as appends do.
        self.retrying("begin", |_| async {
            self.writer
                .begin_with("BEGIN IMMEDIATE")
                .await
                .map_err(Error::database("begin"))
        })
        .await
    }

    crate::store::sql::checkpoint::checkpoints_in_transaction!();
}
