"""Per-example scores against values worked out by hand."""

import pytest

from sapt.evaluation.scoring import exact_match, normalize_answer, rouge_l, score_example, score_task


@pytest.mark.parametrize(
    "raw, norm",
    [
        ("Yes", "yes"),
        ("  New   York\n City ", "new york city"),
        ("positive.", "positive"),
        ("Really?!", "really"),
        ('"Paris."', "paris"),
        ("'entailment'", "entailment"),
        ("not_entailment", "not_entailment"),  # inner punctuation kept
        ("3.5", "3.5"),
        ("'a' or 'b'", "'a' or 'b'"),  # not one quoted string
        ("", ""),
    ],
)
def test_normalize_answer(raw, norm):
    assert normalize_answer(raw) == norm


def test_exact_match():
    assert exact_match(" Positive. ", ["positive"]) == 100.0
    assert exact_match("negative", ["positive"]) == 0.0
    assert exact_match("B", ["a", "b", "c"]) == 100.0  # any reference counts
    assert exact_match("entailment", ["not_entailment"]) == 0.0


def test_rouge_l_exact_and_disjoint():
    assert rouge_l("the cat sat on the mat", ["the cat sat on the mat"]) == pytest.approx(100.0)
    assert rouge_l("dogs bark", ["the cat sat"]) == 0.0


def test_rouge_l_partial_overlap():
    # prediction 3 tokens, reference 5 tokens, LCS "the cat sat" = 3
    # P = 3/3 = 1, R = 3/5 = 0.6, F = 2 * 1 * 0.6 / (1 + 0.6) = 0.75
    assert rouge_l("the cat sat", ["the black cat sat down"]) == pytest.approx(75.0)
    # order matters: LCS("cat the sat", "the cat sat") = 2 ("cat sat" or "the sat")
    # P = R = 2/3, F = 2/3
    assert rouge_l("cat the sat", ["the cat sat"]) == pytest.approx(200.0 / 3)


def test_rouge_l_max_over_references():
    assert rouge_l("the cat sat", ["a dog ran", "the black cat sat down"]) == pytest.approx(75.0)


def test_rouge_l_tokenizer_and_stemmer():
    # default tokenizer: lowercase, punctuation dropped
    assert rouge_l("Hello, world!", ["hello world"]) == pytest.approx(100.0)
    # Porter stemmer as in the SuperNI scorer: cats->cat, running/runs->run
    assert rouge_l("cats running", ["cat runs"]) == pytest.approx(100.0)


def test_score_example_dispatch():
    assert score_example("em", "Yes.", ["yes"]) == 100.0
    assert score_example("rougeL", "the cat sat", ["the black cat sat down"]) == pytest.approx(75.0)
    with pytest.raises(ValueError):
        score_example("bleu", "a", ["a"])


def test_score_task_mean():
    # 100 + 0 + 100 = 200 ; / 3
    preds = ["a", "b", "C."]
    refs = [["a"], ["x"], ["c"]]
    assert score_task("em", preds, refs) == pytest.approx(200.0 / 3)
    # (100 + 75) / 2
    assert score_task("rougeL", ["the cat sat", "x y"], [["the black cat sat down"], ["x y"]]) == pytest.approx(87.5)


def test_score_task_errors():
    with pytest.raises(ValueError):
        score_task("em", [], [])
    with pytest.raises(ValueError):
        score_task("em", ["a", "b"], [["a"]])
    with pytest.raises(ValueError):
        score_task("f1", ["a"], [["a"]])
    with pytest.raises(ValueError):
        exact_match("a", [])
