"""``dualdepth gpu-cache``: decoded drives in a small folder that travels instead of their bags.

A GPU machine that receives only the repository (and a few carried folders, 64 MiB in all) cannot
read the bags of ``../shared/data`` (200 MB). This command decodes them once, here, exactly as
training and evaluation would (:func:`~dualdepth_ros.data.frames.load_frames`: decode → rectify →
crop/resize to the training size, the image motion of the still-camera filter, the ground truth
matched by stamp) and writes the result compactly::

    OUT/manifest.json             what is in it: input size, drives, sizes, the configs used
    OUT/train/<drive>/            the training drives (default kitti_odometry_03, kitti_raw_0005)
    OUT/score/<drive>/            the scoring drives (default kitti_raw_0009)

Each drive folder holds :data:`DRIVE_FILE` (its description: topics, preprocessing, sizes, a
SHA-256 per file), ``rgb.png`` (every frame at the training size, stacked vertically into one
lossless PNG; one channel when the drive is grey), ``arrays.npz`` (stamps, intrinsics, motion,
poses), the ground truth in ``gt.npz`` (depth *sparse*: flat pixel index deltas and millimetres,
exactly the bag's 16UC1 values, or float32 metres when a value is not a whole millimetre; on the
rectified camera's own grid, 1242×375 for KITTI, where the KITTI protocol scores it, and at the
training size; the moving-object mask), and ``SOURCE_README.md`` (the drive's README with its
licence, when it has one).

A drive folder is read wherever a bag is: ``dualdepth train --bag OUT/train`` and
``dualdepth eval --bag OUT/score/kitti_raw_0009`` (:func:`~.bags.expand_bag_paths`,
:func:`~.bags.resolve_gt_topics` and :func:`~.frames.load_frames` recognise it). It gives the
same :class:`~.frames.FrameStore` as the bag, array for array, for a run whose preprocessing is
the one it was made with; any other (another input size or resize mode, another topic) is one
line saying what the folder holds and how to rebuild it.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ..errors import DualDepthError
from ..inference.metadata import file_sha256
from ..outdir import OutputKind, check_output_dir, check_separate, replace_dir, temporary_sibling
from ..preprocess import Preprocessor
from .bags import BagError, GtTopics, bag_fingerprint, resolve_gt_topics

__all__ = [
    "DRIVE_FILE",
    "MANIFEST",
    "FORMAT",
    "VERSION",
    "DEFAULT_TRAIN",
    "DEFAULT_SCORE",
    "MAX_MIB",
    "GPU_CACHE",
    "is_cached_drive",
    "write_drive",
    "load_cached_drive",
    "cached_gt_topics",
    "build_cache",
    "read_manifest",
    "default_configs",
]

#: The file that makes a folder a cached drive (and describes it).
DRIVE_FILE = "dualdepth_drive.json"
#: The cache folder's table of contents.
MANIFEST = "manifest.json"
FORMAT = "dualdepth-gpu-cache"
#: Bumped when the layout or the content of a drive folder changes.
VERSION = 2
#: The real drives of ``../shared/data`` (see their README.md): two to train on, one to score on.
DEFAULT_TRAIN = ("kitti_odometry_03", "kitti_raw_0005")
DEFAULT_SCORE = ("kitti_raw_0009",)
ROLES = ("train", "score")
#: The repository (a manifest names the configs relative to it).
REPO = Path(__file__).resolve().parents[2]
#: The largest cache written by default (it travels with the repository: 64 MiB in all).
MAX_MIB = 20.0
#: Preprocessing parameters that decide the frames (``Preprocessor.params`` less the OpenCV version,
#: which only matters while decoding, here).
_PARAMS = ("width", "height", "resize_mode", "rectify", "intrinsics", "version")
_FILES = ("rgb.png", "arrays.npz", "gt.npz")


def _is_cache(path: Path) -> bool:
    try:
        return json.loads((path / MANIFEST).read_text()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


#: ``--out`` of ``dualdepth gpu-cache`` (replaced with ``--overwrite`` only when it is such a folder).
GPU_CACHE = OutputKind("a gpu-cache folder", f"{MANIFEST}, train/, score/", _is_cache)


def is_cached_drive(path: str | os.PathLike) -> bool:
    """True when ``path`` is a drive folder written by :func:`write_drive` (it holds :data:`DRIVE_FILE`)."""
    return (Path(path) / DRIVE_FILE).is_file()


def default_configs() -> list[str]:
    """The default recipe's configs: ``config/train.yaml`` + ``config/default_model.yaml``."""
    from ..config import DEFAULT_CONFIG

    return [str(DEFAULT_CONFIG), str(DEFAULT_CONFIG.parent / "default_model.yaml")]


def _params(pre: Preprocessor | dict[str, Any]) -> dict[str, Any]:
    p = pre.params() if isinstance(pre, Preprocessor) else pre
    return {k: p.get(k) for k in _PARAMS}


def _describe_params(p: dict[str, Any]) -> str:
    text = f"{p['width']}x{p['height']} {p['resize_mode']}, rectify {p['rectify']}, preprocessing v{p['version']}"
    return text + (f", intrinsics {p['intrinsics']}" if p.get("intrinsics") else "")


# ---------------------------------------------------------------------------------------
# Sparse depth
# ---------------------------------------------------------------------------------------
def _sparse(depth: np.ndarray, prefix: str) -> dict[str, np.ndarray]:
    """``N×H×W`` float32 metres (0 = none) as per-frame counts, flat index deltas and values.

    Values are stored as whole millimetres (uint16) when that reproduces every float32 exactly
    (the bag's 16UC1 depth read as ``mm / 1000``), else as float32 metres.
    """
    flat = np.asarray(depth, dtype=np.float32).reshape(depth.shape[0], -1)
    idx = [np.flatnonzero(row) for row in flat]
    counts = np.asarray([i.size for i in idx], dtype=np.int64)
    deltas = np.concatenate([np.diff(i, prepend=0) for i in idx] or [np.zeros(0, np.int64)]).astype(np.uint32)
    values = np.concatenate([row[i] for row, i in zip(flat, idx)] or [np.zeros(0, np.float32)])
    mm = np.round(values.astype(np.float64) * 1000.0)
    out = {f"{prefix}_counts": counts, f"{prefix}_deltas": deltas}
    if values.size and mm.max() <= np.iinfo(np.uint16).max and mm.min() >= 1:
        as_mm = mm.astype(np.uint16)
        if np.array_equal(as_mm.astype(np.float32) / np.float32(1000.0), values):
            out[f"{prefix}_mm"] = as_mm
            return out
    out[f"{prefix}_metres"] = values.astype(np.float32)
    return out


def _dense(arrays: Any, prefix: str, shape: tuple[int, int, int]) -> np.ndarray:
    """Inverse of :func:`_sparse`: ``N×H×W`` float32 metres."""
    counts = arrays[f"{prefix}_counts"]
    deltas = arrays[f"{prefix}_deltas"].astype(np.int64)
    if f"{prefix}_mm" in arrays:
        values = arrays[f"{prefix}_mm"].astype(np.float32) / np.float32(1000.0)
    else:
        values = arrays[f"{prefix}_metres"].astype(np.float32)
    if counts.shape != (shape[0],) or int(counts.sum()) != deltas.size or deltas.size != values.size:
        raise ValueError(f"{prefix}: sparse arrays do not match {shape[0]} frames")
    out = np.zeros((shape[0], shape[1] * shape[2]), np.float32)
    start = 0
    for i, n in enumerate(counts):
        n = int(n)
        idx = np.cumsum(deltas[start : start + n])
        if n and idx[-1] >= out.shape[1]:
            raise ValueError(f"{prefix}: pixel index {idx[-1]} outside {shape[2]}x{shape[1]}")
        out[i, idx] = values[start : start + n]
        start += n
    return out.reshape(shape)


# ---------------------------------------------------------------------------------------
# One drive
# ---------------------------------------------------------------------------------------
def write_drive(store: Any, folder: str | os.PathLike, request: dict[str, Any], params: dict[str, Any]) -> int:
    """Write one decoded drive (a :class:`~.frames.FrameStore`) to ``folder`` (created); returns its bytes.

    Parameters
    ----------
    store : the frames, as :func:`~.frames.load_frames` made them with ``request`` and ``params``.
    request : the topics asked for (``image``, ``camera_info``, ``gt_depth``, ``gt_pose``,
        ``gt_moving_mask``, ``rectify_gt``), as :func:`~.frames.load_frames` takes them.
    params : ``Preprocessor.params()`` of the preprocessing that made the frames.
    """
    from .frames import store_description

    folder = Path(folder)
    folder.mkdir(parents=True)
    rgb = np.asarray(store.rgb)
    grey = bool(rgb.size and np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2]))
    image = rgb[..., 0] if grey else rgb
    ok, png = cv2.imencode(".png", image.reshape(-1, *image.shape[2:]), [cv2.IMWRITE_PNG_COMPRESSION, 9])
    if not ok:
        raise DualDepthError(f"cannot encode the frames of {store.bag} as PNG")
    (folder / "rgb.png").write_bytes(png.tobytes())
    np.savez_compressed(
        folder / "arrays.npz",
        stamps=np.asarray(store.stamps, np.int64),
        intrinsics=np.asarray(store.intrinsics, np.float64),
        motion=np.asarray(store.motion, np.float32),
        source_intrinsics=np.asarray(store.source_intrinsics, np.float64),
        gt_pose=np.asarray(store.gt_pose, np.float64) if store.gt_pose is not None else np.zeros((0, 4, 4)),
    )
    gt: dict[str, np.ndarray] = {}
    if store.gt_depth is not None:
        gt.update(_sparse(np.asarray(store.gt_depth), "depth"))
        gt.update(_sparse(np.asarray(store.gt_depth_native), "native"))
    if store.gt_moving is not None:
        gt["moving"] = np.asarray(store.gt_moving, np.uint8)
    np.savez_compressed(folder / "gt.npz", **gt)
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "source": {"bag": str(Path(store.bag).resolve()), "files": bag_fingerprint(store.bag)},
        "request": request,
        "preprocess": params,
        **store_description(store),
        "grey": grey,
        "sha256": {name: file_sha256(folder / name) for name in _FILES},
    }
    (folder / DRIVE_FILE).write_text(json.dumps(meta, indent=1))
    return sum(f.stat().st_size for f in folder.iterdir())


def _read_meta(path: Path) -> dict[str, Any]:
    try:
        meta = json.loads((path / DRIVE_FILE).read_text())
    except (OSError, ValueError) as err:
        raise BagError(
            f"cached drive {path}: cannot read {DRIVE_FILE} ({err}); rebuild it with dualdepth gpu-cache"
        ) from None
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise BagError(
            f"cached drive {path} is format {meta.get('format')} version {meta.get('version')}, this package reads "
            f"{FORMAT} version {VERSION}: rebuild it with dualdepth gpu-cache"
        )
    return meta


def _check_request(path: Path, meta: dict[str, Any], params: dict[str, Any], request: dict[str, Any]) -> None:
    stored = _params(meta["preprocess"])
    if stored != params:
        raise BagError(
            f"cached drive {path} holds frames prepared as {_describe_params(stored)}; this run needs "
            f"{_describe_params(params)}: rebuild the cache for it (dualdepth gpu-cache --config …) or use the bag"
        )
    topics = meta["topics"]
    for role, key in (("image", "image"), ("camera_info", "camera_info")):
        if request.get(role) and request[role] != topics[key]:
            raise BagError(
                f"cached drive {path} holds {topics[key]} as its {role} topic, not {request[role]}: "
                "rebuild the cache with that topic or use the bag"
            )
    for role in ("gt_depth", "gt_pose", "gt_moving_mask"):
        if request.get(role) and request[role] != topics[role]:
            held = topics[role] or "none"
            raise BagError(
                f"cached drive {path} holds {role.replace('_', ' ')} {held}, not {request[role]}: "
                "rebuild the cache with that topic or use the bag"
            )
    if bool(request.get("rectify_gt")) != bool(meta["request"].get("rectify_gt")):
        raise BagError(f"cached drive {path} was made with rectify_gt {meta['request'].get('rectify_gt')}: rebuild it")


def load_cached_drive(path: str | os.PathLike, preprocessor: Preprocessor, request: dict[str, Any]) -> Any:
    """The :class:`~.frames.FrameStore` of a cached drive, holding what ``request`` asks for (in memory).

    Parameters
    ----------
    path : a drive folder (:func:`is_cached_drive`).
    preprocessor : the run's preprocessing; must equal the one the drive was made with.
    request : the topics asked for (as :func:`~.frames.load_frames` takes them); a ground truth not
        asked for is left out (None), as it is when decoding the bag.

    Raises
    ------
    BagError : another preprocessing or topic than the drive holds; a damaged folder (one line, with
        how to rebuild it).
    """
    from .frames import store_from_saved

    path = Path(path)
    meta = _read_meta(path)
    _check_request(path, meta, _params(preprocessor), request)
    for name, digest in meta["sha256"].items():
        if not (path / name).is_file() or file_sha256(path / name) != digest:
            raise BagError(f"cached drive {path}: {name} is missing or damaged (SHA-256 differs): rebuild the cache")
    n, h, w = int(meta["n"]), int(meta["height"]), int(meta["width"])
    sh, sw = int(meta["source_height"]), int(meta["source_width"])
    try:
        png = np.frombuffer((path / "rgb.png").read_bytes(), np.uint8)
        image = cv2.imdecode(png, cv2.IMREAD_UNCHANGED)
        if image is None or image.shape[:2] != (n * h, w):
            raise ValueError(f"rgb.png is not {w}x{n * h}")
        rgb = np.repeat(image.reshape(n, h, w, 1), 3, axis=3) if meta["grey"] else image.reshape(n, h, w, 3)
        with np.load(path / "arrays.npz") as a:
            arrays = {k: a[k] for k in a.files}
        with np.load(path / "gt.npz") as g:
            gt_arrays = {k: g[k] for k in g.files}
        topics = dict(meta["topics"])
        gt_depth = gt_native = gt_moving = gt_pose = None
        if request.get("gt_depth") and meta["has_gt_depth"]:
            gt_depth = _dense(gt_arrays, "depth", (n, h, w))
            gt_native = _dense(gt_arrays, "native", (n, sh, sw))
        else:
            topics["gt_depth"] = None
        if request.get("gt_moving_mask") and meta["has_gt_moving"]:
            gt_moving = gt_arrays["moving"].reshape(n, h, w)
        else:
            topics["gt_moving_mask"] = None
        if request.get("gt_pose") and meta["has_gt_pose"]:
            gt_pose = arrays["gt_pose"].reshape(n, 4, 4)
        else:
            topics["gt_pose"] = None
    except (OSError, ValueError, KeyError) as err:
        raise BagError(f"cached drive {path} is damaged ({err}): rebuild it with dualdepth gpu-cache") from None
    return store_from_saved(
        path,
        meta,
        topics,
        rgb,
        arrays,
        gt_depth=gt_depth,
        gt_moving=gt_moving,
        gt_pose=gt_pose,
        gt_depth_native=gt_native,
    )


def cached_gt_topics(path: str | os.PathLike, given: dict[str, str | None], require_depth: bool = False) -> GtTopics:
    """:func:`~.bags.resolve_gt_topics` for a cached drive: the ground truth it holds.

    ``given`` (role → topic or None): a topic given must be the one the drive holds.
    """
    path = Path(path)
    topics = _read_meta(path)["topics"]
    out: dict[str, str | None] = {}
    notes: dict[str, str] = {}
    for role in ("gt_depth", "gt_pose", "gt_moving_mask"):
        held = topics.get(role)
        if given.get(role) and given[role] != held:
            raise BagError(
                f"cached drive {path} holds {role.replace('_', ' ')} {held or 'none'}, not {given[role]}: "
                "rebuild the cache with that topic or use the bag"
            )
        out[role] = held
        notes[role] = "from the gpu cache" if held else "none in the gpu cache (the bag had none)"
    if require_depth and out["gt_depth"] is None:
        raise BagError(f"cached drive {path} holds no ground-truth depth")
    return GtTopics(out["gt_depth"], out["gt_pose"], out["gt_moving_mask"], notes)


# ---------------------------------------------------------------------------------------
# The cache folder
# ---------------------------------------------------------------------------------------
def _drive_name(bag: Path) -> str:
    """``../shared/data/kitti_raw_0009/bag`` → ``kitti_raw_0009``; ``x/drive.mcap`` → ``drive``."""
    p = Path(os.path.abspath(bag))
    name = p.stem if p.is_file() else p.name
    if name in ("bag", "") and p.parent.name:
        name = p.parent.name
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def _config_ref(path: str) -> str:
    """A config as the manifest records it: relative to the repository when inside it, else absolute."""
    p = Path(path).resolve()
    try:
        return str(p.relative_to(REPO))
    except ValueError:
        return str(p)


def read_manifest(cache: str | os.PathLike) -> dict[str, Any]:
    """The manifest of a cache folder, with each drive's folder as an absolute path (``"dir"``).

    Raises
    ------
    DualDepthError : not a cache folder, or a drive it lists is missing (one line: how to build it).
    """
    cache = Path(cache)
    if not _is_cache(cache):
        raise DualDepthError(
            f"{cache} is not a gpu-cache folder (no {MANIFEST}); build it with `make gpu-cache` "
            "(dualdepth gpu-cache --data ../shared/data --out runs/gpu_cache)"
        )
    manifest = json.loads((cache / MANIFEST).read_text())
    for role in ROLES:
        for drive in manifest["drives"][role]:
            drive["dir"] = str((cache / drive["path"]).resolve())
            if not is_cached_drive(drive["dir"]):
                raise DualDepthError(f"{cache}: the drive {drive['path']} is missing; rebuild it with make gpu-cache")
    return manifest


def build_cache(
    out: str | os.PathLike,
    train_bags: Sequence[str | os.PathLike],
    score_bags: Sequence[str | os.PathLike],
    configs: Sequence[str] | None = None,
    *,
    overwrite: bool = False,
    max_mib: float = MAX_MIB,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Decode the drives (through the frame cache) and write the cache folder ``out``; returns its manifest.

    Parameters
    ----------
    out : the folder to write (replaced only with ``overwrite`` and when it is a gpu-cache folder).
    train_bags, score_bags : bags (rosbag2 folders or files) of each role.
    configs : training configs that give the input size and the data section (default
        :func:`default_configs`).
    max_mib : refuse (write nothing) when the folder would be larger.

    Raises
    ------
    DualDepthError : no drives, two drives of one name, an unusable bag, or over ``max_mib``.
    """
    from ..config import load_config
    from .dataset import DataConfig
    from .frames import load_frames

    configs = list(configs or default_configs())
    cfg = load_config(*configs)
    data = DataConfig.coerce(cfg.extra.get("data"))
    width, height = int(cfg.input.width), int(cfg.input.height)
    pre = data.preprocessor(width, height)
    if not train_bags and not score_bags:
        raise DualDepthError("no drives given: name training drives and a scoring drive")
    bags = {"train": [Path(b) for b in train_bags], "score": [Path(b) for b in score_bags]}
    names = [_drive_name(b) for role in ROLES for b in bags[role]]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise DualDepthError(f"two drives would be called {dup[0]}; give bags of different names")
    check_output_dir(out, overwrite, GPU_CACHE)
    check_separate(out, {f"bag {b}": b for role in ROLES for b in bags[role]})
    tmp = temporary_sibling(out)
    try:
        manifest: dict[str, Any] = {
            "format": FORMAT,
            "version": VERSION,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "configs": [_config_ref(c) for c in configs],
            "input": {"width": width, "height": height, "resize_mode": data.resize_mode},
            "preprocess": pre.params(),
            "drives": {"train": [], "score": []},
        }
        for role in ROLES:
            for bag in bags[role]:
                topics = resolve_gt_topics(
                    bag,
                    image_topic=data.image_topic,
                    preferred={
                        "gt_depth": data.gt_depth_topic,
                        "gt_pose": data.gt_pose_topic,
                        "gt_moving_mask": data.gt_moving_mask_topic,
                    },
                )
                request = {
                    "image": data.image_topic,
                    "camera_info": data.camera_info_topic,
                    "gt_depth": topics.gt_depth,
                    "gt_pose": topics.gt_pose,
                    "gt_moving_mask": topics.gt_moving_mask,
                    "rectify_gt": bool(data.rectify_gt),
                }
                store = load_frames(
                    bag,
                    pre,
                    image_topic=request["image"],
                    camera_info_topic=request["camera_info"],
                    gt_depth_topic=request["gt_depth"],
                    gt_pose_topic=request["gt_pose"],
                    gt_moving_mask_topic=request["gt_moving_mask"],
                    rectify_gt=request["rectify_gt"],
                    cache_dir=data.cache_path(),
                )
                name = _drive_name(bag)
                size = write_drive(store, tmp / role / name, request, pre.params())
                source_readme = Path(os.path.abspath(bag)).parent / "README.md"
                if Path(bag).name == "bag" and source_readme.is_file():  # ../shared/data/<drive>/: its licence
                    shutil.copyfile(source_readme, tmp / role / name / "SOURCE_README.md")
                    size += source_readme.stat().st_size
                entry = {
                    "name": name,
                    "path": f"{role}/{name}",
                    "bag": str(bag),
                    "frames": len(store),
                    "bytes": size,
                    "gt_depth": store.topics.gt_depth,
                    "gt_pose": store.topics.gt_pose,
                    "source_size": [store.source_width, store.source_height],
                }
                manifest["drives"][role].append(entry)
                held = [f"GT depth on its {store.source_width}x{store.source_height} grid"] * (
                    store.gt_depth is not None
                )
                held += ["GT pose"] * (store.gt_pose is not None)
                log(
                    f"{role:>5} {name}: {len(store)} frames at {width}x{height}, {', '.join(held) or 'no GT'}: "
                    f"{size / 2**20:.2f} MiB"
                )
        total = sum(d["bytes"] for role in ROLES for d in manifest["drives"][role])
        manifest["bytes"] = total
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
        total = sum(f.stat().st_size for f in tmp.rglob("*") if f.is_file())
        if total > max_mib * 2**20:
            raise DualDepthError(
                f"the cache would be {total / 2**20:.1f} MiB, over --max-mib {max_mib:g}: give fewer or shorter drives"
            )
        replace_dir(tmp, out, overwrite, GPU_CACHE)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    manifest["bytes_total"] = total
    return manifest


# ---------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data",
        metavar="DIR",
        help="folder of real drives, each DIR/<name>/bag (../shared/data); --train/--score name them",
    )
    p.add_argument("--train", nargs="+", default=list(DEFAULT_TRAIN), metavar="NAME", help="training drives in --data")
    p.add_argument("--score", nargs="+", default=list(DEFAULT_SCORE), metavar="NAME", help="scoring drives in --data")
    p.add_argument("--train-bag", action="append", default=[], metavar="BAG", help="a training bag (instead of --data)")
    p.add_argument("--score-bag", action="append", default=[], metavar="BAG", help="a scoring bag (instead of --data)")
    p.add_argument(
        "--config",
        action="append",
        metavar="YAML",
        help="training configs: input size and data section (default: config/train.yaml + config/default_model.yaml)",
    )
    p.add_argument("--out", required=True, help="the cache folder to write, e.g. runs/gpu_cache")
    p.add_argument("--overwrite", action="store_true", help="replace an existing gpu-cache folder")
    p.add_argument("--max-mib", type=float, default=MAX_MIB, help=f"largest folder written (default {MAX_MIB:g})")


def _data_bag(data: Path, name: str) -> Path:
    drive = data / name
    for cand in (drive / "bag", drive):
        if (cand / "metadata.yaml").exists() or cand.is_file():
            return cand
    raise DualDepthError(f"--data {data}: no drive {name} (looked for {drive / 'bag'}); see its README or --train-bag")


def run(args: argparse.Namespace) -> int:
    if args.train_bag or args.score_bag:
        train, score = [Path(b) for b in args.train_bag], [Path(b) for b in args.score_bag]
    elif args.data:
        data = Path(args.data)
        if not data.is_dir():
            raise DualDepthError(f"--data {data} is not a folder (the real drives live in ../shared/data)")
        train = [_data_bag(data, n) for n in args.train]
        score = [_data_bag(data, n) for n in args.score]
    else:
        raise DualDepthError("give --data DIR (the real drives) or --train-bag/--score-bag")
    for bag in [*train, *score]:
        if not bag.exists():
            raise DualDepthError(f"bag {bag} does not exist")
    manifest = build_cache(args.out, train, score, args.config, overwrite=args.overwrite, max_mib=args.max_mib)
    print(
        f"wrote {args.out}: {manifest['bytes_total'] / 2**20:.2f} MiB at "
        f"{manifest['input']['width']}x{manifest['input']['height']} ({manifest['input']['resize_mode']}); "
        f"train with --bag {Path(args.out) / 'train'}, score with --bag {Path(args.out) / 'score'}/<drive>"
    )
    return 0
