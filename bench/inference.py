"""Inference speed, memory and agreement: transformers' pipeline against audioclf's torch, ONNX fp32 and ONNX int8
backends, side by side on the same model and the same clips.

Run by hand (not a test); the pipeline reads file paths through ffmpeg, so ffmpeg must be installed:

    python bench/inference.py --model audioclf-demo-model                     # the demo's Whisper-tiny model
    python bench/inference.py --model-config wav2vec2-base                    # wav2vec2-base shape, random weights
    python bench/inference.py --model audioclf-demo-model --clips 16 --pipeline-batch-sizes 1,8   # a quick look

Clips are the demo's voice-disjoint test clips (8 kHz FLAC files). Each backend runs in its own process, so its
peak RSS is its own: the pipeline on the file paths at its default batch size and at each of
`--pipeline-batch-sizes` (best one reported), then `audioclf` with torch, ONNX fp32 and ONNX int8 (exported first).
Reports clips/s, wall time, load time, peak RSS and top-1 agreement with the pipeline (default batch size), then
the ratios issue 4 asks for. The pipeline on paths resamples with ffmpeg, audioclf with soxr (as in training), so
agreement is also given with the pipeline run on audioclf's decoded arrays: that one should be exact. With
`--long-seconds`, also the peak RSS of classifying a recording that long against 10 s and 60 s ones (streamed
decoding keeps it flat; a 10 s one runs smaller batches of windows).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile

TARGET_VS_PIPELINE_DEFAULT = 3.0  # audioclf torch over the pipeline at its default batch size
TARGET_VS_PIPELINE_BEST = 2.0  # ... and over the pipeline at its best batch size
TARGET_INT8_VS_TORCH = 1.5  # ONNX int8 over audioclf torch
TARGET_INT8_AGREEMENT = 0.99  # ONNX int8 top-1 agreement on the demo test clips
AUDIOCLF_BATCH_SIZE = 8  # audioclf's batch size unless --batch-size says otherwise
DEMO_TEST_SIZE = 0.25  # as `audioclf demo` splits: four voices in sixteen never heard in training
SHORT_RECORDING_SECONDS = 10.0  # what a long recording's memory is compared with
FULL_BATCH_RECORDING_SECONDS = 60.0  # ... and this: long enough for full batches of windows, as a long one runs


def demo_test_paths(limit: int | None) -> list[str]:
    """The demo's voice-disjoint test clips, as `audioclf demo` splits them: paths to 8 kHz FLAC files."""
    from audioclf.config import DataSpec
    from audioclf.data import demo_manifest, load_clips

    clips = load_clips(DataSpec(data=str(demo_manifest()), group_column="voice", test_size=DEMO_TEST_SIZE), progress=False)
    paths = [row["path"] for row in clips.splits["test"].with_format(None)["audio"]]
    return paths[:limit] if limit else paths


def model_from_config(name: str, directory: Path) -> Path:
    """A randomly initialised model of a named shape with the demo's labels, saved to `directory`."""
    from audioclf.data import demo_manifest
    from audioclf.model import build_model

    with demo_manifest().open() as f:
        labels = sorted({line.split(",")[1] for line in list(f)[1:]})
    build_model(name, labels).save(directory)
    return directory


# --- workers: one backend each, in a process of its own -----------------------------------------


def peak_rss_mb() -> float:
    """This process's peak resident memory. VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss over exec, so a
    worker would report its parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_worker(args) -> dict:
    """Load one backend, warm it up on one clip, classify every clip; top-1 labels and timings."""
    paths = Path(args.paths_file).read_text().splitlines()
    started = time.perf_counter()
    if args.worker == "pipeline":
        import torch
        import transformers

        if args.threads:
            torch.set_num_threads(args.threads)
        transformers.logging.set_verbosity_error()
        pipe = transformers.pipeline("audio-classification", model=args.model_dir, device="cpu")
        kwargs = {"batch_size": args.batch_size} if args.batch_size else {}
        classify = lambda batch: [result[0]["label"] for result in pipe(batch, top_k=1, **kwargs)]
    else:
        from audioclf.infer import load_classifier

        classifier = load_classifier(args.model_dir, batch_size=args.batch_size or AUDIOCLF_BATCH_SIZE,
                                     threads=args.threads, backend=args.worker)

        def classify(batch):
            labels = []
            for outcome in classifier.classify_files(batch, top_k=1):
                labels.append(outcome.predictions[0]["label"] if outcome.error is None else f"error: {outcome.error}")
            return labels

    loaded = time.perf_counter()
    classify(paths[:1])  # warm-up: first-call allocations and lazy initialisation are not throughput
    warm = time.perf_counter()
    labels = classify(paths)
    done = time.perf_counter()
    result = {"labels": labels, "load_seconds": loaded - started, "warmup_seconds": warm - loaded,
              "seconds": done - warm, "clips": len(paths), "peak_rss_mb": peak_rss_mb()}
    if args.worker != "pipeline":
        result["window_seconds"] = classifier.window_seconds
    if args.worker == "pipeline" and args.same_decode:
        # untimed: the pipeline on the very arrays audioclf decodes (soundfile + soxr), not through ffmpeg
        from audioclf.audio import load_audio

        rate = pipe.feature_extractor.sampling_rate
        arrays = [{"raw": load_audio(p, rate), "sampling_rate": rate} for p in paths]
        result["labels_same_decode"] = [r[0]["label"] for r in pipe(arrays, top_k=1)]
    return result


def run_long_worker(args) -> dict:
    """Classify one (long) recording with its segments; peak RSS and windows."""
    from audioclf.infer import load_classifier

    classifier = load_classifier(args.model_dir, threads=args.threads, backend=args.worker)
    rss_loaded = peak_rss_mb()
    started = time.perf_counter()
    (outcome,) = classifier.classify_files([args.recording], top_k=1, segments=True)
    return {"seconds": time.perf_counter() - started, "windows": len(outcome.segments or []), "error": outcome.error,
            "rss_after_load_mb": rss_loaded, "peak_rss_mb": peak_rss_mb()}


# --- the parent: set up, run the workers, compare -----------------------------------------------


def spawn(args, worker: str, model_dir: Path, paths_file: Path, batch_size: int | None = None,
          recording: Path | None = None, same_decode: bool = False) -> dict:
    command = [sys.executable, __file__, "--worker", worker, "--model-dir", str(model_dir), "--paths-file",
               str(paths_file)]
    if same_decode:
        command.append("--same-decode")
    if batch_size:
        command += ["--batch-size", str(batch_size)]
    if args.threads:
        command += ["--threads", str(args.threads)]
    if recording is not None:
        command += ["--recording", str(recording)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"worker {worker} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def long_recording(paths: list[str], seconds: float, target: Path) -> Path:
    """A recording of `seconds` at 8 kHz made of the clips one after another, written block by block."""
    import soundfile as sf

    from audioclf.audio import load_audio

    clips = [load_audio(p, 8000) for p in paths[:16]]
    remaining = int(seconds * 8000)
    with sf.SoundFile(str(target), "w", samplerate=8000, channels=1, format="FLAC") as f:
        i = 0
        while remaining > 0:
            block = clips[i % len(clips)][:remaining]
            f.write(block)
            remaining -= len(block)
            i += 1
    return target


def agreement(labels: list[str], reference: list[str]) -> float:
    return float(np.mean([a == b for a, b in zip(labels, reference)]))


def benchmark(args, model_dir: Path, title: str, work: Path) -> dict:
    from audioclf.export import export_onnx

    paths = demo_test_paths(args.clips)
    paths_file = work / "paths.txt"
    paths_file.write_text("\n".join(paths) + "\n")
    print(f"\n== {title}: {len(paths)} demo test clips (8 kHz FLAC), threads {args.threads or 'default'}", flush=True)

    exported = {}
    for quantize in (None, "int8"):
        out = work / f"onnx-{quantize or 'fp32'}"
        started = time.perf_counter()
        agreement_clips = None
        if quantize:
            from audioclf.audio import load_audio

            rate = json.loads((model_dir / "preprocessor_config.json").read_text())["sampling_rate"]
            agreement_clips = [load_audio(p, rate) for p in paths]
        report = export_onnx(model_dir, out, quantize=quantize, agreement_clips=agreement_clips,
                             agreement_data="the benchmark's clips", overwrite=True)
        exported[quantize] = out
        extra = f", int8 top-1 agreement with fp32 {report.agreement:.3f}" if quantize else ""
        print(f"exported ONNX {quantize or 'fp32'} in {time.perf_counter() - started:.0f} s "
              f"(max logit difference {report.max_abs_logit_difference:.1e}{extra})", flush=True)

    results: dict[str, dict] = {}
    results["pipeline (default batch)"] = spawn(args, "pipeline", model_dir, paths_file, same_decode=True)
    print(f"  pipeline default: {_rate(results['pipeline (default batch)']):.2f} clips/s", flush=True)
    for batch_size in args.pipeline_batch_sizes:
        key = f"pipeline (batch {batch_size})"
        results[key] = spawn(args, "pipeline", model_dir, paths_file, batch_size)
        print(f"  {key}: {_rate(results[key]):.2f} clips/s", flush=True)
    batch_size = args.batch_size or AUDIOCLF_BATCH_SIZE  # a worker given none runs the pipeline at its default
    results["audioclf torch"] = spawn(args, "torch", model_dir, paths_file, batch_size)
    results["audioclf onnx fp32"] = spawn(args, "onnx", exported[None], paths_file, batch_size)
    results["audioclf onnx int8"] = spawn(args, "onnx", exported["int8"], paths_file, batch_size)

    reference = results["pipeline (default batch)"]["labels"]
    same_decode = results["pipeline (default batch)"]["labels_same_decode"]
    ours = results["audioclf torch"]["labels"]
    print("\ntop-1 agreement with: the pipeline on the paths (ffmpeg decodes and resamples), the pipeline on the arrays "
          "audioclf decodes (soundfile + soxr), audioclf torch")
    print(f"{'backend':28} {'clips/s':>8} {'wall s':>7} {'load s':>7} {'peak RSS MB':>12} {'= pipeline':>11} "
          f"{'= pipeline (same decode)':>25} {'= torch':>8}")
    for name, r in results.items():
        print(f"{name:28} {_rate(r):8.2f} {r['seconds']:7.1f} {r['load_seconds']:7.1f} {r['peak_rss_mb']:12.0f} "
              f"{agreement(r['labels'], reference):11.3f} {agreement(r['labels'], same_decode):25.3f} "
              f"{agreement(r['labels'], ours):8.3f}")

    pipeline_best_name = max((k for k in results if k.startswith("pipeline")), key=lambda k: _rate(results[k]))
    torch_rate = _rate(results["audioclf torch"])
    ratios = {
        "torch / pipeline default": torch_rate / _rate(results["pipeline (default batch)"]),
        f"torch / pipeline best ({pipeline_best_name})": torch_rate / _rate(results[pipeline_best_name]),
        "onnx fp32 / torch": _rate(results["audioclf onnx fp32"]) / torch_rate,
        "onnx int8 / torch": _rate(results["audioclf onnx int8"]) / torch_rate,
        "onnx int8 / pipeline default": _rate(results["audioclf onnx int8"]) / _rate(results["pipeline (default batch)"]),
    }
    targets = {"torch / pipeline default": TARGET_VS_PIPELINE_DEFAULT, "onnx int8 / torch": TARGET_INT8_VS_TORCH}
    print()
    for name, value in ratios.items():
        target = targets.get(name) or (TARGET_VS_PIPELINE_BEST if name.startswith("torch / pipeline best") else None)
        verdict = "" if target is None else f"   (target >= {target:g}x: {'met' if value >= target else 'NOT met'})"
        print(f"{name:48} {value:6.2f}x{verdict}")
    same = agreement(ours, same_decode)
    int8 = agreement(results["audioclf onnx int8"]["labels"], ours)
    print(f"{'top-1 torch = pipeline (same decode), every clip':48} {same:6.3f}   ({'met' if same == 1 else 'NOT met'})")
    window = results["audioclf torch"]["window_seconds"]
    whole = [i for i, path in enumerate(paths) if soundfile.info(path).duration <= window]
    if len(whole) < len(paths):  # audioclf averages a longer clip's windows; the pipeline reads its first window only
        within = agreement([ours[i] for i in whole], [same_decode[i] for i in whole])
        print(f"{f'  ... on the {len(whole)} clips within the {window:g} s window':48} {within:6.3f}   "
              f"({'met' if within == 1 else 'NOT met'}; the other {len(paths) - len(whole)} are classified in sliding "
              f"windows, which the pipeline does not do)")
    print(f"{'top-1 torch = pipeline on the paths':48} {agreement(ours, reference):6.3f}   (ffmpeg resamples "
          f"differently from soxr)")
    print(f"{'top-1 onnx int8 = torch':48} {int8:6.3f}   (target >= {TARGET_INT8_AGREEMENT:g}: "
          f"{'met' if int8 >= TARGET_INT8_AGREEMENT else 'NOT met'})")

    memory = {}
    if args.long_seconds:
        for seconds in (SHORT_RECORDING_SECONDS, FULL_BATCH_RECORDING_SECONDS, args.long_seconds):
            recording = long_recording(paths, seconds, work / f"recording_{seconds:g}s.flac")
            memory[seconds] = spawn(args, "torch", model_dir, paths_file, recording=recording)
            r = memory[seconds]
            print(f"recording {seconds:6.0f} s: {r['windows']:4d} windows in {r['seconds']:6.1f} s, peak RSS "
                  f"{r['peak_rss_mb']:6.0f} MB ({r['peak_rss_mb'] - r['rss_after_load_mb']:+.0f} MB over the loaded model)")
        long = memory[args.long_seconds]["peak_rss_mb"]
        print(f"{'peak RSS long / 10 s recording':48} {long / memory[SHORT_RECORDING_SECONDS]['peak_rss_mb']:6.2f}x")
        print(f"{'peak RSS long / 60 s recording':48} {long / memory[FULL_BATCH_RECORDING_SECONDS]['peak_rss_mb']:6.2f}x"
              "   (both run full batches of windows)")
    return {"title": title, "clips": len(paths), "results": results, "ratios": ratios,
            "memory": {str(k): v for k, v in memory.items()}}


def _rate(result: dict) -> float:
    return result["clips"] / result["seconds"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="A trained model directory (e.g. the demo's Whisper-tiny model).")
    parser.add_argument("--model-config", help="Also (or instead) a model built from a named config with random "
                                               "weights, e.g. wav2vec2-base.")
    parser.add_argument("--clips", type=int, default=None, help="Use only the first N demo test clips.")
    parser.add_argument("--pipeline-batch-sizes", default="1,4,8,16",
                        help="Batch sizes the pipeline is also run at; its best is reported.")
    parser.add_argument("--batch-size", type=int, default=None, help=f"audioclf's batch size (default {AUDIOCLF_BATCH_SIZE}).")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for every backend; default: torch's.")
    parser.add_argument("--long-seconds", type=float, default=0.0,
                        help="Also compare peak RSS on a recording this long with a 10 s one (e.g. 600).")
    parser.add_argument("--output", type=Path, help="Also write the results as JSON here.")
    # worker mode, used by the parent only
    parser.add_argument("--worker", choices=["pipeline", "torch", "onnx"], help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    parser.add_argument("--paths-file", help=argparse.SUPPRESS)
    parser.add_argument("--recording", help=argparse.SUPPRESS)
    parser.add_argument("--same-decode", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        result = run_long_worker(args) if args.recording else run_worker(args)
        print(json.dumps(result))
        return
    if not args.model and not args.model_config:
        parser.error("give --model DIR and/or --model-config NAME")
    args.pipeline_batch_sizes = [int(b) for b in args.pipeline_batch_sizes.split(",") if b]
    reports = []
    with tempfile.TemporaryDirectory(prefix="audioclf-bench-") as tmp:
        work = Path(tmp)
        if args.model:
            (work / "model").mkdir()
            reports.append(benchmark(args, Path(args.model), f"model {args.model}", work / "model"))
        if args.model_config:
            (work / "config").mkdir()
            model_dir = model_from_config(args.model_config, work / "config" / "model")
            reports.append(benchmark(args, model_dir, f"{args.model_config} (random weights)", work / "config"))
    if args.output:
        args.output.write_text(json.dumps(reports, indent=2) + "\n")


if __name__ == "__main__":
    main()
