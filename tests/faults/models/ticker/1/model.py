import json
import os
import time

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        params = json.loads(args["model_config"])["parameters"]
        self.interval_s = int(params["interval_ms"]["string_value"]) / 1000
        self.ledger = os.path.join(args["model_repository"], "ticks.log")

    def execute(self, requests):
        for request in requests:
            count = int(pb_utils.get_input_tensor_by_name(request, "COUNT").as_numpy()[0])
            sender = request.get_response_sender()
            sent = 0
            while sent < count and not request.is_cancelled():
                sender.send(pb_utils.InferenceResponse([pb_utils.Tensor("OUT", np.array([sent], np.int32))]))
                sent += 1
                time.sleep(self.interval_s)
            with open(self.ledger, "a") as ledger:
                ledger.write(f"{request.request_id()} {sent}\n")
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return None
