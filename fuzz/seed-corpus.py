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

Files with the prefixes `v-`, `http-`, `trace-`, `hand-`, `knobs-` are this script's:
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
OURS = ("v-", "http-", "trace-", "hand-", "knobs-")

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


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vectors", help="path of the vectors file (default docs/protocol-vectors.jsonl)")
    args = ap.parse_args()
    a = decode_frame_seeds(vectors_path(args.vectors))
    b = worker_machine_seeds()
    c = world_seeds()
    print(f"decode_frame: {a} seeds, worker_machine: {b} seeds, world: {c} seeds "
          f"(in {os.path.relpath(CORPUS)})")


if __name__ == "__main__":
    main()
