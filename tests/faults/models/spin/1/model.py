import os
import time

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.ledger = os.path.join(args["model_repository"], "spins.log")

    def execute(self, requests):
        responses = []
        for request in requests:
            seconds = float(pb_utils.get_input_tensor_by_name(request, "SECONDS").as_numpy()[0])
            start = time.monotonic()
            while time.monotonic() - start < seconds and not request.is_cancelled():
                time.sleep(0.02)
            ran = time.monotonic() - start
            outcome = "cancelled" if request.is_cancelled() else "done"
            with open(self.ledger, "a") as ledger:
                ledger.write(f"{request.request_id()} {outcome} {ran:.3f}\n")
            responses.append(
                pb_utils.InferenceResponse([pb_utils.Tensor("OUT", np.array([ran], np.float32))])
            )
        return responses
