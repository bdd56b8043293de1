//! PostgreSQL for the tests that need it.
//!
//! The database is `VIDGATE_TEST_DATABASE_URL` when set (CI sets it to the machine's
//! PostgreSQL), otherwise a PostgreSQL started by testcontainers; when neither works the test
//! fails with a message saying what to set, never skips. Each test works in its own schema
//! ([`Database::schema`]), created by the store it opens and dropped by [`TestSchema::drop`],
//! so tests run in parallel on one database without seeing each other's rows.

use std::net::SocketAddr;
use std::time::Duration;

use sqlx::{ConnectOptions, Connection};
use testcontainers_modules::postgres::Postgres;
use testcontainers_modules::testcontainers::runners::AsyncRunner;
use testcontainers_modules::testcontainers::{ContainerAsync, ImageExt};
use vidgate::store::postgres::{PostgresConfig, PostgresStore};

/// The environment variable naming the test database.
pub const TEST_URL_ENV: &str = "VIDGATE_TEST_DATABASE_URL";
/// The PostgreSQL image testcontainers starts when no URL is given (the version the
/// development machines run).
pub const POSTGRES_TAG: &str = "15-alpine";

pub struct Database {
    pub url: String,
    _container: Option<ContainerAsync<Postgres>>,
}

/// The database of this test run.
pub async fn database() -> Database {
    if let Ok(url) = std::env::var(TEST_URL_ENV)
        && !url.is_empty()
    {
        return Database {
            url,
            _container: None,
        };
    }
    fn fail(why: String) -> ! {
        panic!(
            "no PostgreSQL for the PostgreSQL tests: {TEST_URL_ENV} is not set and testcontainers could not start one ({why}). \
             Set {TEST_URL_ENV}=postgres://postgres@127.0.0.1:5432/test to use a running server."
        )
    }
    let started = tokio::time::timeout(
        Duration::from_secs(180),
        Postgres::default().with_tag(POSTGRES_TAG).start(),
    )
    .await;
    let container = match started {
        Ok(Ok(container)) => container,
        Ok(Err(e)) => fail(e.to_string()),
        Err(_) => fail("it did not start within 180 s".into()),
    };
    let host = container
        .get_host()
        .await
        .unwrap_or_else(|e| fail(e.to_string()));
    let port = container
        .get_host_port_ipv4(5432)
        .await
        .unwrap_or_else(|e| fail(e.to_string()));
    Database {
        url: format!("postgres://postgres:postgres@{host}:{port}/postgres"),
        _container: Some(container),
    }
}

impl Database {
    /// A schema name of this test's own (not created yet: the store creates it).
    pub fn schema(&self, test: &str) -> TestSchema {
        let id = uuid::Uuid::now_v7().simple().to_string();
        let test: String = test
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '_'
                }
            })
            .take(30)
            .collect();
        TestSchema {
            url: self.url.clone(),
            name: format!("vgt_{test}_{}", &id[id.len() - 12..]),
        }
    }

    /// host:port of the server.
    pub async fn addr(&self) -> SocketAddr {
        let u = url::Url::parse(&self.url).expect("database URL parses");
        let host = u.host_str().expect("database URL has a host").to_owned();
        let port = u.port().unwrap_or(5432);
        tokio::net::lookup_host((host.as_str(), port))
            .await
            .expect("database host resolves")
            .next()
            .expect("database host has an address")
    }
}

/// One test's schema on the test database.
#[derive(Debug, Clone)]
pub struct TestSchema {
    pub url: String,
    pub name: String,
}

impl TestSchema {
    /// The store's configuration for this schema (small pool: many tests share the server).
    pub fn config(&self) -> PostgresConfig {
        let mut config = PostgresConfig::new(self.url.clone());
        config.schema = Some(self.name.clone());
        config.pool_size = 4;
        config
    }

    /// A store on this schema (several calls: several instances on one database).
    pub async fn open(&self) -> PostgresStore {
        PostgresStore::open(self.config())
            .await
            .unwrap_or_else(|e| panic!("opening the PostgreSQL store on {}: {e}", self.name))
    }

    /// Runs `sql` on this schema outside any store (to arrange or inspect rows).
    pub async fn execute(&self, sql: &'static str) {
        let mut conn = self.connect().await;
        sqlx::raw_sql(sql)
            .execute(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        let _ = conn.close().await;
    }

    /// A connection of the test's own, on this schema.
    pub async fn connect(&self) -> sqlx::PgConnection {
        let options: sqlx::postgres::PgConnectOptions =
            self.url.parse().expect("database URL parses");
        options
            .options([("search_path", self.name.as_str())])
            .connect()
            .await
            .expect("connect to the test database")
    }

    /// Drops the schema and everything in it.
    pub async fn drop(self) {
        let options: sqlx::postgres::PgConnectOptions =
            self.url.parse().expect("database URL parses");
        if let Ok(mut conn) = options.connect().await {
            let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "DROP SCHEMA IF EXISTS {} CASCADE",
                self.name
            )))
            .execute(&mut conn)
            .await;
            let _ = conn.close().await;
        }
    }
}
