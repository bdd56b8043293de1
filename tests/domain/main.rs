//! The domain rules, one test binary: the model catalog (`domain_catalog`), validation rule by
//! rule (`domain_validation`) and by property (`domain_proptest`), and the catalog's agreement
//! with the simulator's rules (`contract_agreement`).

#[path = "../support/mod.rs"]
mod support;

mod contract_agreement;
mod domain_catalog;
mod domain_proptest;
mod domain_validation;
