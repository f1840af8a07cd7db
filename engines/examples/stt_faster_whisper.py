"""faster-whisper on a model directory and a WAV clip: the peer of `stt_bench`.

    python stt_faster_whisper.py MODEL_DIR CLIP.wav [--runs N] [--threads N] [--reference FILE]

Prints the same figures as `stt_bench` (load time, per run the transcription time and the
real-time factor, audio seconds per processing second, the median, the transcript and,
with a reference text, the word error rate). Greedy decoding (beam 1), as `stt_bench`;
the whole transcript is consumed inside the timed region (faster-whisper's segments are
lazy). Run by engines/examples/stt_side_by_side.sh in the venv `.ci/faster-whisper-venv`
makes.
"""

import argparse
import re
import statistics
import time


def words(text):
    return re.sub(r"[^a-z0-9' ]+", " ", text.lower()).split()


def word_errors(reference, hypothesis):
    """Word-level edit distance (substitutions + deletions + insertions)."""
    ref, hyp = words(reference), words(hypothesis)
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        cur = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h))
        prev = cur
    return prev[-1], len(ref)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("model_dir")
    p.add_argument("wav")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reference")
    a = p.parse_args()

    import ctranslate2
    import faster_whisper
    from faster_whisper import WhisperModel
    from faster_whisper.audio import decode_audio

    cpu = time.process_time()
    t = time.perf_counter()
    model = WhisperModel(a.model_dir, device="cpu", cpu_threads=a.threads)
    load = time.perf_counter() - t
    load_cpu = time.process_time() - cpu
    print(
        f"faster-whisper {faster_whisper.__version__} (ctranslate2 {ctranslate2.__version__}, "
        f"compute type {model.model.compute_type}, {a.threads} threads)"
    )
    audio = decode_audio(a.wav)
    duration = len(audio) / 16000.0
    print(f"model: {a.model_dir}, load {load:.2f} s (CPU {load_cpu:.2f} s); audio {duration:.2f} s")
    rtfs = []
    text = ""
    for run in range(1, a.runs + 1):
        cpu = time.process_time()
        t = time.perf_counter()
        segments, _ = model.transcribe(audio, beam_size=1, language="en")
        segments = list(segments)
        secs = time.perf_counter() - t
        cpu = time.process_time() - cpu
        rtfs.append(duration / secs)
        print(
            f"run {run}: {secs:.2f} s, real-time factor {duration / secs:.1f}x, "
            f"CPU {cpu:.2f} s, {len(segments)} segments"
        )
        if run == 1:
            text = " ".join(s.text.strip() for s in segments)
            print(f"text: {text}")
    if a.reference:
        with open(a.reference, encoding="utf-8") as f:
            errors, n = word_errors(f.read(), text)
        print(f"word error rate: {100.0 * errors / max(n, 1):.1f} % ({errors} of {n} words)")
    print(f"median real-time factor: {statistics.median(rtfs):.1f}x (audio seconds per processing second)")


if __name__ == "__main__":
    main()
