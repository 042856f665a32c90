"""SUM of every OUT that two concurrent decoupled calls to `square_int32` stream back."""

import asyncio

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    async def execute(self, requests):
        answers = []
        for request in requests:
            calls = [
                pb_utils.InferenceRequest(
                    model_name="square_int32",
                    inputs=[pb_utils.get_input_tensor_by_name(request, "IN")],
                    requested_output_names=["OUT"],
                ).async_exec(decoupled=True)
                for _ in range(2)
            ]
            found = np.zeros([1], dtype=np.int32)
            error = None
            for responses in await asyncio.gather(*calls):
                for response in responses:
                    if response.has_error():
                        error = error or response.error()
                        continue
                    out = pb_utils.get_output_tensor_by_name(response, "OUT")
                    if out is not None:  # the final flag may come alone
                        found += out.as_numpy().astype(np.int32)
            if error is not None:
                answers.append(pb_utils.InferenceResponse(error=error))
            else:
                answers.append(pb_utils.InferenceResponse([pb_utils.Tensor("SUM", found)]))
        return answers
