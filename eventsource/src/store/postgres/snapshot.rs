//! Snapshots in the `snapshots` table (JSONB).

use super::*;

impl SnapshotStore for PostgresEventStore {
    async fn save_snapshot(&self, snapshot: &Snapshot) -> Result<()> {
        snapshot.stream().validate()?;
        let mut session = self
            .session()
            .await
            .map_err(Error::database("save snapshot"))?;
        sqlx::query(crate::store::sql::save_snapshot!("$5::TEXT::JSONB"))
            .bind(snapshot.stream().aggregate_type())
            .bind(snapshot.stream().aggregate_id())
            .bind(i64::try_from(snapshot.version()).unwrap_or(i64::MAX))
            .bind(i32::try_from(snapshot.state_version()).unwrap_or(i32::MAX))
            .bind(snapshot.state())
            .bind(snapshot.time())
            .execute(session.conn())
            .await
            .map_err(
                |err| match err.as_database_error().and_then(|db| db.code()) {
                    // invalid_text_representation: the state is not JSON.
                    Some(code) if code == "22P02" => Error::InvalidInput {
                        stream: snapshot.stream().clone(),
                        reason: "the snapshot's state is not valid JSON".into(),
                    },
                    _ => Error::database("save snapshot")(err),
                },
            )?;
        session
            .end()
            .await
            .map_err(Error::database("save snapshot"))
    }

    async fn load_snapshot(&self, stream: &StreamId) -> Result<Option<Snapshot>> {
        stream.validate()?;
        let row: Option<(i64, i32, String, chrono::DateTime<chrono::Utc>)> = self
            .statement("load snapshot", move |conn, _| {
                Box::pin(
                    sqlx::query_as(
                        "SELECT version, state_version, state::TEXT, taken_at FROM snapshots \
                         WHERE aggregate_type = $1 AND aggregate_id = $2",
                    )
                    .bind(stream.aggregate_type())
                    .bind(stream.aggregate_id())
                    .fetch_optional(conn),
                )
            })
            .await?;
        row.map(|(version, state_version, state, taken_at)| {
            snapshot_row(stream, version, state_version.into(), state, Some(taken_at))
        })
        .transpose()
    }

    async fn delete_snapshot(&self, stream: &StreamId) -> Result<bool> {
        stream.validate()?;
        let mut session = self
            .session()
            .await
            .map_err(Error::database("delete snapshot"))?;
        let done =
            sqlx::query("DELETE FROM snapshots WHERE aggregate_type = $1 AND aggregate_id = $2")
                .bind(stream.aggregate_type())
                .bind(stream.aggregate_id())
                .execute(session.conn())
                .await
                .map_err(Error::database("delete snapshot"))?;
        session
            .end()
            .await
            .map_err(Error::database("delete snapshot"))?;
        Ok(done.rows_affected() > 0)
    }
}
