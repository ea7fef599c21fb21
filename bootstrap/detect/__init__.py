"""Where am I, what GPU do I have, what does the machine offer: all probes at once."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from pydantic import BaseModel

from bootstrap import constants as C
from bootstrap.config import JobConfig
from bootstrap.detect.cuda_fit import CudaFit, check_cuda_fit, installed_torch_cuda
from bootstrap.detect.gpu import GPUReport, detect_gpus
from bootstrap.detect.region import RegionReport, detect_region
from bootstrap.detect.system import SystemReport, detect_system


class Detection(BaseModel, frozen=True):
    region: RegionReport
    gpus: GPUReport
    system: SystemReport
    cuda: CudaFit


def detect(config: JobConfig) -> Detection:
    """Run region, GPU and system detection concurrently; region is bounded by its timeout."""
    with ThreadPoolExecutor(max_workers=3, thread_name_prefix="detect") as pool:
        region = pool.submit(
            detect_region,
            config.region,
            config.endpoints,
            offline=config.offline,
            timeout_s=config.detect_timeout_s,
        )
        gpus = pool.submit(detect_gpus, timeout_s=config.detect_timeout_s)
        system = pool.submit(detect_system, config.workspace)
        cuda = check_cuda_fit(
            gpus.result(), torch_cuda=installed_torch_cuda(), image_variant=C.image_variant()
        )
        return Detection(
            region=region.result(), gpus=gpus.result(), system=system.result(), cuda=cuda
        )
