#!/usr/bin/env python3
"""Regenerates the committed seed corpora under fuzz/corpus/<target>/.

    python3 fuzz/seed-corpus.py [--vectors PATH]

* decode_frame: one file per frame of the wire vectors (docs/protocol-vectors.jsonl, or
  --vectors PATH), written the way
  core/tests/vectors.rs feeds them to the codec (compact JSON), plus a few HTTP bodies.
* worker_machine: one file per recorded trace in tests/traces/{sync,async}/, converted to
  the input encoding of fuzz/src/machine/ (Advance + RawFrame / Connected / Tick /
  InputJson operations), plus a few hand-made sessions.
* world: a few knob settings (fuzz/src/world.rs format).
* wav, gguf, ct2, chat_template, local_http, download, redact: small hand-built files
  (`gen-*`) in each target's input format (see the modules of fuzz/src/).

Files with the prefixes `v-`, `http-`, `trace-`, `hand-`, `knobs-`, `gen-` are this script's:
they are replaced. It also (re)writes its own `regression-*` seeds (inputs of core bugs the
fuzzers found, now fixed) by name, and leaves every other file alone, other `regression-*`
seeds included. Needs only Python 3.
"""

import argparse
import json
import os
import struct
import sys

FUZZ = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(FUZZ)
CORPUS = os.path.join(FUZZ, "corpus")
OURS = ("v-", "http-", "trace-", "hand-", "knobs-", "gen-")

# Opcodes of fuzz/src/machine/ops.rs (enum Op, in table order).
OPS = [
    "Advance", "ToDeadline", "Tick", "Connected", "ConnectFailed", "Welcome", "Offer",
    "HeartbeatAck", "CompleteAck", "FailAck", "ErrorFrame", "RawFrame", "BinaryFrame",
    "Disconnected", "Http", "HttpTransport", "Minted", "JobFinished", "Log", "Pause",
    "Resume", "SetThreshold", "SetPresence", "Shutdown", "UpdateChecked", "UpdateApplied",
    "Start", "InputJson", "WallSkew", "Enable", "Disable",
]
OP = {name: i for i, name in enumerate(OPS)}
MAX_OPS = 512


def varint(v):
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        if v == 0:
            out.append(b)
            return bytes(out)
        out.append(b | 0x80)


def string(s):
    data = s.encode("utf-8")
    return varint(len(data)) + data


def compact(value):
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def reset_dir(target):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    for name in os.listdir(d):
        if name.startswith(OURS):
            os.remove(os.path.join(d, name))
    return d


def write(d, name, data):
    if isinstance(data, str):
        data = data.encode("utf-8")
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def vectors_path(arg):
    p = arg or os.path.join(ROOT, "docs", "protocol-vectors.jsonl")
    if not os.path.exists(p):
        sys.exit(f"{p} not found; pass --vectors PATH")
    return p


def decode_frame_seeds(vectors):
    d = reset_dir("decode_frame")
    n = 0
    with open(vectors, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            v = json.loads(line)
            short = {"worker_to_studio": "w2s", "studio_to_worker": "s2w"}[v["dir"]]
            write(d, f"v-{short}-{v['name']}.json", compact(v["frame"]))
            n += 1
    bodies = {
        "http-register-status-pending": {"status": "pending"},
        "http-register-status-approved": {"status": "approved", "workerId": "w-2",
                                          "authToken": "tok-2"},
        "http-register-status-rejected": {"status": "rejected", "reason": "no"},
        "http-register-request-response": {"requestId": "rr-1", "status": "pending"},
    }
    for name, body in bodies.items():
        write(d, name + ".json", compact(body))
        n += 1
    # Regression (fixed in core): an f32 beyond range decoded to infinity, which
    # re-encoded as null and no longer decoded; it now clamps to f32::MAX.
    write(d, "regression-f32-overflow-offer.json",
          '{"type":"offer","claim":{"jobId":"j","gameId":"g","assetName":"a","model":"m",'
          '"vramGbEstimate":1e39,"task":{"kind":"llm","messages":[]},"modelSource":'
          '{"engine":"synthetic","files":[],"cliDefaults":{"cfgScale":1.0,"steps":8,'
          '"width":1,"height":1}}}}')
    return n + 1


def trace_seed(path, record):
    """A recorded trace as a worker_machine input."""
    with open(path, encoding="utf-8") as f:
        lines = [json.loads(l) for l in f if l.strip()]
    header, steps = lines[0], lines[1:]
    cfg = header["config"]
    flags = 0
    if not cfg.get("credentials"):
        flags |= 0x01
    if cfg.get("auto_update_enabled"):
        flags |= 0x02
    if cfg.get("only_when_idle"):
        flags |= 0x04
    if record:
        flags |= 0x80  # record and replay the fuzzed session too
    flags2 = 0
    reg = cfg.get("registration") or {}
    if reg.get("install_id") and reg.get("secret"):
        flags2 |= 0x02
        if reg.get("request_id"):
            flags2 |= 0x04
    if not cfg["timings"]["upload_retries"]:
        flags2 |= 0x08
    out = bytearray([flags, flags2, cfg["seed"] & 0xFF])
    ops = 0
    if steps and steps[0]["input"] == "Start":
        prev = steps[0]["mono"]
        steps = steps[1:]
    else:
        prev = header["startMono"]
    for s in steps:
        if ops >= MAX_OPS - 1:
            break
        delta = s["mono"] - prev
        prev = s["mono"]
        if delta > 0:
            out += bytes([OP["Advance"]]) + varint(delta)
            ops += 1
        inp = s["input"]
        if inp == "Tick":
            out += bytes([OP["Tick"]])
        elif inp == "Start":
            out += bytes([OP["Start"]])
        elif isinstance(inp, dict) and "Connected" in inp and inp["Connected"]["conn"] + 2 < 256:
            out += bytes([OP["Connected"], inp["Connected"]["conn"] + 2])
        elif isinstance(inp, dict) and "Frame" in inp and inp["Frame"]["conn"] + 2 < 256:
            fr = inp["Frame"]
            out += bytes([OP["RawFrame"], fr["conn"] + 2]) + string(fr["text"])
        else:
            out += bytes([OP["InputJson"]]) + string(compact(inp))
        ops += 1
    return bytes(out)


def op(name, *operands):
    out = bytearray([OP[name]])
    for o in operands:
        out += o if isinstance(o, (bytes, bytearray)) else bytes([o])
    return bytes(out)


def hand_sessions():
    adv = lambda us: op("Advance", varint(us))
    # registered, small caps, recorded: connect, welcome, offer, JSON result, ack, heartbeats, stop.
    job = (bytes([0x80, 0, 1]) + op("Connected", 0) + op("Welcome", 0)
           + op("Offer", 0, 0, 1, 0) + op("JobFinished", 0, 0) + op("CompleteAck", 0, 0)
           + adv(6_000_000) + op("ToDeadline") + op("HeartbeatAck", 0) + op("Shutdown")
           + op("ToDeadline"))
    # binary result, upload fails with 500, retried at the timer, then succeeds.
    upload = (bytes([0x00, 0, 2]) + op("Connected", 0) + op("Welcome", 0)
              + op("Offer", 0, 0, 0, 0) + op("JobFinished", 0, 1, b"\x00\x10")
              + op("Http", 0, 6, 5) + op("ToDeadline") + op("Http", 0, 0, 5)
              + op("CompleteAck", 0, 0) + op("Offer", 0, 0, 3, 0))
    # unregistered: mint, register (pending), poll, approved, connect.
    register = (bytes([0x01, 0, 3]) + op("Minted", 1) + op("Http", 0, 0, 0)
                + op("ToDeadline") + op("Http", 0, 0, 1) + op("Connected", 0)
                + op("Welcome", 0) + op("HeartbeatAck", 0))
    # tiny timings: timers firing against each other, reconnects and a read-idle timeout.
    storm = bytes([0x10 | 0x40, 0, 4])
    for _ in range(12):
        storm += op("ToDeadline") + op("Connected", 0) + op("Welcome", 0) + op("ToDeadline")
    storm += op("Disconnected", 0, 4)
    # production caps, auto-update; busy worker: a second offer while the first runs; pause, offer; shutdown mid-job.
    busy = (bytes([0x08 | 0x02, 0, 5]) + op("Connected", 0) + op("Welcome", 0)
            + op("Offer", 0, 0, 2, 0) + op("Offer", 0, 0, 6, 1) + op("Offer", 0, 1, 2, 0)
            + op("Pause") + op("Offer", 0, 0, 1, 0) + op("Resume") + op("Shutdown")
            + op("ToDeadline") + op("JobFinished", 0, 3) + op("ToDeadline"))
    # started disabled (auto_enabled = false): offers rejected until enabled, then disabled
    # again mid-job, paused on top, enabled and resumed.
    disabled = (bytes([0x00, 0x20, 7]) + op("Connected", 0) + op("Welcome", 0)
                + op("Offer", 0, 0, 1, 0) + op("Enable") + op("Offer", 0, 0, 1, 0)
                + op("Disable") + op("Pause") + op("JobFinished", 0, 0) + op("Enable")
                + op("Offer", 0, 0, 1, 0) + op("Resume") + op("Offer", 0, 0, 1, 0))
    # garbage from the studio and a stale connection.
    garbage = (bytes([0x00, 0, 6]) + op("Connected", 0) + op("RawFrame", 0, string("{"))
               + op("ToDeadline") + op("Connected", 0) + op("Connected", 1)
               + op("Welcome", 0) + op("BinaryFrame", 0, varint(4)) + op("ErrorFrame", 0, 2))
    # Regression (fixed in core): a refused NaN threshold was recorded as "gb":null and
    # the recorded trace no longer parsed; it is now recorded as "NaN".
    nan_threshold = bytes([0x80, 0, 0]) + op("SetThreshold", struct.pack("<f", float("nan")))
    # Regression (fixed in core): an upload answered 500 with a body holding
    # "authToken":"..." was echoed unredacted into a Report notice (and the fail error),
    # so the recorded trace did not replay; bodies are now redacted before clipping.
    echoed_body = (bytes([0x80, 0, 0]) + op("Connected", 0) + op("Welcome", 0)
                   + op("Offer", 0, 0, 0, 0) + op("JobFinished", 0, 1, b"\x00\x01")
                   + op("Http", 0, 6, 1))
    return {"regression-nan-threshold-recorded": nan_threshold,
            "regression-upload-error-body-echoed": echoed_body, "hand-job": job, "hand-upload-retry": upload, "hand-register": register,
            "hand-timer-storm": storm, "hand-busy-pause-shutdown": busy,
            "hand-garbage": garbage, "hand-disabled-enabled": disabled}


def worker_machine_seeds():
    d = reset_dir("worker_machine")
    n = 0
    for shell in ("sync", "async"):
        tdir = os.path.join(ROOT, "tests", "traces", shell)
        if not os.path.isdir(tdir):
            continue
        for name in sorted(os.listdir(tdir)):
            if name.endswith(".jsonl"):
                stem = name[: -len(".jsonl")]
                write(d, f"trace-{shell}-{stem}.bin", trace_seed(os.path.join(tdir, name), shell == "sync"))
                n += 1
    for name, data in hand_sessions().items():
        write(d, name + ".bin", data)
        n += 1
    return n


def knobs(seed, workers, jobs, chaos, mask, mean, det):
    return (struct.pack("<Q", seed) + bytes([workers - 1, jobs, chaos - 5])
            + struct.pack("<H", mask) + bytes([mean - 2, det]))


def world_seeds():
    d = reset_dir("world")
    every = (1 << 13) - 1
    link = 0b0000000111111  # drops .. partitions
    engines = 0b1111100000000 | 0b0000001000000  # restarts, engines, uploads, registration
    seeds = {
        "knobs-calm-one-worker": knobs(1, 1, 2, 10, 0, 30, 0),
        "knobs-every-fault": knobs(2, 4, 12, 60, every, 10, 1),
        "knobs-link-faults": knobs(3, 2, 6, 120, link, 5, 0),
        "knobs-engines-uploads-registration": knobs(4, 3, 8, 90, engines, 20, 0),
        "knobs-dense-faults": knobs(5, 4, 12, 90, every, 2, 0),
    }
    # Regressions (fixed in core, 4a3d8b0): before the fix these failed, and passed with
    # the one fault class turned off. Stalls: a stalled connection's late hello displaced
    # the newer session (worker exits on duplicate_worker). Duplicates: a re-delivered
    # result for a job re-offered to the same worker ended in "reject for an accepted job".
    seeds["regression-stalls-stale-hello"] = knobs(770, 4, 12, 124, 0x007F, 5, 0)
    seeds["regression-duplicates-resent-result"] = knobs(65, 4, 12, 124, every, 10, 0)
    for name, data in seeds.items():
        write(d, name + ".bin", data)
    return len(seeds)


# --- engine decoders, the loopback studio, downloads, redaction -------------------------

def wav(rate, channels, bits, frames, fmt=1, byte_rate=None, block=None, extensible=False):
    """A RIFF/WAVE file; `byte_rate`/`block` override the header's (inconsistent) values."""
    width = bits // 8
    block = block if block is not None else channels * width
    byte_rate = byte_rate if byte_rate is not None else rate * block
    data = bytes((i * 37 + 11) & 0xFF for i in range(frames * channels * width))
    if extensible:
        fmt_chunk = struct.pack("<HHIIHHHHIH14s", 0xFFFE, channels, rate & 0xFFFFFFFF,
                                byte_rate & 0xFFFFFFFF, block, bits, 22, bits, 0, fmt,
                                b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71")
    else:
        fmt_chunk = struct.pack("<HHIIHH", fmt, channels, rate & 0xFFFFFFFF,
                                byte_rate & 0xFFFFFFFF, block, bits)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt_chunk)) + fmt_chunk
    body += b"data" + struct.pack("<I", len(data)) + data
    return b"RIFF" + struct.pack("<I", len(body)) + body


def wav_seeds():
    d = reset_dir("wav")
    seeds = {
        "pcm16-stereo-22050": wav(22050, 2, 16, 40),
        "pcm8-mono-8000": wav(8000, 1, 8, 64),
        "pcm24-mono-16000": wav(16000, 1, 24, 20),
        "pcm32-mono-44100": wav(44100, 1, 32, 20),
        "float32-3ch-48000": wav(48000, 3, 32, 10, fmt=3),
        "extensible-2ch-32000": wav(32000, 2, 16, 16, extensible=True),
        # 108 bytes claiming 4 294 967 291 Hz: aborted the worker before the rate limits.
        "crafted-4294967291hz": wav(4294967291, 1, 8, 64, byte_rate=4294967291, block=1),
        "rate-1hz": wav(1, 1, 8, 64),
        "rate-384001hz": wav(384001, 1, 8, 64),
        "channels-64": wav(16000, 64, 8, 1),
        "inconsistent-byte-rate": wav(16000, 1, 16, 8, byte_rate=12345),
    }
    seeds["truncated"] = seeds["pcm16-stereo-22050"][:70]
    for name, data in seeds.items():
        write(d, f"gen-{name}.wav", data)
    return len(seeds)


def gguf_string(s):
    b = s.encode("utf-8")
    return struct.pack("<Q", len(b)) + b


# GGUF metadata value types.
U8, I8, U16, I16, U32, I32, F32, BOOL, STRING, ARRAY, U64, I64, F64 = range(13)


def gguf_value(ty, v):
    fixed = {U8: "<B", I8: "<b", U16: "<H", I16: "<h", U32: "<I", I32: "<i", F32: "<f",
             BOOL: "<B", U64: "<Q", I64: "<q", F64: "<d"}
    if ty == STRING:
        return gguf_string(v)
    if ty == ARRAY:
        elem, items = v
        out = struct.pack("<IQ", elem, len(items))
        for item in items:
            out += gguf_value(elem, item)
        return out
    return struct.pack(fixed[ty], v)


def gguf(kvs, tensors=()):
    """A GGUF v3: `kvs` is [(key, type, value)], `tensors` [(name, dims, ggml type, bytes)]."""
    out = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(kvs))
    for key, ty, v in kvs:
        out += gguf_string(key) + struct.pack("<I", ty) + gguf_value(ty, v)
    offset = 0
    for name, dims, ty, data in tensors:
        out += gguf_string(name) + struct.pack("<I", len(dims))
        out += b"".join(struct.pack("<Q", d) for d in dims)
        out += struct.pack("<IQ", ty, offset)
        offset += (len(data) + 31) // 32 * 32
    out += b"\x00" * ((-len(out)) % 32)
    for _, _, _, data in tensors:
        out += data + b"\x00" * ((-len(data)) % 32)
    return out


def gguf_seeds():
    d = reset_dir("gguf")
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    tokens = ["<|im_start|>", "<|im_end|>", "<|endoftext|>"] + letters + ["\u0120", "he", "ll", "hell", "hello", "\u0120w", "or", "ld"]
    types = [3, 3, 3] + [1] * (len(tokens) - 3)
    merges = ["h e", "l l", "he ll", "hell o", "\u0120 w", "o r", "l d"]
    smollm = ("{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
              "{{ message['content'] }}<|im_end|>\n{% endfor %}"
              "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    base = [
        ("general.architecture", STRING, "llama"),
        ("general.name", STRING, "fuzz-tiny"),
        ("llama.context_length", U32, 64),
        ("llama.embedding_length", U32, 32),
        ("llama.block_count", U32, 1),
        ("llama.attention.head_count", U32, 4),
        ("llama.attention.head_count_kv", U32, 4),
        ("llama.rope.dimension_count", U32, 8),
        ("llama.attention.layer_norm_rms_epsilon", F32, 1e-5),
        ("tokenizer.ggml.model", STRING, "gpt2"),
        ("tokenizer.ggml.pre", STRING, "smollm"),
        ("tokenizer.ggml.tokens", ARRAY, (STRING, tokens)),
        ("tokenizer.ggml.token_type", ARRAY, (I32, types)),
        ("tokenizer.ggml.merges", ARRAY, (STRING, merges)),
        ("tokenizer.ggml.bos_token_id", U32, 2),
        ("tokenizer.ggml.eos_token_id", U32, 1),
        ("tokenizer.chat_template", STRING, smollm),
    ]
    embd = struct.pack("<" + "f" * (32 * len(tokens)), *([0.01] * (32 * len(tokens))))
    seeds = {
        "tokenizer-and-template": gguf(base),
        "with-tensor": gguf(base, [("token_embd.weight", [32, len(tokens)], 0, embd)]),
        "alignment-64": gguf(base + [("general.alignment", U32, 64)]),
        "alignment-zero": gguf([("general.architecture", STRING, "llama"),
                                ("general.alignment", U32, 0)]),
        "every-type": gguf([("general.architecture", STRING, "llama")] + [
            (f"t.{ty}", ty, v) for ty, v in [(U8, 1), (I8, -1), (U16, 2), (I16, -2), (U32, 3),
                                             (I32, -3), (F32, 0.5), (BOOL, 1), (U64, 4),
                                             (I64, -4), (F64, 0.25)]
        ] + [("t.nested", ARRAY, (ARRAY, [(U8, [1, 2]), (STRING, ["x"])]))]),
        "template-loop": gguf(base[:-1] + [("tokenizer.chat_template", STRING,
                              "{% for a in range(100000) %}{% for b in range(100000) %}x{% endfor %}{% endfor %}")]),
    }
    for name, data in seeds.items():
        write(d, f"gen-{name}.gguf", data)
    return len(seeds)


def ct2_string(s):
    b = s.encode("utf-8") + b"\x00"
    return struct.pack("<H", len(b)) + b


def model_bin(version, variables, aliases=(), spec="WhisperSpec"):
    """A CTranslate2 model.bin: variables [(name, shape, dtype id, bytes)]."""
    out = struct.pack("<I", version)
    if version >= 2:
        out += ct2_string(spec) + struct.pack("<I", 1)
    out += struct.pack("<I", len(variables))
    sizes = {0: 4, 1: 1, 2: 2, 3: 4, 4: 2, 5: 2}
    for name, shape, dtype, data in variables:
        out += ct2_string(name) + struct.pack("<B", len(shape))
        out += b"".join(struct.pack("<I", x) for x in shape)
        if version >= 4:
            out += struct.pack("<BI", dtype, len(data))
        else:
            out += struct.pack("<BI", sizes[dtype], len(data) // sizes[dtype])
        out += data
    if version >= 3:
        out += struct.pack("<I", len(aliases))
        for a, t in aliases:
            out += ct2_string(a) + ct2_string(t)
    return out


def ct2_seeds():
    d = reset_dir("ct2")
    z = lambda n: b"\x00" * n
    f32 = lambda *v: struct.pack("<" + "f" * len(v), *v)
    dm = 8
    whisper = [
        ("encoder/conv1/weight", [dm, 80, 3], 4, z(dm * 80 * 3 * 2)),
        ("encoder/num_heads", [], 2, struct.pack("<h", 2)),
        ("encoder/position_encodings/encodings", [30, dm], 4, z(30 * dm * 2)),
        ("encoder/layer_0/ffn/layer_norm/beta", [1], 4, z(2)),
        ("decoder/embeddings/weight", [20, dm], 4, z(20 * dm * 2)),
        ("decoder/position_encodings/encodings", [16, dm], 4, z(16 * dm * 2)),
        ("decoder/layer_0/ffn/layer_norm/beta", [1], 4, z(2)),
    ]
    seeds = {
        "v6-dtypes": model_bin(6, [
            ("f32", [2], 0, f32(1.0, -2.0)),
            ("q", [2, 2], 1, bytes([10, 246, 30, 40])),
            ("q_scale", [2], 0, f32(10.0, 20.0)),
            ("i16", [1], 2, struct.pack("<h", 7)),
            ("i32", [], 3, struct.pack("<i", 5)),
            ("f16", [1], 4, b"\x00\x3c"),
            ("bf16", [1], 5, b"\x80\x3f"),
        ], [("alias", "f32")]),
        "v1-item-sizes": model_bin(1, [("w", [2], 0, f32(0.5, 0.25))]),
        "v3-aliases": model_bin(3, [("a", [1], 0, f32(1.0))], [("b", "a"), ("c", "missing")]),
        "whisper-shapes": model_bin(6, whisper),
        "rank0-positions": model_bin(6, whisper[:2] + [("encoder/position_encodings/encodings", [], 4, z(2))] + whisper[3:]),
    }
    for name, data in seeds.items():
        write(d, f"gen-{name}.bin", data)
    return len(seeds)


def chat_template_seeds():
    d = reset_dir("chat_template")
    convo = "\x00user\x02What is 2+2?\x01assistant\x024\x01user\x02And 3+3?"
    seeds = {
        "chatml": "{% for message in messages %}<|im_start|>{{ message.role }}\n{{ message.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}",
        "llama3": "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n{{ m['content'] | trim }}<|eot_id|>{% endfor %}{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}",
        "mistral": "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}[INST] {{ m['content'].strip() }} [/INST]{% else %}{{ m['content'] }}{{ eos_token }}{% endif %}{% endfor %}",
        "gemma": "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n{{ m['content'] | trim }}<end_of_turn>\n{% endfor %}<start_of_turn>model\n",
        "thinking-kwargs": "{% if enable_thinking is defined and not enable_thinking %}/no_think {% endif %}{% for m in messages %}{{ m.content }}{% endfor %}",
        "endless": "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}",
        "huge-output": "{% for a in range(50) %}{{ 'x' * 90000000 }}{% endfor %}",
        "recursion": "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
    }
    for name, template in seeds.items():
        write(d, f"gen-{name}.txt", template + convo)
    return len(seeds)


def local_http_seeds():
    d = reset_dir("local_http")
    token = "fuzz-admin-token-0123456789abcdef"
    body = '{"kind":"llm","prompt":"hi"}'
    boundary = "studio-boundary-1"
    multipart = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"prompt\"\r\n\r\nfox\r\n"
                 f"--{boundary}\r\nContent-Disposition: form-data; name=\"ext\"\r\n\r\npng\r\n"
                 f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"r.png\"\r\n"
                 f"Content-Type: image/png\r\n\r\n\x89PNG\r\n--{boundary}--\r\n")
    def req(method, path, headers, body=""):
        head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers)
        if body:
            head += f"Content-Length: {len(body.encode('utf-8'))}\r\n"
        return head + "\r\n" + body
    auth = ("Authorization", f"Bearer {token}")
    seeds = {
        "admin-ok": req("POST", "/local/jobs", [("Host", "127.0.0.1:9790"), auth, ("Content-Type", "application/json")], body),
        "admin-no-token": req("POST", "/local/jobs", [("Host", "127.0.0.1:9790"), ("Content-Type", "application/json")], body),
        "admin-rebound-host": req("GET", "/local/jobs", [("Host", "evil.example:9790"), auth]),
        "admin-cross-origin": req("POST", "/local/requests/rr-1-0123456789abcdef/approve", [("Host", "localhost:9790"), ("Origin", "https://evil.example"), auth]),
        "admin-text-plain": req("POST", "/local/jobs", [("Host", "[::1]:9790"), auth, ("Content-Type", "text/plain")], body),
        "upload": req("POST", "/graphics/api/workers/w-1/jobs/j-1/complete", [("Host", "127.0.0.1:9790"), ("Authorization", "Bearer tok"), ("Content-Type", f"multipart/form-data; boundary={boundary}")], multipart),
        "upgrade": req("GET", "/graphics/api/workers/w-1/connect", [("Host", "127.0.0.1"), ("Upgrade", "websocket"), ("Connection", "Upgrade"), ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="), ("Sec-WebSocket-Version", "13")]),
        "folded-header": "GET / HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n",
        "http10-no-host": "GET /local HTTP/1.0\r\n\r\n",
    }
    for name, data in seeds.items():
        write(d, f"gen-{name}.http", data)
    return len(seeds)


def download_scenario(flags, length, seed, approx, part, replies):
    out = struct.pack("<BHBHHB", flags, length, seed, approx, part, len(replies))
    for status_index, length_mode, etag, rng, location, body_mode, k in replies:
        out += struct.pack("<BBBBBBH", status_index, length_mode, etag, rng, location, body_mode, k)
    return out


def download_seeds():
    d = reset_dir("download")
    # STATUSES in fuzz/src/download.rs: 200, 206, 206, 302, 307, 404, 416, 500, 429, 204.
    ok = (0, 0, 1, 0, 0, 0, 0)
    seeds = {
        "ok-verified": download_scenario(1, 3000, 7, 0, 0, [ok]),
        "ok-unverified-no-length": download_scenario(2, 3000, 7, 3000, 0, [(0, 1, 0, 0, 0, 0, 0)]),
        "past-approx-no-length": download_scenario(2, 3000, 7, 100, 0, [(0, 1, 0, 0, 0, 3, 4000)]),
        "cut-then-resume": download_scenario(1, 3000, 7, 0, 0, [(0, 0, 1, 0, 0, 2, 1000), (1, 0, 1, 0, 0, 1, 0)]),
        "part-with-validator-changed": download_scenario(4 | 8, 3000, 9, 0, 1200, [(1, 0, 3, 0, 0, 1, 0)]),
        "garbage-part-verified": download_scenario(1 | 4 | 32, 3000, 9, 0, 1200, [(1, 0, 1, 0, 0, 1, 0), ok]),
        "redirect-chain": download_scenario(1, 500, 3, 0, 0, [(3, 0, 0, 0, 0, 0, 0), (4, 0, 0, 0, 3, 0, 0), ok]),
        "redirect-to-remote-http": download_scenario(0, 500, 3, 0, 0, [(3, 0, 0, 0, 4, 0, 0)]),
        "small-ceiling": download_scenario(16, 3000, 5, 0, 0, [ok]),
        "errors": download_scenario(1, 100, 1, 0, 0, [(7, 0, 0, 0, 0, 0, 0), (8, 0, 0, 0, 0, 0, 0), (5, 0, 0, 0, 0, 0, 0)]),
    }
    for name, data in seeds.items():
        write(d, f"gen-{name}.bin", data)
    return len(seeds)


def redact_seeds():
    d = reset_dir("redact")
    seeds = {f"case-{i}": bytes((i * 53 + j * 29) & 0xFF for j in range(96)) for i in range(8)}
    for name, data in seeds.items():
        write(d, f"gen-{name}.bin", data)
    return len(seeds)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vectors", help="path of the vectors file (default docs/protocol-vectors.jsonl)")
    args = ap.parse_args()
    a = decode_frame_seeds(vectors_path(args.vectors))
    b = worker_machine_seeds()
    c = world_seeds()
    print(f"decode_frame: {a} seeds, worker_machine: {b} seeds, world: {c} seeds "
          f"(in {os.path.relpath(CORPUS)})")
    more = {
        "wav": wav_seeds(),
        "gguf": gguf_seeds(),
        "ct2": ct2_seeds(),
        "chat_template": chat_template_seeds(),
        "local_http": local_http_seeds(),
        "download": download_seeds(),
        "redact": redact_seeds(),
    }
    print(", ".join(f"{t}: {n} seeds" for t, n in more.items()))


if __name__ == "__main__":
    main()
