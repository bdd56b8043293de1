//! Issue #4 "Packaging", proved without a Docker engine: `docker-compose.yml` is valid against
//! the Compose Specification's JSON Schema (vendored in `tests/data/`, checked offline); every
//! variable the compose file and the Dockerfile set is one vidgate reads; every port, listen
//! address and the health check agree with the config; `deploy/vidgate.toml` loads with the real
//! loader; the collector config has what the compose file points vidgate at; and
//! `vidgate healthcheck` (the image's HEALTHCHECK) tells ready from unready.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use vidgate::config::{CONTAINER_PORTS, Config, ENVIRONMENT};
use vidgate::healthcheck::{self, HealthcheckError};

const GRPC_PORT: u16 = CONTAINER_PORTS[0];
const ADMIN_PORT: u16 = CONTAINER_PORTS[1];

fn read(path: &str) -> String {
    let full = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("reading {}: {e}", full.display()))
}

fn yaml(path: &str) -> Value {
    serde_norway::from_str(&read(path)).unwrap_or_else(|e| panic!("{path} is not YAML: {e}"))
}

fn compose() -> Value {
    yaml("docker-compose.yml")
}

fn vidgate_service(compose: &Value) -> &Value {
    &compose["services"]["vidgate"]
}

/// Every schema violation of `instance`, one line each, with where it is.
fn schema_errors(instance: &Value) -> Vec<String> {
    let schema: Value =
        serde_json::from_str(&read("tests/data/compose-spec.json")).expect("schema is JSON");
    let validator = jsonschema::draft7::new(&schema).expect("the compose schema compiles");
    validator
        .iter_errors(instance)
        .map(|e| format!("at {:?}: {e}", e.instance_path().as_str()))
        .collect()
}

/// A compose `environment` (map or `KEY=VALUE` list) as a map.
fn environment(service: &Value) -> BTreeMap<String, String> {
    match &service["environment"] {
        Value::Null => BTreeMap::new(),
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| {
                let value = match v {
                    Value::String(s) => s.clone(),
                    Value::Null => String::new(),
                    other => other.to_string(),
                };
                (k.clone(), value)
            })
            .collect(),
        Value::Array(items) => items
            .iter()
            .map(|item| {
                let item = item.as_str().expect("environment entries are strings");
                let (k, v) = item.split_once('=').unwrap_or((item, ""));
                (k.to_owned(), v.to_owned())
            })
            .collect(),
        other => panic!("environment is neither a map nor a list: {other}"),
    }
}

/// Compose interpolation as `docker compose` does it when the host sets none of the variables:
/// `${NAME:-default}` and `${NAME-default}` become the default, `${NAME}` becomes empty.
fn interpolate_unset(value: &str) -> String {
    let mut out = String::new();
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let end = rest[start..].find('}').expect("closed ${...}") + start;
        let inner = &rest[start + 2..end];
        if let Some((_, default)) = inner.split_once(":-").or_else(|| inner.split_once('-')) {
            out.push_str(default);
        }
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

/// One Dockerfile instruction: keyword (upper case) and its arguments, continuations joined.
struct Instruction {
    keyword: String,
    args: String,
}

fn dockerfile() -> Vec<Instruction> {
    let text = read("Dockerfile");
    let mut instructions = Vec::new();
    let mut pending = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        // Comment lines are dropped, also inside a continued instruction (Docker does so too).
        if trimmed.starts_with('#') || (trimmed.is_empty() && pending.is_empty()) {
            continue;
        }
        if let Some(head) = trimmed.strip_suffix('\\') {
            pending.push_str(head);
            pending.push(' ');
            continue;
        }
        pending.push_str(trimmed);
        let (keyword, args) = pending
            .split_once(char::is_whitespace)
            .expect("KEYWORD args");
        instructions.push(Instruction {
            keyword: keyword.to_ascii_uppercase(),
            args: args.trim().to_owned(),
        });
        pending.clear();
    }
    assert!(
        pending.is_empty(),
        "the Dockerfile ends inside a continuation"
    );
    instructions
}

fn args_of<'a>(all: &'a [Instruction], keyword: &str) -> Vec<&'a str> {
    all.iter()
        .filter(|i| i.keyword == keyword)
        .map(|i| i.args.as_str())
        .collect()
}

/// `ENV A=1 B=2` and the legacy `ENV A 1`, from every stage.
fn dockerfile_env(all: &[Instruction]) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    for args in args_of(all, "ENV") {
        let first = args.split_whitespace().next().unwrap_or_default();
        if first.contains('=') {
            for pair in args.split_whitespace() {
                let (k, v) = pair.split_once('=').expect("ENV KEY=VALUE");
                env.insert(k.to_owned(), v.trim_matches('"').to_owned());
            }
        } else {
            let (k, v) = args.split_once(char::is_whitespace).expect("ENV KEY VALUE");
            env.insert(k.to_owned(), v.trim().to_owned());
        }
    }
    env
}

/// The exec form `["a", "b"]` as its words.
fn exec_form(args: &str) -> Vec<String> {
    serde_json::from_str(args).unwrap_or_else(|e| panic!("{args:?} is not exec form: {e}"))
}

fn known_variables() -> BTreeSet<&'static str> {
    ENVIRONMENT.iter().map(|(name, _)| *name).collect()
}

fn port_of(addr: &str) -> u16 {
    addr.parse::<std::net::SocketAddr>()
        .unwrap_or_else(|e| panic!("{addr:?} is not host:port: {e}"))
        .port()
}

/// The container side of a compose `ports` entry: short syntax
/// `[[IP:]HOST:]CONTAINER[/PROTO]`, a bare number, or the long syntax's `target`.
fn container_port(entry: &Value) -> u16 {
    match entry {
        Value::Number(n) => n.as_u64().expect("a port number") as u16,
        Value::String(s) => {
            let without_proto = s.split('/').next().unwrap_or(s);
            let container = without_proto.rsplit(':').next().unwrap_or(without_proto);
            container
                .parse()
                .unwrap_or_else(|e| panic!("{s:?}: container port {container:?}: {e}"))
        }
        Value::Object(map) => match &map["target"] {
            Value::Number(n) => n.as_u64().expect("a port number") as u16,
            Value::String(s) => s.parse().expect("a port number"),
            other => panic!("target {other}"),
        },
        other => panic!("a ports entry cannot be {other}"),
    }
}

/// The host side, when the entry publishes one.
fn published_port(entry: &Value) -> Option<u16> {
    match entry {
        Value::String(s) => {
            let without_proto = s.split('/').next().unwrap_or(s);
            let parts: Vec<&str> = without_proto.rsplit(':').collect();
            parts.get(1).map(|p| p.parse().expect("a host port"))
        }
        Value::Object(map) => map.get("published").map(|p| match p {
            Value::Number(n) => n.as_u64().expect("a port number") as u16,
            Value::String(s) => s.parse().expect("a port number"),
            other => panic!("published {other}"),
        }),
        _ => None,
    }
}

/// A bind mount's `(source, target)` from the short `SRC:DST[:MODE]` or the long syntax.
fn mounts(service: &Value) -> Vec<(String, String)> {
    service["volumes"]
        .as_array()
        .map(|volumes| {
            volumes
                .iter()
                .map(|v| match v {
                    Value::String(s) => {
                        let mut parts = s.split(':');
                        let source = parts.next().unwrap_or_default().to_owned();
                        let target = parts.next().unwrap_or_default().to_owned();
                        (source, target)
                    }
                    Value::Object(map) => (
                        map["source"].as_str().unwrap_or_default().to_owned(),
                        map["target"].as_str().unwrap_or_default().to_owned(),
                    ),
                    other => panic!("a volumes entry cannot be {other}"),
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn compose_file_is_valid_against_the_compose_specification_schema() {
    let compose = compose();
    let errors = schema_errors(&compose);
    assert!(
        errors.is_empty(),
        "docker-compose.yml breaks the Compose Specification:\n{}",
        errors.join("\n")
    );
}

#[test]
fn the_schema_check_rejects_broken_compose_files() {
    let mut bad_ports = compose();
    bad_ports["services"]["vidgate"]["ports"] = json!(5);
    let errors = schema_errors(&bad_ports);
    assert!(
        errors.iter().any(|e| e.contains("/services/vidgate/ports")),
        "ports: 5 was not rejected: {errors:?}"
    );

    let mut unknown_top_level = compose();
    unknown_top_level["servicez"] = json!({});
    let errors = schema_errors(&unknown_top_level);
    assert!(
        errors.iter().any(|e| e.contains("servicez")),
        "an unknown top-level key was not rejected: {errors:?}"
    );

    let mut misspelt = compose();
    misspelt["services"]["vidgate"]["enviroment"] = json!({"RUST_LOG": "info"});
    let errors = schema_errors(&misspelt);
    assert!(
        errors.iter().any(|e| e.contains("enviroment")),
        "a misspelt service key was not rejected: {errors:?}"
    );

    let mut bad_condition = compose();
    bad_condition["services"]["vidgate"]["depends_on"]["rabbitmq"]["condition"] =
        json!("service_ready");
    assert!(
        !schema_errors(&bad_condition).is_empty(),
        "an unknown depends_on condition was not rejected"
    );
}

#[test]
fn the_vendored_schema_is_the_one_its_readme_names() {
    let bytes =
        std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/compose-spec.json"))
            .expect("schema file");
    let digest = hex::encode(Sha256::digest(&bytes));
    let readme = read("tests/data/README.md");
    assert!(
        readme.contains(&digest),
        "tests/data/README.md does not name the schema's sha256 {digest}: update its provenance"
    );
}

#[test]
fn every_variable_the_deployment_sets_is_one_vidgate_reads() {
    let known = known_variables();
    let compose = compose();
    let compose_env = environment(vidgate_service(&compose));
    let docker_env = dockerfile_env(&dockerfile());
    assert!(!compose_env.is_empty() && !docker_env.is_empty());
    for (origin, env) in [
        ("docker-compose.yml", &compose_env),
        ("Dockerfile ENV", &docker_env),
    ] {
        let unknown: Vec<&String> = env.keys().filter(|k| !known.contains(k.as_str())).collect();
        assert!(
            unknown.is_empty(),
            "{origin} sets variables vidgate does not read (not in vidgate::config::ENVIRONMENT): {unknown:?}"
        );
    }
    for name in [
        "RUST_LOG",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_SERVICE_NAME",
        "VIDGATE_HEALTHCHECK_URL",
    ] {
        assert!(known.contains(name), "{name} is missing from ENVIRONMENT");
    }
    // Since opentelemetry-otlp 0.33 an endpoint without a scheme means https.
    let endpoint = &compose_env["OTEL_EXPORTER_OTLP_ENDPOINT"];
    assert!(endpoint.starts_with("http://"), "{endpoint}");
    // Without a key on the host, the container runs the built-in simulator.
    assert_eq!(interpolate_unset(&compose_env["TURING_API_KEY"]), "");
}

#[test]
fn published_ports_listen_addresses_and_expose_match_the_config() {
    let expected: BTreeSet<u16> = CONTAINER_PORTS.into_iter().collect();
    let compose = compose();
    let service = vidgate_service(&compose);

    let ports = service["ports"]
        .as_array()
        .expect("vidgate publishes ports");
    let targets: BTreeSet<u16> = ports.iter().map(container_port).collect();
    assert_eq!(targets, expected, "compose ports of vidgate");
    for entry in ports {
        if let Some(host) = published_port(entry) {
            assert_eq!(
                host,
                container_port(entry),
                "{entry}: same port on the host"
            );
        }
    }
    if let Some(expose) = service["expose"].as_array() {
        for entry in expose {
            assert!(expected.contains(&container_port(entry)), "expose {entry}");
        }
    }

    let instructions = dockerfile();
    let exposed: BTreeSet<u16> = args_of(&instructions, "EXPOSE")
        .iter()
        .flat_map(|args| args.split_whitespace())
        .map(|p| p.split('/').next().unwrap_or(p).parse().expect("a port"))
        .collect();
    assert_eq!(exposed, expected, "Dockerfile EXPOSE");

    // The container's environment (Dockerfile, then compose over it) through the real loader.
    let mut env = dockerfile_env(&instructions);
    env.extend(
        environment(service)
            .into_iter()
            .map(|(k, v)| (k, interpolate_unset(&v))),
    );
    for name in ["VIDGATE_GRPC_LISTEN", "VIDGATE_ADMIN_LISTEN"] {
        assert!(
            env.contains_key(name),
            "{name} is not set for the container"
        );
    }
    let mut config = Config::default();
    config
        .apply_env(|name| env.get(name).cloned())
        .expect("the container environment is valid");
    assert_eq!(config.server.grpc_listen.port(), GRPC_PORT);
    assert_eq!(config.admin.listen.port(), ADMIN_PORT);
    assert!(
        config.server.grpc_listen.ip().is_unspecified(),
        "gRPC must listen on all interfaces"
    );
    assert!(
        config.admin.listen.ip().is_unspecified(),
        "admin must listen on all interfaces"
    );
    assert_eq!(port_of(&env["VIDGATE_GRPC_LISTEN"]), GRPC_PORT);
    assert!(config.amqp.enabled(), "compose wires RabbitMQ");

    // The data directory is the image's volume and the compose named volume's mount point.
    let data_dir = config
        .storage
        .data_dir
        .to_str()
        .expect("utf-8 path")
        .to_owned();
    let volumes = args_of(&instructions, "VOLUME");
    assert!(
        volumes
            .iter()
            .any(|v| v.contains(&format!("\"{data_dir}\"")) || *v == data_dir),
        "Dockerfile VOLUME {volumes:?} is not {data_dir}"
    );
    let mounted = mounts(service);
    let (source, _) = mounted
        .iter()
        .find(|(_, target)| *target == data_dir)
        .unwrap_or_else(|| panic!("compose mounts nothing at {data_dir}: {mounted:?}"));
    assert!(
        compose["volumes"].get(source).is_some(),
        "{source} is not a named volume"
    );
}

#[test]
fn the_image_runs_vidgate_serve_as_a_non_root_user_with_a_readiness_healthcheck() {
    let instructions = dockerfile();
    let froms = args_of(&instructions, "FROM");
    assert!(froms.len() >= 2, "multi-stage: {froms:?}");
    assert!(froms[0].starts_with("rust:1.95-bookworm"), "{froms:?}");
    assert!(
        froms[froms.len() - 1].starts_with("debian:bookworm-slim"),
        "{froms:?}"
    );
    assert!(
        args_of(&instructions, "RUN")
            .iter()
            .any(|r| r.contains("cargo build --release --locked")),
        "the builder builds with --release --locked"
    );

    let user = args_of(&instructions, "USER");
    let user = user.last().expect("a USER");
    let uid = user.split(':').next().unwrap_or(user);
    assert!(uid != "0" && uid != "root", "runs as {user}");

    assert_eq!(
        exec_form(
            args_of(&instructions, "ENTRYPOINT")
                .last()
                .expect("ENTRYPOINT")
        ),
        ["vidgate"]
    );
    assert_eq!(
        exec_form(args_of(&instructions, "CMD").last().expect("CMD")),
        ["serve"]
    );

    let healthcheck = args_of(&instructions, "HEALTHCHECK");
    let healthcheck = healthcheck.last().expect("a HEALTHCHECK");
    let (_, command) = healthcheck.split_once("CMD").expect("HEALTHCHECK ... CMD");
    let words = exec_form(command.trim());
    assert_eq!(words[..2], ["vidgate", "healthcheck"], "{words:?}");
    let env = dockerfile_env(&instructions);
    let url = words
        .iter()
        .position(|w| w == "--url")
        .map(|i| words[i + 1].clone())
        .or_else(|| env.get(healthcheck::URL_ENV).cloned())
        .unwrap_or_else(|| healthcheck::DEFAULT_URL.to_owned());
    let url = url::Url::parse(&url).expect("the health check URL");
    assert_eq!(url.port(), Some(ADMIN_PORT), "{url}");
    assert_eq!(url.path(), "/readyz", "{url}");
    let default = url::Url::parse(healthcheck::DEFAULT_URL).expect("DEFAULT_URL");
    assert_eq!(default.port(), Some(ADMIN_PORT));
}

#[test]
fn the_mounted_config_loads_with_the_real_loader_and_accepts_the_demo_token() {
    let compose = compose();
    let service = vidgate_service(&compose);
    let config_path = environment(service)
        .remove("VIDGATE_CONFIG")
        .expect("compose names the config file");
    assert!(
        mounts(service)
            .iter()
            .any(|(source, target)| source == "./deploy/vidgate.toml" && *target == config_path),
        "deploy/vidgate.toml is not mounted at {config_path}"
    );

    let config =
        Config::from_toml(&read("deploy/vidgate.toml")).expect("deploy/vidgate.toml parses");
    config.validate().expect("deploy/vidgate.toml validates");
    vidgate::api::auth::Authenticator::new(&config.auth).expect("its [auth] section loads");
    let demo_hash = hex::encode(Sha256::digest(b"demo-token-change-me"));
    assert!(
        config.auth.tokens.iter().any(|t| t.sha256 == demo_hash),
        "the demo token's hash is not accepted"
    );
    // With the compose environment on top, as `vidgate serve` loads it in the container.
    let mut env = dockerfile_env(&dockerfile());
    env.extend(
        environment(service)
            .into_iter()
            .map(|(k, v)| (k, interpolate_unset(&v))),
    );
    let mut config = config;
    config
        .apply_env(|name| env.get(name).cloned())
        .expect("env applies");
    config
        .validate()
        .expect("the container's whole config validates");
    assert!(
        config.uses_simulator(),
        "no key on the host means the simulator"
    );
}

#[test]
fn the_collector_receives_what_vidgate_sends_and_forwards_traces_to_jaeger() {
    let compose = compose();
    let services = compose["services"].as_object().expect("services");
    let endpoint =
        url::Url::parse(&environment(vidgate_service(&compose))["OTEL_EXPORTER_OTLP_ENDPOINT"])
            .expect("an endpoint URL");
    let collector_host = endpoint.host_str().expect("a host");
    assert!(
        services.contains_key(collector_host),
        "{collector_host} is not a compose service"
    );
    assert_eq!(endpoint.port(), Some(4317), "OTLP/gRPC");

    let collector = &compose["services"][collector_host];
    let command: Vec<String> =
        serde_json::from_value(collector["command"].clone()).unwrap_or_default();
    let config_target = command
        .iter()
        .find_map(|c| c.strip_prefix("--config="))
        .unwrap_or("/etc/otelcol-contrib/config.yaml");
    assert!(
        mounts(collector)
            .iter()
            .any(|(source, target)| source == "./deploy/otel-collector.yaml"
                && target == config_target),
        "deploy/otel-collector.yaml is not mounted at {config_target}"
    );

    let otel = yaml("deploy/otel-collector.yaml");
    let grpc = otel["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"]
        .as_str()
        .expect("an OTLP gRPC receiver with an endpoint");
    assert_eq!(
        Some(port_of(grpc)),
        endpoint.port(),
        "the receiver vidgate is pointed at: {grpc}"
    );
    assert!(
        grpc.starts_with("0.0.0.0:"),
        "reachable from other containers: {grpc}"
    );

    let pipelines = otel["service"]["pipelines"].as_object().expect("pipelines");
    for (name, pipeline) in pipelines {
        for (kind, section) in [
            ("receivers", "receivers"),
            ("processors", "processors"),
            ("exporters", "exporters"),
        ] {
            for component in pipeline[kind].as_array().into_iter().flatten() {
                let component = component.as_str().expect("a component name");
                assert!(
                    otel[section].get(component).is_some(),
                    "pipeline {name} uses {kind} {component}, which is not defined"
                );
            }
        }
        let receivers = pipeline["receivers"].as_array().expect("receivers");
        assert!(
            receivers.contains(&json!("otlp")),
            "pipeline {name} does not receive OTLP"
        );
    }
    assert!(pipelines.contains_key("metrics"), "a metrics pipeline");
    let traces = &pipelines["traces"];
    let to_jaeger = traces["exporters"]
        .as_array()
        .expect("trace exporters")
        .iter()
        .filter_map(|e| otel["exporters"][e.as_str().unwrap_or_default()]["endpoint"].as_str())
        .any(|endpoint| {
            let host = endpoint.rsplit_once(':').map_or(endpoint, |(h, _)| h);
            let host = host.rsplit('/').next().unwrap_or(host);
            host == "jaeger" && services.contains_key("jaeger")
        });
    assert!(to_jaeger, "traces are not exported to the jaeger service");
}

#[test]
fn rabbitmq_is_healthy_before_vidgate_starts_and_the_amqp_url_names_it() {
    let compose = compose();
    let depends = &vidgate_service(&compose)["depends_on"]["rabbitmq"];
    assert_eq!(depends["condition"], "service_healthy");
    let rabbit = &compose["services"]["rabbitmq"];
    let test = rabbit["healthcheck"]["test"]
        .as_array()
        .expect("a healthcheck");
    assert!(test.contains(&json!("rabbitmq-diagnostics")) && test.contains(&json!("ping")));
    let url = url::Url::parse(&environment(vidgate_service(&compose))["VIDGATE_AMQP_URL"])
        .expect("AMQP URL");
    assert_eq!(url.host_str(), Some("rabbitmq"));
    assert_eq!(url.port(), Some(5672));
}

#[test]
fn both_replicas_share_postgresql_once_it_is_healthy_and_one_bucket_for_the_videos() {
    let compose = compose();
    let postgres = &compose["services"]["postgres"];
    let test = postgres["healthcheck"]["test"]
        .as_array()
        .expect("PostgreSQL has a healthcheck");
    assert!(test.contains(&json!("pg_isready")), "{test:?}");
    let env = environment(postgres);
    let minio = environment(&compose["services"]["minio"]);
    let init = compose["services"]["minio-init"]["entrypoint"].to_string();
    let mut buckets = Vec::new();
    let mut volumes = Vec::new();
    for name in ["vidgate", "vidgate-2"] {
        let service = &compose["services"][name];
        assert_eq!(
            service["depends_on"]["postgres"]["condition"], "service_healthy",
            "{name} waits for PostgreSQL"
        );
        let vars = environment(service);
        let url = url::Url::parse(&vars["VIDGATE_DATABASE_URL"])
            .unwrap_or_else(|e| panic!("{name}: VIDGATE_DATABASE_URL: {e}"));
        assert_eq!(url.scheme(), "postgres");
        assert_eq!(url.host_str(), Some("postgres"));
        assert_eq!(url.port(), Some(5432));
        assert_eq!(url.username(), env["POSTGRES_USER"]);
        assert_eq!(url.password(), Some(env["POSTGRES_PASSWORD"].as_str()));
        assert_eq!(url.path(), format!("/{}", env["POSTGRES_DB"]));
        // The videos: MinIO's bucket, with MinIO's credentials, at MinIO's address.
        let blob = url::Url::parse(&vars["VIDGATE_BLOB_URL"])
            .unwrap_or_else(|e| panic!("{name}: VIDGATE_BLOB_URL: {e}"));
        assert_eq!(blob.scheme(), "s3");
        let bucket = blob.host_str().expect("a bucket").to_owned();
        assert!(
            init.contains(&format!("local/{bucket}")),
            "minio-init creates the bucket {bucket}: {init}"
        );
        assert_eq!(vars["VIDGATE_BLOB_ENDPOINT"], "http://minio:9000");
        assert_eq!(vars["AWS_ACCESS_KEY_ID"], minio["MINIO_ROOT_USER"]);
        assert_eq!(vars["AWS_SECRET_ACCESS_KEY"], minio["MINIO_ROOT_PASSWORD"]);
        buckets.push(vars["VIDGATE_BLOB_URL"].clone());
        volumes.push(
            service["volumes"]
                .as_array()
                .expect("volumes")
                .iter()
                .find(|v| v.as_str().is_some_and(|v| v.ends_with(":/var/lib/vidgate")))
                .cloned()
                .unwrap_or_else(|| panic!("{name} mounts a data volume")),
        );
    }
    assert_eq!(
        buckets[0], buckets[1],
        "the replicas share the videos' bucket"
    );
    assert_ne!(
        volumes[0], volumes[1],
        "each replica stages its downloads on a volume of its own"
    );
    assert_eq!(
        compose["services"]["vidgate"]["depends_on"]["minio-init"]["condition"],
        "service_completed_successfully",
        "the first replica starts once the bucket exists"
    );
    // Only the first replica is built; both run that image.
    assert_eq!(
        compose["services"]["vidgate"]["image"],
        compose["services"]["vidgate-2"]["image"]
    );
}

#[test]
fn the_tls_variant_is_opt_in_and_its_files_come_from_the_mounted_directory() {
    let compose = compose();
    let service = &compose["services"]["vidgate-tls"];
    assert_eq!(
        service["profiles"],
        json!(["tls"]),
        "TLS is a profile: plain `docker compose up` stays plaintext"
    );
    assert!(
        environment(vidgate_service(&compose))
            .keys()
            .all(|k| !k.starts_with("VIDGATE_TLS_")),
        "the default replica speaks plaintext"
    );
    let known = known_variables();
    let mut env = dockerfile_env(&dockerfile());
    env.extend(
        environment(service)
            .into_iter()
            .map(|(k, v)| (k, interpolate_unset(&v))),
    );
    for name in env.keys() {
        assert!(
            known.contains(name.as_str()),
            "{name} is not read by vidgate"
        );
    }
    let mut config = Config::default();
    config
        .apply_env(|name| env.get(name).cloned())
        .expect("the TLS variant's environment is valid");
    let tls = config.server.tls.expect("TLS is on");
    let (source, target) = mounts(service)
        .into_iter()
        .find(|(_, target)| tls.cert_path.starts_with(target))
        .expect("the certificate's directory is mounted");
    assert!(
        tls.key_path.starts_with(&target)
            && tls
                .client_ca_path
                .as_ref()
                .is_some_and(|ca| ca.starts_with(&target)),
        "{tls:?} outside {target}"
    );
    // The files deploy/tls/dev-certs.sh writes into the mounted directory.
    let script = read("deploy/tls/dev-certs.sh");
    assert_eq!(source, "./deploy/tls");
    for path in [&tls.cert_path, &tls.key_path] {
        let name = path
            .file_stem()
            .and_then(|n| n.to_str())
            .expect("a file name");
        assert!(script.contains(&format!("leaf {name} ")), "{name}");
    }
    assert!(script.contains("-out ca.pem"));
}

/// A tiny admin port: `/readyz` ready, `/unready` 503 with a long body, `/hang` never answers.
async fn admin_stub() -> (String, tokio::task::JoinHandle<()>) {
    let long_reason = format!("broker: unreachable {}", "x".repeat(500));
    let app = Router::new()
        .route("/readyz", get(|| async { "ready" }))
        .route(
            "/unready",
            get(move || async move { (StatusCode::SERVICE_UNAVAILABLE, long_reason) }),
        )
        .route(
            "/hang",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(60)).await;
                "late"
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let server = tokio::spawn(async move {
        axum::serve(listener, app).await.expect("serve");
    });
    (base, server)
}

/// A port nobody listens on.
async fn closed_port_url() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    format!("http://{addr}/readyz")
}

#[tokio::test]
async fn healthcheck_is_ok_on_2xx() {
    let (base, server) = admin_stub().await;
    healthcheck::check(&format!("{base}/readyz"), Duration::from_secs(3))
        .await
        .expect("200 is healthy");
    server.abort();
}

#[tokio::test]
async fn healthcheck_names_the_status_and_quotes_at_most_200_bytes_of_the_body() {
    let (base, server) = admin_stub().await;
    let url = format!("{base}/unready");
    let err = healthcheck::check(&url, Duration::from_secs(3))
        .await
        .expect_err("503 is unhealthy");
    let HealthcheckError::Unhealthy { status, body, .. } = &err else {
        panic!("{err}");
    };
    assert_eq!(*status, 503);
    assert!(body.starts_with("broker: unreachable"), "{body}");
    assert!(
        body.len() <= healthcheck::BODY_PREVIEW_BYTES,
        "{}",
        body.len()
    );
    let message = err.to_string();
    assert!(
        message.contains("503") && message.contains(&url),
        "{message}"
    );
    server.abort();
}

#[tokio::test]
async fn healthcheck_names_the_url_when_nothing_listens() {
    let url = closed_port_url().await;
    let err = healthcheck::check(&url, Duration::from_secs(3))
        .await
        .expect_err("refused is unhealthy");
    assert!(matches!(err, HealthcheckError::Unreachable { .. }), "{err}");
    assert!(err.to_string().contains(&url), "{err}");
}

#[tokio::test]
async fn healthcheck_gives_up_after_its_timeout() {
    let (base, server) = admin_stub().await;
    let started = Instant::now();
    let err = healthcheck::check(&format!("{base}/hang"), Duration::from_millis(300))
        .await
        .expect_err("no answer in time is unhealthy");
    assert!(matches!(err, HealthcheckError::Unreachable { .. }), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    server.abort();
}

/// Runs the real binary as the image's HEALTHCHECK does.
async fn run_healthcheck(args: &[&str], env_url: Option<&str>) -> (Option<i32>, String) {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_vidgate"));
    command
        .arg("healthcheck")
        .args(args)
        .env_remove(healthcheck::URL_ENV)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    if let Some(url) = env_url {
        command.env(healthcheck::URL_ENV, url);
    }
    let output = tokio::time::timeout(Duration::from_secs(30), command.output())
        .await
        .expect("healthcheck finishes")
        .expect("runs");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test]
async fn the_healthcheck_subcommand_exits_0_when_ready_and_1_with_the_reason_otherwise() {
    let (base, server) = admin_stub().await;
    let ready = format!("{base}/readyz");
    let (code, stderr) = run_healthcheck(&["--url", &ready], None).await;
    assert_eq!(code, Some(0), "{stderr}");

    // The Dockerfile's way: the URL from VIDGATE_HEALTHCHECK_URL, no flag.
    let (code, stderr) = run_healthcheck(&[], Some(&ready)).await;
    assert_eq!(code, Some(0), "{stderr}");

    let (code, stderr) = run_healthcheck(&["--url", &format!("{base}/unready")], None).await;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("503"), "{stderr}");

    let closed = closed_port_url().await;
    let (code, stderr) = run_healthcheck(&["--url", &closed, "--timeout-ms", "1000"], None).await;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains(&closed), "{stderr}");
    server.abort();
}
