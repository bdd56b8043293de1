//! A simulator of the upstream `/videos` API, for tests, benchmarks and the no-key demo.
//!
//! It serves the contract of `CONTRACT.md` over real HTTP: the create rules (V1-V5, S1-S10,
//! with U2/U3's `1080p` and `21:9` accepted) from its own table in [`rules`], statuses that
//! advance with time (`queued` -> `in_progress`/`processing` -> `completed`), real MP4 bodies
//! with `Range`, the Seedance last frame, and injectable faults ([`FaultRule`]). Counters
//! ([`SimStats`]) let a test prove what reached "the upstream".
//!
//! ```no_run
//! # async fn demo() -> Result<(), vidgate::upstream::sim::SimError> {
//! use vidgate::upstream::sim::{SimConfig, Simulator};
//! let sim = Simulator::start(SimConfig::default(), "127.0.0.1:0".parse().expect("addr")).await?;
//! println!("base URL {} key {}", sim.base_url(), sim.api_key());
//! sim.shutdown().await;
//! # Ok(()) }
//! ```

pub mod config;
mod conn;
pub mod faults;
pub mod mp4gen;
pub mod rules;
pub mod server;
pub mod state;

pub use config::{SimConfig, SimConfigError};
pub use faults::{Fault, FaultEndpoint, FaultRule, FaultRuleError, FaultWhen};
pub use server::{SimError, SimHandle, Simulator};
pub use state::{RequestCounts, SimStats, TaskStats};
