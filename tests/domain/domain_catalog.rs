//! The model catalog: the embedded defaults against CONTRACT.md, operator files, and the checks
//! a catalog must pass to load.

use std::io::Write as _;

use vidgate::domain::{
    CatalogError, DEFAULT_MAX_UPLOAD_BYTES, ModelCatalog, ModelFamily, ModelRules, PixelSize,
    SeedanceRules, UnknownModels, VeoRules,
};

const VEO: &str = "turing/veo-3.1-generate";
const SEEDANCE: &str = "doubao-seedance-2-0-260128";

fn veo_rules(catalog: &ModelCatalog, model: &str) -> VeoRules {
    match catalog.model(model) {
        Some(ModelRules::Veo(rules)) => rules.clone(),
        other => panic!("{model} is not a Veo model: {other:?}"),
    }
}

fn seedance_rules(catalog: &ModelCatalog, model: &str) -> SeedanceRules {
    match catalog.model(model) {
        Some(ModelRules::Seedance(rules)) => rules.clone(),
        other => panic!("{model} is not a Seedance model: {other:?}"),
    }
}

fn size(width: u32, height: u32) -> PixelSize {
    PixelSize { width, height }
}

fn invalid(result: Result<ModelCatalog, CatalogError>) -> (String, String, String) {
    match result {
        Err(CatalogError::Invalid {
            scope,
            key,
            problem,
            ..
        }) => (scope, key, problem),
        other => panic!("expected CatalogError::Invalid, got {other:?}"),
    }
}

#[test]
fn default_catalog_lists_the_two_contract_models() {
    let catalog = ModelCatalog::default();
    let ids: Vec<&str> = catalog.model_ids().collect();
    assert_eq!(ids, vec![SEEDANCE, VEO]);
    assert_eq!(catalog.family_of(VEO), Some(ModelFamily::Veo));
    assert_eq!(catalog.family_of(SEEDANCE), Some(ModelFamily::Seedance));
}

#[test]
fn default_catalog_rejects_unknown_models() {
    let catalog = ModelCatalog::default();
    assert_eq!(catalog.unknown_models(), UnknownModels::Reject);
    assert_eq!(catalog.resolve("turing/veo-3.1-fast-generate"), None);
    assert_eq!(catalog.family_of("sora-2"), None);
}

#[test]
fn default_upload_limit_is_10_mib_v3() {
    assert_eq!(DEFAULT_MAX_UPLOAD_BYTES, 10_485_760);
    assert_eq!(ModelCatalog::default().max_upload_bytes(), 10_485_760);
}

#[test]
fn default_veo_rules_are_v1_v2_v5() {
    let rules = veo_rules(&ModelCatalog::default(), VEO);
    assert_eq!(rules.seconds(), &[4, 6, 8]);
    assert_eq!(rules.sizes(), &[size(1280, 720), size(720, 1280)]);
    assert_eq!(rules.person_generation(), &["allow_all".to_owned()]);
}

#[test]
fn default_seedance_rules_are_s4_s5_s6_plus_u2_u3() {
    let rules = seedance_rules(&ModelCatalog::default(), SEEDANCE);
    assert_eq!(rules.resolutions(), &["480p", "720p", "1080p"]);
    assert_eq!(
        rules.ratios(),
        &["16:9", "9:16", "1:1", "4:3", "3:4", "21:9"]
    );
    assert_eq!(rules.durations(), &[4, 5, 6, 8]);
}

#[test]
fn default_seedance_pixel_table_is_the_contract_table() {
    let rules = seedance_rules(&ModelCatalog::default(), SEEDANCE);
    let table = [
        ("480p", "16:9", 864, 496),
        ("480p", "4:3", 752, 560),
        ("480p", "1:1", 640, 640),
        ("480p", "3:4", 560, 752),
        ("480p", "9:16", 496, 864),
        ("480p", "21:9", 992, 432),
        ("720p", "16:9", 1280, 720),
        ("720p", "4:3", 1112, 834),
        ("720p", "1:1", 960, 960),
        ("720p", "3:4", 834, 1112),
        ("720p", "9:16", 720, 1280),
        ("720p", "21:9", 1470, 630),
    ];
    for (resolution, ratio, width, height) in table {
        assert_eq!(
            rules.pixels(resolution, ratio),
            Some(size(width, height)),
            "{resolution} {ratio}"
        );
        let cell = rules.cell_for_size(size(width, height)).expect("cell");
        assert_eq!(
            (cell.resolution.as_str(), cell.ratio.as_str()),
            (resolution, ratio)
        );
    }
    assert_eq!(rules.pixel_table().len(), table.len());
}

#[test]
fn default_seedance_1080p_has_no_pixels_u2() {
    let rules = seedance_rules(&ModelCatalog::default(), SEEDANCE);
    for ratio in rules.ratios() {
        assert_eq!(rules.pixels("1080p", ratio), None, "1080p {ratio}");
    }
}

#[test]
fn operator_file_adds_a_model_and_keeps_the_defaults() {
    let catalog = ModelCatalog::from_toml_str(
        r#"
        [models."doubao-seedance-2-0-fast"]
        family = "seedance"
        "#,
    )
    .expect("valid");
    let ids: Vec<&str> = catalog.model_ids().collect();
    assert_eq!(ids, vec![SEEDANCE, "doubao-seedance-2-0-fast", VEO]);
    assert_eq!(
        seedance_rules(&catalog, "doubao-seedance-2-0-fast"),
        seedance_rules(&catalog, SEEDANCE)
    );
}

#[test]
fn operator_model_overrides_durations_and_adds_1080p_pixels() {
    let catalog = ModelCatalog::from_toml_str(
        r#"
        [models."seedance-pro"]
        family = "seedance"
        durations = [5, 10]
        [models."seedance-pro".pixels."1080p"]
        "16:9" = "1920x1080"
        "#,
    )
    .expect("valid");
    let pro = seedance_rules(&catalog, "seedance-pro");
    assert_eq!(pro.durations(), &[5, 10]);
    assert_eq!(pro.pixels("1080p", "16:9"), Some(size(1920, 1080)));
    // `pixels` replaces the inherited table whole.
    assert_eq!(pro.pixels("720p", "16:9"), None);
    // The family and the other models are untouched.
    let default = seedance_rules(&catalog, SEEDANCE);
    assert_eq!(default.durations(), &[4, 5, 6, 8]);
    assert_eq!(default.pixels("1080p", "16:9"), None);
}

#[test]
fn operator_family_override_reaches_every_model_of_the_family() {
    let catalog = ModelCatalog::from_toml_str(
        r#"
        [families.veo]
        seconds = [4, 6, 8, 10]
        "#,
    )
    .expect("valid");
    assert_eq!(veo_rules(&catalog, VEO).seconds(), &[4, 6, 8, 10]);
    assert_eq!(
        veo_rules(&catalog, VEO).sizes(),
        &[size(1280, 720), size(720, 1280)]
    );
}

#[test]
fn operator_can_drop_default_models_and_allow_generic_passthrough() {
    let catalog = ModelCatalog::from_toml_str(
        r#"
        include_default_models = false
        unknown_models = "generic"
        max_upload_bytes = 1000
        [models."my-veo"]
        family = "veo"
        "#,
    )
    .expect("valid");
    assert_eq!(catalog.model_ids().collect::<Vec<_>>(), vec!["my-veo"]);
    assert_eq!(catalog.family_of(VEO), Some(ModelFamily::Generic));
    assert_eq!(catalog.family_of("anything"), Some(ModelFamily::Generic));
    assert_eq!(catalog.model("anything"), None);
    assert_eq!(catalog.max_upload_bytes(), 1000);
}

#[test]
fn load_reads_an_operator_file_merged_over_defaults() {
    let mut file = tempfile();
    writeln!(file.1, "[models.\"my-generic\"]\nfamily = \"generic\"").expect("write");
    let catalog = ModelCatalog::load(&file.0).expect("valid");
    assert_eq!(catalog.family_of("my-generic"), Some(ModelFamily::Generic));
    assert_eq!(catalog.family_of(VEO), Some(ModelFamily::Veo));
    std::fs::remove_file(&file.0).ok();
}

#[test]
fn load_errors_name_the_file_the_model_and_the_key() {
    let mut file = tempfile();
    writeln!(
        file.1,
        "[models.\"bad-seedance\"]\nfamily = \"seedance\"\nratios = [\"16:9\"]"
    )
    .expect("write");
    let error = ModelCatalog::load(&file.0).expect_err("invalid");
    let text = error.to_string();
    std::fs::remove_file(&file.0).ok();
    assert!(text.contains(&file.0.display().to_string()), "{text}");
    assert!(text.contains("bad-seedance"), "{text}");
    assert!(text.contains("pixels.480p."), "{text}");
}

#[test]
fn load_of_a_missing_file_names_it() {
    let path = std::env::temp_dir().join("vidgate-no-such-catalog.toml");
    let error = ModelCatalog::load(&path).expect_err("missing");
    assert!(matches!(error, CatalogError::Read { .. }), "{error:?}");
    assert!(error.to_string().contains("vidgate-no-such-catalog.toml"));
}

#[test]
fn load_refuses_a_file_over_the_size_bound() {
    let mut file = tempfile();
    let comment = format!("# {}\n", "x".repeat(1024));
    for _ in 0..1100 {
        file.1.write_all(comment.as_bytes()).expect("write");
    }
    let error = ModelCatalog::load(&file.0).expect_err("too large");
    std::fs::remove_file(&file.0).ok();
    assert!(matches!(error, CatalogError::TooLarge { .. }), "{error:?}");
}

#[test]
fn catalog_parse_errors_name_the_misspelt_key() {
    let error = ModelCatalog::from_toml_str("[families.veo]\nsecnds = [4]").expect_err("typo");
    assert!(matches!(error, CatalogError::Parse { .. }), "{error:?}");
    assert!(error.to_string().contains("secnds"), "{error}");
}

/// One row per rule the catalog itself must obey: (name, operator TOML, scope, key, problem
/// fragment).
#[test]
fn catalog_rejects_inconsistent_rule_sets() {
    let cases = [
        (
            "pixel cell for a ratio not allowed",
            "[families.seedance]\nratios = [\"16:9\"]",
            "families.seedance",
            "pixels.480p.1:1",
            "not in ratios",
        ),
        (
            "pixel row for a resolution not allowed",
            "[families.seedance]\nresolutions = [\"720p\"]",
            "families.seedance",
            "pixels.480p",
            "not in resolutions",
        ),
        (
            "pixel size that is not WxH",
            "[models.\"s\"]\nfamily = \"seedance\"\n[models.\"s\".pixels.\"720p\"]\n\"16:9\" = \"1280*720\"",
            "model \"s\"",
            "pixels.720p.16:9",
            "not a size",
        ),
        (
            "two cells with the same pixels",
            "[models.\"s\"]\nfamily = \"seedance\"\n[models.\"s\".pixels.\"720p\"]\n\"16:9\" = \"960x960\"\n\"1:1\" = \"960x960\"",
            "model \"s\"",
            "pixels.720p.1:1",
            "one cell",
        ),
        (
            "model without family",
            "[models.\"m\"]\nseconds = [4]",
            "model \"m\"",
            "family",
            "required",
        ),
        (
            "key of the other family",
            "[models.\"m\"]\nfamily = \"veo\"\ndurations = [4]",
            "model \"m\"",
            "durations",
            "seedance key",
        ),
        (
            "generic model with rule keys",
            "[models.\"m\"]\nfamily = \"generic\"\nsizes = [\"1x1\"]",
            "model \"m\"",
            "sizes",
            "veo key",
        ),
        (
            "family key in a family section",
            "[families.veo]\nfamily = \"veo\"",
            "families.veo",
            "family",
            "belongs in a",
        ),
        (
            "empty list",
            "[families.veo]\nseconds = []",
            "families.veo",
            "seconds",
            "at least one",
        ),
        (
            "zero seconds",
            "[families.veo]\nseconds = [0, 4]",
            "families.veo",
            "seconds",
            "upstream default",
        ),
        (
            "duplicate value",
            "[families.veo]\nseconds = [4, 4]",
            "families.veo",
            "seconds",
            "twice",
        ),
        (
            "Veo size that is not WxH",
            "[families.veo]\nsizes = [\"720p\"]",
            "families.veo",
            "sizes",
            "not a size",
        ),
        (
            "zero duration",
            "[families.seedance]\ndurations = [0]",
            "families.seedance",
            "durations",
            "not a duration",
        ),
        (
            "value with a space",
            "[families.veo]\nperson_generation = [\"allow all\"]",
            "families.veo",
            "person_generation",
            "plain value",
        ),
        (
            "zero upload limit",
            "max_upload_bytes = 0",
            "catalog",
            "max_upload_bytes",
            "at least 1",
        ),
        (
            "no models while rejecting unknown ones",
            "include_default_models = false",
            "catalog",
            "models",
            "every request would be refused",
        ),
        (
            "model id with a space",
            "[models.\"my model\"]\nfamily = \"veo\"",
            "model \"my model\"",
            "(model id)",
            "no spaces",
        ),
    ];
    for (name, toml, want_scope, want_key, want_problem) in cases {
        let (scope, key, problem) = invalid(ModelCatalog::from_toml_str(toml));
        assert_eq!(scope, want_scope, "{name}");
        assert_eq!(key, want_key, "{name}");
        assert!(problem.contains(want_problem), "{name}: {problem}");
    }
}

#[test]
fn catalog_rejects_a_negative_duration_as_a_type_error() {
    let error =
        ModelCatalog::from_toml_str("[families.seedance]\ndurations = [-4]").expect_err("negative");
    assert!(matches!(error, CatalogError::Parse { .. }), "{error:?}");
}

/// A file in the temp dir unique to this test process and call.
fn tempfile() -> (std::path::PathBuf, std::fs::File) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let path = std::env::temp_dir().join(format!(
        "vidgate-catalog-{}-{}.toml",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let file = std::fs::File::create(&path).expect("create temp file");
    (path, file)
}
