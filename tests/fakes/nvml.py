"""A stand-in for the pynvml module (nvidia-ml-py), for machines without an NVIDIA driver.

Install it with ``monkeypatch.setitem(sys.modules, "pynvml", FakeNVML(cards, ...))``: the
detection code imports pynvml by name.  A card is (name, total memory in bytes, (major, minor)),
as NVML returns them.
"""

from __future__ import annotations

import types


class FakeNVML(types.ModuleType):
    """Stands in for the pynvml module (a third-party library) on machines without a driver."""

    class NVMLError(Exception):
        pass

    def __init__(
        self, cards, *, init_error=None, lost_gpu=False, hang=None, driver="580.159.04", cuda=13000
    ):
        super().__init__("pynvml")
        self.cards, self.init_error, self.lost_gpu, self.hang = cards, init_error, lost_gpu, hang
        self.driver, self.cuda = driver, cuda
        self.shutdowns = 0

    def nvmlInit(self):
        if self.hang is not None:
            self.hang.wait(10)
        if self.init_error:
            raise self.NVMLError(self.init_error)

    def nvmlShutdown(self):
        self.shutdowns += 1

    def nvmlDeviceGetCount(self):
        return len(self.cards)

    def nvmlDeviceGetHandleByIndex(self, index):
        return self.cards[index]

    def nvmlDeviceGetName(self, handle):
        if self.lost_gpu:
            raise self.NVMLError("GPU is lost")
        return handle[0]

    def nvmlDeviceGetMemoryInfo(self, handle):
        return types.SimpleNamespace(total=handle[1], free=handle[1], used=0)

    def nvmlDeviceGetCudaComputeCapability(self, handle):
        return handle[2]

    def nvmlSystemGetDriverVersion(self):
        return self.driver

    def nvmlSystemGetCudaDriverVersion_v2(self):
        return self.cuda  # 1000 * major + 10 * minor, as NVML encodes it
