//! Wake-ups across processes: `NOTIFY` after appends, `LISTEN` for them.

use super::*;

/// The least time between two `NOTIFY`s of one store (see `notify_others`).
pub(super) const NOTIFY_INTERVAL: Duration = Duration::from_millis(5);

/// Sends `NOTIFY eventsource_<schema>` after appends, until the pool closes or the store is
/// dropped: at once after the first append of a quiet spell, then at most once per
/// [`NOTIFY_INTERVAL`] while appends go on, and once more after the last of them.
///
/// A `NOTIFY` is a transaction of its own, with a commit that waits for the log like an
/// append's. Sent after every append a writer was not already waiting on, it cost 8 concurrent
/// writers a quarter to a third of their appends per second; paced, it costs at most 200
/// statements a second, and a subscriber in another process hears of an append at most 5 ms
/// late (in-process subscribers are woken at once, without it).
pub(super) async fn notify_others(pool: PgPool, mut appends: tokio::sync::watch::Receiver<u64>) {
    while appends.changed().await.is_ok() {
        appends.borrow_and_update();
        if pool.is_closed() {
            return;
        }
        let sent = tokio::time::Instant::now();
        if let Err(error) = sqlx::query("SELECT pg_notify('eventsource_' || current_schema(), '')")
            .execute(&pool)
            .await
        {
            tracing::debug!(%error, "cannot NOTIFY subscribers in other processes; they will poll");
        }
        // Appends meanwhile only mark the channel changed: one NOTIFY covers them.
        tokio::time::sleep_until(sent + NOTIFY_INTERVAL).await;
    }
}

/// Feeds `signal` from `LISTEN eventsource_<schema>` until the pool closes. After a lost
/// connection it reconnects and wakes everyone once (notifications sent meanwhile are lost; the
/// readers re-read the store, which is all a notification ever asks).
pub(super) async fn listen(pool: PgPool, signal: tokio::sync::watch::Sender<u64>) {
    let bump = |signal: &tokio::sync::watch::Sender<u64>| {
        signal.send_modify(|count| *count = count.wrapping_add(1));
    };
    let mut delay = Duration::from_millis(100);
    while !pool.is_closed() {
        let listening = async {
            let schema: String = sqlx::query_scalar("SELECT current_schema()::TEXT")
                .fetch_one(&pool)
                .await?;
            let mut listener = sqlx::postgres::PgListener::connect_with(&pool).await?;
            listener.listen(&format!("eventsource_{schema}")).await?;
            Ok::<_, sqlx::Error>(listener)
        };
        match listening.await {
            Ok(mut listener) => {
                delay = Duration::from_millis(100);
                bump(&signal);
                loop {
                    match listener.try_recv().await {
                        Ok(Some(_)) => bump(&signal),
                        // The connection was lost and re-established by the listener.
                        Ok(None) => bump(&signal),
                        Err(error) => {
                            tracing::debug!(%error, "LISTEN connection failed; reconnecting");
                            break;
                        }
                    }
                }
            }
            Err(error) => {
                if pool.is_closed() {
                    return;
                }
                tracing::debug!(%error, "cannot LISTEN for appends; retrying");
            }
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}
