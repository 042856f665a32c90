class TritonPythonModel:
    def execute(self, requests):
        raise ValueError("model bug: cannot handle this input")
