"""course_utils.evaluation, the answer metrics of notebook 07: the "Final Answer:" parser, exact match, the
flexible fallbacks of the Pixtral report, ANLS (DocVQA) and VQA accuracy (VQAv2).

Expected values come from the reference implementations: the ST-VQA "Coca Cola" example (as in shunk031/ANLS's
tests) and huggingface/evaluate's ANLS example; VQAv2's official vqaEval.py (GT-Vision-Lab/VQA) for the
normalisation and the leave-one-out average; mistral-evals (eval/metrics.py) for the parser and its fallback.
The sample-set metrics of the same module are tested in test_dit.py / test_diffusion.py.
"""
import pytest

from course_utils.evaluation import (anls, anywhere_in_answer, exact_match, flexible_parse, levenshtein,
                                     normalize_vqa_answer, parse_final_answer, vqa_accuracy)

# --- parse_final_answer ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, expected", [
    ("...Given that both beetles are Colorado potato beetles...\n\nFinal Answer: D", "D"),
    ("Final Answer: <answer>\nwhere <answer> is a letter.\nSo... Final Answer: B", "B"),    # the last marker wins
    ("Final Answer: A\nOn second thought, Final Answer: C", "C"),
    ("**Final Answer:** **C**", "C"),                                  # markdown around marker and answer
    ("**Final Answer**: `B`", "B"),
    ("final answer : c", "c"),                                         # the tiny LLaVA's word-level decoding
    ("FINAL ANSWER:(D)", "D"),
    ("Final Answer:\n\n  A. Neither are pest of potato  \nmore", "A. Neither are pest of potato"),
    ("Final Answer: 3.5%", "3.5%"),
])
def test_parse_final_answer(text, expected):
    assert parse_final_answer(text) == expected


@pytest.mark.parametrize("text", [
    "...the correct answer is:\nD. Both are pests of potato",          # the lecture's naive-prompt answer
    "The answer: D",                                                   # mistral-evals would read this one
    "Final D",
    "Final Answer:",                                                   # a marker with nothing after it
    "Final Answer: **  **\n\n",
    "",
])
def test_parse_final_answer_without_an_answer_is_none(text):
    assert parse_final_answer(text) is None


# --- exact match ----------------------------------------------------------------------------------------------


def test_exact_match_normalizes_case_spaces_and_the_final_dot_only():
    assert exact_match("D", "D") == 1.0
    assert exact_match(" d. ", "D") == 1.0
    assert exact_match("Top   Right", "top right") == 1.0
    assert exact_match("50%", "50") == 0.0                             # a percent sign is not punctuation to drop
    assert exact_match("D. Both are pests of potato", "D") == 0.0
    assert exact_match("C", "D") == 0.0
    assert exact_match(None, "D") == 0.0                               # a parse failure scores 0
    assert exact_match(parse_final_answer("final answer : d"), "D") == 1.0


# --- flexible parsing ------------------------------------------------------------------------------------------

OPTIONS = ("right", "bottom", "top right", "left")


@pytest.mark.parametrize("text, expected", [
    ("Final Answer: C", "C"),
    ("final answer : c", "C"),
    ("Final Answer: D. left", "D"),
    ("Final Answer: top right", "C"),                                  # the option's text after the marker
    ("The correct answer is: C. top right", "C"),                      # a lone letter, no marker
    ("It is in the top right corner.", "C"),                           # the longer option wins over "right"
    ("The object is on the left.", "D"),
    ("It could be B or D.", "B"),                                      # a hedge still gets a letter
    ("I am not sure.", None),
    ("Definitely a cross.", None),                                     # lowercase "a" is not a letter choice
])
def test_flexible_parse(text, expected):
    assert flexible_parse(text, OPTIONS) == expected


def test_flexible_parse_prefers_the_marker_over_a_letter_in_the_reasoning():
    text = "Option A looks tempting, but the beetles match D.\nFinal Answer: D"
    assert flexible_parse(text, OPTIONS) == "D"
    assert flexible_parse(text.replace("Final Answer: D", ""), OPTIONS) == "A"


def test_anywhere_in_answer_credits_a_hedge_for_every_letter_it_names():
    hedge = "It is B, or maybe it is D."
    assert anywhere_in_answer(hedge, "B") == 1.0
    assert anywhere_in_answer(hedge, "D") == 1.0
    assert anywhere_in_answer(hedge, "A") == 0.0
    assert anywhere_in_answer("...the correct answer is D. Both are pests of potato", "D") == 1.0
    # once a marker is there, only the parsed answer counts (its first character for a letter reference)
    assert anywhere_in_answer("It is D.\nFinal Answer: B", "D") == 0.0
    assert anywhere_in_answer("Final Answer: D. Both are pests", "D") == 1.0


def test_anywhere_in_answer_numbers_match_inside_other_numbers():
    assert anywhere_in_answer("There are 1,000 apples.", "1000") == 1.0
    assert anywhere_in_answer("I count 12 objects.", "2") == 1.0       # "2" is in "12": the fallback's weakness
    assert anywhere_in_answer("I count 3 objects.", "2") == 0.0


# --- ANLS ------------------------------------------------------------------------------------------------------


def test_levenshtein():
    assert levenshtein("kitten", "sitting") == 3
    assert levenshtein("", "abc") == levenshtein("abc", "") == 3
    assert levenshtein("flaw", "lawn") == levenshtein("lawn", "flaw") == 2
    assert levenshtein("coca cola", "coca cola") == 0


def test_levenshtein_matches_rapidfuzz():
    lev = pytest.importorskip("rapidfuzz.distance").Levenshtein
    import random
    rng = random.Random(0)
    for _ in range(300):
        a = "".join(rng.choice("ab c") for _ in range(rng.randint(0, 10)))
        b = "".join(rng.choice("ab c") for _ in range(rng.randint(0, 10)))
        assert levenshtein(a, b) == lev.distance(a, b)


# ST-VQA's example (Biten et al. 2019), answers "Coca Cola" and "Coca Cola Company"
@pytest.mark.parametrize("prediction, expected", [
    ("Coca cola", 1.0),
    ("CocaCola", 8 / 9),                                               # one edit in nine characters
    ("The Coca", 0.0),                                                 # 1 - NL = 4/9 < 0.5
    ("Cola", 0.0),
    ("Cat", 0.0),
])
def test_anls_coca_cola(prediction, expected):
    assert anls(prediction, ["Coca Cola", "Coca Cola Company"]) == pytest.approx(expected)


def test_anls_examples_of_huggingface_evaluate():
    refs = {"10285": ["Denver Broncos", "Denver R. Broncos"], "18601": ["12/15/88"], "16734": ["Dear Dr. Lobo", "Dr. Lobo"]}
    preds = {"10285": "Denver Broncos", "18601": "12/15/89", "16734": "Dear dr. Lobo"}
    scores = {q: anls(preds[q], refs[q]) for q in refs}
    assert scores == pytest.approx({"10285": 1.0, "18601": 7 / 8, "16734": 1.0})


def test_anls_without_threshold_is_mistral_evals_and_gives_wrong_answers_credit():
    refs = ["Coca Cola", "Coca Cola Company"]
    assert anls("Cat", refs) == 0.0
    assert anls("Cat", refs, threshold=1.0) == pytest.approx(2 / 9)   # mistral-evals' anls_threshold = 0.0
    assert anls("The Coca", refs, threshold=1.0) == pytest.approx(4 / 9)
    assert anls("", "") == 1.0 and anls("abc", "") == 0.0
    assert anls("x", "Coca Cola") == 0.0 == anls("x", "Coca Cola", threshold=0.95)
    with pytest.raises(ValueError, match="threshold"):
        anls("a", "a", threshold=0.0)
    with pytest.raises(ValueError, match="reference"):
        anls("a", [])


# --- VQA accuracy ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("answer, expected", [
    ("two", "2"), ("none", "0"), ("Ten", "10"),                        # number words -> digits
    ("dont", "don't"), ("isnt", "isn't"), ("Im", "im"),                # "Im" is lower-cased before the lookup
    ("the dog", "dog"), ("a red circle", "red circle"), ("An apple", "apple"),
    ("yes.", "yes"), ("2.", "2"), ("3.5", "3.5"), ("a.m.", "am"),      # periods go unless a digit follows
    ("1,000", "1000"), ("red, white", "red white"), ("t-shirt", "t shirt"), ("left side?", "left side"),
    ("(left)", "left"),
])
def test_normalize_vqa_answer(answer, expected):
    assert normalize_vqa_answer(answer) == expected


@pytest.mark.parametrize("matches, expected", [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)])
def test_vqa_accuracy_is_the_leave_one_out_average(matches, expected):
    refs = ["2"] * matches + ["3"] * (10 - matches)
    assert vqa_accuracy("2", refs) == pytest.approx(expected)


def test_vqa_accuracy_normalizes_only_when_the_annotators_disagree():
    refs = ["2"] * 4 + ["3"] * 6
    assert vqa_accuracy("two", refs) == 1.0 == vqa_accuracy("Two.", refs)
    assert vqa_accuracy("the 2", refs) == 1.0
    assert vqa_accuracy("two", ["2"] * 10) == 0.0                      # as vqaEval.py: no normalisation at all
    assert vqa_accuracy("2\n", ["2"] * 10) == 1.0                      # only newlines, tabs and ends are cleaned
    assert vqa_accuracy("Yes", ["yes"] * 10) == 0.0
    assert vqa_accuracy("Yes", ["yes"] * 9 + ["no"]) == 1.0
    with pytest.raises(ValueError, match="reference"):
        vqa_accuracy("2", [])
