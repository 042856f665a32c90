import torch
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        answers = []
        for request in requests:
            a = torch.from_numpy(pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy().copy())
            b = torch.from_numpy(pb_utils.get_input_tensor_by_name(request, "INPUT1").as_numpy().copy())
            answers.append(
                pb_utils.InferenceResponse(
                    [pb_utils.Tensor("OUTPUT0", (a + b).numpy()), pb_utils.Tensor("OUTPUT1", (a - b).numpy())]
                )
            )
        return answers
