//! Probing MP4 files: the service checks a downloaded video's duration, size and tracks before
//! handing it out.
//!
//! The movie box (`moov`) is parsed by `mp4parse` (Mozilla's parser, used by Firefox). Around it,
//! this module walks the top-level boxes itself, because `mp4parse::read_mp4` alone would:
//! * read every byte of the file: it skips `mdat` by copying it into a sink (no memory held,
//!   but a 1 GB file means reading 1 GB), and keeps walking boxes after `moov`;
//! * silently accept a truncated file: a skipped box that ends past end of file is not an error
//!   there, yet a cut-off download is exactly what the service must catch.
//!
//! So [`probe_mp4`] reads top-level box headers, skips every box but `moov` (by reading through
//! it for a plain reader, by seeking for [`probe_mp4_file`], so a file's `mdat` is never read),
//! checks that each box fits in the input, and hands `mp4parse` only the `moov` box. Memory is
//! bounded by the `moov` box, which is refused above [`MAX_MOOV_BYTES`].

use std::fs::File;
use std::io::{self, BufReader, Cursor, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use mp4parse::{MediaContext, Track, TrackType};

/// Largest `moov` box accepted, in bytes. A movie box holds the sample tables: about 12 bytes
/// per video frame, so even an hour at 60 fps stays under 3 MB; 64 MiB leaves a wide margin
/// while bounding what a hostile file can make the parser allocate.
pub const MAX_MOOV_BYTES: u64 = 64 * 1024 * 1024;

/// Top-level box types a well-formed MP4 may begin with (ISO/IEC 14496-12 and common
/// extensions). Anything else at offset 0 means the input is some other kind of file, e.g. an
/// HTML or JSON error page saved as `.mp4`.
const LEADING_BOX_TYPES: [&[u8; 4]; 9] = [
    b"ftyp", b"styp", b"moov", b"mdat", b"free", b"skip", b"wide", b"pdin", b"uuid",
];

/// What the probe learnt about a file.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Mp4Facts {
    /// Duration of the video track in seconds.
    pub duration_seconds: f64,
    /// Displayed width in pixels (after a 90/270 degree rotation in the track matrix).
    pub width: u32,
    /// Displayed height in pixels.
    pub height: u32,
    /// Whether there is an audio track.
    pub has_audio: bool,
    /// Whether there is a video track; always true in a successful probe, since a file
    /// without one is reported as [`ProbeError::NoVideoTrack`].
    pub has_video: bool,
}

/// Why a file could not be probed.
#[derive(thiserror::Error, Debug)]
pub enum ProbeError {
    #[error("not an MP4: {0}")]
    NotMp4(String),
    #[error("not an MP4: the parser rejected the movie box: {0}")]
    Parse(#[source] mp4parse::Error),
    #[error(
        "truncated: box `{box_type}` at byte {offset} declares {declared} bytes but only {available} remain"
    )]
    Truncated {
        box_type: String,
        offset: u64,
        declared: u64,
        available: u64,
    },
    #[error("the movie box is {size} bytes, over the limit of {max} bytes")]
    MoovTooLarge { size: u64, max: u64 },
    #[error("no video track")]
    NoVideoTrack,
    #[error("the video track has no duration (neither its media header nor its track header)")]
    UnknownDuration,
    #[error("the video track has no width or height")]
    UnknownSize,
    #[error("reading the MP4 failed: {0}")]
    Io(#[from] io::Error),
    #[error("opening {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Probes an MP4 read from start to end. Every byte is read (boxes other than `moov` are read
/// through in 8 KB steps and dropped), but only the `moov` box is parsed and held.
pub fn probe_mp4<R: Read>(reader: &mut R) -> Result<Mp4Facts, ProbeError> {
    let skip =
        |reader: &mut R, count: u64| io::copy(&mut reader.by_ref().take(count), &mut io::sink());
    probe_boxes(reader, skip)
}

/// Probes an MP4 file. Boxes other than `moov` are skipped by seeking, so a large `mdat` is
/// never read, wherever `moov` is (front or end); memory is bounded by the `moov` box.
pub fn probe_mp4_file(path: &Path) -> Result<Mp4Facts, ProbeError> {
    let open_error = |source| ProbeError::Open {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(open_error)?;
    let file_len = file.metadata().map_err(open_error)?.len();
    probe_mp4_seekable(&mut BufReader::new(file), file_len)
}

/// Probes an MP4 of `len` bytes that can be seeked (a file, or bytes in memory), skipping
/// boxes other than `moov` by seeking: what [`probe_mp4_file`] does once the file is open.
pub fn probe_mp4_seekable<R: Read + Seek>(
    reader: &mut R,
    len: u64,
) -> Result<Mp4Facts, ProbeError> {
    // Seeking past the end of a file succeeds, so the skip clamps to the input's length and
    // reports how far it really got, which is how a truncated box is noticed.
    let skip = |reader: &mut R, count: u64| -> io::Result<u64> {
        let pos = reader.stream_position()?;
        let skipped = count.min(len.saturating_sub(pos));
        reader.seek(SeekFrom::Start(pos + skipped))?;
        Ok(skipped)
    };
    probe_boxes(reader, skip)
}

/// A top-level box header.
struct BoxHeader {
    kind: [u8; 4],
    /// The header's own bytes (8, or 16 with a 64-bit size), replayed to `mp4parse`.
    raw: Vec<u8>,
    /// Payload length, or `None` for a box that extends to the end of the file (size 0).
    payload: Option<u64>,
}

/// Reads a box header; `Ok(None)` at a clean end of input (no byte left).
fn read_box_header<R: Read>(reader: &mut R, offset: u64) -> Result<Option<BoxHeader>, ProbeError> {
    let mut raw = vec![0u8; 8];
    let got = read_fully(reader, &mut raw)?;
    if got == 0 {
        return Ok(None);
    }
    if got < raw.len() {
        return Err(ProbeError::Truncated {
            box_type: "(box header)".to_string(),
            offset,
            declared: 8,
            available: got as u64,
        });
    }
    let kind = [raw[4], raw[5], raw[6], raw[7]];
    // Box types are four printable characters; anything else means we are not reading boxes.
    if !kind.iter().all(|b| (0x20..=0x7E).contains(b)) {
        return Err(ProbeError::NotMp4(format!(
            "bytes {:02x?} at offset {offset} are not a box type",
            kind
        )));
    }
    let size32 = u32::from_be_bytes([raw[0], raw[1], raw[2], raw[3]]);
    let (size, header_len) = match size32 {
        0 => {
            return Ok(Some(BoxHeader {
                kind,
                raw,
                payload: None,
            }));
        }
        1 => {
            let mut large = [0u8; 8];
            let got = read_fully(reader, &mut large)?;
            if got < large.len() {
                return Err(ProbeError::Truncated {
                    box_type: fourcc(&kind),
                    offset,
                    declared: 16,
                    available: 8 + got as u64,
                });
            }
            raw.extend_from_slice(&large);
            (u64::from_be_bytes(large), 16)
        }
        n => (u64::from(n), 8),
    };
    if size < header_len {
        return Err(ProbeError::NotMp4(format!(
            "box `{}` at offset {offset} has an impossible size of {size} bytes",
            fourcc(&kind)
        )));
    }
    Ok(Some(BoxHeader {
        kind,
        raw,
        payload: Some(size - header_len),
    }))
}

/// Like `read_exact`, but reports how many bytes were read before the end of input.
fn read_fully<R: Read>(reader: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

fn fourcc(kind: &[u8; 4]) -> String {
    String::from_utf8_lossy(kind).into_owned()
}

/// Walks the top-level boxes, parsing the first `moov` and skipping the rest with `skip`
/// (which returns how many bytes it could skip before the end of input).
fn probe_boxes<R: Read>(
    reader: &mut R,
    mut skip: impl FnMut(&mut R, u64) -> io::Result<u64>,
) -> Result<Mp4Facts, ProbeError> {
    let mut offset = 0u64;
    let mut context: Option<MediaContext> = None;
    while let Some(header) = read_box_header(reader, offset)? {
        if offset == 0 && !LEADING_BOX_TYPES.contains(&&header.kind) {
            return Err(ProbeError::NotMp4(format!(
                "it starts with a `{}` box, not `ftyp`",
                fourcc(&header.kind)
            )));
        }
        let header_len = header.raw.len() as u64;
        let Some(payload) = header.payload else {
            // Size 0: the box runs to the end of the file; only the last box may do that.
            if context.is_none() && &header.kind == b"moov" {
                return Err(ProbeError::NotMp4(
                    "the movie box has no size (size 0)".to_string(),
                ));
            }
            skip(reader, u64::MAX)?;
            break;
        };
        if &header.kind == b"moov" && context.is_none() {
            if payload > MAX_MOOV_BYTES {
                return Err(ProbeError::MoovTooLarge {
                    size: payload + header_len,
                    max: MAX_MOOV_BYTES,
                });
            }
            context = Some(parse_moov(reader, &header, offset)?);
        } else {
            let skipped = skip(reader, payload)?;
            if skipped < payload {
                return Err(ProbeError::Truncated {
                    box_type: fourcc(&header.kind),
                    offset,
                    declared: payload + header_len,
                    available: skipped + header_len,
                });
            }
        }
        offset = offset.saturating_add(header_len + payload);
    }
    let context = context
        .ok_or_else(|| ProbeError::NotMp4("no movie box (`moov`) in the file".to_string()))?;
    facts_from(&context)
}

/// Parses one `moov` box with `mp4parse`, feeding it the header again and exactly the box's
/// payload, so the parser can neither read past the box nor miss a truncated box.
fn parse_moov<R: Read>(
    reader: &mut R,
    header: &BoxHeader,
    offset: u64,
) -> Result<MediaContext, ProbeError> {
    let payload = header.payload.unwrap_or(0);
    let mut body = reader.take(payload);
    let parsed = {
        let mut boxed = Cursor::new(header.raw.as_slice()).chain(&mut body);
        mp4parse::read_mp4(&mut boxed)
    };
    // A cut-off moov can look like a complete, shorter one to the parser (it stops at the first
    // missing box header), so the bytes left unread are what tells truncation apart.
    if body.limit() > 0 {
        let header_len = header.raw.len() as u64;
        return Err(ProbeError::Truncated {
            box_type: "moov".to_string(),
            offset,
            declared: payload + header_len,
            available: payload - body.limit() + header_len,
        });
    }
    parsed.map_err(|e| match e {
        mp4parse::Error::Io(io) => ProbeError::Io(io),
        other => ProbeError::Parse(other),
    })
}

fn facts_from(context: &MediaContext) -> Result<Mp4Facts, ProbeError> {
    let tracks = context.tracks.as_slice();
    // Prefer an enabled video track; a disabled one (e.g. an alternate) only as a fallback.
    let video = tracks
        .iter()
        .filter(|t| t.track_type == TrackType::Video)
        .min_by_key(|t| t.tkhd.as_ref().is_none_or(|tkhd| tkhd.disabled))
        .ok_or(ProbeError::NoVideoTrack)?;
    let has_audio = tracks.iter().any(|t| t.track_type == TrackType::Audio);
    let (width, height) = displayed_size(video)?;
    Ok(Mp4Facts {
        duration_seconds: track_duration_seconds(video, context)?,
        width,
        height,
        has_audio,
        has_video: true,
    })
}

/// The track's media duration (`mdhd`) in its own timescale; failing that, the track header's
/// duration in the movie timescale (`mp4parse` does not expose the `mvhd` duration itself, and
/// `tkhd` carries the same value per track); failing that, a fragmented file's `mehd` duration.
fn track_duration_seconds(track: &Track, context: &MediaContext) -> Result<f64, ProbeError> {
    let seconds =
        |ticks: u64, scale: u64| (scale > 0 && ticks > 0).then(|| ticks as f64 / scale as f64);
    let from_mdhd = match (&track.duration, &track.timescale) {
        (Some(d), Some(s)) => seconds(d.0, s.0),
        _ => None,
    };
    let movie_scale = context.timescale.map_or(0, |s| s.0);
    let from_tkhd = track
        .tkhd
        .as_ref()
        .and_then(|tkhd| seconds(tkhd.duration, movie_scale));
    let from_mehd = context
        .mvex
        .as_ref()
        .and_then(|mvex| mvex.fragment_duration)
        .and_then(|d| seconds(d.0, movie_scale));
    from_mdhd
        .or(from_tkhd)
        .or(from_mehd)
        .ok_or(ProbeError::UnknownDuration)
}

/// Width and height as displayed: the track header's presentation size (16.16 fixed point),
/// falling back to the sample entry's coded size, swapped when the track matrix rotates by 90
/// or 270 degrees (how phones and some encoders store portrait video).
fn displayed_size(track: &Track) -> Result<(u32, u32), ProbeError> {
    let from_tkhd = track.tkhd.as_ref().and_then(|tkhd| {
        let (w, h) = (tkhd.width >> 16, tkhd.height >> 16);
        (w > 0 && h > 0).then_some((w, h))
    });
    let from_sample_entry = || {
        track.stsd.as_ref().and_then(|stsd| {
            stsd.descriptions.iter().find_map(|entry| match entry {
                mp4parse::SampleEntry::Video(v) if v.width > 0 && v.height > 0 => {
                    Some((u32::from(v.width), u32::from(v.height)))
                }
                _ => None,
            })
        })
    };
    let (width, height) = from_tkhd
        .or_else(from_sample_entry)
        .ok_or(ProbeError::UnknownSize)?;
    let rotated = track.tkhd.as_ref().is_some_and(|tkhd| {
        let m = &tkhd.matrix;
        m.a == 0 && m.d == 0 && m.b != 0 && m.c != 0
    });
    Ok(if rotated {
        (height, width)
    } else {
        (width, height)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::sim::mp4gen::{GeneratedMp4, Mp4Params};

    fn generated(params: &Mp4Params) -> Vec<u8> {
        match GeneratedMp4::generate(params) {
            Ok(mp4) => mp4.to_vec(),
            Err(e) => panic!("generate {params:?}: {e}"),
        }
    }

    /// Offset of the first occurrence of a box type (its type field) in `bytes`.
    fn find(bytes: &[u8], kind: &[u8; 4]) -> usize {
        bytes
            .windows(4)
            .position(|w| w == kind)
            .unwrap_or_else(|| panic!("no {kind:?}"))
    }

    /// Splits a generated file into its top-level boxes.
    fn top_level_boxes(bytes: &[u8]) -> Vec<&[u8]> {
        let mut boxes = Vec::new();
        let mut rest = bytes;
        while !rest.is_empty() {
            let size = u32::from_be_bytes(rest[..4].try_into().unwrap()) as usize;
            boxes.push(&rest[..size]);
            rest = &rest[size..];
        }
        boxes
    }

    struct TempFile(PathBuf);

    impl TempFile {
        fn new(name: &str, contents: &[u8]) -> TempFile {
            let path = std::env::temp_dir()
                .join(format!("vidgate-media-{}-{name}.mp4", std::process::id()));
            std::fs::write(&path, contents).unwrap();
            TempFile(path)
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    #[test]
    fn probe_reads_size_duration_and_tracks_from_a_reader_and_a_file() {
        let cases = [
            // (width, height, duration_ms, audio)
            (1280, 720, 8_000, true),
            (720, 1280, 4_000, false),
            (1470, 630, 5_000, true),
        ];
        for (width, height, duration_ms, audio) in cases {
            let params = Mp4Params {
                audio,
                ..Mp4Params::new(width, height, duration_ms)
            };
            let bytes = generated(&params);
            let file = TempFile::new(&format!("{width}x{height}"), &bytes);
            for facts in [
                probe_mp4(&mut bytes.as_slice()).unwrap(),
                probe_mp4_file(&file.0).unwrap(),
            ] {
                assert_eq!((facts.width, facts.height), (width, height));
                assert!((facts.duration_seconds - f64::from(duration_ms) / 1000.0).abs() < 1e-9);
                assert_eq!(facts.has_audio, audio);
                assert!(facts.has_video);
            }
        }
    }

    #[test]
    fn probe_finds_moov_after_mdat() {
        // Reordering boxes makes the chunk offsets wrong, which the probe does not look at.
        let bytes = generated(&Mp4Params::new(640, 640, 6_000));
        let boxes = top_level_boxes(&bytes);
        assert_eq!(boxes.len(), 3, "ftyp, moov, mdat");
        let reordered = [boxes[0], boxes[2], boxes[1]].concat();
        let file = TempFile::new("moov-last", &reordered);
        let facts = probe_mp4_file(&file.0).unwrap();
        assert_eq!((facts.width, facts.height), (640, 640));
        assert!((facts.duration_seconds - 6.0).abs() < 1e-9);
    }

    #[test]
    fn probe_reports_truncation_anywhere_in_the_file() {
        let bytes = generated(&Mp4Params {
            min_size: 100_000,
            ..Mp4Params::new(1280, 720, 4_000)
        });
        let moov_at = find(&bytes, b"moov") as u64 - 4;
        let cases = [
            ("padding", bytes.len() - 1),
            ("mdat", find(&bytes, b"mdat") + 20),
            ("moov", find(&bytes, b"stsz")),
            ("box header", 3),
        ];
        for (what, cut) in cases {
            let err = probe_mp4(&mut &bytes[..cut]).unwrap_err();
            assert!(matches!(err, ProbeError::Truncated { .. }), "{what}: {err}");
            let file = TempFile::new(&format!("cut-{what}"), &bytes[..cut]);
            let err = probe_mp4_file(&file.0).unwrap_err();
            assert!(
                matches!(err, ProbeError::Truncated { .. }),
                "{what} (file): {err}"
            );
        }
        let moov_cut = probe_mp4(&mut &bytes[..find(&bytes, b"trak")]).unwrap_err();
        assert!(
            matches!(moov_cut, ProbeError::Truncated { offset, .. } if offset == moov_at),
            "{moov_cut}"
        );
    }

    #[test]
    fn probe_rejects_inputs_that_are_not_mp4() {
        let cases: [(&str, &[u8]); 4] = [
            (
                "html",
                b"<!DOCTYPE html><html><body>502 Bad Gateway</body></html>",
            ),
            ("json", b"{\"error\":{\"message\":\"expired\"}}"),
            (
                "binary",
                &[
                    0xFF, 0xD8, 0xFF, 0xE0, 0, 0x10, 0x4A, 0x46, 0x49, 0x46, 0, 1,
                ],
            ),
            (
                "no moov",
                &[
                    0, 0, 0, 16, b'f', b't', b'y', b'p', b'i', b's', b'o', b'm', 0, 0, 2, 0,
                ],
            ),
        ];
        for (what, bytes) in cases {
            let err = probe_mp4(&mut &bytes[..]).unwrap_err();
            assert!(matches!(err, ProbeError::NotMp4(_)), "{what}: {err}");
            assert!(err.to_string().starts_with("not an MP4"), "{what}: {err}");
        }
        let empty = probe_mp4(&mut &[][..]).unwrap_err();
        assert!(matches!(empty, ProbeError::NotMp4(_)), "{empty}");
    }

    #[test]
    fn probe_without_a_video_track_says_so() {
        let mut bytes = generated(&Mp4Params {
            audio: true,
            ..Mp4Params::new(320, 240, 4_000)
        });
        // Relabel the video handler: the track is then of an unknown kind to the parser.
        let at = find(&bytes, b"vide");
        bytes[at..at + 4].copy_from_slice(b"text");
        let err = probe_mp4(&mut bytes.as_slice()).unwrap_err();
        assert!(matches!(err, ProbeError::NoVideoTrack), "{err}");
        assert_eq!(err.to_string(), "no video track");
    }

    #[test]
    fn probe_reports_displayed_size_of_a_rotated_track() {
        let mut bytes = generated(&Mp4Params::new(1280, 720, 4_000));
        // tkhd matrix starts 40 bytes after the type: version/flags, times, id, reserved,
        // duration, reserved (8), layer, alternate group, volume, reserved.
        let matrix_at = find(&bytes, b"tkhd") + 4 + 40;
        let rotate_90: [i32; 9] = [0, 0x1_0000, 0, -0x1_0000, 0, 0, 0, 0, 0x4000_0000];
        for (i, v) in rotate_90.iter().enumerate() {
            bytes[matrix_at + 4 * i..matrix_at + 4 * i + 4].copy_from_slice(&v.to_be_bytes());
        }
        let facts = probe_mp4(&mut bytes.as_slice()).unwrap();
        assert_eq!((facts.width, facts.height), (720, 1280));
    }

    #[test]
    fn probe_refuses_an_oversized_moov_before_reading_it() {
        let mut bytes = vec![0, 0, 0, 1];
        bytes.extend_from_slice(b"moov");
        bytes.extend_from_slice(&(MAX_MOOV_BYTES + 17).to_be_bytes());
        let err = probe_mp4(&mut bytes.as_slice()).unwrap_err();
        assert!(matches!(err, ProbeError::MoovTooLarge { .. }), "{err}");
    }

    #[test]
    fn probe_of_a_missing_file_names_the_path() {
        let path = std::env::temp_dir().join("vidgate-media-does-not-exist.mp4");
        let err = probe_mp4_file(&path).unwrap_err();
        assert!(matches!(err, ProbeError::Open { .. }), "{err}");
        assert!(
            err.to_string().contains("vidgate-media-does-not-exist"),
            "{err}"
        );
    }
}
