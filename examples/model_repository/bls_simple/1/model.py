"""BLS, synchronous: each request calls `simple` and `add_sub_onnx` with pb_utils.InferenceRequest.exec().

Written against Triton's python backend API; the calls travel through the mesh (NATS -> the callee's
batcher -> its worker) and are bounded by the calling request's deadline.
"""

import numpy as np
import triton_python_backend_utils as pb_utils


def _call(model_name, inputs, output):
    """The callee's output tensor as numpy, or raise with the callee's error."""
    response = pb_utils.InferenceRequest(
        model_name=model_name, requested_output_names=[output], inputs=inputs
    ).exec()
    if response.has_error():
        raise pb_utils.TritonModelException(f"calling '{model_name}': {response.error().message()}")
    return pb_utils.get_output_tensor_by_name(response, output).as_numpy()


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            in0 = pb_utils.get_input_tensor_by_name(request, "INPUT0")
            in1 = pb_utils.get_input_tensor_by_name(request, "INPUT1")
            try:
                total = _call("simple", [in0, in1], "OUTPUT0")
                as_float = [
                    pb_utils.Tensor("INPUT0", in0.as_numpy().astype(np.float32)),
                    pb_utils.Tensor("INPUT1", in1.as_numpy().astype(np.float32)),
                ]
                difference = _call("add_sub_onnx", as_float, "OUTPUT1")
            except pb_utils.TritonModelException as exc:
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(exc.message())))
                continue
            outputs = [
                pb_utils.Tensor("OUTPUT0", total.astype(np.int32)),
                pb_utils.Tensor("OUTPUT1", difference.astype(np.int32)),
            ]
            responses.append(pb_utils.InferenceResponse(output_tensors=outputs))
        return responses
