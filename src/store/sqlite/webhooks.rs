//! [`WebhookStore`] on SQLite: writes are commands of the one writer (each in its own
//! savepoint of a group-committed batch, like every other write); reads use the read pool.

use async_trait::async_trait;
use sqlx::SqliteConnection;
use sqlx::sqlite::SqliteRow;

use super::{CommandError, SqliteStore, Write, db_error};
use crate::store::StoreError;
use crate::store::webhooks::{
    AttemptRow, Backlog, Claim, Delivery, DeliveryRecord, Endpoint, EndpointHealth, Finish,
    Finished, NewDelivery, Next, WebhookStore, clip, delivery_columns, delivery_from_row,
    encode_endpoint, endpoint_columns, endpoint_from_row, fan_out_leases, fanned_out,
    with_attempts,
};
use crate::webhooks::signing::SigningSecret;

/// Deliveries per multi-row insert of a fan-out (8 bound values each: well under SQLite's
/// limit of 32 766).
const FAN_OUT_CHUNK: usize = 500;

/// Rows one pruning command deletes at most (the write lock is held for one small delete).
const PRUNE_STEP: i64 = 5_000;

/// A webhook write, applied by the writer.
pub(super) enum WebhookWrite {
    CreateEndpoint(Box<Endpoint>),
    UpdateEndpoint(Box<Endpoint>, i64),
    DeleteEndpoint(String),
    FanOut {
        cursor: String,
        from: i64,
        to: i64,
        callbacks: Vec<Endpoint>,
        deliveries: Vec<NewDelivery>,
        claim: Option<Claim>,
    },
    Requeue(Vec<NewDelivery>, i64),
    Claim {
        now_ms: i64,
        until_ms: i64,
        token: String,
        limit: u32,
        per_endpoint: u32,
    },
    Finish(Box<Finish>, i64),
    Prune(i64),
    TenantSecret(String, SigningSecret),
}

/// What a webhook write answers.
pub(super) enum WebhookAnswer {
    Done,
    Endpoint(Box<Endpoint>),
    Flag(bool),
    Count(u64),
    Deliveries(Vec<Delivery>),
    Finished(Finished),
    Secret(SigningSecret),
    /// A fan-out: `None` when the cursor had moved; what it claimed otherwise.
    FannedOut(Option<Vec<Delivery>>),
}

fn db(op: &'static str) -> impl Fn(sqlx::Error) -> CommandError {
    move |e| CommandError::Db(op, e)
}

/// Applies one webhook write on the writer's connection (inside the command's savepoint).
pub(super) async fn apply(
    conn: &mut SqliteConnection,
    write: &WebhookWrite,
) -> Result<WebhookAnswer, CommandError> {
    match write {
        WebhookWrite::CreateEndpoint(endpoint) => {
            insert_endpoint(conn, endpoint, false).await?;
            Ok(WebhookAnswer::Done)
        }
        WebhookWrite::UpdateEndpoint(endpoint, now_ms) => update_endpoint(conn, endpoint, *now_ms)
            .await
            .map(|e| WebhookAnswer::Endpoint(Box::new(e))),
        WebhookWrite::DeleteEndpoint(id) => {
            let done = sqlx::query("DELETE FROM webhook_endpoints WHERE id = ?")
                .bind(id)
                .execute(&mut *conn)
                .await
                .map_err(db("delete_endpoint"))?;
            Ok(WebhookAnswer::Flag(done.rows_affected() > 0))
        }
        WebhookWrite::FanOut {
            cursor,
            from,
            to,
            callbacks,
            deliveries,
            claim,
        } => fan_out(
            conn,
            cursor,
            *from,
            *to,
            callbacks,
            deliveries,
            claim.as_ref(),
        )
        .await
        .map(WebhookAnswer::FannedOut),
        WebhookWrite::Requeue(deliveries, now_ms) => {
            let mut count = 0;
            for delivery in deliveries {
                count += requeue_one(conn, delivery, *now_ms).await?;
            }
            Ok(WebhookAnswer::Count(count))
        }
        WebhookWrite::Claim {
            now_ms,
            until_ms,
            token,
            limit,
            per_endpoint,
        } => claim(conn, *now_ms, *until_ms, token, *limit, *per_endpoint)
            .await
            .map(WebhookAnswer::Deliveries),
        WebhookWrite::Finish(finish, now_ms) => finish_delivery(conn, finish, *now_ms)
            .await
            .map(WebhookAnswer::Finished),
        WebhookWrite::Prune(before_ms) => prune(conn, *before_ms).await.map(WebhookAnswer::Count),
        WebhookWrite::TenantSecret(tenant, fresh) => {
            sqlx::query(
                "INSERT INTO webhook_tenant_secrets (tenant, secret) VALUES (?, ?)
                 ON CONFLICT (tenant) DO NOTHING",
            )
            .bind(tenant)
            .bind(fresh.expose())
            .execute(&mut *conn)
            .await
            .map_err(db("tenant_secret"))?;
            let text: String =
                sqlx::query_scalar("SELECT secret FROM webhook_tenant_secrets WHERE tenant = ?")
                    .bind(tenant)
                    .fetch_one(&mut *conn)
                    .await
                    .map_err(db("tenant_secret"))?;
            SigningSecret::parse(&text)
                .map(WebhookAnswer::Secret)
                .map_err(|e| {
                    CommandError::Refused(StoreError::Corrupt(format!(
                        "the callback secret of tenant {tenant:?}: {e}"
                    )))
                })
        }
    }
}

async fn insert_endpoint(
    conn: &mut SqliteConnection,
    endpoint: &Endpoint,
    if_missing: bool,
) -> Result<(), CommandError> {
    let columns = encode_endpoint(endpoint);
    const INSERT: &str = concat!(
        "INSERT INTO webhook_endpoints (",
        endpoint_columns!(),
        ") VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    );
    const INSERT_IF_MISSING: &str = concat!(
        "INSERT INTO webhook_endpoints (",
        endpoint_columns!(),
        ") VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
         ON CONFLICT (id) DO NOTHING"
    );
    sqlx::query(if if_missing {
        INSERT_IF_MISSING
    } else {
        INSERT
    })
    .bind(&endpoint.id)
    .bind(&endpoint.tenant)
    .bind(endpoint.kind.as_str())
    .bind(&endpoint.url)
    .bind(&endpoint.description)
    .bind(columns.event_types)
    .bind(&endpoint.filter.model)
    .bind(columns.labels)
    .bind(&endpoint.filter.job_id)
    .bind(endpoint.secret.expose())
    .bind(columns.previous_secret)
    .bind(columns.previous_until_ms)
    .bind(columns.disabled_reason)
    .bind(columns.disabled_ms)
    .bind(endpoint.failing_since_ms)
    .bind(endpoint.create_time_ms)
    .bind(endpoint.update_time_ms)
    .bind(endpoint.version)
    .execute(&mut *conn)
    .await
    .map_err(db("create_endpoint"))?;
    Ok(())
}

async fn update_endpoint(
    conn: &mut SqliteConnection,
    endpoint: &Endpoint,
    now_ms: i64,
) -> Result<Endpoint, CommandError> {
    const OP: &str = "update_endpoint";
    let columns = encode_endpoint(endpoint);
    const SQL: &str = concat!(
        "UPDATE webhook_endpoints
            SET url = ?, description = ?, event_types = ?, model = ?, labels = ?, secret = ?,
                previous_secret = ?, previous_until_ms = ?, disabled_reason = ?,
                disabled_ms = ?,
                failing_since_ms = CASE WHEN disabled_ms IS NOT NULL AND ? IS NULL
                                        THEN NULL ELSE failing_since_ms END,
                update_time_ms = ?, version = version + 1
          WHERE id = ? AND version = ?
         RETURNING ",
        endpoint_columns!()
    );
    let row: Option<SqliteRow> = sqlx::query(SQL)
        .bind(&endpoint.url)
        .bind(&endpoint.description)
        .bind(columns.event_types)
        .bind(&endpoint.filter.model)
        .bind(columns.labels)
        .bind(endpoint.secret.expose())
        .bind(columns.previous_secret)
        .bind(columns.previous_until_ms)
        .bind(&columns.disabled_reason)
        .bind(columns.disabled_ms)
        .bind(columns.disabled_ms)
        .bind(endpoint.update_time_ms)
        .bind(&endpoint.id)
        .bind(endpoint.version)
        .fetch_optional(&mut *conn)
        .await
        .map_err(db(OP))?;
    let Some(row) = row else {
        let exists: Option<i64> =
            sqlx::query_scalar("SELECT 1 FROM webhook_endpoints WHERE id = ?")
                .bind(&endpoint.id)
                .fetch_optional(&mut *conn)
                .await
                .map_err(db(OP))?;
        return Err(CommandError::Refused(match exists {
            Some(_) => StoreError::VersionConflict {
                id: endpoint.id.clone(),
                expected: endpoint.version,
            },
            None => StoreError::NotFound(endpoint.id.clone()),
        }));
    };
    let stored = endpoint_from_row(&row).map_err(CommandError::Refused)?;
    if let Some(reason) = &columns.disabled_reason {
        fail_pending(conn, &endpoint.id, reason, now_ms).await?;
    }
    Ok(stored)
}

/// Fails every pending delivery of a disabled endpoint (in-flight ones lose their lease).
async fn fail_pending(
    conn: &mut SqliteConnection,
    endpoint_id: &str,
    reason: &str,
    now_ms: i64,
) -> Result<(), CommandError> {
    sqlx::query(
        "UPDATE webhook_deliveries
            SET state = 'failed', lease_token = NULL, lease_until_ms = 0, last_error = ?,
                update_time_ms = ?
          WHERE endpoint_id = ? AND state = 'pending'",
    )
    .bind(clip(&format!("the endpoint was disabled: {reason}")))
    .bind(now_ms)
    .bind(endpoint_id)
    .execute(&mut *conn)
    .await
    .map_err(db("disable_endpoint"))?;
    Ok(())
}

async fn fan_out(
    conn: &mut SqliteConnection,
    cursor: &str,
    from: i64,
    to: i64,
    callbacks: &[Endpoint],
    deliveries: &[NewDelivery],
    claim: Option<&Claim>,
) -> Result<Option<Vec<Delivery>>, CommandError> {
    const OP: &str = "fan_out";
    let at: Option<i64> = sqlx::query_scalar("SELECT sequence FROM cursors WHERE name = ?")
        .bind(cursor)
        .fetch_optional(&mut *conn)
        .await
        .map_err(db(OP))?;
    if at.unwrap_or(0) != from {
        return Ok(None);
    }
    for callback in callbacks {
        insert_endpoint(conn, callback, true).await?;
    }
    let leases = match claim {
        Some(claim) if !deliveries.is_empty() => {
            let busy: Vec<(String, i64)> = sqlx::query_as(
                "SELECT endpoint_id, COUNT(*) FROM webhook_deliveries
                  WHERE state = 'pending' AND lease_until_ms >= ? GROUP BY endpoint_id",
            )
            .bind(claim.now_ms)
            .fetch_all(&mut *conn)
            .await
            .map_err(db(OP))?;
            fan_out_leases(deliveries, &busy.into_iter().collect(), claim)
        }
        _ => vec![false; deliveries.len()],
    };
    let mut leased = Vec::new();
    // An endpoint deleted since the fan-out read it gets nothing (and fails nothing). One
    // statement per chunk: each statement is a hand-off to sqlx's connection thread.
    for (chunk, chunk_leases) in deliveries
        .chunks(FAN_OUT_CHUNK)
        .zip(leases.chunks(FAN_OUT_CHUNK))
    {
        let mut sql = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
            "INSERT INTO webhook_deliveries (id, endpoint_id, sequence, event_type, job_id,
                 event_time_ms, body, state, attempts, next_attempt_ms, lease_token,
                 lease_until_ms, create_time_ms, update_time_ms)
             SELECT v.column1, v.column2, v.column3, v.column4, v.column5, v.column6, v.column7,
                    'pending', 0, v.column8, v.column9, v.column10, v.column8, v.column8
               FROM (VALUES ",
        );
        let mut rows = sql.separated(", ");
        for (d, lease) in chunk.iter().zip(chunk_leases) {
            let (token, until) = match (lease, claim) {
                (true, Some(c)) => (Some(c.token.clone()), c.until_ms),
                _ => (None, 0),
            };
            rows.push("(");
            rows.push_bind_unseparated(d.id.clone());
            rows.push_unseparated(", ");
            rows.push_bind_unseparated(d.endpoint_id.clone());
            rows.push_unseparated(", ");
            rows.push_bind_unseparated(d.sequence);
            rows.push_unseparated(", ");
            rows.push_bind_unseparated(d.event_type.clone());
            rows.push_unseparated(", ");
            rows.push_bind_unseparated(d.job_id.clone());
            rows.push_unseparated(", ");
            rows.push_bind_unseparated(d.event_time_ms);
            rows.push_unseparated(", ");
            rows.push_bind_unseparated(d.body.clone());
            rows.push_unseparated(", ");
            rows.push_bind_unseparated(d.due_ms);
            rows.push_unseparated(", ");
            rows.push_bind_unseparated(token);
            rows.push_unseparated(", ");
            rows.push_bind_unseparated(until);
            rows.push_unseparated(")");
        }
        sql.push(
            ") AS v
              WHERE EXISTS (SELECT 1 FROM webhook_endpoints e WHERE e.id = v.column2)
             ON CONFLICT (id) DO NOTHING
             RETURNING id",
        );
        let inserted: Vec<String> = sql
            .build_query_scalar()
            .fetch_all(&mut *conn)
            .await
            .map_err(db(OP))?;
        let inserted: std::collections::HashSet<String> = inserted.into_iter().collect();
        leased.extend(
            chunk
                .iter()
                .zip(chunk_leases)
                .filter(|(d, lease)| **lease && inserted.contains(&d.id))
                .map(|(d, _)| fanned_out(d)),
        );
    }
    sqlx::query(
        "INSERT INTO cursors (name, sequence) VALUES (?, ?)
         ON CONFLICT (name) DO UPDATE SET sequence = excluded.sequence",
    )
    .bind(cursor)
    .bind(to)
    .execute(&mut *conn)
    .await
    .map_err(db(OP))?;
    Ok(Some(leased))
}

async fn requeue_one(
    conn: &mut SqliteConnection,
    delivery: &NewDelivery,
    now_ms: i64,
) -> Result<u64, CommandError> {
    let done = sqlx::query(
        "INSERT INTO webhook_deliveries (id, endpoint_id, sequence, event_type, job_id,
             event_time_ms, body, state, attempts, next_attempt_ms, lease_token, lease_until_ms,
             create_time_ms, update_time_ms)
         SELECT ?, ?, ?, ?, ?, ?, ?, 'pending', 0, ?, NULL, 0, ?, ?
          WHERE EXISTS (SELECT 1 FROM webhook_endpoints WHERE id = ?)
         ON CONFLICT (id) DO UPDATE
            SET state = 'pending', attempts = 0, body = excluded.body,
                next_attempt_ms = excluded.next_attempt_ms, update_time_ms = excluded.update_time_ms",
    )
    .bind(&delivery.id)
    .bind(&delivery.endpoint_id)
    .bind(delivery.sequence)
    .bind(&delivery.event_type)
    .bind(&delivery.job_id)
    .bind(delivery.event_time_ms)
    .bind(&delivery.body)
    .bind(delivery.due_ms)
    .bind(now_ms)
    .bind(now_ms)
    .bind(&delivery.endpoint_id)
    .execute(&mut *conn)
    .await
    .map_err(db("requeue"))?;
    Ok(done.rows_affected())
}

async fn claim(
    conn: &mut SqliteConnection,
    now_ms: i64,
    until_ms: i64,
    token: &str,
    limit: u32,
    per_endpoint: u32,
) -> Result<Vec<Delivery>, CommandError> {
    // Due deliveries ranked within their endpoint; an endpoint gets at most what its bound
    // leaves after the deliveries already leased (by anyone).
    const SQL: &str = concat!(
        "UPDATE webhook_deliveries SET lease_token = ?1, lease_until_ms = ?2
          WHERE id IN (
            SELECT id FROM (
              SELECT d.id, d.endpoint_id, d.next_attempt_ms,
                     ROW_NUMBER() OVER (PARTITION BY d.endpoint_id
                                        ORDER BY d.next_attempt_ms, d.id) AS rank
                FROM webhook_deliveries d JOIN webhook_endpoints e ON e.id = d.endpoint_id
               WHERE d.state = 'pending' AND d.next_attempt_ms <= ?3 AND d.lease_until_ms < ?3
                 AND e.disabled_ms IS NULL
            ) c
             WHERE c.rank <= ?4 - (SELECT COUNT(*) FROM webhook_deliveries f
                                    WHERE f.endpoint_id = c.endpoint_id AND f.state = 'pending'
                                      AND f.lease_until_ms >= ?3)
             ORDER BY c.next_attempt_ms, c.id
             LIMIT ?5)
         RETURNING ",
        delivery_columns!()
    );
    let rows: Vec<SqliteRow> = sqlx::query(SQL)
        .bind(token)
        .bind(until_ms)
        .bind(now_ms)
        .bind(i64::from(per_endpoint))
        .bind(i64::from(limit))
        .fetch_all(&mut *conn)
        .await
        .map_err(db("claim_deliveries"))?;
    let mut claimed = rows
        .iter()
        .map(delivery_from_row)
        .collect::<Result<Vec<_>, _>>()
        .map_err(CommandError::Refused)?;
    claimed.sort_by(|a, b| (a.next_attempt_ms, &a.id).cmp(&(b.next_attempt_ms, &b.id)));
    Ok(claimed)
}

async fn finish_delivery(
    conn: &mut SqliteConnection,
    finish: &Finish,
    now_ms: i64,
) -> Result<Finished, CommandError> {
    const OP: &str = "finish_delivery";
    let (state, next_ms) = match finish.next {
        Next::Delivered => ("delivered", 0),
        Next::Retry(at) => ("pending", at),
        Next::Failed => ("failed", 0),
    };
    let attempt = &finish.attempt;
    let row: Option<(String, i64)> = sqlx::query_as(
        "UPDATE webhook_deliveries
            SET state = ?, attempts = attempts + 1, next_attempt_ms = ?, lease_token = NULL,
                lease_until_ms = 0, last_status = ?, last_error = ?, update_time_ms = ?,
                body = CASE WHEN ? = 'delivered' THEN NULL ELSE body END
          WHERE id = ? AND lease_token = ? AND state = 'pending'
         RETURNING endpoint_id, sequence",
    )
    .bind(state)
    .bind(next_ms)
    .bind(attempt.status.map(i64::from))
    .bind(attempt.error.as_deref().map(clip))
    .bind(now_ms)
    .bind(state)
    .bind(&finish.delivery_id)
    .bind(&finish.lease_token)
    .fetch_optional(&mut *conn)
    .await
    .map_err(db(OP))?;
    let Some((endpoint_id, _)) = row else {
        return Ok(Finished::LeaseLost);
    };
    sqlx::query(
        "INSERT INTO webhook_attempts (delivery_id, attempt, time_ms, status, error, duration_ms)
         SELECT ?1, COALESCE(MAX(attempt), 0) + 1, ?2, ?3, ?4, ?5
           FROM webhook_attempts WHERE delivery_id = ?1",
    )
    .bind(&finish.delivery_id)
    .bind(attempt.time_ms)
    .bind(attempt.status.map(i64::from))
    .bind(attempt.error.as_deref().map(clip))
    .bind(attempt.duration_ms)
    .execute(&mut *conn)
    .await
    .map_err(db(OP))?;
    let disable = match &finish.health {
        EndpointHealth::Healthy => {
            sqlx::query(
                "UPDATE webhook_endpoints SET failing_since_ms = NULL
                  WHERE id = ? AND failing_since_ms IS NOT NULL",
            )
            .bind(&endpoint_id)
            .execute(&mut *conn)
            .await
            .map_err(db(OP))?;
            None
        }
        EndpointHealth::Failing {
            disable_if_failing_since,
        } => {
            let since: Option<(Option<i64>, Option<i64>)> = sqlx::query_as(
                "UPDATE webhook_endpoints SET failing_since_ms = COALESCE(failing_since_ms, ?)
                  WHERE id = ? RETURNING failing_since_ms, disabled_ms",
            )
            .bind(attempt.time_ms)
            .bind(&endpoint_id)
            .fetch_optional(&mut *conn)
            .await
            .map_err(db(OP))?;
            match since {
                Some((Some(since), None)) if since <= *disable_if_failing_since => Some(
                    crate::store::webhooks::failing_reason(since, attempt.time_ms),
                ),
                _ => None,
            }
        }
        EndpointHealth::Gone(reason) => Some(reason.clone()),
    };
    if let Some(reason) = &disable {
        let changed = sqlx::query(
            "UPDATE webhook_endpoints
                SET disabled_reason = ?, disabled_ms = ?, update_time_ms = ?, version = version + 1
              WHERE id = ? AND disabled_ms IS NULL",
        )
        .bind(reason)
        .bind(now_ms)
        .bind(now_ms)
        .bind(&endpoint_id)
        .execute(&mut *conn)
        .await
        .map_err(db(OP))?;
        if changed.rows_affected() == 0 {
            return Ok(Finished::Recorded { disabled: None });
        }
        fail_pending(conn, &endpoint_id, reason, now_ms).await?;
    }
    Ok(Finished::Recorded { disabled: disable })
}

async fn prune(conn: &mut SqliteConnection, before_ms: i64) -> Result<u64, CommandError> {
    const OP: &str = "prune_deliveries";
    let done = sqlx::query(
        "DELETE FROM webhook_deliveries WHERE id IN (
            SELECT id FROM webhook_deliveries
             WHERE state <> 'pending' AND update_time_ms < ? LIMIT ?)",
    )
    .bind(before_ms)
    .bind(PRUNE_STEP)
    .execute(&mut *conn)
    .await
    .map_err(db(OP))?;
    sqlx::query(
        "DELETE FROM webhook_endpoints
          WHERE kind = 'callback' AND create_time_ms < ?
            AND NOT EXISTS (SELECT 1 FROM webhook_deliveries d
                             WHERE d.endpoint_id = webhook_endpoints.id)",
    )
    .bind(before_ms)
    .execute(&mut *conn)
    .await
    .map_err(db(OP))?;
    Ok(done.rows_affected())
}

impl SqliteStore {
    async fn webhook_write(
        &self,
        op: &'static str,
        write: WebhookWrite,
    ) -> Result<WebhookAnswer, StoreError> {
        self.write(op, |reply| Write::Webhook { write, reply })
            .await
    }
}

fn unexpected(op: &str) -> StoreError {
    StoreError::Unavailable(format!("{op}: the writer answered another kind of result"))
}

async fn attempts_of(
    reads: &sqlx::SqlitePool,
    deliveries: Vec<Delivery>,
) -> Result<Vec<DeliveryRecord>, StoreError> {
    if deliveries.is_empty() {
        return Ok(Vec::new());
    }
    let mut sql = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
        "SELECT delivery_id, attempt, time_ms, status, error, duration_ms
           FROM webhook_attempts WHERE delivery_id IN (",
    );
    let mut ids = sql.separated(", ");
    for delivery in &deliveries {
        ids.push_bind(delivery.id.clone());
    }
    sql.push(") ORDER BY delivery_id, attempt DESC");
    let rows: Vec<AttemptRow> = sql
        .build_query_as()
        .fetch_all(reads)
        .await
        .map_err(|e| db_error("list_deliveries", e))?;
    Ok(with_attempts(deliveries, rows))
}

#[async_trait]
impl WebhookStore for SqliteStore {
    async fn create_endpoint(&self, endpoint: &Endpoint) -> Result<(), StoreError> {
        self.webhook_write(
            "create_endpoint",
            WebhookWrite::CreateEndpoint(Box::new(endpoint.clone())),
        )
        .await
        .map(|_| ())
    }

    async fn endpoint(&self, id: &str) -> Result<Option<Endpoint>, StoreError> {
        let row: Option<SqliteRow> = sqlx::query(concat!(
            "SELECT ",
            endpoint_columns!(),
            " FROM webhook_endpoints WHERE id = ?"
        ))
        .bind(id)
        .fetch_optional(&self.reads)
        .await
        .map_err(|e| db_error("endpoint", e))?;
        row.as_ref().map(endpoint_from_row).transpose()
    }

    async fn list_endpoints(
        &self,
        tenant: &str,
        after_id: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Endpoint>, StoreError> {
        let rows: Vec<SqliteRow> = sqlx::query(concat!(
            "SELECT ",
            endpoint_columns!(),
            " FROM webhook_endpoints
              WHERE tenant = ? AND kind = 'endpoint' AND id > ? ORDER BY id LIMIT ?"
        ))
        .bind(tenant)
        .bind(after_id.unwrap_or(""))
        .bind(i64::from(limit))
        .fetch_all(&self.reads)
        .await
        .map_err(|e| db_error("list_endpoints", e))?;
        rows.iter().map(endpoint_from_row).collect()
    }

    async fn active_endpoints(&self, limit: u32) -> Result<Vec<Endpoint>, StoreError> {
        let rows: Vec<SqliteRow> = sqlx::query(concat!(
            "SELECT ",
            endpoint_columns!(),
            " FROM webhook_endpoints
              WHERE disabled_ms IS NULL AND kind = 'endpoint' ORDER BY id LIMIT ?"
        ))
        .bind(i64::from(limit))
        .fetch_all(&self.reads)
        .await
        .map_err(|e| db_error("active_endpoints", e))?;
        rows.iter().map(endpoint_from_row).collect()
    }

    async fn update_endpoint(&self, endpoint: &Endpoint) -> Result<Endpoint, StoreError> {
        match self
            .webhook_write(
                "update_endpoint",
                WebhookWrite::UpdateEndpoint(Box::new(endpoint.clone()), endpoint.update_time_ms),
            )
            .await?
        {
            WebhookAnswer::Endpoint(stored) => Ok(*stored),
            _ => Err(unexpected("update_endpoint")),
        }
    }

    async fn delete_endpoint(&self, id: &str) -> Result<bool, StoreError> {
        match self
            .webhook_write(
                "delete_endpoint",
                WebhookWrite::DeleteEndpoint(id.to_owned()),
            )
            .await?
        {
            WebhookAnswer::Flag(deleted) => Ok(deleted),
            _ => Err(unexpected("delete_endpoint")),
        }
    }

    async fn fan_out(
        &self,
        cursor: &str,
        from: i64,
        to: i64,
        callbacks: &[Endpoint],
        deliveries: &[NewDelivery],
    ) -> Result<bool, StoreError> {
        match self
            .webhook_write(
                "fan_out",
                WebhookWrite::FanOut {
                    cursor: cursor.to_owned(),
                    from,
                    to,
                    callbacks: callbacks.to_vec(),
                    deliveries: deliveries.to_vec(),
                    claim: None,
                },
            )
            .await?
        {
            WebhookAnswer::FannedOut(moved) => Ok(moved.is_some()),
            _ => Err(unexpected("fan_out")),
        }
    }

    async fn fan_out_claiming(
        &self,
        cursor: &str,
        from: i64,
        to: i64,
        callbacks: &[Endpoint],
        deliveries: &[NewDelivery],
        claim: &Claim,
    ) -> Result<Option<Vec<Delivery>>, StoreError> {
        match self
            .webhook_write(
                "fan_out",
                WebhookWrite::FanOut {
                    cursor: cursor.to_owned(),
                    from,
                    to,
                    callbacks: callbacks.to_vec(),
                    deliveries: deliveries.to_vec(),
                    claim: Some(claim.clone()),
                },
            )
            .await?
        {
            WebhookAnswer::FannedOut(claimed) => Ok(claimed),
            _ => Err(unexpected("fan_out")),
        }
    }

    async fn requeue(&self, deliveries: &[NewDelivery], now_ms: i64) -> Result<u64, StoreError> {
        match self
            .webhook_write(
                "requeue",
                WebhookWrite::Requeue(deliveries.to_vec(), now_ms),
            )
            .await?
        {
            WebhookAnswer::Count(n) => Ok(n),
            _ => Err(unexpected("requeue")),
        }
    }

    async fn claim_deliveries(
        &self,
        now_ms: i64,
        until_ms: i64,
        token: &str,
        limit: u32,
        per_endpoint: u32,
    ) -> Result<Vec<Delivery>, StoreError> {
        if limit == 0 || per_endpoint == 0 {
            return Ok(Vec::new());
        }
        match self
            .webhook_write(
                "claim_deliveries",
                WebhookWrite::Claim {
                    now_ms,
                    until_ms,
                    token: token.to_owned(),
                    limit,
                    per_endpoint,
                },
            )
            .await?
        {
            WebhookAnswer::Deliveries(claimed) => Ok(claimed),
            _ => Err(unexpected("claim_deliveries")),
        }
    }

    async fn finish_delivery(&self, finish: &Finish, now_ms: i64) -> Result<Finished, StoreError> {
        match self
            .webhook_write(
                "finish_delivery",
                WebhookWrite::Finish(Box::new(finish.clone()), now_ms),
            )
            .await?
        {
            WebhookAnswer::Finished(finished) => Ok(finished),
            _ => Err(unexpected("finish_delivery")),
        }
    }

    async fn delivery(&self, id: &str) -> Result<Option<DeliveryRecord>, StoreError> {
        let row: Option<SqliteRow> = sqlx::query(concat!(
            "SELECT ",
            delivery_columns!(),
            " FROM webhook_deliveries WHERE id = ?"
        ))
        .bind(id)
        .fetch_optional(&self.reads)
        .await
        .map_err(|e| db_error("delivery", e))?;
        let Some(delivery) = row.as_ref().map(delivery_from_row).transpose()? else {
            return Ok(None);
        };
        Ok(attempts_of(&self.reads, vec![delivery]).await?.pop())
    }

    async fn list_deliveries(
        &self,
        endpoint_id: &str,
        before: Option<(i64, String)>,
        limit: u32,
    ) -> Result<Vec<DeliveryRecord>, StoreError> {
        let (before_ms, before_id) = before.unwrap_or((i64::MAX, String::new()));
        let rows: Vec<SqliteRow> = sqlx::query(concat!(
            "SELECT ",
            delivery_columns!(),
            " FROM webhook_deliveries
              WHERE endpoint_id = ?
                AND (create_time_ms < ? OR (create_time_ms = ? AND (? = '' OR id < ?)))
              ORDER BY create_time_ms DESC, id DESC LIMIT ?"
        ))
        .bind(endpoint_id)
        .bind(before_ms)
        .bind(before_ms)
        .bind(&before_id)
        .bind(&before_id)
        .bind(i64::from(limit))
        .fetch_all(&self.reads)
        .await
        .map_err(|e| db_error("list_deliveries", e))?;
        let deliveries = rows
            .iter()
            .map(delivery_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        attempts_of(&self.reads, deliveries).await
    }

    async fn backlog(&self, now_ms: i64) -> Result<Backlog, StoreError> {
        let (pending, oldest): (i64, Option<i64>) = sqlx::query_as(
            "SELECT COUNT(*), MIN(CASE WHEN next_attempt_ms <= ? THEN next_attempt_ms END)
               FROM webhook_deliveries WHERE state = 'pending'",
        )
        .bind(now_ms)
        .fetch_one(&self.reads)
        .await
        .map_err(|e| db_error("backlog", e))?;
        let disabled: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM webhook_endpoints WHERE disabled_ms IS NOT NULL",
        )
        .fetch_one(&self.reads)
        .await
        .map_err(|e| db_error("backlog", e))?;
        Ok(Backlog {
            pending: u64::try_from(pending).unwrap_or(0),
            oldest_due_ms: oldest,
            disabled_endpoints: u64::try_from(disabled).unwrap_or(0),
        })
    }

    async fn next_delivery_due_ms(&self) -> Result<Option<i64>, StoreError> {
        sqlx::query_scalar(
            "SELECT MIN(MAX(next_attempt_ms, lease_until_ms + 1))
               FROM webhook_deliveries WHERE state = 'pending'",
        )
        .fetch_one(&self.reads)
        .await
        .map_err(|e| db_error("next_delivery_due_ms", e))
    }

    async fn prune_deliveries(&self, before_ms: i64) -> Result<u64, StoreError> {
        let mut total = 0;
        loop {
            match self
                .webhook_write("prune_deliveries", WebhookWrite::Prune(before_ms))
                .await?
            {
                WebhookAnswer::Count(n) => {
                    total += n;
                    if n < PRUNE_STEP as u64 {
                        return Ok(total);
                    }
                }
                _ => return Err(unexpected("prune_deliveries")),
            }
        }
    }

    async fn tenant_secret(&self, tenant: &str) -> Result<SigningSecret, StoreError> {
        let stored: Option<String> =
            sqlx::query_scalar("SELECT secret FROM webhook_tenant_secrets WHERE tenant = ?")
                .bind(tenant)
                .fetch_optional(&self.reads)
                .await
                .map_err(|e| db_error("tenant_secret", e))?;
        if let Some(text) = stored {
            return SigningSecret::parse(&text).map_err(|e| {
                StoreError::Corrupt(format!("the callback secret of tenant {tenant:?}: {e}"))
            });
        }
        match self
            .webhook_write(
                "tenant_secret",
                WebhookWrite::TenantSecret(tenant.to_owned(), SigningSecret::generate()),
            )
            .await?
        {
            WebhookAnswer::Secret(secret) => Ok(secret),
            _ => Err(unexpected("tenant_secret")),
        }
    }
}
