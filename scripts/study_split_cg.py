#!/usr/bin/env python3
"""Row-level study of the masked-Cholesky split CG (src/solve/row_solver_iterative.cpp) on a saved Hessian.

A development tool, not part of the product: it needs torch and safetensors (the set-up's virtual environment) and
answers, for a sample of one layer's rows, how many iterations the split CG needs to a relative KKT residual of 1e-8
under variants that the C++ solver does not run:

  precision   the operator in fp64, fp64 over the factor rounded to fp32, fp32 throughout, fp32 with fp64 vectors
              (reliable updates at every 1e-3 fall of the recurrence, as the solver does)
  deflate K   fp64, the split operator I + B Bᵀ (B = L_TT⁻¹ L_TS) preconditioned by I + B_E B_Eᵀ for K of the row's
              pruned inputs E (its first K in the solver's order, or the K largest columns of B): each such column
              costs the solver one masked forward pass per row, about half a product
  start       fp64, from four start points: SparseGPT's weights (the solver's), the masked weights (no update),
              M⁻¹ b (one application of the preconditioner M = L_TT L_TTᵀ), and OBS with the fixed mask in the
              reverse of the solver's order (e_T = L_TT⁻ᵀ L_STᵀ w_S: one backward pass, exact where the row's kept
              inputs all come first); also the start's relative residual
  tail        no CG: how much of a pass lies past each row's last kept input in the solver's order (inputs the
              passes could skip), and the spread of how often each input is pruned
  order       fp64, the inputs in each of these orders: by p_j (the share of rows pruning input j; the solver's
              by_pruned_share), by p_j c_j^a (c_j = Σ_t H_tj² / (H_jj H_tt) − 1, input j's squared correlations with
              the others; a = 1 is the solver's by_correlation) for a = 0.5, 1, 2, and greedily by p_j c_j
              recomputed on the Schur complement after every 128 inputs placed (the solver keeps whichever of its two
              a probe finds faster on the layer, see choose_masked_order)

Masks and start points are SparseGPT's (50% or 2:4, as in ../shared/docs/algorithms.md), the inputs in the solver's
order by_correlation (increasing p_j c_j, one of the solver's two; --study order compares them). Iterations are counted to the first iterate whose true residual meets the
tolerance, checked every iteration in fp64 (the solver checks less often).

  python scripts/study_split_cg.py HESSIANS.safetensors SITE MODEL.safetensors WEIGHT [--pattern 2:4] [--rows 12]
      [--study precision|deflate|start|tail|order] [--deflate 8,16,32] [--choice first|largest]
e.g. SITE model.decoder.layers.3.mlp_hidden, WEIGHT model.decoder.layers.3.fc2.weight (`optima prune
--save-hessians DIR` saves DIR/hessians-block-0003.safetensors).
"""
import argparse

import torch
from safetensors.torch import load_file

TOLERANCE = 1e-8
RELIABLE_UPDATE_FALL = 1e-3


def sparsegpt(w, h, pattern):
    """SparseGPT's mask and updated weights (blocks of 128, 1% damping), in fp64."""
    n = h.shape[0]
    w, h = w.clone(), h.clone()
    h += 0.01 * h.diag().mean() * torch.eye(n, dtype=h.dtype)
    u = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    mask = torch.zeros_like(w, dtype=torch.bool)
    for a in range(0, n, 128):
        b = min(a + 128, n)
        w1, u1 = w[:, a:b].clone(), u[a:b, a:b]
        q1, err1, m1 = torch.zeros_like(w1), torch.zeros_like(w1), torch.zeros_like(w1, dtype=torch.bool)
        if pattern == "unstructured50":
            score = w1**2 / u1.diag() ** 2
            m1 = score <= torch.sort(score.flatten())[0][int(score.numel() * 0.5)]
        for j in range(b - a):
            if pattern == "2:4" and j % 4 == 0:
                score = w1[:, j : j + 4] ** 2 / u1.diag()[j : j + 4] ** 2
                m1.scatter_(1, j + torch.topk(score, 2, dim=1, largest=False)[1], True)
            q = w1[:, j].clone()
            q[m1[:, j]] = 0
            q1[:, j] = q
            err = (w1[:, j] - q) / u1[j, j]
            w1[:, j:] -= err.unsqueeze(1) * u1[j, j:].unsqueeze(0)
            err1[:, j] = err
        w[:, a:b], mask[:, a:b] = q1, m1
        w[:, b:] -= err1 @ u[a:b, b:]
    return mask, w


def correlation_weights(h):
    """c_j = Σ_t H_tj² / (H_jj H_tt) − 1, zero for a dead input (as the solver's by_correlation)."""
    d = h.diag()
    inverse = torch.where(d > 0, 1 / d, torch.zeros_like(d))
    return ((h**2) @ inverse * inverse - 1).clamp_min(0)


def solver_order(h, pruned, power=1.0):
    """Increasing p_j c_j^power: the solver's by_correlation for power 1."""
    return torch.argsort(pruned.double().mean(0) * correlation_weights(h) ** power, stable=True)


def pruned_share_order(h, pruned):
    """Increasing p_j, the share of rows pruning input j (the solver's by_pruned_share)."""
    return torch.argsort(pruned.sum(0), stable=True)


def greedy_order(h, pruned, block=128):
    """p_j c_j with c_j recomputed on the Schur complement of the inputs placed so far, `block` inputs at a time."""
    share, schur = pruned.double().mean(0), h.clone()
    left, placed = torch.arange(h.shape[0]), []
    while left.numel() > 0:
        pick = torch.topk(share[left] * correlation_weights(schur), min(block, left.numel()), largest=False).indices
        rest = torch.ones(left.numel(), dtype=torch.bool)
        rest[pick] = False
        placed.append(left[pick])
        cross = schur[rest][:, pick]
        schur = schur[rest][:, rest] - cross @ torch.linalg.solve(schur[pick][:, pick], cross.T)
        left = left[rest]
    return torch.cat(placed)


class Layer:
    def __init__(self, h, w, pattern, order_by=solver_order):
        dead = h.diag() == 0  # as the solver: a dead input decouples
        h[dead], h[:, dead] = 0, 0
        h[dead, dead] = 1
        pruned, start = sparsegpt(w, h, pattern)
        order = order_by(h, pruned)
        self.h = h[order][:, order]
        self.l = torch.linalg.cholesky(self.h)
        self.pruned, self.w, self.start = pruned[:, order], w[:, order], start[:, order]

    def row(self, i, l=None):
        """The row's kept-set system: L_TT, L_TS (of l, L by default), H_TT, b = H_TS w_S, the start, the scale."""
        l = self.l if l is None else l
        t, s = (~self.pruned[i]).nonzero().squeeze(1), self.pruned[i].nonzero().squeeze(1)
        b = self.h[t][:, s] @ self.w[i, s]
        scale = (self.h[t] @ self.w[i]).norm()
        return l[t][:, t], l[t][:, s], self.h[t][:, t], b, self.start[i, t] - self.w[i, t], scale


def solve_lower(a, v, upper=False):
    return torch.linalg.solve_triangular(a, v.unsqueeze(1), upper=upper).squeeze(1)


def solve_lower_matrix(a, m):
    return torch.linalg.solve_triangular(a, m, upper=False)


def precision_iterations(layer, i, op_dtype, vec_dtype, round_factor, max_it=400):
    """Split CG with reliable updates; the operator's passes in op_dtype over L (rounded to fp32 or not)."""
    l = layer.l.float().double() if round_factor else layer.l
    ltt, lts, htt, b, e, scale = layer.row(i, l)
    ltt, lts = ltt.to(op_dtype), lts.to(op_dtype)

    def true_residual(e):
        return b - htt @ e

    def operator(v):
        y = solve_lower(ltt.T, v.to(op_dtype), upper=True)
        return (v.to(op_dtype) + solve_lower(ltt, lts @ (lts.T @ y))).to(vec_dtype), y.to(vec_dtype)

    def tracked(residual):
        return solve_lower(ltt, residual.to(op_dtype)).to(vec_dtype)

    if true_residual(e).norm() / scale <= TOLERANCE:
        return 0
    r = tracked(true_residual(e))
    x, p, rz = torch.zeros_like(r), r.clone(), r @ r
    last = rz.sqrt()
    for it in range(1, max_it + 1):
        q, y = operator(p)
        alpha = rz / (p @ q)
        x, r = x + alpha * y, r - alpha * q
        rz_next = r @ r
        if rz_next.sqrt() < RELIABLE_UPDATE_FALL * last:
            e, x = e + x.double(), torch.zeros_like(x)
            r = tracked(true_residual(e))
            rz_next = r @ r
            last = rz_next.sqrt()
        if true_residual(e + x.double()).norm() / scale <= TOLERANCE:
            return it
        p, rz = r + rz_next / rz * p, rz_next
    return max_it


def split_cg_iterations(ltt, lts, htt, b, e, scale, precondition=lambda v: v, max_it=400):
    """fp64 split CG on I + B Bᵀ (B = L_TT⁻¹ L_TS) from the start e, preconditioned by `precondition`: iterations to
    the first iterate whose true relative residual meets the tolerance, checked every iteration."""

    def operator(v):
        return v + solve_lower(ltt, lts @ (lts.T @ solve_lower(ltt.T, v, upper=True)))

    if (b - htt @ e).norm() / scale <= TOLERANCE:
        return 0
    r = solve_lower(ltt, b - htt @ e)
    x = torch.zeros_like(r)
    z = precondition(r)
    p, rz = z.clone(), r @ z
    for it in range(1, max_it + 1):
        q = operator(p)
        alpha = rz / (p @ q)
        x, r = x + alpha * p, r - alpha * q
        if (b - htt @ (e + solve_lower(ltt.T, x, upper=True))).norm() / scale <= TOLERANCE:
            return it
        z = precondition(r)
        rz_next = r @ z
        p, rz = z + rz_next / rz * p, rz_next
    return max_it


def deflated_iterations(layer, i, k, choice):
    """fp64 split CG with the preconditioner I + B_E B_Eᵀ (Woodbury) for k pruned inputs E."""
    ltt, lts, htt, b, e, scale = layer.row(i)
    if k == 0:
        return split_cg_iterations(ltt, lts, htt, b, e, scale)
    if choice == "first":
        chosen = torch.arange(k)
    else:
        chosen = torch.topk(solve_lower_matrix(ltt, lts).norm(dim=0), k)[1]
    b_e = torch.linalg.solve_triangular(ltt, lts[:, chosen], upper=False)
    core = torch.linalg.inv(torch.eye(k, dtype=b_e.dtype) + b_e.T @ b_e)
    return split_cg_iterations(ltt, lts, htt, b, e, scale, lambda v: v - b_e @ (core @ (b_e.T @ v)))


def start_iterations(layer, i):
    """fp64 split CG from each start point: {name: (iterations, the start's relative residual)}."""
    ltt, lts, htt, b, e_sparsegpt, scale = layer.row(i)
    t, s = (~layer.pruned[i]).nonzero().squeeze(1), layer.pruned[i].nonzero().squeeze(1)
    starts = {
        "SparseGPT": e_sparsegpt,
        "masked weights": torch.zeros_like(e_sparsegpt),
        "M^-1 b": solve_lower(ltt.T, solve_lower(ltt, b), upper=True),
        "reverse-order OBS": solve_lower(ltt.T, layer.l[s][:, t].T @ layer.w[i, s], upper=True),
    }
    return {name: (split_cg_iterations(ltt, lts, htt, b, e, scale), ((b - htt @ e).norm() / scale).item())
            for name, e in starts.items()}


def tail_statistics(layer, block=128):
    """How much of a pass lies past each row's last kept input (solver's order), and how often inputs are pruned."""
    kept = ~layer.pruned
    n = kept.shape[1]
    positions = torch.arange(n).expand_as(kept)
    last_kept = torch.where(kept, positions, torch.full_like(positions, -1)).max(1).values
    past = (n - 1 - last_kept).double()
    pruned_fraction = layer.pruned.double().mean(0)
    quantiles = torch.tensor([0.05, 0.25, 0.5, 0.75, 0.95], dtype=torch.double)
    print(f"inputs past the last kept one: {past.mean().item() / n:.4f} of a pass on average, whole blocks of "
          f"{block}: {(past // block * block).mean().item() / n:.4f}")
    print("fraction of rows pruning an input, 5/25/50/75/95%: "
          + " / ".join(f"{q:.3f}" for q in torch.quantile(pruned_fraction, quantiles).tolist())
          + f"; inputs pruned in at least 95% of rows: {int((pruned_fraction >= 0.95).sum())}")


def summary(name, its):
    print(f"{name}: mean {sum(its) / len(its):.2f}, max {max(its)}, rows {its}", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("hessians")
    parser.add_argument("site")
    parser.add_argument("model")
    parser.add_argument("weight")
    parser.add_argument("--pattern", choices=["unstructured50", "2:4"], default="unstructured50")
    parser.add_argument("--rows", type=int, default=12, help="rows spread evenly over the layer")
    parser.add_argument("--study", choices=["precision", "deflate", "start", "tail", "order"], default="precision")
    parser.add_argument("--deflate", default="0,8,16,32", help="the K to try (--study deflate)")
    parser.add_argument("--choice", choices=["first", "largest"], default="first")
    args = parser.parse_args()
    torch.set_num_threads(2)
    h, w = load_file(args.hessians)[args.site].double(), load_file(args.model)[args.weight].double()
    rows = torch.linspace(0, w.shape[0] - 1, args.rows).long().tolist()
    if args.study == "order":
        orders = {
            "p_j": pruned_share_order,
            "p_j c_j^0.5": lambda h, pruned: solver_order(h, pruned, 0.5),
            "p_j c_j (the solver's)": solver_order,
            "p_j c_j^2": lambda h, pruned: solver_order(h, pruned, 2.0),
            "greedy p_j c_j, Schur complement every 128": greedy_order,
        }
        for name, order_by in orders.items():
            layer = Layer(h.clone(), w.clone(), args.pattern, order_by)
            summary(name, [split_cg_iterations(*layer.row(i)) for i in rows])
        return
    layer = Layer(h, w, args.pattern)
    if args.study == "precision":
        variants = {
            "fp64": (torch.float64, torch.float64, False),
            "fp64 over the fp32-rounded factor": (torch.float64, torch.float64, True),
            "fp32": (torch.float32, torch.float32, True),
            "fp32 passes, fp64 vectors": (torch.float32, torch.float64, True),
        }
        for name, variant in variants.items():
            summary(name, [precision_iterations(layer, i, *variant) for i in rows])
    elif args.study == "start":
        results = [start_iterations(layer, i) for i in rows]
        for name in results[0]:
            summary(name, [r[name][0] for r in results])
            residuals = sorted(r[name][1] for r in results)
            print(f"  start residual: median {residuals[len(residuals) // 2]:.2e}")
    elif args.study == "tail":
        tail_statistics(layer)
    else:
        for k in (int(k) for k in args.deflate.split(",")):
            summary(f"deflate {k} ({args.choice})", [deflated_iterations(layer, i, k, args.choice) for i in rows])


if __name__ == "__main__":
    main()
