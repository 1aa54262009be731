"""The attacks tinyrobust knows, each with its threat model and default budget.

``build(target, eps, params)`` returns an object with ``generate(x, y) -> x_adv`` (numpy, NCHW,
[0, 1]). ``eps`` is in [0, 1] input units (pixel/255 divided by 255), ``None`` for the
minimum-norm attacks (``uses_eps=False``): those run once and are scored at every budget by
counting an example as broken at eps only if it is misclassified AND its L-inf distance is
<= eps (+1e-6), so all attacks share one L-inf table.

Default budgets keep 100 images of an ~80k-parameter CNN to minutes on a 2-core CPU; raise
them with ``params`` / ``--set attack.key=value`` for final numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from ..errors import AttackError
from ..registry import Registry

FAMILIES = ("white", "black", "ensemble")  # ensemble: mixes white- and black-box stages (AutoAttack)

MIN_NORM_RULE = "scored at each eps as broken only if misclassified AND L-inf distance <= eps (+1e-6)"


@dataclass(frozen=True)
class AttackSpec:
    name: str
    family: str  # "white" | "black" | "ensemble"
    threat_model: str
    norm: str  # the norm the attack itself optimises: "inf" | "2"
    uses_eps: bool
    defaults: dict[str, Any]
    build: Callable[..., Any]
    needs_surrogate: bool = False  # crafted on a surrogate model, evaluated on the target
    source: str = "tinyrobust (attacks/torch_attacks.py)"  # where the implementation comes from

    def describe(self, params: dict[str, Any] | None = None) -> str:
        """The threat model with the budget actually used (``{key}`` fields filled from params)."""
        return self.threat_model.format(**{**self.defaults, **(params or {})})


ATTACKS: Registry[AttackSpec] = Registry("attack")


def _register(spec: AttackSpec) -> None:
    ATTACKS.register(spec.name)(spec)


def _art():
    from art.attacks import evasion  # lazy: importing ART costs seconds

    return evasion


def _build_fgsm(t, eps, p):
    return _art().FastGradientMethod(t.art, norm="inf", eps=eps, batch_size=t.batch_size)


def _build_pgd(t, eps, p):
    return _art().ProjectedGradientDescent(
        t.art,
        norm="inf",
        eps=eps,
        eps_step=p["step_scale"] * eps / p["steps"],
        max_iter=p["steps"],
        num_random_init=p["random_starts"],
        batch_size=t.batch_size,
        verbose=False,
    )


def _build_apgd(t, eps, p):
    from .torch_attacks import AutoAttackAPGD

    return AutoAttackAPGD(t, eps, steps=p["steps"], restarts=p["restarts"])


def _build_autoattack(t, eps, p):
    from .autoattack import StandardAutoAttack

    return StandardAutoAttack(t, eps, **p)


def _build_bpda(t, eps, p):
    from .bpda import BPDA

    return BPDA(t, eps, **p)


def _build_square(t, eps, p):
    from .torch_attacks import SquareLinf

    return SquareLinf(t, eps, queries=p["queries"], p_init=p["p_init"])


def _build_cw(t, eps, p):
    from .torch_attacks import CarliniWagnerL2

    return CarliniWagnerL2(
        t,
        steps=p["steps"],
        binary_search_steps=p["binary_search_steps"],
        lr=p["lr"],
        initial_const=p["initial_const"],
        confidence=p["confidence"],
    )


def _build_hopskipjump(t, eps, p):
    return _art().HopSkipJump(t.art, targeted=False, norm="inf", batch_size=t.batch_size, verbose=False, **p)


def _build_boundary(t, eps, p):
    return _art().BoundaryAttack(t.art, targeted=False, batch_size=t.batch_size, verbose=False, **p)


def _build_zoo(t, eps, p):
    # batch_size=1: ZOO already evaluates nb_parallel coordinates per image in one batch.
    return _art().ZooAttack(
        t.art, targeted=False, batch_size=1, use_resize=False, use_importance=False, verbose=False, **p
    )


_PGD_DEFAULTS = {"steps": 20, "step_scale": 2.5, "random_starts": 1}

# Threat models hold {key} fields that AttackSpec.describe fills with the budget actually used.
_SPECS = (
    AttackSpec(
        "fgsm",
        "white",
        "L-inf, eps per run, one signed-gradient step, no random start (ART)",
        "inf",
        True,
        {},
        _build_fgsm,
        source="ART (adversarial-robustness-toolbox)",
    ),
    AttackSpec(
        "pgd",
        "white",
        "L-inf, eps per run, {steps} steps of {step_scale}*eps/steps, {random_starts} random start(s) (ART)",
        "inf",
        True,
        dict(_PGD_DEFAULTS),
        _build_pgd,
        source="ART (adversarial-robustness-toolbox)",
    ),
    AttackSpec(
        "apgd",
        "white",
        "L-inf, eps per run: APGD-CE then APGD-DLR on survivors, {steps} steps each, {restarts} random "
        "start(s); broken if any iterate is misclassified (tinyrobust's APGD, Croce & Hein 2020)",
        "inf",
        True,
        {"steps": 100, "restarts": 1},
        _build_apgd,
    ),
    AttackSpec(
        "bpda",
        "white",
        "L-inf, eps per run: adaptive attack for quantized models (BPDA, Athalye et al. 2018): APGD-CE "
        "then APGD-DLR, {steps} steps each, forward through the real model, gradients through a copy "
        "whose activation quantizers are replaced by a smooth stand-in ({surrogate}: 'soft' staircase "
        "with temperature {temperature}, or 'float' clipped ReLU); on a float model it is plain APGD "
        "(tinyrobust)",
        "inf",
        True,
        {"steps": 100, "restarts": 1, "surrogate": "soft", "temperature": 4.0},
        _build_bpda,
        source="tinyrobust (attacks/bpda.py)",
    ),
    AttackSpec(
        "autoattack",
        "ensemble",
        "L-inf, eps per run: standard AutoAttack (Croce & Hein 2020, version 'standard'): APGD-CE, "
        "APGD-T ({n_target_classes} targets), FAB-T ({n_target_classes} targets), Square "
        "({square_queries} queries), each on the survivors of the previous one; {steps} steps per "
        "gradient attack (torchattacks 3.5.1 implementation behind tinyrobust's Target)",
        "inf",
        True,
        {"steps": 100, "n_target_classes": 9, "square_queries": 5000},
        _build_autoattack,
        source="torchattacks 3.5.1 (APGD, APGDT, FAB, Square) via attacks/autoattack.py",
    ),
    AttackSpec(
        "cw",
        "white",
        "Carlini-Wagner L2 minimum-norm, unbounded, {binary_search_steps} binary-search x {steps} Adam "
        "steps; " + MIN_NORM_RULE + "; also reports accuracy after the unbounded attack and median L2",
        "2",
        False,
        {"steps": 50, "binary_search_steps": 5, "lr": 0.01, "initial_const": 1.0, "confidence": 0.0},
        _build_cw,
    ),
    AttackSpec(
        "square",
        "black",
        "L-inf, eps per run, score-based random search, <= {queries} queries/image",
        "inf",
        True,
        {"queries": 1000, "p_init": 0.8},
        _build_square,
    ),
    AttackSpec(
        "hopskipjump",
        "black",
        "L-inf minimum-norm, decision-based, {max_iter} iterations of <= {max_eval} queries (ART); " + MIN_NORM_RULE,
        "inf",
        False,
        {"max_iter": 5, "max_eval": 500, "init_eval": 50, "init_size": 100},
        _build_hopskipjump,
        source="ART (adversarial-robustness-toolbox)",
    ),
    AttackSpec(
        "boundary",
        "black",
        "L2 minimum-norm, decision-based, {max_iter} iterations x {num_trial} trials (ART); " + MIN_NORM_RULE,
        "2",
        False,
        {"max_iter": 25, "num_trial": 10, "sample_size": 10, "init_size": 100},
        _build_boundary,
        source="ART (adversarial-robustness-toolbox)",
    ),
    AttackSpec(
        "zoo",
        "black",
        "L2 minimum-norm, score-based coordinate descent, {max_iter} iterations x {nb_parallel} "
        "coordinates (ART); weak at small budgets, a sanity check only; " + MIN_NORM_RULE,
        "2",
        False,
        {"max_iter": 10, "binary_search_steps": 1, "nb_parallel": 128, "learning_rate": 0.1, "initial_const": 1.0},
        _build_zoo,
        source="ART (adversarial-robustness-toolbox)",
    ),
    AttackSpec(
        "transfer",
        "black",
        "L-inf, eps per run: PGD ({steps} steps, {random_starts} random start(s), ART) crafted on a "
        "separately trained surrogate model, evaluated on the target (one query per image); with several "
        "surrogates one entry transfer@<key> per surrogate",
        "inf",
        True,
        dict(_PGD_DEFAULTS),
        _build_pgd,
        needs_surrogate=True,
        source="ART (adversarial-robustness-toolbox) PGD on the surrogate",
    ),
)
for _spec in _SPECS:
    _register(_spec)
ORDER = [s.name for s in _SPECS]  # presentation order: cheap white-box first, then black-box

TRANSFER_PREFIX = "transfer@"


def split_transfer(name: str) -> tuple[str, str | None]:
    """``"transfer@qnn_float"`` -> ``("transfer", "qnn_float")``; other names -> ``(name, None)``."""
    if name.startswith(TRANSFER_PREFIX) and len(name) > len(TRANSFER_PREFIX):
        return "transfer", name[len(TRANSFER_PREFIX) :]
    return name, None


def get_attack(name: str) -> AttackSpec:
    """The spec of ``name``; ``transfer@KEY`` (one transfer entry per surrogate) maps to ``transfer``."""
    base, _ = split_transfer(name)
    if base not in ATTACKS:
        raise AttackError(f"unknown attack {name!r}; {_choices()}")
    return ATTACKS.get(base)


def family_members(family: str, *, surrogate_available: bool = True) -> list[str]:
    return [
        n
        for n in ORDER
        if (family == "all" or ATTACKS.get(n).family == family)
        and (surrogate_available or not ATTACKS.get(n).needs_surrogate)
    ]


def expand_attack_names(spec: str, *, surrogate_available: bool = True) -> list[str]:
    """``"fgsm,pgd"`` / ``"white"`` / ``"black"`` / ``"all"`` -> attack names, in order, no repeats.

    Families leave out ``transfer`` when no surrogate is available; naming it explicitly keeps it
    (and the run then fails with a clear message)."""
    names: list[str] = []
    for part in (p.strip() for p in str(spec).split(",")):
        if not part:
            continue
        if part in FAMILIES or part == "all":
            names.extend(family_members(part, surrogate_available=surrogate_available))
        else:
            get_attack(part)
            names.append(part)
    if not names:
        raise AttackError(f"no attack given; {_choices()}")
    return list(dict.fromkeys(names))


def _choices() -> str:
    fams = ", ".join(f"{f} ({', '.join(family_members(f))})" for f in FAMILIES)
    return f"choose from: {', '.join(ORDER)}, or a family: {fams}, all"
