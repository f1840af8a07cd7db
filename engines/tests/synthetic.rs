//! The synthetic engine's outputs (PROTOCOL.md §9.3).

use sha2::{Digest, Sha256};
use studio_core::wire::{
    AudioSttTask, AudioTtsTask, ChatMessage, ImageTask, LlmTask, ModelEngine, ModelSource, Task,
    TaskKind, VideoTask,
};
use studio_engines::{
    synthetic, Engine, EngineErrorKind, EngineOutput, JobRequest, SyntheticEngine,
};

fn job(model: &str, task: Task) -> JobRequest {
    JobRequest::new("job-1", model, task, ModelSource::synthetic())
}

fn run(model: &str, task: Task) -> EngineOutput {
    SyntheticEngine::new()
        .dispatch(&job(model, task))
        .expect("synthetic dispatch")
}

fn binary(out: EngineOutput) -> (Vec<u8>, String) {
    match out {
        EngineOutput::Binary { bytes, ext } => (bytes, ext),
        EngineOutput::Json(v) => panic!("expected binary, got {v}"),
    }
}

fn json(out: EngineOutput) -> serde_json::Value {
    match out {
        EngineOutput::Json(v) => v,
        EngineOutput::Binary { ext, .. } => panic!("expected JSON, got .{ext} bytes"),
    }
}

fn hex16(data: &str) -> String {
    Sha256::digest(data.as_bytes())[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn image_task(prompt: &str, ext: Option<&str>, size: Option<u32>) -> Task {
    Task::Image(ImageTask {
        prompt: prompt.into(),
        ext: ext.map(String::from),
        width: size,
        height: size,
        ..ImageTask::default()
    })
}

fn decode(bytes: &[u8], format: image::ImageFormat) -> image::DynamicImage {
    assert_eq!(image::guess_format(bytes).unwrap(), format);
    image::load_from_memory_with_format(bytes, format).expect("decodes")
}

// ---------------------------------------------------------------------------------------
// Capabilities
// ---------------------------------------------------------------------------------------

#[test]
fn advertises_exactly_the_protocol_lists() {
    let caps = SyntheticEngine::new().capabilities();
    let expected = [
        (TaskKind::Image, ["synthetic", "synthetic-image"]),
        (TaskKind::Llm, ["synthetic", "synthetic-llm"]),
        (TaskKind::AudioStt, ["synthetic", "synthetic-stt"]),
        (TaskKind::AudioTts, ["synthetic", "synthetic-tts"]),
        (TaskKind::Video, ["synthetic", "synthetic-video"]),
    ];
    assert_eq!(caps.len(), expected.len());
    for (kind, models) in expected {
        assert_eq!(caps[&kind], models.map(String::from).to_vec(), "{kind}");
    }
    let engine = SyntheticEngine::new();
    assert_eq!(engine.name(), "synthetic");
    assert_eq!(engine.serves(), vec![ModelEngine::Synthetic]);
    assert_eq!(engine.kinds(), TaskKind::ALL.to_vec());
    assert_eq!(
        engine.flat_models(),
        [
            "synthetic",
            "synthetic-image",
            "synthetic-llm",
            "synthetic-stt",
            "synthetic-tts",
            "synthetic-video"
        ]
    );
}

#[test]
fn never_advertises_the_wildcard() {
    for engine in [
        SyntheticEngine::new(),
        SyntheticEngine::with_kinds(&[TaskKind::Image]),
        SyntheticEngine::with_kinds(&[]),
    ] {
        for (kind, models) in engine.capabilities() {
            assert!(!models.iter().any(|m| m == "*"), "{kind} advertises *");
        }
        for kind in TaskKind::ALL {
            assert!(!engine.supports(kind, "*"));
        }
    }
}

#[test]
fn restricted_kinds_give_the_typed_unsupported_kind_error() {
    let engine = SyntheticEngine::with_kinds(&[TaskKind::Image]);
    assert_eq!(engine.kinds(), vec![TaskKind::Image]);
    let llm = Task::Llm(LlmTask::default());
    let err = engine.dispatch(&job("synthetic", llm)).unwrap_err();
    assert_eq!(err.kind, EngineErrorKind::UnsupportedKind);
    assert_eq!(err.message, "synthetic engine cannot serve llm tasks");
    assert_eq!(err.to_string(), "synthetic engine cannot serve llm tasks");
    assert!(!err.retryable());
    let stt = Task::AudioStt(AudioSttTask::default());
    let err = engine.dispatch(&job("synthetic", stt)).unwrap_err();
    assert_eq!(err.message, "synthetic engine cannot serve audio_stt tasks");
}

#[test]
fn unadvertised_models_are_refused() {
    let err = SyntheticEngine::new()
        .dispatch(&job("flux1-dev", image_task("x", None, None)))
        .unwrap_err();
    assert_eq!(err.kind, EngineErrorKind::UnsupportedModel);
    assert!(!err.retryable());
    assert!(err.message.contains("flux1-dev"), "{}", err.message);
    // A model of another kind is not served either.
    let err = SyntheticEngine::new()
        .dispatch(&job("synthetic-llm", image_task("x", None, None)))
        .unwrap_err();
    assert_eq!(err.kind, EngineErrorKind::UnsupportedModel);
    assert!(!SyntheticEngine::new().supports(TaskKind::Image, "synthetic-llm"));
    assert!(SyntheticEngine::new().supports(TaskKind::Image, "synthetic-image"));
}

#[test]
fn refuses_jobs_for_other_model_sources() {
    let mut request = job("synthetic", image_task("x", None, None));
    request.source.engine = ModelEngine::SdCpp;
    let err = SyntheticEngine::new().dispatch(&request).unwrap_err();
    assert_eq!(err.kind, EngineErrorKind::SourceMismatch);
    assert!(!err.retryable());
    assert!(err.message.contains("sd-cpp"), "{}", err.message);
}

#[test]
fn json_kinds_give_json_and_binary_kinds_give_bytes() {
    let tasks = [
        ("synthetic", image_task("p", None, None)),
        ("synthetic", Task::Llm(LlmTask::default())),
        ("synthetic", Task::AudioStt(AudioSttTask::default())),
        ("synthetic", Task::AudioTts(AudioTtsTask::default())),
        ("synthetic", Task::Video(VideoTask::default())),
    ];
    for (model, task) in tasks {
        let kind = task.kind();
        let out = run(model, task);
        assert_eq!(out.is_binary(), kind.is_binary(), "{kind}");
        assert_eq!(out.as_binary().is_some(), kind.is_binary(), "{kind}");
        assert_eq!(out.as_json().is_some(), !kind.is_binary(), "{kind}");
    }
}

// ---------------------------------------------------------------------------------------
// Image and video
// ---------------------------------------------------------------------------------------

#[test]
fn image_webp_is_a_decodable_512_square_whatever_the_requested_size() {
    let (bytes, ext) = binary(run(
        "synthetic-image",
        image_task("an aurora fox at dusk", Some("webp"), Some(1024)),
    ));
    assert_eq!(ext, "webp");
    assert_eq!(&bytes[..4], b"RIFF");
    assert_eq!(&bytes[8..12], b"WEBP");
    let img = decode(&bytes, image::ImageFormat::WebP);
    assert_eq!((img.width(), img.height()), (512, 512));
    // Lossless: the decoded pixels are the renderer's pixels.
    assert_eq!(
        img.to_rgb8().into_raw(),
        synthetic::render_rgb("an aurora fox at dusk")
    );
}

#[test]
fn image_default_ext_is_webp() {
    let (bytes, ext) = binary(run("synthetic", image_task("default", None, None)));
    assert_eq!(ext, "webp");
    assert_eq!(bytes, synthetic::render_webp("default"));
}

#[test]
fn image_other_ext_is_png_bytes_with_the_ext_echoed() {
    for requested in ["png", "jpg"] {
        let (bytes, ext) = binary(run(
            "synthetic-image",
            image_task("a fox", Some(requested), Some(64)),
        ));
        assert_eq!(ext, requested);
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
        let img = decode(&bytes, image::ImageFormat::Png);
        assert_eq!((img.width(), img.height()), (512, 512));
        assert_eq!(img.to_rgb8().into_raw(), synthetic::render_rgb("a fox"));
    }
}

#[test]
fn image_is_deterministic_and_keyed_by_prompt_only() {
    let a1 = binary(run("synthetic", image_task("same prompt", None, None))).0;
    let a2 = SyntheticEngine::new()
        .dispatch(&JobRequest::new(
            "another-job",
            "synthetic-image",
            Task::Image(ImageTask {
                prompt: "same prompt".into(),
                seed: Some(42),
                steps: Some(3),
                negative_prompt: Some("blurry".into()),
                ..ImageTask::default()
            }),
            ModelSource::synthetic(),
        ))
        .unwrap();
    assert_eq!(a1, binary(a2).0);
    let b = binary(run("synthetic", image_task("other prompt", None, None))).0;
    assert_ne!(a1, b);
    assert_ne!(
        synthetic::render_png("same prompt"),
        synthetic::render_png("other prompt")
    );
    assert_eq!(
        synthetic::render_png("same prompt"),
        synthetic::render_png("same prompt")
    );
}

fn video_task(prompt: &str, seconds: Option<f32>, fps: Option<u32>) -> Task {
    Task::Video(VideoTask {
        prompt: prompt.into(),
        ext: Some("mp4".into()),
        seconds,
        fps,
        ..VideoTask::default()
    })
}

/// Decodes a GIF: its size, loop setting and every frame's delay and RGBA pixels.
struct DecodedGif {
    size: (u16, u16),
    repeat: gif::Repeat,
    delays: Vec<u16>,
    frames: Vec<Vec<u8>>,
}

fn decode_gif(bytes: &[u8]) -> DecodedGif {
    assert_eq!(&bytes[..6], b"GIF89a", "not a GIF89a file");
    let mut options = gif::DecodeOptions::new();
    options.set_color_output(gif::ColorOutput::RGBA);
    let mut decoder = options.read_info(bytes).expect("a GIF header");
    let size = (decoder.width(), decoder.height());
    let (mut delays, mut frames) = (Vec::new(), Vec::new());
    while let Some(frame) = decoder.read_next_frame().expect("a decodable frame") {
        assert_eq!((frame.width, frame.height), size, "every frame is whole");
        delays.push(frame.delay);
        frames.push(frame.buffer.to_vec());
    }
    DecodedGif {
        size,
        repeat: decoder.repeat(),
        delays,
        frames,
    }
}

fn rgba(rgb: &[u8]) -> Vec<u8> {
    rgb.chunks_exact(3)
        .flat_map(|p| [p[0], p[1], p[2], 255])
        .collect()
}

#[test]
fn video_is_an_animated_gif_of_seconds_times_fps_frames() {
    let (bytes, ext) = binary(run(
        "synthetic-video",
        video_task("a rolling wave", Some(1.5), Some(10)),
    ));
    // The bytes are a GIF, and are reported as one whatever `ext` asked for.
    assert_eq!(ext, "gif");
    let gif = decode_gif(&bytes);
    assert_eq!(gif.size, (512, 512));
    assert_eq!(gif.frames.len(), 15, "1.5 s x 10 fps");
    assert_eq!(gif.delays, vec![10; 15], "1/10 s per frame");
    assert_eq!(gif.repeat, gif::Repeat::Infinite);
    // Frame 0 is the still image; the pattern moves from frame to frame.
    assert_eq!(
        gif.frames[0],
        rgba(&synthetic::render_rgb("a rolling wave"))
    );
    for pair in gif.frames.windows(2) {
        assert_ne!(pair[0], pair[1], "consecutive frames are identical");
    }
    // Deterministic: the same task gives the same bytes.
    let (again, _) = binary(run(
        "synthetic",
        video_task("a rolling wave", Some(1.5), Some(10)),
    ));
    assert_eq!(bytes, again);
}

#[test]
fn video_defaults_are_two_seconds_at_the_default_fps() {
    let (bytes, ext) = binary(run(
        "synthetic",
        Task::Video(VideoTask {
            prompt: "defaults".into(),
            ..VideoTask::default()
        }),
    ));
    assert_eq!(ext, "gif");
    let gif = decode_gif(&bytes);
    assert_eq!(
        gif.frames.len() as u32,
        2 * synthetic::VIDEO_DEFAULT_FPS,
        "2 s at the default fps"
    );
    let task = VideoTask::default();
    assert_eq!(
        synthetic::video_frames(&task).unwrap(),
        (
            2 * synthetic::VIDEO_DEFAULT_FPS,
            synthetic::VIDEO_DEFAULT_FPS
        )
    );
}

#[test]
fn video_frames_are_capped() {
    let frames = |seconds: f32, fps: Option<u32>| {
        let Task::Video(t) = video_task("x", Some(seconds), fps) else {
            unreachable!()
        };
        synthetic::video_frames(&t)
    };
    // A frame rate above the cap is lowered to it.
    assert_eq!(
        frames(1.0, Some(1000)).unwrap(),
        (synthetic::VIDEO_MAX_FPS, synthetic::VIDEO_MAX_FPS)
    );
    // seconds x fps above the frame cap is cut to it.
    assert_eq!(
        frames(3600.0, Some(24)).unwrap(),
        (synthetic::VIDEO_MAX_FRAMES, 24)
    );
    // A clip shorter than one frame still has one.
    assert_eq!(frames(0.01, Some(8)).unwrap(), (1, 8));
    // Rounded to the nearest whole frame.
    assert_eq!(frames(1.3, Some(10)).unwrap(), (13, 10));
    // The cap holds for the encoded file too.
    let (bytes, _) = binary(run("synthetic", video_task("long", Some(3600.0), Some(30))));
    assert_eq!(
        decode_gif(&bytes).frames.len() as u32,
        synthetic::VIDEO_MAX_FRAMES
    );
}

#[test]
fn video_with_no_duration_or_no_frame_rate_is_invalid_input() {
    for (seconds, fps, needle) in [
        (0.0, Some(8), "seconds"),
        (-2.0, Some(8), "seconds"),
        (2.0, Some(0), "fps"),
    ] {
        let err = SyntheticEngine::new()
            .dispatch(&job("synthetic", video_task("x", Some(seconds), fps)))
            .unwrap_err();
        assert_eq!(
            err.kind,
            EngineErrorKind::InvalidInput,
            "{seconds} s, {fps:?}"
        );
        assert!(!err.retryable());
        assert!(err.message.contains(needle), "{}", err.message);
    }
}

// ---------------------------------------------------------------------------------------
// LLM and STT
// ---------------------------------------------------------------------------------------

fn msg(role: &str, content: &str) -> ChatMessage {
    ChatMessage {
        role: role.into(),
        content: content.into(),
    }
}

#[test]
fn llm_result_has_the_exact_shape_key_order_and_counts() {
    let task = LlmTask {
        messages: vec![
            msg("system", "be brief"),
            msg("user", "name three  foxes\nplease"),
        ],
        ..LlmTask::default()
    };
    let prompt = "system: be brief\nuser: name three  foxes\nplease";
    assert_eq!(synthetic::llm_prompt(&task), prompt);
    // "system:" "be" "brief" "user:" "name" "three" "foxes" "please"
    let words = 8;
    let value = json(run("synthetic-llm", Task::Llm(task)));
    let expected = format!(
        concat!(
            r#"{{"object":"chat.completion","model":"synthetic-llm","choices":[{{"index":0,"#,
            r#""message":{{"role":"assistant","content":"[synthetic] reply to prompt #{}"}},"#,
            r#""finish_reason":"stop"}}],"usage":{{"prompt_tokens":{},"completion_tokens":8,"#,
            r#""total_tokens":{}}}}}"#
        ),
        hex16(prompt),
        words,
        words + 8
    );
    assert_eq!(serde_json::to_string(&value).unwrap(), expected);
}

#[test]
fn llm_model_field_and_hash_do_not_depend_on_the_requested_model() {
    let task = Task::Llm(LlmTask {
        messages: vec![msg("user", "hi")],
        ..LlmTask::default()
    });
    let a = json(run("synthetic", task.clone()));
    let b = json(run("synthetic-llm", task));
    assert_eq!(a, b);
    assert_eq!(a["model"], "synthetic-llm");
    assert_eq!(
        a["choices"][0]["message"]["content"],
        format!("[synthetic] reply to prompt #{}", hex16("user: hi"))
    );
    assert_eq!(a["usage"]["prompt_tokens"], 2);
    assert_eq!(a["usage"]["total_tokens"], 10);
}

#[test]
fn llm_with_no_messages_hashes_the_empty_prompt() {
    let value = json(run("synthetic", Task::Llm(LlmTask::default())));
    assert_eq!(
        value["choices"][0]["message"]["content"],
        format!("[synthetic] reply to prompt #{}", hex16(""))
    );
    assert_eq!(value["usage"]["prompt_tokens"], 0);
    assert_eq!(value["usage"]["completion_tokens"], 8);
    assert_eq!(value["usage"]["total_tokens"], 8);
}

#[test]
fn stt_result_has_the_exact_shape() {
    let url = "https://x/a.wav";
    let value = json(run(
        "synthetic-stt",
        Task::AudioStt(AudioSttTask {
            input_url: url.into(),
            ..AudioSttTask::default()
        }),
    ));
    assert_eq!(
        serde_json::to_string(&value).unwrap(),
        format!(
            r#"{{"text":"[synthetic] transcript of {}","language":"en","duration":1.0}}"#,
            hex16(url)
        )
    );
    let value = json(run(
        "synthetic",
        Task::AudioStt(AudioSttTask {
            input_url: url.into(),
            language: Some("de".into()),
            translate: Some(true),
            ..AudioSttTask::default()
        }),
    ));
    assert_eq!(value["language"], "de");
    assert_eq!(
        value["text"],
        format!("[synthetic] transcript of {}", hex16(url))
    );
}

// ---------------------------------------------------------------------------------------
// TTS
// ---------------------------------------------------------------------------------------

fn u16_at(b: &[u8], i: usize) -> u16 {
    u16::from_le_bytes([b[i], b[i + 1]])
}

fn u32_at(b: &[u8], i: usize) -> u32 {
    u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}

fn tts(text: &str) -> (Vec<u8>, String) {
    binary(run(
        "synthetic-tts",
        Task::AudioTts(AudioTtsTask {
            text: text.into(),
            ext: Some("mp3".into()),
            ..AudioTtsTask::default()
        }),
    ))
}

#[test]
fn tts_wav_header_and_sample_count() {
    let (wav, ext) = tts("hello there");
    assert_eq!(ext, "wav");
    assert_eq!(wav.len(), 44 + 22_050 * 2);
    assert_eq!(&wav[0..4], b"RIFF");
    assert_eq!(u32_at(&wav, 4) as usize, wav.len() - 8);
    assert_eq!(&wav[8..12], b"WAVE");
    assert_eq!(&wav[12..16], b"fmt ");
    assert_eq!(u32_at(&wav, 16), 16);
    assert_eq!(u16_at(&wav, 20), 1, "PCM");
    assert_eq!(u16_at(&wav, 22), 1, "mono");
    assert_eq!(u32_at(&wav, 24), 22_050, "sample rate");
    assert_eq!(u32_at(&wav, 28), 44_100, "byte rate");
    assert_eq!(u16_at(&wav, 32), 2, "block align");
    assert_eq!(u16_at(&wav, 34), 16, "bits per sample");
    assert_eq!(&wav[36..40], b"data");
    assert_eq!(u32_at(&wav, 40), 22_050 * 2);
}

fn samples(wav: &[u8]) -> Vec<i16> {
    wav[44..]
        .chunks_exact(2)
        .map(|c| i16::from_le_bytes([c[0], c[1]]))
        .collect()
}

#[test]
fn tts_tone_frequency_and_amplitude() {
    for text in ["hello there", "a", "the quick brown fox", ""] {
        let digest0 = Sha256::digest(text.as_bytes())[0];
        let freq = 220.0 + f64::from(digest0) * 660.0 / 255.0;
        assert!((synthetic::tts_frequency(text) - freq).abs() < 1e-9);

        let s = samples(&tts(text).0);
        assert_eq!(s.len(), 22_050);
        assert_eq!(s[0], 0, "a sine starts at zero");
        // Zero crossings: two per period, one second of audio.
        let crossings = s.windows(2).filter(|w| (w[0] < 0) != (w[1] < 0)).count() as f64;
        let measured = crossings / 2.0;
        assert!(
            (measured - freq).abs() <= 2.0,
            "{text:?}: measured {measured} Hz, expected {freq} Hz"
        );
        let peak = s.iter().map(|v| i32::from(*v).abs()).max().unwrap();
        let full = f64::from(i16::MAX);
        assert!(
            (f64::from(peak) / full - 0.4).abs() < 0.005,
            "{text:?}: peak {peak}"
        );
    }
}

#[test]
fn tts_is_deterministic_and_keyed_by_text() {
    assert_eq!(tts("same").0, tts("same").0);
    assert_eq!(tts("same").0, synthetic::render_wav("same"));
    // Texts whose digests differ in byte 0 give different tones.
    let a = "hello there";
    let b = (0..100)
        .map(|i| format!("text {i}"))
        .find(|t| Sha256::digest(t.as_bytes())[0] != Sha256::digest(a.as_bytes())[0])
        .unwrap();
    assert_ne!(tts(a).0, tts(&b).0);
}

#[test]
fn with_delay_takes_at_least_the_delay_and_keeps_outputs() {
    use studio_engines::{Engine, JobRequest, SyntheticEngine};
    let task: studio_core::wire::Task =
        serde_json::from_str(r#"{"kind":"audio_tts","text":"slow"}"#).unwrap();
    let job = JobRequest::new(
        "j",
        "synthetic",
        task,
        studio_core::wire::ModelSource::synthetic(),
    );
    let fast = SyntheticEngine::new().dispatch(&job).unwrap();
    let t = std::time::Instant::now();
    let slow = SyntheticEngine::new()
        .with_delay(std::time::Duration::from_millis(50))
        .dispatch(&job)
        .unwrap();
    assert!(t.elapsed() >= std::time::Duration::from_millis(50));
    assert_eq!(fast, slow);
}
