//! The upstream simulator over raw HTTP (reqwest, not vidgate's client): the contract's rules
//! (V1-V5, S1-S10, U1-U3), auth, status timing, content with `Range`, the last frame, every
//! fault kind, and the counters tests rely on.

use std::io::Cursor;
use std::time::{Duration, Instant};

use futures::StreamExt;
use reqwest::StatusCode;
use reqwest::multipart::{Form, Part};
use serde_json::{Value, json};
use vidgate::media::probe_mp4;
use vidgate::upstream::sim::mp4gen::GeneratedMp4;
use vidgate::upstream::sim::{
    Fault, FaultEndpoint, FaultRule, SimConfig, SimHandle, SimStats, Simulator,
};

const VEO: &str = "turing/veo-3.1-generate";
const SEEDANCE: &str = "doubao-seedance-2-0-260128";
const TEN_MIB: usize = 10 * 1024 * 1024;
/// Far above any timing a test configures, so a slow CI box fails only on real hangs.
const WAIT_LIMIT: Duration = Duration::from_secs(20);

/// Tasks complete at once: for tests about rules, content and faults, not timing.
fn instant_config() -> SimConfig {
    SimConfig {
        queued_ms: 0,
        processing_ms: 0,
        jitter: 0.0,
        ..SimConfig::default()
    }
}

async fn start(config: SimConfig) -> SimHandle {
    Simulator::start(config, "127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("simulator starts")
}

struct Api {
    http: reqwest::Client,
    sim: SimHandle,
}

impl Api {
    async fn new(config: SimConfig) -> Api {
        Api {
            http: reqwest::Client::new(),
            sim: start(config).await,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.sim.base_url())
    }

    fn backdoor(&self, path: &str) -> String {
        format!("http://{}{path}", self.sim.addr())
    }

    async fn create(&self, body: &Value) -> (StatusCode, Value) {
        let resp = self
            .http
            .post(self.url("/videos"))
            .bearer_auth(self.sim.api_key())
            .json(body)
            .send()
            .await
            .expect("create answered");
        let status = resp.status();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    async fn create_form(&self, form: Form) -> (StatusCode, Value) {
        let resp = self
            .http
            .post(self.url("/videos"))
            .bearer_auth(self.sim.api_key())
            .multipart(form)
            .send()
            .await
            .expect("create answered");
        let status = resp.status();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    async fn created_id(&self, body: &Value) -> String {
        let (status, answer) = self.create(body).await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        answer["id"].as_str().expect("id").to_owned()
    }

    async fn get(&self, id: &str) -> (StatusCode, Value) {
        let resp = self
            .http
            .get(self.url(&format!("/videos/{id}")))
            .bearer_auth(self.sim.api_key())
            .send()
            .await
            .expect("status answered");
        let status = resp.status();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    async fn content(&self, id: &str, range: Option<&str>) -> reqwest::Response {
        let mut req = self
            .http
            .get(self.url(&format!("/videos/{id}/content")))
            .bearer_auth(self.sim.api_key());
        if let Some(range) = range {
            req = req.header(reqwest::header::RANGE, range);
        }
        req.send().await.expect("content answered")
    }

    /// Poll until a terminal status (whatever its spelling), returning every status seen.
    async fn wait_done(&self, id: &str, done: &[&str]) -> (Value, Vec<String>) {
        let start = Instant::now();
        let mut seen: Vec<String> = Vec::new();
        loop {
            let (status, body) = self.get(id).await;
            assert_eq!(status, StatusCode::OK, "{body}");
            let s = body["status"].as_str().expect("status").to_owned();
            if seen.last() != Some(&s) {
                seen.push(s.clone());
            }
            if done.contains(&s.as_str()) {
                return (body, seen);
            }
            assert!(start.elapsed() < WAIT_LIMIT, "stuck at {seen:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn stats_over_http(&self) -> SimStats {
        self.http
            .get(self.backdoor("/_sim/stats"))
            .send()
            .await
            .expect("stats")
            .json()
            .await
            .expect("stats json")
    }
}

fn veo(prompt: &str) -> Value {
    json!({"prompt": prompt, "model": VEO, "size": "1280x720", "seconds": "6"})
}

fn seedance(prompt: &str) -> Value {
    json!({"prompt": prompt, "model": SEEDANCE})
}

/// `base` with `patch`'s fields set; a `null` in the patch removes the field.
fn with(base: Value, patch: Value) -> Value {
    let mut out = base;
    if let (Some(o), Some(p)) = (out.as_object_mut(), patch.as_object()) {
        for (k, v) in p {
            if v.is_null() {
                o.remove(k);
            } else {
                o.insert(k.clone(), v.clone());
            }
        }
    }
    out
}

fn assert_field_error(answer: &Value, param: &str, code: &str, context: &str) {
    let err = &answer["error"];
    assert_eq!(err["type"], "invalid_request_error", "{context}: {answer}");
    assert_eq!(err["code"], code, "{context}: {answer}");
    assert_eq!(err["param"], param, "{context}: {answer}");
    let message = err["message"].as_str().expect("message");
    assert!(
        message.contains(param),
        "{context}: message must name `{param}`: {message}"
    );
}

fn image_part(bytes: Vec<u8>, name: &str, mime: &str) -> Part {
    Part::bytes(bytes)
        .file_name(name.to_owned())
        .mime_str(mime)
        .expect("mime")
}

fn veo_form(file: Part) -> Form {
    Form::new()
        .text("prompt", "from the facade to the real Pompidou Center")
        .text("model", VEO)
        .text("size", "1280x720")
        .text("seconds", "6")
        .text("personGeneration", "allow_all")
        .part("input_reference", file)
}

/// One table row: a JSON body, and `None` for 200 or `Some(param)` for a 400 naming it.
type Row = (&'static str, Value, Option<&'static str>);

async fn run_rows(api: &Api, rows: Vec<Row>) {
    for (rule, body, refused) in rows {
        let (status, answer) = api.create(&body).await;
        match refused {
            None => assert_eq!(status, StatusCode::OK, "{rule}: {body} -> {answer}"),
            Some(param) => {
                assert_eq!(
                    status,
                    StatusCode::BAD_REQUEST,
                    "{rule}: {body} -> {answer}"
                );
                assert_field_error(&answer, param, "invalid_parameter", rule);
            }
        }
    }
}

#[tokio::test]
async fn sim_enforces_veo_rules_v1_v2_v5_with_400_naming_the_field() {
    let api = Api::new(instant_config()).await;
    let b = || veo("a cat");
    let rows: Vec<Row> = vec![
        ("V1", with(b(), json!({"seconds": "4"})), None),
        ("V1", with(b(), json!({"seconds": "6"})), None),
        ("V1", with(b(), json!({"seconds": "8"})), None),
        ("V1", with(b(), json!({"seconds": "5"})), Some("seconds")),
        ("V1", with(b(), json!({"seconds": "10"})), Some("seconds")),
        ("V1", with(b(), json!({"seconds": ""})), Some("seconds")),
        (
            "V1 string",
            with(b(), json!({"seconds": 6})),
            Some("seconds"),
        ),
        ("V2", with(b(), json!({"size": "720x1280"})), None),
        ("V2", with(b(), json!({"size": "1920x1080"})), Some("size")),
        ("V2", with(b(), json!({"size": "1280*720"})), Some("size")),
        (
            "V5",
            with(b(), json!({"personGeneration": "allow_all"})),
            None,
        ),
        (
            "V5",
            with(b(), json!({"personGeneration": "allow_adult"})),
            Some("personGeneration"),
        ),
        (
            "family",
            with(b(), json!({"duration": 6})),
            Some("duration"),
        ),
        (
            "family",
            with(b(), json!({"resolution": "720p"})),
            Some("resolution"),
        ),
        (
            "required",
            with(b(), json!({"prompt": null})),
            Some("prompt"),
        ),
        ("required", with(b(), json!({"prompt": ""})), Some("prompt")),
        ("required", with(b(), json!({"model": null})), Some("model")),
        (
            "defaults",
            with(b(), json!({"size": null, "seconds": null})),
            None,
        ),
    ];
    run_rows(&api, rows).await;

    let (status, answer) = api.create(&with(b(), json!({"model": "gpt-4o"}))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_field_error(&answer, "model", "model_not_found", "unknown model");
}

#[tokio::test]
async fn sim_veo_without_size_or_seconds_renders_the_simulators_1280x720_8s_choice() {
    let api = Api::new(instant_config()).await;
    let id = api.created_id(&json!({"prompt": "p", "model": VEO})).await;
    let (done, _) = api.wait_done(&id, &["completed"]).await;
    assert_eq!(done["size"], "1280x720");
    assert_eq!(done["seconds"], "8");
}

#[tokio::test]
async fn sim_enforces_seedance_rules_s1_s10_and_accepts_u2_1080p_and_u3_21_9() {
    let api = Api::new(instant_config()).await;
    let b = || seedance("a cat");
    let https_image =
        json!({"type": "image_url", "image_url": {"url": "https://example.com/a.jpg"}});
    let data_image =
        json!({"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}});
    let role = |mut item: Value, role: &str| {
        item["role"] = json!(role);
        item
    };
    let video = json!({"type": "video_url", "video_url": {"url": "https://example.com/v.mp4"}});
    let audio = json!({"type": "audio_url", "audio_url": {"url": "https://example.com/a.mp3"}});
    let mut rows: Vec<Row> = vec![
        ("S1", with(b(), json!({"model": null})), Some("model")),
        ("S1", with(b(), json!({"model": 7})), Some("model")),
        ("S2", with(b(), json!({"prompt": null})), Some("prompt")),
        ("S2", with(b(), json!({"prompt": 5})), Some("prompt")),
        ("S3", with(b(), json!({"content": []})), None),
        ("S3", with(b(), json!({"content": "text"})), Some("content")),
        (
            "S3",
            with(
                b(),
                json!({"content": [{"type": "text", "text": "t"}, https_image.clone()]}),
            ),
            None,
        ),
        (
            "S3",
            with(b(), json!({"content": [data_image.clone()]})),
            None,
        ),
        (
            "S3",
            with(b(), json!({"content": [{"type": "file"}]})),
            Some("content[0].type"),
        ),
        (
            "S3",
            with(b(), json!({"content": [{"type": "text"}]})),
            Some("content[0].text"),
        ),
        (
            "S3",
            with(
                b(),
                json!({"content": [{"type": "image_url", "image_url": {"url": "http://example.com/a.jpg"}}]}),
            ),
            Some("content[0].image_url.url"),
        ),
        (
            "S3",
            with(
                b(),
                json!({"content": [{"type": "image_url", "image_url": {"url": "data:text/plain;base64,aGk="}}]}),
            ),
            Some("content[0].image_url.url"),
        ),
        (
            "S3",
            with(
                b(),
                json!({"content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,@@@"}}]}),
            ),
            Some("content[0].image_url.url"),
        ),
        (
            "S3",
            with(
                b(),
                json!({"content": [{"type": "video_url", "video_url": {"url": "http://example.com/v.mp4"}}]}),
            ),
            Some("content[0].video_url.url"),
        ),
        (
            "S3",
            with(
                b(),
                json!({"content": [role(https_image.clone(), "reference_image"), role(video.clone(), "reference_video")]}),
            ),
            None,
        ),
        (
            "S3",
            with(
                b(),
                json!({"content": [role(https_image.clone(), "reference_image"), role(audio.clone(), "reference_audio")]}),
            ),
            None,
        ),
        (
            "S3 audio alone",
            with(b(), json!({"content": [audio.clone()]})),
            Some("content"),
        ),
        (
            "S3 roles",
            with(
                b(),
                json!({"content": [https_image.clone(), https_image.clone()]}),
            ),
            Some("content[0].role"),
        ),
        (
            "S3 roles",
            with(
                b(),
                json!({"content": [role(https_image.clone(), "first_frame"), role(https_image.clone(), "last_frame")]}),
            ),
            None,
        ),
        (
            "S3 roles",
            with(
                b(),
                json!({"content": [role(https_image.clone(), "last_frame")]}),
            ),
            Some("content"),
        ),
        (
            "S3 roles",
            with(
                b(),
                json!({"content": [role(https_image.clone(), "first_frame"), role(video.clone(), "reference_video")]}),
            ),
            Some("content"),
        ),
        (
            "S3 roles",
            with(
                b(),
                json!({"content": [role(video.clone(), "first_frame")]}),
            ),
            Some("content[0].role"),
        ),
        (
            "S4",
            with(b(), json!({"resolution": "4k"})),
            Some("resolution"),
        ),
        ("S5", with(b(), json!({"ratio": "2:1"})), Some("ratio")),
        ("S6", with(b(), json!({"duration": 7})), Some("duration")),
        ("S6", with(b(), json!({"duration": 10})), Some("duration")),
        (
            "S6 int",
            with(b(), json!({"duration": "5"})),
            Some("duration"),
        ),
        (
            "S6 int",
            with(b(), json!({"duration": 5.5})),
            Some("duration"),
        ),
        ("S7", with(b(), json!({"seed": 42})), None),
        ("S7", with(b(), json!({"seed": "42"})), Some("seed")),
        ("S8", with(b(), json!({"watermark": true})), None),
        (
            "S8",
            with(b(), json!({"watermark": "yes"})),
            Some("watermark"),
        ),
        ("S9", with(b(), json!({"generate_audio": false})), None),
        (
            "S9",
            with(b(), json!({"generate_audio": 1})),
            Some("generate_audio"),
        ),
        ("S10", with(b(), json!({"return_last_frame": true})), None),
        (
            "S10",
            with(b(), json!({"return_last_frame": "true"})),
            Some("return_last_frame"),
        ),
        (
            "V5 on Seedance",
            with(b(), json!({"personGeneration": "allow_all"})),
            Some("personGeneration"),
        ),
        (
            "family",
            with(b(), json!({"seconds": "5"})),
            Some("seconds"),
        ),
        ("size", with(b(), json!({"size": "864x496"})), None),
        (
            "size",
            with(b(), json!({"size": "1280x720", "resolution": "480p"})),
            Some("size"),
        ),
        (
            "size",
            with(b(), json!({"size": "1000x1000"})),
            Some("size"),
        ),
    ];
    for resolution in ["480p", "720p", "1080p"] {
        rows.push(("S4/U2", with(b(), json!({"resolution": resolution})), None));
    }
    for ratio in ["16:9", "4:3", "1:1", "3:4", "9:16", "21:9"] {
        rows.push(("S5/U3", with(b(), json!({"ratio": ratio})), None));
    }
    for duration in [4, 5, 6, 8] {
        rows.push(("S6", with(b(), json!({"duration": duration})), None));
    }
    run_rows(&api, rows).await;
}

#[tokio::test]
async fn sim_seedance_pixels_follow_the_page_table_and_the_simulators_defaults() {
    let api = Api::new(instant_config()).await;
    let cases = [
        (
            json!({"resolution": "480p", "ratio": "21:9"}),
            "992x432",
            "5",
        ),
        (
            json!({"resolution": "720p", "ratio": "4:3", "duration": 8}),
            "1112x834",
            "8",
        ),
        (
            json!({"resolution": "1080p", "ratio": "16:9"}),
            "1920x1080",
            "5",
        ),
        (json!({"ratio": "9:16"}), "720x1280", "5"),
        (json!({}), "1280x720", "5"),
        (json!({"size": "560x752", "duration": 4}), "560x752", "4"),
    ];
    for (patch, size, seconds) in cases {
        let id = api.created_id(&with(seedance("p"), patch.clone())).await;
        let (done, _) = api.wait_done(&id, &["completed"]).await;
        assert_eq!(done["size"], size, "{patch}");
        assert_eq!(done["seconds"], seconds, "{patch}");
    }
}

#[tokio::test]
async fn sim_accepts_an_upload_of_exactly_10_mib_and_rejects_one_byte_more_v3() {
    let api = Api::new(instant_config()).await;
    let (status, answer) = api
        .create_form(veo_form(image_part(
            vec![0xAB; TEN_MIB],
            "pompidou.jpg",
            "image/jpeg",
        )))
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");

    let (status, answer) = api
        .create_form(veo_form(image_part(
            vec![0xAB; TEN_MIB + 1],
            "pompidou.jpg",
            "image/jpeg",
        )))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert_field_error(&answer, "input_reference", "invalid_parameter", "V3");

    let stats = api.sim.stats();
    assert_eq!(stats.creates_accepted, 1);
    assert_eq!(stats.creates_rejected.get(&400), Some(&1));
}

#[tokio::test]
async fn sim_rejects_uploads_that_are_not_images_or_lack_a_name_v3_v4() {
    let api = Api::new(instant_config()).await;
    let cases = [
        ("a.png", "image/png", true),
        ("a.webp", "image/webp", true),
        ("a.mp4", "video/mp4", false),
        ("a.mp3", "audio/mpeg", false),
        ("a.bin", "application/octet-stream", false),
        ("a.txt", "text/plain", false),
        ("", "image/jpeg", false),
    ];
    for (name, mime, ok) in cases {
        let part = if name.is_empty() {
            Part::bytes(vec![1, 2, 3]).mime_str(mime).expect("mime")
        } else {
            image_part(vec![1, 2, 3], name, mime)
        };
        let (status, answer) = api.create_form(veo_form(part)).await;
        if ok {
            assert_eq!(status, StatusCode::OK, "{name} {mime}: {answer}");
        } else {
            assert_eq!(status, StatusCode::BAD_REQUEST, "{name} {mime}: {answer}");
            assert_field_error(&answer, "input_reference", "invalid_parameter", mime);
        }
    }
}

#[tokio::test]
async fn sim_refuses_images_of_children_even_with_allow_all_v5() {
    let api = Api::new(instant_config()).await;
    for name in ["child.jpg", "my_Children_photo.png"] {
        let (status, answer) = api
            .create_form(veo_form(image_part(vec![1; 16], name, "image/jpeg")))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{name}");
        assert_field_error(&answer, "input_reference", "content_policy_violation", name);
        let message = answer["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains("children"), "{message}");
    }
}

#[tokio::test]
async fn sim_rejects_multipart_bad_fields_and_multipart_for_seedance() {
    let api = Api::new(instant_config()).await;
    let file = || image_part(vec![1; 16], "a.jpg", "image/jpeg");
    let cases: Vec<(&str, Form, &str)> = vec![
        (
            "V1 in a form",
            Form::new()
                .text("prompt", "p")
                .text("model", VEO)
                .text("seconds", "5")
                .part("input_reference", file()),
            "seconds",
        ),
        (
            "V2 in a form",
            Form::new()
                .text("prompt", "p")
                .text("model", VEO)
                .text("size", "640x480")
                .part("input_reference", file()),
            "size",
        ),
        (
            "V5 in a form",
            Form::new()
                .text("prompt", "p")
                .text("model", VEO)
                .text("personGeneration", "dont_allow")
                .part("input_reference", file()),
            "personGeneration",
        ),
        (
            "one image only",
            Form::new()
                .text("prompt", "p")
                .text("model", VEO)
                .part("input_reference", file())
                .part("input_reference", file()),
            "input_reference",
        ),
        (
            "Seedance is JSON",
            Form::new()
                .text("prompt", "p")
                .text("model", SEEDANCE)
                .part("input_reference", file()),
            "model",
        ),
    ];
    for (rule, form, param) in cases {
        let (status, answer) = api.create_form(form).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{rule}: {answer}");
        assert_field_error(&answer, param, "invalid_parameter", rule);
    }
}

#[tokio::test]
async fn sim_answers_401_without_echoing_any_key() {
    let api = Api::new(instant_config()).await;
    let id = api.created_id(&veo("p")).await;
    let sent_key = "sk-live-do-not-echo-1234";
    let auths: [Option<String>; 4] = [
        None,
        Some(format!("Bearer {sent_key}")),
        Some(format!("Basic {}", api.sim.api_key())),
        Some(api.sim.api_key().to_owned()),
    ];
    for auth in auths {
        let requests = [
            api.http.post(api.url("/videos")).json(&veo("p")),
            api.http.get(api.url(&format!("/videos/{id}"))),
            api.http.get(api.url(&format!("/videos/{id}/content"))),
        ];
        for req in requests {
            let req = match &auth {
                Some(a) => req.header(reqwest::header::AUTHORIZATION, a),
                None => req,
            };
            let resp = req.send().await.expect("answered");
            assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{auth:?}");
            let text = resp.text().await.expect("body");
            assert!(!text.contains(sent_key), "{text}");
            assert!(!text.contains(api.sim.api_key()), "{text}");
            let body: Value = serde_json::from_str(&text).expect("json error");
            assert_eq!(body["error"]["type"], "authentication_error");
            assert_eq!(body["error"]["code"], "invalid_api_key");
        }
    }
    let stats = api.sim.stats();
    assert_eq!(stats.creates_rejected.get(&401), Some(&4));
    assert_eq!(stats.creates_accepted, 1);
}

#[tokio::test]
async fn sim_status_progresses_queued_in_progress_completed_within_the_configured_ms() {
    let (queued_ms, processing_ms) = (300, 600);
    let api = Api::new(SimConfig {
        queued_ms,
        processing_ms,
        jitter: 0.0,
        ..SimConfig::default()
    })
    .await;
    let started = Instant::now();
    let (status, created) = api.create(&veo("progress")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(created["status"], "in_progress", "U1: the page's spelling");
    let id = created["id"].as_str().expect("id");
    let mut progress_seen = Vec::new();
    let mut seen: Vec<String> = Vec::new();
    let done = loop {
        let (_, body) = api.get(id).await;
        let s = body["status"].as_str().expect("status").to_owned();
        progress_seen.push(body["progress"].as_u64().expect("progress"));
        if seen.last() != Some(&s) {
            seen.push(s.clone());
        }
        if s == "completed" {
            break body;
        }
        assert!(body["completed_at"].is_null());
        assert!(started.elapsed() < WAIT_LIMIT);
        tokio::time::sleep(Duration::from_millis(15)).await;
    };
    let took = started.elapsed();
    assert_eq!(seen, ["queued", "in_progress", "completed"]);
    assert!(
        took >= Duration::from_millis(queued_ms + processing_ms),
        "{took:?}"
    );
    assert!(
        progress_seen.windows(2).all(|w| w[0] <= w[1]),
        "{progress_seen:?}"
    );
    assert_eq!(done["progress"], 100);
    assert_eq!(done["object"], "video");
    assert_eq!(done["model"], VEO);
    assert_eq!(done["size"], "1280x720");
    assert_eq!(done["seconds"], "6");
    assert!(done["completed_at"].as_u64() >= done["created_at"].as_u64());
}

#[tokio::test]
async fn sim_without_in_progress_spelling_answers_queued_then_processing() {
    let api = Api::new(SimConfig {
        queued_ms: 300,
        processing_ms: 300,
        jitter: 0.0,
        in_progress_spelling: false,
        ..SimConfig::default()
    })
    .await;
    let (_, created) = api.create(&veo("spelling")).await;
    assert_eq!(created["status"], "queued");
    let id = created["id"].as_str().expect("id");
    let (_, seen) = api.wait_done(id, &["completed"]).await;
    assert_eq!(seen, ["queued", "processing", "completed"]);
}

#[tokio::test]
async fn sim_reproduces_the_pages_curl_examples() {
    let api = Api::new(instant_config()).await;
    // Text to video (JSON).
    let (status, text) = api
        .create(&json!({
            "prompt": "please generate a video of a cat playing piano",
            "model": "turing/veo-3.1-generate",
            "size": "1280x720",
            "seconds": "6"
        }))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(text["status"], "in_progress");
    assert_eq!(text["model"], "turing/veo-3.1-generate");
    assert!(
        text["id"]
            .as_str()
            .is_some_and(|id| id.starts_with("video-"))
    );
    // Image to video (multipart, curl -F ... input_reference=@...;type=image/jpeg).
    let (status, image) = api
        .create_form(veo_form(image_part(
            vec![0xFF, 0xD8, 0xFF, 0xE0],
            "video_image.jpg",
            "image/jpeg",
        )))
        .await;
    assert_eq!(status, StatusCode::OK, "{image}");
    // Seedance with content, 1080p (U2), integer duration.
    let (status, seed) = api
        .create(&json!({
            "prompt": "一只猫在弹钢琴",
            "model": "doubao-seedance-2-0-260128",
            "content": [
                {"type": "text", "text": "一只猫在弹钢琴,背景是温暖的客厅,阳光洒进来"},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat_reference.jpg"}}
            ],
            "resolution": "1080p",
            "ratio": "16:9",
            "duration": 6,
            "seed": 42,
            "generate_audio": true,
            "return_last_frame": false
        }))
        .await;
    assert_eq!(status, StatusCode::OK, "{seed}");
    // Polling with the page's extra Content-Type header, then the download.
    for created in [&text, &image, &seed] {
        let id = created["id"].as_str().expect("id");
        let resp = api
            .http
            .get(api.url(&format!("/videos/{id}")))
            .bearer_auth(api.sim.api_key())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .send()
            .await
            .expect("poll");
        let body: Value = resp.json().await.expect("json");
        assert_eq!(body["status"], "completed");
        let video = api.content(id, None).await;
        assert_eq!(video.status(), StatusCode::OK);
        assert_eq!(video.headers()[reqwest::header::CONTENT_TYPE], "video/mp4");
    }
}

#[tokio::test]
async fn sim_serves_the_generated_mp4_with_exact_ranges_and_416() {
    let api = Api::new(instant_config()).await;
    let id = api
        .created_id(&with(
            veo("range"),
            json!({"size": "720x1280", "seconds": "4"}),
        ))
        .await;
    api.wait_done(&id, &["completed"]).await;
    let params = api.sim.mp4_params(&id).expect("known task");
    let expected = GeneratedMp4::generate(&params).expect("generate").to_vec();
    let len = expected.len();

    let full = api.content(&id, None).await;
    assert_eq!(full.status(), StatusCode::OK);
    assert_eq!(
        full.headers()[reqwest::header::CONTENT_LENGTH],
        len.to_string().as_str()
    );
    assert_eq!(full.headers()[reqwest::header::ACCEPT_RANGES], "bytes");
    let body = full.bytes().await.expect("body");
    assert_eq!(body.as_ref(), expected.as_slice());

    let cases: [(String, usize, usize); 4] = [
        ("bytes=10-99".into(), 10, 100),
        ("bytes=100-".into(), 100, len),
        ("bytes=-50".into(), len - 50, len),
        (format!("bytes=0-{}", len + 1000), 0, len),
    ];
    for (range, start, end) in cases {
        let resp = api.content(&id, Some(&range)).await;
        assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT, "{range}");
        let content_range = resp.headers()[reqwest::header::CONTENT_RANGE]
            .to_str()
            .expect("ascii")
            .to_owned();
        assert_eq!(content_range, format!("bytes {start}-{}/{len}", end - 1));
        let got = resp.bytes().await.expect("body");
        assert_eq!(got.as_ref(), &expected[start..end], "{range}");
    }
    for range in [
        format!("bytes={len}-"),
        format!("bytes={}-{}", len + 5, len + 9),
    ] {
        let resp = api.content(&id, Some(&range)).await;
        assert_eq!(resp.status(), StatusCode::RANGE_NOT_SATISFIABLE, "{range}");
        assert_eq!(
            resp.headers()[reqwest::header::CONTENT_RANGE],
            format!("bytes */{len}").as_str()
        );
    }
}

#[tokio::test]
async fn sim_mp4_probes_to_the_requested_size_duration_and_audio() {
    let api = Api::new(instant_config()).await;
    let cases = [
        (veo("probe"), 1280, 720, 6.0, true),
        (
            with(veo("probe"), json!({"size": "720x1280", "seconds": "4"})),
            720,
            1280,
            4.0,
            true,
        ),
        (
            with(
                seedance("probe"),
                json!({"resolution": "480p", "ratio": "21:9", "duration": 4}),
            ),
            992,
            432,
            4.0,
            true,
        ),
        (
            with(
                seedance("probe"),
                json!({"ratio": "1:1", "generate_audio": false}),
            ),
            960,
            960,
            5.0,
            false,
        ),
    ];
    for (body, width, height, seconds, audio) in cases {
        let id = api.created_id(&body).await;
        api.wait_done(&id, &["completed"]).await;
        let bytes = api.content(&id, None).await.bytes().await.expect("body");
        let facts = probe_mp4(&mut Cursor::new(bytes.as_ref())).expect("probe");
        assert_eq!((facts.width, facts.height), (width, height), "{body}");
        assert!(
            (facts.duration_seconds - seconds).abs() < 0.1,
            "{body}: {facts:?}"
        );
        assert_eq!(facts.has_audio, audio, "{body}");
    }
}

#[tokio::test]
async fn sim_pads_content_to_content_min_size() {
    let min_size = 3 * 1024 * 1024;
    let api = Api::new(SimConfig {
        content_min_size: min_size,
        ..instant_config()
    })
    .await;
    let id = api.created_id(&veo("big")).await;
    let resp = api.content(&id, None).await;
    let declared: u64 = resp.headers()[reqwest::header::CONTENT_LENGTH]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("number");
    let bytes = resp.bytes().await.expect("body");
    assert!(declared >= min_size);
    assert_eq!(bytes.len() as u64, declared);
}

#[tokio::test]
async fn sim_content_before_completion_is_409_and_unknown_ids_are_404() {
    let api = Api::new(SimConfig {
        queued_ms: 60_000,
        ..instant_config()
    })
    .await;
    let id = api.created_id(&veo("slow")).await;
    let resp = api.content(&id, None).await;
    assert_eq!(resp.status(), StatusCode::CONFLICT);
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["error"]["code"], "video_not_ready");

    for path in [
        "/videos/video-nope".to_owned(),
        "/videos/video-nope/content".to_owned(),
        "/videos/video-nope/last_frame".to_owned(),
    ] {
        let resp = api
            .http
            .get(api.url(&path))
            .bearer_auth(api.sim.api_key())
            .send()
            .await
            .expect("answered");
        assert_eq!(resp.status(), StatusCode::NOT_FOUND, "{path}");
        let body: Value = resp.json().await.expect("json");
        assert_eq!(body["error"]["code"], "video_not_found", "{path}");
    }
}

#[tokio::test]
async fn sim_offers_a_last_frame_png_only_when_asked_s10() {
    let api = Api::new(instant_config()).await;
    let asked = api
        .created_id(&with(seedance("frame"), json!({"return_last_frame": true})))
        .await;
    let not_asked = api.created_id(&seedance("frame")).await;

    let (done, _) = api.wait_done(&asked, &["completed"]).await;
    let url = done["content"]["last_frame_url"]
        .as_str()
        .expect("last_frame_url");
    assert_eq!(
        url,
        format!("{}/videos/{asked}/last_frame", api.sim.base_url())
    );
    assert_eq!(
        done["content"]["video_url"],
        format!("{}/videos/{asked}/content", api.sim.base_url())
    );
    let resp = api.http.get(url).send().await.expect("png");
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()[reqwest::header::CONTENT_TYPE], "image/png");
    let png = resp.bytes().await.expect("body");
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"));

    let (done, _) = api.wait_done(&not_asked, &["completed"]).await;
    assert!(done.get("content").is_none(), "{done}");
    let resp = api
        .http
        .get(api.url(&format!("/videos/{not_asked}/last_frame")))
        .send()
        .await
        .expect("answered");
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
}

// ---- faults ----------------------------------------------------------------------------------

fn http_fault(status: u16, retry_after_s: Option<u64>) -> Fault {
    Fault::Http {
        status,
        retry_after_s,
    }
}

#[tokio::test]
async fn sim_fault_429_with_and_without_retry_after_expires_after_times() {
    let api = Api::new(instant_config()).await;
    api.sim.set_faults(vec![
        FaultRule::new(FaultEndpoint::Create, http_fault(429, Some(7))).times(1),
        FaultRule::new(FaultEndpoint::Create, http_fault(429, None)).times(1),
    ]);
    let send = || {
        api.http
            .post(api.url("/videos"))
            .bearer_auth(api.sim.api_key())
            .json(&veo("limited"))
            .send()
    };
    let first = send().await.expect("answered");
    assert_eq!(first.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(first.headers()[reqwest::header::RETRY_AFTER], "7");
    let body: Value = first.json().await.expect("json");
    assert_eq!(body["error"]["code"], "rate_limit_exceeded");

    let second = send().await.expect("answered");
    assert_eq!(second.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(second.headers().get(reqwest::header::RETRY_AFTER).is_none());

    let third = send().await.expect("answered");
    assert_eq!(third.status(), StatusCode::OK);
    assert!(api.sim.faults().is_empty(), "spent rules are removed");

    let stats = api.sim.stats();
    assert_eq!(stats.creates_rejected.get(&429), Some(&2));
    assert_eq!(stats.creates_accepted, 1);
    assert_eq!(stats.creates_by_prompt.get("limited"), Some(&1));
}

#[tokio::test]
async fn sim_fault_5xx_on_any_endpoint_answers_with_an_error_body() {
    let api = Api::new(instant_config()).await;
    let id = api.created_id(&veo("p")).await;
    for status in [500u16, 502, 503] {
        api.sim.set_faults(vec![FaultRule::new(
            FaultEndpoint::Any,
            http_fault(status, None),
        )]);
        let (got, body) = api.get(&id).await;
        assert_eq!(got.as_u16(), status);
        assert_eq!(body["error"]["type"], "server_error");
        let resp = api.content(&id, None).await;
        assert_eq!(resp.status().as_u16(), status);
    }
    api.sim.set_faults(Vec::new());
    assert_eq!(api.get(&id).await.0, StatusCode::OK);
}

#[tokio::test]
async fn sim_fault_delay_slows_the_answer_then_answers_normally() {
    let api = Api::new(instant_config()).await;
    let id = api.created_id(&veo("p")).await;
    api.sim
        .push_fault(FaultRule::new(FaultEndpoint::Get, Fault::Delay { ms: 1_000 }).times(1));
    let t = Instant::now();
    let (status, _) = api.get(&id).await;
    assert_eq!(status, StatusCode::OK);
    assert!(t.elapsed() >= Duration::from_millis(300));
    let t = Instant::now();
    api.get(&id).await;
    assert!(
        t.elapsed() < Duration::from_millis(300),
        "expired after one"
    );
}

#[tokio::test]
async fn sim_fault_delay_on_create_still_creates_the_task_a_timed_out_client_never_saw() {
    let api = Api::new(instant_config()).await;
    api.sim.push_fault(FaultRule::new(
        FaultEndpoint::Create,
        Fault::Delay { ms: 2_000 },
    ));
    let result = api
        .http
        .post(api.url("/videos"))
        .bearer_auth(api.sim.api_key())
        .timeout(Duration::from_millis(200))
        .json(&veo("timed out"))
        .send()
        .await;
    assert!(result.is_err_and(|e| e.is_timeout()));
    let stats = api.sim.stats();
    assert_eq!(stats.creates_by_prompt.get("timed out"), Some(&1));
    assert_eq!(stats.tasks.len(), 1);
}

#[tokio::test]
async fn sim_fault_reset_drops_the_connection_after_creating_the_task() {
    let api = Api::new(instant_config()).await;
    api.sim.push_fault(
        FaultRule::new(FaultEndpoint::Create, Fault::Reset)
            .prompt_contains("unknown outcome")
            .times(1),
    );
    let result = api
        .http
        .post(api.url("/videos"))
        .bearer_auth(api.sim.api_key())
        .json(&veo("an unknown outcome"))
        .send()
        .await;
    assert!(result.is_err(), "no HTTP response at all: {result:?}");
    let stats = api.sim.stats();
    assert_eq!(stats.creates_accepted, 1);
    assert_eq!(stats.creates_by_prompt.get("an unknown outcome"), Some(&1));
    let (id, task) = stats.tasks.iter().next().expect("the task exists");
    assert_eq!(task.prompt, "an unknown outcome");
    // The task is real: a later status call finds it.
    assert_eq!(api.get(id).await.0, StatusCode::OK);

    api.sim
        .push_fault(FaultRule::new(FaultEndpoint::Get, Fault::Reset).times(1));
    let result = api
        .http
        .get(api.url(&format!("/videos/{id}")))
        .bearer_auth(api.sim.api_key())
        .send()
        .await;
    assert!(result.is_err());
    assert_eq!(api.get(id).await.0, StatusCode::OK);
}

#[tokio::test]
async fn sim_fault_truncate_content_announces_the_full_length_and_stops_early() {
    let api = Api::new(instant_config()).await;
    let id = api.created_id(&veo("cut")).await;
    let full_len = GeneratedMp4::generate(&api.sim.mp4_params(&id).expect("task"))
        .expect("generate")
        .len();
    let after_bytes = 1_000;
    api.sim.push_fault(
        FaultRule::new(
            FaultEndpoint::Content,
            Fault::TruncateContent { after_bytes },
        )
        .times(1),
    );
    let resp = api.content(&id, None).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.headers()[reqwest::header::CONTENT_LENGTH],
        full_len.to_string().as_str()
    );
    let mut received = 0u64;
    let mut failed = false;
    let mut stream = resp.bytes_stream();
    while let Some(item) = stream.next().await {
        match item {
            Ok(chunk) => received += chunk.len() as u64,
            Err(_) => {
                failed = true;
                break;
            }
        }
    }
    assert!(failed, "the body must end in an error");
    assert_eq!(received, after_bytes);
    // Spent: the next download is whole.
    let whole = api.content(&id, None).await.bytes().await.expect("whole");
    assert_eq!(whole.len() as u64, full_len);
}

#[tokio::test]
async fn sim_fault_completed_without_content_answers_404_after_completed() {
    let api = Api::new(instant_config()).await;
    api.sim.push_fault(
        FaultRule::new(FaultEndpoint::Create, Fault::CompletedWithoutContent)
            .prompt_contains("moderated"),
    );
    let id = api.created_id(&veo("moderated scene")).await;
    let clean = api.created_id(&veo("clean scene")).await;
    api.wait_done(&id, &["completed"]).await;
    let resp = api.content(&id, None).await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["error"]["code"], "content_not_available");
    assert_eq!(api.content(&clean, None).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn sim_fault_status_spelling_shows_ark_and_unknown_spellings_u4() {
    let api = Api::new(SimConfig {
        queued_ms: 300,
        processing_ms: 300,
        jitter: 0.0,
        ..SimConfig::default()
    })
    .await;
    for (processing, completed) in [("running", "succeeded"), ("rendering", "done")] {
        api.sim.set_faults(vec![FaultRule::new(
            FaultEndpoint::Create,
            Fault::StatusSpelling {
                processing: processing.into(),
                completed: completed.into(),
            },
        )]);
        let id = api.created_id(&veo("spelled")).await;
        let (_, seen) = api.wait_done(&id, &[completed]).await;
        assert_eq!(seen, ["queued", processing, completed]);
        // Bound at create: the content is there under any spelling.
        assert_eq!(api.content(&id, None).await.status(), StatusCode::OK);
    }
}

#[tokio::test]
async fn sim_fault_fail_task_ends_failed_with_the_error() {
    let api = Api::new(instant_config()).await;
    api.sim.push_fault(
        FaultRule::new(
            FaultEndpoint::Create,
            Fault::FailTask {
                code: "generation_failed".into(),
                message: "the model gave up".into(),
            },
        )
        .times(1),
    );
    let failed = api.created_id(&veo("doomed")).await;
    let fine = api.created_id(&veo("doomed")).await;
    let (done, _) = api.wait_done(&failed, &["failed", "completed"]).await;
    assert_eq!(done["status"], "failed");
    assert_eq!(done["error"]["code"], "generation_failed");
    assert_eq!(done["error"]["message"], "the model gave up");
    assert_eq!(
        api.content(&failed, None).await.status(),
        StatusCode::NOT_FOUND
    );
    let (done, _) = api.wait_done(&fine, &["failed", "completed"]).await;
    assert_eq!(
        done["status"], "completed",
        "times = 1 bound only the first"
    );
}

#[tokio::test]
async fn sim_fault_ignore_range_answers_200_with_the_whole_body() {
    let api = Api::new(instant_config()).await;
    let id = api.created_id(&veo("norange")).await;
    let expected = GeneratedMp4::generate(&api.sim.mp4_params(&id).expect("task"))
        .expect("generate")
        .to_vec();
    api.sim
        .push_fault(FaultRule::new(FaultEndpoint::Content, Fault::IgnoreRange).times(1));
    let resp = api.content(&id, Some("bytes=100-199")).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.headers().get(reqwest::header::CONTENT_RANGE).is_none());
    assert_eq!(
        resp.bytes().await.expect("body").as_ref(),
        expected.as_slice()
    );
    let resp = api.content(&id, Some("bytes=100-199")).await;
    assert_eq!(
        resp.status(),
        StatusCode::PARTIAL_CONTENT,
        "expired after one"
    );
}

#[tokio::test]
async fn sim_faults_can_be_replaced_over_http_and_invalid_rules_are_refused() {
    let api = Api::new(instant_config()).await;
    let rules = vec![FaultRule::new(FaultEndpoint::Create, http_fault(503, Some(1))).times(1)];
    let resp = api
        .http
        .post(api.backdoor("/_sim/faults"))
        .json(&rules)
        .send()
        .await
        .expect("answered");
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(api.sim.faults(), rules);
    assert_eq!(
        api.create(&veo("p")).await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(api.create(&veo("p")).await.0, StatusCode::OK);

    let bad = json!([{"endpoint": "get", "fault": {"kind": "ignore_range"}}]);
    let resp = api
        .http
        .post(api.backdoor("/_sim/faults"))
        .json(&bad)
        .send()
        .await
        .expect("answered");
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
}

// ---- stats -----------------------------------------------------------------------------------

#[tokio::test]
async fn sim_stats_count_requests_tasks_and_rejections_exactly() {
    let api = Api::new(instant_config()).await;
    // An invalid create: rejected, no task, no prompt counted.
    let (status, _) = api
        .create(&with(veo("invalid"), json!({"seconds": "7"})))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let stats = api.stats_over_http().await;
    assert_eq!(stats.requests.create, 1);
    assert_eq!(stats.creates_rejected.get(&400), Some(&1));
    assert_eq!(stats.creates_accepted, 0);
    assert!(stats.tasks.is_empty());
    assert!(stats.creates_by_prompt.is_empty());

    let a = api.created_id(&veo("twice")).await;
    let b = api.created_id(&veo("twice")).await;
    let c = api.created_id(&veo("once")).await;
    assert_ne!(a, b);
    for _ in 0..3 {
        api.get(&a).await;
    }
    api.content(&a, None).await.bytes().await.expect("body");
    api.content(&a, Some("bytes=0-9"))
        .await
        .bytes()
        .await
        .expect("body");
    api.get(&b).await;
    api.get("video-unknown").await;

    let stats = api.stats_over_http().await;
    assert_eq!(stats, api.sim.stats(), "HTTP and handle agree");
    assert_eq!(stats.requests.create, 4);
    assert_eq!(stats.requests.get, 5);
    assert_eq!(stats.requests.content, 2);
    assert_eq!(stats.requests.last_frame, 0);
    assert_eq!(stats.creates_accepted, 3);
    assert_eq!(stats.creates_rejected_total(), 1);
    assert_eq!(stats.creates_by_prompt.get("twice"), Some(&2));
    assert_eq!(stats.creates_by_prompt.get("once"), Some(&1));
    assert_eq!(stats.tasks.len(), 3);
    let ta = &stats.tasks[&a];
    assert_eq!(
        (ta.gets, ta.content_requests, ta.last_frame_requests),
        (3, 2, 0)
    );
    assert_eq!(ta.prompt, "twice");
    assert_eq!(ta.model, VEO);
    assert_eq!(stats.tasks[&b].gets, 1);
    assert_eq!(stats.tasks[&c].gets, 0);
}

#[tokio::test]
async fn sim_ids_are_deterministic_from_the_seed() {
    let ids = |seed: u64| async move {
        let api = Api::new(SimConfig {
            seed,
            ..instant_config()
        })
        .await;
        let mut out = Vec::new();
        for _ in 0..3 {
            out.push(api.created_id(&veo("p")).await);
        }
        out
    };
    let first = ids(11).await;
    assert_eq!(first, ids(11).await);
    assert_ne!(first, ids(12).await);
}

#[tokio::test]
async fn sim_shutdown_stops_serving() {
    let sim = start(instant_config()).await;
    let url = format!("{}/videos/x", sim.base_url());
    sim.shutdown().await;
    let result = reqwest::Client::new()
        .get(url)
        .timeout(Duration::from_secs(2))
        .send()
        .await;
    assert!(result.is_err());
}

/// A refused upload is answered, not reset, whatever its size: the simulator reads (and
/// discards) the rest of the body before closing.
#[tokio::test]
async fn sim_answers_oversized_or_unauthorised_uploads_with_a_readable_error() {
    let api = Api::new(instant_config()).await;
    let sizes = [TEN_MIB + 512 * 1024, 20 * 1024 * 1024];
    for size in sizes {
        for (authorised, want) in [
            (true, StatusCode::BAD_REQUEST),
            (false, StatusCode::UNAUTHORIZED),
        ] {
            let mut req = api.http.post(api.url("/videos"));
            if authorised {
                req = req.bearer_auth(api.sim.api_key());
            }
            let resp = req
                .multipart(veo_form(image_part(vec![1; size], "a.jpg", "image/jpeg")))
                .send()
                .await
                .unwrap_or_else(|e| panic!("{size} bytes, auth {authorised}: {e}"));
            assert_eq!(resp.status(), want, "{size} bytes");
        }
    }
    assert_eq!(api.sim.stats().creates_accepted, 0);
}

#[tokio::test]
async fn sim_refuses_bodies_it_does_not_read_with_413_415_and_400() {
    let api = Api::new(SimConfig {
        max_json_body_bytes: 1_000,
        ..instant_config()
    })
    .await;
    let post = || {
        api.http
            .post(api.url("/videos"))
            .bearer_auth(api.sim.api_key())
    };
    let cases = [
        (
            "oversized JSON",
            post().json(&veo(&"x".repeat(2_000))),
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
        (
            "form-urlencoded",
            post()
                .header(
                    reqwest::header::CONTENT_TYPE,
                    "application/x-www-form-urlencoded",
                )
                .body("prompt=p"),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        (
            "broken JSON",
            post()
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body("{\"prompt\":"),
            StatusCode::BAD_REQUEST,
        ),
        (
            "JSON array",
            post().json(&json!([veo("p")])),
            StatusCode::BAD_REQUEST,
        ),
    ];
    for (case, req, want) in cases {
        let resp = req.send().await.expect("answered");
        assert_eq!(resp.status(), want, "{case}");
        let body: Value = resp.json().await.expect("json error body");
        assert!(body["error"]["message"].is_string(), "{case}: {body}");
    }
    let stats = api.sim.stats();
    assert_eq!(stats.creates_accepted, 0);
    assert_eq!(stats.creates_rejected_total(), 4);
}
