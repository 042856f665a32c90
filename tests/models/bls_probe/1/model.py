import json

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            params = json.loads(request.parameters())
            target = params.get("target", "slow")
            values = pb_utils.get_input_tensor_by_name(request, "IN").as_numpy()
            call = pb_utils.InferenceRequest(
                model_name=target,
                model_version=int(params.get("version", -1)),
                requested_output_names=[params.get("output", "OUT")],
                inputs=[pb_utils.Tensor(params.get("input", "IN"), values.reshape(1, 4))],
                timeout=int(params.get("timeout_us", 0)),
            )
            answer = call.exec()
            if answer.has_error():
                error = pb_utils.TritonError(f"BLS call failed: {answer.error().message()}")
                responses.append(pb_utils.InferenceResponse(error=error))
                continue
            out = (
                pb_utils.get_output_tensor_by_name(answer, params.get("output", "OUT")).as_numpy().reshape(4)
            )
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUT", out)]))
        return responses
