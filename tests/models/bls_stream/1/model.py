import json

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    async def execute(self, requests):
        responses = []
        for request in requests:
            values = pb_utils.get_input_tensor_by_name(request, "IN").as_numpy()
            params = json.loads(request.parameters())
            call = pb_utils.InferenceRequest(
                model_name=params.get("target", "repeat_int32"),
                requested_output_names=["OUT"],
                inputs=[
                    pb_utils.Tensor("IN", values.astype(np.int32)),
                    pb_utils.Tensor("DELAY", np.zeros(values.shape, np.uint32)),
                    pb_utils.Tensor("WAIT", np.zeros([1], np.uint32)),
                ],
            )
            if params.get("mode") == "async":
                streamed = await call.async_exec(decoupled=True)
            else:
                streamed = call.exec(decoupled=True)
            seen, error = [], None
            for answer in streamed:
                if answer.has_error():
                    error = answer.error()
                    break
                out = pb_utils.get_output_tensor_by_name(answer, "OUT")
                if out is not None:  # the last response may carry only the final flag
                    seen.extend(out.as_numpy().reshape(-1).tolist())
            if error is not None:
                responses.append(pb_utils.InferenceResponse(error=error))
            else:
                out = pb_utils.Tensor("OUT", np.array(seen, dtype=np.int32))
                responses.append(pb_utils.InferenceResponse([out]))
        return responses
