"""Old import path of the run-config schema (now `promptseg.config`, below train/ and inference/)."""
from ..config import DEFAULTS, inference_settings, load_config, read_run_yaml, resolve_config  # noqa: F401
