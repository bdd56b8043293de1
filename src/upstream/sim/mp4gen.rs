//! Generated, really playable MP4 files of any requested width, height and duration.
//!
//! The simulator must hand out a video whose size and duration match the request, and that a
//! real player decodes without errors, without shipping fixtures. Everything here is computed:
//!
//! * **Video**: an H.264 Constrained Baseline stream written bit by bit. Each GOP starts with an
//!   IDR picture whose first macroblock is `I_PCM` carrying a flat colour derived from the seed,
//!   and every other macroblock is `I_16x16` with DC prediction and no residual, so the colour
//!   propagates over the whole picture through intra prediction (about one byte per macroblock).
//!   The other pictures are P pictures whose macroblocks are all skipped (a copy of the previous
//!   picture). Widths and heights that are not multiples of 16 are handled by SPS frame
//!   cropping. The first access unit also carries an SEI "user data unregistered" message with
//!   the seed, so two different seeds always give different bytes even if their colours collide.
//! * **Audio** (optional): AAC-LC, stereo, 48 kHz, made of one silent raw frame repeated.
//! * **Container**: `ftyp`, `moov`, `mdat` in that order (fast start: a player can start before
//!   the body is complete), then an optional `free` box whose zero payload pads the file up to
//!   `min_size` bytes. The padding is never materialised: [`GeneratedMp4`] keeps only the real
//!   prefix (a few KB) and serves the zeros from a static buffer while streaming.
//!
//! ## Why the boxes are written by hand
//! The `mp4` crate's writer needs `Write + Seek`, writes `mdat` first and appends `moov` at the
//! end (no fast start), and cannot express a streamed padding box; the few boxes needed here are
//! fixed-layout and short, so writing them directly (ISO/IEC 14496-12 and 14496-15) is smaller
//! and easier to check than adapting a general muxer. The result is checked against
//! `mp4parse` (Mozilla's parser) in tests and was checked against `ffprobe`/`ffmpeg` by hand.

use std::fmt;
use std::io::Write as _;

use bytes::{BufMut, Bytes};
use futures::Stream;

/// Frame rate of generated videos when the caller has no preference: 24 fps, the rate the
/// Veo and Seedance models deliver.
pub const DEFAULT_FPS: u32 = 24;

/// Largest accepted width or height in pixels. 4096 covers every size the upstream models
/// produce (up to 1080p and 21:9) with room to spare, and keeps one IDR picture under 70 KB.
pub const MAX_DIMENSION: u32 = 4096;

/// Longest accepted duration in milliseconds (60 s); the upstream models produce at most a few
/// seconds, so anything longer is a caller mistake.
pub const MAX_DURATION_MS: u32 = 60_000;

/// Highest accepted frame rate.
pub const MAX_FPS: u32 = 120;

/// Interval between keyframes (IDR pictures), in milliseconds: 2 s, a common choice that lets a
/// player seek to any 2 s boundary.
pub const KEYFRAME_INTERVAL_MS: u32 = 2_000;

/// Sample rate of the optional audio track, in Hz.
pub const AUDIO_SAMPLE_RATE: u32 = 48_000;

/// Largest chunk of padding handed out by [`GeneratedMp4::range_stream`]; larger requested
/// chunk sizes are capped to this for the padding, which is served from a shared static
/// zero buffer of this size instead of being allocated.
pub const MAX_PADDING_CHUNK: usize = 1 << 20;

/// Zeros served as the `free` box payload. A zero-initialised static lives in `.bss`, so it
/// costs no binary size and at most this much memory for the whole process.
static ZEROS: [u8; MAX_PADDING_CHUNK] = [0; MAX_PADDING_CHUNK];

/// PCM samples per AAC frame (AAC-LC, frameLengthFlag = 0).
const AAC_FRAME_SAMPLES: u32 = 1024;
/// Channels of the audio track (stereo, like the upstream models' outputs).
const AUDIO_CHANNELS: u16 = 2;
/// Timescale of the movie header and track headers: milliseconds.
const MOVIE_TIMESCALE: u32 = 1000;
/// Ticks per frame in the video track's timescale (timescale = fps * this), so that durations
/// are exact integers and players see a conventional, fine-grained timescale.
const VIDEO_TICKS_PER_FRAME: u32 = 1000;
/// Macroblock size in luma samples.
const MB_SIZE: u32 = 16;
/// H.264 `profile_idc` for Baseline.
const PROFILE_BASELINE: u8 = 66;
/// `constraint_set0_flag` and `constraint_set1_flag`: the stream is Constrained Baseline, so
/// every Baseline, Main and High decoder accepts it.
const CONSTRAINT_FLAGS: u8 = 0xC0;
/// `mb_type` of `I_16x16_2_0_0` in an I slice: Intra 16x16, DC prediction, no coded residual.
const MB_TYPE_I16X16_DC_NO_RESIDUAL: u32 = 3;
/// `mb_type` of `I_PCM` in an I slice.
const MB_TYPE_I_PCM: u32 = 25;
/// `slice_type` 7: I, and every slice of the picture is I.
const SLICE_TYPE_I_ALL: u32 = 7;
/// `slice_type` 5: P, and every slice of the picture is P.
const SLICE_TYPE_P_ALL: u32 = 5;
/// UUID of the SEI message that carries the seed (random, specific to vidgate).
const SEED_SEI_UUID: [u8; 16] = [
    0x76, 0x69, 0x64, 0x67, 0x61, 0x74, 0x65, 0x2d, 0x9b, 0x1e, 0x4c, 0x37, 0xa2, 0x5d, 0x11, 0xf0,
];
/// The 3x3 identity transformation matrix of `mvhd`/`tkhd` (16.16 and 2.30 fixed point).
const IDENTITY_MATRIX: [u32; 9] = [0x0001_0000, 0, 0, 0, 0x0001_0000, 0, 0, 0, 0x4000_0000];

/// What to generate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mp4Params {
    /// Width in pixels; even, at most [`MAX_DIMENSION`].
    pub width: u32,
    /// Height in pixels; even, at most [`MAX_DIMENSION`].
    pub height: u32,
    /// Duration in milliseconds; rounded to a whole number of frames (at least one).
    pub duration_ms: u32,
    /// Frames per second, 1..=[`MAX_FPS`]; usually [`DEFAULT_FPS`].
    pub fps: u32,
    /// Whether to add a silent AAC-LC audio track.
    pub audio: bool,
    /// Pad the file with a trailing `free` box up to at least this many bytes (0: no padding).
    pub min_size: u64,
    /// Chooses the picture colour and is embedded in the stream, so different seeds give
    /// different bytes.
    pub seed: u64,
}

impl Mp4Params {
    /// A video of the given size and duration at [`DEFAULT_FPS`], without audio, padding or seed.
    pub fn new(width: u32, height: u32, duration_ms: u32) -> Mp4Params {
        Mp4Params {
            width,
            height,
            duration_ms,
            fps: DEFAULT_FPS,
            audio: false,
            min_size: 0,
            seed: 0,
        }
    }
}

/// Why a video or image could not be generated.
#[derive(thiserror::Error, Debug)]
pub enum Mp4GenError {
    #[error("width and height must be non-zero, got {width}x{height}")]
    ZeroDimension { width: u32, height: u32 },
    #[error(
        "width and height must be even (4:2:0 chroma is cropped in 2-pixel units), got {width}x{height}"
    )]
    OddDimension { width: u32, height: u32 },
    #[error("{width}x{height} exceeds the limit of {max}x{max}")]
    DimensionTooLarge { width: u32, height: u32, max: u32 },
    #[error("duration must be non-zero")]
    ZeroDuration,
    #[error("duration of {duration_ms} ms exceeds the limit of {max_ms} ms")]
    DurationTooLong { duration_ms: u32, max_ms: u32 },
    #[error("fps must be non-zero")]
    ZeroFps,
    #[error("{fps} fps exceeds the limit of {max} fps")]
    FpsTooHigh { fps: u32, max: u32 },
    /// Cannot happen within the limits above; kept so that raising a limit fails loudly
    /// instead of writing truncated 32-bit box sizes.
    #[error("the generated MP4 body is {bytes} bytes, too large for 32-bit box sizes")]
    OutputTooLarge { bytes: u64 },
    #[error("encoding the PNG failed: {0}")]
    Png(#[from] png::EncodingError),
}

/// A generated MP4: the real bytes (ftyp, moov, mdat and the `free` box header) plus a count of
/// zero bytes that follow them. Cloning is cheap (the prefix is reference-counted).
#[derive(Clone)]
pub struct GeneratedMp4 {
    prefix: Bytes,
    padding: u64,
}

impl fmt::Debug for GeneratedMp4 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The prefix is binary and a few KB long; its length is what matters when debugging.
        f.debug_struct("GeneratedMp4")
            .field("prefix_len", &self.prefix.len())
            .field("padding", &self.padding)
            .finish()
    }
}

impl GeneratedMp4 {
    /// Generates the MP4 described by `params`.
    pub fn generate(params: &Mp4Params) -> Result<GeneratedMp4, Mp4GenError> {
        validate(params)?;
        let layout = VideoLayout::new(params);
        let colour = colour_for_seed(params.seed).to_ycbcr();
        let video = encode_video(&layout, colour, params.seed);
        let audio = params
            .audio
            .then(|| AudioPlan::new(layout.frame_count, layout.fps));

        let ftyp = ftyp_box();
        // The chunk offsets inside moov depend on moov's own length, which does not depend on
        // the offsets' values (stco entries are fixed-width): measure once, then write for real.
        let probe_moov = moov_box(&layout, &video, audio.as_ref(), 0, 0);
        let mdat_start = ftyp.len() + probe_moov.len();
        let video_offset = mdat_start + 8;
        let audio_offset = video_offset + video.data.len();
        let too_large = |bytes: usize| Mp4GenError::OutputTooLarge {
            bytes: u64::try_from(bytes).unwrap_or(u64::MAX),
        };
        let video_offset32 = u32::try_from(video_offset).map_err(|_| too_large(video_offset))?;
        let audio_offset32 = u32::try_from(audio_offset).map_err(|_| too_large(audio_offset))?;
        let moov = moov_box(
            &layout,
            &video,
            audio.as_ref(),
            video_offset32,
            audio_offset32,
        );
        debug_assert_eq!(moov.len(), probe_moov.len());

        let mut prefix = Vec::with_capacity(mdat_start + 8 + video.data.len() + 64);
        prefix.extend_from_slice(&ftyp);
        prefix.extend_from_slice(&moov);
        boxed(&mut prefix, b"mdat", |o| {
            o.extend_from_slice(&video.data);
            if let Some(audio) = &audio {
                for _ in 0..audio.frame_count {
                    o.extend_from_slice(&audio.frame);
                }
            }
        });
        // Every box lies inside the prefix, so a prefix that fits 32 bits means every box size
        // written by `boxed` was exact.
        if u32::try_from(prefix.len()).is_err() {
            return Err(too_large(prefix.len()));
        }

        let padding = append_free_box_header(&mut prefix, params.min_size);
        Ok(GeneratedMp4 {
            prefix: Bytes::from(prefix),
            padding,
        })
    }

    /// Total length of the file in bytes.
    pub fn len(&self) -> u64 {
        self.prefix_len() + self.padding
    }

    /// Whether the file is empty (never, for a generated file).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Length of the real bytes held in memory (ftyp, moov, mdat and, when padded, the `free`
    /// box header); everything after it is zero padding.
    pub fn prefix_len(&self) -> u64 {
        u64::try_from(self.prefix.len()).unwrap_or(u64::MAX)
    }

    /// Bytes `[start, end)` (clamped to the file) in chunks of at most `chunk` bytes (a `chunk`
    /// of 0 is taken as 1; padding chunks are also capped at [`MAX_PADDING_CHUNK`]). Never holds
    /// more than one chunk of padding: the zeros come from a shared static buffer.
    pub fn range_stream(
        &self,
        start: u64,
        end: u64,
        chunk: usize,
    ) -> impl Stream<Item = Bytes> + Send + 'static {
        futures::stream::iter(self.range_chunks(start, end, chunk))
    }

    /// The whole file in memory; meant for tests with small files.
    pub fn to_vec(&self) -> Vec<u8> {
        // Only a capacity hint: a length beyond usize is left to fail on the first push.
        let capacity = usize::try_from(self.len()).unwrap_or(0);
        let mut out = Vec::with_capacity(capacity);
        for piece in self.range_chunks(0, self.len(), MAX_PADDING_CHUNK) {
            out.extend_from_slice(&piece);
        }
        out
    }

    fn range_chunks(&self, start: u64, end: u64, chunk: usize) -> RangeChunks {
        let end = end.min(self.len());
        RangeChunks {
            prefix: self.prefix.clone(),
            pos: start.min(end),
            end,
            chunk: u64::try_from(chunk.max(1)).unwrap_or(u64::MAX),
        }
    }
}

/// The iterator behind [`GeneratedMp4::range_stream`]: slices of the prefix, then slices of the
/// static zero buffer. A chunk never spans the prefix/padding boundary.
struct RangeChunks {
    prefix: Bytes,
    pos: u64,
    end: u64,
    chunk: u64,
}

impl Iterator for RangeChunks {
    type Item = Bytes;

    fn next(&mut self) -> Option<Bytes> {
        if self.pos >= self.end {
            return None;
        }
        let prefix_len = u64::try_from(self.prefix.len()).unwrap_or(u64::MAX);
        let piece = if self.pos < prefix_len {
            let stop = self
                .end
                .min(prefix_len)
                .min(self.pos.saturating_add(self.chunk));
            // Both bounds are at most prefix_len, which came from a usize.
            let (from, to) = (
                usize::try_from(self.pos).unwrap_or(usize::MAX),
                usize::try_from(stop).unwrap_or(usize::MAX),
            );
            self.pos = stop;
            self.prefix.slice(from..to)
        } else {
            let cap = self.chunk.min(MAX_PADDING_CHUNK as u64);
            let n = (self.end - self.pos).min(cap);
            self.pos += n;
            // n <= MAX_PADDING_CHUNK, which is a usize.
            Bytes::from_static(&ZEROS[..usize::try_from(n).unwrap_or(MAX_PADDING_CHUNK)])
        };
        Some(piece)
    }
}

/// A PNG image of the last frame: the flat colour of the video generated with the same seed,
/// for Seedance `return_last_frame` (S10). Rows are streamed into the encoder, so memory stays
/// at one row plus the (tiny, flat-colour) compressed output.
pub fn last_frame_png(width: u32, height: u32, seed: u64) -> Result<Bytes, Mp4GenError> {
    validate_dimensions(width, height)?;
    let rgb = colour_for_seed(seed);
    let row: Vec<u8> = std::iter::repeat_n([rgb.r, rgb.g, rgb.b], width as usize)
        .flatten()
        .collect();
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, width, height);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header()?;
    let mut stream = writer.stream_writer()?;
    for _ in 0..height {
        stream.write_all(&row).map_err(png::EncodingError::from)?;
    }
    stream.finish()?;
    writer.finish()?;
    Ok(Bytes::from(out))
}

fn validate(params: &Mp4Params) -> Result<(), Mp4GenError> {
    validate_dimensions(params.width, params.height)?;
    if params.duration_ms == 0 {
        return Err(Mp4GenError::ZeroDuration);
    }
    if params.duration_ms > MAX_DURATION_MS {
        return Err(Mp4GenError::DurationTooLong {
            duration_ms: params.duration_ms,
            max_ms: MAX_DURATION_MS,
        });
    }
    if params.fps == 0 {
        return Err(Mp4GenError::ZeroFps);
    }
    if params.fps > MAX_FPS {
        return Err(Mp4GenError::FpsTooHigh {
            fps: params.fps,
            max: MAX_FPS,
        });
    }
    Ok(())
}

fn validate_dimensions(width: u32, height: u32) -> Result<(), Mp4GenError> {
    if width == 0 || height == 0 {
        return Err(Mp4GenError::ZeroDimension { width, height });
    }
    if width > MAX_DIMENSION || height > MAX_DIMENSION {
        return Err(Mp4GenError::DimensionTooLarge {
            width,
            height,
            max: MAX_DIMENSION,
        });
    }
    if !width.is_multiple_of(2) || !height.is_multiple_of(2) {
        return Err(Mp4GenError::OddDimension { width, height });
    }
    Ok(())
}

/// Appends the header of a `free` box that pads the file to at least `min_size` bytes and
/// returns how many zero bytes follow it (0 and nothing appended when no padding is needed).
fn append_free_box_header(prefix: &mut Vec<u8>, min_size: u64) -> u64 {
    let prefix_len = u64::try_from(prefix.len()).unwrap_or(u64::MAX);
    let Some(needed) = min_size.checked_sub(prefix_len).filter(|n| *n > 0) else {
        return 0;
    };
    // A box is at least its 8-byte header, so a shortfall under 8 bytes overshoots slightly
    // ("at least min_size"). Past 4 GiB the 32-bit size field cannot hold the box, so the
    // 64-bit "largesize" form (size = 1) is used.
    let compact_total = needed.max(8);
    if let Ok(size32) = u32::try_from(compact_total) {
        prefix.put_u32(size32);
        prefix.extend_from_slice(b"free");
        compact_total - 8
    } else {
        prefix.put_u32(1);
        prefix.extend_from_slice(b"free");
        prefix.put_u64(needed);
        needed - 16
    }
}

// ---------------------------------------------------------------------------------------------
// Colour

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Rgb {
    r: u8,
    g: u8,
    b: u8,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct YCbCr {
    y: u8,
    cb: u8,
    cr: u8,
}

/// A colour picked from the seed. Channels stay in 32..=223 so the picture is neither black nor
/// white and its limited-range YCbCr samples are never 0 (old decoders reject 0 in `I_PCM`).
fn colour_for_seed(seed: u64) -> Rgb {
    let mixed = splitmix64(seed).to_be_bytes();
    let channel = |byte: u8| 32 + byte % 192;
    Rgb {
        r: channel(mixed[0]),
        g: channel(mixed[1]),
        b: channel(mixed[2]),
    }
}

/// SplitMix64's output function: spreads nearby seeds (0, 1, 2...) over unrelated colours.
fn splitmix64(seed: u64) -> u64 {
    let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Rgb {
    /// BT.601 limited range, the matrix decoders assume for an untagged stream, so the video
    /// looks like the PNG of the same seed.
    fn to_ycbcr(self) -> YCbCr {
        let (r, g, b) = (i32::from(self.r), i32::from(self.g), i32::from(self.b));
        let y = ((66 * r + 129 * g + 25 * b + 128) >> 8) + 16;
        let cb = ((-38 * r - 74 * g + 112 * b + 128) >> 8) + 128;
        let cr = ((112 * r - 94 * g - 18 * b + 128) >> 8) + 128;
        // The formulas stay within 16..=240 for 8-bit input; the clamp documents the range.
        let narrow = |v: i32| v.clamp(16, 240) as u8;
        YCbCr {
            y: narrow(y),
            cb: narrow(cb),
            cr: narrow(cr),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// H.264 bitstream

/// Writes bits most-significant first, with the Exp-Golomb codes of H.264 (clause 9.1).
#[derive(Default)]
struct BitWriter {
    bytes: Vec<u8>,
    current: u8,
    used: u8,
}

impl BitWriter {
    fn bit(&mut self, bit: bool) {
        self.current = (self.current << 1) | u8::from(bit);
        self.used += 1;
        if self.used == 8 {
            self.bytes.push(self.current);
            self.current = 0;
            self.used = 0;
        }
    }

    /// The `count` low bits of `value`, most significant first (`u(n)`).
    fn bits(&mut self, count: u32, value: u64) {
        for i in (0..count).rev() {
            self.bit((value >> i) & 1 == 1);
        }
    }

    /// Unsigned Exp-Golomb `ue(v)`.
    fn ue(&mut self, value: u32) {
        let coded = u64::from(value) + 1;
        let len = 64 - coded.leading_zeros();
        self.bits(len - 1, 0);
        self.bits(len, coded);
    }

    /// Signed Exp-Golomb `se(v)`: k > 0 maps to 2k - 1, k <= 0 to -2k.
    fn se(&mut self, value: i32) {
        let v = i64::from(value);
        let code = if v > 0 { 2 * v - 1 } else { -2 * v };
        // |code| <= 2^32, and value is only ever small here.
        self.ue(u32::try_from(code).unwrap_or(u32::MAX));
    }

    fn is_byte_aligned(&self) -> bool {
        self.used == 0
    }

    fn align_with_zeros(&mut self) {
        while !self.is_byte_aligned() {
            self.bit(false);
        }
    }

    /// `rbsp_trailing_bits()`: a stop bit, then zeros up to the byte boundary.
    fn finish_rbsp(mut self) -> Vec<u8> {
        self.bit(true);
        self.align_with_zeros();
        self.bytes
    }
}

/// A NAL unit: header byte, then the RBSP with emulation prevention (clause 7.4.1): a 0x03 is
/// inserted wherever two zero bytes would be followed by a byte <= 3, so no start code appears.
fn nal_unit(nal_ref_idc: u8, nal_unit_type: u8, rbsp: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(rbsp.len() + rbsp.len() / 64 + 2);
    out.push((nal_ref_idc << 5) | nal_unit_type);
    let mut zeros = 0;
    for &byte in rbsp {
        if zeros >= 2 && byte <= 3 {
            out.push(3);
            zeros = 0;
        }
        out.push(byte);
        zeros = if byte == 0 { zeros + 1 } else { 0 };
    }
    out
}

/// Picture geometry and timing shared by the bitstream and the container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct VideoLayout {
    width: u32,
    height: u32,
    width_mbs: u32,
    height_mbs: u32,
    fps: u32,
    frame_count: u32,
    gop_len: u32,
    log2_max_frame_num: u32,
    level_idc: u8,
}

impl VideoLayout {
    fn new(params: &Mp4Params) -> VideoLayout {
        let width_mbs = params.width.div_ceil(MB_SIZE);
        let height_mbs = params.height.div_ceil(MB_SIZE);
        let frames = (u64::from(params.duration_ms) * u64::from(params.fps) + 500) / 1000;
        // Bounded by MAX_DURATION_MS * MAX_FPS / 1000 = 7200 frames.
        let frame_count = u32::try_from(frames.max(1)).unwrap_or(u32::MAX);
        let gop_len = (u64::from(params.fps) * u64::from(KEYFRAME_INTERVAL_MS) / 1000).max(1);
        let gop_len = u32::try_from(gop_len).unwrap_or(u32::MAX);
        // frame_num counts pictures since the IDR; make MaxFrameNum cover a whole GOP so it never
        // wraps (wrapping would be legal, this is just simpler to read in a stream analyser).
        let log2_max_frame_num = (u32::BITS - (gop_len - 1).leading_zeros()).clamp(4, 16);
        VideoLayout {
            width: params.width,
            height: params.height,
            width_mbs,
            height_mbs,
            fps: params.fps,
            frame_count,
            gop_len,
            log2_max_frame_num,
            level_idc: level_for(width_mbs, height_mbs, params.fps),
        }
    }

    fn mbs_per_picture(&self) -> u32 {
        self.width_mbs * self.height_mbs
    }

    fn video_timescale(&self) -> u32 {
        self.fps * VIDEO_TICKS_PER_FRAME
    }

    fn duration_ms(&self) -> u32 {
        let ms = (u64::from(self.frame_count) * 1000).div_ceil(u64::from(self.fps));
        u32::try_from(ms).unwrap_or(u32::MAX)
    }
}

/// The smallest H.264 level (Table A-1) whose frame size, macroblock rate and per-dimension
/// limit (sqrt(8 * MaxFS) macroblocks) admit the stream; decoders use it to size buffers.
fn level_for(width_mbs: u32, height_mbs: u32, fps: u32) -> u8 {
    // (level_idc, MaxMBPS, MaxFS)
    const LEVELS: [(u8, u64, u64); 19] = [
        (10, 1_485, 99),
        (11, 3_000, 396),
        (12, 6_000, 396),
        (13, 11_880, 396),
        (20, 11_880, 396),
        (21, 19_800, 792),
        (22, 20_250, 1_620),
        (30, 40_500, 1_620),
        (31, 108_000, 3_600),
        (32, 216_000, 5_120),
        (40, 245_760, 8_192),
        (41, 245_760, 8_192),
        (42, 522_240, 8_704),
        (50, 589_824, 22_080),
        (51, 983_040, 36_864),
        (52, 2_073_600, 36_864),
        (60, 4_177_920, 139_264),
        (61, 8_355_840, 139_264),
        (62, 16_711_680, 139_264),
    ];
    let frame_mbs = u64::from(width_mbs) * u64::from(height_mbs);
    let mb_rate = frame_mbs * u64::from(fps);
    let side = u64::from(width_mbs.max(height_mbs));
    LEVELS
        .iter()
        .find(|(_, max_mbps, max_fs)| {
            frame_mbs <= *max_fs && mb_rate <= *max_mbps && side * side <= 8 * max_fs
        })
        .map_or(62, |(idc, _, _)| *idc)
}

/// Sequence parameter set (clause 7.3.2.1.1), as a NAL unit.
fn sps_nal(layout: &VideoLayout) -> Vec<u8> {
    let mut w = BitWriter::default();
    w.bits(8, PROFILE_BASELINE.into());
    w.bits(8, CONSTRAINT_FLAGS.into());
    w.bits(8, layout.level_idc.into());
    w.ue(0); // seq_parameter_set_id
    w.ue(layout.log2_max_frame_num - 4);
    // pic_order_cnt_type 2: output order = decoding order, derived from frame_num; no POC
    // field in slice headers. Allowed because every picture is a reference picture.
    w.ue(2);
    w.ue(1); // max_num_ref_frames: P pictures refer to the previous picture only
    w.bit(false); // gaps_in_frame_num_value_allowed_flag
    w.ue(layout.width_mbs - 1);
    w.ue(layout.height_mbs - 1);
    w.bit(true); // frame_mbs_only_flag: progressive
    w.bit(true); // direct_8x8_inference_flag
    // Cropping is in units of 2 luma samples for 4:2:0 progressive (CropUnitX = CropUnitY = 2),
    // which is why odd dimensions are rejected.
    let crop_right = (layout.width_mbs * MB_SIZE - layout.width) / 2;
    let crop_bottom = (layout.height_mbs * MB_SIZE - layout.height) / 2;
    let cropping = crop_right > 0 || crop_bottom > 0;
    w.bit(cropping);
    if cropping {
        w.ue(0); // left
        w.ue(crop_right);
        w.ue(0); // top
        w.ue(crop_bottom);
    }
    w.bit(true); // vui_parameters_present_flag
    write_vui(&mut w, layout.fps);
    nal_unit(3, 7, &w.finish_rbsp())
}

/// VUI (Annex E): the frame rate, and "no reordering, one frame buffer" so decoders output each
/// picture as soon as it is decoded instead of guessing a reorder depth.
fn write_vui(w: &mut BitWriter, fps: u32) {
    w.bit(false); // aspect_ratio_info_present_flag (square pixels by default)
    w.bit(false); // overscan_info_present_flag
    w.bit(false); // video_signal_type_present_flag
    w.bit(false); // chroma_loc_info_present_flag
    w.bit(true); // timing_info_present_flag
    w.bits(32, 1); // num_units_in_tick
    w.bits(32, u64::from(fps) * 2); // time_scale: two ticks (fields) per frame
    w.bit(true); // fixed_frame_rate_flag
    w.bit(false); // nal_hrd_parameters_present_flag
    w.bit(false); // vcl_hrd_parameters_present_flag
    w.bit(false); // pic_struct_present_flag
    w.bit(true); // bitstream_restriction_flag
    w.bit(true); // motion_vectors_over_pic_boundaries_flag
    w.ue(2); // max_bytes_per_pic_denom (default)
    w.ue(1); // max_bits_per_mb_denom (default)
    w.ue(16); // log2_max_mv_length_horizontal (default)
    w.ue(16); // log2_max_mv_length_vertical (default)
    w.ue(0); // max_num_reorder_frames
    w.ue(1); // max_dec_frame_buffering
}

/// Picture parameter set (clause 7.3.2.2), as a NAL unit: CAVLC, one slice group, QP 26.
fn pps_nal() -> Vec<u8> {
    let mut w = BitWriter::default();
    w.ue(0); // pic_parameter_set_id
    w.ue(0); // seq_parameter_set_id
    w.bit(false); // entropy_coding_mode_flag: CAVLC (Baseline has no CABAC)
    w.bit(false); // bottom_field_pic_order_in_frame_present_flag
    w.ue(0); // num_slice_groups_minus1
    w.ue(0); // num_ref_idx_l0_default_active_minus1
    w.ue(0); // num_ref_idx_l1_default_active_minus1
    w.bit(false); // weighted_pred_flag
    w.bits(2, 0); // weighted_bipred_idc
    w.se(0); // pic_init_qp_minus26
    w.se(0); // pic_init_qs_minus26
    w.se(0); // chroma_qp_index_offset
    w.bit(true); // deblocking_filter_control_present_flag: lets slices turn the filter off
    w.bit(false); // constrained_intra_pred_flag
    w.bit(false); // redundant_pic_cnt_present_flag
    nal_unit(3, 8, &w.finish_rbsp())
}

/// SEI "user data unregistered" (payload type 5) carrying the seed, as a NAL unit.
fn seed_sei_nal(seed: u64) -> Vec<u8> {
    let mut rbsp = Vec::with_capacity(2 + 16 + 8 + 1);
    rbsp.push(5); // payloadType
    rbsp.push(16 + 8); // payloadSize
    rbsp.extend_from_slice(&SEED_SEI_UUID);
    rbsp.extend_from_slice(&seed.to_be_bytes());
    rbsp.push(0x80); // rbsp_trailing_bits
    nal_unit(0, 6, &rbsp)
}

/// `coeff_token` for TotalCoeff = 0, TrailingOnes = 0 (Table 9-5), which depends on nC, the
/// predicted number of coefficients from the neighbouring blocks.
fn write_zero_coeff_token(w: &mut BitWriter, nc: u32) {
    match nc {
        0..=1 => w.bits(1, 0b1),
        2..=3 => w.bits(2, 0b11),
        4..=7 => w.bits(4, 0b1111),
        _ => w.bits(6, 0b00_0011),
    }
}

/// One IDR picture, as a NAL unit: macroblock 0 is `I_PCM` with the colour; every other
/// macroblock is Intra 16x16 DC with no residual, which copies the colour from its neighbours.
fn idr_slice_nal(layout: &VideoLayout, idr_pic_id: u32, colour: YCbCr) -> Vec<u8> {
    let mut w = BitWriter::default();
    w.ue(0); // first_mb_in_slice
    w.ue(SLICE_TYPE_I_ALL);
    w.ue(0); // pic_parameter_set_id
    w.bits(layout.log2_max_frame_num, 0); // frame_num is 0 at an IDR
    w.ue(idr_pic_id);
    // dec_ref_pic_marking() for an IDR
    w.bit(false); // no_output_of_prior_pics_flag
    w.bit(false); // long_term_reference_flag
    w.se(0); // slice_qp_delta
    // The picture is flat, so the deblocking filter would change nothing; turning it off
    // keeps the decoder's work and our reasoning simple.
    w.ue(1); // disable_deblocking_filter_idc

    for mb_y in 0..layout.height_mbs {
        for mb_x in 0..layout.width_mbs {
            if (mb_x, mb_y) == (0, 0) {
                w.ue(MB_TYPE_I_PCM);
                w.align_with_zeros(); // pcm_alignment_zero_bit
                let samples = [(colour.y, 256), (colour.cb, 64), (colour.cr, 64)];
                for (value, count) in samples {
                    for _ in 0..count {
                        w.bits(8, value.into());
                    }
                }
                continue;
            }
            w.ue(MB_TYPE_I16X16_DC_NO_RESIDUAL);
            w.ue(0); // intra_chroma_pred_mode: DC
            w.se(0); // mb_qp_delta (always present for Intra 16x16)
            // The Intra16x16 DC luma block is always coded, even with no residual: an empty
            // block. nC comes from the left (A) and upper (B) neighbours; an I_PCM neighbour
            // counts as 16 coefficients (clause 9.2.1), the others as 0.
            let neighbour = |is_pcm: bool| if is_pcm { 16 } else { 0 };
            let n_a = (mb_x > 0).then(|| neighbour((mb_x - 1, mb_y) == (0, 0)));
            let n_b = (mb_y > 0).then(|| neighbour((mb_x, mb_y - 1) == (0, 0)));
            let nc = match (n_a, n_b) {
                (Some(a), Some(b)) => (a + b + 1) >> 1,
                (Some(a), None) => a,
                (None, Some(b)) => b,
                (None, None) => 0,
            };
            write_zero_coeff_token(&mut w, nc);
        }
    }
    nal_unit(3, 5, &w.finish_rbsp())
}

/// One P picture, as a NAL unit: every macroblock skipped, i.e. a copy of the previous picture.
/// It stays a reference picture (nal_ref_idc != 0) because pic_order_cnt_type 2 forbids two
/// consecutive non-reference pictures.
fn p_slice_nal(layout: &VideoLayout, frame_num: u32) -> Vec<u8> {
    let mut w = BitWriter::default();
    w.ue(0); // first_mb_in_slice
    w.ue(SLICE_TYPE_P_ALL);
    w.ue(0); // pic_parameter_set_id
    w.bits(layout.log2_max_frame_num, frame_num.into());
    w.bit(false); // num_ref_idx_active_override_flag
    w.bit(false); // ref_pic_list_modification_flag_l0
    w.bit(false); // adaptive_ref_pic_marking_mode_flag: sliding window
    w.se(0); // slice_qp_delta
    w.ue(1); // disable_deblocking_filter_idc
    w.ue(layout.mbs_per_picture()); // mb_skip_run: the whole picture
    nal_unit(2, 1, &w.finish_rbsp())
}

/// The video track's samples: data in decoding order, each sample a run of 4-byte
/// length-prefixed NAL units, plus the parameter sets for `avcC`.
struct EncodedVideo {
    sps: Vec<u8>,
    pps: Vec<u8>,
    data: Vec<u8>,
    sample_sizes: Vec<u32>,
    /// 1-based numbers of the IDR samples (`stss`).
    sync_samples: Vec<u32>,
}

fn encode_video(layout: &VideoLayout, colour: YCbCr, seed: u64) -> EncodedVideo {
    // Consecutive IDR pictures must differ in idr_pic_id; IDR pictures are otherwise identical,
    // so two variants are encoded once and reused.
    let idr_variants = [
        idr_slice_nal(layout, 0, colour),
        idr_slice_nal(layout, 1, colour),
    ];
    let sei = seed_sei_nal(seed);
    let mut data = Vec::new();
    let mut sample_sizes = Vec::with_capacity(layout.frame_count as usize);
    let mut sync_samples = Vec::new();
    for frame in 0..layout.frame_count {
        let start = data.len();
        let position_in_gop = frame % layout.gop_len;
        let mut push_nal = |nal: &[u8]| {
            // A NAL unit is at most ~70 KB here (one IDR picture at MAX_DIMENSION).
            data.put_u32(u32::try_from(nal.len()).unwrap_or(u32::MAX));
            data.extend_from_slice(nal);
        };
        if position_in_gop == 0 {
            if frame == 0 {
                push_nal(&sei);
            }
            let gop_index = frame / layout.gop_len;
            push_nal(&idr_variants[(gop_index % 2) as usize]);
            sync_samples.push(frame + 1);
        } else {
            let frame_num = position_in_gop % (1 << layout.log2_max_frame_num);
            push_nal(&p_slice_nal(layout, frame_num));
        }
        sample_sizes.push(u32::try_from(data.len() - start).unwrap_or(u32::MAX));
    }
    EncodedVideo {
        sps: sps_nal(layout),
        pps: pps_nal(),
        data,
        sample_sizes,
        sync_samples,
    }
}

// ---------------------------------------------------------------------------------------------
// AAC audio

/// A silent AAC-LC track: the same raw frame repeated for the video's duration (rounded up to a
/// whole frame).
struct AudioPlan {
    frame: Vec<u8>,
    frame_count: u32,
}

impl AudioPlan {
    fn new(video_frames: u32, fps: u32) -> AudioPlan {
        let samples = u64::from(video_frames) * u64::from(AUDIO_SAMPLE_RATE) / u64::from(fps);
        let frames = samples.div_ceil(u64::from(AAC_FRAME_SAMPLES)).max(1);
        AudioPlan {
            frame: silent_aac_frame(),
            // At most 60 s * 48000 / 1024 frames.
            frame_count: u32::try_from(frames).unwrap_or(u32::MAX),
        }
    }

    fn duration_in_samples(&self) -> u32 {
        self.frame_count.saturating_mul(AAC_FRAME_SAMPLES)
    }
}

/// One raw AAC-LC `raw_data_block()` (ISO/IEC 14496-3, 4.4.2) of silence for a stereo channel
/// pair: a channel pair element whose two channels code no scale factor band (max_sfb = 0),
/// so every spectral coefficient is zero, then the END element.
fn silent_aac_frame() -> Vec<u8> {
    let mut w = BitWriter::default();
    w.bits(3, 1); // id_syn_ele: ID_CPE
    w.bits(4, 0); // element_instance_tag
    w.bit(false); // common_window
    for _ in 0..AUDIO_CHANNELS {
        w.bits(8, 100); // global_gain (irrelevant with no bands; a typical value)
        w.bit(false); // ics_reserved_bit
        w.bits(2, 0); // window_sequence: ONLY_LONG_SEQUENCE
        w.bit(false); // window_shape
        w.bits(6, 0); // max_sfb: no bands, so no section or scale factor data
        w.bit(false); // predictor_data_present
        w.bit(false); // pulse_data_present
        w.bit(false); // tns_data_present
        w.bit(false); // gain_control_data_present
    }
    w.bits(3, 7); // id_syn_ele: ID_END
    w.align_with_zeros();
    w.bytes
}

/// AudioSpecificConfig (ISO/IEC 14496-3, 1.6.2.1): AAC-LC, 48 kHz, 2 channels.
fn audio_specific_config() -> [u8; 2] {
    const AOT_AAC_LC: u16 = 2;
    const FREQ_INDEX_48000: u16 = 3;
    // 5 bits object type, 4 bits frequency index, 4 bits channel configuration, then
    // GASpecificConfig: frameLengthFlag, dependsOnCoreCoder, extensionFlag (all 0).
    let bits = (AOT_AAC_LC << 11) | (FREQ_INDEX_48000 << 7) | (AUDIO_CHANNELS << 3);
    bits.to_be_bytes()
}

// ---------------------------------------------------------------------------------------------
// ISO BMFF boxes

/// Appends a box: a 32-bit size placeholder, the type, the body, then the real size. Sizes
/// are exact as long as the whole prefix fits 32 bits, which `generate` checks.
fn boxed(out: &mut Vec<u8>, kind: &[u8; 4], body: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    out.put_u32(0);
    out.extend_from_slice(kind);
    body(out);
    let size = u32::try_from(out.len() - start).unwrap_or(u32::MAX);
    out[start..start + 4].copy_from_slice(&size.to_be_bytes());
}

/// Appends a full box (a box with version and flags).
fn full_boxed(
    out: &mut Vec<u8>,
    kind: &[u8; 4],
    version: u8,
    flags: u32,
    body: impl FnOnce(&mut Vec<u8>),
) {
    boxed(out, kind, |o| {
        o.put_u32((u32::from(version) << 24) | (flags & 0x00FF_FFFF));
        body(o);
    });
}

fn ftyp_box() -> Vec<u8> {
    let mut out = Vec::new();
    boxed(&mut out, b"ftyp", |o| {
        o.extend_from_slice(b"isom");
        o.put_u32(0x200); // minor_version
        for brand in [b"isom", b"iso2", b"avc1", b"mp41"] {
            o.extend_from_slice(brand);
        }
    });
    out
}

/// Sample table of a track stored as a single chunk.
struct SampleTable<'a> {
    sample_count: u32,
    sample_delta: u32,
    /// Per-sample sizes, or `None` when every sample has `constant_size`.
    sizes: Option<&'a [u32]>,
    constant_size: u32,
    sync_samples: Option<&'a [u32]>,
    chunk_offset: u32,
}

/// What differs between the video and the audio track.
enum TrackMedia<'a> {
    Video {
        layout: &'a VideoLayout,
        video: &'a EncodedVideo,
    },
    Audio {
        audio: &'a AudioPlan,
    },
}

struct TrackPlan<'a> {
    track_id: u32,
    timescale: u32,
    duration: u32,
    duration_ms: u32,
    media: TrackMedia<'a>,
    table: SampleTable<'a>,
}

fn moov_box(
    layout: &VideoLayout,
    video: &EncodedVideo,
    audio: Option<&AudioPlan>,
    video_offset: u32,
    audio_offset: u32,
) -> Vec<u8> {
    let video_track = TrackPlan {
        track_id: 1,
        timescale: layout.video_timescale(),
        duration: layout.frame_count.saturating_mul(VIDEO_TICKS_PER_FRAME),
        duration_ms: layout.duration_ms(),
        media: TrackMedia::Video { layout, video },
        table: SampleTable {
            sample_count: layout.frame_count,
            sample_delta: VIDEO_TICKS_PER_FRAME,
            sizes: Some(&video.sample_sizes),
            constant_size: 0,
            sync_samples: Some(&video.sync_samples),
            chunk_offset: video_offset,
        },
    };
    let audio_track = audio.map(|audio| {
        let samples = audio.duration_in_samples();
        TrackPlan {
            track_id: 2,
            timescale: AUDIO_SAMPLE_RATE,
            duration: samples,
            duration_ms: u32::try_from(
                (u64::from(samples) * 1000).div_ceil(u64::from(AUDIO_SAMPLE_RATE)),
            )
            .unwrap_or(u32::MAX),
            media: TrackMedia::Audio { audio },
            table: SampleTable {
                sample_count: audio.frame_count,
                sample_delta: AAC_FRAME_SAMPLES,
                sizes: None,
                constant_size: u32::try_from(audio.frame.len()).unwrap_or(u32::MAX),
                sync_samples: None,
                chunk_offset: audio_offset,
            },
        }
    });
    let movie_ms = audio_track.as_ref().map_or(video_track.duration_ms, |a| {
        a.duration_ms.max(video_track.duration_ms)
    });
    let next_track_id = if audio_track.is_some() { 3 } else { 2 };

    let mut out = Vec::new();
    boxed(&mut out, b"moov", |o| {
        full_boxed(o, b"mvhd", 0, 0, |o| {
            o.put_u32(0); // creation_time
            o.put_u32(0); // modification_time
            o.put_u32(MOVIE_TIMESCALE);
            o.put_u32(movie_ms);
            o.put_u32(0x0001_0000); // rate 1.0
            o.put_u16(0x0100); // volume 1.0
            o.put_bytes(0, 10); // reserved
            put_matrix(o);
            o.put_bytes(0, 24); // pre_defined
            o.put_u32(next_track_id);
        });
        trak_box(o, &video_track);
        if let Some(audio_track) = &audio_track {
            trak_box(o, audio_track);
        }
    });
    out
}

fn put_matrix(o: &mut Vec<u8>) {
    for value in IDENTITY_MATRIX {
        o.put_u32(value);
    }
}

fn trak_box(o: &mut Vec<u8>, track: &TrackPlan<'_>) {
    let (is_video, width, height) = match &track.media {
        TrackMedia::Video { layout, .. } => (true, layout.width, layout.height),
        TrackMedia::Audio { .. } => (false, 0, 0),
    };
    boxed(o, b"trak", |o| {
        // Flags 3: track enabled and used in the presentation.
        full_boxed(o, b"tkhd", 0, 3, |o| {
            o.put_u32(0); // creation_time
            o.put_u32(0); // modification_time
            o.put_u32(track.track_id);
            o.put_u32(0); // reserved
            o.put_u32(track.duration_ms);
            o.put_bytes(0, 8); // reserved
            o.put_u16(0); // layer
            o.put_u16(0); // alternate_group
            o.put_u16(if is_video { 0 } else { 0x0100 }); // volume
            o.put_u16(0); // reserved
            put_matrix(o);
            o.put_u32(width << 16); // 16.16 fixed point; width <= MAX_DIMENSION
            o.put_u32(height << 16);
        });
        boxed(o, b"mdia", |o| {
            full_boxed(o, b"mdhd", 0, 0, |o| {
                o.put_u32(0); // creation_time
                o.put_u32(0); // modification_time
                o.put_u32(track.timescale);
                o.put_u32(track.duration);
                o.put_u16(0x55C4); // language "und", packed ISO-639-2/T
                o.put_u16(0); // pre_defined
            });
            full_boxed(o, b"hdlr", 0, 0, |o| {
                o.put_u32(0); // pre_defined
                o.extend_from_slice(if is_video { b"vide" } else { b"soun" });
                o.put_bytes(0, 12); // reserved
                let name: &[u8] = if is_video {
                    b"VideoHandler\0"
                } else {
                    b"SoundHandler\0"
                };
                o.extend_from_slice(name);
            });
            boxed(o, b"minf", |o| {
                if is_video {
                    full_boxed(o, b"vmhd", 0, 1, |o| {
                        o.put_u16(0); // graphicsmode: copy
                        o.put_bytes(0, 6); // opcolor
                    });
                } else {
                    full_boxed(o, b"smhd", 0, 0, |o| {
                        o.put_u16(0); // balance
                        o.put_u16(0); // reserved
                    });
                }
                boxed(o, b"dinf", |o| {
                    full_boxed(o, b"dref", 0, 0, |o| {
                        o.put_u32(1); // entry_count
                        // Flag 1: the media data is in this file.
                        full_boxed(o, b"url ", 0, 1, |_| {});
                    });
                });
                stbl_box(o, track);
            });
        });
    });
}

fn stbl_box(o: &mut Vec<u8>, track: &TrackPlan<'_>) {
    let table = &track.table;
    boxed(o, b"stbl", |o| {
        full_boxed(o, b"stsd", 0, 0, |o| {
            o.put_u32(1); // entry_count
            match &track.media {
                TrackMedia::Video { layout, video } => avc1_entry(o, layout, video),
                TrackMedia::Audio { audio } => mp4a_entry(o, audio),
            }
        });
        full_boxed(o, b"stts", 0, 0, |o| {
            o.put_u32(1); // entry_count: constant frame rate
            o.put_u32(table.sample_count);
            o.put_u32(table.sample_delta);
        });
        if let Some(sync) = table.sync_samples {
            full_boxed(o, b"stss", 0, 0, |o| {
                // One entry per GOP: at most MAX_DURATION_MS / KEYFRAME_INTERVAL_MS + 1.
                o.put_u32(u32::try_from(sync.len()).unwrap_or(u32::MAX));
                for &sample in sync {
                    o.put_u32(sample);
                }
            });
        }
        full_boxed(o, b"stsc", 0, 0, |o| {
            o.put_u32(1); // entry_count: every sample in one chunk
            o.put_u32(1); // first_chunk
            o.put_u32(table.sample_count); // samples_per_chunk
            o.put_u32(1); // sample_description_index
        });
        full_boxed(o, b"stsz", 0, 0, |o| match table.sizes {
            Some(sizes) => {
                o.put_u32(0); // sample_size: sizes follow
                o.put_u32(table.sample_count);
                for &size in sizes {
                    o.put_u32(size);
                }
            }
            None => {
                o.put_u32(table.constant_size);
                o.put_u32(table.sample_count);
            }
        });
        // stco, not co64: the chunk offsets point into an mdat that directly follows a small
        // moov, so they fit 32 bits (checked in `generate`).
        full_boxed(o, b"stco", 0, 0, |o| {
            o.put_u32(1); // entry_count
            o.put_u32(table.chunk_offset);
        });
    });
}

fn avc1_entry(o: &mut Vec<u8>, layout: &VideoLayout, video: &EncodedVideo) {
    boxed(o, b"avc1", |o| {
        o.put_bytes(0, 6); // reserved
        o.put_u16(1); // data_reference_index
        o.put_u16(0); // pre_defined
        o.put_u16(0); // reserved
        o.put_bytes(0, 12); // pre_defined
        // Both are <= MAX_DIMENSION, so they fit 16 bits.
        o.put_u16(u16::try_from(layout.width).unwrap_or(u16::MAX));
        o.put_u16(u16::try_from(layout.height).unwrap_or(u16::MAX));
        o.put_u32(0x0048_0000); // horizresolution 72 dpi
        o.put_u32(0x0048_0000); // vertresolution 72 dpi
        o.put_u32(0); // reserved
        o.put_u16(1); // frame_count per sample
        o.put_bytes(0, 32); // compressorname: empty Pascal string
        o.put_u16(0x0018); // depth: colour, no alpha
        o.put_i16(-1); // pre_defined
        // AVCDecoderConfigurationRecord (ISO/IEC 14496-15, 5.3.3.1).
        boxed(o, b"avcC", |o| {
            o.put_u8(1); // configurationVersion
            o.put_u8(PROFILE_BASELINE);
            o.put_u8(CONSTRAINT_FLAGS);
            o.put_u8(layout.level_idc);
            o.put_u8(0xFC | 3); // lengthSizeMinusOne: 4-byte NAL lengths
            o.put_u8(0xE0 | 1); // one SPS
            o.put_u16(u16::try_from(video.sps.len()).unwrap_or(u16::MAX));
            o.extend_from_slice(&video.sps);
            o.put_u8(1); // one PPS
            o.put_u16(u16::try_from(video.pps.len()).unwrap_or(u16::MAX));
            o.extend_from_slice(&video.pps);
        });
    });
}

fn mp4a_entry(o: &mut Vec<u8>, audio: &AudioPlan) {
    let frame_len = u32::try_from(audio.frame.len()).unwrap_or(u32::MAX);
    let bitrate = frame_len * 8 * AUDIO_SAMPLE_RATE / AAC_FRAME_SAMPLES;
    boxed(o, b"mp4a", |o| {
        o.put_bytes(0, 6); // reserved
        o.put_u16(1); // data_reference_index
        o.put_bytes(0, 8); // reserved (version, revision, vendor)
        o.put_u16(AUDIO_CHANNELS);
        o.put_u16(16); // samplesize
        o.put_u16(0); // pre_defined
        o.put_u16(0); // reserved
        o.put_u32(AUDIO_SAMPLE_RATE << 16); // 16.16 fixed point
        // Elementary stream descriptor (ISO/IEC 14496-1, 7.2.6.5); every descriptor is shorter
        // than 128 bytes, so each length is one byte.
        let asc = audio_specific_config();
        full_boxed(o, b"esds", 0, 0, |o| {
            let decoder_specific_len = asc.len() as u8;
            let decoder_config_len = 13 + 2 + decoder_specific_len;
            let sl_config_len = 1;
            o.put_u8(0x03); // ES_DescrTag
            o.put_u8(3 + 2 + decoder_config_len + 2 + sl_config_len);
            o.put_u16(0); // ES_ID
            o.put_u8(0); // no stream dependence, URL or OCR stream
            o.put_u8(0x04); // DecoderConfigDescrTag
            o.put_u8(decoder_config_len);
            o.put_u8(0x40); // objectTypeIndication: MPEG-4 Audio
            o.put_u8((0x05 << 2) | 1); // streamType audio, upStream 0, reserved 1
            o.put_uint(u64::from(frame_len), 3); // bufferSizeDB
            o.put_u32(bitrate); // maxBitrate
            o.put_u32(bitrate); // avgBitrate
            o.put_u8(0x05); // DecSpecificInfoTag
            o.put_u8(decoder_specific_len);
            o.extend_from_slice(&asc);
            o.put_u8(0x06); // SLConfigDescrTag
            o.put_u8(sl_config_len);
            o.put_u8(0x02); // predefined: reserved for MP4 files
        });
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bits_of(f: impl FnOnce(&mut BitWriter)) -> String {
        let mut w = BitWriter::default();
        f(&mut w);
        let mut s: String = w.bytes.iter().map(|b| format!("{b:08b}")).collect();
        for i in (0..w.used).rev() {
            s.push(if (w.current >> i) & 1 == 1 { '1' } else { '0' });
        }
        s
    }

    #[test]
    fn exp_golomb_codes_match_the_h264_tables() {
        // Clause 9.1, Table 9-2 and 9-3.
        let ue_cases = [
            (0, "1"),
            (1, "010"),
            (2, "011"),
            (3, "00100"),
            (8, "0001001"),
        ];
        for (value, expected) in ue_cases {
            assert_eq!(bits_of(|w| w.ue(value)), expected, "ue({value})");
        }
        let se_cases = [
            (0, "1"),
            (1, "010"),
            (-1, "011"),
            (2, "00100"),
            (-2, "00101"),
        ];
        for (value, expected) in se_cases {
            assert_eq!(bits_of(|w| w.se(value)), expected, "se({value})");
        }
    }

    #[test]
    fn emulation_prevention_breaks_every_start_code_prefix() {
        let cases: [(&[u8], &[u8]); 5] = [
            (&[0, 0, 0], &[0, 0, 3, 0]),
            (&[0, 0, 1], &[0, 0, 3, 1]),
            (&[0, 0, 4], &[0, 0, 4]),
            (&[0, 0, 0, 0, 0], &[0, 0, 3, 0, 0, 3, 0]),
            (&[1, 0, 2, 0, 0, 3], &[1, 0, 2, 0, 0, 3, 3]),
        ];
        for (rbsp, expected) in cases {
            assert_eq!(&nal_unit(0, 6, rbsp)[1..], expected, "rbsp {rbsp:?}");
        }
    }

    #[test]
    fn coeff_token_for_an_empty_block_depends_on_nc() {
        let cases = [
            (0, "1"),
            (1, "1"),
            (2, "11"),
            (7, "1111"),
            (8, "000011"),
            (16, "000011"),
        ];
        for (nc, expected) in cases {
            assert_eq!(
                bits_of(|w| write_zero_coeff_token(w, nc)),
                expected,
                "nC {nc}"
            );
        }
    }

    #[test]
    fn level_is_the_smallest_that_fits_table_a1() {
        let cases: [(u32, u32, u32, u8); 8] = [
            // (width, height, fps, level_idc)
            (176, 144, 15, 10),
            (640, 640, 24, 30),
            (1280, 720, 24, 31),
            (1280, 720, 60, 32),
            (1920, 1080, 24, 40),
            (2520, 1080, 24, 50),
            (4096, 4096, 24, 60),
            (4096, 4096, 120, 61),
        ];
        for (width, height, fps, level) in cases {
            let got = level_for(width.div_ceil(16), height.div_ceil(16), fps);
            assert_eq!(got, level, "{width}x{height}@{fps}");
        }
    }

    #[test]
    fn layout_rounds_duration_to_whole_frames_and_keyframes_every_two_seconds() {
        let cases = [
            // (duration_ms, fps, frames, gop, log2_max_frame_num)
            (4_000, 24, 96, 48, 6),
            (5_000, 24, 120, 48, 6),
            (1, 24, 1, 48, 6),
            (1_000, 1, 1, 2, 4),
            (60_000, 120, 7_200, 240, 8),
        ];
        for (duration_ms, fps, frames, gop, log2) in cases {
            let params = Mp4Params {
                fps,
                ..Mp4Params::new(64, 64, duration_ms)
            };
            let layout = VideoLayout::new(&params);
            assert_eq!(layout.frame_count, frames, "{duration_ms} ms @ {fps}");
            assert_eq!(layout.gop_len, gop, "{duration_ms} ms @ {fps}");
            assert_eq!(layout.log2_max_frame_num, log2, "{duration_ms} ms @ {fps}");
        }
    }

    #[test]
    fn keyframes_start_every_gop() {
        let params = Mp4Params::new(64, 64, 5_000);
        let layout = VideoLayout::new(&params);
        let video = encode_video(&layout, colour_for_seed(0).to_ycbcr(), 0);
        assert_eq!(video.sync_samples, vec![1, 49, 97]);
        assert_eq!(video.sample_sizes.len(), 120);
        let total: u64 = video.sample_sizes.iter().map(|s| u64::from(*s)).sum();
        assert_eq!(total, video.data.len() as u64);
    }

    /// Reads back the fields of our SPS up to the cropping window (test-only bit reader).
    fn decoded_sps_size(sps: &[u8]) -> (u32, u32) {
        let mut rbsp = Vec::new();
        let mut zeros = 0;
        for &b in &sps[1..] {
            if zeros >= 2 && b == 3 {
                zeros = 0;
                continue;
            }
            rbsp.push(b);
            zeros = if b == 0 { zeros + 1 } else { 0 };
        }
        let mut pos = 0usize;
        let mut bit = || {
            let v = (rbsp[pos / 8] >> (7 - pos % 8)) & 1;
            pos += 1;
            u32::from(v)
        };
        let read =
            |n: u32, bit: &mut dyn FnMut() -> u32| (0..n).fold(0, |acc, _| (acc << 1) | bit());
        let ue = |bit: &mut dyn FnMut() -> u32| {
            let mut zeros = 0;
            while bit() == 0 {
                zeros += 1;
            }
            let rest = (0..zeros).fold(0, |acc, _| (acc << 1) | bit());
            (1 << zeros) - 1 + rest
        };
        assert_eq!(read(8, &mut bit), u32::from(PROFILE_BASELINE));
        read(16, &mut bit); // constraint flags, level
        assert_eq!(ue(&mut bit), 0, "sps id");
        ue(&mut bit); // log2_max_frame_num_minus4
        assert_eq!(ue(&mut bit), 2, "poc type");
        ue(&mut bit); // max_num_ref_frames
        bit(); // gaps
        let width_mbs = ue(&mut bit) + 1;
        let height_mbs = ue(&mut bit) + 1;
        assert_eq!(bit(), 1, "frame_mbs_only");
        bit(); // direct_8x8_inference
        let (mut left, mut right, mut top, mut bottom) = (0, 0, 0, 0);
        if bit() == 1 {
            left = ue(&mut bit);
            right = ue(&mut bit);
            top = ue(&mut bit);
            bottom = ue(&mut bit);
        }
        (
            width_mbs * 16 - 2 * (left + right),
            height_mbs * 16 - 2 * (top + bottom),
        )
    }

    #[test]
    fn sps_crops_the_macroblock_grid_to_the_exact_size() {
        let sizes = [
            (1470, 630),
            (834, 1112),
            (496, 864),
            (1280, 720),
            (640, 640),
            (2, 2),
            (4096, 4096),
        ];
        for (width, height) in sizes {
            let sps = sps_nal(&VideoLayout::new(&Mp4Params::new(width, height, 1000)));
            assert_eq!(decoded_sps_size(&sps), (width, height));
        }
    }

    #[test]
    fn silent_aac_frame_and_config_have_the_expected_bits() {
        // 3 + 4 + 1 + 2 * 22 + 3 = 55 bits, padded to 7 bytes, ending with ID_END (111).
        let frame = silent_aac_frame();
        assert_eq!(frame.len(), 7);
        assert_eq!(frame[0] >> 5, 1, "ID_CPE");
        assert_eq!(frame[6], 0b1110, "ID_END then alignment zeros");
        assert_eq!(audio_specific_config(), [0x11, 0x90]);
    }

    #[test]
    fn colour_is_in_limited_range_and_varies_with_seed() {
        let colours: Vec<YCbCr> = (0..64).map(|s| colour_for_seed(s).to_ycbcr()).collect();
        for c in &colours {
            assert!((16..=235).contains(&c.y), "{c:?}");
            assert!(
                (16..=240).contains(&c.cb) && (16..=240).contains(&c.cr),
                "{c:?}"
            );
        }
        let distinct: std::collections::HashSet<_> =
            colours.iter().map(|c| (c.y, c.cb, c.cr)).collect();
        assert!(
            distinct.len() > 60,
            "only {} distinct colours",
            distinct.len()
        );
    }

    #[test]
    fn padding_over_4_gib_uses_a_64_bit_free_box_without_allocating_it() {
        let min_size = 5 * (1u64 << 30);
        let params = Mp4Params {
            min_size,
            ..Mp4Params::new(64, 64, 1000)
        };
        let mp4 = match GeneratedMp4::generate(&params) {
            Ok(mp4) => mp4,
            Err(e) => panic!("generate: {e}"),
        };
        assert_eq!(mp4.len(), min_size);
        assert!(mp4.prefix_len() < 64 * 1024);
        let header = &mp4.prefix[mp4.prefix.len() - 16..];
        assert_eq!(&header[..8], &[0, 0, 0, 1, b'f', b'r', b'e', b'e']);
        let largesize = u64::from_be_bytes(header[8..].try_into().unwrap_or_default());
        assert_eq!(largesize, min_size - (mp4.prefix_len() - 16));
        let tail: Vec<Bytes> = mp4.range_chunks(min_size - 10, u64::MAX, 4).collect();
        assert_eq!(
            tail.iter().map(Bytes::len).collect::<Vec<_>>(),
            vec![4, 4, 2]
        );
    }

    #[test]
    fn small_shortfall_still_gets_a_whole_free_box() {
        let plain = GeneratedMp4::generate(&Mp4Params::new(64, 64, 1000)).map(|m| m.len());
        let Ok(plain_len) = plain else {
            panic!("generate failed: {plain:?}")
        };
        for extra in [1u64, 7, 8, 9] {
            let params = Mp4Params {
                min_size: plain_len + extra,
                ..Mp4Params::new(64, 64, 1000)
            };
            let len = GeneratedMp4::generate(&params).map(|m| m.len());
            assert_eq!(len.ok(), Some(plain_len + extra.max(8)), "extra {extra}");
        }
    }

    #[test]
    fn range_chunks_never_exceed_chunk_or_cross_the_prefix_boundary() {
        let params = Mp4Params {
            min_size: 3 * MAX_PADDING_CHUNK as u64,
            ..Mp4Params::new(64, 64, 1000)
        };
        let mp4 = match GeneratedMp4::generate(&params) {
            Ok(mp4) => mp4,
            Err(e) => panic!("generate: {e}"),
        };
        let boundary = mp4.prefix_len();
        for chunk in [0usize, 1, 5, 1000, 4 * MAX_PADDING_CHUNK] {
            let limit = chunk.clamp(1, MAX_PADDING_CHUNK);
            let mut pos = boundary - 3;
            for piece in mp4.range_chunks(boundary - 3, boundary + 2_000_000, chunk) {
                assert!(
                    !piece.is_empty() && piece.len() <= chunk.max(1),
                    "chunk {chunk}"
                );
                if pos >= boundary {
                    assert!(piece.len() <= limit);
                }
                let next = pos + piece.len() as u64;
                assert!(pos >= boundary || next <= boundary, "crossed the boundary");
                pos = next;
            }
            assert_eq!(pos, boundary + 2_000_000);
        }
    }
}
