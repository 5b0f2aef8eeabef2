//! A PostgreSQL database of its own per test, with a `logs` table, and the
//! `postgres` peer reading it.
#![allow(dead_code, unreachable_pub, missing_docs)]

pub const PG: &str = "host=127.0.0.1 user=postgres";

pub async fn pg(dbname: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(&format!("{PG} dbname={dbname}"), tokio_postgres::NoTls)
        .await
        .expect("PostgreSQL must be running");
    tokio::spawn(connection);
    client
}

pub async fn pg_setup(tag: &str) -> (String, tokio_postgres::Client) {
    let db = format!("herald_test_{tag}_{}", std::process::id());
    let admin = pg("postgres").await;
    admin.batch_execute(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)")).await.expect("drop old db");
    admin.batch_execute(&format!("CREATE DATABASE {db}")).await.expect("create db");
    let client = pg(&db).await;
    client
        .batch_execute(
            "CREATE TABLE logs (id bigserial PRIMARY KEY, kind text NOT NULL, owner text, body jsonb NOT NULL)",
        )
        .await
        .expect("create table");
    (db, client)
}

pub async fn pg_cleanup(db: &str) {
    let admin = pg("postgres").await;
    admin.batch_execute(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)")).await.expect("drop db");
}

pub fn pg_config(db: &str) -> String {
    format!(
        "[[peer]]\nid = \"pg\"\ntype = \"postgres\"\n[peer.config]\nurl = \"{PG} dbname={db} application_name=herald-pg\"\nchannel = \"logs_changed\"\nquery = \"SELECT id, body AS payload, kind AS routing_key, owner AS acl_user FROM logs WHERE id > $1 ORDER BY id LIMIT $2\"\nexchange = \"pg.logs\"\nbatch = 100\npoll_interval_s = 600\n"
    )
}

pub async fn insert(client: &tokio_postgres::Client, i: u64, owner: Option<&str>, body: serde_json::Value) {
    client
        .execute(
            "WITH r AS (INSERT INTO logs (kind, owner, body) VALUES ($1, $2, $3) RETURNING id) SELECT pg_notify('logs_changed', id::text) FROM r",
            &[&format!("k.{}", i % 3), &owner, &body],
        )
        .await
        .expect("insert");
}
