"""The online cells of notebooks 08 and 09 run EXACTLY the package functions tested here
(``recipes.diffusers_online``), offline, on tiny random models of the real hub models' classes built from
``tests/fixtures/hub_configs/<org>--<name>.json`` (the published configs, sizes shrunk)."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from course_utils.recipes.diffusers_online import dit_pipeline_images, vae_roundtrip

FIXTURES = Path(__file__).parent / "fixtures" / "hub_configs"


def _components(name: str) -> dict:
    cfg = json.loads((FIXTURES / f"{name}.json").read_text())
    assert cfg["_source"]  # where the values come from
    return {k: {kk: vv for kk, vv in v.items() if kk != "_class_name"} | {"_class_name": v["_class_name"]}
            for k, v in cfg.items() if not k.startswith("_")}


def _build(cls_name: str, config: dict):
    import diffusers

    torch.manual_seed(0)
    cls = getattr(diffusers, cls_name)
    return cls.from_config({k: v for k, v in config.items() if k != "_class_name"}) if "Scheduler" in cls_name \
        else cls(**{k: v for k, v in config.items() if k != "_class_name"})


@pytest.fixture(scope="module")
def tiny_dit_pipeline(tmp_path_factory):
    from diffusers import DiTPipeline

    comp = _components("facebook--DiT-XL-2-256")
    t = comp["transformer"]
    # the structure of DiT-XL/2 256: adaLN-Zero, patch 2, 4 latent channels, learn_sigma (8 out), 1000 classes
    assert (t["norm_type"], t["patch_size"], t["in_channels"], t["out_channels"], t["num_embeds_ada_norm"]) == \
        ("ada_norm_zero", 2, 4, 8, 1000)
    parts = {k: _build(v["_class_name"], v) for k, v in comp.items() if k != "pipeline"}
    pipe = DiTPipeline(**parts, id2label=comp["pipeline"]["id2label"])
    folder = tmp_path_factory.mktemp("dit-xl-2-256-tiny")
    pipe.save_pretrained(folder)
    # save_pretrained does not write id2label; the hub's model_index.json carries it (as here)
    index = json.loads((folder / "model_index.json").read_text())
    index["id2label"] = comp["pipeline"]["id2label"]
    (folder / "model_index.json").write_text(json.dumps(index))
    return folder


@pytest.mark.parametrize("scheduler", ["dpm_solver", "shipped"])
def test_dit_pipeline_images_on_a_tiny_dit_xl_2_256(tiny_dit_pipeline, scheduler):
    images = dit_pipeline_images(str(tiny_dit_pipeline), ["golden retriever", "volcano"], device="cpu",
                                 dtype=torch.float32, steps=3, scheduler=scheduler)
    assert len(images) == 2
    # 8x8 latents through the 4-block VAE (8x up-sampling): 64x64 RGB images, ready to display
    assert all(im.size == (64, 64) and im.mode == "RGB" for im in images)
    again = dit_pipeline_images(str(tiny_dit_pipeline), "golden retriever", steps=3, scheduler=scheduler)
    assert (np.asarray(again[0]) == np.asarray(images[0])).all()  # seeded
    with pytest.raises(ValueError, match="golden retriever"):  # the error lists the known labels
        dit_pipeline_images(str(tiny_dit_pipeline), ["platypus"], steps=2)
    with pytest.raises(ValueError, match="scheduler"):
        dit_pipeline_images(str(tiny_dit_pipeline), ["volcano"], scheduler="euler")


def test_vae_roundtrip_on_a_tiny_sd35_vae(tmp_path):
    from PIL import Image

    vae_cfg = _components("stabilityai--stable-diffusion-3.5-medium")["vae"]
    assert (vae_cfg["latent_channels"], vae_cfg["shift_factor"], vae_cfg["use_quant_conv"]) == (16, 0.0609, False)
    _build("AutoencoderKL", vae_cfg).save_pretrained(tmp_path / "vae")
    img = Image.fromarray((torch.rand(64, 64, 3, generator=torch.Generator().manual_seed(0)) * 255).byte().numpy())
    latents, recon = vae_roundtrip(str(tmp_path), img, device="cpu", dtype=torch.float32)
    assert latents.shape == (1, 16, 8, 8) and latents.dtype == torch.float32
    assert recon.size == img.size and recon.mode == "RGB"
