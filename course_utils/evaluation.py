"""Evaluation: metrics for a model's answers (notebook 07) and for generated samples (notebooks 08-10).

Pure torch / standard library, no model inside.

Answers to questions (notebook 07, the lecture's "naive vs explicit prompt" slide):

- ``parse_final_answer``: the text after the last ``Final Answer:`` marker, or ``None``;
- ``exact_match``: 1.0 when the parsed answer equals the reference (case, spaces, final dot aside);
- ``flexible_parse`` / ``anywhere_in_answer``: the lenient fallbacks of the Pixtral report's "w/ Flexible
  Parsing" rows, which recover correct-but-unformatted answers and also credit hedges;
- ``anls``: DocVQA's Average Normalized Levenshtein Similarity (``levenshtein`` is the edit distance);
- ``vqa_accuracy``: VQAv2's official score, ``normalize_vqa_answer`` its answer normalisation.

Generated samples: a judge (a classifier) is passed in. The digits judge itself and how it
was trained are ``course_utils.recipes.judges``.

- ``energy_distance``: a distance between two sample sets (notebooks 08 and 10);
- ``class_consistency``: how often a judge recognises the class a sample was generated for (09, 10);
- ``within_class_distance`` / ``diversity_ratio``: how varied the samples of one class are, as a
  fraction of the real data's (09, 10): 1 = as diverse as the data, 0 = one blurry image per class.
"""
from __future__ import annotations

import re
from typing import Callable, Sequence

import torch

__all__ = ["parse_final_answer", "exact_match", "flexible_parse", "anywhere_in_answer", "levenshtein", "anls",
           "normalize_vqa_answer", "vqa_accuracy",
           "energy_distance", "class_consistency", "within_class_distance", "diversity_ratio"]


def energy_distance(x: torch.Tensor, y: torch.Tensor) -> float:
    """Squared energy distance 2 E|X-Y| - E|X-X'| - E|Y-Y'| between two sample sets (V-statistic) (notebook 08).

    Zero iff the empirical distributions coincide; in 1-D it equals ``scipy.stats.energy_distance(x, y) ** 2``.
    """
    x, y = x.reshape(x.shape[0], -1).double(), y.reshape(y.shape[0], -1).to(x.device).double()
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y must have the same dimension, got {x.shape[1]} and {y.shape[1]}")
    # 2 E|X - Y| - E|X - X'| - E|Y - Y'|
    return float(2 * torch.cdist(x, y).mean() - torch.cdist(x, x).mean() - torch.cdist(y, y).mean())


@torch.no_grad()
def class_consistency(classifier: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor,
                      labels: torch.Tensor, batch_size: int = 1024) -> float:
    """Fraction of ``images`` that ``classifier`` (images -> logits) assigns to the class in ``labels``."""
    if len(images) != len(labels):
        raise ValueError(f"got {len(images)} images but {len(labels)} labels")
    pred = torch.cat([classifier(b).argmax(-1) for b in images.split(batch_size)])
    return float((pred == labels.to(pred.device)).float().mean())


def within_class_distance(images: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean over classes of the mean pairwise L2 distance between images of the same class."""
    flat, labels = images.flatten(1).double(), labels.to(images.device)
    dists = []
    for c in labels.unique():
        xc = flat[labels == c]
        if len(xc) < 2:
            continue
        d = torch.cdist(xc, xc)
        # the diagonal is zero: sum / (n (n - 1)) is the mean over distinct pairs
        dists.append(d.sum() / (len(xc) * (len(xc) - 1)))
    if not dists:
        raise ValueError("need at least two images of some class to measure diversity")
    return float(torch.stack(dists).mean())


def diversity_ratio(samples: torch.Tensor, labels: torch.Tensor, real: torch.Tensor, real_labels: torch.Tensor) -> float:
    """Within-class mean pairwise distance of ``samples`` as a fraction of the real data's (1 = as diverse;
    blurry class means give 0)."""
    return within_class_distance(samples, labels) / within_class_distance(real, real_labels)


# --------------------------------------------------------------------------------------------------------------
# Answers to questions (notebook 07)
# --------------------------------------------------------------------------------------------------------------
# The marker of the lecture's explicit prompt ("Answer in this format: Final Answer: <answer>"). Markdown emphasis
# and spaces may sit around the words and before the colon: "**Final Answer:** **C**", "Final Answer**: C", and
# "final answer : c" (the course's tiny LLaVA has a word-level tokenizer and decodes with spaces around ":").
_FINAL_ANSWER = re.compile(r"final[\s*_]+answer[\s*_]*:", re.IGNORECASE)
# Markdown removed from the parsed answer, as mistral-evals does (`re.sub(r"[*_\[\]\(\)]", "", answer)`), plus "`".
_MARKDOWN = re.compile(r"[*_`\[\]()]")
LETTERS = "ABCDEFGHIJ"


def parse_final_answer(text: str) -> str | None:
    """The answer after the LAST ``Final Answer:`` marker (case-insensitive, markdown stripped), or ``None``.

    Like mistral-evals' ``ExplicitPromptRelaxedCorrectness._get_final_answer`` (the Pixtral report's parser):
    the last marker wins (a model may restate the format before answering), and the answer is the first
    non-empty line after it. Two differences: mistral-evals looks for any ``answer:`` and needs the colon right
    after the word; here only ``final answer`` counts, with spaces allowed before the colon. An empty answer
    after the last marker is a parse failure too (``None``), as mistral-evals scores it 0.
    """
    matches = list(_FINAL_ANSWER.finditer(text))
    if not matches:
        return None
    for line in text[matches[-1].end():].splitlines():
        line = _MARKDOWN.sub("", line).strip()
        if line:
            return line
    return None


def _normalize(text: str) -> str:
    """Lower case, runs of whitespace -> one space, trailing punctuation and spaces dropped (not ``%``)."""
    text = " ".join(text.lower().split())
    return re.sub(r"[^\w%]+$", "", text)


def exact_match(prediction: str | None, reference: str) -> float:
    """1.0 if ``prediction`` equals ``reference`` up to case, whitespace and trailing punctuation, else 0.0.

    ``None`` (a parse failure) scores 0: exact match gives no credit to an answer it cannot read.
    """
    return float(prediction is not None and _normalize(prediction) == _normalize(reference))


def flexible_parse(text: str, options: Sequence[str] | None = None) -> str | None:
    """A lenient parser for multiple-choice answers: the letter the text seems to pick, or ``None``.

    1. ``parse_final_answer`` if the marker is there (its first letter when that is an option letter:
       "D. Both are pests" -> "D"; an option's text -> its letter);
    2. else the FIRST lone option letter ("the correct answer is: D." -> "D");
    3. else the option whose text appears first in the answer (the longer one on a tie: "top right" over "right").

    In the spirit of the fallback the Pixtral report calls "flexible parsing" (mistral-evals'
    ``AnywhereInAnswerRelaxedCorrectness``, whose docstring warns: "an overly generous metric ... likely to falsely
    inflate scores"). It reads answers that ignored the format, but a hedge ("B or D") gets a letter too.
    """
    letters = LETTERS[:len(options)] if options else LETTERS[:4]
    parsed = parse_final_answer(text)
    if parsed is not None:
        head = re.match(rf"([{letters}])(?![\w'])", parsed, flags=re.IGNORECASE)   # "c" from "final answer : c"
        if head:
            return head.group(1).upper()
        return _option_in(parsed, options) or parsed
    lone = re.search(rf"(?<![\w'])([{letters}])(?![\w'])", text)
    if lone:
        return lone.group(1)
    return _option_in(text, options)


def _option_in(text: str, options: Sequence[str] | None) -> str | None:
    """The letter of the option whose text occurs first in ``text`` (whole words, case-insensitive)."""
    hits = []
    for letter, option in zip(LETTERS, options or ()):
        m = re.search(rf"(?<!\w){re.escape(option.lower())}(?!\w)", text.lower())
        if m:
            hits.append((m.start(), -len(option), letter))
    return min(hits)[2] if hits else None


def anywhere_in_answer(text: str, reference: str) -> float:
    """mistral-evals' ``AnywhereInAnswerRelaxedCorrectness`` (the "w/ Flexible Parsing" rows), simplified.

    With a ``Final Answer:`` marker, the parsed answer is compared (a letter reference: its first character).
    Without one, the reference is searched ANYWHERE in the text: a number as ``1,000`` / ``1000`` / ``1000%``,
    a text or letter through the patterns ``"is X"``, ``"was X"``, ``" X."``, ``"are X"``, ``"\\n\\nX"``.
    Upstream lowercases the patterns but not the text (``c.lower() in model_answer``); here both are
    lowercased. Upstream's numeric 5 % tolerance on parsed answers is left out.
    """
    parsed = parse_final_answer(text)
    if parsed is not None:
        if len(reference) == 1 and reference.isalpha():
            return float(parsed[:1].lower() == reference.lower())
        return exact_match(parsed, reference)
    low, ref = text.lower(), reference.strip().lower()
    try:
        number = float(ref)
        number = int(number) if number == int(number) else number
        candidates = [format(number, ","), str(number), f"{number}%"]
    except ValueError:
        candidates = [f"is {ref}", f"was {ref}", f" {ref}.", f"are {ref}", f"\n\n{ref}"]
    return float(any(c in low for c in candidates))


def levenshtein(a: str, b: str) -> int:
    """Edit distance: the fewest single-character insertions, deletions and substitutions turning a into b."""
    if len(a) < len(b):
        a, b = b, a
    prev = list(range(len(b) + 1))                    # distances from a[:0] to every prefix of b
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            # d(i, j) = min(d(i-1, j) + 1, d(i, j-1) + 1, d(i-1, j-1) + [a_i != b_j])
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def anls(prediction: str, references: str | Sequence[str], threshold: float = 0.5) -> float:
    """Normalized Levenshtein similarity of one answer, DocVQA's / ST-VQA's metric (average it over questions).

    s = max_j (1 - NL(a_j, o)) if NL(a_j, o) < threshold else 0,  NL = levenshtein / max(len(a_j), len(o)),
    after lower-casing and collapsing whitespace (Biten et al., ICCV 2019; the RRC scripts). The threshold
    tau = 0.5 separates "the right answer, misread" (partial credit) from "a wrong answer" (0).

    Pixtral's public evaluation code (mistral-evals, ``eval/metrics.py``, class ``ANLS``) sets
    ``anls_threshold = 0.0`` and zeroes a score only when the SIMILARITY ``1 - NL`` is below it: no threshold at
    all, so a wrong answer still earns ``1 - NL``. Here that is ``threshold=1.0`` (``threshold`` bounds the
    distance, as in the paper). mistral-evals also strips trailing punctuation before comparing.
    """
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold bounds the normalized distance NL in (0, 1] (0.5 in DocVQA; 1.0 = none, as "
                         f"mistral-evals' anls_threshold = 0.0 on the similarity), got {threshold}")
    refs = [references] if isinstance(references, str) else list(references)
    if not refs:
        raise ValueError("anls needs at least one reference answer")
    pred = " ".join(prediction.strip().lower().split())
    best = 0.0
    for ref in refs:
        ref = " ".join(ref.strip().lower().split())
        length = max(len(ref), len(pred))
        nl = levenshtein(ref, pred) / length if length else 0.0
        best = max(best, 1.0 - nl if nl < threshold else 0.0)
    return best


# VQAv2's official normalisation (GT-Vision-Lab/VQA, PythonEvaluationTools/vqaEvaluation/vqaEval.py), verbatim.
_CONTRACTIONS = dict(pair.split(",") for pair in """
aint,ain't arent,aren't cant,can't couldve,could've couldnt,couldn't couldn'tve,couldn't've
couldnt've,couldn't've didnt,didn't doesnt,doesn't dont,don't hadnt,hadn't hadnt've,hadn't've hadn'tve,hadn't've
hasnt,hasn't havent,haven't hed,he'd hed've,he'd've he'dve,he'd've hes,he's howd,how'd howll,how'll hows,how's
Id've,I'd've I'dve,I'd've Im,I'm Ive,I've isnt,isn't itd,it'd itd've,it'd've it'dve,it'd've itll,it'll
let's,let's maam,ma'am mightnt,mightn't mightnt've,mightn't've mightn'tve,mightn't've mightve,might've
mustnt,mustn't mustve,must've neednt,needn't notve,not've oclock,o'clock oughtnt,oughtn't ow's'at,'ow's'at
'ows'at,'ow's'at 'ow'sat,'ow's'at shant,shan't shed've,she'd've she'dve,she'd've she's,she's shouldve,should've
shouldnt,shouldn't shouldnt've,shouldn't've shouldn'tve,shouldn't've somebody'd,somebodyd
somebodyd've,somebody'd've somebody'dve,somebody'd've somebodyll,somebody'll somebodys,somebody's
someoned,someone'd someoned've,someone'd've someone'dve,someone'd've someonell,someone'll someones,someone's
somethingd,something'd somethingd've,something'd've something'dve,something'd've somethingll,something'll
thats,that's thered,there'd thered've,there'd've there'dve,there'd've therere,there're theres,there's
theyd,they'd theyd've,they'd've they'dve,they'd've theyll,they'll theyre,they're theyve,they've twas,'twas
wasnt,wasn't wed've,we'd've we'dve,we'd've weve,we've werent,weren't whatll,what'll whatre,what're whats,what's
whatve,what've whens,when's whered,where'd wheres,where's whereve,where've whod,who'd whod've,who'd've
who'dve,who'd've wholl,who'll whos,who's whove,who've whyll,why'll whyre,why're whys,why's wont,won't
wouldve,would've wouldnt,wouldn't wouldnt've,wouldn't've wouldn'tve,wouldn't've yall,y'all yall'll,y'all'll
y'allll,y'all'll yall'd've,y'all'd've y'alld've,y'all'd've y'all'dve,y'all'd've youd,you'd youd've,you'd've
you'dve,you'd've youll,you'll youre,you're youve,you've""".split())
_NUMBERS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
            "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_ARTICLES = {"a", "an", "the"}
_PUNCT = [";", r"/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!"]
# Upstream's "(?!<=\d)" was meant as a lookbehind (?<!\d); as written it only removes periods not followed by a digit.
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
_COMMA_STRIP = re.compile(r"(\d)(,)(\d)")


def normalize_vqa_answer(answer: str) -> str:
    """VQAv2's ``processPunctuation`` then ``processDigitArticle``: punctuation removed (next to a space, or in a
    number like 1,000) or turned into a space, periods dropped unless a digit follows, lower case, number words
    -> digits ("two" -> "2", "none" -> "0"), articles dropped, contractions restored ("dont" -> "don't")."""
    out = answer
    for p in _PUNCT:
        if p + " " in answer or " " + p in answer or _COMMA_STRIP.search(answer):
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    out = _PERIOD_STRIP.sub("", out)
    words = [_NUMBERS.get(w, w) for w in out.lower().split()]
    return " ".join(_CONTRACTIONS.get(w, w) for w in words if w not in _ARTICLES)


def vqa_accuracy(prediction: str, references: Sequence[str]) -> float:
    """VQAv2's accuracy of one answer against its (ten) human answers, as the official ``vqaEval.py`` computes it.

    Acc = 1/10 sum_i min(1, #{j != i : a_j = prediction} / 3): "correct if at least 3 people said it", averaged
    over the ten leave-one-out subsets of nine annotators. As upstream, answers are normalized
    (``normalize_vqa_answer``) only when the annotators disagree (more than one distinct answer); newlines and
    tabs become spaces first. mistral-evals' ``VQAMatch`` (Pixtral's code) instead takes min(1, #matches / 3)
    over all ten, without leave-one-out, stripping quotes only: 3 matches give it 1.0 and VQAv2 0.9.
    """
    refs = [r.replace("\n", " ").replace("\t", " ").strip() for r in references]
    if not refs:
        raise ValueError("vqa_accuracy needs the human reference answers (ten in VQAv2)")
    pred = prediction.replace("\n", " ").replace("\t", " ").strip()
    if len(set(refs)) > 1:
        refs = [normalize_vqa_answer(r) for r in refs]
        pred = normalize_vqa_answer(pred)
    accs = []
    for i in range(len(refs)):
        others = refs[:i] + refs[i + 1:]
        # min(1, #humans among the other nine that gave this answer / 3)
        accs.append(min(1.0, sum(o == pred for o in others) / 3))
    return sum(accs) / len(accs)
