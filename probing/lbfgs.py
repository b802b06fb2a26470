"""The exact trainer's solver: many L2-regularized logistic regressions (heads x folds) at once, by a batched,
preconditioned L-BFGS in torch (CPU or GPU).

Kept in a module of its own: its speed is what ``benchmarks/probe_training.py`` measures against scikit-learn,
and its result is scikit-learn's ``LogisticRegression(C=C)`` minimum (``tests/test_probe_trainers.py``).
"""
from __future__ import annotations

import torch

# exact solver settings (not user-facing: the solution is the objective's unique minimum, not a setting)
EXACT_TOL = 1e-6              # max |gradient| of the per-example-averaged objective (scikit-learn's ``tol`` is 1e-4)
EXACT_MAX_ITER = 1000
LBFGS_MEMORY = 10
PRECONDITIONER_ROWS = 1024    # rows sampled (evenly) for the Hessian preconditioner
PRECONDITIONER_REFRESH = (0, 4, 12, 30)   # iterations at which the preconditioner is rebuilt


class _LogisticBatch:
    """Loss and gradient of many L2-regularized logistic regressions: heads x sample-weight columns.

    Parameters ``V`` (h, F, D+1) in float64 (weights, then intercept) are in centered coordinates:
    ``z = v . (x - mu) + b'`` is the same model as ``w . x + b`` with ``w = v``, ``b = b' - v . mu``. The
    penalty does not touch the intercept, so the objective is exactly scikit-learn's; centering only makes
    the intercept direction well conditioned. Matrix products run in float32 (the activations' precision,
    as scikit-learn computes on float32 input), reductions in float64.
    """

    def __init__(self, Xc: torch.Tensor, y: torch.Tensor, weights: torch.Tensor, lam: float) -> None:
        """``Xc`` (h, N, D) float32 is centered in place."""
        h, n, d = Xc.shape
        self.d, self.n = d, n
        self.mu = Xc.mean(1, keepdim=True)                               # (h, 1, D) float32
        Xc.sub_(self.mu)
        self.X = Xc                                                      # (h, N, D)
        self.XT = Xc.transpose(1, 2).contiguous()                        # (h, D, N)
        self.mu = self.mu[:, 0].double()                                 # (h, D)
        self.sign = (2 * y.float() - 1)[None, None, :]                   # (1, 1, N)
        self.M = weights.T.float()[None]                                 # (1, F, N)
        self.signM = self.sign * self.M
        self.n_k = weights.sum(0).double()                               # (F,)
        self.lam = lam
        self.reg = torch.full((d + 1,), lam, dtype=torch.float64, device=Xc.device)
        self.reg[d] = 0.0

    def keep(self, mask: torch.Tensor) -> None:
        self.X, self.XT, self.mu = self.X[mask], self.XT[mask], self.mu[mask]

    def loss_grad(self, V: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        d = self.d
        V32 = V.float()
        Z = torch.bmm(V32[..., :d], self.XT).add_(V32[..., d:])          # (h, F, N) margins
        p = torch.sigmoid(Z.mul_(self.sign))                             # sigmoid(signed margin)
        f = -(torch.log(p.clamp_min(1e-30)) * self.M).sum(-1, dtype=torch.float64)
        f += 0.5 * self.lam * (V[..., :d] * V[..., :d]).sum(-1)
        R = p.sub_(1.0).mul_(self.signM)                                 # weight * (sigmoid(z) - y)
        G = torch.cat([torch.bmm(R, self.X).double(), R.sum(-1, dtype=torch.float64)[..., None]], -1)
        return f, G.add_(self.reg * V)

    def grad_norm(self, G: torch.Tensor) -> torch.Tensor:
        """max |gradient| in the original coordinates, divided by the number of training examples (as sklearn)."""
        gw = G[..., : self.d] + self.mu[:, None, :] * G[..., self.d :]
        return torch.maximum(gw.abs().amax(-1), G[..., self.d].abs()) / self.n_k

    def preconditioner(self, V: torch.Tensor) -> torch.Tensor:
        """Inverse (h, D+1, D+1) of the Hessian of the all-examples problem at its current iterate
        (from evenly spaced rows), scaled to a fold's size: one approximate Hessian shared by a head's folds."""
        n, d = self.n, self.d
        stride = max(1, n // PRECONDITIONER_ROWS)
        Xs = self.X[:, ::stride]                                         # (h, n', D) view
        V32 = V[:, -1].float()                                           # all-examples column
        p = torch.sigmoid(torch.bmm(Xs, V32[:, :d, None]).add_(V32[:, d:, None]))
        w = p * (1 - p)                                                  # (h, n', 1)
        Xw = Xs * w
        scale = n / Xs.shape[1]
        P = torch.empty(Xs.shape[0], d + 1, d + 1, dtype=torch.float64, device=V.device)
        P[:, :d, :d] = torch.bmm(Xs.transpose(1, 2), Xw).double()
        P[:, :d, d] = P[:, d, :d] = Xw.sum(1).double()
        P[:, d, d] = w.sum((1, 2)).double()
        frac = float(self.n_k[:-1].mean() / n) if self.n_k.numel() > 1 else 1.0
        P.mul_(scale * frac).add_(torch.diag(self.reg))
        P[:, d, d] += 1e-8 * n
        L, info = torch.linalg.cholesky_ex(P)
        if bool((info != 0).any()):   # numerically singular: add a small diagonal
            P += torch.diag_embed(P.diagonal(dim1=-2, dim2=-1).abs() * 1e-6 + 1e-6)
            L = torch.linalg.cholesky(P)
        return torch.cholesky_inverse(L)   # applied by a matrix product, far cheaper than triangular solves


def solve_logistic(Xc: torch.Tensor, y: torch.Tensor, weights: torch.Tensor, C: float) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Minimize, for each head h and weight column f: sum_i w_if logloss(x_hi, y_i) + ||w||^2 / (2C).

    ``Xc`` (h, N, D) float32 is centered in place. Returns (h, F, D+1) float64 parameters (weights, then
    intercept) in the original coordinates, the same in centered coordinates (for ``Xc`` as left), and stats."""
    prob = _LogisticBatch(Xc, y, weights, 1.0 / C)   # centers Xc in place
    h, F, E = Xc.shape[0], weights.shape[1], Xc.shape[2] + 1
    dev = Xc.device
    V = torch.zeros(h, F, E, dtype=torch.float64, device=dev)
    out = torch.empty_like(V)
    mu_all = prob.mu
    f, G = prob.loss_grad(V)
    heads = torch.arange(h, device=dev)
    S: list[torch.Tensor] = []
    Y: list[torch.Tensor] = []
    RHO: list[torch.Tensor] = []
    P_inv = None
    evals, it = 1, 0
    for it in range(EXACT_MAX_ITER + 1):
        active = prob.grad_norm(G) > EXACT_TOL                          # (h, F)
        done = ~active.any(1)
        n_done = int(done.sum())
        if n_done == done.numel() or it == EXACT_MAX_ITER:
            break
        if n_done >= max(1, done.numel() // 4):                          # drop finished heads from the batch
            out[heads[done]] = V[done]
            keep = ~done
            heads, V, f, G, active = heads[keep], V[keep], f[keep], G[keep], active[keep]
            prob.keep(keep)
            S, Y, RHO = [s[keep] for s in S], [s[keep] for s in Y], [s[keep] for s in RHO]
            P_inv = None if P_inv is None else P_inv[keep]
        if P_inv is None or it in PRECONDITIONER_REFRESH:
            P_inv = prob.preconditioner(V)
        # L-BFGS two-loop recursion with H0 = (approximate Hessian)^-1
        q = G.clone()
        alphas = []
        for s, yv, rho in zip(reversed(S), reversed(Y), reversed(RHO)):
            a = rho * (s * q).sum(-1)
            q -= a[..., None] * yv
            alphas.append(a)
        r = torch.bmm(q, P_inv)                                        # P symmetric: q P^-1 row-wise
        for (s, yv, rho), a in zip(zip(S, Y, RHO), reversed(alphas)):
            r += (a - rho * (yv * r).sum(-1))[..., None] * s
        d = torch.where(active[..., None], -r, torch.zeros_like(r))
        slope = (G * d).sum(-1)
        uphill = active & (slope >= 0)                                  # float32 noise in the memory: restart
        if bool(uphill.any()):
            d = torch.where(uphill[..., None], -torch.bmm(G, P_inv), d)
            slope = (G * d).sum(-1)
        # backtracking line search; a step is accepted on sufficient decrease (with a float32-rounding slack)
        # or when the slope at the new point is still <= 0 (then, the loss being convex, it went down)
        step = torch.ones_like(f)
        slack = 1e-6 * (f.abs() + 1)
        Vn = V + d
        fn, Gn = prob.loss_grad(Vn)
        evals += 1
        ok = ~active | (fn <= f + 1e-4 * slope + slack) | ((Gn * d).sum(-1) <= 0)
        for _ in range(40):
            if bool(ok.all()):
                break
            step = torch.where(ok, step, 0.5 * step)
            Vt = V + step[..., None] * d
            ft, Gt = prob.loss_grad(Vt)
            evals += 1
            better = ~ok & ((ft <= f + 1e-4 * step * slope + slack) | ((Gt * d).sum(-1) <= 0) | (step < 1e-10))
            take = ~ok
            Vn = torch.where(take[..., None], Vt, Vn)
            fn = torch.where(take, ft, fn)
            Gn = torch.where(take[..., None], Gt, Gn)
            ok = ok | better
        s, yv = Vn - V, Gn - G
        sy = (s * yv).sum(-1)
        # strong convexity guarantees s.y >= lam |s_w|^2; a pair failing that is float32 noise: skip it
        good = active & (sy > 0.5 * prob.lam * (s[..., :-1] ** 2).sum(-1)) & (sy > 0)
        S.append(torch.where(good[..., None], s, torch.zeros_like(s)))
        Y.append(torch.where(good[..., None], yv, torch.zeros_like(yv)))
        RHO.append(torch.where(good, 1.0 / sy.clamp_min(1e-300), torch.zeros_like(sy)))
        if len(S) > LBFGS_MEMORY:
            S.pop(0), Y.pop(0), RHO.pop(0)
        V, f, G = Vn, fn, Gn
    out[heads] = V
    unconverged = int((prob.grad_norm(G) > EXACT_TOL).sum()) if it == EXACT_MAX_ITER else 0
    W = out[..., :-1]
    b = out[..., -1] - (W * mu_all[:, None, :]).sum(-1)
    stats = {"iterations": it, "evaluations": evals, "unconverged": unconverged}
    return torch.cat([W, b[..., None]], -1), out, stats


__all__ = ["EXACT_MAX_ITER", "EXACT_TOL", "solve_logistic"]
