"""Exporting a sentence-transformers model to ONNX Runtime, and its int8 variants.

`ensure_export` writes what `embeddings.onnx_backend.OnnxBackend` loads (the files are
listed there), once per model, into `<cache_dir>/<model fingerprint>/`. Exporting needs
torch, transformers and `onnx`; weight-only quantising also `onnx_ir`.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path

import numpy as np

from embeddings.onnx_backend import (
    FP32_FILE, PIPELINE_FILE, PROBE_TEXTS, VARIANT_FILES, OnnxExportError, make_session, model_inputs,
    variant_name,
)
from embeddings.sentence_transformer import model_name_for

log = logging.getLogger(__name__)

EXPORT_RECIPE = 4  # bump when the export steps change, so that old exports are not reused

CALIBRATION_TEXTS = [
    "hello",
    "thank you so much",
    "yes please",
    "Never mind.",
    "Tell me more.",
    "Why do leaves change colour in autumn?",
    "How many calories are in an avocado?",
    "What does an HTTP 404 error mean?",
    "Which programming language should I learn first, and why?",
    "My laptop won't turn on after the update. What should I try?",
    "Summarise this article in three bullet points for a busy manager.",
    "Compare renting and buying a home for someone who moves every few years.",
    "Recommend a readable book about the history of mathematics.",
    "Is it safe to drink tap water in Lisbon?",
    "Translate 'see you tomorrow' into Italian.",
    "Write a limerick about a cat who hates Mondays.",
    "The meeting has moved to Thursday at 3 pm; please update the invitation.",
    "SELECT name, COUNT(*) FROM orders GROUP BY name HAVING COUNT(*) > 3;",
    "for i in range(10): print(i ** 2)",
    "Quelle est la meilleure saison pour visiter Kyoto ?",
    "Wie lange dauert die Zugfahrt von Berlin nach Wien?",
    "¿Cómo se prepara una tortilla de patatas?",
    "this is sooo good 🎉🎉 can't wait!!",
    "ERROR 2024-01-05 12:00:01 connection refused (errno 111)",
    " ".join(["A long document repeats its sentences, and the model reads every token of it."] * 20),
]
SMOOTHING_ALPHA = 0.7  # see _smooth
OUTLIER_RATIO = 8.0  # see _split_outliers
MAX_OUTLIERS = 4


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "stratacache" / "onnx"


def model_fingerprint(model_path: Path) -> str:
    """Names the export: the recipe and the model's files (names and contents, not where
    they are). A reinstall or a fresh clone's virtual environment holds the same model at
    a new path with new mtimes, and reuses the export instead of writing another (about
    150 MB, a minute's work); a changed weight file gets a new one. Hashing the 90 MB of
    all-MiniLM-L6-v2 takes about 0.1 s."""
    model_path = model_path.resolve()
    digest = hashlib.sha256(f"recipe {EXPORT_RECIPE}\n".encode())
    for file in sorted(p for p in model_path.rglob("*") if p.is_file()):
        with file.open("rb") as fh:
            content = hashlib.file_digest(fh, "sha256").hexdigest()
        digest.update(f"{file.relative_to(model_path).as_posix()} {content}\n".encode())
    return digest.hexdigest()[:16]


def ensure_export(model_path: Path, cache_dir: Path, *, quantize: bool, weight_only: bool = False) -> Path:
    """The export directory for `model_path`, exporting what is missing: the fp32 model
    always, and with `quantize` the dynamic int8 model, or with `weight_only` the weight-only one.

    Safe against a concurrent export of the same model by another process: each
    writes into a private temporary name and renames it into place."""
    final = cache_dir / model_fingerprint(model_path)
    if not (final / PIPELINE_FILE).exists():
        cache_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".export-", dir=cache_dir))
        try:
            started = time.monotonic()
            log.info("exporting %s to ONNX in %s (once per model)", model_path, final)
            export_model(model_path, staging)
            try:
                staging.rename(final)
            except OSError:
                if not (final / PIPELINE_FILE).exists():  # not a concurrent export that got there first
                    raise
            log.info("ONNX export done in %.1fs", time.monotonic() - started)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    target = final / VARIANT_FILES[variant_name(quantize, weight_only)]
    if not target.exists():  # an int8 variant not made yet (the fp32 model comes with the export)
        staged = final / f".{target.name}.{os.getpid()}.onnx"
        try:
            (quantize_weights if weight_only else quantize_model)(final, staged)
            staged.replace(target)
        finally:
            staged.unlink(missing_ok=True)
    return final


def export_model(model_path: Path, out_dir: Path) -> None:
    """Write model.onnx, tokenizer.json, probe.npy and pipeline.json for `model_path` into `out_dir`."""
    _require("onnx")  # before the seconds of loading torch models
    import torch
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel, AutoTokenizer

    pooling = _pooling_mode(model_path)
    reference = SentenceTransformer(str(model_path), device="cpu", local_files_only=True)
    probe = reference.encode(PROBE_TEXTS, convert_to_numpy=True, normalize_embeddings=True, show_progress_bar=False)
    max_length = int(reference.max_seq_length)
    del reference

    hf_tokenizer = AutoTokenizer.from_pretrained(model_path, local_files_only=True)
    if not hf_tokenizer.is_fast:
        raise OnnxExportError(f"{model_path} has no fast tokenizer (tokenizer.json)")
    sample = hf_tokenizer(["a short sentence", "and a slightly longer sentence"], padding=True, return_tensors="pt")
    names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in sample]
    tokenizer = hf_tokenizer.backend_tokenizer
    tokenizer.enable_truncation(max_length)
    tokenizer.no_padding()

    # Eager attention traces to plain ops that ORT's transformer optimizer fuses; sdpa does not.
    model = AutoModel.from_pretrained(model_path, attn_implementation="eager", local_files_only=True).eval()

    class TokenEmbeddings(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
            return self.model(**dict(zip(names, tensors))).last_hidden_state

    traced = out_dir / "traced.onnx"
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer and deprecation chatter
        torch.onnx.export(
            TokenEmbeddings(), tuple(sample[n] for n in names), str(traced),
            input_names=names, output_names=["token_embeddings"],
            dynamic_axes={n: {0: "batch", 1: "sequence"} for n in [*names, "token_embeddings"]},
            opset_version=17, dynamo=False,
        )
    _fuse(traced, out_dir / FP32_FILE, model.config)
    traced.unlink()

    tokenizer.save(str(out_dir / "tokenizer.json"))
    np.save(out_dir / "probe.npy", probe.astype(np.float32))
    (out_dir / PIPELINE_FILE).write_text(json.dumps({
        "model_name": model_name_for(str(model_path)), "dim": int(probe.shape[1]),
        "pooling": pooling, "max_length": max_length,
    }, indent=1))


def quantize_model(export_dir: Path, out_path: Path) -> None:
    """Dynamic int8: int8 weights (one scale per output column) times activations quantised
    to uint8 as each query runs (ORT's DynamicQuantizeMatMul and QAttention: VNNI integer
    products, about 3x faster than the fp32 products and 2x faster than weight-only int8's).

    Those kernels give a whole activation tensor one scale, and BERT's activations have a
    few channels tens of times larger than the rest, mostly on the [CLS] token. Plain
    `quantize_dynamic` (per-channel weights) therefore moves short texts' vectors to cosine
    0.97-0.98 of torch's ("ok", ""); here the outliers are dealt with first, by what makes
    the activation: layer-norm outputs (attention and FFN inputs) are smoothed (_smooth),
    and a GELU output's outlier channels (FFN output inputs) are multiplied in fp32
    (_split_outliers), both sized on CALIBRATION_TEXTS. all-MiniLM-L6-v2, cosine with
    torch on PROBE_TEXTS, mean / worst: plain 0.9913 / 0.9737, smoothing only 0.9952 /
    0.9897, outlier split only 0.9946 / 0.9841, both 0.9989 / 0.9970."""
    _require("onnx")
    import onnx

    model = onnx.load(str(export_dir / FP32_FILE))
    graph = model.graph
    weights = {t.name: t for t in graph.initializer}
    uses = Counter(name for node in graph.node for name in node.input)
    made_by = {out: node.op_type for node in graph.node for out in node.output}
    targets = {  # a node's weight is rewritten, so only one that no other node reads
        id(node): node for node in graph.node
        if node.op_type in ("MatMul", "Attention") and len(node.input) > 1 and node.input[1] in weights
        and uses[node.input[1]] == 1
    }
    ranges = _channel_ranges(model, export_dir, {node.input[0] for node in targets.values()})
    nodes, fp32_nodes = [], []
    for node in graph.node:
        before, after = [], []
        if id(node) in targets:
            weight, channel_max = weights[node.input[1]], ranges[node.input[0]]
            source = made_by.get(node.input[0])
            if source in ("LayerNormalization", "EmbedLayerNormalization", "SkipLayerNormalization"):
                before = _smooth(graph, node, weight, channel_max)
            elif source in ("BiasGelu", "Gelu", "FastGelu"):
                before, after = _split_outliers(graph, node, weight, channel_max)
                fp32_nodes += [n.name for n in before if n.op_type == "MatMul"]
        nodes += [*before, node, *after]
    graph.ClearField("node")
    graph.node.extend(nodes)

    with _quiet_quantizer_logs():
        from onnxruntime.quantization import quantize_dynamic

        quantize_dynamic(
            model, out_path, op_types_to_quantize=["MatMul", "Attention"], per_channel=True,
            nodes_to_exclude=fp32_nodes,
            # shape inference stops at the com.microsoft ops: their outputs are float
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )


def quantize_weights(export_dir: Path, out_path: Path) -> None:
    """Weight-only int8: each MatMul's weights in blocks of 128 with their own scale,
    multiplied with int8-quantised activation blocks (MatMulNBits, accuracy level 4).
    Agrees with torch more closely than quantize_model (0.9992 mean / 0.9977 worst on
    PROBE_TEXTS, its scales being per block and per token), at about twice its latency."""
    _require("onnx", "onnx_ir")
    import onnx

    with _quiet_quantizer_logs():
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

        quantizer = MatMulNBitsQuantizer(
            onnx.load(str(export_dir / FP32_FILE)), bits=8, block_size=128, is_symmetric=True, accuracy_level=4,
        )
        quantizer.process()
    quantizer.model.save_model_to_file(str(out_path))


def _smooth(graph, node, weight, channel_max: np.ndarray) -> list:
    """SmoothQuant: divide input channel c by s_c = max|x_c|^a / max|w_c|^(1-a) (a =
    SMOOTHING_ALPHA) and multiply weight row c by s_c. The product is unchanged; the
    activation's range shrinks, the weights' grows less. For layer-norm outputs, whose
    outlier channels (the layer norm's large gains) are the same for every token. The
    division is a Mul before the node (the layer norm's output also feeds the residual)."""
    from onnx import helper, numpy_helper

    w = numpy_helper.to_array(weight)
    scale = (np.maximum(channel_max, 1e-5) ** SMOOTHING_ALPHA
             / np.maximum(np.abs(w).max(axis=1), 1e-5) ** (1 - SMOOTHING_ALPHA)).astype(np.float32)
    weight.CopyFrom(numpy_helper.from_array((w * scale[:, None]).astype(np.float32), weight.name))
    name = node.name or node.output[0]
    graph.initializer.append(numpy_helper.from_array(1 / scale, f"{name}/smoothing"))
    smoothed = f"{name}/smoothed_input"
    mul = helper.make_node("Mul", [node.input[0], f"{name}/smoothing"], [smoothed], name=f"{name}/smooth")
    node.input[0] = smoothed
    return [mul]


def _split_outliers(graph, node, weight, channel_max: np.ndarray) -> tuple[list, list]:
    """x @ w as int8 (x with its outlier channels zeroed) + x[..., outliers] @ w[outliers]
    in fp32, where an outlier channel's calibrated max |x| is over OUTLIER_RATIO times the
    median channel's (MAX_OUTLIERS at most). For GELU outputs, where one or two channels
    are large on [CLS] only, which smoothing cannot shrink without coarsening the weights.
    Returns the nodes to put before and after `node`; none when no channel stands out."""
    from onnx import helper, numpy_helper

    threshold = OUTLIER_RATIO * float(np.median(channel_max))
    outliers = sorted(int(c) for c in np.argsort(-channel_max)[:MAX_OUTLIERS] if channel_max[c] > threshold)
    if not outliers:
        return [], []
    w = numpy_helper.to_array(weight).copy()
    name = node.name or node.output[0]
    inliers = np.ones(len(channel_max), dtype=np.float32)
    inliers[outliers] = 0
    graph.initializer.extend([
        numpy_helper.from_array(inliers, f"{name}/inlier_mask"),
        numpy_helper.from_array(np.array(outliers, dtype=np.int64), f"{name}/outlier_channels"),
        numpy_helper.from_array(w[outliers], f"{name}/outlier_weight"),
    ])
    w[outliers] = 0
    weight.CopyFrom(numpy_helper.from_array(w, weight.name))
    x, product = node.input[0], node.output[0]
    before = [
        helper.make_node("Mul", [x, f"{name}/inlier_mask"], [f"{name}/inliers"], name=f"{name}/mask_outliers"),
        helper.make_node("Gather", [x, f"{name}/outlier_channels"], [f"{name}/outliers"],
                         name=f"{name}/gather_outliers", axis=-1),
        helper.make_node("MatMul", [f"{name}/outliers", f"{name}/outlier_weight"], [f"{name}/outlier_product"],
                         name=f"{name}/outlier_matmul"),
    ]
    node.input[0], node.output[0] = f"{name}/inliers", f"{name}/inlier_product"
    join = helper.make_node("Add", [f"{name}/inlier_product", f"{name}/outlier_product"], [product],
                            name=f"{name}/join")
    return before, [join]


def _channel_ranges(model, export_dir: Path, names: set[str]) -> dict[str, np.ndarray]:
    """Each named fp32 tensor's largest |value| per channel (last axis) over CALIBRATION_TEXTS."""
    import onnx
    from tokenizers import Tokenizer

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    names = sorted(names)
    probe.graph.output.extend(onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None) for n in names)
    session = make_session(probe.SerializeToString(), threads=1)
    inputs = [i.name for i in session.get_inputs()]
    tokenizer = Tokenizer.from_file(str(export_dir / "tokenizer.json"))
    ranges: dict[str, np.ndarray] = {}
    for encoding in tokenizer.encode_batch(CALIBRATION_TEXTS):
        for name, value in zip(names, session.run(names, model_inputs(encoding, inputs))):
            peak = np.abs(value).reshape(-1, value.shape[-1]).max(axis=0)
            ranges[name] = np.maximum(ranges[name], peak) if name in ranges else peak
    return ranges


@contextlib.contextmanager
def _quiet_quantizer_logs():
    """onnxruntime.quantization logs each node at INFO, some on the root logger, and one of
    its modules calls logging.basicConfig(level=INFO) on import. For the duration, INFO and
    WARNING records are dropped (process-wide: the export runs once, at start-up); then the
    root logger's handlers and level are put back."""
    root = logging.getLogger()
    handlers, level, disabled = root.handlers[:], root.level, root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(disabled)
        root.handlers[:] = handlers
        root.setLevel(level)


def _require(*modules: str) -> None:
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise OnnxExportError(f"exporting needs the Python package(s) {', '.join(missing)}")


def _fuse(traced: Path, out_path: Path, config) -> None:
    """ORT's transformer fusions (attention, layer norm, gelu) where it knows the architecture,
    except SkipLayerNormalization (see onnx_backend.DISABLED_OPTIMIZERS)."""
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import MODEL_TYPES, optimize_model

    if config.model_type not in MODEL_TYPES:
        shutil.copyfile(traced, out_path)
        return
    options = FusionOptions(config.model_type)
    options.enable_skip_layer_norm = options.enable_bias_skip_layer_norm = False
    fused = optimize_model(
        str(traced), model_type=config.model_type, num_heads=config.num_attention_heads,
        hidden_size=config.hidden_size, optimization_options=options, opt_level=1, use_gpu=False,
    )
    fused.save_model_to_file(str(out_path))


def _pooling_mode(model_path: Path) -> str:
    """"mean" or "cls", read from the sentence-transformers module list; anything else is refused."""
    modules_file = model_path / "modules.json"
    if not modules_file.exists():
        return "mean"  # what sentence-transformers puts on a plain transformer
    modules = json.loads(modules_file.read_text())
    kinds = [m["type"].rsplit(".", 1)[-1] for m in modules]
    if kinds[:2] != ["Transformer", "Pooling"] or modules[0].get("path", "") != "" or set(kinds[2:]) - {"Normalize"}:
        raise OnnxExportError(f"cannot export a {' -> '.join(kinds)} pipeline (Transformer -> Pooling [-> Normalize] only)")
    config = json.loads((model_path / modules[1]["path"] / "config.json").read_text())
    mode = config.get("pooling_mode")
    if mode is None:
        on = [key for key, value in config.items() if key.startswith("pooling_mode_") and value is True]
        mode = {"pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "cls"}.get(on[0]) if len(on) == 1 else None
    if mode not in ("mean", "cls"):
        raise OnnxExportError(f"cannot export pooling {config} (mean or cls only)")
    return mode
