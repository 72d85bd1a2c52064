//! The PostgreSQL the tests run on (`workhost_tests::pg`): a private
//! throwaway server, or `WORKHOST_TEST_DATABASE_URL`'s.

use workhost_tests::pg;

/// Two test databases are two databases: what one creates the other does
/// not see, and each connection lands in its own.
#[tokio::test]
async fn each_test_gets_a_database_of_its_own() {
    let (a, b) = (pg::database(), pg::database());
    assert_ne!(a.name(), b.name());
    let (ca, cb) = (a.connect().await, b.connect().await);
    for (client, db) in [(&ca, &a), (&cb, &b)] {
        let name: String = client.query_one("SELECT current_database()", &[]).await.unwrap().get(0);
        assert_eq!(name, db.name());
    }
    ca.batch_execute("CREATE TABLE only_in_a (x int); INSERT INTO only_in_a VALUES (1)")
        .await
        .unwrap();
    let seen: i64 = ca
        .query_one("SELECT count(*) FROM only_in_a", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(seen, 1);
    let in_b: bool = cb
        .query_one("SELECT to_regclass('only_in_a') IS NOT NULL", &[])
        .await
        .unwrap()
        .get(0);
    assert!(!in_b, "a table created in one test database is visible in another");
}

/// The private server listens on its unix socket only, as the role the
/// tests use, and spends no time on disk flushes.
#[tokio::test]
async fn the_private_server_listens_on_a_unix_socket_only() {
    if !pg::is_private() {
        // WORKHOST_TEST_DATABASE_URL: the server is someone else's.
        return;
    }
    let db = pg::database();
    assert!(db.url().contains("host=/"), "{}", db.url());
    let client = db.connect().await;
    for (setting, expected) in [("listen_addresses", ""), ("fsync", "off")] {
        let value: String = client
            .query_one("SELECT current_setting($1)", &[&setting])
            .await
            .unwrap()
            .get(0);
        assert_eq!(value, expected, "{setting}");
    }
}
