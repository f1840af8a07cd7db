#!/usr/bin/env python3
"""Where an llm job's offer -> result time goes, hop by hop, from a scheduler trace.

Record a studio-bench run with the scheduler's events and every system call (Linux, x86_64,
root; perf itself is left out of the trace):

    sh -c 'exec perf record -q -a -o job.perf \
        -e raw_syscalls:sys_enter --filter "common_pid != $$" \
        -e raw_syscalls:sys_exit --filter "common_pid != $$" \
        -e sched:sched_switch,sched:sched_wakeup \
        -- target/release/studio-bench --bin target/release/studio-worker \
           --idle-secs 1 --jobs 1000 --echo-n 300'
    perf script -i job.perf -F comm,tid,cpu,time,event,trace \
        | python3 tests/bench/scripts/job_hops.py --worker studio-worker

Each job of the tapped llm series is followed from the tap's read of the offer (the bench
tap's `bench-tap-1d` thread) to the tap's read of the result (`bench-tap-1u`), through the
worker's loop thread (named like the binary, at most 15 characters) and its `engine` thread.
The frames are told apart by their sizes on the wire (the defaults are the bench's synthetic
llm job: offer 332 B, accept 41 B, completeJson 351 B). Tracing every system call adds about
a microsecond to each, so the totals are above an untraced run's; the split is the point.
"""

import argparse
import re
import statistics
import sys

LINE = re.compile(r"^\s*(.+?)\s+(\d+)\s+\[(\d+)\]\s+([\d.]+):\s+(\S+):\s*(.*)$")
RECVFROM, SENDTO, FUTEX = 45, 44, 202  # x86_64 system call numbers

# (from, to, what the interval is)
HOPS = [
    ("offer", "loop_in", "the tap forwards the offer; the loop thread is woken and runs"),
    ("loop_in", "accept_sent", "the loop reads and decodes the offer, the core decides, accept sent"),
    ("accept_sent", "accept_tap", "the accept reaches the tap (its thread woken)"),
    ("accept_sent", "engine_woken", "the loop hands the job to the engine thread"),
    ("engine_woken", "engine_in", "the engine thread waits for a CPU"),
    ("engine_in", "engine_done", "the engine thread runs the job and wakes the loop"),
    ("engine_done", "loop_back", "the loop thread waits for a CPU"),
    ("loop_back", "result_sent", "the loop feeds the result, completeJson sent"),
    ("result_sent", "result_tap", "the result reaches the tap (its thread woken)"),
    ("offer", "accept_tap", "offer -> accept, as the bench reports it"),
    ("offer", "result_tap", "offer -> result, as the bench reports it"),
]


def syscall(rest, kind, nr):
    m = re.match(rf"NR {nr} (?:= (-?\d+)|\((.*)\))", rest)
    if not m:
        return None
    return m.group(1) if kind == "exit" else m.group(2)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--worker", required=True, help="the loop thread's name (the binary's, 15 chars at most)")
    ap.add_argument("--offer-bytes", type=int, default=332)
    ap.add_argument("--accept-bytes", type=int, default=41)
    ap.add_argument("--result-bytes", type=int, default=351)
    a = ap.parse_args()
    worker = a.worker[:15]
    jobs, job = [], None
    # Whether the loop thread is on a CPU (a wake-up while it runs costs no switch).
    loop_running = False
    for line in sys.stdin:
        m = LINE.match(line)
        if not m:
            continue
        comm, _tid, cpu, t, event, rest = m.groups()
        comm, t, cpu = comm.strip(), float(t) * 1e6, int(cpu)
        kind = event.rsplit("_", 1)[-1] if event.startswith("raw_syscalls:") else None
        if comm == "bench-tap-1d" and kind == "exit" and syscall(rest, "exit", RECVFROM) == str(a.offer_bytes):
            job = {"offer": t}
            jobs.append(job)
        if job is None:
            continue
        j = job
        if event == "sched:sched_switch":
            prev = re.search(r"prev_comm=(\S+)", rest).group(1)
            nxt = re.search(r"next_comm=(\S+)", rest).group(1)
            loop_running = (loop_running and prev != worker) or nxt == worker
            if nxt == worker and "loop_in" not in j:
                j["loop_in"], j["loop_cpu"] = t, cpu
            elif nxt == "engine" and "engine_woken" in j and "engine_in" not in j:
                j["engine_in"], j["engine_cpu"] = t, cpu
            elif nxt == worker and "engine_done" in j and "loop_back" not in j:
                j["loop_back"] = t
        elif comm == "engine" and kind == "enter" and "engine_in" in j and "engine_done" not in j:
            # The engine thread's first system call after the job: the write that wakes a
            # sleeping loop thread, or (the loop awake: it finds the result queued) the wait
            # for the next job.
            j["engine_done"] = t
            if loop_running:
                j["loop_back"] = t
        elif comm == worker and kind == "enter":
            if "accept_sent" in j and "engine_woken" not in j and syscall(rest, "enter", FUTEX):
                j["engine_woken"] = t  # the dispatch's futex wake
            args = syscall(rest, "enter", SENDTO)
            if args is not None:
                size = int(args.split(",")[2], 16)
                if size == a.accept_bytes and "accept_sent" not in j:
                    j["accept_sent"] = t
                elif size == a.result_bytes and "result_sent" not in j:
                    j["result_sent"] = t
        elif comm == "bench-tap-1u" and kind == "exit":
            got = syscall(rest, "exit", RECVFROM)
            if got is None or got.startswith("-"):
                continue
            if int(got) == a.accept_bytes and "accept_sent" in j and "accept_tap" not in j:
                j["accept_tap"] = t
            elif int(got) >= a.result_bytes and "result_sent" in j and "result_tap" not in j:
                j["result_tap"] = t
    names = {n for hop in HOPS for n in hop[:2]}
    full = [j for j in jobs if names <= j.keys()]
    if not full:
        sys.exit(f"no complete job among {len(jobs)} offers: check --worker and the frame sizes")
    print(f"{len(full)} of {len(jobs)} offers followed end to end (us: p25 / median / p75)")
    for start, end, what in HOPS:
        d = sorted(j[end] - j[start] for j in full)
        q = lambda f: d[min(len(d) - 1, int(f * len(d)))]
        print(f"  {q(0.25):6.0f} {statistics.median(d):6.0f} {q(0.75):6.0f}  {what}")
    same = sum(j["engine_cpu"] == j["loop_cpu"] for j in full)
    print(f"engine thread on the loop thread's CPU: {same} of {len(full)} jobs")


if __name__ == "__main__":
    main()
