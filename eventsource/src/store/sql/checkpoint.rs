//! Checkpoints and dead letters, written once for every SQL backend: a checkpoint moves by
//! compare-and-set on its previous position; a dead letter is kept per (projection, position).
//! Each backend chooses the connection (SQLite's writer or readers, PostgreSQL's session of its
//! tenant); the statements are these.

use super::dialect::{Dialect, Value, fetch_optional, int, text};
use crate::checkpoint::{DeadLetter, check_projection_name, conflict, storable_error};
use crate::error::{Error, Result};
use crate::stream::{Position, StreamId};

/// A checkpoint row's position.
fn checkpoint_position(position: i64) -> Position {
    Position::new(position.max(0) as u64)
}

/// The checkpoint of `projection`, if it has one.
pub(crate) async fn load_checkpoint<D: Dialect>(
    conn: &mut D::Connection,
    projection: &str,
) -> sqlx::Result<Option<Position>> {
    let sql = "SELECT position FROM checkpoints WHERE name = $1";
    let row = fetch_optional::<D>(conn, sql, vec![projection.into()]).await?;
    row.map(|row| int::<D>(&row, 0).map(checkpoint_position))
        .transpose()
}

/// Moves the checkpoint of `projection` from `previous` to `position`, or fails with
/// [`Error::CheckpointConflict`] if it is not at `previous`.
pub(crate) async fn save_checkpoint<D: Dialect>(
    conn: &mut D::Connection,
    projection: &str,
    previous: Option<Position>,
    position: Position,
) -> Result<()> {
    check_projection_name(projection)?;
    let now = Value::Time(crate::event::now());
    let (sql, values) = match previous {
        None => (
            "INSERT INTO checkpoints (name, position, updated_at) VALUES ($1, $2, $3) \
             ON CONFLICT (name) DO NOTHING",
            vec![projection.into(), position.to_sql().into(), now],
        ),
        Some(previous) => (
            "UPDATE checkpoints SET position = $2, updated_at = $3 \
             WHERE name = $1 AND position = $4",
            vec![
                projection.into(),
                position.to_sql().into(),
                now,
                previous.to_sql().into(),
            ],
        ),
    };
    let database = Error::database("save checkpoint");
    if D::execute(conn, sql, values).await.map_err(database)? == 1 {
        return Ok(());
    }
    let found = load_checkpoint::<D>(conn, projection)
        .await
        .map_err(Error::database("save checkpoint"))?;
    Err(conflict(projection, previous, found))
}

/// Deletes the checkpoint of `projection`.
pub(crate) async fn delete_checkpoint<D: Dialect>(
    conn: &mut D::Connection,
    projection: &str,
) -> sqlx::Result<()> {
    let sql = "DELETE FROM checkpoints WHERE name = $1";
    D::execute(conn, sql, vec![projection.into()]).await?;
    Ok(())
}

/// Adds a dead letter, or updates the one of its projection and position (error, attempts, time).
pub(crate) async fn add_dead_letter<D: Dialect>(
    conn: &mut D::Connection,
    letter: &DeadLetter,
) -> Result<()> {
    check_projection_name(&letter.projection)?;
    let error = storable_error(&letter.error);
    let values = vec![
        Value::from(letter.projection.as_str()),
        letter.position.to_sql().into(),
        Value::Id(letter.event_id),
        letter.stream.aggregate_type().into(),
        letter.stream.aggregate_id().into(),
        Value::Int(letter.version.map(|v| i64::try_from(v).unwrap_or(i64::MAX))),
        Value::Text(letter.event_type.as_deref()),
        Value::from(&*error),
        i64::from(letter.attempts).min(D::INT_MAX).into(),
        Value::Time(letter.failed_at),
    ];
    let sql = "INSERT INTO dead_letters (projection, position, event_id, aggregate_type, \
         aggregate_id, version, event_type, error, attempts, failed_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
         ON CONFLICT (projection, position) DO UPDATE SET error = excluded.error, \
         attempts = excluded.attempts, failed_at = excluded.failed_at";
    D::execute(conn, sql, values)
        .await
        .map_err(Error::database("add dead letter"))?;
    Ok(())
}

/// Removes the dead letter of `projection` at `position`; whether there was one.
pub(crate) async fn remove_dead_letter<D: Dialect>(
    conn: &mut D::Connection,
    projection: &str,
    position: Position,
) -> Result<bool> {
    check_projection_name(projection)?;
    let sql = "DELETE FROM dead_letters WHERE projection = $1 AND position = $2";
    let removed = D::execute(conn, sql, vec![projection.into(), position.to_sql().into()])
        .await
        .map_err(Error::database("remove dead letter"))?;
    Ok(removed > 0)
}

/// The dead letters of `projection`, in position order.
pub(crate) async fn dead_letters<D: Dialect>(
    conn: &mut D::Connection,
    projection: &str,
) -> sqlx::Result<Vec<DeadLetter>> {
    let sql = "SELECT position, event_id, aggregate_type, aggregate_id, version, event_type, \
         error, attempts, failed_at FROM dead_letters WHERE projection = $1 ORDER BY position";
    let rows = D::fetch_all(conn, sql, vec![projection.into()]).await?;
    rows.iter()
        .map(|row| {
            let mut letter = DeadLetter::new(
                projection,
                checkpoint_position(int::<D>(row, 0)?),
                StreamId::unchecked(text::<D>(row, 2)?, text::<D>(row, 3)?),
                text::<D>(row, 6)?,
                int::<D>(row, 7)?.clamp(0, i64::from(u32::MAX)) as u32,
            )
            .with_event(
                D::id(row, 1)?,
                D::int(row, 4)?.map(|v| v.max(0) as u64),
                D::text(row, 5)?,
            );
            if let Some(time) = D::time(row, 8)? {
                letter.failed_at = time;
            }
            Ok(letter)
        })
        .collect()
}

/// The `*_in` methods of [`TransactionalStore`](crate::checkpoint::TransactionalStore), for a
/// store whose `Database` is a [`Dialect`]: the statements above, on the transaction.
macro_rules! checkpoints_in_transaction {
    () => {
        fn save_checkpoint_in<'a>(
            tx: &'a mut sqlx::Transaction<'static, Self::Database>,
            projection: &'a str,
            previous: Option<Position>,
            position: Position,
        ) -> impl std::future::Future<Output = Result<()>> + Send + 'a {
            crate::store::sql::checkpoint::save_checkpoint::<Self::Database>(
                &mut **tx, projection, previous, position,
            )
        }

        fn add_dead_letter_in<'a>(
            tx: &'a mut sqlx::Transaction<'static, Self::Database>,
            letter: &'a DeadLetter,
        ) -> impl std::future::Future<Output = Result<()>> + Send + 'a {
            crate::store::sql::checkpoint::add_dead_letter::<Self::Database>(&mut **tx, letter)
        }

        fn remove_dead_letter_in<'a>(
            tx: &'a mut sqlx::Transaction<'static, Self::Database>,
            projection: &'a str,
            position: Position,
        ) -> impl std::future::Future<Output = Result<bool>> + Send + 'a {
            crate::store::sql::checkpoint::remove_dead_letter::<Self::Database>(
                &mut **tx, projection, position,
            )
        }
    };
}
pub(crate) use checkpoints_in_transaction;
