import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            if not pb_utils.get_input_tensor_by_name(request, "IN").as_numpy().any():
                error = pb_utils.TritonError("all-zero input is not allowed")
                responses.append(pb_utils.InferenceResponse(error=error))
            else:
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError("unreachable")))
        return responses
