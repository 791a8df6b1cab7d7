//! Checkpoints, dead letters and leases (`CheckpointStore`, `TransactionalStore`).

use super::*;

/// A checkpoint row's position.
pub(super) fn checkpoint_position(position: Option<i64>) -> Option<Position> {
    position.map(|p| Position::new(p.max(0) as u64))
}

pub(super) async fn save_checkpoint_on(
    conn: &mut sqlx::SqliteConnection,
    projection: &str,
    previous: Option<Position>,
    position: Position,
) -> Result<()> {
    crate::checkpoint::check_projection_name(projection)?;
    let now = crate::event::now().timestamp_micros();
    let done = match previous {
        None => {
            sqlx::query(
                "INSERT INTO checkpoints (name, position, updated_at) VALUES (?, ?, ?) \
             ON CONFLICT (name) DO NOTHING",
            )
            .bind(projection)
            .bind(position.to_sql())
            .bind(now)
            .execute(&mut *conn)
            .await
        }
        Some(previous) => sqlx::query(
            "UPDATE checkpoints SET position = ?, updated_at = ? WHERE name = ? AND position = ?",
        )
        .bind(position.to_sql())
        .bind(now)
        .bind(projection)
        .bind(previous.to_sql())
        .execute(&mut *conn)
        .await,
    }
    .map_err(Error::database("save checkpoint"))?;
    if done.rows_affected() == 1 {
        return Ok(());
    }
    let found: Option<i64> = sqlx::query_scalar("SELECT position FROM checkpoints WHERE name = ?")
        .bind(projection)
        .fetch_optional(&mut *conn)
        .await
        .map_err(Error::database("save checkpoint"))?;
    Err(conflict(projection, previous, checkpoint_position(found)))
}

pub(super) async fn add_dead_letter_on(
    conn: &mut sqlx::SqliteConnection,
    letter: &DeadLetter,
) -> Result<()> {
    crate::checkpoint::check_projection_name(&letter.projection)?;
    sqlx::query(
        "INSERT INTO dead_letters (projection, position, event_id, aggregate_type, aggregate_id, \
         version, event_type, error, attempts, failed_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
         ON CONFLICT (projection, position) DO UPDATE SET error = excluded.error, \
         attempts = excluded.attempts, failed_at = excluded.failed_at",
    )
    .bind(&letter.projection)
    .bind(letter.position.to_sql())
    .bind(letter.event_id)
    .bind(letter.stream.aggregate_type())
    .bind(letter.stream.aggregate_id())
    .bind(letter.version.map(to_i64))
    .bind(letter.event_type.as_deref())
    .bind(crate::checkpoint::storable_error(&letter.error))
    .bind(i64::from(letter.attempts))
    .bind(letter.failed_at.timestamp_micros())
    .execute(conn)
    .await
    .map_err(Error::database("add dead letter"))?;
    Ok(())
}

pub(super) async fn remove_dead_letter_on(
    conn: &mut sqlx::SqliteConnection,
    projection: &str,
    position: Position,
) -> Result<bool> {
    crate::checkpoint::check_projection_name(projection)?;
    let done = sqlx::query("DELETE FROM dead_letters WHERE projection = ? AND position = ?")
        .bind(projection)
        .bind(position.to_sql())
        .execute(conn)
        .await
        .map_err(Error::database("remove dead letter"))?;
    Ok(done.rows_affected() > 0)
}

impl CheckpointStore for SqliteEventStore {
    async fn checkpoint(&self, projection: &str) -> Result<Option<Position>> {
        crate::checkpoint::check_projection_name(projection)?;
        let found: Option<i64> =
            sqlx::query_scalar("SELECT position FROM checkpoints WHERE name = ?")
                .bind(projection)
                .fetch_optional(&self.reader)
                .await
                .map_err(Error::database("load checkpoint"))?;
        Ok(checkpoint_position(found))
    }

    async fn save_checkpoint(
        &self,
        projection: &str,
        previous: Option<Position>,
        position: Position,
    ) -> Result<()> {
        let mut conn = self
            .writer
            .acquire()
            .await
            .map_err(Error::database("save checkpoint"))?;
        save_checkpoint_on(&mut conn, projection, previous, position).await
    }

    async fn delete_checkpoint(&self, projection: &str) -> Result<()> {
        crate::checkpoint::check_projection_name(projection)?;
        sqlx::query("DELETE FROM checkpoints WHERE name = ?")
            .bind(projection)
            .execute(&self.writer)
            .await
            .map_err(Error::database("delete checkpoint"))?;
        Ok(())
    }

    async fn add_dead_letter(&self, letter: &DeadLetter) -> Result<()> {
        let mut conn = self
            .writer
            .acquire()
            .await
            .map_err(Error::database("add dead letter"))?;
        add_dead_letter_on(&mut conn, letter).await
    }

    async fn dead_letters(&self, projection: &str) -> Result<Vec<DeadLetter>> {
        crate::checkpoint::check_projection_name(projection)?;
        let rows = sqlx::query(
            "SELECT position, event_id, aggregate_type, aggregate_id, version, event_type, error, \
             attempts, failed_at FROM dead_letters WHERE projection = ? ORDER BY position",
        )
        .bind(projection)
        .fetch_all(&self.reader)
        .await
        .map_err(Error::database("dead letters"))?;
        rows.iter()
            .map(|row| -> std::result::Result<DeadLetter, sqlx::Error> {
                let mut letter = DeadLetter::new(
                    projection,
                    Position::new(row.try_get::<i64, _>(0)?.max(0) as u64),
                    StreamId::unchecked(row.try_get::<String, _>(2)?, row.try_get::<String, _>(3)?),
                    row.try_get::<String, _>(6)?,
                    row.try_get::<i64, _>(7)?.clamp(0, i64::from(u32::MAX)) as u32,
                )
                .with_event(
                    row.try_get(1)?,
                    row.try_get::<Option<i64>, _>(4)?.map(|v| v.max(0) as u64),
                    row.try_get(5)?,
                );
                if let Some(time) = chrono::DateTime::from_timestamp_micros(row.try_get(8)?) {
                    letter.failed_at = time;
                }
                Ok(letter)
            })
            .collect::<std::result::Result<_, _>>()
            .map_err(Error::database("dead letters"))
    }

    async fn remove_dead_letter(&self, projection: &str, position: Position) -> Result<bool> {
        let mut conn = self
            .writer
            .acquire()
            .await
            .map_err(Error::database("remove dead letter"))?;
        remove_dead_letter_on(&mut conn, projection, position).await
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
        self.writer
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(Error::database("begin"))
    }

    fn save_checkpoint_in<'a>(
        tx: &'a mut sqlx::Transaction<'static, Sqlite>,
        projection: &'a str,
        previous: Option<Position>,
        position: Position,
    ) -> impl std::future::Future<Output = Result<()>> + Send + 'a {
        save_checkpoint_on(tx, projection, previous, position)
    }

    fn add_dead_letter_in<'a>(
        tx: &'a mut sqlx::Transaction<'static, Sqlite>,
        letter: &'a DeadLetter,
    ) -> impl std::future::Future<Output = Result<()>> + Send + 'a {
        add_dead_letter_on(tx, letter)
    }

    fn remove_dead_letter_in<'a>(
        tx: &'a mut sqlx::Transaction<'static, Sqlite>,
        projection: &'a str,
        position: Position,
    ) -> impl std::future::Future<Output = Result<bool>> + Send + 'a {
        remove_dead_letter_on(tx, projection, position)
    }
}
