//! The README's AMQP examples are valid requests: each ```json block parses as a
//! `CreateVideoRequest` (proto3 JSON, as the intake reads it) and passes validation.

use vidgate::convert;
use vidgate::domain::{ModelCatalog, VideoSpec};
use vidgate::pb;

#[test]
fn every_json_example_in_the_readme_is_a_valid_create_request() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let blocks: Vec<&str> = readme
        .split("```json\n")
        .skip(1)
        .filter_map(|rest| rest.split("```").next())
        .collect();
    assert_eq!(blocks.len(), 3, "the three upstream examples");
    let catalog = ModelCatalog::default();
    for block in blocks {
        let request: pb::CreateVideoRequest =
            serde_json::from_str(block).unwrap_or_else(|e| panic!("{e}: {block}"));
        let domain = convert::to_domain(&request).unwrap();
        VideoSpec::parse(domain, &catalog).unwrap_or_else(|e| panic!("{e}: {block}"));
    }
}
