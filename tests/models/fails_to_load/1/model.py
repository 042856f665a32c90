class TritonPythonModel:
    def initialize(self, args):
        raise RuntimeError("weights file is corrupt (deliberately, for the tests)")

    def execute(self, requests):
        return []
