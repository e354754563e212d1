"""Models: load a checkpoint or build one from a config, give it our labels, fit Whisper's window.

Anything `AutoModelForAudioClassification` can head works (wav2vec2, HuBERT, WavLM, data2vec-audio,
Whisper encoder, AST). The feature extractor always travels with the model.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import huggingface_hub.constants
import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoFeatureExtractor,
    AutoModelForAudioClassification,
    PretrainedConfig,
    PreTrainedModel,
    Wav2Vec2FeatureExtractor,
    WhisperFeatureExtractor,
)

from audioclf.errors import ConfigError, ModelError
from audioclf.features import WHISPER_MAX_WINDOW_SECONDS, whisper_positions, whisper_window_seconds
from audioclf.files import MODEL_CONFIG_FILE

WAV2VEC2_SAMPLING_RATE = 16_000  # Hz; the rate the wav2vec2 family is pretrained at
# The classifier layer of transformers' audio classifiers, whose rows are the labels: wav2vec2 family and Whisper, AST
HEAD_WEIGHT_NAMES = ("classifier.weight", "classifier.dense.weight")
WAV2VEC2_FAMILY = ("wav2vec2", "hubert", "wavlm", "data2vec-audio", "unispeech", "unispeech-sat", "sew", "sew-d")

_TINY_ENCODER = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
_TINY_CONV = dict(conv_dim=(32, 32, 32), conv_stride=(5, 4, 4), conv_kernel=(10, 8, 8), num_conv_pos_embeddings=16,
                  num_conv_pos_embedding_groups=2, classifier_proj_size=32)

# Named configs for `--model-config NAME`: tiny random models for tests, and full-size shapes for benchmarks.
NAMED_CONFIGS: dict[str, dict] = {
    "tiny-wav2vec2": dict(model_type="wav2vec2", feat_extract_norm="group", **_TINY_ENCODER, **_TINY_CONV),
    "tiny-wav2vec2-layernorm": dict(model_type="wav2vec2", feat_extract_norm="layer", do_stable_layer_norm=True,
                                    **_TINY_ENCODER, **_TINY_CONV),
    "tiny-hubert": dict(model_type="hubert", feat_extract_norm="group", **_TINY_ENCODER, **_TINY_CONV),
    "tiny-wavlm": dict(model_type="wavlm", feat_extract_norm="group", num_buckets=16, max_bucket_distance=64,
                       **_TINY_ENCODER, **_TINY_CONV),
    "tiny-data2vec-audio": dict(model_type="data2vec-audio", **_TINY_ENCODER, **_TINY_CONV),
    "tiny-whisper": dict(model_type="whisper", d_model=32, encoder_layers=2, encoder_attention_heads=2,
                         encoder_ffn_dim=64, decoder_layers=1, decoder_attention_heads=2, decoder_ffn_dim=64,
                         num_mel_bins=80, vocab_size=64, max_target_positions=16, classifier_proj_size=32,
                         pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1),
    "wav2vec2-base": dict(model_type="wav2vec2"),  # transformers' defaults are wav2vec2-base's shape
    "whisper-tiny": dict(model_type="whisper", d_model=384, encoder_layers=4, encoder_attention_heads=6,
                         encoder_ffn_dim=1536, decoder_layers=4, decoder_attention_heads=6, decoder_ffn_dim=1536,
                         num_mel_bins=80, vocab_size=51864),
}


@dataclass
class ModelBundle:
    """A classification model and the feature extractor that prepares its inputs."""

    model: PreTrainedModel
    feature_extractor: object

    @property
    def sampling_rate(self) -> int:
        return int(self.feature_extractor.sampling_rate)

    @property
    def model_type(self) -> str:
        return self.model.config.model_type

    @property
    def window_seconds(self) -> float | None:
        """The fixed input window of models that have one (Whisper), else None."""
        if self.model_type == "whisper":
            return whisper_window_seconds(self.model.config.max_source_positions)
        return None

    @property
    def uses_attention_mask(self) -> bool:
        """Whether padded batches may carry an attention mask. Group-norm wav2vec2-style models must not get
        one (their outputs change with zero-padding either way; see transformers #21534)."""
        return bool(getattr(self.feature_extractor, "return_attention_mask", False)) and self.model_type != "whisper"

    def save(self, directory: Path) -> None:
        self.model.save_pretrained(directory, safe_serialization=True)
        self.feature_extractor.save_pretrained(directory)


def label_maps(labels: list[str]) -> tuple[dict[int, str], dict[str, int]]:
    id2label = {i: label for i, label in enumerate(labels)}
    return id2label, {label: i for i, label in id2label.items()}


def resolve_config(model_config: str) -> PretrainedConfig:
    """A config from a NAME in NAMED_CONFIGS, or a JSON/YAML file with a `model_type` key."""
    if model_config in NAMED_CONFIGS:
        values = dict(NAMED_CONFIGS[model_config])
    else:
        path = Path(model_config)
        if not path.is_file():
            raise ConfigError(
                f"--model-config {model_config!r} is neither a file nor a known name; known names: {', '.join(NAMED_CONFIGS)}"
            )
        try:
            if path.suffix in (".yaml", ".yml"):
                import yaml

                values = yaml.safe_load(path.read_text())
            else:
                values = json.loads(path.read_text())
        except Exception as e:
            raise ConfigError(f"--model-config {path}: not valid JSON/YAML ({e})") from e
        if not isinstance(values, dict) or "model_type" not in values:
            raise ConfigError(f"--model-config {path}: needs a mapping with a 'model_type' key (e.g. wav2vec2, whisper)")
    model_type = values.pop("model_type")
    try:
        return AutoConfig.for_model(model_type, **values)
    except (ValueError, KeyError) as e:
        raise ConfigError(f"--model-config {model_config}: {e}") from e


def feature_extractor_for(config: PretrainedConfig, window_seconds: int = WHISPER_MAX_WINDOW_SECONDS):
    """The feature extractor a freshly built model of this config needs."""
    if config.model_type == "whisper":
        return WhisperFeatureExtractor(feature_size=config.num_mel_bins, chunk_length=int(window_seconds))
    if config.model_type in WAV2VEC2_FAMILY:
        return Wav2Vec2FeatureExtractor(
            feature_size=1, sampling_rate=WAV2VEC2_SAMPLING_RATE, padding_value=0.0, do_normalize=True,
            return_attention_mask=getattr(config, "feat_extract_norm", "group") == "layer",
        )
    if config.model_type == "audio-spectrogram-transformer":
        from transformers import ASTFeatureExtractor

        return ASTFeatureExtractor(num_mel_bins=config.num_mel_bins, max_length=config.max_length)
    raise ConfigError(f"no feature extractor known for model_type {config.model_type!r}")


def build_model(model_config: str, labels: list[str], seed: int = 42, weighted_layer_sum: bool | None = None) -> ModelBundle:
    """An untrained classifier built from a config (see resolve_config), with our label maps."""
    config = resolve_config(model_config)
    id2label, label2id = label_maps(labels)
    config.num_labels, config.id2label, config.label2id = len(labels), id2label, label2id
    if weighted_layer_sum is not None:
        config.use_weighted_layer_sum = weighted_layer_sum
    torch.manual_seed(seed)
    try:
        model = AutoModelForAudioClassification.from_config(config)
    except ValueError as e:
        raise ModelError(f"--model-config {model_config}: no audio-classification head for this model ({e})") from e
    return ModelBundle(model, feature_extractor_for(config))


def check_model_reference(model: str, argument: str = "--model") -> bool:
    """Whether `model` is a local directory (True) or a Hub id (False). A directory whose config.json or weights are
    damaged is a ModelError before any work, and so is a reference that can only be a local path and names nothing:
    one that starts with `.`, `/` or `~`, has more than one `/`, or starts with a folder that exists here, and a bare
    name (`demo-modl`) that no cached Hub model has, since a Hub id is `owner/name`. A Hub id while the Hub cannot be
    reached is an error at once, unless the local cache holds it. `argument` names it in messages as the user gave
    it (`--model`, `MODEL_DIR`)."""
    from audioclf.backbone import KNOWN_BACKBONES

    path = Path(model).expanduser()
    if path.exists():
        if path.is_dir():
            _check_checkpoint_files(path)
        return True
    if model in KNOWN_BACKBONES:  # a backbone's name: its installed folder (resolve_backbone), installed on first use
        return True
    first = Path(model).parts[0] if Path(model).parts else model
    cached = _in_hub_cache(model)
    if model.startswith((".", "/", "~")) or model.count("/") > 1 or ("/" in model and Path(first).is_dir()) or (
            "/" not in model and not cached):
        raise ModelError(f"{argument} {model!r}: no such folder{_near_names(path)}")
    if not cached:
        from audioclf.hub import unreachable_reason

        unreachable = unreachable_reason()
        if unreachable:
            raise ModelError(f"{argument} {model!r}: not a folder here, and as a Hub id it cannot be downloaded: the "
                             f"Hub cannot be reached ({unreachable}) and the local cache does not hold it")
    return False


def _in_hub_cache(repo_id: str) -> bool:
    """Whether huggingface_hub's local cache holds this model's config.json (an invalid id is simply not there)."""
    try:
        return isinstance(huggingface_hub.try_to_load_from_cache(repo_id, MODEL_CONFIG_FILE), str)
    except Exception:  # HFValidationError for a name that cannot be a repository id
        return False


def _near_names(path: Path) -> str:
    """`; did you mean 'demo-model'?` where the folder that holds `path` has a folder of a close name."""
    import difflib

    parent = path.parent if str(path.parent) else Path(".")
    try:
        folders = [p.name for p in parent.iterdir() if p.is_dir()] if parent.is_dir() else []
    except OSError:
        return ""
    close = difflib.get_close_matches(path.name, folders, n=1)
    return f"; did you mean {str(parent / close[0]) if str(parent) != '.' else close[0]!r}?" if close else ""


DAMAGED_HINT = "copy the model directory again, or train it again"


def _check_checkpoint_files(directory: Path) -> None:
    """config.json parses and every safetensors file is whole (its header, which says where every tensor's bytes
    end, is read without the tensors), so that a damaged copy is named rather than a traceback from deep inside
    transformers."""
    config = directory / MODEL_CONFIG_FILE
    if config.is_file():
        try:
            json.loads(config.read_text())
        except (ValueError, UnicodeDecodeError) as e:
            raise ModelError(f"{config}: not valid JSON ({e}); {DAMAGED_HINT}") from e
    for weights in sorted(directory.glob("*.safetensors")):
        problem = safetensors_problem(weights)
        if problem is not None:
            raise ModelError(f"{weights}: truncated or corrupt weights ({problem}); {DAMAGED_HINT}")


def safetensors_problem(path: Path) -> str | None:
    """Why a safetensors file is unusable (shorter than its header says, or no readable header), or None. Reads the
    header only, not the tensors: the one check of model directories and of training checkpoints alike."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt"):
            return None
    except Exception as e:  # safetensors' own error type, or OSError
        return str(e).splitlines()[0] if str(e) else type(e).__name__


def _check_head_fits_labels(directory: Path) -> None:
    """The classifier head has one output per label that config.json's id2label names. transformers would refuse the
    mismatch with a RuntimeError after printing a table."""
    from safetensors import safe_open

    try:
        id2label = json.loads((directory / MODEL_CONFIG_FILE).read_text()).get("id2label")
    except (OSError, ValueError, AttributeError):
        return  # no usable config.json: transformers says so
    if not isinstance(id2label, dict):
        return
    for weights in sorted(directory.glob("*.safetensors")):
        with safe_open(str(weights), framework="pt") as f:
            head = [key for key in f.keys() if key.endswith(HEAD_WEIGHT_NAMES)]
            if head:
                outputs = f.get_slice(head[0]).get_shape()[0]
                if outputs != len(id2label):
                    raise ModelError(
                        f"{directory / MODEL_CONFIG_FILE}: id2label names {len(id2label)} labels but the classifier "
                        f"head in {weights.name} ({head[0]}) has {outputs} outputs; the label maps and the weights "
                        f"must agree: restore config.json, or train the model again")
                return


def load_model(model: str, labels: list[str] | None = None, weighted_layer_sum: bool | None = None,
               argument: str = "--model") -> ModelBundle:
    """Load a classifier from a local directory or a Hub id. With `labels`, the head is sized and named for
    them (a new head where the checkpoint's does not fit); without, the checkpoint's own labels are kept. A known
    backbone's name (backbone.KNOWN_BACKBONES: whisper-tiny.en, whisper-base) loads its installed checkpoint,
    installing it on first use. `argument` names `model` in messages (`--model`, `MODEL_DIR`)."""
    from audioclf.backbone import resolve_backbone

    model = resolve_backbone(model)
    local = check_model_reference(model, argument)
    if local and labels is None and Path(model).is_dir():
        _check_head_fits_labels(Path(model))
    kwargs: dict = {}
    if labels is not None:
        id2label, label2id = label_maps(labels)
        kwargs = dict(num_labels=len(labels), id2label=id2label, label2id=label2id, ignore_mismatched_sizes=True)
    if weighted_layer_sum is not None:
        kwargs["use_weighted_layer_sum"] = weighted_layer_sum  # a new layer_weights parameter where it was off
    try:
        feature_extractor = AutoFeatureExtractor.from_pretrained(model)
        classifier = AutoModelForAudioClassification.from_pretrained(model, **kwargs)
    except OSError as e:
        if local:
            where = "local directory"
        elif huggingface_hub.constants.HF_HUB_OFFLINE:  # read at import, like huggingface_hub itself does
            where = "Hub id: offline (HF_HUB_OFFLINE) and not in the local cache"
        else:
            where = "Hub id (is the Hub reachable? set HF_HUB_OFFLINE=1 to work offline)"
        raise ModelError(f"{argument} {model!r}: cannot load it as a {where}: {str(e).splitlines()[0]}") from e
    except ValueError as e:
        raise ModelError(f"{argument} {model!r}: not an audio-classification checkpoint ({str(e).splitlines()[0]})") from e
    except Exception as e:  # anything else a damaged checkpoint makes transformers or torch raise
        raise ModelError(f"{argument} {model!r}: cannot load it ({type(e).__name__}: "
                         f"{(str(e).splitlines() or [''])[0]}); {DAMAGED_HINT}") from e
    return ModelBundle(classifier, feature_extractor)


def fit_whisper_window(bundle: ModelBundle, seconds: int) -> None:
    """Shorten (or keep) a Whisper encoder's fixed window to `seconds`, in place.

    transformers' Whisper encoder insists on exactly max_source_positions * WHISPER_FRAMES_PER_POSITION mel frames
    and mean-pools over all of them, padding included, so the window should fit the clips. The positions table is cut and the
    feature extractor's chunk length set to match, so the saved directory loads in the pipeline unchanged.
    """
    if bundle.model_type != "whisper":
        return
    if seconds != int(seconds) or seconds < 1:
        raise ConfigError(f"--max-seconds {seconds}: Whisper windows are whole seconds (1 or more)")
    positions = whisper_positions(int(seconds))
    encoder = bundle.model.encoder
    old = encoder.embed_positions.weight
    if positions > old.shape[0]:
        raise ConfigError(f"--max-seconds {seconds}: this Whisper encoder's window is at most {whisper_window_seconds(old.shape[0]):g} s")
    table = nn.Embedding(positions, old.shape[1])
    table.weight.data.copy_(old.data[:positions])
    table.requires_grad_(False)
    encoder.embed_positions = table
    encoder.max_source_positions = positions
    bundle.model.config.max_source_positions = positions
    fe = bundle.feature_extractor
    bundle.feature_extractor = WhisperFeatureExtractor(
        feature_size=fe.feature_size, sampling_rate=fe.sampling_rate, hop_length=fe.hop_length,
        chunk_length=int(seconds), n_fft=fe.n_fft, padding_value=fe.padding_value,
    )


def freeze_front_end(model: PreTrainedModel) -> None:
    """Freeze the convolutional front end: wav2vec2's feature encoder, or Whisper's two input convolutions."""
    if hasattr(model, "freeze_feature_encoder"):
        model.freeze_feature_encoder()
    elif model.config.model_type == "whisper":
        for conv in (model.encoder.conv1, model.encoder.conv2):
            conv.requires_grad_(False)


def encoder_layers(model: PreTrainedModel, flag: str = "--freeze-layers") -> nn.ModuleList:
    """The transformer layers of a classifier's encoder, lowest first; `flag` is the option that needs them."""
    if model.config.model_type == "whisper":
        return model.encoder.layers
    base = getattr(model, model.base_model_prefix)
    encoder = getattr(base, "encoder", None)
    if encoder is None or not hasattr(encoder, "layers"):
        raise ConfigError(f"{flag}: cannot find the transformer layers of a {model.config.model_type} model")
    return encoder.layers


def freeze_lowest_layers(model: PreTrainedModel, count: int) -> None:
    """Freeze the `count` lowest transformer layers (the front end is frozen separately)."""
    if count <= 0:
        return
    layers = encoder_layers(model)
    if count > len(layers):
        raise ConfigError(f"--freeze-layers {count}: the encoder has only {len(layers)} layers")
    for layer in layers[:count]:
        layer.requires_grad_(False)


def whole_seconds(seconds: float) -> int:
    return max(1, math.ceil(seconds - 1e-9))
