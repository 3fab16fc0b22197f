"""``purifier`` console script: train, export, serve, purify.

Each sub-command parses arguments and calls one function of ``training``, ``export`` or
``serving``; user-fixable failures (PurifierError) print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import sys
from pathlib import Path

from purifier.errors import PurifierError

SERVER_STATE_FLAGS = ("--status", "--key", "--stop")  # answered without importing torch: health checks call them often


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(part) for part in text.split(","))


def _names(text: str) -> tuple[str, ...]:
    return () if text == "none" else tuple(text.split(","))


def _quantize(args: argparse.Namespace) -> None:
    from export.quantize import quantize_bundle

    quantize_bundle(args.bundle, args.calibration_images, args.robust_images, args.steps, args.eot)
    print(f"wrote INT8 graphs into {args.bundle / 'onnx'}; serve them with --runtime onnxruntime-int8")


def _compose(args: argparse.Namespace) -> None:
    from purifier.bundle import compose_bundle

    bundle = compose_bundle(args.purifier, args.classifier, args.out, command=args.command)
    print(f"wrote bundle {bundle.path}: the purifier of {args.purifier} in front of the classifier of {args.classifier}")


def _size(text: str) -> tuple[int, int]:
    height, _, width = text.lower().partition("x")
    return int(height), int(width or height)


def _class_names(text: str) -> tuple[str, ...]:
    """A file with one class name per line, or a comma-separated list."""
    path = Path(text)
    return tuple(line.strip() for line in path.read_text().splitlines() if line.strip()) if path.is_file() else tuple(text.split(","))


def _import_classifier(args: argparse.Namespace) -> None:
    from purifier.importing import ImportOptions, import_onnx, import_pytorch

    options = ImportOptions(args.input_size, args.channels, args.mean, args.std, args.class_names, args.data_dir)
    if args.model.endswith(".onnx") or Path(args.model).is_file():
        if args.weights or args.trust_code:
            raise PurifierError("--weights and --trust-code are for a PyTorch factory (package.module:function), not an ONNX file")
        bundle = import_onnx(Path(args.model), args.out, options, command=args.command)
    else:
        if args.weights is None:
            raise PurifierError(f"{args.model} is not a file; for a PyTorch classifier pass package.module:function with --weights FILE")
        bundle = import_pytorch(args.model, args.weights, args.out, options, trust_code=args.trust_code, command=args.command)
    conversion = bundle.manifest["classifier"]["imported"]["conversion"]
    accuracy = bundle.manifest["metrics"].get("clean_accuracy_classifier")
    print(f"wrote bundle {bundle.path}: input {'x'.join(map(str, bundle.input_shape))}, {len(bundle.class_names)} classes; PyTorch conversion "
          f"within {conversion['max_abs_logit_diff_vs_onnxruntime']:.1e} of ONNX Runtime on {conversion['images']} images"
          + (f"; clean accuracy {accuracy['value']:.2%} on {accuracy['protocol']['images']} test images" if accuracy else ""))


def _export(args: argparse.Namespace) -> None:
    if args.tensorrt:
        from export.tensorrt import build_bundle_engines

        build_bundle_engines(args.bundle, args.tensorrt)
        return
    if args.fp16:
        from export.float16 import export_float16

        export_float16(args.bundle, seed=args.seed)
        return
    from export.onnx import export_bundle

    export_bundle(args.bundle, tolerance=args.tolerance, seed=args.seed)


def _evaluate(args: argparse.Namespace) -> None:
    from evaluation.evaluate import EvaluationConfig, evaluate
    from evaluation.report import write_report

    names = {field.name for field in dataclasses.fields(EvaluationConfig)}
    if args.quick and args.screen:
        raise PurifierError("pass --quick or --screen, not both")
    options = {key: value for key, value in vars(args).items() if key in names and key != "quick"}
    options["transfer_from"] = _transfer_sources(args)
    for directory in args.baseline:
        if not (directory / "report.json").exists():
            raise PurifierError(f"{directory} holds no report.json; evaluate that bundle first or drop --baseline {directory}")
    preset = EvaluationConfig.quick_run if args.quick else EvaluationConfig.screening if args.screen else EvaluationConfig
    config = preset(**options)
    evaluation = evaluate(args.bundle, args.out, config, data_dir=args.data_dir, reuse_classifier=args.reuse_classifier)
    report = write_report(evaluation, args.out, record=args.record, baselines=args.baseline)
    head = report["headline"]
    which = f"worst of {head['draws']} draws" if head["draws"] > 1 else "deterministic"
    threats = [key[: -len("_worst_of_n")] for key in head if key.endswith("_worst_of_n") and key != "clean_worst_of_n"]
    print(f"{report['bundle']} ({head['model']}, {which}): clean {head['clean_worst_of_n']:.2%}, "
          + ", ".join(f"{threat.replace('linf_', 'L∞ ').replace('l2_', 'L2 ').replace('_', ' ')} {head[threat + '_worst_of_n']:.2%}" for threat in threats)
          + f", corruptions {head['corruption_mean']:.2%}" + ("" if report["protocol"]["conformant"] else "  [not protocol-conformant]"))
    if head["gradient_masking"] and head["gradient_masking"]["flagged"]:
        masking = head["gradient_masking"]
        print(f"possible gradient masking: gradient-free attacks broke images the gradient attacks left standing (judged on one draw: "
              f"{masking['single']}; on every draw: {masking['worst_of_n']}); see report.md")
    print(f"wrote {args.out / 'report.md'}, report.json and plots" + (f"; recorded in {args.bundle / 'bundle.json'}" if args.record else ""))


def _transfer_sources(args: argparse.Namespace) -> tuple[Path, ...]:
    """--transfer-from as given ('none': no transfer); by default the committed Fashion-MNIST baselines, for a Fashion-MNIST bundle."""
    given = getattr(args, "transfer_from", None)
    if given is not None:
        return tuple(path for path in given if str(path) != "none")
    if args.screen:
        return ()
    from purifier.assets import CHECKOUT_BUNDLES
    from purifier.bundle import load_bundle

    if load_bundle(args.bundle).dataset_kind != "fashion-mnist":
        return ()
    defaults = tuple(CHECKOUT_BUNDLES / name for name in ("fmnist-standard", "fmnist-pgd-at"))
    return tuple(path for path in defaults if (path / "bundle.json").exists())


def _certify(args: argparse.Namespace) -> None:
    from evaluation.certification import CertifyConfig, certify_bundle
    from evaluation.soundness import SoundnessConfig

    options = {key: getattr(args, key) for key in ("images", "n0", "n", "alpha", "batch", "seed") if getattr(args, key, None) is not None}
    config = CertifyConfig.quick_run(**options) if args.quick else CertifyConfig(**options)
    soundness = None
    if args.soundness:
        soundness = (SoundnessConfig.quick_run if args.quick else SoundnessConfig)(alpha=config.alpha, seed=config.seed)
    engine = None
    if args.runtime != "torch":
        from purifier.bundle import load_bundle
        from serving.runtime import create_runtime

        runtime = create_runtime(load_bundle(args.bundle), args.runtime)
        engine = (runtime.name, runtime.pipeline_logits)
    report = certify_bundle(args.bundle, args.out, config, data_dir=args.data_dir, record=args.record, soundness=soundness, engine=engine)
    print(f"{report['bundle']} (σ {report['sigma']:g}): certified accuracy " + ", ".join(
        f"{value:.1%} at r = {radius}" for radius, value in report["accuracy_at_radius"].items()) + f"; abstained on {report['abstention_rate']:.1%}"
        + ("" if report["protocol"]["conformant"] else "  [not protocol-conformant]"))
    if "soundness" in report:
        check = report["soundness"]
        print(f"soundness: {check['contradicted']} of {check['attacked']} certified predictions contradicted by SmoothAdv inside their radii "
              f"({check['abstained']} abstentions; p = {check['p_value']:.3g} against rate {check['allowed_rate']:g})")
    print(f"wrote {args.out / 'report.md'}, report.json and certified_accuracy.png" + (f"; recorded in {args.bundle / 'bundle.json'}" if args.record else ""))


def _server_state(flag: str) -> None:
    """``purifier serve --status | --key | --stop``."""
    from serving import server_state

    if flag == "--stop":
        server_state.stop()
    elif flag == "--key":
        print(server_state.inference_key())
    else:
        server = server_state.status()
        print(f"model '{server.model}' ready at {server.prediction_url()}")


def _serve(args: argparse.Namespace) -> None:
    flag = next((flag for flag in SERVER_STATE_FLAGS if getattr(args, flag[2:])), None)
    if flag is not None:
        _server_state(flag)
        return
    from serving import torchserve

    batching = torchserve.Batching(args.batch_size, args.max_batch_delay)
    certify = {key: value for key, value in (("samples", args.certify_samples), ("selection", args.certify_selection),
                                             ("alpha", args.certify_alpha)) if value is not None}
    access = torchserve.Access(args.token_expiration_min, token_auth=not args.no_token_auth)
    common = dict(port=args.port, foreground=args.foreground, timeout_s=args.timeout, host=args.host, seed=args.seed, runtime=args.runtime,
                  certify=certify, access=access)
    if args.front == "kserve":
        from serving.kserve_launch import serve_kserve

        serve_kserve(args.bundle, **common)
    else:
        torchserve.serve(args.bundle, batching=batching, **common)


def _purify(args: argparse.Namespace) -> None:
    from serving.batch import purify_folder

    if (args.src is None) == (args.dataset is None):
        raise PurifierError("pass either a source folder or --dataset NAME (with --split), not both or neither")
    summary = purify_folder(args.src, args.dst, bundle=args.bundle, batch_size=args.batch_size, seed=args.seed, runtime=args.runtime,
                            fmt=args.format, dataset=args.dataset, split=args.split, data_dir=args.data_dir, limit=args.limit,
                            certify=args.certify)
    print(summary.describe())
    if summary.failed:
        sys.exit(1)


def build_parser() -> argparse.ArgumentParser:
    from cli.train import add_train_command
    from evaluation.attacks import JOINT_ETA
    from purifier.data import DATASETS
    from serving.server_state import TOKEN_EXPIRATION_MIN

    parser = argparse.ArgumentParser(prog="purifier", description="Adversarial purification: train, export, serve, purify.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command_name", metavar="COMMAND", title="commands")

    add_train_command(commands)

    compose = commands.add_parser("compose", help="put one bundle's purifier in front of another bundle's classifier (no retraining)")
    compose.add_argument("--purifier", type=Path, required=True, help="bundle whose purifier (and random transform) to use")
    compose.add_argument("--classifier", type=Path, required=True, help="bundle whose classifier to use")
    compose.add_argument("--out", type=Path, required=True, help="bundle directory to write")
    compose.set_defaults(func=_compose)

    imported = commands.add_parser("import-classifier", help="a classifier trained elsewhere (ONNX file, or PyTorch factory + weights) as a bundle")
    imported.add_argument("model", help="an .onnx file, or package.module:function returning the PyTorch model (with --weights, --trust-code)")
    imported.add_argument("--out", type=Path, required=True, help="bundle directory to write")
    imported.add_argument("--weights", type=Path, help="PyTorch: the state dict (.safetensors, or torch.save, loaded with weights_only)")
    imported.add_argument("--trust-code", action="store_true", help="PyTorch: allow running the factory's code (once, to export it to ONNX)")
    imported.add_argument("--input-size", type=_size, help="H or HxW the model takes (read from the ONNX graph where it states it)")
    imported.add_argument("--channels", type=int, choices=(1, 3), help="1 (grey) or 3 (RGB) (read from the ONNX graph where it states it)")
    imported.add_argument("--mean", type=_floats, help="normalisation the model expects, x̂ = (x - mean) / std on [0, 1] images, e.g. 0.485,0.456,0.406 "
                          "(default: the model takes [0, 1])")
    imported.add_argument("--std", type=_floats, help="see --mean, e.g. 0.229,0.224,0.225")
    imported.add_argument("--class-names", type=_class_names, help="a file with one name per line, or a comma-separated list (default: 0, 1, …)")
    imported.add_argument("--data-dir", type=Path, help="an image folder (ROOT/[train|test/]CLASS/*) the bundle's purifiers train and evaluate on; "
                          "its test split's accuracy is recorded")
    imported.set_defaults(func=_import_classifier)

    export = commands.add_parser("export", help="export a bundle to ONNX and check parity with PyTorch")
    export.add_argument("bundle", type=Path)
    export.add_argument("--tolerance", type=float, default=1e-4, help="max abs difference allowed between ONNX Runtime and PyTorch")
    export.add_argument("--seed", type=int, default=0)
    export.add_argument("--fp16", action="store_true", help="after the ONNX export: FP16 graphs (onnx/NAME.fp16.onnx), checked against float on the CPU")
    export.add_argument("--tensorrt", choices=("fp16", "int8"), help="build TensorRT 11 engines from the FP16 graphs (made first when missing) or from "
                        "the INT8 Q/DQ graphs of 'purifier quantize' (NVIDIA GPU with TensorRT only)")
    export.set_defaults(func=_export)

    quantize = commands.add_parser("quantize", help="static INT8 ONNX graphs, with float-vs-INT8 clean and robust accuracy")
    quantize.add_argument("bundle", type=Path)
    quantize.add_argument("--calibration-images", type=int, default=512, help="training images for calibration (default 512)")
    quantize.add_argument("--robust-images", type=int, default=500, help="test images attacked for the robust comparison (default 500)")
    quantize.add_argument("--steps", type=int, default=100, help="PGD steps of the transferred L∞ 0.1 attack (default 100)")
    quantize.add_argument("--eot", type=int, default=20, help="EOT samples of that attack for a stochastic pipeline (default 20)")
    quantize.set_defaults(func=_quantize)

    evaluate = commands.add_parser("evaluate", help="robustness evaluation under the protocol of DESIGN.md", argument_default=argparse.SUPPRESS)
    evaluate.add_argument("bundle", type=Path)
    evaluate.add_argument("--out", type=Path, required=True, help="report directory (partial results are saved there; rerun to resume)")
    evaluate.add_argument("--data-dir", type=Path, default=None)
    evaluate.add_argument("--quick", action="store_true", default=False, help="smoke-test sizes (minutes); the report marks them non-conformant")
    evaluate.add_argument("--screen", action="store_true", default=False,
                          help="screening sizes for comparing training changes: 100 images, PGD-20 × EOT-4, worst of 4 draws, headline radii only")
    evaluate.add_argument("--images", type=int, help="robust-accuracy images, the first N of the test set (default 500)")
    evaluate.add_argument("--clean-images", type=int, help="clean-accuracy images (default: all)")
    evaluate.add_argument("--corruption-images", type=int, help="corruption images (default 1000)")
    evaluate.add_argument("--linf-eps", type=_floats, help="L∞ radii, e.g. 0.02,0.05,0.1 (0.1 is the headline)")
    evaluate.add_argument("--l2-eps", type=_floats, help="L2 radii, e.g. 0.5,1.0,1.5 (1.5 is the headline)")
    evaluate.add_argument("--steps", type=int, help="PGD steps at the headline radii (default 100)")
    evaluate.add_argument("--eot", type=int, help="EOT samples for stochastic models at the headline radii (default 20)")
    evaluate.add_argument("--autoattack", type=_names, help="threats AutoAttack runs on: linf (default), linf,l2 or none")
    evaluate.add_argument("--no-bpda", dest="bpda", action="store_false", help="skip the BPDA check")
    evaluate.add_argument("--joint-flow", type=Path, help="flow bundle: also run IJSAT's joint-space attack in its latent space")
    evaluate.add_argument("--joint-eps", type=float, help="joint-space attack: L∞ radius in image space (default 0.1)")
    evaluate.add_argument("--joint-eta", type=float, help=f"joint-space attack: L∞ radius in the flow's latent space (default {JOINT_ETA:g})")
    evaluate.add_argument("--draws", type=int, help="fresh transform draws each adversarial (and clean) image of a stochastic model is judged on; "
                          "it counts only if all are right (default 10)")
    evaluate.add_argument("--square-queries", type=int, help="queries of the gradient-free Square attack at L∞ 0.1 (default 5000; 0 skips it)")
    evaluate.add_argument("--transfer-from", type=Path, action="append", metavar="BUNDLE",
                          help="also attack with PGD examples crafted against this bundle's bare classifier (repeatable; 'none' for no "
                               "transfer; default for Fashion-MNIST: the committed fmnist-standard and fmnist-pgd-at bundles)")
    evaluate.add_argument("--baseline", type=Path, action="append", default=[], metavar="REPORT",
                          help="report directory whose defended model is drawn beside this one in accuracy_vs_eps.png (repeatable)")
    evaluate.add_argument("--reuse-classifier", type=Path, default=None, metavar="REPORT",
                          help="take the attacks on the bare classifier from this report of the same classifier weights and options "
                               "(a composed bundle), instead of running them again")
    evaluate.add_argument("--record", action="store_true", default=False, help="write the headline figures into the bundle's bundle.json")
    evaluate.set_defaults(func=_evaluate)

    certify = commands.add_parser("certify", help="certified L2 robustness by randomized smoothing (bundles with the gaussian transform)")
    certify.add_argument("bundle", type=Path)
    certify.add_argument("--out", type=Path, required=True, help="report directory (certificates are saved there as they are made; rerun to resume)")
    certify.add_argument("--data-dir", type=Path, default=None)
    certify.add_argument("--quick", action="store_true", help="smoke-test sizes (20 images, n0 20, n 200); the report marks them non-conformant")
    certify.add_argument("--images", type=int, help="the first N test images (default 500)")
    certify.add_argument("--n0", type=int, help="selection draws per image (default 100)")
    certify.add_argument("--n", type=int, help="estimation draws per image (default 10,000)")
    certify.add_argument("--alpha", type=float, help="failure probability of each certificate (default 0.001)")
    certify.add_argument("--batch", type=int, help="draws per forward pass (default 128)")
    certify.add_argument("--seed", type=int, help="image i draws its noise from (seed, i) (default 0)")
    certify.add_argument("--record", action="store_true", help="write metrics.certified into the bundle's bundle.json")
    certify.add_argument("--runtime", default="onnxruntime",
                         help="the engine that draws the base classifier: onnxruntime (the served one; needs 'purifier export' first) or torch")
    certify.add_argument("--soundness", action="store_true",
                         help="then attack every certified image inside its radius (SmoothAdv) and check the smoothed prediction holds")
    certify.set_defaults(func=_certify)

    serve = commands.add_parser("serve", help="serve a bundle on 127.0.0.1 (TorchServe, or KServe's ModelServer)")
    serve.add_argument("bundle", type=Path, nargs="?", help="bundle directory (default: the bundled Fashion-MNIST model, fmnist-default)")
    serve.add_argument("--front", choices=("torchserve", "kserve"), default="torchserve",
                       help="torchserve (default, the product's design) or kserve: KServe's Python ModelServer, no Java, complete "
                            "Open Inference Protocol v2 (needs the kserve extra)")
    serve.add_argument("--port", type=int, default=8080, help="inference port (TorchServe: management, metrics and its own metrics use the "
                       "next three; KServe: metrics on PORT+2)")
    serve.add_argument("--host", default="127.0.0.1", help="address for inference and metrics (management stays on 127.0.0.1); 0.0.0.0 only inside a container")
    serve.add_argument("--foreground", action="store_true", help="stay attached (containers)")
    serve.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for the model to load")
    serve.add_argument("--seed", type=int, help="seed the random transform, for reproducible debugging only (default: OS entropy; a known seed lets an attacker predict the masks)")
    serve.add_argument("--runtime", default=os.environ.get("PURIFIER_RUNTIME", "onnxruntime"),
                       help="engine: onnxruntime (CPU, default; env PURIFIER_RUNTIME), onnxruntime-int8 (after 'purifier quantize'), "
                            "onnxruntime-cuda / onnxruntime-tensorrt (NVIDIA GPU, needs onnxruntime-gpu; the second also TensorRT), tensorrt-fp16 / tensorrt-int8 (after 'purifier export --tensorrt'), torch (the PyTorch reference), torch-bf16 (CPU, bfloat16 through oneDNN: "
                            "AMX or AVX-512 BF16) or torch-cuda; a GPU engine takes the GPU's index after a colon, e.g. torch-cuda:1 (default 0)")
    serve.add_argument("--batch-size", type=int, default=32, help="dynamic batching: most requests handled in one batch (default 32)")
    serve.add_argument("--max-batch-delay", type=int, default=1, help="dynamic batching: most milliseconds a request waits for others (default 1)")
    serve.add_argument("--certify-samples", type=int, help="certify=true requests: estimation draws n per image (default 192: about 100 ms "
                       "per 28×28 image on 2 cores, benchmarks/certify.py)")
    serve.add_argument("--certify-selection", type=int, help="certify=true requests: selection draws n0 per image (default 32)")
    serve.add_argument("--certify-alpha", type=float, help="certify=true requests: failure probability of a certificate (default 0.001)")
    serve.add_argument("--token-expiration-min", type=float, default=TOKEN_EXPIRATION_MIN, metavar="N",
                       help="lifetime of the inference and management keys in minutes (default 1440, at least 0.25); the server renews each "
                            "before it expires and rewrites the key file atomically")
    serve.add_argument("--no-token-auth", action="store_true",
                       help="serve without keys, only behind a gateway that authenticates every request (logged as a warning)")
    serve.add_argument("--stop", action="store_true", help="stop the running server")
    serve.add_argument("--status", action="store_true", help="exit 0 if the served model is loaded and ready, else 2 ('not running' when none is)")
    serve.add_argument("--key", action="store_true", help="print the running server's inference key (for the Authorization: Bearer header)")
    serve.set_defaults(func=_serve)

    purify = commands.add_parser("purify", help="purify a folder of images (or a data set split) into DST with predictions; resumable, torchrun-able")
    purify.add_argument("src", type=Path, nargs="?", help="folder of images (omit with --dataset)")
    purify.add_argument("dst", type=Path)
    purify.add_argument("--dataset", choices=DATASETS, help="purify a data set split instead of a folder")
    purify.add_argument("--split", default="test", help="data set split (default test)")
    purify.add_argument("--data-dir", type=Path, help="data set location (default for Fashion-MNIST: Debian's package)")
    purify.add_argument("--limit", type=int, help="only the first N images of the data set split")
    purify.add_argument("--format", choices=("png", "npz"), default="png", help="a PNG tree (default) or .npz shards")
    purify.add_argument("--bundle", type=Path, help="bundle with a purifier (default: the bundled Fashion-MNIST purifier, fmnist-purifier)")
    purify.add_argument("--runtime", default="onnxruntime", help="engine, as for 'purifier serve' (default onnxruntime)")
    purify.add_argument("--batch-size", type=int, default=256, help="images per shard: the unit of batching, resuming and distribution")
    purify.add_argument("--seed", type=int, default=0, help="seed of the random transform (shard k draws from (seed, k))")
    purify.add_argument("--certify", action="store_true", help="also certify each image (randomized-smoothing bundles): smoothed_label and "
                        "certified_radius in predictions.jsonl")
    purify.set_defaults(func=_purify)
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("adversarial-purifier")
    except PackageNotFoundError:
        return "unknown (not installed: run scripts/bootstrap.sh)"


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv == ["--version"] or (len(argv) == 2 and argv[0] == "serve" and argv[1] in SERVER_STATE_FLAGS):
        try:
            if argv == ["--version"]:
                print(f"purifier {_version()}")
            else:
                _server_state(argv[1])
        except PurifierError as error:
            print(f"error: {error}", file=sys.stderr)
            sys.exit(2)
        return
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command_name is None:  # no command: the list of commands, one line each
        parser.print_help(sys.stderr)
        sys.exit(2)
    args.command = "purifier " + shlex.join(argv)
    try:
        args.func(args)
    except PurifierError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to resume from the last checkpoint", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
