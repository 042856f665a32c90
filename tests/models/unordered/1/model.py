import time

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    """Sleeps DELAY_MS milliseconds (the largest in the batch), then echoes DELAY_MS."""

    def execute(self, requests):
        delays = [pb_utils.get_input_tensor_by_name(r, "DELAY_MS").as_numpy() for r in requests]
        time.sleep(max(float(d.max()) for d in delays) / 1000.0)
        return [pb_utils.InferenceResponse([pb_utils.Tensor("OUT", d)]) for d in delays]
