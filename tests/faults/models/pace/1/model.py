import json
import os
import time

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        params = json.loads(args["model_config"])["parameters"]
        self.delay_s = float(params["delay_s"]["string_value"])
        self.ledger = os.path.join(args["model_repository"], "executed.log")

    def execute(self, requests):
        with open(self.ledger, "a") as ledger:
            ledger.write("".join(f"{os.getpid()} {r.request_id() or '-'}\n" for r in requests))
        time.sleep(self.delay_s)
        return [
            pb_utils.InferenceResponse(
                [pb_utils.Tensor("OUT", pb_utils.get_input_tensor_by_name(r, "IN").as_numpy())]
            )
            for r in requests
        ]
