//! The candle Stable Diffusion engine (feature `image-candle`), end to end on tiny random
//! weights.
//!
//! No small real Stable Diffusion checkpoint exists in the package registries, so the test
//! builds one: tiny diffusers-style configs (a two-block UNet of 32/64 channels, a
//! four-block VAE of 8–16 channels, a two-layer CLIP text encoder of width 32 over a
//! 64-word vocabulary), every variable randomly initialised through a candle-nn `VarMap`,
//! saved as safetensors beside the JSON configs and a word-level `tokenizer.json`. The
//! images are noise, but every stage of the real pipeline runs: tokenizer, CLIP, UNet with
//! classifier-free guidance, the samplers, VAE decoding and WebP / PNG encoding, through
//! `Engine::dispatch` with the files fetched and verified from a loopback server.
//!
//! ```text
//! cargo test -p studio-engines --features image-candle --test diffusion
//! ```
#![cfg(feature = "image-candle")]

mod support;
use support::serve_files;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

use candle_core::{DType, Device};
use candle_nn::{VarBuilder, VarMap};
use candle_transformers::models::clip::text_model::ClipTextTransformer;
use candle_transformers::models::stable_diffusion::unet_2d::UNet2DConditionModel;
use candle_transformers::models::stable_diffusion::vae::AutoEncoderKL;
use serde_json::{json, Value};
use studio_core::wire::{AudioTtsTask, CliDefaults, ImageTask, ModelEngine, ModelSource, Task};
use studio_engines::diffusion::{
    self, config, CandleImageEngine, ModelPaths, Sampler, GENERIC_MODEL_ID, NAME, SOURCE_ENGINE,
};
use studio_engines::{
    Engine, EngineErrorKind, EngineOutput, EngineSettings, JobRequest, ModelStore, Router,
};

// ------------------------------------------------------------------------------------------
// The tiny model
// ------------------------------------------------------------------------------------------

fn temp_dir(name: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "studio-diffusion-test-{}-{}-{name}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn unet_config() -> Value {
    json!({
        "_class_name": "UNet2DConditionModel",
        "act_fn": "silu",
        "attention_head_dim": 2,
        "block_out_channels": [32, 64],
        "center_input_sample": false,
        "cross_attention_dim": 32,
        "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
        "downsample_padding": 1,
        "flip_sin_to_cos": true,
        "freq_shift": 0,
        "in_channels": 4,
        "out_channels": 4,
        "layers_per_block": 1,
        "mid_block_scale_factor": 1,
        "norm_eps": 1e-05,
        "norm_num_groups": 8,
        "sample_size": 8
    })
}

fn vae_config() -> Value {
    json!({
        "_class_name": "AutoencoderKL",
        "act_fn": "silu",
        "block_out_channels": [8, 16, 16, 16],
        "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D",
                             "DownEncoderBlock2D", "DownEncoderBlock2D"],
        "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D",
                           "UpDecoderBlock2D", "UpDecoderBlock2D"],
        "in_channels": 3,
        "out_channels": 3,
        "latent_channels": 4,
        "layers_per_block": 1,
        "norm_num_groups": 4,
        "sample_size": 64,
        "scaling_factor": 0.18215
    })
}

fn text_config() -> Value {
    json!({
        "architectures": ["CLIPTextModel"],
        "hidden_act": "quick_gelu",
        "hidden_size": 32,
        "intermediate_size": 64,
        "max_position_embeddings": 16,
        "num_attention_heads": 4,
        "num_hidden_layers": 2,
        "projection_dim": 32,
        "vocab_size": 100
    })
}

fn scheduler_config() -> Value {
    json!({
        "_class_name": "DDIMScheduler",
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "beta_start": 0.00085,
        "num_train_timesteps": 1000,
        "prediction_type": "epsilon",
        "steps_offset": 1,
        "timestep_spacing": "leading"
    })
}

const WORDS: &str = "a an the cat dog fox bird fish horse robot castle tree house car boat \
    red blue green yellow black white orange purple small big tiny huge old new happy sad \
    on in under over with near and of at by sky sea river mountain forest city street night \
    day sun moon star cloud rain snow fire ice stone glass gold silver painting photo";

/// A word-level CLIP-like tokenizer: `<|startoftext|>` 0, `<|endoftext|>` 1, `<unk>` 2,
/// then the words; lower-cased, split on whitespace and punctuation.
fn tokenizer_json() -> Value {
    let mut vocab = serde_json::Map::new();
    for (i, token) in ["<|startoftext|>", "<|endoftext|>", "<unk>"]
        .into_iter()
        .chain(WORDS.split_whitespace())
        .enumerate()
    {
        vocab.insert(token.to_string(), json!(i));
    }
    assert!(vocab.len() <= 100);
    let added = |id: u32, content: &str| {
        json!({"id": id, "content": content, "single_word": false, "lstrip": false,
               "rstrip": false, "normalized": false, "special": true})
    };
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [added(0, "<|startoftext|>"), added(1, "<|endoftext|>")],
        "normalizer": {"type": "Lowercase"},
        "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": null,
        "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"}
    })
}

/// The files of the tiny model, as (role, file name, bytes).
struct TinyModel {
    dir: PathBuf,
    files: Vec<(&'static str, &'static str, Vec<u8>)>,
}

impl TinyModel {
    fn paths(&self) -> ModelPaths {
        let p = |name: &str| self.dir.join(name);
        ModelPaths {
            unet: p("unet.safetensors"),
            text_encoder: p("text_encoder.safetensors"),
            vae: p("vae.safetensors"),
            tokenizer: p("tokenizer.json"),
            unet_config: Some(p("unet_config.json")),
            vae_config: Some(p("vae_config.json")),
            text_encoder_config: Some(p("text_encoder_config.json")),
            scheduler_config: Some(p("scheduler_config.json")),
        }
    }
}

fn save_random(dir: &Path, name: &str, build: impl FnOnce(VarBuilder)) -> Vec<u8> {
    let vars = VarMap::new();
    build(VarBuilder::from_varmap(&vars, DType::F32, &Device::Cpu));
    let path = dir.join(name);
    vars.save(&path).unwrap();
    std::fs::read(&path).unwrap()
}

/// Builds the tiny model once per test process.
fn tiny_model() -> &'static TinyModel {
    static MODEL: OnceLock<TinyModel> = OnceLock::new();
    MODEL.get_or_init(|| {
        let start = Instant::now();
        let dir = temp_dir("tiny-sd");
        let unet = config::unet(Some(&unet_config())).unwrap();
        let vae = config::vae(Some(&vae_config())).unwrap();
        let text = config::text(Some(&text_config())).unwrap();
        let unet_bytes = save_random(&dir, "unet.safetensors", |vb| {
            UNet2DConditionModel::new(vb, 4, 4, false, unet.candle.clone()).unwrap();
        });
        let text_bytes = save_random(&dir, "text_encoder.safetensors", |vb| {
            ClipTextTransformer::new(vb.pp("text_model"), &text.clip()).unwrap();
        });
        let vae_bytes = save_random(&dir, "vae.safetensors", |vb| {
            AutoEncoderKL::new(vb, 3, 3, vae.candle.clone()).unwrap();
        });
        let mut files = vec![
            ("diffusion-model", "unet.safetensors", unet_bytes),
            ("text-encoder", "text_encoder.safetensors", text_bytes),
            ("vae", "vae.safetensors", vae_bytes),
        ];
        for (name, value) in [
            ("tokenizer.json", tokenizer_json()),
            ("unet_config.json", unet_config()),
            ("vae_config.json", vae_config()),
            ("text_encoder_config.json", text_config()),
            ("scheduler_config.json", scheduler_config()),
        ] {
            let bytes = serde_json::to_vec_pretty(&value).unwrap();
            std::fs::write(dir.join(name), &bytes).unwrap();
            files.push(("model", name, bytes));
        }
        eprintln!(
            "tiny model: {} bytes in {:.2} s",
            files.iter().map(|f| f.2.len()).sum::<usize>(),
            start.elapsed().as_secs_f64()
        );
        TinyModel { dir, files }
    })
}

// ------------------------------------------------------------------------------------------
// Serving and jobs
// ------------------------------------------------------------------------------------------

/// The model source of the tiny model served from `base`.
fn source(base: &str, files: &[(&str, &str, Vec<u8>)]) -> ModelSource {
    ModelSource {
        engine: ModelEngine::Other(SOURCE_ENGINE.into()),
        files: support::model_files(base, files),
        cli_defaults: CliDefaults {
            cfg_scale: 5.0,
            steps: 3,
            width: 64,
            height: 64,
            sampling_method: Some("euler_a".into()),
            ..CliDefaults::default()
        },
    }
}

fn task(prompt: &str, seed: u64) -> ImageTask {
    ImageTask {
        prompt: prompt.into(),
        seed: Some(seed),
        ..ImageTask::default()
    }
}

fn local_engine() -> CandleImageEngine {
    let root = temp_dir("unused-root");
    CandleImageEngine::new(
        ModelStore::new(&root),
        &EngineSettings::with_models_root(&root),
    )
}

fn defaults() -> CliDefaults {
    CliDefaults {
        cfg_scale: 5.0,
        steps: 3,
        width: 64,
        height: 64,
        sampling_method: None,
        ..CliDefaults::default()
    }
}

/// Runs `task` on the tiny model's local files; returns the bytes and ext.
fn run_local(engine: &CandleImageEngine, task: &ImageTask) -> (Vec<u8>, String) {
    match engine
        .run("tiny-sd", &tiny_model().paths(), task, &defaults())
        .unwrap()
    {
        EngineOutput::Binary { bytes, ext } => (bytes, ext),
        other => panic!("not binary: {other:?}"),
    }
}

fn decode(bytes: &[u8]) -> image::RgbImage {
    image::load_from_memory(bytes).unwrap().to_rgb8()
}

fn assert_not_flat(img: &image::RgbImage) {
    let distinct: std::collections::BTreeSet<[u8; 3]> = img.pixels().map(|p| p.0).collect();
    assert!(
        distinct.len() > 64,
        "the decoded image has only {} colours",
        distinct.len()
    );
}

// ------------------------------------------------------------------------------------------
// Tests
// ------------------------------------------------------------------------------------------

#[test]
fn dispatch_downloads_verifies_generates_and_keeps_the_pipeline() {
    let model = tiny_model();
    let served: Vec<(String, Vec<u8>)> = model
        .files
        .iter()
        .map(|(_, n, b)| (n.to_string(), b.clone()))
        .collect();
    let (base, hits) = serve_files(served);
    let root = temp_dir("models-root");
    let router = Router::with_settings(&EngineSettings::with_models_root(&root));
    assert!(router.engine_names().contains(&NAME));
    let source = source(&base, &model.files);

    // cliDefaults give 64x64, 3 steps, cfg 5, euler_a.
    let job = JobRequest::new(
        "job-1",
        "tiny-sd",
        Task::Image(task("a red cat", 7)),
        source.clone(),
    );
    let start = Instant::now();
    let out = router.dispatch(&job).unwrap();
    let first = start.elapsed();
    let (bytes, ext) = out.as_binary().unwrap();
    assert_eq!(ext, "webp");
    assert_eq!(&bytes[..4], b"RIFF");
    let img = decode(bytes);
    assert_eq!(img.dimensions(), (64, 64));
    assert_not_flat(&img);
    assert_eq!(hits.load(Ordering::Relaxed), model.files.len());
    for (_, name, _) in &model.files {
        assert!(root.join("tiny-sd").join(name).is_file(), "{name} cached");
    }

    // The same job again: no download, the pipeline reused, the same bytes.
    let start = Instant::now();
    let again = router.dispatch(&job).unwrap();
    let second = start.elapsed();
    assert_eq!(again, out, "same request, same image");
    assert_eq!(
        hits.load(Ordering::Relaxed),
        model.files.len(),
        "files reused"
    );
    eprintln!(
        "dispatch: first {:.2} s (download + load + 3 steps), second {:.2} s",
        first.as_secs_f64(),
        second.as_secs_f64()
    );

    // The engine itself: one load for two jobs, the model advertised afterwards.
    let engine = CandleImageEngine::new(
        ModelStore::new(&root),
        &EngineSettings::with_models_root(&root),
    );
    engine.dispatch(&job).unwrap();
    engine.dispatch(&job).unwrap();
    assert_eq!(engine.loads(), 1);
    let report = engine.last_run().unwrap();
    assert!(!report.loaded);
    assert_eq!(report.steps_run, 3);
    assert_eq!(report.params.sampler, Sampler::EulerAncestral);
    assert!(report.params.guided());
    let image_models = &engine.capabilities()[&studio_core::wire::TaskKind::Image];
    assert_eq!(
        image_models,
        &[GENERIC_MODEL_ID.to_string(), "tiny-sd".to_string()]
    );

    // sd-cpp offers are not this engine's: still EngineNotAvailable without an sd-cpp engine.
    let sdcpp = JobRequest::new(
        "job-2",
        "tiny-sd",
        Task::Image(task("a red cat", 7)),
        ModelSource {
            engine: ModelEngine::SdCpp,
            ..source
        },
    );
    let e = router.dispatch(&sdcpp).unwrap_err();
    assert_eq!(e.kind, EngineErrorKind::EngineNotAvailable);
    let e = engine.dispatch(&sdcpp).unwrap_err();
    assert_eq!(e.kind, EngineErrorKind::SourceMismatch);
}

#[test]
fn seeds_steps_guidance_and_samplers_are_honoured() {
    let engine = local_engine();
    let base = task("a blue horse under the moon", 1);
    let (a, _) = run_local(&engine, &base);
    let (a2, _) = run_local(&engine, &base);
    assert_eq!(a, a2, "same seed, same bytes");
    assert_eq!(engine.loads(), 1, "the pipeline stays loaded");
    let (b, _) = run_local(
        &engine,
        &ImageTask {
            seed: Some(2),
            ..base.clone()
        },
    );
    assert_ne!(a, b, "another seed, another image");

    // Steps: the report counts the denoising steps, and the image changes with them.
    let (s2, _) = run_local(
        &engine,
        &ImageTask {
            steps: Some(2),
            ..base.clone()
        },
    );
    assert_eq!(engine.last_run().unwrap().steps_run, 2);
    assert_ne!(s2, a);
    let (_, _) = run_local(
        &engine,
        &ImageTask {
            steps: Some(4),
            ..base.clone()
        },
    );
    assert_eq!(engine.last_run().unwrap().steps_run, 4);

    // Guidance: cfg 5 uses the negative prompt; cfg 1 does not guide at all.
    let (neg, _) = run_local(
        &engine,
        &ImageTask {
            negative_prompt: Some("snow and ice".into()),
            ..base.clone()
        },
    );
    assert_ne!(neg, a, "the negative prompt matters when guided");
    let unguided = ImageTask {
        cfg_scale: Some(1.0),
        ..base.clone()
    };
    let (u1, _) = run_local(&engine, &unguided);
    assert!(!engine.last_run().unwrap().params.guided());
    let (u2, _) = run_local(
        &engine,
        &ImageTask {
            negative_prompt: Some("snow and ice".into()),
            ..unguided.clone()
        },
    );
    assert_eq!(u1, u2, "without guidance the negative prompt is unused");
    assert_ne!(u1, a, "cfg changes the image");
    let (c9, _) = run_local(
        &engine,
        &ImageTask {
            cfg_scale: Some(9.0),
            ..base.clone()
        },
    );
    assert_ne!(c9, a);

    // The prompt matters.
    let (p, _) = run_local(
        &engine,
        &ImageTask {
            prompt: "a green fish".into(),
            ..base.clone()
        },
    );
    assert_ne!(p, a);

    // Every sampler runs, deterministically.
    for name in diffusion::SAMPLER_NAMES {
        let t = ImageTask {
            sampling_method: Some(name.into()),
            ..base.clone()
        };
        let (x, _) = run_local(&engine, &t);
        let (y, _) = run_local(&engine, &t);
        assert_eq!(x, y, "{name} is deterministic");
        assert_eq!(engine.last_run().unwrap().params.sampler.name(), name);
        assert_not_flat(&decode(&x));
        if name != "euler_a" {
            let (z, _) = run_local(
                &engine,
                &ImageTask {
                    seed: Some(99),
                    ..t.clone()
                },
            );
            assert_ne!(x, z, "{name}: the seed sets the starting noise");
        }
    }

    // No seed: derived from the task, so still deterministic.
    let unseeded = ImageTask {
        seed: None,
        ..base.clone()
    };
    let (n1, _) = run_local(&engine, &unseeded);
    let (n2, _) = run_local(&engine, &unseeded);
    assert_eq!(n1, n2);
    assert_eq!(engine.loads(), 1);
}

#[test]
fn sizes_and_formats() {
    let engine = local_engine();
    let t = ImageTask {
        width: Some(64),
        height: Some(48),
        ext: Some("png".into()),
        ..task("a small boat on the sea", 3)
    };
    let (png, ext) = run_local(&engine, &t);
    assert_eq!(ext, "png");
    assert_eq!(&png[1..4], b"PNG");
    assert_eq!(decode(&png).dimensions(), (64, 48));
    // webp and png carry the same pixels.
    let (webp, ext) = run_local(
        &engine,
        &ImageTask {
            ext: Some("webp".into()),
            ..t.clone()
        },
    );
    assert_eq!(ext, "webp");
    assert_eq!(decode(&webp), decode(&png));
    // Other exts: PNG bytes, reported as png.
    let (jpg, ext) = run_local(
        &engine,
        &ImageTask {
            ext: Some("jpg".into()),
            ..t.clone()
        },
    );
    assert_eq!((ext.as_str(), &jpg), ("png", &png));
    // Size from cliDefaults (64x64), and a larger one.
    let (d, _) = run_local(&engine, &task("a small boat on the sea", 3));
    assert_eq!(decode(&d).dimensions(), (64, 64));
    let (big, _) = run_local(
        &engine,
        &ImageTask {
            width: Some(96),
            height: Some(128),
            ..task("a city at night", 3)
        },
    );
    assert_eq!(decode(&big).dimensions(), (96, 128));
}

#[test]
fn bad_requests_fail_clearly_and_are_not_retryable() {
    // Nothing listens here: every error below must come before any download.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dead = format!("http://127.0.0.1:{port}");
    let model = tiny_model();
    let root = temp_dir("bad-root");
    let engine = CandleImageEngine::new(
        ModelStore::new(&root),
        &EngineSettings::with_models_root(&root),
    );
    let job = |t: ImageTask, files: &[(&str, &str, Vec<u8>)]| {
        JobRequest::new("job", "tiny-sd", Task::Image(t), source(&dead, files))
    };
    let expect = |job: JobRequest, kind: EngineErrorKind, needle: &str| {
        let e = engine.dispatch(&job).unwrap_err();
        assert_eq!(e.kind, kind, "{e}");
        assert!(!e.retryable(), "{e}");
        assert!(e.message.contains(needle), "`{needle}` not in: {e}");
    };
    let base = task("a cat", 1);
    expect(
        job(
            ImageTask {
                width: Some(60),
                ..base.clone()
            },
            &model.files,
        ),
        EngineErrorKind::InvalidInput,
        "width 60 must be a multiple of 8",
    );
    expect(
        job(
            ImageTask {
                height: Some(0),
                ..base.clone()
            },
            &model.files,
        ),
        EngineErrorKind::InvalidInput,
        "height 0",
    );
    expect(
        job(
            ImageTask {
                steps: Some(0),
                ..base.clone()
            },
            &model.files,
        ),
        EngineErrorKind::InvalidInput,
        "steps 0",
    );
    expect(
        job(
            ImageTask {
                cfg_scale: Some(-1.0),
                ..base.clone()
            },
            &model.files,
        ),
        EngineErrorKind::InvalidInput,
        "cfgScale",
    );
    expect(
        job(
            ImageTask {
                sampling_method: Some("lcm".into()),
                ..base.clone()
            },
            &model.files,
        ),
        EngineErrorKind::InvalidInput,
        "samplingMethod `lcm`",
    );
    expect(
        job(
            ImageTask {
                mask_url: Some("https://x/m.png".into()),
                ..base.clone()
            },
            &model.files,
        ),
        EngineErrorKind::InvalidInput,
        "maskUrl",
    );
    let without = |role: &str| -> Vec<(&'static str, &'static str, Vec<u8>)> {
        model
            .files
            .iter()
            .filter(|f| f.0 != role)
            .cloned()
            .collect()
    };
    expect(
        job(base.clone(), &without("vae")),
        EngineErrorKind::InvalidInput,
        "no `vae` file",
    );
    expect(
        job(base.clone(), &without("diffusion-model")),
        EngineErrorKind::InvalidInput,
        "no `diffusion-model` file",
    );
    let no_tokenizer: Vec<_> = model
        .files
        .iter()
        .filter(|f| f.1 != "tokenizer.json")
        .cloned()
        .collect();
    expect(
        job(base.clone(), &no_tokenizer),
        EngineErrorKind::InvalidInput,
        "tokenizer",
    );
    let mut gguf = model.files.clone();
    gguf[0].1 = "unet.gguf";
    expect(
        job(base.clone(), &gguf),
        EngineErrorKind::InvalidInput,
        "safetensors only",
    );

    // Routing and kinds.
    let mut wrong = job(base.clone(), &model.files);
    wrong.source.engine = ModelEngine::SdCpp;
    expect(wrong, EngineErrorKind::SourceMismatch, "sd-cpp");
    let mut tts = job(base.clone(), &model.files);
    tts.task = Task::AudioTts(AudioTtsTask {
        text: "hi".into(),
        ..AudioTtsTask::default()
    });
    expect(
        tts,
        EngineErrorKind::UnsupportedKind,
        "cannot serve audio_tts",
    );

    // Unreachable files: a download failure, retryable.
    let e = engine
        .dispatch(&job(base.clone(), &model.files))
        .unwrap_err();
    assert!(e.retryable(), "{e}");
}

#[test]
fn broken_model_files_fail_without_retry() {
    let model = tiny_model();
    let engine = local_engine();
    let dir = temp_dir("broken");
    let copy = |name: &str| {
        let to = dir.join(name);
        std::fs::copy(model.dir.join(name), &to).unwrap();
        to
    };
    let good = model.paths();
    let t = task("a cat", 1);
    let check = |paths: &ModelPaths, needle: &str| {
        let e = engine.run("broken", paths, &t, &defaults()).unwrap_err();
        assert!(!e.retryable(), "{e}");
        assert!(
            matches!(e.kind, EngineErrorKind::Failed { retryable: false }),
            "{e:?}"
        );
        assert!(e.message.contains(needle), "`{needle}` not in: {e}");
    };

    // Corrupt safetensors: random bytes, and a truncated file.
    let corrupt = dir.join("corrupt.safetensors");
    std::fs::write(
        &corrupt,
        b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all",
    )
    .unwrap();
    check(
        &ModelPaths {
            unet: corrupt.clone(),
            ..good.clone()
        },
        "not a readable safetensors",
    );
    let bytes = std::fs::read(&good.vae).unwrap();
    let truncated = dir.join("truncated.safetensors");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    check(
        &ModelPaths {
            vae: truncated,
            ..good.clone()
        },
        "not a readable safetensors",
    );

    // Weights of another model: the VAE file given as the UNet.
    check(
        &ModelPaths {
            unet: good.vae.clone(),
            ..good.clone()
        },
        "UNet",
    );

    // Configs: not JSON, an SDXL-style UNet, mismatched dimensions.
    let junk = dir.join("junk_unet_config.json");
    std::fs::write(&junk, b"{").unwrap();
    check(
        &ModelPaths {
            unet_config: Some(junk),
            ..good.clone()
        },
        "not valid JSON",
    );
    let mut sdxl = unet_config();
    sdxl["addition_embed_type"] = json!("text_time");
    let sdxl_path = dir.join("sdxl_unet_config.json");
    std::fs::write(&sdxl_path, serde_json::to_vec(&sdxl).unwrap()).unwrap();
    check(
        &ModelPaths {
            unet_config: Some(sdxl_path),
            ..good.clone()
        },
        "addition_embed_type",
    );
    let mut wide = unet_config();
    wide["cross_attention_dim"] = json!(64);
    let wide_path = dir.join("wide_unet_config.json");
    std::fs::write(&wide_path, serde_json::to_vec(&wide).unwrap()).unwrap();
    check(
        &ModelPaths {
            unet_config: Some(wide_path),
            ..good.clone()
        },
        "cross_attention_dim",
    );
    // No configs at all: the SD 1.5 defaults, which these weights do not match.
    check(
        &ModelPaths {
            unet_config: None,
            vae_config: None,
            text_encoder_config: None,
            scheduler_config: None,
            ..good.clone()
        },
        "does not match its config",
    );

    // A tokenizer without the CLIP special tokens.
    let mut tok = tokenizer_json();
    tok["model"]["vocab"]
        .as_object_mut()
        .unwrap()
        .remove("<|startoftext|>");
    tok["added_tokens"] = json!([]);
    let tok_path = dir.join("bad_tokenizer.json");
    std::fs::write(&tok_path, serde_json::to_vec(&tok).unwrap()).unwrap();
    check(
        &ModelPaths {
            tokenizer: tok_path,
            ..good.clone()
        },
        "<|startoftext|>",
    );

    // A missing file is an I/O error (retryable), not a model error.
    let e = engine
        .run(
            "broken",
            &ModelPaths {
                vae: dir.join("absent.safetensors"),
                ..good.clone()
            },
            &t,
            &defaults(),
        )
        .unwrap_err();
    assert!(e.retryable(), "{e}");

    // After all that the good model still runs, and a changed file is reloaded.
    let _ = copy("tokenizer.json");
    let before = engine.loads();
    engine.run("tiny-sd", &good, &t, &defaults()).unwrap();
    assert_eq!(engine.loads(), before + 1);
    engine.run("tiny-sd", &good, &t, &defaults()).unwrap();
    assert_eq!(engine.loads(), before + 1);
    let moved = ModelPaths {
        tokenizer: dir.join("tokenizer.json"),
        ..good.clone()
    };
    engine.run("tiny-sd", &moved, &t, &defaults()).unwrap();
    assert_eq!(engine.loads(), before + 2, "other files, another load");
}

#[test]
fn the_memory_budget_bounds_image_size_and_caching() {
    let root = temp_dir("budget");
    let paths = tiny_model().paths();
    let t = task("a cat", 1);
    let with_budget = |bytes: u64| {
        CandleImageEngine::new(
            ModelStore::new(&root),
            &EngineSettings {
                models_root: root.clone(),
                model_memory_budget_bytes: bytes,
                ..EngineSettings::default()
            },
        )
    };
    // 512x512 on the tiny model: 4096 tokens, 2 heads, batch 2: 512 MiB of attention.
    let engine = with_budget(64 << 20);
    let big = ImageTask {
        width: Some(512),
        height: Some(512),
        ..t.clone()
    };
    let e = engine
        .run("tiny-sd", &paths, &big, &defaults())
        .unwrap_err();
    assert_eq!(e.kind, EngineErrorKind::InvalidInput, "{e}");
    assert!(e.message.contains("512 MiB for attention"), "{e}");
    assert!(e.message.contains("memory budget (64 MiB)"), "{e}");
    engine.run("tiny-sd", &paths, &t, &defaults()).unwrap();
    engine.run("tiny-sd", &paths, &t, &defaults()).unwrap();
    assert_eq!(engine.loads(), 1, "3.6 MB of weights fit 64 MiB: kept");

    // Weights over the budget: released after each job, loaded again for the next.
    let engine = with_budget(1 << 20);
    let a = engine.run("tiny-sd", &paths, &t, &defaults()).unwrap();
    let b = engine.run("tiny-sd", &paths, &t, &defaults()).unwrap();
    assert_eq!(a, b);
    assert_eq!(engine.loads(), 2);
}
