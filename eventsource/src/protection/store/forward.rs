//! The protected store as a snapshot, checkpoint and transactional store: snapshots sealed
//! under the subjects' keys, the rest handed to the wrapped store.

use super::*;

/// Snapshots of streams holding personal data are sealed under the keys of every subject of
/// the stream (see [`ProtectedStore`]); the others go to the wrapped store as they are.
impl<S: EventStore + SnapshotStore, K: KeyStore> SnapshotStore for ProtectedStore<S, K> {
    async fn save_snapshot(&self, snapshot: &Snapshot) -> Result<()> {
        let stream = snapshot.stream();
        let refs = self.snapshot_keys(stream, snapshot.version()).await?;
        if refs.is_empty() {
            return self.inner.save_snapshot(snapshot).await;
        }
        let mut keys = Vec::with_capacity(refs.len());
        for reference in &refs {
            match self
                .key(reference.tenant.as_deref(), reference.key_id)
                .await?
            {
                KeyState::Live(key) => keys.push(key),
                // A subject of the stream was forgotten: the state may still hold what was
                // read before, so it is not written (the events replay instead).
                _ => {
                    tracing::debug!(%stream, "snapshot not taken: a subject of the stream was forgotten");
                    return Ok(());
                }
            }
        }
        let state = sealed::seal_state(
            &keys,
            stream,
            snapshot.version(),
            snapshot.state_version(),
            snapshot.state(),
        );
        let sealed = Snapshot::new(
            stream.clone(),
            snapshot.version(),
            snapshot.state_version(),
            state,
        )
        .taken_at(snapshot.time());
        self.inner.save_snapshot(&sealed).await
    }

    async fn load_snapshot(&self, stream: &StreamId) -> Result<Option<Snapshot>> {
        let Some(snapshot) = self.inner.load_snapshot(stream).await? else {
            return Ok(None);
        };
        let Some(sealed) = sealed::parse(snapshot.state()) else {
            return Ok(Some(snapshot));
        };
        let mut keys = Vec::with_capacity(sealed.shares.len());
        for (reference, _) in &sealed.shares {
            match self
                .key(reference.tenant.as_deref(), reference.key_id)
                .await
            {
                Ok(KeyState::Live(key)) => keys.push(key),
                // Forgotten, unknown or damaged: no snapshot; the events replay.
                Ok(_) | Err(Error::MasterKey { .. }) => return Ok(None),
                Err(error) => return Err(error),
            }
        }
        let version = snapshot.version();
        let state_version = snapshot.state_version();
        Ok(sealed
            .open(&keys, stream, version, state_version)
            .map(|state| {
                Snapshot::new(stream.clone(), version, state_version, state)
                    .taken_at(snapshot.time())
            }))
    }

    fn delete_snapshot(&self, stream: &StreamId) -> impl Future<Output = Result<bool>> + Send {
        self.inner.delete_snapshot(stream)
    }
}

/// Checkpoints and dead letters go to the wrapped store, so that the subscription manager runs
/// projections over a `ProtectedStore` (they read decrypted events).
impl<S: CheckpointStore, K: Send + Sync> CheckpointStore for ProtectedStore<S, K> {
    fn checkpoint(
        &self,
        projection: &str,
    ) -> impl Future<Output = Result<Option<Position>>> + Send {
        self.inner.checkpoint(projection)
    }

    fn save_checkpoint(
        &self,
        projection: &str,
        previous: Option<Position>,
        position: Position,
    ) -> impl Future<Output = Result<()>> + Send {
        self.inner.save_checkpoint(projection, previous, position)
    }

    fn delete_checkpoint(&self, projection: &str) -> impl Future<Output = Result<()>> + Send {
        self.inner.delete_checkpoint(projection)
    }

    fn add_dead_letter(&self, letter: &DeadLetter) -> impl Future<Output = Result<()>> + Send {
        self.inner.add_dead_letter(letter)
    }

    fn dead_letters(
        &self,
        projection: &str,
    ) -> impl Future<Output = Result<Vec<DeadLetter>>> + Send {
        self.inner.dead_letters(projection)
    }

    fn remove_dead_letter(
        &self,
        projection: &str,
        position: Position,
    ) -> impl Future<Output = Result<bool>> + Send {
        self.inner.remove_dead_letter(projection, position)
    }

    fn lease(&self, projection: &str) -> impl Future<Output = Result<Option<Lease>>> + Send {
        self.inner.lease(projection)
    }
}

/// Transactions go to the wrapped store, so that SQL projections (`Subscriptions::add_sql`) run
/// over a `ProtectedStore` too: they read decrypted events, and write their rows and checkpoint
/// in one transaction of the wrapped store's database.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
impl<S, K> crate::checkpoint::TransactionalStore for ProtectedStore<S, K>
where
    S: crate::checkpoint::TransactionalStore,
    K: KeyStore + 'static,
{
    type Database = S::Database;

    fn begin(
        &self,
    ) -> impl Future<Output = Result<crate::projection::Transaction<Self::Database>>> + Send {
        self.inner.begin()
    }

    fn save_checkpoint_in<'a>(
        tx: &'a mut crate::projection::Transaction<Self::Database>,
        projection: &'a str,
        previous: Option<Position>,
        position: Position,
    ) -> impl Future<Output = Result<()>> + Send + 'a {
        S::save_checkpoint_in(tx, projection, previous, position)
    }

    fn add_dead_letter_in<'a>(
        tx: &'a mut crate::projection::Transaction<Self::Database>,
        letter: &'a DeadLetter,
    ) -> impl Future<Output = Result<()>> + Send + 'a {
        S::add_dead_letter_in(tx, letter)
    }

    fn remove_dead_letter_in<'a>(
        tx: &'a mut crate::projection::Transaction<Self::Database>,
        projection: &'a str,
        position: Position,
    ) -> impl Future<Output = Result<bool>> + Send + 'a {
        S::remove_dead_letter_in(tx, projection, position)
    }
}
