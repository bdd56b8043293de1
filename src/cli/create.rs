//! `create`: flags (or a whole request in proto3 JSON) to a `CreateVideoRequest`, checked
//! locally for the one thing only the CLI can get wrong — parameters of two families at once —
//! before any call; the server validates the rest. Then optionally wait and download.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use bytes::Bytes;

use super::download::{download, write_downloaded};
use super::render::write_video;
use super::rpc::{connect, rpc_err};
use super::watch::{ensure_completed, follow};
use super::{ClientOpts, parse_key_value};
use crate::pb::content_item::Kind;
use crate::pb::create_video_request::Params;
use crate::pb::media_ref::Source;
use crate::pb::{
    ContentItem, ContentVariant, CreateVideoRequest, InputImage, MediaRef, SeedanceParams,
    VeoParams,
};

/// The largest `--image` or `--request-file` read: the server accepts `CreateVideo` messages up
/// to 12 MiB, so anything larger could never be sent. The image limit itself (10 MiB by
/// default, configurable) is the server's to enforce, with a field error.
pub const MAX_CREATE_INPUT_BYTES: u64 = 12 * 1024 * 1024;

/// Arguments of `create`.
#[derive(Debug, Clone, clap::Args)]
pub struct CreateArgs {
    /// Model, e.g. turing/veo-3.1-generate or doubao-seedance-2-0-260128
    #[arg(long, required_unless_present = "request_file")]
    pub model: Option<String>,
    /// What the video should show
    #[arg(long, required_unless_present = "request_file")]
    pub prompt: Option<String>,
    /// Idempotency key: the same key with the same request returns the same job, never a
    /// second one [default: a fresh UUID, printed so a retry can reuse it]
    #[arg(long)]
    pub request_id: Option<String>,
    /// Label (repeatable); `list --label` filters on them
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    pub labels: Vec<(String, String)>,
    /// A whole CreateVideoRequest in proto3 JSON instead of --model, --prompt and parameter
    /// flags; --request-id and --label still apply and override the file
    #[arg(long, value_name = "FILE.json", conflicts_with_all = PARAM_FLAG_IDS)]
    pub request_file: Option<PathBuf>,
    /// Frame size WxH: Veo's size, or with Seedance flags Seedance's (mapped to resolution
    /// and ratio)
    #[arg(long)]
    pub size: Option<String>,
    /// Wait until the job ends, showing its status live; fails unless it completes
    #[arg(long)]
    pub wait: bool,
    /// Download the video to FILE once it completes (implies --wait)
    #[arg(long, short, value_name = "FILE")]
    pub output: Option<PathBuf>,
    // Flattened last: their help headings would otherwise swallow the flags after them.
    /// Flags that fill `params.veo`.
    #[command(flatten)]
    pub veo: VeoFlags,
    /// Flags that fill `params.seedance`.
    #[command(flatten)]
    pub seedance: SeedanceFlags,
}

/// Every flag that sets a field of the request itself; none may be mixed with --request-file.
const PARAM_FLAG_IDS: [&str; 18] = [
    "model",
    "prompt",
    "size",
    "seconds",
    "image",
    "image_mime",
    "person_generation",
    "resolution",
    "ratio",
    "duration",
    "seed",
    "watermark",
    "no_audio",
    "return_last_frame",
    "image_url",
    "video_url",
    "audio_url",
    "text",
];

/// Veo parameters (`params.veo`).
#[derive(Debug, Clone, Default, clap::Args)]
#[command(next_help_heading = "Veo parameters")]
pub struct VeoFlags {
    /// Length in seconds: 4, 6 or 8
    #[arg(long)]
    pub seconds: Option<u32>,
    /// Image to start from (image to video); sent as bytes
    #[arg(long, value_name = "PATH")]
    pub image: Option<PathBuf>,
    /// MIME type of --image [default: from its extension: png, jpg/jpeg, webp, gif]
    #[arg(long, requires = "image")]
    pub image_mime: Option<String>,
    /// Person generation policy, e.g. allow_all
    #[arg(long)]
    pub person_generation: Option<String>,
}

/// Seedance parameters (`params.seedance`).
#[derive(Debug, Clone, Default, clap::Args)]
#[command(next_help_heading = "Seedance parameters")]
pub struct SeedanceFlags {
    /// 480p, 720p or 1080p
    #[arg(long)]
    pub resolution: Option<String>,
    /// Aspect ratio: 16:9, 9:16, 1:1, 4:3, 3:4, 21:9
    #[arg(long)]
    pub ratio: Option<String>,
    /// Length in seconds: 4, 5, 6 or 8
    #[arg(long)]
    pub duration: Option<u32>,
    /// Random seed, for repeatable results
    #[arg(long, allow_negative_numbers = true)]
    pub seed: Option<i64>,
    /// Add a watermark (`--watermark` or `--watermark=false`)
    #[arg(long, num_args = 0..=1, default_missing_value = "true", require_equals = true)]
    pub watermark: Option<bool>,
    /// Generate no audio track
    #[arg(long)]
    pub no_audio: bool,
    /// Also produce the last frame as an image (`download --last-frame`)
    #[arg(long)]
    pub return_last_frame: bool,
    /// Image by URL, optionally with a role: [ROLE=]URL, e.g. first_frame=https://... (repeatable)
    #[arg(long, value_name = "[ROLE=]URL")]
    pub image_url: Vec<String>,
    /// Video by URL: [ROLE=]URL, e.g. reference_video=https://... (repeatable)
    #[arg(long, value_name = "[ROLE=]URL")]
    pub video_url: Vec<String>,
    /// Audio by URL: [ROLE=]URL, e.g. reference_audio=https://... (repeatable)
    #[arg(long, value_name = "[ROLE=]URL")]
    pub audio_url: Vec<String>,
    /// An extra text content item (repeatable)
    #[arg(long)]
    pub text: Vec<String>,
}

impl VeoFlags {
    /// The flags given, by name, for the mixing error.
    fn given(&self) -> Vec<&'static str> {
        let mut given = Vec::new();
        if self.seconds.is_some() {
            given.push("--seconds");
        }
        if self.image.is_some() {
            given.push("--image");
        }
        if self.person_generation.is_some() {
            given.push("--person-generation");
        }
        given
    }
}

impl SeedanceFlags {
    /// The flags given, by name, for the mixing error.
    fn given(&self) -> Vec<&'static str> {
        let checks = [
            (self.resolution.is_some(), "--resolution"),
            (self.ratio.is_some(), "--ratio"),
            (self.duration.is_some(), "--duration"),
            (self.seed.is_some(), "--seed"),
            (self.watermark.is_some(), "--watermark"),
            (self.no_audio, "--no-audio"),
            (self.return_last_frame, "--return-last-frame"),
            (!self.image_url.is_empty(), "--image-url"),
            (!self.video_url.is_empty(), "--video-url"),
            (!self.audio_url.is_empty(), "--audio-url"),
            (!self.text.is_empty(), "--text"),
        ];
        checks
            .into_iter()
            .filter_map(|(given, name)| given.then_some(name))
            .collect()
    }
}

pub async fn run(
    opts: &ClientOpts,
    args: CreateArgs,
    out: &mut (dyn Write + Send),
) -> anyhow::Result<()> {
    // Everything local (files, flag mixing) is settled before connecting.
    let (request, generated_id) = build_request(&args).await?;
    if generated_id {
        eprintln!(
            "request id: {} (to retry without creating a second job, rerun with --request-id {})",
            request.request_id, request.request_id
        );
    }
    let mut client = connect(opts).await?;
    let video = client
        .create_video(request)
        .await
        .map_err(rpc_err("CreateVideo"))?
        .into_inner();
    if !args.wait && args.output.is_none() {
        return write_video(out, opts.json, &video);
    }
    let followed = follow(&mut client, &video.id, 0, None).await?;
    write_video(out, opts.json, &followed.video)?;
    ensure_completed(&followed.video)?;
    if let Some(output) = &args.output {
        let done = download(&mut client, &video.id, output, ContentVariant::Video).await?;
        if opts.json {
            // stdout holds exactly one JSON document; the verdict goes with the progress.
            eprintln!("wrote {}: sha256 ok {}", done.path.display(), done.sha256);
        } else {
            write_downloaded(out, false, &video.id, &done)?;
        }
    }
    Ok(())
}

/// The request the flags describe, and whether its `request_id` was generated here.
pub async fn build_request(args: &CreateArgs) -> anyhow::Result<(CreateVideoRequest, bool)> {
    let mut request = match &args.request_file {
        Some(path) => read_request_file(path).await?,
        None => CreateVideoRequest {
            model: args.model.clone().unwrap_or_default(),
            prompt: args.prompt.clone().unwrap_or_default(),
            params: params_from_flags(args).await?,
            ..CreateVideoRequest::default()
        },
    };
    if let Some(id) = &args.request_id {
        request.request_id.clone_from(id);
    }
    let generated = request.request_id.is_empty();
    if generated {
        request.request_id = uuid::Uuid::now_v7().to_string();
    }
    request.labels.extend(args.labels.iter().cloned());
    Ok((request, generated))
}

/// Which `params` oneof the flags fill: Veo flags -> veo, Seedance flags -> seedance, none ->
/// none (the server applies the family's defaults). Both is an error naming the flags.
async fn params_from_flags(args: &CreateArgs) -> anyhow::Result<Option<Params>> {
    let veo = args.veo.given();
    let seedance = args.seedance.given();
    if !veo.is_empty() && !seedance.is_empty() {
        bail!(
            "{} set Veo parameters and {} set Seedance parameters; a request carries one family's \
             parameters: keep the flags of your model's family",
            veo.join(", "),
            seedance.join(", ")
        );
    }
    if !seedance.is_empty() {
        return Ok(Some(Params::Seedance(seedance_params(
            &args.seedance,
            args.size.clone(),
        )?)));
    }
    if !veo.is_empty() || args.size.is_some() {
        let f = &args.veo;
        let input_reference = match &f.image {
            Some(path) => Some(read_image(path, f.image_mime.as_deref()).await?),
            None => None,
        };
        return Ok(Some(Params::Veo(VeoParams {
            seconds: f.seconds.unwrap_or(0),
            size: args.size.clone().unwrap_or_default(),
            input_reference,
            person_generation: f.person_generation.clone().unwrap_or_default(),
        })));
    }
    Ok(None)
}

/// Wraps a media reference as an image, video or audio content item.
type MediaKind = fn(MediaRef) -> Kind;

fn seedance_params(f: &SeedanceFlags, size: Option<String>) -> anyhow::Result<SeedanceParams> {
    let mut content: Vec<ContentItem> = f
        .text
        .iter()
        .map(|t| ContentItem {
            kind: Some(Kind::Text(t.clone())),
            role: String::new(),
        })
        .collect();
    let media: [(&[String], MediaKind); 3] = [
        (&f.image_url, Kind::Image),
        (&f.video_url, Kind::Video),
        (&f.audio_url, Kind::Audio),
    ];
    for (values, kind) in media {
        for value in values {
            let (role, url) = split_role(value);
            if url.is_empty() {
                bail!("{value:?} has no URL; expected [ROLE=]URL");
            }
            content.push(ContentItem {
                kind: Some(kind(MediaRef {
                    source: Some(Source::Url(url.to_owned())),
                    ..MediaRef::default()
                })),
                role: role.to_owned(),
            });
        }
    }
    Ok(SeedanceParams {
        content,
        resolution: f.resolution.clone().unwrap_or_default(),
        ratio: f.ratio.clone().unwrap_or_default(),
        duration: f.duration,
        seed: f.seed,
        watermark: f.watermark,
        // Only said when asked: absent means the upstream default (audio on).
        generate_audio: f.no_audio.then_some(false),
        return_last_frame: f.return_last_frame.then_some(true),
        size: size.unwrap_or_default(),
    })
}

/// Splits `[ROLE=]URL`. A prefix counts as a role only if it is a bare lower-case identifier,
/// so a URL whose query has `=` in it (`https://x/a?b=c`) is left whole.
fn split_role(value: &str) -> (&str, &str) {
    match value.split_once('=') {
        Some((role, url))
            if !role.is_empty() && role.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') =>
        {
            (role, url)
        }
        _ => ("", value),
    }
}

/// Reads an image for Veo's `input_reference`, with its MIME type from `mime` or the extension.
async fn read_image(path: &Path, mime: Option<&str>) -> anyhow::Result<InputImage> {
    let mime_type = match mime {
        Some(m) => m.to_owned(),
        None => mime_from_extension(path)
            .with_context(|| {
                format!(
                    "cannot tell the image type of {} from its extension; pass --image-mime (e.g. image/png)",
                    path.display()
                )
            })?
            .to_owned(),
    };
    let data = read_bounded(path, "--image").await?;
    let filename = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok(InputImage {
        data: Bytes::from(data),
        filename,
        mime_type,
        ..InputImage::default()
    })
}

fn mime_from_extension(path: &Path) -> Option<&'static str> {
    let ext = path.extension()?.to_str()?.to_ascii_lowercase();
    Some(match ext.as_str() {
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "webp" => "image/webp",
        "gif" => "image/gif",
        _ => return None,
    })
}

async fn read_request_file(path: &Path) -> anyhow::Result<CreateVideoRequest> {
    let data = read_bounded(path, "--request-file").await?;
    serde_json::from_slice(&data).with_context(|| {
        format!(
            "{} is not a CreateVideoRequest in proto3 JSON (e.g. {{\"model\":\"...\",\"prompt\":\"...\",\"veo\":{{\"seconds\":6}}}})",
            path.display()
        )
    })
}

/// Reads a whole input file, refusing one too large to ever be sent.
async fn read_bounded(path: &Path, flag: &str) -> anyhow::Result<Vec<u8>> {
    let meta = tokio::fs::metadata(path)
        .await
        .with_context(|| format!("cannot read {flag} {}", path.display()))?;
    if meta.len() > MAX_CREATE_INPUT_BYTES {
        bail!(
            "{flag} {} is {} bytes; a CreateVideo request can carry at most {MAX_CREATE_INPUT_BYTES}",
            path.display(),
            meta.len()
        );
    }
    tokio::fs::read(path)
        .await
        .with_context(|| format!("cannot read {flag} {}", path.display()))
}
