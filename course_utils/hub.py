"""Model resolution: the course's own checkpoints offline, the real hub models when allowed (notebook 00).

``resolve(name)`` returns something to hand to a library loader (``from_pretrained``,
``open_clip.create_model_and_transforms``): a local folder for the course's own checkpoints in
``data/models/``, or a hub id when downloads are allowed (``COURSE_ONLINE=1``) and the hub answers.
Offline, a hub id falls back to its course stand-in with a one-line message; nothing here waits on
the network for more than ``timeout`` seconds (the check is skipped entirely when offline).
"""
from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path

from .config import DATA_DIR, is_online

MODELS_DIR = DATA_DIR / "models"
HUB_HOST = "huggingface.co"


@dataclass(frozen=True)
class CourseModel:
    """A checkpoint the course trains and ships under ``data/models/<folder>``."""

    folder: str
    chapter: str
    script: str  # the script that reproduces it
    description: str

    @property
    def path(self) -> Path:
        return MODELS_DIR / self.folder  # read at call time, so tests can point MODELS_DIR elsewhere


@dataclass(frozen=True)
class HubModel:
    """A real hub model a chapter uses, with the course model that stands in for it offline."""

    stand_in: str
    chapter: str
    tier: str  # "laptop" (online, CPU is fine) or "gpu"
    gated: bool = False
    library: str = "transformers"


COURSE_MODELS: dict[str, CourseModel] = {
    "course/clip-shapes": CourseModel("clip-shapes", "01", "scripts/train_clip.py",
                                      "tiny CLIP (ViT + text transformer) trained on Shapes World"),
    "course/llava-shapes": CourseModel("llava-shapes", "03", "scripts/train_llava.py",
                                       "tiny LLaVA (course CLIP vision tower + tiny Llama) on Shapes World"),
    "course/llava-shapes-mc": CourseModel("llava-shapes-mc", "07", "scripts/train_llava.py",
                                          "course/llava-shapes fine-tuned to answer multiple choice in the naive "
                                          "and the explicit ('Final Answer:') prompt style"),
    "course/llama-tiny": CourseModel("llama-tiny", "04", "scripts/train_llama.py",
                                     "tiny Llama 3-style decoder trained on Shapes World text"),
    "course/mllama-shapes": CourseModel("mllama-shapes", "05", "scripts/train_mllama.py",
                                        "tiny Llama 3.2 Vision-style model with gated cross-attention"),
    "course/pixtral-shapes": CourseModel("pixtral-shapes", "06", "scripts/train_pixtral.py",
                                         "tiny Pixtral-style vision encoder + decoder"),
    "course/vae-digits": CourseModel("vae-digits", "08", "scripts/train_vae.py",
                                     "VAE on the 8x8 digits (latent diffusion in miniature)"),
    "course/digits-classifier": CourseModel("digits-classifier", "09", "scripts/train_digits.py",
                                            "digits classifier that judges generated samples"),
    "course/dit-digits": CourseModel("dit-digits", "09", "scripts/train_digits.py",
                                     "class-conditional DiT trained with rectified flow on the digits"),
    "course/dit-digits-uniform": CourseModel("dit-digits-uniform", "10", "scripts/train_digits.py",
                                             "the digits DiT trained with uniform timesteps (vs logit-normal)"),
    "course/dit-digits-reflow": CourseModel("dit-digits-reflow", "10", "scripts/train_digits.py",
                                            "2-RF: the digits DiT after one reflow, for 1-2 step sampling"),
    "course/shapes-judge": CourseModel("shapes-judge", "11", "scripts/train_mmdit.py",
                                       "reads colour, shape and place of Shapes World objects to judge generated images"),
    "course/sd3-shapes": CourseModel("sd3-shapes", "12", "scripts/train_mmdit.py",
                                     "tiny text-to-image StableDiffusion3Pipeline: course MM-DiT, VAE and CLIP"),
}

HUB_MODELS: dict[str, HubModel] = {
    # 01 CLIP
    "openai/clip-vit-base-patch32": HubModel("course/clip-shapes", "01", "laptop"),
    "openai/clip-vit-large-patch14": HubModel("course/clip-shapes", "01", "laptop"),
    "open_clip/ViT-B-32/laion2b_s34b_b79k": HubModel("course/clip-shapes", "01", "laptop", library="open_clip"),
    # 03 LLaVA
    "llava-hf/llava-onevision-qwen2-0.5b-ov-hf": HubModel("course/llava-shapes", "03", "laptop"),
    "llava-hf/llava-1.5-7b-hf": HubModel("course/llava-shapes", "03", "gpu"),
    # 04-05 Llama 3
    "meta-llama/Llama-3.2-1B": HubModel("course/llama-tiny", "04", "laptop", gated=True),
    "meta-llama/Meta-Llama-3.1-8B": HubModel("course/llama-tiny", "04", "gpu", gated=True),
    "meta-llama/Llama-3.2-11B-Vision-Instruct": HubModel("course/mllama-shapes", "05", "gpu", gated=True),
    # 06 Pixtral
    "mistral-community/pixtral-12b": HubModel("course/pixtral-shapes", "06", "gpu"),
    # 09 DiT
    "facebook/DiT-XL-2-256": HubModel("course/dit-digits", "09", "gpu", library="diffusers"),
    # 12 Stable Diffusion 3.5
    "stabilityai/stable-diffusion-3.5-medium": HubModel("course/sd3-shapes", "12", "gpu", True, "diffusers"),
    "stabilityai/stable-diffusion-3.5-large": HubModel("course/sd3-shapes", "12", "gpu", True, "diffusers"),
    "stabilityai/stable-diffusion-3.5-large-turbo": HubModel("course/sd3-shapes", "12", "gpu", True, "diffusers"),
}


def known_names() -> list[str]:
    return sorted(COURSE_MODELS) + sorted(HUB_MODELS)


def hub_reachable(timeout: float = 2.0, host: str = HUB_HOST) -> bool:
    """True if a TCP connection to the hub opens within ``timeout`` seconds (never hangs)."""
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def _in_local_cache(repo_id: str) -> bool:
    """True when the hub model is already in the local Hugging Face cache (usable offline)."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    for fname in ("config.json", "model_index.json", "open_clip_config.json"):
        try:
            hit = try_to_load_from_cache(repo_id, fname)
        except Exception:  # malformed id for the cache API, e.g. open_clip names
            return False
        if isinstance(hit, str):
            return True
    return False


def course_path(name: str) -> Path:
    """Local folder of a course checkpoint; ``RuntimeError`` saying how to build it when missing."""
    model = COURSE_MODELS[name]
    path = MODELS_DIR / model.folder
    if not path.is_dir() or not any(path.iterdir()):
        raise RuntimeError(f"the course checkpoint {name!r} ({model.description}) is not in data/models/{model.folder}; "
                           f"it belongs to notebook {model.chapter} and is produced by `python {model.script}`")
    return path


def resolve(name: str, *, online: bool | None = None, allow_fallback: bool = True,
            timeout: float = 2.0, verbose: bool = True) -> str:
    """Resolve a model name to what the loaders take: a local folder or a hub id.

    - ``"course/..."``: the course's own checkpoint in ``data/models/`` (always local);
    - a hub id: the id itself when downloads are allowed (``online`` or ``COURSE_ONLINE=1``) and the
      hub answers within ``timeout`` seconds, or when it is already in the local cache; otherwise
      the course stand-in (``allow_fallback=True``) or a ``RuntimeError`` saying how to get it.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"a model name is a non-empty string, got {name!r}")
    if name in COURSE_MODELS:
        return str(course_path(name))
    if name not in HUB_MODELS:
        raise ValueError(f"unknown model {name!r}; known names: {', '.join(known_names())}")
    entry = HUB_MODELS[name]
    online = is_online() if online is None else online
    repo_id = name.split("/", 1)[1] if entry.library == "open_clip" else name
    if online and hub_reachable(timeout):
        if entry.gated and verbose:
            print(f"[hub] {name} is gated: accept its licence on the model page and log in "
                  "(`huggingface-cli login` or HF_TOKEN) before downloading.")
        return name
    if entry.library != "open_clip" and _in_local_cache(repo_id):
        if verbose:
            print(f"[hub] {name}: found in the local Hugging Face cache.")
        return name
    why = ("downloads are off (set COURSE_ONLINE=1 to allow them)" if not online
           else f"the hub did not answer within {timeout:g} s")
    if not allow_fallback:
        raise RuntimeError(f"{name} needs a download but {why}; set COURSE_ONLINE=1 on a machine with internet, "
                           f"or use its offline stand-in {entry.stand_in!r}")
    path = course_path(entry.stand_in)
    if verbose:
        print(f"[hub] {name}: {why}; using the course stand-in {entry.stand_in!r} "
              f"(data/models/{COURSE_MODELS[entry.stand_in].folder}).")
    return str(path)


def is_course_path(resolved: str) -> bool:
    """True when ``resolve`` returned a course checkpoint (so a notebook knows which tier ran)."""
    try:
        return Path(resolved).resolve().is_relative_to(MODELS_DIR.resolve())
    except (OSError, ValueError):
        return False


def table() -> list[dict]:
    """Rows describing every known name (for the tour in notebook 00)."""
    rows = []
    for name, m in COURSE_MODELS.items():
        rows.append({"name": name, "kind": "course", "chapter": m.chapter,
                     "available": m.path.is_dir() and any(m.path.iterdir()), "stand_in": "", "tier": "offline"})
    for name, h in HUB_MODELS.items():
        rows.append({"name": name, "kind": "hub", "chapter": h.chapter, "available": None,
                     "stand_in": h.stand_in, "tier": h.tier + (" (gated)" if h.gated else "")})
    return rows

