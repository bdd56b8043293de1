//! `grpc.health.v1.Health`, answered from the one readiness state that `/readyz` also reads
//! ([`Readiness`]): no copy to keep in step, so the two never disagree. `SERVING` when ready;
//! `NOT_SERVING` when a check fails or the process is shutting down.

use std::pin::Pin;

use futures::Stream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

use crate::telemetry::readiness::{Readiness, ReadinessReport};

/// The health service.
#[derive(Clone)]
pub struct ReadinessHealth {
    readiness: Readiness,
    services: Vec<String>,
    stop: CancellationToken,
}

impl ReadinessHealth {
    /// Answers for the server as a whole (`""`) and for each of `services`. `Watch` streams end
    /// when `stop` is cancelled, so they never hold the server's shutdown.
    pub fn server(
        readiness: Readiness,
        services: &[&str],
        stop: CancellationToken,
    ) -> HealthServer<Self> {
        HealthServer::new(Self {
            readiness,
            services: services.iter().map(|s| (*s).to_owned()).collect(),
            stop,
        })
    }

    fn known(&self, service: &str) -> bool {
        service.is_empty() || self.services.iter().any(|s| s == service)
    }
}

fn serving(report: &ReadinessReport) -> ServingStatus {
    if report.ready {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    }
}

fn response(status: ServingStatus) -> HealthCheckResponse {
    HealthCheckResponse {
        status: status as i32,
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<HealthCheckResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Health for ReadinessHealth {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        if !self.known(&request.get_ref().service) {
            return Err(Status::not_found("unknown service"));
        }
        Ok(Response::new(response(serving(&self.readiness.current()))))
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let mut rx = self.readiness.subscribe();
        let stop = self.stop.clone();
        if !self.known(&request.get_ref().service) {
            // The protocol: SERVICE_UNKNOWN, and the call stays open (our set never changes).
            let stream = async_stream::stream! {
                yield Ok::<_, Status>(response(ServingStatus::ServiceUnknown));
                stop.cancelled().await;
            };
            return Ok(Response::new(Box::pin(stream)));
        }
        let stream = async_stream::stream! {
            let mut last = None;
            loop {
                let status = serving(&rx.borrow_and_update());
                if last != Some(status) {
                    last = Some(status);
                    yield Ok::<_, Status>(response(status));
                }
                tokio::select! {
                    _ = stop.cancelled() => break,
                    changed = rx.changed() => if changed.is_err() { break },
                }
            }
        };
        Ok(Response::new(Box::pin(stream)))
    }
}
