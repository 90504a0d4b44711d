"""Argument types and options shared by the ``segblocks`` subcommands."""

from __future__ import annotations

import argparse
import sys

__all__ = [
    "DTYPES",
    "positive_int",
    "fraction",
    "parse_size",
    "fail",
    "add_dtype_argument",
    "add_model_arguments",
    "add_optimize_argument",
    "model_from_args",
    "optimize_model",
    "input_normalize",
    "add_budget_arguments",
    "check_budget",
    "model_id",
]

#: ``--dtype`` choices -> torch dtype names
DTYPES = ("float32", "bfloat16")


def positive_int(text: str) -> int:
    v = int(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"{text} must be >= 1")
    return v


def fraction(text: str) -> float:
    v = float(text)
    if not 0.0 <= v <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} must be in [0, 1]")
    return v


def parse_size(text: str) -> tuple[int, int]:
    """``"HxW"`` -> ``(H, W)`` for argparse."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size {text!r} is not HxW, e.g. 512x1024") from None
    if h <= 0 or w <= 0:
        raise argparse.ArgumentTypeError(f"size {text!r} must be positive")
    return h, w


#: set by ``segblocks --debug``: :func:`fail` re-raises exceptions (tracebacks shown)
DEBUG = False


def fail(cmd: str, e: Exception | str) -> int:
    """Print ``segblocks CMD: error: E`` to stderr; returns the exit status 2 (with
    ``--debug``, an exception ``e`` is raised instead)."""
    if DEBUG and isinstance(e, BaseException):
        raise e
    print(f"segblocks {cmd}: error: {e}", file=sys.stderr)
    return 2


def add_dtype_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--dtype",
        choices=DTYPES,
        default="float32",
        help="run the network and its input in this dtype (default float32)",
    )


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """Options that pick the model of ``eval`` and ``infer`` (see :func:`model_from_args`)."""
    p.add_argument("--checkpoint", help="trainer checkpoint (segblocks train writes last.pt)")
    p.add_argument(
        "--model",
        default="swiftnet_rn18",
        help="registry model without checkpoint, or an exported program / AOTInductor package "
        "(segblocks export --format pt2 | aoti) as PATH.pt2",
    )
    p.add_argument(
        "--num-classes",
        type=int,
        help="classes without checkpoint (default: the dataset's; 9 for procedural data)",
    )
    p.add_argument(
        "--policy",
        choices=["dense", "all_hr", "all_lr", "random", "heuristic", "learned"],
        help="block policy (default: the checkpoint's; all_hr without checkpoint); 'dense' runs "
        "the plain network on the same padded input",
    )
    p.add_argument(
        "--scale",
        type=float,
        help="with --policy dense: resize the input by this factor (static reduced resolution)",
    )
    p.add_argument("--hr-fraction", type=float, default=0.4, help="tau for random/heuristic")
    p.add_argument(
        "--block-size",
        type=int,
        help="block side of a registry model (default 128); a checkpoint's model has its own",
    )
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    add_optimize_argument(p)


def add_optimize_argument(p: argparse.ArgumentParser) -> None:
    """``--no-optimize``: keep the model as loaded instead of its fast inference form."""
    p.add_argument(
        "--no-optimize",
        dest="optimize",
        action="store_false",
        help="run the model as loaded; by default batch norm is folded into the convs, "
        "conv -> ReLU/ReLU6 pairs are fused and the weights are channels-last "
        "(segblocks.models.inference.optimize_for_inference): same outputs up to float "
        "rounding, same MACs, faster",
    )


def optimize_model(model, args: argparse.Namespace | None = None):
    """``model`` in the fast inference form (:func:`~segblocks.models.inference.
    optimize_for_inference`, in place: eval, batch norm folded, activations fused,
    channels-last), unless
    ``args.optimize`` is false (``--no-optimize``)."""
    if args is not None and not getattr(args, "optimize", True):
        return model
    from segblocks.models.inference import optimize_for_inference

    return optimize_for_inference(model, inplace=True)


def _policy_kwargs(args: argparse.Namespace, policy: str) -> dict:
    """Constructor arguments of ``--policy`` (:func:`segblocks.policies.policy_kwargs_from_config`:
    ``--hr-fraction`` is the run's tau, which random / heuristic take); ``--scale`` is the
    dense policy's option."""
    from segblocks.policies import policy_kwargs_from_config

    options = {}
    if policy == "dense" and getattr(args, "scale", None) is not None:
        options["scale"] = args.scale
    return policy_kwargs_from_config(policy, options, tau=getattr(args, "hr_fraction", None))


def model_from_args(args: argparse.Namespace, num_classes: int | None = None):
    """The model of :func:`add_model_arguments`, in eval mode: a trainer checkpoint's
    SegBlocksModel (``--policy`` overrides its policy) or a fresh registry model with
    ``--num-classes`` (default ``num_classes``, else 9). Every model is a SegBlocksModel, the
    ``dense`` policy included, so that all pad their input the same way. Unless
    ``--no-optimize``, the model is in the fast inference form (:func:`optimize_model`), for
    static and SegBlocks models alike."""
    from segblocks.models import create_model
    from segblocks.models.segblocks_model import SegBlocksModel

    if exported_path(args) is not None:
        return load_exported_model(args)
    if args.checkpoint:
        model = SegBlocksModel.from_checkpoint(args.checkpoint)
        if args.block_size is not None and args.block_size != model.block_size:
            raise ValueError(
                f"--block-size {args.block_size}: the checkpoint's model runs in blocks of "
                f"{model.block_size} (its training config); drop --block-size"
            )
        if args.policy:  # override the trained policy (e.g. dense for the static baseline)
            model = model.with_policy(args.policy, **_policy_kwargs(args, args.policy))
        return optimize_model(model.eval(), args)
    net = create_model(args.model, num_classes=args.num_classes or num_classes or 9)
    policy = args.policy or "all_hr"
    block_size = 128 if args.block_size is None else args.block_size
    model = SegBlocksModel(net, policy, block_size, **_policy_kwargs(args, policy))
    return optimize_model(model.eval(), args)


def exported_path(args: argparse.Namespace):
    """The ``--model PATH.pt2`` of an exported program, or ``None`` for a registry name."""
    from pathlib import Path

    model = getattr(args, "model", None)
    return Path(model) if model and str(model).endswith(".pt2") else None


def load_exported_model(args: argparse.Namespace):
    """``--model PATH.pt2``: the exported program (:func:`segblocks.deploy.load_exported`);
    options that rebuild or change a model are refused, not ignored."""
    from segblocks.deploy import load_exported

    path = exported_path(args)
    if args.checkpoint:
        raise ValueError(
            f"give --checkpoint or an exported --model {path}, not both (the exported program "
            "holds its weights)"
        )
    fixed = [
        opt
        for opt, set_ in (
            ("--policy", args.policy is not None),
            ("--num-classes", args.num_classes is not None),
            ("--scale", getattr(args, "scale", None) is not None),
            ("--block-size", args.block_size is not None),
        )
        if set_
    ]
    if fixed:
        raise ValueError(
            f"{', '.join(fixed)} cannot change an exported program ({path}); export the "
            "checkpoint again with the model you want"
        )
    if args.device != "cpu":
        raise ValueError(f"exported programs run on the CPU here; drop --device {args.device}")
    return load_exported(path)


def input_normalize(model):
    """The :class:`~segblocks.data.transforms.Normalize` of the model's network (its
    ``input_mean`` / ``input_std``; ImageNet statistics when it has none)."""
    from segblocks.data.transforms import Normalize

    net = getattr(model, "net", model)
    mean, std = getattr(net, "input_mean", None), getattr(net, "input_std", None)
    return Normalize(mean, std) if mean else Normalize()


def add_budget_arguments(p: argparse.ArgumentParser) -> None:
    """``--budget`` and ``--calibration`` (budgeted inference, :mod:`segblocks.policies.budget`)."""
    p.add_argument(
        "--budget",
        help="per-image budget: the policy's top-ranked blocks that fit run in HR (0.4, 40%%, "
        "12blocks, 2.1gmacs, 35ms)",
    )
    p.add_argument(
        "--calibration",
        help="latency calibration (segblocks calibrate) for budgets in ms",
    )


ENGINES = ("auto", "eager", "compiled")


def add_engine_argument(p: argparse.ArgumentParser, what: str) -> None:
    """``--engine``: the eager model or its AOTInductor package (compiled once, cached)."""
    p.add_argument(
        "--engine",
        choices=ENGINES,
        default="auto",
        help=f"{what}: 'compiled' runs the model's AOTInductor package (faster; compiled once "
        "per checkpoint, size and machine, about a minute, cached in ~/.cache/segblocks or "
        "$SEGBLOCKS_CACHE_DIR), 'eager' the Python model; 'auto' (default) compiles where it "
        "can (a --checkpoint, CPU, the C++ kernels and a compiler) and says why not otherwise",
    )


def eager_reason(args: argparse.Namespace, model) -> str | None:
    """Why ``--engine`` runs the eager model (``None``: it runs the compiled package).
    ``--engine compiled`` that cannot be honoured raises ``ValueError`` with the reason."""
    from segblocks.deploy.cache import compile_available
    from segblocks.models.segblocks_model import SegBlocksModel

    engine = getattr(args, "engine", "eager")
    if engine == "eager":
        return "--engine eager"
    if exported_path(args) is not None:
        return "the model is already an exported program"
    if not args.checkpoint:
        reason = "no --checkpoint (a registry model with untrained weights)"
    elif not isinstance(model, SegBlocksModel):
        reason = f"{type(model).__name__} is not a SegBlocks model"
    elif args.device != "cpu":
        reason = f"compiled packages run on the CPU, not --device {args.device}"
    else:
        reason = compile_available()
    if reason is not None and engine == "compiled":
        raise ValueError(f"--engine compiled is not possible here: {reason}; use --engine eager")
    return reason


def run_engine(args: argparse.Namespace, model) -> str:
    """The ``engine`` a latency calibration for this run must have been measured with."""
    if exported_path(args) is not None:
        return model.kind
    return "eager" if eager_reason(args, model) is not None else "aoti"


def model_id(args: argparse.Namespace) -> str:
    """What a calibration file records as the model: the checkpoint file or registry name."""
    from pathlib import Path

    if exported_path(args) is not None:
        return f"exported:{exported_path(args).name}"
    return f"checkpoint:{Path(args.checkpoint).name}" if args.checkpoint else args.model


def check_budget(args: argparse.Namespace, model, budgets=(), engine: str | None = None) -> None:
    """Validate ``--budget`` (and ``budgets``) and attach ``--calibration`` to ``model``;
    ``ValueError`` names the problem. The calibration must have been measured with ``engine``
    (default: what :func:`run_engine` picks for this run)."""
    import torch

    if engine is None:
        engine = run_engine(args, model)

    from segblocks.policies.budget import Budget

    for b in [*budgets, *([args.budget] if args.budget else [])]:
        Budget.parse(b)
    if args.calibration:
        from segblocks.measuring.calibrate import LatencyCalibration

        model.latency_calibration = LatencyCalibration.load(
            args.calibration,
            model=model_id(args),
            block_size=getattr(model, "block_size", None),
            dtype=getattr(args, "dtype", "float32"),
            threads=torch.get_num_threads(),
            engine=engine,
        )
