//! The table on stdout and the JSON file.

use std::fmt::Write as _;

use serde_json::{json, Value};

use studio_core::wire::TaskKind;

use crate::machine::Machine;
use crate::measure::{median_bytes, MIB};
use crate::stats::{fmt_us, group, round1, Summary};
use crate::{BinReport, Options};

/// Other processes' share of all CPUs above which the table carries a note.
pub const OTHERS_WARN: f64 = 0.10;

/// A whole run.
#[derive(Clone, Debug)]
pub struct Report {
    pub machine: Machine,
    pub options: Options,
    /// The command line, for the record.
    pub command: String,
    /// The workspace's git revision ([`crate::machine::source_revision`]).
    pub source: Option<String>,
    pub echo: Summary,
    /// The echo medians of the run's start and end (`echo` pools both).
    pub echo_medians: Vec<f64>,
    /// The echo with client and server pinned to one CPU (None: pinning failed).
    pub echo_pinned: Option<Summary>,
    /// The echo with each message handed to a second thread and back on the server's side
    /// (`echo::relay_round_trips_on`): unpinned, and all three threads on one CPU.
    pub relayed: Option<Summary>,
    pub relayed_pinned: Option<Summary>,
    /// /proc/loadavg at the end of the run.
    pub loadavg_at_end: Option<String>,
    /// The synthetic engine alone, in this process, per kind.
    pub engine: Vec<(TaskKind, Summary)>,
    /// The worker machine alone on synthetic llm jobs (`measure::machine_baseline`).
    pub machine_alone: Option<Summary>,
    pub bins: Vec<BinReport>,
}

fn ratio(a: Option<f64>, b: f64) -> Option<f64> {
    a.filter(|_| b > 0.0).map(|a| a / b)
}

fn kib(k: u64) -> String {
    format!("{} KiB ({:.1} MiB)", group(k), k as f64 / 1024.0)
}

/// Machine-wide CPU use and the part of it other processes took, in % of all CPUs.
fn pct(load: Option<crate::procfs::LoadShare>) -> String {
    load.map_or_else(
        || "?".into(),
        |l| {
            format!(
                "{:.1} % / {:.1} % of all CPUs",
                l.machine * 100.0,
                l.others * 100.0
            )
        },
    )
}

fn opt_cell(s: Option<Summary>) -> String {
    s.map_or_else(|| "-".into(), |s| s.cell())
}

fn ratio_cell(r: Option<f64>) -> String {
    r.map_or_else(|| "-".into(), |r| format!("{r:.2}x"))
}

impl Report {
    /// The engine-alone median of `kind`.
    pub fn engine_median(&self, kind: TaskKind) -> Option<f64> {
        self.engine
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, s)| s.median_us)
    }

    /// Median job time / median echo round trip, per binary and kind: (direct submit ->
    /// completed, tapped offer -> result).
    pub fn ratios(&self, bin: &BinReport, kind: usize) -> (Option<f64>, Option<f64>) {
        let k = &bin.kinds[kind];
        let echo = self.echo.median_us;
        (
            ratio(
                Summary::of(&k.direct.submit_to_done).map(|s| s.median_us),
                echo,
            ),
            ratio(
                Summary::of(&k.tap.offer_to_result).map(|s| s.median_us),
                echo,
            ),
        )
    }

    /// The human-readable report.
    pub fn table(&self) -> String {
        let m = &self.machine;
        let o = &self.options;
        let mut out = String::new();
        let _ = writeln!(out, "studio-bench  {}", m.date_utc);
        let _ = writeln!(
            out,
            "machine: {} | {} logical CPUs ({} usable) | {} | kernel {} | {} | {}",
            m.cpu_model,
            m.logical_cpus,
            m.available_parallelism,
            m.mem_total_kib.map_or_else(
                || "? RAM".into(),
                |k| format!("{:.1} GiB RAM", k as f64 / MIB)
            ),
            m.kernel,
            format_args!("{}/{}", m.os, m.arch),
            m.rustc.as_deref().unwrap_or("rustc: n/a"),
        );
        let _ = writeln!(out, "command: {}", self.command);
        let _ = writeln!(
            out,
            "load average (1/5/15 min) at start: {}, at end: {}",
            m.loadavg.as_deref().unwrap_or("?"),
            self.loadavg_at_end.as_deref().unwrap_or("?")
        );
        if let Some(src) = &self.source {
            let _ = writeln!(out, "source: {src}");
        }
        let _ = writeln!(
            out,
            "settings: idle window {} s (after {} s settle), {} jobs per kind (+{} warm-up), \
             poll sleep {} us, echo {} x {} B",
            o.idle.as_secs_f64(),
            o.settle.as_secs_f64(),
            o.jobs.n,
            o.jobs.warmup,
            o.jobs.poll_every.as_micros(),
            o.echo_n,
            o.echo_bytes
        );
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "transport baseline: tungstenite WebSocket echo round trip, loopback, {} B text, \
             n={}: min/med/p95/max = {} us (medians of the runs at start / end: {})",
            o.echo_bytes,
            self.echo.n,
            self.echo.cell(),
            self.echo_medians
                .iter()
                .map(|m| format!("{} us", fmt_us(*m)))
                .collect::<Vec<_>>()
                .join(" / ")
        );
        if let Some(p) = &self.echo_pinned {
            let _ = writeln!(
                out,
                "                    the same, both threads pinned to CPU 0 (no cross-CPU wakeups): \
                 min/med/p95/max = {} us",
                p.cell()
            );
        }
        for (s, how) in [
            (&self.relayed, "unpinned"),
            (&self.relayed_pinned, "all three threads pinned to CPU 0"),
        ] {
            if let Some(s) = s {
                let _ = writeln!(
                    out,
                    "                    the same, the server handing each message to a second thread \
                     and back ({how}; a job's four wake-ups, no work): min/med/p95/max = {} us",
                    s.cell()
                );
            }
        }
        for (kind, s) in &self.engine {
            let _ = writeln!(
                out,
                "engine alone: synthetic {kind} render in this process, n={}: min/med/p95/max = {} us",
                s.n,
                s.cell()
            );
        }
        if let Some(s) = &self.machine_alone {
            let _ = writeln!(
                out,
                "machine alone: synthetic llm job through the worker's core in this process (no I/O, \
                 no threads), n={}: min/med/p95/max = {} us, mean {:.1} us",
                s.n,
                s.cell(),
                s.mean_us
            );
        }
        let _ = writeln!(out);

        let mut rows: Vec<(String, Vec<String>)> = Vec::new();
        let mut row = |name: &str, f: &dyn Fn(&BinReport) -> String| {
            rows.push((name.to_string(), self.bins.iter().map(f).collect()));
        };
        row("binary", &|b| b.path.display().to_string());
        row("size", &|b| {
            format!(
                "{} B ({:.2} MiB)",
                group(b.size.bytes),
                b.size.bytes as f64 / MIB
            )
        });
        row("strip would remove", &|b| match b.size.strip_removes() {
            Some(n) => format!("{} B", group(n)),
            None => b.size.strip_note.clone().unwrap_or_else(|| "-".into()),
        });
        row("spawn -> session up", &|b| {
            format!("{} us", fmt_us(b.connect_time.as_secs_f64() * 1e6))
        });
        let idle_title = format!("-- idle-connected, {} s window --", o.idle.as_secs_f64());
        row(&idle_title, &|_| String::new());
        row("VmRSS at end of window", &|b| kib(b.idle.memory.rss_kib));
        row("VmHWM (peak RSS)", &|b| kib(b.idle.memory.hwm_kib));
        row("RssAnon / RssFile", &|b| {
            let f = |x: Option<u64>| x.map_or_else(|| "?".into(), group);
            format!(
                "{} / {} KiB",
                f(b.idle.memory.rss_anon_kib),
                f(b.idle.memory.rss_file_kib)
            )
        });
        row("threads", &|b| b.idle.memory.threads.to_string());
        row("wakeups/min (all threads)", &|b| {
            format!("{:.1}", b.idle.wakeups_per_minute())
        });
        row("  busiest thread", &|b| {
            b.idle
                .per_thread_per_minute()
                .first()
                .map_or_else(|| "-".into(), |(n, r)| format!("{r:.1} ({n})"))
        });
        row("CPU while idle", &|b| {
            b.idle
                .cpu_us_per_minute()
                .map_or_else(|| "n/a".into(), |us| format!("{} us/min", fmt_us(us)))
        });
        row("log lines in window", &|b| b.idle.log_lines.to_string());
        row("CPU busy in window: all / others", &|b| pct(b.idle.load));
        for (i, kind) in crate::KINDS.iter().enumerate() {
            let title = format!(
                "-- {kind} jobs, {} sequential (us: min / med / p95 / max) --",
                o.jobs.n
            );
            row(&title, &|_| String::new());
            row("submit -> completed (direct)", &|b| {
                opt_cell(Summary::of(&b.kinds[i].direct.submit_to_done))
            });
            row("  median / echo median", &|b| {
                ratio_cell(self.ratios(b, i).0)
            });
            row("offer -> result (tap)", &|b| {
                opt_cell(Summary::of(&b.kinds[i].tap.offer_to_result))
            });
            row("  median / echo median", &|b| {
                ratio_cell(self.ratios(b, i).1)
            });
            row("  minus engine alone (medians)", &|b| {
                let kind = b.kinds[i].direct.kind;
                match (
                    Summary::of(&b.kinds[i].tap.offer_to_result),
                    self.engine_median(kind),
                ) {
                    (Some(s), Some(e)) => format!("{} us", fmt_us(s.median_us - e)),
                    _ => "-".into(),
                }
            });
            row("  jobs with a logBatch inside", &|b| {
                let t = &b.kinds[i].tap;
                format!(
                    "{} jobs: {}",
                    t.with_log_batch.len(),
                    opt_cell(Summary::of(&t.with_log_batch))
                )
            });
            row("  jobs without", &|b| {
                let t = &b.kinds[i].tap;
                format!(
                    "{} jobs: {}",
                    t.without_log_batch.len(),
                    opt_cell(Summary::of(&t.without_log_batch))
                )
            });
            row("offer -> accept (tap)", &|b| {
                opt_cell(Summary::of(&b.kinds[i].tap.offer_to_accept))
            });
            if b_has_uploads(&self.bins, i) {
                row("offer -> upload connect (tap)", &|b| {
                    opt_cell(Summary::of(&b.kinds[i].tap.offer_to_upload_open))
                });
                row("upload: connect -> body sent (tap)", &|b| {
                    opt_cell(Summary::of(&b.kinds[i].tap.upload_send))
                });
                row("upload: body sent -> 200 (tap)", &|b| {
                    opt_cell(Summary::of(&b.kinds[i].tap.upload_answer))
                });
            }
            row("submit -> completed (tapped)", &|b| {
                opt_cell(Summary::of(&b.kinds[i].tapped.submit_to_done))
            });
            row("studio clock, median (1 ms res.)", &|b| {
                let ms: Vec<f64> = b.kinds[i]
                    .direct
                    .studio_ms
                    .iter()
                    .map(|&m| m as f64)
                    .collect();
                Summary::of_us(&ms).map_or_else(|| "-".into(), |s| format!("{} ms", s.median_us))
            });
            row("first (cold) job", &|b| {
                format!("{} us", fmt_us(b.kinds[i].direct.cold.as_secs_f64() * 1e6))
            });
            row("polls per job / poll period", &|b| {
                let d = &b.kinds[i].direct;
                format!(
                    "{:.1} / {} us",
                    d.polls_per_job,
                    fmt_us(d.poll_period.as_secs_f64() * 1e6)
                )
            });
            row("CPU busy, direct series: all / others", &|b| {
                pct(b.kinds[i].direct.load)
            });
            row("worker CPU per job: process", &|b| {
                b.kinds[i].direct.cost.as_ref().map_or_else(
                    || "-".into(),
                    |c| format!("{} us (10 ms ticks)", fmt_us(c.process_cpu_us_per_job())),
                )
            });
            row("  main thread CPU / switches", &|b| {
                b.kinds[i].direct.cost.as_ref().map_or_else(
                    || "-".into(),
                    |c| {
                        format!(
                            "{} us / {:.1}",
                            c.main_cpu_us_per_job().map_or_else(|| "n/a".into(), fmt_us),
                            c.main_switches_per_job()
                        )
                    },
                )
            });
            row("  minor page faults", &|b| {
                b.kinds[i]
                    .direct
                    .cost
                    .as_ref()
                    .map_or_else(|| "-".into(), |c| format!("{:.1}", c.minflt_per_job()))
            });
            row("logBatch frames in series (tap)", &|b| {
                let f = b.kinds[i]
                    .frames
                    .get("worker->studio logBatch")
                    .copied()
                    .unwrap_or_default();
                format!(
                    "{} frames, {} B total, largest {} B",
                    f.count,
                    group(f.bytes),
                    group(f.max_bytes)
                )
            });
            row("offer frame / result size", &|b| {
                let t = &b.kinds[i].tap;
                let offer: Vec<u64> = t.offer_bytes.iter().map(|&x| x as u64).collect();
                let f = |x: Option<u64>| x.map_or_else(|| "?".into(), group);
                format!(
                    "{} B / {} B",
                    f(median_bytes(&offer)),
                    f(median_bytes(&t.result_bytes))
                )
            });
        }
        row("-- after the direct job series --", &|_| String::new());
        row("VmRSS / VmHWM", &|b| {
            format!(
                "{} / {} KiB",
                group(b.after_jobs.rss_kib),
                group(b.after_jobs.hwm_kib)
            )
        });
        row("worker exits (SIGTERM)", &|b| b.exits.join("; "));

        let mut header = vec![String::new()];
        header.extend(self.bins.iter().map(|b| b.label.clone()));
        let w0 = rows.iter().map(|r| r.0.chars().count()).max().unwrap_or(0);
        let widths: Vec<usize> = (0..self.bins.len())
            .map(|c| {
                rows.iter()
                    .filter(|r| !r.0.starts_with("--"))
                    .map(|r| r.1[c].chars().count())
                    .chain([header[c + 1].chars().count()])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let line = |name: &str, cells: &[String]| {
            let mut s = format!("{name:<w0$}");
            for (c, w) in cells.iter().zip(&widths) {
                let _ = write!(s, " | {c:<w$}");
            }
            s.trim_end().to_string()
        };
        let _ = writeln!(out, "{}", line("", &header[1..]));
        for (name, cells) in &rows {
            if name.starts_with("--") {
                let _ = writeln!(out, "{name}");
            } else {
                let _ = writeln!(out, "{}", line(name, cells));
            }
        }

        for b in &self.bins {
            let others = std::iter::once(b.idle.load)
                .chain(b.kinds.iter().map(|k| k.direct.load))
                .flatten()
                .map(|l| l.others)
                .fold(0.0f64, f64::max);
            if others > OTHERS_WARN {
                let _ = writeln!(out);
                let _ = writeln!(
                    out,
                    "NOTE {}: other processes used up to {:.0} % of all CPUs during the \
                     measurements: wakeup latency, and every job figure with it, is skewed. \
                     Rerun on a quiet machine for figures to keep.",
                    b.label,
                    others * 100.0
                );
            }
            let _ = writeln!(out);
            let _ = writeln!(out, "{}: idle wakeups by thread (per minute)", b.label);
            for t in &b.idle.threads {
                let secs = b.idle.window.as_secs_f64();
                let _ = writeln!(
                    out,
                    "  {:<16} tid {:<8} voluntary {:>6}  involuntary {:>5}  = {:>7.1}/min  cpu {}{}",
                    t.name,
                    t.tid,
                    t.voluntary,
                    t.nonvoluntary,
                    t.switches() as f64 * 60.0 / secs,
                    t.cpu_ns
                        .map_or_else(|| "n/a".into(), |ns| format!("{} us", fmt_us(ns as f64 / 1e3))),
                    if t.existed_at_start { "" } else { " (born in window)" }
                );
            }
            for t in &b.idle.exited {
                let _ = writeln!(
                    out,
                    "  {:<16} tid {:<8} exited in the window",
                    t.name, t.tid
                );
            }
            if !b.idle.frames.is_empty() {
                let _ = writeln!(out, "{}: frames in the idle window (per minute)", b.label);
                for (k, v, max) in b.idle.frames_per_minute() {
                    let _ = writeln!(out, "  {k:<36} {v:>6.1}/min  (largest {} B)", group(max));
                }
            }
            for k in &b.kinds {
                if k.tap.missing > 0 {
                    let _ = writeln!(
                        out,
                        "{}: the tap missed events of {} {} jobs",
                        b.label, k.tap.missing, k.direct.kind
                    );
                }
            }
        }
        out
    }

    pub fn to_json(&self) -> Value {
        let o = &self.options;
        json!({
            "tool": "studio-bench",
            "tool_version": env!("CARGO_PKG_VERSION"),
            "command": self.command,
            "source": self.source,
            "machine": self.machine.to_json(),
            "settings": {
                "settle_s": o.settle.as_secs_f64(),
                "idle_s": o.idle.as_secs_f64(),
                "jobs_per_kind": o.jobs.n,
                "warmup_jobs": o.jobs.warmup,
                "poll_sleep_us": o.jobs.poll_every.as_micros() as u64,
                "echo_n": o.echo_n,
                "echo_bytes": o.echo_bytes,
            },
            "echo_round_trip": self.echo.to_json(),
            "echo_medians_start_end_us": self.echo_medians.iter().map(|m| round1(*m)).collect::<Vec<_>>(),
            "echo_round_trip_pinned_one_cpu": self.echo_pinned.as_ref().map(Summary::to_json),
            "echo_round_trip_through_a_second_thread": self.relayed.as_ref().map(Summary::to_json),
            "echo_round_trip_through_a_second_thread_pinned_one_cpu": self.relayed_pinned.as_ref().map(Summary::to_json),
            "loadavg_at_end": self.loadavg_at_end,
            "engine_alone": self.engine.iter().map(|(k, s)| json!({
                "kind": k.to_string(),
                "render": s.to_json(),
            })).collect::<Vec<_>>(),
            "machine_alone_llm_job": self.machine_alone.as_ref().map(Summary::to_json),
            "binaries": self.bins.iter().map(|b| {
                json!({
                    "label": b.label,
                    "path": b.path.display().to_string(),
                    "size": b.size.to_json(),
                    "spawn_to_session_us": round1(b.connect_time.as_secs_f64() * 1e6),
                    "idle": b.idle.to_json(),
                    "jobs": b.kinds.iter().enumerate().map(|(i, k)| {
                        let (direct, tapped) = self.ratios(b, i);
                        json!({
                            "kind": k.direct.kind.to_string(),
                            "direct": k.direct.to_json(),
                            "tapped": k.tapped.to_json(),
                            "tap": k.tap.to_json(),
                            "tap_frames_during_series": crate::measure::frames_json(&k.frames),
                            "ratio_submit_to_completed_over_echo": direct.map(|r| (r * 100.0).round() / 100.0),
                            "ratio_offer_to_result_over_echo": tapped.map(|r| (r * 100.0).round() / 100.0),
                            "offer_to_result_minus_engine_median_us": Summary::of(&k.tap.offer_to_result)
                                .zip(self.engine_median(k.direct.kind))
                                .map(|(s, e)| round1(s.median_us - e)),
                        })
                    }).collect::<Vec<_>>(),
                    "after_jobs_memory": b.after_jobs.to_json(),
                    "exits": b.exits,
                })
            }).collect::<Vec<_>>(),
        })
    }
}

fn b_has_uploads(bins: &[BinReport], kind: usize) -> bool {
    bins.iter()
        .any(|b| !b.kinds[kind].tap.upload_send.is_empty())
}
