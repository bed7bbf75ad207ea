"""sensor_msgs/Image <-> numpy for the encodings the node accepts."""
from __future__ import annotations

import numpy as np
from sensor_msgs.msg import Image

CHANNELS = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1}


def to_image_msg(rgb: np.ndarray, encoding: str = "rgb8") -> Image:
    """Pack an RGB uint8 (H, W, 3) array as an Image in `encoding` (header left for the caller)."""
    if encoding not in CHANNELS:
        raise ValueError(f"unsupported encoding {encoding!r}: use one of {sorted(CHANNELS)}")
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an RGB uint8 array (H, W, 3), got {rgb.dtype} {rgb.shape}")
    if encoding.startswith("bgr"):
        pixels = rgb[..., ::-1]
    elif encoding == "mono8":
        pixels = (rgb @ np.array([0.299, 0.587, 0.114])).round().astype(np.uint8)[..., None]
    else:
        pixels = rgb
    if CHANNELS[encoding] == 4:
        pixels = np.concatenate([pixels, np.full(rgb.shape[:2] + (1,), 255, np.uint8)], axis=2)
    msg = Image()
    msg.height, msg.width = rgb.shape[:2]
    msg.encoding = encoding
    msg.is_bigendian = 0
    msg.step = msg.width * CHANNELS[encoding]
    msg.data = np.ascontiguousarray(pixels).tobytes()
    return msg


class ImageDecodeError(ValueError):
    """An Image message that cannot be turned into pixels; the message says why."""


def from_image_msg(msg: Image) -> np.ndarray:
    """Unpack an Image into an RGB uint8 (H, W, 3) array, rejecting malformed messages with a reason."""
    channels = CHANNELS.get(msg.encoding)
    if channels is None:
        raise ImageDecodeError(f"unsupported encoding {msg.encoding!r}; supported: {sorted(CHANNELS)}")
    if msg.height == 0 or msg.width == 0:
        raise ImageDecodeError(f"empty image ({msg.width}x{msg.height})")
    row = msg.width * channels
    if msg.step < row:
        raise ImageDecodeError(f"step {msg.step} is shorter than a row of {msg.width} {msg.encoding} pixels ({row})")
    if len(msg.data) < msg.step * msg.height:
        raise ImageDecodeError(f"truncated data: {len(msg.data)} bytes for step {msg.step} x {msg.height} rows")
    buf = np.frombuffer(msg.data, dtype=np.uint8, count=msg.step * msg.height).reshape(msg.height, msg.step)
    pixels = buf[:, :row].reshape(msg.height, msg.width, channels)
    if msg.encoding == "mono8":
        return np.repeat(pixels, 3, axis=2)
    rgb = pixels[..., :3]
    return np.ascontiguousarray(rgb[..., ::-1] if msg.encoding.startswith("bgr") else rgb)


def from_compressed_msg(msg) -> np.ndarray:
    """Unpack a sensor_msgs/CompressedImage (JPEG or PNG, any format string naming one) into RGB uint8."""
    import cv2

    fmt = msg.format.lower()
    if fmt and not any(name in fmt for name in ("jpeg", "jpg", "png")):
        raise ImageDecodeError(f"unsupported compressed format {msg.format!r}; supported: jpeg, png")
    if len(msg.data) == 0:
        raise ImageDecodeError("empty compressed image")
    pixels = cv2.imdecode(np.frombuffer(bytes(msg.data), dtype=np.uint8), cv2.IMREAD_COLOR)
    if pixels is None:
        raise ImageDecodeError(f"corrupt {msg.format or 'compressed'} data ({len(msg.data)} bytes) does not decode")
    return np.ascontiguousarray(pixels[..., ::-1])


def to_compressed_msg(rgb: np.ndarray, fmt: str = "jpeg", quality: int = 90):
    """Pack an RGB uint8 array as a sensor_msgs/CompressedImage (header left for the caller)."""
    import cv2
    from sensor_msgs.msg import CompressedImage

    ext = {"jpeg": ".jpg", "png": ".png"}.get(fmt)
    if ext is None:
        raise ValueError(f"unsupported compressed format {fmt!r}: use jpeg or png")
    params = [cv2.IMWRITE_JPEG_QUALITY, quality] if fmt == "jpeg" else []
    ok, buf = cv2.imencode(ext, np.ascontiguousarray(rgb[..., ::-1]), params)
    if not ok:
        raise ValueError(f"cannot encode a {rgb.shape} image as {fmt}")
    return CompressedImage(format=fmt, data=buf.tobytes())
