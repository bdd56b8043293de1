//! The simulator's generated MP4s, checked through the service's own probe
//! (`vidgate::media::probe_mp4`, backed by `mp4parse`): every size the upstream models produce,
//! every duration, with and without audio, padded bodies served by range, and the last-frame PNG.

use std::io::Cursor;
use std::sync::LazyLock;

use futures::StreamExt;
use proptest::prelude::*;
use vidgate::media::{Mp4Facts, probe_mp4, probe_mp4_file};
use vidgate::upstream::sim::mp4gen::{
    DEFAULT_FPS, GeneratedMp4, MAX_DIMENSION, MAX_DURATION_MS, MAX_FPS, Mp4GenError, Mp4Params,
    last_frame_png,
};

/// Veo (1280x720, 720x1280), the Seedance size table, and 1080p-class sizes including 21:9.
const SIZES: [(u32, u32); 15] = [
    (864, 496),
    (752, 560),
    (640, 640),
    (560, 752),
    (496, 864),
    (992, 432),
    (1280, 720),
    (1112, 834),
    (960, 960),
    (834, 1112),
    (720, 1280),
    (1470, 630),
    (1920, 1080),
    (1080, 1920),
    (2520, 1080),
];

/// Veo (4, 6, 8 s) and Seedance (4, 5, 6, 8 s) durations.
const DURATIONS_MS: [u32; 4] = [4_000, 5_000, 6_000, 8_000];

fn generate(params: &Mp4Params) -> GeneratedMp4 {
    GeneratedMp4::generate(params).unwrap_or_else(|e| panic!("generate {params:?}: {e}"))
}

fn probe_bytes(bytes: &[u8]) -> Mp4Facts {
    probe_mp4(&mut Cursor::new(bytes)).unwrap_or_else(|e| panic!("probe: {e}"))
}

fn collect(mp4: &GeneratedMp4, start: u64, end: u64, chunk: usize) -> Vec<u8> {
    let pieces: Vec<bytes::Bytes> =
        futures::executor::block_on(mp4.range_stream(start, end, chunk).collect());
    for piece in &pieces {
        assert!(
            piece.len() <= chunk.max(1),
            "a piece of {} > {chunk}",
            piece.len()
        );
        assert!(!piece.is_empty(), "empty piece");
    }
    pieces.concat()
}

/// One padded file and its bytes, shared by the property cases.
static PADDED: LazyLock<(GeneratedMp4, Vec<u8>)> = LazyLock::new(|| {
    let mp4 = padded();
    let bytes = mp4.to_vec();
    (mp4, bytes)
});

/// A padded file large enough that the padding spans several chunks.
fn padded() -> GeneratedMp4 {
    generate(&Mp4Params {
        audio: true,
        min_size: 3_000_000,
        seed: 11,
        ..Mp4Params::new(1280, 720, 4_000)
    })
}

#[test]
fn every_upstream_size_and_duration_probes_as_requested() {
    let frame = 1.0 / f64::from(DEFAULT_FPS);
    for (width, height) in SIZES {
        for duration_ms in DURATIONS_MS {
            for audio in [false, true] {
                let params = Mp4Params {
                    audio,
                    seed: u64::from(width * 31 + height + duration_ms),
                    ..Mp4Params::new(width, height, duration_ms)
                };
                let mp4 = generate(&params);
                let bytes = mp4.to_vec();
                assert_eq!(bytes.len() as u64, mp4.len());
                let facts = probe_bytes(&bytes);
                let case = format!("{width}x{height} {duration_ms} ms audio={audio}");
                assert_eq!((facts.width, facts.height), (width, height), "{case}");
                let expected = f64::from(duration_ms) / 1000.0;
                assert!(
                    (facts.duration_seconds - expected).abs() <= frame,
                    "{case}: {} s",
                    facts.duration_seconds
                );
                assert_eq!(facts.has_audio, audio, "{case}");
                assert!(facts.has_video, "{case}");
            }
        }
    }
}

#[test]
fn durations_that_are_not_whole_frames_round_to_the_nearest_frame() {
    let cases = [
        // (duration_ms, fps)
        (4_010, 24),
        (1, 24),
        (3_333, 30),
        (5_000, 25),
        (2_500, 60),
    ];
    for (duration_ms, fps) in cases {
        let params = Mp4Params {
            fps,
            ..Mp4Params::new(640, 640, duration_ms)
        };
        let facts = probe_bytes(&generate(&params).to_vec());
        let frame = 1.0 / f64::from(fps);
        let expected = (f64::from(duration_ms) / 1000.0).max(frame);
        assert!(
            (facts.duration_seconds - expected).abs() <= frame / 2.0 + 1e-9,
            "{duration_ms} ms @ {fps}: {} s",
            facts.duration_seconds
        );
    }
}

#[test]
fn padded_file_reaches_min_size_keeps_a_small_prefix_and_still_probes() {
    let min_size = 5 * 1024 * 1024;
    let mp4 = generate(&Mp4Params {
        audio: true,
        min_size,
        seed: 5,
        ..Mp4Params::new(1920, 1080, 8_000)
    });
    assert_eq!(mp4.len(), min_size);
    assert!(
        mp4.prefix_len() < 128 * 1024,
        "prefix {} bytes",
        mp4.prefix_len()
    );
    let bytes = mp4.to_vec();
    assert_eq!(bytes.len() as u64, min_size);
    // The padding is one trailing `free` box whose header ends the prefix.
    let free_at = (mp4.prefix_len() - 8) as usize;
    let free_size = u32::from_be_bytes(bytes[free_at..free_at + 4].try_into().unwrap());
    assert_eq!(&bytes[free_at + 4..free_at + 8], b"free");
    assert_eq!(u64::from(free_size), min_size - mp4.prefix_len() + 8);
    assert!(bytes[free_at + 8..].iter().all(|b| *b == 0));

    let facts = probe_bytes(&bytes);
    assert_eq!(
        (facts.width, facts.height, facts.has_audio),
        (1920, 1080, true)
    );
    assert!((facts.duration_seconds - 8.0).abs() < 1e-9);

    let path = std::env::temp_dir().join(format!("vidgate-sim-mp4-{}.mp4", std::process::id()));
    std::fs::write(&path, &bytes).unwrap();
    let from_file = probe_mp4_file(&path);
    let _ = std::fs::remove_file(&path);
    assert_eq!(from_file.unwrap(), facts);
}

#[test]
fn range_stream_pieces_concatenate_to_the_same_bytes_as_to_vec() {
    let mp4 = padded();
    let whole = mp4.to_vec();
    let len = mp4.len();
    let boundary = mp4.prefix_len();
    let cases = [
        // (start, end, chunk)
        (0, len, 64 * 1024),
        (0, len, 1 << 22),
        (0, 1, 1),
        (0, boundary, 7),
        (boundary - 1, boundary + 1, 1),
        (boundary - 100, boundary + 100, 33),
        (boundary - 5_000, boundary + 2_000_000, 4096),
        (boundary, boundary + 10, 3),
        (boundary + 17, len, 1 << 20),
        (len - 3, len, 2),
        (12_345, 12_345, 10),
    ];
    for (start, end, chunk) in cases {
        let got = collect(&mp4, start, end, chunk);
        assert!(
            got == whole[start as usize..end as usize],
            "range {start}..{end} by {chunk}"
        );
    }
}

#[test]
fn range_stream_clamps_ranges_outside_the_file() {
    let mp4 = padded();
    let whole = mp4.to_vec();
    let len = mp4.len();
    let cases = [
        // (start, end, expected)
        (len - 4, len + 1_000, &whole[whole.len() - 4..]),
        (len, len + 10, &[][..]),
        (len + 10, u64::MAX, &[][..]),
        (500, 100, &[][..]),
        (0, 10, &whole[..10]),
    ];
    for (start, end, expected) in cases {
        assert_eq!(collect(&mp4, start, end, 4096), expected, "{start}..{end}");
    }
    // A chunk size of 0 is served as 1-byte pieces rather than looping forever.
    assert_eq!(collect(&mp4, 0, 5, 0), &whole[..5]);
}

#[tokio::test]
async fn range_stream_outlives_its_file_and_runs_on_another_task() {
    let mp4 = padded();
    let expected = mp4.to_vec();
    let stream = mp4.range_stream(0, mp4.len(), 65_536);
    drop(mp4);
    let got = tokio::spawn(async move { stream.collect::<Vec<_>>().await.concat() })
        .await
        .unwrap();
    assert!(got == expected);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    // Tiny chunks are covered by the table above; here they would only make the case slow.
    #[test]
    fn any_range_by_any_chunk_matches_to_vec(
        a in 0u64..3_100_000,
        b in 0u64..3_100_000,
        chunk in 512usize..300_000,
    ) {
        let (mp4, whole) = &*PADDED;
        let (start, end) = (a.min(b), a.max(b));
        let got = collect(mp4, start, end, chunk);
        let end_in_file = end.min(mp4.len()) as usize;
        let start_in_file = (start as usize).min(end_in_file);
        prop_assert!(got == whole[start_in_file..end_in_file]);
    }
}

/// Whether an error is the one a case expects.
type ExpectedError = fn(&Mp4GenError) -> bool;

#[test]
fn invalid_params_are_refused_with_the_cause() {
    let ok = Mp4Params::new(1280, 720, 4_000);
    let cases: Vec<(&str, Mp4Params, ExpectedError)> = vec![
        ("zero width", Mp4Params { width: 0, ..ok }, |e| {
            matches!(e, Mp4GenError::ZeroDimension { width: 0, .. })
        }),
        ("zero height", Mp4Params { height: 0, ..ok }, |e| {
            matches!(e, Mp4GenError::ZeroDimension { height: 0, .. })
        }),
        ("odd width", Mp4Params { width: 1279, ..ok }, |e| {
            matches!(e, Mp4GenError::OddDimension { width: 1279, .. })
        }),
        ("odd height", Mp4Params { height: 631, ..ok }, |e| {
            matches!(e, Mp4GenError::OddDimension { height: 631, .. })
        }),
        (
            "too wide",
            Mp4Params {
                width: MAX_DIMENSION + 2,
                ..ok
            },
            |e| matches!(e, Mp4GenError::DimensionTooLarge { .. }),
        ),
        (
            "too tall",
            Mp4Params {
                height: MAX_DIMENSION + 2,
                ..ok
            },
            |e| matches!(e, Mp4GenError::DimensionTooLarge { .. }),
        ),
        (
            "zero duration",
            Mp4Params {
                duration_ms: 0,
                ..ok
            },
            |e| matches!(e, Mp4GenError::ZeroDuration),
        ),
        (
            "too long",
            Mp4Params {
                duration_ms: MAX_DURATION_MS + 1,
                ..ok
            },
            |e| matches!(e, Mp4GenError::DurationTooLong { .. }),
        ),
        ("zero fps", Mp4Params { fps: 0, ..ok }, |e| {
            matches!(e, Mp4GenError::ZeroFps)
        }),
        (
            "fps too high",
            Mp4Params {
                fps: MAX_FPS + 1,
                ..ok
            },
            |e| matches!(e, Mp4GenError::FpsTooHigh { .. }),
        ),
    ];
    for (what, params, is_expected) in cases {
        match GeneratedMp4::generate(&params) {
            Ok(_) => panic!("{what}: generated"),
            Err(e) => assert!(is_expected(&e), "{what}: {e}"),
        }
    }
    // The limits themselves are accepted.
    let at_limits = Mp4Params {
        fps: MAX_FPS,
        ..Mp4Params::new(MAX_DIMENSION, 2, MAX_DURATION_MS)
    };
    assert!(GeneratedMp4::generate(&at_limits).is_ok());
}

#[test]
fn different_seeds_give_different_bytes_and_the_same_seed_the_same_bytes() {
    let with_seed = |seed| {
        generate(&Mp4Params {
            seed,
            audio: true,
            ..Mp4Params::new(864, 496, 5_000)
        })
        .to_vec()
    };
    let seeds = [0u64, 1, 2, 3, u64::MAX, 0xDEAD_BEEF];
    let files: Vec<Vec<u8>> = seeds.iter().map(|s| with_seed(*s)).collect();
    for (i, a) in files.iter().enumerate() {
        for (j, b) in files.iter().enumerate().skip(i + 1) {
            assert_ne!(a, b, "seeds {} and {}", seeds[i], seeds[j]);
        }
    }
    assert_eq!(with_seed(42), with_seed(42));
}

fn decode_png(bytes: &[u8]) -> (u32, u32, Vec<u8>) {
    let decoder = png::Decoder::new(Cursor::new(bytes));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!(info.color_type, png::ColorType::Rgb);
    buf.truncate(info.buffer_size());
    (info.width, info.height, buf)
}

#[test]
fn last_frame_png_decodes_to_the_requested_size_in_one_flat_colour() {
    for (width, height) in [(1280, 720), (720, 1280), (1470, 630), (834, 1112), (2, 2)] {
        let png = last_frame_png(width, height, 7).unwrap();
        let (w, h, pixels) = decode_png(&png);
        assert_eq!((w, h), (width, height));
        assert_eq!(pixels.len(), (width * height * 3) as usize);
        let first = &pixels[..3];
        assert!(
            pixels.chunks(3).all(|p| p == first),
            "{width}x{height} not flat"
        );
    }
    let colour = |seed| decode_png(&last_frame_png(64, 64, seed).unwrap()).2[..3].to_vec();
    assert_ne!(colour(1), colour(2));
}

#[test]
fn last_frame_png_refuses_the_sizes_the_video_refuses() {
    let cases = [(0, 720), (1280, 0), (1281, 720), (MAX_DIMENSION + 2, 720)];
    for (width, height) in cases {
        assert!(
            last_frame_png(width, height, 0).is_err(),
            "{width}x{height} accepted"
        );
    }
}
