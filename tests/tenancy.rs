//! Multi-tenancy: `TenantStore` (a store scoped to one tenant) on every store, the tenant index
//! and its plan, and PostgreSQL's row-level security through a role that does not own the tables.

use eventsource::checkpoint::CheckpointStore;
use eventsource::prelude::*;
use eventsource::subscription::Subscriptions;
use eventsource::tenant::Tenancy;
use eventsource::{DeadLetter, NewEvent, Snapshot};
use eventsource::{ExpectedVersion, ReadAll, RecordedEvent, SnapshotStore, StreamId, StreamQuery};
use eventsource_tests::databases;
use futures::TryStreamExt;
use serde::{Deserialize, Serialize};
use std::fmt::Debug;
use std::ops::ControlFlow;
use std::time::Duration;

#[derive(DomainEvent, Serialize, Deserialize, Clone, Debug)]
#[event(aggregate = "Counter")]
struct Incremented {
    by: u32,
}

#[derive(Default, Debug, Serialize, Deserialize)]
struct Counter {
    total: u32,
}

#[aggregate]
impl Counter {
    #[handles]
    fn incremented(&mut self, event: &Incremented) {
        self.total += event.by;
    }
}

/// A read model of one tenant's view: which counters it saw, and the tenants of their events.
#[derive(Default, Debug)]
struct Seen {
    counters: Vec<String>,
    tenants: Vec<Option<String>>,
}

#[projection(name = "seen")]
impl Seen {
    #[handles]
    fn incremented(&mut self, _: &Incremented, ctx: &EventContext) {
        self.counters.push(ctx.aggregate_id().to_owned());
        self.tenants.push(ctx.metadata.tenant_id.clone());
    }
}

/// What every case needs of a store.
trait Store: Tenancy + SnapshotStore + CheckpointStore + Debug + 'static {}
impl<S: Tenancy + SnapshotStore + CheckpointStore + Debug + 'static> Store for S {}

macro_rules! every_backend {
    ($($case:ident),* $(,)?) => {
        $(
            mod $case {
                use super::*;

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn memory() {
                    let Some(db) = databases::memory().await else { return };
                    super::$case(db.store()).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    let Some(db) = databases::sqlite().await else { return };
                    super::$case(db.store()).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    let Some(db) = databases::postgres().await else { return };
                    super::$case(db.store()).await;
                }
            }
        )*
    };
}

every_backend!(
    streams_are_isolated_both_ways,
    appends_stamp_the_tenant_and_refuse_another,
    another_tenants_stream_cannot_be_written,
    repositories_are_isolated,
    snapshots_are_isolated,
    global_reads_see_one_tenant,
    a_projection_sees_one_tenant,
    checkpoints_are_per_tenant,
    tenant_ids_with_slashes_do_not_share_bookkeeping,
);

fn event(by: u32) -> NewEvent {
    NewEvent::new(&Incremented { by }).expect("serialize")
}

fn counter(id: &str) -> StreamId {
    StreamId::new("Counter", id).expect("a valid stream id")
}

fn is_mismatch(error: &Error) -> bool {
    matches!(error, Error::TenantMismatch { .. })
}

async fn streams_are_isolated_both_ways<S: Store>(store: &S) {
    let acme = store.for_tenant("acme").unwrap();
    let globex = store.for_tenant("globex").unwrap();
    let (a, g) = (counter("a"), counter("g"));
    acme.append(&a, ExpectedVersion::NoStream, vec![event(1), event(2)])
        .await
        .unwrap();
    globex
        .append(&g, ExpectedVersion::NoStream, vec![event(5)])
        .await
        .unwrap();

    for (own, other, mine, theirs, count) in
        [(&acme, &globex, &a, &g, 2), (&globex, &acme, &g, &a, 1)]
    {
        let read = own.read_stream(mine, StreamQuery::all()).await.unwrap();
        assert_eq!(read.len(), count);
        assert!(
            read.iter()
                .all(|e| e.metadata.tenant_id.as_deref() == Some(own.tenant()))
        );
        assert_eq!(own.stream_version(mine).await.unwrap(), count as u64);
        assert!(own.stream_exists(mine).await.unwrap());

        // The other tenant's stream does not exist here, by every read path.
        assert!(
            own.read_stream(theirs, StreamQuery::all())
                .await
                .unwrap()
                .is_empty()
        );
        assert!(
            own.read_stream(theirs, StreamQuery::last(1))
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(own.stream_version(theirs).await.unwrap(), 0);
        assert!(!own.stream_exists(theirs).await.unwrap());
        let mut folded = 0;
        own.fold_stream(theirs, StreamQuery::all(), |_| {
            folded += 1;
            Ok(())
        })
        .await
        .unwrap();
        assert_eq!(folded, 0);
        assert_eq!(
            other.tenant(),
            if own.tenant() == "acme" {
                "globex"
            } else {
                "acme"
            }
        );
    }

    // The unscoped store sees both, explicitly.
    assert_eq!(store.stream_version(&a).await.unwrap(), 2);
    assert_eq!(store.stream_version(&g).await.unwrap(), 1);
}

async fn appends_stamp_the_tenant_and_refuse_another<S: Store>(store: &S) {
    let acme = store.for_tenant("acme").unwrap();
    let stream = counter("stamped");

    // An event stamped with another tenant: refused, typed, nothing written.
    let crafted = event(1).with_metadata(Metadata::new().with_tenant("globex"));
    let refused = acme
        .append(&stream, ExpectedVersion::NoStream, vec![event(2), crafted])
        .await
        .unwrap_err();
    assert!(is_mismatch(&refused), "{refused:?}");
    assert_eq!(store.stream_version(&stream).await.unwrap(), 0);

    // Unstamped events get the tenant; events stamped with it are kept as they are.
    let own = event(3).with_metadata(Metadata::new().with_tenant("acme").with_actor("ann"));
    acme.append(&stream, ExpectedVersion::NoStream, vec![event(4), own])
        .await
        .unwrap();
    let stored = store
        .read_stream(&stream, StreamQuery::all())
        .await
        .unwrap();
    assert_eq!(stored.len(), 2);
    for e in &stored {
        assert_eq!(e.metadata.tenant_id.as_deref(), Some("acme"));
    }
    assert_eq!(stored[1].metadata.actor_id.as_deref(), Some("ann"));

    // Bad tenant ids are refused when scoping.
    assert!(matches!(store.for_tenant(""), Err(Error::InvalidConfig(_))));
    assert!(matches!(
        store.for_tenant("a\0b"),
        Err(Error::InvalidConfig(_))
    ));
}

async fn another_tenants_stream_cannot_be_written<S: Store>(store: &S) {
    let acme = store.for_tenant("acme").unwrap();
    let globex = store.for_tenant("globex").unwrap();
    let stream = counter("contested");
    acme.append(&stream, ExpectedVersion::NoStream, vec![event(1)])
        .await
        .unwrap();
    for expected in [
        ExpectedVersion::Any,
        ExpectedVersion::NoStream,
        ExpectedVersion::StreamExists,
        ExpectedVersion::Exact(1),
    ] {
        let refused = globex
            .append(&stream, expected, vec![event(9)])
            .await
            .unwrap_err();
        // A conflict would tell the other tenant's version; the refusal says nothing of it.
        assert!(
            is_mismatch(&refused) || matches!(refused, Error::Concurrency { actual: 0, .. }),
            "{expected:?}: {refused:?}"
        );
    }
    let stored = store
        .read_stream(&stream, StreamQuery::all())
        .await
        .unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].metadata.tenant_id.as_deref(), Some("acme"));
    // The owner's append goes on as before.
    acme.append(&stream, ExpectedVersion::Exact(1), vec![event(2)])
        .await
        .unwrap();
}

async fn repositories_are_isolated<S: Store>(store: &S) {
    let acme = Counter::repository(store.for_tenant("acme").unwrap());
    let globex = Counter::repository(store.for_tenant("globex").unwrap());
    let id = Uuid::now_v7();

    let mut root = acme.create(id);
    root.record(Incremented { by: 2 });
    acme.save(&mut root).await.unwrap();
    acme.update(id, |root| {
        root.record(Incremented { by: 3 });
        Ok(())
    })
    .await
    .unwrap();
    assert_eq!(acme.load(id).await.unwrap().total, 5);

    // Through the other tenant: not found, never data.
    assert!(matches!(
        globex.load(id).await,
        Err(Error::AggregateNotFound { .. })
    ));
    assert!(globex.try_load(id).await.unwrap().is_none());
    assert!(!globex.exists(id).await.unwrap());
    let updated = globex
        .update(id, |root| {
            root.record(Incremented { by: 100 });
            Ok(())
        })
        .await;
    assert!(updated.is_err(), "{updated:?}");
    let mut twin = globex.create(id);
    twin.record(Incremented { by: 100 });
    let refused = globex.save(&mut twin).await.unwrap_err();
    assert!(is_mismatch(&refused), "{refused:?}");

    // The save stamped the tenant; the other tenant's attempts left nothing.
    let stored = store
        .read_stream(&acme.stream_id(&id), StreamQuery::all())
        .await
        .unwrap();
    assert_eq!(stored.len(), 2);
    assert!(
        stored
            .iter()
            .all(|e| e.metadata.tenant_id.as_deref() == Some("acme"))
    );
    assert_eq!(acme.load(id).await.unwrap().total, 5);
}

async fn snapshots_are_isolated<S: Store + Clone>(store: &S) {
    let acme_store = store.for_tenant("acme").unwrap();
    let globex_store = store.for_tenant("globex").unwrap();
    let acme = Counter::repository(acme_store.clone()).with_snapshots();
    let globex = Counter::repository(globex_store.clone()).with_snapshots();
    let id = Uuid::now_v7();
    let mut root = acme.create(id);
    root.record(Incremented { by: 7 });
    acme.save(&mut root).await.unwrap();
    acme.snapshot(id).await.unwrap();
    let stream = acme.stream_id(&id);

    let own = acme_store.load_snapshot(&stream).await.unwrap();
    assert_eq!(own.expect("acme's snapshot").version(), 1);
    assert!(store.load_snapshot(&stream).await.unwrap().is_some());
    assert!(globex_store.load_snapshot(&stream).await.unwrap().is_none());
    assert!(!globex_store.delete_snapshot(&stream).await.unwrap());
    let forged = Snapshot::new(stream.clone(), 1, 1, r#"{"total":1000}"#.to_owned());
    let refused = globex_store.save_snapshot(&forged).await.unwrap_err();
    assert!(is_mismatch(&refused), "{refused:?}");
    assert!(matches!(
        globex.load(id).await,
        Err(Error::AggregateNotFound { .. })
    ));
    // Acme's snapshot is untouched.
    assert_eq!(acme.load(id).await.unwrap().total, 7);
    let kept = store.load_snapshot(&stream).await.unwrap().unwrap();
    assert!(kept.state().contains('7'), "{}", kept.state());
}

async fn global_reads_see_one_tenant<S: Store>(store: &S) {
    let acme = store.for_tenant("acme").unwrap();
    let globex = store.for_tenant("globex").unwrap();
    for n in 0..5 {
        acme.append(
            &counter(&format!("a{n}")),
            ExpectedVersion::NoStream,
            vec![event(1)],
        )
        .await
        .unwrap();
        globex
            .append(
                &counter(&format!("g{n}")),
                ExpectedVersion::NoStream,
                vec![event(1), event(2)],
            )
            .await
            .unwrap();
    }
    // Events without a tenant, through the unscoped store: no tenant sees them.
    store
        .append(&counter("none"), ExpectedVersion::NoStream, vec![event(1)])
        .await
        .unwrap();
    let head = store.log_head().await.unwrap().last;
    store.wait_for(head, Duration::from_secs(10)).await.unwrap();

    for (view, expected) in [(&acme, 5), (&globex, 10)] {
        let all: Vec<RecordedEvent> = view
            .read_all(ReadAll::from_start().batch_size(3))
            .try_collect()
            .await
            .unwrap();
        assert_eq!(all.len(), expected, "{}", view.tenant());
        assert!(
            all.iter()
                .all(|e| e.metadata.tenant_id.as_deref() == Some(view.tenant()))
        );
        assert_eq!(
            view.count(ReadAll::from_start()).await.unwrap(),
            expected as u64
        );
        let mut folded = Vec::new();
        let end = view
            .fold_all(&ReadAll::from_start(), |item| {
                let (_, ctx) = item.expect("a readable row");
                folded.push(ctx.metadata.tenant_id.clone());
                ControlFlow::Continue(())
            })
            .await
            .unwrap();
        assert_eq!(end.rows, expected);
        assert!(folded.iter().all(|t| t.as_deref() == Some(view.tenant())));
        // Asking a scoped store for the other tenant's events gives nothing.
        let other = if view.tenant() == "acme" {
            "globex"
        } else {
            "acme"
        };
        let theirs: Vec<RecordedEvent> = view
            .read_all(ReadAll::from_start().tenant(other))
            .try_collect()
            .await
            .unwrap();
        assert!(theirs.is_empty());
        assert_eq!(
            view.count(ReadAll::from_start().tenant(other))
                .await
                .unwrap(),
            0
        );
    }
    assert_eq!(store.count(ReadAll::from_start()).await.unwrap(), 16);
}

async fn a_projection_sees_one_tenant<S: Store>(store: &S) {
    let acme = store.for_tenant("acme").unwrap();
    let globex = store.for_tenant("globex").unwrap();
    globex
        .append(&counter("g1"), ExpectedVersion::NoStream, vec![event(1)])
        .await
        .unwrap();
    acme.append(&counter("a1"), ExpectedVersion::NoStream, vec![event(1)])
        .await
        .unwrap();
    globex
        .append(&counter("g2"), ExpectedVersion::NoStream, vec![event(1)])
        .await
        .unwrap();
    let last = acme
        .append(&counter("a2"), ExpectedVersion::NoStream, vec![event(1)])
        .await
        .unwrap()
        .last_position;

    let mut subscriptions = Subscriptions::new(acme.clone());
    let seen = subscriptions.add(Seen::default());
    let durable = subscriptions.add_durable(Seen::default());
    let running = subscriptions.start();
    running
        .wait_until(last, Duration::from_secs(10))
        .await
        .unwrap();
    for model in [&seen, &durable] {
        let model = model.read();
        assert_eq!(model.counters, ["a1", "a2"]);
        assert!(model.tenants.iter().all(|t| t.as_deref() == Some("acme")));
    }
    running.shutdown().await;
    // The durable projection's checkpoint is acme's own.
    assert!(acme.checkpoint("seen").await.unwrap().is_some());
    assert!(globex.checkpoint("seen").await.unwrap().is_none());
}

async fn checkpoints_are_per_tenant<S: Store>(store: &S) {
    let acme = store.for_tenant("acme").unwrap();
    let globex = store.for_tenant("globex").unwrap();
    let position = acme
        .append(&counter("c"), ExpectedVersion::NoStream, vec![event(1)])
        .await
        .unwrap()
        .last_position;
    acme.save_checkpoint("report", None, position)
        .await
        .unwrap();
    assert_eq!(acme.checkpoint("report").await.unwrap(), Some(position));
    assert_eq!(globex.checkpoint("report").await.unwrap(), None);
    assert_eq!(store.checkpoint("report").await.unwrap(), None);
    assert_eq!(
        store.checkpoint("acme/report").await.unwrap(),
        Some(position)
    );
    let letter = eventsource::DeadLetter::new("report", position, counter("c"), "boom", 1);
    acme.add_dead_letter(&letter).await.unwrap();
    assert_eq!(acme.dead_letters("report").await.unwrap().len(), 1);
    assert_eq!(
        acme.dead_letters("report").await.unwrap()[0].projection,
        "report"
    );
    assert!(globex.dead_letters("report").await.unwrap().is_empty());
}

/// Tenant `a` with projection `b/c` and tenant `a/b` with projection `c` (and tenants spelled
/// like the escapes) each keep a checkpoint, dead letters and a lease of their own.
async fn tenant_ids_with_slashes_do_not_share_bookkeeping<S: Store>(store: &S) {
    let pairs = [("a", "b/c"), ("a/b", "c"), ("a%2Fb", "c"), ("a%b", "c")];
    let scoped: Vec<_> = pairs
        .iter()
        .map(|(tenant, _)| store.for_tenant(*tenant).unwrap())
        .collect();
    let mut positions = Vec::new();
    for (tenant, (name, projection)) in scoped.iter().zip(pairs) {
        let position = tenant
            .append(&counter(name), ExpectedVersion::NoStream, vec![event(1)])
            .await
            .unwrap()
            .last_position;
        // Each one's first save finds no checkpoint: none is shared.
        tenant
            .save_checkpoint(projection, None, position)
            .await
            .unwrap();
        let letter = eventsource::DeadLetter::new(
            projection,
            position,
            counter(name),
            format!("{name} failed"),
            1,
        );
        tenant.add_dead_letter(&letter).await.unwrap();
        positions.push(position);
    }
    let leases: Vec<_> = futures::future::join_all(
        scoped
            .iter()
            .zip(pairs)
            .map(|(tenant, (_, projection))| tenant.lease(projection)),
    )
    .await;
    for (((tenant, (name, projection)), position), lease) in
        scoped.iter().zip(pairs).zip(&positions).zip(&leases)
    {
        assert!(
            matches!(lease, Ok(Some(_))),
            "{name}: the lease of {projection} is another's"
        );
        assert_eq!(
            tenant.checkpoint(projection).await.unwrap(),
            Some(*position),
            "{name}"
        );
        let letters = tenant.dead_letters(projection).await.unwrap();
        assert_eq!(letters.len(), 1, "{name}: {letters:?}");
        assert_eq!(letters[0].projection, projection);
        assert_eq!(letters[0].error, format!("{name} failed"));
        // Errors name the caller's projection, not the store's key.
        let conflict = tenant
            .save_checkpoint(projection, None, *position)
            .await
            .unwrap_err();
        assert!(
            matches!(&conflict, Error::CheckpointConflict { projection: p, .. } if p == projection),
            "{conflict:?}"
        );
        assert!(
            tenant
                .remove_dead_letter(projection, *position)
                .await
                .unwrap()
        );
    }
    // A tenant without `/` or `%` keeps the key it always had.
    assert_eq!(store.checkpoint("a/b/c").await.unwrap(), Some(positions[0]));
}

// ----- The tenant index -----

/// A tenant's page of the global log, as the stores read it (`ReadAll::tenant`, and every global
/// read of a `TenantStore`).
const TENANT_PAGE: &str = "SELECT position, payload FROM events \
     WHERE position > 0 AND tenant_id = 'acme' ORDER BY position LIMIT 100";

#[tokio::test]
async fn sqlite_tenant_reads_use_the_index() {
    let Some(db) = databases::sqlite().await else {
        return;
    };
    let rows = sqlx::query(&format!("EXPLAIN QUERY PLAN {TENANT_PAGE}"))
        .fetch_all(db.store().writer_pool())
        .await
        .unwrap();
    let plan: Vec<String> = rows
        .iter()
        .map(|row| sqlx::Row::get::<String, _>(row, 3))
        .collect();
    println!("{}", plan.join("\n"));
    assert!(
        plan.iter()
            .any(|step| step.contains("INDEX events_tenant_position (tenant_id=? AND")),
        "{plan:?}"
    );
    assert!(
        !plan.iter().any(|step| step.contains("TEMP B-TREE")),
        "{plan:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_tenant_reads_use_the_index() {
    let Some(db) = databases::postgres().await else {
        return;
    };
    let store = db.store();
    // Twenty tenants, a hundred events each, statistics up to date.
    for tenant in 0..20 {
        let scoped = store.for_tenant(format!("t{tenant}")).unwrap();
        scoped
            .append(
                &counter(&format!("c{tenant}")),
                ExpectedVersion::NoStream,
                (0..100).map(event).collect(),
            )
            .await
            .unwrap();
    }
    sqlx::query("ANALYZE events")
        .execute(store.pool())
        .await
        .unwrap();
    let plan: Vec<String> = sqlx::query_scalar(&format!(
        "EXPLAIN {}",
        TENANT_PAGE.replace("'acme'", "'t3'")
    ))
    .fetch_all(store.pool())
    .await
    .unwrap();
    println!("{}", plan.join("\n"));
    assert!(
        plan.iter()
            .any(|step| step.contains("Index Scan on events_tenant_position")
                || step.contains("Index Scan using events_tenant_position")),
        "{plan:?}"
    );
    assert!(
        !plan.iter().any(|step| step.contains("Seq Scan")),
        "{plan:?}"
    );
}

// ----- PostgreSQL: row-level security, through a role that does not own the tables -----

/// A login role of its own for one test, dropped afterwards (even when the test panics).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_row_level_security_limits_an_application_role() {
    use sqlx::ConnectOptions;
    use sqlx::postgres::PgPoolOptions;

    let Some((options, schema)) = databases::postgres_schema().await else {
        return;
    };
    // The owner (the test server's superuser) migrates and keeps the unscoped store.
    let owner = PostgresEventStore::connect_with(options.clone())
        .await
        .unwrap();
    let role = databases::TestRole {
        options: options.clone(),
        name: format!("es_app_{}", Uuid::now_v7().simple()),
    };
    let name = &role.name;
    let schema = schema.name();
    // What an operator runs for the application's role (see the README).
    let mut admin = options.connect().await.unwrap();
    sqlx::raw_sql(&format!(
        "CREATE ROLE {name} LOGIN NOSUPERUSER NOBYPASSRLS; \
         GRANT USAGE ON SCHEMA {schema} TO {name}; \
         GRANT SELECT, INSERT ON events TO {name}; \
         GRANT SELECT, INSERT, UPDATE, DELETE ON snapshots, checkpoints, dead_letters TO {name};"
    ))
    .execute(&mut admin)
    .await
    .unwrap();
    let app_options = options.clone().username(name);
    let app_pool = PgPoolOptions::new()
        .max_connections(4)
        .connect_with(app_options.clone())
        .await
        .unwrap();
    // The role cannot migrate: it uses the schema as the owner left it.
    let app = PostgresEventStore::from_pool(app_pool.clone());
    let app_acme = app.for_tenant("acme").unwrap();
    let app_globex = app.for_tenant("globex").unwrap();

    let (a, g) = (counter("a"), counter("g"));
    app_acme
        .append(&a, ExpectedVersion::NoStream, vec![event(1), event(2)])
        .await
        .unwrap();
    app_globex
        .append(&g, ExpectedVersion::NoStream, vec![event(3)])
        .await
        .unwrap();
    let head = owner.log_head().await.unwrap().last;
    owner.wait_for(head, Duration::from_secs(10)).await.unwrap();

    // Scoped through the role: each tenant reads its own, and only its own.
    assert_eq!(
        app_acme
            .read_stream(&a, StreamQuery::all())
            .await
            .unwrap()
            .len(),
        2
    );
    assert!(
        app_acme
            .read_stream(&g, StreamQuery::all())
            .await
            .unwrap()
            .is_empty()
    );
    let all: Vec<RecordedEvent> = app_acme
        .read_all(ReadAll::from_start())
        .try_collect()
        .await
        .unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(app_globex.count(ReadAll::from_start()).await.unwrap(), 1);

    // The same role without the library's scope: the database shows it nothing at all.
    assert!(
        app.read_stream(&a, StreamQuery::all())
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(app.stream_version(&a).await.unwrap(), 0);
    assert_eq!(app.count(ReadAll::from_start()).await.unwrap(), 0);
    // ... not even when the query asks for a tenant by name.
    let asked: Vec<RecordedEvent> = app
        .read_all(ReadAll::from_start().tenant("acme"))
        .try_collect()
        .await
        .unwrap();
    assert!(asked.is_empty());
    // And it cannot write an event without the setting, or of another tenant than the setting.
    let refused = app
        .append(
            &counter("x"),
            ExpectedVersion::NoStream,
            vec![event(1).with_metadata(Metadata::new().with_tenant("acme"))],
        )
        .await
        .unwrap_err();
    assert!(matches!(refused, Error::Database { .. }), "{refused:?}");

    // Globex's append to acme's stream (hidden from it by the database): refused, nothing
    // written.
    for expected in [
        ExpectedVersion::Any,
        ExpectedVersion::NoStream,
        ExpectedVersion::StreamExists,
        ExpectedVersion::Exact(2),
    ] {
        let refused = app_globex
            .append(&a, expected, vec![event(9)])
            .await
            .unwrap_err();
        assert!(is_mismatch(&refused), "{expected:?}: {refused:?}");
    }
    assert_eq!(owner.stream_version(&a).await.unwrap(), 2);
    // An event id of acme's (hidden from globex) is a duplicate, named by the id globex gave.
    let taken = owner.read_stream(&a, StreamQuery::all()).await.unwrap()[1].event_id;
    for batch in [
        vec![event(9).with_event_id(taken)],
        vec![event(9), event(9).with_event_id(taken)],
    ] {
        let refused = app_globex
            .append(&counter("fresh"), ExpectedVersion::NoStream, batch)
            .await
            .unwrap_err();
        assert!(
            matches!(refused, Error::DuplicateEvent { event_id, .. } if event_id == taken),
            "{refused:?}"
        );
    }
    assert_eq!(owner.stream_version(&counter("fresh")).await.unwrap(), 0);

    // Raw SQL through the role, the library out of the way.
    let mut raw = app_options.connect().await.unwrap();
    for (setting, expected) in [
        (Some("acme"), Some("acme,acme")),
        (Some("globex"), Some("globex")),
        (Some("initech"), None),
        (None, None),
    ] {
        let mut tx = sqlx::Connection::begin(&mut raw).await.unwrap();
        if let Some(tenant) = setting {
            sqlx::query("SELECT set_config('eventsource.tenant', $1, true)")
                .bind(tenant)
                .execute(&mut *tx)
                .await
                .unwrap();
        }
        let seen: Option<String> =
            sqlx::query_scalar("SELECT string_agg(tenant_id, ',' ORDER BY tenant_id) FROM events")
                .fetch_one(&mut *tx)
                .await
                .unwrap();
        assert_eq!(seen.as_deref(), expected, "setting {setting:?}");
        // Asking for the other tenant's rows by name changes nothing.
        let theirs: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM events WHERE tenant_id <> $1 OR tenant_id IS NULL",
        )
        .bind(setting.unwrap_or(""))
        .fetch_one(&mut *tx)
        .await
        .unwrap();
        assert_eq!(theirs, 0, "setting {setting:?}");
        tx.rollback().await.unwrap();
    }
    // The setting is transaction-local: gone after the transaction.
    let after: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM events")
        .fetch_one(&mut raw)
        .await
        .unwrap();
    assert_eq!(after, 0);
    // A raw insert of another tenant's row under acme's setting: refused by the policy.
    let mut tx = sqlx::Connection::begin(&mut raw).await.unwrap();
    sqlx::query("SELECT set_config('eventsource.tenant', 'acme', true)")
        .execute(&mut *tx)
        .await
        .unwrap();
    let forged = sqlx::query(
        "INSERT INTO events (position, event_id, aggregate_type, aggregate_id, version, \
         event_type, schema_version, occurred_at, tenant_id, payload) \
         VALUES (1, gen_random_uuid(), 'Counter', 'forged', 1, 'Incremented', 1, now(), \
         'globex', '{}')",
    )
    .execute(&mut *tx)
    .await
    .unwrap_err();
    assert_eq!(
        forged.as_database_error().and_then(|e| e.code()).as_deref(),
        Some("42501"),
        "{forged}"
    );
    drop(tx);

    // Snapshots: stamped with the tenant of the session, visible to it only.
    let counters = Counter::repository(app_acme.clone()).with_snapshots();
    let id = Uuid::now_v7();
    let mut root = counters.create(id);
    root.record(Incremented { by: 4 });
    counters.save(&mut root).await.unwrap();
    counters.snapshot(id).await.unwrap();
    let stream = counters.stream_id(&id);
    assert!(app_acme.load_snapshot(&stream).await.unwrap().is_some());
    assert!(app.load_snapshot(&stream).await.unwrap().is_none());
    assert!(app_globex.load_snapshot(&stream).await.unwrap().is_none());
    let stamped: Option<String> =
        sqlx::query_scalar("SELECT tenant_id FROM snapshots WHERE aggregate_id = $1")
            .bind(id.to_string())
            .fetch_one(owner.pool())
            .await
            .unwrap();
    assert_eq!(stamped.as_deref(), Some("acme"));
    let mut tx = sqlx::Connection::begin(&mut raw).await.unwrap();
    sqlx::query("SELECT set_config('eventsource.tenant', 'globex', true)")
        .execute(&mut *tx)
        .await
        .unwrap();
    let visible: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM snapshots")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!(visible, 0);
    drop(tx);
    assert_eq!(counters.load(id).await.unwrap().total, 4);

    // Checkpoints and dead letters: stamped with the tenant of the session, visible to it only.
    let at = owner.log_head().await.unwrap().last;
    for tenant in [&app_acme, &app_globex] {
        let name = tenant.tenant();
        tenant.save_checkpoint("report", None, at).await.unwrap();
        let letter = DeadLetter::new("report", at, counter(name), format!("{name} failed"), 1);
        tenant.add_dead_letter(&letter).await.unwrap();
        assert_eq!(tenant.checkpoint("report").await.unwrap(), Some(at));
        let letters = tenant.dead_letters("report").await.unwrap();
        assert_eq!(letters.len(), 1, "{name}: {letters:?}");
        assert_eq!(letters[0].error, format!("{name} failed"));
        // Leases are advisory locks, not rows: through the role, each tenant gets its own.
        assert!(tenant.lease("report").await.unwrap().is_some(), "{name}");
    }
    // The role without the library's scope sees none of them.
    assert_eq!(app.checkpoint("acme/report").await.unwrap(), None);
    assert!(app.dead_letters("acme/report").await.unwrap().is_empty());
    for (table, key) in [("checkpoints", "name"), ("dead_letters", "projection")] {
        let stamped: Vec<(String, Option<String>)> = sqlx::query_as(&format!(
            "SELECT {key}, tenant_id FROM {table} ORDER BY {key}"
        ))
        .fetch_all(owner.pool())
        .await
        .unwrap();
        let tenants = |name: &str| (format!("{name}/report"), Some(name.to_owned()));
        assert_eq!(stamped, [tenants("acme"), tenants("globex")], "{table}");

        // Raw SQL through the role, under globex's setting: acme's rows cannot be read, moved
        // or deleted.
        let mut tx = sqlx::Connection::begin(&mut raw).await.unwrap();
        sqlx::query("SELECT set_config('eventsource.tenant', 'globex', true)")
            .execute(&mut *tx)
            .await
            .unwrap();
        let seen: Option<String> = sqlx::query_scalar(&format!(
            "SELECT string_agg({key} || '=' || tenant_id, ',') FROM {table}"
        ))
        .fetch_one(&mut *tx)
        .await
        .unwrap();
        assert_eq!(seen.as_deref(), Some("globex/report=globex"), "{table}");
        let moved = sqlx::query(&format!("UPDATE {table} SET position = 0"))
            .execute(&mut *tx)
            .await
            .unwrap();
        assert_eq!(moved.rows_affected(), 1, "{table}: globex's own row only");
        let deleted = sqlx::query(&format!("DELETE FROM {table}"))
            .execute(&mut *tx)
            .await
            .unwrap();
        assert_eq!(deleted.rows_affected(), 1, "{table}: globex's own row only");
        tx.rollback().await.unwrap();
        // Without the setting: no row.
        let visible: i64 = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {table}"))
            .fetch_one(&mut raw)
            .await
            .unwrap();
        assert_eq!(visible, 0, "{table}");
        // Globex's own row relabelled as acme's: refused by the policy.
        let mut tx = sqlx::Connection::begin(&mut raw).await.unwrap();
        sqlx::query("SELECT set_config('eventsource.tenant', 'globex', true)")
            .execute(&mut *tx)
            .await
            .unwrap();
        let forged = sqlx::query(&format!("UPDATE {table} SET tenant_id = 'acme'"))
            .execute(&mut *tx)
            .await
            .unwrap_err();
        assert_eq!(
            forged.as_database_error().and_then(|e| e.code()).as_deref(),
            Some("42501"),
            "{table}: {forged}"
        );
    }
    // Rows of acme's inserted under globex's setting: refused by the policy.
    let mut tx = sqlx::Connection::begin(&mut raw).await.unwrap();
    sqlx::query("SELECT set_config('eventsource.tenant', 'globex', true)")
        .execute(&mut *tx)
        .await
        .unwrap();
    for forge in [
        "INSERT INTO checkpoints (name, position, updated_at, tenant_id) \
         VALUES ('acme/forged', 1, now(), 'acme')",
        "INSERT INTO dead_letters (projection, position, aggregate_type, aggregate_id, error, \
         attempts, failed_at, tenant_id) VALUES ('acme/report', 1, 'Counter', 'a', 'forged', 1, \
         now(), 'acme')",
    ] {
        sqlx::query("SAVEPOINT forge")
            .execute(&mut *tx)
            .await
            .unwrap();
        let forged = sqlx::query(forge).execute(&mut *tx).await.unwrap_err();
        assert_eq!(
            forged.as_database_error().and_then(|e| e.code()).as_deref(),
            Some("42501"),
            "{forge}: {forged}"
        );
        sqlx::query("ROLLBACK TO SAVEPOINT forge")
            .execute(&mut *tx)
            .await
            .unwrap();
    }
    drop(tx);
    // Acme's are as acme left them.
    assert_eq!(app_acme.checkpoint("report").await.unwrap(), Some(at));
    assert_eq!(app_acme.dead_letters("report").await.unwrap().len(), 1);
    assert!(app_acme.remove_dead_letter("report", at).await.unwrap());
    app_acme.delete_checkpoint("report").await.unwrap();
    assert_eq!(owner.checkpoint("acme/report").await.unwrap(), None);
    assert_eq!(owner.checkpoint("globex/report").await.unwrap(), Some(at));

    // The owner's unscoped store reads across tenants, explicitly.
    let everyone: Vec<RecordedEvent> = owner
        .read_all(ReadAll::from_start())
        .try_collect()
        .await
        .unwrap();
    let of = |tenant: &str| {
        everyone
            .iter()
            .filter(|e| e.metadata.tenant_id.as_deref() == Some(tenant))
            .count()
    };
    assert_eq!((of("acme"), of("globex")), (3, 1));
    assert_eq!(owner.stream_version(&g).await.unwrap(), 1);

    drop(raw);
    app_pool.close().await;
}

/// An upgrade: checkpoints and dead letters written before they had a tenant take the tenant
/// whose key starts their name, where exactly one tenant's can.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_bookkeeping_takes_its_tenant_on_upgrade() {
    use sqlx::ConnectOptions;

    let Some((options, _schema)) = databases::postgres_schema().await else {
        return;
    };
    // The schema as the migrations before the bookkeeping's tenant left it.
    let mut conn = options.connect().await.unwrap();
    for migration in [
        include_str!("../eventsource/migrations/postgres/20261122000001_events.sql"),
        include_str!("../eventsource/migrations/postgres/20261124000001_snapshots.sql"),
        include_str!("../eventsource/migrations/postgres/20261125000002_projections.sql"),
        include_str!("../eventsource/migrations/postgres/20261126000001_tenancy.sql"),
        include_str!("../eventsource/migrations/postgres/20261127000001_tenant_index_partial.sql"),
    ] {
        sqlx::raw_sql(migration).execute(&mut conn).await.unwrap();
    }
    for (position, tenant) in [(1, "acme"), (2, "a"), (3, "a/b")] {
        sqlx::query(
            "INSERT INTO events (position, event_id, aggregate_type, aggregate_id, version, \
             event_type, schema_version, occurred_at, tenant_id, payload) \
             VALUES ($1, gen_random_uuid(), 'Counter', $2, 1, 'Incremented', 1, now(), $2, '{}')",
        )
        .bind(position as i64)
        .bind(tenant)
        .execute(&mut conn)
        .await
        .unwrap();
    }
    let rows = [
        ("acme/report", Some("acme")),
        ("a%2Fb/c", Some("a/b")),
        ("a/b/c", None), // tenant `a`'s `b/c`, or tenant `a/b`'s `c` as written before
        ("initech/report", None), // no such tenant
        ("report", None), // the owner's
    ];
    for (name, _) in rows {
        sqlx::query("INSERT INTO checkpoints (name, position, updated_at) VALUES ($1, 1, now())")
            .bind(name)
            .execute(&mut conn)
            .await
            .unwrap();
        sqlx::query(
            "INSERT INTO dead_letters (projection, position, aggregate_type, aggregate_id, \
             error, attempts, failed_at) VALUES ($1, 1, 'Counter', 'acme', 'boom', 1, now())",
        )
        .bind(name)
        .execute(&mut conn)
        .await
        .unwrap();
    }

    PostgresEventStore::connect_with(options).await.unwrap();
    for (table, key) in [("checkpoints", "name"), ("dead_letters", "projection")] {
        let found: Vec<(String, Option<String>)> = sqlx::query_as(&format!(
            "SELECT {key}, tenant_id FROM {table} ORDER BY {key}"
        ))
        .fetch_all(&mut conn)
        .await
        .unwrap();
        let mut expected: Vec<(String, Option<String>)> = rows
            .iter()
            .map(|(name, tenant)| (name.to_string(), tenant.map(str::to_owned)))
            .collect();
        expected.sort();
        assert_eq!(found, expected, "{table}");
    }
}

// ----- A scoped store is an event store: the conformance suite, run through one -----

macro_rules! scoped_suite {
    ($backend:ident: $($case:ident),* $(,)?) => {
        mod $backend {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let Some(db) = databases::$backend().await else { return };
                    let scoped = db.store().for_tenant("conformance").unwrap();
                    eventsource_tests::conformance::$case(&scoped).await;
                }
            )*
        }
    };
}

macro_rules! scoped_conformance {
    ($($case:ident),* $(,)?) => {
        mod scoped_conformance {
            use super::*;
            scoped_suite!(memory: $($case),*);
            scoped_suite!(sqlite: $($case),*);
            scoped_suite!(postgres: $($case),*);
        }
    };
}

scoped_conformance!(
    expected_any,
    expected_no_stream,
    expected_stream_exists,
    expected_exact,
    batch_is_atomic,
    retried_append_is_idempotent,
    read_stream_queries,
    // Not `metadata_round_trips` and `read_all_order_and_filters`: they write events stamped
    // with tenants of their own, which a scoped store refuses (as tested above).
    large_and_unicode_payloads,
    ten_thousand_events,
    concurrent_writers_one_stream,
    bad_input_is_refused,
    undecodable_events_are_typed_errors,
    time_travel,
    repository_conflict_and_retry,
    old_schema_versions_are_upcast,
    snapshot_plus_tail_equals_replay,
    snapshot_strategies,
    snapshot_schema_change_rebuilds,
    corrupt_snapshot_is_ignored,
    snapshot_time_travel,
    concurrent_save_and_snapshot,
    expected_any_under_contention,
    log_head_and_wait_for,
);
