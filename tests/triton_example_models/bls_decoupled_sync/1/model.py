"""SUM of every OUT that `square_int32` streams back for this request's IN (exec(decoupled=True))."""

import numpy as np
import triton_python_backend_utils as pb_utils


def total(responses):
    """The sum of the OUTs, or the first error (the last response may carry only the final flag)."""
    found = np.zeros([1], dtype=np.int32)
    for response in responses:
        if response.has_error():
            return response.error()
        out = pb_utils.get_output_tensor_by_name(response, "OUT")
        if out is not None:
            found += out.as_numpy().astype(np.int32)
    return found


class TritonPythonModel:
    def execute(self, requests):
        answers = []
        for request in requests:
            call = pb_utils.InferenceRequest(
                model_name="square_int32",
                inputs=[pb_utils.get_input_tensor_by_name(request, "IN")],
                requested_output_names=["OUT"],
            )
            found = total(call.exec(decoupled=True))
            if isinstance(found, pb_utils.TritonError):
                answers.append(pb_utils.InferenceResponse(error=found))
            else:
                answers.append(pb_utils.InferenceResponse([pb_utils.Tensor("SUM", found)]))
        return answers
