"""LLaVA chapter (notebooks 02-03): the instruction data's fact checker and diversity, and -- once
``course/llava-shapes`` is shipped -- exact match per question type on held-out test scenes (1-3 objects,
types balanced), with the image and text only."""
from __future__ import annotations

import time


def run(fast: bool = True) -> dict:
    from course_utils import hub, llava
    from course_utils.world import instruct, shapes

    rows = []
    n = 300 if fast else 2000
    t0 = time.perf_counter()
    s = instruct.checker_scores(shapes.scenes("val", n))
    rows.append({"what": f"fact checker on {s['clean']} clean + {s['corrupted']} corrupted answers ({n} val scenes)",
                 "value": f"precision {s['precision']:.4f}, recall {s['recall']:.4f}; recall by corruption: "
                          + ", ".join(f"{k} {v:.3f}" for k, v in s["recall_by_kind"].items()),
                 "seconds": round(time.perf_counter() - t0, 1)})
    scenes = shapes.scenes("train", n, start=10_000)
    offline = instruct.offline_backend()
    types = instruct.mixed_types(len(scenes))
    records = [r for kind in llava.RESPONSE_TYPES
               for r in instruct.generate_records([x for x, t in zip(scenes, types) if t == kind], offline, kind)]
    for name, recs in (("simple expansion", instruct.simple_expansion_records(scenes)), ("3 response types", records)):
        d = instruct.diversity(recs)
        rows.append({"what": f"diversity, {name} ({len(recs)} records)",
                     "value": f"{d['distinct_questions']} distinct questions ({d['distinct_templates']} templates), "
                              f"answer words {d['answer_words_mean']:.1f} +- {d['answer_words_std']:.1f}, "
                              f"{d['answers_saying_no']:.1%} say no"})
    notes = "Shipped tiny LLaVA: not yet (course/llava-shapes missing)."
    folder = hub.COURSE_MODELS["course/llava-shapes"].path
    if folder.is_dir() and any(folder.iterdir()):
        from transformers import AutoModelForImageTextToText, AutoTokenizer

        from course_utils.recipes import llava as R

        path = hub.resolve("course/llava-shapes")
        model = AutoModelForImageTextToText.from_pretrained(path).eval()
        tok = AutoTokenizer.from_pretrained(path)
        test_scenes = R.scenes_1_to_3("test", 600 if fast else 3000)
        images = shapes.render_batch(test_scenes)
        test = R.balanced(R.qa_examples(test_scenes), 100 if fast else 500, seed=1)
        for use_image in (True, False):
            acc = R.evaluate(model, tok, images, test, use_image=use_image)
            rows.append({"what": f"tiny LLaVA exact match, {'with image' if use_image else 'text only'}",
                         "value": ", ".join(f"{k} {v:.3f}" for k, v in acc.items())})
        mc_folder = hub.COURSE_MODELS["course/llava-shapes-mc"].path
        has_mc = mc_folder.is_dir() and any(mc_folder.iterdir())
        if has_mc:
            mc_path = hub.resolve("course/llava-shapes-mc")
            mc_model = AutoModelForImageTextToText.from_pretrained(mc_path).eval()
            mc_tok = AutoTokenizer.from_pretrained(mc_path)
        for style in R.MC_PROMPTS if has_mc else ():
            mc = R.balanced(R.mc_examples(test_scenes, style, kinds=("color", "shape", "count", "position")),
                            50 if fast else 250, seed=1)
            s = R.mc_scores(mc_model, mc_tok, images, mc)
            rows.append({"what": f"course/llava-shapes-mc multiple choice, {style} prompt ({len(mc)} questions)",
                         "value": f"'Final Answer:' marker with the gold letter {s['marker']:.3f}, "
                                  f"gold letter read leniently {s['letter']:.3f}"})
        notes = ""
    return {"title": "LLaVA (notebooks 02-03)", "rows": rows, "notes": notes}
