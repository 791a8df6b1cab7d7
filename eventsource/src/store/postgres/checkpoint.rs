//! Checkpoints, dead letters and leases (`CheckpointStore`, `TransactionalStore`).

use super::*;

/// A checkpoint row's position.
pub(super) fn checkpoint_position(position: Option<i64>) -> Option<Position> {
    position.map(|p| Position::new(p.max(0) as u64))
}

pub(super) async fn save_checkpoint_on(
    conn: &mut sqlx::PgConnection,
    projection: &str,
    previous: Option<Position>,
    position: Position,
) -> Result<()> {
    crate::checkpoint::check_projection_name(projection)?;
    let done = match previous {
        None => {
            sqlx::query(
                "INSERT INTO checkpoints (name, position, updated_at) VALUES ($1, $2, now()) \
             ON CONFLICT (name) DO NOTHING",
            )
            .bind(projection)
            .bind(position.to_sql())
            .execute(&mut *conn)
            .await
        }
        Some(previous) => {
            sqlx::query(
                "UPDATE checkpoints SET position = $2, updated_at = now() \
             WHERE name = $1 AND position = $3",
            )
            .bind(projection)
            .bind(position.to_sql())
            .bind(previous.to_sql())
            .execute(&mut *conn)
            .await
        }
    }
    .map_err(Error::database("save checkpoint"))?;
    if done.rows_affected() == 1 {
        return Ok(());
    }
    let found: Option<i64> = sqlx::query_scalar("SELECT position FROM checkpoints WHERE name = $1")
        .bind(projection)
        .fetch_optional(&mut *conn)
        .await
        .map_err(Error::database("save checkpoint"))?;
    Err(conflict(projection, previous, checkpoint_position(found)))
}

pub(super) async fn add_dead_letter_on(
    conn: &mut sqlx::PgConnection,
    letter: &DeadLetter,
) -> Result<()> {
    crate::checkpoint::check_projection_name(&letter.projection)?;
    sqlx::query(
        "INSERT INTO dead_letters (projection, position, event_id, aggregate_type, aggregate_id, \
         version, event_type, error, attempts, failed_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
         ON CONFLICT (projection, position) DO UPDATE SET error = excluded.error, \
         attempts = excluded.attempts, failed_at = excluded.failed_at",
    )
    .bind(&letter.projection)
    .bind(letter.position.to_sql())
    .bind(letter.event_id)
    .bind(letter.stream.aggregate_type())
    .bind(letter.stream.aggregate_id())
    .bind(letter.version.map(|v| i64::try_from(v).unwrap_or(i64::MAX)))
    .bind(letter.event_type.as_deref())
    .bind(crate::checkpoint::storable_error(&letter.error))
    .bind(i32::try_from(letter.attempts).unwrap_or(i32::MAX))
    .bind(letter.failed_at)
    .execute(conn)
    .await
    .map_err(Error::database("add dead letter"))?;
    Ok(())
}

pub(super) async fn remove_dead_letter_on(
    conn: &mut sqlx::PgConnection,
    projection: &str,
    position: Position,
) -> Result<bool> {
    crate::checkpoint::check_projection_name(projection)?;
    let done = sqlx::query("DELETE FROM dead_letters WHERE projection = $1 AND position = $2")
        .bind(projection)
        .bind(position.to_sql())
        .execute(conn)
        .await
        .map_err(Error::database("remove dead letter"))?;
    Ok(done.rows_affected() > 0)
}

/// Checkpoints and dead letters go through `session` as events do: a tenant-scoped store's rows
/// are stamped with its tenant and, for a role that does not own the tables, limited to it by
/// row-level security.
impl CheckpointStore for PostgresEventStore {
    async fn checkpoint(&self, projection: &str) -> Result<Option<Position>> {
        crate::checkpoint::check_projection_name(projection)?;
        let found: Option<i64> = self
            .statement("load checkpoint", move |conn, _| {
                Box::pin(
                    sqlx::query_scalar("SELECT position FROM checkpoints WHERE name = $1")
                        .bind(projection)
                        .fetch_optional(conn),
                )
            })
            .await?;
        Ok(checkpoint_position(found))
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
            let saved = save_checkpoint_on(session.conn(), projection, previous, position).await;
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
            Box::pin(
                sqlx::query("DELETE FROM checkpoints WHERE name = $1")
                    .bind(projection)
                    .execute(conn),
            )
        })
        .await?;
        Ok(())
    }

    async fn add_dead_letter(&self, letter: &DeadLetter) -> Result<()> {
        let database = || Error::database("add dead letter");
        let mut session = self.session().await.map_err(database())?;
        add_dead_letter_on(session.conn(), letter).await?;
        session.end().await.map_err(database())
    }

    async fn dead_letters(&self, projection: &str) -> Result<Vec<DeadLetter>> {
        crate::checkpoint::check_projection_name(projection)?;
        let rows = self
            .statement("dead letters", move |conn, _| {
                Box::pin(
                    sqlx::query(
                        "SELECT position, event_id, aggregate_type, aggregate_id, version, \
                         event_type, error, attempts, failed_at FROM dead_letters \
                         WHERE projection = $1 ORDER BY position",
                    )
                    .bind(projection)
                    .fetch_all(conn),
                )
            })
            .await?;
        rows.iter()
            .map(|row| -> std::result::Result<DeadLetter, sqlx::Error> {
                let mut letter = DeadLetter::new(
                    projection,
                    Position::new(row.try_get::<i64, _>(0)?.max(0) as u64),
                    StreamId::unchecked(row.try_get::<String, _>(2)?, row.try_get::<String, _>(3)?),
                    row.try_get::<String, _>(6)?,
                    row.try_get::<i32, _>(7)?.max(0) as u32,
                )
                .with_event(
                    row.try_get(1)?,
                    row.try_get::<Option<i64>, _>(4)?.map(|v| v.max(0) as u64),
                    row.try_get(5)?,
                );
                letter.failed_at = row.try_get(8)?;
                Ok(letter)
            })
            .collect::<std::result::Result<_, _>>()
            .map_err(Error::database("dead letters"))
    }

    async fn remove_dead_letter(&self, projection: &str, position: Position) -> Result<bool> {
        let database = || Error::database("remove dead letter");
        let mut session = self.session().await.map_err(database())?;
        let removed = remove_dead_letter_on(session.conn(), projection, position).await?;
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

    fn save_checkpoint_in<'a>(
        tx: &'a mut sqlx::Transaction<'static, Postgres>,
        projection: &'a str,
        previous: Option<Position>,
        position: Position,
    ) -> impl std::future::Future<Output = Result<()>> + Send + 'a {
        save_checkpoint_on(tx, projection, previous, position)
    }

    fn add_dead_letter_in<'a>(
        tx: &'a mut sqlx::Transaction<'static, Postgres>,
        letter: &'a DeadLetter,
    ) -> impl std::future::Future<Output = Result<()>> + Send + 'a {
        add_dead_letter_on(tx, letter)
    }

    fn remove_dead_letter_in<'a>(
        tx: &'a mut sqlx::Transaction<'static, Postgres>,
        projection: &'a str,
        position: Position,
    ) -> impl std::future::Future<Output = Result<bool>> + Send + 'a {
        remove_dead_letter_on(tx, projection, position)
    }
}
