"""The control image a ControlNet is conditioned on: Canny edges of a photo, or a map the user prepared."""

from __future__ import annotations

from typing import TYPE_CHECKING

from imagegen.errors import InvalidRequest
from imagegen.inputs import load_image
from imagegen.request import GenerationRequest

if TYPE_CHECKING:
    from PIL import Image


def control_image(request: GenerationRequest) -> Image.Image:
    """The resolved request's control image, as the reference tutorial prepares it (the pipeline resizes it to the
    output).

    The reference tutorial runs OpenCV's Canny on the RGB array itself: for a colour image OpenCV takes, per pixel, the
    channel with the strongest gradient, which finds edges between colours of equal brightness too.
    """
    if request.control_image is None:
        raise InvalidRequest("this request has no control image")
    image = load_image(request.control_image, what="control image")
    if request.control_is_edges:
        return image
    return canny(image, request.canny_low, request.canny_high)


def canny(image: Image.Image, low: int, high: int) -> Image.Image:
    import numpy as np
    from PIL import Image

    try:
        import cv2
    except ImportError:
        raise InvalidRequest("Canny edges need OpenCV: pip install opencv-python-headless") from None
    edges = cv2.Canny(np.array(image), low, high)[:, :, None]
    return Image.fromarray(np.concatenate([edges, edges, edges], axis=2))
