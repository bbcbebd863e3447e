"""Recipe: the real hub diffusion models that notebooks 08-09 run in their "Pipeline real" sections.

The notebooks call these functions with a hub id (``COURSE_ONLINE=1``); the tests call exactly the
same functions offline on a folder holding a tiny random model of the same classes, built from
``tests/fixtures/hub_configs/<org>--<name>.json``. Models go to ``device`` in ``dtype`` (the
notebook passes ``cfg.device`` / ``cfg.dtype``); what comes back is ready to display.

- ``dit_pipeline_images``: ``DiTPipeline`` (``facebook/DiT-XL-2-256``: DiT-XL/2 + the SD VAE + DDIM)
  -> PIL images of ImageNet classes given by name (notebook 09);
- ``vae_roundtrip``: an ``AutoencoderKL`` (``stabilityai/stable-diffusion-3.5-medium``'s VAE) ->
  latents ``(z - shift_factor) * scaling_factor`` and the decoded image (notebook 08).
"""
from __future__ import annotations

import torch

__all__ = ["dit_pipeline_images", "vae_roundtrip"]


def dit_pipeline_images(model: str, class_names, *, device="cpu", dtype: torch.dtype = torch.float32,
                        steps: int = 25, guidance_scale: float = 4.0, seed: int = 0, scheduler: str = "dpm_solver"):
    """Generate one image per ImageNet class name with a ``DiTPipeline`` (a hub id or a local folder).

    ``scheduler="dpm_solver"`` swaps the shipped DDIM scheduler for ``DPMSolverMultistepScheduler`` (as
    diffusers' DiT example does: 25 steps are enough); ``"shipped"`` keeps it. Returns a list of PIL images.
    """
    from diffusers import DiTPipeline, DPMSolverMultistepScheduler

    if scheduler not in ("dpm_solver", "shipped"):
        raise ValueError(f"scheduler must be 'dpm_solver' or 'shipped', got {scheduler!r}")
    names = [class_names] if isinstance(class_names, str) else list(class_names)
    pipe = DiTPipeline.from_pretrained(model, dtype=dtype).to(device)
    if scheduler == "dpm_solver":
        pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    ids = pipe.get_label_ids(names)  # ValueError naming the known labels for an unknown name
    g = torch.Generator(device="cpu").manual_seed(seed)
    return pipe(class_labels=ids, num_inference_steps=steps, guidance_scale=guidance_scale, generator=g).images


@torch.no_grad()
def vae_roundtrip(model: str, image, *, subfolder: str | None = "vae", device="cpu",
                  dtype: torch.dtype = torch.float32, seed: int = 0):
    """Encode a PIL image with an ``AutoencoderKL`` and decode it back.

    The image is cropped to sides divisible by 8. Returns (latents (1, C, H/8, W/8) as SD3 feeds them to its
    transformer, i.e.
    ``(z - shift_factor) * scaling_factor``, on the CPU in float32; the decoded PIL image).
    """
    import numpy as np
    from diffusers import AutoencoderKL
    from PIL import Image

    vae = AutoencoderKL.from_pretrained(model, subfolder=subfolder, dtype=dtype).to(device).eval()
    image = image.convert("RGB").crop((0, 0, image.width // 8 * 8, image.height // 8 * 8))  # sides divisible by 8
    arr = np.asarray(image, dtype=np.float32)
    x = torch.from_numpy(arr).permute(2, 0, 1)[None].to(device=device, dtype=dtype) / 127.5 - 1  # [-1, 1]
    shift = vae.config.shift_factor or 0.0
    z = vae.encode(x).latent_dist.sample(generator=torch.Generator(device="cpu").manual_seed(seed))
    # z_model = (z - shift_factor) * scaling_factor   (SD3's latent normalisation)
    latents = (z - shift) * vae.config.scaling_factor
    out = vae.decode(latents / vae.config.scaling_factor + shift).sample  # (1, 3, H, W) in [-1, 1]
    pixels = ((out[0].float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
    return latents.float().cpu(), Image.fromarray(pixels)
