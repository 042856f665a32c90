"""bls_simple's calls made concurrently from an ``async def execute`` with ``async_exec()``."""

import asyncio

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    async def execute(self, requests):
        responses = []
        for request in requests:
            in0 = pb_utils.get_input_tensor_by_name(request, "INPUT0")
            in1 = pb_utils.get_input_tensor_by_name(request, "INPUT1")
            simple = pb_utils.InferenceRequest(
                model_name="simple", requested_output_names=["OUTPUT0"], inputs=[in0, in1]
            )
            onnx = pb_utils.InferenceRequest(
                model_name="add_sub_onnx",
                requested_output_names=["OUTPUT1"],
                inputs=[
                    pb_utils.Tensor("INPUT0", in0.as_numpy().astype(np.float32)),
                    pb_utils.Tensor("INPUT1", in1.as_numpy().astype(np.float32)),
                ],
            )
            first, second = await asyncio.gather(simple.async_exec(), onnx.async_exec())
            failed = next((r for r in (first, second) if r.has_error()), None)
            if failed is not None:
                responses.append(pb_utils.InferenceResponse(error=failed.error()))
                continue
            total = pb_utils.get_output_tensor_by_name(first, "OUTPUT0").as_numpy()
            difference = pb_utils.get_output_tensor_by_name(second, "OUTPUT1").as_numpy()
            outputs = [
                pb_utils.Tensor("OUTPUT0", total.astype(np.int32)),
                pb_utils.Tensor("OUTPUT1", difference.astype(np.int32)),
            ]
            responses.append(pb_utils.InferenceResponse(output_tensors=outputs))
        return responses
