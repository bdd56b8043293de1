//! [`WebhookStore`] on PostgreSQL: short transactions on the pool (no event is appended, so
//! nothing goes through the writer), each under the store's deadline.
//!
//! Locks are always taken endpoint first, then its deliveries: a claim locks the endpoints it
//! serves (`FOR NO KEY UPDATE SKIP LOCKED`, so concurrent claims on other instances take other
//! endpoints instead of waiting, and an endpoint's in-flight bound holds across instances);
//! recording an attempt locks its endpoint before its delivery. Inserting a delivery only
//! takes the foreign key's `KEY SHARE` on its endpoint, which neither of those blocks.

use async_trait::async_trait;
use sqlx::postgres::PgRow;
use sqlx::{Postgres, Transaction};

use super::PostgresStore;
use crate::store::StoreError;
use crate::store::webhooks::{
    AttemptRow, Backlog, Claim, Delivery, DeliveryRecord, Endpoint, EndpointHealth, Finish,
    Finished, NewDelivery, Next, WebhookStore, clip, delivery_columns, delivery_from_row,
    encode_endpoint, endpoint_columns, endpoint_from_row, failing_reason, fan_out_leases,
    fanned_out, with_attempts,
};
use crate::webhooks::signing::SigningSecret;

/// Rows one pruning statement deletes at most.
const PRUNE_STEP: i64 = 5_000;

/// Most endpoints one claim serves.
const CLAIM_ENDPOINTS: i64 = 1_000;

type Tx = Transaction<'static, Postgres>;

async fn insert_endpoint(
    tx: &mut Tx,
    endpoint: &Endpoint,
    if_missing: bool,
) -> Result<(), sqlx::Error> {
    const INSERT: &str = concat!(
        "INSERT INTO webhook_endpoints (",
        endpoint_columns!(),
        ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18)"
    );
    const INSERT_IF_MISSING: &str = concat!(
        "INSERT INTO webhook_endpoints (",
        endpoint_columns!(),
        ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18)
         ON CONFLICT (id) DO NOTHING"
    );
    let columns = encode_endpoint(endpoint);
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
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Fails every pending delivery of a disabled endpoint (in-flight ones lose their lease).
async fn fail_pending(
    tx: &mut Tx,
    endpoint_id: &str,
    reason: &str,
    now_ms: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE webhook_deliveries
            SET state = 'failed', lease_token = NULL, lease_until_ms = 0, last_error = $1,
                update_time_ms = $2
          WHERE endpoint_id = $3 AND state = 'pending'",
    )
    .bind(clip(&format!("the endpoint was disabled: {reason}")))
    .bind(now_ms)
    .bind(endpoint_id)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The arrays of an `UNNEST` insert of deliveries.
#[derive(Default)]
struct DeliveryArrays {
    id: Vec<String>,
    endpoint_id: Vec<String>,
    sequence: Vec<i64>,
    event_type: Vec<String>,
    job_id: Vec<String>,
    event_time_ms: Vec<i64>,
    body: Vec<String>,
    due_ms: Vec<i64>,
}

impl DeliveryArrays {
    fn of(deliveries: &[NewDelivery]) -> Self {
        let mut arrays = Self::default();
        for d in deliveries {
            arrays.id.push(d.id.clone());
            arrays.endpoint_id.push(d.endpoint_id.clone());
            arrays.sequence.push(d.sequence);
            arrays.event_type.push(d.event_type.clone());
            arrays.job_id.push(d.job_id.clone());
            arrays.event_time_ms.push(d.event_time_ms);
            arrays.body.push(d.body.clone());
            arrays.due_ms.push(d.due_ms);
        }
        arrays
    }
}

/// Inserts pending deliveries (an endpoint deleted meanwhile gets nothing); with `requeue`, a
/// delivery already there becomes pending again with the new body and due time.
async fn insert_deliveries(
    tx: &mut Tx,
    deliveries: &[NewDelivery],
    requeue: Option<i64>,
) -> Result<u64, sqlx::Error> {
    const INSERT: &str = "INSERT INTO webhook_deliveries (id, endpoint_id, sequence, event_type,
            job_id, event_time_ms, body, state, attempts, next_attempt_ms, lease_token,
            lease_until_ms, create_time_ms, update_time_ms)
        SELECT d.id, d.endpoint_id, d.sequence, d.event_type, d.job_id, d.event_time_ms, d.body,
               'pending', 0, d.due_ms, NULL, 0, COALESCE($9, d.due_ms), COALESCE($9, d.due_ms)
          FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::text[], $5::text[], $6::bigint[],
                      $7::text[], $8::bigint[])
               AS d(id, endpoint_id, sequence, event_type, job_id, event_time_ms, body, due_ms)
         WHERE EXISTS (SELECT 1 FROM webhook_endpoints e WHERE e.id = d.endpoint_id)
        ON CONFLICT (id) DO NOTHING";
    const REQUEUE: &str = "INSERT INTO webhook_deliveries (id, endpoint_id, sequence, event_type,
            job_id, event_time_ms, body, state, attempts, next_attempt_ms, lease_token,
            lease_until_ms, create_time_ms, update_time_ms)
        SELECT d.id, d.endpoint_id, d.sequence, d.event_type, d.job_id, d.event_time_ms, d.body,
               'pending', 0, d.due_ms, NULL, 0, COALESCE($9, d.due_ms), COALESCE($9, d.due_ms)
          FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::text[], $5::text[], $6::bigint[],
                      $7::text[], $8::bigint[])
               AS d(id, endpoint_id, sequence, event_type, job_id, event_time_ms, body, due_ms)
         WHERE EXISTS (SELECT 1 FROM webhook_endpoints e WHERE e.id = d.endpoint_id)
        ON CONFLICT (id) DO UPDATE
           SET state = 'pending', attempts = 0, body = excluded.body,
               next_attempt_ms = excluded.next_attempt_ms, update_time_ms = excluded.update_time_ms";
    if deliveries.is_empty() {
        return Ok(0);
    }
    let a = DeliveryArrays::of(deliveries);
    let done = sqlx::query(if requeue.is_some() { REQUEUE } else { INSERT })
        .bind(a.id)
        .bind(a.endpoint_id)
        .bind(a.sequence)
        .bind(a.event_type)
        .bind(a.job_id)
        .bind(a.event_time_ms)
        .bind(a.body)
        .bind(a.due_ms)
        .bind(requeue)
        .execute(&mut **tx)
        .await?;
    Ok(done.rows_affected())
}

/// What a transaction decided: a result, or a refusal after which it is rolled back.
type Decided<T> = Result<T, StoreError>;

async fn update_endpoint_in(
    tx: &mut Tx,
    endpoint: &Endpoint,
) -> Result<Decided<Endpoint>, sqlx::Error> {
    const SQL: &str = concat!(
        "UPDATE webhook_endpoints
            SET url = $1, description = $2, event_types = $3, model = $4, labels = $5,
                secret = $6, previous_secret = $7, previous_until_ms = $8,
                disabled_reason = $9, disabled_ms = $10,
                failing_since_ms = CASE WHEN disabled_ms IS NOT NULL AND $10::bigint IS NULL
                                        THEN NULL ELSE failing_since_ms END,
                update_time_ms = $11, version = version + 1
          WHERE id = $12 AND version = $13
         RETURNING ",
        endpoint_columns!()
    );
    let columns = encode_endpoint(endpoint);
    let row: Option<PgRow> = sqlx::query(SQL)
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
        .bind(endpoint.update_time_ms)
        .bind(&endpoint.id)
        .bind(endpoint.version)
        .fetch_optional(&mut **tx)
        .await?;
    let Some(row) = row else {
        let exists: Option<i32> =
            sqlx::query_scalar("SELECT 1 FROM webhook_endpoints WHERE id = $1")
                .bind(&endpoint.id)
                .fetch_optional(&mut **tx)
                .await?;
        return Ok(Err(match exists {
            Some(_) => StoreError::VersionConflict {
                id: endpoint.id.clone(),
                expected: endpoint.version,
            },
            None => StoreError::NotFound(endpoint.id.clone()),
        }));
    };
    let stored = match endpoint_from_row(&row) {
        Ok(stored) => stored,
        Err(e) => return Ok(Err(e)),
    };
    if let Some(reason) = &columns.disabled_reason {
        fail_pending(tx, &endpoint.id, reason, endpoint.update_time_ms).await?;
    }
    Ok(Ok(stored))
}

async fn fan_out_in(
    tx: &mut Tx,
    cursor: &str,
    from: i64,
    to: i64,
    callbacks: &[Endpoint],
    deliveries: &[NewDelivery],
) -> Result<bool, sqlx::Error> {
    if from == 0 {
        sqlx::query(
            "INSERT INTO cursors (name, sequence) VALUES ($1, 0) ON CONFLICT (name) DO NOTHING",
        )
        .bind(cursor)
        .execute(&mut **tx)
        .await?;
    }
    // The compare-and-set: a fan-out that started from the same position waits here for this
    // one's commit, then finds the cursor moved and writes nothing.
    let moved = sqlx::query("UPDATE cursors SET sequence = $1 WHERE name = $2 AND sequence = $3")
        .bind(to)
        .bind(cursor)
        .bind(from)
        .execute(&mut **tx)
        .await?;
    if moved.rows_affected() == 0 {
        return Ok(false);
    }
    for callback in callbacks {
        insert_endpoint(tx, callback, true).await?;
    }
    insert_deliveries(tx, deliveries, None).await?;
    Ok(true)
}

/// A fan-out that leases what it writes to `claim`, as far as the bounds allow: the endpoints'
/// rows are locked first (as a claim does), so the count of leases held is exact across
/// instances. `None` when the cursor had moved.
async fn fan_out_leasing(
    tx: &mut Tx,
    cursor: &str,
    from: i64,
    to: i64,
    callbacks: &[Endpoint],
    deliveries: &[NewDelivery],
    claim: &Claim,
) -> Result<Option<Vec<Delivery>>, sqlx::Error> {
    if !fan_out_in(tx, cursor, from, to, callbacks, &[]).await? {
        return Ok(None);
    }
    if deliveries.is_empty() {
        return Ok(Some(Vec::new()));
    }
    let mut endpoints: Vec<String> = deliveries.iter().map(|d| d.endpoint_id.clone()).collect();
    endpoints.sort();
    endpoints.dedup();
    sqlx::query(
        "SELECT id FROM webhook_endpoints WHERE id = ANY($1) ORDER BY id FOR NO KEY UPDATE",
    )
    .bind(&endpoints)
    .execute(&mut **tx)
    .await?;
    let busy: Vec<(String, i64)> = sqlx::query_as(
        "SELECT endpoint_id, COUNT(*) FROM webhook_deliveries
          WHERE endpoint_id = ANY($1) AND state = 'pending' AND lease_until_ms >= $2
          GROUP BY endpoint_id",
    )
    .bind(&endpoints)
    .bind(claim.now_ms)
    .fetch_all(&mut **tx)
    .await?;
    let leases = fan_out_leases(deliveries, &busy.into_iter().collect(), claim);
    let a = DeliveryArrays::of(deliveries);
    let tokens: Vec<Option<String>> = leases
        .iter()
        .map(|lease| lease.then(|| claim.token.clone()))
        .collect();
    let untils: Vec<i64> = leases
        .iter()
        .map(|lease| if *lease { claim.until_ms } else { 0 })
        .collect();
    let inserted: Vec<String> = sqlx::query_scalar(
        "INSERT INTO webhook_deliveries (id, endpoint_id, sequence, event_type,
            job_id, event_time_ms, body, state, attempts, next_attempt_ms, lease_token,
            lease_until_ms, create_time_ms, update_time_ms)
        SELECT d.id, d.endpoint_id, d.sequence, d.event_type, d.job_id, d.event_time_ms, d.body,
               'pending', 0, d.due_ms, d.token, d.until_ms, d.due_ms, d.due_ms
          FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::text[], $5::text[], $6::bigint[],
                      $7::text[], $8::bigint[], $9::text[], $10::bigint[])
               AS d(id, endpoint_id, sequence, event_type, job_id, event_time_ms, body, due_ms,
                    token, until_ms)
         WHERE EXISTS (SELECT 1 FROM webhook_endpoints e WHERE e.id = d.endpoint_id)
        ON CONFLICT (id) DO NOTHING
        RETURNING id",
    )
    .bind(a.id)
    .bind(a.endpoint_id)
    .bind(a.sequence)
    .bind(a.event_type)
    .bind(a.job_id)
    .bind(a.event_time_ms)
    .bind(a.body)
    .bind(a.due_ms)
    .bind(tokens)
    .bind(untils)
    .fetch_all(&mut **tx)
    .await?;
    let inserted: std::collections::HashSet<String> = inserted.into_iter().collect();
    Ok(Some(
        deliveries
            .iter()
            .zip(&leases)
            .filter(|(d, lease)| **lease && inserted.contains(&d.id))
            .map(|(d, _)| fanned_out(d))
            .collect(),
    ))
}

async fn claim_in(
    tx: &mut Tx,
    now_ms: i64,
    until_ms: i64,
    token: &str,
    limit: u32,
    per_endpoint: u32,
) -> Result<Vec<PgRow>, sqlx::Error> {
    let endpoints: Vec<String> = sqlx::query_scalar(
        "SELECT e.id FROM webhook_endpoints e
          WHERE e.disabled_ms IS NULL
            AND EXISTS (SELECT 1 FROM webhook_deliveries d
                         WHERE d.endpoint_id = e.id AND d.state = 'pending'
                           AND d.next_attempt_ms <= $1 AND d.lease_until_ms < $1)
          ORDER BY e.id LIMIT $2
          FOR NO KEY UPDATE OF e SKIP LOCKED",
    )
    .bind(now_ms)
    .bind(CLAIM_ENDPOINTS)
    .fetch_all(&mut **tx)
    .await?;
    if endpoints.is_empty() {
        return Ok(Vec::new());
    }
    const SQL: &str = concat!(
        "UPDATE webhook_deliveries SET lease_token = $1, lease_until_ms = $2
          WHERE state = 'pending' AND lease_until_ms < $3 AND id IN (
            SELECT id FROM (
              SELECT d.id, d.endpoint_id, d.next_attempt_ms,
                     ROW_NUMBER() OVER (PARTITION BY d.endpoint_id
                                        ORDER BY d.next_attempt_ms, d.id) AS rank
                FROM webhook_deliveries d
               WHERE d.endpoint_id = ANY($6) AND d.state = 'pending'
                 AND d.next_attempt_ms <= $3 AND d.lease_until_ms < $3
            ) c
             WHERE c.rank <= $4 - (SELECT COUNT(*) FROM webhook_deliveries f
                                    WHERE f.endpoint_id = c.endpoint_id AND f.state = 'pending'
                                      AND f.lease_until_ms >= $3)
             ORDER BY c.next_attempt_ms, c.id
             LIMIT $5)
         RETURNING ",
        delivery_columns!()
    );
    sqlx::query(SQL)
        .bind(token)
        .bind(until_ms)
        .bind(now_ms)
        .bind(i64::from(per_endpoint))
        .bind(i64::from(limit))
        .bind(endpoints)
        .fetch_all(&mut **tx)
        .await
}

async fn finish_in(tx: &mut Tx, finish: &Finish, now_ms: i64) -> Result<Finished, sqlx::Error> {
    // The endpoint's lock first (see the module's lock order).
    let endpoint_id: Option<String> = sqlx::query_scalar(
        "SELECT e.id FROM webhook_endpoints e
          WHERE e.id = (SELECT endpoint_id FROM webhook_deliveries WHERE id = $1)
          FOR NO KEY UPDATE",
    )
    .bind(&finish.delivery_id)
    .fetch_optional(&mut **tx)
    .await?;
    let Some(endpoint_id) = endpoint_id else {
        return Ok(Finished::LeaseLost);
    };
    let (state, next_ms) = match finish.next {
        Next::Delivered => ("delivered", 0),
        Next::Retry(at) => ("pending", at),
        Next::Failed => ("failed", 0),
    };
    let attempt = &finish.attempt;
    let updated = sqlx::query(
        "UPDATE webhook_deliveries
            SET state = $1, attempts = attempts + 1, next_attempt_ms = $2, lease_token = NULL,
                lease_until_ms = 0, last_status = $3, last_error = $4, update_time_ms = $5,
                body = CASE WHEN $1 = 'delivered' THEN NULL ELSE body END
          WHERE id = $6 AND lease_token = $7 AND state = 'pending'",
    )
    .bind(state)
    .bind(next_ms)
    .bind(attempt.status.map(i64::from))
    .bind(attempt.error.as_deref().map(clip))
    .bind(now_ms)
    .bind(&finish.delivery_id)
    .bind(&finish.lease_token)
    .execute(&mut **tx)
    .await?;
    if updated.rows_affected() == 0 {
        return Ok(Finished::LeaseLost);
    }
    sqlx::query(
        "INSERT INTO webhook_attempts (delivery_id, attempt, time_ms, status, error, duration_ms)
         SELECT $1, COALESCE(MAX(attempt), 0) + 1, $2, $3, $4, $5
           FROM webhook_attempts WHERE delivery_id = $1",
    )
    .bind(&finish.delivery_id)
    .bind(attempt.time_ms)
    .bind(attempt.status.map(i64::from))
    .bind(attempt.error.as_deref().map(clip))
    .bind(attempt.duration_ms)
    .execute(&mut **tx)
    .await?;
    let disable = match &finish.health {
        EndpointHealth::Healthy => {
            sqlx::query(
                "UPDATE webhook_endpoints SET failing_since_ms = NULL
                  WHERE id = $1 AND failing_since_ms IS NOT NULL",
            )
            .bind(&endpoint_id)
            .execute(&mut **tx)
            .await?;
            None
        }
        EndpointHealth::Failing {
            disable_if_failing_since,
        } => {
            let since: Option<(Option<i64>, Option<i64>)> = sqlx::query_as(
                "UPDATE webhook_endpoints SET failing_since_ms = COALESCE(failing_since_ms, $1)
                  WHERE id = $2 RETURNING failing_since_ms, disabled_ms",
            )
            .bind(attempt.time_ms)
            .bind(&endpoint_id)
            .fetch_optional(&mut **tx)
            .await?;
            match since {
                Some((Some(since), None)) if since <= *disable_if_failing_since => {
                    Some(failing_reason(since, attempt.time_ms))
                }
                _ => None,
            }
        }
        EndpointHealth::Gone(reason) => Some(reason.clone()),
    };
    if let Some(reason) = &disable {
        let changed = sqlx::query(
            "UPDATE webhook_endpoints
                SET disabled_reason = $1, disabled_ms = $2, update_time_ms = $2,
                    version = version + 1
              WHERE id = $3 AND disabled_ms IS NULL",
        )
        .bind(reason)
        .bind(now_ms)
        .bind(&endpoint_id)
        .execute(&mut **tx)
        .await?;
        if changed.rows_affected() == 0 {
            return Ok(Finished::Recorded { disabled: None });
        }
        fail_pending(tx, &endpoint_id, reason, now_ms).await?;
    }
    Ok(Finished::Recorded { disabled: disable })
}

impl PostgresStore {
    /// Runs `body` in one transaction under the store's deadline; committed only when it
    /// answers `Ok(Ok(_))` (a refusal rolls back).
    async fn in_transaction<T, F>(&self, op: &'static str, body: F) -> Result<T, StoreError>
    where
        T: Send,
        F: for<'t> FnOnce(
                &'t mut Tx,
            )
                -> futures::future::BoxFuture<'t, Result<Decided<T>, sqlx::Error>>
            + Send,
    {
        let pool = self.pool.clone();
        self.timed(op, async move {
            let mut tx = pool.begin().await?;
            let decided = body(&mut tx).await?;
            if decided.is_ok() {
                tx.commit().await?;
            }
            Ok(decided)
        })
        .await?
    }

    async fn attempts_of(
        &self,
        deliveries: Vec<Delivery>,
    ) -> Result<Vec<DeliveryRecord>, StoreError> {
        if deliveries.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<String> = deliveries.iter().map(|d| d.id.clone()).collect();
        let rows: Vec<AttemptRow> = self
            .timed(
                "list_deliveries",
                sqlx::query_as(
                    "SELECT delivery_id, attempt, time_ms, status, error, duration_ms
                       FROM webhook_attempts WHERE delivery_id = ANY($1)
                      ORDER BY delivery_id, attempt DESC",
                )
                .bind(ids)
                .fetch_all(&self.pool),
            )
            .await?;
        Ok(with_attempts(deliveries, rows))
    }
}

#[async_trait]
impl WebhookStore for PostgresStore {
    async fn create_endpoint(&self, endpoint: &Endpoint) -> Result<(), StoreError> {
        let endpoint = endpoint.clone();
        self.in_transaction("create_endpoint", move |tx| {
            Box::pin(async move {
                insert_endpoint(tx, &endpoint, false).await?;
                Ok(Ok(()))
            })
        })
        .await
    }

    async fn endpoint(&self, id: &str) -> Result<Option<Endpoint>, StoreError> {
        let row: Option<PgRow> = self
            .timed(
                "endpoint",
                sqlx::query(concat!(
                    "SELECT ",
                    endpoint_columns!(),
                    " FROM webhook_endpoints WHERE id = $1"
                ))
                .bind(id)
                .fetch_optional(&self.pool),
            )
            .await?;
        row.as_ref().map(endpoint_from_row).transpose()
    }

    async fn list_endpoints(
        &self,
        tenant: &str,
        after_id: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Endpoint>, StoreError> {
        let rows: Vec<PgRow> = self
            .timed(
                "list_endpoints",
                sqlx::query(concat!(
                    "SELECT ",
                    endpoint_columns!(),
                    " FROM webhook_endpoints
                     WHERE tenant = $1 AND kind = 'endpoint' AND id > $2 ORDER BY id LIMIT $3"
                ))
                .bind(tenant)
                .bind(after_id.unwrap_or(""))
                .bind(i64::from(limit))
                .fetch_all(&self.pool),
            )
            .await?;
        rows.iter().map(endpoint_from_row).collect()
    }

    async fn active_endpoints(&self, limit: u32) -> Result<Vec<Endpoint>, StoreError> {
        let rows: Vec<PgRow> = self
            .timed(
                "active_endpoints",
                sqlx::query(concat!(
                    "SELECT ",
                    endpoint_columns!(),
                    " FROM webhook_endpoints
                     WHERE disabled_ms IS NULL AND kind = 'endpoint' ORDER BY id LIMIT $1"
                ))
                .bind(i64::from(limit))
                .fetch_all(&self.pool),
            )
            .await?;
        rows.iter().map(endpoint_from_row).collect()
    }

    async fn update_endpoint(&self, endpoint: &Endpoint) -> Result<Endpoint, StoreError> {
        let endpoint = endpoint.clone();
        self.in_transaction("update_endpoint", move |tx| {
            Box::pin(async move { update_endpoint_in(tx, &endpoint).await })
        })
        .await
    }

    async fn delete_endpoint(&self, id: &str) -> Result<bool, StoreError> {
        let done = self
            .timed(
                "delete_endpoint",
                sqlx::query("DELETE FROM webhook_endpoints WHERE id = $1")
                    .bind(id)
                    .execute(&self.pool),
            )
            .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn fan_out(
        &self,
        cursor: &str,
        from: i64,
        to: i64,
        callbacks: &[Endpoint],
        deliveries: &[NewDelivery],
    ) -> Result<bool, StoreError> {
        let cursor = cursor.to_owned();
        let callbacks = callbacks.to_vec();
        let deliveries = deliveries.to_vec();
        self.in_transaction("fan_out", move |tx| {
            Box::pin(async move {
                fan_out_in(tx, &cursor, from, to, &callbacks, &deliveries)
                    .await
                    .map(Ok)
            })
        })
        .await
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
        let cursor = cursor.to_owned();
        let callbacks = callbacks.to_vec();
        let deliveries = deliveries.to_vec();
        let claim = claim.clone();
        self.in_transaction("fan_out", move |tx| {
            Box::pin(async move {
                fan_out_leasing(tx, &cursor, from, to, &callbacks, &deliveries, &claim)
                    .await
                    .map(Ok)
            })
        })
        .await
    }

    async fn requeue(&self, deliveries: &[NewDelivery], now_ms: i64) -> Result<u64, StoreError> {
        let deliveries = deliveries.to_vec();
        self.in_transaction("requeue", move |tx| {
            Box::pin(async move {
                insert_deliveries(tx, &deliveries, Some(now_ms))
                    .await
                    .map(Ok)
            })
        })
        .await
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
        let token = token.to_owned();
        let rows = self
            .in_transaction("claim_deliveries", move |tx| {
                Box::pin(async move {
                    claim_in(tx, now_ms, until_ms, &token, limit, per_endpoint)
                        .await
                        .map(Ok)
                })
            })
            .await?;
        let mut claimed = rows
            .iter()
            .map(delivery_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        claimed.sort_by(|a, b| (a.next_attempt_ms, &a.id).cmp(&(b.next_attempt_ms, &b.id)));
        Ok(claimed)
    }

    async fn finish_delivery(&self, finish: &Finish, now_ms: i64) -> Result<Finished, StoreError> {
        let finish = finish.clone();
        self.in_transaction("finish_delivery", move |tx| {
            Box::pin(async move { finish_in(tx, &finish, now_ms).await.map(Ok) })
        })
        .await
    }

    async fn delivery(&self, id: &str) -> Result<Option<DeliveryRecord>, StoreError> {
        let row: Option<PgRow> = self
            .timed(
                "delivery",
                sqlx::query(concat!(
                    "SELECT ",
                    delivery_columns!(),
                    " FROM webhook_deliveries WHERE id = $1"
                ))
                .bind(id)
                .fetch_optional(&self.pool),
            )
            .await?;
        let Some(delivery) = row.as_ref().map(delivery_from_row).transpose()? else {
            return Ok(None);
        };
        Ok(self.attempts_of(vec![delivery]).await?.pop())
    }

    async fn list_deliveries(
        &self,
        endpoint_id: &str,
        before: Option<(i64, String)>,
        limit: u32,
    ) -> Result<Vec<DeliveryRecord>, StoreError> {
        let (before_ms, before_id) = before.unwrap_or((i64::MAX, String::new()));
        let rows: Vec<PgRow> = self
            .timed(
                "list_deliveries",
                sqlx::query(concat!(
                    "SELECT ",
                    delivery_columns!(),
                    " FROM webhook_deliveries
                     WHERE endpoint_id = $1
                       AND (create_time_ms < $2 OR (create_time_ms = $2 AND ($3 = '' OR id < $3)))
                     ORDER BY create_time_ms DESC, id DESC LIMIT $4"
                ))
                .bind(endpoint_id)
                .bind(before_ms)
                .bind(&before_id)
                .bind(i64::from(limit))
                .fetch_all(&self.pool),
            )
            .await?;
        let deliveries = rows
            .iter()
            .map(delivery_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        self.attempts_of(deliveries).await
    }

    async fn backlog(&self, now_ms: i64) -> Result<Backlog, StoreError> {
        let (pending, oldest, disabled): (i64, Option<i64>, i64) = self
            .timed(
                "backlog",
                sqlx::query_as(
                    "SELECT (SELECT COUNT(*) FROM webhook_deliveries WHERE state = 'pending'),
                            (SELECT MIN(next_attempt_ms) FROM webhook_deliveries
                              WHERE state = 'pending' AND next_attempt_ms <= $1),
                            (SELECT COUNT(*) FROM webhook_endpoints WHERE disabled_ms IS NOT NULL)",
                )
                .bind(now_ms)
                .fetch_one(&self.pool),
            )
            .await?;
        Ok(Backlog {
            pending: u64::try_from(pending).unwrap_or(0),
            oldest_due_ms: oldest,
            disabled_endpoints: u64::try_from(disabled).unwrap_or(0),
        })
    }

    async fn next_delivery_due_ms(&self) -> Result<Option<i64>, StoreError> {
        self.timed(
            "next_delivery_due_ms",
            sqlx::query_scalar(
                "SELECT MIN(GREATEST(next_attempt_ms, lease_until_ms + 1))
                   FROM webhook_deliveries WHERE state = 'pending'",
            )
            .fetch_one(&self.pool),
        )
        .await
    }

    async fn prune_deliveries(&self, before_ms: i64) -> Result<u64, StoreError> {
        let mut total = 0;
        loop {
            let done = self
                .timed(
                    "prune_deliveries",
                    sqlx::query(
                        "DELETE FROM webhook_deliveries WHERE id IN (
                            SELECT id FROM webhook_deliveries
                             WHERE state <> 'pending' AND update_time_ms < $1 LIMIT $2)",
                    )
                    .bind(before_ms)
                    .bind(PRUNE_STEP)
                    .execute(&self.pool),
                )
                .await?;
            total += done.rows_affected();
            if done.rows_affected() < PRUNE_STEP as u64 {
                break;
            }
        }
        self.timed(
            "prune_deliveries",
            sqlx::query(
                "DELETE FROM webhook_endpoints e
                  WHERE e.kind = 'callback' AND e.create_time_ms < $1
                    AND NOT EXISTS (SELECT 1 FROM webhook_deliveries d WHERE d.endpoint_id = e.id)",
            )
            .bind(before_ms)
            .execute(&self.pool),
        )
        .await?;
        Ok(total)
    }

    async fn tenant_secret(&self, tenant: &str) -> Result<SigningSecret, StoreError> {
        let fresh = SigningSecret::generate();
        // Insert-if-missing and read back in one statement: concurrent first uses agree.
        let text: String = self
            .timed(
                "tenant_secret",
                sqlx::query_scalar(
                    "WITH made AS (
                        INSERT INTO webhook_tenant_secrets (tenant, secret) VALUES ($1, $2)
                        ON CONFLICT (tenant) DO NOTHING RETURNING secret)
                     SELECT secret FROM made
                     UNION ALL
                     SELECT secret FROM webhook_tenant_secrets WHERE tenant = $1
                     LIMIT 1",
                )
                .bind(tenant)
                .bind(fresh.expose())
                .fetch_one(&self.pool),
            )
            .await?;
        SigningSecret::parse(&text).map_err(|e| {
            StoreError::Corrupt(format!("the callback secret of tenant {tenant:?}: {e}"))
        })
    }
}
