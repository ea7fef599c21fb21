"""The job configuration: one typed object.  (Work in progress: sections are being added.)"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from bootstrap import constants as C


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


class EndpointsConfig(_Section):
    """Every endpoint the program talks to; a company proxy of the HF API is a mirror too."""

    hf_endpoint: str = C.DEFAULT_HF_ENDPOINT
    hf_mirror_endpoint: str = C.DEFAULT_HF_MIRROR_ENDPOINT
    modelscope_endpoint: str = C.DEFAULT_MODELSCOPE_ENDPOINT
    tencent_metadata_url: str = C.DEFAULT_TENCENT_METADATA_URL
    alibaba_metadata_url: str = C.DEFAULT_ALIBABA_METADATA_URL
    huawei_metadata_url: str = C.DEFAULT_HUAWEI_METADATA_URL
    aws_metadata_url: str = C.DEFAULT_AWS_METADATA_URL
    gcp_metadata_url: str = C.DEFAULT_GCP_METADATA_URL
    azure_metadata_url: str = C.DEFAULT_AZURE_METADATA_URL
