"""Old import path of the checkpoint layer (now `promptseg.checkpoint`, below train/ and inference/)."""
from ..checkpoint import *  # noqa: F401,F403
from ..checkpoint import __all__  # noqa: F401
