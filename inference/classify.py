"""DeepLung's classification stage: nodule crops -> DPN features -> gradient boosting -> malignancy.

Inputs are the preprocessed volume (uint8, 1 mm voxels, 170 outside the lungs, docs/architecture.md, "Flow")
and candidate centres in its voxel coordinates (z, y, x). For each candidate a 32^3 crop is taken
(padded with 170); the GBM sees, as in the paper, the network features, the central 17^3 pixels
and the detector's diameter. Without a feature network (``features_fn=None``) it uses pixels and
diameter only, so the stage works before any network is trained.

Also here: a small threshold + connected-component segmentation for volume and long axis.
"""
from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import joblib
import numpy as np
import sklearn
from scipy import ndimage
from sklearn.ensemble import GradientBoostingClassifier

from inference.characterize.measure import sphere_volume_mm3
from inference.hashing import file_sha256
from inference.tempfiles import temporary_beside

if TYPE_CHECKING:
    from torch import nn

CROP_SIZE = 32
CENTRE_SIZE = 17  # the central cube of pixels the GBM sees directly (DeepLung)
PAD_VALUE = 170  # the preprocessing's "not lung" value
FORMAT = "dicomnode-malignancy-gbm"
FORMAT_VERSION = 1

FeaturesFn = Callable[[np.ndarray], np.ndarray]  # (N,1,32,32,32) float32 -> (N, F)


# ---------------------------------------------------------------------------------------------
# Crops and GBM inputs
# ---------------------------------------------------------------------------------------------


def extract_crop(
    image: np.ndarray, centre_zyx: np.ndarray | Sequence[float], size: int = CROP_SIZE, pad_value: int = PAD_VALUE
) -> np.ndarray:
    """A ``size``^3 cube with the (rounded) centre at index size // 2, padded where it leaves the image."""
    if image.ndim != 3:
        raise ValueError(f"expected a 3D image, got shape {image.shape}")
    start = np.round(np.asarray(centre_zyx, dtype=np.float64)).astype(int) - size // 2
    crop = np.full((size, size, size), pad_value, dtype=image.dtype)
    src_lo = np.maximum(start, 0)
    src_hi = np.minimum(start + size, image.shape)
    if np.any(src_hi <= src_lo):
        return crop  # entirely outside: all padding
    dst_lo = src_lo - start
    dst_hi = dst_lo + (src_hi - src_lo)
    crop[tuple(slice(a, b) for a, b in zip(dst_lo, dst_hi))] = image[
        tuple(slice(a, b) for a, b in zip(src_lo, src_hi))
    ]
    return crop


def extract_crops(
    image: np.ndarray, centres_zyx: np.ndarray | Sequence[Sequence[float]], size: int = CROP_SIZE
) -> np.ndarray:
    """(N, size, size, size) crops, same dtype as the image."""
    centres = np.asarray(centres_zyx, dtype=np.float64).reshape(-1, 3)
    if len(centres) == 0:
        return np.zeros((0, size, size, size), dtype=image.dtype)
    return np.stack([extract_crop(image, c, size) for c in centres])


def normalise_crops(crops: np.ndarray) -> np.ndarray:
    """uint8 crops (N, D, H, W) -> network input (N, 1, D, H, W) float32, (v - 128) / 128."""
    return ((crops.astype(np.float32) - 128.0) / 128.0)[:, None]


def central_pixels(crops: np.ndarray, size: int = CENTRE_SIZE) -> np.ndarray:
    """The central ``size``^3 pixels of each crop, flattened and normalised like the network input."""
    full = crops.shape[1]
    lo = full // 2 - size // 2  # crop centre sits at index full // 2
    cube = crops[:, lo : lo + size, lo : lo + size, lo : lo + size]
    return ((cube.astype(np.float32) - 128.0) / 128.0).reshape(len(crops), -1)


def gbm_inputs(crops: np.ndarray, diameters_mm: np.ndarray | Sequence[float], features: np.ndarray | None) -> np.ndarray:
    """Rows of [network features | central 17^3 pixels | diameter]."""
    crops = np.asarray(crops)
    if crops.ndim != 4 or crops.shape[1:] != (CROP_SIZE,) * 3:
        raise ValueError(f"expected (N, {CROP_SIZE}, {CROP_SIZE}, {CROP_SIZE}) crops, got {crops.shape}")
    diam = np.asarray(diameters_mm, dtype=np.float32).reshape(-1, 1)
    if len(diam) != len(crops):
        raise ValueError(f"{len(crops)} crops but {len(diam)} diameters")
    parts = [central_pixels(crops), diam]
    if features is not None:
        features = np.asarray(features, dtype=np.float32).reshape(len(crops), -1)
        parts.insert(0, features)
    return np.concatenate(parts, axis=1)


def torch_features_fn(net: nn.Module, device: str = "cpu", batch_size: int = 32) -> FeaturesFn:
    """Wrap a feature network (e.g. ``DPNClassifierNet``) as an engine-like ``features_fn``."""
    import torch

    net = net.to(device).eval()

    def run(batch: np.ndarray) -> np.ndarray:
        outs = []
        with torch.inference_mode():
            for i in range(0, len(batch), batch_size):
                x = torch.from_numpy(np.ascontiguousarray(batch[i : i + batch_size])).to(device)
                outs.append(net(x).float().cpu().numpy())
        return np.concatenate(outs) if outs else np.zeros((0, getattr(net, "num_features", 0)), np.float32)

    return run


# ---------------------------------------------------------------------------------------------
# The classifier
# ---------------------------------------------------------------------------------------------


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _major_minor(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split(".")[:2] if p.isdigit())


class MalignancyClassifier:
    """Gradient boosting on [features | central pixels | diameter] -> probability of malignancy.

    ``features_fn`` is not saved (it is an engine); give it again to ``load``. ``features_id``
    (e.g. the feature network's weights SHA-256) is saved so a mismatched network is refused.
    """

    def __init__(
        self,
        features_fn: FeaturesFn | None = None,
        features_id: str | None = None,
        n_estimators: int = 200,
        learning_rate: float = 0.1,
        random_state: int = 0,
    ) -> None:
        self.features_fn = features_fn
        self.features_id = features_id
        self.uses_features = features_fn is not None
        self.n_features_net: int | None = None
        # Exact-split boosting with sqrt(D) features per split: with ~5000 mostly pixel inputs and
        # a few hundred nodules this fits in about a second, where histogram boosting spends
        # seconds binning every pixel column; feature subsampling also regularises.
        self.model = GradientBoostingClassifier(
            n_estimators=n_estimators,
            learning_rate=learning_rate,
            max_depth=3,
            subsample=0.8,
            max_features="sqrt",
            random_state=random_state,
        )
        self.fitted = False

    def _inputs(self, crops: np.ndarray, diameters_mm: np.ndarray | Sequence[float]) -> np.ndarray:
        crops = np.asarray(crops)
        features = None
        if self.uses_features:
            if self.features_fn is None:
                raise RuntimeError("this classifier was trained with network features: load it with features_fn")
            features = np.asarray(self.features_fn(normalise_crops(crops)), dtype=np.float32)
            if features.ndim != 2 or len(features) != len(crops):
                raise ValueError(f"features_fn returned shape {features.shape} for {len(crops)} crops")
            if self.n_features_net is not None and features.shape[1] != self.n_features_net:
                raise ValueError(f"features_fn gives {features.shape[1]} features, trained with {self.n_features_net}")
            self.n_features_net = features.shape[1]
        return gbm_inputs(crops, diameters_mm, features)

    def fit(self, crops: np.ndarray, diameters_mm: np.ndarray | Sequence[float], labels: np.ndarray | Sequence[int]) -> "MalignancyClassifier":
        """crops: (N, 32, 32, 32) uint8; labels: 1 malignant, 0 benign."""
        y = np.asarray(labels).astype(int).reshape(-1)
        if set(np.unique(y)) != {0, 1}:
            raise ValueError("labels must contain both classes 0 (benign) and 1 (malignant)")
        self.n_features_net = None
        self.model.fit(self._inputs(crops, diameters_mm), y)
        self.fitted = True
        return self

    def predict_proba(self, crops: np.ndarray, diameters_mm: np.ndarray | Sequence[float]) -> np.ndarray:
        """(N,) probability of malignancy."""
        if not self.fitted:
            raise RuntimeError("classifier is not fitted")
        if len(crops) == 0:
            return np.zeros(0)
        return self.model.predict_proba(self._inputs(crops, diameters_mm))[:, 1]

    def predict_image(
        self, image: np.ndarray, centres_zyx: np.ndarray | Sequence[Sequence[float]], diameters_mm: Sequence[float]
    ) -> np.ndarray:
        """Malignancy of candidates in a preprocessed uint8 volume (voxel centres z, y, x)."""
        return self.predict_proba(extract_crops(image, centres_zyx), diameters_mm)

    def save(self, path: str | Path) -> str:
        """Write the model and ``<path>.sha256``; returns the file's SHA-256."""
        if not self.fitted:
            raise RuntimeError("refusing to save an unfitted classifier")
        path = Path(path)
        payload = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "sklearn_version": sklearn.__version__,
            "uses_features": self.uses_features,
            "features_id": self.features_id,
            "n_features_net": self.n_features_net,
            "model": self.model,
        }
        buf = io.BytesIO()
        joblib.dump(payload, buf)
        data = buf.getvalue()
        digest = hashlib.sha256(data).hexdigest()
        tmp = temporary_beside(path)
        tmp.write_bytes(data)
        tmp.replace(path)
        _sidecar(path).write_text(f"{digest}  {path.name}\n")
        return digest

    @classmethod
    def load(
        cls,
        path: str | Path,
        features_fn: FeaturesFn | None = None,
        expected_sha256: str | None = None,
        features_id: str | None = None,
    ) -> "MalignancyClassifier":
        """Verify the SHA-256 (given, else the sidecar) before unpickling, then the versions."""
        path = Path(path)
        if expected_sha256 is None:
            side = _sidecar(path)
            if not side.is_file():
                raise ValueError(f"{path}: no expected SHA-256 given and no {side.name}; refusing to unpickle")
            expected_sha256 = side.read_text().split()[0]
        actual = file_sha256(path)
        if actual != expected_sha256.lower():
            raise ValueError(f"{path}: SHA-256 {actual} does not match the expected {expected_sha256}")
        payload = joblib.load(path)
        if not isinstance(payload, dict) or payload.get("format") != FORMAT:
            raise ValueError(f"{path}: not a {FORMAT} file")
        if payload["format_version"] != FORMAT_VERSION:
            raise ValueError(f"{path}: format version {payload['format_version']}, this code reads {FORMAT_VERSION}")
        if _major_minor(payload["sklearn_version"]) != _major_minor(sklearn.__version__):
            raise ValueError(
                f"{path}: saved with scikit-learn {payload['sklearn_version']}, running {sklearn.__version__}; retrain"
            )
        if payload["uses_features"] and features_fn is None:
            raise ValueError(f"{path}: trained with network features; pass the feature network's features_fn")
        saved_id = payload["features_id"]
        if payload["uses_features"] and features_id is not None and saved_id is not None and features_id != saved_id:
            raise ValueError(f"{path}: trained with feature network {saved_id}, given {features_id}")
        obj = cls(features_fn=features_fn if payload["uses_features"] else None, features_id=saved_id)
        obj.model = payload["model"]
        obj.n_features_net = payload["n_features_net"]
        obj.fitted = True
        return obj


# ---------------------------------------------------------------------------------------------
# Size: volume and long axis from a small segmentation
# ---------------------------------------------------------------------------------------------

MIN_CONTRAST = 12  # uint8 levels (about 85 HU) between nodule and surroundings to trust a threshold


@dataclass(frozen=True)
class NoduleMask:
    mask: np.ndarray  # bool, in the box starting at ``origin`` (z, y, x voxels)
    origin: tuple[int, int, int]
    seed: tuple[int, int, int]  # voxel (image coordinates) the component grew from
    spacing_mm: tuple[float, float, float]

    @property
    def volume_mm3(self) -> float:
        return float(self.mask.sum()) * float(np.prod(self.spacing_mm))


def segment_nodule(
    image: np.ndarray,
    centre_zyx: Sequence[float],
    diameter_mm: float,
    spacing_mm: Sequence[float] = (1.0, 1.0, 1.0),
) -> NoduleMask | None:
    """Threshold halfway between nodule and background, keep the component holding the centre,
    clipped to a sphere of 1.5x the diameter. None when there is no usable contrast.

    Halfway is where a partial-volume edge sits, so the volume is unbiased for solid nodules;
    the sphere clip stops the component running into vessels or the chest wall.
    """
    if diameter_mm <= 0 or image.ndim != 3:
        return None
    sp = np.asarray(spacing_mm, dtype=np.float64)
    c = np.asarray(centre_zyx, dtype=np.float64)
    clip_r = 0.75 * diameter_mm  # radius of the 1.5x-diameter sphere
    half = np.ceil(clip_r / sp).astype(int) + 1
    ci = np.round(c).astype(int)
    lo = np.maximum(ci - half, 0)
    hi = np.minimum(ci + half + 1, image.shape)
    if np.any(hi <= lo):
        return None
    box = image[tuple(slice(a, b) for a, b in zip(lo, hi))].astype(np.float32)
    grids = np.meshgrid(*[(np.arange(a, b) - cc) * s for a, b, cc, s in zip(lo, hi, c, sp)], indexing="ij")
    r2 = sum(g**2 for g in grids)
    in_clip = r2 <= clip_r**2
    core = r2 <= max(diameter_mm / 4.0, float(sp.max())) ** 2
    if not core.any() or not in_clip.any():
        return None
    fg = float(np.median(box[core]))
    bg = float(np.percentile(box[in_clip], 10))
    if fg - bg < MIN_CONTRAST:
        return None
    mask = (box >= 0.5 * (fg + bg)) & in_clip
    # seed: the above-threshold core voxel nearest the centre, so a slightly off-centre
    # detection still finds its nodule while a well-centred one grows from the centre itself
    candidates = core & mask
    if not candidates.any():
        return None
    seed_local = np.unravel_index(np.argmin(np.where(candidates, r2, np.inf)), box.shape)
    labels, _ = ndimage.label(mask)
    component = labels == labels[seed_local]
    seed = (int(seed_local[0] + lo[0]), int(seed_local[1] + lo[1]), int(seed_local[2] + lo[2]))
    return NoduleMask(component, (int(lo[0]), int(lo[1]), int(lo[2])), seed, (float(sp[0]), float(sp[1]), float(sp[2])))


def estimate_volume_mm3(
    image_uint8: np.ndarray,
    centre_zyx: Sequence[float],
    diameter_mm: float,
    spacing_mm: Sequence[float] = (1.0, 1.0, 1.0),
) -> float:
    """Segmented volume; the sphere of the detector's diameter when segmentation fails."""
    seg = segment_nodule(image_uint8, centre_zyx, diameter_mm, spacing_mm)
    if seg is None or not seg.mask.any():
        return sphere_volume_mm3(diameter_mm)
    return seg.volume_mm3


def long_axis_diameter_mm(
    image_uint8: np.ndarray,
    centre_zyx: Sequence[float],
    diameter_mm: float,
    spacing_mm: Sequence[float] = (1.0, 1.0, 1.0),
) -> float:
    """Longest in-plane extent of the segmentation on the axial slice through its seed.

    Max distance between pixel centres: the halfway threshold puts the outermost kept pixel
    centres on the edge, so no pixel width is added. The detector's diameter when
    segmentation fails.
    """
    seg = segment_nodule(image_uint8, centre_zyx, diameter_mm, spacing_mm)
    if seg is None:
        return float(diameter_mm)
    plane = seg.mask[seg.seed[0] - seg.origin[0]]
    # the farthest pair lies on the outline, so only outline pixels need pairing
    outline = plane & ~ndimage.binary_erosion(plane)
    pts = np.argwhere(outline).astype(np.float64) * np.asarray(seg.spacing_mm[1:])
    if len(pts) == 0:
        return float(diameter_mm)
    d2 = ((pts[:, None, :] - pts[None, :, :]) ** 2).sum(axis=-1)
    return float(max(np.sqrt(d2.max()), np.mean(seg.spacing_mm[1:])))  # one pixel at least
