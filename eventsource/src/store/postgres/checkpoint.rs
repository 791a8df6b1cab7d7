//! Checkpoints, dead letters and leases (`CheckpointStore`, `TransactionalStore`): the
//! statements of `store::sql::checkpoint`, in the store's sessions; leases are advisory locks.

use super::*;
use crate::store::sql::checkpoint as sql;

/// Checkpoints and dead letters go through `session` as events do: a tenant-scoped store's rows
/// are stamped with its tenant and, for a role that does not own the tables, limited to it by
/// row-level security.
impl CheckpointStore for PostgresEventStore {
    async fn checkpoint(&self, projection: &str) -> Result<Option<Position>> {
        crate::checkpoint::check_projection_name(projection)?;
        self.statement("load checkpoint", move |conn, _| {
            Box::pin(sql::load_checkpoint::<Postgres>(conn, projection))
        })
        .await
    }

    async fn save_checkpoint(
        &self,
        projection: &str,
        previous: Option<Position>,
        position: Position,
    ) -> Result<()> {
        self.retrying("save checkpoint", move |attempt| async move {
            let database = || Error::database("save checkpoint");
            let mut session = self.session().await.map_err(database())?;
            let saved =
                sql::save_checkpoint::<Postgres>(session.conn(), projection, previous, position)
                    .await;
            if saved.is_ok() {
                session.end().await.map_err(database())?;
            }
            match saved {
                // A retry whose first attempt committed, its answer lost: it is where we put it.
                Err(Error::CheckpointConflict { found, .. })
                    if attempt > 1 && found == Some(position) =>
                {
                    Ok(())
                }
                result => result,
            }
        })
        .await
    }

    async fn delete_checkpoint(&self, projection: &str) -> Result<()> {
        crate::checkpoint::check_projection_name(projection)?;
        self.statement("delete checkpoint", move |conn, _| {
            Box::pin(sql::delete_checkpoint::<Postgres>(conn, projection))
        })
        .await
    }

    async fn add_dead_letter(&self, letter: &DeadLetter) -> Result<()> {
        let database = || Error::database("add dead letter");
        let mut session = self.session().await.map_err(database())?;
        sql::add_dead_letter::<Postgres>(session.conn(), letter).await?;
        session.end().await.map_err(database())
    }

    async fn dead_letters(&self, projection: &str) -> Result<Vec<DeadLetter>> {
        crate::checkpoint::check_projection_name(projection)?;
        self.statement("dead letters", move |conn, _| {
            Box::pin(sql::dead_letters::<Postgres>(conn, projection))
        })
        .await
    }

    async fn remove_dead_letter(&self, projection: &str, position: Position) -> Result<bool> {
        let database = || Error::database("remove dead letter");
        let mut session = self.session().await.map_err(database())?;
        let removed =
            sql::remove_dead_letter::<Postgres>(session.conn(), projection, position).await?;
        session.end().await.map_err(database())?;
        Ok(removed)
    }

    async fn lease(&self, projection: &str) -> Result<Option<crate::checkpoint::Lease>> {
        crate::checkpoint::check_projection_name(projection)?;
        // A session advisory lock on a connection taken out of the pool: it is released when
        // the lease (and so the connection) is dropped, or when this process dies. A lock is not
        // a row: row-level security does not reach it, and a tenant needs no setting for it.
        let mut conn = self
            .pool
            .acquire()
            .await
            .map_err(Error::database("lease"))?
            .detach();
        let held: bool = sqlx::query_scalar(
            "SELECT pg_try_advisory_lock(hashtextextended('eventsource.projection/' || \
             current_schema() || '/' || $1, 0))",
        )
        .bind(projection)
        .fetch_one(&mut conn)
        .await
        .map_err(Error::database("lease"))?;
        Ok(held.then(|| crate::checkpoint::Lease::held_by(conn)))
    }
}

impl TransactionalStore for PostgresEventStore {
    type Database = Postgres;

    /// For a tenant-scoped store, the transaction sets `eventsource.tenant` first: the read
    /// model's writes and the checkpoint and dead letters moved in it are the tenant's.
    async fn begin(&self) -> Result<sqlx::Transaction<'static, Postgres>> {
        self.retrying("begin", |_| async {
            let database = || Error::database("begin");
            let mut tx = self.pool.begin().await.map_err(database())?;
            if let Some(tenant) = &self.tenant {
                set_tenant(&mut tx, tenant).await.map_err(database())?;
            }
            Ok(tx)
        })
        .await
    }

    crate::store::sql::checkpoint::checkpoints_in_transaction!();
}
