//! Secrets stay secret: a connection string's password never shows in a store's `Debug` or in
//! an error (neither its message nor its `Debug`).

use eventsource::{AnyStore, PostgresEventStore};
use eventsource_tests::databases;

const PASSWORD: &str = "s3cr3t-Pa55word";

fn with_password(url: &str) -> String {
    // postgres://user@host/db -> postgres://user:PASSWORD@host/db (the local server trusts it).
    url.replacen("@", &format!(":{PASSWORD}@"), 1)
}

#[tokio::test]
async fn a_password_never_shows_in_debug() {
    let Some((_options, schema)) = databases::postgres_schema().await else {
        return;
    };
    let url = with_password(&schema.url());
    let store = PostgresEventStore::connect(&url).await.unwrap();
    assert!(!format!("{store:?}").contains(PASSWORD), "{store:?}");
    let any = AnyStore::connect(&url).await.unwrap();
    assert!(!format!("{any:?}").contains(PASSWORD), "{any:?}");
}

#[tokio::test]
async fn a_password_never_shows_in_errors() {
    // The local server refuses a role it does not know (a fast, non-retried failure).
    let url = format!(
        "postgres://no_such_role_{}:{PASSWORD}@127.0.0.1:5432/test",
        std::process::id()
    );
    let error = PostgresEventStore::connect(&url).await.unwrap_err();
    assert!(!error.to_string().contains(PASSWORD), "{error}");
    assert!(!format!("{error:?}").contains(PASSWORD), "{error:?}");
    let error = AnyStore::connect(&url).await.unwrap_err();
    assert!(!error.to_string().contains(PASSWORD), "{error}");
    assert!(!format!("{error:?}").contains(PASSWORD), "{error:?}");
    // A URL the driver cannot parse.
    let error = PostgresEventStore::connect(&format!("postgres://app:{PASSWORD}@[bad/db"))
        .await
        .unwrap_err();
    assert!(!error.to_string().contains(PASSWORD), "{error}");
    assert!(!format!("{error:?}").contains(PASSWORD), "{error:?}");
}
