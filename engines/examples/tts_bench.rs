//! Text-to-speech speed of the Piper engine on this machine's CPU.
//!
//! ```text
//! eval "$(.ci/fetch-test-models)"
//! cargo run --release -p studio-engines --features tts --example tts_bench -- [--runs 3]
//!     [--voice-dir DIR] [--onnxruntime FILE] [--text "..."]
//! ```
//!
//! The voice directory (holding `en_US-joe-medium.onnx` and `.onnx.json`) defaults to
//! `$STUDIO_TEST_PIPER_VOICE_DIR`, the ONNX Runtime library to `$STUDIO_TEST_ONNXRUNTIME`.
//! Reported: ONNX Runtime load time, voice load time (config + session), and per run the
//! synthesis time (espeak-ng phonemes, the model, the WAV) and the real-time factor
//! `audio seconds / processing seconds` (higher is faster), with the load average before
//! and after. On Linux each run also reports the CPU time this process used (all its
//! threads, from /proc/self/stat; espeak-ng's own processes not counted) and audio seconds
//! per CPU second, a figure other processes on a busy machine do not move much.

use std::path::PathBuf;
use std::time::Instant;

use studio_core::wire::AudioTtsTask;
use studio_engines::piper::{runtime, PiperEngine};
use studio_engines::{EngineSettings, ModelStore};

const VOICE: &str = "en_US-joe-medium";

const PASSAGE: &str = "The quick brown fox jumps over the lazy dog. \
    A studio worker downloads the model files, checks their hashes, and runs the job on \
    the local machine. Text to speech turns a script into a voice, so that a game's \
    characters can speak their lines. This benchmark measures how many seconds of audio \
    are made per second of processing time.";

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// User + system CPU seconds of this process so far (Linux: /proc/self/stat, in USER_HZ =
/// 100 ticks per second), `None` elsewhere.
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may hold spaces) close with `)`.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let mut voice_dir = std::env::var_os("STUDIO_TEST_PIPER_VOICE_DIR").map(PathBuf::from);
    let mut library = std::env::var_os("STUDIO_TEST_ONNXRUNTIME").map(PathBuf::from);
    let mut text = PASSAGE.to_string();
    let mut runs = 3usize;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--voice-dir" => voice_dir = args.next().map(PathBuf::from),
            "--onnxruntime" => library = args.next().map(PathBuf::from),
            "--text" => text = args.next().unwrap_or_default(),
            "--runs" => runs = args.next().and_then(|v| v.parse().ok()).unwrap_or(runs),
            "-h" | "--help" => {
                println!(
                    "tts_bench [--voice-dir DIR] [--onnxruntime FILE] [--text TEXT] [--runs N]"
                );
                return;
            }
            other => {
                eprintln!("unknown argument `{other}` (try --help)");
                std::process::exit(2);
            }
        }
    }
    let Some(voice_dir) = voice_dir else {
        eprintln!("no voice: pass --voice-dir DIR or set STUDIO_TEST_PIPER_VOICE_DIR");
        std::process::exit(2);
    };
    let onnx = voice_dir.join(format!("{VOICE}.onnx"));
    let json = voice_dir.join(format!("{VOICE}.onnx.json"));
    let settings = EngineSettings {
        onnxruntime_library: library,
        ..EngineSettings::default()
    };
    let engine = PiperEngine::new(ModelStore::new(std::env::temp_dir()), &settings);

    println!("loadavg before: {}", loadavg());
    let t = Instant::now();
    if let Err(e) = runtime::ensure_loaded(engine.library()) {
        eprintln!("{e}");
        std::process::exit(1);
    }
    println!(
        "onnx runtime:   {} loaded in {:.3} s",
        engine.library().display(),
        t.elapsed().as_secs_f64()
    );
    let t = Instant::now();
    if let Err(e) = engine.voice(&onnx, &json) {
        eprintln!("{e}");
        std::process::exit(1);
    }
    println!(
        "voice load:     {VOICE} in {:.3} s",
        t.elapsed().as_secs_f64()
    );
    let task = AudioTtsTask {
        text: text.clone(),
        ..AudioTtsTask::default()
    };
    println!("text:           {} characters", text.chars().count());
    let mut factors = Vec::new();
    let mut per_cpu = Vec::new();
    for run in 1..=runs.max(1) {
        let cpu = cpu_seconds();
        let t = Instant::now();
        let speech = match engine.speak(&onnx, &json, &task) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("{e}");
                std::process::exit(1);
            }
        };
        let took = t.elapsed().as_secs_f64();
        let audio = speech.samples as f64 / f64::from(speech.sample_rate);
        let factor = audio / took;
        factors.push(factor);
        let cpu = cpu.zip(cpu_seconds()).map(|(a, b)| b - a);
        let cpu_text = match cpu {
            Some(c) if c > 0.0 => {
                per_cpu.push(audio / c);
                format!(", {c:.2} CPU s: {:.1} audio s per CPU s", audio / c)
            }
            _ => String::new(),
        };
        println!(
            "run {run}: {audio:.2} s of audio ({} sentences) in {took:.3} s: real-time factor \
             {factor:.1}x{cpu_text}",
            speech.sentences
        );
    }
    println!("median real-time factor: {:.1}x", median(factors));
    if !per_cpu.is_empty() {
        println!(
            "median audio seconds per CPU second: {:.1}",
            median(per_cpu)
        );
    }
    println!("loadavg after:  {}", loadavg());
}
