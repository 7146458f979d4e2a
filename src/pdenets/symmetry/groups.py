"""The matrix groups that act on a residual-stream segment, as sets of constraints on T (docs/design.md §3).

A group is described by the constraints its elements T satisfy:

* ``mono`` — monomial (one non-zero per row and column): forced by an operation that reads or writes the
  stream channel by channel (a depthwise conv on the raw stream, an elementwise product with it, a fixed sum);
* ``orth`` — orthogonal: forced by a radial activation (hardball/softball depend on |x|);
* ``pos`` — positive entries: forced by ReLU (with ``mono``: permutation × positive diagonal).

The intersection of two groups is the union of their constraints, so the group of a segment is simply the
union of the constraints of everything that touches it:

=================  =====================  =============
constraints        group                  dim G (n)
=================  =====================  =============
{}                 GL                     n²
{orth}             O                      n(n−1)/2
{mono}             monomial               n
{mono, orth}       signed_permutation     0
{mono, pos}        positive_monomial      n
{mono, pos, orth}  permutation            0
=================  =====================  =============
"""

from __future__ import annotations

import math

import torch

GROUPS: dict[frozenset[str], str] = {
    frozenset(): "GL",
    frozenset({"orth"}): "O",
    frozenset({"mono"}): "monomial",
    frozenset({"mono", "orth"}): "signed_permutation",
    frozenset({"mono", "pos"}): "positive_monomial",
    frozenset({"mono", "pos", "orth"}): "permutation",
    frozenset({"pos"}): "positive_monomial",  # ReLU alone always comes with mono; kept total for safety
    frozenset({"pos", "orth"}): "permutation",
}
GROUP_NAMES = ("GL", "O", "monomial", "signed_permutation", "positive_monomial", "permutation")

# Constraints an activation puts on the basis of the stream it acts on: act(T x) = T act(x).
ACT_CONSTRAINTS: dict[str, frozenset[str]] = {
    "none": frozenset(),
    "identity": frozenset(),
    "hardball": frozenset({"orth"}),
    "softball": frozenset({"orth"}),
    "hardtanh": frozenset({"mono", "orth"}),
    "relu": frozenset({"mono", "pos"}),
}


def group_name(constraints: frozenset[str]) -> str:
    return GROUPS[frozenset(constraints)]


def constraints_of(group: str) -> frozenset[str]:
    for c, g in GROUPS.items():
        if g == group:
            return c
    raise ValueError(f"unknown group {group!r}; expected one of {', '.join(GROUP_NAMES)}")


def group_dim(group: str, n: int) -> int:
    """Dimension of the Lie group (its continuous part) acting on n channels."""
    return {"GL": n * n, "O": n * (n - 1) // 2, "monomial": n, "positive_monomial": n}.get(group, 0)


def next_larger(group: str) -> str | None:
    """The group obtained by dropping the binding constraint (what a power check must find NOT exact).

    ``pos`` is dropped first (sign flips through a ReLU), then ``mono`` (the structural constraint of blocks
    that read the raw stream: e.g. orthogonal on an Eq. (3) segment), then ``orth`` (GL on an O segment).
    """
    c = set(constraints_of(group))
    for drop in ("pos", "mono", "orth"):
        if drop in c:
            return group_name(frozenset(c - {drop}))
    return None


def monomial_matrix(perm: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """T with T[perm[j], j] = scale[j] (so (T u)[perm[j]] = scale[j]·u[j])."""
    n = perm.numel()
    t = torch.zeros(n, n, dtype=scale.dtype)
    t[perm, torch.arange(n)] = scale
    return t


def haar_orthogonal(n: int, generator: torch.Generator, dtype=torch.float64) -> torch.Tensor:
    z = torch.randn(n, n, generator=generator, dtype=dtype)
    q, r = torch.linalg.qr(z)
    return q * torch.sign(torch.diagonal(r)).unsqueeze(0)


def sample(group: str, n: int, generator: torch.Generator, perm: torch.Tensor | None = None,
           dtype=torch.float64) -> torch.Tensor:
    """A random element of ``group`` on n channels (float64 dense matrix).

    Haar measure for O; Q₁·diag(e^u)·Q₂ with u ∈ [−½, ½] (condition number ≤ e) for GL; a random permutation
    (or the given ``perm``) times scales e^u (with random signs where allowed) for the monomial families.
    """
    if group == "O":
        return haar_orthogonal(n, generator, dtype)
    if group == "GL":
        u = torch.rand(n, generator=generator, dtype=dtype) - 0.5
        return haar_orthogonal(n, generator, dtype) @ torch.diag(u.exp()) @ haar_orthogonal(n, generator, dtype)
    if group not in GROUP_NAMES:
        raise ValueError(f"unknown group {group!r}; expected one of {', '.join(GROUP_NAMES)}")
    p = torch.randperm(n, generator=generator) if perm is None else perm
    c = constraints_of(group)
    scale = torch.ones(n, dtype=dtype)
    if "orth" not in c:
        scale = (torch.rand(n, generator=generator, dtype=dtype) - 0.5).exp()
    if "pos" not in c:
        scale = scale * (torch.randint(0, 2, (n,), generator=generator) * 2 - 1).to(dtype)
    return monomial_matrix(p, scale)


def power_element(group: str, g: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor | None, str]:
    """An element of :func:`next_larger` ``(group)`` with the same Frobenius norm as ``g``.

    Returns ``(None, 'GL')`` for GL (no larger group of bases: the power check then perturbs weights).
    """
    larger = next_larger(group)
    n = g.shape[0]
    if larger is None:
        return None, "GL"
    c, cl = constraints_of(group), constraints_of(larger)
    if "pos" in c and "pos" not in cl:  # same element with random signs: not positive any more
        signs = (torch.randint(0, 2, (n,), generator=generator) * 2 - 1).to(g.dtype)
        signs[0] = -1.0
        h = g * signs.unsqueeze(0)
    elif "mono" in c and "mono" not in cl:
        h = sample(larger, n, generator, dtype=g.dtype)
    else:  # drop orth: stretch by a symmetric positive-definite matrix
        s = torch.randn(n, n, generator=generator, dtype=g.dtype)
        h = g @ torch.linalg.matrix_exp(0.5 * (s + s.T) / math.sqrt(n))
    return h * (torch.linalg.norm(g) / torch.linalg.norm(h)), larger


def as_monomial(t: torch.Tensor, tol: float = 0.0) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(perm, scale) if ``t`` is monomial (T[perm[j], j] = scale[j], all other entries |·| ≤ tol), else None.

    ``scale`` is gathered from ``t`` so that it stays differentiable.
    """
    n = t.shape[0]
    perm = t.detach().abs().argmax(0)
    if torch.unique(perm).numel() != n:
        return None
    scale = t[perm, torch.arange(n)]
    rest = t.detach().clone()
    rest[perm, torch.arange(n)] = 0
    if rest.abs().max() > tol or (scale.detach() == 0).any():
        return None
    return perm, scale


def contains(group: str, t: torch.Tensor, tol: float = 1e-10) -> bool:
    """Whether the matrix ``t`` lies in ``group`` (up to ``tol``)."""
    c = constraints_of(group)
    n = t.shape[0]
    if "orth" in c and (t.T @ t - torch.eye(n, dtype=t.dtype)).abs().max() > tol:
        return False
    if "mono" in c:
        m = as_monomial(t, tol)
        if m is None or ("pos" in c and (m[1] <= 0).any()):
            return False
    return bool(torch.linalg.matrix_rank(t) == n)
