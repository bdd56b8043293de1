//! Per-tenant cap on concurrent server streams (`Subscribe`, `WatchVideo`, `DownloadVideo`):
//! one tenant cannot hold the server's memory, tasks and descriptors with thousands of streams
//! it never reads. Beyond the cap a new stream is refused with `RESOURCE_EXHAUSTED`
//! (`TOO_MANY_STREAMS`, naming the limit).
//!
//! A stream counts from the moment it is admitted until tonic drops its response stream: when
//! the stream ends, or when the client goes away (cancel, reset, closed connection). The count
//! lives in a guard the response stream owns, so no path can forget to release it.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use futures::Stream;

use super::error::ApiError;
use crate::domain::Tenant;

/// Streams one tenant may hold open at once, all three kinds together. A UI or worker pool
/// watching its jobs needs tens; 256 leaves room for a busy tenant and its reconnects, while
/// 2,000 never-read streams (the abuse #14 measured) are refused long before they matter.
pub const DEFAULT_MAX_STREAMS_PER_TENANT: usize = 256;

/// Counts open streams per tenant and admits new ones up to the cap.
#[derive(Clone, Debug)]
pub struct StreamLimiter {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    max_per_tenant: usize,
    open: Mutex<HashMap<String, usize>>,
}

impl StreamLimiter {
    /// At most `max_per_tenant` open streams per tenant.
    pub fn new(max_per_tenant: usize) -> Self {
        Self {
            inner: Arc::new(Inner {
                max_per_tenant,
                open: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Admits one more stream of `tenant`, or refuses it at the cap. The stream counts until
    /// the returned guard is dropped.
    pub fn admit(&self, tenant: &Tenant) -> Result<StreamGuard, ApiError> {
        let mut open = self.inner.lock();
        let count = open.entry(tenant.0.clone()).or_insert(0);
        if *count >= self.inner.max_per_tenant {
            return Err(ApiError::TooManyStreams {
                limit: self.inner.max_per_tenant,
            });
        }
        *count += 1;
        Ok(StreamGuard {
            inner: self.inner.clone(),
            tenant: tenant.0.clone(),
        })
    }

    /// Streams `tenant` holds open now.
    pub fn open(&self, tenant: &Tenant) -> usize {
        self.inner.lock().get(&tenant.0).copied().unwrap_or(0)
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, usize>> {
        // Counting cannot leave the map half-updated: a panic elsewhere does not spoil it.
        self.open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// One admitted stream; dropping it releases the tenant's slot.
#[derive(Debug)]
pub struct StreamGuard {
    inner: Arc<Inner>,
    tenant: String,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        let mut open = self.inner.lock();
        if let Some(count) = open.get_mut(&self.tenant) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&self.tenant);
            }
        }
    }
}

/// A response stream that holds its tenant's slot for as long as tonic holds the stream.
#[derive(Debug)]
pub struct Guarded<S> {
    stream: S,
    _guard: StreamGuard,
}

impl<S> Guarded<S> {
    /// `stream`, counted by `guard`.
    pub fn new(stream: S, guard: StreamGuard) -> Self {
        Self {
            stream,
            _guard: guard,
        }
    }
}

impl<S: Stream + Unpin> Stream for Guarded<S> {
    type Item = S::Item;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        Pin::new(&mut self.stream).poll_next(cx)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.stream.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenant_gets_its_cap_and_no_more_and_a_dropped_guard_frees_a_slot() {
        let limiter = StreamLimiter::new(2);
        let acme = Tenant("acme".into());
        let globex = Tenant("globex".into());
        let first = limiter.admit(&acme).expect("first");
        let _second = limiter.admit(&acme).expect("second");
        let refused = limiter.admit(&acme).expect_err("third");
        assert_eq!(refused.reason(), "TOO_MANY_STREAMS");
        assert!(refused.to_string().contains('2'), "{refused}");
        // Another tenant has its own count.
        let _other = limiter.admit(&globex).expect("globex");
        drop(first);
        assert_eq!(limiter.open(&acme), 1);
        let _again = limiter.admit(&acme).expect("a slot was freed");
    }

    #[test]
    fn counts_vanish_when_the_last_stream_ends() {
        let limiter = StreamLimiter::new(1);
        let acme = Tenant("acme".into());
        drop(limiter.admit(&acme).expect("admitted"));
        assert_eq!(limiter.open(&acme), 0);
        assert!(limiter.inner.lock().is_empty());
    }
}
