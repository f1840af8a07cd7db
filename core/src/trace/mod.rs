//! Record and replay: the trace format (v1) of a worker session, and its replayer.
//!
//! The worker machine is deterministic: the same configuration and the same timed inputs
//! give the same commands. So a session is fully described by its configuration and its
//! inputs, and a recording only needs a *fingerprint* of the commands to tell, on replay,
//! whether the machine still does what it did.
//!
//! This module is pure like the rest of the core: it formats and parses lines of text; the
//! shells (and the fleet simulation, the fuzzer) open the files and read the clocks.
//!
//! # Format (JSON lines)
//!
//! The first line is the header:
//!
//! ```text
//! {"kind":"header","format":"studio-worker-trace","version":1,"crateVersion":"0.1.0",
//!  "shell":"sync","seed":7,"startMono":0,"startWall":1700000000000,"config":{...}}
//! ```
//!
//! `config` is the [`WorkerConfig`] the machine was built with, as serde JSON, redacted.
//! `shell` names the recorder (`sync`, `async`, `sim`, `fuzz`, ...); `seed` is the jitter
//! seed (also inside `config`), `startMono` / `startWall` the clocks when recording began.
//!
//! Every further line is one step, one `Worker::handle` call and the drain after it:
//!
//! ```text
//! {"kind":"step","step":1,"mono":12,"wall":1700000000000,"input":"Start","commands":"3f9a..."}
//! ```
//!
//! `step` counts from 1 without gaps; `mono` / `wall` are the exact [`Now`] passed to
//! `handle`; `input` is the [`Input`] as serde JSON, redacted (a frame is an
//! `Input::Frame` with its raw text); `commands` is [`commands_hash`] of every command the
//! drain produced, the final `Wait` included. A drain whose `handle` returned a
//! [`crate::worker::UsageError`] is recorded the same way (the machine is unchanged and the
//! drain yields what it yields); the replayer does exactly the same.
//!
//! # Redaction, and why a redacted trace still replays exactly
//!
//! A trace must never hold a token or a secret, yet it must replay to identical hashes.
//! Both follow from applying **one** function, [`redact`], on both sides:
//!
//! * when recording, to the configuration, to every input and to the commands before they
//!   are hashed;
//! * when replaying, to the configuration and inputs as read (a no-op on a recorded trace:
//!   redaction is idempotent) and again to the commands the replayed machine produces
//!   before they are hashed.
//!
//! [`redact`] replaces the string value of every key in [`MASKED_KEYS`] (tokens, bearer
//! values, registration secrets and the secret's hash) by `"***"`, and passes every other
//! string (frame text, HTTP bodies, upgrade error bodies, a task's URLs) through
//! [`redact_json`], which masks the same kind of keys inside JSON text however they are
//! spelled, JSON quoted inside strings, and the query and fragment of every URL (signed
//! URLs carry credentials there). A string the machine copies from a frame into a command
//! (a task's `inputUrl` into a `Dispatch`) is thus masked the same way on both sides.
//!
//! So the replayed machine runs on `"***"` where the recorded one had a real token or
//! secret. The machine never decides anything on the *value* of a secret: it only copies
//! it into commands (a `Connect`'s token, a `hello`'s `authToken`, a poll's bearer, a
//! `Persist`) or derives the registration secret hash from it. Every one of those places
//! is a masked key, so both runs hash `"***"` there: the replayed machine computes the
//! hash of `"***"` instead of the real secret's, and that field is masked before hashing.
//! Empty strings and `null`s are left as they are (masking them would change behaviour:
//! an absent secret is not a present one, and an empty minted secret is a usage error).
//!
//! One limit: a masked key inside *structured* data the machine copies elsewhere without
//! masking (say an engine's JSON result with a `"secret"` field, which goes out inside a
//! `completeJson` frame text) would replay differently. No input of the protocol does that.
//!
//! # Canonical command JSON
//!
//! [`commands_hash`] is the lowercase hex SHA-256 of the commands as a JSON array, written
//! canonically: object keys sorted, no whitespace, serde_json's number and string forms.
//! It does not depend on serde_json's `preserve_order` feature, so a crate built without
//! it (the fuzzer) writes the same hashes as the shells.
//!
//! # Errors
//!
//! A malformed trace is a [`TraceError`] naming the line ("the trace is bad"); a trace that
//! replays to different commands is a [`Divergence`] in the [`ReplayReport`] ("the core
//! diverged"), showing the step, its input, both hashes and the commands the replay
//! produced.

use std::fmt;
use std::fmt::Write as _;

use serde::Serialize;
use serde_json::Value;

use crate::secret::redact_json;
use crate::time::{Mono, WallMs};
use crate::wire::sha256_hex;
use crate::worker::{Command, Input, Now, RunId, Worker, WorkerConfig};

/// The `format` field of the header.
pub const FORMAT: &str = "studio-worker-trace";
/// The `version` field of the header this module writes and reads.
pub const VERSION: u64 = 1;
/// What a masked value becomes.
pub const MASK: &str = "***";
/// Keys whose (non-empty string) values [`redact`] replaces by [`MASK`].
pub const MASKED_KEYS: [&str; 8] = [
    "auth_token",
    "authToken",
    "bearer",
    "secret",
    "registration_secret",
    "registrationSecret",
    "registration_secret_hash",
    "registrationSecretHash",
];
/// Redacts a serde JSON value in place (see the module docs). Idempotent.
pub fn redact(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for (key, v) in map.iter_mut() {
                if MASKED_KEYS.contains(&key.as_str()) {
                    if let Value::String(s) = v {
                        if !s.is_empty() {
                            *s = MASK.to_string();
                        }
                        continue;
                    }
                }
                redact(v);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(redact),
        Value::String(s) => {
            let masked = redact_json(s);
            if masked != *s {
                *s = masked;
            }
        }
        _ => {}
    }
}

/// `value` as serde JSON, redacted.
pub fn redacted<T: Serialize>(value: &T) -> Value {
    let mut v = serde_json::to_value(value).expect("core types serialise to JSON");
    redact(&mut v);
    v
}

/// `value` written canonically: object keys sorted, no whitespace.
pub fn canonical_json(value: &Value) -> String {
    let mut out = String::new();
    write_canonical(value, &mut out);
    out
}

fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                write_canonical(v, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(v, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// Lowercase hex SHA-256 of the canonical JSON array of `cmds`, redacted.
pub fn commands_hash(cmds: &[Command]) -> String {
    hash_value(&redacted(&cmds))
}

fn hash_value(v: &Value) -> String {
    sha256_hex(canonical_json(v).as_bytes())
}

/// Feeds `input` at `now` and drains to the final `Wait` (included). The driving step both
/// the recorders and the replayer perform; a usage error is returned beside the drain.
pub fn step(
    worker: &mut Worker,
    now: Now,
    input: Input,
) -> (Vec<Command>, Option<crate::worker::UsageError>) {
    let err = worker.handle(now, input).err();
    let mut cmds = Vec::new();
    loop {
        let c = worker.poll();
        let done = matches!(c, Command::Wait { .. });
        cmds.push(c);
        if done {
            break;
        }
    }
    (cmds, err)
}

/// The first line of a trace.
#[derive(Clone, Debug, PartialEq)]
pub struct TraceHeader {
    /// The version of the crate that recorded it.
    pub crate_version: String,
    /// Who recorded it: `sync`, `async`, `sim`, `fuzz`, ...
    pub shell: String,
    /// The jitter seed (`config.seed`).
    pub seed: u64,
    /// The clocks when recording began.
    pub start: Now,
    /// The machine's configuration (redacted when read back from a trace).
    pub config: WorkerConfig,
}

impl TraceHeader {
    /// A header for a session of `config` recorded by `shell`, starting at `start`.
    pub fn new(shell: &str, config: &WorkerConfig, start: Now) -> TraceHeader {
        TraceHeader {
            crate_version: env!("CARGO_PKG_VERSION").to_string(),
            shell: shell.to_string(),
            seed: config.seed,
            start,
            config: config.clone(),
        }
    }
}

/// One step line, as read back.
#[derive(Clone, Debug, PartialEq)]
pub struct TraceStep {
    /// 1-based, without gaps.
    pub step: u64,
    /// The exact time passed to `handle`.
    pub now: Now,
    /// The input (redacted).
    pub input: Input,
    /// The input as it stands in the trace (redacted JSON).
    pub input_json: Value,
    /// The expected [`commands_hash`].
    pub commands: String,
    /// 1-based line number in the trace text.
    pub line: usize,
}

/// A whole trace, parsed.
#[derive(Clone, Debug, PartialEq)]
pub struct Trace {
    pub header: TraceHeader,
    pub steps: Vec<TraceStep>,
}

/// Formats trace lines (no trailing newline). Keeps the step counter for
/// [`TraceWriter::record`]; [`TraceWriter::step_line`] takes an explicit step number.
#[derive(Clone, Debug, Default)]
pub struct TraceWriter {
    next_step: u64,
}

impl TraceWriter {
    /// A writer whose first recorded step is 1.
    pub fn new() -> TraceWriter {
        TraceWriter { next_step: 1 }
    }

    /// The header line (config redacted).
    pub fn header_line(&self, header: &TraceHeader) -> String {
        format!(
            "{{\"kind\":\"header\",\"format\":{},\"version\":{VERSION},\"crateVersion\":{},\
             \"shell\":{},\"seed\":{},\"startMono\":{},\"startWall\":{},\"config\":{}}}",
            Value::from(FORMAT),
            Value::from(header.crate_version.as_str()),
            Value::from(header.shell.as_str()),
            header.seed,
            header.start.mono.0,
            header.start.wall.0,
            redacted(&header.config),
        )
    }

    /// The line of step `step`: `input` fed at `now` produced `cmds` (the whole drain, the
    /// final `Wait` included).
    pub fn step_line(&self, step: u64, now: Now, input: &Input, cmds: &[Command]) -> String {
        step_line_raw(step, now, &redacted(input), &commands_hash(cmds))
    }

    /// [`TraceWriter::step_line`] with the next step number (1, 2, ...).
    pub fn record(&mut self, now: Now, input: &Input, cmds: &[Command]) -> String {
        if self.next_step == 0 {
            self.next_step = 1;
        }
        let line = self.step_line(self.next_step, now, input, cmds);
        self.next_step += 1;
        line
    }

    /// How many steps [`TraceWriter::record`] has written.
    pub fn steps(&self) -> u64 {
        self.next_step.saturating_sub(1)
    }
}

fn step_line_raw(step: u64, now: Now, input: &Value, hash: &str) -> String {
    format!(
        "{{\"kind\":\"step\",\"step\":{step},\"mono\":{},\"wall\":{},\"input\":{input},\
         \"commands\":\"{hash}\"}}",
        now.mono.0, now.wall.0
    )
}

/// The trace is malformed (not: the core diverged, see [`Divergence`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceError {
    /// 1-based line number (0: the trace as a whole, e.g. empty).
    pub line: usize,
    pub message: String,
}

impl fmt::Display for TraceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "bad trace: {}", self.message)
        } else {
            write!(f, "bad trace: line {}: {}", self.line, self.message)
        }
    }
}

impl std::error::Error for TraceError {}

fn bad(line: usize, message: impl Into<String>) -> TraceError {
    TraceError {
        line,
        message: message.into(),
    }
}

fn field<'a>(obj: &'a Value, key: &str, line: usize) -> Result<&'a Value, TraceError> {
    obj.get(key)
        .ok_or_else(|| bad(line, format!("missing field `{key}`")))
}

fn u64_field(obj: &Value, key: &str, line: usize) -> Result<u64, TraceError> {
    field(obj, key, line)?
        .as_u64()
        .ok_or_else(|| bad(line, format!("field `{key}` is not an unsigned integer")))
}

fn str_field<'a>(obj: &'a Value, key: &str, line: usize) -> Result<&'a str, TraceError> {
    field(obj, key, line)?
        .as_str()
        .ok_or_else(|| bad(line, format!("field `{key}` is not a string")))
}

/// Parses a trace (header, then steps; blank lines are skipped). Configuration and inputs
/// are redacted as they are read.
pub fn parse(text: &str) -> Result<Trace, TraceError> {
    let mut header: Option<TraceHeader> = None;
    let mut steps = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        if raw.trim().is_empty() {
            continue;
        }
        let obj: Value =
            serde_json::from_str(raw).map_err(|e| bad(line, format!("not JSON: {e}")))?;
        if !obj.is_object() {
            return Err(bad(line, "not a JSON object"));
        }
        let kind = str_field(&obj, "kind", line)?;
        match (kind, &header) {
            ("header", None) => header = Some(parse_header(&obj, line)?),
            ("header", Some(_)) => return Err(bad(line, "a second header")),
            ("step", None) => return Err(bad(line, "a step before the header")),
            ("step", Some(_)) => {
                let s = parse_step(&obj, line)?;
                let want = steps.len() as u64 + 1;
                if s.step != want {
                    return Err(bad(
                        line,
                        format!("step {} where step {want} was expected", s.step),
                    ));
                }
                steps.push(s);
            }
            (other, _) => return Err(bad(line, format!("unknown kind `{other}`"))),
        }
    }
    let header = header.ok_or_else(|| bad(0, "no header line (the trace is empty)"))?;
    Ok(Trace { header, steps })
}

fn parse_header(obj: &Value, line: usize) -> Result<TraceHeader, TraceError> {
    let format = str_field(obj, "format", line)?;
    if format != FORMAT {
        return Err(bad(line, format!("format `{format}` is not `{FORMAT}`")));
    }
    let version = u64_field(obj, "version", line)?;
    if version != VERSION {
        return Err(bad(
            line,
            format!("trace version {version}; this build reads version {VERSION}"),
        ));
    }
    let mut config = field(obj, "config", line)?.clone();
    redact(&mut config);
    let config: WorkerConfig = serde_json::from_value(config)
        .map_err(|e| bad(line, format!("`config` is not a worker configuration: {e}")))?;
    Ok(TraceHeader {
        crate_version: str_field(obj, "crateVersion", line)?.to_string(),
        shell: str_field(obj, "shell", line)?.to_string(),
        seed: u64_field(obj, "seed", line)?,
        start: Now::new(
            Mono(u64_field(obj, "startMono", line)?),
            WallMs(u64_field(obj, "startWall", line)?),
        ),
        config,
    })
}

fn parse_step(obj: &Value, line: usize) -> Result<TraceStep, TraceError> {
    let mut input_json = field(obj, "input", line)?.clone();
    redact(&mut input_json);
    let input: Input = serde_json::from_value(input_json.clone())
        .map_err(|e| bad(line, format!("`input` is not a worker input: {e}")))?;
    let commands = str_field(obj, "commands", line)?;
    if commands.len() != 64
        || !commands
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(bad(line, "`commands` is not a lowercase hex SHA-256"));
    }
    Ok(TraceStep {
        step: u64_field(obj, "step", line)?,
        now: Now::new(
            Mono(u64_field(obj, "mono", line)?),
            WallMs(u64_field(obj, "wall", line)?),
        ),
        input,
        input_json,
        commands: commands.to_string(),
        line,
    })
}

/// The first step whose replayed commands differ from the recording.
#[derive(Clone, Debug, PartialEq)]
pub struct Divergence {
    pub step: u64,
    /// 1-based line of the step in the trace.
    pub line: usize,
    pub now: Now,
    /// The step's input (redacted JSON).
    pub input: Value,
    /// The recorded hash (the recording keeps no more of the expected side).
    pub expected_hash: String,
    pub actual_hash: String,
    /// The commands the replay produced (redacted JSON array).
    pub actual_commands: Value,
}

impl fmt::Display for Divergence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "the core diverged at step {} (line {}, mono {}, wall {})",
            self.step, self.line, self.now.mono, self.now.wall.0
        )?;
        writeln!(f, "  input:    {}", self.input)?;
        writeln!(f, "  expected: commands hash {}", self.expected_hash)?;
        writeln!(f, "  actual:   commands hash {}", self.actual_hash)?;
        writeln!(f, "  actual commands:")?;
        if let Value::Array(cmds) = &self.actual_commands {
            for c in cmds {
                writeln!(f, "    {c}")?;
            }
        }
        Ok(())
    }
}

/// What [`replay`] found.
#[derive(Clone, Debug, PartialEq)]
pub struct ReplayReport {
    /// Steps replayed (up to and including a divergent one).
    pub steps: u64,
    /// The first divergence; `None`: the core reproduced every step.
    pub first_divergence: Option<Divergence>,
}

impl ReplayReport {
    /// Whether every step reproduced its hash.
    pub fn is_ok(&self) -> bool {
        self.first_divergence.is_none()
    }
}

impl fmt::Display for ReplayReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.first_divergence {
            None => write!(f, "replayed {} steps: OK", self.steps),
            Some(d) => write!(f, "replayed {} steps: DIVERGED\n{d}", self.steps),
        }
    }
}

/// One replayed step: the commands and their hash.
struct Replayed {
    cmds: Value,
    hash: String,
}

fn replay_steps(trace: &Trace, mut visit: impl FnMut(&TraceStep, &Replayed) -> bool) {
    let mut worker = Worker::new(trace.header.config.clone());
    for s in &trace.steps {
        let input = replayed_input(&worker, s);
        let (cmds, _err) = step(&mut worker, s.now, input);
        let cmds = redacted(&cmds);
        let hash = hash_value(&cmds);
        if !visit(s, &Replayed { cmds, hash }) {
            break;
        }
    }
}

/// The input of step `s` as the replayed `worker` gets it. A `JobFinished` recorded before
/// run ids existed names no run (it reads as `RunId(0)`, never issued); the shells then
/// fed only the result of the run in flight, so it is given that run.
fn replayed_input(worker: &Worker, s: &TraceStep) -> Input {
    match &s.input {
        Input::JobFinished {
            job_id,
            run: RunId(0),
            outcome,
        } if s.input_json.pointer("/JobFinished/run").is_none() => Input::JobFinished {
            job_id: job_id.clone(),
            run: worker.current_run().unwrap_or_default(),
            outcome: outcome.clone(),
        },
        other => other.clone(),
    }
}

/// Replays a trace: a fresh machine from the header's configuration, every step's input at
/// its time, the drain's hash compared with the recorded one. Stops at the first
/// divergence.
pub fn replay(text: &str) -> Result<ReplayReport, TraceError> {
    let trace = parse(text)?;
    let mut report = ReplayReport {
        steps: 0,
        first_divergence: None,
    };
    replay_steps(&trace, |s, r| {
        report.steps += 1;
        if r.hash != s.commands {
            report.first_divergence = Some(Divergence {
                step: s.step,
                line: s.line,
                now: s.now,
                input: s.input_json.clone(),
                expected_hash: s.commands.clone(),
                actual_hash: r.hash.clone(),
                actual_commands: r.cmds.clone(),
            });
            return false;
        }
        true
    });
    Ok(report)
}

/// A readable transcript: per step, the time since the start, the input and the commands
/// the replay produced (marked `!!` where the hash differs from the recording).
pub fn explain(text: &str) -> Result<String, TraceError> {
    let trace = parse(text)?;
    let h = &trace.header;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "trace v{VERSION} recorded by {} (crate {}), seed {}, start mono {} wall {}, {} steps",
        h.shell,
        h.crate_version,
        h.seed,
        h.start.mono,
        h.start.wall.to_rfc3339(),
        trace.steps.len()
    );
    let start = h.start.mono;
    let mut diverged = 0;
    replay_steps(&trace, |s, r| {
        let t = s.now.mono.saturating_since(start);
        let mark = if r.hash == s.commands { "  " } else { "!!" };
        if mark == "!!" {
            diverged += 1;
        }
        let _ = writeln!(
            out,
            "{mark}#{:<5} +{:>6}.{:03}s  {}",
            s.step,
            t.as_secs(),
            t.subsec_millis(),
            summarize_input(&s.input_json)
        );
        if let Value::Array(cmds) = &r.cmds {
            for c in cmds {
                let _ = writeln!(out, "          -> {}", summarize_command(c));
            }
        }
        true
    });
    let _ = writeln!(
        out,
        "{}",
        if diverged == 0 {
            "every step reproduces its recorded hash".to_string()
        } else {
            format!("{diverged} step(s) marked !! differ from the recording")
        }
    );
    Ok(out)
}

/// The trace with every step's `commands` hash replaced by the replay's (after an intended
/// change of behaviour). The header and inputs are kept (inputs re-written redacted).
pub fn bless(text: &str) -> Result<String, TraceError> {
    let trace = parse(text)?;
    let mut out = String::new();
    for raw in text.lines() {
        if !raw.trim().is_empty() {
            out.push_str(raw);
            out.push('\n');
            break;
        }
    }
    replay_steps(&trace, |s, r| {
        out.push_str(&step_line_raw(s.step, s.now, &s.input_json, &r.hash));
        out.push('\n');
        true
    });
    Ok(out)
}

/// The variant name of an externally tagged enum value and its content.
fn variant(v: &Value) -> (&str, Option<&Value>) {
    match v {
        Value::String(s) => (s.as_str(), None),
        Value::Object(m) if m.len() == 1 => {
            let (k, inner) = m.iter().next().expect("one entry");
            (k.as_str(), Some(inner))
        }
        _ => ("?", None),
    }
}

/// `"type"` of a frame's text, or its first characters.
fn frame_kind(text: &str) -> String {
    match serde_json::from_str::<Value>(text) {
        Ok(v) => v
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("?")
            .to_string(),
        Err(_) => {
            let short: String = text.chars().take(32).collect();
            format!("(not JSON) {short:?}")
        }
    }
}

fn conn_of(inner: Option<&Value>) -> String {
    inner
        .and_then(|i| i.get("conn"))
        .map(|c| format!(" conn#{c}"))
        .unwrap_or_default()
}

fn summarize_input(v: &Value) -> String {
    let (name, inner) = variant(v);
    let conn = conn_of(inner);
    match (name, inner) {
        ("Frame", Some(i)) => format!(
            "Frame{conn} {}",
            frame_kind(i.get("text").and_then(Value::as_str).unwrap_or(""))
        ),
        ("Http", Some(i)) => {
            let id = i.get("id").cloned().unwrap_or(Value::Null);
            let (kind, res) = variant(i.get("result").unwrap_or(&Value::Null));
            let status = res
                .and_then(|r| r.get("status"))
                .map(|s| format!(" {s}"))
                .unwrap_or_default();
            format!("Http #{id} {kind}{status}")
        }
        ("JobFinished", Some(i)) => {
            let (kind, _) = variant(i.get("outcome").unwrap_or(&Value::Null));
            format!(
                "JobFinished {} {kind}",
                i.get("job_id").and_then(Value::as_str).unwrap_or("?")
            )
        }
        (_, Some(i)) => {
            let s = i.to_string();
            let short: String = s.chars().take(80).collect();
            let more = if s.chars().count() > 80 { "..." } else { "" };
            format!("{name}{conn} {short}{more}")
        }
        (_, None) => name.to_string(),
    }
}

fn summarize_command(v: &Value) -> String {
    let (name, inner) = variant(v);
    let conn = conn_of(inner);
    match (name, inner) {
        ("Send", Some(i)) => format!(
            "Send{conn} {}",
            frame_kind(i.get("text").and_then(Value::as_str).unwrap_or(""))
        ),
        ("Http", Some(i)) => {
            let id = i.get("id").cloned().unwrap_or(Value::Null);
            let (kind, _) = variant(i.get("request").unwrap_or(&Value::Null));
            format!("Http #{id} {kind}")
        }
        ("Dispatch", Some(i)) => format!(
            "Dispatch {}",
            i.pointer("/claim/jobId")
                .and_then(Value::as_str)
                .unwrap_or("?")
        ),
        ("Report", Some(i)) => format!(
            "Report {} {}: {}",
            i.get("level").and_then(Value::as_str).unwrap_or("?"),
            i.get("category").and_then(Value::as_str).unwrap_or("?"),
            i.get("message").and_then(Value::as_str).unwrap_or("")
        ),
        ("Wait", Some(i)) => match i.get("until").and_then(Value::as_u64) {
            Some(u) => format!("Wait until {}", Mono(u)),
            None => "Wait (no timer)".to_string(),
        },
        (_, Some(i)) => format!("{name}{conn} {i}"),
        (_, None) => name.to_string(),
    }
}

#[cfg(test)]
mod tests;
