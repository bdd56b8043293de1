//! Issue #14, first row: one tenant opens 2,000 `Subscribe` streams and never reads them while
//! 40 jobs with a 16,000-character prompt and 64 labels of 256 characters complete. Before the
//! byte budgets the gateway grew to 4.6 GB and kept it after every stream closed. Now each
//! stream holds at most its budget (`events.stream_budget_bytes`, 256 KiB by default), and the
//! memory goes back to the system once the streams are gone. Memory is read from `/proc` of a
//! `vidgate serve` child process.

#[path = "../../benches/harness/subscribers.rs"]
#[allow(dead_code)]
mod subscribers;

use std::time::Duration;

/// What each never-read stream may hold in the gateway on top of its byte budget: the message
/// that went past the budget, one encoded frame in the HTTP/2 layer and the stream's own state.
const PER_STREAM_SLACK_KIB: u64 = 96;
/// Fixed growth allowed on top (the runtime's, SQLite's and the allocator's caches).
const FIXED_SLACK_KIB: u64 = 96 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_never_read_subscribers_hold_at_most_their_budgets_and_give_it_back() {
    let streams = 2_000;
    let budget_kib = (vidgate::events::DEFAULT_STREAM_BUDGET_BYTES / 1024) as u64;
    let work_dir =
        std::env::temp_dir().join(format!("vidgate-memory-{}", uuid::Uuid::now_v7().simple()));
    let figures = subscribers::run(
        std::path::Path::new(env!("CARGO_BIN_EXE_vidgate")),
        &subscribers::Settings {
            streams,
            jobs: 40,
            read: false,
            settle: Duration::from_secs(15),
            env: Vec::new(),
            work_dir,
        },
    )
    .await
    .expect("the scenario runs");
    eprintln!("{figures:?}");

    let bound =
        figures.open_kib + streams as u64 * (budget_kib + PER_STREAM_SLACK_KIB) + FIXED_SLACK_KIB;
    assert!(
        figures.peak_kib <= bound,
        "peak RSS {} KiB past the bound {bound} KiB ({streams} streams of {budget_kib} KiB on \
         top of {} KiB with them open)",
        figures.peak_kib,
        figures.open_kib
    );
    // The jobs' events went past every stream's budget: the bound above was reached for a
    // reason, not because nothing was queued.
    let held = figures.peak_kib.saturating_sub(figures.open_kib);
    assert!(
        held >= streams as u64 * budget_kib / 2,
        "the streams held only {held} KiB: the scenario did not fill their budgets"
    );
    // Given back: once every stream closed, at most a quarter of what they held stays resident
    // (jemalloc's background thread purges freed pages; glibc's allocator kept 676 of 677 MB).
    let kept = figures.settled_kib.saturating_sub(figures.open_kib);
    if cfg!(feature = "jemalloc") {
        assert!(
            kept <= held / 4,
            "{kept} KiB of the {held} KiB the streams held stayed resident after they closed"
        );
    } else {
        eprintln!(
            "built without the jemalloc feature: {kept} of {held} KiB stayed resident; the \
             give-back is asserted only with the allocator vidgate ships with"
        );
    }
}
