"""Part 3 answers (Q1-Q5): the CIFAR-10 experiments 1.1-1.4 and 2."""
from __future__ import annotations

from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from analysis.answers_common import (RECIPE_KEYS, best_row, cifar_table, figs, lead_sentence, lead_verdict,
                                     recipe_caveat, recipe_differences, recipe_line, stat_pairs, untrainable_text)
from analysis import query
from analysis.data import ReportData, not_trainable
from analysis.datasets import smoke_mark
from analysis.spread import NO_SPREAD, Stat, compare, spread_trend, stat_pct, verdict
from analysis.text import bullet, count, missing_note, num, pct, points, recipe

def _cifar_section(data: ReportData, grid: str, out_dir: Path) -> List[str]:
    df = data.grids[grid]
    if not len(df):
        return []
    mark = smoke_mark(grid, data.smoke(grid))
    parts = [*([mark] if mark else []),
             f"Runs of `{grid}` (test accuracy is measured once per seed, with the checkpoint of its best validation "
             f"epoch; a row is a configuration, its accuracies the mean over its finished seeds). Recipe shared by "
             f"its runs: {recipe_line(df)}.", cifar_table(data, grid), figs(data, grid, out_dir, grid)]
    return parts


def _depth_explanation(best_label: str, best_L: int, Ls: Sequence[int], lead: str = "unknown") -> str:
    """Why this depth won; lead: spread.verdict of the best vs the runner-up ('noise': no winner)."""
    if lead == "noise":
        return ("Because the best and the runner-up are within seed noise, these runs do not single out a best depth; "
                "a plain network is expected to gain from depth (larger receptive field) until un-normalised layers "
                "make it harder to optimise, and this grid cannot place that point more precisely.")
    if best_L == min(Ls):
        return (f"The shallowest setting is the best here. With this plain recipe (no normalization, no skips, a "
                f"fixed budget of epochs) every extra layer makes the network harder to optimise: gradients "
                f"reaching the first layers shrink or explode through the product of many layer Jacobians, and "
                f"deeper plain nets converge more slowly, so with early stopping they end lower (the degradation "
                f"problem that motivated ResNets). The added capacity of depth cannot be used if it is not trained.")
    if best_L == max(Ls):
        return ("The deepest setting is the best: more layers give a larger receptive field and more levels of "
                "feature composition, and at these depths the optimisation still works.")
    return (f"An intermediate depth wins ({best_label}): some depth helps (larger receptive field, more levels of "
            f"feature composition), but beyond it the plain network becomes harder to optimise (vanishing gradients "
            f"through many un-normalised layers), and the gains of capacity are lost to worse training.")


def part3_q1(data: ReportData, out_dir: Path) -> str:
    head = "### Question 1 (experiment 1.1: depth L)"
    df = data.finished("exp1_1")
    if not len(df):
        return head + "\n\n" + missing_note("exp1_1", data.experiment)
    lines = [f"K={k}: test accuracy {spread_trend(stat_pairs(df[df['K'] == k], 'L'), 'L')}"
             for k in dict.fromkeys(df["K"])]
    best = best_row(df)
    bad, criterion = untrainable_text(data.grids["exp1_1"])
    if bad:
        depths = sorted(set(int(n) for n in not_trainable(data.grids["exp1_1"])["n_convs"].dropna()))
        train = (f"**2. Not trainable:** {', '.join(bad)} {criterion}. The cause is depth without normalization or "
                 f"shortcuts: the signal and the gradient pass through {' or '.join(map(str, depths))} "
                 f"stacked conv+ReLU layers, and the product of their Jacobians vanishes (or explodes), so the early "
                 f"layers get no useful gradient and the network stays near chance; ReLUs that die at init make it "
                 f"worse. Two remedies: (1) **batch normalization** after each conv, which keeps the activations' "
                 f"scale at every depth and the gradients well conditioned; (2) **skip (residual) connections**, which "
                 f"give the gradient an identity path around every block (experiment 1.4). A careful initialisation "
                 f"(He init, or zero-initialised residual branches) and a lower learning rate with warm-up also help.")
        shallow = [lab for lab, L in zip(not_trainable(data.grids["exp1_1"])["label"],
                                         not_trainable(data.grids["exp1_1"])["L"]) if L == df["L"].min()]
        if shallow:
            train += (f" Note that even the shallowest setting failed for {', '.join(shallow)}: in these runs depth is "
                      f"not the only cause; the training budget or the recipe (too few epochs or images, the "
                      f"learning rate) is part of it.")
    else:
        low = df.loc[df["best_valid_acc"].idxmin()]
        train = (f"**2. Not trainable:** none of the depths failed to train {criterion}; the weakest run, "
                 f"{low['label']}, still reached {pct(low['best_valid_acc'])} on validation. Deep plain nets are the "
                 f"ones at risk: without normalization or shortcuts the gradient through many stacked conv+ReLU "
                 f"layers vanishes. The two standard remedies are batch normalization and skip (residual) "
                 f"connections (experiment 1.4).")
    return "\n\n".join([head, *_cifar_section(data, "exp1_1", out_dir),
                        f"**1. Effect of depth.**\n\n{bullet(lines)}\n\nThe best configuration is {best['label']} "
                        f"with {stat_pct(best)} test accuracy. {lead_sentence(df)}"
                        + _depth_explanation(best["label"], int(best["L"]), sorted(set(df["L"])), lead_verdict(df)),
                        train])


def part3_q2(data: ReportData, out_dir: Path) -> str:
    head = "### Question 2 (experiment 1.2: width K)"
    df = data.finished("exp1_2")
    if not len(df):
        return head + "\n\n" + missing_note("exp1_2", data.experiment)
    df = df.assign(K_int=df["K"].map(lambda k: int(k) if str(k).isdigit() else np.nan))
    lines = [f"L={L}: test accuracy {spread_trend(stat_pairs(df[df['L'] == L], 'K_int'), 'K')}"
             for L in sorted(set(df["L"]))]
    best = best_row(df)
    spread_k = df.groupby("L")["test_acc"].agg(lambda s: s.max() - s.min())
    text = [f"**Effect of width.**\n\n{bullet(lines)}\n\nThe best configuration is {best['label']} "
            f"({stat_pct(best)}). {lead_sentence(df)}Across K at fixed L the mean test accuracy spans "
            + ", ".join(f"{spread_k[L]:.1f} points at L={L}" for L in spread_k.index) + ". " + _width_verdict(df)]
    d11 = data.finished("exp1_1")
    if len(d11):
        spread_l = d11.groupby("K")["test_acc"].agg(lambda s: s.max() - s.min())
        text.append("**Compared with experiment 1.1.** In 1.1 (depth varies at fixed K) the test accuracy spans "
                    + ", ".join(f"{spread_l[k]:.1f} points at K={k}" for k in spread_l.index)
                    + (": depth moved the results more than width did. " if spread_l.mean() > spread_k.mean() else
                       ": width moved the results at least as much as depth did. ")
                    + "Depth is the riskier knob (plain deep nets become untrainable) while width is the safer one "
                      "(it costs compute but does not hurt optimisation).")
        shared = df.merge(d11, on="label", suffixes=("_12", "_11"))
        if len(shared):
            diffs = (shared["test_acc_12"] - shared["test_acc_11"]).abs()
            differ = recipe_differences(shared, "_12", "_11")
            same = ("with the same recipe" if not differ else
                    f"but with different settings ({', '.join(differ)})")
            text.append(f"{len(shared)} configurations appear in both experiments {same} "
                        f"({', '.join(shared['label'])}); their test accuracies differ by {diffs.mean():.1f} points on "
                        f"average (at most {diffs.max():.1f}). "
                        + (_noise_yardstick(shared) if not differ else
                           "Because the settings differ, this is not a measure of run-to-run noise."))
    else:
        text.append("**Compared with experiment 1.1:** " + missing_note("exp1_1", data.experiment))
    bad, criterion = untrainable_text(data.grids["exp1_2"])
    text.append(f"Not trainable in 1.2 {criterion}: {', '.join(bad) if bad else 'none'}.")
    return "\n\n".join([head, *_cifar_section(data, "exp1_2", out_dir), *text])


def _noise_yardstick(shared: pd.DataFrame) -> str:
    """What the 1.1/1.2 overlap says about noise, next to the seeds' own spread when there is one."""
    stds = pd.concat([shared.get(f"test_acc_std{s}", pd.Series(dtype=float)) for s in ("_12", "_11")]).dropna()
    if len(stds):
        return (f"Trained again in another grid, a configuration moves by that much; its own seeds spread by "
                f"{stds.mean():.1f} points (mean std), the yardstick every comparison above is held to.")
    return ("That is the run-to-run noise of a single training, a yardstick for which of the differences above are "
            "real.")


def _widest_vs_narrowest(df: pd.DataFrame) -> List[Tuple[Any, Stat, Stat]]:
    """(L, widest K's Stat, narrowest K's Stat) at every depth with two widths or more."""
    out = []
    for L, g in df.dropna(subset=["K_int", "test_acc"]).groupby("L"):
        if g["K_int"].nunique() > 1:
            out.append((L, Stat.of(g.loc[g["K_int"].idxmax()]), Stat.of(g.loc[g["K_int"].idxmin()])))
    return out


def _width_verdict(df: pd.DataFrame) -> str:
    """'More filters help' only where the widest K beats the narrowest beyond the seed spread."""
    pairs = _widest_vs_narrowest(df)
    verdicts = [verdict(w, n) for _, w, n in pairs]
    detail = "; ".join(f"L={L}: {compare(w, n)}" for L, w, n in pairs)
    if pairs and all(v == "higher" for v in verdicts):
        return (f"Widest vs narrowest K at each depth: {detail}. More filters help: each layer can detect more "
                "patterns, and wider layers are also easier to optimise (more paths for the gradient), at a cost in "
                "parameters and compute that grows like K²; beyond some width the gain shrinks and over-fitting of "
                "the training set starts to show.")
    if "lower" in verdicts:
        return (f"Widest vs narrowest K at each depth: {detail}. Width does not help uniformly here: at some depths "
                "the widest layer scored lower beyond the seed spread, a sign that the wider models over-fit the "
                "training set within the epoch budget.")
    if "higher" in verdicts:
        helped = ", ".join(f"L={L}" for (L, _, _), v in zip(pairs, verdicts) if v == "higher")
        rest = ", ".join(f"L={L}" for (L, _, _), v in zip(pairs, verdicts) if v != "higher")
        return (f"Widest vs narrowest K at each depth: {detail}. More filters help beyond the seed spread at "
                f"{helped} (each layer can detect more patterns, and wider layers are easier to optimise), but not "
                f"measurably at {rest}: there the gain is within seed noise or no spread is known.")
    if pairs and all(v == "unknown" for v in verdicts):
        means_up = all(w.mean >= n.mean for _, w, n in pairs)
        return (f"Widest vs narrowest K at each depth: {detail}. With one seed per configuration {NO_SPREAD}: "
                + ("the widest K scored at least as well at every depth, which suggests that more filters help "
                   "(more patterns per layer, easier optimisation), but does not establish it."
                   if means_up else "at some depths the wider layer scored lower, which may be seed noise."))
    return (f"Widest vs narrowest K at each depth: {detail}. So these runs do not show that more filters help: "
            "where the spread is known the differences are within seed noise." if pairs else "")


def _best_of(data: ReportData, grids: Sequence[str]) -> Optional[Tuple[str, pd.Series]]:
    found = [(g, best_row(data.finished(g))) for g in grids]
    found = [(g, b) for g, b in found if b is not None]
    return max(found, key=lambda gb: gb[1]["test_acc"]) if found else None


def _versus(a: Stat, b: Stat, better: str, worse: str, tie: str) -> str:
    """The comparison a vs b in words: better / worse only beyond the seed spread."""
    v = verdict(a, b)
    if v == "higher":
        return f"{compare(a, b)}; {better}"
    if v == "lower":
        return f"{compare(a, b)}; {worse}"
    if v == "noise":
        return f"{compare(a, b)}; {tie}"
    return (f"{compare(a, b)}; judged by the single measurement, "
            + (tie if abs(a.mean - b.mean) < 0.5 else better if a.mean > b.mean else worse))


def part3_q3(data: ReportData, out_dir: Path) -> str:
    head = "### Question 3 (experiment 1.3: K=[64, 128, 256], L=1..4)"
    df = data.finished("exp1_3")
    if not len(df):
        return head + "\n\n" + missing_note("exp1_3", data.experiment)
    best = best_row(df)
    bad, criterion = untrainable_text(data.grids["exp1_3"])
    pairs = stat_pairs(df, "L")
    text = [f"Test accuracy {spread_trend(pairs, 'L')}. With three filter sizes each L means 3L conv layers "
            f"({', '.join(f'L={L}: {n} convs' for L, n in zip(df['L'], df['n_convs']))}), and the growing widths "
            f"follow the usual pattern of more channels as the maps shrink. The best is {best['label']} with "
            f"{stat_pct(best)} ({count(best['n_params'])} parameters). {lead_sentence(df)}"
            + _depth_explanation(best["label"], int(best["L"]), sorted(set(df["L"])), lead_verdict(df)),
            f"Not trainable {criterion}: {', '.join(bad) if bad else 'none'}"
            + (" — the deepest plain stacks fail for the same reason as in 1.1." if bad else ".")]
    prev = _best_of(data, ("exp1_1", "exp1_2"))
    if prev:
        g, b = prev
        text.append(f"Compared with the single-width nets of 1.1/1.2, whose best is {b['label']} in {g} "
                    f"({stat_pct(b)}), the best growing-width net is "
                    + _versus(Stat.of(best), Stat.of(b),
                              "better; spending few channels at high resolution and many at low resolution is the "
                              "more efficient use of capacity.",
                              "no better; with this plain recipe the extra width of the later layers does not pay off.",
                              "on par, so these runs do not say that growing widths help."))
    return "\n\n".join([head, *_cifar_section(data, "exp1_3", out_dir), *text])


def part3_q4(data: ReportData, out_dir: Path) -> str:
    head = "### Question 4 (experiment 1.4: residual networks)"
    df = data.finished("exp1_4")
    if not len(df):
        return head + "\n\n" + missing_note("exp1_4", data.experiment)
    best = best_row(df)
    bn = recipe(df, ["model_kwargs.batchnorm", "model_kwargs.dropout"])
    lines = [f"K={k}: test accuracy {spread_trend(stat_pairs(df[df['K'] == k], 'L'), 'L')}"
             for k in dict.fromkeys(df["K"])]
    bad, criterion = untrainable_text(data.grids["exp1_4"])
    deepest = df.loc[pd.to_numeric(df["n_convs"]).idxmax()]
    text = [f"{bullet(lines)}\n\nThe best ResNet is {best['label']} with {stat_pct(best)}. "
            + lead_sentence(df) + f"The deepest, {deepest['label']} ({int(deepest['n_convs'])} convs), reached "
            f"{stat_pct(deepest)}. Not trainable {criterion}: {', '.join(bad) if bad else 'none'}."]
    plain = pd.concat([data.finished(g).assign(grid=g) for g in ("exp1_1", "exp1_3") if len(data.finished(g))]) \
        if any(len(data.finished(g)) for g in ("exp1_1", "exp1_3")) else pd.DataFrame()
    if len(plain):
        m = df.merge(plain, on=["K", "L"], suffixes=("_res", "_plain"))
        if len(m):
            res = [Stat.of(r, suffix="_res") for _, r in m.iterrows()]
            pln = [Stat.of(r, suffix="_plain") for _, r in m.iterrows()]
            rows = [f"{r.label_res}: plain {r.grid} {p.short()} → ResNet {q.short()} ({compare(q, p)})"
                    for r, p, q in zip(m.itertuples(), pln, res)]
            gain = (m["test_acc_res"] - m["test_acc_plain"]).mean()
            text.append("**Same K and L, plain vs residual** (1.1 / 1.3 vs 1.4):\n\n" + bullet(rows)
                        + f"\n\nOn average the residual version is {points(gain)} ({_pair_count(res, pln)}). "
                        + _residual_reading(res, pln, gain)
                        + (f"Note that the 1.4 runs also use batch normalization (dropout "
                           f"{bn.get('model_kwargs.dropout', 0)}) while 1.1/1.3 do not, so the comparison credits "
                           f"skips and normalization together." if bn.get("model_kwargs.batchnorm") else "")
                        + recipe_caveat(recipe_differences(m, "_res", "_plain")))
        else:
            text.append("No configuration of 1.4 has a plain counterpart with the same K and L among the finished "
                        "runs of 1.1 and 1.3.")
        deep_plain = plain["n_convs"].max()
        text.append(f"The deepest plain net run has {int(deep_plain)} convs; ResNets were run up to "
                    f"{int(df['n_convs'].max())} convs.")
    else:
        text.append("**Compared with 1.1 and 1.3:** " + missing_note("exp1_1", data.experiment) + " "
                    + missing_note("exp1_3", data.experiment))
    return "\n\n".join([head, *_cifar_section(data, "exp1_4", out_dir), *text])


def _residual_reading(res: Sequence[Stat], plain: Sequence[Stat], gain: float) -> str:
    """Why residual beat plain (or not), said only as far as the seed spread allows."""
    v = [verdict(r, p) for r, p in zip(res, plain)]
    helped = ("Skip connections make the deep configurations trainable: each block only has to learn a correction "
              "to the identity, and the gradient reaches the early layers through the shortcuts, so depth stops "
              "hurting. ")
    hurt = ("Here the residual versions did not beat the plain ones on average; at these depths the plain nets were "
            "still trainable, and the ResNet recipe's regularization costs accuracy within the epoch budget. ")
    if "higher" in v and "lower" not in v:
        return helped
    if "lower" in v and "higher" not in v:
        return hurt
    if all(x == "noise" for x in v):
        return "Every pair is within seed noise, so these runs do not show that skips change the accuracy here. "
    if all(x == "unknown" for x in v):
        return (helped if gain > 0 else hurt) + "(Single seeds: read this as a hypothesis, not a measured trend.) "
    return "The pairs disagree beyond the seed spread (some better, some worse), so there is no single verdict. "


def _pair_count(a: Sequence[Stat], b: Sequence[Stat]) -> str:
    """'2 of 3 pairs better beyond the seed spread, 1 within seed noise' (or no spread known)."""
    v = [verdict(x, y) for x, y in zip(a, b)]
    if all(x == "unknown" for x in v):
        return f"one seed per configuration: {NO_SPREAD}, so no pair is a measured difference"
    parts = [f"{v.count(k)} {word}" for k, word in (("higher", "better beyond the seed spread"),
                                                    ("lower", "worse beyond the seed spread"),
                                                    ("noise", "within seed noise"),
                                                    ("unknown", f"with a single seed ({NO_SPREAD})")) if v.count(k)]
    return f"of {len(v)} pairs: " + ", ".join(parts)


def history_lines(data: ReportData, best: pd.Series) -> List[str]:
    """How the best configuration's recipe got there: its earlier finished runs in this store,
    each with what changed from the one before (runs with another config hash)."""
    attempts = query.recipe_attempts("exp2", best["run_name"], data.experiment)
    if len(attempts) < 2:
        return []
    steps = []
    for i, row in attempts.iterrows():
        if i == 0:
            steps.append(f"{pct(row['test_acc'])} (first run)")
            continue
        diff = ", ".join(f"`{k}` {a!r} → {b!r}" for k, (a, b) in sorted(row["changed"].items())) or "no param change"
        steps.append(f"{pct(row['test_acc'])} after {diff}")
    return [f"Recipe history of {best['run_name']} in this store (finished runs, oldest first): " + "; ".join(steps)
            + "."]


def reference_lines(data: ReportData, best: pd.Series) -> List[str]:
    """The calibration: what an independent re-implementation of a published recipe (bench/
    airbench_reference.py, logged with grid=reference) reached on the same data."""
    ref = data.reference
    if not len(ref):
        return ["No calibration run in this store (`python bench/airbench_reference.py --data-dir DIR --mlflow` "
                "logs one): nothing says how hard this copy of CIFAR-10 is for a published recipe."]
    same_size = ref[ref["n_train"] == best.get("n_train")]  # like for like when there is one
    r = (same_size if len(same_size) else ref).iloc[0]
    d = best["test_acc"] - r["test_acc_tta"]
    return [f"Calibration: `{r['run_name']}`, an independent airbench94 (94.0% published on the original data in "
            f"under 10 epochs), reached {pct(r['test_acc_tta'])} with test-time augmentation ({pct(r['test_acc'])} "
            f"without) on this data, trained on {int(r['n_train'])} images for {int(r['epochs'])} epochs on "
            f"{r['device']}; the best YourCNN is {points(d)} from it."]


def part3_q5(data: ReportData, out_dir: Path) -> str:
    head = "### Question 5 (experiment 2: YourCNN)"
    df = data.grids["exp2"]
    design = ("**1. Modifications (YourCNN, `models/yourcnn.py`).** After airbench (K. Jordan) and ResNet-9 (D. Page): "
              "a stem (a frozen 2x2 patch-whitening conv fitted on training images, or a full-resolution conv); one "
              "*stage* per K element, entered by conv → max-pool → BatchNorm → activation (pooling before the BN "
              "normalises fewer positions), followed by residual pairs conv-BN-act-conv-BN with identity shortcuts; "
              "each stage pools once, so pool_every is not needed and depth never shrinks the maps; global max pooling "
              "and a single linear layer instead of a large MLP head; scaled logits; test-time augmentation (mirror "
              "and 1-pixel translations) on the final test. Depth stays trainable either way the residual branches "
              "are kept in check: with learnt BN scales the branch's last scale starts at zero (every block is the "
              "identity at initialisation); with frozen BN scales (`learn_bn_scale=False`) each of a stage's n branches "
              "is multiplied by 1/sqrt(n). The options each run used are in the recipe line below.")
    if not len(data.finished("exp2")):
        return "\n\n".join([head, design, missing_note("exp2", data.experiment)])
    fin = data.finished("exp2")
    shared = recipe(fin, RECIPE_KEYS)
    training = ("The training recipe, read from the runs' params: " + ", ".join(f"`{k}={v}`" for k, v in shared.items())
                + ". The data augmentation (random translation and horizontal flips), the SGD-Nesterov schedule with "
                  "warm-up and decay, and label smoothing address the over-fitting and slow convergence seen in "
                  "experiment 1.")
    best = best_row(fin)
    lines = [f"Test accuracy {spread_trend(stat_pairs(fin, 'L'), 'L')}.",
             f"The best is {best['label']} with {stat_pct(best)} ({count(best['n_params'])} parameters, "
             f"{num(best.get('fit_wall_time_s'), 0)} s of training). {lead_sentence(fin)}".rstrip()]
    prev = _best_of(data, ("exp1_1", "exp1_2", "exp1_3", "exp1_4"))
    if prev:
        g, b = prev
        lines.append(f"The best network of experiment 1 is {b['label']} in {g} with {stat_pct(b)}: YourCNN is "
                     + _versus(Stat.of(best), Stat.of(b),
                               "better: the architecture and the recipe built for it overcome the limits of "
                               "experiment 1.", "not better in these runs.", "on par."))
    else:
        lines.append("Experiment 1 has not been run in this store, so there is no comparison: "
                     + ", ".join(f"`{g}`" for g in ("exp1_1", "exp1_2", "exp1_3", "exp1_4")) + " are missing.")
    lines += history_lines(data, best)
    lines += reference_lines(data, best)
    bad, criterion = untrainable_text(df)
    depths = sorted(set(int(L) for L in fin["L"]))
    if bad:
        lines.append(f"Not trainable {criterion}: {', '.join(bad)}.")
    elif len(depths) > 1:
        lines.append(f"Not trainable {criterion}: none, at any finished depth (L={', '.join(map(str, depths))}); the "
                     "kept-in-check residual stages keep the deep versions trainable, unlike the plain nets of "
                     "experiment 1.")
    else:
        lines.append(f"Not trainable {criterion}: none, but only L={depths[0]} has finished, so depth is not tested "
                     "here yet.")
    running = df.loc[df["status"] == "RUNNING", "label"].tolist()
    if running:
        lines.append(f"Still running, so not in the figures above: {', '.join(running)}.")
    return "\n\n".join([head, design, training, "**Results of experiment 2.**", cifar_table(data, "exp2"),
                        figs(data, "exp2", out_dir, "exp2"), "**2. Analysis.**\n\n" + bullet(lines)])
