"""Can this machine's NVIDIA driver run the CUDA build of torch that is here, and if not, which
image variant can it run?

A torch built for a newer CUDA than the driver supports sees no GPU at all ("The NVIDIA driver on
your system is too old"), which rented machines with a driver a year old hit with the CUDA 13
image.  The CUDA a job needs comes from the installed torch (its ``torch/version.py``, read
without importing torch) or, where torch is not a CUDA build, from the image variant the
Dockerfile wrote into ``GRPO_BOOTSTRAP_IMAGE_VARIANT``.  Drivers run every CUDA release of their
major version from that major's first driver on (CUDA minor-version compatibility), without
PTX JIT compilation for the newer minor; that is the rule applied here.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel

from bootstrap.detect.gpu import GPUReport

# The oldest Linux driver of each CUDA major version (NVIDIA's CUDA compatibility guide): from
# it on, every minor release of that major runs through minor-version compatibility.
MIN_DRIVER = {11: "450.80.02", 12: "525.60.13", 13: "580.65.06"}


class ImageVariant(BaseModel, frozen=True):
    """One build of the image (images/README.md): its name, the CUDA its torch is built for and
    the CUDA base image it is built on (the Dockerfile's CUDA_VERSION)."""

    name: str
    cuda: str
    base_cuda: str

    @property
    def build_command(self) -> str:
        return (
            f"docker build -t grpo-bootstrap:{self.name} --build-arg VARIANT={self.name} "
            f"--build-arg CUDA_VERSION={self.base_cuda} ."
        )


# Newest first: the advice names the newest variant a driver runs.
IMAGE_VARIANTS = (
    ImageVariant(name="cu130", cuda="13.0", base_cuda="13.0.2"),
    ImageVariant(name="cu128", cuda="12.8", base_cuda="12.8.1"),
)
_TORCH_CUDA = re.compile(r"""^cuda\b[^=\n]*=\s*['"]([0-9.]+)['"]""", re.MULTILINE)


class CudaFit(BaseModel, frozen=True):
    """The CUDA the job needs against the CUDA the driver runs, and what to do on a mismatch."""

    needs: str | None  # "13.0": the CUDA torch here is built for
    needs_from: Literal["torch", "image"] | None  # torch/version.py, or the image's variable
    image_variant: str | None  # GRPO_BOOTSTRAP_IMAGE_VARIANT, set in the image only
    driver_version: str | None
    driver_cuda: str | None  # the newest CUDA the driver supports
    fits: bool | None  # None when the need or the driver is unknown (no CUDA torch, no GPU)
    advice: str | None  # on a mismatch: the variant to use; on a minor-version fit: its limits


def read_torch_cuda(version_file: Path) -> str | None:
    """The CUDA version in a torch/version.py ("12.8"); None for a CPU build or no file."""
    try:
        match = _TORCH_CUDA.search(version_file.read_text(encoding="utf-8"))
    except OSError:
        return None
    return match.group(1) if match else None


def installed_torch_cuda() -> str | None:
    """The CUDA the installed torch is built for, from its version.py; torch is not imported
    (that takes seconds and initialises CUDA)."""
    spec = importlib.util.find_spec("torch")
    if spec is None or spec.origin is None:
        return None
    return read_torch_cuda(Path(spec.origin).parent / "version.py")


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text))


def _variant(name: str | None) -> ImageVariant | None:
    return next((v for v in IMAGE_VARIANTS if v.name == name), None)


def _floor(cuda: str) -> str | None:
    return MIN_DRIVER.get(_version(cuda)[0])


def _runs(cuda: str, driver: str) -> bool:
    floor = _floor(cuda)
    return floor is not None and _version(driver) >= _version(floor)


def _advice_for_old_driver(what: str, needs: str, driver: str, driver_cuda: str | None) -> str:
    supports = f" (CUDA {driver_cuda})" if driver_cuda else ""
    head = (
        f"{what} is built for CUDA {needs}, which NVIDIA driver {driver}{supports} cannot run: "
        "torch will see no GPU (a datacenter GPU with CUDA's forward-compatibility package may "
        "still run it)."
    )
    fitting = next((v for v in IMAGE_VARIANTS if _runs(v.cuda, driver)), None)
    if fitting is None:
        options = ", ".join(f"{_floor(v.cuda)} for {v.name}" for v in reversed(IMAGE_VARIANTS))
        return f"{head} No image variant runs on this driver: update it ({options})."
    return (
        f"{head} Use the {fitting.name} image, which runs on this driver: "
        f"{fitting.build_command} (images/README.md); without Docker, "
        f"scripts/start.sh --variant {fitting.name}. Or update the driver to {_floor(needs)} "
        "or newer."
    )


def check_cuda_fit(
    gpus: GPUReport, *, torch_cuda: str | None, image_variant: str | None
) -> CudaFit:
    """Whether the driver behind `gpus` runs `torch_cuda`, or else the CUDA of the image
    variant named by `image_variant`; with the variant to use when it does not."""
    variant = _variant(image_variant)
    needs_from: Literal["torch", "image"] | None = None
    needs = what = None
    if torch_cuda is not None:
        needs, needs_from = torch_cuda, "torch"
        what = f"torch in the {image_variant} image" if image_variant else "the installed torch"
    elif variant is not None:
        needs, needs_from, what = variant.cuda, "image", f"the {variant.name} image"
    driver, driver_cuda = gpus.driver_version, gpus.cuda_version
    fits: bool | None = None
    advice: str | None = None
    if needs is not None and what is not None and driver is not None and _floor(needs):
        fits = _runs(needs, driver)
        if not fits:
            advice = _advice_for_old_driver(what, needs, driver, driver_cuda)
        elif driver_cuda is not None and _version(driver_cuda) < _version(needs):
            advice = (
                f"runs through CUDA minor-version compatibility: driver {driver} supports CUDA "
                f"{driver_cuda}, torch is built for {needs}; kernels that need PTX JIT "
                "compilation for the newer CUDA can fail (a driver of that CUDA lifts this)"
            )
    return CudaFit(
        needs=needs,
        needs_from=needs_from,
        image_variant=image_variant,
        driver_version=driver,
        driver_cuda=driver_cuda,
        fits=fits,
        advice=advice,
    )
