"""`simple` over strings: each element of INPUT0/INPUT1 is a decimal integer as BYTES."""

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            in0 = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            in1 = pb_utils.get_input_tensor_by_name(request, "INPUT1").as_numpy()
            try:
                a = in0.astype(np.int64)
                b = in1.astype(np.int64)
            except ValueError as exc:
                responses.append(
                    pb_utils.InferenceResponse(
                        error=pb_utils.TritonError(f"inputs must be decimal integers: {exc}", pb_utils.TritonError.INVALID_ARG)
                    )
                )
                continue
            out0 = np.array([str(x).encode() for x in (a + b).reshape(-1)], dtype=np.object_).reshape(a.shape)
            out1 = np.array([str(x).encode() for x in (a - b).reshape(-1)], dtype=np.object_).reshape(a.shape)
            responses.append(
                pb_utils.InferenceResponse(
                    output_tensors=[pb_utils.Tensor("OUTPUT0", out0), pb_utils.Tensor("OUTPUT1", out1)]
                )
            )
        return responses
