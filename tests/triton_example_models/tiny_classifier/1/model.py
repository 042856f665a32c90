"""4 scores per image: the mean of each colour channel, and how dark it is (1 - overall mean)."""

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        answers = []
        for request in requests:
            pixels = pb_utils.get_input_tensor_by_name(request, "PIXELS").as_numpy()
            channel_means = pixels.mean(axis=(2, 3))
            dark = 1.0 - pixels.mean(axis=(1, 2, 3))
            scores = np.concatenate([channel_means, dark[:, None]], axis=1).astype(np.float32)
            answers.append(pb_utils.InferenceResponse([pb_utils.Tensor("SCORES", scores)]))
        return answers
