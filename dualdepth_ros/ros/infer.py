"""``dualdepth infer``: a bag in, the same bag plus the node's outputs out, without DDS.

Every image of the camera topic goes through :class:`~dualdepth_ros.ros.processing.FrameProcessor`
— the code ``depth_node`` runs — in recording order (so the ``camera_height`` scale is
smoothed exactly as live), and the output bag gets, besides a copy of every input topic,

* ``<ns>/depth/image`` (32FC1, NaN where invalid), ``<ns>/depth/camera_info``,
* ``<ns>/confidence/image`` (32FC1 in [0, 1]), ``<ns>/confidence/camera_info``,

with the input image's header and log time, so ``ros2 bag play OUT`` shows them in rviz
(``config/depth.rviz``). ``<ns>`` is ``--output-namespace`` (default: none, the topics of
``depth.launch.py`` with its default namespace). Parameters come from the node's defaults,
then ``--params FILE`` (a depth_node parameters YAML such as ``config/depth.yaml``), then the
options given here.

With ``--gt-depth-topic`` each published depth is scored against the ground truth of the same
stamp (carried to the published resolution with the preprocessing's nearest-neighbour path, as
``dualdepth eval`` does): the median-scaled table, and the table without median scaling when the
scale mode gives metres (``camera_height`` or ``fixed``).

The output is written atomically (:class:`~dualdepth_ros.bagio.BagWriter`); a non-empty ``--out``
is refused unless ``--overwrite`` is given (and even then only a folder that looks like a bag
is replaced), and so is an ``--out`` that is, contains or lies inside the input bag (real paths
compared: symbolic links and ``..`` do not hide it; :func:`dualdepth_ros.outdir.check_separate`).
Stopped by Ctrl-C (exit 130) or SIGTERM (exit 143), it removes its partial output and prints one line.
"""

from __future__ import annotations

import argparse
import bisect
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..bagio import CAMERA_INFO, IMAGE, BagWriter, camera_info_msg, image_msg, stamp_to_ns, typestore
from ..errors import DualDepthError
from ..images import ImageDecodeError
from ..outdir import BAG, Terminated, check_output_dir, check_separate, stop_signals_raise
from ..preprocess import PreprocessError
from .params import BACKENDS, DEFAULTS, PRECISIONS, ParameterError, load_params_file, validate
from .processing import BackendError, FrameOutput, FrameProcessor, ScaleUnknownError, open_model_backend
from .scale import SCALE_MODES

__all__ = ["output_topics", "validate_namespace", "infer_bag", "add_arguments", "run"]


#: One token of a ROS 2 name: a letter or underscore, then letters, digits, underscores.
_NAME_TOKEN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def validate_namespace(namespace: str) -> str:
    """``namespace`` as an absolute ROS 2 namespace (``""`` for none), or :class:`DualDepthError`.

    The rules of rcl's namespace validation: tokens of letters, digits and underscores that do
    not start with a digit, separated by single ``/``, no trailing ``/``. A leading ``/`` is
    optional here (``cam1`` means ``/cam1``); ``""`` and ``"/"`` mean no namespace.
    """
    if namespace in ("", "/"):
        return ""
    tokens = (namespace[1:] if namespace.startswith("/") else namespace).split("/")
    bad = next((t for t in tokens if not _NAME_TOKEN.fullmatch(t)), None)
    if bad is not None:
        why = (
            "it has an empty part (a repeated or trailing '/')"
            if bad == ""
            else f"{bad!r} must start with a letter or '_' and hold only letters, digits and '_'"
        )
        raise DualDepthError(f"--output-namespace {namespace!r} is not a valid ROS 2 namespace: {why}")
    return "/" + "/".join(tokens)


def output_topics(namespace: str = "") -> dict[str, str]:
    """Role → topic name of the outputs (the node's relative names under ``namespace``).

    Raises
    ------
    DualDepthError : ``namespace`` is not a valid ROS 2 namespace (:func:`validate_namespace`).
    """
    ns = validate_namespace(namespace)
    return {
        "depth": f"{ns}/depth/image",
        "depth_info": f"{ns}/depth/camera_info",
        "confidence": f"{ns}/confidence/image",
        "confidence_info": f"{ns}/confidence/camera_info",
    }


class _Scorer:
    """Pairs published depths with GT depths of the same stamp (either may come first) and scores them."""

    def __init__(self, processor: FrameProcessor, metric: bool) -> None:
        from .scoring import GroundTruthScorer

        self.scorer = GroundTruthScorer(processor.preprocessor, metric)
        self.report = self.scorer.report
        self.pred: dict[int, tuple[FrameOutput, Any]] = {}
        self.gt: dict[int, Any] = {}
        self.unusable_gt = 0

    def prediction(self, stamp: int, out: FrameOutput, info: Any) -> None:
        self.pred[stamp] = (out, info)
        self._match(stamp)

    def ground_truth(self, stamp: int, msg: Any) -> None:
        self.gt[stamp] = msg
        self._match(stamp)

    def _match(self, stamp: int) -> None:
        if stamp not in self.pred or stamp not in self.gt:
            return
        (out, info), msg = self.pred.pop(stamp), self.gt.pop(stamp)
        try:
            self.scorer.add(out.depth, out.confidence, msg, info)
        except (PreprocessError, ImageDecodeError):
            self.unusable_gt += 1

    def forget_before(self, stamp: int) -> None:
        """Drop unpaired entries far behind ``stamp`` (bounded memory on long bags)."""
        for table in (self.pred, self.gt):
            for k in [k for k in table if k < stamp - 10_000_000_000]:
                del table[k]


def infer_bag(
    bag: str | Path,
    out: str | Path,
    processor: FrameProcessor,
    *,
    image_topic: str | None = None,
    info_topic: str | None = None,
    gt_depth_topic: str | None = None,
    output_namespace: str = "",
    storage: str = "mcap",
    overwrite: bool = False,
    max_frames: int | None = None,
    progress: bool | None = None,
    command: str = "",
    log: Any = None,
) -> dict[str, Any]:
    """Run ``processor`` over a bag's camera and write the output bag (module docstring).

    Returns
    -------
    A JSON-ready summary: topics, frame counts (``images``, ``published``, ``skipped`` by reason),
    seconds, frames per second, scale, and ``accuracy`` (an evaluation summary) with a GT topic.

    Raises
    ------
    DualDepthError : unreadable bag, missing topics, ``out`` not writable, not empty without
        ``overwrite``, or overlapping the bag; the backend failing (nothing is written then).
    """
    from tqdm import tqdm

    from ..data.bags import Bag, select_topics

    bag, out = Path(bag), Path(out)
    log = log or (lambda line: print(line, file=sys.stderr))
    check_separate(out, {"--bag": bag})  # real paths: not the bag, not inside it, not holding it
    topics_out = output_topics(output_namespace)
    t_start = time.perf_counter()
    counts = {"images": 0, "published": 0, "refused": 0, "no_camera_info": 0, "no_scale": 0}
    first_errors: list[str] = []
    with Bag(bag) as b:
        sel = select_topics(b, image_topic=image_topic, camera_info_topic=info_topic, gt_depth_topic=gt_depth_topic)
        reader = b.reader
        clash = sorted(set(topics_out.values()) & set(reader.topics))
        if clash:
            raise DualDepthError(
                f"bag {bag} already has {', '.join(clash)}; choose another --output-namespace for the outputs"
            )
        infos = [(t, stamp_to_ns(m.header.stamp), m) for _, t, m in b.messages([sel.camera_info])]
        info_by_stamp = {s: m for _, s, m in infos}
        info_times = [t for t, _, _ in infos]
        n_images = int(reader.topics[sel.image].msgcount)
        truncate = max_frames is not None and max_frames < n_images
        if truncate:
            n_images = int(max_frames)
        scorer = _Scorer(processor, processor.scale_settings.metric) if sel.gt_depth else None
        store = typestore()
        with BagWriter(out, storage=storage, overwrite=overwrite) as writer:
            for conn in reader.connections:
                if conn.topic in writer.counts:
                    continue
                if conn.msgtype not in store.types:
                    log(f"warning: {conn.topic} ({conn.msgtype}) is not copied: unknown message type")
                    continue
                writer.add_topic(conn.topic, conn.msgtype, getattr(conn.ext, "offered_qos_profiles", []) or [])
            copied = [c for c in reader.connections if c.topic in writer.counts]
            for role in ("depth", "depth_info", "confidence", "confidence_info"):
                writer.add_topic(topics_out[role], CAMERA_INFO if role.endswith("info") else IMAGE)
            if command:
                writer.set_custom_data("dualdepth.infer", command)
            bar = tqdm(total=n_images, desc="inference", unit="frame", file=sys.stderr, disable=progress is False)
            try:
                last_image_ns = None
                for conn, log_ns, raw in reader.messages(connections=copied):
                    log_ns = int(log_ns)
                    is_image = conn.topic == sel.image
                    if truncate and counts["images"] >= n_images and (is_image or log_ns > (last_image_ns or log_ns)):
                        break  # --max-frames: the output ends with the last image's log time
                    if not reader.is2:  # ROS 1 serialisation: convert to CDR
                        raw = store.serialize_cdr(reader.deserialize(raw, conn.msgtype), conn.msgtype)
                    writer.write_raw(conn.topic, raw, log_ns)
                    if scorer is not None and conn.topic == sel.gt_depth:
                        msg = store.deserialize_cdr(raw, conn.msgtype)
                        scorer.ground_truth(stamp_to_ns(msg.header.stamp), msg)
                    if not is_image:
                        continue
                    counts["images"] += 1
                    last_image_ns = log_ns
                    bar.update(1)
                    msg = store.deserialize_cdr(raw, conn.msgtype)
                    stamp = stamp_to_ns(msg.header.stamp)
                    info = info_by_stamp.get(stamp)
                    if info is None:
                        i = bisect.bisect_right(info_times, log_ns) - 1
                        info = infos[i][2] if i >= 0 else None
                    if info is None:
                        counts["no_camera_info"] += 1
                        continue
                    try:
                        res = processor.process(msg, info)
                    except ScaleUnknownError:
                        counts["no_scale"] += 1
                        continue
                    except BackendError as err:
                        raise DualDepthError(f"inference failed on the frame stamped {stamp} ns: {err}") from err
                    except PreprocessError as err:
                        counts["refused"] += 1
                        if len(first_errors) < 5:
                            first_errors.append(f"frame stamped {stamp} ns: {err}")
                            log(f"warning: {first_errors[-1]}")
                        continue
                    _write_outputs(writer, topics_out, msg.header, res, log_ns)
                    processor.update_scale(res)
                    counts["published"] += 1
                    if scorer is not None:
                        scorer.prediction(stamp, res, info)
                        scorer.forget_before(stamp)
            finally:
                bar.close()
            writer.write_text("README.md", _readme(bag, sel.image, topics_out, processor, command))
    seconds = time.perf_counter() - t_start
    summary: dict[str, Any] = {
        "bag": str(bag),
        "out": str(out),
        "image_topic": sel.image,
        "camera_info_topic": sel.camera_info,
        "output_topics": topics_out,
        **counts,
        "first_errors": first_errors,
        "seconds": round(seconds, 3),
        "frames_per_second": round(counts["images"] / seconds, 3) if seconds > 0 else None,
        "backend": processor.backend.describe(),
        "scale": processor.scaler.describe(),
        "input_size": list(processor.input_size),
    }
    if scorer is not None:
        summary["gt_depth_topic"] = sel.gt_depth
        summary["accuracy"] = scorer.report.summary()
        summary["gt_unusable"] = scorer.unusable_gt
    return summary


def _write_outputs(writer: BagWriter, topics: dict[str, str], header: Any, res: FrameOutput, log_ns: int) -> None:
    stamp, frame = stamp_to_ns(header.stamp), header.frame_id
    K = res.intrinsics
    info = camera_info_msg(K.width, K.height, K.matrix(), stamp, frame, D=np.zeros(5), distortion_model="plumb_bob")
    writer.write(topics["depth"], image_msg(res.depth, "32FC1", stamp, frame), log_ns)
    writer.write(topics["depth_info"], info, log_ns)
    writer.write(topics["confidence"], image_msg(res.confidence, "32FC1", stamp, frame), log_ns)
    writer.write(topics["confidence_info"], info, log_ns)


def _readme(bag: Path, image_topic: str, topics: dict[str, str], processor: FrameProcessor, command: str) -> str:
    d = processor.backend.describe()
    w, h = processor.input_size
    s = processor.scale_settings
    o = processor.output
    scale = {"none": "model units (scale_mode none)", "fixed": f"x {s.fixed_scale} (scale_mode fixed)"}.get(
        s.mode, f"metres (scale_mode camera_height, camera {s.camera_height_m} m above the road)"
    )
    return (
        "# dualdepth infer output\n\n"
        f"Made with `{command or 'dualdepth infer'}` from `{bag}`: every topic of the input, plus the outputs of\n"
        f"depth_node's processing of `{image_topic}` ({d.get('name')} on {d.get('device')}, model input {w}x{h}).\n\n"
        f"- `{topics['depth']}`: 32FC1 depth in {scale}; NaN outside [{o.min_depth}, {o.max_depth}]"
        + (f" or where the confidence is below {o.confidence_threshold}" if o.confidence_threshold > 0 else "")
        + "\n"
        f"- `{topics['depth_info']}`, `{topics['confidence_info']}`: the camera at {w}x{h} (K, P = [K|0], D = 0)\n"
        f"- `{topics['confidence']}`: 32FC1 confidence in [0, 1]\n\n"
        "Headers and log times are the input image's.\n"
    )


# ---------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------
#: option → parameter it overrides.
_OPTION_PARAMS = {
    "backend": "backend",
    "precision": "precision",
    "device": "device",
    "threads": "threads",
    "engine_path": "engine_path",
    "scale_mode": "scale_mode",
    "camera_height": "camera_height_m",
    "fixed_scale": "fixed_scale",
    "min_depth": "min_depth",
    "max_depth": "max_depth",
    "confidence_threshold": "confidence_threshold",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", metavar="DIR", help="model folder (model.onnx + model.json); default: the shipped default model"
    )
    parser.add_argument("--bag", required=True, help="input bag (rosbag2 folder, .mcap/.db3 file or ROS 1 .bag)")
    parser.add_argument("--out", required=True, help="output bag folder (written atomically)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out (only if it is a bag)")
    parser.add_argument("--image-topic", help="camera image topic (default: auto-detected)")
    parser.add_argument("--info-topic", help="camera_info topic (default: beside the image topic)")
    parser.add_argument("--gt-depth-topic", help="ground-truth depth Image (32FC1 m / 16UC1 mm): print the accuracy")
    parser.add_argument("--params", metavar="YAML", help="depth_node parameters file (e.g. config/depth.yaml)")
    parser.add_argument("--backend", choices=BACKENDS, help=f"inference backend (default {DEFAULTS['backend']})")
    parser.add_argument("--precision", choices=PRECISIONS, help="fp32 or fp16")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), help="where the backend runs")
    parser.add_argument("--threads", type=int, help="CPU threads of the backend (0 = library default)")
    parser.add_argument("--engine-path", help="TensorRT engine file or folder")
    parser.add_argument("--scale-mode", choices=SCALE_MODES, help=f"default {DEFAULTS['scale_mode']}")
    parser.add_argument("--camera-height", type=float, metavar="M", help="camera height above the road, metres")
    parser.add_argument("--fixed-scale", type=float, metavar="S", help="depth factor of --scale-mode fixed")
    parser.add_argument("--min-depth", type=float, help=f"default {DEFAULTS['min_depth']}")
    parser.add_argument("--max-depth", type=float, help=f"default {DEFAULTS['max_depth']}")
    parser.add_argument("--confidence-threshold", type=float, help="NaN depth below this confidence (0 disables)")
    parser.add_argument(
        "--output-namespace", default="", help="ROS 2 namespace of the output topics, e.g. cam1 (default: none)"
    )
    parser.add_argument("--storage", choices=("mcap", "sqlite3"), default="mcap", help="output storage (default mcap)")
    parser.add_argument(
        "--max-frames", type=int, metavar="N", help="only the first N images (the output bag ends at the Nth image)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--json", metavar="FILE", help="write the summary (and accuracy) as JSON ('-' for stdout)")


def resolve_params(args: argparse.Namespace) -> dict[str, Any]:
    """The node's defaults, then ``--params``, then the options given."""
    params = dict(DEFAULTS)
    if args.params:
        params.update(load_params_file(args.params))
    for option, name in _OPTION_PARAMS.items():
        value = getattr(args, option, None)
        if value is not None:
            params[name] = value
    if args.model:
        params["model_path"] = args.model
    problems = validate(params)
    if problems:
        raise ParameterError("; ".join(problems))
    return params


def run(args: argparse.Namespace) -> int:
    from .params import output_settings, scale_settings

    if args.max_frames is not None and args.max_frames < 1:
        raise DualDepthError("--max-frames must be at least 1")
    validate_namespace(args.output_namespace)
    check_separate(args.out, {"--bag": args.bag})  # before the model is loaded (infer_bag checks again)
    check_output_dir(args.out, args.overwrite, BAG)
    params = resolve_params(args)
    out = sys.stderr if args.json == "-" else sys.stdout
    try:
        with stop_signals_raise():  # SIGTERM unwinds like Ctrl-C: the partial bag is removed
            backend = open_model_backend(params, log=lambda line: print(line, file=out))
            try:
                processor = FrameProcessor(
                    backend,
                    output_settings(params),
                    scale_settings(params),
                    max_image_pixels=int(params["max_image_pixels"]),
                )
                summary = infer_bag(
                    args.bag,
                    args.out,
                    processor,
                    image_topic=args.image_topic,
                    info_topic=args.info_topic,
                    gt_depth_topic=args.gt_depth_topic,
                    output_namespace=args.output_namespace,
                    storage=args.storage,
                    overwrite=args.overwrite,
                    max_frames=args.max_frames,
                    progress=False if args.no_progress else None,
                    command=" ".join(["dualdepth", *sys.argv[1:]]) if sys.argv and sys.argv[0] else "dualdepth infer",
                )
            finally:
                backend.close()
    except Terminated as err:
        print(f"error: {err} before the output was complete: the partial output was removed", file=sys.stderr)
        return 128 + err.signum
    print(format_summary(summary), file=out)
    if args.json:
        text = json.dumps(_json_ready(summary), indent=2, allow_nan=False)
        if args.json == "-":
            sys.stdout.write(text + "\n")
        else:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(text + "\n", encoding="utf-8")
    return 0


def format_summary(summary: dict[str, Any]) -> str:
    """The human-readable report of :func:`infer_bag`'s summary."""
    b = summary["backend"]
    s = summary["scale"]
    lines = [
        f"{summary['images']} images of {summary['image_topic']} → {summary['published']} depth frames in "
        f"{summary['out']} ({summary['seconds']:.1f} s, {summary['frames_per_second'] or 0:.1f} frames/s, "
        f"{b.get('name')} on {b.get('device')}, input {summary['input_size'][0]}x{summary['input_size'][1]})",
        f"outputs: {', '.join(summary['output_topics'].values())}",
        f"scale: {s['mode']}" + (f" = {s['scale']:.4g}" if s.get("scale") is not None else " (unknown)"),
    ]
    skipped = {k: summary[k] for k in ("refused", "no_camera_info", "no_scale") if summary[k]}
    if skipped:
        lines.append("skipped: " + ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in skipped.items()))
    acc = summary.get("accuracy")
    if acc is not None:
        from .scoring import format_evaluation

        lines.append(f"\naccuracy against {summary['gt_depth_topic']} (published depth, valid pixels only):")
        lines.append(format_evaluation(acc) if acc["n_images"] else "no frame had valid ground truth")
    return "\n".join(lines)


def _json_ready(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_ready(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return float(obj) if np.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.ndarray):
        return _json_ready(obj.tolist())
    return obj
