//! The engines the small-box binary carries in its own feature set: by default none of the
//! candle engines nor the Piper text-to-speech engine, so an offer for one of them fails, not retryable, with the message that
//! names the missing engine and where to get it (docs/PROTOCOL.md §9.1, §10).
//!
//! `cargo test --workspace` builds this crate with the features of every workspace member
//! unified (the async binary turns the candle engines on), so there these paths cannot be
//! reached and the test only checks that a carried engine is routed to. The package's own
//! build, `cargo test -p studio-worker` (a step of `.ci/run`), is the one that asserts the
//! "not compiled in" paths.

use studio_core::wire::{self, StudioFrame};
use studio_engines::{Engine, EngineErrorKind, JobRequest};
use studio_shell::{engine_router, Config};

/// An offer as the studio sends it, for `task` run by `modelSource.engine` = `engine`.
fn offer(task: &str, engine: &str) -> JobRequest {
    let text = format!(
        r#"{{"type":"offer","claim":{{"jobId":"job-1","gameId":"g","assetName":"g/a","model":"m","vramGbEstimate":1.0,"task":{task},"modelSource":{{"engine":"{engine}","files":[],"cliDefaults":{{"cfgScale":1.0,"steps":8,"width":512,"height":512}}}}}}}}"#
    );
    match wire::decode_studio_frame(&text) {
        Ok(StudioFrame::Offer { claim }) => {
            JobRequest::new(claim.job_id, claim.model, claim.task, claim.model_source)
        }
        other => panic!("not an offer: {other:?}"),
    }
}

/// (own feature, routing id of the engine, `modelSource.engine`, task, the fix named).
const OPTIONAL_ENGINES: [(bool, &str, &str, &str, &str); 4] = [
    (
        cfg!(feature = "llm"),
        "llama",
        "llama-cpp",
        r#"{"kind":"llm","messages":[{"role":"user","content":"hi"}]}"#,
        "install studio-worker-async (it carries the candle LLM engine) or a build with \
         feature `llm`",
    ),
    (
        cfg!(feature = "whisper"),
        "whisper",
        "whisper",
        r#"{"kind":"audio_stt","inputUrl":"https://example/clip.wav"}"#,
        "install studio-worker-async (it carries the candle Whisper engine) or a build with \
         feature `whisper`",
    ),
    (
        cfg!(feature = "image-candle"),
        "candle_image",
        "candle-sd",
        r#"{"kind":"image","prompt":"a fox"}"#,
        "install studio-worker-async (it carries the candle Stable Diffusion engine) or a \
         build with feature `image-candle`",
    ),
    (
        cfg!(feature = "tts"),
        "piper",
        "onnx",
        r#"{"kind":"audio_tts","text":"hello"}"#,
        "install studio-worker-async (it carries the Piper text-to-speech engine) or a build \
         with feature `tts`",
    ),
];

#[test]
fn a_job_for_an_engine_not_compiled_in_fails_not_retryable_and_says_where_to_get_it() {
    // The roster `studio-worker run` builds (no delay hook set in this test's process).
    let router = engine_router(&Config::default());
    let carried = router.engine_names();
    let mut asserted = 0;
    for (own_feature, name, engine, task, fix) in OPTIONAL_ENGINES {
        let job = offer(task, engine);
        if carried.contains(&name) {
            // Asked for by this crate's feature, or unified in from another member.
            let routed = router
                .route(&job.source.engine)
                .expect("a carried engine routes");
            assert_eq!(routed.name(), name);
            continue;
        }
        assert!(
            !own_feature,
            "feature of `{name}` on, engine missing: {carried:?}"
        );
        let err = router
            .dispatch(&job)
            .expect_err("a job for a missing engine must fail");
        assert_eq!(err.kind, EngineErrorKind::EngineNotAvailable, "{err:?}");
        assert!(!err.retryable(), "{err:?}");
        assert_eq!(
            err.message,
            format!("modelSource.engine `{engine}` is not compiled into this worker; {fix}")
        );
        asserted += 1;
    }
    // The package's own default build carries none of these engines.
    let own_default = !cfg!(feature = "llm")
        && !cfg!(feature = "whisper")
        && !cfg!(feature = "image-candle")
        && !cfg!(feature = "tts");
    if own_default && asserted == 0 {
        eprintln!(
            "features unified with other workspace members (every optional engine is carried): \
             run `cargo test -p studio-worker` to check this binary's own configuration"
        );
    }
    // The synthetic engine is always carried and always last.
    assert_eq!(carried.last(), Some(&"synthetic"));
}

#[test]
fn the_sd_cpp_engine_is_carried_by_default() {
    // A child-process runner, cheap enough for the small binary (feature `sd-cpp`, default).
    let router = engine_router(&Config::default());
    let job = offer(r#"{"kind":"image","prompt":"a fox"}"#, "sd-cpp");
    if cfg!(feature = "sd-cpp") {
        let routed = router.route(&job.source.engine).expect("sd-cpp routes");
        assert_eq!(routed.name(), "sdcpp");
    } else {
        let err = router.dispatch(&job).expect_err("not compiled in");
        assert_eq!(err.kind, EngineErrorKind::EngineNotAvailable, "{err:?}");
        assert!(err.message.contains("feature `sd-cpp`"), "{err:?}");
    }
}
