//! The simulator's memory: tasks, counters and the armed faults, behind one short-held lock.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{RngExt as _, SeedableRng as _};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use tokio::sync::OnceCell;
use tokio::time::Instant;

use super::config::SimConfig;
use super::faults::{FaultEndpoint, FaultRule, FaultSet, RequestFaults, TaskFaults};
use super::mp4gen::{GeneratedMp4, Mp4GenError, Mp4Params, last_frame_png};
use super::rules::TaskSpec;

/// Tasks kept in memory; the oldest is forgotten beyond this (its id then answers 404, like an
/// expired upstream result). Each holds a few KB once its video has been generated.
pub const MAX_TASKS: usize = 10_000;
/// Distinct prompts counted in [`SimStats::creates_by_prompt`]; the oldest is dropped beyond.
pub const MAX_TRACKED_PROMPTS: usize = 10_000;
/// Prompts longer than this are keyed as `sha256:<hex>` in the stats, so a flood of huge
/// prompts cannot grow the stats without bound.
pub const MAX_STATS_PROMPT_BYTES: usize = 4_096;

/// Requests received per endpoint (every request: refused, faulted or served).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestCounts {
    /// `POST /videos`.
    pub create: u64,
    /// `GET /videos/{id}`.
    pub get: u64,
    /// `GET /videos/{id}/content`.
    pub content: u64,
    /// `GET /videos/{id}/last_frame`.
    pub last_frame: u64,
}

/// What happened to one task.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskStats {
    /// The prompt (or `sha256:<hex>` past [`MAX_STATS_PROMPT_BYTES`]).
    pub prompt: String,
    /// The model id.
    pub model: String,
    /// Authorised status requests naming it.
    pub gets: u64,
    /// Authorised content requests naming it.
    pub content_requests: u64,
    /// Last-frame requests naming it.
    pub last_frame_requests: u64,
}

/// A snapshot of everything the simulator counted.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimStats {
    /// Requests per endpoint.
    pub requests: RequestCounts,
    /// Creates that created a task (including one answered by a `Reset` fault).
    pub creates_accepted: u64,
    /// Creates that created nothing, by the HTTP status they got (or would have got, when a
    /// `Reset` fault cut the answer).
    pub creates_rejected: BTreeMap<u16, u64>,
    /// Known tasks by id (at most [`MAX_TASKS`]).
    pub tasks: BTreeMap<String, TaskStats>,
    /// Accepted creates per exact prompt (at most [`MAX_TRACKED_PROMPTS`] prompts).
    pub creates_by_prompt: BTreeMap<String, u32>,
    /// Tasks forgotten to stay within [`MAX_TASKS`].
    pub tasks_evicted: u64,
}

impl SimStats {
    /// All rejected creates, whatever their status.
    pub fn creates_rejected_total(&self) -> u64 {
        self.creates_rejected.values().sum()
    }
}

/// Where a task is, at a given instant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    Queued,
    Processing { progress: u8 },
    Completed,
    Failed,
}

/// One generation task.
#[derive(Debug)]
pub(crate) struct Task {
    pub id: String,
    pub spec: TaskSpec,
    pub created: Instant,
    pub created_unix: u64,
    pub queued: Duration,
    pub processing: Duration,
    pub faults: TaskFaults,
    pub media_seed: u64,
    fps: u32,
    min_size: u64,
    mp4: OnceCell<GeneratedMp4>,
    png: OnceCell<Bytes>,
}

impl Task {
    pub fn phase(&self, now: Instant) -> Phase {
        let elapsed = now.saturating_duration_since(self.created);
        if elapsed < self.queued {
            Phase::Queued
        } else if elapsed < self.queued + self.processing {
            let into = (elapsed - self.queued).as_millis();
            let total = self.processing.as_millis().max(1);
            // Never 100 before completion: a client may read 100 as done.
            let progress = u8::try_from((into * 100 / total).min(99)).unwrap_or(99);
            Phase::Processing { progress }
        } else if self.faults.fail.is_some() {
            Phase::Failed
        } else {
            Phase::Completed
        }
    }

    /// Unix seconds at which the task finishes (completed or failed).
    pub fn finished_unix(&self) -> u64 {
        let ms = (self.queued + self.processing).as_millis();
        self.created_unix + u64::try_from(ms.div_ceil(1000)).unwrap_or(u64::MAX)
    }

    /// The parameters of this task's video: the same every time, so a test can regenerate it.
    pub fn mp4_params(&self) -> Mp4Params {
        Mp4Params {
            width: self.spec.width,
            height: self.spec.height,
            duration_ms: self.spec.seconds.saturating_mul(1000),
            fps: self.fps,
            audio: self.spec.audio,
            min_size: self.min_size,
            seed: self.media_seed,
        }
    }

    /// The video, generated on first use and kept with the task.
    pub async fn mp4(&self) -> Result<GeneratedMp4, Mp4GenError> {
        let params = self.mp4_params();
        self.mp4
            .get_or_try_init(|| async move { GeneratedMp4::generate(&params) })
            .await
            .cloned()
    }

    /// The last frame PNG (S10), generated on first use and kept with the task.
    pub async fn last_frame(&self) -> Result<Bytes, Mp4GenError> {
        let (w, h, seed) = (self.spec.width, self.spec.height, self.media_seed);
        self.png
            .get_or_try_init(|| async move { last_frame_png(w, h, seed) })
            .await
            .cloned()
    }
}

struct TaskEntry {
    task: Arc<Task>,
    stats: TaskStats,
}

struct Inner {
    rng: StdRng,
    tasks: HashMap<String, TaskEntry>,
    /// Task ids oldest first, for eviction.
    order: VecDeque<String>,
    faults: FaultSet,
    requests: RequestCounts,
    creates_accepted: u64,
    creates_rejected: BTreeMap<u16, u64>,
    creates_by_prompt: BTreeMap<String, u32>,
    /// Prompt keys oldest first, for eviction.
    prompt_order: VecDeque<String>,
    tasks_evicted: u64,
}

/// Timings and media settings copied from the config at start.
#[derive(Clone, Copy, Debug)]
struct Timing {
    queued_ms: u64,
    processing_ms: u64,
    jitter: f64,
    fps: u32,
    min_size: u64,
}

/// All mutable simulator state.
pub(crate) struct SimState {
    inner: Mutex<Inner>,
    timing: Timing,
}

fn stats_prompt_key(prompt: &str) -> String {
    if prompt.len() <= MAX_STATS_PROMPT_BYTES {
        prompt.to_owned()
    } else {
        format!("sha256:{}", hex::encode(Sha256::digest(prompt.as_bytes())))
    }
}

/// `base` ms stretched by a factor in `1 +- jitter`.
fn jittered(rng: &mut StdRng, base: u64, jitter: f64) -> Duration {
    if jitter <= 0.0 || base == 0 {
        return Duration::from_millis(base);
    }
    let factor = 1.0 + jitter * rng.random_range(-1.0..=1.0);
    Duration::from_secs_f64((base as f64 * factor).max(0.0) / 1000.0)
}

impl SimState {
    pub fn new(config: &SimConfig) -> Self {
        SimState {
            inner: Mutex::new(Inner {
                rng: StdRng::seed_from_u64(config.seed),
                tasks: HashMap::new(),
                order: VecDeque::new(),
                faults: FaultSet::new(config.faults.clone()),
                requests: RequestCounts::default(),
                creates_accepted: 0,
                creates_rejected: BTreeMap::new(),
                creates_by_prompt: BTreeMap::new(),
                prompt_order: VecDeque::new(),
                tasks_evicted: 0,
            }),
            timing: Timing {
                queued_ms: config.queued_ms,
                processing_ms: config.processing_ms,
                jitter: config.jitter,
                fps: config.fps,
                min_size: config.content_min_size,
            },
        }
    }

    // A panic elsewhere cannot leave these counters half-written in a way that matters more than
    // stopping the simulator would, so a poisoned lock is used as is.
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn count_request(&self, endpoint: FaultEndpoint) {
        let mut inner = self.lock();
        let counts = &mut inner.requests;
        match endpoint {
            FaultEndpoint::Create => counts.create += 1,
            FaultEndpoint::Get => counts.get += 1,
            FaultEndpoint::Content => counts.content += 1,
            FaultEndpoint::LastFrame => counts.last_frame += 1,
            FaultEndpoint::Any => {}
        }
    }

    pub fn reject_create(&self, status: u16) {
        *self.lock().creates_rejected.entry(status).or_default() += 1;
    }

    pub fn request_faults(&self, endpoint: FaultEndpoint, prompt: Option<&str>) -> RequestFaults {
        self.lock().faults.take_request_faults(endpoint, prompt)
    }

    pub fn set_faults(&self, rules: Vec<FaultRule>) {
        self.lock().faults.replace(rules);
    }

    pub fn push_fault(&self, rule: FaultRule) {
        self.lock().faults.push(rule);
    }

    pub fn faults(&self) -> Vec<FaultRule> {
        self.lock().faults.snapshot()
    }

    /// Create a task: draw its id, timings and media seed from the seeded generator (in that
    /// order, so the same sequence of creates gives the same ids), bind task-level faults, count.
    pub fn create_task(&self, spec: TaskSpec) -> Arc<Task> {
        let t = self.timing;
        let mut inner = self.lock();
        let id = loop {
            let id = format!("video-{:016x}", inner.rng.random::<u64>());
            if !inner.tasks.contains_key(&id) {
                break id;
            }
        };
        let queued = jittered(&mut inner.rng, t.queued_ms, t.jitter);
        let processing = jittered(&mut inner.rng, t.processing_ms, t.jitter);
        let media_seed = inner.rng.random::<u64>();
        let faults = inner.faults.take_task_faults(&spec.prompt);
        let created_unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let prompt_key = stats_prompt_key(&spec.prompt);
        let stats = TaskStats {
            prompt: prompt_key.clone(),
            model: spec.model.clone(),
            ..TaskStats::default()
        };
        let task = Arc::new(Task {
            id: id.clone(),
            spec,
            created: Instant::now(),
            created_unix,
            queued,
            processing,
            faults,
            media_seed,
            fps: t.fps,
            min_size: t.min_size,
            mp4: OnceCell::new(),
            png: OnceCell::new(),
        });

        inner.creates_accepted += 1;
        inner.tasks.insert(
            id.clone(),
            TaskEntry {
                task: Arc::clone(&task),
                stats,
            },
        );
        inner.order.push_back(id);
        while inner.order.len() > MAX_TASKS {
            if let Some(old) = inner.order.pop_front() {
                inner.tasks.remove(&old);
                inner.tasks_evicted += 1;
            }
        }
        match inner.creates_by_prompt.get_mut(&prompt_key) {
            Some(n) => *n = n.saturating_add(1),
            None => {
                inner.creates_by_prompt.insert(prompt_key.clone(), 1);
                inner.prompt_order.push_back(prompt_key);
                while inner.prompt_order.len() > MAX_TRACKED_PROMPTS {
                    if let Some(old) = inner.prompt_order.pop_front() {
                        inner.creates_by_prompt.remove(&old);
                    }
                }
            }
        }
        task
    }

    /// The task named by a request to `endpoint`, counting the request against it.
    pub fn lookup(&self, id: &str, endpoint: FaultEndpoint) -> Option<Arc<Task>> {
        let mut inner = self.lock();
        let entry = inner.tasks.get_mut(id)?;
        match endpoint {
            FaultEndpoint::Get => entry.stats.gets += 1,
            FaultEndpoint::Content => entry.stats.content_requests += 1,
            FaultEndpoint::LastFrame => entry.stats.last_frame_requests += 1,
            FaultEndpoint::Create | FaultEndpoint::Any => {}
        }
        Some(Arc::clone(&entry.task))
    }

    /// A task without counting a request.
    pub fn peek(&self, id: &str) -> Option<Arc<Task>> {
        self.lock().tasks.get(id).map(|e| Arc::clone(&e.task))
    }

    pub fn stats(&self) -> SimStats {
        let inner = self.lock();
        SimStats {
            requests: inner.requests.clone(),
            creates_accepted: inner.creates_accepted,
            creates_rejected: inner.creates_rejected.clone(),
            tasks: inner
                .tasks
                .iter()
                .map(|(id, e)| (id.clone(), e.stats.clone()))
                .collect(),
            creates_by_prompt: inner.creates_by_prompt.clone(),
            tasks_evicted: inner.tasks_evicted,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::sim::rules::Family;

    fn spec(prompt: &str) -> TaskSpec {
        TaskSpec {
            family: Family::Veo,
            model: "veo".into(),
            prompt: prompt.into(),
            width: 1280,
            height: 720,
            seconds: 4,
            audio: true,
            return_last_frame: false,
        }
    }

    fn config(seed: u64) -> SimConfig {
        SimConfig {
            seed,
            jitter: 0.5,
            ..SimConfig::default()
        }
    }

    #[test]
    fn same_seed_same_ids_and_timings_different_seed_different_ids() {
        let run = |seed| {
            let s = SimState::new(&config(seed));
            (0..3)
                .map(|_| {
                    let t = s.create_task(spec("p"));
                    (t.id.clone(), t.queued, t.processing)
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7)[0].0, run(8)[0].0);
    }

    #[test]
    fn jitter_stays_within_the_configured_fraction() {
        let s = SimState::new(&config(1));
        for _ in 0..200 {
            let t = s.create_task(spec("p"));
            let q = t.queued.as_secs_f64() * 1000.0;
            assert!((999.0..=3001.0).contains(&q), "{q}");
        }
    }

    #[test]
    fn long_prompts_are_keyed_by_hash_in_stats() {
        let s = SimState::new(&config(1));
        let long = "x".repeat(MAX_STATS_PROMPT_BYTES + 1);
        s.create_task(spec(&long));
        s.create_task(spec(&long));
        let stats = s.stats();
        let (key, n) = stats
            .creates_by_prompt
            .iter()
            .next()
            .expect("one prompt counted");
        assert!(key.starts_with("sha256:"));
        assert_eq!(*n, 2);
    }
}
