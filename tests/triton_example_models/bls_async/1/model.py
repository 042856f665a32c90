import asyncio

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    async def execute(self, requests):
        answers = []
        for request in requests:
            inputs = [
                pb_utils.get_input_tensor_by_name(request, "INPUT0"),
                pb_utils.get_input_tensor_by_name(request, "INPUT1"),
            ]
            sums, differences = await asyncio.gather(
                *(
                    pb_utils.InferenceRequest(
                        model_name=name, requested_output_names=[output], inputs=inputs
                    ).async_exec()
                    for name, output in (("add_sub", "OUTPUT0"), ("pytorch", "OUTPUT1"))
                )
            )
            failed = next((a for a in (sums, differences) if a.has_error()), None)
            if failed is not None:
                answers.append(pb_utils.InferenceResponse(error=failed.error()))
                continue
            answers.append(
                pb_utils.InferenceResponse(
                    [
                        pb_utils.get_output_tensor_by_name(sums, "OUTPUT0"),
                        pb_utils.get_output_tensor_by_name(differences, "OUTPUT1"),
                    ]
                )
            )
        return answers
