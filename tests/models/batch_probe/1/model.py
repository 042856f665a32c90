import json
import time

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.delay_s = float(json.loads(args["model_config"])["parameters"]["delay_s"]["string_value"])

    def execute(self, requests):
        time.sleep(self.delay_s)
        sizes = [pb_utils.get_input_tensor_by_name(r, "IN").as_numpy().shape[0] for r in requests]
        rows = sum(sizes)
        return [
            pb_utils.InferenceResponse(
                [
                    pb_utils.Tensor("REQUESTS", np.full((n, 1), len(requests), dtype=np.int32)),
                    pb_utils.Tensor("ROWS", np.full((n, 1), rows, dtype=np.int32)),
                ]
            )
            for n in sizes
        ]
