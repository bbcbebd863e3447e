"""Stable Diffusion 3.5's memory (notebook 12): how many bytes each piece of the pipeline needs, and which
GPUs of the lecture's VRAM table run it without compromises.

Weights are the only thing this arithmetic counts exactly:

    bytes(component) = parameters x bytes per parameter     (fp32 4, fp16/bf16 2, 8-bit 1, 4-bit 0.5)

and three ways to place them on the GPU:

    all resident      sum over the components
    without T5        the same sum, T5-XXL dropped (``text_encoder_3=None``)
    model offload     max over the components (``enable_model_cpu_offload``: one on the GPU at a time)

Activations, the CUDA context and the allocator's cache come on top; the lecture's table is a measured
verdict, so ``vram_verdicts`` takes that overhead as an explicit argument (``overhead_gb``) and
``overhead_from_measurement`` derives it from the one measured figure the lecture gives (SD3.5 Medium,
9.9 GB). Public names: ``PARAMETERS``, ``SOURCES``, ``BYTES_PER_PARAMETER``, ``COMPONENTS``,
``component_bytes``, ``pipeline_bytes``, ``vram_verdicts``, ``overhead_from_measurement``,
``LECTURE_VRAM_TABLE``, ``LECTURE_MEDIUM_VRAM_GB``.
"""
from __future__ import annotations

GB = 1e9  # the table's "VRAM (GB)" column, in 10^9 bytes

# Parameters of each component, and where each number comes from.
PARAMETERS = {
    "mmdit_large": 8.1e9,     # SD3.5 Large / Large Turbo
    "mmdit_medium": 2.5e9,    # SD3.5 Medium (MMDiT-X)
    "t5_xxl": 4.7e9,          # T5-XXL encoder (text_encoder_3)
    "clip_l": 123e6,          # CLIP ViT-L/14 text tower (text_encoder)
    "clip_bigg": 695e6,       # OpenCLIP ViT-bigG/14 text tower (text_encoder_2)
    "vae": 84e6,              # SD3's 16-channel AutoencoderKL (encoder + decoder)
}
SOURCES = {
    "mmdit_large": "clase 5, 'Stable Diffusion 3.5': 'LARGE: Con 8.1 mil millones de parámetros'",
    "mmdit_medium": "clase 5, 'Stable Diffusion 3.5': 'MEDIUM: Con 2.5 mil millones de parámetros y arquitectura MMDiT-X'",
    "t5_xxl": "diffusers, docs de stable_diffusion_3: '4.7B parameter T5-XXL'",
    "clip_l": "CLIPTextModelWithProjection de CLIP ViT-L/14 (768, 12 capas), contado en el cuaderno 12",
    "clip_bigg": "CLIPTextModelWithProjection de OpenCLIP bigG (1280, 32 capas), contado en el cuaderno 12",
    "vae": "AutoencoderKL de SD3 (128-256-512-512, 16 canales latentes), contado en el cuaderno 12",
}
BYTES_PER_PARAMETER = {"fp32": 4.0, "fp16": 2.0, "bf16": 2.0, "int8": 1.0, "nf4": 0.5}

# The pipeline's components, by model.
COMPONENTS = {
    "large": ("mmdit_large", "t5_xxl", "clip_l", "clip_bigg", "vae"),
    "medium": ("mmdit_medium", "t5_xxl", "clip_l", "clip_bigg", "vae"),
}
TEXT_ENCODERS = ("t5_xxl", "clip_l", "clip_bigg")

# The lecture's table ("Stable Diffusion 3.5", hardware compatibility): VRAM (GB) -> verdict.
LECTURE_VRAM_TABLE = {
    "medium": {8: "!", 10: "✓", 12: "✓", 16: "✓", 20: "✓", 24: "✓", 32: "✓"},
    "large": {8: "!", 10: "!", 12: "!", 16: "!", 20: "!", 24: "✓", 32: "✓"},
}
# The lecture's one measured figure: SD3.5 Medium runs on consumer hardware with 9.9 GB of VRAM
# (the model card adds "excluding text encoders": they run first and leave the GPU).
LECTURE_MEDIUM_VRAM_GB = 9.9


def _check(model: str, dtype: str):
    if model not in COMPONENTS:
        raise ValueError(f"model must be one of {sorted(COMPONENTS)}, got {model!r}")
    if dtype not in BYTES_PER_PARAMETER:
        raise ValueError(f"dtype must be one of {sorted(BYTES_PER_PARAMETER)}, got {dtype!r}")


def component_bytes(model: str = "large", dtype: str = "bf16", *, t5: bool = True,
                    dtypes: dict[str, str] | None = None) -> dict[str, float]:
    """Bytes of each component's weights: parameters x bytes per parameter. ``dtypes`` overrides the
    dtype per component (e.g. ``{"t5_xxl": "int8"}``); ``t5=False`` drops T5-XXL."""
    _check(model, dtype)
    dtypes = dtypes or {}
    out = {}
    for name in COMPONENTS[model]:
        if name == "t5_xxl" and not t5:
            continue
        d = dtypes.get(name, dtype)
        _check(model, d)
        # bytes = N * bytes_per_parameter
        out[name] = PARAMETERS[name] * BYTES_PER_PARAMETER[d]
    return out


def pipeline_bytes(model: str = "large", dtype: str = "bf16", *, t5: bool = True, offload: bool = False,
                   text_encoders: bool = True, dtypes: dict[str, str] | None = None) -> float:
    """Bytes of weights resident on the GPU at the worst moment.

    offload=False: every component at once (sum); offload=True: ``enable_model_cpu_offload``, one
    component at a time (max). ``text_encoders=False`` counts only the denoising stage (MMDiT + VAE),
    as when the prompt is encoded first and the encoders leave the GPU."""
    parts = component_bytes(model, dtype, t5=t5, dtypes=dtypes)
    if not text_encoders:
        parts = {k: v for k, v in parts.items() if k not in TEXT_ENCODERS}
    # resident = max_i bytes_i (offload)  or  sum_i bytes_i
    return max(parts.values()) if offload else sum(parts.values())


def vram_verdicts(required_bytes: float, vram_gb=tuple(LECTURE_VRAM_TABLE["large"]), *,
                  overhead_gb: float = 0.0) -> dict[int, str]:
    """'✓' where weights + overhead fit in the GPU's memory, '!' where they do not."""
    if overhead_gb < 0:
        raise ValueError(f"overhead_gb must be >= 0, got {overhead_gb}")
    # fits  <=>  weights + overhead <= VRAM
    return {v: "✓" if required_bytes + overhead_gb * GB <= v * GB else "!" for v in vram_gb}


def overhead_from_measurement(measured_gb: float = LECTURE_MEDIUM_VRAM_GB, model: str = "medium",
                              dtype: str = "fp16") -> float:
    """GB beyond the weights in a measured peak: measured - (MMDiT + VAE) of the denoising stage
    (activations, the CUDA context, the allocator's cache)."""
    # overhead = measured - weights(denoising stage)
    return measured_gb - pipeline_bytes(model, dtype, text_encoders=False) / GB


def agreement(verdicts: dict[int, str], model: str) -> dict[int, bool]:
    """Which entries of the lecture's table ``verdicts`` reproduces."""
    table = LECTURE_VRAM_TABLE[model]
    return {v: verdicts[v] == table[v] for v in table}
