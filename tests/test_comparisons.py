"""harness.comparisons on constructed item outcomes with known answers."""
from __future__ import annotations

import pandas as pd
import pytest
from scipy import stats as scipy_stats

from harness import comparisons


def frame(values_by_method: dict[str, list[list[float]]], predictions: dict | None = None) -> pd.DataFrame:
    rows = []
    for method, seeds in values_by_method.items():
        for seed, values in enumerate(seeds):
            for i, value in enumerate(values):
                prediction = predictions[method][i] if predictions else str(value)
                rows.append({"method": method, "seed": seed, "item_id": f"item{i:03d}", "value": value,
                             "prediction": prediction, "input": f"text {i}", "reference": f"ref {i}"})
    return pd.DataFrame(rows)


def test_identical_runs_differ_by_zero_with_p_one():
    values = [1.0, 0.0] * 50
    result = comparisons.compare(frame({"lora": [values], "ia3": [values]}), "lora", "ia3")
    assert (result["difference"], result["low"], result["high"]) == (0, 0, 0)
    assert result["p_bootstrap"] == 1 and result["p_mcnemar"] == 1
    assert (result["lost"], result["gained"]) == (0, 0)


def test_runs_differing_on_k_items_give_mcnemars_exact_p():
    base = [1.0] * 60 + [0.0] * 40
    better = list(base)
    for i in range(60, 67):  # 7 items b got wrong, a right
        better[i] = 1.0
    better[0] = 0.0  # and one the other way
    result = comparisons.compare(frame({"a": [better], "b": [base]}), "a", "b")
    assert result["difference"] == pytest.approx(0.06) and result["n_items"] == 100
    assert (result["gained"], result["lost"]) == (7, 1)
    assert result["p_mcnemar"] == pytest.approx(scipy_stats.binomtest(1, 8, 0.5).pvalue)
    assert result["low"] < 0.06 < result["high"]


def test_a_known_paired_difference_and_the_gain_over_base():
    rng = pd.Series(range(400))
    base = ((rng * 7919) % 100 < 60).astype(float).tolist()  # 60% right
    tuned = [1.0 if i % 5 == 0 else v for i, v in enumerate(base)]  # flips every wrong 5th item: +8 points
    board = comparisons.cell_intervals(frame({"base": [base], "lora": [tuned]}), higher_is_better=True)
    lora = board.set_index("method").loc["lora"]
    gain = sum(tuned) / 400 - sum(base) / 400
    assert lora["gain"] == pytest.approx(gain) and lora["gain_low"] > 0 and lora["gain_p"] < 0.05
    assert lora["low"] < lora["estimate"] < lora["high"]
    assert bool(lora["tied_with_best"]) and not bool(board.set_index("method").loc["base", "tied_with_best"])


def test_lower_is_better_picks_the_smallest_as_best():
    low, high = [0.2] * 50, [0.9] * 50
    board = comparisons.cell_intervals(frame({"a": [low], "b": [high]}), higher_is_better=False).set_index("method")
    assert bool(board.loc["a", "tied_with_best"]) and not bool(board.loc["b", "tied_with_best"])


def test_seeds_widen_the_interval():
    one = [1.0, 0.0, 1.0, 1.0] * 25
    shifted = [0.0, 0.0, 1.0, 1.0] * 25
    single = comparisons.compare(frame({"a": [one], "b": [shifted]}), "a", "b")
    seeds = comparisons.compare(frame({"a": [one, shifted, one], "b": [shifted, shifted, shifted]}), "a", "b")
    assert seeds["seeds_a"] == 3 and "seeds then items" in seeds["method"]
    assert seeds["high"] - seeds["low"] > single["high"] - single["low"]


def test_disagreements_list_both_predictions():
    a = [1.0, 0.0, 1.0]
    b = [1.0, 1.0, 0.0]
    items = frame({"a": [a], "b": [b]}, predictions={"a": ["pos", "neg", "pos"], "b": ["pos", "pos", "neg"]})
    listed = comparisons.disagreements(items, "a", "b")
    assert listed["item_id"].tolist() == ["item001", "item002"]
    assert listed["prediction_a"].tolist() == ["neg", "pos"] and listed["prediction_b"].tolist() == ["pos", "neg"]
    assert listed["input"].tolist() == ["text 1", "text 2"]


def test_pairwise_is_antisymmetric_and_holm_corrected():
    items = frame({"a": [[1.0] * 80 + [0.0] * 20], "b": [[1.0] * 50 + [0.0] * 50], "c": [[1.0] * 52 + [0.0] * 48]})
    table = comparisons.pairwise(items).set_index(["a", "b"])
    assert table.loc[("a", "b"), "difference"] == pytest.approx(0.30)
    assert table.loc[("b", "a"), "difference"] == pytest.approx(-0.30)
    assert table.loc[("b", "a"), "low"] == pytest.approx(-table.loc[("a", "b"), "high"])
    assert (table["p_holm"] >= table["p"]).all()


def test_bleu_differences_use_sacrebleus_paired_bootstrap():
    refs = ["the cat sat on the mat", "a dog ran in the park", "birds fly south in winter", "she reads a book"] * 5
    good = list(refs)
    bad = ["the cat on mat", "dog ran park", "birds fly", "she a book"] * 5
    items = frame({"a": [[0.0] * 20], "b": [[0.0] * 20]}, predictions={"a": good, "b": bad})
    items["reference"] = [refs[int(i[4:])] for i in items["item_id"]]
    result = comparisons.compare(items, "a", "b", metric="bleu")
    assert result["estimate_a"] == pytest.approx(100.0) and result["difference"] > 0
    assert "sacrebleu paired bootstrap" in result["method"] and result["p_bootstrap"] < 0.05


def test_leaderboard_rows_of_a_bleu_task_get_sacrebleus_intervals_and_ties():
    from sacrebleu.metrics import BLEU
    from sacrebleu.significance import PairedTest

    refs = ["the cat sat on the mat", "a dog ran in the park", "birds fly south in winter", "she reads a book"] * 5
    systems = {"base": ["the cat on mat", "dog ran park", "birds fly", "she a book"] * 5,
               "lora": list(refs), "ia3": list(refs[:-1]) + ["she reads"]}
    items = frame({m: [[0.0] * 20] for m in systems}, predictions=systems)
    items["reference"] = [refs[int(i[4:])] for i in items["item_id"]]
    board = pd.DataFrame({"model": "m", "method": list(systems), "lr": None, "test_bleu": 0.0})
    rows = comparisons.with_intervals(board, items.assign(model="m", lr=None, run_id=items["method"]),
                                      primary="bleu", higher_is_better=True).set_index("method")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SACREBLEU_SEED", "12345")
        _, scores = PairedTest([("base", systems["base"]), ("lora", systems["lora"])], {"bleu": BLEU()}, [refs],
                               test_type="bs", n_samples=1000)()
    lora = scores["BLEU"][1]
    assert rows.loc["lora", "test_bleu_low"] == pytest.approx(lora.mean - lora.ci)
    assert rows.loc["lora", "test_bleu_high"] == pytest.approx(lora.mean + lora.ci)
    assert rows.loc["lora", "gain"] == pytest.approx(lora.score - scores["BLEU"][0].score)
    assert rows.loc["lora", "gain_p"] == pytest.approx(lora.p_value) and rows.loc["lora", "gain_low"] > 0
    assert rows.loc["lora", "tied_with_best"] is True and rows.loc["base", "tied_with_best"] is False
    assert rows.loc["ia3", "tied_with_best"] is True and pd.isna(rows.loc["base", "gain"])


def test_calibration_error_and_its_change_from_base():
    # base: always 90% sure, right 9 times in 10 (calibrated); tuned: always 100% sure, right 8 in 10
    base = [1.0] * 90 + [0.0] * 10
    tuned = [1.0] * 80 + [0.0] * 20
    items = frame({"base": [base], "lora": [tuned]})
    items["confidence"] = [0.9] * 100 + [1.0] * 100
    board = comparisons.cell_intervals(items, higher_is_better=True).set_index("method")
    assert board.loc["base", "ece"] == pytest.approx(0.0, abs=1e-12)
    assert board.loc["lora", "ece"] == pytest.approx(0.2)
    assert board.loc["lora", "ece_change"] == pytest.approx(0.2) and board.loc["lora", "ece_change_low"] > 0


def test_tuning_budget_is_the_expected_best_of_k_rates():
    runs = pd.DataFrame({"model": "m", "method": ["lora"] * 4 + ["ia3"] * 2 + ["base"],
                         "lr": [1e-4, 1e-3, 1e-2, 1e-3, 1e-3, 1e-2, None],
                         "value": [0.6, 0.7, 0.9, 0.8, 0.5, 0.55, 0.4]})
    curve = comparisons.tuning_budget(runs, higher_is_better=True).set_index(["method", "k"])
    # lora's rates: 1e-4 -> 0.6, 1e-3 -> mean(0.7, 0.8) = 0.75, 1e-2 -> 0.9
    assert curve.loc[("lora", 1), "expected"] == pytest.approx((0.6 + 0.75 + 0.9) / 3)
    assert curve.loc[("lora", 2), "expected"] == pytest.approx((0.75 + 0.9 + 0.9) / 3)  # best of each pair
    assert curve.loc[("lora", 3), "expected"] == pytest.approx(0.9)
    assert curve.loc[("ia3", 2), "expected"] == pytest.approx(0.55) and "base" not in curve.index.get_level_values(0)
