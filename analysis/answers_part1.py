"""Part 1 answers (Q1-Q4): the first classifier and the MLP depth x width grid."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Tuple

import numpy as np
import pandas as pd

from analysis.answers_common import (MLP_RECIPE_KEYS, count_or_na, figs, n_params_mlp, recipe_line, spread_cell,
                                     stat_pairs)
from analysis.data import ReportData
from analysis.datasets import smoke_mark
from analysis.query import mlp_axes
from analysis.spread import NO_SPREAD, Stat, compare, spread_trend, verdict
from analysis.text import bullet, count, missing_note, num, pct, points, rate, recipe, table

# What "high" means in Part 1 Q1 (the programme: "I would take measures to decrease it").
STILL_LEARNING_REL_DROP = 0.05   # train loss fell > 5 % over the last quarter of the epochs
GAP_POINTS = 3.0                 # train - valid accuracy gap
APPROX_POINTS = 2.0              # a larger grid model fits train this much better


def part1_q1(data: ReportData, out_dir: Path) -> str:
    fc = data.first
    if fc is None:
        return "### Question 1\n\n" + missing_note("first_classifier", data.experiment)
    h = data.histories["first_classifier"]
    h = h[h["run_id"] == fc["run_id"]].sort_values("epoch")
    tr_acc, va_acc = h["train_acc"].iloc[-1], h["valid_acc_epoch"].iloc[-1]
    errors = [_optimization_error(h, tr_acc), _generalization_error(h, tr_acc, va_acc),
              _approximation_error(data, Stat.of(fc, "train_acc_thr05"))]
    mark = smoke_mark("first_classifier", data.smoke("first_classifier"))
    return "\n\n".join(["### Question 1", *([mark] if mark else []), _q1_setup(fc, h), bullet(errors),
                        figs(data, "first_classifier", out_dir, "First classifier")])


def _q1_setup(fc: pd.Series, h: pd.DataFrame) -> str:
    """What the first classifier is and scores, and what "high" means for each error below."""
    n_params = n_params_mlp(fc["n_layers"], fc["hidden_dims"], fc["activation"])
    tr_acc, va_acc = h["train_acc"].iloc[-1], h["valid_acc_epoch"].iloc[-1]
    return (f"The first classifier is an MLP with {fc['n_layers']} hidden layers of width {fc['hidden_dims']} "
            f"({fc['activation']}; {count(n_params)} parameters), trained for {len(h)} epochs with "
            f"{fc.get('optimizer.name', 'its optimizer')} (lr {fc.get('optimizer.lr')}). After the last epoch it "
            f"reaches {pct(tr_acc)} train accuracy (loss {num(h['train_loss'].iloc[-1], 3)}) and {pct(va_acc)} "
            f"validation accuracy (loss {num(h['valid_loss'].iloc[-1], 3)}) at threshold 0.5; with the ROC threshold "
            f"chosen on validation ({num(fc['roc_threshold'], 3)}) it scores {Stat.of(fc).quote()} on test. "
            + _first_seed_note(fc) +
            f"\"High\" below means: the train loss still fell by more than {STILL_LEARNING_REL_DROP:.0%} over the "
            f"last quarter of the epochs (optimization), the train-valid accuracy gap exceeds {GAP_POINTS:.0f} "
            f"points or the validation loss climbs back from its minimum (generalization), a larger model of the "
            f"grid fits the training data more than {APPROX_POINTS:.0f} points better (approximation).")


def _first_seed_note(fc: pd.Series) -> str:
    """With several seeds: which numbers are means and which are the first seed's curves."""
    n = int(fc.get("n_seeds", 1) or 1)
    if n < 2:
        return ""
    return (f"The test accuracy is the mean over {n} seeds (± their std); the curves, the threshold and the "
            f"train and validation accuracies after the last epoch are those of the first seed "
            f"(seed {fc.get('seed')}). ")


def _optimization_error(h: pd.DataFrame, tr_acc: float) -> str:
    """High while the train loss still fell by more than STILL_LEARNING_REL_DROP over the last quarter."""
    n = len(h)
    if n < 2:
        return ("**Optimization error: cannot be judged** — only one epoch was logged, so the curve has no trend. "
                f"With {pct(tr_acc)} train accuracy after one epoch, more training is the first measure to take.")
    k = max(1, n // 4)
    before, last = h["train_loss"].iloc[-1 - k], h["train_loss"].iloc[-1]
    rel = (before - last) / before if before else 0.0
    if rel > STILL_LEARNING_REL_DROP:
        return (f"**Optimization error: high.** The train loss was still falling at the end: {num(before, 3)} → "
                f"{num(last, 3)} over the last {k} epoch(s) ({rel:.0%} lower). More epochs or a better schedule "
                f"would still reduce it.")
    return (f"**Optimization error: low.** The train loss has flattened: {num(before, 3)} → {num(last, 3)} over "
            f"the last {k} epoch(s) ({rel:.1%} change), at {pct(tr_acc)} train accuracy; the optimizer has "
            f"converged for this model, so more of the same training would not buy much.")


def _validation_loss_note(h: pd.DataFrame) -> Tuple[str, bool]:
    """How the validation loss moved since its minimum, and whether that is a clear (> 5 %) rise."""
    vloss, n = h["valid_loss"].to_numpy(), len(h)
    i_min = int(np.argmin(vloss))
    if i_min == n - 1:
        return f"the validation loss was lowest at the last epoch ({num(vloss[-1], 3)}), so no overfitting yet", False
    since_min = (f"the validation loss was lowest at epoch {int(h['epoch'].iloc[i_min])} ({num(vloss[i_min], 3)}) and "
                 f"ended at {num(vloss[-1], 3)}")
    if vloss[-1] > vloss[i_min] * 1.05:
        return since_min + ", a clear rise and a sign of overfitting", True
    return since_min + ", a rise of less than 5%, so at most a first hint of overfitting", False


def _generalization_error(h: pd.DataFrame, tr_acc: float, va_acc: float) -> str:
    """High when the train-valid gap exceeds GAP_POINTS or the validation loss clearly rose."""
    gap = tr_acc - va_acc
    loss_note, rising = _validation_loss_note(h)
    high = gap > GAP_POINTS or rising
    return (f"**Generalization error: {'high' if high else 'low'}.** Train {pct(tr_acc)} vs validation "
            f"{pct(va_acc)}: validation is {abs(gap):.1f} points {'lower' if gap >= 0 else 'higher'}; {loss_note}. "
            f"Note that validation is not an iid "
            f"sample of the training distribution (it is all the 50° population, train is 75% 10° moons), so the gap "
            f"mixes distribution shift with overfitting; "
            + ("reducing it needs training data closer to the target population (or augmentation such as input "
               "noise) more than regularization." if high else
               "the model transfers well despite the shift."))


def _approximation_error(data: ReportData, fc_train: Stat) -> str:
    """High when a larger model of the MLP grid fits the training set more than APPROX_POINTS better
    (and, with several seeds, beyond the seed spread)."""
    mlp = data.finished("mlp_grid")
    if not len(mlp) or "train_acc_thr05" not in mlp:
        return (f"**Approximation error:** the MLP grid has not been run in this store, so there is no larger model "
                f"to compare with; the model fits {fc_train.quote()} of the training set and its decision boundary "
                f"(figure) is non-linear, which is what the moons need.")
    best = mlp.loc[mlp["train_acc_thr05"].idxmax()]
    fit = Stat.of(best, "train_acc_thr05")
    high = fit.mean - fc_train.mean > APPROX_POINTS and verdict(fit, fc_train) != "noise"
    return (f"**Approximation error: {'high' if high else 'low'}.** Evaluated after training "
            f"at threshold 0.5, it fits {fc_train.quote()} of the training set; the best-fitting model of the "
            f"depth x width grid ({best['label']}, {count(best['n_params'])} parameters) fits "
            f"{fit.short()} ({compare(fit, fc_train)}). "
            + ("A richer model class fits the data clearly better, so this one is too restricted."
               if high else
               "More capacity does not fit the data much better, and the decision boundary (figure) already "
               "follows the curved moons: the remaining train error is the overlap of the noisy classes, "
               "not a limit of the model."))


def model_free_rates() -> Dict[str, Dict[str, float]]:
    """FPR/FNR on each split of a 25-nearest-neighbour classifier fit on the training split:
    what the data generation alone implies, with no neural network involved."""
    from sklearn.neighbors import KNeighborsClassifier

    from training.data.synthetic import make_synthetic_splits

    splits = make_synthetic_splits(42)
    knn = KNeighborsClassifier(25).fit(splits["train"].X, splits["train"].y)
    out = {}
    for name, s in splits.items():
        pred = knn.predict(s.X)
        out[name] = dict(fpr=float(((pred == 1) & (s.y == 0)).sum() / max((s.y == 0).sum(), 1)),
                         fnr=float(((pred == 0) & (s.y == 1)).sum() / max((s.y == 1).sum(), 1)))
    return out


def part1_q2(data: ReportData) -> str:
    fc = data.first
    ref = model_free_rates()["valid"]
    expect = "FNR" if ref["fnr"] > ref["fpr"] else "FPR"
    pushed = ("positives (class 1) into the negative region" if expect == "FNR" else
              "negatives (class 0) into the positive region")
    reason = (f"The training set is 75% the 10°-rotated moons and 25% the 50° ones, while validation is entirely "
              f"the 50° population (noise 0.25 vs 0.20). The classifier therefore learns a boundary that mostly "
              f"fits the 10° moons, and the extra 40° rotation of the validation moons carries the end of one moon "
              f"across it. Which class loses more follows from the geometry; simulating it with a model-free "
              f"classifier (25 nearest neighbours fit on the training split, computed now from "
              f"`training.data.synthetic`) gives validation FPR {rate(ref['fpr'])} and FNR {rate(ref['fnr'])}: the "
              f"rotation pushes {pushed}, "
              f"so **we expect the {expect} to be higher on validation**.")
    if fc is None:
        return "### Question 2\n\n" + reason + "\n\n" + missing_note("first_classifier", data.experiment)
    fpr, fnr = Stat.of(fc, "valid_fpr_thr05"), Stat.of(fc, "valid_fnr_thr05")
    measured = "FNR" if fnr.mean > fpr.mean else "FPR"
    agrees = ("as expected" if measured == expect else
              "contrary to that expectation; the learned boundary differs from the nearest-neighbour one")
    thr = fc["roc_threshold"]
    shift = (f"The ROC threshold chosen on validation is {num(thr, 3)}, "
             + ("below 0.5: to balance the errors the model must call more samples positive, which confirms that "
                "at 0.5 it under-calls the positive class on validation" if thr < 0.5 else
                "above 0.5: the model over-calls the positive class on validation at 0.5")
             + f"; at that threshold validation FPR is {rate(fc['valid_fpr_thrroc'])} and FNR "
               f"{rate(fc['valid_fnr_thrroc'])}.")
    mark = smoke_mark("first_classifier", data.smoke("first_classifier"))
    return "\n\n".join([
        "### Question 2", *([mark] if mark else []), reason,
        f"Measured on the first classifier at threshold 0.5: validation FPR = {fpr.short(rate, 3)}, FNR = "
        f"{fnr.short(rate, 3)} — {_rates_verdict(fpr, fnr, measured, agrees)}. On train the two are "
        f"{Stat.of(fc, 'train_fpr_thr05').short(rate, 3)} / {Stat.of(fc, 'train_fnr_thr05').short(rate, 3)} "
        f"(FPR / FNR), closer together, because train is the distribution the boundary was fit to.", shift])


def _rates_verdict(fpr: Stat, fnr: Stat, measured: str, agrees: str) -> str:
    """'the FNR is higher, as expected', said beyond the seed spread only (rates: 3 decimals)."""
    v = verdict(fnr, fpr)
    if v == "noise":
        return (f"the two are within seed noise of each other (n={fpr.n}, stds {fpr.std:.3f} and {fnr.std:.3f}), so "
                f"these runs do not show which is higher")
    seeds = f" (n={fpr.n}, beyond the seed spread)" if v != "unknown" else f" (one seed: {NO_SPREAD})"
    return f"the {measured} is higher, {agrees}{seeds}"


def part1_q3(data: ReportData) -> str:
    fc = data.first
    anchor = (f" (for the first classifier that point sits at validation FPR "
              f"{Stat.of(fc, 'valid_fpr_thrroc').short(rate, 3)}, "
              f"FNR {Stat.of(fc, 'valid_fnr_thrroc').short(rate, 3)}, "
              f"threshold {Stat.of(fc, 'roc_threshold').short(lambda v: num(v, 3), 3)})" if fc is not None else "")
    return "\n\n".join([
        "### Question 3",
        f"No. The \"optimal\" point used so far, the ROC point closest to (FPR=0, TPR=1){anchor}, weighs a false "
        f"positive and a false negative equally. Here they cost very different things: a positive sends a person to "
        f"an expensive and risky confirmation test, a negative leaves a sick person undiagnosed. The operating point "
        f"should minimise the expected cost, i.e. the ROC point where the curve's slope equals "
        f"(cost of a false positive x P(healthy)) / (cost of a false negative x P(sick)); in practice we pick the "
        f"threshold on the validation ROC curve that meets the constraint that matters.",
        bullet([
            "**Scenario 1 (the disease soon shows non-lethal symptoms, then cheap treatment):** a missed case is "
            "caught by its symptoms and treated cheaply, so a false negative costs little, while every false positive "
            "costs an expensive, risky test. Choose a **high threshold**: a point with very low FPR, accepting a "
            "higher FNR (lower TPR). The screening then only sends the confident cases to testing.",
            "**Scenario 2 (no clear symptoms, likely death without early diagnosis):** a false negative may cost a "
            "life, which outweighs the cost and risk of the extra tests. Choose a **low threshold**: a point with high "
            "TPR (low FNR), accepting more false positives. Because the tests are risky and expensive, not TPR=1 at "
            "any price: take the lowest FNR whose FPR (number of tests) is still affordable, and keep improving the "
            "model's separation, since a better ROC curve is the only way to cut both errors at once."]),
    ])


def part1_q4(data: ReportData, out_dir: Path) -> str:
    mlp = data.finished("mlp_grid")
    if not len(mlp):
        return "### Question 4\n\n" + missing_note("mlp_grid", data.experiment)
    act = recipe(mlp, ["activation"]).get("activation", "relu")
    recipe_text = (f"Recipe shared by the cells: {recipe_line(mlp, MLP_RECIPE_KEYS)}; validation chooses each "
                   f"cell's threshold, test "
                   f"judges it. Test accuracy here is at the ROC threshold, as in the programme's mosaic."
                   + _q4_seeds_note(mlp))
    mark = smoke_mark("mlp_grid", data.smoke("mlp_grid"))
    return "\n\n".join(["### Question 4", *([mark] if mark else []), _q4_coverage(mlp), recipe_text, _q4_table(mlp),
                        figs(data, "mlp_grid", out_dir, "MLP grid"), _q4_axis(mlp, Q4_WIDTH, act),
                        _q4_axis(mlp, Q4_DEPTH, act), _q4_pairs(mlp, act), _q4_threshold(mlp)])


def _q4_coverage(mlp: pd.DataFrame) -> str:
    depths, widths = mlp_axes(mlp)
    missing_cells = [f"d{d}_w{w}" for w in widths for d in depths
                     if not ((mlp["depth"] == d) & (mlp["width"] == w)).any()]
    return (f"{len(mlp)} of the {len(depths) * len(widths)} cells of the depth x width grid finished"
            + (f"; not run: {', '.join(missing_cells)}" if missing_cells else "") + ".")


def _q4_seeds_note(mlp: pd.DataFrame) -> str:
    n = int(mlp["n_seeds"].max()) if "n_seeds" in mlp.columns else 1
    return (f" Each cell's numbers are means over its seeds (up to {n}; the test accuracy's std in the ± column); "
            f"the mosaic shows each cell's first seed." if n > 1 else "")


def _q4_table(mlp: pd.DataFrame) -> str:
    mlp = mlp.assign(**{c: np.nan for c in ("test_acc_std",) if c not in mlp.columns})
    if "n_seeds" not in mlp.columns:
        mlp = mlp.assign(n_seeds=1)
    return table(mlp.sort_values(["width", "depth"]), [
        ("label", "model", str), ("depth", "depth", str), ("width", "width", str),
        ("n_params", "params", count_or_na), ("roc_threshold", "ROC thr", lambda v: num(v, 3)),
        ("train_acc_thr05", "train acc (0.5)", pct), ("valid_acc", "valid acc (0.5)", pct),
        ("test_acc_thr05", "test acc (0.5)", pct), ("test_acc", "test acc (ROC thr)", pct),
        ("test_acc_std", "± std", spread_cell), ("n_seeds", "seeds", str)])


@dataclass(frozen=True)
class AxisProse:
    """Q4's reading of one axis of the mosaic: `varies` changes while `fixed` is held.

    The templates take {small}/{big} (the extreme values of `varies`), {small_acc}/{big_acc}
    (their mean test accuracy over `fixed`), {gain} and {act} (the activation).
    """

    title: str
    varies: str
    fixed: str
    average: str
    gains: str     # when the big end scores more than AXIS_GAIN_POINTS better
    no_gain: str
    closing: str


AXIS_GAIN_POINTS = 1.0
Q4_WIDTH = AxisProse(
    "**1. Columns (fixed depth, width varies).**", "width", "depth",
    "Averaged over depths, the widest cells (width {big}) score {big_acc} and the narrowest (width {small}) "
    "{small_acc} ({gain}). ",
    "Width is what lets the boundary bend: each hidden unit contributes one smooth {act} ridge, so a narrow layer "
    "(width {small}) has only {small} ridges to combine and its boundary can bend only a few times, cutting through "
    "the moons' tips, while wider layers draw the curved boundary that wraps around them (mosaic). ",
    "Width barely changes the test score over this range: even width {small} already draws a boundary that "
    "separates the bulk of the moons, and extra units only refine it where the test population (rotated 40°, "
    "noisier) has few points. ",
    "Beyond a moderate width the boundaries of neighbouring cells look alike and the score saturates: the remaining "
    "errors come from the overlap of the noisy classes and from the shift between the training populations and the "
    "test one, which no amount of width removes.")
Q4_DEPTH = AxisProse(
    "**2. Rows (fixed width, depth varies).**", "depth", "width",
    "Averaged over widths, depth {big} scores {big_acc} and depth {small} {small_acc} ({gain}). ",
    "Depth composes the ridges of the previous layer into more complex regions, so deeper cells draw more intricate "
    "boundaries from the same width. ",
    "Depth adds little here: composing layers gives more complex regions, but the moons need only a moderately "
    "curved boundary, and deeper nets trained for the same few epochs are harder to optimise. ",
    "At very small width, depth cannot compensate: every layer squeezes the data through that many units, so the "
    "information lost in the first narrow layer cannot be recovered by the next ones.")


def _axis_stat(cells: pd.DataFrame) -> Stat:
    """The mean over cells of their mean test accuracy; its spread is the cells' typical seed std."""
    stats = [Stat.of(r) for _, r in cells.iterrows()]
    stds = [s.std for s in stats if s.has_spread]
    known = len(stds) == len(stats) and stats
    return Stat(float(np.mean([s.mean for s in stats])), float(np.mean(stds)) if known else np.nan,
                min(s.n for s in stats) if known else 1)


def _q4_axis(mlp: pd.DataFrame, prose: AxisProse, act: str) -> str:
    """One trend line per held value, then the mean effect of the varying axis and its reading
    (the 'gains' reading only when the gain also exceeds the seed spread, where one is known)."""
    fixed, varies = prose.fixed, prose.varies
    lines = [f"{fixed} {v}: test accuracy {spread_trend(stat_pairs(mlp[mlp[fixed] == v], varies), varies)}"
             for v in sorted(set(mlp[fixed]))]
    small, big = min(mlp[varies]), max(mlp[varies])
    lo, hi = _axis_stat(mlp[mlp[varies] == small]), _axis_stat(mlp[mlp[varies] == big])
    gain = hi.mean - lo.mean
    values = dict(small=small, big=big, small_acc=lo.short(), big_acc=hi.short(), gain=compare(hi, lo), act=act)
    reading = prose.gains if gain > AXIS_GAIN_POINTS and verdict(hi, lo) != "noise" else prose.no_gain
    if verdict(hi, lo) == "lower":  # measured: the big end is worse, neither reading fits
        reading = (f"Here {varies} {big} scores lower than {varies} {small} beyond the seed spread: more {varies} "
                   f"hurts at this training budget. ")
    return (f"{prose.title}\n\n{bullet(lines)}\n\n"
            + (prose.average + reading + prose.closing).format(**values))


# The programme's two pairs "with the same number of parameters" (they share hidden units, not parameters).
Q4_PAIRS = (((1, 32), (4, 8)), ((1, 128), (4, 32)))
PAIR_CLOSE_POINTS = 1.0


def _cell_name(cell: Tuple[int, int]) -> str:
    return f"depth={cell[0]}, width={cell[1]}"


def _q4_pairs(mlp: pd.DataFrame, act: str) -> str:
    lines = [_q4_pair(mlp, shallow, deep, act) for shallow, deep in Q4_PAIRS]
    return ("**3. Pairs named as having equal parameter counts.**\n\n" + bullet(lines)
            + "\n\nWhat the pairs share is the number of hidden neurons, not parameters: a d-layer net of width w "
              "has about (d-1)w² weights between hidden layers, so splitting the same neurons over more layers "
              "multiplies the parameters.")


def _q4_pair(mlp: pd.DataFrame, shallow: Tuple[int, int], deep: Tuple[int, int], act: str) -> str:
    """Parameter and hidden-unit counts of a (shallow, deep) pair, then what the store measured of it."""
    (d1, w1), (d2, w2) = shallow, deep
    p1, p2 = n_params_mlp(d1, w1, act), n_params_mlp(d2, w2, act)
    units = (f"the same number of hidden units ({d1 * w1})" if d1 * w1 == d2 * w2 else
             f"{d1 * w1} vs {d2 * w2} hidden units")
    head = (f"{_cell_name(shallow)} vs {_cell_name(deep)}: counted on the project's MLP, they have "
            f"{count(p1)} vs {count(p2)} parameters ({'the same' if p1 == p2 else 'different'}), but {units}.")
    cells = {key: mlp[(mlp["depth"] == key[0]) & (mlp["width"] == key[1])] for key in (shallow, deep)}
    absent = [_cell_name(key) for key, rows in cells.items() if not len(rows)]
    if len(absent) == 1:
        return head + f" Not comparable from this store: {absent[0]} has not been run."
    if absent:
        return head + f" Not comparable from this store: neither {absent[0]} nor {absent[1]} has been run."
    s1, s2 = Stat.of(cells[shallow].iloc[0]), Stat.of(cells[deep].iloc[0])
    return (head + f" Measured test accuracy: {s1.short()} vs {s2.short()} "
            + (f"(n={s1.n} and {s2.n}); " if s1.has_spread and s2.has_spread else f"(one seed: {NO_SPREAD}); ")
            + _pair_verdict(shallow, deep, s1, s2))


def _pair_verdict(shallow: Tuple[int, int], deep: Tuple[int, int], s1: Stat, s2: Stat) -> str:
    """Which arrangement of the units did better: beyond the seed spread, or (one seed) beyond a point."""
    a1, a2, v = s1.mean, s2.mean, verdict(s1, s2)
    if v == "noise":
        return (f"the two are within seed noise ({points(a1 - a2)} against stds adding up to "
                f"{s1.std + s2.std:.1f}), so at this budget the arrangement of the units hardly matters on this simple "
                f"2D problem.")
    if v == "unknown" and abs(a1 - a2) <= PAIR_CLOSE_POINTS:
        return ("the two are within a point of each other, so at this budget the arrangement of the units "
                "hardly matters on this simple 2D problem.")
    better = _cell_name(shallow) if a1 > a2 else _cell_name(deep)
    why = ("The deeper net spends the same units on composed features, which pays off when it can be optimised "
           "well." if a2 > a1 else
           "The wide shallow net is easier to optimise in few epochs, and one wide tanh layer already approximates "
           "the needed boundary (universal approximation), so depth brings no gain.")
    spread = ", beyond the seed spread" if v != "unknown" else ""
    return f"{better} is better by {abs(a1 - a2):.1f} points{spread}. " + why


# Q4 part 4, by whether the validation-chosen threshold raised the mean test accuracy.
THRESHOLD_VERDICT = {
    True: ("So it did improve the test results on average. ",
           "much of that correction carries over, and balancing the errors raises accuracy."),
    False: ("So on average it did **not** improve the test results. ",
            "the correction fitted to validation does not transfer: a threshold tuned on one shifted population "
            "is not optimal for another, and balancing FPR against FNR is not the same as maximising accuracy."),
}
UNCHANGED_POINTS = 0.05


def _threshold_side(lo: float, hi: float) -> str:
    return "all below 0.5" if hi < 0.5 else "all above 0.5" if lo > 0.5 else "on both sides of 0.5"


def _q4_threshold(mlp: pd.DataFrame) -> str:
    """How the ROC threshold chosen on validation changed test (and validation) accuracy, cell by cell."""
    delta = mlp["test_acc_thrroc"] - mlp["test_acc_thr05"]
    vdelta = mlp["valid_acc_thrroc"] - mlp["valid_acc_thr05"]
    n_up, n_down = int((delta > UNCHANGED_POINTS).sum()), int((delta < -UNCHANGED_POINTS).sum())
    thr_lo, thr_hi = mlp["roc_threshold"].min(), mlp["roc_threshold"].max()
    verdict, transfer = THRESHOLD_VERDICT[bool(delta.mean() > 0)]
    return (f"**4. Threshold selection on validation.** The ROC thresholds range from {num(thr_lo, 3)} to "
            f"{num(thr_hi, 3)} ({_threshold_side(thr_lo, thr_hi)}). On the test split the chosen threshold improved "
            f"{n_up} of {len(mlp)} cells, hurt {n_down} and left {len(mlp) - n_up - n_down} unchanged (within "
            f"{UNCHANGED_POINTS} points); the mean change is {points(delta.mean())} (from {points(delta.min())} to "
            f"{points(delta.max())}). On validation itself, where it was chosen, the mean change is "
            f"{points(vdelta.mean())}. " + verdict
            + "The threshold corrects the bias that the distribution shift gives the scores on validation (the 50° "
              "population); the test population is rotated 40°, between the training mix and validation but "
              "closer to validation, and noisier, so " + transfer
            + " Choosing a threshold on validation only helps the test score when validation resembles the test "
              "population; otherwise it is a form of overfitting to validation.")
