"""Levenberg-Marquardt for the joint fit: one identity (and focal) shared by a few frames' poses.

The energy is :mod:`.fit`'s without its temporal terms (the frames are picked apart in time, so
their poses are independent): a sum of squares (reprojection, identity prior, focal prior) plus
the linear expression prior, with expressions in the box [0, 1]. Its
Jacobian is block-structured: each frame's residuals depend on the shared parameters (shape,
log focal) and on that frame's own (rotation, translation, expression) only. Each frame's block
comes in closed form (:func:`closed_form_jacobians`, through :class:`.embedding.NeckLandmarks`)
or, for a head model without that form, from forward-mode autodiff of the frame's residuals
(``torch.func``), and the normal
equations are assembled from the blocks and solved densely (a few hundred unknowns). Expressions
held at a bound by their gradient are left out of the step; the step is clipped to the box.

Gauss-Newton steps converge in tens of iterations where first-order methods crawl for hundreds
along the ill-conditioned directions (depth against identity scale, pose against expression).
"""
from __future__ import annotations

import math

import torch
from torch.func import jacfwd, vmap


def joint_least_squares(fitter, state: dict, obs: torch.Tensor, scale: torch.Tensor, size, free,
                        iterations: int, tolerance: float = 1e-7) -> dict:
    """``state`` with the ``free`` parameters moved to a minimum of ``fitter``'s energy over the
    (T, L, 2) pixel landmarks ``obs`` (``scale``: their (T,) face sizes): at most ``iterations``
    Jacobians; stops once an accepted step lowers the energy by less than ``tolerance`` of it, or
    no step lowers it."""
    s = fitter.settings
    T = obs.shape[0]
    S, E = state["shape"].shape[1], state["expression"].shape[1]
    K, G = 6 + E, S + 1
    f0 = math.log(fitter.prior_focal(*size))
    fit_focal = "log_focal" in free

    def unpack(g, l):  # (G,), (T', K) -> the state dict the fitter evaluates
        return {"shape": g[None, :S], "log_focal": g[S:], "rotation": l[:, :3], "translation": l[:, 3:6],
                "expression": l[:, 6:]}

    def frame_residual(g, l, o, sc):  # one frame: (G,), (K,), (L, 2), () -> (2L,)
        return fitter._residual(unpack(g, l[None]), o[None], sc[None], size).reshape(-1)  # noqa: SLF001

    def residuals(g, l):
        return fitter._residual(unpack(g, l), obs, scale, size).reshape(T, -1)  # noqa: SLF001

    autodiff = vmap(jacfwd(frame_residual, argnums=(0, 1)), in_dims=(None, 0, 0, 0))

    def jacobians(g, l):
        if fitter.neck.available:
            return closed_form_jacobians(fitter, g, l, obs, scale, size)
        return autodiff(g, l, obs, scale)

    # Masks of the free unknowns, shared block first, then each frame's block.
    g_free = torch.zeros(G, dtype=torch.bool)
    g_free[:S] = "shape" in free
    g_free[S] = fit_focal
    l_free = torch.zeros(K, dtype=torch.bool)
    l_free[:3], l_free[3:6], l_free[6:] = "rotation" in free, "translation" in free, "expression" in free
    lam = s.expression_prior

    def energy(g, l, r):
        e = (r.double() ** 2).sum() + (g[:S].double() ** 2).sum() + lam * l[:, 6:].double().sum()
        if fit_focal:
            e = e + (s.focal_prior * (g[S].double() - f0)) ** 2
        return float(e)

    g = torch.cat([state["shape"][0], state["log_focal"].reshape(1)]).float()
    l = torch.cat([state["rotation"], state["translation"], state["expression"].clamp(0, 1)], 1).float()
    n = G + T * K
    free_all = torch.cat([g_free, l_free.repeat(T)])
    expr = (G + torch.arange(T)[:, None] * K + 6 + torch.arange(E)).reshape(-1)   # the expressions' unknowns
    with torch.no_grad():
        r = residuals(g, l)
        e, damping = energy(g, l, r), 1e-3
        for _ in range(iterations):
            J = torch.cat(jacobians(g, l), -1).double()                    # (T, 2L, G + K)
            Jt = J.transpose(1, 2)
            M, v = Jt @ J, (Jt @ r.double()[..., None])[..., 0]              # per frame (G+K)^2, G+K
            A = torch.zeros(n, n, dtype=torch.float64)
            b = torch.zeros(n, dtype=torch.float64)
            A[:G, :G] = M[:, :G, :G].sum(0)
            b[:G] = v[:, :G].sum(0)
            A[:G, G:] = M[:, :G, G:].permute(1, 0, 2).reshape(G, T * K)
            A[G:, :G] = A[:G, G:].T
            A[G:, G:] = torch.block_diag(*M[:, G:, G:])
            b[G:] = v[:, G:].reshape(-1)
            A[:S, :S] += torch.eye(S, dtype=torch.float64)                  # identity prior |beta|^2
            b[:S] += g[:S].double()
            if fit_focal:
                A[S, S] += s.focal_prior ** 2
                b[S] += s.focal_prior ** 2 * (g[S].double() - f0)
            b[expr] += 0.5 * lam                                            # d/dpsi of lam psi, halved
            x_expr = l[:, 6:].reshape(-1).double()
            held = ((x_expr <= 0) & (b[expr] > 0)) | ((x_expr >= 1) & (b[expr] < 0))
            active = free_all.clone()
            active[expr[held]] = False
            idx = active.nonzero()[:, 0]
            A_a, b_a = A[idx][:, idx], b[idx]
            while damping < 1e12:  # raise the damping until the step lowers the energy (a
                # short enough scaled-gradient step always does, unless at a minimum)
                step = torch.zeros(n, dtype=torch.float64)
                step[idx] = torch.linalg.solve(A_a + torch.diag(damping * A_a.diagonal() + 1e-9), -b_a)
                g_c = g + step[:G].float()
                l_c = l + step[G:].reshape(T, K).float()
                l_c[:, 6:] = l_c[:, 6:].clamp(0, 1)
                r_c = residuals(g_c, l_c)
                e_c = energy(g_c, l_c, r_c)
                if e_c < e:
                    break
                damping *= 4
            else:
                break  # no step lowers the energy: converged at this precision
            converged = e - e_c < tolerance * e
            g, l, r, e, damping = g_c, l_c, r_c, e_c, max(damping / 3, 1e-9)
            if converged:
                break
    out = dict(state)
    out.update(shape=g[None, :S].clone(), log_focal=g[S:].clone(), rotation=l[:, :3].clone(),
               translation=l[:, 3:6].clone(), expression=l[:, 6:].clone())
    return {k: v.detach() for k, v in out.items()}


def closed_form_jacobians(fitter, g: torch.Tensor, l: torch.Tensor, obs: torch.Tensor, scale: torch.Tensor, size):
    """The frames' residual Jacobians as ``joint_least_squares`` takes them, (T, 2L, S + 1) for
    (shape, log focal) and (T, 2L, 6 + E) for (rotation, translation, expression), by the chain
    rule through the pinhole projection and :meth:`NeckLandmarks.jacobian` (no autodiff tangents
    through the bases: those are the derivatives already)."""
    S = g.shape[0] - 1
    H, W = size
    shape, rot, trans, expr = g[None, :S], l[:, :3], l[:, 3:6], l[:, 6:]
    x = fitter.neck.points(shape, expr, rot, trans)                          # (T, L, 3)
    d_coeff, d_rot = fitter.neck.jacobian(shape, expr, rot)                  # (T, L, 3, S + E), (T, L, 3, 3)
    f = g[S].exp()
    z = (-x[..., 2]).clamp(min=1e-3)
    zero = torch.zeros_like(z)
    # d(u, v)/d(x, y, z) of u = f x / z' + W / 2, v = -f y / z' + H / 2, z' = -z.
    proj = torch.stack([torch.stack([f / z, zero, f * x[..., 0] / z ** 2], -1),
                        torch.stack([zero, -f / z, -f * x[..., 1] / z ** 2], -1)], -2)  # (T, L, 2, 3)
    d_focal = torch.stack([f * x[..., 0] / z, -f * x[..., 1] / z], -1)[..., None]      # (T, L, 2, 1)
    factor = fitter.weights.sqrt()[None, :, None, None] / (scale[:, None, None, None] * fitter.settings.sigma)
    J_coeff = proj @ d_coeff
    T = l.shape[0]
    Jg = (torch.cat([J_coeff[..., :S], d_focal], -1) * factor).reshape(T, -1, S + 1)
    Jl = (torch.cat([proj @ d_rot, proj, J_coeff[..., S:]], -1) * factor).reshape(T, -1, l.shape[1])
    return Jg, Jl
