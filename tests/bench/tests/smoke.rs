//! Runs every measurement with tiny parameters so the bench cannot rot. Asserts that
//! numbers are produced and sane (positive, finite), never how fast anything is.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use studio_bench::machine::Machine;
use studio_bench::measure::JobOptions;
use studio_bench::report::Report;
use studio_bench::stats::Summary;
use studio_bench::{bench_binary, echo, Options};

/// The worker binary: `$STUDIO_BENCH_BIN`, else the `studio-worker` cargo built next to
/// this test (`cargo test --workspace` builds it for its own tests), else one built now.
fn worker_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("STUDIO_BENCH_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().unwrap();
    // <target>/<profile>/deps/smoke-<hash>
    let profile_dir = exe.parent().and_then(Path::parent).unwrap();
    let sibling = profile_dir.join(format!("studio-worker{}", std::env::consts::EXE_SUFFIX));
    if sibling.is_file() {
        return sibling;
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "build",
            "-p",
            "studio-worker",
            "--bin",
            "studio-worker",
            "--message-format=json",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run cargo build -p studio-worker");
    assert!(
        out.status.success(),
        "cargo build -p studio-worker failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v.get("executable")?.as_str().map(PathBuf::from))
        .find(|p| p.file_stem().is_some_and(|s| s == "studio-worker"))
        .expect("cargo reported no studio-worker executable")
}

fn sane(s: &Option<Summary>, what: &str) {
    let s = s.as_ref().unwrap_or_else(|| panic!("{what}: no samples"));
    assert!(s.is_sane(), "{what}: {s:?}");
    assert!(s.median_us > 0.0, "{what}: {s:?}");
}

#[test]
fn echo_baseline_produces_round_trips() {
    let samples = echo::echo_round_trips(20, 600).unwrap();
    assert_eq!(samples.len(), 20);
    sane(&Summary::of(&samples), "echo");
}

#[test]
fn every_measurement_produces_sane_numbers() {
    let bin = worker_bin();
    let opts = Options {
        settle: Duration::from_millis(200),
        idle: Duration::from_secs(1),
        jobs: JobOptions {
            n: 2,
            warmup: 1,
            poll_every: Duration::from_micros(50),
            timeout: Duration::from_secs(30),
        },
        echo_n: 20,
        echo_bytes: 600,
    };
    let echo = Summary::of(&echo::echo_round_trips(opts.echo_n, opts.echo_bytes).unwrap());
    sane(&echo, "echo");
    let mut progress = |s: &str| eprintln!("smoke: {s}");
    let r = bench_binary("studio-worker", &bin, &opts, &mut progress).unwrap();

    assert!(r.size.bytes > 0);
    assert!(r.connect_time > Duration::ZERO);
    assert!(r.idle.memory.rss_kib > 0 && r.idle.memory.hwm_kib >= r.idle.memory.rss_kib);
    assert!(r.idle.memory.threads >= 1);
    assert!(!r.idle.threads.is_empty());
    let w = r.idle.wakeups_per_minute();
    assert!(w.is_finite() && w >= 0.0, "{w}");
    if let Some(cpu) = r.idle.cpu_us_per_minute() {
        assert!(cpu.is_finite() && cpu >= 0.0, "{cpu}");
    }
    assert!(r.after_jobs.rss_kib > 0);
    assert_eq!(r.kinds.len(), studio_bench::KINDS.len());
    for k in &r.kinds {
        let kind = k.direct.kind;
        assert_eq!(k.direct.submit_to_done.len(), 2, "{kind}");
        sane(
            &Summary::of(&k.direct.submit_to_done),
            "submit -> completed",
        );
        sane(
            &Summary::of(&k.tapped.submit_to_done),
            "tapped submit -> completed",
        );
        sane(&Summary::of(&k.tap.offer_to_result), "offer -> result");
        sane(&Summary::of(&k.tap.offer_to_accept), "offer -> accept");
        assert_eq!(k.tap.missing, 0, "{kind}: the tap missed events");
        assert!(k.tap.offer_bytes.iter().all(|&b| b > 0));
        assert!(k.direct.polls_per_job >= 1.0);
        let cost = k.direct.cost.as_ref().expect("worker cost sampled");
        assert!(cost.process_cpu_us_per_job().is_finite());
        assert!(cost.minflt_per_job().is_finite());
    }

    let mut engine = Vec::new();
    for kind in studio_bench::KINDS {
        let s = Summary::of(&studio_bench::measure::engine_baseline(kind, 2).unwrap());
        sane(&s, "engine alone");
        engine.push((kind, s.unwrap()));
    }
    let machine_alone = Summary::of(&studio_bench::measure::machine_baseline(3));
    sane(&machine_alone, "machine alone");
    let relayed = Summary::of(&studio_bench::echo::relay_round_trips_on(3, 100, None).unwrap());
    sane(&relayed, "echo through a second thread");
    let report = Report {
        machine: Machine::probe(),
        options: opts,
        command: "smoke".into(),
        source: None,
        echo_medians: vec![echo.as_ref().unwrap().median_us],
        loadavg_at_end: None,
        echo_pinned: None,
        relayed,
        relayed_pinned: None,
        echo: echo.unwrap(),
        engine,
        machine_alone,
        bins: vec![r],
    };
    let table = report.table();
    assert!(table.contains("wakeups/min"), "{table}");
    assert!(
        table.contains("to a second thread and back (unpinned"),
        "{table}"
    );
    assert!(
        table.contains("machine alone: synthetic llm job"),
        "{table}"
    );
    let json = report.to_json();
    assert_eq!(
        json["machine_alone_llm_job"]["n"].as_u64(),
        Some(3),
        "{json}"
    );
    assert!(
        json["echo_round_trip_through_a_second_thread"]["n"].as_u64() == Some(3),
        "{json}"
    );
    let bin0 = &json["binaries"][0];
    assert!(bin0["size"]["bytes"].as_u64().unwrap() > 0);
    assert!(bin0["idle"]["memory"]["vm_rss_kib"].as_u64().unwrap() > 0);
    for job in bin0["jobs"].as_array().unwrap() {
        let ratio = job["ratio_submit_to_completed_over_echo"].as_f64().unwrap();
        assert!(ratio.is_finite() && ratio > 0.0, "{ratio}");
    }
    assert!(json["machine"]["logical_cpus"].as_u64().unwrap() >= 1);
}
