"""Data layer: Galaxy Zoo 2 loader, synthetic galaxies, synthetic chirp spectrograms (all through
HuggingFace ``datasets``).

Conventions: images are uint8 RGB ``[H, W, 3]``; masks are bool ``[H, W]`` in the final image grid;
boxes are ``(x0, y0, x1, y1)`` pixel coordinates in the final image (top-left origin, x right, y down,
upper ends exclusive). Batches from the loaders are ``{"pixel_values": Float[Tensor, "B C H W"], ...}``
once a model's ``preprocess`` is given.
"""

from vitmech.data._errors import CorruptDatasetError, IncompleteDatasetError
from vitmech.data._io import Box, mask_to_box
from vitmech.data._transforms import IMAGENET_MEAN, IMAGENET_STD, default_preprocess
from vitmech.data.chirps import (
    TARGETS,
    ChirpParams,
    ChirpSample,
    ChirpSplits,
    FigureStyle,
    TargetScaler,
    chirp_spectrogram,
    generate_chirp,
    generate_chirps,
    load_chirps,
    write_chirp_dataset,
)
from vitmech.data.galaxies import (
    FEATURES,
    GalaxyBatch,
    GalaxyParams,
    GalaxyStream,
    generate_galaxies,
    iter_galaxies,
    render_galaxies,
    unpack_masks,
    write_galaxy_dataset,
)
from vitmech.data.gz2 import (
    GZ2_CLASSES,
    GZ2_EXCLUDED,
    GZ2_HUB_ID,
    GZ2Report,
    GZ2Splits,
    find_unreadable_images,
    gz2_features,
    load_gz2,
    make_gz2_fixture,
    open_gz2,
)
from vitmech.errors import (
    DataError,
    EmptySplitError,
    InsufficientDataError,
    SchemaError,
    UnknownLabelError,
    UnreadableImageError,
)

__all__ = [
    "CorruptDatasetError",
    "DataError",
    "EmptySplitError",
    "IncompleteDatasetError",
    "InsufficientDataError",
    "SchemaError",
    "UnknownLabelError",
    "UnreadableImageError",
    "Box",
    "mask_to_box",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "default_preprocess",
    "TARGETS",
    "ChirpParams",
    "ChirpSample",
    "ChirpSplits",
    "FigureStyle",
    "TargetScaler",
    "chirp_spectrogram",
    "generate_chirp",
    "generate_chirps",
    "load_chirps",
    "write_chirp_dataset",
    "FEATURES",
    "GalaxyBatch",
    "GalaxyParams",
    "generate_galaxies",
    "iter_galaxies",
    "render_galaxies",
    "GalaxyStream",
    "unpack_masks",
    "write_galaxy_dataset",
    "GZ2_CLASSES",
    "GZ2_EXCLUDED",
    "GZ2_HUB_ID",
    "GZ2Report",
    "GZ2Splits",
    "find_unreadable_images",
    "gz2_features",
    "load_gz2",
    "make_gz2_fixture",
    "open_gz2",
]
