"""Whisper tiny.en against Whisper base, side by side in one run (run by hand, not in CI).

    python bench/backbones.py                                   # probe and full fine-tuning, both encoders
    python bench/backbones.py --runs tiny.en:probe,base:probe   # a quicker look
    python bench/backbones.py --french-only                     # only the non-English check

Each training runs in a process of its own (so its peak RSS is its own, and its feature cache starts cold) on the
demo data's voice-disjoint split (32 of 128 voices never heard in training, as `audioclf demo` splits it), with
the default preset in probe or full mode. Reported per run: wall time, peak RSS, test accuracy on the unseen
voices; per encoder, inference speed on the demo's test clips with torch and ONNX int8 (bench/inference.py's
workers, on the first model trained from that encoder; the encoder is the whole cost, the head is negligible).

The non-English check: six MInDS-14 intents said in French by espeak-ng (scripts/make_demo_data.py's renderer,
French voices and variants); the test clips are other voices saying other phrasings (see FRENCH_PHRASINGS); probe
and full fine-tuning, tiny.en against base, with --language fr so that training says what it warns.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent / "scripts"))

DEMO_TEST_SIZE = 0.25  # as `audioclf demo`: four of every sixteen voices are never heard in training
ENCODERS = {"tiny.en": "whisper-tiny.en", "base": "whisper-base"}
DEFAULT_RUNS = "tiny.en:probe,base:probe,tiny.en:full,base:full"
INFERENCE_CLIPS = 96  # demo test clips each inference worker classifies
INFERENCE_BATCH_SIZE = 8

# The non-English check: six intents, three French phrasings each, said by 24 voices of three French accents. The
# 18 training voices say the first two phrasings, the 6 test voices only the third: new voices and new words, so
# the encoder's grasp of French counts, not only how a phrase sounds.
FRENCH_PHRASINGS = {
    "balance": ["Quel est le solde de mon compte ?", "Combien d'argent me reste-t-il ?",
                "J'aimerais connaître ce qu'il y a sur mon compte courant."],
    "card_issues": ["Ma carte bancaire ne fonctionne plus.", "Le distributeur a avalé ma carte.",
                    "Ma carte est refusée dans tous les magasins."],
    "pay_bill": ["Je voudrais payer ma facture d'électricité.", "Comment est-ce que je règle une facture ?",
                 "Il faut que je paie la note du téléphone."],
    "address": ["Je dois changer mon adresse postale.", "J'ai déménagé, voici mon nouveau domicile.",
                "Pouvez-vous mettre à jour l'endroit où j'habite ?"],
    "freeze": ["Pouvez-vous geler mon compte, s'il vous plaît ?", "Je veux suspendre mon compte tout de suite.",
               "Bloquez tous les paiements de mon compte, je vous prie."],
    "joint_account": ["Je voudrais ouvrir un compte joint avec ma femme.", "Comment partager un compte avec mon mari ?",
                      "Nous aimerions un compte commun pour le couple."],
}
FRENCH_ACCENTS = ("fr", "fr-be", "fr-ch")
FRENCH_VARIANTS = ("f1", "f2", "f3", "f4", "m1", "m2", "m3", "m4")  # x 3 accents = 24 voices
FRENCH_TEST_VOICES = 6  # the last two voices of each accent


def peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024  # kB
    raise RuntimeError("no VmHWM in /proc/self/status")


# --- worker: one training run in a process of its own ------------------------------------------------


def run_training(args) -> dict:
    from audioclf.config import DataSpec, ModelOptions, resolve_options
    from audioclf.train import train

    started = time.monotonic()
    spec = DataSpec(data=args.data, group_column="voice", test_size=args.test_size, language=args.language)
    lines: list[str] = []

    def echo(line: str) -> None:
        lines.append(line)
        print(f"  [{Path(args.backbone).name} {args.mode}] {line}", file=sys.stderr, flush=True)

    result = train(spec, ModelOptions(model=args.backbone), resolve_options("default", {"mode": args.mode}),
                   Path(args.output), overwrite=True, progress=False, echo=echo)
    test = result.metrics["test"]
    return {"seconds": time.monotonic() - started, "accuracy": test["accuracy"], "macro_f1": test["macro_f1"],
            "n": test["n"], "peak_rss_mb": peak_rss_mb(), "warned": any(l.startswith("warning:") for l in lines)}


def spawn_training(backbone: Path, mode: str, output: Path, data: str, test_size: float, home: Path,
                   language: str | None = None) -> dict:
    command = [sys.executable, __file__, "--worker", "--backbone", str(backbone), "--mode", mode, "--output",
               str(output), "--data", data, "--test-size", str(test_size)]
    if language:
        command += ["--language", language]
    env = {**os.environ, "AUDIOCLF_HOME": str(home)}  # a cold feature cache, so the probe's caching pass is timed
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True, env=env, check=False)
    if done.returncode != 0:
        raise SystemExit(f"training {backbone.name} {mode} failed (exit {done.returncode})")
    return json.loads(done.stdout.strip().splitlines()[-1])


# --- inference speed ---------------------------------------------------------------------------------


def inference_speed(model_dir: Path, work: Path) -> dict:
    """clips/s of the trained model with torch and with an ONNX int8 export, on INFERENCE_CLIPS demo test clips."""
    import inference  # bench/inference.py

    from audioclf.export import export_onnx

    paths_file = work / "paths.txt"
    paths_file.write_text("\n".join(inference.demo_test_paths(INFERENCE_CLIPS)) + "\n")
    int8 = work / "onnx-int8"
    export_onnx(model_dir, int8, quantize="int8", overwrite=True)
    worker_args = argparse.Namespace(threads=None)
    torch_run = inference.spawn(worker_args, "torch", model_dir, paths_file, INFERENCE_BATCH_SIZE)
    onnx_run = inference.spawn(worker_args, "onnx", int8, paths_file, INFERENCE_BATCH_SIZE)
    return {"torch_clips_per_s": inference._rate(torch_run), "onnx_int8_clips_per_s": inference._rate(onnx_run),
            "torch_peak_rss_mb": torch_run["peak_rss_mb"], "onnx_int8_peak_rss_mb": onnx_run["peak_rss_mb"],
            "int8_agrees_with_torch": inference.agreement(onnx_run["labels"], torch_run["labels"])}


# --- the non-English check ---------------------------------------------------------------------------


def french_clips(root: Path) -> Path:
    """FRENCH_PHRASINGS said by 24 French voices, one clip per intent and voice, 8 kHz FLAC, with a manifest (path,
    label, voice, language, split): training voices alternate the first two phrasings, test voices say the third."""
    import numpy as np
    import soundfile as sf

    import make_demo_data as demo  # scripts/make_demo_data.py: its renderer (rate, pitch, silence, gain, noise)

    rows = []
    voice_number = 0
    for accent in FRENCH_ACCENTS:
        for v, variant in enumerate(FRENCH_VARIANTS):
            voice_number += 1
            test = v >= len(FRENCH_VARIANTS) - FRENCH_TEST_VOICES // len(FRENCH_ACCENTS)
            rng = np.random.default_rng([demo.SEED, voice_number])
            voice = demo.Voice(voice_id=f"fr{voice_number:02d}", accent=accent, variant=variant,
                               base_rate_wpm=int(rng.integers(*demo.BASE_RATE_WPM)),
                               base_pitch=int(rng.integers(*demo.BASE_PITCH)),
                               sounds="female" if variant.startswith("f") else "male", intents=tuple(FRENCH_PHRASINGS))
            for i, (intent, phrasings) in enumerate(FRENCH_PHRASINGS.items()):
                text = phrasings[2] if test else phrasings[(voice_number + i) % 2]
                clip = demo.render_clip(rng, voice, text)
                path = root / "clips" / voice.voice_id / f"{intent}.flac"
                path.parent.mkdir(parents=True, exist_ok=True)
                sf.write(path, clip, demo.TARGET_SAMPLING_RATE_HZ, subtype="PCM_16")
                rows.append(f"clips/{voice.voice_id}/{intent}.flac,{intent},{voice.voice_id},fr-FR,"
                            f"{'test' if test else 'train'}")
    manifest = root / "manifest.csv"
    manifest.write_text("path,label,voice,language,split\n" + "\n".join(rows) + "\n")
    return manifest


# --- the parent ----------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", default=DEFAULT_RUNS, help=f"encoder:mode pairs, comma-separated (default {DEFAULT_RUNS}).")
    parser.add_argument("--no-french", action="store_true", help="Leave out the non-English check.")
    parser.add_argument("--french-only", action="store_true", help="Only the non-English check.")
    parser.add_argument("--no-inference", action="store_true", help="Leave out the inference speeds.")
    parser.add_argument("--json", type=Path, help="Also write the results here.")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--backbone", help=argparse.SUPPRESS)
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    parser.add_argument("--output", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--test-size", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--language", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(run_training(args)), flush=True)
        return

    from audioclf.backbone import ensure_backbone
    from audioclf.data import demo_manifest

    backbones = {short: ensure_backbone(name) for short, name in ENCODERS.items()}
    runs = [] if args.french_only else [tuple(run.split(":")) for run in args.runs.split(",")]
    results: dict = {"runs": {}, "inference": {}, "french": {}, "cpu_count": os.cpu_count()}
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        for encoder, mode in runs:
            key = f"{encoder}:{mode}"
            print(f"== {key}", flush=True)
            output = work / f"{encoder}-{mode}"
            results["runs"][key] = spawn_training(backbones[encoder], mode, output, str(demo_manifest()),
                                                  DEMO_TEST_SIZE, work / f"home-{encoder}-{mode}")
            print(f"   {json.dumps(results['runs'][key])}", flush=True)
            if not args.no_inference and encoder not in results["inference"]:
                (work / f"inference-{encoder}").mkdir()
                results["inference"][encoder] = inference_speed(output, work / f"inference-{encoder}")
                print(f"   inference {json.dumps(results['inference'][encoder])}", flush=True)
        if not args.no_french:
            manifest = french_clips(work / "french")
            for encoder, backbone in backbones.items():
                for mode in ("probe", "full"):
                    key = f"{encoder}:{mode}"
                    print(f"== French, {key}", flush=True)
                    results["french"][key] = spawn_training(backbone, mode, work / f"french-{encoder}-{mode}",
                                                            str(manifest), DEMO_TEST_SIZE, work / f"home-fr-{key}",
                                                            language="fr")
                    print(f"   {json.dumps(results['french'][key])}", flush=True)

    print(f"\n{'encoder':8} {'mode':6} {'wall s':>7} {'peak RSS MB':>12} {'test acc':>9} {'torch clips/s':>14} "
          f"{'int8 clips/s':>13}")
    for key, r in results["runs"].items():
        encoder, mode = key.split(":")
        speed = results["inference"].get(encoder, {})
        print(f"{encoder:8} {mode:6} {r['seconds']:7.0f} {r['peak_rss_mb']:12.0f} {r['accuracy']:9.3f} "
              f"{speed.get('torch_clips_per_s', float('nan')):14.1f} {speed.get('onnx_int8_clips_per_s', float('nan')):13.1f}")
    for mode in ("probe", "full"):
        tiny, base = results["runs"].get(f"tiny.en:{mode}"), results["runs"].get(f"base:{mode}")
        if tiny and base:
            print(f"{mode}: base / tiny.en time {base['seconds'] / tiny['seconds']:.2f}x, "
                  f"accuracy {base['accuracy'] - tiny['accuracy']:+.3f}")
    if results["french"]:
        print("\nFrench (unseen voices saying unseen phrasings): " + ", ".join(
            f"{key} {r['accuracy']:.3f} on {r['n']} clips in {r['seconds']:.0f} s"
            + (" (warned: English-only)" if r["warned"] else "") for key, r in results["french"].items()))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
