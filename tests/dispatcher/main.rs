//! The dispatcher's guarantees, one test binary: one owner per job and requests applied by it
//! (`ownership`), what a crash costs (`crash`), the order of a job's statuses as subscribers
//! see them (`status`), and what it sends: the spec stored at accept, re-checked when the
//! catalog changed since (`stored_spec`); and what a hostile upstream cannot do to it: fill the
//! disk, hold every slot, reach an internal address, or get the key echoed (`hostile`).

#[path = "../support/mod.rs"]
mod support;

mod crash;
mod hostile;
mod ownership;
mod status;
mod stored_spec;
