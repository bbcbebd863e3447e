"""Pixtral chapter (notebook 06): the course encoder against transformers' PixtralVisionModel on the real
photographs (parity and speed), and what sequence packing saves over padding to the largest image."""
from __future__ import annotations

import time

import torch


def _best_ms(fn, repeat: int) -> float:
    """Fastest of ``repeat`` calls after a warm-up, in ms (the least disturbed by other processes)."""
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * min(times)


@torch.no_grad()
def run(fast: bool = True) -> dict:
    from transformers import PixtralImageProcessor, PixtralVisionConfig, PixtralVisionModel

    from course_utils import data, pixtral as P
    from course_utils.bridges.transformers_pixtral import encoder_from_hf

    torch.manual_seed(0)
    rows = []
    repeat = 3 if fast else 10
    edge = 128 if fast else 256
    names = data.list_images()
    photos = [data.load_image(n) for n in names]

    # ---- parity on the photographs, at Pixtral's patch size and activation ---------------------------------
    cfg = PixtralVisionConfig(hidden_size=128, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
                              image_size=1024, patch_size=16, hidden_act="silu")
    hf = PixtralVisionModel(cfg).eval()
    ours = encoder_from_hf(hf)
    enc = PixtralImageProcessor(size={"longest_edge": edge})(images=photos, return_tensors="pt")
    sizes = enc["image_sizes"].tolist()
    crops = [pv[:, :h, :w] for pv, (h, w) in zip(enc["pixel_values"], sizes)]
    ref = hf(enc["pixel_values"], image_sizes=sizes).last_hidden_state
    got = ours(crops)
    diff = (got - ref).abs().max().item()
    t_ours = _best_ms(lambda: ours(crops), repeat)
    t_hf = _best_ms(lambda: hf(enc["pixel_values"], image_sizes=sizes), repeat)
    rows.append({"what": f"course VisionEncoder vs PixtralVisionModel, {len(photos)} photos packed "
                         f"(longest edge {edge}, {ref.shape[1]} patches, width 128, 4 layers)",
                 "value": f"max |diff| {diff:.1e} ({diff / ref.abs().max().item():.1e} of max |output|)",
                 "course ms": round(t_ours, 1), "transformers ms": round(t_hf, 1)})

    # ---- packing vs padding --------------------------------------------------------------------------------
    grids = [P.patch_grid(*P.resize_for_patches(im.height, im.width)) for im in photos]
    packed = sum(h * w for h, w in grids)
    padded = len(grids) * max(h for h, _ in grids) * max(w for _, w in grids)
    rows.append({"what": f"{len(photos)} photos at Pixtral's 1024 px / 16 px patches: sequence positions",
                 "value": f"packed {packed:,} vs padded {padded:,} ({100 * (padded - packed) / padded:.0f}% padding); "
                          f"dense attention entries kept by the block mask: {sum((h * w) ** 2 for h, w in grids):,} "
                          f"of {packed ** 2:,}"})
    # ---- course/pixtral-shapes: exact match per canvas on held-out scenes -----------------------------------
    from course_utils import hub
    from course_utils.recipes import pixtral as R

    notes = "Encoder rows: random weights (parity and cost only)."
    folder = hub.COURSE_MODELS[R.SHAPES_ID].path
    if folder.is_dir() and any(folder.iterdir()):
        from transformers import AutoTokenizer, LlavaForConditionalGeneration

        path = hub.resolve(R.SHAPES_ID)
        model = LlavaForConditionalGeneration.from_pretrained(path).eval()
        tok = AutoTokenizer.from_pretrained(path)
        scenes = R.aspect_scenes("test", 1200 if fast else 4000, objects="1-3")
        n = 100 if fast else 300
        for name, data, use_image in (("native canvases", R.ShapesData(scenes), True),
                                      ("the same canvases squashed to 32x32", R.ShapesData(scenes, squash_side=32), True),
                                      ("text only", R.ShapesData(scenes), False)):
            t0 = time.perf_counter()
            acc = R.evaluate(model, tok, data, n, use_image=use_image)
            rows.append({"what": f"{R.SHAPES_ID} exact match, {name} ({n} questions per kind and canvas)",
                         "value": f"overall {acc['overall']:.3f}; " + "; ".join(
                             f"{c} {r['overall']:.3f} (" + ", ".join(f"{k} {v:.2f}" for k, v in r.items() if k != "overall")
                             + ")" for c, r in acc.items() if c != "overall"),
                         "seconds": round(time.perf_counter() - t0, 1)})
        notes += (" The squashed row feeds the native model images it never trained on; the fair baseline, the same "
                  "recipe trained on squashed images, is in the model's training_info.json.")
    else:
        notes += f" {R.SHAPES_ID} is not shipped (scripts/train_pixtral.py)."
    return {"title": "Pixtral (notebook 06)", "rows": rows, "notes": notes}


if __name__ == "__main__":
    for row in run(fast=True)["rows"]:
        print(row)
