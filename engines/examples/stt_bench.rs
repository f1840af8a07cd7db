//! Speech-to-text speed of the Whisper engine on this machine's CPU.
//!
//! ```text
//! cargo run --release -p studio-engines --features whisper --example stt_bench -- \
//!     --model-dir DIR [--wav speech.wav] [--runs 3] [--backend native|candle] \
//!     [--reference text.txt] [--keep-wav FILE]
//! ```
//!
//! Without `--wav`, a ~21 s English passage is spoken with `espeak-ng` (22 050 Hz mono);
//! `--keep-wav FILE` keeps that clip (and its text in `FILE.txt`) for another tool, such
//! as the faster-whisper side of `engines/examples/stt_side_by_side.sh`. The model
//! directory defaults to `$STUDIO_TEST_WHISPER_DIR`. Reported: the backend, model load
//! time, audio decode + resample time, and per run the transcription time and the
//! real-time factor `audio seconds / processing seconds` (higher is faster; 10x means a
//! minute of audio takes six seconds), the median, the word error rate against the spoken
//! passage (or `--reference`), and the load average before and after. The load and each
//! run also print the CPU time the process used (all threads, user + system): on a busy
//! machine that work figure moves far less than the wall time does.

use std::path::PathBuf;
use std::time::Instant;

use studio_engines::whisper::{audio, Backend, TranscribeOptions, WhisperModel};

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

/// Lower-case words without punctuation (apostrophes kept).
/// CPU seconds this process has used so far, all threads, user + system (Linux
/// `/proc/self/stat`, in USER_HZ ticks of 10 ms); 0 where it cannot be read.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces) in parentheses.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let ticks: Vec<f64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|f| f.parse().ok())
        .collect();
    ticks.iter().sum::<f64>() / 100.0
}

fn words(text: &str) -> Vec<String> {
    text.to_lowercase()
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || c == '\'' {
                c
            } else {
                ' '
            }
        })
        .collect::<String>()
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

/// Word-level edit distance (substitutions, deletions, insertions) and the reference's
/// word count.
fn word_errors(reference: &str, hypothesis: &str) -> (usize, usize) {
    let (r, h) = (words(reference), words(hypothesis));
    let mut prev: Vec<usize> = (0..=h.len()).collect();
    for (i, rw) in r.iter().enumerate() {
        let mut cur = vec![i + 1; h.len() + 1];
        for (j, hw) in h.iter().enumerate() {
            cur[j + 1] = (prev[j + 1] + 1)
                .min(cur[j] + 1)
                .min(prev[j] + usize::from(rw != hw));
        }
        prev = cur;
    }
    (prev[h.len()], r.len())
}

fn main() {
    let mut model_dir = std::env::var_os("STUDIO_TEST_WHISPER_DIR").map(PathBuf::from);
    let mut wav: Option<PathBuf> = None;
    let mut keep_wav: Option<PathBuf> = None;
    let mut reference: Option<String> = None;
    let mut backend = Backend::default_here();
    let mut runs = 3usize;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--model-dir" => model_dir = args.next().map(PathBuf::from),
            "--wav" => wav = args.next().map(PathBuf::from),
            "--keep-wav" => keep_wav = args.next().map(PathBuf::from),
            "--reference" => {
                let path = args.next().unwrap_or_default();
                reference = Some(std::fs::read_to_string(&path).unwrap_or_else(|e| {
                    eprintln!("reading {path}: {e}");
                    std::process::exit(1)
                }));
            }
            "--backend" => {
                backend = match args.next().as_deref() {
                    Some("native") => Backend::Native,
                    Some("candle") => Backend::Candle,
                    other => {
                        eprintln!("--backend is native or candle, not {other:?}");
                        std::process::exit(2);
                    }
                }
            }
            "--runs" => runs = args.next().and_then(|v| v.parse().ok()).unwrap_or(runs),
            "-h" | "--help" => {
                println!(
                    "stt_bench --model-dir DIR [--wav FILE] [--runs N] [--backend native|candle] \
                     [--reference FILE] [--keep-wav FILE]"
                );
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
            let path = keep_wav.clone().unwrap_or_else(|| {
                std::env::temp_dir().join(format!("stt-bench-{}.wav", std::process::id()))
            });
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
            if keep_wav.is_some() {
                let mut text = path.clone().into_os_string();
                text.push(".txt");
                std::fs::write(&text, PASSAGE).expect("writing the passage");
            } else {
                let _ = std::fs::remove_file(&path);
            }
            reference.get_or_insert_with(|| PASSAGE.to_string());
            bytes
        }
    };

    println!("loadavg before: {}", loadavg());
    println!(
        "backend: {}, threads: {} (CPU pool), cpus: {}",
        backend.name(),
        studio_engines::threads::default_threads(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let t = Instant::now();
    let (samples, duration) = audio::load_for_whisper(&wav_bytes).expect("decoding the WAV");
    let decode = t.elapsed();
    let cpu = cpu_seconds();
    let t = Instant::now();
    let mut model = WhisperModel::load_with(&model_dir, backend).expect("loading the model");
    let load = t.elapsed();
    let load_cpu = cpu_seconds() - cpu;
    println!(
        "model: {} ({:?}), load {:.3} s (CPU {load_cpu:.2} s); audio {:.2} s, decode+resample {:.1} ms",
        model_dir.display(),
        model.format(),
        load.as_secs_f64(),
        duration,
        decode.as_secs_f64() * 1e3
    );
    let mut rtfs = Vec::new();
    for run in 1..=runs {
        let cpu = cpu_seconds();
        let t = Instant::now();
        let transcript = model
            .transcribe(&samples, &TranscribeOptions::default())
            .expect("transcribing");
        let secs = t.elapsed().as_secs_f64();
        let cpu = cpu_seconds() - cpu;
        let rtf = duration / secs;
        rtfs.push(rtf);
        println!(
            "run {run}: {secs:.2} s, real-time factor {rtf:.1}x, CPU {cpu:.2} s, {} segments",
            transcript.segments.len()
        );
        if run == 1 {
            println!("text: {}", transcript.text);
            if let Some(reference) = &reference {
                let (errors, n) = word_errors(reference, &transcript.text);
                println!(
                    "word error rate: {:.1} % ({errors} of {n} words)",
                    100.0 * errors as f64 / n.max(1) as f64
                );
            }
        }
    }
    rtfs.sort_by(f64::total_cmp);
    if let Some(median) = rtfs.get(rtfs.len() / 2) {
        println!("median real-time factor: {median:.1}x (audio seconds per processing second)");
    }
    println!("loadavg after: {}", loadavg());
}
