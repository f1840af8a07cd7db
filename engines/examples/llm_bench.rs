//! LLM throughput on CPU next to this machine's memory bandwidth, measured in the same run.
//!
//! ```text
//! cargo run --release -p studio-engines --features llm --example llm_bench -- \
//!     [--model PATH] [--decode-tokens N] [--prompt-words N] [--runs N] [--json PATH] \
//!     [--weights native|converted|stored|both|all] [--peer PYTHON]
//! ```
//!
//! `--model` defaults to `$STUDIO_TEST_LLM_GGUF` (SmolLM2-135M-Instruct Q4_1 in CI).
//!
//! * **Bandwidth**: a read-sum over a 1 GiB buffer (far larger than any cache), one thread
//!   per core candle uses, best of several passes; also single-threaded.
//! * **Prefill**: prompt tokens / seconds of the prompt pass (`--prompt-words` words of
//!   text in one user message; best of `--runs`).
//! * **Decode**: greedy generation of up to `--decode-tokens` tokens; tokens / seconds of
//!   the one-token passes after the first token (best of `--runs`).
//! * **Limit**: a decoded token reads every weight once, so decode cannot beat
//!   bandwidth / bytes-per-token, with bytes-per-token taken as the model file's size. The
//!   issue's goal is decode >= 80 % of that.
//! * **Weights** (`--weights`, default `all`): `native` is the engine's own CPU forward pass
//!   (its default on the CPU; the file's types as stored); `converted` is candle with the
//!   slow quant types converted to Q8_0 at load (candle's default on AVX2 CPUs), `stored`
//!   candle with the file's types; `both` is converted + stored, `all` all three. Converted
//!   weights stream more bytes per token, so their own limit is printed too.
//! * **Threads**: the native path's pool has `STUDIO_LLM_THREADS` threads (default one per
//!   core); candle's has `RAYON_NUM_THREADS` (default one per physical core).
//!
//! * **Peer** (`--peer PYTHON`, or `$STUDIO_LLAMA_CPP_PYTHON`): llama.cpp on the same file,
//!   through llama-cpp-python (`PYTHON` is the venv's python that `.ci/llama-cpp-venv`
//!   builds; the script is `engines/examples/llama_cpp_peer.py`), and the native forward
//!   pass driven the same way: the prefill task's prompt ids evaluated in one batch, then
//!   `--decode-tokens` greedy tokens one by one (end-of-generation tokens do not stop it),
//!   each the best of `--runs`, the same thread count (`STUDIO_LLM_THREADS`, default one
//!   per core); printed side by side with the ratio.
//!
//! `/proc/loadavg` is printed before and after: on a shared machine the figures are only as
//! good as the quiet they were taken in.

use std::path::PathBuf;
use std::time::Instant;

use studio_core::wire::{ChatMessage, LlmTask, ModelSource};
use studio_engines::llm::{self, Backend, LlmEngine};
use studio_engines::ModelStore;

struct Args {
    model: PathBuf,
    decode_tokens: u32,
    prompt_words: usize,
    runs: usize,
    json: Option<PathBuf>,
    layouts: Vec<Layout>,
    peer: Option<PathBuf>,
}

/// A weight layout / backend to measure.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Layout {
    Native,
    Converted,
    Stored,
}

fn parse_args() -> Result<Args, String> {
    let mut model = std::env::var_os("STUDIO_TEST_LLM_GGUF").map(PathBuf::from);
    let mut args = Args {
        model: PathBuf::new(),
        decode_tokens: 128,
        prompt_words: 200,
        runs: 3,
        json: None,
        layouts: vec![Layout::Native, Layout::Converted, Layout::Stored],
        peer: std::env::var_os("STUDIO_LLAMA_CPP_PYTHON").map(PathBuf::from),
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = || it.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--model" => model = Some(PathBuf::from(value()?)),
            "--decode-tokens" => {
                args.decode_tokens = value()?.parse().map_err(|e| format!("{e}"))?
            }
            "--prompt-words" => args.prompt_words = value()?.parse().map_err(|e| format!("{e}"))?,
            "--runs" => {
                args.runs = value()?
                    .parse::<usize>()
                    .map_err(|e| format!("{e}"))?
                    .max(1)
            }
            "--json" => args.json = Some(PathBuf::from(value()?)),
            "--peer" => args.peer = Some(PathBuf::from(value()?)),
            "--weights" => {
                args.layouts = match value()?.as_str() {
                    "native" => vec![Layout::Native],
                    "converted" => vec![Layout::Converted],
                    "stored" => vec![Layout::Stored],
                    "both" => vec![Layout::Converted, Layout::Stored],
                    "all" => vec![Layout::Native, Layout::Converted, Layout::Stored],
                    other => {
                        return Err(format!(
                            "--weights native|converted|stored|both|all, not {other}"
                        ))
                    }
                }
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    args.model = model.ok_or("no model: pass --model PATH or set STUDIO_TEST_LLM_GGUF")?;
    Ok(args)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// Sums `words` with several independent accumulators (so the loop is bound by loads, not
/// by one add chain).
fn read_sum(words: &[u64]) -> u64 {
    let mut acc = [0u64; 8];
    let chunks = words.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for i in 0..8 {
            acc[i] = acc[i].wrapping_add(c[i]);
        }
    }
    acc.iter().chain(rest).fold(0u64, |a, &b| a.wrapping_add(b))
}

/// Best read bandwidth over `passes` passes, bytes/s, with `threads` threads.
fn bandwidth(buf: &[u64], threads: usize, passes: usize) -> f64 {
    let mut best = 0f64;
    let per = buf.len().div_ceil(threads);
    for _ in 0..passes {
        let t0 = Instant::now();
        let total = std::thread::scope(|s| {
            let handles: Vec<_> = buf
                .chunks(per)
                .map(|c| s.spawn(move || read_sum(c)))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap())
                .fold(0u64, u64::wrapping_add)
        });
        let secs = t0.elapsed().as_secs_f64();
        std::hint::black_box(total);
        best = best.max(std::mem::size_of_val(buf) as f64 / secs);
    }
    best
}

fn task(text: String, max_tokens: u32) -> LlmTask {
    LlmTask {
        messages: vec![ChatMessage {
            role: "user".into(),
            content: text,
        }],
        max_tokens: Some(max_tokens),
        temperature: Some(0.0),
        ..LlmTask::default()
    }
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("llm_bench: {e}");
            std::process::exit(2);
        }
    };
    let load_before = loadavg();
    let threads = candle_core::utils::get_num_threads();
    let native_threads = llm::cpu::threads::default_threads();
    let file_bytes = std::fs::metadata(&args.model)
        .unwrap_or_else(|e| panic!("{}: {e}", args.model.display()))
        .len();
    let info = llm::inspect(&args.model).expect("a readable GGUF");

    // Memory bandwidth: 1 GiB, touched once before timing.
    let buf: Vec<u64> = (0..(1usize << 27)).map(|i| i as u64).collect();
    let bw_1 = bandwidth(&buf, 1, 3);
    let bw_n = bandwidth(&buf, threads, 5);
    drop(buf);

    let root = std::env::temp_dir().join("studio-llm-bench");
    std::fs::create_dir_all(&root).expect("temp dir");
    let gb = |b: f64| b / 1e9;
    println!(
        "model        {} ({:.1} MB, {})",
        args.model.display(),
        file_bytes as f64 / 1e6,
        info.name.as_deref().unwrap_or("?")
    );
    println!("threads      {threads} (candle pool), {native_threads} (native pool)");
    println!(
        "bandwidth    {:.2} GB/s with {threads} thread(s), {:.2} GB/s with 1 (read-sum over 1 GiB)",
        gb(bw_n),
        gb(bw_1)
    );
    let file_limit = bw_n / file_bytes as f64;
    println!(
        "decode limit {file_limit:.1} tok/s (bandwidth / {:.1} MB per token, the file size)",
        file_bytes as f64 / 1e6
    );

    let mut variants = Vec::new();
    for layout in args.layouts.clone() {
        let v = run_variant(&args, &root, layout, file_bytes);
        println!(
            "[{}] load {:.2} s | prefill {:.1} tok/s ({} tokens) | decode {:.1} tok/s ({} tokens) \
             = {:.1} % of the file-size limit; weights streamed per token {:.1} MB -> limit {:.1} \
             tok/s, {:.1} % of it",
            v.label,
            v.load_secs,
            v.prefill_rate,
            v.prefill_tokens,
            v.decode_rate,
            v.decode_tokens,
            100.0 * v.decode_rate / file_limit,
            v.bytes_per_token as f64 / 1e6,
            bw_n / v.bytes_per_token as f64,
            100.0 * v.decode_rate * v.bytes_per_token as f64 / bw_n,
        );
        variants.push(v);
    }
    let peer = args.peer.as_ref().map(|python| {
        let (ours, theirs) = run_peer(&args, python, native_threads);
        for (who, r) in [("native (ids)", &ours), ("llama.cpp", &theirs)] {
            println!(
                "[{who}] load {:.2} s | prefill {:.1} tok/s ({} tokens) | decode {:.1} tok/s \
                 ({} tokens)",
                r.load_secs, r.prefill_rate, r.prefill_tokens, r.decode_rate, r.decode_tokens
            );
        }
        println!(
            "[native / llama.cpp] prefill {:.2}x | decode {:.2}x ({}, {native_threads} threads)",
            ours.prefill_rate / theirs.prefill_rate,
            ours.decode_rate / theirs.decode_rate,
            theirs.version,
        );
        (ours, theirs)
    });
    let load_after = loadavg();
    println!("loadavg      before: {load_before} | after: {load_after}");

    if let Some(path) = args.json {
        let v = serde_json::json!({
            "model": args.model.display().to_string(),
            "model_bytes": file_bytes,
            "threads": threads,
            "native_threads": native_threads,
            "bandwidth_bytes_per_sec": bw_n,
            "bandwidth_1thread_bytes_per_sec": bw_1,
            "decode_limit_tok_per_sec": file_limit,
            "variants": variants.iter().map(|v| serde_json::json!({
                "weights": v.label,
                "load_secs": v.load_secs,
                "prefill_tokens": v.prefill_tokens,
                "prefill_tok_per_sec": v.prefill_rate,
                "decode_tokens": v.decode_tokens,
                "decode_tok_per_sec": v.decode_rate,
                "decode_pct_of_limit": 100.0 * v.decode_rate / file_limit,
                "weight_bytes_per_token": v.bytes_per_token,
            })).collect::<Vec<_>>(),
            "peer": peer.as_ref().map(|(ours, theirs)| serde_json::json!({
                "llama_cpp_python": theirs.version,
                "threads": native_threads,
                "native": ours.to_json(),
                "llama_cpp": theirs.to_json(),
                "prefill_ratio": ours.prefill_rate / theirs.prefill_rate,
                "decode_ratio": ours.decode_rate / theirs.decode_rate,
            })),
            "loadavg_before": load_before,
            "loadavg_after": load_after,
        });
        std::fs::write(&path, serde_json::to_string_pretty(&v).unwrap() + "\n")
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
}

struct Variant {
    label: &'static str,
    load_secs: f64,
    prefill_tokens: usize,
    prefill_rate: f64,
    decode_tokens: usize,
    decode_rate: f64,
    bytes_per_token: u64,
}

fn run_variant(args: &Args, root: &std::path::Path, layout: Layout, file_bytes: u64) -> Variant {
    let requantize = layout == Layout::Converted;
    let backend = if layout == Layout::Native {
        Backend::Native
    } else {
        Backend::Candle
    };
    let engine = LlmEngine::new(ModelStore::new(root), u64::MAX)
        .with_backend(backend)
        .with_requantize(requantize);
    let info = llm::inspect(&args.model).expect("a readable GGUF");
    if layout == Layout::Native && !info.native {
        eprintln!("note: the native path cannot run this model; candle runs it instead");
    }
    let bytes_per_token = if requantize {
        file_bytes + info.charge.requantize_extra_bytes
    } else {
        file_bytes
    };
    let source = ModelSource {
        engine: studio_core::wire::ModelEngine::LlamaCpp,
        files: Vec::new(),
        cli_defaults: Default::default(),
    };
    let t0 = Instant::now();
    let ran = engine
        .complete(&task("Hi".into(), 1), &source, &args.model)
        .expect("warm-up")
        .backend;
    let load_secs = t0.elapsed().as_secs_f64();

    let mut prefill = (0usize, f64::INFINITY);
    for _ in 0..args.runs {
        let c = engine
            .complete(&task(prefill_text(args), 1), &source, &args.model)
            .expect("prefill run");
        if c.prefill_secs < prefill.1 {
            prefill = (c.prompt_tokens, c.prefill_secs);
        }
    }

    let mut decode = (0usize, 0f64);
    for _ in 0..args.runs {
        let c = engine
            .complete(
                &task(
                    "Write a long, detailed essay about the history of the Roman Empire.".into(),
                    args.decode_tokens,
                ),
                &source,
                &args.model,
            )
            .expect("decode run");
        let passes = c.completion_tokens.saturating_sub(1);
        let rate = passes as f64 / c.decode_secs;
        if rate > decode.1 {
            decode = (passes, rate);
        }
    }
    Variant {
        label: match (layout, ran) {
            (Layout::Native, Backend::Native) => "native",
            (Layout::Converted, _) => "candle-q8_0-converted",
            _ => "candle-as-stored",
        },
        load_secs,
        prefill_tokens: prefill.0,
        prefill_rate: prefill.0 as f64 / prefill.1,
        decode_tokens: decode.0,
        decode_rate: decode.1,
        bytes_per_token,
    }
}

/// One side of the peer comparison.
struct PeerRun {
    version: String,
    load_secs: f64,
    prefill_tokens: usize,
    prefill_rate: f64,
    decode_tokens: usize,
    decode_rate: f64,
}

impl PeerRun {
    fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "load_secs": self.load_secs,
            "prefill_tokens": self.prefill_tokens,
            "prefill_tok_per_sec": self.prefill_rate,
            "decode_tokens": self.decode_tokens,
            "decode_tok_per_sec": self.decode_rate,
        })
    }
}

/// The prefill task's prompt ids (the engine's template and tokenizer).
fn prompt_ids(args: &Args) -> Vec<u32> {
    let (tok, template) = llm::load_tokenizer(&args.model).expect("the model's tokenizer");
    let prompt = llm::render_prompt(&template, &tok, &task(prefill_text(args), 1), None)
        .expect("the prompt renders");
    tok.encode_prompt(&prompt).expect("the prompt tokenizes")
}

/// The native forward pass and llama.cpp (through `python`) on the same ids.
fn run_peer(args: &Args, python: &std::path::Path, threads: usize) -> (PeerRun, PeerRun) {
    use candle_core::quantized::gguf_file;
    let ids = prompt_ids(args);
    let n = args.decode_tokens as usize;

    let t0 = Instant::now();
    let mut f = std::fs::File::open(&args.model).expect("the model file");
    let ct = gguf_file::Content::read(&mut f).expect("a readable GGUF");
    let model = llm::cpu::Model::load(&ct, &mut f).expect("the native path runs this model");
    let load_secs = t0.elapsed().as_secs_f64();
    let argmax = |v: &[f32]| {
        v.iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map_or(0, |(i, _)| i as u32)
    };
    let (mut prefill, mut decode) = (f64::INFINITY, f64::INFINITY);
    for _ in 0..args.runs {
        let mut s = model.session(ids.len() + n);
        let t = Instant::now();
        let mut logits = model.forward(&mut s, &ids, 0).expect("prefill");
        prefill = prefill.min(t.elapsed().as_secs_f64());
        let t = Instant::now();
        for i in 0..n {
            let next = argmax(&logits);
            logits = model
                .forward(&mut s, &[next], ids.len() + i)
                .expect("decode");
        }
        decode = decode.min(t.elapsed().as_secs_f64());
    }
    let ours = PeerRun {
        version: "native".into(),
        load_secs,
        prefill_tokens: ids.len(),
        prefill_rate: ids.len() as f64 / prefill,
        decode_tokens: n,
        decode_rate: n as f64 / decode,
    };
    drop(model);

    let job = std::env::temp_dir().join(format!("llm-bench-peer-{}.json", std::process::id()));
    let spec = serde_json::json!({
        "model": args.model.display().to_string(),
        "prompt_ids": ids,
        "decode_tokens": n,
        "runs": args.runs,
        "threads": threads,
    });
    std::fs::write(&job, spec.to_string()).expect("the peer's job file");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/llama_cpp_peer.py");
    let out = std::process::Command::new(python)
        .arg(script)
        .arg(&job)
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", python.display()));
    let _ = std::fs::remove_file(&job);
    if !out.status.success() {
        panic!(
            "the llama.cpp peer failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("the peer's JSON");
    let f = |k: &str| v[k].as_f64().unwrap_or(f64::NAN);
    let theirs = PeerRun {
        version: format!("llama-cpp-python {}", v["version"].as_str().unwrap_or("?")),
        load_secs: f("load_secs"),
        prefill_tokens: f("prefill_tokens") as usize,
        prefill_rate: f("prefill_tok_per_sec"),
        decode_tokens: f("decode_tokens") as usize,
        decode_rate: f("decode_tok_per_sec"),
    };
    (ours, theirs)
}

/// The prefill task's text: `--prompt-words` words to summarise.
fn prefill_text(args: &Args) -> String {
    let words = "the quick brown fox jumps over the lazy dog while the band plays on"
        .split_whitespace()
        .cycle()
        .take(args.prompt_words)
        .collect::<Vec<_>>()
        .join(" ");
    format!("Summarise: {words}")
}
