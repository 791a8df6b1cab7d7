//! Snapshots in the `snapshots` table.

use super::*;

impl SnapshotStore for SqliteEventStore {
    async fn save_snapshot(&self, snapshot: &Snapshot) -> Result<()> {
        snapshot.stream().validate()?;
        self.retrying("save snapshot", |_| self.save_snapshot_once(snapshot))
            .await
    }

    async fn load_snapshot(&self, stream: &StreamId) -> Result<Option<Snapshot>> {
        stream.validate()?;
        self.retrying("load snapshot", |_| self.load_snapshot_once(stream))
            .await
    }

    async fn delete_snapshot(&self, stream: &StreamId) -> Result<bool> {
        stream.validate()?;
        self.retrying("delete snapshot", |_| self.delete_snapshot_once(stream))
            .await
    }
}

/// One attempt of each operation, retried while the database is busy.
impl SqliteEventStore {
    async fn save_snapshot_once(&self, snapshot: &Snapshot) -> Result<()> {
        sqlx::query(crate::store::sql::save_snapshot!("$5"))
            .bind(snapshot.stream().aggregate_type())
            .bind(snapshot.stream().aggregate_id())
            .bind(to_i64(snapshot.version()))
            .bind(i64::from(snapshot.state_version()))
            .bind(snapshot.state())
            .bind(snapshot.time().timestamp_micros())
            .execute(&self.writer)
            .await
            .map_err(Error::database("save snapshot"))?;
        Ok(())
    }

    async fn load_snapshot_once(&self, stream: &StreamId) -> Result<Option<Snapshot>> {
        let mut conn = self
            .readers
            .acquire()
            .await
            .map_err(Error::database("load snapshot"))?;
        let row: Option<(i64, i64, String, i64)> = sqlx::query_as(
            "SELECT version, state_version, state, taken_at FROM snapshots \
             WHERE aggregate_type = ? AND aggregate_id = ?",
        )
        .bind(stream.aggregate_type())
        .bind(stream.aggregate_id())
        .fetch_optional(&mut *conn)
        .await
        .map_err(Error::database("load snapshot"))?;
        self.readers.put(conn);
        row.map(|(version, state_version, state, taken_at)| {
            snapshot_row(
                stream,
                version,
                state_version,
                state,
                chrono::DateTime::from_timestamp_micros(taken_at),
            )
        })
        .transpose()
    }

    async fn delete_snapshot_once(&self, stream: &StreamId) -> Result<bool> {
        let done =
            sqlx::query("DELETE FROM snapshots WHERE aggregate_type = ? AND aggregate_id = ?")
                .bind(stream.aggregate_type())
                .bind(stream.aggregate_id())
                .execute(&self.writer)
                .await
                .map_err(Error::database("delete snapshot"))?;
        Ok(done.rows_affected() > 0)
    }
}
