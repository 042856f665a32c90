"""Binary PGM/PPM bytes -> FP32 [3, 8, 8] (nearest-neighbour resize, values / maxval)."""

import numpy as np
import triton_python_backend_utils as pb_utils

SIZE = 8
MAX_SIDE = 4096


def _header(data: bytes) -> tuple[bytes, int, int, int, int]:
    """Magic, width, height, maxval and where the pixels start (comments after '#' skipped)."""
    fields: list[bytes] = []
    pos = 0
    while len(fields) < 4:
        while pos < len(data) and data[pos : pos + 1].isspace():
            pos += 1
        if data[pos : pos + 1] == b"#":
            while pos < len(data) and data[pos : pos + 1] not in (b"\n", b"\r"):
                pos += 1
            continue
        start = pos
        while pos < len(data) and not data[pos : pos + 1].isspace():
            pos += 1
        if start == pos:
            raise pb_utils.TritonModelException("truncated PGM/PPM header")
        fields.append(data[start:pos])
    magic = fields[0]
    if magic not in (b"P5", b"P6"):
        raise pb_utils.TritonModelException("expected a binary PGM (P5) or PPM (P6) image")
    try:
        width, height, maxval = (int(f) for f in fields[1:])
    except ValueError:
        raise pb_utils.TritonModelException("PGM/PPM header sizes must be integers") from None
    if not (0 < width <= MAX_SIDE and 0 < height <= MAX_SIDE and 0 < maxval < 256):
        raise pb_utils.TritonModelException("PGM/PPM: sides 1..4096 and an 8-bit maxval only")
    return magic, width, height, maxval, pos + 1  # one whitespace byte ends the header


def decode(data: bytes) -> np.ndarray:
    magic, width, height, maxval, start = _header(data)
    channels = 3 if magic == b"P6" else 1
    need = width * height * channels
    pixels = (
        np.frombuffer(data, dtype=np.uint8, count=need, offset=start) if len(data) - start >= need else None
    )
    if pixels is None:
        raise pb_utils.TritonModelException(f"image holds fewer than the {need} pixel bytes its header says")
    image = pixels.reshape(height, width, channels).astype(np.float32) / maxval
    rows = np.arange(SIZE) * height // SIZE
    cols = np.arange(SIZE) * width // SIZE
    small = image[rows][:, cols]
    if channels == 1:
        small = np.repeat(small, 3, axis=2)
    return np.ascontiguousarray(small.transpose(2, 0, 1))


class TritonPythonModel:
    def execute(self, requests):
        answers = []
        for request in requests:
            images = pb_utils.get_input_tensor_by_name(request, "IMAGE_BYTES").as_numpy()
            try:
                batch = np.stack([decode(bytes(row[0])) for row in images])
            except pb_utils.TritonModelException as exc:
                answers.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc))))
                continue
            answers.append(pb_utils.InferenceResponse([pb_utils.Tensor("PIXELS", batch)]))
        return answers
